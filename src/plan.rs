//! The lock: every input of the Python layers resolved to a digest — the
//! base image, the target read from it, and each wheel by file name, URL and
//! sha256 — so a rebuild needs no index and gives the same bytes.
//!
//! Written in the shape of PEP 751 (`pylock.toml`): `lock-version`,
//! `created-by`, `requires-python`, `[[packages]]` with `wheels`; what is ours
//! lives under `[tool.dallinger-oci]`.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The lock file's name, next to `config.txt`.
pub const LOCK_FILE: &str = "pylock.dallinger-oci.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Lock {
    pub lock_version: String,
    pub created_by: String,
    pub requires_python: String,
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
    pub tool: ToolSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSection {
    #[serde(rename = "dallinger-oci")]
    pub ours: LockInputs,
    /// `[[tool.dallinger-oci-platforms]]`: the lock of each further
    /// platform of a multi-platform build (the first platform's is the
    /// lock's own, so a lock for one platform reads as it always did).
    /// Empty in the lock [`Lock::read`] gives: that is one platform's.
    #[serde(
        rename = "dallinger-oci-platforms",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub platforms: Vec<PlatformLock>,
}

/// One further platform's lock: its pins' wheels and its inputs (base
/// manifest, target, Debian packages, layers), `platform` naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlatformLock {
    pub requires_python: String,
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
    #[serde(rename = "dallinger-oci")]
    pub ours: LockInputs,
}

thread_local! {
    /// The platform whose lock [`Lock::read`] gives on this thread (see
    /// [`for_platform`]); none: the lock's own.
    static PLATFORM: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// While the guard lives, [`Lock::read`] on this thread gives the lock of
/// `platform` (`os/arch[/variant]`, canonical): the build of each platform
/// of a multi-platform image reads and writes its own record.
pub fn for_platform(platform: &str) -> PlatformGuard {
    let previous = PLATFORM.with(|p| p.replace(Some(platform.to_string())));
    PlatformGuard(previous)
}

/// Restores the platform [`Lock::read`] chose before [`for_platform`].
pub struct PlatformGuard(Option<String>);

impl Drop for PlatformGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        PLATFORM.with(|p| *p.borrow_mut() = previous);
    }
}

/// What the lock was made from: when any of it changes, the lock is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockInputs {
    /// The base as configured (`docker://…`, `rootfs:…`, …): informational.
    pub base: String,
    /// The base manifest digest the target was read from.
    pub base_digest: String,
    pub platform: String,
    /// sha256 of the requirements file the pins came from.
    pub requirements_sha256: String,
    /// The image sdists were built in (`--build-sdists`), when any was:
    /// informational, the built wheels are pinned by their own sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_digest: Option<String>,
    /// The Debian packages of `system_packages` (src/debian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianLock>,
    /// The target read from the base, so a `--locked` build needs none of
    /// the base's layer bytes to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<LockedTarget>,
    /// The layers the lock predicts (Debian packages, Python dependencies,
    /// Dallinger, a prepare script without network): what a registry that
    /// holds them need not be sent again, and what `digest` adds up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LockedLayer>,
}

/// `[tool.dallinger-oci.target]`: the Python of the base whose manifest
/// digest is `base-digest`, as read with `overrides` (`--python-version`,
/// `--python`, `--site-packages`; empty when none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedTarget {
    pub base_digest: String,
    #[serde(default)]
    pub overrides: String,
    pub python: crate::python::Target,
}

/// `[[tool.dallinger-oci.layers]]`: one layer as the build that wrote the
/// lock made it. `key` is what the store looks the layer up by (its inputs,
/// the tar format, the compressor, the epoch); `format` and `compressor`
/// are written out too, so a lock from another format or compressor is
/// named as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedLayer {
    /// `debian`, `python` or `prepare`.
    pub kind: String,
    pub created_by: String,
    pub key: String,
    pub format: String,
    pub compressor: String,
    pub media_type: String,
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
}

/// `[tool.dallinger-oci.debian]`: every `.deb` of the system packages
/// layer, so a rebuild needs neither the archive's indexes nor its
/// signatures, only these files (from the cache when there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DebianLock {
    /// `system_packages` as resolved (normalised: one space between names).
    pub system_packages: String,
    /// The release and suites they were resolved in: informational.
    pub release: String,
    /// sha256 of the base's layer digests the closure was computed against.
    pub base_layers: String,
    #[serde(default)]
    pub packages: Vec<LockedDeb>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedDeb {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// The sdist a wheel was built from (`--build-sdists`); the wheel is
    /// then recorded by name only, as it is at no URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdist: Option<LockedFile>,
    /// The git source a wheel was built from (a `git+` requirement), as
    /// PEP 751's `[packages.vcs]`; the built wheel is recorded by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcs: Option<LockedVcs>,
    #[serde(default)]
    pub wheels: Vec<LockedFile>,
}

/// A git source: the URL without credentials, the revision as written, and
/// the commit it was resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedVcs {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_revision: Option<String>,
    pub commit_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdirectory: Option<String>,
}

/// A wheel or sdist: its file name, where it came from, its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedFile {
    pub name: String,
    pub url: String,
    pub hashes: Hashes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub sha256: String,
}

impl Lock {
    pub fn path(experiment_dir: &Path) -> PathBuf {
        experiment_dir.join(LOCK_FILE)
    }

    /// The lock next to `config.txt`, if there is one: the record of the
    /// platform being built ([`for_platform`]) when the file has one, else
    /// the file's own (whose other platform then makes it stale).
    pub fn read(experiment_dir: &Path) -> Result<Option<Lock>> {
        let Some(file) = Lock::read_file(experiment_dir)? else {
            return Ok(None);
        };
        let wanted = PLATFORM.with(|p| p.borrow().clone());
        let record = wanted.and_then(|wanted| {
            (file.tool.ours.platform != wanted)
                .then(|| {
                    file.tool
                        .platforms
                        .iter()
                        .find(|r| r.ours.platform == wanted)
                })
                .flatten()
                .cloned()
        });
        Ok(Some(match record {
            Some(record) => file.of_record(record),
            None => Lock {
                tool: ToolSection {
                    platforms: Vec::new(),
                    ..file.tool
                },
                ..file
            },
        }))
    }

    /// The platforms the lock file records, its own first.
    pub fn platforms(experiment_dir: &Path) -> Result<Vec<String>> {
        Ok(Lock::read_file(experiment_dir)?
            .map(|file| {
                std::iter::once(file.tool.ours.platform)
                    .chain(file.tool.platforms.into_iter().map(|r| r.ours.platform))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Keeps only the records of `platforms` (`lock` records exactly the
    /// platforms it was asked for), the first of them the lock's own.
    pub fn retain_platforms(experiment_dir: &Path, platforms: &[String]) -> Result<()> {
        let Some(file) = Lock::read_file(experiment_dir)? else {
            return Ok(());
        };
        let mut records: Vec<Lock> = std::iter::once(file.clone())
            .chain(
                file.tool
                    .platforms
                    .iter()
                    .map(|r| file.of_record(r.clone())),
            )
            .filter(|l| platforms.contains(&l.tool.ours.platform))
            .collect();
        records.sort_by_key(|l| platforms.iter().position(|p| *p == l.tool.ours.platform));
        if records.is_empty() {
            return Ok(());
        }
        let mut own = records.remove(0);
        own.tool.platforms = records.into_iter().map(PlatformLock::from).collect();
        if own != file {
            own.write_file(experiment_dir)?;
        }
        Ok(())
    }

    /// The lock of one further platform's `record` of this file.
    fn of_record(&self, record: PlatformLock) -> Lock {
        Lock {
            lock_version: self.lock_version.clone(),
            created_by: self.created_by.clone(),
            requires_python: record.requires_python,
            packages: record.packages,
            tool: ToolSection {
                ours: record.ours,
                platforms: Vec::new(),
            },
        }
    }

    /// The lock file as written: its own record and the other platforms'.
    fn read_file(experiment_dir: &Path) -> Result<Option<Lock>> {
        let path = Lock::path(experiment_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lock: Lock = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid lock file: delete it and run `dallinger-oci lock`",
                path.display()
            )
        })?;
        lock.check()
            .and_then(|()| {
                lock.tool.platforms.iter().try_for_each(|r| {
                    lock.of_record(r.clone())
                        .check()
                        .map_err(|why| format!("the {} record: {why}", r.ours.platform))
                })
            })
            .map_err(|why| {
                anyhow::anyhow!(
                "{}: {why}; refusing the lock (fix it, or delete it and run `dallinger-oci lock`)",
                path.display()
            )
            })?;
        Ok(Some(lock))
    }

    /// The lock comes with someone else's experiment: every value that
    /// becomes part of a cache path (hashes, file names, commits) must be
    /// what it claims, never a path of its own.
    fn check(&self) -> std::result::Result<(), String> {
        let ours = &self.tool.ours;
        for (what, digest) in [
            ("base-digest", Some(&ours.base_digest)),
            ("builder-digest", ours.builder_digest.as_ref()),
            (
                "target's base-digest",
                ours.target.as_ref().map(|t| &t.base_digest),
            ),
        ] {
            if let Some(d) = digest.filter(|d| d.as_str() != "none") {
                if crate::image::store::hex_of(d).is_err() {
                    return Err(format!("{what} {d:?} is not sha256:<64 hex digits>"));
                }
            }
        }
        for p in &self.packages {
            for file in p.sdist.iter().chain(&p.wheels) {
                if !is_sha256_hex(&file.hashes.sha256) {
                    return Err(format!(
                        "package {} has sha256 {:?} for {:?}, not 64 lowercase hex digits",
                        p.name, file.hashes.sha256, file.name
                    ));
                }
                if !is_file_name(&file.name) {
                    return Err(format!(
                        "package {} names the file {:?}, which is not a plain file name",
                        p.name, file.name
                    ));
                }
            }
            if let Some(vcs) = &p.vcs {
                let c = &vcs.commit_id;
                if !(c.len() == 40 || c.len() == 64) || !c.bytes().all(is_lower_hex) {
                    return Err(format!(
                        "package {} has commit-id {c:?}, not a hex commit id",
                        p.name
                    ));
                }
            }
        }
        if let Some(locked) = &ours.target {
            let t = &locked.python;
            for (what, path) in [
                ("purelib", &t.purelib),
                ("platlib", &t.platlib),
                ("scripts", &t.scripts),
                ("headers", &t.headers),
                ("data", &t.data),
            ]
            .into_iter()
            .chain(t.installed.values().map(|d| ("dist-info", &d.dist_info)))
            {
                if !is_image_path(path) {
                    return Err(format!(
                        "the target's {what} {path:?} is not a relative image path"
                    ));
                }
            }
            if !t.interpreter.starts_with('/') || t.interpreter.contains(['\n', '\0']) {
                return Err(format!(
                    "the target's interpreter {:?} is not an absolute path",
                    t.interpreter
                ));
            }
        }
        for layer in &ours.layers {
            for (what, d) in [("diff-id", &layer.diff_id), ("digest", &layer.digest)] {
                if crate::image::store::hex_of(d).is_err() {
                    return Err(format!(
                        "layer {:?} has {what} {d:?}, not sha256:<64 hex digits>",
                        layer.created_by
                    ));
                }
            }
        }
        if let Some(debian) = &ours.debian {
            for p in &debian.packages {
                if !is_sha256_hex(&p.sha256) {
                    return Err(format!(
                        "Debian package {} {} has sha256 {:?}, not 64 lowercase hex digits",
                        p.name, p.version, p.sha256
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the lock of its platform atomically: the file's own record
    /// when the file has none or is for this platform, else this
    /// platform's record beside it; the other platforms' records kept.
    pub fn write(&self, experiment_dir: &Path) -> Result<PathBuf> {
        let platform = &self.tool.ours.platform;
        let mut file = match Lock::read_file(experiment_dir)? {
            Some(file) if file.tool.ours.platform != *platform => file,
            Some(file) => Lock {
                tool: ToolSection {
                    platforms: file.tool.platforms,
                    ..self.tool.clone()
                },
                ..self.clone()
            },
            None => self.clone(),
        };
        if file.tool.ours.platform == *platform {
            file.tool.platforms.retain(|r| r.ours.platform != *platform);
        } else {
            let record = PlatformLock::from(self.clone());
            match file
                .tool
                .platforms
                .iter_mut()
                .find(|r| r.ours.platform == *platform)
            {
                Some(slot) => *slot = record,
                None => file.tool.platforms.push(record),
            }
        }
        file.write_file(experiment_dir)
    }

    /// Writes this, the whole file, atomically; packages sorted by name so
    /// the file is stable.
    fn write_file(&self, experiment_dir: &Path) -> Result<PathBuf> {
        let mut lock = self.clone();
        lock.packages.sort_by(|a, b| a.name.cmp(&b.name));
        for record in &mut lock.tool.platforms {
            record.packages.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let text = format!(
            "# Written by `dallinger-oci lock`: every input of the image's Python and Debian layers.\n{}",
            toml::to_string(&lock)?
        );
        let path = Lock::path(experiment_dir);
        crate::fsutil::write(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }
}

impl From<Lock> for PlatformLock {
    fn from(lock: Lock) -> PlatformLock {
        PlatformLock {
            requires_python: lock.requires_python,
            packages: lock.packages,
            ours: lock.tool.ours,
        }
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// 64 lowercase hex digits: a sha256 as the lock and the caches write it.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(is_lower_hex)
}

/// An image path as the target has them: relative, no `.` or `..` (or
/// none at all).
fn is_image_path(path: &str) -> bool {
    path.is_empty()
        || !path.starts_with('/')
            && !path.contains('\0')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// One path component that names a file: no `/`, not `.` or `..`.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target and the layer entries round-trip, and a target path
    /// that leaves the image refuses the lock.
    #[test]
    fn target_and_layers_round_trip_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let target = crate::python::Target {
            arch: "x86_64".into(),
            python_version: (3, 11, 2),
            interpreter: "/usr/bin/python3".into(),
            purelib: "usr/local/lib/python3.11/dist-packages".into(),
            platlib: "usr/local/lib/python3.11/dist-packages".into(),
            scripts: "usr/local/bin".into(),
            headers: "usr/local/include/python3.11".into(),
            data: "usr/local".into(),
            glibc: None,
            installed: [(
                crate::python::spec::PackageName::new("pip"),
                crate::python::InstalledDist {
                    name: "pip".into(),
                    version: "23.0.1".into(),
                    dist_info: "usr/lib/python3/dist-packages/pip-23.0.1.dist-info".into(),
                    files: vec!["usr/lib/python3/dist-packages/pip/__init__.py".into()],
                },
            )]
            .into(),
        };
        let mut lock = Lock {
            lock_version: "1.0".into(),
            created_by: "dallinger-oci".into(),
            requires_python: "==3.11.2".into(),
            packages: vec![],
            tool: ToolSection {
                platforms: Vec::new(),
                ours: LockInputs {
                    base: "oci:base".into(),
                    base_digest: format!("sha256:{}", "cd".repeat(32)),
                    platform: "linux/amd64".into(),
                    requirements_sha256: "ef".repeat(32),
                    builder: None,
                    builder_digest: None,
                    debian: None,
                    target: Some(LockedTarget {
                        base_digest: format!("sha256:{}", "cd".repeat(32)),
                        overrides: String::new(),
                        python: target,
                    }),
                    layers: vec![LockedLayer {
                        kind: "python".into(),
                        created_by: "dallinger-oci: dallinger==12.3.0".into(),
                        key: format!("python-{}", "12".repeat(32)),
                        format: "dallinger-oci-layers/1".into(),
                        compressor: "gzip".into(),
                        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                        diff_id: format!("sha256:{}", "34".repeat(32)),
                        digest: format!("sha256:{}", "56".repeat(32)),
                        size: 1234,
                    }],
                },
            },
        };
        lock.write(dir.path()).unwrap();
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), lock);
        let python = &mut lock.tool.ours.target.as_mut().unwrap().python;
        python.purelib = "usr/../../etc".into();
        lock.write(dir.path()).unwrap();
        let err = Lock::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("the target's purelib \"usr/../../etc\""),
            "{err}"
        );
    }

    /// A small lock of `platform` whose one wheel is `wheel`.
    fn platform_lock(platform: &str, wheel: &str) -> Lock {
        Lock {
            lock_version: "1.0".into(),
            created_by: "dallinger-oci".into(),
            requires_python: "==3.11.2".into(),
            packages: vec![LockedPackage {
                name: "greenlet".into(),
                version: "3.5.5".into(),
                sdist: None,
                vcs: None,
                wheels: vec![LockedFile {
                    name: wheel.into(),
                    url: format!("https://example.test/{wheel}"),
                    hashes: Hashes {
                        sha256: "ab".repeat(32),
                    },
                }],
            }],
            tool: ToolSection {
                ours: LockInputs {
                    base: "oci:base:base".into(),
                    base_digest: format!("sha256:{}", "cd".repeat(32)),
                    platform: platform.into(),
                    requirements_sha256: "ef".repeat(32),
                    builder: None,
                    builder_digest: None,
                    debian: None,
                    target: None,
                    layers: Vec::new(),
                },
                platforms: Vec::new(),
            },
        }
    }

    #[test]
    fn each_platform_has_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let amd64 = platform_lock(
            "linux/amd64",
            "greenlet-3.5.5-cp311-cp311-manylinux_2_24_x86_64.whl",
        );
        let arm64 = platform_lock(
            "linux/arm64",
            "greenlet-3.5.5-cp311-cp311-manylinux_2_24_aarch64.whl",
        );
        amd64.write(dir.path()).unwrap();
        let one_platform = fs::read_to_string(Lock::path(dir.path())).unwrap();
        assert!(
            !one_platform.contains("dallinger-oci-platforms"),
            "{one_platform}"
        );
        arm64.write(dir.path()).unwrap();
        let text = fs::read_to_string(Lock::path(dir.path())).unwrap();
        assert!(text.contains("[[tool.dallinger-oci-platforms]]"), "{text}");
        assert_eq!(
            Lock::platforms(dir.path()).unwrap(),
            ["linux/amd64", "linux/arm64"]
        );
        // Without a platform, and for the file's own, the lock is as written.
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), amd64);
        {
            let _amd64 = for_platform("linux/amd64");
            assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), amd64);
        }
        {
            let _arm64 = for_platform("linux/arm64");
            assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), arm64);
            // A platform the file has no record of gets the file's own,
            // whose platform makes it stale.
            let _s390x = for_platform("linux/s390x");
            assert_eq!(
                Lock::read(dir.path()).unwrap().unwrap().tool.ours.platform,
                "linux/amd64"
            );
        }
        // Writing one platform's lock again keeps the other's record.
        let mut newer = arm64.clone();
        newer.requires_python = "==3.11.9".into();
        newer.write(dir.path()).unwrap();
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), amd64);
        let _arm64 = for_platform("linux/arm64");
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), newer);
        // `lock` for arm64 alone: its record becomes the file's own.
        Lock::retain_platforms(dir.path(), &["linux/arm64".into()]).unwrap();
        assert_eq!(Lock::platforms(dir.path()).unwrap(), ["linux/arm64"]);
        let text = fs::read_to_string(Lock::path(dir.path())).unwrap();
        assert!(!text.contains("dallinger-oci-platforms"), "{text}");
        drop(_arm64);
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), newer);
    }

    #[test]
    fn round_trips_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Lock {
            lock_version: "1.0".into(),
            created_by: "dallinger-oci".into(),
            requires_python: "==3.11.2".into(),
            packages: vec![
                LockedPackage {
                    name: "six".into(),
                    version: "1.16.0".into(),
                    sdist: None,
                    vcs: None,
                    wheels: vec![LockedFile {
                        name: "six-1.16.0-py2.py3-none-any.whl".into(),
                        url: "https://example.test/six.whl".into(),
                        hashes: Hashes {
                            sha256: "ab".repeat(32),
                        },
                    }],
                },
                LockedPackage {
                    name: "psycopg2".into(),
                    version: "2.9.12".into(),
                    sdist: Some(LockedFile {
                        name: "psycopg2-2.9.12.tar.gz".into(),
                        url: "https://example.test/psycopg2-2.9.12.tar.gz".into(),
                        hashes: Hashes {
                            sha256: "12".repeat(32),
                        },
                    }),
                    vcs: None,
                    wheels: vec![LockedFile {
                        name: "psycopg2-2.9.12-cp311-cp311-linux_x86_64.whl".into(),
                        url: "psycopg2-2.9.12-cp311-cp311-linux_x86_64.whl".into(),
                        hashes: Hashes {
                            sha256: "34".repeat(32),
                        },
                    }],
                },
                LockedPackage {
                    name: "flask".into(),
                    version: "3.0.3".into(),
                    sdist: None,
                    vcs: None,
                    wheels: vec![],
                },
                LockedPackage {
                    name: "tinygit".into(),
                    version: "0.1".into(),
                    sdist: None,
                    vcs: Some(LockedVcs {
                        kind: "git".into(),
                        url: "https://example.test/tinygit.git".into(),
                        requested_revision: Some("main".into()),
                        commit_id: "ab".repeat(20),
                        subdirectory: None,
                    }),
                    wheels: vec![],
                },
            ],
            tool: ToolSection {
                platforms: Vec::new(),
                ours: LockInputs {
                    base: "rootfs:base.tar".into(),
                    base_digest: format!("sha256:{}", "cd".repeat(32)),
                    platform: "linux/amd64".into(),
                    requirements_sha256: "ef".repeat(32),
                    builder: Some("oci:builder:base".into()),
                    builder_digest: Some(format!("sha256:{}", "56".repeat(32))),
                    debian: Some(DebianLock {
                        system_packages: "jq".into(),
                        release: "Debian GNU/Linux 12 (bookworm) bookworm (main)".into(),
                        base_layers: format!("sha256:{}", "78".repeat(32)),
                        packages: vec![LockedDeb {
                            name: "jq".into(),
                            version: "1.6-2.1".into(),
                            arch: "amd64".into(),
                            url: "http://deb.debian.org/debian/pool/main/j/jq/jq_1.6-2.1_amd64.deb"
                                .into(),
                            sha256: "9a".repeat(32),
                            size: 64920,
                        }],
                    }),
                    target: None,
                    layers: vec![],
                },
            },
        };
        let path = lock.write(dir.path()).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert!(text.contains("lock-version = \"1.0\""), "{text}");
        assert!(text.contains("[tool.dallinger-oci]"), "{text}");
        assert!(
            text.contains("[[tool.dallinger-oci.debian.packages]]"),
            "{text}"
        );
        let back = Lock::read(dir.path()).unwrap().unwrap();
        assert_eq!(back.packages[0].name, "flask");
        assert!(text.contains("[packages.sdist]"), "{text}");
        assert_eq!(back.packages[1], lock.packages[1]);
        assert_eq!(back.tool, lock.tool);
        assert!(
            text.contains(&format!(
                "[packages.vcs]\ntype = \"git\"\nurl = \"https://example.test/tinygit.git\"\n\
                 requested-revision = \"main\"\ncommit-id = \"{}\"\n",
                "ab".repeat(20)
            )),
            "{text}"
        );
        assert_eq!(back.packages[3], lock.packages[3]);
    }
}
