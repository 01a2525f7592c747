//! What the lookup reads from the process (environment, home directory,
//! the CLI's explicit credentials), captured once so the lookup is hermetic.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::Secret;

/// Everything lookup reads, passed in (no global env reads inside), so tests are hermetic.
///
/// `Debug` shows the environment's names only, never its values.
#[derive(Clone, Default)]
pub struct CredentialContext {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The environment: lookup reads its variables from here, and credential
    /// helpers run with exactly this environment (and find themselves on its `PATH`).
    pub env: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl CredentialContext {
    /// A snapshot of the process environment (variables whose name and value
    /// are UTF-8) and home directory, with the CLI's explicit credentials.
    pub fn from_process(username: Option<String>, password: Option<Secret>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        CredentialContext {
            username,
            password,
            env,
            home: dirs::home_dir(),
        }
    }

    /// An environment variable; set-but-empty counts as unset.
    pub(super) fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// An XDG base directory variable: only absolute paths count (XDG spec).
    pub(super) fn xdg_dir(&self, name: &str) -> Option<PathBuf> {
        self.var(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }
}

impl fmt::Debug for CredentialContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialContext")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_process_snapshots_the_environment() {
        let context = CredentialContext::from_process(Some("u".into()), None);
        assert_eq!(context.username.as_deref(), Some("u"));
        assert_eq!(context.home, dirs::home_dir());
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(context.env.get("PATH"), Some(&path));
        }
    }
}
