//! The git side of an experiment: which files git would keep, and the facts
//! for the image labels. git is run as a command (`git -C DIR ...`) with the
//! user's own configuration, so the global `core.excludesFile` applies as it
//! does for Dallinger. Extra environment (tests) is passed per command.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use unicode_normalization::UnicodeNormalization as _;

use super::{ExperimentError, GitInfo};

pub(crate) type GitEnv<'a> = &'a [(&'a str, &'a str)];

/// The directory holding `.git` (a directory or a worktree's file) in `dir`
/// or its nearest ancestor, if any.
pub(crate) fn find_work_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").symlink_metadata().is_ok())
        .map(Path::to_path_buf)
}

fn run(dir: &Path, env: GitEnv<'_>, args: &[&str]) -> Result<Output, ExperimentError> {
    finish(dir, start(dir, env, args))
}

/// Starts `git -C dir ARGS`, its output captured, so several can run at once.
fn start(dir: &Path, env: GitEnv<'_>, args: &[&str]) -> std::io::Result<Child> {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn()
}

/// The output of a command [`start`] started.
fn finish(dir: &Path, started: std::io::Result<Child>) -> Result<Output, ExperimentError> {
    started
        .and_then(Child::wait_with_output)
        .map_err(|e| ExperimentError::Invalid {
            message: format!(
                "{} is inside a git repository, so git decides which files go into the image \
             (tracked files and untracked files that are not ignored), but `git` could not \
             be run: {e}. Install git and make sure it is on PATH.",
                dir.display()
            ),
        })
}

/// A path as a comparison key: NFC-normalised when it is UTF-8 (as Dallinger
/// normalises `git ls-files` output), the raw bytes otherwise.
pub(crate) fn path_key(bytes: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.nfc().collect::<String>().into_bytes(),
        Err(_) => bytes.to_vec(),
    }
}

/// `git ls-files -z --cached --others --exclude-standard` in `dir`: paths
/// relative to `dir`, as [`path_key`]s.
pub(crate) fn listed_files(
    dir: &Path,
    env: GitEnv<'_>,
) -> Result<HashSet<Vec<u8>>, ExperimentError> {
    let out = run(
        dir,
        env,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    )?;
    if !out.status.success() {
        return Err(ExperimentError::Invalid {
            message: format!(
                "{} is inside a git repository, but `git ls-files` failed ({}): {}\
                 Fix the repository (or run the command above to see the problem); \
                 the file set for the image depends on it.",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(path_key)
        .collect())
}

/// HEAD and the origin URL, for the labels. `None` when there is no commit yet.
pub(crate) fn info(dir: &Path, env: GitEnv<'_>) -> Result<Option<GitInfo>, ExperimentError> {
    // Both at once: each is a process start, which is most of their time.
    let head = start(dir, env, &["rev-parse", "--verify", "-q", "HEAD^{commit}"]);
    let origin = start(dir, env, &["config", "--get", "remote.origin.url"]);
    let (head, origin) = (finish(dir, head)?, finish(dir, origin)?);
    if !head.status.success() {
        return Ok(None);
    }
    let revision = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let source = if origin.status.success() {
        public_url(String::from_utf8_lossy(&origin.stdout).trim())
    } else {
        None
    };
    Ok(Some(GitInfo { source, revision }))
}

/// A remote URL as a public link: credentials removed, ssh and scp-like
/// addresses turned into https, `.git` dropped. Local paths and `file://`
/// URLs give `None` (a host path must not end up in the image).
pub(crate) fn public_url(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return None;
    }
    let (scheme, host, path) = if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (scheme, host) = match scheme.as_str() {
            "http" | "https" => (scheme.clone(), host_port.to_string()),
            // An ssh or git port is not the web port.
            "ssh" | "git" | "git+ssh" | "ssh+git" => (
                "https".to_string(),
                host_port
                    .rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(host_port, |(h, _)| h)
                    .to_string(),
            ),
            _ => return None,
        };
        (scheme, host, path.to_string())
    } else {
        // scp-like `[user@]host:path`; anything else is a local path.
        let (before, path) = url.split_once(':')?;
        if before.contains('/') || before.is_empty() {
            return None;
        }
        let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
        ("https".to_string(), host.to_string(), path.to_string())
    };
    if host.is_empty() {
        return None;
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let path = path.trim_end_matches('/');
    Some(if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls() {
        let cases = [
            (
                "git@github.com:Dallinger/Dallinger.git",
                Some("https://github.com/Dallinger/Dallinger"),
            ),
            (
                "https://user:ghp_secret@github.com/o/r.git",
                Some("https://github.com/o/r"),
            ),
            (
                "https://ghp_secret@github.com/o/r",
                Some("https://github.com/o/r"),
            ),
            ("http://host:8080/o/r.git", Some("http://host:8080/o/r")),
            (
                "ssh://git@gitlab.example.org:2222/g/sub/r.git",
                Some("https://gitlab.example.org/g/sub/r"),
            ),
            ("gitlab.com:o/r", Some("https://gitlab.com/o/r")),
            ("/srv/git/repo.git", None),
            ("../other", None),
            ("file:///srv/git/repo.git", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(public_url(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn nfc_keys() {
        assert_eq!(path_key("e\u{301}.txt".as_bytes()), "\u{e9}.txt".as_bytes());
        assert_eq!(path_key(b"\xff"), b"\xff");
    }
}
