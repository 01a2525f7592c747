//! The target: the Python inside the base image and the wheel tags it
//! accepts, read from the image, never from the host.

mod interpreter;
mod tags;

pub use interpreter::{detect, scan_ahead, InstalledDist, Target, TargetOverrides};
pub(crate) use interpreter::{normalise_join, scan_layers_with, BaseFiles};
pub(crate) use tags::{file_priority, TagIndex};
