//! Faults: SIGKILL at random points, a full file system, concurrent builds on one cache.
