//! Hostile packages: wheels, bytecode staging, git credentials, Debian locks.
