//! Wheels built from source: sdists, git requirements and local source
//! trees, each built by the target's own Python in the sandbox.

pub mod dir;
pub mod git;
pub mod sdist;
