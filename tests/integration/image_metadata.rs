//! `--tag` (repeatable), `--label`, `--annotation` and their files, in the
//! shapes docker/metadata-action outputs: checked in a real registry with
//! skopeo, in layouts and archives, and the wall-clock warning.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::{Registry, RegistryAuth};
use common::*;

fn base_arg() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

fn experiment(sandbox: &Sandbox, image: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", "golden");
    sandbox.name_image(&exp, image);
    exp
}

/// `skopeo inspect` of `reference` with `extra` flags, as JSON.
fn skopeo(reference: &str, extra: &[&str]) -> serde_json::Value {
    let out = ok(Command::new(require_tool("skopeo"))
        .args(["inspect", "--tls-verify=false"])
        .args(extra)
        .arg(reference));
    serde_json::from_str(&out).unwrap()
}

fn digest_file(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

/// The manifest PUTs the registry saw, in order, as their last path part.
fn manifest_puts(registry: &Registry, repository: &str) -> Vec<String> {
    let prefix = format!("/v2/{repository}/manifests/");
    registry
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .filter_map(|r| r.path.strip_prefix(&prefix).map(String::from))
        .collect()
}

#[test]
fn every_tag_label_and_annotation_reaches_the_registry_the_layout_and_the_archive() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{host}/lab/meta"));
    let mut cmd = sandbox.cmd();
    cmd.arg("push").arg(&exp).args([
        "--base",
        &base_arg(),
        "--tag",
        "a",
        "--tag",
        &format!("{host}/lab/meta:b"),
        "--label",
        "org.opencontainers.image.description=labelled",
        // The user's label wins over the build's own.
        "--label",
        "org.opencontainers.image.base.digest=given",
        "--annotation",
        "org.opencontainers.image.description=Stroop, annotated",
        "-o",
        "oci:layout",
        "-o",
        "docker-archive:image.tar",
        "--digest-file",
        "digest.txt",
        "--metadata-file",
        "metadata.json",
    ]);
    let (stdout, stderr) = succeeds(run(&mut cmd));
    let digest = digest_file(&sandbox.path("digest.txt"));
    assert!(
        stdout.contains(&format!("Image {host}/lab/meta@{digest} built and pushed.")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("Tagged {host}/lab/meta:b@{digest}")),
        "{stderr}"
    );
    // Both tags resolve to the pushed digest.
    for tag in ["a", "b"] {
        let reference = format!("docker://{host}/lab/meta:{tag}");
        assert_eq!(skopeo(&reference, &[])["Digest"], digest.as_str(), "{tag}");
    }
    // By digest first, then each tag, as rules_oci pushes.
    assert_eq!(
        manifest_puts(&registry, "lab/meta"),
        vec![digest.clone(), "a".into(), "b".into()]
    );
    let reference = format!("docker://{host}/lab/meta@{digest}");
    let manifest = skopeo(&reference, &["--raw"]);
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({"org.opencontainers.image.description": "Stroop, annotated"})
    );
    let config = skopeo(&reference, &["--config"]);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.description"], "labelled");
    assert_eq!(labels["org.opencontainers.image.base.digest"], "given");

    // The layout names the image under each tag; the archive has both names.
    assert_eq!(
        crate::hostile::cache::layout_tags(&sandbox.path("layout")),
        vec![("a".into(), digest.clone()), ("b".into(), digest.clone())]
    );
    for tag in ["a", "b"] {
        let layout = format!("oci:{}:{tag}", sandbox.path("layout").display());
        assert_eq!(skopeo(&layout, &[])["Digest"], digest.as_str());
    }
    let out = ok(Command::new("tar")
        .args(["-xOf", "image.tar", "manifest.json"])
        .current_dir(sandbox.path("")));
    let archive: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        archive[0]["RepoTags"],
        serde_json::json!([format!("{host}/lab/meta:a"), format!("{host}/lab/meta:b")])
    );

    // buildx's metadata file.
    let metadata = read_json(&sandbox.path("metadata.json"));
    assert_eq!(metadata["containerimage.digest"], digest.as_str());
    assert_eq!(
        metadata["containerimage.config.digest"],
        manifest["config"]["digest"]
    );
    assert_eq!(
        metadata["image.name"],
        format!("{host}/lab/meta:a,{host}/lab/meta:b")
    );
    assert_eq!(
        metadata["containerimage.descriptor"]["annotations"],
        manifest["annotations"]
    );
}

#[test]
fn metadata_action_files_and_the_wall_clock_warning() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{host}/lab/files"));
    // docker/metadata-action's outputs, as a workflow writes them to files.
    fs::write(
        sandbox.path("tags"),
        format!("{host}/lab/files:main\n{host}/lab/files:sha-860c190\n\n"),
    )
    .unwrap();
    let labels = |created: &str| {
        format!(
            "org.opencontainers.image.created={created}\n\
             org.opencontainers.image.description=Stroop task\n\
             org.opencontainers.image.source=https://github.com/lab/files\n\
             org.opencontainers.image.title=files\n"
        )
    };
    fs::write(sandbox.path("labels"), labels("2026-12-01T23:10:04.123Z")).unwrap();
    fs::write(
        sandbox.path("annotations"),
        "manifest:org.opencontainers.image.description=Stroop task\n",
    )
    .unwrap();
    let push = |epoch: Option<&str>| {
        let mut cmd = sandbox.cmd();
        cmd.arg("push").arg(&exp).args([
            "--base",
            &base_arg(),
            "--tags-file",
            "tags",
            "--labels-file",
            "labels",
            "--annotations-file",
            "annotations",
            "--digest-file",
            "digest.txt",
        ]);
        if let Some(epoch) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", epoch);
        }
        let (_, stderr) = succeeds(run(&mut cmd));
        (digest_file(&sandbox.path("digest.txt")), stderr)
    };
    let (digest, stderr) = push(None);
    let warning = "warning: the label org.opencontainers.image.created=2026-12-01T23:10:04.123Z \
                   (--labels-file labels line 1) is a wall-clock time, so the image's digest \
                   changes on every run: leave it out, or give the build's own time (set \
                   SOURCE_DATE_EPOCH";
    assert!(stderr.contains(warning), "{stderr}");
    for tag in ["main", "sha-860c190"] {
        let reference = format!("docker://{host}/lab/files:{tag}");
        assert_eq!(skopeo(&reference, &[])["Digest"], digest.as_str(), "{tag}");
    }
    let reference = format!("docker://{host}/lab/files@{digest}");
    let config = skopeo(&reference, &["--config"]);
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.source"],
        "https://github.com/lab/files"
    );
    assert_eq!(
        skopeo(&reference, &["--raw"])["annotations"]["org.opencontainers.image.description"],
        "Stroop task"
    );

    // The commit's time as SOURCE_DATE_EPOCH and as `created`: no warning,
    // and the same digest on every run.
    fs::write(sandbox.path("labels"), labels("2025-11-30T12:00:00Z")).unwrap();
    let (first, stderr) = push(Some("1764504000"));
    assert!(!stderr.contains("wall-clock"), "{stderr}");
    assert_ne!(first, digest);
    let (again, _) = push(Some("1764504000"));
    assert_eq!(again, first);
}

#[test]
fn bad_metadata_is_one_line_naming_the_flag_or_the_file_and_line() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "127.0.0.1:1/lab/meta");
    fs::write(sandbox.path("labels"), "a=1\n\nnot a label\n").unwrap();
    let labels = sandbox.path("labels");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--labels-file".into(), labels.display().to_string()],
            format!(
                "error: --labels-file {} line 3 \"not a label\" is not KEY=VALUE: give each \
                 label as KEY=VALUE",
                labels.display()
            ),
        ),
        (
            vec!["--annotation".into(), "=x".into()],
            "error: --annotation \"=x\" has no valid key: give each annotation as KEY=VALUE, \
             the key without spaces"
                .into(),
        ),
        (
            vec!["--tag".into(), "ghcr.io/lab/other:v1".into()],
            "error: --tag \"ghcr.io/lab/other:v1\" names the repository ghcr.io/lab/other, not \
             127.0.0.1:1/lab/meta, the image's repository (docker_image_base_name in \
             config.txt): the tags name one image; to push it to another repository as well, \
             add --output docker://ghcr.io/lab/other:v1"
                .into(),
        ),
        (
            vec!["--tag".into(), "v1!".into()],
            "error: --tag \"v1!\" is not a valid tag (letters, digits, '_', '.', '-'; at most \
             128; not starting with '.' or '-')"
                .into(),
        ),
    ];
    for (args, says) in cases {
        let mut cmd = sandbox.cmd();
        cmd.arg("build")
            .arg(&exp)
            .args(["--base", &base_arg(), "-o", "oci:out"])
            .args(&args);
        let out = run(&mut cmd);
        assert_eq!(one_line_error(&out), says, "{args:?}");
        assert!(!sandbox.path("out").exists());
    }
}
