//! Hostile packages: wheels, bytecode staging, git credentials, Debian
//! locks, package indexes that throttle, fail or hold credentials.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::registry::{Answer, Fake};
use crate::common::git::git;
use crate::common::*;

/// Debian's Python installs into this purelib.
const SITE: &str = "usr/local/lib/python3.11/dist-packages";

// ---------------------------------------------------------------------------
// Wheels and experiments
// ---------------------------------------------------------------------------

/// A wheel `NAME-1.0-py3-none-any.whl` in `dir` (see [`write_versioned_wheel`]).
fn write_wheel(dir: &Path, name: &str, files: &[(&str, &[u8])], sizes: bool) -> PathBuf {
    write_versioned_wheel(dir, name, "1.0", files, sizes)
}

/// Sets the uncompressed size the zip's local and central headers declare
/// for `member` (32-bit fields, no zip64).
fn declare_size(wheel: &Path, member: &str, size: u32) {
    let mut bytes = fs::read(wheel).unwrap();
    let name = member.as_bytes();
    let mut patched = 0;
    let mut i = 0;
    while i + 46 <= bytes.len() {
        let sig = &bytes[i..i + 4];
        let le16 = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        // Local header: name at 30, uncompressed size at 22; central
        // header: name at 46, uncompressed size at 24.
        let (name_at, size_at) = match sig {
            [0x50, 0x4b, 0x03, 0x04] if le16(&bytes, i + 26) == name.len() => (30, 22),
            [0x50, 0x4b, 0x01, 0x02] if le16(&bytes, i + 28) == name.len() => (46, 24),
            _ => {
                i += 1;
                continue;
            }
        };
        if bytes.get(i + name_at..i + name_at + name.len()) == Some(name) {
            bytes[i + size_at..i + size_at + 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
        i += 1;
    }
    assert_eq!(patched, 2, "{member}: both headers patched");
    fs::write(wheel, bytes).unwrap();
}

/// The golden experiment asking for `name==1.0`.
fn experiment(sandbox: &Sandbox, dir: &str, name: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", dir);
    fs::write(exp.join("requirements.txt"), format!("{name}\n")).unwrap();
    fs::write(exp.join("constraints.txt"), format!("{name}==1.0\n")).unwrap();
    exp
}

/// `build EXP --base BASE` with only `links` for wheels, plus `args`.
fn build_command(
    sandbox: &Sandbox,
    exp: &Path,
    base: &str,
    links: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(exp)
        .args(["--base", base, "--index-url", "", "--find-links"])
        .arg(links)
        .args(args);
    cmd
}

fn build_digest(sandbox: &Sandbox, exp: &Path, base: &str, links: &Path, args: &[&str]) -> String {
    let (stdout, _) = succeeds(run(&mut build_command(sandbox, exp, base, links, args)));
    printed_digest(&stdout)
}

/// The bytes of `path` in the image of the OCI layout `dir` (the topmost
/// layer that has it).
fn file_in_image(dir: &Path, path: &str) -> Option<Vec<u8>> {
    let (_, manifest, _) = layout_image(dir);
    for layer in manifest["layers"].as_array().unwrap().iter().rev() {
        let blob = blob(dir, layer["digest"].as_str().unwrap());
        let gz = flate2::read::GzDecoder::new(fs::File::open(blob).unwrap());
        let mut tar = tar::Archive::new(gz);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some(path) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                return Some(bytes);
            }
        }
    }
    None
}

/// Every regular file under `dir` (relative path → bytes).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The files under a `wheels-unpacked` directory (where older versions
/// unpacked wheels) of `sandbox`'s cache that end in `suffix`.
fn unpacked_copies(sandbox: &Sandbox, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut stack = vec![sandbox.path("cache")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.to_string_lossy().contains("wheels-unpacked")
                && p.to_string_lossy().ends_with(suffix)
            {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

// ---------------------------------------------------------------------------
// A hostile base: the Python base with files of ours on top
// ---------------------------------------------------------------------------

/// The Python base plus one layer holding `files`, as an OCI layout under
/// `dir`; returns the `--base` argument.
fn python_base_with(dir: &Path, files: &[(&str, &[u8])]) -> String {
    use dallinger_oci::base::{self, BaseRef};
    use dallinger_oci::image::store::{BlobStore, LayerDescription};
    use dallinger_oci::image::{layout, Image};
    use dallinger_oci_layers::{Content, KeyHasher, LayerTree};
    let store = BlobStore::open(&dir.join("store")).unwrap();
    let base = base::resolve(
        &BaseRef::parse(&python_base_layout()).unwrap(),
        &store,
        "linux/amd64",
        946_684_800,
    )
    .unwrap();
    let mut tree = LayerTree::new();
    for (path, bytes) in files {
        tree.add_file(path, Content::Bytes(bytes.to_vec()), false)
            .unwrap();
    }
    let layer = store
        .produce(LayerDescription {
            kind: "hostile",
            key: KeyHasher::new(),
            created_by: "hostile layer".into(),
            fill: Box::new(|writer| writer.tree(&tree)),
        })
        .unwrap()
        .layer;
    let mut config = base.config.clone();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(layer.blob.diff_id));
    if let Some(history) = config["history"].as_array_mut() {
        history.push(serde_json::json!({"created_by": "hostile layer"}));
    }
    let mut layers = base.layers;
    layers.push(layer);
    let image = Image::assemble(&store, &config, layers).unwrap();
    let out = dir.join("layout");
    layout::write(&store, &image, &out, "base").unwrap();
    fs::remove_dir_all(dir.join("store")).unwrap();
    format!("oci:{}:base", out.display())
}

/// A `compileall` that rewrites every `.py` file it is given in place,
/// keeping its size (so no size check sees it), and compiles nothing.
const HOSTILE_COMPILEALL: &[u8] = b"import os, sys
for root, dirs, files in os.walk(sys.argv[-1]):
    for name in files:
        if name.endswith('.py'):
            with open(os.path.join(root, name), 'r+b') as f:
                data = f.read()
                f.seek(0)
                f.write(data.replace(b'1', b'6'))
";

const TINY_INIT: &[u8] = b"VALUE = 1\n";

/// `links/tinypkg-1.0-py3-none-any.whl`, one module saying `VALUE = 1`.
fn tiny_wheel(links: &Path) {
    write_wheel(
        links,
        "tinypkg",
        &[("tinypkg/__init__.py", TINY_INIT)],
        true,
    );
}

/// The digest of a build asking for tinypkg with a cache of its own.
fn cold_build_digest(base: &str, links: &Path) -> String {
    let cold = Sandbox::new();
    let exp = experiment(&cold, "app", "tinypkg");
    build_digest(&cold, &exp, base, links, &["--tag", "t"])
}

/// The one-line error of building, in `sandbox`, an experiment `dir` asking
/// for `name` from `links`, and the build's peak memory in KiB.
fn refusal(sandbox: &Sandbox, dir: &str, name: &str, base: &str, links: &Path) -> (String, u64) {
    let exp = experiment(sandbox, dir, name);
    let (out, peak_kib) = run_measuring_memory(
        &build_command(sandbox, &exp, base, links, &["--tag", "t"]),
        &sandbox.path(&format!("{dir}.memory")),
    );
    (one_line_error(&out), peak_kib)
}

/// A base whose interpreter rewrites the sources `--compile-bytecode`
/// stages for it cannot change what this or a later build ships: the
/// image has the wheel's bytes, and the next build without
/// `--compile-bytecode` gives the digest of a cold-cache build.
#[test]
fn a_hostile_compileall_cannot_change_what_later_builds_ship() {
    let work = Sandbox::new();
    let base = python_base_with(
        &work.path("hostile-base"),
        &[("usr/lib/python3.11/compileall.py", HOSTILE_COMPILEALL)],
    );
    let links = work.path("links");
    tiny_wheel(&links);

    let warm = Sandbox::new();
    let exp = experiment(&warm, "app", "tinypkg");
    build_digest(
        &warm,
        &exp,
        &base,
        &links,
        &["--compile-bytecode", "--tag", "t", "-o", "oci:out-pyc"],
    );
    let init = format!("{SITE}/tinypkg/__init__.py");
    assert_eq!(
        file_in_image(&warm.path("out-pyc"), &init).as_deref(),
        Some(TINY_INIT),
        "the image ships the wheel's source, not what the base's compileall wrote"
    );
    for copy in unpacked_copies(&warm, "tinypkg/__init__.py") {
        assert_eq!(fs::read(&copy).unwrap(), TINY_INIT, "{}", copy.display());
    }
    let warm_digest = build_digest(&warm, &exp, &base, &links, &["--tag", "t", "-o", "oci:out"]);
    assert_eq!(
        file_in_image(&warm.path("out"), &init).as_deref(),
        Some(TINY_INIT)
    );
    assert_eq!(cold_build_digest(&base, &links), warm_digest);
}

/// Wheels are never unpacked: a build leaves no unpacked copy in its cache,
/// and one that an older version left there, altered from outside, is
/// never read: the image has the wheel's bytes and the digest of a
/// cold-cache build.
#[test]
fn an_altered_unpack_cache_left_by_an_older_version_is_never_read() {
    let base = python_base_layout();
    let work = Sandbox::new();
    let links = work.path("links");
    tiny_wheel(&links);
    let cold_digest = cold_build_digest(&base, &links);

    let warm = Sandbox::new();
    let exp = experiment(&warm, "app", "tinypkg");
    // Another SOURCE_DATE_EPOCH: another layer, made again from the wheel.
    let mut first = build_command(&warm, &exp, &base, &links, &["--tag", "t"]);
    succeeds(run(first.env("SOURCE_DATE_EPOCH", "1000000000")));
    assert_eq!(unpacked_copies(&warm, ""), Vec::<PathBuf>::new());
    // The layout the unpack cache had: wheels-unpacked/<sha256 of the
    // wheel>/unpacked/<member>.
    let wheel = links.join("tinypkg-1.0-py3-none-any.whl");
    let sha = hex::encode(Sha256::digest(fs::read(&wheel).unwrap()));
    let planted = warm
        .path("cache")
        .join("wheels-unpacked")
        .join(sha)
        .join("unpacked/tinypkg/__init__.py");
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    fs::write(&planted, b"VALUE = 6\n").unwrap();

    let (stdout, _) = succeeds(run(&mut build_command(
        &warm,
        &exp,
        &base,
        &links,
        &["--tag", "t", "-o", "oci:out"],
    )));
    assert_eq!(printed_digest(&stdout), cold_digest);
    assert_eq!(
        file_in_image(&warm.path("out"), &format!("{SITE}/tinypkg/__init__.py")).as_deref(),
        Some(TINY_INIT)
    );
}

// ---------------------------------------------------------------------------
// Zip bombs and member names
// ---------------------------------------------------------------------------

/// Runs `cmd` under GNU time and returns its output and its peak resident
/// memory in KiB (the process's own: not the test's, which a child
/// spawned from it would report as its own before its exec).
fn run_measuring_memory(cmd: &Command, report: &Path) -> (Output, u64) {
    let mut timed = Command::new(require_tool("time"));
    timed
        .args(["-f", "%M", "-o"])
        .arg(report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let out = run(&mut timed);
    let text = fs::read_to_string(report).unwrap();
    let peak = text.lines().last().unwrap().trim().parse().unwrap();
    (out, peak)
}

/// Members that inflate past what the wheel declares, or declare more than
/// a wheel may unpack to, are refused with one line naming the wheel and
/// the member, with memory bounded and nothing left in the unpack cache.
#[test]
fn zip_bombs_are_refused_naming_the_wheel_and_member() {
    let base = python_base_layout();
    let work = Sandbox::new();
    let sandbox = Sandbox::new();

    // 1 GiB of zeros (1 MiB compressed); RECORD gives no size and the zip
    // headers say 1 KiB.
    let links = work.path("bomb");
    let zeros = vec![0u8; 1 << 30];
    let wheel = write_wheel(
        &links,
        "bomb",
        &[("bomb/__init__.py", b""), ("bomb/zeros.bin", &zeros)],
        false,
    );
    drop(zeros);
    declare_size(&wheel, "bomb/zeros.bin", 1024);
    let (err, peak_kib) = refusal(&sandbox, "bomb", "bomb", &base, &links);
    assert!(
        err.contains("bomb-1.0-py3-none-any.whl") && err.contains("\"bomb/zeros.bin\""),
        "{err}"
    );
    assert!(err.contains("declared"), "{err}");
    println!("peak memory refusing a 1 GiB member: {peak_kib} KiB");
    assert!(peak_kib < 256 << 10, "peak memory {peak_kib} KiB");
    assert_eq!(unpacked_copies(&sandbox, ""), Vec::<PathBuf>::new());

    // METADATA is read into memory: 64 MiB of it, declared as 1 KiB.
    let links = work.path("metadata");
    let mut metadata = b"Metadata-Version: 2.1\nName: meta\nVersion: 1.0\n\n".to_vec();
    metadata.resize(64 << 20, b' ');
    let wheel = write_wheel(
        &links,
        "meta",
        &[
            ("meta/__init__.py", b""),
            ("meta-1.0.dist-info/METADATA", &metadata),
        ],
        true,
    );
    declare_size(&wheel, "meta-1.0.dist-info/METADATA", 1024);
    let (err, peak_kib) = refusal(&sandbox, "meta", "meta", &base, &links);
    assert!(
        err.contains("meta-1.0-py3-none-any.whl")
            && err.contains("\"meta-1.0.dist-info/METADATA\"")
            && err.contains("declared"),
        "{err}"
    );
    println!("peak memory refusing a 64 MiB METADATA: {peak_kib} KiB");
    assert!(peak_kib < 64 << 10, "less than the member: {peak_kib} KiB");

    // Members that together declare more than a wheel may unpack to (each
    // is one byte, so nothing but the declaration could stop them).
    let links = work.path("declared");
    let names: Vec<String> = (0..5).map(|i| format!("huge/part{i}.bin")).collect();
    let files: Vec<(&str, &[u8])> = std::iter::once(("huge/__init__.py", &b""[..]))
        .chain(names.iter().map(|n| (n.as_str(), &b"x"[..])))
        .collect();
    let wheel = write_wheel(&links, "huge", &files, false);
    for name in &names {
        declare_size(&wheel, name, 0xF000_0000);
    }
    let (err, _) = refusal(&sandbox, "huge", "huge", &base, &links);
    assert!(
        err.contains("huge-1.0-py3-none-any.whl")
            && err.contains("\"huge/part4.bin\": with it the members declare more than 17179869184 bytes uncompressed, the most a wheel may unpack to"),
        "{err}"
    );
    assert_eq!(unpacked_copies(&sandbox, ""), Vec::<PathBuf>::new());
}

/// Member names that leave the wheel or its install scheme are refused
/// with one line naming the wheel and the member.
#[test]
fn member_names_that_escape_are_refused() {
    let base = python_base_layout();
    let work = Sandbox::new();
    let sandbox = Sandbox::new();
    for (i, (name, reason)) in [
        ("evil/../x.py", "the path contains '..'"),
        ("/etc/passwd", "the path is absolute"),
        ("evil-1.0.data/scripts/../../x", "the path contains '..'"),
        ("evil-1.0.data/lib/x.py", "unknown .data key \"lib\""),
    ]
    .into_iter()
    .enumerate()
    {
        let links = work.path(&format!("links{i}"));
        write_wheel(
            &links,
            "evil",
            &[("evil/__init__.py", b""), (name, b"x")],
            true,
        );
        let (err, _) = refusal(&sandbox, &format!("app{i}"), "evil", &base, &links);
        assert!(
            err.contains("evil-1.0-py3-none-any.whl")
                && err.contains(&format!("{name:?}"))
                && err.contains(reason),
            "{err}"
        );
    }
    // The escaping names were refused before anything was unpacked.
    assert_eq!(unpacked_copies(&sandbox, "passwd"), Vec::<PathBuf>::new());
    assert_eq!(unpacked_copies(&sandbox, "/x"), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------
// git credentials
// ---------------------------------------------------------------------------

/// A bare repository `root/tinygit.git` with a setuptools package `tinygit`
/// on `main`.
fn served_repository(root: &Path) {
    let src = root.join("src");
    fs::create_dir_all(src.join("tinygit")).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    fs::write(
        src.join("pyproject.toml"),
        setuptools_pyproject("tinygit", "0.1.0", ""),
    )
    .unwrap();
    fs::write(src.join("tinygit/__init__.py"), "VALUE = 'served'\n").unwrap();
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "one"]);
    git(root, &["clone", "-q", "--bare", "src", "tinygit.git"]);
}

/// The git cache (the directory `git` holding `repos`) under `cache`.
fn git_cache_dir(cache: &Path) -> PathBuf {
    let mut stack = vec![cache.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.file_name().is_some_and(|n| n == "git") && d.join("repos").is_dir() {
            return d;
        }
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() && !p.ends_with("rootfs") && !p.ends_with("blobs") {
                stack.push(p);
            }
        }
    }
    panic!("no git cache under {}", cache.display());
}

/// What a fake git server saw of one request.
#[derive(Debug, Clone)]
struct Hit {
    target: String,
    authorization: Option<String>,
}

/// A git smart-HTTP server (`git http-backend` behind Basic auth) on
/// `address`, or one that redirects every request to `redirect` + the same
/// path. It stops when dropped (and after two minutes in any case).
struct GitServer {
    port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitServer {
    fn start(
        address: &str,
        root: PathBuf,
        authorization: String,
        redirect: Option<String>,
    ) -> GitServer {
        let listener = TcpListener::bind(format!("{address}:0")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve_git(
                                stream,
                                &root,
                                &authorization,
                                redirect.as_deref(),
                                &hits,
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        GitServer {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_git(
    stream: TcpStream,
    root: &Path,
    authorization: &str,
    redirect: Option<&str>,
    hits: &Mutex<Vec<Hit>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    hits.lock().unwrap().push(Hit {
        target: target.clone(),
        authorization: header("authorization"),
    });
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|l| l.parse::<u64>().ok()) {
        reader.by_ref().take(len).read_to_end(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    if let Some(to) = redirect {
        return write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {to}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    if header("authorization").as_deref() != Some(authorization) {
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new(require_tool("git"));
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "user")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (var, name) in [
        ("CONTENT_TYPE", "content-type"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = header(name) {
            cgi.env(var, v);
        }
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output()?;
    let _ = writer.join();
    let text = output.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap_or((text.len(), 0));
    let head = String::from_utf8_lossy(&text[..split.0]).into_owned();
    let content = &text[split.0 + split.1..];
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => response.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    out.write_all(content)
}

/// A directory to put first on PATH and as GIT_EXEC_PATH whose `git` and
/// `git-remote-*` helpers append their command line to `log` and then run
/// the real ones (everything else of git's exec path linked as it is), so
/// every git process the build starts is recorded.
fn recording_git(dir: &Path, log: &Path) -> PathBuf {
    let real = require_tool("git");
    let exec_path = PathBuf::from(ok(Command::new(&real).arg("--exec-path")).trim());
    let wrappers = dir.join("git-wrappers");
    fs::create_dir_all(&wrappers).unwrap();
    let wrap = |name: &str, target: &Path| {
        let script = format!(
            "#!/bin/sh\n{{ printf '%s' \"$0\"; for a in \"$@\"; do printf ' %s' \"$a\"; done; \
             printf '\\n'; }} >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            target.display()
        );
        let path = wrappers.join(name);
        fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    for entry in fs::read_dir(&exec_path).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "git" || name.starts_with("git-remote-") {
            wrap(&name, &entry.path());
        } else {
            std::os::unix::fs::symlink(entry.path(), wrappers.join(&name)).unwrap();
        }
    }
    if !wrappers.join("git").exists() {
        wrap("git", &real);
    }
    wrappers
}

/// Every command line of a process on this machine that holds `needle`,
/// sampled every 10 ms until `stop`.
fn watch_command_lines(
    needle: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
                    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if text.contains(needle.as_str()) {
                        seen.insert(text);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    })
}

/// A git requirement with a credential in its URL: the credential reaches
/// the server (Basic auth), but no git process ever has it on its command
/// line, no file of the cache holds it, and a server that redirects to
/// another host gets it sent nowhere.
#[test]
fn git_credentials_reach_the_server_but_never_a_command_line() {
    // Unique to this process: the watcher reads every command line on the
    // machine, other tests' (and other test runs') included.
    let secret = format!("s3cret{}", std::process::id());
    let builder = python_builder_layout();
    let sandbox = Sandbox::new();
    let root = sandbox.path("served");
    served_repository(&root);
    let authorization = format!(
        "Basic {}",
        STANDARD.encode(format!("oauth-user:{secret}/token"))
    );
    let server = GitServer::start("127.0.0.1", root.clone(), authorization.clone(), None);
    let other = GitServer::start("127.0.0.2", root.clone(), authorization.clone(), None);
    let redirector = GitServer::start(
        "127.0.0.1",
        root.clone(),
        authorization.clone(),
        Some(format!("http://127.0.0.2:{}", other.port)),
    );
    let log = sandbox.path("git-argv.log");
    let wrappers = recording_git(&sandbox.path("bin"), &log);
    let path = format!(
        "{}:{}",
        wrappers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lock = |name: &str, port: u16| -> Output {
        let exp = sandbox.experiment("golden", name);
        fs::write(exp.join("requirements.txt"), "tinygit\n").unwrap();
        fs::write(
            exp.join("constraints.txt"),
            format!(
                "tinygit @ git+http://oauth-user:{secret}%2Ftoken@127.0.0.1:{port}/tinygit.git@main\n"
            ),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_command_lines(secret.clone(), stop.clone());
        let out = run(sandbox
            .cmd()
            .env_remove("DALLINGER_OCI_NO_DEPS")
            .env("PATH", &path)
            .env("GIT_EXEC_PATH", &wrappers)
            .arg("lock")
            .arg(&exp)
            .args(["--base", &python_base_layout(), "--index-url", ""])
            .args(["--build-sdists", "--builder-base", &builder]));
        stop.store(true, Ordering::SeqCst);
        let seen = watcher.join().unwrap();
        assert!(
            seen.is_empty(),
            "command lines with the credential: {seen:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&secret));
        out
    };

    let (_, stderr) = succeeds(lock("served", server.port));
    assert!(stderr.contains("Building tinygit"), "{stderr}");
    let hits = server.hits();
    assert!(
        hits.iter().any(|h| h.target.ends_with("/git-upload-pack")
            && h.authorization.as_deref() == Some(authorization.as_str())),
        "{hits:?}"
    );
    let lock_text = fs::read_to_string(sandbox.path("served/pylock.dallinger-oci.toml")).unwrap();
    assert!(
        lock_text.contains(&format!(
            "url = \"http://127.0.0.1:{}/tinygit.git\"",
            server.port
        )),
        "{lock_text}"
    );
    let argv = fs::read_to_string(&log).unwrap();
    assert!(argv.contains(" fetch "), "{argv}");
    assert!(argv.contains("remote-http"), "{argv}");
    assert!(!argv.contains(&secret), "{argv}");
    let git_cache = git_cache_dir(&sandbox.path("cache"));
    for (file, bytes) in files_under(&git_cache) {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the cache's {file} holds the credential"
        );
    }

    // A redirect to another host: it is followed, but gets no credential.
    let err = one_line_error(&lock("redirected", redirector.port));
    assert!(
        err.contains(&format!(
            "cannot reach the git repository http://127.0.0.1:{}/tinygit.git",
            redirector.port
        )),
        "{err}"
    );
    let hits = other.hits();
    assert!(!hits.is_empty(), "the redirect was not followed");
    assert!(hits.iter().all(|h| h.authorization.is_none()), "{hits:?}");
    assert!(!fs::read_to_string(&log).unwrap().contains(&secret));
}

// ---------------------------------------------------------------------------
// Package indexes that throttle, fail or hold credentials
// ---------------------------------------------------------------------------

const INDEX_PAGE: &str = "/simple/tinypkg/";
const INDEX_WHEEL: &str = "/files/tinypkg-1.0-py3-none-any.whl";

/// A PEP 691 index serving tinypkg (the wheel of [`tiny_wheel`], in
/// `links`): its page lists the wheel at [`INDEX_WHEEL`] plus `query`. Each
/// request for the page takes the next status of `page`, each for the
/// wheel the next of `wheel` (the last repeats); 200 is the real answer,
/// 429 comes with `Retry-After: 1`.
fn scripted_index(links: &Path, query: &str, page: &'static [u16], wheel: &'static [u16]) -> Fake {
    tiny_wheel(links);
    let bytes = fs::read(links.join("tinypkg-1.0-py3-none-any.whl")).unwrap();
    let listing = serde_json::json!({
        "meta": {"api-version": "1.1"},
        "name": "tinypkg",
        "files": [{
            "filename": "tinypkg-1.0-py3-none-any.whl",
            "url": format!("{INDEX_WHEEL}{query}"),
            "hashes": {"sha256": hex::encode(Sha256::digest(&bytes))},
            "size": bytes.len(),
        }],
    })
    .to_string();
    let served = [AtomicUsize::new(0), AtomicUsize::new(0)];
    Fake::http(move |seen| {
        let (script, body, kind) = match seen.path.as_str() {
            INDEX_PAGE => (page, listing.as_bytes(), 0),
            INDEX_WHEEL => (wheel, bytes.as_slice(), 1),
            _ => return Answer::status(404),
        };
        let n = served[kind].fetch_add(1, Ordering::SeqCst);
        match script[n.min(script.len() - 1)] {
            200 if kind == 0 => Answer::status(200)
                .header("Content-Type", "application/vnd.pypi.simple.v1+json")
                .bytes(body),
            200 => Answer::status(200).bytes(body),
            429 => Answer::status(429).header("Retry-After", "1"),
            status => Answer::status(status),
        }
    })
}

fn gets(index: &Fake, path: &str) -> usize {
    index
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path == path)
        .count()
}

/// `build` of an experiment asking for tinypkg from the package index
/// `index_url` alone, plus `args`.
fn build_from_index(sandbox: &Sandbox, index_url: &str, args: &[&str]) -> Output {
    let exp = experiment(sandbox, "app", "tinypkg");
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&exp)
        .args(["--base", &python_base_layout(), "--tag", "t"])
        .args(["--index-url", index_url])
        .args(args);
    run(&mut cmd)
}

/// 429 with `Retry-After`, and 503 twice: the build waits as asked, tries
/// again, and succeeds; the index counts the attempts.
#[test]
fn a_throttling_index_is_waited_for_and_tried_again() {
    let sandbox = Sandbox::new();
    let index = scripted_index(&sandbox.path("links"), "", &[429, 200], &[503, 503, 200]);
    let url = format!("http://{}/simple/", index.host());
    let (stdout, stderr) = succeeds(build_from_index(&sandbox, &url, &[]));
    printed_digest(&stdout);
    assert_eq!(gets(&index, INDEX_PAGE), 2, "{stderr}");
    assert_eq!(gets(&index, INDEX_WHEEL), 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the package index {url} failed for tinypkg: HTTP 429 Too Many Requests; retrying in 1.0 s"
        )),
        "Retry-After is honoured: {stderr}"
    );
    assert_eq!(
        stderr
            .matches("HTTP 503 Service Unavailable; retrying in")
            .count(),
        2,
        "{stderr}"
    );
}

/// `--retries 0` (as 1): one attempt, and one line naming the index;
/// `DALLINGER_OCI_RETRIES` sets the count as well.
#[test]
fn retries_for_an_index_come_from_the_command_line() {
    let sandbox = Sandbox::new();
    let index = scripted_index(&sandbox.path("links"), "", &[503], &[200]);
    let url = format!("http://{}/simple/", index.host());
    let line = one_line_error(&build_from_index(&sandbox, &url, &["--retries", "0"]));
    println!("{line}");
    assert!(
        line.contains(&format!("the package index {url} failed for tinypkg"))
            && line.contains("503"),
        "{line}"
    );
    assert_eq!(gets(&index, INDEX_PAGE), 1);

    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .env("DALLINGER_OCI_RETRIES", "2")
        .arg("build")
        .arg(sandbox.path("app"))
        .args(["--base", &python_base_layout(), "--tag", "t"])
        .args(["--index-url", &url]);
    one_line_error(&run(&mut cmd));
    assert_eq!(gets(&index, INDEX_PAGE), 3);
}

/// An index URL with credentials, and a file URL signed in its query: the
/// credentials are used (on the index's host), and neither they nor the
/// signature appear in any message, retries and the final error included.
#[test]
fn index_credentials_and_url_signatures_never_appear_in_messages() {
    const USER: &str = "index-user-7c1e";
    const PASSWORD: &str = "index-password-0d9b";
    const SIGNATURE: &str = "url-signature-5a2f";
    let sandbox = Sandbox::new();
    let query = format!("?X-Amz-Expires=60&X-Amz-Signature={SIGNATURE}");
    let index = scripted_index(&sandbox.path("links"), &query, &[503, 200], &[503]);
    let url = format!("http://{USER}:{PASSWORD}@{}/simple/", index.host());
    let out = build_from_index(&sandbox, &url, &["--retries", "2"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line_error(&out);
    println!("{line}");
    for secret in [USER, PASSWORD, SIGNATURE] {
        assert!(!all.contains(secret), "{secret} shown: {all}");
    }
    assert!(
        line.contains(&format!("http://{}{INDEX_WHEEL}?", index.host()))
            && line.contains("X-Amz-Signature=REDACTED")
            && line.contains("503"),
        "{line}"
    );
    assert!(all.contains("retrying"), "{all}");
    assert_eq!(gets(&index, INDEX_PAGE), 2);
    assert_eq!(gets(&index, INDEX_WHEEL), 2);
    let basic = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    for seen in index.seen() {
        assert_eq!(
            seen.header("authorization"),
            Some(basic.as_str()),
            "{seen:?}"
        );
    }
}

/// `build` of `exp` from the package index `index_url` alone, plus `args`.
fn rebuild_from_index(sandbox: &Sandbox, exp: &Path, index_url: &str, args: &[&str]) -> String {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(exp)
        .args(["--base", &python_base_layout(), "--tag", "t"])
        .args(["--index-url", index_url])
        .args(args);
    printed_digest(&succeeds(run(&mut cmd)).0)
}

/// What the index said about an exact pin is remembered: a rebuild after
/// an edit asks it nothing and gives the digest a fresh build gives;
/// `--refresh` asks again; a corrupt answer is ignored and written again.
/// The index URL's credentials are never stored.
#[test]
fn an_unlocked_rebuild_asks_the_index_nothing() {
    const USER: &str = "answers-user-3b8e";
    const PASSWORD: &str = "answers-password-91c4";
    let sandbox = Sandbox::new();
    let index = scripted_index(&sandbox.path("links"), "", &[200], &[200]);
    let url = format!("http://{USER}:{PASSWORD}@{}/simple/", index.host());
    let exp = experiment(&sandbox, "app", "tinypkg");
    rebuild_from_index(&sandbox, &exp, &url, &[]);
    assert_eq!(gets(&index, INDEX_PAGE), 1);
    assert_eq!(gets(&index, INDEX_WHEEL), 1);

    // A one-line edit: nothing asked, nothing downloaded.
    let mut code = fs::read_to_string(exp.join("experiment.py")).unwrap();
    code.push_str("\nEDITED = True\n");
    fs::write(exp.join("experiment.py"), &code).unwrap();
    let edited = rebuild_from_index(&sandbox, &exp, &url, &[]);
    assert_eq!(gets(&index, INDEX_PAGE), 1, "the rebuild asked the index");
    assert_eq!(gets(&index, INDEX_WHEEL), 1);

    // The same digest as a fresh build of the edited experiment.
    let fresh = Sandbox::new();
    let other = experiment(&fresh, "elsewhere/app", "tinypkg");
    fs::write(other.join("experiment.py"), &code).unwrap();
    assert_eq!(rebuild_from_index(&fresh, &other, &url, &[]), edited);
    assert_eq!(gets(&index, INDEX_PAGE), 2);

    // --refresh asks again, and gives the same image.
    assert_eq!(
        rebuild_from_index(&sandbox, &exp, &url, &["--refresh"]),
        edited
    );
    assert_eq!(gets(&index, INDEX_PAGE), 3);

    // A corrupt answer is no answer: asked again, and written again.
    let answers = sandbox.path("cache/index-answers");
    let entries: Vec<PathBuf> = fs::read_dir(&answers)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    fs::write(
        &entries[0],
        b"{\"format\": \"dallinger-oci-index-answer/1\", \"fil",
    )
    .unwrap();
    assert_eq!(rebuild_from_index(&sandbox, &exp, &url, &[]), edited);
    assert_eq!(gets(&index, INDEX_PAGE), 4);
    let rewritten = fs::read(&entries[0]).unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&rewritten).is_ok(),
        "{}",
        String::from_utf8_lossy(&rewritten)
    );
    assert_eq!(rebuild_from_index(&sandbox, &exp, &url, &[]), edited);
    assert_eq!(gets(&index, INDEX_PAGE), 4);

    // An answer leading to a wheel that is gone from the cache: the build
    // downloads it, and asks first.
    fs::remove_dir_all(sandbox.path("cache/wheels")).unwrap();
    assert_eq!(rebuild_from_index(&sandbox, &exp, &url, &[]), edited);
    assert_eq!(gets(&index, INDEX_PAGE), 5);
    assert_eq!(gets(&index, INDEX_WHEEL), 3);

    // No credential where the index's answers and files are kept.
    let kept = |s: &Sandbox| ["index-answers", "wheels", "files"].map(|d| s.path("cache").join(d));
    for dir in kept(&sandbox).into_iter().chain(kept(&fresh)) {
        for (file, bytes) in files_under(&dir) {
            for secret in [USER, PASSWORD] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "the cache's {file} holds {secret}"
                );
            }
        }
    }
}
