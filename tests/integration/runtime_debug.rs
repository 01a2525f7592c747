//! `debug` with podman and podman-compose on the Dallinger fixture
//! experiment: built daemonless, loaded, served, stopped by SIGINT. And
//! what happens without any container engine.

use crate::common;

use std::time::{Duration, Instant};

use common::dallinger_image::dallinger_demo_command;
use common::debug_session::DebugSession;
use common::registry::{http_request, Registry, RegistryAuth};
use common::service_images::*;
use common::*;

#[test]
fn debug_serves_the_experiment_and_stops_cleanly_on_sigint() {
    let started = Instant::now();
    let (redis, postgres) = service_images();
    let sandbox = Sandbox::new();
    // The directory name is the compose project.
    let project = format!("debug-test-{}", std::process::id());
    let exp = sandbox.experiment("dallinger-demo", &project);
    // The service images come through config.txt this time.
    let config = exp.join("config.txt");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}docker_redis_image = {redis}\ndocker_postgresql_image = {postgres}\n"),
    )
    .unwrap();
    let _cleanup = ProjectCleanup(project.clone());
    let port = free_local_port();

    let mut cmd = dallinger_demo_command(&sandbox, "debug", &exp);
    cmd.env("CONTAINERS_CONF", fixture("containers.conf"))
        .args([
            "--no-browsers",
            "--remove-volumes",
            "--port",
            &port.to_string(),
        ]);
    let mut session = DebugSession::spawn(&mut cmd);
    session.wait_for(
        &format!("Server is running on http://localhost:{port}"),
        Duration::from_secs(1200),
    );
    eprintln!("server running after {:.1?}", started.elapsed());
    session.wait_for("Dashboard user: admin password: ", Duration::from_secs(120));

    let host = format!("127.0.0.1:{port}");
    let robots = http_request(&host, "GET", "/robots.txt", &[], b"").unwrap();
    assert_eq!(robots.status, 200, "{}", robots.text());
    assert!(
        robots.text().contains("dallinger-demo"),
        "{}",
        robots.text()
    );

    let stop_started = Instant::now();
    let status = session.interrupt(Duration::from_secs(120));
    eprintln!("stopped in {:.1?}", stop_started.elapsed());
    assert!(status.success(), "debug exited with {status}");
    assert_eq!(project_containers(&project), Vec::<String>::new());
    eprintln!("whole test: {:.1?}", started.elapsed());
}

/// A PATH with git (experiment file sets) and no container engine.
fn path_without_engines(sandbox: &Sandbox) -> std::path::PathBuf {
    let bin = sandbox.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(require_tool("git"), bin.join("git")).unwrap();
    bin
}

#[test]
fn without_an_engine_debug_says_so_and_build_and_push_still_work() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let bin = path_without_engines(&sandbox);
    let tiny = format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display());

    let out = run(sandbox
        .cmd()
        .env("PATH", &bin)
        .env_remove("DALLINGER_OCI_RUNTIME")
        .arg("debug")
        .arg(&exp)
        .args(["--base", &tiny]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: no container engine found")
            && stderr.contains("needs podman or docker")
            && stderr.contains("build and push do not need one"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // It failed before building anything.
    assert!(!sandbox.path("cache").exists());

    let out = ok(sandbox
        .cmd()
        .env("PATH", &bin)
        .arg("build")
        .arg(&exp)
        .args(["--base", &tiny, "--output", "oci:layout"]));
    printed_digest(&out);

    let registry = Registry::start(RegistryAuth::None);
    sandbox.name_image(&exp, &format!("{}/dallinger-oci/golden", registry.host()));
    let out = ok(sandbox
        .cmd()
        .env("PATH", &bin)
        .arg("push")
        .arg(&exp)
        .args(["--base", &tiny]));
    assert!(out.contains("built and pushed."), "{out}");
}
