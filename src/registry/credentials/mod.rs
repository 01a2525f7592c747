//! Registry credentials: find the username and password (or identity token)
//! for a registry host the way docker, podman, crane and skopeo users expect,
//! and keep secrets from ever being printed.
//!
//! Lookup order (first hit wins), see [`find_credentials`]
//! and its list of sources in `lookup.rs`:
//!
//! 1. explicit credentials: `--username` / `--password-stdin`, or
//!    `DALLINGER_OCI_REGISTRY_USERNAME` / `DALLINGER_OCI_REGISTRY_PASSWORD`,
//!    for the push target's registry only: a base, a builder or any other
//!    registry never gets them, so an experiment naming a base on a hostile
//!    registry cannot collect the push credentials;
//! 2. the containers-auth.json file named by `REGISTRY_AUTH_FILE`;
//! 3. podman's `auth.json`: `$XDG_RUNTIME_DIR/containers/auth.json`, then
//!    `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`);
//! 4. docker's `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`):
//!    `credHelpers`, `auths`, `credsStore`;
//! 5. `GITHUB_TOKEN`, for `ghcr.io` only;
//! 6. otherwise anonymous.
//!
//! Everything the lookup reads from the environment comes from a
//! [`CredentialContext`], so tests are hermetic.

mod auth_file;
mod containers;
mod context;
mod docker;
mod error;
mod explicit;
mod github;
mod helper;
mod lookup;
mod target;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::path::{Path, PathBuf};

pub use context::CredentialContext;
pub use error::CredentialError;
pub use lookup::find_credentials;

/// Environment variable read for the username when `--username` is not given.
pub const USERNAME_ENV: &str = "DALLINGER_OCI_REGISTRY_USERNAME";
/// Environment variable read for the password when `--password-stdin` is not given.
pub const PASSWORD_ENV: &str = "DALLINGER_OCI_REGISTRY_PASSWORD";

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// docker config `identitytoken`: an OAuth2 refresh token for the token endpoint.
    /// `username` may be empty (credential helpers do not report one).
    IdentityToken {
        username: String,
        token: Secret,
    },
}

impl Credential {
    /// The username, empty when an identity token came without one.
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                username
            }
        }
    }
}

/// Where a credential came from, for messages ("using credentials for ghcr.io from ~/.docker/config.json").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--username` / `--password-stdin`, or their environment variables.
    Flags,
    /// The file named by `REGISTRY_AUTH_FILE`.
    RegistryAuthFile(PathBuf),
    /// podman's `auth.json`.
    PodmanAuthFile(PathBuf),
    /// docker's `config.json` (an `auths` entry).
    DockerConfig(PathBuf),
    /// `docker-credential-NAME`, holding `NAME` as the config file spells it.
    CredentialHelper(String),
    /// `GITHUB_TOKEN` (for ghcr.io).
    GithubToken,
}

impl CredentialSource {
    /// Human text, with paths under `home` shown as `~/…`. [`Display`](fmt::Display)
    /// uses the process's home directory.
    pub fn describe(&self, home: Option<&Path>) -> String {
        match self {
            CredentialSource::Flags => {
                format!("--username/--password-stdin (or {USERNAME_ENV}/{PASSWORD_ENV})")
            }
            CredentialSource::RegistryAuthFile(p) => {
                format!("{} (REGISTRY_AUTH_FILE)", tilde(p, home))
            }
            CredentialSource::PodmanAuthFile(p) | CredentialSource::DockerConfig(p) => {
                tilde(p, home)
            }
            CredentialSource::CredentialHelper(name) => format!("docker-credential-{name}"),
            CredentialSource::GithubToken => "GITHUB_TOKEN".to_string(),
        }
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(dirs::home_dir().as_deref()))
    }
}

/// `path` with a leading `home` replaced by `~`.
fn tilde(path: &Path, home: Option<&Path>) -> String {
    match home.and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) if rest.as_os_str().is_empty() => "~".to_string(),
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::testutil::*;

    #[test]
    fn secret_never_prints_itself() {
        let secret = Secret::new(PASSWORD);
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(secret.expose(), PASSWORD);

        let credential = basic("alice", PASSWORD);
        let debug = format!("{credential:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(
            debug.contains("alice") && debug.contains("<redacted>"),
            "{debug}"
        );
        let token = Credential::IdentityToken {
            username: "bob".into(),
            token: Secret::new(PASSWORD),
        };
        assert!(!format!("{token:?}").contains(PASSWORD));
        assert!(!format!("{:#?}", (token, CredentialSource::Flags)).contains(PASSWORD));

        let mut context = ctx(Path::new("/nonexistent"), &[("GITHUB_TOKEN", PASSWORD)]);
        context.password = Some(Secret::new(PASSWORD));
        let debug = format!("{context:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(debug.contains("GITHUB_TOKEN"), "{debug}");
    }

    #[test]
    fn source_display_uses_tilde() {
        let home = Path::new("/home/alice");
        let docker = CredentialSource::DockerConfig(home.join(".docker/config.json"));
        assert_eq!(docker.describe(Some(home)), "~/.docker/config.json");
        assert_eq!(docker.describe(None), "/home/alice/.docker/config.json");
        assert_eq!(
            docker.describe(Some(Path::new("/home/al"))),
            "/home/alice/.docker/config.json"
        );
        assert_eq!(
            CredentialSource::RegistryAuthFile("/etc/auth.json".into()).describe(Some(home)),
            "/etc/auth.json (REGISTRY_AUTH_FILE)"
        );
        assert_eq!(
            CredentialSource::PodmanAuthFile(home.join(".config/containers/auth.json"))
                .describe(Some(home)),
            "~/.config/containers/auth.json"
        );
        assert_eq!(
            CredentialSource::CredentialHelper("osxkeychain".into()).to_string(),
            "docker-credential-osxkeychain"
        );
        assert_eq!(CredentialSource::GithubToken.to_string(), "GITHUB_TOKEN");
        assert!(CredentialSource::Flags.to_string().contains("--username"));
        if let Some(real_home) = dirs::home_dir() {
            let source = CredentialSource::DockerConfig(real_home.join(".docker/config.json"));
            assert_eq!(source.to_string(), "~/.docker/config.json");
        }
    }
}
