//! Hostile registries: credentials per origin, bounded answers, uploads that must progress.
//!
//! The hostile parties are fake servers written here (std `TcpListener` on
//! 127.0.0.x, a thread per connection, plain HTTP or TLS with a throwaway
//! certificate) that record every request: method, path, host and headers.
//! Where a user meets a real registry (the push target), it is the real
//! `docker-registry` of `tests/common/registry.rs`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::registry::{basic_auth, Registry, RegistryAuth, TokenIssuer};
use crate::common::*;

/// How long a fake server lives at most, even if never dropped.
const FAKE_LIFETIME: Duration = Duration::from_secs(300);
/// Read/write timeout of every fake's socket.
const FAKE_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// What an "endless" answer sends at most: far past every cap, and small
/// enough that a client without caps still ends (and fails the test).
const ENDLESS: u64 = 256 << 20;
/// The most a capped client may have made a fake send (the cap, a few MiB,
/// plus what the sockets buffer).
const BOUNDED_SEND: u64 = 64 << 20;
/// Peak memory of a run that read a capped answer, in KiB.
const BOUNDED_RSS_KB: u64 = 160 << 10;

const PUSH_USER: &str = "pusher";
const PUSH_PASSWORD: &str = "push-secret-9f3c1a";

// ---------------------------------------------------------------------------
// Fake servers
// ---------------------------------------------------------------------------

/// One request a fake received.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    /// Without the query.
    pub(crate) path: String,
    pub(crate) uri: String,
    host: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header carries the push password, plainly or in Basic.
    fn carries_push_credentials(&self) -> bool {
        let basic = basic_auth(PUSH_USER, PUSH_PASSWORD);
        let encoded = basic.trim_start_matches("Basic ");
        self.headers
            .iter()
            .any(|(_, v)| v.contains(PUSH_PASSWORD) || v.contains(encoded))
            || self.uri.contains(PUSH_PASSWORD)
    }
}

enum Body {
    Bytes(Vec<u8>),
    /// No length: bytes until [`ENDLESS`] or until the client goes away.
    Endless,
    /// These bytes, then [`ENDLESS`] more, without a length.
    Padded(Vec<u8>),
}

pub(crate) struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Answer {
    pub(crate) fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn body(mut self, body: Body) -> Answer {
        self.body = body;
        self
    }

    pub(crate) fn bytes(self, bytes: &[u8]) -> Answer {
        self.body(Body::Bytes(bytes.to_vec()))
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

struct FakeState {
    seen: Mutex<Vec<Seen>>,
    /// Body bytes written to clients.
    sent: AtomicU64,
}

/// A fake HTTP/1.1 server on `ip`, one request per connection (also the
/// package indexes of `packages.rs`).
pub(crate) struct Fake {
    addr: SocketAddr,
    state: Arc<FakeState>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    pub(crate) fn http(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Fake {
        Fake::start("127.0.0.1", None, Arc::new(handler))
    }

    /// On 127.0.0.2, which the client reaches over https (only
    /// 127.0.0.1 and localhost are plain HTTP by default).
    fn https(tls: &Tls, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Fake {
        Fake::start("127.0.0.2", Some(tls.config.clone()), Arc::new(handler))
    }

    fn start(ip: &str, tls: Option<Arc<rustls::ServerConfig>>, handler: Arc<Handler>) -> Fake {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            seen: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                let born = Instant::now();
                while !stop.load(Ordering::SeqCst) && born.elapsed() < FAKE_LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, handler, tls) =
                                (state.clone(), handler.clone(), tls.clone());
                            thread::spawn(move || serve(stream, tls, &state, &*handler));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Fake {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// "IP:PORT"
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: &FakeState,
    handler: &Handler,
) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(FAKE_IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(FAKE_IO_TIMEOUT)).is_err()
    {
        return;
    }
    let tcp = stream.try_clone().ok();
    match tls {
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            exchange(rustls::StreamOwned::new(conn, stream), state, handler);
        }
        None => exchange(stream, state, handler),
    }
    if let Some(tcp) = tcp {
        let _ = tcp.shutdown(Shutdown::Both);
    }
}

/// Reads one request (head bounded, body discarded), records it, answers.
fn exchange<S: Read + Write>(stream: S, state: &FakeState, handler: &Handler) {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for _ in 0..200 {
        let mut line = Vec::new();
        match (&mut reader).take(16 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return;
    }
    let mut parts = lines[0].split(' ');
    let (method, uri) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let seen = Seen {
        path: uri.split('?').next().unwrap_or("").to_string(),
        uri,
        method,
        host: String::new(),
        headers,
    };
    let seen = Seen {
        host: seen.header("host").unwrap_or("").to_string(),
        ..seen
    };
    let length: u64 = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if io::copy(
        &mut (&mut reader).take(length.min(64 << 20)),
        &mut io::sink(),
    )
    .is_err()
    {
        return;
    }
    lock(&state.seen).push(seen.clone());
    let answer = handler(&seen);
    let mut head = format!("HTTP/1.1 {} Fake\r\nConnection: close\r\n", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Body::Bytes(bytes) = &answer.body {
        head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
    }
    head.push_str("\r\n");
    let mut stream = reader.into_inner();
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let (first, endless) = match answer.body {
        Body::Bytes(bytes) => (bytes, false),
        Body::Endless => (Vec::new(), true),
        Body::Padded(bytes) => (bytes, true),
    };
    if stream.write_all(&first).is_err() {
        return;
    }
    state.sent.fetch_add(first.len() as u64, Ordering::SeqCst);
    if endless {
        let block = vec![b'a'; 64 << 10];
        let mut written = 0u64;
        while written < ENDLESS {
            if stream.write_all(&block).is_err() {
                break;
            }
            written += block.len() as u64;
            state.sent.fetch_add(block.len() as u64, Ordering::SeqCst);
        }
    }
    let _ = stream.flush();
}

/// A self-signed certificate for IP 127.0.0.2, as a rustls server config
/// and a PEM file the client is pointed at with `SSL_CERT_FILE`.
struct Tls {
    config: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
    cert_pem: PathBuf,
}

impl Tls {
    fn new() -> Tls {
        let openssl = require_tool("openssl");
        let dir = tempfile::tempdir().unwrap();
        let (key_pem, cert_pem) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        ok(Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.2",
                "-addext",
                "subjectAltName=IP:127.0.0.2",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert_pem)
            .stderr(Stdio::null()));
        let key_der = dir.path().join("key.der");
        let cert_der = dir.path().join("cert.der");
        ok(Command::new(&openssl)
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(&key_pem)
            .arg("-out")
            .arg(&key_der));
        ok(Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert_pem)
            .arg("-out")
            .arg(&cert_der));
        let cert = rustls::pki_types::CertificateDer::from(fs::read(&cert_der).unwrap());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(fs::read(&key_der).unwrap().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        Tls {
            config: Arc::new(config),
            _dir: dir,
            cert_pem,
        }
    }
}

// ---------------------------------------------------------------------------
// A small base image the fakes serve
// ---------------------------------------------------------------------------

struct BaseImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    config_digest: String,
    layer: Vec<u8>,
    layer_digest: String,
}

impl BaseImage {
    fn new() -> BaseImage {
        let tar = fs::read(fixture("base/tiny-rootfs.tar")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = sha256(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        }))
        .unwrap();
        let config_digest = sha256(&config);
        let manifest =
            serde_json::to_vec(&one_layer_manifest(&config, &layer_digest, layer.len())).unwrap();
        BaseImage {
            manifest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }

    /// The answer of a registry serving this image as `lab/base:1`.
    fn answer(&self, seen: &Seen) -> Answer {
        let blob = |digest: &str| format!("/v2/lab/base/blobs/{digest}");
        if seen.path == "/v2/" {
            Answer::status(200)
        } else if seen.path == "/v2/lab/base/manifests/1" {
            Answer::status(200)
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .header("Docker-Content-Digest", &sha256(&self.manifest))
                .bytes(&self.manifest)
        } else if seen.path == blob(&self.config_digest) {
            Answer::status(200).bytes(&self.config)
        } else if seen.path == blob(&self.layer_digest) {
            Answer::status(200).bytes(&self.layer)
        } else {
            Answer::status(404)
        }
    }
}

// ---------------------------------------------------------------------------
// Running dallinger-oci
// ---------------------------------------------------------------------------

/// The golden experiment, named `image`.
fn experiment(sandbox: &Sandbox, image: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", "exp");
    sandbox.name_image(&exp, image);
    exp
}

fn rootfs_base() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// `push EXP --base BASE` with the push credentials given by flags.
fn push_with_flags(sandbox: &Sandbox, exp: &Path, base: &str, extra: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(exp)
        .args(["--base", base, "--retries", "1"])
        .args(["--username", PUSH_USER, "--password-stdin"])
        .args(extra);
    run_with_stdin(cmd, &format!("{PUSH_PASSWORD}\n"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cmd` under `/usr/bin/time -v`: its output and peak RSS in KiB.
fn measured(cmd: Command) -> (Output, u64) {
    let time = require_tool("time");
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new(time);
    timed
        .arg("-v")
        .arg("-o")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let out = run(&mut timed);
    let report = fs::read_to_string(report.path()).unwrap();
    let rss = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in the time report:\n{report}"));
    (out, rss)
}

/// The largest file under `dir`, in bytes.
fn largest_file(dir: &Path) -> u64 {
    let mut largest = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            largest = largest.max(if meta.is_dir() {
                largest_file(&entry.path())
            } else {
                meta.len()
            });
        }
    }
    largest
}

// ---------------------------------------------------------------------------
// Credentials go to the push target only
// ---------------------------------------------------------------------------

/// A base registry whose token realm is on another port, both recording:
/// the registry asks for a Bearer token, the realm hands an anonymous one.
fn hostile_base_registry() -> (Fake, Fake) {
    let realm = Fake::http(|seen| {
        if seen.path == "/token" {
            Answer::status(200)
                .header("Content-Type", "application/json")
                .bytes(br#"{"token":"anonymous-pull-token"}"#)
        } else {
            Answer::status(404)
        }
    });
    let realm_url = format!("http://{}/token", realm.host());
    let image = BaseImage::new();
    let base = Fake::http(move |seen| {
        if seen.header("authorization") != Some("Bearer anonymous-pull-token") {
            return Answer::status(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm_url}",service="hostile""#),
            );
        }
        image.answer(seen)
    });
    (base, realm)
}

#[test]
fn explicit_credentials_never_reach_a_base_registry_or_its_realm() {
    let issuer = TokenIssuer::start(PUSH_USER, PUSH_PASSWORD);
    let registry = Registry::start(RegistryAuth::Token(issuer.clone()));
    let (base, realm) = hostile_base_registry();
    let base_ref = format!("docker://{}/lab/base:1", base.host());

    // --username/--password-stdin, then DALLINGER_OCI_REGISTRY_*; each in
    // its own cache, so the base is resolved afresh and its layer fetched
    // from the base's registry (by the --output here; without it the push
    // fetches it), anonymously.
    for (i, by_env) in [false, true].into_iter().enumerate() {
        let sandbox = Sandbox::new();
        let exp = experiment(&sandbox, &format!("{}/lab/app{i}", registry.host()));
        let layout = format!("oci:{}", sandbox.path("layout").display());
        let out = if by_env {
            let mut cmd = sandbox.cmd();
            cmd.arg("push")
                .arg(&exp)
                .args(["--base", &base_ref, "--retries", "1", "--output", &layout])
                .env("DALLINGER_OCI_REGISTRY_USERNAME", PUSH_USER)
                .env("DALLINGER_OCI_REGISTRY_PASSWORD", PUSH_PASSWORD);
            run(&mut cmd)
        } else {
            push_with_flags(&sandbox, &exp, &base_ref, &["--output", &layout])
        };
        let all = text(&out);
        assert!(out.status.success(), "push failed:\n{all}");
        assert!(all.contains("built and pushed"), "{all}");
        assert!(!all.contains(PUSH_PASSWORD), "{all}");
    }

    // The base and its realm were asked, anonymously.
    assert!(base.count("GET") > 0 && realm.count("GET") > 0);
    for seen in base.seen().iter().chain(realm.seen().iter()) {
        assert!(
            !seen.carries_push_credentials(),
            "the push credentials reached {}: {seen:?}",
            seen.host
        );
        assert!(
            !seen
                .header("authorization")
                .unwrap_or("")
                .starts_with("Basic"),
            "{seen:?}"
        );
    }
    // The push target got them: its token service logged the user in.
    assert!(
        issuer
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some(PUSH_USER)),
        "{:?}",
        issuer.requests()
    );
}

/// `build --output docker://`: the explicit credentials go to that output's
/// registry only, not to the image name's (here the base's host), nor to the
/// base registry its layers are fetched from for the push.
#[test]
fn explicit_credentials_go_to_the_output_registry_only() {
    let registry = Registry::start(RegistryAuth::htpasswd(PUSH_USER, PUSH_PASSWORD));
    let (base, realm) = hostile_base_registry();
    let base_ref = format!("docker://{}/lab/base:1", base.host());
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{}/lab/app", base.host()));
    let target = format!("{}/lab/app:1", registry.host());
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(&exp)
        .args(["--base", &base_ref, "--retries", "1"])
        .args(["-o", &format!("docker://{target}")])
        .args(["--username", PUSH_USER, "--password-stdin"]);
    let out = run_with_stdin(cmd, &format!("{PUSH_PASSWORD}\n"));
    let all = text(&out);
    assert!(out.status.success(), "build failed:\n{all}");
    assert!(!all.contains(PUSH_PASSWORD), "{all}");
    let digest = printed_digest(&String::from_utf8_lossy(&out.stdout));
    assert!(all.contains(&format!("Pushed {target}@{digest}")), "{all}");
    let inspected = ok(Command::new(require_tool("skopeo"))
        .args(["inspect", "--tls-verify=false", "--creds"])
        .arg(format!("{PUSH_USER}:{PUSH_PASSWORD}"))
        .arg(format!("docker://{target}")));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());

    // The base (the image name's registry too) and its realm were asked,
    // its layer fetched, all anonymously.
    assert!(base.count("GET") > 0 && realm.count("GET") > 0);
    for seen in base.seen().iter().chain(realm.seen().iter()) {
        assert!(
            !seen.carries_push_credentials()
                && !seen
                    .header("authorization")
                    .unwrap_or("")
                    .starts_with("Basic"),
            "the push credentials reached {}: {seen:?}",
            seen.host
        );
    }
}

// ---------------------------------------------------------------------------
// Authorization only to the registry's origin
// ---------------------------------------------------------------------------

/// A push target asking for Basic credentials (the push pair), whose
/// uploads go to `location`.
fn basic_push_target(start: impl FnOnce(Box<Handler>) -> Fake, location: String) -> Fake {
    let expected = basic_auth(PUSH_USER, PUSH_PASSWORD);
    start(Box::new(move |seen: &Seen| {
        if seen.header("authorization") != Some(expected.as_str()) {
            return Answer::status(401).header("WWW-Authenticate", r#"Basic realm="push""#);
        }
        match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/v2/") => Answer::status(200),
            ("HEAD", p) if p.contains("/blobs/") => Answer::status(404),
            ("POST", p) if p.ends_with("/blobs/uploads/") => {
                Answer::status(202).header("Location", &location)
            }
            ("PUT", p) if p.contains("/manifests/") => Answer::status(201),
            _ => Answer::status(404),
        }
    }))
}

/// A host that records and asks every request for Basic credentials.
fn credential_collector(ip: &str) -> Fake {
    Fake::start(
        ip,
        None,
        Arc::new(|_: &Seen| {
            Answer::status(401).header("WWW-Authenticate", r#"Basic realm="collector""#)
        }),
    )
}

fn assert_no_authorization(fake: &Fake) {
    for seen in fake.seen() {
        assert!(
            seen.header("authorization").is_none() && !seen.carries_push_credentials(),
            "credentials reached {}: {seen:?}",
            fake.host()
        );
    }
}

#[test]
fn an_upload_location_on_another_origin_gets_no_authorization() {
    // Another port of the same address, and another address.
    for ip in ["127.0.0.1", "127.0.0.3"] {
        let collector = credential_collector(ip);
        let target = basic_push_target(
            |h| Fake::start("127.0.0.1", None, Arc::from(h)),
            format!("http://{}/upload/1?_state=x", collector.host()),
        );
        let sandbox = Sandbox::new();
        let exp = experiment(&sandbox, &format!("{}/lab/app", target.host()));
        let out = push_with_flags(&sandbox, &exp, &rootfs_base(), &["--parallel", "1"]);
        // The upload went there, without our Authorization.
        assert!(collector.count("PUT") > 0, "{}", text(&out));
        assert_no_authorization(&collector);
        let line = one_line_error(&out);
        println!("{line}");
        assert!(
            line.contains(&collector.host()) && line.contains(&target.host()),
            "{line}"
        );
        assert!(!text(&out).contains(PUSH_PASSWORD));
    }
}

#[test]
fn an_https_registry_sends_nothing_to_a_plain_http_location() {
    let tls = Tls::new();
    let collector = credential_collector("127.0.0.1");
    let location = format!("http://{}/upload/1", collector.host());
    let target = basic_push_target(
        |h| Fake::start("127.0.0.2", Some(tls.config.clone()), Arc::from(h)),
        location.clone(),
    );
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{}/lab/app", target.host()));
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(&exp)
        .args([
            "--base",
            &rootfs_base(),
            "--retries",
            "1",
            "--parallel",
            "1",
        ])
        .args(["--username", PUSH_USER, "--password-stdin"])
        .env("SSL_CERT_FILE", &tls.cert_pem);
    let out = run_with_stdin(cmd, PUSH_PASSWORD);
    assert_no_authorization(&collector);
    assert_eq!(collector.seen().len(), 0, "{:?}", collector.seen());
    let line = one_line_error(&out);
    println!("{line}");
    // The https registry was reached (the certificate is trusted) and
    // authenticated to; its plain-HTTP Location was refused.
    assert!(target.count("POST") > 0, "{}", text(&out));
    assert!(
        line.contains(&target.host()) && line.contains(&location) && line.contains("https"),
        "{line}"
    );
}

#[test]
fn an_http_token_realm_for_an_https_registry_is_refused() {
    let tls = Tls::new();
    let realm = credential_collector("127.0.0.1");
    let realm_url = format!("http://{}/token", realm.host());
    let target = {
        let realm_url = realm_url.clone();
        Fake::https(&tls, move |_| {
            Answer::status(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm_url}",service="push""#),
            )
        })
    };
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{}/lab/app", target.host()));
    let mut cmd = sandbox.cmd();
    cmd.arg("push")
        .arg(&exp)
        .args(["--base", &rootfs_base(), "--retries", "1"])
        .args(["--username", PUSH_USER, "--password-stdin"])
        .env("SSL_CERT_FILE", &tls.cert_pem);
    let out = run_with_stdin(cmd, PUSH_PASSWORD);
    assert_no_authorization(&realm);
    assert_eq!(realm.seen().len(), 0, "{:?}", realm.seen());
    let line = one_line_error(&out);
    println!("{line}");
    assert!(
        line.contains(&target.host()) && line.contains(&realm_url),
        "{line}"
    );

    // An https realm on another host (as ghcr.io and Docker Hub have) is
    // used as before: an anonymous token, and the base is pulled.
    let token_server = Fake::https(&tls, |seen| {
        if seen.path == "/token" {
            Answer::status(200).bytes(br#"{"token":"anonymous-pull-token"}"#)
        } else {
            Answer::status(404)
        }
    });
    let good_realm = format!("https://{}/token", token_server.host());
    let image = BaseImage::new();
    let base = Fake::https(&tls, move |seen| {
        if seen.header("authorization") != Some("Bearer anonymous-pull-token") {
            return Answer::status(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{good_realm}",service="base""#),
            );
        }
        image.answer(seen)
    });
    let out = run(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &format!("docker://{}/lab/base:1", base.host())])
        .args([
            "--output",
            &format!("oci:{}", sandbox.path("out").display()),
        ])
        .env("SSL_CERT_FILE", &tls.cert_pem));
    assert!(out.status.success(), "{}", text(&out));
    assert!(token_server.count("GET") > 0);
}

// ---------------------------------------------------------------------------
// Bounded answers
// ---------------------------------------------------------------------------

/// Builds on `base` (a registry reference) with an output, so every layer
/// is fetched, under `time -v`: the one error line and the peak RSS.
fn build_on(sandbox: &Sandbox, base: &str) -> (String, u64) {
    let exp = experiment(sandbox, "lab/app");
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(&exp)
        .args(["--base", base, "--retries", "1"])
        .args([
            "--output",
            &format!("oci:{}", sandbox.path("out").display()),
        ]);
    let (out, rss) = measured(cmd);
    (one_line_error(&out), rss)
}

fn assert_bounded(what: &str, fake: &Fake, rss_kb: u64, sandbox: &Sandbox) {
    println!("{what}: {} bytes sent, peak RSS {rss_kb} KiB", fake.sent());
    assert!(
        fake.sent() < BOUNDED_SEND,
        "{what}: the client read {} bytes",
        fake.sent()
    );
    assert!(rss_kb < BOUNDED_RSS_KB, "{what}: peak RSS {rss_kb} KiB");
    let largest = largest_file(&sandbox.path("cache"));
    assert!(
        largest < 16 << 20,
        "{what}: a {largest}-byte file in the cache"
    );
}

#[test]
fn an_endless_manifest_is_refused_naming_the_reference() {
    let fake = Fake::http(|seen| match seen.path.as_str() {
        "/v2/" => Answer::status(200),
        "/v2/lab/base/manifests/1" => Answer::status(200)
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(Body::Endless),
        _ => Answer::status(404),
    });
    let sandbox = Sandbox::new();
    let (line, rss) = build_on(&sandbox, &format!("docker://{}/lab/base:1", fake.host()));
    println!("{line}");
    assert_bounded("manifest", &fake, rss, &sandbox);
    assert!(
        line.contains(&format!("the manifest {}/lab/base:1", fake.host()))
            && line.contains("larger than 4 MiB"),
        "{line}"
    );
}

#[test]
fn an_endless_token_is_refused_naming_the_registry() {
    let realm = Fake::http(|_| {
        Answer::status(200)
            .header("Content-Type", "application/json")
            .body(Body::Padded(br#"{"token":""#.to_vec()))
    });
    let realm_url = format!("http://{}/token", realm.host());
    let fake = Fake::http(move |_| {
        Answer::status(401).header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="{realm_url}",service="base""#),
        )
    });
    let sandbox = Sandbox::new();
    let (line, rss) = build_on(&sandbox, &format!("docker://{}/lab/base:1", fake.host()));
    println!("{line}");
    assert_bounded("token", &realm, rss, &sandbox);
    assert!(
        line.contains(&format!("the token service of {}", fake.host()))
            && line.contains("larger than 4 MiB"),
        "{line}"
    );
}

#[test]
fn an_endless_error_body_is_cut_short() {
    let fake = Fake::http(|seen| match seen.path.as_str() {
        "/v2/" => Answer::status(200),
        _ => Answer::status(404)
            .header("Content-Type", "application/json")
            .body(Body::Endless),
    });
    let sandbox = Sandbox::new();
    let (line, rss) = build_on(&sandbox, &format!("docker://{}/lab/base:1", fake.host()));
    println!("{line}");
    assert_bounded("error body", &fake, rss, &sandbox);
    assert!(
        line.contains(&format!("base {}/lab/base:1", fake.host())) && line.contains("404"),
        "{line}"
    );
}

#[test]
fn a_base_layer_longer_than_its_descriptor_is_refused() {
    let image = BaseImage::new();
    let (layer_path, layer) = (
        format!("/v2/lab/base/blobs/{}", image.layer_digest),
        image.layer.clone(),
    );
    let digest = image.layer_digest.clone();
    let fake = Fake::http(move |seen| {
        if seen.path == layer_path {
            // The right bytes, then more: no length says where they end.
            Answer::status(200).body(Body::Padded(layer.clone()))
        } else {
            image.answer(seen)
        }
    });
    let sandbox = Sandbox::new();
    let (line, rss) = build_on(&sandbox, &format!("docker://{}/lab/base:1", fake.host()));
    println!("{line}");
    assert_bounded("blob", &fake, rss, &sandbox);
    assert!(
        line.contains(&format!("blob {digest} from {}/lab/base", fake.host()))
            && line.contains("longer than"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// Refusals are not absences
// ---------------------------------------------------------------------------

/// A registry that refuses (401, 403) to say whether it has the image, but
/// would take blobs and the manifest: `push --use-existing` stops with the
/// refusal (naming the registry and what to do), and uploads nothing; it
/// never reads the refusal as "not there" and pushes.
#[test]
fn use_existing_reads_a_refused_manifest_check_as_an_error_not_an_absence() {
    for (status, expected) in [
        (401, "unauthenticated: no credentials were found"),
        (403, "denied"),
    ] {
        let fake = Fake::http(
            move |seen| match (seen.method.as_str(), seen.path.as_str()) {
                ("HEAD" | "GET", p) if p.contains("/manifests/") => {
                    Answer::status(status).header("WWW-Authenticate", r#"Basic realm="fake""#)
                }
                ("HEAD", _) => Answer::status(404),
                ("POST", p) if p.ends_with("/blobs/uploads/") => {
                    Answer::status(202).header("Location", "/upload/1")
                }
                ("PUT", _) => Answer::status(201),
                _ => Answer::status(404),
            },
        );
        let sandbox = Sandbox::new();
        let exp = experiment(&sandbox, &format!("{}/lab/app", fake.host()));
        let out = run(sandbox.cmd().arg("push").arg(&exp).args([
            "--base",
            &rootfs_base(),
            "--retries",
            "1",
            "--use-existing",
        ]));
        let line = one_line_error(&out);
        println!("{line}");
        assert!(
            line.contains(expected)
                && line.contains(&format!("{}/lab/app", fake.host()))
                && line.contains("is in the registry"),
            "{line}"
        );
        if status == 401 {
            assert!(
                line.contains(&format!("docker login {}", fake.host())),
                "{line}"
            );
        }
        for method in ["POST", "PUT", "PATCH"] {
            assert_eq!(fake.count(method), 0, "{method}: {:?}", fake.seen());
        }
        assert!(!text(&out).contains("already in the registry"));
    }
}

// ---------------------------------------------------------------------------
// Uploads must progress
// ---------------------------------------------------------------------------

#[test]
fn a_chunked_upload_whose_range_never_advances_gives_up() {
    // Bounded for a client that never gives up: after this many PATCHes
    // the fake refuses them, and the test fails on the count.
    const PATCH_LIMIT: usize = 200;
    let patches = Arc::new(AtomicU64::new(0));
    let fake = {
        let patches = patches.clone();
        Fake::http(
            move |seen| match (seen.method.as_str(), seen.path.as_str()) {
                ("GET", "/v2/") => Answer::status(200),
                ("HEAD", _) => Answer::status(404),
                ("POST", p) if p.ends_with("/blobs/uploads/") => Answer::status(202)
                    .header("Location", "/upload/1")
                    .header("Range", "0-0"),
                ("PATCH", "/upload/1") => {
                    if patches.fetch_add(1, Ordering::SeqCst) as usize >= PATCH_LIMIT {
                        Answer::status(400)
                    } else {
                        // Always "one byte received", whatever was sent.
                        Answer::status(202)
                            .header("Location", "/upload/1")
                            .header("Range", "0-0")
                    }
                }
                ("PUT", _) => Answer::status(201),
                _ => Answer::status(404),
            },
        )
    };
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, &format!("{}/lab/app", fake.host()));
    let out = run(sandbox
        .cmd()
        .arg("push")
        .arg(&exp)
        .args(["--base", &rootfs_base(), "--retries", "1"])
        .args(["--chunk-size", "256", "--parallel", "1"]));
    let line = one_line_error(&out);
    println!("{line}");
    let count = patches.load(Ordering::SeqCst);
    println!("{count} PATCH requests");
    assert!(count <= 10, "{count} PATCHes before giving up");
    assert!(
        line.contains(&fake.host()) && line.contains("without --chunk-size"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

#[test]
fn blob_redirects_carry_no_authorization_and_never_leave_https() {
    const BASE_USER: &str = "base-reader";
    const BASE_PASSWORD: &str = "base-secret-77a2";
    let tls = Tls::new();
    let image = Arc::new(BaseImage::new());
    let cdn = {
        let image = image.clone();
        Fake::http(move |_| Answer::status(200).bytes(&image.layer))
    };
    // A base registry (credentials from the auth file, as for any base)
    // that sends its layer to a CDN on another origin.
    let base_registry = |tls: Option<&Tls>| {
        let (image, expected) = (image.clone(), basic_auth(BASE_USER, BASE_PASSWORD));
        let cdn_url = format!("http://{}/layer", cdn.host());
        let handler: Arc<Handler> = Arc::new(move |seen: &Seen| {
            if seen.header("authorization") != Some(expected.as_str()) {
                return Answer::status(401).header("WWW-Authenticate", r#"Basic realm="base""#);
            }
            if seen.path == format!("/v2/lab/base/blobs/{}", image.layer_digest) {
                return Answer::status(307).header("Location", &cdn_url);
            }
            image.answer(seen)
        });
        match tls {
            Some(tls) => Fake::start("127.0.0.2", Some(tls.config.clone()), handler),
            None => Fake::start("127.0.0.1", None, handler),
        }
    };
    let (plain, secure) = (base_registry(None), base_registry(Some(&tls)));
    let auth = basic_auth(BASE_USER, BASE_PASSWORD);
    let auth = auth.trim_start_matches("Basic ");
    let build = |base: &Fake| {
        let sandbox = Sandbox::new();
        let config = sandbox.home().join(".docker/config.json");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        fs::write(
            &config,
            serde_json::json!({"auths": {base.host(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        let exp = experiment(&sandbox, "lab/app");
        run(sandbox
            .cmd()
            .arg("build")
            .arg(&exp)
            .args(["--base", &format!("docker://{}/lab/base:1", base.host())])
            .args(["--retries", "1"])
            .args([
                "--output",
                &format!("oci:{}", sandbox.path("out").display()),
            ])
            .env("SSL_CERT_FILE", &tls.cert_pem))
    };

    // Followed to the CDN, which gets no Authorization.
    let out = build(&plain);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cdn.count("GET"), 1);
    for seen in cdn.seen() {
        assert!(seen.header("authorization").is_none(), "{seen:?}");
        assert!(!seen.uri.contains(BASE_PASSWORD) && !seen.uri.contains(auth));
    }

    // From https to plain HTTP: not followed.
    let out = build(&secure);
    let line = one_line_error(&out);
    println!("{line}");
    assert_eq!(cdn.count("GET"), 1, "{:?}", cdn.seen());
    assert!(
        line.contains(&secure.host())
            && line.contains(&format!("http://{}/layer", cdn.host()))
            && !line.contains("attempts"),
        "{line}"
    );
}
