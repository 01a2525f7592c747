//! The package index: a project's files listed from PEP 691 indexes and
//! `--find-links` directories, the wheel chosen for the target, and fetched,
//! verified by sha256, into the wheel cache.

pub mod client;

pub use client::*;
