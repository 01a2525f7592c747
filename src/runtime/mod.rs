//! Running images: the container engine (podman or docker), compose files,
//! and the Dallinger stack that `debug` and `deploy-image` bring up; and the
//! engine that builds an experiment's own Dockerfile. The only part of the
//! tool that calls a container engine.

pub mod compose;
pub mod dockerfile;
pub mod engine;
pub mod stack;

pub use dockerfile::DockerfileEngine;
pub use engine::{Compose, Engine, EngineKind};
