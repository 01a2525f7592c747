//! Wheels built from source: sdists, git requirements and local source
//! trees, each built by the target's own Python in the sandbox.

mod dir;
pub(crate) mod git;
mod sdist;

pub use dir::{dallinger_from_source, warn_about_editable_dallinger, SourceMount};
pub(crate) use git::GitUrl;
pub use sdist::{BuilderImage, BuiltWheel, SdistBuilder};
