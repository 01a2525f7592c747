//! Fuzz targets for every parser that reads what someone else wrote: a
//! base image's or experiment's files, a package's metadata, a registry's or
//! mirror's answers. Property runs on stable Rust: proptest strategies build
//! inputs from each format's grammar (names, versions, quoting, crafted tar
//! headers, signed releases) mixed with raw bytes; every target checks that
//! the parser never panics and, where there is one, a round trip or an
//! invariant.
//!
//! `cargo test --test integration fuzz::` runs all of them for about 60 s
//! of CPU together; `FUZZ_SECONDS=600 cargo test --test integration fuzz::`
//! for ten minutes. A failure
//! prints its seed and a shrunk input (see `harness.rs`); inputs worth
//! keeping go in `corpus/TARGET/`, replayed on every run.
//!
//! One module per parser.

mod harness;
mod text;

mod config_txt;
mod debian_control;
mod image_reference;
mod in_release;
mod large_inputs;
mod requirements;
mod tar_import;
mod wheel;
mod www_authenticate;
