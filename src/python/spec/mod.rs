//! Requirement specs: what the experiment asks for (requirements files,
//! markers, the pin set) and what a distribution's metadata asks for in turn.

pub mod markers;
pub mod metadata;
pub mod pins;
pub mod requirements;
