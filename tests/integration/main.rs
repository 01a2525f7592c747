//! The integration tests: one test binary, one module per area, so the
//! helpers of `tests/common` and the whole dependency graph are compiled
//! and linked once for all of them.
//!
//! They share one process and run in parallel (`--test-threads`, the
//! number of CPUs by default), so no test changes anything process-wide (the
//! environment, the current directory, the umask): settings go to the
//! commands a test runs. Names that reach outside the process (compose
//! projects, podman images, command-line needles) are unique to one test,
//! and what tests make once for all (the Debian bases, base layouts, service
//! images) is made under a lock. Tests that run others of this binary in a
//! child process name them with [`common::test_name`].
//!
//! `cargo test --test integration MODULE::` runs one area, e.g.
//! `cargo test --test integration hostile::` or `fuzz::`.

#[path = "../common/mod.rs"]
mod common;

mod attest;
mod compression;
mod dallinger_image;
mod dallinger_src;
mod debian_packages;
mod deploy_toml;
mod dockerfile_native;
mod errors;
mod extra_files;
mod fuzz;
mod git_requirements;
mod github_action;
mod hostile;
mod image_metadata;
mod lock_remote;
mod mirrors;
mod multi_platform;
mod prepare_script;
mod psynet;
mod python_build;
mod python_index;
mod python_target;
mod registry_harness;
mod registry_push;
mod reproducibility;
mod runtime_debug;
mod runtime_deploy;
mod sandbox;
mod sdist_build;
mod secrets;
mod verifiers;
mod verify;
mod wheel_fidelity;
