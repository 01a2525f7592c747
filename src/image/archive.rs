//! `docker-archive` output: one tar that `docker load` and `podman load` read
//! through its `manifest.json`, and that is also an OCI layout (`oci-layout`,
//! `index.json`, `blobs/`), as `docker save` writes since Docker 25.

use fs_err as fs;
use std::io::{self, BufWriter};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::store::{hex_of, BlobStore};
use super::{canonical_json, Image, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::fsutil::TempFile;

/// Writes `image` to `path` as an archive naming it `name` (`REPO:TAG`).
/// The archive is written under an exclusive temporary name and renamed
/// when complete and synced.
pub fn write(store: &BlobStore, image: &Image, path: &Path, name: &str, epoch: u64) -> Result<()> {
    write_named(store, image, path, &[name.to_string()], epoch)
}

/// [`write`], the image named by each of `names` (`REPO:TAG`, in order):
/// every one in `RepoTags`, as `docker save IMAGE:A IMAGE:B` writes.
pub fn write_named(
    store: &BlobStore,
    image: &Image,
    path: &Path,
    names: &[String],
    epoch: u64,
) -> Result<()> {
    refuse_index(image)?;
    if path.is_dir() {
        anyhow::bail!(
            "{} is a directory; docker-archive:FILE needs a file path",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // What killed builds left beside the archive (a live one holds its lock).
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    crate::fsutil::sweep_unlocked(parent, &format!(".{file_name}."));
    let tmp = TempFile::beside_locked(path, 0o644)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, tmp.file().try_clone()?);
    // A blob that does not match its digest fails here, before the rename.
    write_named_to(store, image, &mut writer, names, epoch)?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.commit(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A docker-archive (and what `docker load` reads) holds one image: an
/// index of several platforms is refused, naming the flag that picks one.
pub fn refuse_index(image: &Image) -> Result<()> {
    if image.is_index() {
        let platforms: Vec<String> = image.platforms.iter().map(|(p, _)| p.to_string()).collect();
        anyhow::bail!("{}", one_platform_only("a docker-archive", &platforms));
    }
    Ok(())
}

/// The line refusing several platforms for an output that takes one.
pub fn one_platform_only(output: &str, platforms: &[String]) -> String {
    format!(
        "{output} holds the image of one platform, and this build is for {} ({}): pick one \
         with --platform {} (an oci: or docker:// output holds them all, as an image index)",
        platforms.len(),
        platforms.join(", "),
        platforms.first().map_or("OS/ARCH", String::as_str),
    )
}

/// Writes the archive of `image` named `name` to `out`: the same bytes as
/// [`write`], streamed (into `podman load`, say) without a file.
pub fn write_to(
    store: &BlobStore,
    image: &Image,
    out: &mut dyn io::Write,
    name: &str,
    epoch: u64,
) -> Result<()> {
    write_named_to(store, image, out, &[name.to_string()], epoch)
}

/// [`write_to`] under each of `names`.
pub fn write_named_to(
    store: &BlobStore,
    image: &Image,
    out: &mut dyn io::Write,
    names: &[String],
    epoch: u64,
) -> Result<()> {
    refuse_index(image)?;
    let mut tar = tar::Builder::new(out);

    let blob_name =
        |digest: &str| -> Result<String> { Ok(format!("blobs/sha256/{}", hex_of(digest)?)) };
    let docker_manifest = json!([{
        "Config": blob_name(&image.config_digest)?,
        "RepoTags": names,
        "Layers": image.layers.iter().map(|l| blob_name(&l.blob.digest)).collect::<Result<Vec<_>>>()?,
    }]);
    let descriptors: Vec<_> = names
        .iter()
        .map(|name| {
            let tag = name.rsplit_once(':').map_or(name.as_str(), |(_, t)| t);
            json!({
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size(),
                "annotations": {
                    ANNOTATION_REF_NAME: tag,
                    "io.containerd.image.name": name,
                },
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": descriptors,
    });

    // Entries in byte order of their names, each blob once.
    let mut blobs: Vec<(String, u64)> = image
        .layers
        .iter()
        .map(|l| (l.blob.digest.clone(), l.blob.size))
        .collect();
    blobs.push((image.config_digest.clone(), image.config_size));
    blobs.push((image.manifest_digest.clone(), image.manifest_size()));
    blobs.sort();
    blobs.dedup();

    append_dir(&mut tar, "blobs/", epoch)?;
    append_dir(&mut tar, "blobs/sha256/", epoch)?;
    for (digest, size) in &blobs {
        // Hashed as it streams: the tar never gets the last bytes of a
        // blob that does not match its digest.
        let blob = store.open_blob(digest, *size)?;
        append_file(&mut tar, &blob_name(digest)?, *size, blob, epoch)?;
    }
    let index = canonical_json(&index);
    append_file(
        &mut tar,
        "index.json",
        index.len() as u64,
        &index[..],
        epoch,
    )?;
    let manifest = canonical_json(&docker_manifest);
    append_file(
        &mut tar,
        "manifest.json",
        manifest.len() as u64,
        &manifest[..],
        epoch,
    )?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append_file(
        &mut tar,
        "oci-layout",
        layout.len() as u64,
        &layout[..],
        epoch,
    )?;

    io::Write::flush(tar.into_inner()?)?;
    Ok(())
}

fn header(
    entry_type: tar::EntryType,
    path: &str,
    size: u64,
    mode: u32,
    epoch: u64,
) -> Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_path(path)?;
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    header.set_cksum();
    Ok(header)
}

fn append_dir<W: io::Write>(tar: &mut tar::Builder<W>, path: &str, epoch: u64) -> Result<()> {
    let h = header(tar::EntryType::Directory, path, 0, 0o755, epoch)?;
    tar.append(&h, io::empty())?;
    Ok(())
}

fn append_file<W: io::Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl io::Read,
    epoch: u64,
) -> Result<()> {
    let h = header(tar::EntryType::Regular, path, size, 0o644, epoch)?;
    tar.append(&h, data)?;
    Ok(())
}
