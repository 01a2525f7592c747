//! containers-auth.json files (`containers-auth.json(5)`): the one named by
//! `REGISTRY_AUTH_FILE`, then podman's.

use std::path::{Path, PathBuf};

use super::auth_file::{decode_entry, lookup_cred_helpers, object_field, read_json};
use super::lookup::{Found, Request};
use super::target::{containers_key, rank};
use super::{CredentialContext, CredentialError, CredentialSource};

/// The file named by `REGISTRY_AUTH_FILE`.
pub(super) fn registry_auth_file(request: &Request) -> Result<Found, CredentialError> {
    match request.ctx.var("REGISTRY_AUTH_FILE").map(PathBuf::from) {
        Some(path) => lookup_containers_file(&path, request, CredentialSource::RegistryAuthFile),
        None => Ok(None),
    }
}

/// podman's `auth.json` files, the first with an entry for the registry.
pub(super) fn podman(request: &Request) -> Result<Found, CredentialError> {
    for path in podman_auth_files(request.ctx) {
        if let Some(found) =
            lookup_containers_file(&path, request, CredentialSource::PodmanAuthFile)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// podman's auth files, in the order podman reads them.
fn podman_auth_files(ctx: &CredentialContext) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(runtime) = ctx.xdg_dir("XDG_RUNTIME_DIR") {
        files.push(runtime.join("containers").join("auth.json"));
    }
    let config = ctx
        .xdg_dir("XDG_CONFIG_HOME")
        .or_else(|| ctx.home.as_ref().map(|h| h.join(".config")));
    if let Some(config) = config {
        files.push(config.join("containers").join("auth.json"));
    }
    files
}

/// A containers-auth.json file (`REGISTRY_AUTH_FILE`, podman): `credHelpers`
/// for the host, then `auths` entries from the most specific key to the host.
fn lookup_containers_file(
    path: &Path,
    request: &Request,
    source: fn(PathBuf) -> CredentialSource,
) -> Result<Found, CredentialError> {
    let (target, ctx) = (&request.target, request.ctx);
    let Some(doc) = read_json(path)? else {
        return Ok(None);
    };

    if let Some(found) = lookup_cred_helpers(path, &doc, target, ctx)? {
        return Ok(Some(found));
    }

    let Some(auths) = object_field(path, &doc, "auths")? else {
        return Ok(None);
    };
    // Scopes from the whole repository down to the bare host.
    let mut scopes: Vec<Option<String>> = Vec::new();
    if let Some(repo) = &target.repo {
        let mut scope = repo.as_str();
        loop {
            scopes.push(Some(scope.to_string()));
            match scope.rsplit_once('/') {
                Some((parent, _)) => scope = parent,
                None => break,
            }
        }
    }
    scopes.push(None);

    for scope in scopes {
        let keys: Vec<&String> = auths
            .keys()
            .filter(|k| containers_key(k) == (target.norm.clone(), scope.clone()))
            .collect();
        let preferred: Vec<String> = match &scope {
            Some(s) => vec![format!("{}/{s}", target.host)],
            None => target.preferred_keys(),
        };
        for key in rank(keys, &preferred) {
            if let Some(credential) = decode_entry(path, key, &target.host, &auths[key])? {
                return Ok(Some((credential, source(path.to_path_buf()))));
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
    fn containers_auth_key_forms() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("auth.json");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", file.to_str().unwrap())],
        );

        for key in [
            "127.0.0.1:5000",
            "https://127.0.0.1:5000",
            "http://127.0.0.1:5000",
            "https://127.0.0.1:5000/v1/",
        ] {
            write(&file, &auths_file(&[(key, "u", "p")]));
            assert_eq!(
                find("127.0.0.1:5000", &context).unwrap().0,
                basic("u", "p"),
                "{key}"
            );
        }
        // The bare host beats the scheme forms, https beats http.
        write(
            &file,
            &auths_file(&[
                ("http://h.example", "http", "1"),
                ("https://h.example", "https", "2"),
                ("h.example", "bare", "3"),
            ]),
        );
        assert_eq!(find("h.example", &context).unwrap().0, basic("bare", "3"));
        write(
            &file,
            &auths_file(&[
                ("http://h.example", "http", "1"),
                ("https://h.example", "https", "2"),
            ]),
        );
        assert_eq!(find("h.example", &context).unwrap().0, basic("https", "2"));
        // Host names compare case-insensitively.
        assert_eq!(find("H.Example", &context).unwrap().0, basic("https", "2"));
    }

    #[test]
    fn containers_auth_repository_scopes() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("auth.json");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", file.to_str().unwrap())],
        );
        write(
            &file,
            &auths_file(&[
                ("ghcr.io/org/app", "app", "1"),
                ("ghcr.io/org", "org", "2"),
                ("ghcr.io", "host", "3"),
            ]),
        );
        assert_eq!(
            find("ghcr.io/org/app", &context).unwrap().0,
            basic("app", "1")
        );
        assert_eq!(
            find("ghcr.io/org/other", &context).unwrap().0,
            basic("org", "2")
        );
        assert_eq!(
            find("ghcr.io/else/x", &context).unwrap().0,
            basic("host", "3")
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("host", "3"));
        // A bare host does not pick up another repository's credentials.
        write(&file, &auths_file(&[("ghcr.io/org/app", "app", "1")]));
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[test]
    fn podman_runtime_dir_then_config_dir() {
        let home = tempfile::tempdir().unwrap();
        let runtime = home.path().join("run");
        let config = home.path().join("cfg");
        let runtime_file = runtime.join("containers/auth.json");
        let config_file = config.join("containers/auth.json");
        let default_file = home.path().join(".config/containers/auth.json");
        write(&runtime_file, &auths_file(&[("quay.io", "run", "1")]));
        write(&config_file, &auths_file(&[("quay.io", "cfg", "2")]));
        write(&default_file, &auths_file(&[("quay.io", "default", "3")]));
        write(
            &docker_config(home.path()),
            &auths_file(&[("quay.io", "docker", "4")]),
        );

        let both = [
            ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
            ("XDG_CONFIG_HOME", config.to_str().unwrap()),
        ];
        assert_eq!(
            find("quay.io", &ctx(home.path(), &both)),
            Some((
                basic("run", "1"),
                CredentialSource::PodmanAuthFile(runtime_file.clone())
            ))
        );
        fs::remove_file(&runtime_file).unwrap();
        assert_eq!(
            find("quay.io", &ctx(home.path(), &both)),
            Some((
                basic("cfg", "2"),
                CredentialSource::PodmanAuthFile(config_file)
            ))
        );
        assert_eq!(
            find("quay.io", &ctx(home.path(), &[])),
            Some((
                basic("default", "3"),
                CredentialSource::PodmanAuthFile(default_file.clone())
            ))
        );
        // Relative XDG directories are ignored.
        assert_eq!(
            find(
                "quay.io",
                &ctx(home.path(), &[("XDG_CONFIG_HOME", "relative")])
            )
            .unwrap()
            .1,
            CredentialSource::PodmanAuthFile(default_file)
        );
    }
}
