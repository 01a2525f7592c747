//! The experiment class's `extra_files()` hook (Dallinger's
//! `ExplicitFileSource`): evaluated in the sandbox with the image's own
//! Python and a real Dallinger (fixtures/experiments/dallinger-demo's
//! closure), its files taken from an installed package into `/experiment`,
//! reproducibly; an exception in the hook stops the build in one line.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dallinger::sdist_build_args;
use common::dallinger_image::dallinger_demo_command;
use common::*;

const LOGO: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><circle r=\"4\"/></svg>\n";
const LAYOUT: &[u8] = b"<html>{% block body %}{% endblock %}</html>\n";
const FOOTER: &[u8] = b"<footer>made with a package's templates</footer>\n";

/// The hook of the demo's experiment class: a file and a directory of the
/// installed `oci_extra_data`.
const HOOK: &str = "    @classmethod
    def extra_files(cls):
        import os

        import oci_extra_data

        root = os.path.dirname(oci_extra_data.__file__)
        return [
            (os.path.join(root, \"logo.svg\"), \"/static/images/logo.svg\"),
            (os.path.join(root, \"templates\"), \"/templates/extra\"),
        ]

";

const RAISING_HOOK: &str = "    @classmethod
    def extra_files(cls):
        raise RuntimeError(\"this package has no logo\")

";

/// A wheel of `oci_extra_data` (a data file and a directory of templates)
/// in `dir`, for `--find-links`.
fn data_wheel(dir: &Path) -> PathBuf {
    write_versioned_wheel(
        dir,
        "oci_extra_data",
        "1.0",
        &[
            ("oci_extra_data/__init__.py", b"\"\"\"Test data.\"\"\"\n"),
            ("oci_extra_data/logo.svg", LOGO),
            ("oci_extra_data/templates/layout.html", LAYOUT),
            ("oci_extra_data/templates/partials/footer.html", FOOTER),
        ],
        true,
    );
    dir.to_path_buf()
}

/// The demo experiment at `rel` with `hook` in its class, the data package
/// pinned in requirements.txt and constraints.txt, and `salt` (so this
/// run's evaluation is cached nowhere yet).
fn experiment(sandbox: &Sandbox, rel: &str, hook: &str, salt: &str) -> PathBuf {
    let exp = sandbox.experiment("dallinger-demo", rel);
    let path = exp.join("experiment.py");
    let text = fs::read_to_string(&path).unwrap();
    let anchor = "    experiment_repeats = 1\n";
    assert!(text.contains(anchor), "{text}");
    fs::write(&path, text.replacen(anchor, &format!("{hook}{anchor}"), 1)).unwrap();
    for file in ["requirements.txt", "constraints.txt"] {
        let text = fs::read_to_string(exp.join(file)).unwrap();
        fs::write(exp.join(file), format!("{text}oci-extra-data==1.0\n")).unwrap();
    }
    fs::write(exp.join("run.txt"), salt).unwrap();
    exp
}

fn salt() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}\n", now.as_nanos(), std::process::id())
}

/// `build EXP` as the demo builds, with the data wheel's directory and
/// `cache` (else the demo's shared cache), into `layout`.
fn build(sandbox: &Sandbox, exp: &Path, links: &Path, cache: Option<&Path>) -> Command {
    let mut cmd = match cache {
        None => dallinger_demo_command(sandbox, "build", exp),
        Some(cache) => {
            let mut cmd = sandbox.cmd();
            cmd.env_remove("DALLINGER_OCI_NO_DEPS")
                .arg("build")
                .arg(exp)
                .args(["--base", &python_base_layout()])
                .args(sdist_build_args())
                .arg("--cache-dir")
                .arg(cache);
            cmd
        }
    };
    cmd.arg("--find-links")
        .arg(links)
        .args(["--tag", "extra-files", "--output", "oci:layout"]);
    cmd
}

/// A copy of the cache at `from` made of hard links, without its
/// evaluations of extra_files() (`files/extra-files-*`): another cache
/// that must evaluate the hook again. Its blobs, layer records, memos,
/// index answers and wheels only: unpacked trees are fingerprinted with
/// their ctimes, which a hard link changes.
fn cache_without_evaluations(from: &Path, to: &Path) {
    const COPIED: [&str; 5] = ["blobs", "layers", "files", "index-answers", "wheels"];
    for entry in walkdir::WalkDir::new(from).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let copied = rel.as_os_str().is_empty() || COPIED.iter().any(|d| rel.starts_with(d));
        if !copied || rel.to_string_lossy().starts_with("files/extra-files-") {
            continue;
        }
        let dest = to.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            fs::hard_link(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn a_package_s_file_and_directory_reach_the_experiment_reproducibly() {
    let umoci = require_tool("umoci");
    let sandbox = Sandbox::new();
    let links = data_wheel(&sandbox.path("wheels"));
    let salt = salt();
    let exp = experiment(&sandbox, "one/demo", HOOK, &salt);

    let started = std::time::Instant::now();
    let (stdout, stderr) = succeeds(build(&sandbox, &exp, &links, None).output().unwrap());
    eprintln!("first build: {:.1?}", started.elapsed());
    let digest = printed_digest(&stdout);
    assert!(
        stderr.contains("Evaluating the experiment's extra_files() in the sandbox")
            && stderr.contains("extra_files(): 3 files, evaluated in the sandbox"),
        "{stderr}"
    );

    // The files, byte for byte, where the hook put them; the experiment's
    // own templates are still there.
    let bundle = sandbox.path("bundle");
    let started = std::time::Instant::now();
    ok(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:extra-files", sandbox.path("layout").display()))
        .arg(&bundle));
    eprintln!("umoci unpack: {:.1?}", started.elapsed());
    let root = bundle.join("rootfs/experiment");
    let read = |p: &str| fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("static/images/logo.svg"), LOGO);
    assert_eq!(read("templates/extra/layout.html"), LAYOUT);
    assert_eq!(read("templates/extra/partials/footer.html"), FOOTER);
    for own in fs::read_dir(exp.join("templates")).unwrap() {
        let own = own.unwrap();
        assert_eq!(
            read(&format!("templates/{}", own.file_name().to_string_lossy())),
            fs::read(own.path()).unwrap()
        );
    }
    assert_eq!(read("run.txt"), salt.as_bytes());

    // From another path, with another cache that evaluates the hook again:
    // the same image.
    let other = Sandbox::new();
    let other_links = data_wheel(&other.path("elsewhere/wheels"));
    let other_exp = other.path("two/elsewhere/demo");
    copy_tree(&exp, &other_exp);
    let other_cache = other.path("other-cache");
    cache_without_evaluations(&test_cache_dir().join("dallinger-demo-cache"), &other_cache);
    let started = std::time::Instant::now();
    let (stdout, stderr) = succeeds(
        build(&other, &other_exp, &other_links, Some(&other_cache))
            .output()
            .unwrap(),
    );
    eprintln!("build in another cache: {:.1?}", started.elapsed());
    assert!(
        stderr.contains("Evaluating the experiment's extra_files()"),
        "{stderr}"
    );
    assert_eq!(printed_digest(&stdout), digest);

    // Again, nothing changed: no Python runs, the same image.
    let started = std::time::Instant::now();
    let (stdout, stderr) = succeeds(build(&sandbox, &exp, &links, None).output().unwrap());
    eprintln!("rebuild: {:.1?}", started.elapsed());
    assert!(
        !stderr.contains("Evaluating the experiment's extra_files()")
            && stderr.contains("extra_files(): 3 files, as evaluated before"),
        "{stderr}"
    );
    assert_eq!(printed_digest(&stdout), digest);

    // `digest` predicts the experiment layer from the cached evaluation;
    // a cache without it says in one line that it cannot.
    let started = std::time::Instant::now();
    ok(dallinger_demo_command(&sandbox, "lock", &exp)
        .arg("--find-links")
        .arg(&links));
    eprintln!("lock: {:.1?}", started.elapsed());
    let said = ok(dallinger_demo_command(&sandbox, "digest", &exp)
        .arg("--find-links")
        .arg(&links));
    assert_eq!(said.trim(), digest);
    let bare_cache = other.path("bare-cache");
    cache_without_evaluations(&test_cache_dir().join("dallinger-demo-cache"), &bare_cache);
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("digest")
        .arg(&exp)
        .args(["--base", &python_base_layout()])
        .args(sdist_build_args())
        .arg("--cache-dir")
        .arg(&bare_cache)
        .arg("--find-links")
        .arg(&links);
    let line = one_line_error(&cmd.output().unwrap());
    assert_eq!(
        line,
        format!(
            "error: {}: the experiment's extra_files() was not evaluated for these layers in this cache, so the experiment layer cannot be predicted: build the image once (with this cache) to know its digest",
            exp.join("experiment.py").display()
        )
    );
}

#[test]
fn an_exception_in_the_hook_stops_the_build_in_one_line() {
    let sandbox = Sandbox::new();
    let links = data_wheel(&sandbox.path("wheels"));
    let exp = experiment(&sandbox, "raising/demo", RAISING_HOOK, &salt());
    let text = fs::read_to_string(exp.join("experiment.py")).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("raise RuntimeError"))
        .unwrap()
        + 1;
    let out = build(&sandbox, &exp, &links, None).output().unwrap();
    let err = one_line_error(&out);
    assert_eq!(
        err,
        format!(
            "error: {}:{line} in extra_files: RuntimeError: this package has no logo (raised in extra_files(), evaluated in the sandbox with the image's Python; the build stops)",
            exp.join("experiment.py").display()
        )
    );
    assert!(!sandbox.path("layout").exists());

    // Sources are the image's and destinations the experiment's: anything
    // else is one line naming it.
    let raising = fs::read_to_string(exp.join("experiment.py")).unwrap();
    let hook_of = |pairs: &str| {
        format!("    @classmethod\n    def extra_files(cls):\n        return [{pairs}]\n\n")
    };
    let file = exp.join("experiment.py").display().to_string();
    for (pairs, expected) in [
        (
            "(\"/proc/self/status\", \"static/status.txt\")",
            format!("error: {file}: extra_files(): the source /proc/self/status is /proc/"),
        ),
        (
            "(\"/srv/nothing-here.svg\", \"static/logo.svg\")",
            format!("error: {file}: extra_files(): the source /srv/nothing-here.svg of ('/srv/nothing-here.svg', 'static/logo.svg') does not exist in the image"),
        ),
        (
            "(\"/etc/os-release\", \"../outside.txt\")",
            format!("error: {file}: extra_files(): the destination of /etc/os-release is \"../outside.txt\", outside the experiment directory /experiment"),
        ),
    ] {
        fs::write(
            exp.join("experiment.py"),
            raising.replacen(RAISING_HOOK, &hook_of(pairs), 1),
        )
        .unwrap();
        let out = build(&sandbox, &exp, &links, None).output().unwrap();
        let line = one_line_error(&out);
        assert!(line.starts_with(&expected), "{line}\nnot {expected}");
    }
}
