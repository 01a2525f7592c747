//! Pushing an image from the blob store: blobs in parallel (skipped when
//! present, mounted when another repository of the registry has them), the
//! config, and the manifest last.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::io::IsTerminal;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::client::{BlobOutcome, BlobUpload, RegistryClient};
use super::reference::Reference;
use crate::image::store::{BlobStore, VerifiedBlob};
use crate::image::{Image, MEDIA_TYPE_MANIFEST};

pub struct PushOptions {
    /// Force chunked uploads with PATCHes of this many bytes.
    pub chunk_size: Option<u64>,
    /// Blobs uploaded at once.
    pub parallel: usize,
}

pub struct PushReport {
    pub manifest_digest: String,
    /// Bytes of blob content sent (mounted and existing blobs send none).
    pub uploaded_bytes: u64,
    pub blobs: Vec<(String, BlobOutcome)>,
}

/// Pushes `image` to `target` (its tag, or its digest when it has no tag).
pub fn push_image(
    client: &RegistryClient,
    store: &BlobStore,
    image: &Image,
    target: &Reference,
    options: &PushOptions,
) -> Result<PushReport> {
    let repository = target.repository.as_str();
    // (digest, size, repository of this registry it may be mounted from)
    let mut blobs: Vec<(String, u64, Option<String>)> = image
        .layers
        .iter()
        .map(|layer| {
            // A base layer from this registry, or a blob we pushed to
            // another repository of it before, can be mounted.
            let mount = layer
                .remote
                .as_ref()
                .filter(|r| r.registry == target.registry)
                .map(|r| r.repository.clone())
                .or_else(|| store.pushed_to(&target.registry, &layer.blob.digest));
            (layer.blob.digest.clone(), layer.blob.size, mount)
        })
        .collect();
    blobs.push((image.config_digest.clone(), image.config_size, None));

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
                let (digest, size, mount) = &blobs[i];
                let bar = if interactive {
                    let bar = bars.add(ProgressBar::new(*size).with_style(style.clone()));
                    bar.set_prefix(short(digest).to_string());
                    bar
                } else {
                    ProgressBar::hidden()
                };
                // The bytes are hashed as they stream out of the store; a
                // blob that does not match its digest is never completed
                // (its last bytes are withheld), so the registry never
                // commits it; it is removed from the store, and the push
                // stops with the line saying so.
                let corrupt: Arc<Mutex<Option<String>>> = Arc::default();
                let open = || -> Result<VerifiedBlob> {
                    if let Some(message) = corrupt.lock().unwrap().clone() {
                        anyhow::bail!("{message}");
                    }
                    Ok(store.open_blob(digest, *size)?.report_to(corrupt.clone()))
                };
                let result = store.blob_path(digest).and_then(|path| {
                    if !path.exists() && mount.is_none() {
                        anyhow::bail!("blob {digest} is not in the cache and cannot be mounted");
                    }
                    let blob = BlobUpload {
                        repository,
                        digest,
                        size: *size,
                        open: &open,
                    };
                    client
                        .push_blob(&blob, mount.as_deref(), options.chunk_size, &bar)
                        .map_err(|e| match corrupt.lock().unwrap().clone() {
                            Some(message) => anyhow::anyhow!("{message}"),
                            None => e.into(),
                        })
                });
                match result {
                    Ok(outcome) => {
                        if let BlobOutcome::Uploaded { bytes } = outcome {
                            uploaded.fetch_add(bytes, Ordering::SeqCst);
                        }
                        let text = describe(outcome, mount.as_deref());
                        if interactive {
                            bar.finish_with_message(text);
                        } else {
                            eprintln!("{}: {text}", short(digest));
                        }
                        store.remember_pushed(&target.registry, digest, repository);
                        outcomes.lock().unwrap().push((digest.clone(), outcome));
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
    let tag = target.tag.as_deref().unwrap_or(&image.manifest_digest);
    client
        .put_manifest(
            repository,
            tag,
            MEDIA_TYPE_MANIFEST,
            &image.manifest_bytes,
            &image.manifest_digest,
        )
        .with_context(|| format!("pushing {target}"))?;
    let mut blobs = outcomes.into_inner().unwrap();
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(PushReport {
        manifest_digest: image.manifest_digest.clone(),
        uploaded_bytes: uploaded.into_inner(),
        blobs,
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
