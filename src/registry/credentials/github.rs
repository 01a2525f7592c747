//! `GITHUB_TOKEN` (with `GITHUB_ACTOR`), for `ghcr.io` only.

use super::lookup::{Found, Request};
use super::{Credential, CredentialError, CredentialSource, Secret};

pub(super) fn lookup(request: &Request) -> Result<Found, CredentialError> {
    if request.target.norm != "ghcr.io" {
        return Ok(None);
    }
    let ctx = request.ctx;
    Ok(ctx.var("GITHUB_TOKEN").map(|token| {
        let username = ctx.var("GITHUB_ACTOR").unwrap_or("x-access-token");
        let credential = Credential::Basic {
            username: username.to_string(),
            password: Secret::new(token),
        };
        (credential, CredentialSource::GithubToken)
    }))
}

#[cfg(test)]
mod tests {
    use crate::registry::credentials::testutil::*;
    #[test]
    fn github_token_only_for_ghcr() {
        let home = tempfile::tempdir().unwrap();
        let context = ctx(
            home.path(),
            &[("GITHUB_TOKEN", PASSWORD), ("GITHUB_ACTOR", "octocat")],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((basic("octocat", PASSWORD), CredentialSource::GithubToken))
        );
        assert_eq!(
            find("GHCR.io", &context).unwrap().1,
            CredentialSource::GithubToken
        );
        assert_eq!(find("docker.io", &context), None);
        assert_eq!(find("ghcr.io.example.com", &context), None);
        let context = ctx(home.path(), &[("GITHUB_TOKEN", PASSWORD)]);
        assert_eq!(
            find("ghcr.io", &context).unwrap().0,
            basic("x-access-token", PASSWORD)
        );
        // Docker's config comes first.
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("docker", "d"));
    }
}
