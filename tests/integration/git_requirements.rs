//! git requirements (`name @ git+…@REF`): a branch resolved to its commit
//! (with a warning while unlocked), the commit in the lock, the source at
//! that commit built like an sdist in the builder, importable in the image;
//! a locked rebuild with a warm cache needs neither the repository nor the
//! network and gives the same digest. And the one-line errors.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use common::git::git;
use common::python_base_command as dallinger_oci;
use common::*;

/// Commits `tinygit/__init__.py` saying `VALUE = value`; returns the commit.
fn commit_value(repo: &Path, value: &str) -> String {
    fs::write(
        repo.join("tinygit/__init__.py"),
        format!("VALUE = {value:?}\n"),
    )
    .unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", value]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A git repository with a pure-Python setuptools package `tinygit` on the
/// branch `main`; returns it and its first commit.
fn tiny_repo(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("tinygit-repo");
    fs::create_dir_all(repo.join("tinygit")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    fs::write(
        repo.join("pyproject.toml"),
        setuptools_pyproject("tinygit", "0.1.0", ""),
    )
    .unwrap();
    let commit = commit_value(&repo, "one");
    (repo, commit)
}

fn experiment(sandbox: &Sandbox, name: &str, requirement: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", name);
    fs::write(exp.join("requirements.txt"), "tinygit\n").unwrap();
    fs::write(exp.join("constraints.txt"), format!("{requirement}\n")).unwrap();
    exp
}

#[test]
fn a_git_requirement_is_locked_at_its_commit_built_and_rebuilt_offline() {
    require_tool("podman");
    let builder = python_builder_layout();
    let sandbox = Sandbox::new();
    let (repo, first) = tiny_repo(&sandbox.path("src"));
    let url = format!("git+file://{}", repo.display());
    let exp = experiment(&sandbox, "gitapp", &format!("tinygit @ {url}@main"));
    let build_args = ["--build-sdists", "--builder-base", builder.as_str()];

    // Without --build-sdists: the line, and the way on.
    let err = one_line_error(&dallinger_oci(&sandbox, "build", &exp, &[]));
    assert!(
        err.contains(&format!(
            "constraints.txt:1: `tinygit @ {url}@main` is a git requirement, built from source: \
             pass --build-sdists"
        )),
        "{err}"
    );

    // The branch is resolved to its commit, with a warning while unlocked.
    let (_, stderr) = succeeds(dallinger_oci(&sandbox, "lock", &exp, &build_args));
    assert!(
        stderr.contains(&format!(
            "warning: {}:1: tinygit @ {url}@main follows the branch `main`, now at commit {first}",
            exp.join("constraints.txt").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "Building tinygit at {} from tinygit-",
            &first[..12]
        )),
        "{stderr}"
    );
    let lock = fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap();
    assert!(
        lock.contains(&format!(
            "[packages.vcs]\ntype = \"git\"\nurl = \"file://{}\"\nrequested-revision = \"main\"\n\
             commit-id = \"{first}\"\n",
            repo.display()
        )) && lock.contains("name = \"tinygit-0.1.0-py3-none-any.whl\""),
        "{lock}"
    );

    // The branch moves on; the lock keeps the image at its commit.
    let second = commit_value(&repo, "two");
    assert_ne!(first, second);
    let (digest, stderr, printed) = locked_build_and_run_python(
        &sandbox,
        &exp,
        &build_args,
        "registry.example.test/dallinger-oci/golden",
        "git-test",
        "import tinygit; print(tinygit.VALUE)",
    );
    assert!(!stderr.contains("Building tinygit"), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert_eq!(printed, "one\n");

    // With the lock and a warm cache: no repository, no network, no builder
    // flag, the same digest.
    fs::rename(&repo, sandbox.path("src/moved-away")).unwrap();
    let (stdout, stderr) = succeeds(dallinger_oci(
        &sandbox,
        "build",
        &exp,
        &["--locked", "--offline", "--tag", "git-test"],
    ));
    assert!(!stderr.contains("Building"), "{stderr}");
    assert_eq!(printed_digest(&stdout), digest);
}

#[test]
fn git_errors_are_one_line_and_name_the_problem() {
    let builder = python_builder_layout();
    let sandbox = Sandbox::new();
    let (repo, _) = tiny_repo(&sandbox.path("src"));
    let url = format!("git+file://{}", repo.display());
    let build_args = ["--build-sdists", "--builder-base", builder.as_str()];

    // Each in its own experiment: the line, and what is wrong with it.
    let build_error = |name: &str, requirement: String| {
        let exp = experiment(&sandbox, name, &requirement);
        let out = dallinger_oci(&sandbox, "build", &exp, &build_args);
        // The one credential of these requirements is never printed.
        assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
        let err = one_line_error(&out);
        // Nothing half-written: no lock.
        assert!(!exp.join("pylock.dallinger-oci.toml").exists());
        err
    };

    let unknown = "0123456789".repeat(4);
    let err = build_error("unknown-commit", format!("tinygit @ {url}@{unknown}"));
    assert!(
        err.contains(&format!(
            "constraints.txt:1: tinygit @ {url}@{unknown}: commit {unknown} is not in file://{} \
             (on no branch or tag)",
            repo.display()
        )),
        "{err}"
    );

    let err = build_error("unknown-ref", format!("tinygit @ {url}@no-such-branch"));
    assert!(
        err.contains("`no-such-branch` is neither a branch, a tag nor a full commit id of file://"),
        "{err}"
    );

    let missing = sandbox.path("no-such-repo");
    let err = build_error(
        "unreachable",
        format!("tinygit @ git+file://{}@main", missing.display()),
    );
    assert!(
        err.contains(&format!(
            "cannot reach the git repository file://{}: fatal: '{}' does not appear to be a git \
             repository",
            missing.display(),
            missing.display()
        )),
        "{err}"
    );

    // A credential in the URL is used, never shown.
    let err = build_error(
        "credentials",
        "tinygit @ git+https://user:s3cret@127.0.0.1:9/x.git@main".into(),
    );
    assert!(
        err.contains("cannot reach the git repository https://127.0.0.1:9/x.git: "),
        "{err}"
    );
}
