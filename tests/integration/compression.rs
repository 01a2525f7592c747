//! `--compression zstd`: every layer we write is zstd, independent tools
//! (skopeo, a real registry, podman) take the image as it is, and its
//! digest does not depend on the worker count or on the cache; gzip stays
//! the default, and the cache keeps the two apart.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::{Registry, RegistryAuth};
use common::service_images::podman;
use common::*;

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_COMPRESSOR: &str =
    "zstd;encoder=libzstd-1.5.7;level=3;frame=4MiB;content-size=1;checksum=1";

fn tiny_base() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// The golden experiment with a 9 MiB file beside it, so its layer spans
/// several zstd frames (4 MiB each) and gzip blocks.
fn large_experiment(sandbox: &Sandbox, rel: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", rel);
    let mut bytes = Vec::with_capacity(9 << 20);
    let mut x: u32 = 1;
    while bytes.len() < 9 << 20 {
        // Some structure, some noise: compressible, not trivially.
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        bytes.extend_from_slice(format!("trial {} {}\n", bytes.len() % 977, x >> 24).as_bytes());
    }
    fs::write(exp.join("stimuli.bin"), bytes).unwrap();
    exp
}

/// `build EXP --base BASE --output OUT` with `args` and `envs`; the digest.
fn build(
    sandbox: &Sandbox,
    exp: &Path,
    base: &str,
    out: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (String, String) {
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(exp)
        .args(["--base", base, "--output", out])
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (stdout, stderr) = succeeds(run(&mut cmd));
    (printed_digest(&stdout), stderr)
}

/// Every layer of the layout's image has `media_type`; zstd ones carry the
/// zstd compressor annotation, and decode to a tar.
fn assert_layers(dir: &Path, media_type: &str) -> serde_json::Value {
    let (_, manifest, _) = layout_image(dir);
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for layer in layers {
        assert_eq!(layer["mediaType"], media_type, "{manifest}");
        let compressor = &layer["annotations"]["org.dallinger.oci.layer.compressor"];
        if media_type == ZSTD {
            assert_eq!(compressor, ZSTD_COMPRESSOR);
            let bytes = fs::read(blob(dir, layer["digest"].as_str().unwrap())).unwrap();
            assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        } else {
            assert!(compressor.as_str().unwrap().starts_with("gzip;"));
        }
    }
    manifest
}

#[test]
fn zstd_digest_holds_for_any_worker_count_and_a_warm_cache() {
    let a = Sandbox::new();
    let b = Sandbox::new();
    let exp_a = large_experiment(&a, "large");
    let exp_b = large_experiment(&b, "large");
    let zstd = ["--compression", "zstd"];
    let (one, stderr) = build(
        &a,
        &exp_a,
        &tiny_base(),
        "oci:one",
        &zstd,
        &[("DALLINGER_OCI_JOBS", "1")],
    );
    assert!(stderr.contains("(built)"), "{stderr}");
    let (two, _) = build(
        &b,
        &exp_b,
        &tiny_base(),
        "oci:two",
        &zstd,
        &[("DALLINGER_OCI_JOBS", "2")],
    );
    assert_eq!(one, two, "1 and 2 workers, cold caches");
    let manifest = assert_layers(&a.path("one"), ZSTD);
    let code_layer = manifest["layers"][1]["size"].as_u64().unwrap();
    assert!(code_layer > 100_000, "the large layer: {code_layer} bytes");
    assert_eq!(
        fs::read(a.path("one/index.json")).unwrap(),
        fs::read(b.path("two/index.json")).unwrap()
    );

    // Warm: the same cache gives the same image, from the cache.
    let (warm, stderr) = build(
        &a,
        &exp_a,
        &tiny_base(),
        "oci:warm",
        &zstd,
        &[("DALLINGER_OCI_JOBS", "2")],
    );
    assert_eq!(warm, one, "warm cache");
    assert!(stderr.contains("unchanged, reused"), "{stderr}");

    // gzip in the same cache shares no layer record with zstd: its layers
    // are gzip, made now, and give another image; zstd again (by the
    // environment this time) is still the first.
    let (gzip, stderr) = build(&a, &exp_a, &tiny_base(), "oci:gzip", &[], &[]);
    assert_ne!(gzip, one);
    assert!(stderr.contains("(built)"), "{stderr}");
    assert_layers(&a.path("gzip"), GZIP);
    let (again, _) = build(
        &a,
        &exp_a,
        &tiny_base(),
        "oci:again",
        &[],
        &[("DALLINGER_OCI_COMPRESSION", "zstd")],
    );
    assert_eq!(again, one);
}

#[test]
fn gzip_is_the_default_and_the_flag_wins_over_the_environment() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let (default, _) = build(&sandbox, &exp, &tiny_base(), "oci:default", &[], &[]);
    assert_layers(&sandbox.path("default"), GZIP);
    let fresh = Sandbox::new();
    let exp_fresh = fresh.experiment("golden", "golden");
    let (flag, _) = build(
        &fresh,
        &exp_fresh,
        &tiny_base(),
        "oci:flag",
        &["--compression", "gzip"],
        &[("DALLINGER_OCI_COMPRESSION", "zstd")],
    );
    assert_eq!(flag, default);

    for (args, envs, expected) in [
        (
            &["--compression", "xz"][..],
            &[][..],
            "error: --compression xz: unknown compression \"xz\": use gzip or zstd",
        ),
        (
            &[][..],
            &[("DALLINGER_OCI_COMPRESSION", "ZSTD")][..],
            "error: DALLINGER_OCI_COMPRESSION=ZSTD: unknown compression \"ZSTD\": use gzip or zstd",
        ),
        (
            &[][..],
            &[("DALLINGER_OCI_JOBS", "many")][..],
            "error: DALLINGER_OCI_JOBS=\"many\" is not a number of threads (0: one per core): \
             invalid digit found in string",
        ),
    ] {
        let mut cmd = sandbox.cmd();
        cmd.arg("build")
            .arg(&exp)
            .args(["--base", &tiny_base(), "--output", "oci:bad"])
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = run(&mut cmd);
        assert_eq!(one_line_error(&out), expected);
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
    assert!(!sandbox.path("bad").exists());
}

#[test]
fn zstd_image_goes_through_skopeo_a_registry_and_podman() {
    let skopeo = require_tool("skopeo");
    require_tool("podman");
    require_tool("runc");
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let base = format!("rootfs:{}", busybox_rootfs(sandbox.dir.path()).display());
    let exp = sandbox.experiment("golden", "golden");
    let repository = format!("{host}/lab/zstd");
    sandbox.name_image(&exp, &repository);

    // Built into a layout, and pushed, by one command.
    let out = run(sandbox
        .cmd()
        .arg("push")
        .arg(&exp)
        .args(["--base", &base, "--compression", "zstd"])
        .args(["--output", "oci:local:v1"]));
    let (stdout, _) = succeeds(out);
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Pushed image: "))
        .expect(&stdout)
        .to_string();
    let local = sandbox.path("local");
    let manifest = assert_layers(&local, ZSTD);
    assert_eq!(layout_image(&local).0, digest);

    // skopeo reads the layout and sees our digest.
    let inspected: serde_json::Value = serde_json::from_str(&ok(Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("oci:{}:v1", local.display()))))
    .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());

    // Copied back out of the registry, nothing changed: manifest, config
    // and every layer byte for byte.
    let copy = sandbox.path("copy");
    ok(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{repository}@{digest}"))
        .arg(format!("oci:{}:copy", copy.display())));
    let (copied, copied_manifest, _) = layout_image(&copy);
    assert_eq!(copied, digest);
    assert_eq!(copied_manifest, manifest);
    let mut blobs = vec![
        digest.clone(),
        manifest["config"]["digest"].as_str().unwrap().to_string(),
    ];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_string());
    }
    for d in &blobs {
        assert_eq!(
            fs::read(blob(&copy, d)).unwrap(),
            fs::read(blob(&local, d)).unwrap(),
            "{d}"
        );
    }

    // podman pulls the zstd layers and runs the image.
    let name = format!("{repository}@{digest}");
    ok(podman().args(["pull", "--quiet", "--tls-verify=false", &name]));
    let printed = run(podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "cat",
        "/experiment/experiment.py",
    ]));
    let _ = podman().args(["rmi", "-f", &name]).output();
    let (printed, _) = succeeds(printed);
    assert_eq!(
        printed.as_bytes(),
        fs::read(fixture("experiments/golden/experiment.py")).unwrap()
    );
}
