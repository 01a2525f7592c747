//! `.pyc` files for the installed `.py` files, as `pip install` writes them
//! by default (`--compile-bytecode`, opt-in as in uv): compiled by the
//! target's own interpreter, run from the base image's unpacked root in the
//! sandbox, so the magic number and code objects are the target's.
//!
//! Reproducible: `--invalidation-mode unchecked-hash` puts a hash of the
//! source in the header instead of its mtime, and `-d` records the file's
//! path in the image, never the staging path. `.pyc` files are not added to
//! RECORD (pip's uninstall removes them beside their `.py` anyway).
//!
//! Cached per wheel, in the store's bytecode bucket: a wheel's `.pyc` set is
//! kept under a key of everything its bytes depend on (the wheel's sha256
//! and the installed path of each of its sources, which the code objects
//! name; the base's layers, which hold the interpreter and the compileall
//! and marshal it runs; the base's environment, where `PYTHONOPTIMIZE` would
//! change the optimisation level; the invalidation mode and the rest of how
//! compileall is run, in [`CACHE_FORMAT`]). So another experiment with the
//! same pins compiles nothing, and one with other pins only the wheels not
//! seen before. An entry is a directory of the files and a manifest of their
//! paths, sizes and sha256, moved into place whole once the manifest is
//! synced; every file is checked against the manifest whenever the entry is
//! used, so a damaged entry (a crash, a disk error) is compiled again, never
//! trusted. (The files themselves are not synced one by one: that would cost
//! more than compiling them, and the check on every read catches a torn one.)
//!
//! What is not cached is compiled in one compileall run per site directory,
//! a worker process per core; each file's bytes depend only on its source,
//! its installed path and the interpreter, never on the number of workers
//! or on what is compiled beside it.
//!
//! The interpreter is the base's, so it is not trusted: it gets copies of
//! the sources in a staging directory of its own (nothing of the unpack
//! cache), and only the `.pyc` files it leaves there are taken, as regular
//! files beside their sources. What it writes is cached only under its own
//! base's layers, so it never reaches an image of another base.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Content, KeyHasher, LayerTree, Node};
use fs_err::{self as fs, File};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::image::store::{sha256_stream, BlobStore, Bucket};
use crate::image::{config_env, unpack, ImageLayer};
use crate::python::target::Target;
use crate::sandbox::{Bind, Exit, Sandbox};

/// Where the staged sources are inside the sandbox.
const STAGE: &str = "/tmp/dallinger-oci/bytecode";

/// Part of every cache key: bumped whenever the way the files are compiled
/// (the compileall options, the environment given to it) or the entries'
/// layout changes.
const CACHE_FORMAT: &str =
    "dallinger-oci-bytecode/1 compileall -f --invalidation-mode unchecked-hash PYTHONHASHSEED=0";

/// An entry's manifest, beside its files `0`, `1`, … (in its order).
const MANIFEST: &str = "manifest.json";

/// Compiles with the base image's interpreter; its root is unpacked on
/// first use (only when something is not in the cache) and kept there.
pub struct BytecodeCompiler<'a> {
    store: &'a BlobStore,
    base_layers: &'a [ImageLayer],
    base_config: &'a serde_json::Value,
    rootfs: OnceLock<unpack::Rootfs>,
}

/// The files one wheel installed (image paths, as the installer reports
/// them): the `.py` files among them are compiled and cached as one set.
pub struct WheelFiles<'w> {
    /// The wheel file's sha256, which fixes the sources' bytes.
    pub sha256: &'w str,
    pub files: &'w [String],
}

/// This build's staging directory, where `.pyc` files the cache could not
/// keep are read from: keep it until the layer is written.
pub struct Compiled {
    _stage: Option<tempfile::TempDir>,
}

/// A `.py` file of the tree: `rel` below site directory number `site`.
struct Source {
    site: usize,
    rel: String,
    content: Content,
}

/// The sources of one wheel, under its cache key; `key` is None for sources
/// no wheel claims (compiled, never cached).
struct Group {
    key: Option<String>,
    sources: Vec<Source>,
}

impl Group {
    /// The sources below site directory `site`.
    fn sources_in(&self, site: usize) -> BTreeSet<&str> {
        self.sources
            .iter()
            .filter(|s| s.site == site)
            .map(|s| s.rel.as_str())
            .collect()
    }
}

/// A compiled file: `rel` below site directory number `site`, read from `file`.
#[derive(Debug)]
struct Pyc {
    site: usize,
    rel: String,
    file: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    key: String,
    files: Vec<ManifestFile>,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    site: usize,
    path: String,
    size: u64,
    sha256: String,
}

impl<'a> BytecodeCompiler<'a> {
    pub fn new(
        store: &'a BlobStore,
        base_layers: &'a [ImageLayer],
        base_config: &'a serde_json::Value,
    ) -> BytecodeCompiler<'a> {
        BytecodeCompiler {
            store,
            base_layers,
            base_config,
            rootfs: OnceLock::new(),
        }
    }

    /// Adds `__pycache__/*.cpython-XY.pyc` beside every `.py` file of
    /// `tree` under the target's purelib and platlib, from the cache where
    /// the wheel in `wheels` that installed it was compiled before.
    pub fn compile(
        &self,
        tree: &mut LayerTree,
        target: &Target,
        wheels: &[WheelFiles],
    ) -> Result<Compiled> {
        let sites = site_dirs(target);
        let groups = self.groups(tree, target, &sites, wheels);
        let cache = self.store.bucket(Bucket::Bytecode)?;
        let cached = in_parallel(&groups, |group| {
            let key = group.key.as_deref()?;
            read_entry(&cache, key, group, sites.len())
        });
        let mut pycs = Vec::new();
        let mut missing = Vec::new();
        for (group, found) in groups.iter().zip(cached) {
            match found {
                Some(found) => pycs.extend(found),
                None => missing.push(group),
            }
        }
        let mut stage = None;
        if !missing.is_empty() {
            let (dir, compiled) = self.compile_missing(&missing, &sites, target, &cache)?;
            pycs.extend(compiled);
            stage = Some(dir);
        }
        for pyc in pycs {
            let path = format!("{}/{}", sites[pyc.site], pyc.rel);
            tree.add_file(&path, Content::File(pyc.file), false)?;
        }
        Ok(Compiled { _stage: stage })
    }

    /// The `.py` files of `tree` in the site directories, by the wheel that
    /// installed them, each wheel's with its cache key.
    fn groups(
        &self,
        tree: &LayerTree,
        target: &Target,
        sites: &[&str],
        wheels: &[WheelFiles],
    ) -> Vec<Group> {
        let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, wheel) in wheels.iter().enumerate() {
            for file in wheel.files {
                owner.insert(file, i);
            }
        }
        let unclaimed = wheels.len();
        let mut sources: Vec<Vec<Source>> = (0..=unclaimed).map(|_| Vec::new()).collect();
        for (site, dir) in sites.iter().enumerate() {
            let prefix = format!("{dir}/");
            for (path, node) in tree.iter() {
                let Some(rel) = path.strip_prefix(&prefix) else {
                    continue;
                };
                let Node::File { content, .. } = node else {
                    continue;
                };
                if !rel.ends_with(".py") {
                    continue;
                }
                let group = owner.get(path).copied().unwrap_or(unclaimed);
                sources[group].push(Source {
                    site,
                    rel: rel.to_string(),
                    content: content.clone(),
                });
            }
        }
        let env = config_env(self.base_config);
        sources
            .into_iter()
            .enumerate()
            .filter(|(_, sources)| !sources.is_empty())
            .map(|(i, sources)| Group {
                key: wheels
                    .get(i)
                    .map(|wheel| self.key(wheel.sha256, target, sites, &env, &sources)),
                sources,
            })
            .collect()
    }

    /// The cache key of a wheel's `.pyc` set (see the module's comment).
    fn key(
        &self,
        wheel_sha256: &str,
        target: &Target,
        sites: &[&str],
        env: &[(String, String)],
        sources: &[Source],
    ) -> String {
        let mut key = KeyHasher::new();
        key.str(CACHE_FORMAT)
            .list(self.base_layers.iter(), |key, layer| {
                key.str(&layer.blob.digest);
            })
            .list(env.iter(), |key, (name, value)| {
                key.str(name).str(value);
            })
            .str(&target.interpreter)
            .list(sites.iter(), |key, site| {
                key.str(site);
            })
            .str(wheel_sha256)
            .list(sources.iter(), |key, source| {
                key.u64(source.site as u64).str(&source.rel);
            });
        key.finish().hex().to_string()
    }

    fn rootfs(&self) -> Result<unpack::Rootfs> {
        if let Some(r) = self.rootfs.get() {
            return Ok(r.clone());
        }
        let r = unpack::cached_rootfs(self.store, self.base_layers)
            .context("unpacking the base image to compile bytecode")?;
        Ok(self.rootfs.get_or_init(|| r).clone())
    }

    /// Compiles the sources of `groups` together, and stores each wheel's
    /// set in the cache.
    fn compile_missing(
        &self,
        groups: &[&Group],
        sites: &[&str],
        target: &Target,
        cache: &Path,
    ) -> Result<(tempfile::TempDir, Vec<Pyc>)> {
        let rootfs = self.rootfs()?;
        let stage = self.store.scratch_dir("bytecode-")?;
        let mut owner: BTreeMap<(usize, &str), usize> = BTreeMap::new();
        for (g, group) in groups.iter().enumerate() {
            for source in &group.sources {
                let dest = stage.path().join(source.site.to_string()).join(&source.rel);
                fs::create_dir_all(dest.parent().unwrap())?;
                // Copies, never links: the interpreter is the base's and may
                // write to whatever it is given; the layer keeps reading the
                // sources from where the tree has them, which it never sees.
                let mut reader = source.content.open()?;
                io::copy(&mut reader, &mut File::create(&dest)?)
                    .with_context(|| format!("cannot stage {} for compiling", dest.display()))?;
                owner.insert((source.site, source.rel.as_str()), g);
            }
        }
        let mut compiled: Vec<Vec<Pyc>> = groups.iter().map(|_| Vec::new()).collect();
        let mut complete = true;
        for (site, dir) in sites.iter().enumerate() {
            if !owner.keys().any(|(s, _)| *s == site) {
                continue;
            }
            let staged = stage.path().join(site.to_string());
            complete &= self.run_compileall(&rootfs, &staged, dir, target)?;
            for entry in walkdir::WalkDir::new(&staged).sort_by_file_name() {
                let entry = entry?;
                let p = entry.path();
                if !entry.file_type().is_file() || p.extension().is_none_or(|e| e != "pyc") {
                    continue;
                }
                let rel = p.strip_prefix(&staged)?.to_string_lossy().into_owned();
                let Some(source) = source_of(&rel) else {
                    continue;
                };
                if let Some(&g) = owner.get(&(site, source.as_str())) {
                    compiled[g].push(Pyc {
                        site,
                        rel,
                        file: p.to_path_buf(),
                    });
                }
            }
        }
        let mut pycs = Vec::new();
        for (g, set) in compiled.into_iter().enumerate() {
            match &groups[g].key {
                Some(key) if complete => {
                    let entry = stage.path().join(format!("entry-{g}"));
                    pycs.extend(store_entry(&entry, cache, key, set)?);
                }
                _ => pycs.extend(set),
            }
        }
        Ok((stage, pycs))
    }

    /// Runs compileall on `staged` for `site`; true when the run ended as
    /// compileall ends (every file compiled, or some refused as it reports
    /// them), false when it crashed, so its output is used but not cached.
    fn run_compileall(
        &self,
        rootfs: &Path,
        staged: &Path,
        site: &str,
        target: &Target,
    ) -> Result<bool> {
        let mut sandbox = Sandbox::new(rootfs)
            .bind(Bind {
                host: staged.to_path_buf(),
                inside: STAGE.into(),
                writable: true,
            })
            .workdir("/tmp");
        for (k, v) in config_env(self.base_config) {
            sandbox = sandbox.env(&k, &v);
        }
        sandbox = sandbox.env("HOME", "/root").env("PYTHONHASHSEED", "0");
        let log_path = staged.with_extension("log");
        let log = File::create(&log_path)?;
        let ddir = format!("/{site}");
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string();
        let exit = sandbox.run(
            &[
                &target.interpreter,
                "-m",
                "compileall",
                "-q",
                "-f",
                "-j",
                &workers,
                "--invalidation-mode",
                "unchecked-hash",
                "-d",
                &ddir,
                STAGE,
            ],
            log.file(),
        )?;
        let text = || fs::read_to_string(&log_path).unwrap_or_default();
        match exit {
            Exit::Code(0) => Ok(true),
            // 1: some file did not compile (a Python 2 leftover in a
            // package): pip skips those too; the rest are compiled. Unless
            // compileall itself died (a worker killed), which exits 1 too.
            Exit::Code(1) => Ok(!text().contains("Traceback (most recent call last)")),
            _ => bail!(
                "compiling bytecode with {} in the base failed ({exit}): {}",
                target.interpreter,
                text().lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ),
        }
    }
}

/// The target's site directories, each once.
fn site_dirs(target: &Target) -> Vec<&str> {
    let sites: BTreeSet<&str> = [target.purelib.as_str(), target.platlib.as_str()]
        .into_iter()
        .collect();
    sites.into_iter().collect()
}

/// `f` of each item, the items shared among a thread per core.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|chunk| scope.spawn(|| chunk.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a bytecode cache reader panicked"))
            .collect()
    })
}

/// The `.pyc` set cached for `group` under `key`, checked file by file
/// against its manifest; None when there is none, or it is damaged (then
/// it is removed, to be compiled and stored again).
fn read_entry(cache: &Path, key: &str, group: &Group, sites: usize) -> Option<Vec<Pyc>> {
    let dir = cache.join(key);
    let manifest = match std::fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return None,
        Err(e) => {
            discard(&dir, &format!("its manifest cannot be read: {e}"));
            return None;
        }
    };
    match check_entry(&dir, key, &manifest, group, sites) {
        Ok(pycs) => Some(pycs),
        Err(reason) => {
            discard(&dir, &reason);
            None
        }
    }
}

fn check_entry(
    dir: &Path,
    key: &str,
    manifest: &[u8],
    group: &Group,
    sites: usize,
) -> Result<Vec<Pyc>, String> {
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("its manifest is unreadable: {e}"))?;
    if manifest.format != CACHE_FORMAT || manifest.key != key {
        return Err("its manifest is for other inputs".into());
    }
    let sources: Vec<BTreeSet<&str>> = (0..sites).map(|site| group.sources_in(site)).collect();
    let mut pycs = Vec::with_capacity(manifest.files.len());
    for (i, entry) in manifest.files.into_iter().enumerate() {
        let beside_a_source = sources.get(entry.site).is_some_and(|sources| {
            source_of(&entry.path).is_some_and(|s| sources.contains(s.as_str()))
        });
        if !beside_a_source {
            return Err(format!("{} is no cache of a source", entry.path));
        }
        let file = dir.join(i.to_string());
        let regular = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
        let sum = regular
            .then(|| std::fs::File::open(&file).and_then(sha256_stream).ok())
            .flatten();
        if sum != Some((hex_array(&entry.sha256), entry.size)) {
            return Err(format!("{} does not match its manifest", entry.path));
        }
        pycs.push(Pyc {
            site: entry.site,
            rel: entry.path,
            file,
        });
    }
    Ok(pycs)
}

/// The 32 bytes `hex` spells, or zeros (which no file hashes to).
fn hex_array(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(hex, &mut out).is_err() {
        out = [0u8; 32];
    }
    out
}

/// Removes a damaged entry (best effort: at worst it is found damaged again).
fn discard(dir: &Path, reason: &str) {
    eprintln!(
        "warning: the cached bytecode {} is damaged ({reason}); compiling it again",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Moves `pycs` into a new entry `dir` (in the store's scratch space), with
/// its manifest, and the entry into `cache` under `key`. Returns where the
/// files are now: in the cache, or still in `dir` when another build stored
/// the same entry first.
fn store_entry(dir: &Path, cache: &Path, key: &str, pycs: Vec<Pyc>) -> Result<Vec<Pyc>> {
    let err = || {
        format!(
            "cannot store compiled bytecode in the cache ({})",
            dir.display()
        )
    };
    fs::create_dir(dir).with_context(err)?;
    let mut files = Vec::with_capacity(pycs.len());
    for (i, pyc) in pycs.iter().enumerate() {
        let dest = dir.join(i.to_string());
        fs::rename(&pyc.file, &dest).with_context(err)?;
        // Whatever mode the interpreter gave it: the layer's is 0644 anyway.
        fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).with_context(err)?;
        let (sum, size) = sha256_stream(File::open(&dest)?).with_context(err)?;
        files.push(ManifestFile {
            site: pyc.site,
            path: pyc.rel.clone(),
            size,
            sha256: hex::encode(sum),
        });
    }
    let manifest = serde_json::to_vec(&Manifest {
        format: CACHE_FORMAT.into(),
        key: key.into(),
        files,
    })?;
    let mut file = File::create_new(dir.join(MANIFEST)).with_context(err)?;
    file.write_all(&manifest)
        .and_then(|_| file.sync_all())
        .with_context(err)?;
    let home = cache.join(key);
    let home = match std::fs::rename(dir, &home) {
        Ok(()) => {
            fsutil::sync_dir(cache).with_context(err)?;
            home
        }
        // Another build stored it meanwhile: this one reads its own copy.
        Err(_) => dir.to_path_buf(),
    };
    Ok(pycs
        .into_iter()
        .enumerate()
        .map(|(i, pyc)| Pyc {
            file: home.join(i.to_string()),
            ..pyc
        })
        .collect())
}

/// The source `DIR/NAME.py` of `rel` when it is `DIR/__pycache__/NAME.TAG.pyc`
/// (what compileall writes); anything else the interpreter left is dropped.
fn source_of(rel: &str) -> Option<String> {
    let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = dir.strip_suffix("__pycache__")?;
    if !(parent.is_empty() || parent.ends_with('/')) {
        return None;
    }
    let module = file.split('.').next().unwrap_or_default();
    (!module.is_empty()).then(|| format!("{parent}{module}.py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_caches_beside_staged_sources_are_taken() {
        let sources: BTreeSet<&str> = ["a.py", "pkg/mod.py"].into_iter().collect();
        for (rel, taken) in [
            ("__pycache__/a.cpython-311.pyc", true),
            ("pkg/__pycache__/mod.cpython-311.pyc", true),
            ("pkg/__pycache__/mod.cpython-311.opt-1.pyc", true),
            ("pkg/__pycache__/other.cpython-311.pyc", false),
            ("pkg/mod.pyc", false),
            ("evil.pyc", false),
            ("x__pycache__/a.cpython-311.pyc", false),
            ("pkg/sub/__pycache__/mod.cpython-311.pyc", false),
        ] {
            let found = source_of(rel).is_some_and(|s| sources.contains(s.as_str()));
            assert_eq!(found, taken, "{rel}");
        }
    }

    fn source(rel: &str) -> Source {
        Source {
            site: 0,
            rel: rel.into(),
            content: Content::Bytes(Vec::new()),
        }
    }

    #[test]
    fn a_stored_set_is_read_back_checked_and_a_damaged_one_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("bytecode");
        let stage = tmp.path().join("stage");
        fs::create_dir(&cache).unwrap();
        fs::create_dir(&stage).unwrap();
        let group = Group {
            key: Some("k".into()),
            sources: vec![source("a.py"), source("pkg/mod.py")],
        };
        let mut pycs = Vec::new();
        for (rel, bytes) in [
            ("__pycache__/a.cpython-311.pyc", &b"A"[..]),
            ("pkg/__pycache__/mod.cpython-311.pyc", b"MOD"),
        ] {
            let file = stage.join(rel.replace('/', "_"));
            fs::write(&file, bytes).unwrap();
            pycs.push(Pyc {
                site: 0,
                rel: rel.into(),
                file,
            });
        }
        let stored = store_entry(&stage.join("entry"), &cache, "k", pycs).unwrap();
        assert!(stored.iter().all(|p| p.file.starts_with(cache.join("k"))));
        assert!(!stage.join("entry").exists());
        let read = |group: &Group| {
            read_entry(&cache, "k", group, 1).map(|pycs| {
                pycs.iter()
                    .map(|p| (p.rel.clone(), fs::read(&p.file).unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            read(&group).unwrap(),
            [
                ("__pycache__/a.cpython-311.pyc".to_string(), b"A".to_vec()),
                (
                    "pkg/__pycache__/mod.cpython-311.pyc".into(),
                    b"MOD".to_vec()
                ),
            ]
        );
        // Not under another key, and not kept when the wheel has lost a
        // source (then the manifest names a file beside none).
        assert!(read_entry(&cache, "other", &group, 1).is_none());
        let smaller = Group {
            key: Some("k".into()),
            sources: vec![source("a.py")],
        };
        assert!(read(&smaller).is_none());
        assert!(!cache.join("k").exists(), "the entry was not removed");

        // A changed byte (same size) is noticed, and the entry removed.
        let pycs = vec![Pyc {
            site: 0,
            rel: "__pycache__/a.cpython-311.pyc".into(),
            file: stage.join("a2"),
        }];
        fs::write(&pycs[0].file, b"A").unwrap();
        store_entry(&stage.join("entry"), &cache, "k", pycs).unwrap();
        assert!(read(&smaller).is_some());
        fs::write(cache.join("k/0"), b"B").unwrap();
        assert!(read(&smaller).is_none());
        assert!(!cache.join("k").exists());
    }
}
