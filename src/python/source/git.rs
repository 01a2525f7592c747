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
//! recorded or printed has them removed, and so has every URL git is given:
//! an http(s) credential reaches git through its environment (a credential
//! helper that answers only for the URL's scheme and host), never through
//! its command line, where `ps` shows it, nor through a file (ssh cannot
//! use a password from a URL under `BatchMode`: it is dropped).
//!
//! Cache (under the wheel cache's `git/`): one bare repository per URL
//! (`repos/`), and the tarball per URL and commit (`archives/`), made by
//! `git archive`, whose bytes depend only on the commit (every mtime is the
//! commit's time). With a commit and its tarball cached, no git command and
//! no network is needed.

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::image::store::sha256_digest;

/// A `git+` URL of a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl {
    /// The URL without `git+`, the revision and the fragment; credentials
    /// kept as written (git is given `redacted_url`, and the credential
    /// apart).
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

/// The user name and password of an http(s) URL, percent-decoded as git
/// decodes them, and where git may send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCredential {
    /// `http` or `https`.
    protocol: String,
    /// `HOST[:PORT]` as the URL writes it (what git's credential protocol
    /// asks for).
    host: String,
    username: String,
    password: String,
}

impl GitUrl {
    /// The credential the URL carries, for http(s) only (git gives ssh the
    /// user name from the URL it is given and never a password).
    pub fn credential(&self) -> Result<Option<UrlCredential>, String> {
        let url = &self.fetch_url;
        let Some((protocol, rest)) = url.split_once("://") else {
            return Ok(None);
        };
        if !matches!(protocol, "http" | "https") {
            return Ok(None);
        }
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let Some(at) = authority.rfind('@') else {
            return Ok(None);
        };
        let (user, password) = match authority[..at].split_once(':') {
            Some((u, p)) => (u, p),
            None => (&authority[..at], ""),
        };
        let decode = |text: &str| -> Result<String, String> {
            let bytes = percent_decode(text);
            match String::from_utf8(bytes) {
                Ok(s) if !s.contains(['\n', '\r', '\0']) => Ok(s),
                _ => Err(format!(
                    "the credential in {} is not UTF-8 on one line: write it percent-encoded",
                    self.redacted_url()
                )),
            }
        };
        Ok(Some(UrlCredential {
            protocol: protocol.to_string(),
            host: authority[at + 1..].to_string(),
            username: decode(user)?,
            password: decode(password)?,
        }))
    }
}

/// `%XX` escapes decoded; anything else (a stray `%` too) kept as written.
fn percent_decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// The credential helper git is given for a URL with a credential: a shell
/// function (git runs `!` helpers with the shell) that reads git's request
/// and answers only one for the URL's own scheme and host, from the
/// environment of the git process, so that neither a command line nor a
/// file ever holds the credential, and a redirect to another host gets none.
const CREDENTIAL_HELPER: &str = "!f() { p=; h=; \
while IFS= read -r l && test -n \"$l\"; do case \"$l\" in \
protocol=*) p=\"${l#protocol=}\";; host=*) h=\"${l#host=}\";; esac; done; \
test \"$1\" = get && test \"$p\" = \"$DALLINGER_OCI_GIT_PROTOCOL\" \
&& test \"$h\" = \"$DALLINGER_OCI_GIT_HOST\" || exit 0; \
printf 'username=%s\\npassword=%s\\n' \"$DALLINGER_OCI_GIT_USERNAME\" \
\"$DALLINGER_OCI_GIT_PASSWORD\"; }; f";

/// Gives `command` (a git process) the credential through its environment:
/// the user's own helpers are reset (so none of them stores or replaces
/// it) and the helper above reads it. The configuration is added with
/// `GIT_CONFIG_KEY_n` after any the caller's environment already has.
fn pass_credential(command: &mut Command, credential: &UrlCredential) {
    let first: usize = std::env::var("GIT_CONFIG_COUNT")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    for (i, value) in ["", CREDENTIAL_HELPER].into_iter().enumerate() {
        command
            .env(format!("GIT_CONFIG_KEY_{}", first + i), "credential.helper")
            .env(format!("GIT_CONFIG_VALUE_{}", first + i), value);
    }
    command
        .env("GIT_CONFIG_COUNT", (first + 2).to_string())
        .env("DALLINGER_OCI_GIT_PROTOCOL", &credential.protocol)
        .env("DALLINGER_OCI_GIT_HOST", &credential.host)
        .env("DALLINGER_OCI_GIT_USERNAME", &credential.username)
        .env("DALLINGER_OCI_GIT_PASSWORD", &credential.password);
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
    let out = git(None, url, &["ls-remote", "--", &url.redacted_url(), wanted])?;
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
    let remote = url.redacted_url();
    let single = git(
        Some(repo),
        url,
        &["fetch", "--quiet", "--depth=1", "--", &remote, commit],
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
        &remote,
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
/// (`SSH_AUTH_SOCK`) and ssh settings are inherited. The URL's credential,
/// if any, goes in the environment only (`args` name the URL without it).
pub(crate) fn git(repo: Option<&Path>, url: &GitUrl, args: &[&str]) -> Result<Output> {
    let mut command = Command::new("git");
    if let Some(credential) = url
        .credential()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("the requirement {}", url.display()))?
    {
        pass_credential(&mut command, &credential);
    }
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
pub(crate) fn git_message(out: &Output, url: &GitUrl) -> String {
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
    fn url_credentials_are_decoded_for_http_only() {
        let u = GitUrl::parse("git+https://user:p%40ss%2Fw@example.test:8443/r.git@main").unwrap();
        let c = u.credential().unwrap().unwrap();
        assert_eq!(
            (
                c.protocol.as_str(),
                c.host.as_str(),
                c.username.as_str(),
                c.password.as_str()
            ),
            ("https", "example.test:8443", "user", "p@ss/w")
        );
        let c = GitUrl::parse("git+http://ghp_TOKEN@127.0.0.1/r.git")
            .unwrap()
            .credential()
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ghp_TOKEN", "")
        );
        for none in [
            "git+https://example.test/r.git",
            "git+ssh://me:pw@example.test/r.git",
            "git+file:///srv/r",
        ] {
            assert_eq!(
                GitUrl::parse(none).unwrap().credential(),
                Ok(None),
                "{none}"
            );
        }
        let err = GitUrl::parse("git+https://a%0Ab:c@example.test/r.git")
            .unwrap()
            .credential()
            .unwrap_err();
        assert!(
            err.contains("https://example.test/r.git") && !err.contains("a%0Ab"),
            "{err}"
        );
        assert_eq!(percent_decode("%41%4g%"), b"A%4g%");
    }

    /// The helper answers git's request for the URL's scheme and host only.
    #[test]
    fn the_credential_helper_answers_only_for_its_host() {
        let u = GitUrl::parse("git+https://user:p%20w@example.test:8443/r.git").unwrap();
        let credential = u.credential().unwrap().unwrap();
        let ask = |action: &str, request: &str| -> String {
            let mut command = Command::new("git");
            pass_credential(&mut command, &credential);
            let script = CREDENTIAL_HELPER.strip_prefix('!').unwrap();
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(format!("{script} {action}"));
            for (k, v) in command.get_envs() {
                if let Some(v) = v {
                    sh.env(k, v);
                }
            }
            let mut child = sh
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            // A helper that does not answer may exit before reading.
            let _ = child.stdin.take().unwrap().write_all(request.as_bytes());
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            ask(
                "get",
                "protocol=https\nhost=example.test:8443\npath=r.git\n\n"
            ),
            "username=user\npassword=p w\n"
        );
        for other in [
            "protocol=https\nhost=elsewhere.test\n\n",
            "protocol=http\nhost=example.test:8443\n\n",
            "protocol=https\nhost=example.test\n\n",
        ] {
            assert_eq!(ask("get", other), "", "{other}");
        }
        assert_eq!(
            ask("store", "protocol=https\nhost=example.test:8443\n\n"),
            ""
        );
        // The command line holds no credential, only the names of variables.
        assert!(!CREDENTIAL_HELPER.contains("p w"));
    }

    #[test]
    fn full_commits() {
        assert!(is_full_commit(&"a1".repeat(20)));
        assert!(!is_full_commit("a1b2c3"));
        assert!(!is_full_commit("main"));
    }
}
