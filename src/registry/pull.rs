//! Base images from a registry: the tag resolved to a manifest for the
//! target platform, everything verified against its digest, and layer bytes
//! fetched only when an output needs them.

use fs_err as fs;

use anyhow::{Context, Result};
use serde_json::Value;

use super::mirrors::Puller;
use super::reference::Reference;
use crate::base::{layers_of, BaseImage};
use crate::image::platform::{choose_manifest, Platform};
use crate::image::store::{hex_of, sha256_digest, BlobStore};
use crate::image::RemoteBlob;

/// Resolves `reference` to a base image, from the sources `puller` gives
/// it (its mirrors, then its location). A tag resolved before is not
/// resolved again unless `refresh`: a rebuild must not follow a moved tag.
/// Wherever the bytes came from, the image is named and recorded as
/// `reference`, by the digests we computed.
pub fn resolve_base(
    puller: &Puller,
    store: &BlobStore,
    reference: &Reference,
    platform: &str,
    refresh: bool,
) -> Result<BaseImage> {
    let platform = Platform::parse(platform)?;
    let memo = store.memo_path("", &format!("base\0{reference}\0{platform}"));
    let remembered = fs::read_to_string(&memo)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|d| hex_of(d).is_ok());
    let pinned = match (&reference.digest, refresh) {
        (Some(d), _) => Some(d.clone()),
        (None, false) => remembered.clone(),
        (None, true) => None,
    };
    let manifest_bytes = match pinned.as_deref().and_then(|d| store.read_blob(d).ok()) {
        Some(bytes) => bytes,
        None => {
            let wanted = pinned.as_deref().unwrap_or(reference.manifest_ref());
            let bytes = puller.pull(|client, source| {
                let repository = source.repository.as_str();
                let (bytes, media_type, digest) = client
                    .get_manifest(repository, wanted)
                    .with_context(|| format!("base {reference}"))?;
                let parsed: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("the manifest of {reference} is not JSON"))?;
                let is_index = media_type.contains("index")
                    || media_type.contains("manifest.list")
                    || parsed.get("manifests").is_some();
                if !is_index {
                    return Ok(bytes);
                }
                let chosen = choose_platform(&parsed, &platform)
                    .with_context(|| format!("base {reference} (index {digest})"))?;
                Ok(client.get_manifest(repository, &chosen)?.0)
            })?;
            store.put_bytes(&bytes)?;
            bytes
        }
    };
    let digest = sha256_digest(&manifest_bytes);
    if reference.digest.is_none() && remembered.as_deref() != Some(digest.as_str()) {
        store.write_entry(&memo, digest.as_bytes())?;
    }
    let manifest: Value = serde_json::from_slice(&manifest_bytes)?;
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .context("the base manifest has no config")?
        .to_string();
    let config_size = manifest
        .pointer("/config/size")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    // The config shapes ours: read from the store only when it still
    // matches its digest (a corrupt copy is removed and fetched again).
    let cached = store
        .has_blob(&config_digest, config_size)
        .then(|| store.read_blob(&config_digest).ok())
        .flatten();
    let config_bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let origin = reference.to_string();
            puller.get_blob(&config_digest, config_size, &mut |reader| {
                store.import_reader(reader, &config_digest, config_size, &origin)
            })?;
            store.read_blob(&config_digest)?
        }
    };
    let config: Value =
        serde_json::from_slice(&config_bytes).context("the base image config is not JSON")?;
    let remote = RemoteBlob {
        registry: reference.registry.clone(),
        repository: reference.repository.clone(),
    };
    let layers =
        layers_of(&manifest, &config, Some(remote)).with_context(|| format!("base {reference}"))?;
    let name = Reference {
        digest: None,
        ..reference.clone()
    }
    .to_string();
    Ok(BaseImage {
        config,
        layers,
        name: Some(name),
        digest: Some(digest),
    })
}

/// The digest of the index entry for `platform` (`os/arch[/variant]`).
fn choose_platform(index: &Value, platform: &Platform) -> Result<String> {
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .context("the index has no manifests")?;
    choose_manifest(manifests, platform)?
        .get("digest")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("the index's entry for the platform has no digest")
}
