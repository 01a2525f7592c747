//! Attaching a document (an SBOM) to an image in a registry as an OCI 1.1
//! referrer: an image manifest with `artifactType`, the empty config, the
//! document as its one layer, and `subject` the image. A registry with the
//! referrers API says so in the `OCI-Subject` header of the manifest PUT;
//! for one without (GHCR, Docker Hub, CNCF distribution 2.8), the
//! referrers tag schema: the tag `sha256-HEX` of the image digest holds an
//! image index of its referrers, read first and merged, so other referrers
//! stay.

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::client::{BlobUpload, RegistryClient};
use crate::image::store::BlobStore;
use crate::image::{canonical_json, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};

/// The empty config of artifacts: the two bytes `{}`.
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_JSON: &[u8] = b"{}";

/// A document to attach.
pub struct Artifact<'a> {
    /// The manifest's `artifactType` and the layer's media type.
    pub artifact_type: &'a str,
    pub bytes: &'a [u8],
    /// The layer's `org.opencontainers.image.title` (the file name).
    pub title: &'a str,
    /// `org.opencontainers.image.created` of the manifest (RFC 3339).
    pub created: &'a str,
}

/// The image a referrer refers to: its manifest's descriptor.
pub struct SubjectImage<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub media_type: &'a str,
}

/// How the referrer was made findable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The registry indexes `subject` itself (the referrers API).
    ReferrersApi { manifest: String },
    /// The referrers tag `sha256-HEX` lists it.
    FallbackTag { manifest: String, tag: String },
}

/// Pushes `artifact` as a referrer of `subject` in `repository`: the
/// blobs (from `store`, where the document is put first), the manifest by
/// digest, and, unless the registry took `subject`, the fallback tag.
pub fn attach(
    client: &RegistryClient,
    store: &BlobStore,
    repository: &str,
    subject: &SubjectImage,
    artifact: &Artifact,
) -> Result<Attached> {
    let empty = push_bytes(client, store, repository, EMPTY_JSON)?;
    let layer = push_bytes(client, store, repository, artifact.bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": {
            "mediaType": MEDIA_TYPE_EMPTY,
            "digest": empty,
            "size": EMPTY_JSON.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": artifact.artifact_type,
            "digest": layer,
            "size": artifact.bytes.len(),
            "annotations": {"org.opencontainers.image.title": artifact.title},
        }],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": {"org.opencontainers.image.created": artifact.created},
    });
    let bytes = canonical_json(&manifest);
    let digest = crate::image::store::sha256_digest(&bytes);
    let answered = client
        .put_manifest_with_subject(repository, &digest, MEDIA_TYPE_MANIFEST, &bytes, &digest)
        .with_context(|| format!("pushing the referrer manifest of {}", subject.digest))?;
    if answered.as_deref() == Some(subject.digest) {
        return Ok(Attached::ReferrersApi { manifest: digest });
    }
    let descriptor = json!({
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": digest,
        "size": bytes.len(),
        "artifactType": artifact.artifact_type,
        "annotations": manifest["annotations"],
    });
    let tag = fallback_tag(subject.digest)?;
    let existing = match client.get_manifest(repository, &tag) {
        Ok((bytes, _, _)) => Some(bytes),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading the referrers tag {repository}:{tag}")))
        }
    };
    let index = merged_index(existing.as_deref(), descriptor)
        .with_context(|| format!("the referrers tag {repository}:{tag}"))?;
    let index_bytes = canonical_json(&index);
    let index_digest = crate::image::store::sha256_digest(&index_bytes);
    client
        .put_manifest(
            repository,
            &tag,
            MEDIA_TYPE_INDEX,
            &index_bytes,
            &index_digest,
        )
        .with_context(|| format!("pushing the referrers tag {repository}:{tag}"))?;
    Ok(Attached::FallbackTag {
        manifest: digest,
        tag,
    })
}

/// `sha256-HEX`: the referrers tag of the manifest `digest`.
pub fn fallback_tag(digest: &str) -> Result<String> {
    let hex = crate::image::store::hex_of(digest)?;
    Ok(format!("sha256-{hex}"))
}

/// The referrers index with `descriptor` in it: the existing one's
/// referrers kept in their order (an earlier copy of this one replaced),
/// this one last.
fn merged_index(existing: Option<&[u8]>, descriptor: Value) -> Result<Value> {
    let mut manifests: Vec<Value> = match existing {
        None => Vec::new(),
        Some(bytes) => {
            let index: Value =
                serde_json::from_slice(bytes).context("it holds no JSON image index")?;
            if index.get("mediaType").and_then(Value::as_str) != Some(MEDIA_TYPE_INDEX)
                && index.get("manifests").is_none()
            {
                bail!(
                    "it holds no image index, so it is not a referrers tag: remove that tag \
                     (it names the image's digest) and push again"
                );
            }
            index
                .get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        }
    };
    manifests.retain(|m| m.get("digest") != descriptor.get("digest"));
    manifests.push(descriptor);
    Ok(json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": manifests,
    }))
}

/// Puts `bytes` in the store and pushes them as a blob; returns the digest.
fn push_bytes(
    client: &RegistryClient,
    store: &BlobStore,
    repository: &str,
    bytes: &[u8],
) -> Result<String> {
    let digest = store.put_bytes(bytes)?;
    let size = bytes.len() as u64;
    let open = || store.open_blob(&digest, size);
    let upload = BlobUpload {
        repository,
        digest: &digest,
        size,
        open: &open,
    };
    client.push_blob(&upload, None, None, &ProgressBar::hidden())?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_other_referrers_and_replaces_this_one() {
        let other = json!({"mediaType": MEDIA_TYPE_MANIFEST, "digest": "sha256:01", "size": 1, "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"});
        let ours = json!({"mediaType": MEDIA_TYPE_MANIFEST, "digest": "sha256:02", "size": 2, "artifactType": "application/spdx+json"});
        let existing = canonical_json(
            &json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [other.clone(), ours.clone()]}),
        );
        let index = merged_index(Some(&existing), ours.clone()).unwrap();
        assert_eq!(index["manifests"], json!([other, ours]));
        let fresh = merged_index(None, ours.clone()).unwrap();
        assert_eq!(fresh["manifests"], json!([ours]));
        let image = canonical_json(
            &json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "layers": []}),
        );
        let err = merged_index(Some(&image), json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a referrers tag"), "{err}");
        assert_eq!(
            fallback_tag(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            format!("sha256-{}", "a".repeat(64))
        );
    }
}
