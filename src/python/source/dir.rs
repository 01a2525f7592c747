//! A local source tree (`--dallinger-src`) as a source tarball, so the sdist
//! builder can build it like any sdist, and its cache (keyed by the
//! tarball's sha256) rebuilds only when a file changed.
//!
//! The tarball is deterministic: sorted entries, owner 0, one mtime (the
//! build epoch), normalised modes. Inside a git work tree it holds what git
//! keeps (tracked files and untracked files that are not ignored), as the
//! experiment's file set does; elsewhere every file. `.git`,
//! `__pycache__` and `*.pyc` never go in.

use fs_err::{self as fs, File};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Codec, Content, LayerTree, WriteOptions};

use super::sdist::SdistBuilder;
use crate::experiment::git;
use crate::image::store::{sha256_file, BlobStore};
use crate::python::index::IndexConfig;
use crate::python::resolve::{source_built_wheel, ResolvedWheel};
use crate::python::target::Target;

/// A source tree `debug` bind-mounts over what the image installed from
/// it, so edits show without a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMount {
    /// Absolute, on this machine.
    pub host: PathBuf,
    /// Where the target's Python imports the package from.
    pub container: String,
}

/// `--dallinger-src DIR`: Dallinger's wheel built from the checkout, and
/// where `debug` mounts its package.
pub fn dallinger_from_source(
    dir: &Path,
    builder: &SdistBuilder,
    target: &Target,
    index: &IndexConfig,
    epoch: u64,
) -> Result<(ResolvedWheel, SourceMount)> {
    let wheel = wheel_from_source_dir(dir, "dallinger", builder, target, index, epoch)?;
    eprintln!(
        "Dallinger {} from {} (--dallinger-src, not locked)",
        wheel.version,
        dir.display()
    );
    let mount = SourceMount {
        host: fs::canonicalize(dir)?.join("dallinger"),
        container: format!("/{}/dallinger", target.purelib.trim_matches('/')),
    };
    Ok((wheel, mount))
}

/// The wheel of the source tree `dir` (`--dallinger-src`), built like an
/// sdist; its version is the built wheel's.
pub fn wheel_from_source_dir(
    dir: &Path,
    name: &str,
    builder: &SdistBuilder,
    target: &Target,
    index: &IndexConfig,
    epoch: u64,
) -> Result<ResolvedWheel> {
    let archive = source_archive(dir, name, &index.cache_dir.join("built"), epoch)?;
    let built = builder.build(
        &archive.path,
        &archive.sha256,
        name,
        &format!("(source tree {})", dir.display()),
        target,
        index,
    )?;
    source_built_wheel(name, built, None)
}

/// Asks this machine's `python3` (the user's environment, a virtualenv
/// included) where an editable Dallinger install points, from its PEP 610
/// `direct_url.json` (what current editable installs write; Dallinger's own
/// `dallinger.egg-link` check finds none of them).
const EDITABLE_DALLINGER: &str = "\
import json, importlib.metadata as m
from urllib.parse import unquote, urlparse
try:
    text = m.distribution('dallinger').read_text('direct_url.json')
except m.PackageNotFoundError:
    text = None
url = json.loads(text) if text else {}
if url.get('dir_info', {}).get('editable') and url.get('url', '').startswith('file:'):
    print(unquote(urlparse(url['url']).path))
";

/// Says so when this machine's `python3` has Dallinger installed in
/// editable mode: Dallinger would build its image from that checkout, we
/// build from the pin unless told (`--dallinger-src`), so that an image
/// never depends on the machine it is built on; but never silently.
///
/// Asking takes a Python start (0.05-0.3 s, more behind pyenv shims), so
/// the answer is remembered in `store` for a day, by everything that
/// chooses the `python3` and what it imports (see [`python_environment`]).
pub fn warn_about_editable_dallinger(store: &BlobStore) {
    let memo = store.memo_path("editable-dallinger", &python_environment());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let remembered = fs::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<EditableAnswer>(&b).ok())
        .filter(|a| a.asked <= now && now - a.asked < EDITABLE_ANSWER_AGE);
    let path = match remembered {
        Some(answer) => answer.path,
        None => {
            let Ok(out) = std::process::Command::new("python3")
                .args(["-c", EDITABLE_DALLINGER])
                .stdin(std::process::Stdio::null())
                .output()
            else {
                return;
            };
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let path = if out.status.success() {
                path
            } else {
                String::new()
            };
            let answer = EditableAnswer { asked: now, path };
            if let Ok(bytes) = serde_json::to_vec(&answer) {
                let _ = store.write_entry(&memo, &bytes);
            }
            answer.path
        }
    };
    if !path.is_empty() {
        eprintln!(
            "warning: this machine's python3 has Dallinger installed in editable mode from \
             {path}; the image gets the pinned Dallinger, not that checkout: pass \
             --dallinger-src {path} to build from it"
        );
    }
}

/// How long the host's answer is remembered: a day.
const EDITABLE_ANSWER_AGE: u64 = 24 * 60 * 60;

#[derive(serde::Serialize, serde::Deserialize)]
struct EditableAnswer {
    /// When python3 was asked (seconds since 1970).
    asked: u64,
    /// The editable checkout, empty for none.
    path: String,
}

/// What decides which `python3` runs and what it imports: the variables
/// of virtualenvs, conda, pyenv and Python itself, the working directory
/// (pyenv's `.python-version`), and every `PATH` directory's identity and
/// change time (installing Dallinger, editable or not, writes its
/// `dallinger` script next to the `python3` it is installed for, and
/// pyenv's shims are rewritten).
fn python_environment() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let mut key = String::from("editable-dallinger/1\n");
    for var in [
        "PATH",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "PYENV_VERSION",
        "PYENV_ROOT",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUSERBASE",
        "PYTHONNOUSERSITE",
        "HOME",
    ] {
        let value = std::env::var_os(var).unwrap_or_default();
        key.push_str(&format!("{var}={}\n", value.to_string_lossy()));
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    key.push_str(&format!("cwd={}\n", cwd.display()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if let Ok(m) = std::fs::metadata(&dir) {
            key.push_str(&format!(
                "{} {} {} {}.{} {}.{}\n",
                dir.display(),
                m.dev(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
        }
    }
    key
}

/// A source tarball written for one build.
pub struct SourceArchive {
    /// `NAME-src.tar.gz` in a temporary directory, removed on drop.
    pub path: PathBuf,
    /// Lowercase hex.
    pub sha256: String,
    _dir: tempfile::TempDir,
}

/// The tarball of the source tree `root`, its top directory `NAME-src/`,
/// written in a temporary directory under `work_parent`.
pub fn source_archive(
    root: &Path,
    name: &str,
    work_parent: &Path,
    epoch: u64,
) -> Result<SourceArchive> {
    let root = fs::canonicalize(root)
        .with_context(|| format!("cannot read the source tree {}", root.display()))?;
    if !root.join("pyproject.toml").is_file() && !root.join("setup.py").is_file() {
        bail!(
            "{} has neither pyproject.toml nor setup.py: name the root of the {name} checkout",
            root.display()
        );
    }
    let kept = match git::find_work_tree(&root) {
        Some(_) => Some(git::listed_files(&root, &[])?),
        None => None,
    };
    let top = format!("{name}-src");
    let mut tree = LayerTree::new();
    tree.add_dir(&top)?;
    let walker = walkdir::WalkDir::new(&root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !matches!(e.file_name().as_bytes(), b".git" | b"__pycache__"));
    for entry in walker {
        let entry = entry?;
        let rel = entry.path().strip_prefix(&root)?;
        let rel_text = rel
            .to_str()
            .with_context(|| format!("{} has a name that is not UTF-8", entry.path().display()))?;
        let kind = entry.file_type();
        if kind.is_dir() || rel_text.ends_with(".pyc") {
            continue;
        }
        if let Some(kept) = &kept {
            if !kept.contains(&git::path_key(rel.as_os_str().as_bytes())) {
                continue;
            }
        }
        let path = format!("{top}/{rel_text}");
        if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            tree.add_symlink(&path, &target.to_string_lossy())?;
        } else if kind.is_file() {
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            tree.add_file(&path, Content::File(entry.path().to_path_buf()), executable)?;
        }
    }
    fs::create_dir_all(work_parent)?;
    let dir = tempfile::Builder::new()
        .prefix(".source-")
        .tempdir_in(work_parent)
        .context("cannot make a directory for the source tarball")?;
    let path = dir.path().join(format!("{top}.tar.gz"));
    let file = File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    tree.write(
        &WriteOptions {
            mtime: epoch,
            workers: 0,
            codec: Codec::Gzip, // an sdist is a .tar.gz
        },
        file,
    )?;
    let sha256 = sha256_file(&path)?
        .trim_start_matches("sha256:")
        .to_string();
    Ok(SourceArchive {
        path,
        sha256,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarball_depends_on_contents_only() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().join("src");
        fs::create_dir_all(root.join("pkg/__pycache__")).unwrap();
        fs::write(
            root.join("setup.py"),
            "from setuptools import setup; setup()\n",
        )
        .unwrap();
        fs::write(root.join("pkg/__init__.py"), "X = 1\n").unwrap();
        fs::write(
            root.join("pkg/__pycache__/__init__.cpython-311.pyc"),
            "junk",
        )
        .unwrap();
        let work = tree.path().join("work");
        let first = source_archive(&root, "pkg", &work, 946_684_800).unwrap();
        // Another mtime, a compiled file beside: the same bytes.
        fs::write(root.join("pkg/__init__.py"), "X = 1\n").unwrap();
        fs::write(root.join("pkg/stale.pyc"), "junk").unwrap();
        let second = source_archive(&root, "pkg", &work, 946_684_800).unwrap();
        assert_eq!(first.sha256, second.sha256);
        fs::write(root.join("pkg/__init__.py"), "X = 2\n").unwrap();
        let third = source_archive(&root, "pkg", &work, 946_684_800).unwrap();
        assert_ne!(first.sha256, third.sha256);

        let err = source_archive(&root.join("pkg"), "pkg", &work, 946_684_800)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("has neither pyproject.toml nor setup.py"),
            "{err}"
        );
    }
}
