//! Turning an existing tar (a root filesystem from mmdebstrap, say) into a
//! layer: its entries are checked, its bytes kept as they are, then compressed.

use std::io::{self, Read, Write};

use crate::digest::{HashingWriter, LayerDigests};
use crate::{Codec, LayerError};

/// Copies everything read from `inner` into `copy` as well.
struct TeeReader<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Validates the tar read from `source` and writes it, unchanged, compressed
/// with `codec` to `sink`, in one pass. `name` is used in error messages only.
///
/// Refused: data that is not a tar, an empty archive, any entry or hard
/// link whose path climbs out of the root with `..`, and anything but zeros
/// after the end of the archive (a reader that skips zero blocks, `tar -i`,
/// would unpack entries hidden there, which were never checked). Absolute
/// paths are kept, as every runtime resolves them against the layer root.
pub fn compress_existing_tar<R: Read, W: Write>(
    name: &str,
    source: R,
    sink: W,
    codec: Codec,
    workers: usize,
) -> Result<(LayerDigests, W), LayerError> {
    let bad = |why: String| LayerError::BadTar(format!("{name}: {why}"));
    let compressed = HashingWriter::new(sink);
    let encoder = codec
        .encoder(compressed, workers)
        .map_err(LayerError::Write)?;
    let uncompressed = HashingWriter::new(encoder);
    let mut tee = TeeReader {
        inner: source,
        copy: uncompressed,
    };
    let mut count = 0usize;
    {
        let mut archive = tar::Archive::new(&mut tee);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive ({})", first_line(&e))))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| bad(format!("not a valid tar archive ({})", first_line(&e))))?;
            let path = entry.path_bytes().into_owned();
            check_path(&path)
                .map_err(|why| bad(format!("entry {:?} {why}", String::from_utf8_lossy(&path))))?;
            if entry.header().entry_type() == tar::EntryType::Link {
                if let Some(target) = entry.link_name_bytes() {
                    check_path(&target).map_err(|why| {
                        bad(format!(
                            "hard link {:?} -> {:?} {why}",
                            String::from_utf8_lossy(&path),
                            String::from_utf8_lossy(&target)
                        ))
                    })?;
                }
            }
            count += 1;
        }
    }
    if count == 0 {
        return Err(bad("not a tar archive, or an empty one".into()));
    }
    // The end-of-archive blocks and record padding are part of the layer too.
    let mut rest = [0u8; 64 << 10];
    loop {
        let n = tee.read(&mut rest).map_err(LayerError::Write)?;
        if n == 0 {
            break;
        }
        if rest[..n].iter().any(|&b| b != 0) {
            return Err(bad(
                "data follows the end of the archive (entries there would escape the checks): \
                 write the tar again with one tool"
                    .into(),
            ));
        }
    }
    crate::encoder::finish_layer(tee.copy)
}

/// tar-rs errors can quote raw header bytes; keep the message to one short line.
fn first_line(error: &io::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    let short: String = line.chars().take(80).collect();
    short.chars().filter(|c| !c.is_control()).collect()
}

fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.split(|b| *b == b'/').any(|part| part == b"..") {
        return Err("climbs out of the root with '..'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(path: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // Bypass tar-rs's own '..' check to make the hostile archive.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn keeps_bytes_and_refuses_escapes() {
        let good = tar_with("./etc/hostname");
        for codec in Codec::ALL {
            let (digests, blob) =
                compress_existing_tar("good.tar", &good[..], Vec::new(), codec, 2).unwrap();
            let mut back = Vec::new();
            codec.decoder(&blob[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, good, "{codec}");
            assert_eq!(digests.uncompressed_size, good.len() as u64);
            assert_eq!(digests.size, blob.len() as u64);
        }
        let gzip = |name: &str, tar: &[u8]| {
            compress_existing_tar(name, tar, Vec::new(), Codec::Gzip, 1).map(|_| ())
        };

        let err = gzip("bad.tar", &tar_with("../etc/passwd"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.tar") && err.contains(".."), "{err}");

        // An entry after the end-of-archive blocks, or after a lone zero block.
        for zeros in [1024, 512] {
            let mut hidden = good[..512 + 512].to_vec();
            hidden.extend(std::iter::repeat_n(0u8, zeros));
            hidden.extend_from_slice(&tar_with("../etc/passwd"));
            let err = gzip("hidden.tar", &hidden).unwrap_err().to_string();
            assert!(
                err.starts_with("hidden.tar: data follows the end of the archive"),
                "{err}"
            );
        }
        // Zeros up to a whole record are padding.
        let mut padded = good.clone();
        padded.resize(10240, 0);
        gzip("padded.tar", &padded).unwrap();

        let err = gzip("text.tar", b"hello, not a tar\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a"), "{err}");
    }
}
