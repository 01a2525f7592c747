//! The image loaded into a container engine's own store (`podman load`,
//! `docker load`), streamed as a docker-archive without a file, then
//! checked: the engine must hold the name as this image.

use anyhow::{bail, Result};

use super::{Built, Env, Sink};
use crate::image::archive;
use crate::runtime::Engine;

pub struct EngineLoad<'a> {
    pub engine: &'a Engine,
}

impl Sink for EngineLoad<'_> {
    fn write(&self, built: &Built, env: &Env) -> Result<String> {
        let (engine, name) = (self.engine, built.name);
        env.fetch_missing(built)?;
        eprintln!("Loading {name} into {}…", engine.kind.name());
        engine.load(|out| archive::write_to(built.store, built.image, out, name, built.epoch))?;
        let loaded = engine.image_id(name)?;
        if loaded.as_deref() != Some(built.image.config_digest.as_str()) {
            bail!(
                "{} holds {name} as {}, not the image just built ({}): another process may have replaced the tag; run debug again",
                engine.kind.name(),
                loaded.as_deref().unwrap_or("nothing"),
                built.image.config_digest
            );
        }
        Ok(format!("Loaded {name} into {}", engine.kind.name()))
    }
}
