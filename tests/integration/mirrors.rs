//! registries.conf mirrors, against real registries on 127.0.0.1: a base
//! named `ghcr.io/astral-sh/uv:TAG` comes from a mirror with the digest it
//! has when read from its location; a mirror that lacks it is passed over,
//! one that serves other bytes stops the build naming it; `blocked`; the
//! lookup order of the files; credentials per host; pushes never go to a
//! mirror.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{Registry, RegistryAuth};
use common::*;

const TAG: &str = "python3.11-bookworm";
const BASE: &str = "ghcr.io/astral-sh/uv:python3.11-bookworm";

/// Copies the tiny base layout into `registry` as `astral-sh/uv:TAG`, and
/// returns its manifest digest there (as skopeo computes it).
fn serve_base(registry: &Registry) -> String {
    let layout = rootfs_layout(fixture("base/tiny-rootfs.tar"));
    let target = format!("docker://{}/astral-sh/uv:{TAG}", registry.host());
    ok(Command::new(require_tool("skopeo"))
        .args(["copy", "--dest-tls-verify=false"])
        .arg(&layout)
        .arg(&target));
    let out = ok(Command::new(require_tool("skopeo"))
        .args(["inspect", "--tls-verify=false"])
        .arg(&target));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// A registries.conf in the sandbox.
fn conf(sandbox: &Sandbox, name: &str, text: &str) -> PathBuf {
    let path = sandbox.path(name);
    fs::write(&path, text).unwrap();
    path
}

/// `[[registry]] prefix = "ghcr.io"` at `location`, with `mirrors` in order.
fn ghcr_table(location: &str, mirrors: &[&str]) -> String {
    let mut text = format!("[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"{location}\"\n");
    for mirror in mirrors {
        text.push_str(&format!("[[registry.mirror]]\nlocation = \"{mirror}\"\n"));
    }
    text
}

/// An address nothing listens on.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_local_port())
}

/// `build` of the golden experiment on `BASE` into a layout, with a fresh
/// cache, the registries configuration `conf` and `args`.
fn build(sandbox: &Sandbox, rel: &str, conf: Option<&Path>, args: &[&str]) -> Output {
    let exp = sandbox.path("exp");
    if !exp.exists() {
        sandbox.experiment("golden", "exp");
    }
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(&exp)
        .args(["--base", BASE, "--output"])
        .arg(format!("oci:{}", sandbox.path(rel).display()))
        .env("DALLINGER_OCI_CACHE", sandbox.path(&format!("{rel}-cache")))
        .args(args);
    if let Some(conf) = conf {
        cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
    }
    run(&mut cmd)
}

fn built(out: Output) -> (String, String) {
    let (stdout, stderr) = succeeds(out);
    (printed_digest(&stdout), stderr)
}

fn manifest_gets(registry: &Registry) -> usize {
    registry
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/") && r.status == 200)
        .count()
}

#[test]
fn a_base_from_a_mirror_has_the_digest_it_has_at_its_location() {
    let location = Registry::start(RegistryAuth::None);
    let mirror = Registry::start(RegistryAuth::None);
    let empty_mirror = Registry::start(RegistryAuth::None);
    let base_digest = serve_base(&location);
    assert_eq!(serve_base(&mirror), base_digest);
    let sandbox = Sandbox::new();

    // ghcr.io's location rewritten to a registry of ours: the base as read
    // from its location.
    let direct = conf(&sandbox, "direct.conf", &ghcr_table(&location.host(), &[]));
    let (digest, _) = built(build(&sandbox, "direct", Some(&direct), &[]));
    let (_, _, config) = layout_image(&sandbox.path("direct"));
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.name"], BASE,
        "{config}"
    );
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        base_digest.as_str()
    );

    // The location unreachable, a mirror without the image first, then one
    // with it: passed over with a line, and the same image.
    let mirrored = conf(
        &sandbox,
        "mirrored.conf",
        &ghcr_table(&nowhere(), &[&empty_mirror.host(), &mirror.host()]),
    );
    let gets_before = manifest_gets(&mirror);
    let (from_mirror, stderr) = built(build(&sandbox, "mirrored", Some(&mirrored), &[]));
    assert_eq!(from_mirror, digest, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "mirror {} (registries.conf {}) did not give {}/astral-sh/uv:{TAG}",
            empty_mirror.host(),
            mirrored.display(),
            empty_mirror.host()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("trying mirror {}", mirror.host())),
        "{stderr}"
    );
    assert!(manifest_gets(&mirror) > gets_before);
    // Every layer came from the mirror, under the name of the image.
    let layer_gets = mirror
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v2/astral-sh/uv/blobs/"))
        .count();
    assert!(layer_gets >= 2, "config and layer: {:?}", mirror.requests());
    assert_eq!(
        fs::read(sandbox.path("mirrored/index.json")).unwrap(),
        fs::read(sandbox.path("direct/index.json")).unwrap()
    );

    // The tag is remembered by the digest it resolved to: a rebuild in the
    // same cache asks no registry for the tag, whichever served it.
    let cache = sandbox.path("mirrored-cache");
    let tag_gets = |r: &Registry| {
        r.requests()
            .iter()
            .filter(|q| q.path.ends_with(&format!("/manifests/{TAG}")))
            .count()
    };
    let before = tag_gets(&mirror);
    let mut again = sandbox.cmd();
    again
        .arg("build")
        .arg(sandbox.path("exp"))
        .args(["--base", BASE, "--output"])
        .arg(format!("oci:{}", sandbox.path("again").display()))
        .env("DALLINGER_OCI_CACHE", &cache)
        .env("CONTAINERS_REGISTRIES_CONF", &direct);
    let (rebuilt, _) = built(run(&mut again));
    assert_eq!(rebuilt, digest);
    assert_eq!(tag_gets(&mirror), before);
}

#[test]
fn a_mirror_serving_other_bytes_stops_the_build_naming_it() {
    let location = Registry::start(RegistryAuth::None);
    let mirror = Registry::start(RegistryAuth::None);
    serve_base(&location);
    serve_base(&mirror);
    // Damage the mirror's copy of the base's one layer: same length, other
    // bytes (a registry serves its storage as it is).
    let layout = rootfs_layout(fixture("base/tiny-rootfs.tar"));
    let dir = layout
        .strip_prefix("oci:")
        .unwrap()
        .strip_suffix(":base")
        .unwrap();
    let (_, manifest, _) = layout_image(Path::new(dir));
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let data = mirror.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, bytes).unwrap();

    let sandbox = Sandbox::new();
    // The location has the right bytes: they are not taken instead.
    let conf = conf(
        &sandbox,
        "registries.conf",
        &ghcr_table(&location.host(), &[&mirror.host()]),
    );
    let out = build(&sandbox, "lying", Some(&conf), &["--retries", "1"]);
    let error = one_line_error(&out);
    assert!(
        error.contains(&format!(
            "mirror {} (registries.conf {}) (as {}/astral-sh/uv) for ghcr.io/astral-sh/uv",
            mirror.host(),
            conf.display(),
            mirror.host()
        )),
        "{error}"
    );
    assert!(error.contains(&format!("blob {layer}")), "{error}");
    assert!(error.contains("does not match its descriptor"), "{error}");
    assert!(!sandbox.path("lying").exists());
    let from_location = location
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(hex))
        .count();
    assert_eq!(from_location, 0, "{:?}", location.requests());
}

#[test]
fn a_blocked_registry_is_refused_in_one_line() {
    let sandbox = Sandbox::new();
    let conf = conf(
        &sandbox,
        "registries.conf",
        "[[registry]]\nprefix = \"ghcr.io/astral-sh\"\nlocation = \"ghcr.io/astral-sh\"\nblocked = true\n",
    );
    let error = one_line_error(&build(&sandbox, "blocked", Some(&conf), &[]));
    assert_eq!(
        error,
        format!(
            "error: {BASE}: registry ghcr.io/astral-sh is blocked in {}: pulling from it is \
             refused (remove `blocked = true` from its [[registry]] table to allow it)",
            conf.display()
        )
    );

    // A malformed file is one line naming it and the line.
    let bad = self::conf(
        &sandbox,
        "bad.conf",
        "[[registry]]\nlocation = \"https://ghcr.io\"\n",
    );
    let error = one_line_error(&build(&sandbox, "bad", Some(&bad), &[]));
    assert!(
        error.contains(&format!(
            "{}: location \"https://ghcr.io\": URL schemes are not supported",
            bad.display()
        )),
        "{error}"
    );
}

#[test]
fn the_files_are_read_in_podmans_order() {
    let location = Registry::start(RegistryAuth::None);
    serve_base(&location);
    let sandbox = Sandbox::new();
    // The user's file, with no environment variable.
    let user = sandbox.home().join(".config/containers");
    fs::create_dir_all(user.join("registries.conf.d")).unwrap();
    fs::write(
        user.join("registries.conf"),
        ghcr_table(&location.host(), &[]),
    )
    .unwrap();
    let (digest, _) = built(build(&sandbox, "user", None, &[]));
    assert!(digest.starts_with("sha256:"));

    // A user drop-in replaces the table of the same prefix.
    fs::write(
        user.join("registries.conf.d/50-block.conf"),
        "[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"ghcr.io\"\nblocked = true\n",
    )
    .unwrap();
    let error = one_line_error(&build(&sandbox, "drop-in", None, &[]));
    assert!(error.contains("50-block.conf"), "{error}");
    fs::remove_file(user.join("registries.conf.d/50-block.conf")).unwrap();

    // $CONTAINERS_REGISTRIES_CONF wins over the user's file, and must exist.
    let env = conf(
        &sandbox,
        "env.conf",
        "[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"ghcr.io\"\nblocked = true\n",
    );
    let error = one_line_error(&build(&sandbox, "env", Some(&env), &[]));
    assert!(
        error.contains(&format!("blocked in {}", env.display())),
        "{error}"
    );
    let missing = sandbox.path("missing.conf");
    let error = one_line_error(&build(&sandbox, "missing", Some(&missing), &[]));
    assert!(error.contains("missing.conf"), "{error}");
}

#[test]
fn each_host_gets_its_own_credentials_and_pushes_skip_mirrors() {
    let location = Registry::start(RegistryAuth::None);
    let mirror = Registry::start(RegistryAuth::htpasswd("mirror-user", "m1rror-pw"));
    serve_base(&location);
    // The mirror's own copy, pushed with its credentials.
    let layout = rootfs_layout(fixture("base/tiny-rootfs.tar"));
    ok(Command::new(require_tool("skopeo"))
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "mirror-user:m1rror-pw",
        ])
        .arg(&layout)
        .arg(format!("docker://{}/astral-sh/uv:{TAG}", mirror.host())));
    let sandbox = Sandbox::new();
    let auth = sandbox.path("auth.json");
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    fs::write(
        &auth,
        serde_json::json!({"auths": {
            mirror.host(): {"auth": b64("mirror-user:m1rror-pw")},
            "ghcr.io": {"auth": b64("ghcr-user:ghcr-s3cret")},
        }})
        .to_string(),
    )
    .unwrap();
    let conf = conf(
        &sandbox,
        "registries.conf",
        &format!(
            "{}\n[[registry]]\nlocation = \"{}\"\n[[registry.mirror]]\nlocation = \"{}\"\n",
            ghcr_table(&nowhere(), &[&mirror.host()]),
            location.host(),
            mirror.host()
        ),
    );
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(sandbox.experiment("golden", "exp"))
        .args(["--base", BASE, "--output"])
        .arg(format!("docker://{}/lab/golden:v1", location.host()))
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", &auth);
    let (stdout, stderr) = succeeds(run(&mut cmd));
    assert!(
        stderr.contains(&format!("Using credentials for {} from", mirror.host())),
        "{stderr}"
    );
    // ghcr.io itself is never contacted, so its entry is never used.
    assert!(
        !stderr.contains("Using credentials for ghcr.io"),
        "{stderr}"
    );
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
    // The push went to the registry named, not to its mirror.
    let puts = |r: &Registry| {
        r.requests()
            .iter()
            .filter(|q| q.method == "PUT" && q.path.contains("/lab/golden/manifests/"))
            .count()
    };
    assert!(puts(&location) >= 1, "{:?}", location.requests());
    assert_eq!(puts(&mirror), 0);
    assert!(!mirror
        .requests()
        .iter()
        .any(|q| q.path.contains("/lab/golden/")));
}
