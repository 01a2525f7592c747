//! Python dependencies without pip: requirements and markers, the target
//! interpreter read from the base image, wheels chosen and fetched from an
//! index, and installed natively into layers.

pub mod index;
pub mod install;
pub use install::{bytecode, wheel};
pub mod layers;
pub mod resolve;
pub mod source;
pub use source::{dir as source_dir, git as git_source, sdist};
pub mod spec;
pub use spec::{markers, metadata, pins, requirements};
pub mod target;
pub use target::tags;

pub use target::{InstalledDist, Target, TargetOverrides};
