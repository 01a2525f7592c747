//! Images the runtime tests run, made here because no registry can be
//! reached: stand-ins for the official redis and postgres images from
//! Debian packages (scripts/service-base.sh, mmdebstrap, cached), imported
//! by our own rootfs base path and streamed into `podman load`. podman's
//! storage keeps them between runs, named by the rootfs cache key.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;

/// podman with the tests' settings (runc; crun fails on this kernel).
pub fn podman() -> Command {
    let mut cmd = Command::new(require_tool("podman"));
    cmd.env("CONTAINERS_CONF", fixture("containers.conf"));
    cmd
}

/// The process settings of a test image.
pub struct ImageSetup<'a> {
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub working_dir: &'a str,
}

/// Loads `rootfs` (a root filesystem tarball) into podman as `name` with
/// `setup`, unless podman has that name already. Returns `name`.
pub fn load_rootfs_image(rootfs: &Path, name: &str, setup: &ImageSetup) -> String {
    use dallinger_oci::base::{self, BaseRef};
    use dallinger_oci::image::store::BlobStore;
    use dallinger_oci::image::{archive, Image};
    if podman()
        .args(["image", "exists", name])
        .status()
        .unwrap()
        .success()
    {
        return name.to_string();
    }
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let epoch = 946_684_800;
    let base = base::resolve(
        &BaseRef::Rootfs {
            file: rootfs.to_path_buf(),
        },
        &store,
        "linux/amd64",
        epoch,
    )
    .unwrap();
    let mut config = base.config.clone();
    let inner = config["config"].as_object_mut().unwrap();
    inner.insert("Entrypoint".into(), serde_json::json!(setup.entrypoint));
    inner.insert("Cmd".into(), serde_json::json!(setup.cmd));
    inner.insert("WorkingDir".into(), serde_json::json!(setup.working_dir));
    let image = Image::assemble(&store, &config, base.layers).unwrap();
    let mut load = podman()
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = load.stdin.take().unwrap();
    archive::write_to(&store, &image, &mut stdin, name, epoch).unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    assert!(
        load.wait().unwrap().success(),
        "podman load of {name} failed"
    );
    name.to_string()
}

/// `(redis, postgres)`: podman image names of the stand-ins, loaded.
pub fn service_images() -> (String, String) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("mmdebstrap");
    let make = |service: &str, setup: &ImageSetup| {
        let out = ok(Command::new("bash")
            .arg(repo_root().join("scripts/service-base.sh"))
            .arg(service));
        let rootfs = PathBuf::from(out.trim());
        // bookworm-redis-KEY.tar → localhost/dallinger-oci-test/bookworm-redis:KEY
        let stem = rootfs.file_stem().unwrap().to_string_lossy().into_owned();
        let (repo, key) = stem.rsplit_once('-').unwrap();
        load_rootfs_image(
            &rootfs,
            &format!("localhost/dallinger-oci-test/{repo}:{key}"),
            setup,
        )
    };
    let entrypoint = &["/usr/local/bin/docker-entrypoint.sh"];
    let redis = make(
        "redis",
        &ImageSetup {
            entrypoint,
            cmd: &["redis-server"],
            working_dir: "/data",
        },
    );
    let postgres = make(
        "postgres",
        &ImageSetup {
            entrypoint,
            cmd: &["postgres"],
            working_dir: "/",
        },
    );
    (redis, postgres)
}

/// Names of the containers (any state) of a compose project.
pub fn project_containers(project: &str) -> Vec<String> {
    ok(podman().args([
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]))
    .lines()
    .map(String::from)
    .collect()
}

/// Removes a compose project's containers and volumes however a test ends.
pub struct ProjectCleanup(pub String);

impl Drop for ProjectCleanup {
    fn drop(&mut self) {
        for name in project_containers(&self.0) {
            let _ = podman().args(["rm", "-f", "-t", "1", &name]).output();
        }
        let _ = podman()
            .args(["volume", "prune", "-f", "--filter"])
            .arg(format!("label=com.docker.compose.project={}", self.0))
            .output();
        let _ = podman()
            .args(["network", "rm", "-f", &format!("{}_default", self.0)])
            .output();
    }
}

/// The first container of a compose service.
pub fn container_of(project: &str, service: &str) -> String {
    ok(podman().args([
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
        "--format",
        "{{.Names}}",
    ]))
    .lines()
    .next()
    .unwrap_or_else(|| panic!("no running {service} container in {project}"))
    .to_string()
}

/// `podman exec CONTAINER ARGS…`, its standard output.
pub fn podman_exec(container: &str, args: &[&str]) -> String {
    ok(podman().arg("exec").arg(container).args(args))
}

/// Removes the image podman pulled for the test.
pub struct PulledImage(pub String);

impl Drop for PulledImage {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "-f", &self.0]).output();
    }
}

/// `deploy-image --image REFERENCE --sandbox` as app `app` on `port`, with
/// Dallinger's hot-air recruiter and the stand-in service images.
pub fn deploy_image_command(
    sandbox: &Sandbox,
    reference: &str,
    app: &str,
    port: u16,
    redis: &str,
    postgres: &str,
) -> Command {
    let mut cmd = sandbox.cmd();
    cmd.env("CONTAINERS_CONF", fixture("containers.conf"))
        .args(["deploy-image", "--image", reference, "--sandbox"])
        .args(["-c", "recruiter", "hotair", "--app", app])
        .args(["--port", &port.to_string()])
        .args(["--redis-image", redis, "--postgres-image", postgres]);
    cmd
}
