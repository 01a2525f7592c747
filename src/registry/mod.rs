//! The registry: one client for pulling bases and pushing images over the
//! OCI distribution API, where credentials come from, and where images are
//! pulled from (registries.conf mirrors).

pub mod client;
pub mod credentials;
pub mod error;
pub mod mirrors;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;

pub use client::{BlobOutcome, RegistryClient};
pub use error::RegistryError;
pub use reference::Reference;
