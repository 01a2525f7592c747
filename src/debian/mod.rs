//! `system_packages`: Debian packages installed declaratively, without apt,
//! a chroot or a daemon. Resolved against the base's own release and dpkg
//! status, verified from the signed `InRelease` down to each `.deb`,
//! pinned in the lock, and unpacked into one deterministic layer.

pub mod base;
pub mod control;
pub mod deb;
pub mod fetch;
pub mod index;
pub mod layer;
pub mod release;
pub mod resolve;

use std::path::Path;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{KeyHasher, LayerTree};

use crate::experiment::Experiment;
use crate::http::RetryPolicy;
use crate::image::store::{
    sha256_digest, BlobStore, Bucket, LayerDescription, LayerWriter, ProducedLayer, WrittenLayer,
};
use crate::image::ImageLayer;
use crate::plan::{DebianLock, Lock, LockedDeb, LOCK_FILE};

/// The `[Docker]` key naming the packages.
pub const CONFIG_KEY: &str = "system_packages";

/// Bumped when the layer changes for the same `.deb` files.
const LAYER_FORMAT: &str = "dallinger-oci-debian-layer/1";

/// The system packages layer and its lock section.
pub struct DebianLayer {
    pub produced: ProducedLayer,
    pub lock: DebianLock,
}

/// Builds (or takes from the cache) the layer of the experiment's
/// `system_packages`; `None` when it asks for none. `locked` refuses to
/// resolve again when the lock is missing or out of date.
pub fn debian_layer(
    experiment: &Experiment,
    base_layers: &[ImageLayer],
    platform: &str,
    store: &BlobStore,
    locked: bool,
    retry: RetryPolicy,
) -> Result<Option<DebianLayer>> {
    let Some(text) = experiment.get(CONFIG_KEY) else {
        return Ok(None);
    };
    let requests = resolve::parse_request(text)?;
    if requests.is_empty() {
        return Ok(None);
    }
    let wanted = requests
        .iter()
        .map(|r| match &r.version {
            Some(v) => format!("{}={v}", r.name),
            None => r.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let base_key = sha256_digest(
        base_layers
            .iter()
            .map(|l| l.blob.digest.as_str())
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    );
    let arch = index::debian_arch(platform)?;
    let fetcher = fetch::Fetcher::new(retry)?;
    let locked_section = Lock::read(&experiment.dir)?.and_then(|l| l.tool.ours.debian);
    let lock = match locked_section {
        Some(lock) if lock.system_packages == wanted && lock.base_layers == base_key => lock,
        stale => {
            let why = match &stale {
                None => format!("{LOCK_FILE} pins no Debian packages"),
                Some(l) if l.system_packages != wanted => {
                    format!(
                        "{LOCK_FILE} pins Debian packages for {:?}, not {wanted:?}",
                        l.system_packages
                    )
                }
                Some(_) => {
                    format!("the base image changed since {LOCK_FILE} pinned its Debian packages")
                }
            };
            if locked {
                bail!("{why}: run `dallinger-oci lock` (--locked allows no resolving)");
            }
            if stale.is_some() {
                eprintln!(
                    "warning: {why}; resolving again (run `dallinger-oci lock` to update it)"
                );
            }
            store.fetch_missing(base_layers)?;
            let debian = base::DebianBase::read(store, base_layers)?;
            let index = index::load(&fetcher, &store.bucket(Bucket::Debian)?, &debian, arch)?;
            let chosen = resolve::resolve(&requests, &debian, &index)?;
            DebianLock {
                system_packages: wanted.clone(),
                release: index.description.clone(),
                base_layers: base_key.clone(),
                packages: chosen
                    .iter()
                    .map(|c| LockedDeb {
                        name: c.name.clone(),
                        version: c.version.clone(),
                        arch: c.arch.clone(),
                        url: c.deb.url.clone(),
                        sha256: c.deb.sha256.clone(),
                        size: c.deb.size,
                    })
                    .collect(),
            }
        }
    };
    let created_by = format!(
        "dallinger-oci: Debian packages {wanted} ({} package{})",
        lock.packages.len(),
        if lock.packages.len() == 1 { "" } else { "s" }
    );
    eprintln!(
        "Debian packages: {}",
        lock.packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut key = KeyHasher::new();
    key.str(LAYER_FORMAT)
        .str(&base_key)
        .list(lock.packages.iter(), |key, p| {
            key.str(&p.name).str(&p.sha256);
        });
    let produced = store.produce(LayerDescription {
        kind: "debian",
        key,
        created_by,
        fill: Box::new(|writer| write_layer(writer, store, &fetcher, base_layers, &lock)),
    })?;
    Ok(Some(DebianLayer { produced, lock }))
}

/// Fetches (or finds in the cache) and verifies every `.deb`, unpacks them
/// into a scratch directory and writes the layer.
fn write_layer(
    writer: LayerWriter,
    store: &BlobStore,
    fetcher: &fetch::Fetcher,
    base_layers: &[ImageLayer],
    lock: &DebianLock,
) -> Result<WrittenLayer> {
    // A locked build reads the base only when it makes the layer.
    store.fetch_missing(base_layers)?;
    let debian = base::DebianBase::read(store, base_layers)?;
    let scratch = store.scratch_dir("debian-unpack-")?;
    let mut debs = Vec::new();
    for (i, p) in lock.packages.iter().enumerate() {
        let pinned = fetch::Pinned {
            url: p.url.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
        };
        let path = fetch::fetch(fetcher, &store.bucket(Bucket::Debian)?, &pinned)
            .with_context(|| format!("Debian package {} {}", p.name, p.version))?;
        let dir = scratch.path().join(i.to_string());
        std::fs::create_dir(&dir)?;
        let deb = deb::unpack(&path, &dir)?;
        if deb.name() != p.name || deb.control.get("Version") != Some(p.version.as_str()) {
            bail!(
                "{} is {} {} inside, not {} {} as {LOCK_FILE} says: delete the lock's debian section and run `dallinger-oci lock`",
                path.display(),
                deb.name(),
                deb.control.get("Version").unwrap_or_default(),
                p.name,
                p.version
            );
        }
        debs.push(deb);
    }
    let mut tree = LayerTree::new();
    layer::add_packages(&mut tree, &debian, &debs)?;
    writer.tree(&tree)
}

/// Puts the Debian section into the lock just written by the Python stage
/// (or takes it out when there are no system packages).
pub fn record_in_lock(experiment_dir: &Path, layer: Option<&DebianLayer>) -> Result<()> {
    let Some(mut lock) = Lock::read(experiment_dir)? else {
        return Ok(());
    };
    let section = layer.map(|l| l.lock.clone());
    if lock.tool.ours.debian != section {
        lock.tool.ours.debian = section;
        lock.write(experiment_dir)?;
    }
    Ok(())
}
