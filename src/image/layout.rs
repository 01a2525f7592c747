//! OCI image layout directories: as a sink for built images and as a source
//! of base images.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::store::{hex_of, BlobStore};
use super::{canonical_json, Image, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX};
use crate::fsutil::{self, FileLock, TempFile};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const STAGING_PREFIX: &str = ".dallinger-oci-layout-";

/// Writes `image` into the layout at `dir` under the name `tag`.
///
/// A new layout is assembled beside `dir` and renamed into place, so a failed
/// build leaves nothing behind. An existing layout gets the missing blobs and
/// an `index.json` (replaced atomically) in which `tag` names this image,
/// under a lock on the directory, so two builds writing the same layout
/// each keep the other's tag. Anything else at `dir` is refused. Every blob
/// is checked against its digest as it is copied out of the store, except
/// one this process wrote (hashed as it was written, its file untouched
/// since), which is hard-linked when the layout is on the cache's file
/// system (see `BlobStore::link_written`).
pub fn write(store: &BlobStore, image: &Image, dir: &Path, tag: &str) -> Result<()> {
    write_tags(store, image, dir, &[tag])
}

/// [`write`], the image named by each of `tags` (in order) in `index.json`.
pub fn write_tags(store: &BlobStore, image: &Image, dir: &Path, tags: &[&str]) -> Result<()> {
    if !dir.exists() && write_new(store, image, dir, tags)? {
        return Ok(());
    }
    if !is_layout(dir) {
        bail!(
            "{} exists and is not an OCI image layout (it has no oci-layout file); choose another output path or remove it",
            dir.display()
        );
    }
    let _lock =
        FileLock::exclusive(dir).with_context(|| format!("cannot lock {}", dir.display()))?;
    // Under the lock no other build is writing here: a temporary blob is
    // what a killed build left.
    fsutil::sweep_unlocked(&dir.join("blobs/sha256"), ".");
    copy_blobs(store, image, dir)?;
    let index = updated_index(dir, image, tags)?;
    fsutil::write(&dir.join("index.json"), &canonical_json(&index), 0o644)?;
    Ok(())
}

/// Writes a new layout at `dir`; false when another build created `dir`
/// meanwhile (the image is then added to that layout).
fn write_new(store: &BlobStore, image: &Image, dir: &Path, tags: &[&str]) -> Result<bool> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // Staging directories of killed builds (a live one holds its lock).
    fsutil::sweep_unlocked(&parent, STAGING_PREFIX);
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        })?;
    let _staging_lock = FileLock::exclusive(staging.path())?;
    fsutil::write(&staging.path().join("oci-layout"), OCI_LAYOUT, 0o644)?;
    copy_blobs(store, image, staging.path())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": tags.iter().map(|tag| descriptor(image, tag)).collect::<Vec<_>>(),
    });
    fsutil::write(
        &staging.path().join("index.json"),
        &canonical_json(&index),
        0o644,
    )?;
    set_dir_modes(staging.path())?;
    match fs::rename(staging.path(), dir) {
        Ok(()) => {
            // The staging directory is gone: keep the guard from removing `dir`.
            let _ = staging.keep();
            fsutil::sync_dir(&parent).with_context(|| format!("cannot write {}", dir.display()))?;
            Ok(true)
        }
        // Another build made the layout first; `staging` is removed on drop.
        Err(_) if is_layout(dir) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

fn is_layout(dir: &Path) -> bool {
    dir.is_dir() && dir.join("oci-layout").is_file()
}

/// tempdir creates 0700 directories; a layout is meant to be shared.
fn set_dir_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn descriptor(image: &Image, tag: &str) -> Value {
    json!({
        "mediaType": image.media_type(),
        "digest": image.manifest_digest,
        "size": image.manifest_size(),
        "annotations": { ANNOTATION_REF_NAME: tag },
    })
}

fn updated_index(dir: &Path, image: &Image, tags: &[&str]) -> Result<Value> {
    let path = dir.join("index.json");
    let mut index: Value = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?,
        Err(_) => json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}),
    };
    let manifests = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{} has no manifests list", path.display()))?;
    manifests.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            .is_none_or(|name| !tags.contains(&name))
    });
    manifests.extend(tags.iter().map(|tag| descriptor(image, tag)));
    Ok(index)
}

fn copy_blobs(store: &BlobStore, image: &Image, dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let mut all: Vec<(&str, u64)> = image
        .layers
        .iter()
        .map(|l| (l.blob.digest.as_str(), l.blob.size))
        .collect();
    // Each image's config and manifest, then an index's own bytes.
    for manifest in image.manifests() {
        all.push((&manifest.config_digest, manifest.config_size));
        all.push((&manifest.manifest_digest, manifest.manifest_size()));
    }
    if image.is_index() {
        all.push((&image.manifest_digest, image.manifest_size()));
    }
    let mut copied = false;
    for (digest, size) in all {
        let dest = blobs.join(hex_of(digest)?);
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size) {
            continue;
        }
        if !store.link_written(digest, size, &dest)? {
            copy_verified(store, digest, size, &dest)?;
        }
        copied = true;
    }
    // One sync of the directory for all the blobs, before index.json names
    // them.
    if copied {
        crate::fsutil::sync_dir(&blobs)
            .with_context(|| format!("cannot write {}", blobs.display()))?;
    }
    Ok(())
}

/// Copies the store's blob `digest` to `dest` through an exclusive
/// temporary file, renamed only when every byte matched the digest (or,
/// for a blob this process wrote, as it is: see `BlobStore::open_blob`).
fn copy_verified(store: &BlobStore, digest: &str, size: u64, dest: &Path) -> Result<()> {
    let mut blob = store.open_blob(digest, size)?;
    let mut tmp = TempFile::beside(dest, 0o644)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = blob.read(&mut buf).map_err(anyhow::Error::msg)?;
        if n == 0 {
            break;
        }
        tmp.file_mut()
            .write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dest.display()))?;
    }
    tmp.commit_leaving_dir(dest)
        .with_context(|| format!("cannot write {}", dest.display()))
}

/// A manifest found in a layout, with its bytes verified.
pub struct LayoutManifest {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub ref_name: Option<String>,
}

/// Finds the manifest named `tag` (or the only one) in the layout at `dir`,
/// resolving an image index to the manifest for `platform` (`os/arch[/variant]`).
pub fn find_manifest(dir: &Path, tag: Option<&str>, platform: &str) -> Result<LayoutManifest> {
    let chosen = tagged_descriptor(dir, tag)?;
    let ref_name = ref_name_of(&chosen);
    let (digest, bytes) = resolve_descriptor(
        &chosen,
        &|digest| read_verified(dir, digest),
        platform,
        &dir.display().to_string(),
    )?;
    Ok(LayoutManifest {
        digest,
        bytes,
        ref_name,
    })
}

/// The platforms of the image index named `tag` (or the only image) in
/// the layout at `dir`, in its order (see `platform::index_platforms`);
/// `None` when that image is a single manifest.
pub fn index_platforms(
    dir: &Path,
    tag: Option<&str>,
) -> Result<Option<Vec<super::platform::Platform>>> {
    let chosen = tagged_descriptor(dir, tag)?;
    let digest = chosen
        .get("digest")
        .and_then(Value::as_str)
        .context("a descriptor in index.json has no digest")?;
    let parsed: Value = serde_json::from_slice(&read_verified(dir, digest)?)
        .with_context(|| format!("blob {digest} in {} is not JSON", dir.display()))?;
    Ok(parsed
        .get("manifests")
        .and_then(Value::as_array)
        .map(|m| super::platform::index_platforms(m)))
}

fn ref_name_of(descriptor: &Value) -> Option<String> {
    descriptor
        .pointer("/annotations/org.opencontainers.image.ref.name")
        .and_then(Value::as_str)
        .map(String::from)
}

/// The descriptor in the layout's `index.json` named `tag`, or its only one.
fn tagged_descriptor(dir: &Path, tag: Option<&str>) -> Result<Value> {
    if !is_layout(dir) {
        bail!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        );
    }
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &fs::read(&index_path).with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .with_context(|| format!("{} has no manifests list", index_path.display()))?;
    let chosen = match tag {
        Some(tag) => manifests
            .iter()
            .find(|m| ref_name_of(m).as_deref() == Some(tag))
            .with_context(|| {
                let names: Vec<String> = manifests.iter().filter_map(ref_name_of).collect();
                format!(
                    "{} has no image named {tag:?} (it has: {})",
                    dir.display(),
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                )
            })?,
        None if manifests.len() == 1 => &manifests[0],
        None => bail!(
            "{} holds {} images; name one as oci:{}:TAG",
            dir.display(),
            manifests.len(),
            dir.display()
        ),
    };
    Ok(chosen.clone())
}

/// The manifest (digest, bytes) `descriptor` names, an image index
/// resolved to the one for `platform` (nesting bounded); `read_verified`
/// gives a blob's bytes checked against its digest, `place` names where.
pub fn resolve_descriptor(
    descriptor: &Value,
    read_verified: &dyn Fn(&str) -> Result<Vec<u8>>,
    platform: &str,
    place: &str,
) -> Result<(String, Vec<u8>)> {
    let mut descriptor = descriptor.clone();
    for _ in 0..4 {
        let digest = descriptor
            .get("digest")
            .and_then(Value::as_str)
            .context("a descriptor in index.json has no digest")?
            .to_string();
        let bytes = read_verified(&digest)?;
        let media_type = descriptor
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let parsed: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("blob {digest} in {place} is not JSON"))?;
        let is_index = media_type == MEDIA_TYPE_INDEX
            || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
            || parsed.get("manifests").is_some();
        if !is_index {
            return Ok((digest, bytes));
        }
        let entries = parsed.get("manifests").and_then(Value::as_array);
        descriptor = super::platform::choose_manifest(
            entries.map_or(&[], Vec::as_slice),
            &super::platform::Platform::parse(platform)?,
        )
        .cloned()
        .with_context(|| format!("the image index {digest} in {place}"))?;
    }
    bail!("image indexes in {place} are nested too deeply")
}

/// Path of a blob inside a layout.
pub fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(dir.join("blobs/sha256").join(hex_of(digest)?))
}

/// Reads a small blob from a layout and checks it against its digest.
pub fn read_verified(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let bytes =
        fs::read(&path).with_context(|| format!("{} lacks blob {digest}", dir.display()))?;
    let actual = super::store::sha256_digest(&bytes);
    if actual != digest {
        bail!(
            "blob {digest} in {} is corrupt (its content hashes to {actual})",
            dir.display()
        );
    }
    Ok(bytes)
}
