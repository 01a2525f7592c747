//! Base images: where they come from (`scratch`, an OCI layout, a root
//! filesystem tarball) and what they give the build: a config, layers in the
//! store, and the name and digest recorded in the image's labels.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Codec, KeyHasher};
use serde_json::{json, Value};

use crate::image::store::{BlobStore, LayerDescription, StoredLayer};
use crate::image::{layout, Image, ImageLayer, RemoteBlob};

/// Where the base image comes from, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
    Rootfs {
        file: PathBuf,
    },
    /// `docker://HOST/REPO:TAG`, `…@sha256:…`, or a plain reference.
    Registry(crate::registry::Reference),
}

impl BaseRef {
    pub fn parse(text: &str) -> Result<BaseRef> {
        if text == "scratch" {
            return Ok(BaseRef::Scratch);
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split_dir_and_tag(rest);
            return Ok(BaseRef::OciLayout { dir, tag });
        }
        if let Some(file) = text.strip_prefix("rootfs:") {
            if file.is_empty() {
                bail!("base {text:?} names no file: use rootfs:FILE.tar");
            }
            return Ok(BaseRef::Rootfs {
                file: PathBuf::from(file),
            });
        }
        crate::registry::Reference::parse(text)
            .map(BaseRef::Registry)
            .with_context(|| {
                format!("unknown base {text:?}: use docker://HOST/REPO:TAG, oci:DIR[:TAG], rootfs:FILE.tar or scratch")
            })
    }
}

/// Splits `DIR[:TAG]`: a final `:` part without `/` is the tag.
pub fn split_dir_and_tag(text: &str) -> (PathBuf, Option<String>) {
    match text.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() && !dir.is_empty() => {
            (PathBuf::from(dir), Some(tag.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

/// A resolved base image: every layer blob is in the store.
#[derive(Clone)]
pub struct BaseImage {
    pub config: Value,
    pub layers: Vec<ImageLayer>,
    /// `org.opencontainers.image.base.name`, when the base has a portable name.
    pub name: Option<String>,
    /// `org.opencontainers.image.base.digest`: the base manifest's digest.
    pub digest: Option<String>,
}

/// `os/arch` for bases that do not say (scratch, root filesystems). Fixed,
/// never the host's, so the same command gives the same image everywhere.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

pub fn resolve(base: &BaseRef, store: &BlobStore, platform: &str, epoch: u64) -> Result<BaseImage> {
    resolve_with(base, store, platform, epoch, &|_, _| {})
}

/// [`resolve`], calling `before_import` with a layout base and its blobs'
/// files in the layout (unverified) before they are imported into the
/// store, for work that can read them meanwhile.
pub fn resolve_with(
    base: &BaseRef,
    store: &BlobStore,
    platform: &str,
    epoch: u64,
    before_import: &dyn Fn(&BaseImage, Vec<PathBuf>),
) -> Result<BaseImage> {
    match base {
        BaseRef::Scratch => Ok(BaseImage {
            config: empty_config(platform)?,
            layers: Vec::new(),
            name: None,
            digest: None,
        }),
        BaseRef::OciLayout { dir, tag } => {
            from_layout(dir, tag.as_deref(), store, platform, before_import)
        }
        BaseRef::Rootfs { file } => from_rootfs(file, store, platform, epoch),
        BaseRef::Registry(_) => bail!("registry bases are resolved by the registry module"),
    }
}

fn empty_config(platform: &str) -> Result<Value> {
    let platform = crate::image::platform::Platform::parse(platform)?;
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    });
    if let Some(variant) = platform.variant {
        config["variant"] = json!(variant);
    }
    Ok(config)
}

fn from_layout(
    dir: &Path,
    tag: Option<&str>,
    store: &BlobStore,
    platform: &str,
    before_import: &dyn Fn(&BaseImage, Vec<PathBuf>),
) -> Result<BaseImage> {
    let found = layout::find_manifest(dir, tag, platform)
        .with_context(|| format!("base oci:{}", dir.display()))?;
    let manifest: Value = serde_json::from_slice(&found.bytes)?;
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .context("the base manifest has no config")?;
    let config: Value = serde_json::from_slice(&layout::read_verified(dir, config_digest)?)
        .context("the base image config is not JSON")?;
    let layers = layers_of(&manifest, &config, None)
        .with_context(|| format!("base oci:{}", dir.display()))?;
    // A ref name that is a full image reference is a portable base name; a
    // bare tag or a local directory is not, and no host path may enter the image.
    let name = found.ref_name.filter(|n| n.contains('/'));
    let image = BaseImage {
        config,
        layers,
        name,
        digest: Some(found.digest),
    };
    let files = image
        .layers
        .iter()
        .map(|l| layout::blob_path(dir, &l.blob.digest))
        .collect::<Result<Vec<_>>>()?;
    before_import(&image, files);
    for layer in &image.layers {
        let (digest, size) = (&layer.blob.digest, layer.blob.size);
        store.import_blob(&layout::blob_path(dir, digest)?, digest, size)?;
    }
    Ok(image)
}

/// The layers a manifest lists, paired with its config's diff_ids.
pub fn layers_of(
    manifest: &Value,
    config: &Value,
    remote: Option<RemoteBlob>,
) -> Result<Vec<ImageLayer>> {
    let diff_ids: Vec<&str> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let descriptors = manifest
        .get("layers")
        .and_then(Value::as_array)
        .context("the manifest has no layers list")?;
    if descriptors.len() != diff_ids.len() {
        bail!(
            "the manifest lists {} layers but the config {} diff_ids",
            descriptors.len(),
            diff_ids.len()
        );
    }
    descriptors
        .iter()
        .zip(diff_ids)
        .map(|(descriptor, diff_id)| {
            let field = |name: &str| descriptor.get(name);
            Ok(ImageLayer {
                blob: StoredLayer {
                    diff_id: diff_id.to_string(),
                    digest: field("digest")
                        .and_then(Value::as_str)
                        .context("a layer has no digest")?
                        .to_string(),
                    size: field("size")
                        .and_then(Value::as_u64)
                        .context("a layer has no size")?,
                    media_type: field("mediaType")
                        .and_then(Value::as_str)
                        .unwrap_or(Codec::Gzip.media_type())
                        .to_string(),
                },
                annotations: field("annotations")
                    .and_then(|a| serde_json::from_value(a.clone()).ok())
                    .unwrap_or_default(),
                remote: remote.clone(),
            })
        })
        .collect()
}

fn from_rootfs(file: &Path, store: &BlobStore, platform: &str, epoch: u64) -> Result<BaseImage> {
    let meta = fs::metadata(file)
        .with_context(|| format!("cannot read the base root filesystem {}", file.display()))?;
    if !meta.is_file() {
        bail!("base rootfs:{} is not a file", file.display());
    }
    let mut key = KeyHasher::new();
    key.str(&store.file_digest(file)?);
    let produced = store.produce(LayerDescription {
        kind: "rootfs",
        key,
        created_by: "dallinger-oci: root filesystem imported from a tarball".into(),
        fill: Box::new(|writer| {
            let reader = BufReader::with_capacity(1 << 20, File::open(file)?);
            writer.tar(&format!("base rootfs:{}", file.display()), reader)
        }),
    })?;
    let layer = produced.layer;
    let mut config = empty_config(platform)?;
    config["created"] = json!(crate::image::rfc3339(epoch)?);
    config["rootfs"]["diff_ids"] = json!([layer.blob.diff_id]);
    config["history"] = json!([{
        "created": crate::image::rfc3339(epoch)?,
        "created_by": produced.created_by,
    }]);
    // The base as an image of its own, so its digest can be recorded.
    let base_image = Image::assemble(store, &config, vec![layer.clone()])?;
    Ok(BaseImage {
        config,
        layers: vec![layer],
        name: None,
        digest: Some(base_image.manifest_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_references() {
        assert_eq!(BaseRef::parse("scratch").unwrap(), BaseRef::Scratch);
        assert_eq!(
            BaseRef::parse("oci:some/dir:v1").unwrap(),
            BaseRef::OciLayout {
                dir: "some/dir".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            BaseRef::parse("oci:/abs/dir").unwrap(),
            BaseRef::OciLayout {
                dir: "/abs/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            BaseRef::parse("rootfs:base.tar").unwrap(),
            BaseRef::Rootfs {
                file: "base.tar".into()
            }
        );
        assert!(matches!(
            BaseRef::parse("ghcr.io/dallinger/dallinger:12.3.0").unwrap(),
            BaseRef::Registry(r) if r.repository == "dallinger/dallinger"
        ));
        assert!(matches!(
            BaseRef::parse("docker://127.0.0.1:5000/base:v1").unwrap(),
            BaseRef::Registry(r) if r.registry == "127.0.0.1:5000"
        ));
        assert!(BaseRef::parse("docker://Bad Name").is_err());
    }
}
