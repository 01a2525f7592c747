//! `system_packages`: Debian packages from the real archive, on the bookworm
//! test base, installed without apt and run with podman.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// An experiment asking for `packages`, with no Python pins (the Python
/// stage then adds nothing, so only the Debian layer is new).
fn experiment(sandbox: &Sandbox, rel: &str, packages: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", rel);
    let config = fs::read_to_string(exp.join("config.txt")).unwrap();
    fs::write(
        exp.join("config.txt"),
        config.replace(
            "[Docker]\n",
            &format!("[Docker]\nsystem_packages = {packages}\n"),
        ),
    )
    .unwrap();
    fs::write(exp.join("requirements.txt"), "# no Python packages\n").unwrap();
    exp
}

/// Where the archive's downloads are kept between test runs, so only the
/// first run fetches the package lists and `.deb` files (InRelease is
/// always fetched: it is what a build without a lock checks).
fn shared_downloads() -> PathBuf {
    test_cache_dir().join("debian-downloads")
}

/// Copies verified downloads between the shared test cache and a sandbox's.
fn copy_downloads(from: &Path, to: &Path) {
    if !from.is_dir() {
        return;
    }
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else if !dest.exists() && !rel.to_string_lossy().contains(".partial") {
            let tmp = dest.with_extension("copying");
            fs::copy(entry.path(), &tmp).unwrap();
            fs::rename(&tmp, &dest).unwrap();
        }
    }
}

fn build(sandbox: &Sandbox, exp: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    copy_downloads(&shared_downloads(), &sandbox.path("cache/debian/sha256"));
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(exp)
        .args(["--base", &python_base_layout()])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    copy_downloads(&sandbox.path("cache/debian/sha256"), &shared_downloads());
    out
}

fn build_ok(
    sandbox: &Sandbox,
    exp: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (String, String) {
    let out = build(sandbox, exp, extra, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "build failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        printed_digest(&String::from_utf8_lossy(&out.stdout)),
        stderr,
    )
}

/// A failing build's stderr, whose last line must be the one-line error.
fn build_err(sandbox: &Sandbox, exp: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let out = build(sandbox, exp, extra, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

/// A file's text from a gzipped layer, streamed.
fn file_in_layer(layer: &Path, path: &str) -> String {
    let gz = flate2::read::GzDecoder::new(fs::File::open(layer).unwrap());
    let mut archive = tar::Archive::new(gz);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == path {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            return text;
        }
    }
    panic!("{path} is not in {}", layer.display());
}

#[test]
fn jq_runs_is_known_to_dpkg_and_builds_reproducibly() {
    require_tool("podman");
    let a = Sandbox::new();
    let exp_a = experiment(&a, "first/jqexp", "jq");
    let archive = a.path("image.tar");
    let (cold, stderr) = build_ok(
        &a,
        &exp_a,
        &[
            "--tag",
            "jq",
            "--output",
            &format!("docker-archive:{}", archive.display()),
            "--output",
            "oci:layout",
        ],
        &[],
    );
    assert!(stderr.contains("Debian packages: jq 1.6"), "{stderr}");
    let (_, manifest, config) = layout_image(&a.path("layout"));
    // base, Debian packages, experiment code
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let history = created_by(&config);
    assert!(
        history
            .iter()
            .any(|h| h == "dallinger-oci: Debian packages jq (3 packages)"),
        "{history:?}"
    );
    // The image's config.txt must not carry our key: Dallinger refuses
    // unknown keys.
    let layers = manifest["layers"].as_array().unwrap();
    let code = gunzip(&blob(
        &a.path("layout"),
        layers[2]["digest"].as_str().unwrap(),
    ));
    let mut tar = tar::Archive::new(&code[..]);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "experiment/config.txt" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            assert!(!text.contains("system_packages"), "{text}");
        }
    }

    // dpkg's status: the base's stanzas byte for byte, plus the three new.
    let layout = a.path("layout");
    let base_status = file_in_layer(
        &blob(&layout, layers[0]["digest"].as_str().unwrap()),
        "var/lib/dpkg/status",
    );
    let new_status = file_in_layer(
        &blob(&layout, layers[1]["digest"].as_str().unwrap()),
        "var/lib/dpkg/status",
    );
    let kept: Vec<&str> = new_status
        .split("\n\n")
        .filter(|s| {
            !["jq", "libjq1", "libonig5"]
                .iter()
                .any(|p| s.starts_with(&format!("Package: {p}\n")))
        })
        .collect();
    assert_eq!(kept.join("\n\n"), base_status);
    assert_eq!(
        new_status.split("\n\n").count(),
        base_status.split("\n\n").count() + 3
    );

    // Warm: the same digest, the Debian layer taken from the cache.
    let (warm, _) = build_ok(&a, &exp_a, &["--tag", "jq"], &[]);
    assert_eq!(cold, warm);
    // Elsewhere, with another cache: the same digest.
    let b = Sandbox::new();
    let exp_b = experiment(&b, "some/other/place/jqexp", "jq");
    let (other, _) = build_ok(&b, &exp_b, &["--tag", "jq"], &[]);
    assert_eq!(cold, other);

    let image = PodmanImage::load(&archive, "registry.example.test/dallinger-oci/golden:jq");
    let out = ok(image.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        &image.name,
        "sh",
        "-c",
        "jq --version && echo '{\"a\":[1,2]}' | jq -c '.a|add' && dpkg -s jq | grep '^Status:' \
         && dpkg -l jq libjq1 libonig5 | grep -c '^ii' && dpkg -L libonig5 | grep -c libonig.so.5 \
         && dpkg --audit && echo audit-clean",
    ]));
    drop(image);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("jq-1.6"), "{out}");
    assert_eq!(lines[1], "3", "{out}");
    assert_eq!(lines[2], "Status: install ok installed", "{out}");
    assert_eq!(lines[3], "3", "{out}");
    assert_eq!(lines.last(), Some(&"audit-clean"), "{out}");
}

/// `lock` on the Python base with the shared downloads; the lock's text.
fn lock(sandbox: &Sandbox, exp: &Path) -> String {
    copy_downloads(&shared_downloads(), &sandbox.path("cache/debian/sha256"));
    let mut lock = sandbox.cmd();
    lock.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("lock")
        .arg(exp)
        .args(["--base", &python_base_layout()]);
    ok(&mut lock);
    fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap()
}

#[test]
fn the_lock_pins_every_deb_and_needs_no_network_then_a_tampered_deb_is_refused() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "jqexp", "jq");
    let text = lock(&sandbox, &exp);
    assert!(text.contains("[tool.dallinger-oci.debian]"), "{text}");
    assert!(text.contains("system-packages = \"jq\""), "{text}");
    for name in ["jq", "libjq1", "libonig5"] {
        assert!(text.contains(&format!("name = \"{name}\"")), "{text}");
    }
    assert!(text.contains("sha256 = \""), "{text}");
    assert!(
        !text.contains(&*sandbox.dir.path().to_string_lossy()),
        "{text}"
    );

    // With the lock and a warm cache: no network at all (every HTTP request
    // goes to a closed port), and --locked accepts it.
    let offline = [
        ("http_proxy", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ];
    let sbom = sandbox.path("image.spdx.json");
    let (locked, stderr) = build_ok(
        &sandbox,
        &exp,
        &["--tag", "t", "--locked", "--sbom", sbom.to_str().unwrap()],
        &offline,
    );
    assert!(!stderr.contains("Reading http"), "{stderr}");
    // Its SBOM names every locked .deb (purl, sha256, URL).
    crate::attest::assert_spdx_has_locked_debs(&sbom, &text);

    // A different epoch needs the layer written again, so the cached .deb
    // files are read: one altered byte is refused, naming the file.
    let onig = walkdir::WalkDir::new(sandbox.path("cache/debian/sha256"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonig5_"))
        })
        .expect("libonig5 is in the cache");
    let mut bytes = fs::read(&onig).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&onig, &bytes).unwrap();
    let mut env = offline.to_vec();
    env.push(("SOURCE_DATE_EPOCH", "1000000000"));
    let err = build_err(&sandbox, &exp, &["--tag", "t", "--locked"], &env);
    assert!(
        err.contains("libonig5_") && err.contains("refusing it"),
        "{err}"
    );
    assert!(err.contains("does not match its pinned sha256"), "{err}");
    // The shared download cache is not polluted by the altered file.
    bytes[middle] ^= 0xff;
    fs::write(&onig, &bytes).unwrap();
    let (again, _) = build_ok(&sandbox, &exp, &["--tag", "t", "--locked"], &offline);
    assert_eq!(locked, again);
}

/// `dallinger-oci digest` with an empty cache directory each time.
fn digest(sandbox: &Sandbox, exp: &Path, cache: &str) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("digest")
        .arg(exp)
        .args(["--base", &python_base_layout(), "--tag", "t", "--cache-dir"])
        .arg(sandbox.path(cache));
    run(&mut cmd)
}

/// `digest` adds up an image with `system_packages` from the lock and the
/// code layer, making no other layer: the digest `build` then prints,
/// before and after an edit; a lock for other packages is refused in one
/// line naming the way out.
#[test]
fn digest_predicts_a_system_packages_build_and_refuses_a_stale_lock() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "jqdigest", "jq");
    let text = lock(&sandbox, &exp);
    assert!(text.contains("kind = \"debian\""), "{text}");

    let (stdout, _) = succeeds(digest(&sandbox, &exp, "empty-1"));
    assert!(files_named(&sandbox.path("empty-1"), ".deb").is_empty());
    let (built, _) = build_ok(&sandbox, &exp, &["--tag", "t", "--locked"], &[]);
    assert_eq!(stdout, format!("{built}\n"));

    let script = exp.join("experiment.py");
    let text = fs::read_to_string(&script).unwrap();
    fs::write(&script, format!("{text}\n# an edit\n")).unwrap();
    let (stdout, _) = succeeds(digest(&sandbox, &exp, "empty-2"));
    let (edited, _) = build_ok(&sandbox, &exp, &["--tag", "t", "--locked"], &[]);
    assert_ne!(edited, built);
    assert_eq!(stdout, format!("{edited}\n"));

    let config = fs::read_to_string(exp.join("config.txt")).unwrap();
    fs::write(
        exp.join("config.txt"),
        config.replace("system_packages = jq\n", "system_packages = jq curl\n"),
    )
    .unwrap();
    let out = digest(&sandbox, &exp, "empty-3");
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(
        line.contains("\"jq curl\"") && line.contains("run `dallinger-oci lock`"),
        "{line}"
    );
}

/// Files under `dir` whose name ends with `suffix`.
fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn an_unknown_package_is_named_in_one_line() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "exp", "jq no-such-package-xyz");
    let err = build_err(&sandbox, &exp, &["--tag", "t"], &[]);
    assert!(err.contains("\"no-such-package-xyz\""), "{err}");
    assert!(err.contains("bookworm"), "{err}");
    let exp = experiment(&sandbox, "exp2", "Not_A_Name");
    let err = build_err(&sandbox, &exp, &["--tag", "t"], &[]);
    assert!(
        err.contains("system_packages") && err.contains("Not_A_Name"),
        "{err}"
    );
}
