//! git for the tests' own repositories: a fixed identity and dates, none of
//! the machine's configuration.

use std::path::Path;
use std::process::Command;

use super::{ok, require_tool};

/// `git -C repo ARGS` as a test user at 2001-01-01; its trimmed stdout.
pub fn git(repo: &Path, args: &[&str]) -> String {
    ok(Command::new(require_tool("git"))
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.test"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", "2001-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2001-01-01T00:00:00Z"))
    .trim()
    .to_string()
}
