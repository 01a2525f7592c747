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
//! The interpreter is the base's, so it is not trusted: it gets copies of
//! the sources in a staging directory of its own (nothing of the unpack
//! cache), and only the `.pyc` files it leaves there are taken, as regular
//! files beside their sources.

use fs_err::{self as fs, File};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Content, LayerTree, Node};

use crate::image::store::BlobStore;
use crate::image::{config_env, unpack, ImageLayer};
use crate::python::target::Target;
use crate::sandbox::{Bind, Exit, Sandbox};

/// Where the staged sources are inside the sandbox.
const STAGE: &str = "/tmp/dallinger-oci/bytecode";

/// Compiles with the base image's interpreter; its root is unpacked on
/// first use and kept in the cache.
pub struct BytecodeCompiler<'a> {
    store: &'a BlobStore,
    base_layers: &'a [ImageLayer],
    base_config: &'a serde_json::Value,
    rootfs: OnceLock<unpack::Rootfs>,
}

/// Staged sources and their `.pyc` files: keep it until the layer is written.
pub struct Compiled {
    _stage: tempfile::TempDir,
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
    /// `tree` under the target's purelib and platlib.
    pub fn compile(&self, tree: &mut LayerTree, target: &Target) -> Result<Compiled> {
        let rootfs = match self.rootfs.get() {
            Some(r) => r.clone(),
            None => {
                let r = unpack::cached_rootfs(self.store, self.base_layers)
                    .context("unpacking the base image to compile bytecode")?;
                self.rootfs.get_or_init(|| r).clone()
            }
        };
        let stage = self.store.scratch_dir("bytecode-")?;
        let site_dirs: BTreeSet<&str> = [target.purelib.as_str(), target.platlib.as_str()]
            .into_iter()
            .collect();
        let mut additions = Vec::new();
        for (i, site) in site_dirs.iter().enumerate() {
            let staged = stage.path().join(i.to_string());
            fs::create_dir_all(&staged)?;
            let prefix = format!("{site}/");
            let mut sources: BTreeSet<&str> = BTreeSet::new();
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
                let dest = staged.join(rel);
                fs::create_dir_all(dest.parent().unwrap())?;
                // Copies, never links: the interpreter is the base's and may
                // write to whatever it is given; the layer keeps reading the
                // sources from the unpack cache, which it never sees.
                content.copy_to(&mut fs::File::create(&dest)?)?;
                sources.insert(rel);
            }
            if sources.is_empty() {
                continue;
            }
            self.run_compileall(&rootfs, &staged, site, target)?;
            for entry in walkdir::WalkDir::new(&staged).sort_by_file_name() {
                let entry = entry?;
                let p = entry.path();
                if !entry.file_type().is_file() || p.extension().is_none_or(|e| e != "pyc") {
                    continue;
                }
                let rel = p.strip_prefix(&staged)?.to_string_lossy().into_owned();
                if is_cache_of_a_source(&rel, &sources) {
                    additions.push((format!("{site}/{rel}"), p.to_path_buf()));
                }
            }
        }
        for (path, source) in additions {
            tree.add_file(&path, Content::File(source), false)?;
        }
        Ok(Compiled { _stage: stage })
    }

    fn run_compileall(
        &self,
        rootfs: &Path,
        staged: &Path,
        site: &str,
        target: &Target,
    ) -> Result<()> {
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
        let exit = sandbox.run(
            &[
                &target.interpreter,
                "-m",
                "compileall",
                "-q",
                "-f",
                "-j",
                "0",
                "--invalidation-mode",
                "unchecked-hash",
                "-d",
                &ddir,
                STAGE,
            ],
            log.file(),
        )?;
        // 1: some file did not compile (a Python 2 leftover in a package):
        // pip skips those too; the rest are compiled.
        if !matches!(exit, Exit::Code(0) | Exit::Code(1)) {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "compiling bytecode with {} in the base failed ({exit}): {}",
                target.interpreter,
                text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(())
    }
}

/// Whether `rel` is `DIR/__pycache__/NAME.TAG.pyc` for a staged `DIR/NAME.py`
/// (what compileall writes); anything else the interpreter left is dropped.
fn is_cache_of_a_source(rel: &str, sources: &BTreeSet<&str>) -> bool {
    let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
    let Some(parent) = dir.strip_suffix("__pycache__") else {
        return false;
    };
    if !(parent.is_empty() || parent.ends_with('/')) {
        return false;
    }
    let module = file.split('.').next().unwrap_or_default();
    !module.is_empty() && sources.contains(format!("{parent}{module}.py").as_str())
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
            assert_eq!(is_cache_of_a_source(rel, &sources), taken, "{rel}");
        }
    }
}
