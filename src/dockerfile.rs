//! An experiment's own `Dockerfile`, handed to a container engine when the
//! user names one (`--dockerfile-engine`): the only build that needs one. The
//! context is the experiment's file set as Dallinger assembles it; the
//! engine's result is read back as an OCI layout, so outputs and pushes are
//! ours. Its digest is whatever the engine makes: not reproducible.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::base::{self, BaseImage, BaseRef};
use crate::experiment::{Experiment, FileKind};
use crate::image::store::BlobStore;

/// The engines that can build a Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerfileEngine {
    Podman,
    Docker,
    Buildah,
}

impl DockerfileEngine {
    pub fn parse(text: &str) -> Result<DockerfileEngine> {
        Ok(match text {
            "podman" => DockerfileEngine::Podman,
            "docker" => DockerfileEngine::Docker,
            "buildah" => DockerfileEngine::Buildah,
            other => bail!("--dockerfile-engine {other:?}: choose podman, docker or buildah"),
        })
    }

    fn program(self) -> &'static str {
        match self {
            DockerfileEngine::Podman => "podman",
            DockerfileEngine::Docker => "docker",
            DockerfileEngine::Buildah => "buildah",
        }
    }
}

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
    // `buildah build` is `buildah bud`; all three take the same arguments.
    run_engine(
        Command::new(program)
            .arg("build")
            .args(["-t", image_name])
            .arg(&context),
        program,
        "build",
    )?;
    let archive_arg = archive.to_string_lossy().into_owned();
    let mut save = Command::new(program);
    match engine {
        DockerfileEngine::Podman => save.args([
            "save",
            "--format",
            "oci-archive",
            "-o",
            &archive_arg,
            image_name,
        ]),
        DockerfileEngine::Docker => save.args(["save", "-o", &archive_arg, image_name]),
        DockerfileEngine::Buildah => {
            save.args(["push", image_name, &format!("oci-archive:{archive_arg}")])
        }
    };
    run_engine(&mut save, program, "save")?;
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

fn run_engine(command: &mut Command, program: &str, what: &str) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        // The engine's progress goes to our standard error: standard
        // output carries only the closing lines.
        .stdout(Stdio::from(
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot pass standard error on")?,
        ))
        .status()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "--dockerfile-engine {program}: {program} is not installed (or not on PATH)"
                )
            } else {
                anyhow::anyhow!("cannot run {program}: {e}")
            }
        })?;
    if !status.success() {
        bail!("`{program} {what}` of the experiment's Dockerfile failed ({status}); its output is above");
    }
    Ok(())
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
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
