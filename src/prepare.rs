//! An experiment's own `prepare_docker_image.sh`, run as Dallinger's
//! Dockerfile runs it (as root, in `/experiment`, after the dependency
//! layers, with `requirements.txt` beside it) but in the sandbox: the image
//! so far is the lower layer of an overlay, and what the script adds,
//! changes or deletes becomes one layer, normalised like every other, with
//! deletions as whiteouts. Package caches and logs (which hold times) are
//! left out. No network unless asked.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Content, KeyHasher, LayerTree};

use crate::image::store::{sha256_digest, BlobStore, LayerDescription, ProducedLayer};
use crate::image::{config_env, unpack, ImageLayer};
use crate::sandbox::{Overlay, Sandbox};

/// Label on images whose build ran a prepare script: its sha256.
pub const LABEL_PREPARE_SCRIPT: &str = "org.dallinger.oci.prepare-script";

/// Changes under these image paths are not kept: package indexes and
/// caches, logs (they hold times), and the files a container engine
/// provides at run time.
const NOT_KEPT: [&str; 10] = [
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
    "var/cache/ldconfig/aux-cache",
    "root/.cache",
    "tmp",
    "etc/resolv.conf",
    "etc/hosts",
    "etc/hostname",
];

/// The script run, as Dallinger's Dockerfile has it.
const RUN: &str = "echo 'Running script prepare_docker_image.sh' && \
                   chmod 755 ./prepare_docker_image.sh && ./prepare_docker_image.sh";

pub struct PrepareRequest<'a> {
    pub script: &'a [u8],
    /// `requirements.txt` as it is in the image (the Dockerfile copies it first).
    pub requirements: &'a [u8],
    /// The image so far, every blob in the store.
    pub layers: &'a [ImageLayer],
    /// Its config (the script sees its `Env`).
    pub config: &'a serde_json::Value,
    /// Share the host's network with the script.
    pub network: bool,
}

/// The layer of the script's changes, from the layer cache when the same
/// script ran on the same layers before.
pub fn prepare_layer(store: &BlobStore, request: &PrepareRequest) -> Result<ProducedLayer> {
    let script = sha256_digest(request.script);
    let mut key = KeyHasher::new();
    key.bool(request.network)
        .bytes(request.script)
        .bytes(request.requirements)
        .list(request.layers.iter(), |key, layer| {
            key.str(&layer.blob.digest);
        });
    store.produce(LayerDescription {
        kind: "prepare",
        key,
        created_by: format!("dallinger-oci: ran prepare_docker_image.sh ({script}) in a sandbox"),
        fill: Box::new(|writer| {
            // Layers the lock predicted may be only in a registry.
            store.fetch_missing(request.layers)?;
            let epoch = writer.epoch();
            let (tree, _scratch) = run_script(store, request, epoch)?;
            writer.tree(&tree)
        }),
    })
}

/// Runs the script on the image so far and returns its changes as a tree,
/// with the directory they are in.
fn run_script(
    store: &BlobStore,
    request: &PrepareRequest,
    epoch: u64,
) -> Result<(LayerTree, tempfile::TempDir)> {
    let rootfs = unpack::cached_rootfs(store, request.layers)
        .context("unpacking the image for prepare_docker_image.sh")?;
    let scratch = store
        .scratch_dir("prepare-")
        .context("cannot make a directory for prepare_docker_image.sh")?;
    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    fs::create_dir_all(upper.join("experiment"))?;
    fs::create_dir_all(&work)?;
    // The Dockerfile's COPY lines before the RUN.
    let script_path = upper.join("experiment/prepare_docker_image.sh");
    fs::write(&script_path, request.script)?;
    fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755))?;
    fs::write(
        upper.join("experiment/requirements.txt"),
        request.requirements,
    )?;
    if request.network {
        // Name resolution as a container engine gives it; never kept.
        if let Ok(resolv) = fs::read("/etc/resolv.conf") {
            fs::create_dir_all(upper.join("etc"))?;
            let _ = fs::remove_file(upper.join("etc/resolv.conf"));
            fs::write(upper.join("etc/resolv.conf"), resolv)?;
        }
    }
    let mut sandbox = Sandbox::new(&rootfs)
        .overlay(Overlay {
            upper: upper.clone(),
            work,
        })
        .network(request.network)
        .workdir("/experiment");
    for (k, v) in config_env(request.config) {
        sandbox = sandbox.env(&k, &v);
    }
    if !config_env(request.config).iter().any(|(k, _)| k == "PATH") {
        sandbox = sandbox.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    sandbox = sandbox
        .env("HOME", "/root")
        .env("SOURCE_DATE_EPOCH", &epoch.to_string())
        .env("DEBIAN_FRONTEND", "noninteractive");
    // The script's output goes to our standard error as it runs.
    let stderr: fs::File = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot pass standard error to the prepare script")?
        .into();
    eprintln!(
        "Running prepare_docker_image.sh in the sandbox ({})",
        if request.network {
            "with the host's network"
        } else {
            "no network: pass --prepare-network if it downloads"
        }
    );
    let exit = sandbox.run(&["/bin/sh", "-c", RUN], &stderr)?;
    if !exit.success() {
        bail!(
            "prepare_docker_image.sh failed ({exit}); its output is above{}",
            if request.network {
                ""
            } else {
                " (it ran without network: pass --prepare-network if it downloads)"
            }
        );
    }
    let tree = changes_as_layer(&upper, request)?;
    Ok((tree, scratch))
}

/// The overlay's upper directory as layer entries: files, directories and
/// links as they are; 0/0 character devices as whiteouts; opaque
/// directories with an opaque whiteout.
fn changes_as_layer(upper: &Path, request: &PrepareRequest) -> Result<LayerTree> {
    let mut tree = LayerTree::new();
    let mut walk = walkdir::WalkDir::new(upper)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false)
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry?;
        let rel = entry
            .path()
            .strip_prefix(upper)?
            .to_str()
            .with_context(|| format!("{} is not UTF-8", entry.path().display()))?
            .to_string();
        if NOT_KEPT
            .iter()
            .any(|p| rel == *p || rel.starts_with(&format!("{p}/")))
        {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        // The seeded files, unchanged: the experiment layer has them.
        let seeded = match rel.as_str() {
            "experiment/prepare_docker_image.sh" => Some(request.script),
            "experiment/requirements.txt" => Some(request.requirements),
            _ => None,
        };
        if seeded.is_some_and(|bytes| fs::read(entry.path()).is_ok_and(|b| b == bytes)) {
            continue;
        }
        let meta = entry.path().symlink_metadata()?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            tree.add_whiteout(&rel)?;
        } else if kind.is_dir() {
            tree.add_dir(&rel)?;
            if is_opaque(entry.path()) {
                tree.add_file(
                    &format!("{rel}/.wh..wh..opq"),
                    Content::Bytes(Vec::new()),
                    false,
                )?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            tree.add_symlink(&rel, &target.to_string_lossy())?;
        } else if kind.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            tree.add_file(&rel, Content::File(entry.path().to_path_buf()), executable)?;
        } else {
            eprintln!(
                "warning: prepare_docker_image.sh made /{rel}, a device, fifo or socket: not kept"
            );
        }
    }
    Ok(tree)
}

/// Whether overlayfs marked a directory opaque (it replaced the lower one).
fn is_opaque(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and `value` is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}
