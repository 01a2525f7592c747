//! Downloads from the Debian archive: `InRelease` as text, and indexes and
//! `.deb` files into the cache by sha256, verified before they are used.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::HashingWriter;

use crate::fsutil::TempFile;
use crate::image::store::sha256_stream;
use reqwest::blocking::{Client, Response};

use crate::python::index::{describe, is_unreachable, with_retries, Attempt};

/// A file pinned by sha256 (lowercase hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// Where a pinned file lives in the cache: `debian/sha256/HEX/NAME`. The
/// sha256 comes from a lock or an index: anything but 64 lowercase hex
/// digits is refused, never joined to a path.
pub fn cache_path(cache_root: &Path, pinned: &Pinned) -> Result<PathBuf> {
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
    Ok(cache_root
        .join("debian/sha256")
        .join(&pinned.sha256)
        .join(name))
}

fn get(client: &Client, url: &str) -> Result<Response> {
    let response = with_retries(|| client.get(url).send()).map_err(|attempt| match attempt {
        Attempt::Transport(e) if is_unreachable(&e) => anyhow::anyhow!(
            "cannot reach {url}: {}; check the network (a build with a lock and a warm cache needs none)",
            describe(&e)
        ),
        Attempt::Transport(e) => anyhow::anyhow!("downloading {url} failed: {}", describe(&e)),
        Attempt::Status(status) => anyhow::anyhow!("downloading {url} failed: HTTP {status}"),
    })?;
    if !response.status().is_success() {
        bail!("downloading {url} failed: HTTP {}", response.status());
    }
    Ok(response)
}

/// A small text file (InRelease), in memory.
pub fn get_text(client: &Client, url: &str) -> Result<String> {
    let mut text = String::new();
    get(client, url)?
        .read_to_string(&mut text)
        .with_context(|| format!("downloading {url} broke off"))?;
    Ok(text)
}

/// The cached copy of `pinned`, downloaded first when missing. A cached
/// file that no longer matches its sha256 is refused, never used or
/// silently replaced: something changed the cache after it was verified.
pub fn fetch(client: &Client, cache_root: &Path, pinned: &Pinned) -> Result<PathBuf> {
    let path = cache_path(cache_root, pinned)?;
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
    let mut tmp = TempFile::new_in(dir, ".partial-", 0o644)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut response = get(client, &pinned.url)?;
    let mut writer = HashingWriter::new(io::BufWriter::new(tmp.file_mut()));
    // At most one byte more than the pinned size is read.
    let copied = io::copy(
        &mut (&mut response).take(pinned.size.saturating_add(1)),
        &mut writer,
    );
    let (digest, size, buffered) = writer.finish();
    copied.with_context(|| format!("downloading {} broke off", pinned.url))?;
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let digest = digest.trim_start_matches("sha256:");
    if digest != pinned.sha256 || size != pinned.size {
        bail!(
            "{} does not match the sha256 the signed archive index gives ({}, {} bytes): it hashes to {digest} ({}{size} bytes); refusing it",
            pinned.url,
            pinned.sha256,
            pinned.size,
            if size > pinned.size { "more than " } else { "" },
        );
    }
    tmp.commit(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// sha256 (hex) and size of a file, streamed.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let (sum, size) = File::open(path)
        .and_then(sha256_stream)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((hex::encode(sum), size))
}
