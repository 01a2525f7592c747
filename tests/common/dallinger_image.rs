//! The dallinger-oci command that builds fixtures/experiments/dallinger-demo
//! (a real Dallinger release and its whole closure) the way
//! tests/dallinger_image.rs does, for tests that run it.

use std::path::Path;
use std::process::Command;

use super::dallinger::{pinned, psycopg2_wheelhouse};
use super::*;

/// `dallinger-oci SUBCOMMAND EXP` with the demo's build options: Python
/// dependencies on (no DALLINGER_OCI_NO_DEPS), the bookworm Python base,
/// psycopg2 from the test wheelhouse, and a cache kept between runs so a
/// rebuild of unchanged inputs reuses every layer and wheel.
pub fn dallinger_demo_command(sandbox: &Sandbox, subcommand: &str, exp: &Path) -> Command {
    let constraints = std::fs::read_to_string(exp.join("constraints.txt")).unwrap();
    let wheelhouse = psycopg2_wheelhouse(&pinned(&constraints, "psycopg2"));
    let base = python_base_layout();
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg(subcommand)
        .arg(exp)
        .args(["--base", &base])
        .arg("--find-links")
        .arg(&wheelhouse)
        .arg("--cache-dir")
        .arg(test_cache_dir().join("dallinger-demo-cache"));
    cmd
}
