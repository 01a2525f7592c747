//! The lookup order: each source is one function in [`SOURCES`], asked in
//! turn; the first that has credentials for the registry wins.

use super::target::Target;
use super::{containers, docker, explicit, github};
use super::{Credential, CredentialContext, CredentialError, CredentialSource};

/// What every source is asked about.
pub(super) struct Request<'a> {
    /// The registry (and repository) credentials are wanted for.
    pub(super) target: Target,
    pub(super) ctx: &'a CredentialContext,
    /// Whether the registry is the push target's: only then do the explicit
    /// credentials apply.
    pub(super) push_target: bool,
}

/// A source's answer: credentials and where they came from, or nothing.
pub(super) type Found = Option<(Credential, CredentialSource)>;

/// A credential source: `Ok(None)` passes the request to the next one.
type Source = fn(&Request) -> Result<Found, CredentialError>;

/// The sources, first hit wins (the order of the [module docs](super)).
const SOURCES: &[Source] = &[
    explicit::lookup,
    containers::registry_auth_file,
    containers::podman,
    docker::lookup,
    github::lookup,
];

/// Finds the credentials for `host` (`ghcr.io`, `127.0.0.1:5000`, `docker.io`),
/// trying the sources in the order of the [module docs](super); `Ok(None)` means
/// anonymous. The explicit credentials of `ctx` are used only when `host` is
/// `explicit_registry` (the push target's registry; `None`: no registry gets
/// them), though a half-given pair is an error for every host. `host` may also carry a repository (`ghcr.io/org/app`): then
/// repository-scoped keys in containers auth files (`"ghcr.io/org"`) are
/// honoured, most specific first, as podman and skopeo do; with a bare host
/// only host keys count.
pub fn find_credentials(
    host: &str,
    ctx: &CredentialContext,
    explicit_registry: Option<&str>,
) -> Result<Option<(Credential, CredentialSource)>, CredentialError> {
    let target = Target::parse(host);
    let push_target = explicit_registry.is_some_and(|r| Target::parse(r).norm == target.norm);
    let request = Request {
        target,
        ctx,
        push_target,
    };
    for source in SOURCES {
        if let Some(found) = source(&request)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use crate::registry::credentials::testutil::*;

    #[test]
    fn registry_auth_file_wins_over_podman_and_docker() {
        let home = tempfile::tempdir().unwrap();
        let auth_file = home.path().join("custom").join("auth.json");
        write(&auth_file, &auths_file(&[("ghcr.io", "raf", "p1")]));
        let podman = home.path().join(".config/containers/auth.json");
        write(&podman, &auths_file(&[("ghcr.io", "podman", "p2")]));
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "p3")]),
        );

        let context = ctx(
            home.path(),
            &[
                ("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap()),
                ("GITHUB_TOKEN", "gh"),
            ],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("raf", "p1"),
                CredentialSource::RegistryAuthFile(auth_file.clone())
            ))
        );
        // Another host falls through to podman's file, then docker's.
        write(&auth_file, &auths_file(&[("quay.io", "raf", "p1")]));
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("podman", "p2"),
                CredentialSource::PodmanAuthFile(podman.clone())
            ))
        );
        fs::remove_file(&podman).unwrap();
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("docker", "p3"),
                CredentialSource::DockerConfig(docker_config(home.path()))
            ))
        );
        // A missing REGISTRY_AUTH_FILE is not an error.
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")],
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("docker", "p3"));
    }

    #[test]
    fn nothing_anywhere_is_anonymous() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(find("ghcr.io", &ctx(home.path(), &[])), None);
        let no_home = CredentialContext::default();
        assert_eq!(find_credentials("ghcr.io", &no_home, None).unwrap(), None);
        // Empty files count as empty configs.
        write(&docker_config(home.path()), "\n");
        assert_eq!(find("ghcr.io", &ctx(home.path(), &[])), None);
    }
}
