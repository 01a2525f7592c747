//! Git requirements (`name @ git+https://HOST/REPO@REF`, `git+ssh://…`,
//! `git+file://…`, pip's `#egg=` and `#subdirectory=`): the URL as written,
//! the revision resolved to a commit, and the source at that commit as a
//! tarball, which is then built like an sdist.
//!
//! git runs on the host (not in the build sandbox), with the user's
//! environment, so `git+ssh` reaches private repositories through the
//! user's `SSH_AUTH_SOCK` agent. Prompts are off: a missing credential is
//! an error, never a hang. Credentials in a URL (`https://TOKEN@host/…`,
//! `ssh://user:PASSWORD@host/…`) are used for fetching only; every URL
//! recorded or printed has them removed.
//!
//! Cache (under the wheel cache's `git/`): one bare repository per URL
//! (`repos/`), and the tarball per URL and commit (`archives/`), made by
//! `git archive`, whose bytes depend only on the commit (every mtime is the
//! commit's time). With a commit and its tarball cached, no git command and
//! no network is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::image::store::sha256_digest;

/// A `git+` URL of a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    /// What git is given: without `git+`, the revision and the fragment;
    /// credentials kept as written.
    pub fetch_url: String,
    /// The revision after `@` (branch, tag or commit), if any.
    pub revision: Option<String>,
    /// pip's `#subdirectory=`: where the package is inside the repository.
    pub subdirectory: Option<String>,
    /// pip's `#egg=`: the distribution's name.
    pub egg: Option<String>,
}

impl GitUrl {
    /// Parses `git+SCHEME://…[@REV][#egg=NAME&subdirectory=DIR]`.
    pub fn parse(text: &str) -> Result<GitUrl, String> {
        let rest = text
            .strip_prefix("git+")
            .ok_or_else(|| format!("`{text}` is not a git+ URL"))?;
        let (url, fragment) = match rest.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (rest, None),
        };
        let scheme_end = url.find("://").ok_or_else(|| {
            format!("`{text}`: write git URLs as git+https://, git+ssh:// or git+file://")
        })?;
        let scheme = &url[..scheme_end];
        if !matches!(scheme, "https" | "http" | "ssh" | "file" | "git") {
            return Err(format!(
                "`{text}`: git over `{scheme}` is not supported: use git+https://, git+ssh:// or \
                 git+file://"
            ));
        }
        // The revision is after an `@` in the path, not the one of user@host.
        let path_start = url[scheme_end + 3..]
            .find('/')
            .map(|i| scheme_end + 3 + i)
            .unwrap_or(url.len());
        let (fetch_url, revision) = match url[path_start..].rfind('@') {
            Some(i) => {
                let at = path_start + i;
                (&url[..at], Some(url[at + 1..].to_string()))
            }
            None => (url, None),
        };
        if revision.as_deref() == Some("") {
            return Err(format!(
                "`{text}`: nothing after `@`: name a branch, tag or commit"
            ));
        }
        let mut egg = None;
        let mut subdirectory = None;
        for part in fragment.unwrap_or_default().split('&') {
            if let Some(v) = part.strip_prefix("egg=") {
                egg = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("subdirectory=") {
                if v.split('/').any(|c| c == "..") || v.starts_with('/') {
                    return Err(format!(
                        "`{text}`: the subdirectory must stay inside the repository"
                    ));
                }
                subdirectory = Some(v.trim_end_matches('/').to_string());
            }
        }
        Ok(GitUrl {
            fetch_url: fetch_url.to_string(),
            revision,
            subdirectory,
            egg,
        })
    }

    /// The fetch URL without credentials: for http(s) no user information
    /// at all (a token is often the user name), for ssh no password.
    pub fn redacted_url(&self) -> String {
        self.scrub(&self.fetch_url)
    }

    /// `git+URL[@REV]` without credentials, for messages.
    pub fn display(&self) -> String {
        match &self.revision {
            Some(rev) => format!("git+{}@{rev}", self.redacted_url()),
            None => format!("git+{}", self.redacted_url()),
        }
    }

    /// `text` with the URL's credentials (`USERINFO@` as written) replaced
    /// by what may be shown of them: git quotes URLs in its messages.
    fn scrub(&self, text: &str) -> String {
        let url = &self.fetch_url;
        let Some(scheme_end) = url.find("://") else {
            return text.to_string();
        };
        let host_start = scheme_end + 3;
        let authority = &url[host_start..];
        let authority = &authority[..authority.find('/').unwrap_or(authority.len())];
        let Some(at) = authority.rfind('@') else {
            return text.to_string();
        };
        let userinfo = &authority[..at];
        let shown = if url.starts_with("ssh://") {
            format!(
                "{}@",
                userinfo.split_once(':').map_or(userinfo, |(user, _)| user)
            )
        } else {
            String::new()
        };
        text.replace(&format!("{userinfo}@"), &shown)
    }
}

/// A revision resolved to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRevision {
    /// 40 hex digits.
    pub commit: String,
    /// The branch the revision follows ("main", or "HEAD" when none was
    /// named): a later resolution may give another commit.
    pub moving: Option<String>,
}

pub fn is_full_commit(text: &str) -> bool {
    text.len() == 40 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The commit `url`'s revision names: a full commit id as is, anything
/// else through `git ls-remote` (tags peeled, then branches).
pub fn resolve_revision(url: &GitUrl) -> Result<ResolvedRevision> {
    let wanted = url.revision.as_deref().unwrap_or("HEAD");
    if is_full_commit(wanted) {
        return Ok(ResolvedRevision {
            commit: wanted.to_ascii_lowercase(),
            moving: None,
        });
    }
    let out = git(None, url, &["ls-remote", "--", &url.fetch_url, wanted])?;
    if !out.status.success() {
        bail!(
            "cannot reach the git repository {}: {}",
            url.redacted_url(),
            git_message(&out, url)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let refs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(c, _)| *c);
    let found = if wanted == "HEAD" {
        find("HEAD").map(|c| (c, Some("HEAD".to_string())))
    } else {
        find(&format!("refs/tags/{wanted}^{{}}"))
            .or_else(|| find(&format!("refs/tags/{wanted}")))
            .map(|c| (c, None))
            .or_else(|| {
                find(&format!("refs/heads/{wanted}")).map(|c| (c, Some(wanted.to_string())))
            })
            .or_else(|| find(wanted).map(|c| (c, Some(wanted.to_string()))))
    };
    let Some((commit, moving)) = found else {
        bail!(
            "`{wanted}` is neither a branch, a tag nor a full commit id of {}: name one that \
             `git ls-remote {}` lists, or a full 40-digit commit id",
            url.redacted_url(),
            url.redacted_url()
        );
    };
    Ok(ResolvedRevision {
        commit: commit.to_string(),
        moving,
    })
}

/// The tarball of the package's source at `commit`: from the cache, else
/// fetched into the cached repository and made with `git archive`.
/// `name` (the distribution) names the file and its top directory.
/// `offline`: a commit not in the cache is an error, not a fetch.
pub fn source_archive(
    cache: &Path,
    url: &GitUrl,
    commit: &str,
    name: &str,
    offline: bool,
) -> Result<PathBuf> {
    let short = &commit[..12];
    let key = sha256_digest(
        format!(
            "git-archive/1\n{}\n{commit}\n{}\n",
            url.redacted_url(),
            url.subdirectory.as_deref().unwrap_or("")
        )
        .as_bytes(),
    );
    let archives = cache.join("archives");
    let archive = archives.join(format!("{name}-{short}-{}.tar", &key[7..19]));
    if archive.is_file() {
        return Ok(archive);
    }
    let repo = cached_repository(cache, url)?;
    if !has_commit(&repo, url, commit) {
        if offline {
            bail!(
                "commit {commit} of {} is not in the cache, and --offline allows no network: \
                 build once with network (or run `dallinger-oci lock`) to fill the cache",
                url.redacted_url()
            );
        }
        fetch_commit(&repo, url, commit)?;
    }
    fs::create_dir_all(&archives)?;
    // An exclusive temporary name: two builds exporting the same commit
    // never write one file, and nothing planted at a fixed name is followed.
    let partial = crate::fsutil::TempFile::new_in(&archives, ".partial-", 0o644)?;
    let mut args = vec![
        "archive".to_string(),
        "--format=tar".into(),
        format!("--prefix={name}-{short}/"),
        "-o".into(),
        partial
            .path()
            .to_str()
            .context("the cache path is not UTF-8")?
            .into(),
    ];
    match &url.subdirectory {
        // A tree (not a commit) would get the current time as every
        // mtime: give it the commit's.
        Some(sub) => {
            let time = git(Some(&repo), url, &["show", "-s", "--format=%ct", commit])?;
            let time = String::from_utf8_lossy(&time.stdout).trim().to_string();
            args.push(format!("--mtime=@{time}"));
            args.push(format!("{commit}:{sub}"));
        }
        None => args.push(commit.to_string()),
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = git(Some(&repo), url, &args)?;
    if !out.status.success() {
        bail!(
            "cannot export commit {commit} of {}{}: {}",
            url.redacted_url(),
            url.subdirectory
                .as_deref()
                .map(|s| format!(" (subdirectory {s})"))
                .unwrap_or_default(),
            git_message(&out, url)
        );
    }
    partial.commit(&archive)?;
    Ok(archive)
}

/// The bare repository that caches `url`'s objects, made on first use.
fn cached_repository(cache: &Path, url: &GitUrl) -> Result<PathBuf> {
    let repos = cache.join("repos");
    let repo = repos.join(format!(
        "{}.git",
        &sha256_digest(url.redacted_url().as_bytes())[7..23]
    ));
    if repo.join("HEAD").is_file() {
        return Ok(repo);
    }
    fs::create_dir_all(&repos)?;
    let partial = tempfile::Builder::new()
        .prefix(".init-")
        .tempdir_in(&repos)?;
    let out = git(
        None,
        url,
        &[
            "init",
            "--quiet",
            "--bare",
            partial
                .path()
                .to_str()
                .context("the cache path is not UTF-8")?,
        ],
    )?;
    if !out.status.success() {
        bail!("git init failed in the cache: {}", git_message(&out, url));
    }
    match fs::rename(partial.keep(), &repo) {
        Ok(()) => Ok(repo),
        // Another build made it meanwhile.
        Err(_) if repo.join("HEAD").is_file() => Ok(repo),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", repo.display())),
    }
}

fn has_commit(repo: &Path, url: &GitUrl, commit: &str) -> bool {
    git(
        Some(repo),
        url,
        &["cat-file", "-e", &format!("{commit}^{{commit}}")],
    )
    .is_ok_and(|o| o.status.success())
}

/// Fetches `commit` alone (servers that allow it, as GitHub and local
/// repositories do), else every branch and tag.
fn fetch_commit(repo: &Path, url: &GitUrl, commit: &str) -> Result<()> {
    let single = git(
        Some(repo),
        url,
        &[
            "fetch",
            "--quiet",
            "--depth=1",
            "--",
            &url.fetch_url,
            commit,
        ],
    )?;
    if single.status.success() && has_commit(repo, url, commit) {
        return Ok(());
    }
    let mut args = vec!["fetch", "--quiet"];
    if repo.join("shallow").exists() {
        args.push("--unshallow");
    }
    args.extend([
        "--",
        &url.fetch_url,
        "+refs/heads/*:refs/remote/heads/*",
        "+refs/tags/*:refs/remote/tags/*",
    ]);
    let all = git(Some(repo), url, &args)?;
    if !all.status.success() {
        bail!(
            "cannot fetch from the git repository {}: {}",
            url.redacted_url(),
            git_message(&all, url)
        );
    }
    if !has_commit(repo, url, commit) {
        bail!(
            "commit {commit} is not in {} (on no branch or tag): check the commit id, or run \
             `dallinger-oci lock` again if the branch it was on was force-pushed",
            url.redacted_url()
        );
    }
    Ok(())
}

/// Runs git without prompts (a missing credential fails at once) and, for
/// ssh, without asking about unknown host keys; the user's agent
/// (`SSH_AUTH_SOCK`) and ssh settings are inherited.
fn git(repo: Option<&Path>, url: &GitUrl, args: &[&str]) -> Result<Output> {
    let mut command = Command::new("git");
    if let Some(repo) = repo {
        command.arg("-C").arg(repo);
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    command.output().with_context(|| {
        format!(
            "cannot run git for the requirement {}: install git and make sure it is on PATH",
            url.display()
        )
    })
}

/// git's first `fatal:`/`error:` line (the cause; later lines are
/// generic advice), else its last line, with any credential of the URL
/// removed.
fn git_message(out: &Output, url: &GitUrl) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("git failed without a message")
        .to_string();
    url.scrub(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pip_git_urls() {
        let u = GitUrl::parse("git+https://github.com/Dallinger/Dallinger@v12.3.0#egg=dallinger")
            .unwrap();
        assert_eq!(u.fetch_url, "https://github.com/Dallinger/Dallinger");
        assert_eq!(u.revision.as_deref(), Some("v12.3.0"));
        assert_eq!(u.egg.as_deref(), Some("dallinger"));

        let u = GitUrl::parse("git+ssh://git@github.com/owner/repo.git").unwrap();
        assert_eq!(u.fetch_url, "ssh://git@github.com/owner/repo.git");
        assert_eq!(u.revision, None);
        assert_eq!(u.redacted_url(), "ssh://git@github.com/owner/repo.git");

        let u = GitUrl::parse("git+file:///srv/repo@main#subdirectory=pkg/sub").unwrap();
        assert_eq!(u.fetch_url, "file:///srv/repo");
        assert_eq!(u.subdirectory.as_deref(), Some("pkg/sub"));

        assert!(GitUrl::parse("git+file:///srv/repo@").is_err());
        assert!(GitUrl::parse("git+file:///r#subdirectory=../x").is_err());
        assert!(GitUrl::parse("git+github.com/x").is_err());
    }

    #[test]
    fn credentials_never_leave_the_fetch_url() {
        let u = GitUrl::parse("git+https://user:s3cret@example.test/r.git@main").unwrap();
        assert_eq!(u.fetch_url, "https://user:s3cret@example.test/r.git");
        assert_eq!(u.redacted_url(), "https://example.test/r.git");
        assert_eq!(u.display(), "git+https://example.test/r.git@main");
        let u = GitUrl::parse("git+https://ghp_TOKEN@example.test/r.git").unwrap();
        assert_eq!(u.redacted_url(), "https://example.test/r.git");
        let u = GitUrl::parse("git+ssh://me:pw@example.test/r.git@abc").unwrap();
        assert_eq!(u.redacted_url(), "ssh://me@example.test/r.git");
        assert_eq!(
            u.scrub("fatal: unable to access 'ssh://me:pw@example.test/r.git/': denied"),
            "fatal: unable to access 'ssh://me@example.test/r.git/': denied"
        );
        assert_eq!(u.revision.as_deref(), Some("abc"));
    }

    #[test]
    fn full_commits() {
        assert!(is_full_commit(&"a1".repeat(20)));
        assert!(!is_full_commit("a1b2c3"));
        assert!(!is_full_commit("main"));
    }
}
