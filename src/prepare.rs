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
use crate::sandbox::{Exit, Overlay, Sandbox};

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
    let mut env = config_env(request.config);
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env.extend([
        ("HOME".to_string(), "/root".to_string()),
        ("SOURCE_DATE_EPOCH".to_string(), epoch.to_string()),
        ("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()),
    ]);
    eprintln!(
        "Running prepare_docker_image.sh in the sandbox ({})",
        if request.network {
            "with the host's network"
        } else {
            "no network: pass --prepare-network if it downloads"
        }
    );
    let run = OverlayRun {
        layers: request.layers,
        argv: vec!["/bin/sh".into(), "-c".into(), RUN.into()],
        env,
        workdir: "/experiment".into(),
        user: (0, 0),
        network: request.network,
        // The Dockerfile's COPY lines before the RUN.
        seeded: vec![
            Seed {
                rel: "experiment/prepare_docker_image.sh".into(),
                bytes: request.script.to_vec(),
                mode: 0o755,
            },
            Seed {
                rel: "experiment/requirements.txt".into(),
                bytes: request.requirements.to_vec(),
                mode: 0o644,
            },
        ],
        mkdirs: Vec::new(),
        what: "prepare_docker_image.sh",
    };
    let (exit, ran) = run_on_overlay(store, &run)?;
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
    let tree = changes_as_layer(&ran, &run)?;
    Ok((tree, ran.scratch))
}

/// `PATH` when the image's config sets none, as container engines give it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command run as a Dockerfile's `RUN` runs: in the sandbox, the image
/// so far the lower layer of an overlay, its writes in the upper one.
pub struct OverlayRun<'a> {
    /// The image so far, every blob in the store.
    pub layers: &'a [ImageLayer],
    /// `argv[0]` an absolute path in the image.
    pub argv: Vec<String>,
    /// The whole environment the command gets.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: (u32, u32),
    /// Share the host's network.
    pub network: bool,
    /// Files put in place before the run (a prior COPY's); not kept as
    /// changes while they are as seeded.
    pub seeded: Vec<Seed>,
    /// Directories made before the run (a WORKDIR's), below the root.
    pub mkdirs: Vec<String>,
    /// How messages name what runs.
    pub what: &'a str,
}

/// A file an [`OverlayRun`] finds in place.
pub struct Seed {
    /// Below the root, no leading `/`.
    pub rel: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// What an [`OverlayRun`] left: its overlay's upper directory (the
/// changes) and the lower root it ran on.
pub struct RanOverlay {
    pub upper: std::path::PathBuf,
    pub lower: unpack::Rootfs,
    pub scratch: tempfile::TempDir,
}

/// Runs `run` (its output on our standard error) and returns how it
/// ended, with the overlay it wrote to.
pub fn run_on_overlay(store: &BlobStore, run: &OverlayRun) -> Result<(Exit, RanOverlay)> {
    let rootfs = unpack::cached_rootfs(store, run.layers)
        .with_context(|| format!("unpacking the image for {}", run.what))?;
    let scratch = store
        .scratch_dir("prepare-")
        .with_context(|| format!("cannot make a directory for {}", run.what))?;
    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    for dir in &run.mkdirs {
        fs::create_dir_all(upper.join(dir))?;
    }
    for seed in &run.seeded {
        let path = upper.join(&seed.rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &seed.bytes)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(seed.mode))?;
    }
    if run.network {
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
        .network(run.network)
        .user(run.user.0, run.user.1)
        .workdir(&run.workdir);
    for (k, v) in &run.env {
        sandbox = sandbox.env(k, v);
    }
    // The command's output goes to our standard error as it runs.
    let stderr: fs::File = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("cannot pass standard error to {}", run.what))?
        .into();
    let argv: Vec<&str> = run.argv.iter().map(String::as_str).collect();
    let exit = sandbox.run(&argv, &stderr)?;
    Ok((
        exit,
        RanOverlay {
            upper,
            lower: rootfs,
            scratch,
        },
    ))
}

/// One change an overlay recorded.
pub enum Change<'a> {
    /// Deleted (a whiteout).
    Deleted,
    /// A directory; `opaque` when it replaced the lower one.
    Dir {
        opaque: bool,
    },
    Symlink {
        target: String,
    },
    File {
        path: &'a Path,
    },
}

/// Calls `each` with every change of `ran` below the root (a path without
/// leading `/`, its metadata in the upper directory), in path order;
/// package caches, logs and the engine's files (`NOT_KEPT`) and unchanged
/// seeds are left out, and so are devices, fifos and sockets (with a
/// warning).
pub fn overlay_changes(
    ran: &RanOverlay,
    run: &OverlayRun,
    mut each: impl FnMut(&str, &fs::Metadata, Change) -> Result<()>,
) -> Result<()> {
    let upper = &ran.upper;
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
        // The seeded files, unchanged: the layers below have them.
        let seeded = run.seeded.iter().find(|s| s.rel == rel);
        if seeded.is_some_and(|s| fs::read(entry.path()).is_ok_and(|b| b == s.bytes)) {
            continue;
        }
        let meta = entry.path().symlink_metadata()?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            each(&rel, &meta, Change::Deleted)?;
        } else if kind.is_dir() {
            let opaque = is_opaque(entry.path());
            each(&rel, &meta, Change::Dir { opaque })?;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            let target = target.to_string_lossy().into_owned();
            each(&rel, &meta, Change::Symlink { target })?;
        } else if kind.is_file() {
            each(&rel, &meta, Change::File { path: entry.path() })?;
        } else {
            eprintln!(
                "warning: {} made /{rel}, a device, fifo or socket: not kept",
                run.what
            );
        }
    }
    Ok(())
}

/// The overlay's upper directory as layer entries: files, directories and
/// links as they are; 0/0 character devices as whiteouts; opaque
/// directories with an opaque whiteout.
fn changes_as_layer(ran: &RanOverlay, run: &OverlayRun) -> Result<LayerTree> {
    let mut tree = LayerTree::new();
    overlay_changes(ran, run, |rel, meta, change| {
        match change {
            Change::Deleted => tree.add_whiteout(rel)?,
            Change::Dir { opaque } => {
                tree.add_dir(rel)?;
                if opaque {
                    tree.add_file(
                        &format!("{rel}/.wh..wh..opq"),
                        Content::Bytes(Vec::new()),
                        false,
                    )?;
                }
            }
            Change::Symlink { target } => tree.add_symlink(rel, &target)?,
            Change::File { path } => {
                let executable = meta.permissions().mode() & 0o111 != 0;
                tree.add_file(rel, Content::File(path.to_path_buf()), executable)?
            }
        }
        Ok(())
    })?;
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
