//! `docker-archive:FILE`: the image as one tar that `docker load` and
//! `podman load` read (see `image::archive::write`).

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{Built, Env, Sink};
use crate::image::archive;

pub struct DockerArchive {
    pub file: PathBuf,
}

impl DockerArchive {
    pub fn parse(rest: &str, text: &str) -> Result<Box<dyn Sink>> {
        if rest.is_empty() {
            bail!("output {text:?} names no file: use docker-archive:FILE");
        }
        Ok(Box::new(DockerArchive {
            file: PathBuf::from(rest),
        }))
    }
}

impl Sink for DockerArchive {
    fn write(&self, built: &Built, env: &Env) -> Result<String> {
        env.fetch_missing(built)?;
        archive::write_named(
            built.store,
            built.image,
            &self.file,
            &built.names(),
            built.epoch,
        )?;
        Ok(format!("Wrote docker-archive:{}", self.file.display()))
    }

    fn one_platform(&self) -> Option<&str> {
        Some("docker-archive:FILE")
    }
}
