//! The build sandbox: locked mounts, no host /proc, no host directories created.
