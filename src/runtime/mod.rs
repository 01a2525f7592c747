//! Running images: the container engine (podman or docker), compose files,
//! and the Dallinger stack that `debug` and `deploy-image` bring up. The
//! only part of the tool that calls a container engine.

pub mod compose;
pub mod engine;
pub mod stack;

pub use engine::{Compose, Engine, EngineKind};
