//! The Dallinger release the end-to-end tests pin
//! (fixtures/experiments/dallinger-demo) and what building it needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::*;

/// The release fixtures/experiments/dallinger-demo pins.
pub const DALLINGER_VERSION: &str = "12.3.0";

/// The `==` pin of `name` in a constraints file.
pub fn pinned(constraints: &str, name: &str) -> String {
    constraints
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}==")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name}== pin in constraints.txt"))
}

/// A wheelhouse holding psycopg2's wheel, built once from its sdist with the
/// host's pip and cached. psycopg2 is published only as an sdist and
/// dallinger-oci cannot build sdists yet (README: "building them in a sandbox
/// is not written yet"): this is a test shortcut until the tool builds them
/// itself. It fits the target because the host's python3 is CPython 3.11 on
/// glibc no newer than the base's 2.36 (checked here), so its
/// cp311-cp311-linux_x86_64 wheel links only what bookworm's libpq5 and glibc
/// provide.
pub fn psycopg2_wheelhouse(version: &str) -> PathBuf {
    let python = require_tool("python3");
    let wheelhouse = test_cache_dir().join("wheelhouse");
    fs::create_dir_all(&wheelhouse).unwrap();
    let prefix = format!("psycopg2-{version}-cp311-cp311-linux_x86_64");
    let cached = |dir: &Path| {
        fs::read_dir(dir).unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
    };
    if cached(&wheelhouse) {
        return wheelhouse;
    }
    let host = ok(Command::new(&python).args([
        "-c",
        "import platform, sys; print(sys.implementation.name, *sys.version_info[:2], *platform.libc_ver())",
    ]));
    let host: Vec<&str> = host.split_whitespace().collect();
    assert_eq!(
        &host[..3],
        ["cpython", "3", "11"],
        "psycopg2's wheel is built with the host's python3, which must be CPython 3.11: {host:?}"
    );
    let glibc: Vec<u32> = host
        .get(4)
        .map(|v| v.split('.').map(|p| p.parse().unwrap()).collect())
        .unwrap_or_default();
    assert!(
        host.get(3) == Some(&"glibc") && glibc.as_slice() <= [2, 36].as_slice(),
        "the host's glibc must be at most the base's 2.36: {host:?}"
    );
    require_tool("gcc");
    require_tool("pg_config"); // libpq-dev
    let started = Instant::now();
    // Built beside the wheelhouse, then moved in, so a concurrent run never
    // sees half a wheel.
    let tmp = tempfile::tempdir_in(&wheelhouse).unwrap();
    ok(Command::new(&python)
        .args(["-m", "pip", "wheel", "--no-deps", "--no-cache-dir"])
        .args(["--disable-pip-version-check", "--no-binary", "psycopg2"])
        .arg(format!("psycopg2=={version}"))
        .arg("-w")
        .arg(tmp.path()));
    for entry in fs::read_dir(tmp.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&prefix),
            "pip built {name}, not {prefix}*.whl"
        );
        fs::rename(entry.path(), wheelhouse.join(&name)).unwrap();
    }
    assert!(cached(&wheelhouse));
    eprintln!(
        "built psycopg2 {version} from its sdist in {:.1?}",
        started.elapsed()
    );
    wheelhouse
}
