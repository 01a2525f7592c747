//! The Python layers of an image: third-party wheels in one layer and
//! Dallinger in another, each keyed by the wheels' digests and the target so
//! identical pins give identical layers across experiments; and Dallinger's
//! own files (`frontend/`, `Procfile`) for `/experiment`. Every file comes
//! straight from its wheel's zip member when the layer is written: nothing
//! is unpacked on the way.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use dallinger_oci_layers::{Content, KeyHasher, LayerTree};

use super::install::{install_wheel, read_members, BytecodeCompiler, Compiled, WheelFiles};
use super::resolve::ResolvedWheel;
use super::spec::PackageName;
use super::target::Target;
use crate::image::store::{BlobStore, LayerDescription, ProducedLayer};

/// Bumped when installed trees change for the same wheels.
const INSTALL_FORMAT: &str = "dallinger-oci-python-layers/1";

/// The Python part of an image.
pub struct PythonLayers {
    pub layers: Vec<ProducedLayer>,
    /// Files Dallinger provides for `/experiment` (relative path → its
    /// bytes, members of the Dallinger wheel), which the experiment's own
    /// files override.
    pub experiment_files: BTreeMap<String, Content>,
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
    let (dallinger, third_party): (Vec<&ResolvedWheel>, Vec<&ResolvedWheel>) =
        wheels.iter().partition(|w| w.normalised == "dallinger");
    let groups: Vec<(Vec<&ResolvedWheel>, &str)> = [
        (third_party, "Python dependencies"),
        (dallinger.clone(), "Dallinger"),
    ]
    .into_iter()
    .filter(|(group, _)| !group.is_empty())
    .collect();
    // The layers do not depend on each other: each is produced on its own
    // thread (reading and inflating the wheels), beside the other's
    // compression.
    let produced: Vec<Result<ProducedLayer>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|(group, what)| {
                scope.spawn(move || -> Result<ProducedLayer> {
                    let names: Vec<String> = group
                        .iter()
                        .map(|w| format!("{}=={}", w.name, w.version))
                        .collect();
                    let created_by = if *what == "Dallinger" {
                        format!("dallinger-oci: {}", names.join(" "))
                    } else {
                        format!("dallinger-oci: {what} ({} wheels)", group.len())
                    };
                    let description = layer_for(target, group, requested, bytecode, created_by)?;
                    store.produce(description)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a layer's thread panicked"))
            .collect()
    });
    let layers = produced.into_iter().collect::<Result<Vec<_>>>()?;
    let experiment_files = match dallinger.first() {
        // A build from the lock's predictions may not have the wheel: the
        // caller takes the files from the Dallinger layer instead.
        Some(wheel) if wheel.path.is_file() => dallinger_files(wheel, clock_on)?,
        _ => BTreeMap::new(),
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
            let (tree, _compiled) = install(target, &sorted, requested, bytecode)?;
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
    bytecode: Option<&BytecodeCompiler>,
) -> Result<(LayerTree, Option<Compiled>)> {
    let mut tree = LayerTree::new();
    let mut installed_files = Vec::with_capacity(sorted.len());
    for wheel in sorted {
        let installed = install_wheel(
            &wheel.path,
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

/// Dallinger's `frontend/` (static files, templates) and the Procfile, as
/// Dallinger's assembly puts them into the experiment directory: members
/// of its wheel (a purelib wheel, so the names are the package's paths).
fn dallinger_files(wheel: &ResolvedWheel, clock_on: bool) -> Result<BTreeMap<String, Content>> {
    let (_, members) = read_members(&wheel.path)
        .with_context(|| format!("reading Dallinger's files from {}", wheel.filename))?;
    let procfile = if clock_on {
        "dallinger/heroku/Procfile"
    } else {
        "dallinger/heroku/Procfile_no_clock"
    };
    let mut files = BTreeMap::new();
    for member in members {
        if let Some(rel) = member.name.strip_prefix("dallinger/frontend/") {
            files.insert(rel.to_string(), member.content);
        } else if member.name == procfile {
            files.insert("Procfile".into(), member.content);
        }
    }
    if files.is_empty() {
        eprintln!(
            "warning: {} has no dallinger/frontend files",
            wheel.filename
        );
    }
    Ok(files)
}
