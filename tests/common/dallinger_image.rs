//! The dallinger-oci command that builds fixtures/experiments/dallinger-demo
//! (a real Dallinger release and its whole closure) the way
//! tests/integration/dallinger_image.rs does, for tests that run it.

use std::path::Path;
use std::process::Command;

use super::dallinger::sdist_build_args;
use super::*;

/// `dallinger-oci SUBCOMMAND EXP` with the demo's build options: Python
/// dependencies on (no DALLINGER_OCI_NO_DEPS), the bookworm Python base,
/// psycopg2 built from its sdist in the builder image (once: the built
/// wheel stays in the cache), and a cache kept between runs so a
/// rebuild of unchanged inputs reuses every layer and wheel.
pub fn dallinger_demo_command(sandbox: &Sandbox, subcommand: &str, exp: &Path) -> Command {
    let base = python_base_layout();
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg(subcommand)
        .arg(exp)
        .args(["--base", &base])
        .args(sdist_build_args())
        .arg("--cache-dir")
        .arg(test_cache_dir().join("dallinger-demo-cache"));
    cmd
}
