//! Installing: wheel files read and checked, installed natively into a
//! layer tree as pip installs them, and optionally byte-compiled.

pub mod bytecode;
pub mod installer;
pub mod wheel;

pub use installer::*;
