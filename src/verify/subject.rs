//! The image being verified: `REPO@sha256:…` in a registry, `oci:DIR[:TAG]`
//! or `docker-archive:FILE`, read as manifest, config and layer blobs, each
//! checked against its digest.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::listing::{read_tar, Hashing, Listing};
use crate::build::RegistryOptions;
use crate::image::platform::{choose_manifest, Platform};
use crate::image::store::{hex_of, sha256_digest, BlobStore, StoredLayer};
use crate::image::{layout, ImageLayer, RemoteBlob, MEDIA_TYPE_INDEX};
use crate::registry::mirrors::Puller;
use crate::registry::Reference;

/// Where the image to verify is, as given to `--image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Registry(Reference),
    Layout { dir: PathBuf, tag: Option<String> },
    Archive { file: PathBuf },
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = crate::base::split_dir_and_tag(rest);
            return Ok(ImageRef::Layout { dir, tag });
        }
        if let Some(file) = text.strip_prefix("docker-archive:") {
            if file.is_empty() {
                bail!("--image {text:?} names no file: use docker-archive:FILE");
            }
            return Ok(ImageRef::Archive {
                file: PathBuf::from(file),
            });
        }
        Reference::parse(text)
            .map(ImageRef::Registry)
            .with_context(|| {
                format!(
                    "--image {text:?}: use REPO@sha256:HEX, oci:DIR[:TAG] or docker-archive:FILE"
                )
            })
    }
}

/// An image's manifest, config and layers, with its blobs within reach.
pub struct Image {
    /// `None` for a docker-archive of the old form (manifest.json only).
    pub manifest_digest: Option<String>,
    pub manifest: Option<Value>,
    pub config_digest: String,
    pub config: Value,
    pub layers: Vec<ImageLayer>,
    source: Source,
}

enum Source {
    /// Blobs fetched into the store, verified, then read from it (the
    /// store's own registered fetcher reaches the registry).
    Store(BlobStore),
    Layout(PathBuf),
    /// Members of a tar: name → (offset of the data, size).
    Archive {
        file: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Image {
    /// The rebuilt image, every blob in (or fetched into) `store`.
    pub fn built(store: &BlobStore, image: &crate::image::Image) -> Result<Image> {
        let config = serde_json::from_slice(&store.read_blob(&image.config_digest)?)?;
        Ok(Image {
            manifest_digest: Some(image.manifest_digest.clone()),
            manifest: Some(serde_json::from_slice(&image.manifest_bytes)?),
            config_digest: image.config_digest.clone(),
            config,
            layers: image.layers.clone(),
            source: Source::Store(store.clone()),
        })
    }

    /// Reads the manifest and config of `image`; layers are read later,
    /// only those that differ. Registry blobs go through `store`.
    pub fn open(
        image: &ImageRef,
        store: &BlobStore,
        registry: &RegistryOptions,
        platform: &str,
    ) -> Result<Image> {
        match image {
            ImageRef::Registry(reference) => {
                let puller = registry.puller(reference, false)?;
                from_registry(&puller, reference, store, platform)
            }
            ImageRef::Layout { dir, tag } => {
                let found = layout::find_manifest(dir, tag.as_deref(), platform)?;
                let manifest: Value = serde_json::from_slice(&found.bytes)?;
                let config_digest = config_digest(&manifest)?;
                let config = json_of(&layout::read_verified(dir, &config_digest)?, "config")?;
                let layers = crate::base::layers_of(&manifest, &config, None)?;
                Ok(Image {
                    manifest_digest: Some(found.digest),
                    manifest: Some(manifest),
                    config_digest,
                    config,
                    layers,
                    source: Source::Layout(dir.clone()),
                })
            }
            ImageRef::Archive { file } => from_archive(file, platform),
        }
    }

    /// Reads layer `layer` once, as it streams: decompressed as its media
    /// type says, listed, and its bytes checked against its digest.
    pub fn list_layer(&self, layer: &ImageLayer) -> Result<Listing> {
        let blob = &layer.blob;
        match &self.source {
            Source::Store(store) => {
                store.fetch_missing(std::slice::from_ref(layer))?;
                list_blob(store.open_blob(&blob.digest, blob.size)?, blob)
            }
            Source::Layout(dir) => {
                let path = layout::blob_path(dir, &blob.digest)?;
                let file = File::open(&path)
                    .with_context(|| format!("{} lacks blob {}", dir.display(), blob.digest))?;
                list_blob(file, blob)
            }
            Source::Archive { file, members } => {
                let (offset, size) = archive_blob(members, &blob.digest, blob)?;
                let mut reader =
                    File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
                reader.seek(SeekFrom::Start(offset))?;
                if size != blob.size {
                    bail!(
                        "{}: blob {} has {size} bytes, its descriptor says {}",
                        file.display(),
                        blob.digest,
                        blob.size
                    );
                }
                list_blob(reader.take(size), blob)
            }
        }
    }
}

/// The archive member holding `digest`: `blobs/sha256/HEX`, or for an old
/// docker archive the member its manifest.json names (which `from_archive`
/// keeps in the layer's diff_id slot; the config has the real diff_ids).
fn archive_blob(
    members: &HashMap<String, (u64, u64)>,
    digest: &str,
    blob: &StoredLayer,
) -> Result<(u64, u64)> {
    let name = format!("blobs/sha256/{}", hex_of(digest)?);
    members
        .get(&name)
        .or_else(|| members.get(&blob.diff_id))
        .copied()
        .with_context(|| format!("the archive lacks blob {digest}"))
}

fn list_blob(reader: impl Read + Send, blob: &StoredLayer) -> Result<Listing> {
    let mut hashing = Hashing::new(reader);
    let listing = {
        let mut tar = dallinger_oci_layers::open_layer(
            &blob.media_type,
            BufReader::with_capacity(1 << 20, &mut hashing),
        )?;
        let listing = read_tar(&mut tar)?;
        // The rest of the stream (end-of-archive blocks, padding) is read
        // too, so every byte is hashed and a corrupt tail is seen.
        std::io::copy(&mut tar, &mut std::io::sink()).context("after the tar's end")?;
        listing
    };
    let (actual, size) = hashing.finish()?;
    if actual != blob.digest || size != blob.size {
        bail!(
            "blob {} does not match its descriptor: it hashes to {actual} ({size} bytes, expected {})",
            blob.digest,
            blob.size
        );
    }
    Ok(listing)
}

fn json_of(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("the image's {what} is not JSON"))
}

fn config_digest(manifest: &Value) -> Result<String> {
    manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .map(String::from)
        .context("the manifest has no config digest")
}

fn is_index(media_type: &str, parsed: &Value) -> bool {
    media_type == MEDIA_TYPE_INDEX
        || media_type.contains("manifest.list")
        || parsed.get("manifests").is_some()
}

fn from_registry(
    puller: &Puller,
    reference: &Reference,
    store: &BlobStore,
    platform: &str,
) -> Result<Image> {
    let (bytes, digest) = puller.pull(|client, source| {
        let repository = &source.repository;
        let (bytes, media_type, digest) = client
            .get_manifest(repository, reference.manifest_ref())
            .with_context(|| format!("image {reference}"))?;
        let parsed = json_of(&bytes, "manifest")?;
        if !is_index(&media_type, &parsed) {
            return Ok((bytes, digest));
        }
        let entries = parsed.get("manifests").and_then(Value::as_array);
        let chosen = choose_manifest(
            entries.map_or(&[], Vec::as_slice),
            &Platform::parse(platform)?,
        )
        .with_context(|| format!("image {reference} (index {digest})"))?
        .get("digest")
        .and_then(Value::as_str)
        .context("the index's entry for the platform has no digest")?
        .to_string();
        let (bytes, _, digest) = client.get_manifest(repository, &chosen)?;
        Ok((bytes, digest))
    })?;
    let manifest = json_of(&bytes, "manifest")?;
    let config_digest = config_digest(&manifest)?;
    let config_size = manifest
        .pointer("/config/size")
        .and_then(Value::as_u64)
        .context("the manifest's config has no size")?;
    if !store.has_blob(&config_digest, config_size) {
        let origin = reference.name();
        puller.get_blob(&config_digest, config_size, &mut |reader| {
            store.import_reader(reader, &config_digest, config_size, &origin)
        })?;
    }
    let config = json_of(&store.read_blob(&config_digest)?, "config")?;
    let remote = RemoteBlob {
        registry: reference.registry.clone(),
        repository: reference.repository.clone(),
    };
    let layers = crate::base::layers_of(&manifest, &config, Some(remote))?;
    Ok(Image {
        manifest_digest: Some(digest),
        manifest: Some(manifest),
        config_digest,
        config,
        layers,
        source: Source::Store(store.clone()),
    })
}

/// Small members (manifests, configs, index.json) are read whole, up to this.
const MAX_SMALL_MEMBER: u64 = 16 << 20;

fn from_archive(file: &Path, platform: &str) -> Result<Image> {
    let what = || format!("docker-archive:{}", file.display());
    let members = archive_members(file).with_context(what)?;
    let read_member = |name: &str| -> Result<Vec<u8>> {
        let (offset, size) = *members
            .get(name)
            .with_context(|| format!("{} has no {name}", what()))?;
        if size > MAX_SMALL_MEMBER {
            bail!("{}: {name} is larger than 16 MiB", what());
        }
        let mut reader = File::open(file)?;
        reader.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        reader.take(size).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let read_blob = |digest: &str| -> Result<Vec<u8>> {
        let bytes = read_member(&format!("blobs/sha256/{}", hex_of(digest)?))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            bail!("{}: blob {digest} hashes to {actual}", what());
        }
        Ok(bytes)
    };
    let (manifest_digest, manifest, config_digest, config, layers) =
        if members.contains_key("index.json") {
            // The OCI layout inside (ours, docker save since Docker 25).
            let index = json_of(&read_member("index.json")?, "index.json")?;
            let descriptor = match index.get("manifests").and_then(Value::as_array) {
                Some(list) if list.len() == 1 => list[0].clone(),
                Some(list) => bail!(
                    "{} holds {} images; verify one at a time (oci: layouts can be named by tag)",
                    what(),
                    list.len()
                ),
                None => bail!("{}: index.json has no manifests", what()),
            };
            let (digest, bytes) =
                layout::resolve_descriptor(&descriptor, &read_blob, platform, &what())?;
            let manifest = json_of(&bytes, "manifest")?;
            let config_digest = config_digest(&manifest)?;
            let config = json_of(&read_blob(&config_digest)?, "config")?;
            let layers = crate::base::layers_of(&manifest, &config, None)?;
            (Some(digest), Some(manifest), config_digest, config, layers)
        } else {
            old_archive(&members, &read_member, &what())?
        };
    Ok(Image {
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
        source: Source::Archive {
            file: file.to_path_buf(),
            members,
        },
    })
}

type Parts = (
    Option<String>,
    Option<Value>,
    String,
    Value,
    Vec<ImageLayer>,
);

/// The old form of a docker archive: manifest.json naming the config and
/// layer tars, no OCI manifest.
fn old_archive(
    members: &HashMap<String, (u64, u64)>,
    read_member: &dyn Fn(&str) -> Result<Vec<u8>>,
    what: &str,
) -> Result<Parts> {
    let what = || what.to_string();
    let manifest = json_of(&read_member("manifest.json")?, "manifest.json")?;
    let entry = match manifest.as_array() {
        Some(list) if list.len() == 1 => &list[0],
        _ => bail!("{}: manifest.json must name exactly one image", what()),
    };
    let config_name = entry
        .get("Config")
        .and_then(Value::as_str)
        .context("manifest.json has no Config")?;
    let config_bytes = read_member(config_name)?;
    let config_digest = sha256_digest(&config_bytes);
    let config = json_of(&config_bytes, "config")?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let names: Vec<&str> = entry
        .get("Layers")
        .and_then(Value::as_array)
        .context("manifest.json has no Layers")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if names.len() != diff_ids.len() {
        bail!(
            "{}: manifest.json lists {} layers, the config {} diff_ids",
            what(),
            names.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::new();
    for (name, diff_id) in names.iter().zip(&diff_ids) {
        let (_, size) = *members
            .get(*name)
            .with_context(|| format!("{} has no {name}", what()))?;
        // An uncompressed tar: its digest is its diff_id. The member's
        // name is kept where `archive_blob` finds it.
        layers.push(ImageLayer {
            blob: StoredLayer {
                diff_id: name.to_string(),
                digest: diff_id.clone(),
                size,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            },
            annotations: BTreeMap::new(),
            remote: None,
        });
    }
    Ok((None, None, config_digest, config, layers))
}

impl Image {
    /// The layers' diff_ids as the config gives them (old archives keep
    /// member names in the layers' diff_id slot).
    pub fn diff_ids(&self) -> Vec<String> {
        self.config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every member of the tar at `file`: name → (data offset, size), read
/// from the headers only.
fn archive_members(file: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let reader = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().context("not a tar archive")? {
        let entry = entry.context("a malformed tar entry")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = super::listing::normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        members.insert(name, (entry.raw_file_position(), entry.size()));
        if members.len() > 100_000 {
            bail!("more than 100000 members: not an image archive");
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let digest = format!("sha256:{}", "a".repeat(64));
        match ImageRef::parse(&format!("ghcr.io/lab/stroop@{digest}")).unwrap() {
            ImageRef::Registry(r) => {
                assert_eq!(
                    (r.registry.as_str(), r.repository.as_str()),
                    ("ghcr.io", "lab/stroop")
                );
                assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ImageRef::parse("oci:out/layout:v1").unwrap(),
            ImageRef::Layout {
                dir: "out/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:img.tar").unwrap(),
            ImageRef::Archive {
                file: "img.tar".into()
            }
        );
        assert!(ImageRef::parse("docker-archive:").is_err());
        let err = format!("{:#}", ImageRef::parse("Not A Ref").unwrap_err());
        assert!(
            err.contains("oci:DIR[:TAG] or docker-archive:FILE"),
            "{err}"
        );
    }
}
