//! The Python layers of an image: third-party wheels in one layer and
//! Dallinger in another, each keyed by the wheels' digests and the target so
//! identical pins give identical layers across experiments; and Dallinger's
//! own files (`frontend/`, `Procfile`) for `/experiment`.

use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};

use anyhow::Result;
use dallinger_oci_layers::{KeyHasher, LayerTree};

use super::install::{
    install_wheel, unpack_wheel, unpack_wheels, BytecodeCompiler, Compiled, WheelFiles,
};
use super::resolve::ResolvedWheel;
use super::spec::PackageName;
use super::target::Target;
use crate::image::store::{BlobStore, Bucket, LayerDescription, ProducedLayer};

/// Bumped when installed trees change for the same wheels.
const INSTALL_FORMAT: &str = "dallinger-oci-python-layers/1";

/// The Python part of an image.
pub struct PythonLayers {
    pub layers: Vec<ProducedLayer>,
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
) -> Result<PythonLayers> {
    let unpack_cache = store.bucket(Bucket::WheelsUnpacked)?;
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
        let description = layer_for(
            target,
            &group,
            requested,
            &unpack_cache,
            bytecode,
            created_by,
        )?;
        layers.push(store.produce(description)?);
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
fn layer_for<'a>(
    target: &'a Target,
    wheels: &[&'a ResolvedWheel],
    requested: &'a BTreeSet<PackageName>,
    unpack_cache: &'a Path,
    bytecode: Option<&'a BytecodeCompiler>,
    created_by: String,
) -> Result<LayerDescription<'a>> {
    let mut sorted: Vec<&ResolvedWheel> = wheels.to_vec();
    sorted.sort_by(|a, b| a.normalised.cmp(&b.normalised));
    let mut key = KeyHasher::new();
    key.str(INSTALL_FORMAT)
        .str(&serde_json::to_string(target)?)
        .bool(bytecode.is_some())
        .list(sorted.iter(), |key, w| {
            key.str(&w.sha256)
                .str(&w.filename)
                .bool(requested.contains(&w.normalised));
        });
    Ok(LayerDescription {
        kind: "python",
        key,
        created_by,
        fill: Box::new(move |writer| {
            let (tree, _compiled) = install(target, &sorted, requested, unpack_cache, bytecode)?;
            writer.tree(&tree)
        }),
    })
}

/// The tree of `wheels` installed for `target`, and the compiled bytecode
/// it names (to keep until the layer is written).
fn install(
    target: &Target,
    sorted: &[&ResolvedWheel],
    requested: &BTreeSet<PackageName>,
    unpack_cache: &Path,
    bytecode: Option<&BytecodeCompiler>,
) -> Result<(LayerTree, Option<Compiled>)> {
    unpack_in_parallel(sorted, unpack_cache)?;
    let mut tree = LayerTree::new();
    let mut installed_files = Vec::with_capacity(sorted.len());
    for wheel in sorted {
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
        installed_files.push((wheel, installed.files));
    }
    let compiled = match bytecode {
        Some(compiler) => {
            let wheels: Vec<WheelFiles> = installed_files
                .iter()
                .map(|(wheel, files)| WheelFiles {
                    sha256: &wheel.sha256,
                    files,
                })
                .collect();
            Some(compiler.compile(&mut tree, target, &wheels)?)
        }
        None => None,
    };
    Ok((tree, compiled))
}

/// Unpacks the wheels into the unpack cache, one per core at a time: in a
/// cold build, inflating and creating files is most of the work, and each
/// wheel is independent. The installer then finds them unpacked.
fn unpack_in_parallel(wheels: &[&ResolvedWheel], unpack_cache: &Path) -> Result<()> {
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
