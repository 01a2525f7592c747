//! What the credential tests share: hermetic contexts, files and helper scripts.

pub(super) use std::fs;
pub(super) use std::path::{Path, PathBuf};

pub(super) use base64::Engine as _;
pub(super) use serde_json::{Map, Value};

pub(super) use super::{
    find_credentials, Credential, CredentialContext, CredentialError, CredentialSource, Secret,
    PASSWORD_ENV, USERNAME_ENV,
};

pub(super) const PASSWORD: &str = "hunter2-very-secret";

pub(super) fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A context with no variables but `env`, and `home` as home.
pub(super) fn ctx(home: &Path, env: &[(&str, &str)]) -> CredentialContext {
    CredentialContext {
        username: None,
        password: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        home: Some(home.to_path_buf()),
    }
}

pub(super) fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

pub(super) fn auths_file(entries: &[(&str, &str, &str)]) -> String {
    let auths: Map<String, Value> = entries
        .iter()
        .map(|(key, user, pass)| {
            (
                key.to_string(),
                serde_json::json!({ "auth": b64(&format!("{user}:{pass}")) }),
            )
        })
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

pub(super) fn docker_config(home: &Path) -> PathBuf {
    home.join(".docker").join("config.json")
}

pub(super) fn basic(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.to_string(),
        password: Secret::new(pass),
    }
}

pub(super) fn find(host: &str, ctx: &CredentialContext) -> Option<(Credential, CredentialSource)> {
    find_credentials(host, ctx, None).unwrap()
}

/// As [`find`], with `push` as the push target's registry.
pub(super) fn find_pushing(
    host: &str,
    ctx: &CredentialContext,
    push: &str,
) -> Option<(Credential, CredentialSource)> {
    find_credentials(host, ctx, Some(push)).unwrap()
}

#[cfg(unix)]
pub(super) fn write_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    write(&path, &format!("#!/bin/sh\n{body}"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `PATH` with `bin` first, then the system directories `sh` needs.
pub(super) fn path_with(bin: &Path) -> String {
    format!("{}:/usr/bin:/bin", bin.display())
}

/// A helper that answers `user-<server url>` / `secret-<name>` for any URL.
#[cfg(unix)]
pub(super) fn echo_helper(bin: &Path, name: &str) {
    write_script(
        bin,
        &format!("docker-credential-{name}"),
        &format!(
            "[ \"$1\" = get ] || exit 3\nurl=$(cat)\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"user-%s\",\"Secret\":\"secret-{name}\"}}' \"$url\" \"$url\"\n"
        ),
    );
}

/// A helper that knows nothing.
#[cfg(unix)]
pub(super) fn empty_helper(bin: &Path, name: &str) {
    write_script(
        bin,
        &format!("docker-credential-{name}"),
        "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n",
    );
}
