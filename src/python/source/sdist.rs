//! Wheels for packages published only as sdists (Dallinger's `psycopg2`),
//! built with the target's own Python, compiler and headers: `pip wheel`
//! runs inside the builder image's unpacked root in the sandbox
//! ([`crate::sandbox`]), with no network and no daemon.
//!
//! Reproducible settings as rules_python's: `SOURCE_DATE_EPOCH` (wheel zip
//! times), `CFLAGS=-g0` (no build paths in debug info), `PYTHONHASHSEED=0`.
//! A built wheel is kept by (sdist sha256, builder digest) and then used
//! like a downloaded one: verified by its own sha256, which the lock records.
//! The builder's digest is its manifest's for the build's platform, so a
//! foreign platform's wheel (built under qemu-user) is kept apart.

use fs_err::{self as fs, File};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use crate::image::store::{sha256_digest, sha256_file, BlobStore};
use crate::image::{unpack, ImageLayer};
use crate::python::index::IndexConfig;
use crate::python::install::{WheelArchive, WheelFilename};
use crate::python::spec::{normalise_name, PackageName};
use crate::python::target::{self, file_priority, TagIndex, Target, TargetOverrides};
use crate::sandbox::{Bind, Sandbox};

/// Where the sdist and the wheel are inside the sandbox.
const IN_DIR: &str = "/tmp/dallinger-oci/sdist";
const OUT_DIR: &str = "/tmp/dallinger-oci/wheel";
/// Lines of a failed build's log shown with the error.
const LOG_TAIL: usize = 25;

/// The image sdists are built in, resolved, pulled and unpacked only when
/// a build needs it.
pub struct SdistBuilder<'a> {
    /// As the user named it (the base, or `--builder-base`), for messages.
    pub description: String,
    store: BlobStore,
    /// Resolves the image (a registry, layout or rootfs base) and fetches
    /// the layer blobs the store lacks; called once.
    resolve: ResolveBuilder<'a>,
    epoch: u64,
    image: OnceLock<BuilderImage>,
    prepared: OnceLock<Prepared>,
    /// One build at a time: each may use every core.
    running: Mutex<()>,
    /// The platform the wheels are for, when known: a foreign one is
    /// built only where this machine runs its programs (qemu-user).
    platform: Option<crate::image::platform::Platform>,
}

/// Resolves the builder image and fetches its missing layer blobs.
pub type ResolveBuilder<'a> = Box<dyn Fn(&BlobStore) -> Result<BuilderImage> + Send + Sync + 'a>;

/// A resolved builder image, its layers in the store.
pub struct BuilderImage {
    /// Its manifest digest (or a digest of its layers), for the cache key.
    pub digest: String,
    pub layers: Vec<ImageLayer>,
    pub config: serde_json::Value,
}

struct Prepared {
    rootfs: unpack::Rootfs,
    python: String,
    env: Vec<(String, String)>,
    target: Target,
}

/// A wheel built from an sdist, in the wheel cache.
#[derive(Debug, Clone)]
pub struct BuiltWheel {
    pub path: PathBuf,
    pub filename: String,
    /// Lowercase hex.
    pub sha256: String,
}

impl<'a> SdistBuilder<'a> {
    pub fn new(
        description: String,
        store: BlobStore,
        epoch: u64,
        resolve: ResolveBuilder<'a>,
    ) -> SdistBuilder<'a> {
        SdistBuilder {
            description,
            store,
            resolve,
            epoch,
            image: OnceLock::new(),
            prepared: OnceLock::new(),
            running: Mutex::new(()),
            platform: None,
        }
    }

    /// Builds for `platform` (the build's): a foreign platform's sdist is
    /// built under emulation, or refused naming the ways out.
    pub fn for_platform(
        mut self,
        platform: Option<crate::image::platform::Platform>,
    ) -> SdistBuilder<'a> {
        self.platform = platform;
        self
    }

    /// The builder's digest, once a build has resolved it.
    pub fn resolved_digest(&self) -> Option<&str> {
        self.image.get().map(|i| i.digest.as_str())
    }

    fn image(&self) -> Result<&BuilderImage> {
        if let Some(image) = self.image.get() {
            return Ok(image);
        }
        let image = (self.resolve)(&self.store)
            .with_context(|| format!("preparing the builder image {}", self.description))?;
        let _ = self.image.set(image);
        Ok(self.image.get().unwrap())
    }

    /// The wheel of `name` built from `sdist` (already verified to hash to
    /// `sdist_sha256`; an sdist, or a source tarball of a git commit or a
    /// directory) for `target`, from the cache when it was built before
    /// with this builder. `version` says which source in messages: the
    /// sdist's version, or e.g. "at 0123abcd4567".
    pub fn build(
        &self,
        sdist: &Path,
        sdist_sha256: &str,
        name: &str,
        version: &str,
        target: &Target,
        index: &IndexConfig,
    ) -> Result<BuiltWheel> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let key = sha256_digest(
            format!(
                "sdist-build/1\n{sdist_sha256}\n{}\n{}\n",
                self.image()?.digest,
                self.epoch
            )
            .as_bytes(),
        );
        let memo = index.cache_dir.join("built").join(&key[7..]);
        if let Some(built) = remembered(&memo, index) {
            return Ok(built);
        }
        if let Some(platform) = &self.platform {
            crate::image::platform::can_run(platform).map_err(|why| {
                anyhow::anyhow!(
                    "{name} {version} has no wheel for {platform}, and building its sdist runs \
                     the {platform} builder's compiler, which this machine cannot run ({why}): \
                     put a {platform} wheel of it in a --find-links directory, or register \
                     qemu-user-static's interpreters with binfmt_misc (Debian: apt install \
                     qemu-user-static) to build it under emulation"
                )
            })?;
        }
        let prepared = self.prepare()?;
        check_fits(prepared, target, &self.description)?;
        let sdist_name = sdist
            .file_name()
            .and_then(|n| n.to_str())
            .context("the sdist has no file name")?
            .to_string();
        eprintln!(
            "Building {name} {version} from {sdist_name} in {} (sandbox, no network)",
            self.description
        );
        let started = std::time::Instant::now();
        let work_parent = index.cache_dir.join("built");
        fs::create_dir_all(&work_parent)?;
        let work = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&work_parent)
            .context("cannot make a build directory")?;
        let in_dir = work.path().join("in");
        let out_dir = work.path().join("out");
        fs::create_dir_all(&in_dir)?;
        fs::create_dir_all(&out_dir)?;
        fs::copy(sdist, in_dir.join(&sdist_name))
            .with_context(|| format!("cannot copy {}", sdist.display()))?;
        let log_path = work.path().join("build.log");
        let log = File::create(&log_path)?;
        let sdist_inside = format!("{IN_DIR}/{sdist_name}");
        let argv = [
            prepared.python.as_str(),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--wheel-dir",
            OUT_DIR,
            sdist_inside.as_str(),
        ];
        let mut sandbox = Sandbox::new(&prepared.rootfs)
            .bind(Bind {
                host: in_dir.clone(),
                inside: IN_DIR.into(),
                writable: false,
            })
            .bind(Bind {
                host: out_dir.clone(),
                inside: OUT_DIR.into(),
                writable: true,
            })
            .workdir("/tmp");
        for (k, v) in &prepared.env {
            sandbox = sandbox.env(k, v);
        }
        let cflags = prepared
            .env
            .iter()
            .find(|(k, _)| k == "CFLAGS")
            .map(|(_, v)| format!("{v} -g0"))
            .unwrap_or_else(|| "-g0".into());
        sandbox = sandbox
            .env("HOME", "/root")
            .env("TMPDIR", "/tmp")
            .env("SOURCE_DATE_EPOCH", &self.epoch.to_string())
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("CFLAGS", &cflags)
            .env("PIP_NO_INPUT", "1");
        if !prepared.env.iter().any(|(k, _)| k == "PATH") {
            sandbox = sandbox.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        let exit = sandbox.run(&argv, log.file())?;
        drop(log);
        if !exit.success() {
            let kept = keep_log(&log_path, index, name, version)?;
            let text = fs::read_to_string(&kept).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL).collect();
            eprintln!("--- last lines of the build log of {name} {version} ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("---");
            bail!(
                "building {name} {version} from {sdist_name} in {} failed ({exit}){}; full log: {}",
                self.description,
                hint(&text),
                kept.display()
            );
        }
        let wheels: Vec<PathBuf> = fs::read_dir(&out_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "whl"))
            .collect();
        let [wheel] = wheels.as_slice() else {
            bail!(
                "building {name} {version} from {sdist_name} gave {} wheels, not one",
                wheels.len()
            );
        };
        let filename = wheel.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = WheelFilename::parse(&filename)
            .with_context(|| format!("pip built a wheel with a bad name: {filename}"))?;
        if PackageName::new(&parsed.name) != PackageName::new(name) {
            bail!("building {name} {version} from {sdist_name} gave a wheel of another package: {filename}");
        }
        if file_priority(&filename, &TagIndex::for_target(target)).is_none() {
            bail!(
                "the wheel built for {name} {version} ({filename}) does not fit the target: the builder {} has another Python or architecture",
                self.description
            );
        }
        WheelArchive::open(wheel)
            .and_then(|mut w| w.dist_info())
            .with_context(|| format!("the wheel built from {sdist_name} is not valid"))?;
        let sha256 = sha256_file(wheel)?
            .trim_start_matches("sha256:")
            .to_string();
        let path = index.cache_path(&sha256, &filename);
        fs::create_dir_all(path.parent().unwrap())?;
        fs::rename(wheel, &path)
            .map_err(anyhow::Error::from)
            .or_else(|_| crate::fsutil::copy(wheel, &path, 0o644))
            .with_context(|| format!("cannot store the built wheel at {}", path.display()))?;
        crate::fsutil::write(&memo, format!("{sha256} {filename}\n").as_bytes(), 0o644)?;
        eprintln!(
            "Built {filename} in {:.1} s (sha256:{sha256})",
            started.elapsed().as_secs_f64()
        );
        Ok(BuiltWheel {
            path,
            filename,
            sha256,
        })
    }

    fn prepare(&self) -> Result<&Prepared> {
        if let Some(p) = self.prepared.get() {
            return Ok(p);
        }
        let image = self.image()?;
        let target = target::detect(
            &self.store,
            &image.layers,
            &image.config,
            &TargetOverrides::default(),
        )
        .with_context(|| format!("reading the Python of the builder {}", self.description))?;
        let started = std::time::Instant::now();
        let rootfs = unpack::cached_rootfs(&self.store, &image.layers)
            .with_context(|| format!("unpacking the builder {}", self.description))?;
        if started.elapsed().as_secs() >= 1 {
            eprintln!(
                "Unpacked the builder {} in {:.1} s",
                self.description,
                started.elapsed().as_secs_f64()
            );
        }
        let env = crate::image::config_env(&image.config);
        let _ = self.prepared.set(Prepared {
            rootfs,
            python: target.interpreter.clone(),
            env,
            target,
        });
        Ok(self.prepared.get().unwrap())
    }
}

/// A wheel built before with the same sdist and builder, if still cached
/// and intact.
fn remembered(memo: &Path, index: &IndexConfig) -> Option<BuiltWheel> {
    let text = fs::read_to_string(memo).ok()?;
    let (sha256, filename) = text.trim().split_once(' ')?;
    let path = index.cache_path(sha256, filename);
    let actual = sha256_file(&path).ok()?;
    (actual.trim_start_matches("sha256:") == sha256).then(|| BuiltWheel {
        path,
        filename: filename.to_string(),
        sha256: sha256.to_string(),
    })
}

/// The builder's Python must be the target's minor version, and its glibc
/// no newer than the target's, or the wheel would not load there.
fn check_fits(prepared: &Prepared, target: &Target, builder: &str) -> Result<()> {
    let b = &prepared.target;
    let (bv, tv) = (b.python_version, target.python_version);
    if (bv.0, bv.1) != (tv.0, tv.1) || b.arch != target.arch {
        bail!(
            "the builder {builder} has Python {}.{}.{} on {}, the target has {}.{}.{} on {}: \
             choose a builder with the target's Python (--builder-base)",
            bv.0,
            bv.1,
            bv.2,
            b.arch,
            tv.0,
            tv.1,
            tv.2,
            target.arch
        );
    }
    if let (Some(bg), Some(tg)) = (b.glibc, target.glibc) {
        if bg > tg {
            bail!(
                "the builder {builder} has glibc {}.{}, newer than the target's {}.{}: a wheel \
                 built there may not load in the image; choose an older builder (--builder-base)",
                bg.0,
                bg.1,
                tg.0,
                tg.1
            );
        }
    }
    Ok(())
}

/// A failed build's log, kept under the cache for the user to read.
fn keep_log(log: &Path, index: &IndexConfig, name: &str, version: &str) -> Result<PathBuf> {
    let dir = index.cache_dir.join("built").join("logs");
    fs::create_dir_all(&dir)?;
    let label: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let kept = dir.join(format!("{}-{label}.log", normalise_name(name)));
    fs::copy(log, &kept)?;
    Ok(kept)
}

/// What a failed build's log says is missing, in the user's terms.
fn hint(log: &str) -> &'static str {
    if log.contains("No module named pip") {
        ": the builder has no pip; choose one with pip, setuptools and a C compiler \
         (--builder-base)"
    } else if log.contains("No module named 'setuptools'")
        || log.contains("Cannot import 'setuptools")
        || log.contains("No module named 'wheel'")
    {
        ": the builder lacks the package's build backend (setuptools, wheel); sdists are \
         built without network, so choose a builder that has it (--builder-base)"
    } else if log.contains("No module named 'hatchling'")
        || log.contains("Cannot import 'hatchling")
    {
        ": the builder lacks the package's build backend, hatchling (Dallinger's); sources \
         are built without network, so choose a builder that has it (--builder-base), e.g. \
         with Debian's python3-hatchling"
    } else if log.contains("pg_config executable not found") {
        ": the builder has no libpq headers (pg_config); choose a builder with libpq-dev \
         (--builder-base)"
    } else if log.contains("command 'gcc' failed")
        || log.contains("gcc: not found")
        || log.contains("x86_64-linux-gnu-gcc' failed")
        || log.contains("No such file or directory: 'gcc'")
    {
        ": the builder has no C compiler; choose one with build-essential (--builder-base)"
    } else if log.contains("Python.h: No such file") {
        ": the builder has no Python headers; choose one with python3-dev (--builder-base)"
    } else {
        ""
    }
}
