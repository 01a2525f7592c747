//! Hostile inputs and faults: a base image, package, registry, lock or crash
//! tried as an attacker would. Every hostile input is made by the test
//! itself; fake servers listen on 127.0.0.1 only, record what they receive
//! and stop by themselves. Each test checks that nothing outside the build's
//! own directories changed, that no credential reached a host it was not
//! for, and that a refusal is one line naming the input.
//!
//! One module per area.

pub(crate) mod cache;
mod faults;
mod packages;
mod registry;
mod sandbox;
mod unpack;
