//! Docker's `config.json`: `credHelpers`, `auths`, `credsStore`.

use std::path::{Path, PathBuf};

use super::auth_file::{
    check_helper_name, decode_entry, helper_for, lookup_cred_helpers, object_field, read_json,
    string_field,
};
use super::helper::{run_helper, HELPER_TIMEOUT};
use super::lookup::{Found, Request};
use super::target::{docker_key_host, rank};
use super::{CredentialContext, CredentialError, CredentialSource};

/// `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
pub(super) fn lookup(request: &Request) -> Result<Found, CredentialError> {
    match docker_config_file(request.ctx) {
        Some(path) => lookup_docker_config(&path, request),
        None => Ok(None),
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_file(ctx: &CredentialContext) -> Option<PathBuf> {
    match ctx.var("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => ctx
            .home
            .as_ref()
            .map(|h| h.join(".docker").join("config.json")),
    }
}

/// Docker's `config.json`: `credHelpers[host]`, else `auths` (an empty entry
/// means a `credsStore` holds the secret), else `credsStore`.
fn lookup_docker_config(path: &Path, request: &Request) -> Result<Found, CredentialError> {
    let (target, ctx) = (&request.target, request.ctx);
    let Some(doc) = read_json(path)? else {
        return Ok(None);
    };

    if helper_for(path, &doc, target)?.is_some() {
        // The host's helper is authoritative: if it has nothing, docker has nothing.
        return lookup_cred_helpers(path, &doc, target, ctx);
    }

    let mut empty_keys: Vec<&String> = Vec::new();
    if let Some(auths) = object_field(path, &doc, "auths")? {
        let keys: Vec<&String> = auths
            .keys()
            .filter(|k| docker_key_host(k) == target.norm)
            .collect();
        for key in rank(keys, &target.preferred_keys()) {
            match decode_entry(path, key, &target.host, &auths[key])? {
                Some(credential) => {
                    return Ok(Some((
                        credential,
                        CredentialSource::DockerConfig(path.to_path_buf()),
                    )))
                }
                None => empty_keys.push(key),
            }
        }
    }

    if let Some(store) = string_field(path, &doc, "credsStore")? {
        check_helper_name(path, store)?;
        let mut urls: Vec<String> = empty_keys.into_iter().cloned().collect();
        let canonical = target.helper_server_url();
        if !urls.contains(&canonical) {
            urls.push(canonical);
        }
        for url in &urls {
            if let Some(credential) =
                run_helper(store, url, &target.host, path, ctx, HELPER_TIMEOUT)?
            {
                return Ok(Some((
                    credential,
                    CredentialSource::CredentialHelper(store.to_string()),
                )));
            }
        }
    }
    Ok(None)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::testutil::*;
    #[test]
    fn docker_config_entries() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);
        write(&file, &auths_file(&[("ghcr.io", "alice", "pa:ss")]));
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("alice", "pa:ss"),
                CredentialSource::DockerConfig(file.clone())
            ))
        );
        // username/password fields, and unpadded base64.
        write(
            &file,
            r#"{"auths": {"ghcr.io": {"username": "bob", "password": "pw"}}}"#,
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("bob", "pw"));
        let unpadded = b64("carol:pw").trim_end_matches('=').to_string();
        assert_ne!(unpadded, b64("carol:pw"));
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{unpadded}"}}}}}}"#),
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("carol", "pw"));
        // Other hosts: nothing.
        assert_eq!(find("quay.io", &context), None);
        // Keys with a path name their host.
        write(
            &file,
            &auths_file(&[("https://127.0.0.1:5000/v1/", "u", "p")]),
        );
        assert_eq!(find("127.0.0.1:5000", &context).unwrap().0, basic("u", "p"));
    }

    #[test]
    fn docker_config_env_replaces_home() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "home", "1")]),
        );
        let dir = home.path().join("elsewhere");
        write(
            &dir.join("config.json"),
            &auths_file(&[("ghcr.io", "env", "2")]),
        );
        let context = ctx(home.path(), &[("DOCKER_CONFIG", dir.to_str().unwrap())]);
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("env", "2"),
                CredentialSource::DockerConfig(dir.join("config.json"))
            ))
        );
        // DOCKER_CONFIG without a config.json: no fallback to ~/.docker.
        let context = ctx(home.path(), &[("DOCKER_CONFIG", "/nonexistent")]);
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[test]
    fn docker_hub_aliases() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
            "https://index.docker.io/v2/",
        ] {
            write(&file, &auths_file(&[(key, "hub", "pw")]));
            for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(
                    find(host, &context).unwrap().0,
                    basic("hub", "pw"),
                    "key {key}, host {host}"
                );
            }
        }
        // Docker's own key wins when several are present.
        write(
            &file,
            &auths_file(&[
                ("docker.io", "short", "1"),
                ("https://index.docker.io/v1/", "canonical", "2"),
            ]),
        );
        assert_eq!(
            find("docker.io", &context).unwrap().0,
            basic("canonical", "2")
        );
        // Not a prefix match: docker.io.example.com is another host.
        write(&file, &auths_file(&[("docker.io.example.com", "x", "y")]));
        assert_eq!(find("docker.io", &context), None);
    }

    #[test]
    fn docker_identity_token() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        write(
            &file,
            &format!(
                r#"{{"auths": {{"myacr.azurecr.io": {{"auth": "{}", "identitytoken": "{PASSWORD}"}}}}}}"#,
                b64("00000000-0000-0000-0000-000000000000:")
            ),
        );
        let (credential, source) = find("myacr.azurecr.io", &ctx(home.path(), &[])).unwrap();
        assert_eq!(
            credential,
            Credential::IdentityToken {
                username: "00000000-0000-0000-0000-000000000000".into(),
                token: Secret::new(PASSWORD),
            }
        );
        assert_eq!(source, CredentialSource::DockerConfig(file));
        assert_eq!(
            credential.username(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[cfg(unix)]
    #[test]
    fn cred_helpers_run_the_helper() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        echo_helper(&bin, "test");
        write(
            &docker_config(home.path()),
            &format!(
                r#"{{"credHelpers": {{"ghcr.io": "test", "docker.io": "test", "127.0.0.1:5000": "test"}},
                   "auths": {}}}"#,
                serde_json::json!({"ghcr.io": {"auth": b64("inline:x")}})
            ),
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        // credHelpers wins over the inline entry.
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("user-ghcr.io", "secret-test"),
                CredentialSource::CredentialHelper("test".into())
            ))
        );
        assert_eq!(
            find("127.0.0.1:5000", &context).unwrap().0,
            basic("user-127.0.0.1:5000", "secret-test")
        );
        // Docker Hub's server URL is docker's.
        assert_eq!(
            find("registry-1.docker.io", &context).unwrap().0,
            basic("user-https://index.docker.io/v1/", "secret-test")
        );
    }

    #[cfg(unix)]
    #[test]
    fn helper_without_credentials_falls_through() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        empty_helper(&bin, "empty");
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"ghcr.io": "empty", "quay.io": "empty"}}"#,
        );
        let context = ctx(
            home.path(),
            &[("PATH", &path_with(&bin)), ("GITHUB_TOKEN", "ghtok")],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("x-access-token", "ghtok"),
                CredentialSource::GithubToken
            ))
        );
        assert_eq!(find("quay.io", &context), None);
    }

    #[cfg(unix)]
    #[test]
    fn empty_auths_entry_uses_creds_store() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        echo_helper(&bin, "store");
        let file = docker_config(home.path());
        write(
            &file,
            &format!(
                r#"{{"credsStore": "store", "auths": {{"https://ghcr.io": {{}}, "quay.io": {{"auth": "{}"}}}}}}"#,
                b64("inline:pw")
            ),
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        // The empty entry's key is the server URL the store knows.
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("user-https://ghcr.io", "secret-store"),
                CredentialSource::CredentialHelper("store".into())
            ))
        );
        // An inline entry is used as is.
        assert_eq!(
            find("quay.io", &context),
            Some((basic("inline", "pw"), CredentialSource::DockerConfig(file)))
        );
        // No entry at all: the store is asked for the host.
        assert_eq!(
            find("docker.io", &context).unwrap().0,
            basic("user-https://index.docker.io/v1/", "secret-store")
        );
        assert_eq!(
            find("127.0.0.1:5000", &context).unwrap().0,
            basic("user-127.0.0.1:5000", "secret-store")
        );

        // A store without the credentials: anonymous.
        empty_helper(&bin, "store");
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[cfg(unix)]
    #[test]
    fn helper_identity_token() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        write_script(
            &bin,
            "docker-credential-acr",
            &format!("cat >/dev/null\necho '{{\"ServerURL\":\"x\",\"Username\":\"<token>\",\"Secret\":\"{PASSWORD}\"}}'\n"),
        );
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"myacr.azurecr.io": "acr"}}"#,
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        assert_eq!(
            find("myacr.azurecr.io", &context).unwrap().0,
            Credential::IdentityToken {
                username: String::new(),
                token: Secret::new(PASSWORD)
            }
        );
    }
}
