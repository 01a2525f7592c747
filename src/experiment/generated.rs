//! Files Dallinger generates into the experiment directory it builds from
//! (`assemble_experiment_temp_dir`): the filtered `config.txt`, the default
//! `prepare_docker_image.sh`, and `requirements.txt` (the experiment's
//! `constraints.txt`, renamed).
//!
//! Not generated, deliberately, because the image must be reproducible:
//! `experiment_id.txt`, and the random `id`/`heroku_app_id_root` keys.

use std::path::Path;

use super::config::Config;
use super::{ExperimentError, ExperimentFile, FileKind};

/// Dallinger's `dallinger/docker/prepare_docker_image.sh` (417 bytes).
pub(crate) const DEFAULT_PREPARE_SCRIPT: &str = "#!/bin/sh
# If you need some extra requirement available to experiment code
# (for example the ffmpeg binary) you can add a prepare_docker_image.sh
# file to your experiment directory.
# It will be run when preparing a docker image. Anything installed
# by this script will be available to the experiment code.

# This experiment did not specify any prepare_docker_image.sh script,
# so this empty template was used.
";

/// What Dallinger writes when an experiment has no requirements file.
pub(crate) const DEFAULT_REQUIREMENTS: &str = "dallinger\n";

/// Keys Dallinger registers as sensitive (`dallinger/config.py`).
const SENSITIVE_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "dashboard_password",
    "dashboard_user",
    "database_url",
    "heroku_auth_token",
    "prolific_api_token",
    "smtp_password",
];

/// Dallinger's `SENSITIVE_KEY_NAMES`: a key containing any of these is dropped.
/// (This also covers the `mturk_*` credentials.)
const SENSITIVE_SUBSTRINGS: &[&str] = &["access_id", "access_key", "password", "secret", "token"];

/// Dallinger's `Config.is_sensitive`.
pub(crate) fn is_sensitive(key: &str) -> bool {
    let key = key.to_lowercase();
    SENSITIVE_KEYS.contains(&key.as_str()) || SENSITIVE_SUBSTRINGS.iter().any(|s| key.contains(s))
}

/// `[Docker]` keys only dallinger-oci reads. Dallinger loads config.txt
/// strictly and would refuse to start on a key it does not register, so
/// they stay out of the image's config.txt.
pub const TOOL_ONLY_KEYS: &[&str] = &[
    "docker_base_image",
    "docker_redis_image",
    "docker_postgresql_image",
    "system_packages",
];

/// The `/experiment/config.txt` written into the image, as Dallinger's
/// `config.write(filter_sensitive=True)` would, with these differences:
///
/// - dallinger-oci's own keys ([`TOOL_ONLY_KEYS`]) are left out.
/// - Only the experiment's own `config.txt` goes in. Dallinger also writes
///   every other layer, `~/.dallingerconfig` included; we never do, so that
///   the user's private settings and credentials stay out of the image and
///   the image does not depend on who builds it.
/// - No random `id` or `heroku_app_id_root`.
/// - Values are written as strings as found (Dallinger writes `str()` of the
///   typed value, e.g. `True` for `true`); Dallinger reads both the same way.
/// - Keys are sorted by name, each with its winning value (the last
///   occurrence across sections), so the bytes do not depend on the order of
///   sections in the file.
/// - `%` is written as `%%` (Dallinger's `parser.set` would raise on a
///   literal `%`), so reading the file back with ConfigParser gives the same
///   values.
///
/// The layout is Python's `ConfigParser.write`: `key = value` lines,
/// continuation lines indented with a tab, and a blank line after the section.
pub(crate) fn config_txt(experiment_config: &Config) -> Vec<u8> {
    let mut out = String::from("[Parameters]\n");
    for (key, value) in experiment_config.iter() {
        if is_sensitive(key) || TOOL_ONLY_KEYS.contains(&key) {
            continue;
        }
        let value = value.replace('%', "%%").replace('\n', "\n\t");
        out.push_str(key);
        out.push_str(" = ");
        out.push_str(&value);
        out.push('\n');
    }
    out.push('\n');
    out.into_bytes()
}

/// Which of the authored root files Dallinger turns into the image's
/// `requirements.txt` the experiment has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RootInputs {
    pub constraints: bool,
    pub requirements: bool,
}

impl RootInputs {
    /// Those of the file set (without a deploy.toml, as today).
    pub(crate) fn of(files: &[ExperimentFile]) -> RootInputs {
        let has = |rel: &str| files.iter().any(|f| f.rel == rel);
        RootInputs {
            constraints: has("constraints.txt"),
            requirements: has("requirements.txt"),
        }
    }
}

/// Replaces the top-level files Dallinger generates or renames. `files` is
/// the filtered file set of the experiment directory (without the
/// experiment's `config.txt`, which the exclusion list removes); `inputs`
/// says where `requirements.txt` comes from.
pub(crate) fn apply(
    root: &Path,
    files: &mut Vec<ExperimentFile>,
    experiment_config: &Config,
    inputs: RootInputs,
) -> Result<(), ExperimentError> {
    let read = |rel: &str| -> Result<Vec<u8>, ExperimentError> {
        let path = root.join(rel);
        std::fs::read(&path).map_err(|source| ExperimentError::Io { path, source })
    };
    let has = |files: &[ExperimentFile], rel: &str| files.iter().any(|f| f.rel == rel);

    // The experiment's own script wins; the Dockerfile chmods it 755.
    let prepare = if has(files, "prepare_docker_image.sh") {
        read("prepare_docker_image.sh")?
    } else {
        DEFAULT_PREPARE_SCRIPT.as_bytes().to_vec()
    };
    // `constraints.txt` is renamed over `requirements.txt`.
    let requirements = if inputs.constraints {
        read("constraints.txt")?
    } else if inputs.requirements {
        read("requirements.txt")?
    } else {
        DEFAULT_REQUIREMENTS.as_bytes().to_vec()
    };

    files.retain(|f| {
        !matches!(
            f.rel.as_str(),
            "config.txt" | "constraints.txt" | "requirements.txt" | "prepare_docker_image.sh"
        )
    });
    let generated = [
        ("config.txt", config_txt(experiment_config), false),
        ("prepare_docker_image.sh", prepare, true),
        ("requirements.txt", requirements, false),
    ];
    for (rel, bytes, executable) in generated {
        files.push(ExperimentFile {
            rel: rel.to_string(),
            kind: FileKind::Generated { bytes, executable },
        });
    }
    Ok(())
}

/// Dallinger's `get_experiment_image_tag`: the first 8 hex digits of
/// sha256(requirements.txt ++ prepare_docker_image.sh).
pub(crate) fn tag(requirements: &[u8], prepare: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(requirements);
    hasher.update(prepare);
    let mut hex = hex::encode(hasher.finalize());
    hex.truncate(8);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn default_prepare_script_bytes() {
        assert_eq!(DEFAULT_PREPARE_SCRIPT.len(), 417);
        assert_eq!(
            hex::encode(Sha256::digest(DEFAULT_PREPARE_SCRIPT.as_bytes())),
            "550215b6cbfe3b7d68a843a4581adbe0d1d85a76f20bbc9886de73989a0cfe3a"
        );
    }

    #[test]
    fn tag_vector() {
        assert_eq!(
            tag(
                DEFAULT_REQUIREMENTS.as_bytes(),
                DEFAULT_PREPARE_SCRIPT.as_bytes()
            ),
            "a1e72654"
        );
    }

    #[test]
    fn sensitive_keys() {
        // Dallinger's registered keys, and names its pattern catches.
        let patterns = ["mturk_access_id", "my_secret_thing", "github_token"];
        for k in SENSITIVE_KEYS.iter().chain(&patterns) {
            assert!(is_sensitive(k), "{k}");
        }
        for k in [
            "mode",
            "title",
            "dashboard_users",
            "database_size",
            "aws_region",
        ] {
            assert!(!is_sensitive(k), "{k}");
        }
    }

    #[test]
    fn tool_only_keys_stay_out_of_the_image_config() {
        let config = Config::parse(
            Path::new("config.txt"),
            "[Docker]\ndocker_image_base_name = r/x\ndocker_base_image = oci:b\n\
             docker_redis_image = redis:7\ndocker_postgresql_image = postgres:16\n",
        )
        .unwrap();
        let text = String::from_utf8(config_txt(&config)).unwrap();
        assert_eq!(text, "[Parameters]\ndocker_image_base_name = r/x\n\n");
    }

    #[test]
    fn generated_config_filters_and_escapes() {
        let config = Config::parse(
            Path::new("config.txt"),
            "[AWS]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3tvalue\n\
             aws_region = us-east-1\n\
             [Dashboard]\ndashboard_user = admin-user\ndashboard_password = hunter2\n\
             [Other]\nprolific_api_token = tok-123\ndatabase_url = postgresql://u:pw@h/db\n\
             smtp_password = smtp-pw\nheroku_auth_token = heroku-tok\n\
             [Experiment]\ntitle = Hello\n  world\n\n  again\npct = 50%%\nmode = debug\n\
             [Later]\nmode = sandbox\n",
        )
        .unwrap();
        let text = String::from_utf8(config_txt(&config)).unwrap();
        assert_eq!(
            text,
            "[Parameters]\naws_region = us-east-1\nmode = sandbox\npct = 50%%\n\
             title = Hello\n\tworld\n\t\n\tagain\n\n"
        );
        for secret in [
            "AKIAEXAMPLE",
            "s3cr3tvalue",
            "admin-user",
            "hunter2",
            "tok-123",
            "pw@h",
            "smtp-pw",
            "heroku-tok",
        ] {
            assert!(!text.contains(secret), "{secret}");
        }
        // Reading it back gives the same values.
        let back = Config::parse(Path::new("c"), &text).unwrap();
        assert_eq!(back.get("title"), Some("Hello\nworld\n\nagain"));
        assert_eq!(back.get("pct"), Some("50%"));
    }
}
