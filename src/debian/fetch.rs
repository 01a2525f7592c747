//! Downloads from the Debian archive: `InRelease` as text, and indexes and
//! `.deb` files into the cache by sha256, verified before they are used.
//! Requests follow the HTTP policy (`crate::http`).

use fs_err::{self as fs, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use dallinger_oci_layers::HashingWriter;
use reqwest::blocking::{Client, Response};

use crate::fsutil::TempFile;
use crate::http::{self, redact, BodyError, DeclaredSize, Failure, Problem, RetryPolicy, Stop};
use crate::image::store::sha256_stream;

/// The most we read of an `InRelease` (a few hundred KiB in practice).
const MAX_RELEASE: u64 = 16 << 20;

/// How the archive is reached: the policy's download client, and how
/// often a request is tried (`--retries`).
pub struct Fetcher {
    client: Client,
    retry: RetryPolicy,
}

impl Fetcher {
    pub fn new(retry: RetryPolicy) -> Result<Fetcher> {
        Ok(Fetcher {
            client: http::client(http::Patience::Download)?,
            retry,
        })
    }
}

/// A file pinned by sha256 (lowercase hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// Where a pinned file lives in the cache's Debian bucket (`dir`):
/// `sha256/HEX/NAME`. The sha256 comes from a lock or an index: anything
/// but 64 lowercase hex digits is refused, never joined to a path.
pub fn cache_path(dir: &Path, pinned: &Pinned) -> Result<PathBuf> {
    if !crate::plan::is_sha256_hex(&pinned.sha256) {
        bail!(
            "{} has sha256 {:?}, not 64 lowercase hex digits; refusing it",
            pinned.url,
            pinned.sha256
        );
    }
    let name = pinned
        .url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("file");
    Ok(dir.join("sha256").join(&pinned.sha256).join(name))
}

/// Why an attempt at `url` failed, as a message naming it (redacted).
fn problem(url: &str, problem: Problem) -> anyhow::Error {
    let url = redact(url);
    match problem {
        Problem::Transport { kind, detail } if kind.unreachable() => anyhow!(
            "cannot reach {url}: {detail}; check the network (a build with a lock and a warm cache needs none)"
        ),
        problem => anyhow!("downloading {url} failed: {problem}"),
    }
}

/// One attempt at a GET of `url`: its successful answer.
fn get(client: &Client, url: &str, small: bool) -> Result<Response, Failure<anyhow::Error>> {
    let request = client.get(url);
    let request = if small { http::small(request) } else { request };
    let response = http::send(request).map_err(|f| f.map(|p| problem(url, p)))?;
    if !response.status().is_success() {
        return Err(Failure::fatal(anyhow!(
            "downloading {} failed: HTTP {}",
            redact(url),
            response.status()
        )));
    }
    Ok(response)
}

/// A small text file (InRelease), in memory.
pub fn get_text(fetcher: &Fetcher, url: &str) -> Result<String> {
    let what = redact(url);
    let bytes = fetcher
        .retry
        .run("", || {
            let response = get(&fetcher.client, url, true)?;
            http::read_bounded(response, MAX_RELEASE, &what).map_err(|e| match e {
                BodyError::TooLarge { .. } => Failure::fatal(anyhow!("{e}")),
                BodyError::Broken { .. } => Failure::transient(anyhow!("{e}")),
            })
        })
        .map_err(Stop::into_error)?;
    String::from_utf8(bytes).with_context(|| format!("{what} is not UTF-8 text"))
}

/// The cached copy of `pinned`, downloaded first when missing. A cached
/// file that no longer matches its sha256 is refused, never used or
/// silently replaced: something changed the cache after it was verified.
pub fn fetch(fetcher: &Fetcher, dir: &Path, pinned: &Pinned) -> Result<PathBuf> {
    let path = cache_path(dir, pinned)?;
    if path.is_file() {
        let (digest, size) = hash_file(&path)?;
        if digest != pinned.sha256 || size != pinned.size {
            bail!(
                "the cached {} does not match its pinned sha256 {} ({} bytes): it hashes to {digest} ({size} bytes), so it was changed after it was downloaded and verified; refusing it (delete {} and build again to download it afresh)",
                path.file_name().unwrap_or_default().to_string_lossy(),
                pinned.sha256,
                pinned.size,
                path.display()
            );
        }
        return Ok(path);
    }
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let url = redact(&pinned.url);
    let tmp = fetcher
        .retry
        .run("", || download(fetcher, dir, pinned, &url))
        .map_err(Stop::into_error)?;
    tmp.commit(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// One attempt at downloading `pinned` into a new temporary file in `dir`,
/// verified: at most its size is read, and a broken transfer is worth
/// another attempt (from the start).
fn download(
    fetcher: &Fetcher,
    dir: &Path,
    pinned: &Pinned,
    url: &str,
) -> Result<TempFile, Failure<anyhow::Error>> {
    let mut tmp = TempFile::new_in(dir, ".partial-", 0o644)
        .with_context(|| format!("cannot write in {}", dir.display()))
        .map_err(Failure::fatal)?;
    let response = get(&fetcher.client, &pinned.url, false)?;
    let mut body = DeclaredSize::new(response, pinned.size);
    let mut writer = HashingWriter::new(io::BufWriter::new(tmp.file_mut()));
    let copied = io::copy(&mut body, &mut writer);
    let (digest, size, buffered) = writer.finish();
    match copied {
        Err(_) if body.overran() => {
            return Err(Failure::fatal(anyhow!(
                "{url} is longer than the {} bytes the signed archive index gives; refusing it",
                pinned.size
            )))
        }
        Err(e) if body.broke() => {
            return Err(Failure::transient(
                anyhow!(e).context(format!("downloading {url} broke off")),
            ))
        }
        Err(e) => {
            return Err(Failure::fatal(
                anyhow!(e).context(format!("cannot write in {}", dir.display())),
            ))
        }
        Ok(_) => {}
    }
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write in {}", dir.display()))
        .map_err(Failure::fatal)?;
    let digest = digest.trim_start_matches("sha256:");
    if digest != pinned.sha256 || size != pinned.size {
        return Err(Failure::fatal(anyhow!(
            "{url} does not match the sha256 the signed archive index gives ({}, {} bytes): it hashes to {digest} ({size} bytes); refusing it",
            pinned.sha256,
            pinned.size,
        )));
    }
    Ok(tmp)
}

/// sha256 (hex) and size of a file, streamed.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let (sum, size) = File::open(path)
        .and_then(sha256_stream)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((hex::encode(sum), size))
}
