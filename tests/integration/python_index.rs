//! The package-index client against a PEP 691 index served from the test on
//! 127.0.0.1, plus one real PyPI listing and download (cached across runs).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dallinger_oci::http::RetryPolicy;
use dallinger_oci::python::index::{
    fetch, fetch_all, http_client, list_files, select, Candidate, IndexConfig, IndexError,
    SelectError, SIMPLE_JSON,
};
use serde_json::json;

use crate::common::sha256_hex;

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server: one request per connection, answers from a table.

#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

fn answer(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        content_type: content_type.to_string(),
        body: body.into(),
    }
}

/// Each path answers its answers in turn, repeating the last one.
type Routes = BTreeMap<String, Vec<Answer>>;

/// A request served: its path and headers (names lowercased).
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: BTreeMap<String, String>,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Hits,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: Routes) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Hits = Arc::default();
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::spawn(move || serve(listener, routes, &stop, &hits))
        };
        Server {
            addr,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.hits().into_iter().map(|h| h.path).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, mut routes: Routes, stop: &AtomicBool, hits: &Hits) {
    // Bounded: a runaway client cannot keep the thread alive forever.
    let mut served = 0;
    while !stop.load(Ordering::SeqCst) && served < 1000 {
        match listener.accept() {
            Ok((stream, _)) => {
                served += 1;
                let _ = handle(stream, &mut routes, hits);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => break,
        }
    }
}

fn handle(mut stream: TcpStream, routes: &mut Routes, hits: &Hits) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    hits.lock().unwrap().push(Hit {
        path: path.clone(),
        headers,
    });
    let reply = match routes.get_mut(&path) {
        Some(answers) if answers.len() > 1 => answers.remove(0),
        Some(answers) => answers[0].clone(),
        None => answer(404, "text/plain", "not found"),
    };
    let reason = match reply.status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    write!(
        stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )?;
    stream.write_all(&reply.body)?;
    stream.flush()
}

// ---------------------------------------------------------------------------
// Fixtures

/// Bytes standing in for a wheel: only names and hashes matter here.
fn wheel_bytes(filename: &str) -> Vec<u8> {
    format!("PK fake wheel {filename}\n")
        .repeat(50)
        .into_bytes()
}

fn json_answer(value: serde_json::Value) -> Vec<Answer> {
    vec![answer(
        200,
        SIMPLE_JSON,
        serde_json::to_vec(&value).unwrap(),
    )]
}

fn bytes_answer(bytes: Vec<u8>) -> Vec<Answer> {
    vec![answer(200, "application/octet-stream", bytes)]
}

fn file_entry(filename: &str, url: &str, bytes: &[u8]) -> serde_json::Value {
    json!({
        "filename": filename,
        "url": url,
        "hashes": {"sha256": sha256_hex(bytes)},
        "requires-python": ">=3.8",
        "yanked": false,
        "size": bytes.len(),
    })
}

/// Three attempts per request, as `--retries 3` gives.
fn config(index: String, cache: &Path) -> IndexConfig {
    IndexConfig {
        index_url: index,
        extra_index_urls: Vec::new(),
        find_links: Vec::new(),
        cache_dir: cache.to_path_buf(),
        offline: false,
        retry: RetryPolicy::with_attempts(3),
    }
}

/// Regular files anywhere under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn any_tag(filename: &str) -> Option<usize> {
    filename.ends_with("-py3-none-any.whl").then_some(0)
}

const WHEEL: &str = "my_pkg-1.0-py3-none-any.whl";
const SDIST: &str = "my_pkg-1.0.tar.gz";

/// An index holding my-pkg 1.0 (a wheel at a relative URL, an sdist at an
/// absolute one, a yanked 0.9 wheel) and a tampered "bad" project.
fn my_pkg_index() -> (Server, Vec<u8>) {
    let wheel = wheel_bytes(WHEEL);
    let sdist = b"sdist bytes".to_vec();
    let mut routes = Routes::new();
    routes.insert(format!("/files/{WHEEL}"), bytes_answer(wheel.clone()));
    routes.insert(format!("/files/{SDIST}"), bytes_answer(sdist.clone()));
    let old = wheel_bytes("my_pkg-0.9-py3-none-any.whl");
    routes.insert(
        "/files/my_pkg-0.9-py3-none-any.whl".into(),
        bytes_answer(old.clone()),
    );
    let mut yanked = file_entry(
        "my_pkg-0.9-py3-none-any.whl",
        "/files/my_pkg-0.9-py3-none-any.whl",
        &old,
    );
    yanked["yanked"] = json!("broken metadata");
    routes.insert(
        "/simple/my-pkg/".into(),
        json_answer(json!({
            "meta": {"api-version": "1.1"},
            "name": "my-pkg",
            "files": [
                yanked,
                file_entry(WHEEL, &format!("../../files/{WHEEL}"), &wheel),
                // Absolute path on the same host; a fragment is dropped.
                file_entry(SDIST, &format!("/files/{SDIST}#sha256={}", sha256_hex(&sdist)), &sdist),
            ],
        })),
    );
    let good = wheel_bytes("bad-1.0-py3-none-any.whl");
    routes.insert(
        "/simple/bad/".into(),
        json_answer(json!({
            "meta": {"api-version": "1.0"},
            "files": [file_entry("bad-1.0-py3-none-any.whl", "../../files/bad-1.0-py3-none-any.whl", &good)],
        })),
    );
    let mut tampered = good.clone();
    tampered[0] ^= 0xff;
    routes.insert(
        "/files/bad-1.0-py3-none-any.whl".into(),
        bytes_answer(tampered),
    );
    (Server::start(routes), wheel)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn lists_resolves_relative_urls_and_fetches_into_the_cache() {
    let (server, wheel) = my_pkg_index();
    let cache = tempfile::tempdir().unwrap();
    let config = config(server.url("/simple/"), cache.path());
    let client = http_client().unwrap();

    let files = list_files("My_Pkg", &config, &client).unwrap();
    let hits = server.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/simple/my-pkg/", "the normalised name");
    assert_eq!(hits[0].headers["accept"], SIMPLE_JSON);
    assert!(hits[0].headers["user-agent"].starts_with("dallinger-oci/"));
    let names: Vec<&str> = files.iter().map(|c| c.filename.as_str()).collect();
    assert_eq!(names, ["my_pkg-0.9-py3-none-any.whl", WHEEL, SDIST]);
    assert_eq!(files[0].yanked.as_deref(), Some("broken metadata"));
    let chosen = &files[1];
    assert_eq!(chosen.url, server.url(&format!("/files/{WHEEL}")));
    assert_eq!(files[2].url, server.url(&format!("/files/{SDIST}")));
    assert_eq!(chosen.sha256.as_deref(), Some(sha256_hex(&wheel).as_str()));
    assert_eq!(chosen.requires_python.as_deref(), Some(">=3.8"));
    assert_eq!(chosen.size, Some(wheel.len() as u64));
    assert_eq!(chosen.index, server.url("/simple/"));
    assert_eq!(chosen.yanked, None);

    let picked = select(&files, "1.0.0", &any_tag, (3, 11, 2), true).unwrap();
    assert_eq!(picked, chosen);
    let path = fetch(
        picked,
        Some(&format!("sha256:{}", sha256_hex(&wheel))),
        &config,
        &client,
    )
    .unwrap();
    assert_eq!(
        path,
        cache
            .path()
            .join("sha256")
            .join(sha256_hex(&wheel))
            .join(WHEEL)
    );
    assert_eq!(fs::read(&path).unwrap(), wheel);
    assert!(
        files_under(&cache.path().join("tmp")).is_empty(),
        "no temporary file is left"
    );

    // A second fetch trusts the content-addressed path: no request.
    let before = server.hits().len();
    assert_eq!(fetch(picked, None, &config, &client).unwrap(), path);
    assert_eq!(server.hits().len(), before);

    // The yanked 0.9 is refused without an exact pin, allowed with one.
    let err = select(&files, "0.9", &any_tag, (3, 11, 2), false).unwrap_err();
    assert!(
        err.to_string().contains("yanked (broken metadata)"),
        "{err}"
    );
    assert!(select(&files, "0.9", &any_tag, (3, 11, 2), true).is_ok());
}

#[test]
fn a_tampered_file_is_refused_and_nothing_is_cached() {
    let (server, _) = my_pkg_index();
    let cache = tempfile::tempdir().unwrap();
    let config = config(server.url("/simple"), cache.path());
    let client = http_client().unwrap();
    let files = list_files("bad", &config, &client).unwrap();
    let listed = files[0].sha256.clone().unwrap();
    let err = fetch(&files[0], None, &config, &client).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IndexError::HashMismatch { .. }), "{err:?}");
    assert!(text.contains("bad-1.0-py3-none-any.whl"), "{text}");
    assert!(text.contains(&listed), "{text}");
    let mut tampered = wheel_bytes("bad-1.0-py3-none-any.whl");
    tampered[0] ^= 0xff;
    assert!(text.contains(&sha256_hex(&tampered)), "{text}");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());

    // The same when only --hash knows the right digest.
    let mut unhashed = files[0].clone();
    unhashed.sha256 = None;
    let err = fetch(&unhashed, Some(&listed), &config, &client).unwrap_err();
    assert!(err.to_string().contains("from --hash or the lock"), "{err}");
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());

    // A --hash that contradicts the index fails before any download.
    let before = server.hits().len();
    let other = "0".repeat(64);
    let err = fetch(&files[0], Some(&other), &config, &client).unwrap_err();
    assert!(matches!(err, IndexError::HashConflict { .. }), "{err:?}");
    assert_eq!(server.hits().len(), before);
}

#[test]
fn extra_indexes_and_find_links_are_concatenated_in_order() {
    let (main, _) = my_pkg_index();
    let extra_wheel = wheel_bytes("my_pkg-1.1-py3-none-any.whl");
    let mut routes = Routes::new();
    routes.insert(
        "/extra/my-pkg/".into(),
        json_answer(json!({"files": [file_entry(
            "my_pkg-1.1-py3-none-any.whl",
            "https://files.invalid/my_pkg-1.1-py3-none-any.whl",
            &extra_wheel
        )]})),
    );
    let extra = Server::start(routes);
    let links = tempfile::tempdir().unwrap();
    let local = wheel_bytes("My.Pkg-2.0-py3-none-any.whl");
    fs::write(links.path().join("My.Pkg-2.0-py3-none-any.whl"), &local).unwrap();
    fs::write(links.path().join("other-1.0-py3-none-any.whl"), b"x").unwrap();
    fs::write(links.path().join("notes.txt"), b"x").unwrap();

    let cache = tempfile::tempdir().unwrap();
    let mut config = config(main.url("/simple/"), cache.path());
    config.extra_index_urls = vec![extra.url("/extra/")];
    config.find_links = vec![links.path().to_path_buf()];
    let client = http_client().unwrap();
    let files = list_files("my-pkg", &config, &client).unwrap();
    let names: Vec<&str> = files.iter().map(|c| c.filename.as_str()).collect();
    assert_eq!(
        names,
        [
            "my_pkg-0.9-py3-none-any.whl",
            WHEEL,
            SDIST,
            "my_pkg-1.1-py3-none-any.whl",
            "My.Pkg-2.0-py3-none-any.whl"
        ]
    );
    assert_eq!(files[3].index, extra.url("/extra/"));
    let found = &files[4];
    assert_eq!(found.sha256.as_deref(), Some(sha256_hex(&local).as_str()));
    assert_eq!(found.size, Some(local.len() as u64));

    // A find-links wheel is verified and copied into the cache.
    let picked = select(&files, "2.0", &any_tag, (3, 12, 0), true).unwrap();
    let path = fetch(picked, None, &config, &client).unwrap();
    assert!(path.starts_with(cache.path().join("sha256")), "{path:?}");
    assert_eq!(fs::read(path).unwrap(), local);
}

#[test]
fn a_missing_package_has_no_files_and_a_failing_index_is_an_error() {
    let mut routes = Routes::new();
    routes.insert(
        "/simple/flaky/".into(),
        vec![answer(503, "text/plain", "busy")],
    );
    routes.insert(
        "/simple/html/".into(),
        vec![answer(200, "text/html", "<html></html>")],
    );
    let server = Server::start(routes);
    let cache = tempfile::tempdir().unwrap();
    let config = config(server.url("/simple/"), cache.path());
    let client = http_client().unwrap();

    assert_eq!(list_files("nothing-here", &config, &client).unwrap(), []);
    let err = select(&[], "1.0", &any_tag, (3, 11, 0), true).unwrap_err();
    assert!(matches!(err, SelectError::NoFiles { .. }));

    let err = list_files("flaky", &config, &client).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&server.url("/simple/")), "{text}");
    assert!(text.contains("flaky"), "{text}");
    assert!(text.contains("503"), "{text}");
    let tries = server
        .paths()
        .iter()
        .filter(|p| *p == "/simple/flaky/")
        .count();
    assert_eq!(tries, 3, "5xx answers are retried, boundedly");

    let err = list_files("html", &config, &client).unwrap_err();
    assert!(err.to_string().contains("PEP 691"), "{err}");
}

#[test]
fn downloads_are_retried_on_5xx() {
    let wheel = wheel_bytes("retry-1.0-py3-none-any.whl");
    let mut routes = Routes::new();
    routes.insert(
        "/files/retry-1.0-py3-none-any.whl".into(),
        vec![
            answer(503, "text/plain", "busy"),
            answer(200, "application/octet-stream", wheel.clone()),
        ],
    );
    let server = Server::start(routes);
    let cache = tempfile::tempdir().unwrap();
    let config = config(server.url("/simple/"), cache.path());
    let candidate = Candidate {
        filename: "retry-1.0-py3-none-any.whl".into(),
        url: server.url("/files/retry-1.0-py3-none-any.whl"),
        sha256: Some(sha256_hex(&wheel)),
        requires_python: None,
        yanked: None,
        size: Some(wheel.len() as u64),
        index: server.url("/simple/"),
    };
    let path = fetch(&candidate, None, &config, &http_client().unwrap()).unwrap();
    assert_eq!(fs::read(path).unwrap(), wheel);
    assert_eq!(server.paths().len(), 2);
}

#[test]
fn an_unreachable_index_says_what_to_do() {
    // A port nothing listens on any more.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cache = tempfile::tempdir().unwrap();
    let index = format!("http://127.0.0.1:{port}/simple/");
    let config = config(index.clone(), cache.path());
    let err = list_files("six", &config, &http_client().unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IndexError::Unreachable { .. }), "{err:?}");
    assert!(
        text.starts_with(&format!("cannot reach the package index {index}: ")),
        "{text}"
    );
    assert!(
        text.ends_with("check --index-url or use --find-links/--offline with a warm cache"),
        "{text}"
    );
    assert!(text.contains("six"), "{text}");
}

#[test]
fn offline_uses_the_warm_cache_and_no_network() {
    let (server, wheel) = my_pkg_index();
    let cache = tempfile::tempdir().unwrap();
    let online = config(server.url("/simple/"), cache.path());
    let client = http_client().unwrap();
    let files = list_files("my-pkg", &online, &client).unwrap();
    let picked = select(&files, "1.0", &any_tag, (3, 11, 2), true).unwrap();
    let path = fetch(picked, None, &online, &client).unwrap();

    let before = server.hits().len();
    let offline = IndexConfig {
        offline: true,
        ..online.clone()
    };
    let cached = list_files("MY_PKG", &offline, &client).unwrap();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0].filename, WHEEL);
    assert_eq!(
        cached[0].sha256.as_deref(),
        Some(sha256_hex(&wheel).as_str())
    );
    assert_eq!(
        cached[0].requires_python.as_deref(),
        Some(">=3.8"),
        "what the index said is remembered"
    );
    let again = select(&cached, "1.0", &any_tag, (3, 11, 2), true).unwrap();
    assert_eq!(fetch(again, None, &offline, &client).unwrap(), path);
    // The candidate as listed online also resolves from the cache offline.
    assert_eq!(fetch(picked, None, &offline, &client).unwrap(), path);
    // Versions not in the cache are reported from what it holds.
    let err = select(&cached, "0.9", &any_tag, (3, 11, 2), true).unwrap_err();
    assert!(
        err.to_string().contains("versions that exist: 1.0"),
        "{err}"
    );
    assert_eq!(server.hits().len(), before, "offline means no request");

    // Cold: nothing listed, and a fetch says what is missing and why.
    let cold_dir = tempfile::tempdir().unwrap();
    let cold = IndexConfig {
        cache_dir: cold_dir.path().to_path_buf(),
        ..offline
    };
    assert_eq!(list_files("my-pkg", &cold, &client).unwrap(), []);
    let err = fetch(picked, None, &cold, &client).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IndexError::OfflineMissing { .. }), "{err:?}");
    assert!(text.contains(WHEEL), "{text}");
    assert!(text.contains("the network is off"), "{text}");
    assert_eq!(server.hits().len(), before, "offline means no request");
}

#[test]
fn fetch_all_keeps_input_order_and_reports_the_first_error() {
    let mut routes = Routes::new();
    let mut items = Vec::new();
    for i in 0..6 {
        let name = format!("p{i}-1.0-py3-none-any.whl");
        let bytes = wheel_bytes(&name);
        routes.insert(format!("/files/{name}"), bytes_answer(bytes.clone()));
        items.push((name, bytes));
    }
    let server = Server::start(routes);
    let cache = tempfile::tempdir().unwrap();
    let config = config(server.url("/simple/"), cache.path());
    let client = http_client().unwrap();
    let candidates: Vec<(Candidate, Option<String>)> = items
        .iter()
        .map(|(name, bytes)| {
            (
                Candidate {
                    filename: name.clone(),
                    url: server.url(&format!("/files/{name}")),
                    sha256: None,
                    requires_python: None,
                    yanked: None,
                    size: None,
                    index: server.url("/simple/"),
                },
                Some(sha256_hex(bytes)),
            )
        })
        .collect();
    let paths = fetch_all(&candidates, &config, &client, 3).unwrap();
    assert_eq!(paths.len(), items.len());
    for (path, (name, bytes)) in paths.iter().zip(&items) {
        assert!(path.ends_with(name), "{path:?}");
        assert_eq!(&fs::read(path).unwrap(), bytes);
    }

    let mut broken = candidates.clone();
    broken[4].1 = Some("1".repeat(64));
    broken[4].0.url = server.url("/files/missing.whl");
    broken[4].0.filename = "missing-1.0-py3-none-any.whl".into();
    let err = fetch_all(&broken, &config, &client, 2).unwrap_err();
    assert!(
        err.to_string().contains("missing-1.0-py3-none-any.whl"),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
}

/// The one test that talks to PyPI: `six` is small. The wheel is cached
/// across runs under $DALLINGER_OCI_TEST_CACHE (or ~/.cache/dallinger-oci-tests).
#[test]
fn real_pypi_lists_and_fetches_six() {
    const SIX: &str = "six-1.16.0-py2.py3-none-any.whl";
    const SIX_SHA256: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";
    let config = IndexConfig::new(crate::common::test_cache_dir().join("wheels"));
    let client = http_client().unwrap();
    let files = list_files("Six", &config, &client).unwrap();
    let listed = files
        .iter()
        .find(|c| c.filename == SIX)
        .expect("six 1.16.0 wheel on PyPI");
    assert_eq!(listed.sha256.as_deref(), Some(SIX_SHA256));
    assert!(listed.url.starts_with("https://files.pythonhosted.org/"));
    let picked = select(
        &files,
        "1.16.0",
        &|f: &str| f.ends_with("-py2.py3-none-any.whl").then_some(0),
        (3, 11, 2),
        true,
    )
    .unwrap();
    assert_eq!(picked.filename, SIX);
    let path = fetch(picked, Some(SIX_SHA256), &config, &client).unwrap();
    assert_eq!(path, config.cache_path(SIX_SHA256, SIX));
    let bytes = fs::read(&path).unwrap();
    assert_eq!(sha256_hex(&bytes), SIX_SHA256);
    assert_eq!(&bytes[..2], b"PK");
}

#[test]
fn index_credentials_go_to_files_on_the_same_host_only() {
    let (server, wheel) = my_pkg_index();
    let cache = tempfile::tempdir().unwrap();
    let index = server
        .url("/simple/")
        .replace("http://", "http://alice:p%40ss@");
    let config = config(index, cache.path());
    let client = http_client().unwrap();
    let files = list_files("my-pkg", &config, &client).unwrap();
    let picked = select(&files, "1.0", &any_tag, (3, 11, 2), true).unwrap();
    assert!(!picked.url.contains("alice"), "{}", picked.url);
    assert!(!picked.index.contains("p%40ss"), "{}", picked.index);
    assert_eq!(
        fs::read(fetch(picked, None, &config, &client).unwrap()).unwrap(),
        wheel
    );
    let expected = format!("Basic {}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("alice:p@ss")
    });
    let hits = server.hits();
    assert_eq!(hits.len(), 2);
    for hit in &hits {
        assert_eq!(hit.headers.get("authorization"), Some(&expected), "{hit:?}");
    }

    // A file on another host (here: another port) gets no credentials.
    let elsewhere_bytes = wheel_bytes("far-1.0-py3-none-any.whl");
    let mut routes = Routes::new();
    routes.insert(
        "/far-1.0-py3-none-any.whl".into(),
        bytes_answer(elsewhere_bytes.clone()),
    );
    let elsewhere = Server::start(routes);
    let far = Candidate {
        filename: "far-1.0-py3-none-any.whl".into(),
        url: elsewhere.url("/far-1.0-py3-none-any.whl"),
        sha256: Some(sha256_hex(&elsewhere_bytes)),
        requires_python: None,
        yanked: None,
        size: None,
        index: picked.index.clone(),
    };
    fetch(&far, None, &config, &client).unwrap();
    let hits = elsewhere.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].headers.get("authorization"), None);
}
