//! The first source: `--username` / `--password-stdin`, or their environment
//! variables, for the push target's registry only.

use super::lookup::{Found, Request};
use super::{Credential, CredentialContext, CredentialError, CredentialSource, Secret};
use super::{PASSWORD_ENV, USERNAME_ENV};

/// The explicit credentials if this registry is the push target's. A
/// half-given pair is an error for every registry.
pub(super) fn lookup(request: &Request) -> Result<Found, CredentialError> {
    let explicit = explicit(request.ctx)?;
    Ok(explicit
        .filter(|_| request.push_target)
        .map(|credential| (credential, CredentialSource::Flags)))
}

/// `--username`/`--password-stdin`, each falling back to its environment variable.
fn explicit(ctx: &CredentialContext) -> Result<Option<Credential>, CredentialError> {
    let username = ctx
        .username
        .clone()
        .or_else(|| ctx.var(USERNAME_ENV).map(str::to_string));
    let password = ctx
        .password
        .clone()
        .or_else(|| ctx.var(PASSWORD_ENV).map(Secret::new));
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credential::Basic { username, password })),
        (None, Some(_)) => Err(CredentialError::PasswordWithoutUsername),
        (Some(username), None) => Err(CredentialError::UsernameWithoutPassword { username }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::credentials::testutil::*;
    #[test]
    fn explicit_flags_win_over_everything() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        let mut context = ctx(
            home.path(),
            &[("GITHUB_TOKEN", "gh"), (USERNAME_ENV, "envuser")],
        );
        context.username = Some("flaguser".into());
        context.password = Some(Secret::new(PASSWORD));
        assert_eq!(
            find_pushing("ghcr.io", &context, "ghcr.io"),
            Some((basic("flaguser", PASSWORD), CredentialSource::Flags))
        );
        assert_eq!(
            find_pushing("GHCR.io", &context, "ghcr.io").unwrap().1,
            CredentialSource::Flags
        );
    }

    #[test]
    fn explicit_credentials_go_to_the_push_target_only() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        let mut context = ctx(home.path(), &[("GITHUB_TOKEN", "gh")]);
        context.username = Some("flaguser".into());
        context.password = Some(Secret::new(PASSWORD));
        // Another registry (a base's) is looked up by its own host.
        assert_eq!(
            find_pushing("ghcr.io", &context, "quay.io"),
            Some((
                basic("docker", "d"),
                CredentialSource::DockerConfig(docker_config(home.path()))
            ))
        );
        assert_eq!(find_pushing("evil.example", &context, "quay.io"), None);
        // Another port is another registry.
        assert_eq!(
            find_pushing("127.0.0.1:5001", &context, "127.0.0.1:5000"),
            None
        );
        // No push target: no registry gets them.
        assert_eq!(find("quay.io", &context), None);
        // Docker Hub's aliases are one registry.
        assert_eq!(
            find_pushing("registry-1.docker.io", &context, "docker.io")
                .unwrap()
                .1,
            CredentialSource::Flags
        );
        // The environment's pair likewise.
        let context = ctx(
            home.path(),
            &[(USERNAME_ENV, "envuser"), (PASSWORD_ENV, "envpass")],
        );
        assert_eq!(find_pushing("evil.example", &context, "quay.io"), None);
        assert_eq!(
            find_pushing("quay.io", &context, "quay.io"),
            Some((basic("envuser", "envpass"), CredentialSource::Flags))
        );
    }

    #[test]
    fn explicit_from_environment_and_mixed() {
        let home = tempfile::tempdir().unwrap();
        let context = ctx(
            home.path(),
            &[(USERNAME_ENV, "envuser"), (PASSWORD_ENV, "envpass")],
        );
        let push = "127.0.0.1:5000";
        assert_eq!(
            find_pushing(push, &context, push),
            Some((basic("envuser", "envpass"), CredentialSource::Flags))
        );
        // A flag fills one half, the environment the other.
        let mut context = ctx(home.path(), &[(PASSWORD_ENV, "envpass")]);
        context.username = Some("flaguser".into());
        assert_eq!(
            find_pushing(push, &context, push),
            Some((basic("flaguser", "envpass"), CredentialSource::Flags))
        );
        // Empty variables are unset.
        let context = ctx(home.path(), &[(USERNAME_ENV, ""), (PASSWORD_ENV, "")]);
        assert_eq!(find_pushing(push, &context, push), None);
    }

    #[test]
    fn password_without_username_is_an_error_without_the_password() {
        let home = tempfile::tempdir().unwrap();
        let mut context = ctx(home.path(), &[]);
        context.password = Some(Secret::new(PASSWORD));
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(matches!(err, CredentialError::PasswordWithoutUsername));
        let message = err.to_string();
        assert!(message.contains("without a username"), "{message}");
        assert!(!message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));

        let context = ctx(home.path(), &[(PASSWORD_ENV, PASSWORD)]);
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(!err.to_string().contains(PASSWORD));

        let context = ctx(home.path(), &[(USERNAME_ENV, "alice")]);
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(
            matches!(err, CredentialError::UsernameWithoutPassword { .. }),
            "{err}"
        );
    }
}
