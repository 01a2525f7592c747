//! The lock as a remote cache: a fresh runner (empty cache, `--locked
//! --offline`) pushes an edit of the Dallinger demo to a registry holding
//! the previous push, and uploads only what changed (from the registry's
//! access log); a stale layer entry is built again with a warning; and
//! `digest` adds an image up from the lock and the code layer.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::dallinger_image::dallinger_demo_command;
use common::registry::{Registry, RegistryAuth, Request};
use common::*;

/// The digests of the blobs PUT (an upload's last request names its
/// digest) among `requests`.
fn uploaded(requests: &[Request]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
        .filter_map(|r| {
            let digest = r.uri.split("digest=").nth(1)?;
            Some(digest.split('&').next()?.replace("%3A", ":"))
        })
        .collect()
}

/// The blobs downloaded (GET) among `requests`.
fn downloaded(requests: &[Request]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:"))
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// The manifest of `reference` in the registry.
fn manifest(reference: &str) -> serde_json::Value {
    let out = ok(Command::new(require_tool("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(reference));
    serde_json::from_str(&out).unwrap()
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(suffix))
        .collect()
}

/// The demo command with its own (empty) cache directory, as a fresh CI
/// runner has.
fn fresh_runner(sandbox: &Sandbox, subcommand: &str, exp: &Path, cache: &str) -> Command {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg(subcommand)
        .arg(exp)
        .args(["--base", &python_base_layout(), "--cache-dir"])
        .arg(sandbox.path(cache));
    cmd
}

fn edit(exp: &Path, line: &str) {
    let path = exp.join("experiment.py");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("{text}\n{line}\n")).unwrap();
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Must-show 1 and 3 of issue 12, and `digest` for the demo.
#[test]
fn a_fresh_runner_pushes_only_the_edit_and_a_stale_entry_is_built() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let repository = format!("{host}/lab/demo");
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("dallinger-demo", "dallinger-demo");
    sandbox.name_image(&exp, &repository);

    // The lock, with the layers it predicts and the target, and the push a
    // runner made before the edit (the shared demo cache: warm).
    ok(&mut dallinger_demo_command(&sandbox, "lock", &exp));
    let lock_text = fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap();
    assert!(
        lock_text.contains("[[tool.dallinger-oci.layers]]"),
        "{lock_text}"
    );
    assert!(
        lock_text.contains("[tool.dallinger-oci.target]"),
        "{lock_text}"
    );
    ok(dallinger_demo_command(&sandbox, "push", &exp).arg("--locked"));

    // A one-line edit; the digest a full build from the warm cache gives.
    edit(&exp, "# a one-line edit");
    let full =
        printed_digest(&ok(dallinger_demo_command(&sandbox, "build", &exp)
            .args(["--locked", "--output", "oci:full"])));
    // `digest` says so beforehand, from the warm cache and from none.
    let said = ok(dallinger_demo_command(&sandbox, "digest", &exp).arg("--locked"));
    assert_eq!(said.trim(), full);
    let said = ok(&mut fresh_runner(&sandbox, "digest", &exp, "digest-cache"));
    assert_eq!(said.trim(), full);

    // The fresh runner: nothing cached, nothing from the index.
    let before = registry.requests().len();
    let out =
        run(fresh_runner(&sandbox, "push", &exp, "fresh-cache").args(["--locked", "--offline"]));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("Image {repository}@{full} built and pushed.")),
        "{stdout}\n{stderr}"
    );
    let requests = registry.requests()[before..].to_vec();
    let pushed = manifest(&format!("docker://{repository}@{full}"));
    let layers = manifest_layers(&pushed);
    let config = pushed["config"]["digest"].as_str().unwrap().to_string();
    let code = layers.last().unwrap().clone();
    assert_eq!(
        uploaded(&requests),
        BTreeSet::from([code.clone(), config]),
        "{requests:#?}"
    );
    // Only the Dallinger layer is read (for its frontend files): no wheel,
    // no sdist build.
    let dallinger_layer = layers[layers.len() - 2].clone();
    assert!(
        downloaded(&requests).is_subset(&BTreeSet::from([dallinger_layer])),
        "{requests:#?}"
    );
    assert!(files_ending(&sandbox.path("fresh-cache"), ".whl").is_empty());
    assert!(!stderr.contains("sdist"), "{stderr}");

    // A stale entry: the dependency layer recorded by another compressor.
    // A runner with only the wheels cached builds that layer, says so, and
    // still pushes the full build's digest.
    let lock_path = exp.join("pylock.dallinger-oci.toml");
    let mut lock: toml::Value = toml::from_str(&fs::read_to_string(&lock_path).unwrap()).unwrap();
    let entries = lock["tool"]["dallinger-oci"]["layers"]
        .as_array_mut()
        .unwrap();
    let deps = entries
        .iter_mut()
        .find(|e| {
            e["created-by"]
                .as_str()
                .unwrap()
                .contains("Python dependencies")
        })
        .unwrap();
    deps["compressor"] = toml::Value::String("gzip-other-level-1".into());
    let deps_name = deps["created-by"].as_str().unwrap().to_string();
    fs::write(&lock_path, toml::to_string(&lock).unwrap()).unwrap();
    copy_tree(
        &test_cache_dir().join("dallinger-demo-cache/wheels"),
        &sandbox.path("wheels-only/wheels"),
    );
    let before = registry.requests().len();
    let out =
        run(fresh_runner(&sandbox, "push", &exp, "wheels-only").args(["--locked", "--offline"]));
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let warning = format!("warning: layer {deps_name:?}: pylock.dallinger-oci.toml is stale for it (its entry was written with compressor gzip-other-level-1");
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("{repository}@{full} built")),
        "{stdout}"
    );
    // The layer it built is the one the registry has: nothing new uploaded
    // but the code layer and config, which it has too.
    let requests = registry.requests()[before..].to_vec();
    assert!(uploaded(&requests).is_empty(), "{requests:#?}");
    // `digest` refuses to predict that layer, naming it.
    let out = run(&mut fresh_runner(&sandbox, "digest", &exp, "digest-stale"));
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(
        line.contains(&deps_name) && line.contains("dallinger-oci lock"),
        "{line}"
    );
}
