//! Writes a directory as a deterministic compressed layer and prints its
//! digests.
//!
//! ```text
//! write_layer DIR OUT [--workers N] [--prefix P] [--mtime SECONDS] [--compression gzip|zstd]
//! ```
//!
//! Used by `benches/bench.sh`. The layer streams to OUT through a `BufWriter`,
//! so memory stays bounded whatever the size of DIR. Prints `diff_id`,
//! `digest`, `size` and `uncompressed_size`, one per line.

use std::error::Error;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dallinger_oci_layers::{Codec, Content, LayerTree, WriteOptions};
use walkdir::WalkDir;

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: write_layer DIR OUT [--workers N] [--prefix P] [--mtime SECONDS] \
                     [--compression gzip|zstd]";

struct Args {
    dir: PathBuf,
    out: PathBuf,
    workers: usize,
    prefix: String,
    mtime: u64,
    codec: Codec,
}

fn parse_args() -> Res<Args> {
    let mut positional = Vec::new();
    let mut workers = 0;
    let mut prefix = String::new();
    let mut mtime = 0;
    let mut codec = Codec::Gzip;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Res<String> {
            args.next()
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}").into())
        };
        match arg.to_str() {
            Some("--workers") => {
                workers = value("--workers")?
                    .parse()
                    .map_err(|e| format!("--workers: {e}"))?
            }
            Some("--prefix") => prefix = value("--prefix")?,
            Some("--compression") => codec = value("--compression")?.parse()?,
            Some("--mtime") => {
                mtime = value("--mtime")?
                    .parse()
                    .map_err(|e| format!("--mtime: {e}"))?
            }
            Some("-h" | "--help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Some(s) if s.starts_with("--") => {
                return Err(format!("unknown option {s}\n{USAGE}").into())
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [dir, out]: [PathBuf; 2] = positional
        .try_into()
        .map_err(|_| format!("expected DIR and OUT\n{USAGE}"))?;
    Ok(Args {
        dir,
        out,
        workers,
        prefix: prefix.trim_matches('/').to_string(),
        mtime,
        codec,
    })
}

/// The layer path of `path` (below `root`), under `prefix`, `/`-separated.
fn layer_path(root: &Path, path: &Path, prefix: &str) -> Res<String> {
    let rel = path.strip_prefix(root)?;
    let mut parts: Vec<&str> = Vec::new();
    if !prefix.is_empty() {
        parts.push(prefix);
    }
    for part in rel.components() {
        parts.push(
            part.as_os_str()
                .to_str()
                .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?,
        );
    }
    Ok(parts.join("/"))
}

fn build_tree(args: &Args) -> Res<LayerTree> {
    let mut tree = LayerTree::new();
    if !args.prefix.is_empty() {
        tree.add_dir(&args.prefix)?;
    }
    let walk = WalkDir::new(&args.dir)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = entry?;
        if entry.depth() == 0 {
            continue; // DIR itself is the layer root (or the prefix)
        }
        let path = layer_path(&args.dir, entry.path(), &args.prefix)?;
        let kind = entry.file_type();
        if kind.is_dir() {
            tree.add_dir(&path)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            let target = target
                .to_str()
                .ok_or_else(|| format!("link target of {} is not UTF-8", entry.path().display()))?;
            tree.add_symlink(&path, target)?;
        } else if kind.is_file() {
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            tree.add_file(&path, Content::File(entry.path().to_path_buf()), executable)?;
        } else {
            eprintln!(
                "skipping {} (not a file, directory or symlink)",
                entry.path().display()
            );
        }
    }
    Ok(tree)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("write_layer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let tree = build_tree(&args)?;
    let options = WriteOptions {
        mtime: args.mtime,
        workers: args.workers,
        codec: args.codec,
    };
    let sink = BufWriter::with_capacity(1 << 20, File::create(&args.out)?);
    let (digests, sink) = tree.write(&options, sink)?;
    // Flush and surface any write error; no fsync, like `gzip > OUT`.
    sink.into_inner().map_err(|e| e.into_error())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "diff_id {}", digests.diff_id)?;
    writeln!(stdout, "digest {}", digests.digest)?;
    writeln!(stdout, "size {}", digests.size)?;
    writeln!(stdout, "uncompressed_size {}", digests.uncompressed_size)?;
    Ok(())
}
