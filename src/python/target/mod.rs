//! The target: the Python inside the base image and the wheel tags it
//! accepts, read from the image, never from the host.

pub mod interpreter;
pub mod tags;

pub use interpreter::*;
