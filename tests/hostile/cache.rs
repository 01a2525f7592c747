//! Cache and output integrity: exclusive temporary files, verified copies out of the store, locks.
