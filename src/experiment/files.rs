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
use super::{Exclusion, ExperimentError, ExperimentFile, FileKind};

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

/// The entry of Dallinger's exclusion list that leaves `name` out, as
/// Dallinger writes it (`*.db` for a suffix).
fn excluded_name(name: &OsStr) -> Option<String> {
    let name = name.as_bytes();
    if let Some(n) = EXCLUDED_NAMES.iter().find(|n| n.as_bytes() == name) {
        return Some(n.to_string());
    }
    EXCLUDED_SUFFIXES
        .iter()
        .find(|s| name.ends_with(s.as_bytes()))
        .map(|s| format!("*{s}"))
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
    /// What was left out and by which rule, sorted by path.
    pub excluded: Vec<Exclusion>,
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
    // Filled by the walk's filter too, hence the cell.
    let excluded = std::cell::RefCell::new(Vec::new());
    let exclude = |path: &Path, directory: bool, rule: &'static str, value: Option<String>| {
        excluded.borrow_mut().push(Exclusion {
            path: rel_of(path).to_string_lossy().into_owned(),
            directory,
            rule,
            value,
        });
    };
    let mut git_excluded: Vec<String> = Vec::new();

    let walker = WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            let is_dir = entry.file_type().is_dir();
            if let Some(rule) = excluded_name(entry.file_name()) {
                exclude(entry.path(), is_dir, "dallinger", Some(rule));
                return false;
            }
            // Pruning ignored directories gives git's rule that a file
            // cannot be re-included when its directory is ignored.
            match &ignore {
                Some(ignore) if is_dir => {
                    let matched = ignore.matched(rel_of(entry.path()), true);
                    if let ignore::Match::Ignore(glob) = &matched {
                        let pattern = glob.original().to_string();
                        exclude(entry.path(), true, IGNORE_FILE, Some(pattern));
                    }
                    !matched.is_ignore()
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
            exclude(path, false, IGNORE_FILE, None);
            continue;
        }
        if let Some(git_files) = &git_files {
            if !git_files.contains(&git::path_key(rel_bytes)) {
                git_excluded.push(rel_path.to_string_lossy().into_owned());
                continue;
            }
        }
        if let Some(ignore) = &ignore {
            if let ignore::Match::Ignore(glob) = ignore.matched(&rel_path, false) {
                exclude(path, false, IGNORE_FILE, Some(glob.original().to_string()));
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
    let mut excluded = excluded.into_inner();
    let elsewhere: Vec<&str> = files
        .iter()
        .map(|f| f.rel.as_str())
        .chain(excluded.iter().map(|e| e.path.as_str()))
        .collect();
    let by_git = collapse(&git_excluded, &elsewhere);
    excluded.extend(by_git.into_iter().map(|(path, directory)| Exclusion {
        path,
        directory,
        rule: "git",
        value: None,
    }));
    excluded.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(Collected {
        files,
        links,
        excluded,
    })
}

/// The files git leaves out, as few paths as say the same: a directory
/// whose every file git leaves out (nothing below it kept or left out by
/// another rule) stands for all of them. Gives (path, is a directory).
fn collapse(git_excluded: &[String], elsewhere: &[&str]) -> Vec<(String, bool)> {
    let mut mixed: HashSet<&str> = HashSet::new();
    for path in elsewhere {
        for (i, _) in path.match_indices('/') {
            mixed.insert(&path[..i]);
        }
    }
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for path in git_excluded {
        let top = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .find(|dir| !mixed.contains(dir));
        let (shown, directory) = match top {
            Some(dir) => (dir, true),
            None => (path.as_str(), false),
        };
        if seen.insert(shown) {
            out.push((shown.to_string(), directory));
        }
    }
    out
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
