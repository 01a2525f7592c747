//! `deploy-image` and `destroy` with podman and podman-compose: a real
//! Dallinger image built and pushed by the tool to a registry on
//! 127.0.0.1, run by digest with stand-in redis and postgres images; and
//! the rendered compose file's values as the containers see them.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use common::dallinger_image::dallinger_demo_command;
use common::registry::{http_request, Registry, RegistryAuth};
use common::service_images::*;
use common::*;

#[test]
fn deploy_image_runs_a_pushed_dallinger_image_by_digest_and_destroy_removes_it() {
    let started = Instant::now();
    let (redis, postgres) = service_images();
    eprintln!("service images: {:.1?}", started.elapsed());
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("dallinger-demo", "dallinger-demo");
    let repository = format!("{}/dallinger-oci-test/dallinger-demo", registry.host());
    sandbox.name_image(&exp, &repository);
    let push_started = Instant::now();
    let out = ok(&mut dallinger_demo_command(&sandbox, "push", &exp));
    eprintln!("build and push: {:.1?}", push_started.elapsed());
    let reference = out
        .lines()
        .find_map(|l| l.strip_prefix("Image ")?.strip_suffix(" built and pushed."))
        .unwrap_or_else(|| panic!("no pushed reference in {out}"))
        .to_string();
    assert!(reference.starts_with(&format!("{repository}@sha256:")));
    let _pulled = PulledImage(reference.clone());

    let app = format!("deploy-test-{}", std::process::id());
    let _cleanup = ProjectCleanup(app.clone());
    let port = free_local_port();
    let deploy_started = Instant::now();
    let out = ok(&mut deploy_image_command(
        &sandbox, &reference, &app, port, &redis, &postgres,
    ));
    eprintln!("deploy-image: {:.1?}", deploy_started.elapsed());
    assert!(out.contains("Launch: success"), "{out}");
    assert!(
        out.contains(&format!("Experiment URL: http://localhost:{port}/")),
        "{out}"
    );
    assert_eq!(
        out.matches("Dashboard password (generated; shown only now): ")
            .count(),
        1,
        "{out}"
    );

    // The experiment's own pages and Dallinger's frontend answer on the
    // published port.
    let host = format!("127.0.0.1:{port}");
    let robots = http_request(&host, "GET", "/robots.txt", &[], b"").unwrap();
    assert_eq!(robots.status, 200, "{}", robots.text());
    assert_eq!(
        robots.text(),
        fs::read_to_string(exp.join("static/robots.txt")).unwrap()
    );
    let script = http_request(&host, "GET", "/static/scripts/dallinger2.js", &[], b"").unwrap();
    assert_eq!(script.status, 200);

    // The worker registered itself with redis (rq keeps its workers there),
    // and -c reached the containers.
    let workers = podman_exec(
        &container_of(&app, "redis"),
        &["redis-cli", "SMEMBERS", "rq:workers"],
    );
    assert!(workers.contains("rq:worker:"), "{workers:?}");
    let worker = container_of(&app, "worker_1");
    assert_eq!(
        podman_exec(&worker, &["printenv", "recruiter"]).trim(),
        "hotair"
    );
    assert_eq!(
        podman_exec(&worker, &["printenv", "mode"]).trim(),
        "sandbox"
    );
    // ...and Dallinger used it: the hot-air recruiter's links.
    assert!(out.contains("/ad?recruiter=hotair"), "{out}");
    // The pulled image is the pushed one, by digest.
    let digests = ok(podman().args(["image", "inspect", "--format", "{{.Digest}}", &reference]));
    assert_eq!(
        digests.trim(),
        reference.split_once('@').unwrap().1,
        "{digests}"
    );

    ok(sandbox
        .cmd()
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .args(["destroy", "--app", &app, "--remove-data"]));
    assert_eq!(project_containers(&app), Vec::<String>::new());
    let volumes = ok(podman().args([
        "volume",
        "ls",
        "--filter",
        &format!("label=com.docker.compose.project={app}"),
        "--format",
        "{{.Name}}",
    ]));
    assert_eq!(volumes.trim(), "", "volumes left: {volumes}");
    eprintln!("whole test: {:.1?}", started.elapsed());
}

/// A busybox image whose `dallinger_heroku_*` commands just wait, so the
/// containers of a rendered stack can be looked into.
fn waiting_image(dir: &Path) -> String {
    let busybox = require_tool("busybox");
    let root = dir.join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for command in ["dallinger_heroku_web", "dallinger_heroku_worker"] {
        let path = root.join("bin").join(command);
        fs::write(&path, "#!/bin/sh\nexec sleep 600\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    deterministic_tar(&tar, &root, ".");
    load_rootfs_image(
        &tar,
        "localhost/dallinger-oci-test/waiting:1",
        &ImageSetup {
            entrypoint: &[],
            cmd: &["sh"],
            working_dir: "/",
        },
    )
}

/// The environment of a container's main process.
fn environment_of(container: &str) -> BTreeMap<String, String> {
    let out = podman()
        .args(["exec", container, "cat", "/proc/1/environ"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn rendered_compose_values_reach_the_containers_unchanged() {
    let podman_compose = require_tool("podman-compose");
    let (redis, postgres) = service_images();
    let sandbox = Sandbox::new();
    let image = waiting_image(&sandbox.path(""));
    let app = format!("compose-values-{}", std::process::id());
    let _cleanup = ProjectCleanup(app.clone());
    let values: &[(&str, &str)] = &[
        ("num_dynos_worker", "3"),
        ("title", r#"He said "hi" and 'bye' \o/ C:\path\n"#),
        ("base_payment", "$1.50"),
        ("description", "${HOME} $$ $ and a\nsecond line\ttab"),
        ("auto_recruit", "true"),
        ("us_only", "False"),
        ("keywords", "ünïcode, emoji 🎲, # not a comment: {x: [1]}"),
    ];
    let mut cmd = sandbox.cmd();
    cmd.args([
        "deploy-image",
        "--image",
        &image,
        "--no-start",
        "--app",
        &app,
    ])
    .args(["--redis-image", &redis, "--postgres-image", &postgres]);
    for (key, value) in values {
        cmd.args(["-c", key, value]);
    }
    let out = ok(&mut cmd);
    let file = out
        .lines()
        .find_map(|l| l.strip_prefix("Compose file: "))
        .unwrap()
        .to_string();
    let text = fs::read_to_string(&file).unwrap();
    for worker in ["worker_1", "worker_2", "worker_3"] {
        assert!(text.contains(&format!("  \"{worker}\":\n")), "{text}");
    }
    assert!(!text.contains("worker_4"), "{text}");
    assert!(text.contains(r#""base_payment": "$$1.50""#), "{text}");

    // podman-compose reads the file and starts the third worker (and what it
    // depends on); its process sees exactly the configured values.
    let compose = |args: &[&str]| {
        let mut c = std::process::Command::new(&podman_compose);
        c.env("CONTAINERS_CONF", fixture("containers.conf"))
            .arg("-f")
            .arg(&file)
            .args(["-p", &app])
            .args(args);
        ok(&mut c)
    };
    compose(&["up", "-d", "worker_3"]);
    let env = environment_of(&container_of(&app, "worker_3"));
    for (key, value) in values {
        assert_eq!(env.get(*key).map(String::as_str), Some(*value), "{key}");
    }
    assert_eq!(env["mode"], "sandbox");
    assert_eq!(env["REDIS_URL"], "redis://redis:6379");
    compose(&["down", "-v"]);
    assert_eq!(project_containers(&app), Vec::<String>::new());
}

#[test]
fn a_port_in_use_is_named_before_anything_starts() {
    require_tool("podman");
    let sandbox = Sandbox::new();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = format!("port-test-{}", std::process::id());
    let out = run(sandbox
        .cmd()
        .env("CONTAINERS_CONF", fixture("containers.conf"))
        .args(["deploy-image", "--image"])
        .arg(format!("localhost/never/pulled@sha256:{}", "0".repeat(64)))
        .args(["--app", &app, "--port", &port.to_string()]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: port {port} (the experiment's web server) is already in use"
        )) && stderr.contains("--port"),
        "{stderr}"
    );
    assert_eq!(project_containers(&app), Vec::<String>::new());
}
