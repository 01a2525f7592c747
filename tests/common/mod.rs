//! Helpers shared by the integration tests: the binary, fixtures, tools.
#![allow(dead_code)]

pub mod dallinger;
pub mod dallinger_image;
pub mod debug_session;
pub mod git;
pub mod registry;
pub mod service_images;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Flask and its whole closure for the bookworm base's CPython 3.11
/// (MarkupSafe is a manylinux wheel, so tag selection matters; flask has a
/// console script).
pub const FLASK_CLOSURE: &str = "\
blinker==1.8.2
click==8.1.7
flask==3.0.3
itsdangerous==2.2.0
jinja2==3.1.4
markupsafe==2.1.5
werkzeug==3.0.3
";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("fixtures").join(rel)
}

/// A tool the test needs. Missing tools fail the test: they never skip it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed: run scripts/install-test-deps.sh (scripts/test.sh does)");
}

/// An isolated world for one test: a temp dir with a HOME and a cache.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        let home = self.path("home");
        fs::create_dir_all(&home).unwrap();
        home
    }

    /// The dallinger-oci command with HOME and the cache inside the sandbox
    /// and no SOURCE_DATE_EPOCH from the caller.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dallinger-oci"));
        cmd.env("HOME", self.home())
            .env("DALLINGER_OCI_CACHE", self.path("cache"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            // The fixture bases have no Python; tests of the Python layers
            // remove this.
            .env("DALLINGER_OCI_NO_DEPS", "1")
            .current_dir(self.dir.path());
        // Nothing of the caller's registry credentials or CI settings leaks in.
        for var in [
            "REGISTRY_AUTH_FILE",
            "DOCKER_CONFIG",
            "XDG_RUNTIME_DIR",
            "XDG_CONFIG_HOME",
            "GITHUB_TOKEN",
            "GITHUB_ACTOR",
            "GITHUB_OUTPUT",
            "DALLINGER_OCI_REGISTRY_USERNAME",
            "DALLINGER_OCI_REGISTRY_PASSWORD",
            "DALLINGER_OCI_RETRIES",
            // registries.conf: tests name their own (or none).
            "CONTAINERS_REGISTRIES_CONF",
            "REGISTRIES_CONFIG_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Sets the experiment's `docker_image_base_name` (its config.txt has one).
    pub fn name_image(&self, experiment: &Path, name: &str) {
        let path = experiment.join("config.txt");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("docker_image_base_name"), "{text}");
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("docker_image_base_name") {
                    format!("docker_image_base_name = {name}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        fs::write(&path, out.join("\n") + "\n").unwrap();
    }

    /// Copies a fixture experiment out of the repository (so no git of ours
    /// applies) to `rel`.
    pub fn experiment(&self, fixture_name: &str, rel: &str) -> PathBuf {
        let dest = self.path(rel);
        copy_tree(&fixture(&format!("experiments/{fixture_name}")), &dest);
        dest
    }
}

pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let mut names: Vec<_> = fs::read_dir(from).unwrap().map(|e| e.unwrap()).collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

pub fn run(cmd: &mut Command) -> Output {
    // A program a test has just written (a copied binary, a fake tool) is
    // busy while another test thread's fork still holds it open: retried.
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            out => return out.expect("command starts"),
        }
    }
    cmd.output().expect("command starts")
}

/// Runs and requires success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout: {}\nstderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `sha256:...` digest line a build prints last.
pub fn printed_digest(stdout: &str) -> String {
    let line = stdout.lines().last().expect("build printed something");
    assert!(
        line.starts_with("sha256:") && line.len() == 71,
        "unexpected output {stdout:?}"
    );
    line.to_string()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Manifest of the single image in an OCI layout, and its config.
pub fn layout_image(dir: &Path) -> (String, serde_json::Value, serde_json::Value) {
    let index = read_json(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = read_json(&blob(dir, &digest));
    let config = read_json(&blob(dir, manifest["config"]["digest"].as_str().unwrap()));
    (digest, manifest, config)
}

/// The `created_by` of every history entry of an image config.
pub fn created_by(config: &serde_json::Value) -> Vec<String> {
    config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(String::from))
        .collect()
}

pub fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

pub fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Tars `member` of `dir` into `out` the same way every time: sorted names,
/// fixed mtime, owner 0.
pub fn deterministic_tar(out: &Path, dir: &Path, member: &str) {
    ok(Command::new(require_tool("tar"))
        .args([
            "--sort=name",
            "--mtime=@946684800",
            "--owner=0",
            "--group=0",
        ])
        .args(["--numeric-owner", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(member));
}

/// A runnable root filesystem tarball made from busybox-static.
pub fn busybox_rootfs(dest: &Path) -> PathBuf {
    let busybox = require_tool("busybox");
    let root = dest.join("busybox-root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dest.join("busybox-rootfs.tar");
    deterministic_tar(&tar, &root, ".");
    tar
}

/// Debian packages of the Python base the tests build on.
pub const PYTHON_BASE_PACKAGES: &str = "python3,libpq5,libstdc++6";
/// The same, plus what building psycopg2 (and C extensions) from an sdist
/// needs: the builder image of `--build-sdists`.
pub const PYTHON_BUILDER_PACKAGES: &str = "python3,libpq5,libstdc++6,build-essential,python3-dev,\
libpq-dev,python3-pip,python3-setuptools,python3-wheel";

/// A Debian bookworm root filesystem with `packages` (made once by
/// scripts/python-base.sh with mmdebstrap, then cached).
pub fn debian_rootfs(packages: &str) -> PathBuf {
    require_tool("mmdebstrap");
    let out = ok(Command::new("bash")
        .arg(repo_root().join("scripts/python-base.sh"))
        .env("BASE_PACKAGES", packages));
    PathBuf::from(out.trim())
}

/// The Debian bookworm root filesystem with Python.
pub fn python_base() -> PathBuf {
    debian_rootfs(PYTHON_BASE_PACKAGES)
}

/// Where tests keep what they make once (base layouts, downloads).
pub fn test_cache_dir() -> PathBuf {
    let dir = std::env::var_os("DALLINGER_OCI_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs::home_dir().unwrap().join(".cache/dallinger-oci-tests"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python base as an OCI layout (imported once, then reused), so tests
/// copy its compressed layer instead of compressing 200 MB each time.
/// Returns the `--base` argument.
pub fn python_base_layout() -> String {
    rootfs_layout(python_base())
}

/// The sdist builder (the base plus a compiler and headers) as an OCI
/// layout; returns the `--builder-base` argument.
pub fn python_builder_layout() -> String {
    rootfs_layout(debian_rootfs(PYTHON_BUILDER_PACKAGES))
}

/// A root filesystem tarball as an OCI layout, made once under the test
/// cache and reused; returns its `oci:DIR:base` reference.
pub fn rootfs_layout(rootfs: PathBuf) -> String {
    use dallinger_oci::base::{self, BaseRef};
    use dallinger_oci::image::store::BlobStore;
    use dallinger_oci::image::{layout, Image};
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let stem = rootfs.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = test_cache_dir().join(format!("{stem}-oci"));
    if !dir.join("index.json").is_file() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let base = base::resolve(
            &BaseRef::Rootfs { file: rootfs },
            &store,
            "linux/amd64",
            946_684_800,
        )
        .unwrap();
        let image = Image::assemble(&store, &base.config, base.layers).unwrap();
        // Written beside, then renamed: another test binary never sees half.
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        layout::write(&store, &image, &partial, "base").unwrap();
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&partial, &dir).unwrap();
    }
    format!("oci:{}:base", dir.display())
}

/// The name libtest gives test `name` of the module whose `module_path!()`
/// is `module` (the path without the crate's name), for a test that runs
/// others of this binary in a child process with `--exact`: the filter
/// follows the module wherever it moves.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// A TCP port free on 127.0.0.1 when asked (for a server a test starts).
pub fn free_local_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A failed run's last stderr line, after checking it failed with exit
/// status 1 and that line is the one `error: ` line.
pub fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

/// `pyproject.toml` of a setuptools project `name` `version` whose one
/// package is `name`, plus `extra` TOML.
pub fn setuptools_pyproject(name: &str, version: &str, extra: &str) -> String {
    format!(
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"{name}\"\nversion = \"{version}\"\n\n\
         [tool.setuptools]\npackages = [\"{name}\"]\n{extra}"
    )
}

/// An image loaded into podman (the tests' settings) from a docker
/// archive, removed again on drop.
pub struct PodmanImage {
    pub name: String,
    podman: PathBuf,
}

impl PodmanImage {
    pub fn load(archive: &Path, name: &str) -> PodmanImage {
        let image = PodmanImage {
            name: name.to_string(),
            podman: require_tool("podman"),
        };
        ok(image.podman().arg("load").arg("-i").arg(archive));
        image
    }

    pub fn podman(&self) -> Command {
        let mut c = Command::new(&self.podman);
        c.env("CONTAINERS_CONF", fixture("containers.conf"));
        c
    }

    /// `python3 -c code` in a container of the image, without network;
    /// `run_args` go before the image (e.g. `-v`). Returns its stdout.
    pub fn python(&self, run_args: &[String], code: &str) -> String {
        let out = run(self
            .podman()
            .args(["run", "--rm", "--network", "none"])
            .args(run_args)
            .arg(&self.name)
            .args(["python3", "-c", code]));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = self.podman().args(["rmi", "-f", &self.name]).output();
    }
}

/// `dallinger-oci COMMAND EXP` on the Python base with no package index
/// (only --find-links, the cache and what the test passes in `args`).
pub fn python_base_command(sandbox: &Sandbox, command: &str, exp: &Path, args: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg(command)
        .arg(exp)
        .args(["--base", &python_base_layout()])
        .args(["--index-url", ""])
        .args(args);
    run(&mut cmd)
}

/// Runs `cmd` with `stdin` as its standard input.
pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dallinger-oci starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A successful run's stdout and stderr.
pub fn succeeds(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// `build EXP --locked --tag TAG` on the Python base (plus `args`) into a
/// docker archive, then `python3 -c code` in that image under podman, where
/// the image is `REPOSITORY:TAG`. Returns the digest, the build's stderr
/// and what the code printed.
pub fn locked_build_and_run_python(
    sandbox: &Sandbox,
    exp: &Path,
    args: &[&str],
    repository: &str,
    tag: &str,
    code: &str,
) -> (String, String, String) {
    let archive = sandbox.path(&format!("{tag}.tar"));
    let archive_arg = format!("docker-archive:{}", archive.display());
    let (stdout, stderr) = succeeds(python_base_command(
        sandbox,
        "build",
        exp,
        &[args, &["--locked", "--tag", tag, "-o", &archive_arg]].concat(),
    ));
    let image = PodmanImage::load(&archive, &format!("{repository}:{tag}"));
    let printed = image.python(&[], code);
    (printed_digest(&stdout), stderr, printed)
}

/// The layer digests a manifest lists, in order.
pub fn manifest_layers(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// An OCI image manifest of `config` (JSON bytes) and one gzip layer.
pub fn one_layer_manifest(
    config: &[u8],
    layer_digest: &str,
    layer_size: usize,
) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    })
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `sha256:HEX` of `bytes`, as a descriptor names them.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// A wheel `NAME-VERSION-py3-none-any.whl` in `dir` with `files` (path,
/// bytes) and its `.dist-info` (`files` may replace its METADATA or WHEEL),
/// RECORD giving each file's sha256 and, if `sizes`, its size. Deflated
/// members.
pub fn write_versioned_wheel(
    dir: &Path,
    name: &str,
    version: &str,
    files: &[(&str, &[u8])],
    sizes: bool,
) -> PathBuf {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};
    use std::io::Write as _;
    fs::create_dir_all(dir).unwrap();
    let info = format!("{name}-{version}.dist-info");
    let mut members: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
    for (file, text) in [
        (
            "METADATA",
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
        ),
        (
            "WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_string(),
        ),
    ] {
        let path = format!("{info}/{file}");
        if !members.iter().any(|(p, _)| *p == path) {
            members.push((path, text.into_bytes()));
        }
    }
    let mut record = String::new();
    for (path, bytes) in &members {
        let size = if sizes {
            bytes.len().to_string()
        } else {
            String::new()
        };
        record.push_str(&format!(
            "{path},sha256={},{size}\n",
            URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
        ));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    members.push((format!("{info}/RECORD"), record.into_bytes()));
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, bytes) in &members {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}
