//! An image's layers applied to a directory, as a container engine would
//! see them: OCI whiteouts honoured, later layers replacing earlier files.
//! Used to give the build sandbox its root; the tree is the caller's own
//! (owned by the current user, device nodes skipped, setuid and setgid bits
//! dropped), not a faithful copy of ownership.
//!
//! A layer is hostile input, so nothing is done by path. Every entry's
//! parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` from a
//! handle on the root: a symlink on the way (an image's own `lib ->
//! usr/lib`, or a planted `esc -> /etc`) is followed as containerd and moby
//! follow it, inside the root, where absolute targets and `..` stay. The
//! entry itself (create, replace, chmod, whiteout, the target of a hard
//! link) is acted on through that directory handle and never followed.
//! Names with `..`, and whiteouts that name no file (`.wh.`, `.wh..`,
//! `.wh...`), are refused.
//!
//! The unpacked trees are cached under the store's `rootfs/`, one per list
//! of layer digests, each with two files beside it (outside the tree, where
//! no sandbox reaches): `KEY.lock`, held shared by every build using the
//! tree and exclusive by the one that makes or removes it, so a tree in use
//! is never replaced; and `KEY.sum`, a fingerprint of every entry's name,
//! inode, size, mode and change time, written once the tree is on disk. A
//! change to the tree, even one that restores sizes and mtimes, changes a
//! ctime, which no unprivileged process can set: the tree is then made
//! again before anything trusts it.

use fs_err::{self as fs, File};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::store::BlobStore;
use super::ImageLayer;

/// What a refusal tells the user to do.
const HOSTILE: &str = "the image is malformed or hostile: use another base image";

/// A cached unpacked tree, held (shared lock) until the last clone is
/// dropped; it derefs to the tree's directory.
#[derive(Clone, Debug)]
pub struct Rootfs(Arc<Held>);

#[derive(Debug)]
struct Held {
    dir: PathBuf,
    /// `KEY.lock`, locked shared.
    _lock: File,
}

impl std::ops::Deref for Rootfs {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0.dir
    }
}

impl AsRef<Path> for Rootfs {
    fn as_ref(&self) -> &Path {
        &self.0.dir
    }
}

/// The trees this process holds: a second user in the same process shares
/// the lock (a second `flock` on another descriptor would wait for itself).
static HELD: Mutex<Vec<Weak<Held>>> = Mutex::new(Vec::new());

/// The layers unpacked once into the store's `rootfs/` directory, keyed by
/// their digests; returns the tree, locked against removal while held. A
/// tree is used only when its fingerprint matches; a partly unpacked or
/// altered tree is made again.
pub fn cached_rootfs(store: &BlobStore, layers: &[ImageLayer]) -> Result<Rootfs> {
    let mut key = String::from("rootfs/2\n");
    for layer in layers {
        key.push_str(&layer.blob.digest);
        key.push('\n');
    }
    let key = super::store::sha256_digest(key.as_bytes())[7..7 + 32].to_string();
    let parent = store.bucket(super::store::Bucket::Rootfs)?;
    let dir = parent.join(&key);
    {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|h| h.strong_count() > 0);
        if let Some(h) = held.iter().filter_map(Weak::upgrade).find(|h| h.dir == dir) {
            return Ok(Rootfs(h));
        }
    }
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // Only the owner may enter: the trees hold whatever the images hold.
    fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", parent.display()))?;
    let lock_path = parent.join(format!("{key}.lock"));
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let sum = parent.join(format!("{key}.sum"));
    flock(&lock, false, &dir)?;
    if !intact(&dir, &sum)? {
        flock(&lock, true, &dir)?;
        // Exclusive: no build uses the tree. Another may have made it meanwhile.
        if !intact(&dir, &sum)? {
            make_tree(store, layers, &parent, &key)?;
        }
        flock(&lock, false, &dir)?;
    }
    let held = Arc::new(Held {
        dir: dir.clone(),
        _lock: lock,
    });
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(&held));
    Ok(Rootfs(held))
}

/// Takes the tree's lock (shared to use it, exclusive to make it), saying
/// so when another build holds it.
fn flock(lock: &File, exclusive: bool, dir: &Path) -> Result<()> {
    let (try_op, op) = if exclusive {
        (
            FlockOperation::NonBlockingLockExclusive,
            FlockOperation::LockExclusive,
        )
    } else {
        (
            FlockOperation::NonBlockingLockShared,
            FlockOperation::LockShared,
        )
    };
    match rustix::fs::flock(lock, try_op) {
        Ok(()) => return Ok(()),
        Err(Errno::WOULDBLOCK) if exclusive => eprintln!(
            "Waiting for other builds to finish with the unpacked image {}",
            dir.display()
        ),
        Err(Errno::WOULDBLOCK) => eprintln!(
            "Waiting for another build to finish unpacking {}",
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot lock the unpacked image {}", dir.display()))
        }
    }
    loop {
        match rustix::fs::flock(lock, op) {
            Err(Errno::INTR) => continue,
            r => {
                return r
                    .with_context(|| format!("cannot lock the unpacked image {}", dir.display()))
            }
        }
    }
}

/// True when `dir` is the tree `sum` fingerprinted.
fn intact(dir: &Path, sum: &Path) -> Result<bool> {
    let Ok(expected) = fs::read_to_string(sum) else {
        return Ok(false);
    };
    if !dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Ok(false);
    }
    Ok(fingerprint(dir)? == expected.trim())
}

/// Every entry's name, type, mode, owner, inode, links, size and change and
/// modification times, in name order. Reading it costs one `lstat` per
/// entry; a change to any file or directory changes its ctime.
fn fingerprint(dir: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by_file_name()
    {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot read {}", entry.path().display()))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        hash.update(rel.as_os_str().as_bytes());
        hash.update([0]);
        for n in [
            meta.mode() as i64,
            meta.uid() as i64,
            meta.gid() as i64,
            meta.ino() as i64,
            meta.nlink() as i64,
            meta.size() as i64,
            meta.ctime(),
            meta.ctime_nsec(),
            meta.mtime(),
            meta.mtime_nsec(),
        ] {
            hash.update(n.to_le_bytes());
        }
    }
    Ok(hex::encode(hash.finalize()))
}

/// Unpacks the tree anew (the caller holds the exclusive lock), then
/// records its fingerprint once it is on disk.
fn make_tree(store: &BlobStore, layers: &[ImageLayer], parent: &Path, key: &str) -> Result<()> {
    let dir = parent.join(key);
    let sum = parent.join(format!("{key}.sum"));
    match fs::remove_file(&sum) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", sum.display()))
        }
        _ => {}
    }
    // What an earlier run left: the tree (altered, or never fingerprinted)
    // and partial trees of a run that was killed.
    let partial_prefix = format!(".partial-{key}-");
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        if entry
            .file_name()
            .as_bytes()
            .starts_with(partial_prefix.as_bytes())
        {
            remove_tree(&entry.path())?;
        }
    }
    if dir.symlink_metadata().is_ok() {
        remove_tree(&dir)?;
    }
    let partial = tempfile::Builder::new()
        .prefix(&partial_prefix)
        .tempdir_in(parent)
        .context("cannot make a directory to unpack the image in")?;
    let files: Vec<LayerFile> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LayerFile {
                name: format!("{} ({} of {})", l.blob.digest, i + 1, layers.len()),
                path: store.blob_path(&l.blob.digest)?,
                media_type: l.blob.media_type.clone(),
            })
        })
        .collect::<Result<_>>()?;
    unpack_layers(&files, partial.path())?;
    // The sandbox's mount points, made now so that it never writes the tree.
    let root = RootDir::open(partial.path())?;
    for name in ["proc", "dev"] {
        match rustix::fs::mkdirat(&root.fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create /{name} in the image")),
        }
    }
    drop(root);
    let partial = partial.keep();
    if let Err(e) = fs::rename(&partial, &dir) {
        let _ = remove_tree(&partial);
        return Err(e)
            .with_context(|| format!("cannot move the unpacked image to {}", dir.display()));
    }
    let handle = File::open(&dir)?;
    rustix::fs::syncfs(&handle)
        .with_context(|| format!("cannot write the unpacked image {} to disk", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    writeln!(tmp, "{}", fingerprint(&dir)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&sum)
        .with_context(|| format!("cannot write {}", sum.display()))?;
    Ok(())
}

/// Removes a tree of ours, even one whose directories lost their owner's
/// write access. Never follows a symlink.
fn remove_tree(path: &Path) -> Result<()> {
    if !path.symlink_metadata()?.is_dir() {
        return fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()));
    }
    make_removable(path)?;
    fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// One layer's blob, named for messages.
pub struct LayerFile {
    /// How messages name the layer (its digest).
    pub name: String,
    pub path: PathBuf,
    pub media_type: String,
}

/// Applies layers (plain tar, gzip or zstd, by media type) in order to `dest`.
pub fn unpack_layers(layers: &[LayerFile], dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)?;
    let root = RootDir::open(dest)?;
    for layer in layers {
        let file = File::open(&layer.path)
            .with_context(|| format!("cannot read layer {}", layer.path.display()))?;
        let file = BufReader::with_capacity(1 << 20, file);
        let reader = dallinger_oci_layers::open_layer(&layer.media_type, file)
            .with_context(|| format!("layer {}", layer.name))?;
        apply_layer(reader, &root).with_context(|| format!("layer {}", layer.name))?;
    }
    Ok(())
}

/// A handle on the root that every entry is resolved from.
struct RootDir {
    fd: OwnedFd,
}

/// The directory a parent path resolves to: in the root, symlinks followed
/// as if the root were `/`.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// One name in a directory, not followed if it is a symlink.
const NO_FOLLOW: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

impl RootDir {
    fn open(dest: &Path) -> Result<RootDir> {
        let fd = rustix::fs::open(
            dest,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", dest.display()))?;
        Ok(RootDir { fd })
    }

    /// The existing directory `rel` (components below the root).
    fn dir(&self, rel: &[&OsStr]) -> rustix::io::Result<OwnedFd> {
        let path = if rel.is_empty() {
            b".".to_vec()
        } else {
            join(rel)
        };
        rustix::fs::openat2(
            &self.fd,
            &path[..],
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
    }

    /// The directory `rel`, made (mode 0755) where missing, as `mkdir -p`
    /// inside the root. A symlink on the way to nothing is an error (as it
    /// was with `create_dir_all`), not a directory made where it points.
    fn make_dir(&self, rel: &[&OsStr]) -> rustix::io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(Errno::NOENT) if !rel.is_empty() => {
                let (name, above) = rel.split_last().unwrap();
                let parent = self.make_dir(above)?;
                match rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                rustix::fs::openat2(
                    &parent,
                    *name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    NO_FOLLOW,
                )
            }
            r => r,
        }
    }
}

fn join(parts: &[&OsStr]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// What a layer made, by (device, inode) of the directory and name: an
/// opaque whiteout hides only what lower layers had.
type Made = HashSet<(u64, u64, OsString)>;

fn apply_layer(reader: impl Read, root: &RootDir) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut made = Made::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes().into_owned();
        apply_entry(&mut entry, &raw, root, &mut made)
            .with_context(|| format!("entry `{}`", String::from_utf8_lossy(&raw)))?;
    }
    Ok(())
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    raw: &[u8],
    root: &RootDir,
    made: &mut Made,
) -> Result<()> {
    let Some(parts) = components(raw) else {
        bail!("the name goes up (`..`), out of the root: {HOSTILE}");
    };
    let Some((name, parent)) = parts.split_last() else {
        return Ok(());
    };
    let name = *name;
    let header = entry.header();
    let kind = header.entry_type();
    if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
        if hidden == b".wh..opq" {
            return opaque(root, parent, made);
        }
        if hidden.starts_with(b".wh.") {
            // aufs bookkeeping (`.wh..wh.plnk`), skipped as engines skip it.
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            bail!(
                "a whiteout that names no file (`.`, `..` or nothing) cannot be applied: {HOSTILE}"
            );
        }
        let dir = match root.dir(parent) {
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            r => r.context("cannot open its directory")?,
        };
        return remove_at(&dir, OsStr::from_bytes(hidden));
    }
    if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
        // The sandbox provides its own /dev.
        || matches!(kind, tar::EntryType::Char | tar::EntryType::Block)
    {
        return Ok(());
    }
    let dir = root.make_dir(parent).map_err(|e| match e {
        Errno::NOTDIR => anyhow!(
            "a directory above it is a file, or a symlink to nothing in the image: {HOSTILE}"
        ),
        Errno::LOOP => anyhow!("a directory above it is a symlink that loops: {HOSTILE}"),
        e => anyhow!(e).context("cannot make its directory"),
    })?;
    let existing = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(e).context("cannot look at what it replaces"),
    };
    let mode = header.mode().unwrap_or(0o644);
    // Old tar's directories: a name with a slash at the end (tar does so too).
    let old_dir = header.as_ustar().is_none()
        && raw.ends_with(b"/")
        && !kind.is_hard_link()
        && !kind.is_symlink();
    if kind.is_dir() || old_dir {
        if existing.is_some_and(|t| t != FileType::Directory) {
            remove_at(&dir, name)?;
        }
        if existing != Some(FileType::Directory) {
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                .context("cannot make the directory")?;
        }
        let fd = rustix::fs::openat2(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            NO_FOLLOW,
        )
        .context("cannot open the directory")?;
        // Owner rwx always, so the tree can be filled and removed.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o1777 | 0o700))
            .context("cannot set its mode")?;
    } else if kind.is_hard_link() {
        let target = entry
            .link_name_bytes()
            .context("a hard link without a target")?
            .into_owned();
        let shown = String::from_utf8_lossy(&target).into_owned();
        let Some(tparts) = components(&target) else {
            bail!("a hard link to `{shown}`, which goes up (`..`), out of the root: {HOSTILE}");
        };
        let Some((tname, tparent)) = tparts.split_last() else {
            bail!("a hard link to the root directory: {HOSTILE}");
        };
        let tdir = root.dir(tparent).map_err(|_| {
            anyhow!("a hard link to `{shown}`, which is not in the image: {HOSTILE}")
        })?;
        if existing.is_some() {
            remove_at(&dir, name)?;
        }
        rustix::fs::linkat(&tdir, *tname, &dir, name, AtFlags::empty())
            .with_context(|| format!("cannot hard link it to `{shown}`"))?;
    } else if kind.is_symlink() {
        let target = entry
            .link_name_bytes()
            .filter(|t| !t.is_empty())
            .context("a symlink without a target")?
            .into_owned();
        if existing.is_some() {
            remove_at(&dir, name)?;
        }
        rustix::fs::symlinkat(&target[..], &dir, name).context("cannot make the symlink")?;
        rustix::fs::utimensat(&dir, name, &mtime(header), AtFlags::SYMLINK_NOFOLLOW)
            .context("cannot set its time")?;
    } else {
        // Files, and (as tar and POSIX have it) any other type as a file.
        if existing.is_some() {
            remove_at(&dir, name)?;
        }
        let times = mtime(header);
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .context("cannot create the file")?;
        let mut file = std::fs::File::from(fd);
        std::io::copy(entry, &mut file).context("cannot write the file")?;
        rustix::fs::futimens(&file, &times).context("cannot set its time")?;
        // No setuid or setgid bits in a tree the caller owns.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o1777))
            .context("cannot set its mode")?;
    }
    let st = rustix::fs::fstat(&dir)?;
    made.insert((st.st_dev, st.st_ino, name.to_os_string()));
    Ok(())
}

/// The entry's mtime as access and modification time (0 as 1, as tar does).
fn mtime(header: &tar::Header) -> Timestamps {
    let secs = header.mtime().unwrap_or(1).max(1);
    let time = rustix::fs::Timespec {
        tv_sec: secs.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

/// An opaque whiteout: what lower layers put in the directory goes.
fn opaque(root: &RootDir, parent: &[&OsStr], made: &Made) -> Result<()> {
    let dir = match root.dir(parent) {
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
        r => r.context("cannot open its directory")?,
    };
    let st = rustix::fs::fstat(&dir)?;
    for name in names(&dir)? {
        if !made.contains(&(st.st_dev, st.st_ino, name.clone())) {
            remove_at(&dir, &name)?;
        }
    }
    Ok(())
}

/// The names in a directory, without `.` and `..`.
fn names(dir: impl AsFd) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    // Opened anew for reading: `dir` may be an O_PATH handle.
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .context("cannot list a directory")?;
    for entry in rustix::fs::Dir::new(fd).context("cannot list a directory")? {
        let entry = entry.context("cannot list a directory")?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` (a whole tree if a directory), following no
/// symlink; nothing when it does not exist.
fn remove_at(dir: impl AsFd, name: &OsStr) -> Result<()> {
    let dir = dir.as_fd();
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        r => r.with_context(|| format!("cannot remove {}", name.to_string_lossy()))?,
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat2(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            NO_FOLLOW,
        )
        .with_context(|| format!("cannot remove {}", name.to_string_lossy()))?;
        if st.st_mode & 0o700 != 0o700 {
            rustix::fs::fchmod(&sub, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))?;
        }
        for child in names(&sub)? {
            remove_at(&sub, &child)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
    }
    .with_context(|| format!("cannot remove {}", name.to_string_lossy()))
}

/// `./a/b/` → `[a, b]`; `None` for `..` components.
fn components(raw: &[u8]) -> Option<Vec<&OsStr>> {
    let mut out = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Gives the owner write access to every directory under `path`, so an
/// unprivileged user can delete the tree. Walks without following symlinks.
fn make_removable(path: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(path)
        .follow_root_links(false)
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_dir() {
            let mode = entry.metadata()?.permissions().mode();
            if mode & 0o700 != 0o700 {
                fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode | 0o700))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_ustar();
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o555);
                    header.set_cksum();
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                if e.file_type().is_dir() {
                    format!("{rel}/")
                } else {
                    format!("{rel}={}", fs::read_to_string(e.path()).unwrap())
                }
            })
            .collect();
        out.sort();
        out
    }

    fn apply(bytes: &[u8], dest: &Path) -> Result<()> {
        apply_layer(bytes, &RootDir::open(dest).unwrap())
    }

    #[test]
    fn whiteouts_and_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(&[
            ("etc/", None),
            ("etc/a", Some("a1")),
            ("etc/b", Some("b1")),
            ("opt/", None),
            ("opt/old", Some("old")),
            ("usr/x", Some("x")),
        ]);
        let upper = layer(&[
            ("etc/.wh.a", Some("")),
            ("etc/b", Some("b2")),
            ("opt/", None),
            ("opt/new", Some("new")),
            ("opt/.wh..wh..opq", Some("")),
            ("usr/x/", None),
        ]);
        let dest = dir.path().join("root");
        fs::create_dir_all(&dest).unwrap();
        apply(&lower, &dest).unwrap();
        apply(&upper, &dest).unwrap();
        assert_eq!(
            tree(&dest),
            ["etc/", "etc/b=b2", "opt/", "opt/new=new", "usr/", "usr/x/"]
        );
        // Read-only directories of the image stay removable by their owner.
        fs::remove_dir_all(&dest).unwrap();
    }

    #[test]
    fn refuses_paths_that_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        header.set_mode(0o644);
        // set_path refuses `..`; write the name field directly.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let err = apply(&bytes, dir.path()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("entry `../escape`: the name goes up (`..`), out of the root: {HOSTILE}")
        );
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
