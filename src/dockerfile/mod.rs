//! An experiment's own `Dockerfile`, handed to a container engine when the
//! user names one (`--dockerfile-engine`): the only build that needs one. The
//! context is the experiment's file set as Dallinger assembles it; the
//! engine (run by `crate::runtime`) saves its result as an archive, read back
//! as an OCI layout, so outputs and pushes are ours. Its digest is whatever
//! the engine makes: not reproducible.

use fs_err as fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::base::{self, BaseImage, BaseRef};
use crate::experiment::{Experiment, FileKind};
use crate::image::store::BlobStore;
pub use crate::runtime::DockerfileEngine;

pub mod native;
pub mod parse;

/// Builds the experiment's Dockerfile with `engine` as `image_name` and
/// returns the result, its blobs imported into `store`.
pub fn build_with_engine(
    engine: DockerfileEngine,
    experiment: &Experiment,
    image_name: &str,
    store: &BlobStore,
    platform: &str,
) -> Result<BaseImage> {
    let scratch = store
        .scratch_dir("dockerfile-")
        .context("cannot make a directory for the Dockerfile build")?;
    let context = scratch.path().join("context");
    write_context(experiment, &context)?;
    let archive = scratch.path().join("image.tar");
    let program = engine.program();
    eprintln!(
        "Found a custom Dockerfile in the experiment directory: building it with {program} \
         (the result is not reproducible)"
    );
    engine.build_and_save(&context, image_name, &archive)?;
    let layout = scratch.path().join("layout");
    let file =
        fs::File::open(&archive).with_context(|| format!("{program} wrote no image archive"))?;
    tar::Archive::new(file)
        .unpack(&layout)
        .with_context(|| format!("reading the image {program} saved"))?;
    if !layout.join("index.json").is_file() {
        bail!(
            "{program} saved the image without an OCI index (index.json): docker 25 or later, \
             podman or buildah write one"
        );
    }
    base::resolve(
        &BaseRef::OciLayout {
            dir: layout,
            tag: None,
        },
        store,
        platform,
        0,
    )
    .with_context(|| format!("reading the image {program} built"))
}

/// The experiment's files as Dallinger's temporary directory holds them.
fn write_context(experiment: &Experiment, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for file in &experiment.files {
        let path = dir.join(&file.rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let executable = match &file.kind {
            FileKind::File { source, executable } => {
                fs::copy(source, &path)
                    .with_context(|| format!("cannot copy {}", source.display()))?;
                *executable
            }
            FileKind::Generated { bytes, executable } => {
                fs::write(&path, bytes)?;
                *executable
            }
            FileKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path)?;
                continue;
            }
        };
        let mode = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
