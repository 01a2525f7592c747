//! Real OCI registries on 127.0.0.1 for integration tests.
//!
//! - [`Registry`]: CNCF distribution (`docker-registry serve`) in a temp dir,
//!   with no auth, htpasswd (basic) auth or Docker token auth, and its
//!   access log parsed into [`Request`]s.
//! - [`TokenIssuer`]: a Docker token server (`GET /token?service=..&scope=..`)
//!   that signs RS256 JWTs with a throwaway key made by the `openssl` CLI.
//! - [`FaultProxy`]: an HTTP/1.1 proxy in front of a registry whose
//!   [`FaultPlan`] injects error statuses, dropped uploads and delays.
//!
//! Every target is 127.0.0.1. Every server stops on Drop and also by itself
//! after [`SERVER_LIFETIME`]; every socket has timeouts; every loop is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::{ok, require_tool};

/// How long any server of this module lives at most, even if never dropped
/// (the registry runs under `timeout`, the in-process servers stop accepting).
pub const SERVER_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long a registry may take to answer `GET /v2/` after (re)start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of every socket of this module.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD_BYTES: u64 = 64 * 1024;

/// The issuer and audience the registry's token config expects.
pub const TOKEN_ISSUER: &str = "test-issuer";
pub const TOKEN_SERVICE: &str = "test-registry";

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

/// How a [`Registry`] authenticates clients.
pub enum RegistryAuth {
    None,
    /// Basic auth against a bcrypt htpasswd file (realm `basic-realm`).
    Htpasswd {
        user: String,
        password: String,
    },
    /// Bearer tokens from this issuer (service `test-registry`).
    Token(TokenIssuer),
}

impl RegistryAuth {
    pub fn htpasswd(user: &str, password: &str) -> RegistryAuth {
        RegistryAuth::Htpasswd {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// One HTTP request a server saw: from the registry's access log or from the
/// [`FaultProxy`]. `path` has no query string; `uri` is the request target as
/// sent. A [`FaultProxy`] logs `status == 0` for a connection it dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub uri: String,
    pub status: u16,
}

impl Request {
    fn new(method: &str, uri: &str, status: u16) -> Request {
        Request {
            method: method.to_string(),
            path: uri.split('?').next().unwrap_or("").to_string(),
            uri: uri.to_string(),
            status,
        }
    }
}

/// A `docker-registry serve` process on 127.0.0.1:PORT with its own storage.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    auth: RegistryAuth,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers 200 or 401.
    /// Panics, with the registry's log, if it does not within [`READY_TIMEOUT`].
    pub fn start(auth: RegistryAuth) -> Registry {
        require_tool("docker-registry");
        require_tool("timeout");
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("storage")).unwrap();
        let mut registry = Registry {
            dir,
            port: 0,
            auth,
            child: None,
        };
        registry.write_auth_files();
        // The port is free when we look; someone may take it before the
        // registry binds it, so a few tries with fresh ports.
        for attempt in 1..=3 {
            registry.port = free_port();
            registry.write_config();
            registry.spawn();
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(why) => {
                    registry.stop();
                    let log = registry.log_text();
                    if attempt < 3 && log.contains("address already in use") {
                        continue;
                    }
                    panic!("registry did not start: {why}\n--- registry log ---\n{log}");
                }
            }
        }
        unreachable!()
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The registry's filesystem storage root (`docker/registry/v2/...`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The user and password of an htpasswd or token registry.
    pub fn credentials(&self) -> Option<(String, String)> {
        match &self.auth {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, password } => Some((user.clone(), password.clone())),
            RegistryAuth::Token(issuer) => Some(issuer.credentials()),
        }
    }

    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        match &self.auth {
            RegistryAuth::Token(issuer) => Some(issuer),
            _ => None,
        }
    }

    /// Everything the registry wrote (stdout and stderr, all runs).
    pub fn log_text(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The requests of the access log, oldest first (across restarts).
    pub fn requests(&self) -> Vec<Request> {
        parse_access_log(&self.log_text())
    }

    /// Waits (bounded) until the access log has a request with this method
    /// whose path starts with `path_prefix`, and returns the first such one.
    /// The registry logs a request when its handler returns, which for big
    /// responses can be after the client already has the response.
    pub fn wait_for_request(&self, method: &str, path_prefix: &str, timeout: Duration) -> Request {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .requests()
                .into_iter()
                .find(|r| r.method == method && r.path.starts_with(path_prefix))
            {
                return r;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {method} {path_prefix}* in the access log after {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the registry (SIGTERM, then SIGKILL) and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    /// Stops and starts the registry on the same port with the same storage,
    /// and waits until it is ready.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(why) = self.wait_ready() {
            self.stop();
            panic!(
                "registry did not restart: {why}\n--- registry log ---\n{}",
                self.log_text()
            );
        }
    }

    fn write_auth_files(&self) {
        if let RegistryAuth::Htpasswd { user, password } = &self.auth {
            let line = ok(Command::new(require_tool("htpasswd")).args(["-Bbn", user, password]));
            fs::write(
                self.dir.path().join("htpasswd"),
                line.trim_end().to_string() + "\n",
            )
            .unwrap();
        }
    }

    fn write_config(&self) {
        // Scalars are written as JSON strings, which YAML reads as quoted strings.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let storage = self.storage_dir();
        let mut config = format!(
            "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {addr}
  # Fixed, so upload URLs (their _state is signed with it) survive restart().
  secret: dallinger-oci-test-secret
  headers:
    X-Content-Type-Options: [nosniff]
",
            storage = q(&storage.to_string_lossy()),
            addr = q(&self.host()),
        );
        match &self.auth {
            RegistryAuth::None => {}
            RegistryAuth::Htpasswd { .. } => {
                let path = self.dir.path().join("htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    q(&path.to_string_lossy())
                ));
            }
            RegistryAuth::Token(issuer) => {
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    q(&issuer.realm()),
                    q(&issuer.cert_path().to_string_lossy())
                ));
            }
        }
        fs::write(self.config_path(), config).unwrap();
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(require_tool("timeout"))
            // --foreground: stay in our process group (Ctrl-C reaches it);
            // -k: SIGKILL 2 s after SIGTERM if it has not exited.
            .arg("--foreground")
            .args(["-k", "2"])
            .arg(SERVER_LIFETIME.as_secs().to_string())
            .arg(require_tool("docker-registry"))
            .arg("serve")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("docker-registry exited: {status}"));
                }
            }
            let answer = http_request_with_timeout(
                &self.host(),
                "GET",
                "/v2/",
                &[],
                b"",
                Duration::from_millis(500),
            );
            match answer {
                Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
                Ok(r) if Instant::now() >= deadline => {
                    return Err(format!("GET /v2/ answered {}", r.status))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("GET /v2/ failed after {READY_TIMEOUT:?}: {e}"))
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to the `timeout` wrapper (which passes it on), bounded wait, then
/// SIGKILL.
fn terminate(mut child: Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\" 2>/dev/null", "sh"])
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Parses distribution's access log lines (Apache combined format):
/// `127.0.0.1 - - [24/Nov/2026:13:18:54 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
/// Other lines (logrus `time=... level=... msg=...`) are skipped.
pub fn parse_access_log(text: &str) -> Vec<Request> {
    text.lines().filter_map(parse_access_line).collect()
}

fn parse_access_line(line: &str) -> Option<Request> {
    if line.starts_with("time=") {
        return None;
    }
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find("\" ")?;
    let mut parts = rest[..end].split(' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest[end + 2..].split(' ').next()?.parse().ok()?;
    Some(Request::new(method, uri, status))
}

// ---------------------------------------------------------------------------
// A tiny HTTP client (for readiness checks and test assertions)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request to `host` ("127.0.0.1:PORT" only) with
/// `Connection: close`; chunked responses are decoded.
pub fn http_request(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    http_request_with_timeout(host, method, target, headers, body, IO_TIMEOUT)
}

fn http_request_with_timeout(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let addr = local_addr(host);
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(CONNECT_TIMEOUT))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader, false)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = head.status()?;
    let mut body = Vec::new();
    if method != "HEAD" && status >= 200 && status != 204 && status != 304 {
        if head.is_chunked() {
            relay_chunked(&mut reader, &mut body)?;
            // Chunk framing relayed raw; decode it.
            body = decode_chunked(&body)?;
        } else if let Some(len) = head.content_length()? {
            copy_exact(&mut reader, &mut body, len)?;
        } else {
            reader.take(1 << 30).read_to_end(&mut body)?;
        }
    }
    Ok(HttpResponse {
        status,
        headers: head.headers,
        body,
    })
}

/// Panics unless `host` is "127.0.0.1:PORT".
fn local_addr(host: &str) -> SocketAddr {
    let addr: SocketAddr = host
        .parse()
        .unwrap_or_else(|_| panic!("not an IP:port address: {host:?}"));
    assert!(
        addr.ip() == std::net::Ipv4Addr::LOCALHOST,
        "only 127.0.0.1 may be a target, not {host}"
    );
    addr
}

// ---------------------------------------------------------------------------
// HTTP/1.1 plumbing shared by the servers
// ---------------------------------------------------------------------------

struct Head {
    start_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn is_chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(format!("bad Content-Length {v:?}"))),
        }
    }

    /// (method, target, version) of a request.
    fn request_line(&self) -> io::Result<(String, String, String)> {
        let mut parts = self.start_line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v), None) if v.starts_with("HTTP/1.") && !t.is_empty() => {
                Ok((m.to_string(), t.to_string(), v.to_string()))
            }
            _ => Err(invalid(format!("bad request line {:?}", self.start_line))),
        }
    }

    /// Status code of a response.
    fn status(&self) -> io::Result<u16> {
        let mut parts = self.start_line.split(' ');
        match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
                .parse()
                .map_err(|_| invalid(format!("bad status line {:?}", self.start_line))),
            _ => Err(invalid(format!("bad status line {:?}", self.start_line))),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a request or response head. `Ok(None)` on a clean EOF before it.
/// With `request`, anything that does not start like `METHOD ` (a TLS
/// ClientHello from a client trying https first, say) is refused at once
/// instead of waiting for a line end that never comes.
fn read_head<R: BufRead>(r: &mut R, request: bool) -> io::Result<Option<Head>> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0u64;
    loop {
        if lines.is_empty() {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            if request {
                for &b in buf.iter().take_while(|&&b| b != b' ') {
                    if !(b.is_ascii_uppercase() || b == b'\r' || b == b'\n') {
                        return Err(invalid("not an HTTP request".to_string()));
                    }
                }
            }
        }
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take(MAX_HEAD_BYTES - total)
            .read_until(b'\n', &mut line)?;
        total += n as u64;
        if n == 0 || !line.ends_with(b"\n") {
            if lines.is_empty() && n == 0 {
                return Ok(None);
            }
            return Err(invalid("truncated or oversized HTTP head".to_string()));
        }
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests
            }
            break;
        }
        lines.push(line);
    }
    let start_line = lines.remove(0);
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some(Head {
        start_line,
        headers,
    }))
}

/// Copies exactly `n` bytes.
fn copy_exact<R: BufRead, W: Write + ?Sized>(r: &mut R, w: &mut W, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body ended early",
            ));
        }
        let take = buf.len().min(n as usize);
        w.write_all(&buf[..take])?;
        r.consume(take);
        n -= take as u64;
    }
    Ok(())
}

fn read_line_bounded<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.by_ref().take(8192).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(invalid("bad chunk framing".to_string()));
    }
    Ok(line)
}

/// Relays a chunked body as is (framing included), up to its last chunk and
/// trailers.
fn relay_chunked<R: BufRead, W: Write + ?Sized>(r: &mut R, w: &mut W) -> io::Result<()> {
    loop {
        let line = read_line_bounded(r)?;
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            for _ in 0..100 {
                let line = read_line_bounded(r)?;
                w.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
            return Err(invalid("too many trailers".to_string()));
        }
        copy_exact(r, w, size)?;
        let crlf = read_line_bounded(r)?;
        w.write_all(&crlf)?;
    }
}

fn decode_chunked(raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut r = raw;
    let mut out = Vec::new();
    loop {
        let line = read_line_bounded(&mut r)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            return Ok(out);
        }
        copy_exact(&mut r, &mut out, size as u64)?;
        read_line_bounded(&mut r)?;
    }
}

/// A writer that takes `remaining` bytes and then fails.
struct Budget {
    remaining: u64,
}

impl Write for Budget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Err(io::Error::other("budget spent"));
        }
        let n = buf.len().min(self.remaining as usize);
        self.remaining -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A listener on 127.0.0.1:0 that runs `handler` on a thread per connection.
/// Drop (or [`SERVER_LIFETIME`]) stops accepting and shuts down open
/// connections.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start<F>(handler: F) -> Server
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let handler = Arc::new(handler);
        let accept = {
            let stop = stop.clone();
            let conns = conns.clone();
            thread::spawn(move || {
                let born = Instant::now();
                let mut next_id = 0u64;
                while !stop.load(Ordering::SeqCst) && born.elapsed() < SERVER_LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            next_id += 1;
                            let id = next_id;
                            if stream.set_nonblocking(false).is_err()
                                || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
                                || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
                            {
                                continue;
                            }
                            if let Ok(clone) = stream.try_clone() {
                                lock(&conns).insert(id, clone);
                            }
                            let handler = handler.clone();
                            let conns = conns.clone();
                            thread::spawn(move || {
                                handler(stream);
                                lock(&conns).remove(&id);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for (_, conn) in lock(&conns).drain() {
                    let _ = conn.shutdown(Shutdown::Both);
                }
            })
        };
        Server {
            addr,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, conn) in lock(&self.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Locks, ignoring poisoning (a panicking connection thread must not take
/// the test's assertions down with it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Token issuer
// ---------------------------------------------------------------------------

/// One request the [`TokenIssuer`] answered. `user` is the user of a correct
/// Basic (or password grant) login, `None` for anonymous or wrong logins.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub user: Option<String>,
    pub service: Option<String>,
    pub account: Option<String>,
    pub scopes: Vec<String>,
    pub status: u16,
}

/// A Docker token server (`GET /token`, and `POST /token` with
/// `grant_type=password`) on 127.0.0.1. Cloning shares the server; it stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<IssuerInner>,
}

struct IssuerInner {
    state: Arc<IssuerState>,
    server: Server,
    // Dropped last: the key and the certificate the registry reads.
    _dir: tempfile::TempDir,
}

struct IssuerState {
    user: String,
    password: String,
    openssl: PathBuf,
    key_path: PathBuf,
    cert_path: PathBuf,
    x5c: String,
    next_jti: AtomicU64,
    log: Mutex<Vec<TokenRequest>>,
}

impl TokenIssuer {
    /// Makes a key and self-signed certificate (CN=test-issuer) and starts
    /// serving tokens to `user`/`password`.
    pub fn start(user: &str, password: &str) -> TokenIssuer {
        let openssl = require_tool("openssl");
        let dir = tempfile::Builder::new()
            .prefix("token-issuer-")
            .tempdir()
            .unwrap();
        let key_path = dir.path().join("key.pem");
        let cert_path = dir.path().join("cert.pem");
        ok(Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=test-issuer", "-days", "2"])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .stderr(Stdio::null()));
        let pem = fs::read_to_string(&cert_path).unwrap();
        // The PEM body is the base64 of the DER certificate.
        let x5c: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let state = Arc::new(IssuerState {
            user: user.to_string(),
            password: password.to_string(),
            openssl,
            key_path,
            cert_path,
            x5c,
            next_jti: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
        });
        let server = {
            let state = state.clone();
            Server::start(move |stream| serve_token(&state, stream))
        };
        TokenIssuer {
            inner: Arc::new(IssuerInner {
                state,
                server,
                _dir: dir,
            }),
        }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        self.inner.server.host()
    }

    /// "http://127.0.0.1:PORT/token", the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.host())
    }

    /// The issuer certificate, the registry's `rootcertbundle`.
    pub fn cert_path(&self) -> PathBuf {
        self.inner.state.cert_path.clone()
    }

    pub fn credentials(&self) -> (String, String) {
        (
            self.inner.state.user.clone(),
            self.inner.state.password.clone(),
        )
    }

    /// How many token requests arrived (any outcome).
    pub fn token_requests(&self) -> usize {
        lock(&self.inner.state.log).len()
    }

    /// Every scope asked for, in order, e.g. `repository:foo:pull,push`.
    pub fn scopes_requested(&self) -> Vec<String> {
        lock(&self.inner.state.log)
            .iter()
            .flat_map(|r| r.scopes.iter().cloned())
            .collect()
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.inner.state.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.inner.state.log).clear();
    }

    /// A signed token for `sub` granting these `(repository, actions)`,
    /// without going through HTTP (to test what a client does with a
    /// given token).
    pub fn issue(&self, sub: &str, access: &[(&str, &[&str])]) -> String {
        let access: Vec<serde_json::Value> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        self.inner.state.sign(sub, access)
    }
}

impl IssuerState {
    fn sign(&self, sub: &str, access: Vec<serde_json::Value>) -> String {
        let now = unix_now();
        let jti = self.next_jti.fetch_add(1, Ordering::SeqCst);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": sub,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{}-{}-{jti}", std::process::id(), now),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new(&self.openssl)
            .args(["dgst", "-sha256", "-binary", "-sign"])
            .arg(&self.key_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl starts");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(&out.stdout))
    }
}

fn serve_token(state: &IssuerState, stream: TcpStream) {
    let mut reader = match stream.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(_) => return,
    };
    let mut writer = stream;
    let head = match read_head(&mut reader, true) {
        Ok(Some(head)) => head,
        _ => return,
    };
    let (status, body, extra) = match token_response(state, &head, &mut reader) {
        Ok(answer) => answer,
        Err(e) => (400, serde_json::json!({"error": e.to_string()}), ""),
    };
    let body = body.to_string();
    let _ = write!(
        writer,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let _ = writer.flush();
    let _ = writer.shutdown(Shutdown::Both);
}

fn token_response(
    state: &IssuerState,
    head: &Head,
    reader: &mut BufReader<TcpStream>,
) -> io::Result<(u16, serde_json::Value, &'static str)> {
    let (method, target, _) = head.request_line()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != "/token" {
        return Ok((404, serde_json::json!({"error": "not found"}), ""));
    }
    let mut params = parse_query(query);
    // Credentials: Basic auth (GET) or a password grant (POST form).
    let mut login: Option<(String, String)> = None;
    if let Some(auth) = head.header("authorization") {
        let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(value.trim()).unwrap_or_default();
            let decoded = String::from_utf8_lossy(&decoded).into_owned();
            let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
            login = Some((u.to_string(), p.to_string()));
        }
    }
    if method == "POST" {
        let len = head.content_length()?.unwrap_or(0).min(1 << 20);
        let mut body = Vec::new();
        copy_exact(reader, &mut body, len)?;
        let form = parse_query(&String::from_utf8_lossy(&body));
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() == Some("password") {
            login = Some((
                get("username").unwrap_or_default(),
                get("password").unwrap_or_default(),
            ));
        } else {
            let mut log = lock(&state.log);
            log.push(TokenRequest {
                method,
                user: None,
                service: get("service"),
                account: None,
                scopes: Vec::new(),
                status: 400,
            });
            return Ok((
                400,
                serde_json::json!({"error": "unsupported_grant_type"}),
                "",
            ));
        }
        params.extend(form);
    } else if method != "GET" {
        return Ok((405, serde_json::json!({"error": "method not allowed"}), ""));
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let mut entry = TokenRequest {
        method,
        user: None,
        service: param("service"),
        account: param("account"),
        scopes: scopes.clone(),
        status: 200,
    };
    let granted = match &login {
        Some((u, p)) if *u == state.user && *p == state.password => {
            entry.user = Some(u.clone());
            true
        }
        Some(_) => {
            entry.status = 401;
            lock(&state.log).push(entry);
            return Ok((
                401,
                serde_json::json!({"errors": [{"code": "UNAUTHORIZED",
                    "message": "authentication required", "detail": null}]}),
                "WWW-Authenticate: Basic realm=\"test-issuer\"\r\n",
            ));
        }
        None => false,
    };
    let access: Vec<serde_json::Value> = if granted {
        scopes.iter().filter_map(|s| scope_access(s)).collect()
    } else {
        Vec::new()
    };
    let sub = entry.user.clone().unwrap_or_default();
    lock(&state.log).push(entry);
    let token = state.sign(&sub, access);
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    Ok((
        200,
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 300,
            "issued_at": issued_at,
        }),
        "",
    ))
}

/// `repository:name/with/slashes:pull,push` -> an `access` claim entry.
fn scope_access(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
}

/// The claims of a JWT (unverified), e.g. to check its `access`.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&base64_decode(payload).expect("base64url claims")).unwrap()
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Decodes standard or URL-safe base64, padded or not.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT
        .decode(text.replace('+', "-").replace('/', "_"))
        .ok()
}

/// Basic auth header value for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

// ---------------------------------------------------------------------------
// Fault proxy
// ---------------------------------------------------------------------------

/// What a [`FaultProxy`] does to the next requests. Cloning shares the plan;
/// changes apply to requests that arrive afterwards.
#[derive(Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

#[derive(Default)]
struct PlanState {
    always: Option<u16>,
    fail_count: usize,
    fail_status: u16,
    fail_method: Option<String>,
    fail_path_contains: Option<String>,
    drop_upload_after: Option<u64>,
    delay: Duration,
}

enum Action {
    Fail(u16),
    Drop(u64),
    Forward,
}

impl FaultPlan {
    /// Answers the next `n` requests with `status` without forwarding them
    /// (429 comes with `Retry-After: 1`).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = lock(&self.state);
        s.fail_count = n;
        s.fail_status = status;
        s.fail_method = None;
        s.fail_path_contains = None;
    }

    /// Like [`FaultPlan::fail_next`], counting only requests with this method
    /// (empty: any) whose path contains `path_contains`; others pass.
    pub fn fail_matching(&self, method: &str, path_contains: &str, n: usize, status: u16) {
        let mut s = lock(&self.state);
        s.fail_count = n;
        s.fail_status = status;
        s.fail_method = (!method.is_empty()).then(|| method.to_string());
        s.fail_path_contains = Some(path_contains.to_string());
    }

    /// For the next PATCH or PUT that has a body: forwards nothing, reads
    /// `bytes` of its body (or all of it if shorter), then closes the
    /// client's connection without answering.
    pub fn drop_upload_after(&self, bytes: u64) {
        lock(&self.state).drop_upload_after = Some(bytes);
    }

    /// Sleeps this long before each response.
    pub fn delay(&self, ms: u64) {
        lock(&self.state).delay = Duration::from_millis(ms);
    }

    /// Answers every request with `status` until [`FaultPlan::clear`].
    pub fn always_fail(&self, status: u16) {
        lock(&self.state).always = Some(status);
    }

    /// Back to forwarding everything at once.
    pub fn clear(&self) {
        *lock(&self.state) = PlanState::default();
    }

    /// Failures of `fail_next`/`fail_matching` not used yet.
    pub fn pending_failures(&self) -> usize {
        lock(&self.state).fail_count
    }

    fn decide(&self, method: &str, path: &str, has_body: bool) -> Action {
        let mut s = lock(&self.state);
        if let Some(status) = s.always {
            return Action::Fail(status);
        }
        if s.fail_count > 0
            && s.fail_method.as_deref().is_none_or(|m| m == method)
            && s.fail_path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
        {
            s.fail_count -= 1;
            return Action::Fail(s.fail_status);
        }
        if has_body && (method == "PATCH" || method == "PUT") {
            if let Some(bytes) = s.drop_upload_after.take() {
                return Action::Drop(bytes);
            }
        }
        Action::Forward
    }

    fn current_delay(&self) -> Duration {
        lock(&self.state).delay
    }
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream`. Each request goes
/// to the upstream on a fresh connection (`Connection: close`, `Host` set to
/// the upstream); `Location` headers naming the upstream are rewritten to
/// the proxy; client connections are kept alive.
pub struct FaultProxy {
    upstream: String,
    plan: FaultPlan,
    log: Arc<Mutex<Vec<Request>>>,
    server: Server,
}

impl FaultProxy {
    /// `upstream` is "127.0.0.1:PORT", e.g. [`Registry::host`].
    pub fn start(upstream: &str) -> FaultProxy {
        local_addr(upstream);
        let plan = FaultPlan::default();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        // The server's address is known only once it listens.
        let me: Arc<Mutex<String>> = Arc::default();
        let server = {
            let upstream = upstream.to_string();
            let plan = plan.clone();
            let log = log.clone();
            let me = me.clone();
            Server::start(move |stream| {
                let me = lock(&me).clone();
                proxy_connection(stream, &upstream, &me, &plan, &log)
            })
        };
        *lock(&me) = server.host();
        FaultProxy {
            upstream: upstream.to_string(),
            plan,
            log,
            server,
        }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A handle on the plan, to change it from elsewhere.
    pub fn plan(&self) -> FaultPlan {
        self.plan.clone()
    }

    pub fn fail_next(&self, n: usize, status: u16) {
        self.plan.fail_next(n, status)
    }

    pub fn fail_matching(&self, method: &str, path_contains: &str, n: usize, status: u16) {
        self.plan.fail_matching(method, path_contains, n, status)
    }

    pub fn drop_upload_after(&self, bytes: u64) {
        self.plan.drop_upload_after(bytes)
    }

    pub fn delay(&self, ms: u64) {
        self.plan.delay(ms)
    }

    pub fn always_fail(&self, status: u16) {
        self.plan.always_fail(status)
    }

    pub fn clear(&self) {
        self.plan.clear()
    }

    /// Requests seen, oldest first, with the status the client got (0: the
    /// connection was dropped; 502: the upstream could not be reached).
    /// Logged before the response is sent.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.log).clear();
    }
}

fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    me: &str,
    plan: &FaultPlan,
    log: &Mutex<Vec<Request>>,
) {
    let mut reader = match client.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(_) => return,
    };
    let mut writer = client;
    // Bounded: each round reads a request, and reads time out.
    for _ in 0..100_000 {
        match proxy_one(&mut reader, &mut writer, upstream, me, plan, log) {
            Ok(true) => continue,
            Ok(false) | Err(_) => break,
        }
    }
    let _ = writer.flush();
    let _ = writer.shutdown(Shutdown::Both);
}

/// Handles one request; `Ok(true)` to keep the client connection.
fn proxy_one(
    reader: &mut BufReader<TcpStream>,
    client: &mut TcpStream,
    upstream: &str,
    me: &str,
    plan: &FaultPlan,
    log: &Mutex<Vec<Request>>,
) -> io::Result<bool> {
    let head = match read_head(reader, true)? {
        Some(head) => head,
        None => return Ok(false),
    };
    let (method, target, version) = head.request_line()?;
    let chunked = head.is_chunked();
    let length = if chunked {
        None
    } else {
        head.content_length()?
    };
    let has_body = chunked || length.unwrap_or(0) > 0;
    let keep_alive = if version == "HTTP/1.0" {
        head.has_token("connection", "keep-alive")
    } else {
        !head.has_token("connection", "close")
    };
    let expect_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let path = target.split('?').next().unwrap_or("").to_string();
    let record = |status: u16| lock(log).push(Request::new(&method, &target, status));

    // Reads (and throws away, or relays) the request body.
    let body_to = |reader: &mut BufReader<TcpStream>, w: &mut dyn Write| -> io::Result<()> {
        if chunked {
            relay_chunked(reader, w)
        } else {
            copy_exact(reader, w, length.unwrap_or(0))
        }
    };

    match plan.decide(&method, &path, has_body) {
        Action::Fail(status) => {
            // With Expect: 100-continue the body never comes: answer and close.
            let keep = keep_alive && !(expect_continue && has_body);
            if keep {
                body_to(reader, &mut io::sink())?;
            }
            let code = match status {
                401 => "UNAUTHORIZED",
                403 => "DENIED",
                404 => "NAME_UNKNOWN",
                429 => "TOOMANYREQUESTS",
                503 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            let body = serde_json::json!({"errors": [{"code": code,
                "message": format!("injected fault: {status}"), "detail": null}]})
            .to_string();
            let mut out = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
                 Content-Length: {}\r\nDocker-Distribution-Api-Version: registry/2.0\r\n",
                reason(status),
                body.len()
            );
            if status == 429 {
                out.push_str("Retry-After: 1\r\n");
            }
            out.push_str(if keep {
                "Connection: keep-alive\r\n\r\n"
            } else {
                "Connection: close\r\n\r\n"
            });
            if method != "HEAD" {
                out.push_str(&body);
            }
            thread::sleep(plan.current_delay());
            record(status);
            client.write_all(out.as_bytes())?;
            client.flush()?;
            Ok(keep)
        }
        Action::Drop(bytes) => {
            if expect_continue {
                client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                client.flush()?;
            }
            let _ = body_to(reader, &mut Budget { remaining: bytes });
            record(0);
            // Abrupt: unread data in the socket makes the kernel send a RST.
            let _ = client.shutdown(Shutdown::Both);
            Ok(false)
        }
        Action::Forward => {
            if expect_continue && has_body {
                client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                client.flush()?;
            }
            let up = match TcpStream::connect_timeout(&local_addr(upstream), CONNECT_TIMEOUT) {
                Ok(up) => up,
                Err(_) => {
                    if has_body {
                        body_to(reader, &mut io::sink())?;
                    }
                    record(502);
                    client.write_all(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )?;
                    return Ok(false);
                }
            };
            up.set_read_timeout(Some(IO_TIMEOUT))?;
            up.set_write_timeout(Some(IO_TIMEOUT))?;
            let mut up_writer = io::BufWriter::new(up.try_clone()?);
            let hop_by_hop = hop_by_hop_headers(&head);
            let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {upstream}\r\n");
            for (name, value) in &head.headers {
                let lower = name.to_ascii_lowercase();
                if lower == "host" || lower == "expect" || hop_by_hop.contains(&lower) {
                    continue;
                }
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            if chunked {
                out.push_str("Transfer-Encoding: chunked\r\n");
            }
            out.push_str("Connection: close\r\n\r\n");
            up_writer.write_all(out.as_bytes())?;
            if has_body {
                body_to(reader, &mut up_writer)?;
            }
            up_writer.flush()?;
            drop(up_writer);

            let mut up_reader = BufReader::new(up);
            let mut response = None;
            for _ in 0..10 {
                let h = read_head(&mut up_reader, false)?
                    .ok_or_else(|| invalid("upstream closed without answering".to_string()))?;
                let status = h.status()?;
                if (100..200).contains(&status) && status != 101 {
                    continue; // interim response: the client got ours already
                }
                response = Some((h, status));
                break;
            }
            let (rh, status) =
                response.ok_or_else(|| invalid("too many interim responses".to_string()))?;
            let no_body = method == "HEAD" || status == 204 || status == 304;
            let up_chunked = !no_body && rh.is_chunked();
            let up_length = if no_body || up_chunked {
                None
            } else {
                rh.content_length()?
            };
            let until_close = !no_body && !up_chunked && up_length.is_none();
            let keep = keep_alive && !until_close;
            let hop_by_hop = hop_by_hop_headers(&rh);
            let mut out = format!("{}\r\n", rh.start_line);
            for (name, value) in &rh.headers {
                let lower = name.to_ascii_lowercase();
                if hop_by_hop.contains(&lower) {
                    continue;
                }
                if lower == "location" {
                    let rewritten = value.replacen(&format!("//{upstream}"), &format!("//{me}"), 1);
                    out.push_str(&format!("{name}: {rewritten}\r\n"));
                } else {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            if up_chunked {
                out.push_str("Transfer-Encoding: chunked\r\n");
            }
            out.push_str(if keep {
                "Connection: keep-alive\r\n\r\n"
            } else {
                "Connection: close\r\n\r\n"
            });
            thread::sleep(plan.current_delay());
            record(status);
            let mut client_writer = io::BufWriter::new(&mut *client);
            client_writer.write_all(out.as_bytes())?;
            if up_chunked {
                relay_chunked(&mut up_reader, &mut client_writer)?;
            } else if let Some(len) = up_length {
                copy_exact(&mut up_reader, &mut client_writer, len)?;
            } else if until_close {
                io::copy(&mut up_reader.take(1 << 32), &mut client_writer)?;
            }
            client_writer.flush()?;
            Ok(keep)
        }
    }
}

/// Lower-case names of the headers that do not cross a proxy.
fn hop_by_hop_headers(head: &Head) -> Vec<String> {
    let mut names: Vec<String> = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("connection") {
            names.extend(value.split(',').map(|t| t.trim().to_ascii_lowercase()));
        }
    }
    names
}
