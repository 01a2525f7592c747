//! The registry credentials are wanted for, and how config keys name registries.

/// The server URL docker uses for Docker Hub, in config keys and with helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// Host names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry (and repository, if given) credentials are wanted for.
pub(super) struct Target {
    /// The host as given (`ghcr.io`, `127.0.0.1:5000`, `docker.io`).
    pub(super) host: String,
    /// Lowercase host, Docker Hub's aliases all as `docker.io`.
    pub(super) norm: String,
    /// The repository path after the host, if the caller gave one.
    pub(super) repo: Option<String>,
}

impl Target {
    pub(super) fn parse(input: &str) -> Target {
        let s = input.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let (host, repo) = match s.split_once('/') {
            Some((h, r)) => (h, Some(r.trim_matches('/')).filter(|r| !r.is_empty())),
            None => (s, None),
        };
        Target {
            host: host.to_string(),
            norm: norm_host(host),
            repo: repo.map(str::to_string),
        }
    }

    pub(super) fn is_docker_hub(&self) -> bool {
        self.norm == "docker.io"
    }

    /// The server URL docker uses for this registry with credential helpers.
    pub(super) fn helper_server_url(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_SERVER.to_string()
        } else {
            self.host.clone()
        }
    }

    /// Config keys for this host, most preferred first, when several match.
    pub(super) fn preferred_keys(&self) -> Vec<String> {
        if self.is_docker_hub() {
            let mut keys = vec![DOCKER_HUB_SERVER.to_string()];
            keys.extend(DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()));
            keys
        } else {
            vec![
                self.host.clone(),
                format!("https://{}", self.host),
                format!("http://{}", self.host),
            ]
        }
    }

    /// `credHelpers` keys that name this host.
    pub(super) fn helper_keys(&self) -> Vec<String> {
        if self.is_docker_hub() {
            self.preferred_keys()
        } else {
            vec![self.host.clone()]
        }
    }
}

/// Lowercase, with Docker Hub's aliases as `docker.io`.
fn norm_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    if DOCKER_HUB_HOSTS.contains(&lower.as_str()) {
        "docker.io".to_string()
    } else {
        lower
    }
}

fn strip_scheme(key: &str) -> Option<&str> {
    key.strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
}

/// The registry a docker `auths` key names: docker's `ConvertToHostname`
/// (drop the scheme and any path), normalised.
pub(super) fn docker_key_host(key: &str) -> String {
    let s = strip_scheme(key).unwrap_or(key);
    norm_host(s.split('/').next().unwrap_or(s))
}

/// The registry and repository scope a containers-auth.json key names: a key
/// with a scheme is a legacy docker key (host only); otherwise `host[/path]`.
pub(super) fn containers_key(key: &str) -> (String, Option<String>) {
    if let Some(s) = strip_scheme(key) {
        return (docker_key_host(s), None);
    }
    match key.split_once('/') {
        Some((h, path)) => {
            let path = path.trim_matches('/');
            (
                norm_host(h),
                Some(path.to_string()).filter(|p| !p.is_empty()),
            )
        }
        None => (norm_host(key), None),
    }
}

/// `keys` ordered by preference: those in `preferred` in its order, then the rest sorted.
pub(super) fn rank<'a>(mut keys: Vec<&'a String>, preferred: &[String]) -> Vec<&'a String> {
    keys.sort_by_key(|k| {
        (
            preferred
                .iter()
                .position(|p| p.eq_ignore_ascii_case(k))
                .unwrap_or(usize::MAX),
            k.as_str(),
        )
    });
    keys
}
