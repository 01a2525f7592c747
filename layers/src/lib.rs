//! Deterministic container image layers: sorted tar entries with normalised
//! metadata, compressed (gzip or zstd, see [`Codec`]) identically on every
//! machine and for any thread count, hashed as they stream; and the one
//! reader of layer blobs by media type ([`open_layer`]).

mod codec;
mod digest;
mod encoder;
mod gzip;
mod import;
mod key;
mod member;
mod tree;
mod zstd;

use std::io;
use std::path::{Path, PathBuf};

pub use codec::{layer_codec, open_layer, Codec, UnknownCodec};
pub use digest::{Algorithm, BadDigest, Digest, HashingWriter, LayerDigests};
pub use encoder::Encoder;
pub use import::compress_existing_tar;
pub use key::KeyHasher;
pub use member::{BadMember, MemberReader, ZipArchiveFile, ZipMember, ZipMethod};
pub use tree::{Content, ContentReader, LayerTree, Node, WriteOptions, FORMAT_VERSION};

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
    /// A zip member whose bytes are not what its archive declares.
    #[error("{0}")]
    BadMember(BadMember),
    #[error(
        "media type {0:?} is not a layer type this tool can read (plain tar, gzip or zstd): \
         use another base image"
    )]
    MediaType(String),
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
