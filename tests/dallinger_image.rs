//! Dallinger itself: an experiment pinning a real Dallinger release and its
//! whole closure (fixtures/experiments/dallinger-demo, constraints.txt as
//! `dallinger constraints generate` writes it for CPython 3.11.2) is built on
//! the bookworm Python base and run with podman.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

const DALLINGER_VERSION: &str = "12.3.0";
const IMAGE: &str = "registry.example.test/dallinger-oci/dallinger-demo:dallinger-image-test";

/// The `==` pin of `name` in a constraints file.
fn pinned(constraints: &str, name: &str) -> String {
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
fn psycopg2_wheelhouse(version: &str) -> PathBuf {
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

/// Removes the loaded image however the test ends.
struct LoadedImage<'a> {
    podman: &'a dyn Fn() -> Command,
}

impl Drop for LoadedImage<'_> {
    fn drop(&mut self) {
        let _ = (self.podman)().args(["rmi", "-f", IMAGE]).output();
    }
}

#[test]
fn a_dallinger_release_and_its_whole_closure_build_and_run() {
    let test_started = Instant::now();
    let podman = require_tool("podman");
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("dallinger-demo", "dallinger-demo");
    let constraints = fs::read_to_string(exp.join("constraints.txt")).unwrap();
    assert_eq!(pinned(&constraints, "dallinger"), DALLINGER_VERSION);
    let pins = constraints
        .lines()
        .filter(|l| !l.starts_with([' ', '#']) && l.contains("=="))
        .count();
    let wheelhouse = psycopg2_wheelhouse(&pinned(&constraints, "psycopg2"));
    let base = python_base_layout();

    let archive = sandbox.path("image.tar");
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&exp)
        .args(["--base", &base])
        .arg("--find-links")
        .arg(&wheelhouse)
        .args(["--tag", "dallinger-image-test"])
        .arg("--output")
        .arg(format!("docker-archive:{}", archive.display()))
        .args(["--output", "oci:layout"]);
    let build_started = Instant::now();
    let stdout = ok(&mut cmd);
    eprintln!("build: {:.1?}", build_started.elapsed());
    printed_digest(&stdout);
    assert!(
        stdout.contains(&format!("Built image: {IMAGE}")),
        "{stdout}"
    );

    // base, third-party wheels, Dallinger, experiment code
    let (_, manifest, config) = layout_image(&sandbox.path("layout"));
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 4);
    let history = created_by(&config);
    let deps = format!("Python dependencies ({} wheels)", pins - 1);
    assert!(
        history.iter().any(|h| h.contains(&deps))
            && history
                .iter()
                .any(|h| h.contains(&format!("dallinger=={DALLINGER_VERSION}"))),
        "{history:?}"
    );

    let podman_cmd = || {
        let mut c = Command::new(&podman);
        c.env("CONTAINERS_CONF", fixture("containers.conf"));
        c
    };
    let _loaded = LoadedImage {
        podman: &podman_cmd,
    };
    ok(podman_cmd().arg("load").arg("-i").arg(&archive));
    let run = |args: &[&str]| {
        let run_started = Instant::now();
        let out = ok(podman_cmd()
            .args(["run", "--rm", "--network", "none", IMAGE])
            .args(args));
        eprintln!("podman run {:?}: {:.1?}", args[0], run_started.elapsed());
        out
    };

    // The closure imports (psycopg2 against the base's libpq5), and the
    // experiment module loads against this Dallinger.
    let out = run(&[
        "python3",
        "-c",
        "import dallinger, psycopg2, psycopg2.extensions, gevent\n\
         from dallinger.version import __version__\n\
         print(__version__)\n\
         print(psycopg2.__version__.split()[0], psycopg2.extensions.libpq_version())\n\
         import experiment, dallinger.experiment\n\
         assert issubclass(experiment.DemoChain, dallinger.experiment.Experiment)",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], DALLINGER_VERSION, "{out}");
    assert_eq!(
        lines[1].split(' ').next(),
        Some(pinned(&constraints, "psycopg2").as_str()),
        "{out}"
    );

    // The console script (`--version` prints the bare version).
    let out = run(&["dallinger", "--version"]);
    assert!(out.contains(DALLINGER_VERSION), "{out}");

    // Dallinger's frontend and Procfile (no clock: clock_on is off by
    // default) in /experiment; the experiment's own files win.
    let out = run(&[
        "sh",
        "-c",
        "cd /experiment && ls static/scripts/dallinger2.js static/css/dallinger.css \
         templates/base/ad.html templates/base/layout.html static/scripts/experiment.js \
         && echo --- && cat Procfile && echo --- && cat static/robots.txt templates/questionnaire.html",
    ]);
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(
        parts[1], "web: dallinger_heroku_web\nworker: dallinger_heroku_worker\n",
        "{out}"
    );
    let own = fs::read_to_string(exp.join("static/robots.txt")).unwrap()
        + &fs::read_to_string(exp.join("templates/questionnaire.html")).unwrap();
    assert_eq!(parts[2], own, "{out}");
    assert!(own.matches("dallinger-demo").count() == 2);

    eprintln!("whole test: {:.1?}", test_started.elapsed());
}
