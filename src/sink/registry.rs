//! `docker://HOST/REPO:TAG`: the image pushed to a registry, as crane and ko
//! push (see `registry::push::publish`). `push` pushes through the same
//! sink to the image's own name.

use anyhow::{bail, Result};

use super::{Built, Env, Sink};
use crate::registry::push::{self, Published};
use crate::registry::Reference;

pub struct RegistrySink {
    pub target: Reference,
}

impl RegistrySink {
    pub fn parse(rest: &str, text: &str) -> Result<Box<dyn Sink>> {
        if rest.is_empty() {
            bail!("output {text:?} names no image: use docker://HOST/REPO:TAG");
        }
        let target = Reference::parse(rest)?;
        if target.tag.is_none() {
            bail!(
                "output {text:?} names no tag: use docker://HOST/REPO:TAG (the image is pushed \
                 under that tag)"
            );
        }
        if target.digest.is_some() {
            bail!(
                "output {text:?} names a digest: use docker://HOST/REPO:TAG (the build decides \
                 the digest)"
            );
        }
        Ok(Box::new(RegistrySink { target }))
    }

    /// Pushes `built` (or, with `--use-existing`, reuses it) at the target.
    pub fn publish(&self, built: &Built, env: &Env) -> Result<Published> {
        self.publish_tagged(built, env, &[])
    }

    /// [`RegistrySink::publish`], then tags the image with `extra_tags` in
    /// the target's repository as well.
    pub fn publish_tagged(
        &self,
        built: &Built,
        env: &Env,
        extra_tags: &[String],
    ) -> Result<Published> {
        let client = env.registry.client(&self.target)?;
        let published = push::publish(&client, built.store, built.image, &self.target, env.push)?;
        push::add_tags(&client, built.image, &self.target, extra_tags)?;
        Ok(published)
    }
}

impl Sink for RegistrySink {
    fn write(&self, built: &Built, env: &Env) -> Result<String> {
        Ok(format!("Pushed {}", self.publish(built, env)?.pinned()))
    }

    fn push_target(&self) -> Option<&Reference> {
        Some(&self.target)
    }
}
