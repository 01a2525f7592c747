//! Why credentials could not be found.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{PASSWORD_ENV, USERNAME_ENV};

/// Why credentials could not be found. Messages name the file (or helper) and
/// what is wrong, and never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "a registry password was given without a username: pass --username or set {USERNAME_ENV}"
    )]
    PasswordWithoutUsername,
    #[error("registry username {username:?} was given without a password: pass --password-stdin or set {PASSWORD_ENV}")]
    UsernameWithoutPassword { username: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not valid JSON: {reason}", path.display())]
    InvalidJson { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("{}: entry {key:?} (for {host}): {reason}", path.display())]
    InvalidEntry {
        path: PathBuf,
        host: String,
        key: String,
        reason: String,
    },
    #[error("{}: credential helper name {name:?} is not a plain name", path.display())]
    InvalidHelperName { path: PathBuf, name: String },
    #[error("credential helper docker-credential-{helper} (named for {host} in {}) is not on PATH; install it, or remove it from that file", path.display())]
    HelperNotFound {
        helper: String,
        host: String,
        path: PathBuf,
    },
    #[error("cannot run credential helper {}: {source}", program.display())]
    HelperSpawn { program: PathBuf, source: io::Error },
    #[error("credential helper docker-credential-{helper} failed for {server_url} ({status}){}", stderr_suffix(.stderr))]
    HelperFailed {
        helper: String,
        server_url: String,
        status: String,
        /// The helper's stderr, trimmed and shortened (its stdout is never kept).
        stderr: String,
    },
    #[error("credential helper docker-credential-{helper} did not finish within {} s for {server_url}; killed it", timeout.as_secs_f32())]
    HelperTimeout {
        helper: String,
        server_url: String,
        timeout: Duration,
    },
    #[error("credential helper docker-credential-{helper} gave unusable output for {server_url}: {reason}")]
    HelperBadOutput {
        helper: String,
        server_url: String,
        reason: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}
