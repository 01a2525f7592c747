//! dallinger-oci: build, push and run Dallinger experiment images without a
//! Docker daemon. Data flows one way: experiment → layers → image → outputs.

pub mod attest;
pub mod base;
pub mod build;
pub mod debian;
pub mod dockerfile;
pub mod experiment;
pub mod fsutil;
pub mod http;
pub mod image;
pub mod plan;
pub mod predict;
pub mod prepare;
pub mod python;
pub mod registry;
pub mod sandbox;
pub mod sink;
pub mod verify;

// Running images (debug, deploy-image, services): the only part that calls
// a container engine.
pub mod deploy;
pub mod runtime;
