//! The compressions a layer can have: the media types that name each, how
//! this crate writes it and how any layer is read back.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use crate::encoder::Encoder;
use crate::{gzip, zstd, LayerError};

/// How a layer's tar is compressed when this crate writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// Deflate in 1 MiB blocks, one gzip member: what every engine pulls.
    #[default]
    Gzip,
    /// 4 MiB zstd frames at level 3: a smaller layer, made about three
    /// times faster; pulled by podman 4+, docker 23+, containerd 1.5+.
    Zstd,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::Gzip, Codec::Zstd];

    /// How `--compression` and `DALLINGER_OCI_COMPRESSION` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// The OCI media type of a layer written with it.
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Codec::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Names everything that decides the compressed bytes (implementation and
    /// its version, level, block or frame size, header fields). It is the
    /// value of the `org.dallinger.oci.layer.compressor` annotation, and the
    /// codec's part of every cache key: equal ids mean equal bytes for equal
    /// tars, so one id serves both and the two cannot drift apart.
    pub fn compressor_id(self) -> &'static str {
        match self {
            Codec::Gzip => gzip::COMPRESSOR_ID,
            Codec::Zstd => zstd::COMPRESSOR_ID,
        }
    }

    /// A writer that compresses into `sink` with `workers` threads (0: one
    /// per core); the bytes are the same for any number of them.
    pub fn encoder<W: Write>(self, sink: W, workers: usize) -> io::Result<Encoder<W>> {
        Encoder::new(self, sink, workers)
    }

    /// Reads a blob compressed this way, streaming: gzip of any number of
    /// members, zstd of any number of frames (checksums and declared sizes
    /// checked, windows of at most 128 MiB).
    pub fn decoder<'a, R: BufRead + Send + 'a>(self, blob: R) -> Box<dyn Read + Send + 'a> {
        match self {
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
            Codec::Zstd => Box::new(zstd::FramesReader::new(blob)),
        }
    }

    /// Uncompressed bytes per independently compressed block or frame.
    pub(crate) fn frame_size(self) -> usize {
        match self {
            Codec::Gzip => gzip::BLOCK_SIZE,
            Codec::Zstd => zstd::FRAME_SIZE,
        }
    }

    /// What the stream starts with, once the encoder is known to be the
    /// pinned one.
    pub(crate) fn stream_header(self) -> io::Result<&'static [u8]> {
        match self {
            Codec::Gzip => Ok(&gzip::HEADER),
            Codec::Zstd => zstd::check_encoder().map(|()| &[][..]),
        }
    }

    /// Whether [`Codec::stream_trailer`] needs the CRC-32 of the input.
    pub(crate) fn trailer_has_crc(self) -> bool {
        self == Codec::Gzip
    }

    /// Whether an empty input still makes one (empty) block: a zstd stream
    /// of no frames would be zero bytes, which decoders refuse.
    pub(crate) fn needs_a_block(self) -> bool {
        self == Codec::Zstd
    }

    /// What the stream ends with, after the last block.
    pub(crate) fn stream_trailer(self, crc: Option<u32>, total_in: u64) -> Vec<u8> {
        match self {
            Codec::Gzip => gzip::trailer(crc.unwrap_or_default(), total_in).to_vec(),
            Codec::Zstd => Vec::new(),
        }
    }

    /// One block or frame of the stream, compressed on its own.
    pub(crate) fn compress_frame(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip => gzip::deflate_block(data),
            Codec::Zstd => zstd::compress_frame(data),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compression name that is not `gzip` or `zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: use gzip or zstd")]
pub struct UnknownCodec(pub String);

impl FromStr for Codec {
    type Err = UnknownCodec;

    fn from_str(name: &str) -> Result<Codec, UnknownCodec> {
        Codec::ALL
            .into_iter()
            .find(|codec| codec.name() == name)
            .ok_or_else(|| UnknownCodec(name.to_string()))
    }
}

/// The compression a layer media type names: `None` for a plain tar. Knows
/// OCI's layer types (non-distributable ones too) and Docker's.
pub fn layer_codec(media_type: &str) -> Result<Option<Codec>, LayerError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Some(Codec::Gzip)),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Some(Codec::Zstd)),
        other => Err(LayerError::MediaType(other.to_string())),
    }
}

/// The tar inside a layer blob, decompressed as its media type says, as it
/// streams. An unknown media type is an error naming it.
pub fn open_layer<'a, R: BufRead + Send + 'a>(
    media_type: &str,
    blob: R,
) -> Result<Box<dyn Read + Send + 'a>, LayerError> {
    Ok(match layer_codec(media_type)? {
        None => Box::new(blob),
        Some(codec) => codec.decoder(blob),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut reader: impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    fn zstd_error(stream: &[u8]) -> String {
        read_all(Codec::Zstd.decoder(stream))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_parse_and_print() {
        for codec in Codec::ALL {
            assert_eq!(codec.name().parse::<Codec>().unwrap(), codec);
            assert_eq!(codec.to_string(), codec.name());
            assert_eq!(layer_codec(codec.media_type()).unwrap(), Some(codec));
            assert!(codec.compressor_id().starts_with(codec.name()));
        }
        assert_eq!(Codec::default(), Codec::Gzip);
        let err = "xz".parse::<Codec>().unwrap_err().to_string();
        assert_eq!(err, "unknown compression \"xz\": use gzip or zstd");
        assert!("GZIP".parse::<Codec>().is_err());
    }

    #[test]
    fn every_layer_media_type_opens() {
        let tar = b"not really a tar, but bytes".repeat(1000);
        let blob = |codec: Option<Codec>| match codec {
            None => tar.clone(),
            Some(codec) => {
                let mut encoder = codec.encoder(Vec::new(), 1).unwrap();
                encoder.write_all(&tar).unwrap();
                encoder.finish().unwrap()
            }
        };
        for (media_type, codec) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.docker.image.rootfs.diff.tar", None),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Codec::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Codec::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Codec::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Codec::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Some(Codec::Zstd),
            ),
        ] {
            let blob = blob(codec);
            assert_eq!(layer_codec(media_type).unwrap(), codec, "{media_type}");
            let opened = open_layer(media_type, &blob[..]).unwrap();
            assert_eq!(read_all(opened).unwrap(), tar, "{media_type}");
        }
        let err = open_layer("application/vnd.oci.image.layer.v1.tar+xz", &b""[..])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(
                "media type \"application/vnd.oci.image.layer.v1.tar+xz\" is not a layer type"
            ),
            "{err}"
        );
    }

    /// Every gzip member is read, as Go's gzip reader (every engine's) does,
    /// so what we check is what an engine unpacks.
    #[test]
    fn gzip_members_are_all_read() {
        let mut two = Vec::new();
        for part in [&b"first member, "[..], b"second member"] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part).unwrap();
            two.extend(gz.finish().unwrap());
        }
        let back = read_all(Codec::Gzip.decoder(&two[..])).unwrap();
        assert_eq!(back, b"first member, second member");
    }

    #[test]
    fn zstd_skips_skippable_frames_and_checks_the_rest() {
        let data = b"some layer bytes ".repeat(60);
        let frame = zstd::compress_frame(&data).unwrap();

        // A skippable frame (magic 0x184D2A5?, length, payload) before it.
        let mut skippable = 0x184D_2A53u32.to_le_bytes().to_vec();
        skippable.extend(5u32.to_le_bytes());
        skippable.extend(b"hello");
        skippable.extend(&frame);
        assert_eq!(read_all(Codec::Zstd.decoder(&skippable[..])).unwrap(), data);

        // The frame's checksum (its last 4 bytes) altered.
        let mut bad_sum = frame.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        let err = zstd_error(&bad_sum);
        assert!(err.contains("checksum does not match"), "{err}");

        // Its declared content size one byte larger. The descriptor says
        // whether a window byte precedes the size field.
        let mut bad_size = frame.clone();
        let descriptor = bad_size[4];
        assert_eq!(descriptor >> 6, 1, "a two-byte size field");
        let at = 5 + usize::from(descriptor & 0x20 == 0);
        let size = u16::from_le_bytes([bad_size[at], bad_size[at + 1]]) + 1;
        bad_size[at..at + 2].copy_from_slice(&size.to_le_bytes());
        let err = zstd_error(&bad_size);
        assert!(
            err.contains(&format!(
                "declares {} bytes but holds {}",
                data.len() + 1,
                data.len()
            )),
            "{err}"
        );

        // Data after the last frame, and a frame cut short.
        let mut trailing = frame.clone();
        trailing.extend(b"garbage!");
        let err = zstd_error(&trailing);
        assert!(err.contains("not a zstd frame"), "{err}");
        let err = zstd_error(&frame[..frame.len() - 7]);
        assert!(err.starts_with("zstd:"), "{err}");
        assert_eq!(zstd_error(b""), "zstd: the stream is empty");
    }

    /// A frame asking for a window past 128 MiB is refused before anything
    /// is allocated for it; one of 1 MiB is read.
    #[test]
    fn zstd_windows_are_bounded() {
        // Magic, a descriptor with no size, checksum or dictionary, the
        // window byte (exponent: log2(window) - 10), an empty last raw block.
        let frame = |window_log: u8| {
            let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
            f.extend([0x00, (window_log - 10) << 3, 0x01, 0x00, 0x00]);
            f
        };
        assert_eq!(read_all(Codec::Zstd.decoder(&frame(20)[..])).unwrap(), b"");
        let err = zstd_error(&frame(30));
        assert!(
            err.contains("window of 1073741824 bytes, more than the 134217728"),
            "{err}"
        );
    }

    /// Altered and cut streams end in an error or in data, never in a panic
    /// or a loop: every byte of a two-frame stream flipped in turn, and the
    /// stream cut at every length.
    #[test]
    fn damaged_zstd_streams_end() {
        let data = b"layer bytes, layer bytes, more layer bytes ".repeat(40);
        let mut stream = zstd::compress_frame(&data[..1000]).unwrap();
        stream.extend(zstd::compress_frame(&data[1000..]).unwrap());
        let mut errors = 0;
        for at in 0..stream.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = stream.clone();
                bad[at] ^= flip;
                match read_all(Codec::Zstd.decoder(&bad[..])) {
                    Ok(back) => assert!(back.len() <= 2 * data.len()),
                    Err(_) => errors += 1,
                }
            }
        }
        for len in 0..stream.len() {
            if let Ok(back) = read_all(Codec::Zstd.decoder(&stream[..len])) {
                // Only a cut between the frames reads cleanly.
                assert_eq!(back, &data[..1000], "cut at {len}");
            }
        }
        assert!(errors > stream.len(), "{errors} errors");
    }
}
