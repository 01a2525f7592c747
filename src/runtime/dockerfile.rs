//! Building a Dockerfile with a container engine (`--dockerfile-engine`):
//! the engine builds the context and saves the result as an image archive.
//! What to build (the context, reading the archive back) is
//! `crate::dockerfile`'s; running the engine is this module's.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

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

    /// The engine's program, as the user names it.
    pub fn program(self) -> &'static str {
        match self {
            DockerfileEngine::Podman => "podman",
            DockerfileEngine::Docker => "docker",
            DockerfileEngine::Buildah => "buildah",
        }
    }

    /// Builds the Dockerfile in `context` as `image_name`, then saves that
    /// image to `archive`: an OCI archive (podman, buildah) or docker's
    /// archive, which from docker 25 on holds an OCI layout too. The
    /// engine's progress goes to our standard error.
    pub fn build_and_save(self, context: &Path, image_name: &str, archive: &Path) -> Result<()> {
        let program = self.program();
        // `buildah build` is `buildah bud`; all three take the same arguments.
        run_engine(
            Command::new(program)
                .arg("build")
                .args(["-t", image_name])
                .arg(context),
            program,
            "build",
        )?;
        let archive_arg = archive.to_string_lossy().into_owned();
        let mut save = Command::new(program);
        match self {
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
        run_engine(&mut save, program, "save")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_by_name() {
        for engine in [
            DockerfileEngine::Podman,
            DockerfileEngine::Docker,
            DockerfileEngine::Buildah,
        ] {
            assert_eq!(DockerfileEngine::parse(engine.program()).unwrap(), engine);
        }
        let err = DockerfileEngine::parse("nerdctl").unwrap_err().to_string();
        assert_eq!(
            err,
            "--dockerfile-engine \"nerdctl\": choose podman, docker or buildah"
        );
    }

    #[test]
    fn a_missing_engine_is_one_line_naming_it() {
        let err = run_engine(
            &mut Command::new("/nonexistent/dallinger-oci-no-such-engine"),
            "podman",
            "build",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--dockerfile-engine podman: podman is not installed (or not on PATH)"
        );
    }
}
