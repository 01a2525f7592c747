//! An experiment's own prepare_docker_image.sh: never ignored. Without
//! --run-prepare the build stops; with it the script runs in the sandbox on
//! the image so far and its changes become one reproducible layer, deletions
//! as whiteouts that umoci honours. A Dockerfile with an instruction the
//! native build does not support stops the build before any work.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const SCRIPT: &str = "#!/bin/sh
set -e
echo 'made by the prepare script' > /opt/prepared.txt
cp requirements.txt /opt/requirements-seen.txt
pwd > /opt/workdir.txt
cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' > /opt/interfaces.txt
rm /etc/motd
mkdir -p /var/log/prepare && echo 'a log with a time' > /var/log/prepare/log
echo scratch > /tmp/scratch
";

/// A busybox root with the applets the script uses and a file to delete.
fn base(dir: &Path) -> PathBuf {
    busybox_rootfs(dir);
    let root = dir.join("busybox-root");
    for applet in ["chmod", "rm", "mkdir", "cp", "pwd", "cut", "tail", "tr"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for d in ["etc", "opt", "tmp", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/motd"), "welcome\n").unwrap();
    let tar = dir.join("base.tar");
    deterministic_tar(&tar, &root, ".");
    tar
}

fn experiment(sandbox: &Sandbox, rel: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", rel);
    fs::write(exp.join("prepare_docker_image.sh"), SCRIPT).unwrap();
    exp
}

fn build(sandbox: &Sandbox, exp: &Path, base: &Path, extra: &[&str]) -> Output {
    run(sandbox
        .cmd()
        .arg("build")
        .arg(exp)
        .arg("--base")
        .arg(format!("rootfs:{}", base.display()))
        .args(["--tag", "prep", "-o", "oci:layout"])
        .args(extra))
}

fn digest_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed_digest(&String::from_utf8_lossy(&out.stdout))
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn a_prepare_script_runs_only_when_asked_and_its_layer_is_reproducible() {
    let umoci = require_tool("umoci");
    let sandbox = Sandbox::new();
    let base = base(&sandbox.path("base"));
    let exp = experiment(&sandbox, "prepared");

    // Never silently skipped.
    let out = build(&sandbox, &exp, &base, &[]);
    let err = one_line_error(&out);
    assert!(
        err.starts_with("error: ")
            && err.contains("prepare_docker_image.sh: this script must run inside the image")
            && err.contains("pass --run-prepare to run it in a sandbox")
            && err.contains("`system_packages`"),
        "{err}"
    );
    assert!(!sandbox.path("layout").exists());

    let out = build(&sandbox, &exp, &base, &["--run-prepare"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let digest = digest_of(&out);
    assert!(
        stderr.contains("Running script prepare_docker_image.sh"),
        "{stderr}"
    );

    // The same from another path, with a cold cache.
    let other = Sandbox::new();
    let other_base = base_copy(&base, &other.path("elsewhere"));
    let exp2 = experiment(&other, "somewhere/else/prepared");
    assert_eq!(
        digest_of(&build(&other, &exp2, &other_base, &["--run-prepare"])),
        digest
    );

    // History and label say a script ran; the tree is what it made.
    let (_, manifest, config) = layout_image(&sandbox.path("layout"));
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let script_sha = format!("sha256:{}", sha256_hex(SCRIPT.as_bytes()));
    assert_eq!(
        config["config"]["Labels"]["org.dallinger.oci.prepare-script"],
        serde_json::Value::String(script_sha.clone())
    );
    assert!(
        created_by(&config).iter().any(|h| h
            == &format!("dallinger-oci: ran prepare_docker_image.sh ({script_sha}) in a sandbox")),
        "{:?}",
        created_by(&config)
    );
    let bundle = sandbox.path("bundle");
    ok(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:prep", sandbox.path("layout").display()))
        .arg(&bundle));
    let root = bundle.join("rootfs");
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(read("opt/prepared.txt"), "made by the prepare script\n");
    assert_eq!(read("opt/workdir.txt"), "/experiment\n");
    assert_eq!(
        read("opt/requirements-seen.txt"),
        fs::read_to_string(exp.join("requirements.txt")).unwrap()
    );
    // No network: only the loopback interface.
    assert_eq!(read("opt/interfaces.txt"), "lo\n");
    // The deletion is a whiteout that umoci applied.
    assert!(!root.join("etc/motd").exists());
    assert!(root.join("bin/busybox").is_file());
    // Logs and /tmp are not kept.
    assert!(!root.join("var/log/prepare").exists());
    assert!(!root.join("tmp/scratch").exists());
    // The experiment is there, as always, after the script's layer.
    assert_eq!(read("experiment/prepare_docker_image.sh"), SCRIPT);
}

#[test]
fn a_failing_prepare_script_fails_the_build() {
    let sandbox = Sandbox::new();
    let base = base(&sandbox.path("base"));
    let exp = sandbox.experiment("golden", "failing");
    fs::write(
        exp.join("prepare_docker_image.sh"),
        "#!/bin/sh\necho 'about to fail'\nexit 7\n",
    )
    .unwrap();
    let out = build(&sandbox, &exp, &base, &["--run-prepare"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("about to fail"), "{stderr}");
    assert!(
        stderr.trim_end().ends_with(
            "error: prepare_docker_image.sh failed (exit status 7); its output is above (it ran \
             without network: pass --prepare-network if it downloads)"
        ),
        "{stderr}"
    );
    assert!(!sandbox.path("layout").exists());
}

#[test]
fn an_unsupported_dockerfile_stops_the_build_and_nothing_is_written() {
    let sandbox = Sandbox::new();
    let base = base(&sandbox.path("base"));
    let exp = sandbox.experiment("golden", "with-dockerfile");
    fs::write(
        exp.join("Dockerfile"),
        "FROM python:3.11\nRUN apt-get install -y ffmpeg\nHEALTHCHECK CMD true\n",
    )
    .unwrap();
    let out = build(&sandbox, &exp, &base, &["--run-prepare"]);
    let err = one_line_error(&out);
    assert!(
        err.starts_with("error: ")
            && err.contains("with-dockerfile/Dockerfile:3: HEALTHCHECK is not supported by the native Dockerfile build")
            && err.contains("pass --dockerfile-engine podman|docker|buildah"),
        "{err}"
    );
    assert!(!sandbox.path("layout").exists());
    // Stopped before anything was read or written.
    assert!(!sandbox.path("cache").exists());
}

fn base_copy(base: &Path, dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let copy = dir.join("base.tar");
    fs::copy(base, &copy).unwrap();
    copy
}

/// With --dockerfile-engine the Dockerfile is built by that engine (podman
/// here) and its result written by us.
#[test]
fn a_dockerfile_is_built_by_the_named_engine() {
    require_tool("podman");
    let sandbox = Sandbox::new();
    let base = base(&sandbox.path("base"));
    let exp = sandbox.experiment("golden", "with-dockerfile");
    fs::write(
        exp.join("Dockerfile"),
        "FROM scratch\nCOPY experiment.py config.txt /experiment/\nENV MADE_BY=dockerfile\n",
    )
    .unwrap();
    let image = "registry.example.test/dallinger-oci/golden:prep";
    let out = run(sandbox
        .cmd()
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .arg("build")
        .arg(&exp)
        .arg("--base")
        .arg(format!("rootfs:{}", base.display()))
        .args([
            "--tag",
            "prep",
            "-o",
            "oci:layout",
            "--dockerfile-engine",
            "podman",
        ]));
    let _ = Command::new("podman")
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .args(["rmi", "-f", image])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("building it with podman"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Built image: {image}")),
        "{stdout}"
    );
    let (_, manifest, config) = layout_image(&sandbox.path("layout"));
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("MADE_BY=dockerfile")),
        "{config}"
    );
    let layer = gunzip(&blob(
        &sandbox.path("layout"),
        manifest["layers"][0]["digest"].as_str().unwrap(),
    ));
    let mut names = Vec::new();
    for entry in tar::Archive::new(&layer[..]).entries().unwrap() {
        names.push(entry.unwrap().path().unwrap().display().to_string());
    }
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("experiment/experiment.py"))
            && names.iter().any(|n| n.ends_with("experiment/config.txt")),
        "{names:?}"
    );
}
