//! `oci:DIR[:TAG]`: the image in an OCI image layout directory (see
//! `image::layout::write`).

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{Built, Env, Sink};
use crate::image::layout;

pub struct OciLayout {
    pub dir: PathBuf,
    /// The name in `index.json`; every tag of the image when absent.
    pub tag: Option<String>,
}

impl OciLayout {
    pub fn parse(rest: &str, text: &str) -> Result<Box<dyn Sink>> {
        let (dir, tag) = crate::base::split_dir_and_tag(rest);
        if dir.as_os_str().is_empty() {
            bail!("output {text:?} names no directory: use oci:DIR[:TAG]");
        }
        Ok(Box::new(OciLayout { dir, tag }))
    }
}

impl Sink for OciLayout {
    fn write(&self, built: &Built, env: &Env) -> Result<String> {
        env.fetch_missing(built)?;
        let tags = match &self.tag {
            Some(tag) => vec![tag.as_str()],
            None => built.tags(),
        };
        layout::write_tags(built.store, built.image, &self.dir, &tags)?;
        let written: Vec<String> = tags
            .iter()
            .map(|tag| format!("oci:{}:{tag}", self.dir.display()))
            .collect();
        Ok(format!("Wrote {}", written.join(", ")))
    }
}
