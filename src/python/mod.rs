//! Python dependencies without pip: requirements and markers, the target
//! interpreter read from the base image, wheels chosen and fetched from an
//! index, and installed natively into layers.

pub mod target;

pub use target::{InstalledDist, Target, TargetOverrides};
