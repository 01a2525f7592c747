//! Independent tools accept what we write: skopeo, umoci and podman.

use crate::common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

fn golden_build(sandbox: &Sandbox, outputs: &[&str]) -> String {
    let exp = sandbox.experiment("golden", "golden");
    let base = format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display());
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args(["--base", &base]);
    for o in outputs {
        cmd.args(["--output", o]);
    }
    printed_digest(&ok(&mut cmd))
}

#[test]
fn skopeo_reports_our_digest() {
    let skopeo = require_tool("skopeo");
    let sandbox = Sandbox::new();
    let digest = golden_build(&sandbox, &["oci:layout:v1"]);
    let layout = sandbox.path("layout");
    let out = ok(Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("oci:{}:v1", layout.display())));
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    let config = ok(Command::new(&skopeo)
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:v1", layout.display())));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["config"]["WorkingDir"], "/experiment");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "dallinger_heroku_web"])
    );
    assert!(config["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("PORT=5000")));
    // A copy by skopeo into another layout keeps manifest and config bytes.
    let copy = sandbox.path("copy");
    ok(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:v1", copy.display())));
    let (copied, _, _) = layout_image(&copy);
    assert_eq!(copied, digest);
}

#[test]
fn umoci_unpacks_the_expected_tree() {
    let umoci = require_tool("umoci");
    let sandbox = Sandbox::new();
    golden_build(&sandbox, &["oci:layout:v1"]);
    let bundle = sandbox.path("bundle");
    ok(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", sandbox.path("layout").display()))
        .arg(&bundle));
    let root = bundle.join("rootfs");
    // From the base tarball, kept as it was (including /tmp's sticky bit).
    assert_eq!(
        fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    // The experiment, with normalised modes and owners.
    let exp = root.join("experiment");
    let expect = [
        ("", 0o755, true),
        ("config.txt", 0o644, false),
        ("experiment.py", 0o644, false),
        ("requirements.txt", 0o644, false),
        ("prepare_docker_image.sh", 0o755, false),
        ("run-checks.sh", 0o755, false),
        ("static", 0o755, true),
        ("static/scripts", 0o755, true),
        ("static/scripts/experiment.js", 0o644, false),
        ("templates/ad.html", 0o644, false),
    ];
    for (rel, mode, is_dir) in expect {
        let meta = fs::symlink_metadata(exp.join(rel))
            .unwrap_or_else(|_| panic!("missing /experiment/{rel}"));
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            mode,
            "mode of /experiment/{rel}"
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "owner of /experiment/{rel}"
        );
        assert_eq!(meta.is_dir(), is_dir, "/experiment/{rel}");
    }
    assert_eq!(
        fs::read_link(exp.join("static/current.js"))
            .unwrap()
            .to_str(),
        Some("scripts/experiment.js")
    );
    assert_eq!(
        fs::read(exp.join("experiment.py")).unwrap(),
        fs::read(fixture("experiments/golden/experiment.py")).unwrap()
    );
    // Dallinger's generated config: one section, the image name kept.
    let config = fs::read_to_string(exp.join("config.txt")).unwrap();
    assert!(config.starts_with("[Parameters]\n"), "{config}");
    assert!(config.contains("docker_image_base_name = registry.example.test/dallinger-oci/golden"));
    // The whole experiment file set, nothing more.
    let mut listing = Vec::new();
    for entry in walkdir::WalkDir::new(&exp).sort_by_file_name().min_depth(1) {
        let entry = entry.unwrap();
        listing.push(
            entry
                .path()
                .strip_prefix(&exp)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert_eq!(
        listing,
        [
            "config.txt",
            "experiment.py",
            "prepare_docker_image.sh",
            "requirements.txt",
            "run-checks.sh",
            "static",
            "static/current.js",
            "static/scripts",
            "static/scripts/experiment.js",
            "templates",
            "templates/ad.html",
        ]
    );
}

#[test]
fn podman_loads_the_archive_and_runs_it() {
    require_tool("podman");
    require_tool("runc");
    let sandbox = Sandbox::new();
    let base = busybox_rootfs(sandbox.dir.path());
    let exp = sandbox.experiment("golden", "golden");
    let archive = sandbox.path("image.tar");
    let stdout = ok(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .arg("--base")
        .arg(format!("rootfs:{}", base.display()))
        .arg("--output")
        .arg(format!("docker-archive:{}", archive.display()))
        .args(["--tag", "podman-test"]));
    let digest = printed_digest(&stdout);
    let image = PodmanImage::load(
        &archive,
        "registry.example.test/dallinger-oci/golden:podman-test",
    );
    let name = image.name.as_str();
    let printed = ok(image.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "cat",
        "/experiment/experiment.py",
    ]));
    assert_eq!(
        printed.as_bytes(),
        fs::read(fixture("experiments/golden/experiment.py")).unwrap()
    );
    let workdir = ok(image.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        name,
        "sh",
        "-c",
        "pwd; echo $PORT",
    ]));
    assert_eq!(workdir, "/experiment\n5000\n");
    // podman recomputes nothing: the loaded config is ours.
    let inspect = ok(image
        .podman()
        .args(["image", "inspect", "--format", "{{.Digest}}", name]));
    assert!(!inspect.trim().is_empty());
    let _ = digest;
}
