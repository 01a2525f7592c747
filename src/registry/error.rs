//! What goes wrong talking to a registry, typed, so that callers tell "not
//! there" (404) from "not allowed" (401, 403) from "not reachable": only
//! [`RegistryError::NotFound`] means absent.

use crate::http::{show_size, Transport};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404: no such manifest, blob or repository.
    #[error("{message}")]
    NotFound { registry: String, message: String },
    /// 401: the registry wants credentials it did not get, or refused ours.
    #[error("{}", login_advice(registry, *credentials_sent))]
    Unauthorized {
        registry: String,
        /// Whether we had credentials for it, and so sent them (or a
        /// token they got).
        credentials_sent: bool,
    },
    /// 403: the account may not do this.
    #[error("denied: Your current account does not have permission to push to {image}")]
    Denied { registry: String, image: String },
    #[error("{image} is not a valid repository name for {registry}: {message}")]
    InvalidName {
        registry: String,
        image: String,
        message: String,
    },
    /// An answer longer than we read: past `limit`, our cap, or past the
    /// size its descriptor `declared`.
    #[error("{}", too_large(what, *limit, *declared))]
    TooLarge {
        what: String,
        limit: u64,
        declared: bool,
    },
    /// Our policy refused to go on (plain HTTP after https, a redirect or
    /// a host we do not follow, credentials asked for by another host):
    /// no attempt would do otherwise.
    #[error("{message}")]
    Refused { registry: String, message: String },
    /// No answer.
    #[error("{}", transport(registry, *kind, detail))]
    Transport {
        registry: String,
        kind: Transport,
        detail: String,
    },
    /// An answer that breaks the protocol (a digest that does not match,
    /// an upload without a `Location`, a token service without a token).
    #[error("{message}")]
    Protocol { registry: String, message: String },
    /// Any other answer we cannot use.
    #[error("{message}")]
    Status {
        registry: String,
        status: u16,
        /// The distribution error code (`MANIFEST_INVALID`, …), if given.
        code: Option<String>,
        message: String,
    },
    /// Every attempt failed; `last` is the last failure (one worth another
    /// attempt: no answer, a 5xx or 429, a blob that broke off).
    #[error("{what} failed after {attempts} attempts")]
    Exhausted {
        what: String,
        attempts: u32,
        #[source]
        last: Box<RegistryError>,
    },
    /// Our side: reading the store, or the sink a blob goes to.
    #[error("{0:#}")]
    Local(anyhow::Error),
}

impl RegistryError {
    /// Whether this says the thing asked for is not there (and nothing else).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

fn login_advice(registry: &str, credentials_sent: bool) -> String {
    let login = if credentials_sent {
        "the registry refused the credentials found"
    } else {
        "no credentials were found"
    };
    if registry == "ghcr.io" {
        format!(
            "unauthenticated: {login}. You need to login to the github docker registry ghcr.io. \
             You need to create a PAT (Personal Access Token) here: \
             https://github.com/settings/tokens/new?scopes=write:packages \
             and use it to log in with the command `docker login ghcr.io` \
             (or set GITHUB_TOKEN in GitHub Actions)"
        )
    } else {
        format!(
            "unauthenticated: {login}. You need to login to the {registry} registry with the \
             command: `docker login {registry}` (or `podman login {registry}`)"
        )
    }
}

fn too_large(what: &str, limit: u64, declared: bool) -> String {
    if declared {
        format!("{what} is longer than the {limit} bytes its descriptor gives: refusing it")
    } else {
        format!("{what} is larger than {}: refusing it", show_size(limit))
    }
}

fn transport(registry: &str, kind: Transport, detail: &str) -> String {
    match kind {
        Transport::Dns => {
            format!("cannot resolve the registry host {registry}: check the image name ({detail})")
        }
        Transport::Tls => format!(
            "TLS connection to {registry} failed ({detail}); for a plain-HTTP registry pass \
             --insecure-registry {registry}"
        ),
        _ => format!("connection to {registry} failed: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_registry_and_the_way_out() {
        let e = RegistryError::Unauthorized {
            registry: "r.example:5000".into(),
            credentials_sent: false,
        };
        assert_eq!(
            e.to_string(),
            "unauthenticated: no credentials were found. You need to login to the r.example:5000 \
             registry with the command: `docker login r.example:5000` (or `podman login \
             r.example:5000`)"
        );
        let e = RegistryError::Unauthorized {
            registry: "ghcr.io".into(),
            credentials_sent: true,
        };
        assert!(e.to_string().contains("refused the credentials found"));
        assert!(e.to_string().contains("GITHUB_TOKEN"));
        let last = RegistryError::Status {
            registry: "r.example".into(),
            status: 503,
            code: None,
            message: "r.example answered 503 Service Unavailable".into(),
        };
        let e = RegistryError::Exhausted {
            what: "pushing the manifest".into(),
            attempts: 3,
            last: Box::new(last),
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e)),
            "pushing the manifest failed after 3 attempts: r.example answered 503 Service \
             Unavailable"
        );
        assert!(!RegistryError::Denied {
            registry: "r".into(),
            image: "r/x".into()
        }
        .is_not_found());
    }
}
