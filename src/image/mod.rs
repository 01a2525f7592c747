//! Images: a base (config plus layers), new layers on top, and the config and
//! manifest that describe them, serialised canonically. Outputs (`layout`,
//! `archive`) are sinks that copy an [`Image`] out of the [`store::BlobStore`].

pub mod archive;
pub mod layout;
pub mod metadata;
pub mod platform;
pub mod store;
pub mod unpack;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use store::{BlobStore, StoredLayer};

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Which compressor made a layer: gzip bytes are only reproducible with the
/// same one, so a reader (or a later rebuild) can tell.
pub const ANNOTATION_COMPRESSOR: &str = "org.dallinger.oci.layer.compressor";

/// Canonical JSON: serde_json's `Value` keeps object keys in a BTreeMap (the
/// `preserve_order` feature is never enabled), so keys are sorted and the
/// bytes depend only on the content.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serialises")
}

/// An image config's `Env`, as (name, value) pairs in order.
pub fn config_env(config: &Value) -> Vec<(String, String)> {
    config
        .pointer("/config/Env")
        .and_then(|v| v.as_array())
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str()?.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A layer of an image: its blob, and annotations for its descriptor.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub blob: StoredLayer,
    pub annotations: BTreeMap<String, String>,
    /// Where the blob can be fetched (or mounted) from when it is not in
    /// the store: base layers are only downloaded when an output needs them.
    pub remote: Option<RemoteBlob>,
}

/// The blob files of `layers` in the store, with their media types.
pub fn layer_files(
    store: &BlobStore,
    layers: &[ImageLayer],
) -> Result<Vec<(std::path::PathBuf, String)>> {
    layers
        .iter()
        .map(|l| Ok((store.blob_path(&l.blob.digest)?, l.blob.media_type.clone())))
        .collect()
}

/// A value read from base layers once, then kept under the store's
/// `files/` by the digest of `key` (which names the layers and whatever
/// else the value depends on).
pub fn memoised<T: serde::Serialize + serde::de::DeserializeOwned>(
    store: &BlobStore,
    kind: &str,
    key: &str,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let memo = store.memo_path(kind, key);
    if let Some(value) = std::fs::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<T>(&b).ok())
    {
        return Ok(value);
    }
    let value = compute()?;
    store.write_entry(&memo, &serde_json::to_vec(&value)?)?;
    Ok(value)
}

impl ImageLayer {
    /// A layer this tool wrote: its compressor (which its media type names)
    /// recorded, nothing remote.
    pub fn written(blob: StoredLayer) -> ImageLayer {
        let mut annotations = BTreeMap::new();
        if let Ok(Some(codec)) = dallinger_oci_layers::layer_codec(&blob.media_type) {
            let id = codec.compressor_id().to_string();
            annotations.insert(ANNOTATION_COMPRESSOR.to_string(), id);
        }
        ImageLayer {
            blob,
            annotations,
            remote: None,
        }
    }
}

/// A repository of a registry that holds a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlob {
    pub registry: String,
    pub repository: String,
}

/// A finished image, every blob of it in the store: one manifest, or an
/// image index over one image per platform (see [`Image::index`]).
#[derive(Debug, Clone)]
pub struct Image {
    /// Every layer (an index's: each platform's, each blob once).
    pub layers: Vec<ImageLayer>,
    /// The config (an index has none: empty, and the size 0).
    pub config_digest: String,
    pub config_size: u64,
    /// The manifest's bytes, or the index's.
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    /// An index's images, in its order, each with its platform; empty for
    /// a single manifest.
    pub platforms: Vec<(platform::Platform, Image)>,
}

impl Image {
    pub fn manifest_size(&self) -> u64 {
        self.manifest_bytes.len() as u64
    }

    /// Whether this is an image index (several platforms).
    pub fn is_index(&self) -> bool {
        !self.platforms.is_empty()
    }

    /// The media type of [`Image::manifest_bytes`].
    pub fn media_type(&self) -> &'static str {
        if self.is_index() {
            MEDIA_TYPE_INDEX
        } else {
            MEDIA_TYPE_MANIFEST
        }
    }

    /// The single manifests under this image, in order: the image itself,
    /// or each platform's.
    pub fn manifests(&self) -> Vec<&Image> {
        if self.is_index() {
            self.platforms.iter().map(|(_, i)| i).collect()
        } else {
            vec![self]
        }
    }

    /// Stores an OCI image index over `images` (one per platform, in this
    /// order), each descriptor with its `platform`, carrying `annotations`
    /// as each manifest does. A layer several platforms share is one blob.
    pub fn index(
        store: &BlobStore,
        images: Vec<(platform::Platform, Image)>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Image> {
        let descriptors: Vec<Value> = images
            .iter()
            .map(|(platform, image)| {
                json!({
                    "mediaType": MEDIA_TYPE_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": image.manifest_size(),
                    "platform": platform,
                })
            })
            .collect();
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": descriptors,
        });
        if !annotations.is_empty() {
            index["annotations"] = json!(annotations);
        }
        let bytes = canonical_json(&index);
        let digest = store.put_bytes(&bytes)?;
        let mut layers: Vec<ImageLayer> = Vec::new();
        for (_, image) in &images {
            for layer in &image.layers {
                if !layers.iter().any(|l| l.blob.digest == layer.blob.digest) {
                    layers.push(layer.clone());
                }
            }
        }
        Ok(Image {
            layers,
            config_digest: String::new(),
            config_size: 0,
            manifest_bytes: bytes,
            manifest_digest: digest,
            platforms: images,
        })
    }

    /// Stores `config` and the manifest over it and `layers`.
    pub fn assemble(store: &BlobStore, config: &Value, layers: Vec<ImageLayer>) -> Result<Image> {
        Image::assemble_annotated(store, config, layers, &BTreeMap::new())
    }

    /// [`Image::assemble`], the manifest carrying `annotations` (none: no
    /// `annotations` member, the same bytes as before).
    pub fn assemble_annotated(
        store: &BlobStore,
        config: &Value,
        layers: Vec<ImageLayer>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Image> {
        let config_bytes = canonical_json(config);
        let config_digest = store.put_bytes(&config_bytes)?;
        let layer_descriptors: Vec<Value> = layers
            .iter()
            .map(|layer| {
                let mut d = json!({
                    "mediaType": oci_layer_media_type(&layer.blob.media_type),
                    "digest": layer.blob.digest,
                    "size": layer.blob.size,
                });
                if !layer.annotations.is_empty() {
                    d["annotations"] = json!(layer.annotations);
                }
                d
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layer_descriptors,
        });
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        let manifest_bytes = canonical_json(&manifest);
        let manifest_digest = store.put_bytes(&manifest_bytes)?;
        Ok(Image {
            layers,
            config_digest,
            config_size: config_bytes.len() as u64,
            manifest_bytes,
            manifest_digest,
            platforms: Vec::new(),
        })
    }
}

/// Docker schema 2 layer types carry the same bytes as their OCI
/// counterparts; an OCI manifest must name the OCI type.
pub fn oci_layer_media_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        other => other,
    }
}

/// RFC 3339 UTC time of `epoch` seconds, as image configs store it.
pub fn rfc3339(epoch: u64) -> Result<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .with_context(|| format!("epoch {epoch} is out of range"))?;
    Ok(time.format(&time::format_description::well_known::Rfc3339)?)
}

/// What the experiment stage adds to the base image's config.
#[derive(Debug, Clone)]
pub struct ConfigChanges {
    pub epoch: u64,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
}

/// A new config from the base's: base fields kept as they are (including
/// Docker-only ones such as Healthcheck), our changes applied, our layers
/// appended to rootfs and history with the build epoch as their time.
pub fn derive_config(
    base_config: &Value,
    changes: &ConfigChanges,
    new_layers: &[(&ImageLayer, &str)],
) -> Result<Value> {
    let mut config = base_config.clone();
    let Some(root) = config.as_object_mut() else {
        bail!("the base image config is not a JSON object");
    };
    let created = rfc3339(changes.epoch)?;
    root.insert("created".into(), json!(created));
    let inner = root
        .entry("config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("the base image config's \"config\" is not an object")?;
    if !changes.env.is_empty() {
        let mut env: Vec<String> = match inner.get("Env") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        for (key, value) in &changes.env {
            let entry = format!("{key}={value}");
            let prefix = format!("{key}=");
            match env.iter_mut().find(|e| e.starts_with(&prefix)) {
                Some(existing) => *existing = entry,
                None => env.push(entry),
            }
        }
        inner.insert("Env".into(), json!(env));
    }
    if let Some(dir) = &changes.working_dir {
        inner.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(cmd) = &changes.cmd {
        inner.insert("Cmd".into(), json!(cmd));
    }
    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .context("the base image config has no rootfs.diff_ids list")?;
    let base_layer_count = diff_ids.len();
    for (layer, _) in new_layers {
        diff_ids.push(json!(layer.blob.diff_id));
    }
    let history = root.entry("history").or_insert_with(|| json!([]));
    let history = history
        .as_array_mut()
        .context("the base image's history is not a list")?;
    pad_history(history, base_layer_count, &created);
    for (_, created_by) in new_layers {
        history.push(json!({
            "created": created,
            "created_by": created_by,
            "comment": "dallinger-oci",
        }));
    }
    add_labels(&mut config, &changes.labels)?;
    Ok(config)
}

/// Tools that pair history with layers need one non-empty entry per base
/// layer: a base with fewer (none, say) gets placeholders.
pub fn pad_history(history: &mut Vec<Value>, base_layers: usize, created: &str) {
    let non_empty = history
        .iter()
        .filter(|h| {
            !h.get("empty_layer")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .count();
    for _ in non_empty..base_layers {
        history.push(json!({"created": created, "created_by": "base image layer"}));
    }
}

/// Sets `labels` in a config's `config.Labels`, over what it holds (none:
/// the config is left as it is).
pub fn add_labels(config: &mut Value, labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let inner = config
        .as_object_mut()
        .context("the image config is not a JSON object")?
        .entry("config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("the image config's \"config\" is not an object")?;
    let existing = inner.entry("Labels").or_insert_with(|| json!({}));
    // Docker writes `"Labels": null` for an image without labels.
    if existing.is_null() {
        *existing = json!({});
    }
    let existing = existing
        .as_object_mut()
        .context("the base image's Labels is not an object")?;
    for (k, v) in labels {
        existing.insert(k.clone(), json!(v));
    }
    Ok(())
}
