//! Deterministic container image layers: sorted tar entries with normalised
//! metadata, gzipped identically on every machine, hashed as they stream.

mod digest;
mod import;
mod pargz;
mod tree;

use std::io;
use std::path::{Path, PathBuf};

pub use digest::{HashingWriter, LayerDigests};
pub use import::gzip_existing_tar;
pub use pargz::{ParallelGzWriter, BLOCK_SIZE, COMPRESSOR_ID, LEVEL};
pub use tree::{Content, LayerTree, Node, WriteOptions};

/// Media type of every layer this crate writes.
pub const MEDIA_TYPE_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid path in layer: {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("two entries collide at {path:?}: {reason}")]
    Collision { path: String, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} changed while the layer was written; build again", path.display())]
    Changed { path: PathBuf },
    #[error("{0}")]
    BadTar(String),
    #[error("writing the layer failed: {0}")]
    Write(#[source] io::Error),
}

impl LayerError {
    fn read(path: &Path, source: io::Error) -> Self {
        LayerError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}
