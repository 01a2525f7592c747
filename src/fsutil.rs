//! Files that someone else reads (the lock, outputs, compose files, every
//! cache entry) are written whole or not at all: into a temporary file
//! created exclusively (`O_EXCL`, a random name, so nothing planted at a
//! name we would use is ever opened or followed), synced to disk, renamed
//! over the target (which replaces a symlink planted there rather than
//! following it), and the directory synced so the rename survives a crash.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// A temporary file that becomes `dest` on [`TempFile::commit`] and is
/// removed if dropped before (an error, a panic).
pub struct TempFile {
    tmp: tempfile::NamedTempFile,
}

impl TempFile {
    /// A new file in `dir` (which must be on the target's file system),
    /// readable as `mode` says (0o600 for secrets, 0o644 otherwise).
    pub fn new_in(dir: &Path, prefix: &str, mode: u32) -> io::Result<TempFile> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        Ok(TempFile { tmp })
    }

    /// A new file beside `dest`, for writing `dest`.
    pub fn beside(dest: &Path, mode: u32) -> io::Result<TempFile> {
        let name = dest
            .file_name()
            .map(|n| format!(".{}.", n.to_string_lossy()))
            .unwrap_or_else(|| ".tmp.".into());
        TempFile::new_in(parent_of(dest), &name, mode)
    }

    /// Like [`TempFile::beside`], the file locked by this process, so
    /// [`sweep_unlocked`] can tell it from one a killed writer left.
    pub fn beside_locked(dest: &Path, mode: u32) -> io::Result<TempFile> {
        locked(|| TempFile::beside(dest, mode))
    }

    /// Like [`TempFile::new_in`], locked.
    pub fn new_locked_in(dir: &Path, prefix: &str, mode: u32) -> io::Result<TempFile> {
        locked(|| TempFile::new_in(dir, prefix, mode))
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    pub fn file_mut(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The temporary name, for a tool that writes the file itself.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Syncs the bytes, renames the file to `dest` and syncs `dest`'s
    /// directory. On an error the temporary file is removed.
    pub fn commit(self, dest: &Path) -> io::Result<()> {
        self.commit_leaving_dir(dest)?;
        sync_dir(parent_of(dest))
    }

    /// Like [`TempFile::commit`], but `dest`'s directory is left for the
    /// caller to sync once, after several files are renamed into it (and
    /// before anything naming them is written), or not at all for a cache
    /// entry nothing durable names.
    pub fn commit_leaving_dir(self, dest: &Path) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(dest).map_err(|e| e.error)?;
        Ok(())
    }

    /// Like [`TempFile::commit`], for bytes the caller has already synced
    /// (`file().sync_all()`, e.g. before taking a lock): renames and syncs
    /// `dest`'s directory.
    pub fn commit_synced(self, dest: &Path) -> io::Result<()> {
        self.tmp.persist(dest).map_err(|e| e.error)?;
        sync_dir(parent_of(dest))
    }
}

/// A temporary file from `make`, locked; made again if a sweeper removed
/// it between its creation and the lock.
fn locked(make: impl Fn() -> io::Result<TempFile>) -> io::Result<TempFile> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..8 {
        let tmp = make()?;
        lock(tmp.file())?;
        if tmp.file().metadata()?.nlink() > 0 {
            return Ok(tmp);
        }
    }
    Err(io::Error::other("temporary files keep disappearing"))
}

/// Writes `bytes` to `path` atomically (see the module's comment).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp =
        TempFile::beside(path, mode).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.file_mut()
        .write_all(bytes)
        .and_then(|_| tmp.commit(path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Copies the file `from` to `path` atomically, streamed.
pub fn copy(from: &Path, path: &Path, mode: u32) -> Result<()> {
    let mut input = File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut tmp =
        TempFile::beside(path, mode).with_context(|| format!("cannot write {}", path.display()))?;
    io::copy(&mut input, tmp.file_mut())
        .and_then(|_| tmp.commit(path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// True when `err` (or one of its causes) is a full disk or quota.
pub fn is_out_of_space(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(io_out_of_space)
    })
}

pub fn io_out_of_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// An advisory lock (flock) held until dropped: on a directory (an OCI
/// layout) or on a lock file. A process killed while holding it loses it.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for the exclusive lock on `path` (a directory or a file,
    /// created if missing).
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = if path.is_dir() {
            File::open(path)?
        } else {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
        };
        fs4::FileExt::lock(&file)?;
        Ok(FileLock { _file: file })
    }
}

/// Removes the entries of `dir` named `prefix…` that no live process holds
/// a lock on: what a killed writer left. Best effort.
pub fn sweep_unlocked(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !try_lock(&file) {
            continue;
        }
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
    }
}

/// Takes the exclusive lock of an open file without waiting: false when
/// another process holds it.
pub fn try_lock(file: &File) -> bool {
    fs4::FileExt::try_lock(file).is_ok()
}

/// Waits for the exclusive lock of an open file.
pub fn lock(file: &File) -> io::Result<()> {
    fs4::FileExt::lock(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_a_planted_symlink_and_never_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        fs::write(&canary, "canary").unwrap();
        let target = dir.path().join("out");
        std::os::unix::fs::symlink(&canary, &target).unwrap();
        write(&target, b"secret", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&canary).unwrap(), "canary");
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Nothing else is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_dropped_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut tmp = TempFile::beside(&dir.path().join("x"), 0o644).unwrap();
            tmp.file_mut().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
