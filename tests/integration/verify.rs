//! `verify`: an image rebuilt from its experiment and lock in an empty
//! cache, compared bit for bit with what a real registry (or a layout)
//! holds; a different image explained by layer, path and package; the
//! experiment found through the image's own git labels.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::git::git;
use common::registry::{Registry, RegistryAuth};
use common::*;

fn tiny_base() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// tinypkg 1.0 and 2.0, each one module saying its version.
fn wheelhouse(sandbox: &Sandbox) -> PathBuf {
    let links = sandbox.path("links");
    for (version, init) in [("1.0", b"VALUE = 1\n"), ("2.0", b"VALUE = 2\n")] {
        write_versioned_wheel(
            &links,
            "tinypkg",
            version,
            &[("tinypkg/__init__.py", init)],
            true,
        );
    }
    links
}

/// The golden experiment named `image`, asking for tinypkg==`version`.
fn python_experiment(sandbox: &Sandbox, dir: &str, image: &str, version: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", dir);
    sandbox.name_image(&exp, image);
    fs::write(exp.join("requirements.txt"), "tinypkg\n").unwrap();
    fs::write(exp.join("constraints.txt"), format!("tinypkg=={version}\n")).unwrap();
    exp
}

/// The options of every build here: the Python base, only `links`.
fn python_options(links: &Path) -> Vec<String> {
    vec![
        "--base".into(),
        python_base_layout(),
        "--index-url".into(),
        String::new(),
        "--find-links".into(),
        links.display().to_string(),
    ]
}

/// dallinger-oci with the Python layers on.
fn with_python(sandbox: &Sandbox) -> Command {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS");
    cmd
}

/// The digest `push` printed.
fn pushed(out: Output) -> String {
    let (stdout, _) = succeeds(out);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Pushed image: "))
        .unwrap_or_else(|| panic!("no digest in {stdout}"))
        .to_string()
}

/// stdout and stderr of a run that exits with `code`.
fn exits(code: i32, out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The lines of the report about the layer whose history entry is
/// `created_by`, up to the next layer or the config.
fn layer_section<'a>(report: &'a str, created_by: &str) -> Vec<&'a str> {
    let mut lines = report
        .lines()
        .skip_while(|l| !(l.starts_with("layer ") && l.contains(&format!("\"{created_by}\""))));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no layer {created_by:?} in\n{report}"));
    std::iter::once(header)
        .chain(lines.take_while(|l| l.starts_with(' ')))
        .collect()
}

#[test]
fn a_pushed_image_is_reproduced_and_a_different_one_explained() {
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let links = wheelhouse(&sandbox);
    let repository = format!("{}/lab/verify", registry.host());
    let exp = python_experiment(&sandbox, "exp", &repository, "1.0");
    succeeds(run(with_python(&sandbox)
        .arg("lock")
        .arg(&exp)
        .args(python_options(&links))));
    let digest = pushed(run(with_python(&sandbox)
        .arg("push")
        .arg(&exp)
        .args(python_options(&links))));

    // An auditor: the experiment at another path, nothing cached.
    let auditor = Sandbox::new();
    let copy = auditor.path("elsewhere/exp");
    copy_tree(&exp, &copy);
    let reference = format!("{repository}@{digest}");
    let verify = |image: &str, extra: &[&str]| {
        run(with_python(&auditor)
            .args(["verify", "--image", image])
            .arg(&copy)
            .args(python_options(&links))
            .args(extra))
    };
    let (stdout, _) = exits(0, verify(&reference, &[]));
    assert_eq!(
        stdout,
        format!("Verified: {reference} is reproduced bit for bit\n")
    );
    // A fresh temporary cache, not DALLINGER_OCI_CACHE.
    assert!(!auditor.path("cache").exists());

    // The same experiment with experiment.py edited and tinypkg 2.0.
    let changed = sandbox.path("changed");
    copy_tree(&exp, &changed);
    let mut code = fs::read_to_string(changed.join("experiment.py")).unwrap();
    code.push_str("\n# tuned after the paper\n");
    fs::write(changed.join("experiment.py"), code).unwrap();
    fs::write(changed.join("constraints.txt"), "tinypkg==2.0\n").unwrap();
    let other = pushed(run(with_python(&sandbox)
        .arg("push")
        .arg(&changed)
        .args(python_options(&links))));
    assert_ne!(other, digest);
    let other_reference = format!("{repository}@{other}");
    let (report, _) = exits(1, verify(&other_reference, &[]));
    assert!(
        report.starts_with(&format!(
            "Not reproduced: {other_reference} differs from the rebuild ({digest})\n"
        )),
        "{report}"
    );
    let python = layer_section(&report, "dallinger-oci: Python dependencies (1 wheels)");
    assert!(
        python[1].starts_with("  wheel tinypkg: 2.0 in the image, 1.0 in the rebuild ("),
        "{report}"
    );
    let module = python
        .iter()
        .find(|l| l.contains("/tinypkg/__init__.py: content sha256:"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(module.contains("(10 bytes) → sha256:"), "{module}");
    for only in [
        "tinypkg-2.0.dist-info/METADATA: only in the image",
        "tinypkg-1.0.dist-info/METADATA: only in the rebuild",
    ] {
        assert!(python.iter().any(|l| l.ends_with(only)), "{only}\n{report}");
    }
    let code_layer = layer_section(&report, "dallinger-oci: experiment code at /experiment");
    assert!(code_layer.contains(&"  no package (2 paths):"), "{report}");
    // requirements.txt, which the build makes from constraints.txt.
    assert!(
        code_layer
            .iter()
            .any(|l| l.starts_with("    experiment/requirements.txt: content")),
        "{report}"
    );
    assert!(
        code_layer
            .iter()
            .any(|l| l.starts_with("    experiment/experiment.py: content sha256:")),
        "{report}"
    );
    // The whole report as JSON.
    let (json, _) = exits(1, verify(&other_reference, &["--json"]));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["verified"], false);
    assert_eq!(report["image_digest"], other.as_str());
    assert_eq!(report["rebuilt_digest"], digest.as_str());
    let wheel = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["packages"].as_array().unwrap())
        .find(|p| p["name"] == "tinypkg")
        .unwrap();
    assert_eq!(
        (
            &wheel["kind"],
            &wheel["image_version"],
            &wheel["rebuild_version"]
        ),
        (&"wheel".into(), &"2.0".into(), &"1.0".into())
    );
}

#[test]
fn the_images_git_labels_name_the_experiment() {
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    let exp = repo.join("experiments/stroop");
    copy_tree(&fixture("experiments/golden"), &exp);
    let repository = format!("{}/lab/stroop", registry.host());
    sandbox.name_image(&exp, &repository);
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "experiment"]);
    // The labels name the public address; git reaches it here through
    // url.insteadOf, as a mirror would be reached.
    let public = "https://example.invalid/lab/stroop";
    git(
        &repo,
        &["remote", "add", "origin", &format!("{public}.git")],
    );
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let digest = pushed(run(sandbox
        .cmd()
        .arg("push")
        .arg(&exp)
        .args(["--base", &tiny_base()])));
    let reference = format!("{repository}@{digest}");

    let auditor = Sandbox::new();
    let verify = |extra: &[&str]| {
        let mut cmd = auditor.cmd();
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env(
                "GIT_CONFIG_KEY_0",
                format!("url.file://{}.insteadOf", repo.display()),
            )
            .env("GIT_CONFIG_VALUE_0", public)
            .args(["verify", "--image", &reference, "--base", &tiny_base()])
            .args(extra);
        run(&mut cmd)
    };
    let (stdout, stderr) = exits(0, verify(&["--git-subdir", "experiments/stroop"]));
    assert_eq!(
        stdout,
        format!("Verified: {reference} is reproduced bit for bit\n")
    );
    assert!(
        stderr.contains(&format!("Cloning {public} at {commit}")),
        "{stderr}"
    );
    // The experiment is not at the root: one line saying what to pass.
    let (_, stderr) = exits(2, verify(&[]));
    let line = stderr.lines().last().unwrap();
    assert!(
        line.starts_with("error: ")
            && line.contains("no config.txt")
            && line.contains("--git-subdir"),
        "{stderr}"
    );

    // An image of an experiment outside git has no labels to follow.
    let plain = sandbox.experiment("golden", "plain");
    sandbox.name_image(&plain, &format!("{}/lab/plain", registry.host()));
    let digest = pushed(run(sandbox
        .cmd()
        .arg("push")
        .arg(&plain)
        .args(["--base", &tiny_base()])));
    let reference = format!("{}/lab/plain@{digest}", registry.host());
    let (_, stderr) = exits(
        2,
        run(auditor
            .cmd()
            .args(["verify", "--image", &reference, "--base", &tiny_base()])),
    );
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "error: {reference} has no org.opencontainers.image.source label, so it names no \
             repository and commit to verify from: pass the experiment directory (verify \
             --image {reference} EXP_DIR)"
        ),
        "{stderr}"
    );
}

/// An OCI layout at `dir` of one layer `layer` (gzip by its media type)
/// under `config`.
fn one_layer_layout(dir: &Path, layer: &[u8]) -> String {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"whatever")]},
        "history": [{"created_by": "a hostile layer"}],
    }))
    .unwrap();
    let manifest =
        serde_json::to_vec(&one_layer_manifest(&config, &sha256(layer), layer.len())).unwrap();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for bytes in [&config[..], &manifest[..], layer] {
        fs::write(blobs.join(sha256_hex(bytes)), bytes).unwrap();
    }
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(&manifest), "size": manifest.len(),
    }]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}", dir.display())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn a_hostile_image_gives_one_line() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    let verify = |image: &str| {
        let out = run(sandbox
            .cmd()
            .args(["verify", "--image", image])
            .arg(&exp)
            .args(["--base", &tiny_base(), "--tag", "t"]));
        let (_, stderr) = exits(2, out);
        let last = stderr.lines().last().unwrap().to_string();
        assert!(last.starts_with("error: "), "{stderr}");
        last
    };
    // Not gzip; gzip of no tar; a tar cut short inside a file.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(100_000);
    tar.append_data(&mut header, "big", &vec![7u8; 100_000][..])
        .unwrap();
    let cut = tar.into_inner().unwrap()[..20_000].to_vec();
    for (name, layer, why) in [
        ("plain", b"this is not gzip".to_vec(), "invalid gzip header"),
        ("notar", gzip(&[0xffu8; 4096]), "a malformed tar entry"),
        ("cut", gzip(&cut), "unexpected EOF"),
    ] {
        let image = one_layer_layout(&sandbox.path(name), &layer);
        let line = verify(&image);
        assert!(
            line.contains("layer 1 of the image (a hostile layer, sha256:") && line.contains(why),
            "{name}: {line}"
        );
    }

    // A layer blob that is not the one its digest names.
    let out = sandbox.path("built");
    succeeds(run(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &tiny_base(), "-o"])
        .arg(format!("oci:{}:t", out.display()))));
    fs::write(exp.join("experiment.py"), "# another experiment\n").unwrap();
    let (_, manifest, _) = layout_image(&out);
    let path = blob(&out, manifest["layers"][1]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 8..].fill(0);
    fs::write(&path, bytes).unwrap();
    let line = verify(&format!("oci:{}:t", out.display()));
    assert!(line.contains("layer 2 of the image"), "{line}");

    // An archive that is no tar.
    let junk = sandbox.path("junk.tar");
    fs::write(&junk, vec![1u8; 4096]).unwrap();
    let line = verify(&format!("docker-archive:{}", junk.display()));
    assert!(line.contains(&junk.display().to_string()), "{line}");
}

#[test]
fn an_archive_podman_saved_is_verified_by_config_and_layer_contents() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    let archive = sandbox.path("built.tar");
    let tag = "verify-podman-saved";
    succeeds(run(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &tiny_base(), "--tag", tag, "-o"])
        .arg(format!("docker-archive:{}", archive.display()))));
    let image = PodmanImage::load(
        &archive,
        &format!("registry.example.test/dallinger-oci/golden:{tag}"),
    );
    // The old form: manifest.json, the config, uncompressed layer tars.
    let saved = sandbox.path("saved.tar");
    ok(image
        .podman()
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&saved)
        .arg(&image.name));
    let reference = format!("docker-archive:{}", saved.display());
    let verify = || {
        run(sandbox
            .cmd()
            .args(["verify", "--image", &reference])
            .arg(&exp)
            .args(["--base", &tiny_base()]))
    };
    let (stdout, _) = exits(0, verify());
    assert_eq!(
        stdout,
        format!("Verified: {reference} is reproduced bit for bit\n")
    );
    fs::write(exp.join("experiment.py"), "# another experiment\n").unwrap();
    let (report, _) = exits(1, verify());
    let code = layer_section(&report, "dallinger-oci: experiment code at /experiment");
    assert_eq!(code[1..], ["  no package (1 path):", code[2]], "{report}");
    assert!(
        code[2].starts_with("    experiment/experiment.py: content sha256:"),
        "{report}"
    );
}
