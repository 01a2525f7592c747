//! Python dependencies without pip: requirements and markers, the target
//! interpreter read from the base image, wheels chosen and fetched from an
//! index, and installed natively into layers.
//!
//! Two steps, `resolve` (the pins to verified wheels and the lock) and
//! `python_layers` (the wheels to layers), over five seams, each with a
//! small surface: [`spec`] (what is asked for), [`target`] (the Python in
//! the base), [`index`] (where wheels come from), `source` (wheels built
//! from source) and [`install`] (wheels into a layer tree).

pub mod index;
pub mod install;
mod layers;
mod resolve;
pub(crate) mod source;
pub mod spec;
pub mod target;

pub use index::IndexConfig;
pub(crate) use layers::{python_layers, PythonLayers};
pub(crate) use resolve::{locked_unfetched, resolve, Resolution, ResolveRequest};
pub use resolve::{ResolvedWheel, SdistSource};
pub use target::{InstalledDist, Target, TargetOverrides};
