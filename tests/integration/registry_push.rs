//! Pushing and pulling against a real CNCF distribution registry on
//! 127.0.0.1, checked with skopeo and the registry's own access log.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use common::registry::{FaultProxy, Registry, RegistryAuth, TokenIssuer};
use common::*;

fn base_arg() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// The golden experiment named `HOST/REPO`, in its own directory.
fn experiment(sandbox: &Sandbox, dir: &str, image: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", dir);
    sandbox.name_image(&exp, image);
    exp
}

fn push(sandbox: &Sandbox, exp: &Path, extra: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(exp)
        .args(["--base", &base_arg()])
        .args(extra);
    run(&mut cmd)
}

/// Pushes with one extra environment variable; returns the exit code and
/// stdout and stderr together.
fn push_with_env(sandbox: &Sandbox, exp: &Path, key: &str, value: &Path) -> (Option<i32>, String) {
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(exp)
        .args(["--base", &base_arg()])
        .env(key, value);
    let out = run(&mut cmd);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all)
}

fn push_ok(sandbox: &Sandbox, exp: &Path, extra: &[&str]) -> (String, String) {
    let out = push(sandbox, exp, extra);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "push failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The digest from Dallinger's closing lines, checking their exact form.
fn pushed_digest(stdout: &str, repository: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let n = lines.len();
    assert!(n >= 4, "{stdout}");
    let digest = lines[n - 4]
        .strip_prefix("Pushed image: ")
        .expect(stdout)
        .to_string();
    assert_eq!(lines[n - 3], "");
    assert_eq!(
        lines[n - 2],
        format!("Image {repository}@{digest} built and pushed.")
    );
    assert_eq!(lines[n - 1], "");
    digest
}

fn blob_uploads(registry: &Registry) -> usize {
    registry
        .requests()
        .iter()
        .filter(|r| {
            (r.method == "PATCH" || r.method == "PUT") && r.path.contains("/blobs/uploads/")
        })
        .count()
}

fn skopeo_digest(reference: &str, extra: &[&str]) -> String {
    let out = ok(Command::new(require_tool("skopeo"))
        .args(["inspect", "--tls-verify=false"])
        .args(extra)
        .arg(reference));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[test]
fn round_trip_skip_existing_and_cross_repository_mount() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{host}/lab/golden"));
    let github_output = sandbox.path("github_output");
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(&exp)
        .args([
            "--base",
            &base_arg(),
            "--output",
            "oci:local",
            "--digest-file",
            "digest.txt",
        ])
        .env("GITHUB_OUTPUT", &github_output);
    let stdout = ok(&mut cmd);
    let repository = format!("{host}/lab/golden");
    let digest = pushed_digest(&stdout, &repository);
    assert_eq!(
        fs::read_to_string(sandbox.path("digest.txt")).unwrap(),
        format!("{digest}\n")
    );
    assert_eq!(
        fs::read_to_string(&github_output).unwrap(),
        format!("digest={digest}\nimage={repository}@{digest}\n")
    );

    // skopeo sees our digest, and copies back byte-identical manifest and config.
    assert_eq!(
        skopeo_digest(&format!("docker://{repository}@{digest}"), &[]),
        digest
    );
    let copy = sandbox.path("copy");
    ok(Command::new(require_tool("skopeo"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{repository}@{digest}"))
        .arg(format!("oci:{}:copy", copy.display())));
    let (copied, manifest, _) = layout_image(&copy);
    assert_eq!(copied, digest);
    let config = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(
        fs::read(blob(&copy, &digest)).unwrap(),
        fs::read(blob(&sandbox.path("local"), &digest)).unwrap()
    );
    assert_eq!(
        fs::read(blob(&copy, config)).unwrap(),
        fs::read(blob(&sandbox.path("local"), config)).unwrap()
    );

    // A second push uploads nothing.
    let before = blob_uploads(&registry);
    let (stdout, stderr) = push_ok(&sandbox, &exp, &[]);
    assert_eq!(pushed_digest(&stdout, &repository), digest);
    assert!(stderr.contains("Uploaded 0 bytes"), "{stderr}");
    assert_eq!(blob_uploads(&registry), before);

    // Another image sharing the base layer, pushed to another repository,
    // mounts it: no PATCH or PUT carries it.
    let other = experiment(&sandbox, "other", &format!("{host}/lab/other"));
    fs::write(other.join("experiment.py"), "# another experiment\n").unwrap();
    let (stdout, stderr) = push_ok(&sandbox, &other, &[]);
    pushed_digest(&stdout, &format!("{host}/lab/other"));
    assert!(stderr.contains("mounted from lab/golden"), "{stderr}");
    let (_, local_manifest, _) = layout_image(&sandbox.path("local"));
    let base_layer = local_manifest["layers"][0]["digest"].as_str().unwrap();
    let requests = registry.requests();
    assert!(requests
        .iter()
        .any(|r| r.method == "POST" && r.uri.contains("mount=")));
    for r in requests
        .iter()
        .filter(|r| r.path.starts_with("/v2/lab/other/blobs/uploads/"))
    {
        assert!(
            !(r.method == "PUT" && r.uri.contains(&base_layer.replace(':', "%3A"))),
            "the shared layer was uploaded: {r:?}"
        );
    }
}

#[test]
fn use_existing_reuses_only_an_unchanged_image() {
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let exp = experiment(
        &sandbox,
        "golden",
        &format!("{}/lab/reuse", registry.host()),
    );
    let (stdout, _) = push_ok(&sandbox, &exp, &[]);
    let first = pushed_digest(&stdout, &format!("{}/lab/reuse", registry.host()));
    let (stdout, stderr) = push_ok(&sandbox, &exp, &["--use-existing"]);
    assert_eq!(
        pushed_digest(&stdout, &format!("{}/lab/reuse", registry.host())),
        first
    );
    assert!(
        stderr.contains("every input is unchanged: reusing it"),
        "{stderr}"
    );
    // Changed code: --use-existing must not reuse the stale image.
    fs::write(exp.join("experiment.py"), "# new code\n").unwrap();
    let (stdout, stderr) = push_ok(&sandbox, &exp, &["--use-existing"]);
    assert_ne!(
        pushed_digest(&stdout, &format!("{}/lab/reuse", registry.host())),
        first
    );
    assert!(!stderr.contains("reusing it"), "{stderr}");
}

#[test]
fn basic_auth_from_docker_config_and_wrong_password() {
    let registry = Registry::start(RegistryAuth::htpasswd("alice", "s3cret-basic-pw"));
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{host}/lab/basic"));

    // No credentials: the login message, non-zero exit.
    let out = push(&sandbox, &exp, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("docker login {host}")), "{stderr}");

    // Wrong password from a docker config.json: the login message, no secret shown.
    let docker = sandbox.home().join(".docker");
    fs::create_dir_all(&docker).unwrap();
    let auth = |user: &str, pw: &str| {
        use std::io::Write;
        let mut enc = Vec::new();
        write!(enc, "{user}:{pw}").unwrap();
        base64(&enc)
    };
    fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            auth("alice", "wrong-pw-value")
        ),
    )
    .unwrap();
    let out = push(&sandbox, &exp, &[]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("docker login"), "{all}");
    assert!(!all.contains("wrong-pw-value"), "{all}");

    fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            auth("alice", "s3cret-basic-pw")
        ),
    )
    .unwrap();
    let (stdout, stderr) = push_ok(&sandbox, &exp, &[]);
    let digest = pushed_digest(&stdout, &format!("{host}/lab/basic"));
    assert!(!stdout.contains("s3cret-basic-pw") && !stderr.contains("s3cret-basic-pw"));
    assert_eq!(
        skopeo_digest(
            &format!("docker://{host}/lab/basic@{digest}"),
            &["--creds", "alice:s3cret-basic-pw"]
        ),
        digest
    );
}

#[test]
fn token_auth_with_a_credential_helper_and_registry_auth_file() {
    let issuer = TokenIssuer::start("bob", "t0ken-user-pw");
    let registry = Registry::start(RegistryAuth::Token(issuer.clone()));
    let host = registry.host();
    let sandbox = Sandbox::new();

    // A docker-credential helper on PATH, named by credHelpers.
    let bin = sandbox.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-testhelper");
    fs::write(
        &helper,
        "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\n\
         printf '{\"ServerURL\":\"%s\",\"Username\":\"bob\",\"Secret\":\"t0ken-user-pw\"}' \"$server\"\n"
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let docker = sandbox.home().join(".docker");
    fs::create_dir_all(&docker).unwrap();
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"testhelper"}}}}"#),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let exp = experiment(&sandbox, "golden", &format!("{host}/lab/token"));
    let (code, all) = push_with_env(&sandbox, &exp, "PATH", std::path::Path::new(&path));
    assert_eq!(code, Some(0), "{all}");
    assert!(
        all.contains("credential helper") || all.contains("testhelper"),
        "{all}"
    );
    assert!(!all.contains("t0ken-user-pw"), "{all}");
    assert!(issuer.token_requests() > 0);
    // Tokens are cached per scope: far fewer token requests than registry requests.
    assert!(
        issuer.token_requests() < registry.requests().len(),
        "{} token requests",
        issuer.token_requests()
    );

    // REGISTRY_AUTH_FILE (containers auth.json), pushing to another repository:
    // the mount asks for pull on the source too.
    fs::remove_file(docker.join("config.json")).unwrap();
    let auth_file = sandbox.path("auth.json");
    fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            base64(b"bob:t0ken-user-pw")
        ),
    )
    .unwrap();
    let other = experiment(&sandbox, "other", &format!("{host}/lab/token-other"));
    let (code, all) = push_with_env(
        &sandbox,
        &other,
        "REGISTRY_AUTH_FILE",
        std::path::Path::new(&auth_file),
    );
    assert_eq!(code, Some(0), "{all}");
    assert!(!all.contains("t0ken-user-pw"), "{all}");
    assert!(
        issuer
            .scopes_requested()
            .iter()
            .any(|s| s == "repository:lab/token:pull"),
        "{:?}",
        issuer.scopes_requested()
    );

    // A wrong password: the login message.
    fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            base64(b"bob:not-the-pw")
        ),
    )
    .unwrap();
    fs::write(other.join("experiment.py"), "# changed\n").unwrap();
    let (code, all) = push_with_env(
        &sandbox,
        &other,
        "REGISTRY_AUTH_FILE",
        std::path::Path::new(&auth_file),
    );
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("docker login"), "{all}");
    assert!(!all.contains("not-the-pw"), "{all}");
}

#[test]
fn transient_faults_are_retried_to_the_same_digest() {
    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(&registry.host());
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{}/lab/faults", proxy.host()));
    // A multi-MB layer, so uploads can be cut in the middle.
    fs::write(exp.join("static/data.bin"), pseudo_random(3 << 20)).unwrap();
    let clean = Sandbox::new();
    let clean_exp = experiment(&clean, "golden", &format!("{}/lab/faults", proxy.host()));
    fs::write(clean_exp.join("static/data.bin"), pseudo_random(3 << 20)).unwrap();
    let expected = printed_digest(&ok(clean.cmd().arg("build").arg(&clean_exp).args([
        "--base",
        &base_arg(),
        "--tag",
        "x",
    ])));

    proxy.fail_next(3, 500);
    let (stdout, _) = push_ok(&sandbox, &exp, &["--tag", "x"]);
    let digest = pushed_digest(&stdout, &format!("{}/lab/faults", proxy.host()));
    assert_eq!(digest, expected);

    // Dropped connection mid-upload (monolithic), then 429s, then slowness.
    fs::write(exp.join("experiment.py"), "# v2\n").unwrap();
    proxy.drop_upload_after(1 << 20);
    let (stdout, stderr) = push_ok(&sandbox, &exp, &["--tag", "y"]);
    pushed_digest(&stdout, &format!("{}/lab/faults", proxy.host()));
    assert!(stderr.contains("retrying"), "{stderr}");

    fs::write(exp.join("experiment.py"), "# v3\n").unwrap();
    proxy.fail_next(2, 429);
    push_ok(&sandbox, &exp, &["--tag", "z"]);

    // Chunked upload whose connection drops: resumed from the server's Range.
    fs::write(exp.join("static/data.bin"), pseudo_random(5 << 20)).unwrap();
    proxy.drop_upload_after(300 << 10);
    // One blob at a time, so the cut lands in the big layer's first PATCH.
    let (stdout, stderr) = push_ok(
        &sandbox,
        &exp,
        &["--tag", "w", "--chunk-size", "1048576", "--parallel", "1"],
    );
    let digest = pushed_digest(&stdout, &format!("{}/lab/faults", proxy.host()));
    assert!(
        stderr.contains("connection lost, resuming at byte"),
        "{stderr}"
    );
    assert_eq!(
        skopeo_digest(
            &format!("docker://{}/lab/faults@{digest}", registry.host()),
            &[]
        ),
        digest
    );

    proxy.clear();
    proxy.delay(150);
    fs::write(exp.join("experiment.py"), "# v4\n").unwrap();
    push_ok(&sandbox, &exp, &["--tag", "slow"]);
    proxy.clear();

    // Faults that never stop: a clear failure after bounded retries.
    proxy.always_fail(503);
    fs::write(exp.join("experiment.py"), "# v5\n").unwrap();
    let started = std::time::Instant::now();
    let out = push(&sandbox, &exp, &["--tag", "never", "--retries", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("after 3 attempts") && last.contains("503"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    proxy.clear();
}

#[test]
fn registry_killed_mid_push_then_push_again_completes() {
    let mut registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(&registry.host());
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{}/lab/restart", proxy.host()));
    fs::write(exp.join("static/data.bin"), pseudo_random(8 << 20)).unwrap();
    // Slow the proxy so the registry can be stopped while the push runs.
    proxy.delay(300);
    let child = sandbox
        .cmd()
        .arg("push")
        .arg(&exp)
        .args([
            "--base",
            &base_arg(),
            "--retries",
            "2",
            "--chunk-size",
            "1048576",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    registry.wait_for_request(
        "PATCH",
        "/v2/lab/restart/blobs/uploads/",
        std::time::Duration::from_secs(30),
    );
    registry.stop();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "push survived a stopped registry?");
    registry.restart();
    proxy.clear();
    let (stdout, _) = push_ok(&sandbox, &exp, &[]);
    let digest = pushed_digest(&stdout, &format!("{}/lab/restart", proxy.host()));
    assert_eq!(
        skopeo_digest(
            &format!("docker://{}/lab/restart@{digest}", registry.host()),
            &[]
        ),
        digest
    );
}

#[test]
fn chunked_upload_of_a_multi_megabyte_layer() {
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let exp = experiment(
        &sandbox,
        "golden",
        &format!("{}/lab/chunked", registry.host()),
    );
    fs::write(exp.join("static/data.bin"), pseudo_random(6 << 20)).unwrap();
    let (stdout, _) = push_ok(
        &sandbox,
        &exp,
        &["--chunk-size", "262144", "--output", "oci:local"],
    );
    let digest = pushed_digest(&stdout, &format!("{}/lab/chunked", registry.host()));
    let patches = registry
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(patches >= 24, "{patches} PATCH requests");
    // Pull it back with skopeo: every blob verifies.
    let copy = sandbox.path("copy");
    ok(Command::new(require_tool("skopeo"))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/lab/chunked@{digest}", registry.host()))
        .arg(format!("oci:{}:c", copy.display())));
    let (_, manifest, _) = layout_image(&copy);
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(
            fs::read(blob(&copy, d)).unwrap(),
            fs::read(blob(&sandbox.path("local"), d)).unwrap()
        );
    }
}

#[test]
fn multi_platform_base_is_resolved_and_tampered_blobs_refused() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    // Two single-platform bases, then an index over them, in the registry.
    let mut digests = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let exp = experiment(
            &sandbox,
            &platform.replace('/', "-"),
            &format!("{host}/lab/base"),
        );
        let tag = platform.replace('/', "-");
        let (stdout, _) = push_ok(&sandbox, &exp, &["--platform", platform, "--tag", &tag]);
        digests.push(pushed_digest(&stdout, &format!("{host}/lab/base")));
    }
    let sizes: Vec<u64> = digests
        .iter()
        .map(|d| {
            let path = sandbox
                .path("cache/blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap());
            fs::metadata(path).unwrap().len()
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[0], "size": sizes[0], "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[1], "size": sizes[1], "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    });
    let body = serde_json::to_vec(&index).unwrap();
    let response = common::registry::http_request(
        &host,
        "PUT",
        "/v2/lab/base/manifests/multi",
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &body,
    )
    .unwrap();
    assert_eq!(response.status, 201, "{}", response.text());

    // The child image, built on the index for arm64 into oci:out.
    let build_child = |sandbox: &Sandbox| {
        let exp = experiment(sandbox, "child", &format!("{host}/lab/child"));
        let mut cmd = sandbox.cmd();
        cmd.arg("build").arg(&exp).args([
            "--base",
            &format!("docker://{host}/lab/base:multi"),
            "--platform",
            "linux/arm64",
            "--output",
            "oci:out",
        ]);
        run(&mut cmd)
    };
    let child = Sandbox::new();
    let out = build_child(&child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    printed_digest(&stdout);
    let (_, _, config) = layout_image(&child.path("out"));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.base.digest"],
        digests[1].as_str()
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.base.name"],
        format!("{host}/lab/base:multi")
    );

    // Tamper with a layer blob in the registry's storage: a fresh build that
    // needs its bytes refuses it.
    let (_, manifest, _) = layout_image(&child.path("out"));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    let data = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, bytes).unwrap();
    let fresh = Sandbox::new();
    let out = build_child(&fresh);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&layer) && stderr.contains("refusing"),
        "{stderr}"
    );
    assert!(!fresh.path("out").exists());
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A raw TCP relay on 127.0.0.2 (loopback, but not a name that allows plain
/// HTTP by itself) to a registry on 127.0.0.1. It stops accepting after
/// `lifetime`; its threads end with their connections.
fn relay_on_127_0_0_2(upstream: String, lifetime: std::time::Duration) -> String {
    use std::io::copy;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback");
    let address = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + lifetime;
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((client, _)) => {
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut c1, mut s1) = (client, server);
                    std::thread::spawn(move || {
                        let _ = copy(&mut c1, &mut s1);
                        let _ = s1.shutdown(std::net::Shutdown::Write);
                    });
                    std::thread::spawn(move || {
                        let _ = copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    });
    address
}

#[test]
fn tls_failure_names_the_way_out_and_insecure_registry_allows_plain_http() {
    let registry = Registry::start(RegistryAuth::None);
    let host = relay_on_127_0_0_2(registry.host(), std::time::Duration::from_secs(120));
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{host}/lab/tls"));
    // A registry that speaks plain HTTP where TLS is expected.
    let out = push(&sandbox, &exp, &["--retries", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    println!("{last}");
    assert!(
        last.contains("TLS") && last.contains(&format!("--insecure-registry {host}")),
        "{stderr}"
    );
    // Named as insecure, the same registry takes the push over plain HTTP.
    let (stdout, _) = push_ok(&sandbox, &exp, &["--insecure-registry", &host]);
    let digest = pushed_digest(&stdout, &format!("{host}/lab/tls"));
    assert_eq!(
        skopeo_digest(
            &format!("docker://{}/lab/tls@{digest}", registry.host()),
            &[]
        ),
        digest
    );
}

#[test]
fn build_output_docker_pushes_the_digest_it_prints_and_writes() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", &format!("{host}/lab/golden"));
    let target = format!("{host}/lab/built:v1");
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args([
        "--base",
        &base_arg(),
        "-o",
        "oci:local",
        "-o",
        &format!("docker://{target}"),
        "--digest-file",
        "digest.txt",
    ]);
    let (stdout, stderr) = succeeds(run(&mut cmd));
    let digest = printed_digest(&stdout);
    assert!(
        stderr.contains(&format!("Pushed {target}@{digest}")),
        "{stderr}"
    );
    assert_eq!(skopeo_digest(&format!("docker://{target}"), &[]), digest);
    assert_eq!(layout_image(&sandbox.path("local")).0, digest);
    assert_eq!(
        fs::read_to_string(sandbox.path("digest.txt")).unwrap(),
        format!("{digest}\n")
    );
    // Only the docker:// output's repository: the image's own name is not pushed.
    assert!(
        !registry
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/lab/golden/")),
        "{:?}",
        registry.requests()
    );

    // A second build uploads nothing; --use-existing reuses it and says so.
    let before = blob_uploads(&registry);
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args([
        "--base",
        &base_arg(),
        "-o",
        &format!("docker://{target}"),
        "--use-existing",
    ]);
    let (stdout, stderr) = succeeds(run(&mut cmd));
    assert_eq!(printed_digest(&stdout), digest);
    assert!(stderr.contains("reusing it, nothing uploaded"), "{stderr}");
    assert_eq!(blob_uploads(&registry), before);
}

#[test]
fn a_bad_output_is_one_line_before_any_work() {
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "golden", "127.0.0.1:1/lab/golden");
    for (output, says) in [
        ("ftp://127.0.0.1:1/lab/app:1", "error: unknown output \"ftp://127.0.0.1:1/lab/app:1\": use oci:DIR[:TAG], docker-archive:FILE, docker://HOST/REPO:TAG"),
        ("docker://127.0.0.1:1/lab/app", "error: output \"docker://127.0.0.1:1/lab/app\" names no tag: use docker://HOST/REPO:TAG (the image is pushed under that tag)"),
    ] {
        let mut cmd = sandbox.cmd();
        cmd.arg("build")
            .arg(&exp)
            .args(["--base", &base_arg(), "-o", output]);
        assert_eq!(one_line_error(&run(&mut cmd)), says);
    }
    // The explicit credentials are for one registry: two to push to is refused.
    let mut cmd = sandbox.cmd();
    cmd.arg("push").arg(&exp).args([
        "--base",
        &base_arg(),
        "-o",
        "docker://127.0.0.2:1/lab/app:1",
        "--username",
        "alice",
        "--password-stdin",
    ]);
    let line = one_line_error(&run_with_stdin(cmd, "pw\n"));
    assert!(
        line.contains("is for one registry, and this build pushes to 127.0.0.1:1 and 127.0.0.2:1"),
        "{line}"
    );
    assert!(!sandbox.path("cache").join("blobs").exists());
}

/// A push onto a base in another registry, from a cache that never held
/// the base's layers (`--no-deps` reads none of them): they are fetched
/// from the base's registry, with its own credentials, and uploaded; on
/// the base's own registry they are mounted instead.
#[test]
fn a_base_on_another_registry_is_fetched_for_the_push() {
    let issuer = TokenIssuer::start("bob", "t0ken-user-pw");
    let bases = Registry::start(RegistryAuth::Token(issuer.clone()));
    let target = Registry::start(RegistryAuth::htpasswd("alice", "s3cret-target-pw"));
    let (bases_host, target_host) = (bases.host(), target.host());
    let auth = Sandbox::new();
    let auth_file = auth.path("auth.json");
    fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{bases_host}":{{"auth":"{}"}}}}}}"#,
            base64(b"bob:t0ken-user-pw")
        ),
    )
    .unwrap();
    let with_auth = |sandbox: &Sandbox| {
        let mut cmd = sandbox.cmd();
        cmd.env("REGISTRY_AUTH_FILE", &auth_file);
        cmd
    };

    // The base: the golden image in the base registry.
    let maker = Sandbox::new();
    let exp = experiment(&maker, "golden", &format!("{bases_host}/lab/base"));
    let mut cmd = with_auth(&maker);
    cmd.arg("push")
        .arg(&exp)
        .args(["--base", &base_arg(), "--tag", "1"]);
    succeeds(run(&mut cmd));
    let base = format!("docker://{bases_host}/lab/base:1");

    // `push --no-deps` to the other registry, from a new cache.
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "other", &format!("{target_host}/lab/app"));
    fs::write(exp.join("experiment.py"), "# on a registry base\n").unwrap();
    let mut cmd = with_auth(&sandbox);
    cmd.arg("push")
        .arg(&exp)
        .args(["--base", &base, "--username", "alice", "--password-stdin"]);
    let (stdout, stderr) = succeeds(run_with_stdin(cmd, "s3cret-target-pw\n"));
    let digest = pushed_digest(&stdout, &format!("{target_host}/lab/app"));
    assert!(stderr.contains("fetching base layer"), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("s3cret-target-pw"));
    let creds = ["--creds", "alice:s3cret-target-pw"];
    assert_eq!(
        skopeo_digest(&format!("docker://{target_host}/lab/app@{digest}"), &creds),
        digest
    );

    // `--output docker://` the same way, from another new cache.
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "other", "lab/app");
    let out = format!("{target_host}/lab/built:1");
    let mut cmd = with_auth(&sandbox);
    cmd.arg("build").arg(&exp).args([
        "--base",
        &base,
        "-o",
        &format!("docker://{out}"),
        "--username",
        "alice",
        "--password-stdin",
    ]);
    let (stdout, stderr) = succeeds(run_with_stdin(cmd, "s3cret-target-pw\n"));
    let digest = printed_digest(&stdout);
    assert!(stderr.contains("fetching base layer"), "{stderr}");
    assert_eq!(skopeo_digest(&format!("docker://{out}"), &creds), digest);

    // The base registry's token service saw only its own user.
    let users: Vec<Option<String>> = issuer.requests().into_iter().map(|r| r.user).collect();
    assert!(
        !users.is_empty() && users.iter().all(|u| u.as_deref() == Some("bob")),
        "{users:?}"
    );

    // Pushed to the base's own registry, the base's layers are mounted.
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "other", &format!("{bases_host}/lab/app"));
    let mut cmd = with_auth(&sandbox);
    cmd.arg("push").arg(&exp).args(["--base", &base]);
    let (stdout, stderr) = succeeds(run(&mut cmd));
    pushed_digest(&stdout, &format!("{bases_host}/lab/app"));
    assert!(stderr.contains("mounted from lab/base"), "{stderr}");
    assert!(!stderr.contains("fetching base layer"), "{stderr}");
}
