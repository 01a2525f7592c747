//! A real PsyNet experiment (psynet 13.3.0 from PyPI,
//! fixtures/experiments/psynet: a minimal experiment as PsyNet's
//! documentation writes one, its whole closure pinned in constraints.txt,
//! a prepare script) on a base named `ghcr.io/astral-sh/uv:python3.11-bookworm`
//! that a registries.conf mirror on 127.0.0.1 serves: a base this test
//! makes as astral's uv images are made (Debian bookworm's python3, the
//! `uv` and `uvx` binaries of the uv wheel in /usr/local/bin,
//! `UV_TOOL_BIN_DIR`, `CMD ["/usr/local/bin/uv"]`).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dallinger::sdist_build_args;
use common::registry::{Registry, RegistryAuth};
use common::*;

pub const BASE: &str = "ghcr.io/astral-sh/uv:python3.11-bookworm";
/// The uv release whose binaries the base carries.
const UV_VERSION: &str = "0.13.9";

/// The uv-like base as an OCI layout (made once under the test cache):
/// the bookworm Python base with `/usr/local/bin/uv` and `uvx` from the uv
/// wheel added by umoci, and the uv images' environment and command.
/// Returns its `oci:DIR:base` reference.
pub fn uv_base_layout() -> String {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let python = python_base_layout();
    let python_dir = python
        .strip_prefix("oci:")
        .and_then(|s| s.strip_suffix(":base"))
        .unwrap()
        .to_string();
    let stem = Path::new(&python_dir)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = test_cache_dir().join(format!("uv-{UV_VERSION}-{stem}"));
    if !dir.join("index.json").is_file() {
        let work = tempfile::tempdir_in(test_cache_dir()).unwrap();
        // The wheel, from PyPI by pip (its hash checked against the index).
        ok(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
            ])
            .args([
                "--platform",
                "manylinux_2_17_x86_64",
                "--python-version",
                "3.11",
            ])
            .arg(format!("uv=={UV_VERSION}"))
            .arg("-d")
            .arg(work.path()));
        let wheel = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .expect("the uv wheel");
        let root = work.path().join("root");
        let bin = root.join("usr/local/bin");
        fs::create_dir_all(&bin).unwrap();
        let scripts = format!("uv-{UV_VERSION}.data/scripts");
        ok(Command::new("python3")
            .args(["-c", "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\n\
                for n in ('uv', 'uvx'):\n    open(sys.argv[3] + '/' + n, 'wb').write(z.read(sys.argv[2] + '/' + n))"])
            .arg(&wheel)
            .arg(&scripts)
            .arg(&bin));
        for name in ["uv", "uvx"] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(bin.join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        // One layer of our own tar (umoci's `insert` writes a tar without
        // its end blocks), appended by umoci.
        let layer = work.path().join("uv-layer.tar");
        deterministic_tar(&layer, &root, "usr");
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        copy_tree(Path::new(&python_dir), &partial);
        let image = format!("{}:base", partial.display());
        let umoci = require_tool("umoci");
        ok(Command::new(&umoci)
            .args(["raw", "add-layer", "--image", &image])
            .arg(&layer));
        ok(Command::new(&umoci).args([
            "config",
            "--image",
            &image,
            "--config.env",
            "UV_TOOL_BIN_DIR=/usr/local/bin",
            "--config.cmd",
            "/usr/local/bin/uv",
        ]));
        ok(Command::new(&umoci).args(["gc", "--layout", &partial.display().to_string()]));
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&partial, &dir).unwrap();
    }
    format!("oci:{}:base", dir.display())
}

/// A mirror of ghcr.io on 127.0.0.1 holding the uv-like base as
/// `astral-sh/uv:python3.11-bookworm`, and a registries.conf in `sandbox`
/// that sends ghcr.io to it (ghcr.io's own location is never reached).
pub fn uv_mirror(sandbox: &Sandbox) -> (Registry, PathBuf) {
    let mirror = Registry::start(RegistryAuth::None);
    ok(Command::new(require_tool("skopeo"))
        .args(["copy", "--dest-tls-verify=false"])
        .arg(uv_base_layout())
        .arg(format!(
            "docker://{}/astral-sh/uv:python3.11-bookworm",
            mirror.host()
        )));
    let conf = sandbox.path("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"127.0.0.1:{}\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\n",
            free_local_port(),
            mirror.host()
        ),
    )
    .unwrap();
    (mirror, conf)
}

/// The PsyNet fixture in `sandbox` at `rel` (without its Dockerfile when
/// `dockerfile` is false).
fn psynet_experiment(sandbox: &Sandbox, rel: &str, dockerfile: bool) -> PathBuf {
    let exp = sandbox.experiment("psynet", rel);
    if !dockerfile {
        fs::remove_file(exp.join("Dockerfile")).unwrap();
    }
    exp
}

/// `build` of `exp` on the mirrored registry (ghcr.io through
/// `conf`) with PsyNet's closure through our Python path (psycopg2 built
/// from its sdist), into `oci:OUT:psynet`.
fn psynet_build(sandbox: &Sandbox, conf: &Path, exp: &Path, cache: &Path, out: &Path) -> Command {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .env("CONTAINERS_REGISTRIES_CONF", conf)
        .arg("build")
        .arg(exp)
        .args(sdist_build_args())
        // The mirror is new each run: its tag is resolved again, not taken
        // from what the kept cache remembers.
        .arg("--pull")
        .arg("--cache-dir")
        .arg(cache)
        .arg("--output")
        .arg(format!("oci:{}:psynet", out.display()));
    cmd
}

/// The build without a Dockerfile: on the base, the prepare script run.
fn build_command(sandbox: &Sandbox, conf: &Path, exp: &Path, cache: &Path, out: &Path) -> Command {
    let mut cmd = psynet_build(sandbox, conf, exp, cache, out);
    cmd.args(["--base", BASE]).arg("--run-prepare");
    cmd
}

/// The base came from the mirror (ghcr.io itself is never reached).
fn assert_base_from_mirror(mirror: &Registry, stderr: &str) {
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.path == "/v2/astral-sh/uv/manifests/python3.11-bookworm"),
        "{stderr}"
    );
}

/// `oci:LAYOUT:psynet` unpacked by umoci in `sandbox`: its root.
fn unpacked(sandbox: &Sandbox, layout: &Path) -> PathBuf {
    let bundle = sandbox.path("bundle");
    ok(Command::new(require_tool("umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:psynet", layout.display()))
        .arg(&bundle)
        .env("HOME", sandbox.home()));
    bundle.join("rootfs")
}

#[test]
fn psynets_closure_builds_on_the_mirrored_uv_base_reproducibly() {
    let sandbox = Sandbox::new();
    let (mirror, conf) = uv_mirror(&sandbox);
    let exp = psynet_experiment(&sandbox, "psynet-exp", false);
    let shared = test_cache_dir().join("psynet-cache");
    let (stdout, stderr) = succeeds(run(&mut build_command(
        &sandbox,
        &conf,
        &exp,
        &shared,
        &sandbox.path("first"),
    )));
    let digest = printed_digest(&stdout);
    assert_base_from_mirror(&mirror, &stderr);
    // The same inputs in a fresh cache: the same image.
    let (again, again_err) = succeeds(run(&mut build_command(
        &sandbox,
        &conf,
        &exp,
        &sandbox.path("fresh-cache"),
        &sandbox.path("second"),
    )));
    assert_eq!(printed_digest(&again), digest);
    // PsyNet's extra_files() names ('.deploy', '.deploy'), which its launch
    // writes: nothing to copy at build time, said once, the build goes on.
    assert!(
        again_err.contains(
            "extra_files(): ('.deploy', '.deploy'): /experiment/.deploy does not exist at build time (a launch writes it): nothing copied"
        ),
        "{again_err}"
    );

    // What the image holds: psynet and Dallinger 12.4.0 installed for
    // Debian's python3, uv from the base, the prepare script's marker.
    let rootfs = unpacked(&sandbox, &sandbox.path("first"));
    let site = rootfs.join("usr/local/lib/python3.11/dist-packages");
    assert!(site.join("psynet-13.3.0.dist-info/METADATA").is_file());
    assert!(site.join("dallinger-12.4.0.dist-info/METADATA").is_file());
    assert!(rootfs.join("usr/local/bin/uv").is_file());
    assert!(rootfs.join("usr/local/bin/dallinger").is_file());
    assert_eq!(
        fs::read_to_string(rootfs.join("experiment/prepared.txt")).unwrap(),
        "prepared for psynet 13.3.0\n"
    );
    assert!(rootfs.join("experiment/experiment.py").is_file());
}

/// `build` of `exp` from its Dockerfile, natively (no engine on PATH),
/// PsyNet's requirements install replaced by our locked layers.
fn native_dockerfile_command(
    sandbox: &Sandbox,
    conf: &Path,
    exp: &Path,
    cache: &Path,
    out: &Path,
) -> Command {
    let mut cmd = psynet_build(sandbox, conf, exp, cache, out);
    cmd.env("PATH", crate::dockerfile_native::engine_free_path(sandbox))
        .arg("--native-python");
    cmd
}

/// Must-show 4: PsyNet's stock Dockerfile (less its Heroku CLI lines)
/// built without an engine, its `if [ -f constraints.txt ] … fi` install
/// replaced by our locked layers (`--native-python`): the same digest from
/// an empty cache at another path; the image holds what the Dockerfile
/// makes (psynet installed, the prepare script's marker, the experiment,
/// PORT, the command).
#[test]
fn psynets_stock_dockerfile_builds_natively_and_reproducibly() {
    let sandbox = Sandbox::new();
    let (mirror, conf) = uv_mirror(&sandbox);
    let exp = psynet_experiment(&sandbox, "psynet-df", true);
    let shared = test_cache_dir().join("psynet-cache");
    let first = sandbox.path("first");
    let (stdout, stderr) = succeeds(run(&mut native_dockerfile_command(
        &sandbox, &conf, &exp, &shared, &first,
    )));
    let digest = printed_digest(&stdout);
    assert!(
        stderr.contains("psynet-df/Dockerfile:17: `if [ -f constraints.txt ]; then")
            && stderr
                .contains("replaced by dallinger-oci's locked Python layers (--native-python)"),
        "{stderr}"
    );
    assert_base_from_mirror(&mirror, &stderr);
    // Elsewhere, from an empty cache: the same image.
    let other = Sandbox::new();
    let (_mirror2, conf2) = uv_mirror(&other);
    let exp2 = psynet_experiment(&other, "elsewhere/psynet-df", true);
    let (again, _) = succeeds(run(&mut native_dockerfile_command(
        &other,
        &conf2,
        &exp2,
        &other.path("empty-cache"),
        &other.path("second"),
    )));
    assert_eq!(printed_digest(&again), digest);

    let (_, _, config) = layout_image(&first);
    let cfg = &config["config"];
    assert_eq!(cfg["WorkingDir"], "/experiment");
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "dallinger_heroku_web"])
    );
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for want in [
        "PORT=5000",
        "DALLINGER_NO_EGG_BUILD=1",
        "SKIP_DEPENDENCY_CHECK=",
        "UV_TOOL_BIN_DIR=/usr/local/bin",
    ] {
        assert!(env.contains(&want), "{env:?}");
    }
    let rootfs = unpacked(&sandbox, &first);
    let site = rootfs.join("usr/local/lib/python3.11/dist-packages");
    assert!(site.join("psynet-13.3.0.dist-info/METADATA").is_file());
    assert!(site.join("dallinger-12.4.0.dist-info/METADATA").is_file());
    assert!(rootfs.join("usr/local/bin/dallinger_heroku_web").is_file());
    assert_eq!(
        fs::read_to_string(rootfs.join("experiment/prepared.txt")).unwrap(),
        "prepared for psynet 13.3.0\n"
    );
    for rel in [
        "experiment.py",
        "config.txt",
        "requirements.txt",
        "prepare_docker_image.sh",
        "Dockerfile",
    ] {
        assert!(rootfs.join("experiment").join(rel).is_file(), "{rel}");
    }
    // As in Dallinger's staging directory, `COPY . /experiment` also
    // copies what PsyNet's extra_files() names (its templates and favicon,
    // and DEPLOYMENT_PACKAGE) and Dallinger's frontend files and Procfile,
    // from the image the Dockerfile made; nothing of a launch (.deploy).
    let psynet_site = site.join("psynet");
    for (rel, from) in [
        ("templates/ad.html", psynet_site.join("templates/ad.html")),
        (
            "static/favicon.svg",
            psynet_site.join("resources/favicon.svg"),
        ),
        (
            "DEPLOYMENT_PACKAGE",
            psynet_site.join("resources/DEPLOYMENT_PACKAGE"),
        ),
        (
            "static/scripts/dallinger2.js",
            site.join("dallinger/frontend/static/scripts/dallinger2.js"),
        ),
        ("Procfile", site.join("dallinger/heroku/Procfile_no_clock")),
    ] {
        assert_eq!(
            fs::read(rootfs.join("experiment").join(rel)).unwrap(),
            fs::read(&from).unwrap(),
            "{rel}"
        );
    }
    assert!(!rootfs.join("experiment/.deploy").exists());
    assert!(
        stderr.contains("psynet-df/Dockerfile:26: the context also has "),
        "{stderr}"
    );
    // The context is Dallinger's staging directory: constraints.txt renamed
    // over requirements.txt, so `COPY *constraints.txt constraints.txt`
    // matches nothing and copies nothing, as BuildKit does.
    assert!(!rootfs.join("experiment/constraints.txt").exists());
    assert_eq!(
        fs::read(rootfs.join("experiment/requirements.txt")).unwrap(),
        fs::read(exp.join("constraints.txt")).unwrap()
    );
}

/// Must-show 4, served: `debug` of the PsyNet experiment built from its
/// stock Dockerfile natively. The image holds nothing of a deployment:
/// PsyNet's own preparation (its deployment info, the database template
/// that `pre_deploy` exports) runs in a one-off container of the image
/// against the stack's postgres and redis, into a volume on
/// `/experiment/.deploy` that web and worker share; then Dallinger's
/// initdb and launch. The ad page answers 200, a participant is created
/// and is in the database, and Ctrl-C removes every container.
#[test]
fn debug_serves_the_psynet_experiment() {
    use common::debug_session::DebugSession;
    use common::service_images::{project_containers, service_images, ProjectCleanup};
    use std::time::{Duration, Instant};

    let started = Instant::now();
    let (redis, postgres) = service_images();
    let sandbox = Sandbox::new();
    let (_mirror, conf) = uv_mirror(&sandbox);
    // The directory name is the compose project.
    let project = format!("psynet-debug-{}", std::process::id());
    let exp = psynet_experiment(&sandbox, &project, true);
    let _cleanup = ProjectCleanup(project.clone());
    let port = free_local_port();
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .arg("debug")
        .arg(&exp)
        .args(sdist_build_args())
        .args([
            "--pull",
            "--native-python",
            "--no-browsers",
            "--remove-volumes",
        ])
        .arg("--cache-dir")
        .arg(test_cache_dir().join("psynet-cache"))
        .args(["--port", &port.to_string()])
        .args(["--redis-image", &redis, "--postgres-image", &postgres]);
    let mut session = DebugSession::spawn(&mut cmd);
    session.wait_for("Preparing the PsyNet experiment", Duration::from_secs(1200));
    session.wait_for(
        &format!("Server is running on http://localhost:{port}"),
        Duration::from_secs(600),
    );
    eprintln!("server running after {:.1?}", started.elapsed());
    session.wait_for("Dashboard user: admin password: ", Duration::from_secs(180));
    // PsyNet's launch ends by asking for the first participant (Dallinger's
    // hot-air recruiter in debug): its ad URL.
    let requested = session.wait_for("New participant requested: ", Duration::from_secs(180));
    let url = requested
        .split_once("New participant requested: ")
        .unwrap()
        .1
        .trim()
        .to_string();
    serves_a_participant(&project, port, &url);

    let status = session.interrupt(Duration::from_secs(180));
    assert!(
        status.success(),
        "debug exited with {status}:\n{}",
        session.transcript
    );
    assert_eq!(project_containers(&project), Vec::<String>::new());
    eprintln!("whole test: {:.1?}", started.elapsed());
}

/// What must-show 4 asks of a served PsyNet experiment (compose project
/// `project` on `port`): the ad page PsyNet's launch asked for (`url`)
/// answers 200 with PsyNet's template and the favicon its extra_files()
/// added; a participant is created, and is in the stack's database beside
/// the rows PsyNet's preparation exported and its launch ingested.
fn serves_a_participant(project: &str, port: u16, url: &str) {
    use common::registry::http_request;
    use common::service_images::{container_of, podman, podman_exec};
    let target = url
        .strip_prefix(&format!("http://localhost:{port}"))
        .unwrap_or_else(|| panic!("{url}"));
    let param = |name: &str| {
        target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {url}"))
            .to_string()
    };
    let (worker, hit, assignment) = (param("workerId"), param("hitId"), param("assignmentId"));

    let host = format!("127.0.0.1:{port}");
    let web_logs = || {
        let web = container_of(project, "web");
        let out = podman()
            .args(["logs", "--tail", "60", &web])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ad = http_request(&host, "GET", target, &[], b"")
        .unwrap_or_else(|e| panic!("GET {target}: {e}; web's logs:\n{}", web_logs()));
    assert_eq!(ad.status, 200, "{}", ad.text());
    // PsyNet's ad template, with the favicon its extra_files() added.
    assert!(ad.text().contains("/static/favicon.svg"), "{}", ad.text());
    let favicon = http_request(&host, "GET", "/static/favicon.svg", &[], b"").unwrap();
    assert_eq!(favicon.status, 200);

    let created = http_request(
        &host,
        "POST",
        &format!("/participant/{worker}/{hit}/{assignment}/debug"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(created.status, 200, "{}", created.text());
    let body: serde_json::Value = serde_json::from_str(&created.text()).unwrap();
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["participant"]["worker_id"], worker.as_str(), "{body}");
    // It is in the stack's database, beside the rows PsyNet's preparation
    // exported and its launch ingested.
    let postgres_container = container_of(project, "postgresql");
    // One value from the stack's database.
    let query = |sql: &str| {
        podman_exec(
            &postgres_container,
            &["psql", "-U", "dallinger", "-d", "dallinger", "-tAc", sql],
        )
        .trim()
        .to_string()
    };
    let count = |table: &str| query(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(
        count(&format!("participant WHERE worker_id = '{worker}'")),
        "1"
    );
    // PsyNet's `ExperimentConfig` (table `experiment`), from the template.
    assert_ne!(count("experiment"), "0");
    // The experiment's asset, deposited by the preparation in the storage
    // web serves (the shared psynet-data volume).
    let asset_url = query("SELECT url FROM asset WHERE local_key = 'greeting'");
    assert!(asset_url.starts_with("/static/assets/"), "{asset_url:?}");
    let greeting = http_request(&host, "GET", &asset_url, &[], b"").unwrap();
    assert_eq!(greeting.status, 200, "{asset_url}: {}", greeting.text());
    assert_eq!(
        greeting.text(),
        fs::read_to_string(repo_root().join("fixtures/experiments/psynet/greeting.txt")).unwrap()
    );
}

/// The PsyNet image pushed to a registry on 127.0.0.1 and run by digest
/// with `deploy-image`, as a server runs it: the pulled image is found to
/// be PsyNet's, its preparation runs in a one-off container (PsyNet's
/// sandbox mode), and the experiment serves a participant; `destroy`
/// removes it.
#[test]
fn deploy_image_serves_the_pushed_psynet_image() {
    use common::service_images::{
        deploy_image_command, project_containers, service_images, ProjectCleanup, PulledImage,
    };

    let (redis, postgres) = service_images();
    let sandbox = Sandbox::new();
    let (_mirror, conf) = uv_mirror(&sandbox);
    let exp = psynet_experiment(&sandbox, "psynet-deploy", false);
    let registry = Registry::start(RegistryAuth::None);
    let repository = format!("{}/dallinger-oci-test/psynet", registry.host());
    sandbox.name_image(&exp, &repository);
    let mut push = sandbox.cmd();
    push.env_remove("DALLINGER_OCI_NO_DEPS")
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .arg("push")
        .arg(&exp)
        .args(sdist_build_args())
        .args(["--pull", "--base", BASE, "--run-prepare"])
        .arg("--cache-dir")
        .arg(test_cache_dir().join("psynet-cache"));
    let out = ok(&mut push);
    let reference = out
        .lines()
        .find_map(|l| l.strip_prefix("Image ")?.strip_suffix(" built and pushed."))
        .unwrap_or_else(|| panic!("no pushed reference in {out}"))
        .to_string();
    let _pulled = PulledImage(reference.clone());

    let app = format!("psynet-deploy-{}", std::process::id());
    let _cleanup = ProjectCleanup(app.clone());
    let port = free_local_port();
    let out = ok(&mut deploy_image_command(
        &sandbox, &reference, &app, port, &redis, &postgres,
    ));
    assert!(out.contains("Launch: success"), "{out}");
    let url = out
        .split_whitespace()
        .find(|w| w.contains("/ad?recruiter=hotair&assignmentId="))
        .unwrap_or_else(|| panic!("no ad URL in {out}"));
    serves_a_participant(&app, port, url);

    ok(sandbox
        .cmd()
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .args(["destroy", "--app", &app, "--remove-data"]));
    assert_eq!(project_containers(&app), Vec::<String>::new());
}
