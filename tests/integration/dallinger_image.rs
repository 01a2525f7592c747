//! Dallinger itself: an experiment pinning a real Dallinger release and its
//! whole closure (fixtures/experiments/dallinger-demo, constraints.txt as
//! `dallinger constraints generate` writes it for CPython 3.11.2) is built on
//! the bookworm Python base and run with podman.

use crate::common;

use std::fs;

use std::time::Instant;

use common::dallinger::*;
use common::*;

const IMAGE: &str = "registry.example.test/dallinger-oci/dallinger-demo:dallinger-image-test";

#[test]
fn a_dallinger_release_and_its_whole_closure_build_and_run() {
    let test_started = Instant::now();
    require_tool("podman");
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("dallinger-demo", "dallinger-demo");
    let constraints = fs::read_to_string(exp.join("constraints.txt")).unwrap();
    assert_eq!(pinned(&constraints, "dallinger"), DALLINGER_VERSION);
    let pins = constraints
        .lines()
        .filter(|l| !l.starts_with([' ', '#']) && l.contains("=="))
        .count();
    let base = python_base_layout();

    let archive = sandbox.path("image.tar");
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg("build")
        .arg(&exp)
        .args(["--base", &base])
        .args(sdist_build_args())
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

    let image = PodmanImage::load(&archive, IMAGE);
    let run = |args: &[&str]| {
        let run_started = Instant::now();
        let out = ok(image
            .podman()
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
