//! The registry: one client for pulling bases and pushing images over the
//! OCI distribution API, and where credentials come from.

pub mod client;
pub mod credentials;
pub mod error;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;

pub use client::{BlobOutcome, RegistryClient};
pub use error::RegistryError;
pub use reference::Reference;
