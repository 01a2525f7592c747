//! zstd layers: the input cut into 4 MiB frames, each compressed on its own
//! by libzstd 1.5.7 at level 3 with a fresh context, carrying its content
//! size and checksum, and the frames concatenated. As with our gzip, the cut
//! points depend only on byte offsets, so frames can be compressed in
//! parallel and the bytes do not depend on the thread count. A stream of
//! frames is what the format calls a zstd stream: every decoder reads on to
//! the next frame.
//!
//! Why these bytes hold still:
//! - libzstd says its output is fixed by the version and the parameters, not
//!   across versions (facebook/zstd #4049): the version is pinned in
//!   Cargo.toml and checked at run time, as a build could link another one.
//! - The one search whose use depended on the CPU's SIMD is the row match
//!   finder of the greedy and lazy strategies (facebook/zstd #4099, #3796).
//!   Level 3 is the double-fast strategy in every one of 1.5.7's tables
//!   (frames of any size, the last one too), which never uses it.
//! - A fresh context per frame, so no frame depends on which worker
//!   compressed which frame before it (context reuse once leaked state,
//!   facebook/zstd #1241), and libzstd's own threads are never used.
//!
//! Measured on the Dallinger demo's dependency layer (a 180 MB tar):
//! frames of 1, 2, 4, 8 and 16 MiB give 0.364, 0.359, 0.356, 0.355 and 0.355
//! of the tar at about the same speed per byte; 4 MiB is where larger frames
//! stop paying, and it bounds the writer's memory (a few frames per worker)
//! and a reader's window (2 MiB at level 3).

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use zstd_safe::{CCtx, CParameter};

/// Uncompressed bytes per frame. Part of the output format.
pub(crate) const FRAME_SIZE: usize = 4 << 20;
/// The compression level. Part of the output format.
const LEVEL: i32 = 3;
/// The libzstd this format is made by, as `ZSTD_versionNumber` gives it.
const LIBZSTD_VERSION: u32 = 1_05_07;
/// Everything above that decides the bytes.
pub(crate) const COMPRESSOR_ID: &str =
    "zstd;encoder=libzstd-1.5.7;level=3;frame=4MiB;content-size=1;checksum=1";

/// The largest window a frame may ask a reader for: libzstd's own default
/// limit (window log 27). Our frames ask for 2 MiB.
const MAX_WINDOW: u64 = 1 << 27;

/// Refuses to write when the linked libzstd is not the pinned one: its bytes
/// would differ while the compressor annotation says otherwise.
pub(crate) fn check_encoder() -> io::Result<()> {
    if zstd_safe::version_number() == LIBZSTD_VERSION {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "zstd layers are made by libzstd 1.5.7 as bundled, but this build links libzstd {}: \
         build without ZSTD_SYS_USE_PKG_CONFIG",
        zstd_safe::version_string()
    )))
}

/// One complete frame holding `data`.
pub(crate) fn compress_frame(data: &[u8]) -> io::Result<Vec<u8>> {
    let failed =
        |code: usize| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)));
    let mut cctx = CCtx::try_create().ok_or_else(|| io::Error::other("zstd: out of memory"))?;
    for parameter in [
        CParameter::CompressionLevel(LEVEL),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(true),
    ] {
        cctx.set_parameter(parameter).map_err(failed)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(failed)?;
    Ok(out)
}

/// Reads a zstd stream of any number of frames, skipping skippable frames,
/// and checks each frame's checksum and declared content size. Memory is a
/// window (at most [`MAX_WINDOW`]) and one block, whatever the stream's size.
pub(crate) struct FramesReader<R> {
    source: R,
    frame: FrameDecoder,
    in_frame: bool,
    /// Whether any frame, skippable or not, was seen: an empty stream is an
    /// error, as libzstd has it.
    seen_a_frame: bool,
    /// Bytes the current frame has given so far.
    produced: u64,
}

impl<R: BufRead> FramesReader<R> {
    pub(crate) fn new(source: R) -> Self {
        let mut frame = FrameDecoder::new();
        frame.set_max_window_size(MAX_WINDOW);
        FramesReader {
            source,
            frame,
            in_frame: false,
            seen_a_frame: false,
            produced: 0,
        }
    }

    /// Starts the next frame. False at the end of the stream.
    fn start_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                if !self.seen_a_frame {
                    return Err(invalid("the stream is empty".into()));
                }
                return Ok(false);
            }
            self.seen_a_frame = true;
            match self.frame.reset(&mut self.source) {
                Ok(()) => {
                    self.produced = 0;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let length = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.source).take(length), &mut io::sink())?;
                    if skipped != length {
                        return Err(invalid("a skippable frame is cut short".into()));
                    }
                }
                Err(FrameDecoderError::WindowSizeTooBig { requested, .. }) => {
                    return Err(invalid(format!(
                        "a frame asks for a window of {requested} bytes, more than the \
                         {MAX_WINDOW} this tool allows"
                    )))
                }
                Err(e) => return Err(invalid(format!("not a zstd frame ({e})"))),
            }
        }
    }

    fn end_frame(&self) -> io::Result<()> {
        if let Some(stored) = self.frame.get_checksum_from_data() {
            if self.frame.get_calculated_checksum() != Some(stored) {
                return Err(invalid(
                    "a frame's checksum does not match its content".into(),
                ));
            }
        }
        // ruzstd gives 0 for a frame that declares no size.
        let declared = self.frame.content_size();
        if declared != 0 && declared != self.produced {
            return Err(invalid(format!(
                "a frame declares {declared} bytes but holds {}",
                self.produced
            )));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for FramesReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.start_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            // Each call reads at least a block header, so this ends.
            while self.frame.can_collect() == 0 && !self.frame.is_finished() {
                self.frame
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| invalid(e.to_string()))?;
            }
            let n = self.frame.read(buf)?;
            if n > 0 {
                self.produced += n as u64;
                return Ok(n);
            }
            if self.frame.is_finished() {
                self.end_frame()?;
                self.in_frame = false;
            }
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {why}"))
}
