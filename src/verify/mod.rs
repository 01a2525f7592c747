//! `verify`: rebuild an image from its experiment and lock, and say whether
//! it is the same bytes; when not, where it differs: layer by layer (named
//! by its history), path by path with the wheel or Debian package each path
//! belongs to, then the config's fields.

pub mod checkout;
pub mod listing;
pub mod report;
pub mod subject;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build::{self, BuildRequest};
use crate::image::store::BlobStore;
pub use report::Report;
use subject::{Image, ImageRef};

/// What to verify and how to rebuild it.
pub struct VerifyRequest {
    /// `--image`, as given.
    pub image: String,
    /// The rebuild, as `build` would run it. With `from_labels`, its
    /// experiment directory is replaced by the checkout.
    pub build: BuildRequest,
    /// No experiment directory given: clone the image's source label at
    /// its revision label (`Some(--git-subdir)`).
    pub from_labels: Option<Option<PathBuf>>,
}

pub enum Outcome {
    Verified,
    Differs(Box<Report>),
}

/// Reads the image, rebuilds it, compares. The checkout (if any) lives in a
/// temporary directory removed on return.
pub fn verify(mut request: VerifyRequest) -> Result<Outcome> {
    let image_ref = ImageRef::parse(&request.image)?;
    let platform = crate::image::platform::Platform::parse(
        request
            .build
            .platform
            .as_deref()
            .unwrap_or(crate::base::DEFAULT_PLATFORM),
    )?
    .to_string();
    let store = BlobStore::open(&request.build.cache_dir)?
        .fetching_with(std::sync::Arc::new(request.build.registry.clone()));
    let image = Image::open(&image_ref, &store, &request.build.registry, &platform)
        .with_context(|| format!("reading {}", request.image))?;
    let _checkout = match &request.from_labels {
        Some(subdir) => {
            let (source, revision) = checkout::labels(&image.config, &request.image)?;
            let dir = tempfile::Builder::new()
                .prefix("dallinger-oci-verify-")
                .tempdir()
                .context("cannot create a temporary directory for the checkout")?;
            request.build.experiment_dir =
                checkout::checkout(&source, &revision, dir.path(), subdir.as_deref())?;
            Some(dir)
        }
        None => None,
    };
    eprintln!(
        "Rebuilding {} to compare with {}",
        request.build.experiment_dir.display(),
        request.image
    );
    let result = build::build(&request.build)?;
    let rebuilt = Image::built(&result.store, &result.image)?;
    if same(&image, &rebuilt) {
        return Ok(Outcome::Verified);
    }
    Ok(Outcome::Differs(Box::new(report::compare(
        &request.image,
        &image,
        &rebuilt,
    )?)))
}

/// The same manifest (or, for an old docker archive without one, the same
/// config, which holds every layer's diff_id).
fn same(image: &Image, rebuilt: &Image) -> bool {
    match &image.manifest_digest {
        Some(digest) => Some(digest) == rebuilt.manifest_digest.as_ref(),
        None => image.config_digest == rebuilt.config_digest,
    }
}
