//! The experiment's own files, following Dallinger's `ExperimentFileSource`:
//! a walk of the directory that prunes Dallinger's exclusion list at any
//! depth, intersected with what git keeps (`git ls-files --cached --others
//! --exclude-standard`) when the directory is in a git work tree. Then our
//! `.dallingerignore` (gitignore syntax) at the experiment root, which
//! Dallinger does not have: it can only remove files, never add back what
//! git or the exclusion list left out.
//!
//! Stricter than Dallinger, so that an image never silently differs from
//! what the user expects: a failing git is an error (Dallinger falls back to
//! every file), symlinks must stay inside the experiment, and other special
//! files, unreadable files and non-UTF-8 names are errors.

use fs_err::File;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use walkdir::WalkDir;

use super::git::{self, GitEnv};
use super::{ExperimentError, ExperimentFile, FileKind};

/// Dallinger's `EXP_MAX_SIZE_MB`.
pub(crate) const MAX_SIZE_BYTES: u64 = 256 * 1024 * 1024;

pub(crate) const IGNORE_FILE: &str = ".dallingerignore";

/// `shutil.ignore_patterns(...)` in Dallinger's `exclusion_policy()`.
const EXCLUDED_NAMES: &[&str] = &[
    ".git",
    "config.txt",
    "local_only",
    "node_modules",
    "snapshots",
    "data",
    "develop",
    "server.log",
    "__pycache__",
];
/// The `*.db` and `*.dmg` patterns (fnmatch `*` also matches a leading dot).
const EXCLUDED_SUFFIXES: &[&str] = &[".db", ".dmg"];

fn excluded_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    EXCLUDED_NAMES.iter().any(|n| n.as_bytes() == name)
        || EXCLUDED_SUFFIXES
            .iter()
            .any(|s| name.ends_with(s.as_bytes()))
}

/// A kept symlink and what it resolves to, for the check that the target is
/// in the image after all filtering.
pub(crate) struct LinkCheck {
    pub rel: String,
    pub target: String,
    /// The fully resolved target, relative to the experiment root.
    pub resolved: String,
    pub resolved_is_dir: bool,
}

pub(crate) struct Collected {
    pub files: Vec<ExperimentFile>,
    pub links: Vec<LinkCheck>,
}

fn invalid(message: String) -> ExperimentError {
    ExperimentError::Invalid { message }
}

fn load_ignore_file(root: &Path) -> Result<Option<Gitignore>, ExperimentError> {
    let path = root.join(IGNORE_FILE);
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let mut builder = GitignoreBuilder::new(root);
    if let Some(e) = builder.add(&path) {
        return Err(invalid(format!(
            "{}: {e}; fix the pattern (gitignore syntax)",
            path.display()
        )));
    }
    let ignore = builder
        .build()
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok(Some(ignore))
}

/// Every file of the experiment directory `root` (canonical) that goes into
/// the image, before the generated files are applied. Sorted by `rel`.
pub(crate) fn collect(root: &Path, git_env: GitEnv<'_>) -> Result<Collected, ExperimentError> {
    let git_files: Option<HashSet<Vec<u8>>> = match git::find_work_tree(root) {
        Some(_) => Some(git::listed_files(root, git_env)?),
        None => None,
    };
    let ignore = load_ignore_file(root)?;
    let rel_of = |path: &Path| path.strip_prefix(root).unwrap_or(path).to_path_buf();

    let walker = WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            if excluded_name(entry.file_name()) {
                return false;
            }
            // Pruning ignored directories gives git's rule that a file
            // cannot be re-included when its directory is ignored.
            match &ignore {
                Some(ignore) if entry.file_type().is_dir() => {
                    !ignore.matched(rel_of(entry.path()), true).is_ignore()
                }
                _ => true,
            }
        });

    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut total_size = 0u64;
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            match e.into_io_error() {
                Some(source) => ExperimentError::Io { path, source },
                None => invalid(format!("cannot walk {}: filesystem loop", path.display())),
            }
        })?;
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let path = entry.path();
        let rel_path = rel_of(path);
        let rel_bytes = rel_path.as_os_str().as_bytes();
        if rel_bytes == IGNORE_FILE.as_bytes() {
            continue;
        }
        if let Some(git_files) = &git_files {
            if !git_files.contains(&git::path_key(rel_bytes)) {
                continue;
            }
        }
        if let Some(ignore) = &ignore {
            if ignore.matched(&rel_path, false).is_ignore() {
                continue;
            }
        }
        let Some(rel) = rel_path.to_str() else {
            return Err(invalid(format!(
                "{}: the file name is not valid UTF-8; rename it, or leave it out \
                 with .dallingerignore",
                path.display()
            )));
        };
        let rel = rel.to_string();

        if file_type.is_symlink() {
            let link = check_symlink(root, &rel, path)?;
            files.push(ExperimentFile {
                rel: rel.clone(),
                kind: FileKind::Symlink {
                    target: link.target.clone(),
                },
            });
            links.push(link);
        } else if file_type.is_file() {
            let metadata = entry.metadata().map_err(|e| ExperimentError::Io {
                path: path.to_path_buf(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("loop")),
            })?;
            // Fail now rather than halfway through writing a layer.
            File::open(path).map_err(|source| ExperimentError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            total_size += metadata.len();
            files.push(ExperimentFile {
                rel,
                kind: FileKind::File {
                    source: path.to_path_buf(),
                    executable: metadata.permissions().mode() & 0o111 != 0,
                },
            });
        } else {
            return Err(invalid(format!(
                "{} is not a regular file, directory or symlink (a fifo, socket or device); \
                 remove it, or leave it out with .dallingerignore",
                path.display()
            )));
        }
    }

    if total_size > MAX_SIZE_BYTES {
        return Err(invalid(format!(
            "the experiment's files total {:.1} MiB ({total_size} bytes), over Dallinger's \
             limit of {} MiB; leave out large files (data, media, virtualenvs, build output) \
             by listing them in a {IGNORE_FILE} file (gitignore syntax) in {}",
            total_size as f64 / (1024.0 * 1024.0),
            MAX_SIZE_BYTES / (1024 * 1024),
            root.display()
        )));
    }
    files.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(Collected { files, links })
}

fn check_symlink(root: &Path, rel: &str, path: &Path) -> Result<LinkCheck, ExperimentError> {
    let target = std::fs::read_link(path).map_err(|source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let hint = if rel.split('/').any(|c| c == ".venv") {
        " (this looks like a Python virtualenv: list `.venv/` in .gitignore or \
         .dallingerignore so that it is left out)"
    } else {
        ""
    };
    let Some(target_str) = target.to_str() else {
        return Err(invalid(format!(
            "symlink {} points at a path that is not valid UTF-8; rename the target{hint}",
            path.display()
        )));
    };
    let shown = format!("{} -> {target_str}", path.display());
    if target.is_absolute() {
        return Err(invalid(format!(
            "symlink {shown} has an absolute target, which would not exist in the image; \
             make it a relative link to a file inside the experiment, or replace it with \
             a copy{hint}"
        )));
    }
    // Lexically, from the link's directory.
    let mut depth = Path::new(rel).components().count() - 1;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir if depth == 0 => {
                return Err(invalid(format!(
                    "symlink {shown} points outside the experiment directory; \
                     copy the target into the experiment instead{hint}"
                )))
            }
            Component::ParentDir => depth -= 1,
            _ => {}
        }
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!(
                "broken symlink {shown}: remove it or make it point at a file inside \
                 the experiment{hint}"
            ))
        } else {
            invalid(format!("cannot resolve symlink {shown}: {e}{hint}"))
        }
    })?;
    let Ok(inside) = resolved.strip_prefix(root) else {
        return Err(invalid(format!(
            "symlink {shown} resolves to {}, outside the experiment directory; copy the \
             target into the experiment instead{hint}",
            resolved.display()
        )));
    };
    let Some(inside) = inside.to_str() else {
        return Err(invalid(format!(
            "symlink {shown} resolves to a path that is not valid UTF-8; rename the target"
        )));
    };
    Ok(LinkCheck {
        rel: rel.to_string(),
        target: target_str.to_string(),
        resolved: inside.to_string(),
        resolved_is_dir: resolved.is_dir(),
    })
}
