//! The lock as a remote cache: the layers a lock predicts (their key,
//! digests and size, see `plan::LockedLayer`), found in the registry an
//! image is pushed to, so a build on an empty cache neither downloads,
//! builds nor uploads them; the target read from the base, kept in the lock
//! so such a build needs no byte of the base's layers; and Dallinger's
//! files for `/experiment`, read from the Dallinger layer's blob when its
//! wheel is not at hand.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use fs_err as fs;

use crate::base::BaseImage;
use crate::build::RegistryOptions;
use crate::image::store::{sha256_digest, BlobStore, PredictedLayer, Predictions, ProducedLayer};
use crate::image::{ImageLayer, RemoteBlob};
use crate::plan::{Lock, LockedLayer, LockedTarget};
use crate::python::{Target, TargetOverrides};
use crate::registry::Reference;

/// The kinds of layer the lock records: made only from inputs the lock
/// pins (the experiment code layer is not among them: it is the edit).
pub const PREDICTABLE: [&str; 3] = ["debian", "python", "prepare"];

/// At most this many bytes of Dallinger's files are taken from its layer.
const MAX_DALLINGER_FILES: u64 = 256 << 20;

/// What names the base a target was read from: its manifest digest, or for
/// a base without one (a root filesystem, scratch) its layers' digests.
pub fn base_identity(base: &BaseImage) -> String {
    match &base.digest {
        Some(digest) => digest.clone(),
        None => {
            let layers: Vec<&str> = base.layers.iter().map(|l| l.blob.digest.as_str()).collect();
            sha256_digest(layers.join("\n").as_bytes())
        }
    }
}

/// The overrides a target was read with, as the lock records them.
pub fn overrides_text(overrides: &TargetOverrides) -> String {
    let mut parts = Vec::new();
    if let Some((a, b, c)) = overrides.python_version {
        parts.push(format!("python-version={a}.{b}.{c}"));
    }
    if let Some(p) = &overrides.interpreter {
        parts.push(format!("python={p}"));
    }
    if let Some(p) = &overrides.site_packages {
        parts.push(format!("site-packages={p}"));
    }
    parts.join(" ")
}

/// The lock's target, when it was read from this base with these overrides.
pub fn locked_target(lock: &Lock, base: &str, overrides: &TargetOverrides) -> Option<Target> {
    let locked = lock.tool.ours.target.as_ref()?;
    (locked.base_digest == base && locked.overrides == overrides_text(overrides))
        .then(|| locked.python.clone())
}

/// Where the layers the lock predicts are looked for, and how.
pub struct Lookup<'a> {
    pub registry: &'a RegistryOptions,
    /// The repositories the image is pushed to: the first is asked.
    pub targets: &'a [Reference],
    /// `digest`: every up-to-date entry counts, in a registry or not, and
    /// no registry is asked.
    pub adding_up: bool,
}

/// The lock's layers that this build can take as made: entries written
/// with this store's format and compressor, whose blob the cache lacks,
/// and that the target registry has (in the target repository, the
/// base's, or the one the store pushed it to); a layer whose key then
/// comes up is not made (see `BlobStore::produce`). The others are made as
/// usual, and an entry that no longer matches its layer is named then.
pub fn predictions(
    lock: Option<&Lock>,
    store: &BlobStore,
    base: &BaseImage,
    lookup: &Lookup,
) -> Result<Predictions> {
    let Some(lock) = lock else {
        return Ok(Predictions::default());
    };
    let entries = &lock.tool.ours.layers;
    let (format, compressor) = store.layer_format();
    let usable: Vec<&LockedLayer> = entries
        .iter()
        .filter(|e| e.format == format && e.compressor == compressor)
        .filter(|e| store.cached_layer(&e.key).is_none())
        .collect();
    let mut layers = BTreeMap::new();
    let found = match lookup.targets.first() {
        // `digest` asks no registry: a layer is fetched from the image's
        // only if its bytes are needed (Dallinger's files).
        Some(target) if lookup.adding_up => vec![Some(remote_in(target)); usable.len()],
        Some(target) if !usable.is_empty() => {
            in_registry(&usable, store, base, lookup.registry, target)?
        }
        _ => vec![None; usable.len()],
    };
    for (entry, remote) in usable.into_iter().zip(found) {
        if remote.is_none() && !lookup.adding_up {
            continue;
        }
        if let Some(remote) = remote.as_ref().filter(|_| !lookup.adding_up) {
            eprintln!(
                "layer {:?} ({}): in {}/{}, as {} predicts: not built",
                entry.created_by,
                entry.digest,
                remote.registry,
                remote.repository,
                crate::plan::LOCK_FILE
            );
        }
        let blob = crate::image::store::StoredLayer {
            diff_id: entry.diff_id.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            media_type: entry.media_type.clone(),
        };
        layers.insert(entry.key.clone(), PredictedLayer { blob, remote });
    }
    Ok(Predictions {
        layers,
        entries: entries.clone(),
    })
}

/// The target's repository, as a place a blob is.
fn remote_in(target: &Reference) -> RemoteBlob {
    RemoteBlob {
        registry: target.registry.clone(),
        repository: target.repository.clone(),
    }
}

/// For each entry, the repository of `target`'s registry that has its
/// blob: the target's own (HEAD), else one it can be mounted from (the
/// base's, or where the store pushed it before).
fn in_registry(
    entries: &[&LockedLayer],
    store: &BlobStore,
    base: &BaseImage,
    registry: &RegistryOptions,
    target: &Reference,
) -> Result<Vec<Option<RemoteBlob>>> {
    let client = registry.client(target)?;
    let here = |repository: &str| RemoteBlob {
        repository: repository.to_string(),
        ..remote_in(target)
    };
    let base_repository = base
        .layers
        .iter()
        .find_map(|l| l.remote.as_ref())
        .filter(|r| r.registry == target.registry)
        .map(|r| r.repository.clone());
    let push_scope = [format!("repository:{}:pull,push", target.repository)];
    let mut found = Vec::new();
    for entry in entries {
        let digest = entry.digest.as_str();
        if client
            .has_blob(&target.repository, digest, &push_scope)
            .with_context(|| {
                format!(
                    "asking {} for the layers {} predicts",
                    target.name(),
                    crate::plan::LOCK_FILE
                )
            })?
        {
            found.push(Some(here(&target.repository)));
            continue;
        }
        // A repository it may be mounted from: asking it is a courtesy,
        // its refusal only means no.
        let sources = base_repository
            .iter()
            .cloned()
            .chain(store.pushed_to(&target.registry, digest))
            .filter(|r| *r != target.repository);
        let mut mountable = None;
        for source in sources {
            let scope = [format!("repository:{source}:pull")];
            if client.has_blob(&source, digest, &scope).unwrap_or(false) {
                mountable = Some(here(&source));
                break;
            }
        }
        found.push(mountable);
    }
    Ok(found)
}

/// Puts the target and the layers this build made (or took as the lock
/// predicted) into the lock just written, so a later build can tell what
/// they will be without making them. A prepare layer run with network is
/// left out: its result is not a function of its inputs.
pub fn record_in_lock(
    experiment_dir: &Path,
    store: &BlobStore,
    target: Option<LockedTarget>,
    layers: &[&ProducedLayer],
) -> Result<()> {
    let Some(mut lock) = Lock::read(experiment_dir)? else {
        return Ok(());
    };
    let (format, compressor) = store.layer_format();
    let entries: Vec<LockedLayer> = layers
        .iter()
        .filter(|l| PREDICTABLE.contains(&l.kind))
        .map(|l| LockedLayer {
            kind: l.kind.to_string(),
            created_by: l.created_by.clone(),
            key: l.key.clone(),
            format: format.to_string(),
            compressor: compressor.to_string(),
            media_type: l.layer.blob.media_type.clone(),
            diff_id: l.layer.blob.diff_id.clone(),
            digest: l.layer.blob.digest.clone(),
            size: l.layer.blob.size,
        })
        .collect();
    if lock.tool.ours.layers != entries || lock.tool.ours.target != target {
        lock.tool.ours.layers = entries;
        lock.tool.ours.target = target;
        lock.write(experiment_dir)?;
    }
    Ok(())
}

/// Dallinger's `frontend/` files and Procfile, as `python::layers` takes
/// them from the wheel, read instead from the Dallinger layer (fetched
/// from the registry that has it when the store lacks it, checked against
/// its digest to the last byte), into a scratch directory kept as long as
/// the returned handle. The installer copies those wheel members
/// unchanged into `{purelib}/dallinger/`, so the bytes are the wheel's.
pub fn dallinger_files_from_layer(
    store: &BlobStore,
    layer: &ImageLayer,
    target: &Target,
    clock_on: bool,
) -> Result<(tempfile::TempDir, BTreeMap<String, PathBuf>)> {
    let (digest, size) = (&layer.blob.digest, layer.blob.size);
    store
        .fetch_missing(std::slice::from_ref(layer))
        .with_context(|| {
            format!("the Dallinger layer {digest}, for Dallinger's files in /experiment (its wheel is not in the cache)")
        })?;
    let package = format!("{}/dallinger/", target.purelib.trim_matches('/'));
    let frontend = format!("{package}frontend/");
    let procfile = format!(
        "{package}heroku/{}",
        if clock_on {
            "Procfile"
        } else {
            "Procfile_no_clock"
        }
    );
    let scratch = store.scratch_dir("dallinger-files-")?;
    let mut files = BTreeMap::new();
    let mut blob = store.open_blob(digest, size)?;
    let mut taken = 0u64;
    {
        let tar = dallinger_oci_layers::open_layer(
            &layer.blob.media_type,
            std::io::BufReader::new(&mut blob),
        )?;
        let mut archive = tar::Archive::new(tar);
        for entry in archive
            .entries()
            .with_context(|| format!("reading the Dallinger layer {digest}"))?
        {
            let mut entry =
                entry.with_context(|| format!("reading the Dallinger layer {digest}"))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = path.trim_start_matches("./");
            let rel = if path == procfile {
                "Procfile".to_string()
            } else if let Some(rel) = path.strip_prefix(&frontend) {
                rel.to_string()
            } else {
                continue;
            };
            let plain = Path::new(&rel)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !plain || rel.is_empty() {
                bail!("the Dallinger layer {digest} has the entry {path:?}, which is not a plain path");
            }
            taken += entry.size();
            if taken > MAX_DALLINGER_FILES {
                bail!("the Dallinger layer {digest} has more than {MAX_DALLINGER_FILES} bytes of frontend files; refusing it");
            }
            let dest = scratch.path().join(&rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes)?;
            fs::write(&dest, bytes)?;
            files.insert(rel, dest);
        }
    }
    // The tar ends before the blob does: read the rest, so the whole blob
    // is checked against its digest before its files are used.
    std::io::copy(&mut blob, &mut std::io::sink())
        .with_context(|| format!("reading the Dallinger layer {digest}"))?;
    if files.is_empty() {
        eprintln!("warning: the Dallinger layer {digest} has no dallinger/frontend files");
    }
    Ok((scratch, files))
}
