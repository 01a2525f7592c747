//! What docker's `config.json` and containers-auth.json share: a JSON object
//! read without ever quoting a value, `auths` entries, `credHelpers`.

use std::io;
use std::path::Path;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::helper::{run_helper, HELPER_TIMEOUT};
use super::lookup::Found;
use super::target::Target;
use super::{Credential, CredentialContext, CredentialError, CredentialSource, Secret};

/// `auth` fields: standard alphabet, padding optional (some tools drop it).
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `credHelpers` entry naming this host: (key, helper name).
pub(super) fn helper_for<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    target: &Target,
) -> Result<Option<(&'a str, &'a str)>, CredentialError> {
    let Some(helpers) = object_field(path, doc, "credHelpers")? else {
        return Ok(None);
    };
    for key in target.helper_keys() {
        if let Some((key, value)) = helpers.get_key_value(&key) {
            let name = value.as_str().ok_or_else(|| CredentialError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("credHelpers entry {key:?} is not a string"),
            })?;
            if name.is_empty() {
                continue;
            }
            check_helper_name(path, name)?;
            return Ok(Some((key.as_str(), name)));
        }
    }
    Ok(None)
}

/// Runs the `credHelpers` helper for this host, if there is one.
pub(super) fn lookup_cred_helpers(
    path: &Path,
    doc: &Map<String, Value>,
    target: &Target,
    ctx: &CredentialContext,
) -> Result<Found, CredentialError> {
    let Some((_, name)) = helper_for(path, doc, target)? else {
        return Ok(None);
    };
    let url = target.helper_server_url();
    Ok(
        run_helper(name, &url, &target.host, path, ctx, HELPER_TIMEOUT)?
            .map(|c| (c, CredentialSource::CredentialHelper(name.to_string()))),
    )
}

/// Helper names become `docker-credential-NAME` looked up on PATH: no paths.
pub(super) fn check_helper_name(path: &Path, name: &str) -> Result<(), CredentialError> {
    if name.is_empty() || name.contains(['/', '\\', '\0']) {
        return Err(CredentialError::InvalidHelperName {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The file's top-level object; `None` if it does not exist. An empty file is `{}`.
pub(super) fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, CredentialError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    // Parsed as a Value and walked by hand: serde's typed errors can quote
    // the offending value, which may be a secret. Syntax errors only give a
    // position.
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| CredentialError::InvalidJson {
            path: path.to_path_buf(),
            reason: json_reason(&e),
        })?;
    match value {
        Value::Object(map) => Ok(Some(map)),
        _ => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object".to_string(),
        }),
    }
}

fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Eof => "unexpected end of file",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// A top-level object field (`auths`, `credHelpers`); absent or null is `None`.
pub(super) fn object_field<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, CredentialError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("`{field}` is not an object"),
        }),
    }
}

/// A top-level string field (`credsStore`); absent, null or empty is `None`.
pub(super) fn string_field<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, CredentialError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
        Some(_) => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("`{field}` is not a string"),
        }),
    }
}

/// One `auths` entry: `auth` (base64 `user:pass`), else `username`/`password`;
/// with `identitytoken` it is an identity token. `None` for an entry with
/// none of these (docker writes `{}` when a `credsStore` holds the secret).
pub(super) fn decode_entry(
    path: &Path,
    key: &str,
    host: &str,
    entry: &Value,
) -> Result<Option<Credential>, CredentialError> {
    let invalid = |reason: &str| CredentialError::InvalidEntry {
        path: path.to_path_buf(),
        host: host.to_string(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let obj = match entry {
        Value::Object(obj) => obj,
        Value::Null => return Ok(None),
        _ => return Err(invalid("is not an object")),
    };
    let field = |name: &str| -> Result<Option<&str>, CredentialError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
            Some(_) => Err(invalid(&format!("field `{name}` is not a string"))),
        }
    };

    let (username, password) = match field("auth")? {
        Some(auth) => {
            let compact: String = auth.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            // The decoder's own error names the offending symbol: not shown.
            let bytes = AUTH_BASE64
                .decode(compact)
                .map_err(|_| invalid("field `auth` is not valid base64"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid("field `auth` does not decode to UTF-8 text"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| invalid("field `auth` does not decode to `username:password`"))?;
            (
                Some(user.to_string()).filter(|u| !u.is_empty()),
                Some(pass.to_string()).filter(|p| !p.is_empty()),
            )
        }
        None => (
            field("username")?.map(str::to_string),
            field("password")?.map(str::to_string),
        ),
    };

    if let Some(token) = field("identitytoken")? {
        return Ok(Some(Credential::IdentityToken {
            username: username.unwrap_or_default(),
            token: Secret::new(token),
        }));
    }
    if username.is_none() && password.is_none() {
        return Ok(None);
    }
    Ok(Some(Credential::Basic {
        username: username.unwrap_or_default(),
        password: Secret::new(password.unwrap_or_default()),
    }))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::testutil::*;
    #[test]
    fn malformed_files_are_errors_without_secrets() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);

        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{PASSWORD}"#),
        );
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::InvalidJson { .. }),
            "{message}"
        );
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");

        // Bad base64 (with a `-` the decoder would quote).
        let bad = format!("{PASSWORD}!!");
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{bad}"}}}}}}"#),
        );
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::InvalidEntry { .. }),
            "{message}"
        );
        assert!(
            message.contains(&file.display().to_string()) && message.contains("\"ghcr.io\""),
            "{message}"
        );
        assert!(message.contains("base64"), "{message}");
        assert!(
            !message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD),
            "{message}"
        );
        // Another host's broken entry does not matter.
        assert_eq!(find("quay.io", &context), None);

        // Base64 without a colon.
        write(
            &file,
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#,
                b64(PASSWORD)
            ),
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("username:password") && !message.contains(PASSWORD),
            "{message}"
        );

        // Wrong types: the value is not quoted.
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"password": ["{PASSWORD}"]}}}}}}"#),
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`password` is not a string") && !message.contains(PASSWORD),
            "{message}"
        );
        write(&file, &format!(r#"{{"auths": "{PASSWORD}"}}"#));
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`auths` is not an object") && !message.contains(PASSWORD),
            "{message}"
        );

        // Same for a containers auth file.
        let auth_file = home.path().join("auth.json");
        write(&auth_file, "[1, 2");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())],
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&auth_file.display().to_string()),
            "{message}"
        );
    }
}
