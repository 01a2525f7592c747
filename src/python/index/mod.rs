//! The package index: a project's files listed from PEP 691 indexes and
//! `--find-links` directories, the wheel chosen for the target, and fetched,
//! verified by sha256, into the wheel cache.

mod answers;
mod client;
mod local;

pub use answers::{list_pin_files, IndexAnswers, PinListing, MAX_AGE};

pub(crate) use client::select_sdist;
pub use client::{
    fetch, fetch_all, fetch_all_lazy, http_client, list_files, select, Candidate, IndexConfig,
    IndexError, LazyClient, SelectError, DEFAULT_INDEX_URL, SIMPLE_JSON,
};
