//! Reading a `.deb`: an `ar` archive of `debian-binary`, `control.tar.*` and
//! `data.tar.*` (xz, zstd, gzip or none), streamed once from start to end.
//!
//! The `ar` reader is ours: a `.deb` uses only the common format (60-byte
//! headers, 2-byte alignment), which is shorter to read here than to adapt
//! the `ar` crate, unmaintained since 2021, to a streaming reader.

use fs_err::File;
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use super::control::{parse_stanzas, Stanza};

/// Reads the members of an `ar` archive in order.
pub struct ArReader<R> {
    inner: R,
    /// Where the next member's header starts.
    next_header: u64,
}

/// One member: its name and a reader limited to its bytes.
pub struct ArMember<'a, R> {
    pub name: String,
    pub size: u64,
    pub data: io::Take<&'a mut CountingReader<R>>,
}

/// Counts what passes through, so the archive reader knows where it is
/// however much of a member its user read.
pub struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> ArReader<CountingReader<R>> {
    pub fn new(inner: R) -> Result<Self> {
        let mut reader = ArReader {
            inner: CountingReader { inner, count: 0 },
            next_header: 8,
        };
        let mut magic = [0u8; 8];
        reader
            .inner
            .read_exact(&mut magic)
            .context("not an ar archive: too short")?;
        if &magic != b"!<arch>\n" {
            bail!("not an ar archive (no `!<arch>` signature)");
        }
        Ok(reader)
    }

    /// The next member, after skipping what is left of the previous one.
    pub fn next_member(&mut self) -> Result<Option<ArMember<'_, R>>> {
        let skip = self.next_header.saturating_sub(self.inner.count);
        io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())?;
        let mut header = [0u8; 60];
        let mut filled = 0;
        while filled < header.len() {
            let n = self.inner.read(&mut header[filled..])?;
            if n == 0 {
                if filled == 0 {
                    return Ok(None);
                }
                bail!("the ar archive ends inside a member header");
            }
            filled += n;
        }
        if &header[58..60] != b"`\n" {
            bail!("bad ar member header (no end marker)");
        }
        let field = |range: std::ops::Range<usize>| {
            String::from_utf8_lossy(&header[range])
                .trim_end()
                .to_string()
        };
        let name = field(0..16).trim_end_matches('/').to_string();
        let size: u64 = field(48..58)
            .parse()
            .with_context(|| format!("bad size in the ar header of {name:?}"))?;
        self.next_header = self.inner.count + size + size % 2;
        Ok(Some(ArMember {
            name,
            size,
            data: (&mut self.inner).take(size),
        }))
    }
}

/// A decompressing reader for a member named `*.tar[.xz|.zst|.gz]`.
fn decompressed<'a>(name: &str, input: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match name.rsplit_once(".tar").map(|(_, ext)| ext) {
        Some("") => Box::new(input),
        Some(".xz") => Box::new(lzma_rust2::XzReader::new(input, true)),
        Some(".zst") => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?,
        ),
        Some(".gz") => Box::new(flate2::read::GzDecoder::new(input)),
        _ => bail!("the member {name} is compressed in a way dallinger-oci cannot read"),
    })
}

/// What one data entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// Unpacked to `source`.
    File {
        source: PathBuf,
        executable: bool,
    },
    Symlink(String),
}

/// A path the package installs (no leading `./` or `/`), in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    pub path: String,
    pub kind: EntryKind,
}

/// A `.deb`, unpacked.
#[derive(Debug, Clone)]
pub struct Deb {
    /// The `control` file.
    pub control: Stanza,
    /// The other control members (`md5sums`, `conffiles`, `shlibs`,
    /// maintainer scripts): name → (bytes, executable).
    pub control_files: BTreeMap<String, (Vec<u8>, bool)>,
    pub entries: Vec<DataEntry>,
    /// MD5 (hex) of each conffile, keyed by its path with a leading `/`.
    pub conffile_md5: BTreeMap<String, String>,
}

impl Deb {
    /// `Package` of the control file.
    pub fn name(&self) -> &str {
        self.control.get("Package").unwrap_or_default()
    }

    pub fn conffiles(&self) -> Vec<String> {
        self.control_files
            .get("conffiles")
            .map(|(bytes, _)| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with('/'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Unpacks `deb`, writing its files under `unpack_dir` (flat, numbered:
/// file names never come from the archive). Device files and FIFOs, which
/// Debian packages do not ship, are refused.
pub fn unpack(deb: &Path, unpack_dir: &Path) -> Result<Deb> {
    let origin = deb.display().to_string();
    let file = File::open(deb).with_context(|| format!("cannot read {origin}"))?;
    let mut ar = ArReader::new(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("{origin} is not a Debian package"))?;
    let mut control: Option<ControlMembers> = None;
    let mut data: Option<(Vec<DataEntry>, BTreeMap<String, String>)> = None;
    while let Some(member) = ar
        .next_member()
        .with_context(|| format!("cannot read {origin}"))?
    {
        if member.name.starts_with("control.tar") {
            control = Some(
                read_control(&member.name, member.data)
                    .with_context(|| format!("cannot read {} of {origin}", member.name))?,
            );
        } else if member.name.starts_with("data.tar") {
            let Some((_, files)) = &control else {
                bail!("{origin}: data.tar comes before control.tar");
            };
            let conffiles = files
                .get("conffiles")
                .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            data = Some(
                read_data(&member.name, member.data, unpack_dir, &conffiles)
                    .with_context(|| format!("cannot unpack {} of {origin}", member.name))?,
            );
        }
    }
    let (Some((control, control_files)), Some((entries, conffile_md5))) = (control, data) else {
        bail!("{origin} has no control.tar or no data.tar member: not a Debian package");
    };
    Ok(Deb {
        control,
        control_files,
        entries,
        conffile_md5,
    })
}

type ControlMembers = (Stanza, BTreeMap<String, (Vec<u8>, bool)>);

fn read_control(name: &str, input: impl Read) -> Result<ControlMembers> {
    let mut archive = tar::Archive::new(decompressed(name, input)?);
    let mut stanza = None;
    let mut files = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let member = path.trim_start_matches("./").to_string();
        let executable = entry.header().mode()? & 0o111 != 0;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        if member == "control" {
            let text = String::from_utf8_lossy(&bytes);
            stanza = parse_stanzas(&text, "control")?.into_iter().next();
        } else if !member.contains('/') && !member.is_empty() {
            files.insert(member, (bytes, executable));
        }
    }
    let stanza = stanza.context("no control file")?;
    Ok((stanza, files))
}

fn read_data(
    name: &str,
    input: impl Read,
    unpack_dir: &Path,
    conffiles: &str,
) -> Result<(Vec<DataEntry>, BTreeMap<String, String>)> {
    let conffiles: Vec<&str> = conffiles.lines().map(str::trim).collect();
    let mut archive = tar::Archive::new(decompressed(name, input)?);
    let mut entries = Vec::new();
    let mut unpacked: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut conffile_md5 = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(
                entry
                    .link_name()?
                    .with_context(|| format!("the symlink {path} has no target"))?
                    .to_string_lossy()
                    .into_owned(),
            ),
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("the hard link {path} has no target"))?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                let source = unpacked
                    .get(&target)
                    .with_context(|| format!("the hard link {path} points to {target}, which comes later or is not a file"))?
                    .clone();
                EntryKind::File {
                    source,
                    executable: header.mode()? & 0o111 != 0,
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = header.mode()? & 0o111 != 0;
                let source = unpack_dir.join(format!("{:06}", entries.len()));
                let mut out = File::create(&source)
                    .with_context(|| format!("cannot write {}", source.display()))?;
                let absolute = format!("/{path}");
                if conffiles.contains(&absolute.as_str()) {
                    let mut hasher = Md5Writer(Md5::new(), &mut out);
                    io::copy(&mut entry, &mut hasher)?;
                    conffile_md5.insert(absolute, hex::encode(hasher.0.finalize()));
                } else {
                    io::copy(&mut entry, &mut out)?;
                }
                unpacked.insert(path.clone(), source.clone());
                EntryKind::File { source, executable }
            }
            other => bail!("{path} is a {other:?} entry, which dallinger-oci does not install"),
        };
        entries.push(DataEntry { path, kind });
    }
    Ok((entries, conffile_md5))
}

/// Writes through to a file while hashing.
struct Md5Writer<'a>(Md5, &'a mut File);

impl io::Write for Md5Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.1.write(buf)?;
        self.0.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An ar archive of `members`, as `ar` writes one for a `.deb`.
    pub(crate) fn ar_archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, bytes) in members {
            out.extend_from_slice(
                format!(
                    "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    name,
                    0,
                    0,
                    0,
                    "100644",
                    bytes.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(bytes);
            if bytes.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn ar_members_are_read_in_order_whatever_was_read_of_each() {
        let archive = ar_archive(&[
            ("debian-binary", b"2.0\n"),
            ("odd", b"abc"),
            ("last/", b"xyz!"),
        ]);
        let mut ar = ArReader::new(&archive[..]).unwrap();
        let mut first = ar.next_member().unwrap().unwrap();
        assert_eq!((first.name.as_str(), first.size), ("debian-binary", 4));
        let mut two = [0u8; 2];
        first.data.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"2.");
        // The rest of the first member and the odd member's padding are skipped.
        assert_eq!(ar.next_member().unwrap().unwrap().name, "odd");
        let mut last = ar.next_member().unwrap().unwrap();
        assert_eq!(last.name, "last");
        let mut text = String::new();
        last.data.read_to_string(&mut text).unwrap();
        assert_eq!(text, "xyz!");
        assert!(ar.next_member().unwrap().is_none());

        assert!(ArReader::new(&b"!<arch"[..]).is_err());
        assert!(ArReader::new(&b"<notar>\nxxxx"[..]).is_err());
        let mut truncated = ArReader::new(&archive[..30]).unwrap();
        assert!(truncated.next_member().is_err());
    }
}
