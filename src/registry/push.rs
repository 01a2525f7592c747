//! Pushing an image from the blob store: blobs in parallel (skipped when
//! present, mounted when another repository of the registry has them,
//! fetched from their own registry when the store lacks them), the config,
//! and the manifest last; `--use-existing`'s reuse, and what a push prints.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::client::{BlobOutcome, BlobUpload, RegistryClient};
use super::error::RegistryError;
use super::reference::Reference;
use crate::image::store::{BlobStore, VerifiedBlob};
use crate::image::{Image, ImageLayer};

pub struct PushOptions {
    /// Force chunked uploads with PATCHes of this many bytes.
    pub chunk_size: Option<u64>,
    /// Blobs uploaded at once.
    pub parallel: usize,
    /// Reuse the image in the registry when it has exactly this digest.
    pub use_existing: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            chunk_size: None,
            parallel: 3,
            use_existing: false,
        }
    }
}

/// The push target an image's name (`{docker_image_base_name}:{tag}`)
/// gives; a name without a registry host is refused.
pub fn image_target(image_name: &str) -> Result<Reference> {
    let target = Reference::parse(image_name)?;
    if !target.registry.contains('.')
        && !target.registry.contains(':')
        && target.registry != "localhost"
    {
        bail!("cannot push {image_name}: docker_image_base_name must name a registry");
    }
    Ok(target)
}

/// An image in a registry after [`publish`].
pub struct Published {
    pub target: Reference,
    pub digest: String,
    /// `--use-existing` found it there: nothing was uploaded.
    pub reused: bool,
}

impl Published {
    /// `HOST/REPO@sha256:HEX`, Dallinger's form.
    pub fn repository_ref(&self) -> String {
        format!("{}@{}", self.target.name(), self.digest)
    }

    /// `HOST/REPO:TAG@sha256:HEX`.
    pub fn pinned(&self) -> String {
        match &self.target.tag {
            Some(tag) => format!("{}:{tag}@{}", self.target.name(), self.digest),
            None => self.repository_ref(),
        }
    }
}

/// Puts `image` at `target`: with `use_existing`, an image already there
/// with exactly this digest is reused (only its tag is pointed at it);
/// otherwise every blob and the manifest are pushed. Says on stderr what
/// it did.
pub fn publish(
    client: &RegistryClient,
    store: &BlobStore,
    image: &Image,
    target: &Reference,
    options: &PushOptions,
) -> Result<Published> {
    let digest = &image.manifest_digest;
    let published = Published {
        target: target.clone(),
        digest: digest.clone(),
        reused: false,
    };
    let repository_ref = published.repository_ref();
    // Only a 404 means absent: a refusal (401, 403) is an error, not a push.
    if options.use_existing
        && client
            .has_manifest(&target.repository, digest)
            .with_context(|| format!("checking whether {repository_ref} is in the registry"))?
    {
        eprintln!(
            "Image {repository_ref} is already in the registry and every input is unchanged: reusing it, nothing uploaded"
        );
        // The tag may still point elsewhere: point it at this image.
        client.put_manifest(
            &target.repository,
            target.tag.as_deref().unwrap_or(digest),
            image.media_type(),
            &image.manifest_bytes,
            digest,
        )?;
        return Ok(Published {
            reused: true,
            ..published
        });
    }
    let report = push_image(client, store, image, target, options)?;
    eprintln!(
        "{}: digest: {digest} size: {}",
        target.tag.as_deref().unwrap_or(""),
        image.manifest_size()
    );
    eprintln!("Uploaded {} bytes of blobs", report.uploaded_bytes);
    Ok(published)
}

/// Ends a push as Dallinger does (`Pushed image: …`, `Image … built and
/// pushed.`), and under GitHub Actions appends `digest=` and `image=` to
/// the step outputs (`GITHUB_OUTPUT`).
pub fn announce(published: &Published) -> Result<()> {
    let (digest, repository_ref) = (&published.digest, published.repository_ref());
    println!("Pushed image: {digest}\n");
    println!("Image {repository_ref} built and pushed.\n");
    if let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot append to GITHUB_OUTPUT ({})", path.display()))?;
        writeln!(file, "digest={digest}\nimage={repository_ref}")
            .with_context(|| format!("cannot append to GITHUB_OUTPUT ({})", path.display()))?;
    }
    Ok(())
}

pub struct PushReport {
    pub manifest_digest: String,
    /// Bytes of blob content sent (mounted and existing blobs send none).
    pub uploaded_bytes: u64,
    pub blobs: Vec<(String, BlobOutcome)>,
}

/// Pushes `image` to `target` (its tag, or its digest when it has no tag).
/// A base layer the store lacks is mounted when it comes from another
/// repository of the target's registry; otherwise (or when the registry
/// will not mount it) the store fetches it from its own registry (its
/// registered fetcher), verified, and it is uploaded from there.
pub fn push_image(
    client: &RegistryClient,
    store: &BlobStore,
    image: &Image,
    target: &Reference,
    options: &PushOptions,
) -> Result<PushReport> {
    let repository = target.repository.as_str();
    let mut blobs: Vec<Blob> = image
        .layers
        .iter()
        .map(|layer| Blob {
            digest: &layer.blob.digest,
            size: layer.blob.size,
            // A base layer from this registry, or a blob we pushed to
            // another repository of it before, can be mounted.
            mount: layer
                .remote
                .as_ref()
                .filter(|r| r.registry == target.registry)
                .map(|r| r.repository.clone())
                .or_else(|| store.pushed_to(&target.registry, &layer.blob.digest)),
            fetchable: layer.remote.is_some().then_some(layer),
        })
        .collect();
    // Each image's config (an index's: every platform's).
    blobs.extend(image.manifests().into_iter().map(|manifest| Blob {
        digest: &manifest.config_digest,
        size: manifest.config_size,
        mount: None,
        fetchable: None,
    }));

    // Bars on a terminal; plain lines in CI or when stderr is not a tty.
    let interactive = std::io::stderr().is_terminal()
        && !std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {msg}")
        .expect("valid template");
    let uploaded = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.max(1).min(blobs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= blobs.len() || first_error.lock().unwrap().is_some() {
                    return;
                }
                let blob = &blobs[i];
                let (digest, mount) = (blob.digest, blob.mount.as_deref());
                let bar = if interactive {
                    let bar = bars.add(ProgressBar::new(blob.size).with_style(style.clone()));
                    bar.set_prefix(short(digest).to_string());
                    bar
                } else {
                    ProgressBar::hidden()
                };
                let result = push_blob(client, store, repository, blob, options, &bar);
                match result {
                    Ok(outcome) => {
                        if let BlobOutcome::Uploaded { bytes } = outcome {
                            uploaded.fetch_add(bytes, Ordering::SeqCst);
                        }
                        let text = describe(outcome, mount);
                        if interactive {
                            bar.finish_with_message(text);
                        } else {
                            eprintln!("{}: {text}", short(digest));
                        }
                        store.remember_pushed(&target.registry, digest, repository);
                        outcomes.lock().unwrap().push((digest.to_string(), outcome));
                    }
                    Err(err) => {
                        first_error.lock().unwrap().get_or_insert(err);
                        return;
                    }
                }
            });
        }
    });
    if let Some(err) = first_error.into_inner().unwrap() {
        return Err(err);
    }
    // An index's images by digest, before the index that names them.
    for (platform, manifest) in &image.platforms {
        client
            .put_manifest(
                repository,
                &manifest.manifest_digest,
                manifest.media_type(),
                &manifest.manifest_bytes,
                &manifest.manifest_digest,
            )
            .with_context(|| format!("pushing the {platform} image of {target}"))?;
        eprintln!("{platform}: digest: {}", manifest.manifest_digest);
    }
    put_by_digest_then_tag(client, image, target)?;
    let mut blobs = outcomes.into_inner().unwrap();
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(PushReport {
        manifest_digest: image.manifest_digest.clone(),
        uploaded_bytes: uploaded.into_inner(),
        blobs,
    })
}

/// Puts the manifest by its digest, then under the target's tag, as
/// rules_oci does: the image is in the registry before any tag names it. A
/// registry that takes manifests only under tags (it answers 400, 404 or
/// 405 to the digest) gets the tag alone.
fn put_by_digest_then_tag(
    client: &RegistryClient,
    image: &Image,
    target: &Reference,
) -> Result<()> {
    let (repository, digest) = (target.repository.as_str(), &image.manifest_digest);
    let put = |reference: &str| {
        client.put_manifest(
            repository,
            reference,
            image.media_type(),
            &image.manifest_bytes,
            digest,
        )
    };
    match put(digest) {
        Ok(()) => {}
        Err(RegistryError::NotFound { .. }) if target.tag.is_some() => {}
        Err(RegistryError::Status { status, .. })
            if target.tag.is_some() && matches!(status, 400 | 405) => {}
        Err(err) => return Err(err).with_context(|| format!("pushing {target}")),
    }
    if let Some(tag) = &target.tag {
        put(tag).with_context(|| format!("pushing {target}"))?;
    }
    Ok(())
}

/// Points each of `tags` of the target's repository at `image`, already
/// pushed there (`--tag a --tag b`), saying so on stderr.
pub fn add_tags(
    client: &RegistryClient,
    image: &Image,
    target: &Reference,
    tags: &[String],
) -> Result<()> {
    for tag in tags {
        let name = format!("{}:{tag}", target.name());
        client
            .put_manifest(
                &target.repository,
                tag,
                image.media_type(),
                &image.manifest_bytes,
                &image.manifest_digest,
            )
            .with_context(|| format!("tagging {name}"))?;
        eprintln!("Tagged {name}@{}", image.manifest_digest);
    }
    Ok(())
}

/// One blob of an image to push.
struct Blob<'a> {
    digest: &'a str,
    size: u64,
    /// A repository of the target's registry it may be mounted from.
    mount: Option<String>,
    /// The base layer it is, fetched from its registry if the store lacks it.
    fetchable: Option<&'a ImageLayer>,
}

/// Pushes one blob, streamed out of the store (fetched into it first only
/// when the registry has it neither in the repository nor by mount).
fn push_blob(
    client: &RegistryClient,
    store: &BlobStore,
    repository: &str,
    blob: &Blob,
    options: &PushOptions,
    bar: &ProgressBar,
) -> Result<BlobOutcome> {
    let (digest, size) = (blob.digest, blob.size);
    // The bytes are hashed as they stream out of the store; a blob that
    // does not match its digest is never completed (its last bytes are
    // withheld), so the registry never commits it; it is removed from the
    // store, and the push stops with the line saying so.
    let corrupt: Arc<Mutex<Option<String>>> = Arc::default();
    let open = || -> Result<VerifiedBlob> {
        if let Some(message) = corrupt.lock().unwrap().clone() {
            anyhow::bail!("{message}");
        }
        if let Some(layer) = blob.fetchable.filter(|_| !store.has_blob(digest, size)) {
            store.fetch_missing(std::slice::from_ref(layer))?;
        }
        Ok(store.open_blob(digest, size)?.report_to(corrupt.clone()))
    };
    if !store.blob_path(digest)?.exists() && blob.mount.is_none() && blob.fetchable.is_none() {
        anyhow::bail!("blob {digest} is not in the cache and cannot be mounted");
    }
    let upload = BlobUpload {
        repository,
        digest,
        size,
        open: &open,
    };
    client
        .push_blob(&upload, blob.mount.as_deref(), options.chunk_size, bar)
        .map_err(|e| match corrupt.lock().unwrap().clone() {
            Some(message) => anyhow::anyhow!("{message}"),
            None => e.into(),
        })
}

fn describe(outcome: BlobOutcome, mount: Option<&str>) -> String {
    match outcome {
        BlobOutcome::Existed => "already exists".into(),
        BlobOutcome::Mounted => format!("mounted from {}", mount.unwrap_or("another repository")),
        BlobOutcome::Uploaded { bytes } => format!("pushed {bytes} bytes"),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
