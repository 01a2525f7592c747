//! Same inputs, same digest: on any path, with any mtimes, umask, file
//! creation order, time zone or locale; SOURCE_DATE_EPOCH changes only times.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// The digest of the golden fixture experiment built on the fixture base with
/// the default epoch. Any change of output bytes fails here: update it only
/// for a deliberate change, and say why in the commit.
const GOLDEN_MANIFEST_DIGEST: &str =
    "sha256:f62a5869c6ff9763a7f7e448bf83ebe5fa37d6724ed16aecd663d1771249be5e";

fn build(sandbox: &Sandbox, exp: &Path, out: &str, envs: &[(&str, &str)]) -> String {
    let base = format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display());
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(exp)
        .args(["--base", &base, "--output", out]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    printed_digest(&ok(&mut cmd))
}

/// Copies the golden fixture the other way round: files created in reverse
/// order, odd mtimes, modes as a 077 umask would leave them.
fn scrambled_copy(from: &Path, to: &Path) {
    let mut entries: Vec<_> = walk(from);
    entries.reverse();
    for rel in &entries {
        let src = from.join(rel);
        let dst = to.join(rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let meta = fs::symlink_metadata(&src).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
            continue;
        }
        fs::copy(&src, &dst).unwrap();
        let exec = meta.permissions().mode() & 0o111 != 0;
        fs::set_permissions(
            &dst,
            fs::Permissions::from_mode(if exec { 0o700 } else { 0o600 }),
        )
        .unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890 + rel.len() as u64);
        fs::File::options()
            .write(true)
            .open(&dst)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    for dir in walk_dirs(to) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

fn walk_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        for entry in fs::read_dir(&out[i]).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                out.push(entry.path());
            }
        }
        i += 1;
    }
    out
}

#[test]
fn identical_digest_across_paths_times_modes_order_zone_and_locale() {
    let a = Sandbox::new();
    let b = Sandbox::new();
    let exp_a = a.experiment("golden", "first/place/golden");
    let exp_b = b.path("elsewhere/deeper/still/golden-copy");
    scrambled_copy(&fixture("experiments/golden"), &exp_b);

    let digest_a = build(&a, &exp_a, "oci:out-a", &[("TZ", "UTC"), ("LANG", "C")]);
    let digest_b = build(
        &b,
        &exp_b,
        "oci:out-b",
        &[
            ("TZ", "Pacific/Kiritimati"),
            ("LANG", "de_DE.UTF-8"),
            ("LC_ALL", "tr_TR.UTF-8"),
        ],
    );
    assert_eq!(digest_a, digest_b);
    // The layouts are byte-identical too.
    let (_, manifest_a, _) = layout_image(&a.path("out-a"));
    let (_, manifest_b, _) = layout_image(&b.path("out-b"));
    assert_eq!(manifest_a, manifest_b);
}

#[test]
fn golden_digest_is_pinned() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let digest = build(&sandbox, &exp, "oci:out", &[]);
    assert_eq!(
        digest, GOLDEN_MANIFEST_DIGEST,
        "the output bytes changed; if deliberate, update GOLDEN_MANIFEST_DIGEST and explain why"
    );
}

#[test]
fn source_date_epoch_changes_only_times() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let default = build(&sandbox, &exp, "oci:default", &[]);
    let pinned = build(
        &sandbox,
        &exp,
        "oci:pinned",
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_ne!(default, pinned);

    let (_, m_default, c_default) = layout_image(&sandbox.path("default"));
    let (_, m_pinned, c_pinned) = layout_image(&sandbox.path("pinned"));
    assert_eq!(c_default["created"], "2000-01-01T00:00:00Z");
    assert_eq!(c_pinned["created"], "2023-11-14T22:13:20Z");
    for entry in c_pinned["history"].as_array().unwrap() {
        assert_eq!(entry["created"], "2023-11-14T22:13:20Z");
    }
    // The base tarball's bytes are kept as they are: same base layer.
    assert_eq!(m_default["layers"][0], m_pinned["layers"][0]);
    assert_eq!(
        c_default["rootfs"]["diff_ids"][0],
        c_pinned["rootfs"]["diff_ids"][0]
    );
    // The experiment layer differs, and only in its tar mtimes.
    assert_ne!(
        m_default["layers"][1]["digest"],
        m_pinned["layers"][1]["digest"]
    );
    let tar_default = gunzip(&blob(
        &sandbox.path("default"),
        m_default["layers"][1]["digest"].as_str().unwrap(),
    ));
    let tar_pinned = gunzip(&blob(
        &sandbox.path("pinned"),
        m_pinned["layers"][1]["digest"].as_str().unwrap(),
    ));
    let entries = |bytes: &[u8]| -> Vec<(String, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mtime().unwrap(),
                    data,
                )
            })
            .collect()
    };
    let (d, p) = (entries(&tar_default), entries(&tar_pinned));
    assert_eq!(d.len(), p.len());
    for (x, y) in d.iter().zip(&p) {
        assert_eq!((&x.0, &x.2), (&y.0, &y.2));
        assert_eq!((x.1, y.1), (946_684_800, 1_700_000_000));
    }
    // Everything else in the config is the same.
    let strip = |mut c: serde_json::Value| {
        c["created"] = serde_json::Value::Null;
        c["history"] = serde_json::Value::Null;
        c["rootfs"]["diff_ids"][1] = serde_json::Value::Null;
        c["config"]["Labels"]["org.opencontainers.image.base.digest"] = serde_json::Value::Null;
        c
    };
    assert_eq!(strip(c_default), strip(c_pinned));
}

#[test]
fn unchanged_rebuild_reuses_the_layer_and_gives_the_same_digest() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let first = build(&sandbox, &exp, "oci:out", &[]);
    let base = format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display());
    let out = run(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &base, "--output", "oci:out"]));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unchanged, reused"), "{stderr}");
    assert_eq!(printed_digest(&String::from_utf8_lossy(&out.stdout)), first);
    // A code change gives a new layer and digest.
    fs::write(exp.join("experiment.py"), "# changed\n").unwrap();
    let second = build(&sandbox, &exp, "oci:out", &[]);
    assert_ne!(first, second);
}
