//! The Python inside the base image, described as data: everything the
//! installer and the wheel selection need, never read from the host.

use std::collections::BTreeMap;

use crate::python::spec::PackageName;

/// A distribution already installed in the base image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstalledDist {
    /// As in its METADATA `Name:`.
    pub name: String,
    pub version: String,
    /// Image path of its `.dist-info` directory, without a leading `/`.
    pub dist_info: String,
    /// Image paths (no leading `/`) of the files its RECORD lists.
    pub files: Vec<String>,
}

/// The target Python. Paths are image paths without a leading `/`
/// (e.g. `usr/lib/python3/dist-packages`), except `interpreter`, which is
/// absolute because it goes into shebangs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// `x86_64` or `aarch64` (the machine name used in wheel tags).
    pub arch: String,
    /// Full version, e.g. (3, 11, 2): markers use `python_full_version`.
    pub python_version: (u32, u32, u32),
    /// Absolute path of the interpreter inside the image, e.g. `/usr/bin/python3`.
    pub interpreter: String,
    pub purelib: String,
    pub platlib: String,
    /// Where console scripts and `.data/scripts` go, e.g. `usr/bin`.
    pub scripts: String,
    /// `.data/headers` go to `{headers}/{distribution name}`, e.g. `usr/include/python3.11`.
    pub headers: String,
    /// `.data/data` goes here (the prefix), e.g. `usr`.
    pub data: String,
    /// glibc (major, minor) for manylinux tags; None for musl or unknown.
    pub glibc: Option<(u32, u32)>,
    /// Installed distributions, by name.
    pub installed: BTreeMap<PackageName, InstalledDist>,
}

/// The target of a base image, read from its layers once and then
/// remembered in the cache under the layers' digests.
pub fn detect(
    store: &crate::image::store::BlobStore,
    layers: &[crate::image::ImageLayer],
    config: &serde_json::Value,
    overrides: &TargetOverrides,
) -> anyhow::Result<Target> {
    let key_text = files_key(layers, config)?;
    // The target itself is remembered too, by the base and the overrides:
    // a rebuild reads it back instead of working it out of the base's
    // files (its dpkg status, every RECORD) again.
    let target_key = format!(
        "target-of/1\n{key_text}\n{}\n{overrides:?}",
        serde_json::to_string(config)?
    );
    crate::image::memoised(store, "target-of", &target_key, || {
        // A scan of these layers started ahead has filled the memo by the
        // time it ends (or failed, and the layers are read here, where
        // the failure is reported).
        let memo = store.memo_path("target", &key_text);
        let ahead = in_flight().lock().unwrap().remove(&memo);
        if let Some(scan) = ahead {
            let _ = scan.join();
        }
        let files = crate::image::memoised(store, "target", &key_text, || {
            scan_layers(&crate::image::layer_files(store, layers)?)
        })?;
        target_from(&files, config, overrides)
    })
}

/// The key of the memo of a base's Python files: its layers and what of
/// its config the scan's use depends on.
fn files_key(
    layers: &[crate::image::ImageLayer],
    config: &serde_json::Value,
) -> anyhow::Result<String> {
    let mut key_text = String::from("target/1\n");
    for layer in layers {
        key_text.push_str(&layer.blob.digest);
        key_text.push('\n');
    }
    key_text.push_str(&serde_json::to_string(&config.get("architecture"))?);
    key_text.push_str(&serde_json::to_string(&config.pointer("/config/Env"))?);
    Ok(key_text)
}

type Scans = std::sync::Mutex<BTreeMap<std::path::PathBuf, std::thread::JoinHandle<()>>>;

/// Scans started by [`scan_ahead`], by the memo they fill.
fn in_flight() -> &'static Scans {
    static IN_FLIGHT: std::sync::OnceLock<Scans> = std::sync::OnceLock::new();
    IN_FLIGHT.get_or_init(Default::default)
}

/// Starts reading the base's Python files on another thread, so that the
/// build goes on meanwhile with what does not need them (the base's
/// import into the cache, the Debian layer, the lock's predictions); a
/// [`detect`] of the same base in this process waits for it instead of
/// inflating the layers again. `files` are the layers' blobs as they are
/// now, in order: the cache's, or a layout's not imported yet. Their bytes
/// are hashed as they are read and the result is remembered only when
/// every blob has its layer's digest and size, as if read from the cache
/// after the import verified it. Nothing is reported from here: whatever
/// goes wrong (a missing blob, a bad one) leaves `detect` to read the
/// layers itself and say so. Does nothing when the memo is already there
/// or a scan of these layers is under way.
pub fn scan_ahead(
    store: &crate::image::store::BlobStore,
    layers: &[crate::image::ImageLayer],
    config: &serde_json::Value,
    files: Vec<std::path::PathBuf>,
) {
    let Ok(key_text) = files_key(layers, config) else {
        return;
    };
    let memo = store.memo_path("target", &key_text);
    if files.len() != layers.len() || memo.is_file() {
        return;
    }
    let mut scans = in_flight().lock().unwrap();
    if scans.contains_key(&memo) {
        return;
    }
    let store = store.clone();
    let blobs: Vec<(std::path::PathBuf, crate::image::store::StoredLayer)> = files
        .into_iter()
        .zip(layers.iter().map(|l| l.blob.clone()))
        .collect();
    let key = key_text;
    let spawned = std::thread::Builder::new()
        .name("target-scan".into())
        .spawn(move || {
            let _ = crate::image::memoised(&store, "target", &key, || scan_verified(&blobs));
        });
    if let Ok(handle) = spawned {
        scans.insert(memo, handle);
    }
}

/// [`scan_layers`] of blob files not (yet) known to be what their layers
/// say: each hashed as it is read, to its end, and refused unless it has
/// its layer's digest and size.
fn scan_verified(
    blobs: &[(std::path::PathBuf, crate::image::store::StoredLayer)],
) -> anyhow::Result<BaseFiles> {
    use anyhow::{bail, Context};
    use sha2::Digest as _;
    let mut files = BaseFiles::default();
    for (path, blob) in blobs {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read base layer {}", path.display()))?;
        let mut hashing = HashingRead {
            inner: file,
            hasher: sha2::Sha256::new(),
            size: 0,
        };
        {
            let reader = std::io::BufReader::with_capacity(1 << 20, &mut hashing);
            let mut reader = std::io::BufReader::new(
                dallinger_oci_layers::open_layer(&blob.media_type, reader)
                    .with_context(|| format!("base layer {}", path.display()))?,
            );
            scan_one(
                &mut files,
                &mut reader,
                &path.display().to_string(),
                &interesting_path,
            )?;
        }
        // Whatever follows the end of the tar is the blob's too.
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let digest =
            dallinger_oci_layers::Digest::sha256(hashing.hasher.finalize().into()).to_string();
        if digest != blob.digest || hashing.size != blob.size {
            bail!("base layer {} is not blob {}", path.display(), blob.digest);
        }
    }
    Ok(files)
}

/// Counts and hashes what is read through it.
struct HashingRead<R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
}

impl<R: std::io::Read> std::io::Read for HashingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Overrides for the rare base whose Python cannot be read from its files.
#[derive(Debug, Clone, Default)]
pub struct TargetOverrides {
    pub python_version: Option<(u32, u32, u32)>,
    pub interpreter: Option<String>,
    pub site_packages: Option<String>,
}

/// Files of the base image that describe its Python, after every layer
/// (and its whiteouts) is applied.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct BaseFiles {
    /// Symlinks among the interpreter candidates: path → target.
    pub links: BTreeMap<String, String>,
    /// Paths that exist (files, directories, links) among those we look at.
    pub present: std::collections::BTreeSet<String>,
    /// Contents of the small text files we read.
    pub texts: BTreeMap<String, String>,
    /// Contents of the files we read that are not UTF-8 (keyrings).
    #[serde(default)]
    pub binaries: BTreeMap<String, Vec<u8>>,
}

impl BaseFiles {
    fn remove_subtree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let keep = |p: &String| p != path && !p.starts_with(&prefix);
        self.links.retain(|p, _| keep(p));
        self.present.retain(keep);
        self.texts.retain(|p, _| keep(p));
        self.binaries.retain(|p, _| keep(p));
    }

    fn clear_children(&mut self, dir: &str) {
        let prefix = format!("{dir}/");
        self.links.retain(|p, _| !p.starts_with(&prefix));
        self.present.retain(|p| !p.starts_with(&prefix));
        self.texts.retain(|p, _| !p.starts_with(&prefix));
        self.binaries.retain(|p, _| !p.starts_with(&prefix));
    }
}

/// Whether a path can tell us about the base's Python.
fn interesting(path: &str) -> (bool, bool) {
    let is_python_bin = (path.starts_with("usr/bin/python3")
        || path.starts_with("usr/local/bin/python3"))
        && !path[path.rfind('/').unwrap_or(0)..].contains('-');
    let in_site = (path.contains("/site-packages/") || path.contains("/dist-packages/"))
        && path.contains(".dist-info/");
    let read = path == "var/lib/dpkg/status"
        || (in_site
            && (path.ends_with(".dist-info/METADATA") || path.ends_with(".dist-info/RECORD")));
    let keep = read
        || is_python_bin
        || path.starts_with("usr/lib/python3")
        || path.starts_with("usr/local/lib/python3");
    (keep, read)
}

/// Reads the base layers (plain tar, gzip or zstd), applying OCI whiteouts.
pub(crate) fn scan_layers(paths: &[(std::path::PathBuf, String)]) -> anyhow::Result<BaseFiles> {
    scan_layers_with(paths, &interesting_path)
}

fn interesting_path(path: &str, _is_symlink: bool) -> (bool, bool) {
    interesting(path)
}

/// Reads the base layers, keeping the paths `interesting(path, is_symlink)`
/// says to keep (first) and reading those it says to read (second).
pub(crate) fn scan_layers_with(
    paths: &[(std::path::PathBuf, String)],
    interesting: &dyn Fn(&str, bool) -> (bool, bool),
) -> anyhow::Result<BaseFiles> {
    use anyhow::Context;
    let mut files = BaseFiles::default();
    for (path, media_type) in paths {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read base layer {}", path.display()))?;
        let file = std::io::BufReader::with_capacity(1 << 20, file);
        let reader = dallinger_oci_layers::open_layer(media_type, file)
            .with_context(|| format!("base layer {}", path.display()))?;
        scan_one(&mut files, reader, &path.display().to_string(), interesting)?;
    }
    Ok(files)
}

/// Applies one layer's tar (`name` in messages) to `files`.
fn scan_one(
    files: &mut BaseFiles,
    reader: impl std::io::Read,
    name: &str,
    interesting: &dyn Fn(&str, bool) -> (bool, bool),
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Read;
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .with_context(|| format!("reading base layer {name}"))?
    {
        let mut entry = entry.with_context(|| format!("reading base layer {name}"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let p = raw
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n.to_string()),
            None => (String::new(), p.clone()),
        };
        if name == ".wh..wh..opq" {
            files.clear_children(&dir);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            files.remove_subtree(&gone);
            continue;
        }
        let is_symlink = entry.header().entry_type() == tar::EntryType::Symlink;
        let (keep, read) = interesting(&p, is_symlink);
        if !keep {
            continue;
        }
        files.remove_subtree(&p);
        files.present.insert(p.clone());
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name().ok().flatten() {
                    files.links.insert(p, target.to_string_lossy().into_owned());
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous if read => {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {p} in a base layer"))?;
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        files.texts.insert(p, text);
                    }
                    Err(e) => {
                        files.binaries.insert(p, e.into_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Works out the target from the base's files and config.
pub(crate) fn target_from(
    files: &BaseFiles,
    config: &serde_json::Value,
    overrides: &TargetOverrides,
) -> anyhow::Result<Target> {
    use anyhow::{bail, Context};
    // What `uname -m` says on the base's platform (linux/amd64 if its config
    // does not say).
    let arch = crate::image::platform::Platform::of_config(config)
        .unwrap_or_else(|| crate::image::platform::Platform::new("linux", "amd64", None))
        .machine();
    // The interpreter: python.org images put theirs in /usr/local, Debian in /usr.
    let candidates = ["usr/local/bin/python3", "usr/bin/python3"];
    let interpreter_path = match &overrides.interpreter {
        Some(i) => i.trim_start_matches('/').to_string(),
        None => candidates
            .iter()
            .find(|c| files.present.contains(**c))
            .map(|c| c.to_string())
            .context("the base image has no Python: neither /usr/local/bin/python3 nor /usr/bin/python3 exists (pass --python to name the interpreter)")?,
    };
    // Follow links (python3 -> python3.11) to learn the minor version.
    let mut resolved = interpreter_path.clone();
    for _ in 0..8 {
        match files.links.get(&resolved) {
            Some(t) if t.starts_with('/') => resolved = t.trim_start_matches('/').to_string(),
            Some(t) => {
                let dir = resolved.rsplit_once('/').map_or("", |(d, _)| d);
                resolved = if dir.is_empty() {
                    t.clone()
                } else {
                    format!("{dir}/{t}")
                };
            }
            None => break,
        }
    }
    let minor_from_name = |name: &str| -> Option<u32> {
        name.rsplit('/')
            .next()?
            .strip_prefix("python3.")?
            .parse()
            .ok()
    };
    let env_version = config
        .pointer("/config/Env")
        .and_then(|e| e.as_array())
        .and_then(|env| {
            env.iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_prefix("PYTHON_VERSION="))
                .map(String::from)
        });
    let dpkg = files
        .texts
        .get("var/lib/dpkg/status")
        .map(String::as_str)
        .unwrap_or("");
    let minor = minor_from_name(&resolved).or_else(|| {
        files
            .present
            .iter()
            .filter_map(|p| {
                p.strip_prefix(if interpreter_path.starts_with("usr/local") {
                    "usr/local/lib/python3."
                } else {
                    "usr/lib/python3."
                })
            })
            .filter_map(|rest| rest.split('/').next()?.parse::<u32>().ok())
            .max()
    });
    let version = match overrides.python_version {
        Some(v) => v,
        None => {
            let from_env = env_version.as_deref().and_then(parse_version);
            let from_dpkg = minor.and_then(|m| {
                dpkg_version(dpkg, &format!("libpython3.{m}-minimal"))
                    .or_else(|| dpkg_version(dpkg, &format!("python3.{m}-minimal")))
                    .and_then(|v| parse_version(&v))
            });
            match from_env.or(from_dpkg) {
                Some(v) => v,
                None => bail!(
                    "cannot tell the base image's full Python version (no PYTHON_VERSION in its config, no python3 package in its dpkg status): pass --python-version X.Y.Z"
                ),
            }
        }
    };
    if let Some(m) = minor {
        if m != version.1 {
            bail!("the base's interpreter is Python 3.{m} but its version reads {}.{}.{}: pass --python-version", version.0, version.1, version.2);
        }
    }
    let major_minor = format!("python{}.{}", version.0, version.1);
    let python_org = interpreter_path.starts_with("usr/local");
    // Everything pip installs as root goes under /usr/local, on both kinds of
    // base: /usr belongs to dpkg on Debian.
    let prefix = "usr/local";
    // Where pip would install as root: python.org builds use site-packages under
    // /usr/local; Debian's python uses /usr/local/lib/python3.X/dist-packages
    // (its posix_local scheme), keeping /usr for dpkg.
    let site = match &overrides.site_packages {
        Some(s) => s.trim_start_matches('/').trim_end_matches('/').to_string(),
        None if python_org => format!("usr/local/lib/{major_minor}/site-packages"),
        None => format!("usr/local/lib/{major_minor}/dist-packages"),
    };
    let glibc = dpkg_version(dpkg, "libc6").and_then(|v| {
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    });
    let mut installed = BTreeMap::new();
    for (path, text) in &files.texts {
        let Some(dist_info) = path.strip_suffix("/METADATA") else {
            continue;
        };
        let header = |key: &str| {
            text.lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        let (Some(name), Some(version)) = (header("Name:"), header("Version:")) else {
            continue;
        };
        let root = dist_info.rsplit_once('/').map_or("", |(d, _)| d);
        let files_listed = files
            .texts
            .get(&format!("{dist_info}/RECORD"))
            .map(|record| {
                record
                    .lines()
                    .filter_map(|l| l.split(',').next())
                    .filter(|p| !p.is_empty())
                    .map(|p| normalise_join(root, p))
                    .collect()
            })
            .unwrap_or_default();
        installed.insert(
            PackageName::new(&name),
            InstalledDist {
                name,
                version,
                dist_info: dist_info.to_string(),
                files: files_listed,
            },
        );
    }
    Ok(Target {
        arch,
        python_version: version,
        interpreter: format!("/{interpreter_path}"),
        purelib: site.clone(),
        platlib: site,
        scripts: format!("{prefix}/bin"),
        headers: format!("{prefix}/include/{major_minor}"),
        data: prefix.to_string(),
        glibc,
        installed,
    })
}

/// `root/rel` with `..` and `.` resolved (RECORD paths of scripts climb out).
pub(crate) fn normalise_join(root: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// `X.Y.Z` at the start of a version string (`3.11.2-6+deb12u6` → 3.11.2).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// The Version of an installed package in a dpkg status file.
fn dpkg_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        (name == Some(package) && installed)
            .then(|| version.map(String::from))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, Option<&str>, Option<&str>)]) -> BaseFiles {
        let mut f = BaseFiles::default();
        for (path, link, text) in entries {
            f.present.insert(path.to_string());
            if let Some(l) = link {
                f.links.insert(path.to_string(), l.to_string());
            }
            if let Some(t) = text {
                f.texts.insert(path.to_string(), t.to_string());
            }
        }
        f
    }

    const DPKG: &str = "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u13\n\n\
Package: libpython3.11-minimal\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u6\n";

    #[test]
    fn debian_python() {
        let f = files(&[
            ("usr/bin/python3", Some("python3.11"), None),
            ("usr/bin/python3.11", None, None),
            ("usr/lib/python3.11", None, None),
            ("var/lib/dpkg/status", None, Some(DPKG)),
        ]);
        let t = target_from(
            &f,
            &serde_json::json!({"architecture": "amd64"}),
            &TargetOverrides::default(),
        )
        .unwrap();
        assert_eq!(t.python_version, (3, 11, 2));
        assert_eq!(t.interpreter, "/usr/bin/python3");
        assert_eq!(t.purelib, "usr/local/lib/python3.11/dist-packages");
        assert_eq!(t.scripts, "usr/local/bin");
        assert_eq!(t.glibc, Some((2, 36)));
        assert_eq!(t.arch, "x86_64");
    }

    #[test]
    fn python_org_image_with_installed_dists() {
        let f = files(&[
            ("usr/local/bin/python3", Some("python3.12"), None),
            ("usr/local/bin/python3.12", None, None),
            ("var/lib/dpkg/status", None, Some(DPKG)),
            (
                "usr/local/lib/python3.12/site-packages/pip-24.0.dist-info/METADATA",
                None,
                Some("Metadata-Version: 2.1\nName: pip\nVersion: 24.0\n\nbody"),
            ),
            (
                "usr/local/lib/python3.12/site-packages/pip-24.0.dist-info/RECORD",
                None,
                Some("pip/__init__.py,sha256=x,1\n../../../bin/pip,sha256=y,2\n"),
            ),
        ]);
        let config = serde_json::json!({"architecture": "arm64", "config": {"Env": ["PYTHON_VERSION=3.12.7"]}});
        let t = target_from(&f, &config, &TargetOverrides::default()).unwrap();
        assert_eq!(t.python_version, (3, 12, 7));
        assert_eq!(t.purelib, "usr/local/lib/python3.12/site-packages");
        assert_eq!(t.scripts, "usr/local/bin");
        assert_eq!(t.arch, "aarch64");
        let pip = &t.installed["pip"];
        assert_eq!(pip.version, "24.0");
        assert_eq!(
            pip.files,
            [
                "usr/local/lib/python3.12/site-packages/pip/__init__.py",
                "usr/local/bin/pip"
            ]
        );
    }

    #[test]
    fn no_python_is_a_clear_error() {
        let err = target_from(
            &BaseFiles::default(),
            &serde_json::json!({}),
            &TargetOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("has no Python"), "{err}");
    }

    /// A plain tar layer with a Debian Python, and its descriptor.
    fn base_layer() -> (Vec<u8>, crate::image::ImageLayer) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, link: Option<&str>, body: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(body.len() as u64);
            header.set_mode(0o755);
            if let Some(l) = link {
                header.set_link_name(l).unwrap();
            }
            tar.append_data(&mut header, path, body).unwrap();
        };
        add(
            "usr/bin/python3",
            tar::EntryType::Symlink,
            Some("python3.11"),
            b"",
        );
        add("usr/bin/python3.11", tar::EntryType::Regular, None, b"elf");
        add(
            "usr/lib/python3.11/os.py",
            tar::EntryType::Regular,
            None,
            b"",
        );
        add(
            "var/lib/dpkg/status",
            tar::EntryType::Regular,
            None,
            DPKG.as_bytes(),
        );
        let bytes = tar.into_inner().unwrap();
        let digest = crate::image::store::sha256_digest(&bytes);
        let layer = crate::image::ImageLayer {
            blob: crate::image::store::StoredLayer {
                diff_id: digest.clone(),
                digest,
                size: bytes.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            },
            annotations: Default::default(),
            remote: None,
        };
        (bytes, layer)
    }

    /// A scan started ahead from a layout's file gives `detect` what it
    /// would have read itself, and remembers it; a file that is not the
    /// layer's blob is not remembered, and `detect` reads the cache's.
    #[test]
    fn a_scan_ahead_is_what_detect_reads_and_only_of_the_right_bytes() {
        let (bytes, layer) = base_layer();
        let config = serde_json::json!({"architecture": "amd64"});
        let plain = tempfile::tempdir().unwrap();
        let plain_file = plain.path().join("blob");
        std::fs::write(&plain_file, &bytes).unwrap();
        let scanned = scan_layers(&[(plain_file, layer.blob.media_type.clone())]).unwrap();
        let expected = target_from(&scanned, &config, &TargetOverrides::default()).unwrap();
        assert_eq!(expected.python_version, (3, 11, 2));
        for tampered in [false, true] {
            let cache = tempfile::tempdir().unwrap();
            let layout = tempfile::tempdir().unwrap();
            let store = crate::image::store::BlobStore::open(cache.path()).unwrap();
            let file = layout.path().join("blob");
            let mut offered = bytes.clone();
            if tampered {
                // Same length, another Python version in the dpkg status.
                let at = offered.windows(8).position(|w| w == b"3.11.2-6").unwrap();
                offered[at + 3] = b'9';
            }
            std::fs::write(&file, &offered).unwrap();
            scan_ahead(
                &store,
                std::slice::from_ref(&layer),
                &config,
                vec![file.clone()],
            );
            store.put_bytes(&bytes).unwrap();
            let memo = store.memo_path(
                "target",
                &files_key(std::slice::from_ref(&layer), &config).unwrap(),
            );
            let scan = in_flight().lock().unwrap().remove(&memo).unwrap();
            scan.join().unwrap();
            assert_eq!(memo.is_file(), !tampered, "tampered: {tampered}");
            let target = detect(
                &store,
                std::slice::from_ref(&layer),
                &config,
                &TargetOverrides::default(),
            )
            .unwrap();
            assert_eq!(target, expected, "tampered: {tampered}");
        }
    }
}
