//! Files whose bytes are a member of a zip archive (a wheel), read straight
//! from the archive when the layer is written: stored or deflated, bounded
//! by the size the archive declares, and checked against the sha256 the
//! archive's manifest (a wheel's RECORD) gives while they stream. Nothing is
//! unpacked to disk first and no member is held in memory.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

/// An open archive that members are read from by offset (`pread`), so any
/// number of members, on any thread, share one descriptor.
pub struct ZipArchiveFile {
    path: PathBuf,
    file: File,
}

impl ZipArchiveFile {
    pub fn open(path: &Path) -> io::Result<Arc<ZipArchiveFile>> {
        Ok(Arc::new(ZipArchiveFile {
            path: path.to_path_buf(),
            file: File::open(path)?,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for a zip reader of the listing).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl fmt::Debug for ZipArchiveFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ZipArchiveFile").field(&self.path).finish()
    }
}

impl PartialEq for ZipArchiveFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for ZipArchiveFile {}

/// How a member's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZipMethod {
    Stored,
    /// Raw deflate (zip method 8).
    Deflated,
}

/// One member: where its data is in the archive, how it is stored, its
/// declared size and the sha256 its bytes must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipMember {
    pub archive: Arc<ZipArchiveFile>,
    /// Its name in the archive, for errors.
    pub name: String,
    /// Offset of its data (after the local header).
    pub data_start: u64,
    pub compressed_size: u64,
    pub method: ZipMethod,
    /// The uncompressed size the archive declares: exactly this many bytes
    /// are read, or the read fails.
    pub size: u64,
    /// What the bytes must hash to.
    pub sha256: [u8; 32],
}

/// Why a member's bytes cannot be used. Carried inside the `io::Error` a
/// read returns, so the layer writer can name the archive and member.
#[derive(Debug)]
pub struct BadMember {
    pub archive: PathBuf,
    pub name: String,
    pub reason: String,
}

impl fmt::Display for BadMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?}: {}",
            self.archive.display(),
            self.name,
            self.reason
        )
    }
}

impl std::error::Error for BadMember {}

impl ZipMember {
    /// A reader of exactly `size` bytes: it fails (with a [`BadMember`]
    /// inside the error) when the data inflates to more or fewer bytes, or
    /// when the bytes do not hash to `sha256`; the last read of a
    /// mismatching member is the failing one, so a consumer that reads to
    /// the end never sees a member as complete unless it is right.
    pub fn open(&self) -> MemberReader<'_> {
        let raw = BufReader::with_capacity(
            64 << 10,
            Positioned {
                file: &self.archive.file,
                pos: self.data_start,
                end: self.data_start.saturating_add(self.compressed_size),
            },
        );
        let inner = match self.method {
            ZipMethod::Stored => Inner::Stored(raw),
            ZipMethod::Deflated => Inner::Deflated(flate2::bufread::DeflateDecoder::new(raw)),
        };
        MemberReader {
            member: self,
            inner,
            read: 0,
            hasher: Sha256::new(),
            done: false,
        }
    }

    fn bad(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            BadMember {
                archive: self.archive.path.clone(),
                name: self.name.clone(),
                reason,
            },
        )
    }
}

/// A range of a file read with `pread`.
struct Positioned<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

enum Inner<'a> {
    Stored(BufReader<Positioned<'a>>),
    Deflated(flate2::bufread::DeflateDecoder<BufReader<Positioned<'a>>>),
}

/// See [`ZipMember::open`].
pub struct MemberReader<'a> {
    member: &'a ZipMember,
    inner: Inner<'a>,
    read: u64,
    hasher: Sha256,
    done: bool,
}

impl MemberReader<'_> {
    fn inner_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = match &mut self.inner {
            Inner::Stored(r) => r.read(buf),
            Inner::Deflated(r) => r.read(buf),
        };
        result.map_err(|e| self.member.bad(format!("cannot be decompressed: {e}")))
    }

    /// At the declared size: nothing may follow, and the hash must match.
    fn finish(&mut self) -> io::Result<()> {
        let declared = self.member.size;
        let mut probe = [0u8; 1];
        if self.inner_read(&mut probe)? > 0 {
            return Err(self.member.bad(format!(
                "it inflates past the {declared} bytes declared in its zip header"
            )));
        }
        let actual: [u8; 32] = self.hasher.clone().finalize().into();
        if actual != self.member.sha256 {
            return Err(self.member.bad("its hash does not match RECORD".into()));
        }
        self.done = true;
        Ok(())
    }
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let declared = self.member.size;
        let left = declared - self.read;
        if left == 0 {
            self.finish()?;
            return Ok(0);
        }
        let want = (buf.len() as u64).min(left) as usize;
        let n = self.inner_read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.member.bad(format!(
                "it inflates to {} bytes, not the {declared} declared in its zip header",
                self.read
            )));
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read == declared {
            // Checked now, so a consumer that stops at the size it was
            // told (a tar writer) still sees a bad member fail.
            self.finish()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An archive file holding `data` at offset 7, stored or deflated.
    fn member(data: &[u8], method: ZipMethod, sha256: [u8; 32], size: u64) -> ZipMember {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.zip");
        let body = match method {
            ZipMethod::Stored => data.to_vec(),
            ZipMethod::Deflated => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        };
        let mut bytes = b"header!".to_vec();
        bytes.extend(&body);
        bytes.extend(b"trailing bytes of the next member");
        std::fs::write(&path, &bytes).unwrap();
        let archive = ZipArchiveFile::open(&path).unwrap();
        // The file stays readable through the open descriptor.
        drop(dir);
        ZipMember {
            archive,
            name: "pkg/data.bin".into(),
            data_start: 7,
            compressed_size: body.len() as u64,
            method,
            size,
            sha256,
        }
    }

    fn read(m: &ZipMember) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        m.open()
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn members_read_checked_stored_or_deflated() {
        let data = b"some file content, some file content".repeat(100);
        let sum: [u8; 32] = Sha256::digest(&data).into();
        let len = data.len() as u64;
        for method in [ZipMethod::Stored, ZipMethod::Deflated] {
            assert_eq!(read(&member(&data, method, sum, len)).unwrap(), data);
            let err = read(&member(&data, method, [0; 32], len)).unwrap_err();
            assert!(
                err.ends_with(".zip: \"pkg/data.bin\": its hash does not match RECORD"),
                "{err}"
            );
            let err = read(&member(&data, method, sum, len - 1)).unwrap_err();
            assert!(
                err.contains(&format!(
                    "it inflates past the {} bytes declared in its zip header",
                    len - 1
                )),
                "{err}"
            );
            let err = read(&member(&data, method, sum, len + 1)).unwrap_err();
            assert!(
                err.contains(&format!(
                    "it inflates to {len} bytes, not the {} declared",
                    len + 1
                )),
                "{err}"
            );
        }
        // A tar writer reads exactly the size it was given: the failure
        // comes with the last byte.
        let m = member(&data, ZipMethod::Deflated, [0; 32], len);
        let err = io::copy(&mut m.open().take(len), &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn damaged_deflate_data_is_an_error() {
        let data = b"0123456789".repeat(1000);
        let sum: [u8; 32] = Sha256::digest(&data).into();
        let mut m = member(&data, ZipMethod::Deflated, sum, data.len() as u64);
        m.compressed_size /= 2;
        let err = read(&m).unwrap_err();
        assert!(err.contains("\"pkg/data.bin\": "), "{err}");
    }
}
