//! The experiment an image names by its labels: the repository of
//! `org.opencontainers.image.source` cloned at the commit of
//! `org.opencontainers.image.revision`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::python::source::git::{self, is_full_commit};
use crate::python::source::GitUrl;

pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";

/// The (source, revision) labels of `config`; a missing one is an error
/// naming it.
pub fn labels(config: &Value, image: &str) -> Result<(String, String)> {
    let label = |key: &str| {
        config
            .pointer("/config/Labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .with_context(|| {
                format!(
                    "{image} has no {key} label, so it names no repository and commit to verify \
                     from: pass the experiment directory (verify --image {image} EXP_DIR)"
                )
            })
    };
    Ok((label(LABEL_SOURCE)?, label(LABEL_REVISION)?))
}

/// Clones `source` into `into` and checks out `revision` (a full commit);
/// returns the experiment directory (`subdir` of the work tree). git asks
/// no questions; credentials come from the user's git configuration, or
/// for github.com from `GITHUB_TOKEN`, through git's environment only.
pub fn checkout(
    source: &str,
    revision: &str,
    into: &Path,
    subdir: Option<&Path>,
) -> Result<PathBuf> {
    if !is_full_commit(revision) {
        bail!(
            "the {LABEL_REVISION} label {revision:?} is not a full commit (40 hex digits): pass the \
             experiment directory instead"
        );
    }
    let url = git_url(source)?;
    let work = into.join("experiment");
    let work_text = work.to_string_lossy().into_owned();
    let shown = url.redacted_url();
    eprintln!("Cloning {shown} at {revision} to verify from it");
    let clone = git::git(
        None,
        &url,
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            "--",
            &shown,
            &work_text,
        ],
    )?;
    if !clone.status.success() {
        bail!(
            "cannot clone {shown} (the image's {LABEL_SOURCE} label): {}",
            git::git_message(&clone, &url)
        );
    }
    let checkout = |args: &[&str]| git::git(Some(&work), &url, args);
    let mut out = checkout(&["checkout", "--quiet", "--detach", revision, "--"])?;
    if !out.status.success() {
        // A commit no branch holds (a pull request's): ask for it by name.
        let fetched = checkout(&["fetch", "--quiet", "origin", revision])?;
        if fetched.status.success() {
            out = checkout(&["checkout", "--quiet", "--detach", revision, "--"])?;
        }
    }
    if !out.status.success() {
        bail!(
            "{shown} has no commit {revision} (the image's {LABEL_REVISION} label): {}",
            git::git_message(&out, &url)
        );
    }
    let dir = match subdir {
        Some(sub) => {
            if sub.is_absolute() || sub.components().any(|c| c.as_os_str() == "..") {
                bail!(
                    "--git-subdir {} must be a path inside the repository",
                    sub.display()
                );
            }
            work.join(sub)
        }
        None => work,
    };
    if !dir.join("config.txt").is_file() {
        bail!(
            "{shown} at {revision} has no config.txt{}: pass --git-subdir DIR when the experiment \
             is not at the repository's root",
            subdir.map_or(String::new(), |s| format!(" in {}", s.display()))
        );
    }
    Ok(dir)
}

/// The label as a git URL: an http(s), ssh, git or file URL, an scp-like
/// `host:path`, or a local path. A github.com URL gets `GITHUB_TOKEN` as
/// its credential when one is set (as actions/checkout uses it).
fn git_url(source: &str) -> Result<GitUrl> {
    if source.starts_with('-') {
        bail!("the {LABEL_SOURCE} label {source:?} is not a repository URL");
    }
    let text = if source.contains("://") {
        match std::env::var("GITHUB_TOKEN") {
            Ok(token) if !token.is_empty() && source.starts_with("https://github.com/") => {
                let encoded: String = percent_encoding::utf8_percent_encode(
                    &token,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string();
                format!(
                    "git+https://x-access-token:{encoded}@{}",
                    &source["https://".len()..]
                )
            }
            _ => format!("git+{source}"),
        }
    } else {
        let path = std::path::absolute(source)
            .with_context(|| format!("the {LABEL_SOURCE} label {source:?}"))?;
        if !path.exists() {
            bail!(
                "the {LABEL_SOURCE} label {source:?} is neither a URL nor a directory here: pass \
                 the experiment directory"
            );
        }
        format!("git+file://{}", path.display())
    };
    // GitUrl reads `@` in the path as a revision; labels carry none.
    let url = GitUrl::parse(&text).map_err(|e| anyhow::anyhow!("the {LABEL_SOURCE} label: {e}"))?;
    if url.revision.is_some() {
        bail!("the {LABEL_SOURCE} label {source:?} is not a repository URL");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_labels_are_named() {
        let config = json!({"config": {"Labels": {LABEL_SOURCE: "https://example.test/x"}}});
        let err = labels(&config, "r@sha256:1").unwrap_err().to_string();
        assert!(
            err.contains(LABEL_REVISION) && err.contains("EXP_DIR"),
            "{err}"
        );
        let err = labels(&json!({}), "r").unwrap_err().to_string();
        assert!(err.contains(LABEL_SOURCE), "{err}");
    }

    #[test]
    fn label_urls() {
        assert!(git_url("--upload-pack=x").is_err());
        let url = git_url("https://example.test/lab/exp").unwrap();
        assert_eq!(url.redacted_url(), "https://example.test/lab/exp");
        assert!(git_url("/no/such/dir/anywhere").is_err());
    }
}
