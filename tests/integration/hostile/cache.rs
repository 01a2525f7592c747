//! Cache and output integrity: exclusive temporary files, verified copies out of the store, locks.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::registry::{Registry, RegistryAuth};
use crate::common::*;

pub fn tiny_base() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// `dallinger-oci COMMAND EXP --base tiny args…` (no Python layers).
pub fn tiny(sandbox: &Sandbox, command: &str, exp: &Path, args: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.arg(command)
        .arg(exp)
        .args(["--base", &tiny_base()])
        .args(args);
    run(&mut cmd)
}

/// A file outside every directory the build may write, to check nothing
/// wrote through a planted link.
pub struct Canary {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

pub const CANARY: &str = "canary: must never change\n";

impl Canary {
    pub fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canary");
        fs::write(&path, CANARY).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Canary { path, _dir: dir }
    }

    pub fn assert_unchanged(&self) {
        assert_eq!(fs::read_to_string(&self.path).unwrap(), CANARY);
        let mode = fs::metadata(&self.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

/// Every blob under `dir/blobs/sha256` hashes to its name; returns how many.
pub fn assert_blobs_hash_to_names(dir: &Path) -> usize {
    let blobs = dir.join("blobs/sha256");
    let mut n = 0;
    for entry in fs::read_dir(&blobs).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            name,
            "{} does not hash to its name",
            entry.path().display()
        );
        n += 1;
    }
    n
}

/// Every layer record of the store names a blob present with its size.
pub fn assert_records_name_blobs(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache.join("layers")) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let record = read_json(&entry.path());
        let digest = record["digest"].as_str().unwrap();
        let size = record["size"].as_u64().unwrap();
        let meta = fs::metadata(blob(cache, digest))
            .unwrap_or_else(|_| panic!("{} names a missing blob", entry.path().display()));
        assert_eq!(meta.len(), size, "{}", entry.path().display());
    }
}

/// (tag, manifest digest) of each image `index.json` of a layout names.
pub fn layout_tags(layout: &Path) -> Vec<(String, String)> {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A pure-Python wheel `NAME-VERSION-py3-none-any.whl` in `dir` whose
/// package holds `files` (name, bytes).
pub fn make_wheel(dir: &Path, name: &str, version: &str, files: &[(String, Vec<u8>)]) -> PathBuf {
    use base64::Engine;
    fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    let dist_info = format!("{name}-{version}.dist-info");
    let mut members: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(f, b)| (format!("{name}/{f}"), b.clone()))
        .collect();
    members.push((
        format!("{dist_info}/METADATA"),
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").into_bytes(),
    ));
    members.push((
        format!("{dist_info}/WHEEL"),
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
    ));
    let mut record = String::new();
    for (member, bytes) in &members {
        use sha2::Digest;
        let hash =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(bytes));
        record.push_str(&format!("{member},sha256={hash},{}\n", bytes.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    members.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    for (member, bytes) in members {
        zip.start_file(member, options).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Pseudo-random bytes (xorshift), so layers compress like real content.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Text-like: compressible, but not trivially.
        out.push(b"abcdefghijklmnop \n"[(x % 18) as usize]);
    }
    out
}

/// An experiment on the Python base needing `wheels` (name, version) from
/// a find-links directory made here; returns it and the directory.
pub fn python_experiment(
    sandbox: &Sandbox,
    rel: &str,
    wheels: &[(&str, &str, usize)],
) -> (PathBuf, PathBuf) {
    let exp = sandbox.experiment("golden", rel);
    let links = sandbox.path(&format!("{rel}-wheels"));
    let mut requirements = String::new();
    let mut constraints = String::new();
    for (i, (name, version, size)) in wheels.iter().enumerate() {
        let files = vec![
            (
                "__init__.py".to_string(),
                format!("VALUE = {i}\n").into_bytes(),
            ),
            ("data.txt".to_string(), noise(i as u64 + 7, *size)),
        ];
        make_wheel(&links, name, version, &files);
        requirements.push_str(&format!("{name}\n"));
        constraints.push_str(&format!("{name}=={version}\n"));
    }
    fs::write(exp.join("requirements.txt"), requirements).unwrap();
    fs::write(exp.join("constraints.txt"), constraints).unwrap();
    (exp, links)
}

#[test]
fn lock_is_never_written_through_a_symlink_at_a_temporary_name() {
    let sandbox = Sandbox::new();
    let canary = Canary::new();
    let (exp, links) = python_experiment(&sandbox, "locked", &[("tinylock", "1.0", 1000)]);
    // The names a lock write used (and any a careless one might).
    // Committed in the experiment's repository, and kept out of its file
    // set as the repository's own ignore file says.
    fs::write(exp.join(".dallingerignore"), "*.partial\n*.tmp\n").unwrap();
    for name in [
        "pylock.dallinger-oci.toml.partial",
        "pylock.dallinger-oci.partial",
        "pylock.dallinger-oci.toml.tmp",
    ] {
        symlink(&canary.path, exp.join(name)).unwrap();
    }
    let links = links.to_string_lossy().into_owned();
    succeeds(python_base_command(
        &sandbox,
        "lock",
        &exp,
        &["--find-links", &links],
    ));
    canary.assert_unchanged();
    let lock = exp.join("pylock.dallinger-oci.toml");
    let meta = fs::symlink_metadata(&lock).unwrap();
    assert!(meta.is_file());
    let text = fs::read_to_string(&lock).unwrap();
    assert!(text.contains("name = \"tinylock\""), "{text}");
    assert!(text.contains("tinylock-1.0-py3-none-any.whl"), "{text}");
}

#[test]
fn layout_index_is_never_written_through_a_symlink_at_a_temporary_name() {
    let sandbox = Sandbox::new();
    let canary = Canary::new();
    let exp = sandbox.experiment("golden", "exp");
    let first = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", "oci:out:one"])).0);
    let out = sandbox.path("out");
    for name in ["index.json.partial", "index.partial", "index.json.tmp"] {
        symlink(&canary.path, out.join(name)).unwrap();
    }
    fs::write(exp.join("experiment.py"), "# changed\n").unwrap();
    let second = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", "oci:out:two"])).0);
    canary.assert_unchanged();
    let tags = layout_tags(&out);
    assert_eq!(
        tags,
        vec![("one".to_string(), first), ("two".to_string(), second)]
    );
    assert!(fs::symlink_metadata(out.join("index.json"))
        .unwrap()
        .is_file());
    assert_blobs_hash_to_names(&out);
}

#[test]
fn compose_files_are_private_whatever_is_planted_at_a_temporary_name() {
    use dallinger_oci::runtime::stack::write_private;
    let sandbox = Sandbox::new();
    let canary = Canary::new();
    let dir = sandbox.path("stack");
    fs::create_dir_all(&dir).unwrap();
    // A symlink to the canary and a world-readable file at the names the
    // compose files' temporary copies had.
    symlink(&canary.path, dir.join("docker-compose.partial")).unwrap();
    fs::write(dir.join(".env.partial"), "planted\n").unwrap();
    fs::set_permissions(dir.join(".env.partial"), fs::Permissions::from_mode(0o666)).unwrap();
    let secret = "SECRET_KEY: not-for-anyone-else\n";
    write_private(&dir.join("docker-compose.yml"), secret).unwrap();
    write_private(&dir.join(".env"), "COMPOSE_PROJECT_NAME=x\n").unwrap();
    canary.assert_unchanged();
    for (name, text) in [
        ("docker-compose.yml", secret),
        (".env", "COMPOSE_PROJECT_NAME=x\n"),
    ] {
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }
    // The compose file itself a symlink to the canary: replaced, private.
    fs::remove_file(dir.join("docker-compose.yml")).unwrap();
    symlink(&canary.path, dir.join("docker-compose.yml")).unwrap();
    write_private(&dir.join("docker-compose.yml"), secret).unwrap();
    canary.assert_unchanged();
    let meta = fs::symlink_metadata(dir.join("docker-compose.yml")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// Pushes the golden experiment on the tiny base to `HOST/lab/NAME:TAG`.
pub fn push_golden(sandbox: &Sandbox, exp: &Path, image: &str, args: &[&str]) -> Output {
    sandbox.name_image(exp, image);
    tiny(sandbox, "push", exp, args)
}

/// The digest Dallinger's closing lines name.
pub fn pushed_digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Pushed image: "))
        .unwrap_or_else(|| panic!("no digest in {stdout}"))
        .to_string()
}

#[test]
fn base_tag_memo_is_never_written_through_a_symlink() {
    let registry = Registry::start(RegistryAuth::None);
    let sandbox = Sandbox::new();
    let canary = Canary::new();
    let base_exp = sandbox.experiment("golden", "base-exp");
    let image = format!("{}/lab/base", registry.host());
    succeeds(push_golden(&sandbox, &base_exp, &image, &["--tag", "v1"]));

    let reference = format!("docker://{image}:v1");
    // Where the tag's digest is remembered (files/ by the reference and platform).
    let memo_key = |r: &str| sha256_hex(format!("base\0{r}\0linux/amd64").as_bytes());
    let exp = sandbox.experiment("golden", "exp");
    let cache = sandbox.path("cache");
    fs::create_dir_all(cache.join("files")).unwrap();
    // However the reference is spelled in the key, each candidate is a link.
    for r in [format!("{image}:v1"), reference.clone()] {
        symlink(&canary.path, cache.join("files").join(memo_key(&r))).unwrap();
    }
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args(["--base", &reference]);
    let (stdout, _) = succeeds(run(&mut cmd));
    let digest = printed_digest(&stdout);
    canary.assert_unchanged();
    // The memo is a file of its own now, naming the base's manifest.
    let memos: Vec<PathBuf> = fs::read_dir(cache.join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    assert!(
        memos
            .iter()
            .any(|p| fs::read_to_string(p).unwrap().starts_with("sha256:")),
        "{memos:?}"
    );
    // The rebuild follows the memo: same image.
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args(["--base", &reference]);
    assert_eq!(printed_digest(&succeeds(run(&mut cmd)).0), digest);
    canary.assert_unchanged();
}

/// Flips bytes in the middle of a file, keeping its size.
fn corrupt_in_place(path: &Path) {
    use std::io::{Seek, SeekFrom};
    let len = fs::metadata(path).unwrap().len();
    let mut bytes = vec![0u8; 16.min(len as usize)];
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = len / 2 - bytes.len() as u64 / 2;
    file.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut file, &mut bytes).unwrap();
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&bytes).unwrap();
    assert_eq!(fs::metadata(path).unwrap().len(), len);
}

/// The digests of the layers of the single image in `layout`.
fn layer_digests(layout: &Path) -> Vec<String> {
    let (_, manifest, _) = layout_image(layout);
    manifest_layers(&manifest)
}

#[test]
fn a_corrupt_cached_blob_of_the_right_size_is_never_shipped_and_is_rebuilt() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    let cache = sandbox.path("cache");
    let first = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", "oci:clean"])).0);
    let layers = layer_digests(&sandbox.path("clean"));
    assert_eq!(layers.len(), 2, "{layers:?}");

    // Each layer in turn (the base's, rebuilt from its tarball, and the
    // experiment's), into each kind of output.
    for (round, layer) in layers.iter().enumerate() {
        // An OCI layout: refused before it is renamed into place.
        corrupt_in_place(&blob(&cache, layer));
        let out = format!("oci:layout-{round}");
        let err = one_line_error(&tiny(&sandbox, "build", &exp, &["-o", &out]));
        assert!(
            err.contains(&format!("blob {layer} in the cache directory"))
                && err.contains("is corrupt")
                && err.contains("removed it")
                && err.contains("build again"),
            "{err}"
        );
        assert!(!sandbox.path(&format!("layout-{round}")).exists());
        let again = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", &out])).0);
        assert_eq!(again, first);
        assert_blobs_hash_to_names(&sandbox.path(&format!("layout-{round}")));

        // A docker archive: no file at the name.
        corrupt_in_place(&blob(&cache, layer));
        let archive = sandbox.path(&format!("image-{round}.tar"));
        let out = format!("docker-archive:{}", archive.display());
        let err = one_line_error(&tiny(&sandbox, "build", &exp, &["-o", &out]));
        assert!(err.contains(&format!("blob {layer} in the cache")), "{err}");
        assert!(!archive.exists());
        let leftovers: Vec<_> = fs::read_dir(sandbox.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&format!("image-{round}.tar")))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(
            printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", &out])).0),
            first
        );
        assert!(archive.is_file());

        // A push to a real registry (a fresh one: nothing to mount from):
        // the registry never gets the blob, and the push after repairs it.
        let registry = Registry::start(RegistryAuth::None);
        let image = format!("{}/lab/corrupt", registry.host());
        sandbox.name_image(&exp, &image);
        let named = sandbox.path(&format!("named-{round}"));
        let out = format!("oci:{}", named.display());
        let digest = printed_digest(&succeeds(tiny(&sandbox, "build", &exp, &["-o", &out])).0);
        let layer = &layer_digests(&named)[round];
        corrupt_in_place(&blob(&cache, layer));
        let err = one_line_error(&tiny(&sandbox, "push", &exp, &[]));
        assert!(err.contains(&format!("blob {layer} in the cache")), "{err}");
        let (stdout, _) = succeeds(tiny(&sandbox, "push", &exp, &[]));
        assert_eq!(pushed_digest(&stdout), digest);
        sandbox.name_image(&exp, "registry.example.test/dallinger-oci/golden");
        // What the registry holds hashes to its names.
        let stored = registry
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256");
        let mut held = 0;
        for prefix in fs::read_dir(&stored).unwrap() {
            for entry in fs::read_dir(prefix.unwrap().path()).unwrap() {
                let entry = entry.unwrap();
                let data = fs::read(entry.path().join("data")).unwrap();
                assert_eq!(sha256_hex(&data), entry.file_name().to_string_lossy());
                held += 1;
            }
        }
        assert_eq!(held, 4, "two layers, a config and a manifest");
    }
    assert_blobs_hash_to_names(&cache);
    assert_records_name_blobs(&cache);
}

/// An OCI layout base whose one layer blob is `blob` (a file or a link).
fn layout_base_with_blob(dir: &Path, make_blob: impl FnOnce(&Path), digest: &str, size: u64) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    fs::write(blob(dir, &config_digest), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    fs::write(blob(dir, &manifest_digest), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "base"}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    make_blob(&blob(dir, digest));
}

/// Runs `cmd` for at most `limit`, killing it after; None if it was killed.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_blob_longer_than_its_descriptor_is_refused() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "exp");
    let digest = format!("sha256:{}", "ab".repeat(32));
    // Endless: a link to /dev/zero in a hostile layout.
    let endless = sandbox.path("endless");
    layout_base_with_blob(
        &endless,
        |p| symlink("/dev/zero", p).unwrap(),
        &digest,
        1000,
    );
    // A real file with bytes past its size.
    let longer = sandbox.path("longer");
    layout_base_with_blob(
        &longer,
        |p| fs::write(p, vec![7u8; 5000]).unwrap(),
        &digest,
        1000,
    );
    for layout in [&longer, &endless] {
        let base = format!("oci:{}:base", layout.display());
        let mut cmd = sandbox.cmd();
        cmd.arg("build").arg(&exp).args(["--base", &base]);
        let out = run_bounded(&mut cmd, Duration::from_secs(20))
            .expect("the build kept reading an endless blob");
        let err = one_line_error(&out);
        assert!(
            err.contains(&format!(
                "blob {digest} from {} is longer than the 1000 bytes its descriptor gives; refusing it",
                blob(layout, &digest).display()
            )),
            "{err}"
        );
        // Nothing of it stays in the cache.
        let cache = sandbox.path("cache");
        assert!(!blob(&cache, &digest).exists());
        let tmp: Vec<_> = fs::read_dir(cache.join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }
}

#[test]
fn a_lock_naming_a_non_hex_debian_sha256_is_refused() {
    let sandbox = Sandbox::new();
    let canary = Canary::new();
    let exp = sandbox.experiment("golden", "exp");
    let config = fs::read_to_string(exp.join("config.txt")).unwrap();
    fs::write(
        exp.join("config.txt"),
        config.replace("[Docker]\n", "[Docker]\nsystem_packages = jq\n"),
    )
    .unwrap();
    // The "sha256" climbs out of the cache to the canary's directory.
    let escape = format!(
        "../../../../../../../../../..{}",
        canary.path.parent().unwrap().display()
    );
    let lock = format!(
        r#"lock-version = "1.0"
created-by = "dallinger-oci"
requires-python = "==3.11.2"
packages = []

[tool.dallinger-oci]
base = "rootfs:base.tar"
base-digest = "none"
platform = "linux/amd64"
requirements-sha256 = "{zeros}"

[tool.dallinger-oci.debian]
system-packages = "jq"
release = "Debian GNU/Linux 12 (bookworm) bookworm (main)"
base-layers = "sha256:{zeros}"

[[tool.dallinger-oci.debian.packages]]
name = "jq"
version = "1.6-2.1"
arch = "amd64"
url = "http://127.0.0.1:9/canary"
sha256 = "{escape}"
size = 26
"#,
        zeros = "0".repeat(64)
    );
    let lock_path = exp.join("pylock.dallinger-oci.toml");
    fs::write(&lock_path, lock).unwrap();
    let err = one_line_error(&tiny(&sandbox, "build", &exp, &[]));
    assert_eq!(
        err,
        format!(
            "error: {}: Debian package jq 1.6-2.1 has sha256 {escape:?}, not 64 lowercase hex digits; \
             refusing the lock (fix it, or delete it and run `dallinger-oci lock`)",
            lock_path.display()
        )
    );
    canary.assert_unchanged();
}
