//! The Python layers of an image: third-party wheels in one layer and
//! Dallinger in another, each keyed by the wheels' digests and the target so
//! identical pins give identical layers across experiments; and Dallinger's
//! own files (`frontend/`, `Procfile`) for `/experiment`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use dallinger_oci_layers::{LayerTree, WriteOptions};

use super::install::{install_wheel, unpack_wheel, unpack_wheels, BytecodeCompiler};
use super::resolve::ResolvedWheel;
use super::spec::PackageName;
use super::target::Target;
use crate::image::store::{sha256_digest, BlobStore, StoredLayer};
use crate::image::ImageLayer;

/// Bumped when installed trees change for the same wheels.
const INSTALL_FORMAT: &str = "dallinger-oci-python-layers/1";

/// A layer for the image, with its history text.
pub struct PythonLayer {
    pub layer: ImageLayer,
    pub created_by: String,
}

/// The Python part of an image.
pub struct PythonLayers {
    pub layers: Vec<PythonLayer>,
    /// Files Dallinger provides for `/experiment` (relative path → file),
    /// which the experiment's own files override.
    pub experiment_files: BTreeMap<String, PathBuf>,
}

/// Builds (or takes from the cache) the dependency and Dallinger layers.
/// `requested` names (normalised) the experiment asked for directly.
pub fn python_layers(
    store: &BlobStore,
    target: &Target,
    wheels: &[ResolvedWheel],
    requested: &BTreeSet<PackageName>,
    clock_on: bool,
    bytecode: Option<&BytecodeCompiler>,
    options: &WriteOptions,
) -> Result<PythonLayers> {
    let unpack_cache = store.root().join("wheels-unpacked");
    fs::create_dir_all(&unpack_cache)?;
    let (dallinger, third_party): (Vec<&ResolvedWheel>, Vec<&ResolvedWheel>) =
        wheels.iter().partition(|w| w.normalised == "dallinger");
    let mut layers = Vec::new();
    for (group, what) in [
        (third_party, "Python dependencies"),
        (dallinger.clone(), "Dallinger"),
    ] {
        if group.is_empty() {
            continue;
        }
        let names: Vec<String> = group
            .iter()
            .map(|w| format!("{}=={}", w.name, w.version))
            .collect();
        let created_by = if what == "Dallinger" {
            format!("dallinger-oci: {}", names.join(" "))
        } else {
            format!("dallinger-oci: {what} ({} wheels)", group.len())
        };
        let blob = layer_for(
            store,
            target,
            &group,
            requested,
            &unpack_cache,
            bytecode,
            options,
        )?;
        layers.push(PythonLayer {
            layer: ImageLayer::written(blob),
            created_by,
        });
    }
    let experiment_files = match dallinger.first() {
        Some(wheel) => dallinger_files(&unpack_cache, wheel, clock_on)?,
        None => BTreeMap::new(),
    };
    Ok(PythonLayers {
        layers,
        experiment_files,
    })
}

/// One layer holding `wheels`, from the cache when the same wheels were
/// installed for the same target before.
fn layer_for(
    store: &BlobStore,
    target: &Target,
    wheels: &[&ResolvedWheel],
    requested: &BTreeSet<PackageName>,
    unpack_cache: &Path,
    bytecode: Option<&BytecodeCompiler>,
    options: &WriteOptions,
) -> Result<StoredLayer> {
    let mut key = format!(
        "{INSTALL_FORMAT}\n{}\n{}\n{}\n{}\n",
        options.codec.compressor_id(),
        options.mtime,
        serde_json::to_string(target)?,
        if bytecode.is_some() { "bytecode" } else { "" }
    );
    let mut sorted: Vec<&&ResolvedWheel> = wheels.iter().collect();
    sorted.sort_by(|a, b| a.normalised.cmp(&b.normalised));
    for w in &sorted {
        key.push_str(&format!(
            "{} {} {}\n",
            w.sha256,
            w.filename,
            requested.contains(&w.normalised)
        ));
    }
    let key = format!("python-{}", &sha256_digest(key.as_bytes())[7..]);
    if let Some(layer) = store.cached_layer(&key) {
        return Ok(layer);
    }
    unpack_in_parallel(&sorted, unpack_cache)?;
    let mut tree = LayerTree::new();
    for wheel in &sorted {
        let installed = install_wheel(
            &wheel.path,
            unpack_cache,
            target,
            requested.contains(&wheel.normalised),
            &mut tree,
        )?;
        // A different version in the base: its files that the new one does
        // not replace are hidden with whiteouts.
        if let Some(old) = target.installed.get(&wheel.normalised) {
            let new_files: BTreeSet<&str> = installed.files.iter().map(String::as_str).collect();
            let mut gone: BTreeSet<&str> = old
                .files
                .iter()
                .map(String::as_str)
                .filter(|f| !new_files.contains(f))
                .collect();
            gone.insert(old.dist_info.as_str());
            for path in gone {
                if tree.get(path).is_some() {
                    continue;
                }
                tree.add_whiteout(path)?;
            }
        }
    }
    let _compiled = match bytecode {
        Some(compiler) => Some(compiler.compile(&mut tree, target)?),
        None => None,
    };
    let layer = store.put_layer_with(options.codec.media_type(), |sink| {
        Ok(tree.write(options, sink)?)
    })?;
    store.remember_layer(&key, &layer)?;
    Ok(layer)
}

/// Unpacks the wheels into the unpack cache, one per core at a time: in a
/// cold build, inflating and creating files is most of the work, and each
/// wheel is independent. The installer then finds them unpacked.
fn unpack_in_parallel(wheels: &[&&ResolvedWheel], unpack_cache: &Path) -> Result<()> {
    let paths: Vec<&Path> = wheels.iter().map(|w| w.path.as_path()).collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(unpack_wheels(&paths, unpack_cache, workers)?)
}

/// Dallinger's `frontend/` (static files, templates) and the Procfile, as
/// Dallinger's assembly puts them into the experiment directory.
fn dallinger_files(
    unpack_cache: &Path,
    wheel: &ResolvedWheel,
    clock_on: bool,
) -> Result<BTreeMap<String, PathBuf>> {
    let root = unpack_wheel(&wheel.path, unpack_cache)?;
    let mut files = BTreeMap::new();
    let frontend = root.join("dallinger/frontend");
    if frontend.is_dir() {
        for entry in walkdir::WalkDir::new(&frontend)
            .sort_by_file_name()
            .follow_links(false)
        {
            let entry = entry?;
            if entry.file_type().is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(&frontend)?
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, entry.path().to_path_buf());
            }
        }
    }
    let procfile = root.join(if clock_on {
        "dallinger/heroku/Procfile"
    } else {
        "dallinger/heroku/Procfile_no_clock"
    });
    if procfile.is_file() {
        files.insert("Procfile".into(), procfile);
    }
    if files.is_empty() {
        eprintln!(
            "warning: {} has no dallinger/frontend files",
            wheel.filename
        );
    }
    Ok(files)
}
