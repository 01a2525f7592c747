//! Python dependencies without pip: requirements and markers, the target
//! interpreter read from the base image, wheels chosen and fetched from an
//! index, and installed natively into layers.

pub mod bytecode;
pub mod git_source;
pub mod index;
pub mod install;
pub mod layers;
pub mod markers;
pub mod metadata;
pub mod pins;
pub mod requirements;
pub mod resolve;
pub mod sdist;
pub mod source_dir;
pub mod tags;
pub mod target;
pub mod wheel;

pub use target::{InstalledDist, Target, TargetOverrides};
