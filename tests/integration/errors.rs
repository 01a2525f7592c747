//! Bad input: a clear one-line error, a non-zero exit, and no output left
//! half-written.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn base_arg() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// Runs a failing build, checks the one-line message has every `needles`
/// part, and that none of `outputs` exists afterwards.
fn fails(cmd: &mut Command, needles: &[&str], outputs: &[PathBuf]) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    for output in outputs {
        assert!(!output.exists(), "{} was left behind", output.display());
    }
    // No temporary layout or archive is left beside the outputs either.
    if let Some(parent) = outputs.first().and_then(|o| o.parent()) {
        for entry in fs::read_dir(parent).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".dallinger-oci"),
                "temporary {name} left behind"
            );
        }
    }
}

fn build_cmd(sandbox: &Sandbox, exp: &Path) -> (Command, Vec<PathBuf>) {
    build_cmd_on(sandbox, exp, &base_arg())
}

fn build_cmd_on(sandbox: &Sandbox, exp: &Path, base: &str) -> (Command, Vec<PathBuf>) {
    let outs = vec![sandbox.path("out/layout"), sandbox.path("out/image.tar")];
    fs::create_dir_all(sandbox.path("out")).unwrap();
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(exp)
        .args(["--base", base])
        .arg("--output")
        .arg(format!("oci:{}", outs[0].display()))
        .arg("--output")
        .arg(format!("docker-archive:{}", outs[1].display()));
    (cmd, outs)
}

#[test]
fn missing_config_or_experiment_py() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "no-config");
    fs::remove_file(exp.join("config.txt")).unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["config.txt"], &outs);

    let exp = sandbox.experiment("golden", "no-experiment-py");
    fs::remove_file(exp.join("experiment.py")).unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["experiment.py"], &outs);

    let (mut cmd, outs) = build_cmd(&sandbox, &sandbox.path("does-not-exist"));
    fails(&mut cmd, &["does-not-exist"], &outs);
}

#[test]
fn unreadable_file() {
    let setpriv = require_tool("setpriv");
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "unreadable");
    let secret = exp.join("static/private.js");
    fs::write(&secret, "x").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything, so run the build as nobody in a world-writable dir.
    for dir in [
        sandbox.dir.path().to_path_buf(),
        sandbox.home(),
        sandbox.path("out"),
    ] {
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = sandbox.path("out/layout");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_dallinger-oci"))
        .arg("build")
        .arg(&exp)
        .args(["--base", &base_arg()])
        .arg("--output")
        .arg(format!("oci:{}", out.display()))
        .env("HOME", sandbox.home())
        .env("DALLINGER_OCI_CACHE", sandbox.path("out/cache"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("DALLINGER_OCI_NO_DEPS", "1");
    fails(&mut cmd, &["static/private.js"], &[out]);
}

#[test]
fn broken_symlink() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "broken-link");
    std::os::unix::fs::symlink("nowhere.js", exp.join("static/broken.js")).unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["static/broken.js", "nowhere.js"], &outs);
}

#[test]
fn symlink_pointing_outside() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "escaping-link");
    fs::write(sandbox.path("outside.txt"), "host file").unwrap();
    std::os::unix::fs::symlink("../../outside.txt", exp.join("static/escape.txt")).unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["static/escape.txt", "outside"], &outs);
}

#[test]
fn experiment_larger_than_256_mb() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "too-big");
    // Sparse: takes no disk, but its size counts.
    let big = fs::File::create(exp.join("static/video.bin")).unwrap();
    big.set_len(257 * 1024 * 1024).unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["256"], &outs);
}

#[test]
fn malformed_config_txt() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "bad-config");
    fs::write(
        exp.join("config.txt"),
        "[Experiment]\nmode = debug\nthis line is not a setting\n",
    )
    .unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["config.txt", "3"], &outs);

    fs::write(exp.join("config.txt"), "mode = debug\n").unwrap();
    let (mut cmd, outs) = build_cmd(&sandbox, &exp);
    fails(&mut cmd, &["config.txt", "1"], &outs);
}

#[test]
fn output_that_exists_and_is_not_a_layout() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let occupied = sandbox.path("occupied");
    fs::create_dir_all(&occupied).unwrap();
    fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let out = run(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &base_arg()])
        .arg("--output")
        .arg(format!("oci:{}", occupied.display())));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not an OCI image layout"), "{stderr}");
    // The directory is left exactly as it was.
    let names: Vec<_> = fs::read_dir(&occupied)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
}

#[test]
fn base_tarball_that_is_not_a_tar() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let fake = sandbox.path("fake.tar");
    fs::write(&fake, "this is not a tar archive\n".repeat(40)).unwrap();
    let (mut cmd, outs) = build_cmd_on(&sandbox, &exp, &format!("rootfs:{}", fake.display()));
    fails(&mut cmd, &["fake.tar", "not a"], &outs);
}

#[test]
fn base_tarball_with_parent_paths() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    // A hostile archive: tar-rs refuses to write '..', so set the name bytes.
    let mut header = tar::Header::new_ustar();
    header.set_size(4);
    header.set_mode(0o644);
    let name = b"../../etc/cron.d/evil";
    header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"evil"[..]).unwrap();
    let evil = sandbox.path("evil.tar");
    fs::write(&evil, builder.into_inner().unwrap()).unwrap();
    let (mut cmd, outs) = build_cmd_on(&sandbox, &exp, &format!("rootfs:{}", evil.display()));
    fails(&mut cmd, &["evil.tar", ".."], &outs);
}

#[test]
fn missing_image_name_says_which_key_to_set() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "unnamed");
    fs::write(exp.join("config.txt"), "[Experiment]\nmode = debug\n").unwrap();
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args(["--base", &base_arg()]);
    fails(&mut cmd, &["docker_image_base_name", "[Docker]"], &[]);
    // With an explicit output, the directory name is used instead.
    let stdout = ok(sandbox.cmd().arg("build").arg(&exp).args([
        "--base",
        &base_arg(),
        "--output",
        "docker-archive:unnamed.tar",
    ]));
    assert!(stdout.starts_with("Built image: unnamed:"), "{stdout}");
}
