//! The gzip member our layers are: a fixed header, then every 1 MiB block of
//! input deflated on its own by zlib-rs (level 6) and ended with a sync flush
//! (so it stops on a byte boundary), then one empty final block and the
//! trailer. This is pigz's scheme: the cut points depend only on byte
//! offsets, so the blocks can be deflated in parallel and the bytes do not
//! depend on the thread count.
//!
//! Written by hand because no maintained crate gives this with the pure-Rust
//! backend: `gzp` needs a C zlib for its default features, and flate2's
//! single-stream encoder cannot use a second core.

use std::io;

use flate2::{Compress, Compression, FlushCompress};

/// Uncompressed bytes per independently deflated block. Part of the output
/// format: changing it changes every layer digest.
pub(crate) const BLOCK_SIZE: usize = 1 << 20;
/// The deflate level. Part of the output format, as above.
const LEVEL: u32 = 6;
/// Everything above that decides the bytes.
pub(crate) const COMPRESSOR_ID: &str =
    "gzip;deflate=zlib-rs-0.6.8;level=6;block=1MiB;header-mtime=0;os=255";

/// Gzip header: magic, CM=deflate, no flags, MTIME 0, XFL 0, OS 255 (unknown),
/// as flate2 writes it, so the header never depends on the host.
pub(crate) const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty fixed-Huffman block: BFINAL=1, BTYPE=01, end-of-block.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Raw deflate of one block, ending with a sync flush (an empty stored block)
/// so the next block starts on a byte boundary.
pub(crate) fn deflate_block(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = compress.total_in() as usize;
        compress
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        if compress.total_in() as usize == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

/// What follows the last block: the final empty block, the CRC-32 of the
/// input and its length modulo 2^32 (ISIZE, as RFC 1952 defines it).
pub(crate) fn trailer(crc: u32, total_in: u64) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&FINAL_EMPTY_BLOCK);
    out[2..6].copy_from_slice(&crc.to_le_bytes());
    out[6..].copy_from_slice(&((total_in & 0xffff_ffff) as u32).to_le_bytes());
    out
}
