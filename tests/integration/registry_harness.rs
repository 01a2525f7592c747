//! The registry harness (tests/common/registry.rs) works, proved with skopeo
//! as an independent client: plain, htpasswd and token registries, and the
//! fault proxy.

use crate::common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::registry::*;
use common::*;

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    fs::write(blob(layout, &digest), data).unwrap();
    digest
}

/// A one-layer OCI image layout at `layout` tagged `tag`, written by hand.
/// Returns the manifest digest.
fn make_layout(layout: &Path, tag: &str, content: &str) -> String {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();

    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(946684800);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", content.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = write_blob(layout, &layer);

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    })
    .to_string();
    write_blob(layout, config.as_bytes());

    let manifest = one_layer_manifest(config.as_bytes(), &layer_digest, layer.len()).to_string();
    let manifest_digest = write_blob(layout, manifest.as_bytes());

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    manifest_digest
}

/// skopeo isolated from the machine's auth files and registry config.
fn skopeo(sandbox: &Sandbox) -> Command {
    let run = sandbox.path("run");
    fs::create_dir_all(&run).unwrap();
    let tmp = sandbox.path("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let conf = sandbox.path("registries.conf");
    fs::write(&conf, "").unwrap();
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.env("HOME", sandbox.home())
        .env("XDG_RUNTIME_DIR", &run)
        .env("TMPDIR", &tmp)
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env_remove("REGISTRY_AUTH_FILE")
        .args(["--insecure-policy", "--command-timeout", "20s"]);
    cmd
}

fn push(sandbox: &Sandbox, layout: &Path, tag: &str, dest: &str, creds: Option<&str>) -> Output {
    let mut cmd = skopeo(sandbox);
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.args(["--dest-creds", creds]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd)
}

fn push_ok(sandbox: &Sandbox, layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let out = push(sandbox, layout, tag, dest, creds);
    assert!(
        out.status.success(),
        "push to {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inspect(sandbox: &Sandbox, image: &str, creds: Option<&str>) -> Output {
    let mut cmd = skopeo(sandbox);
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.args(["--creds", creds]);
    }
    cmd.arg(format!("docker://{image}"));
    run(&mut cmd)
}

fn inspected_digest(sandbox: &Sandbox, image: &str, creds: Option<&str>) -> String {
    let out = inspect(sandbox, image, creds);
    assert!(
        out.status.success(),
        "inspect {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["Digest"].as_str().unwrap().to_string()
}

fn assert_fails(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should have failed");
    stderr
}

#[test]
fn access_log_lines_parse() {
    let log = "time=\"2026-11-24T13:18:54Z\" level=info msg=\"response completed\" \
               http.request.method=GET http.request.uri=/v2/\n\
               127.0.0.1 - - [24/Nov/2026:13:18:54 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n\
               127.0.0.1 - - [24/Nov/2026:13:18:54 +0000] \"PATCH /v2/a/b/blobs/uploads/u?_state=x HTTP/1.1\" 202 0 \"\" \"skopeo\"\n";
    let requests = parse_access_log(log);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/v2/");
    assert_eq!(requests[0].status, 200);
    assert_eq!(requests[1].method, "PATCH");
    assert_eq!(requests[1].path, "/v2/a/b/blobs/uploads/u");
    assert_eq!(requests[1].uri, "/v2/a/b/blobs/uploads/u?_state=x");
    assert_eq!(requests[1].status, 202);
}

#[test]
fn plain_registry_takes_a_push_and_logs_it() {
    let sandbox = Sandbox::new();
    let layout = sandbox.path("layout");
    let digest = make_layout(&layout, "v1", "hello\n");
    let registry = Registry::start(RegistryAuth::None);
    assert!(registry.host().starts_with("127.0.0.1:"));
    let ping = http_request(&registry.host(), "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(ping.status, 200);

    let image = format!("{}/harness/plain:v1", registry.host());
    push_ok(&sandbox, &layout, "v1", &image, None);
    assert_eq!(inspected_digest(&sandbox, &image, None), digest);

    let put = registry.wait_for_request(
        "PUT",
        "/v2/harness/plain/manifests/v1",
        Duration::from_secs(5),
    );
    assert_eq!(put.status, 201, "{:?}", registry.requests());
    let requests = registry.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.path.starts_with("/v2/harness/plain/blobs/uploads/")),
        "{requests:?}"
    );
    // The manifest is there by digest too.
    let head = http_request(
        &registry.host(),
        "HEAD",
        &format!("/v2/harness/plain/manifests/{digest}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
}

#[test]
fn htpasswd_registry_checks_credentials() {
    let sandbox = Sandbox::new();
    let layout = sandbox.path("layout");
    let digest = make_layout(&layout, "v1", "basic\n");
    let registry = Registry::start(RegistryAuth::htpasswd("alice", "s3cret"));
    assert_eq!(
        registry.credentials(),
        Some(("alice".to_string(), "s3cret".to_string()))
    );
    let image = format!("{}/harness/basic:v1", registry.host());

    let stderr = assert_fails(
        &push(&sandbox, &layout, "v1", &image, Some("alice:wrong")),
        "push with a wrong password",
    );
    assert!(
        stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
        "{stderr}"
    );
    assert_fails(
        &push(&sandbox, &layout, "v1", &image, None),
        "anonymous push",
    );

    push_ok(&sandbox, &layout, "v1", &image, Some("alice:s3cret"));
    assert_eq!(
        inspected_digest(&sandbox, &image, Some("alice:s3cret")),
        digest
    );
    assert_fails(
        &inspect(&sandbox, &image, Some("alice:nope")),
        "inspect with a wrong password",
    );
    let requests = registry.requests();
    assert!(requests.iter().any(|r| r.status == 401), "{requests:?}");
    assert!(
        requests.iter().any(|r| r.method == "PUT"
            && r.path == "/v2/harness/basic/manifests/v1"
            && r.status == 201),
        "{requests:?}"
    );
}

#[test]
fn token_registry_checks_credentials() {
    let sandbox = Sandbox::new();
    let layout = sandbox.path("layout");
    let digest = make_layout(&layout, "v1", "token\n");
    let issuer = TokenIssuer::start("bob", "hunter2");
    let registry = Registry::start(RegistryAuth::Token(issuer.clone()));
    let image = format!("{}/harness/token:v1", registry.host());

    let stderr = assert_fails(
        &push(&sandbox, &layout, "v1", &image, Some("bob:wrong")),
        "push with a wrong password",
    );
    assert!(
        stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
        "{stderr}"
    );
    assert!(
        issuer.requests().iter().any(|r| r.status == 401),
        "{:?}",
        issuer.requests()
    );

    issuer.clear_requests();
    push_ok(&sandbox, &layout, "v1", &image, Some("bob:hunter2"));
    assert!(issuer.token_requests() > 0);
    let scopes = issuer.scopes_requested();
    assert!(
        scopes
            .iter()
            .any(|s| s == "repository:harness/token:pull,push"),
        "{scopes:?}"
    );
    assert!(
        issuer
            .requests()
            .iter()
            .all(|r| r.user.as_deref() == Some("bob")
                && r.service.as_deref() == Some("test-registry"))
    );
    assert_eq!(
        inspected_digest(&sandbox, &image, Some("bob:hunter2")),
        digest
    );

    // Anonymous: a token without access, which the registry refuses.
    let anon = http_request(
        &issuer.host(),
        "GET",
        "/token?service=test-registry&scope=repository%3Aharness%2Ftoken%3Apull",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(anon.status, 200, "{}", anon.text());
    let body: serde_json::Value = serde_json::from_slice(&anon.body).unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"].as_str(), Some(token));
    assert_eq!(jwt_claims(token)["access"], serde_json::json!([]));
    let manifest_path = "/v2/harness/token/manifests/v1";
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let with_token = |method: &str, token: &str| {
        http_request(
            &registry.host(),
            method,
            manifest_path,
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Accept", accept),
            ],
            b"",
        )
        .unwrap()
    };
    let denied = with_token("GET", token);
    assert_eq!(denied.status, 401);

    // With Basic auth: the requested access, which the registry accepts.
    let granted = http_request(
        &issuer.host(),
        "GET",
        "/token?service=test-registry&scope=repository:harness/token:pull",
        &[("Authorization", &basic_auth("bob", "hunter2"))],
        b"",
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&granted.body).unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        jwt_claims(token)["access"],
        serde_json::json!([{"type": "repository", "name": "harness/token", "actions": ["pull"]}])
    );
    let fetched = with_token("GET", token);
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(sha256(&fetched.body), digest);
    let issued = issuer.issue("bob", &[("harness/token", &["pull"])]);
    let fetched = with_token("HEAD", &issued);
    assert_eq!(fetched.status, 200);
}

#[test]
fn fault_proxy_fails_delays_drops_and_registry_restarts() {
    let sandbox = Sandbox::new();
    let mut registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(&registry.host());
    let through = |name: &str| format!("{}/harness/{name}", proxy.host());

    // Two injected 500s: skopeo does not retry them, so the first pushes
    // fail; the 500s are answered and the next push goes through.
    let layout = sandbox.path("layout-a");
    let digest_a = make_layout(&layout, "v1", "a\n");
    proxy.fail_next(2, 500);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let out = push(&sandbox, &layout, "v1", &through("a:v1"), None);
        outcomes.push(out.status.success());
        if out.status.success() {
            break;
        }
    }
    assert_eq!(outcomes.last(), Some(&true), "{outcomes:?}");
    let failed: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.status == 500)
        .collect();
    assert_eq!(failed.len(), 2, "{:?}", proxy.requests());
    assert_eq!(proxy.plan().pending_failures(), 0);
    // Uploads went through the proxy: Location was rewritten to it.
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.starts_with("/v2/harness/a/blobs/uploads/")),
        "{:?}",
        proxy.requests()
    );
    assert_eq!(inspected_digest(&sandbox, &through("a:v1"), None), digest_a);

    // Slow, but it completes.
    proxy.delay(200);
    let layout_b = sandbox.path("layout-b");
    let digest_b = make_layout(&layout_b, "v1", "b\n");
    push_ok(&sandbox, &layout_b, "v1", &through("b:v1"), None);
    proxy.clear();

    // A connection dropped mid-upload fails the push; the next one works.
    let layout_c = sandbox.path("layout-c");
    let digest_c = make_layout(&layout_c, "v1", "c\n");
    proxy.clear_requests();
    proxy.drop_upload_after(10);
    let first = push(&sandbox, &layout_c, "v1", &through("c:v1"), None);
    let dropped: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.status == 0)
        .collect();
    assert_eq!(dropped.len(), 1, "{:?}", proxy.requests());
    assert!(matches!(dropped[0].method.as_str(), "PATCH" | "PUT"));
    if first.status.success() {
        // A client that retries the upload gets through on its own.
        eprintln!("skopeo recovered from the dropped upload by itself");
    } else {
        push_ok(&sandbox, &layout_c, "v1", &through("c:v1"), None);
    }

    // always_fail: everything fails until cleared.
    proxy.always_fail(503);
    assert_fails(
        &inspect(&sandbox, &through("c:v1"), None),
        "inspect while the proxy fails everything",
    );
    proxy.clear();

    // A restart keeps the storage and the port.
    let host = registry.host();
    registry.restart();
    assert_eq!(registry.host(), host);
    assert_eq!(
        inspected_digest(&sandbox, &format!("{host}/harness/a:v1"), None),
        digest_a
    );
    assert_eq!(inspected_digest(&sandbox, &through("b:v1"), None), digest_b);
    assert_eq!(inspected_digest(&sandbox, &through("c:v1"), None), digest_c);

    // A stopped registry: the proxy answers 502.
    registry.stop();
    let gone = http_request(&proxy.host(), "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(gone.status, 502);
}

/// Reads one response with a Content-Length body from a kept-alive stream.
fn read_response(reader: &mut std::io::BufReader<std::net::TcpStream>) -> (u16, String, Vec<u8>) {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, head, body)
}

#[test]
fn fault_proxy_relays_chunked_uploads_on_one_connection() {
    use std::io::BufReader;
    use std::net::TcpStream;

    let registry = Registry::start(RegistryAuth::None);
    let proxy = FaultProxy::start(&registry.host());
    let stream = TcpStream::connect(proxy.host()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let host = proxy.host();

    // 429 with Retry-After, and the connection stays usable.
    proxy.fail_matching("POST", "/blobs/uploads/", 1, 429);
    let post = format!(
        "POST /v2/harness/chunked/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    );
    writer.write_all(post.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut reader);
    assert_eq!(status, 429);
    assert!(head.contains("Retry-After: 1"), "{head}");

    writer.write_all(post.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut reader);
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap()
        .to_string();
    assert!(
        location.starts_with(&format!("http://{host}/")),
        "Location not rewritten to the proxy: {location}"
    );
    let target = location.strip_prefix(&format!("http://{host}")).unwrap();

    // PATCH with a chunked body, then PUT ?digest= to finish.
    let data = b"chunked upload through the fault proxy\n";
    let patch = format!(
        "PATCH {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        10,
        std::str::from_utf8(&data[..10]).unwrap(),
        data.len() - 10,
        std::str::from_utf8(&data[10..]).unwrap(),
    );
    writer.write_all(patch.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut reader);
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap()
        .to_string();
    let target = location.strip_prefix(&format!("http://{host}")).unwrap();
    let digest = sha256(data);
    let put = format!(
        "PUT {target}&digest={} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n",
        digest.replace(':', "%3A")
    );
    writer.write_all(put.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut reader);
    assert_eq!(status, 201, "{head}");

    let get = format!("GET /v2/harness/chunked/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    writer.write_all(get.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert_eq!(body, data);

    let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 202, 202, 201, 200]);
    registry.wait_for_request(
        "PATCH",
        "/v2/harness/chunked/blobs/uploads/",
        Duration::from_secs(5),
    );
}
