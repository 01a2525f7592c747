//! An image's layers applied to a directory, as a container engine would
//! see them: OCI whiteouts honoured, later layers replacing earlier files.
//! Used to give the build sandbox its root; the tree is the caller's own
//! (owned by the current user, device nodes skipped), not a faithful copy of
//! ownership.

use std::collections::HashSet;
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::store::BlobStore;
use super::ImageLayer;

/// The layers unpacked once into the store's `rootfs/` directory, keyed by
/// their digests; returns the directory. A partly unpacked tree is never
/// left under the final name.
pub fn cached_rootfs(store: &BlobStore, layers: &[ImageLayer]) -> Result<PathBuf> {
    let mut key = String::from("rootfs/1\n");
    for layer in layers {
        key.push_str(&layer.blob.digest);
        key.push('\n');
    }
    let key = super::store::sha256_digest(key.as_bytes());
    let dir = store.root().join("rootfs").join(&key[7..7 + 32]);
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let parent = store.root().join("rootfs");
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(&parent)
        .context("cannot make a directory to unpack the builder image in")?;
    let paths = super::layer_files(store, layers)?;
    unpack_layers(&paths, partial.path())?;
    fs::write(partial.path().join(".complete"), "")?;
    let _ = fs::remove_dir_all(&dir);
    let partial = partial.keep();
    if let Err(e) = fs::rename(&partial, &dir) {
        let _ = make_removable(&partial).and_then(|_| fs::remove_dir_all(&partial));
        if !dir.join(".complete").is_file() {
            return Err(e)
                .with_context(|| format!("cannot move the unpacked image to {}", dir.display()));
        }
    }
    Ok(dir)
}

/// Applies layers (gzip or plain tar, by media type) in order to `dest`.
pub fn unpack_layers(layers: &[(PathBuf, String)], dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)?;
    let dest = dest.canonicalize()?;
    for (path, media_type) in layers {
        let file = fs::File::open(path)
            .with_context(|| format!("cannot read layer {}", path.display()))?;
        let file = BufReader::with_capacity(1 << 20, file);
        let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else if media_type.ends_with("tar") {
            Box::new(file)
        } else {
            bail!(
                "layer {} has media type {media_type}, which cannot be unpacked (gzip or plain tar only)",
                path.display()
            );
        };
        apply_layer(reader, &dest)
            .with_context(|| format!("unpacking layer {}", path.display()))?;
    }
    Ok(())
}

fn apply_layer(reader: impl Read, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // Paths this layer made: an opaque whiteout hides only what lower layers had.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = match clean_path(&entry.path_bytes()) {
            Some(rel) => rel,
            None => bail!(
                "a layer entry has an unsafe path: {}",
                String::from_utf8_lossy(&entry.path_bytes())
            ),
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = dest.join(parent);
            if dir.is_dir() {
                for child in fs::read_dir(&dir)? {
                    let child = child?.path();
                    let child_rel = child.strip_prefix(dest).unwrap().to_path_buf();
                    if !made.contains(&child_rel) {
                        remove_any(&child)?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&dest.join(parent).join(hidden))?;
            continue;
        }
        let kind = entry.header().entry_type();
        let target = dest.join(&rel);
        match kind {
            // The sandbox provides its own /dev.
            tar::EntryType::Char | tar::EntryType::Block => continue,
            tar::EntryType::Directory => {
                if target.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    remove_any(&target)?;
                }
                fs::create_dir_all(&target)?;
                // Owner rwx always, so the tree can be filled and removed.
                let mode = entry.header().mode().unwrap_or(0o755) & 0o7777 | 0o700;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            }
            _ => {
                if target.symlink_metadata().is_ok() {
                    remove_any(&target)?;
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                // unpack_in refuses paths that would leave `dest`, through
                // `..` or a symlinked parent.
                if !entry.unpack_in(dest)? {
                    bail!("a layer entry leaves the root: {}", rel.display());
                }
            }
        }
        made.insert(rel);
    }
    Ok(())
}

/// `./a/b/` → `a/b`; `None` for `..` components.
fn clean_path(raw: &[u8]) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(raw);
    let mut out = PathBuf::new();
    for component in Path::new(text.as_ref()).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> Result<()> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => {
            make_removable(path)?;
            fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Gives the owner write access to every directory under `path`, so an
/// unprivileged user can delete the tree.
fn make_removable(path: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let mode = entry.metadata()?.permissions().mode();
            if mode & 0o700 != 0o700 {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode | 0o700))?;
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
        apply_layer(&lower[..], &dest).unwrap();
        apply_layer(&upper[..], &dest).unwrap();
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
        let err = apply_layer(&bytes[..], dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a layer entry has an unsafe path: ../escape"
        );
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
