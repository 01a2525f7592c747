//! A layer described as a sorted tree of entries, and its deterministic tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::digest::{HashingWriter, LayerDigests};
use crate::member::{BadMember, ZipMember};
use crate::{Codec, Digest, KeyHasher, LayerError};

/// Where a regular file's bytes come from. Read them with
/// [`Content::open`] (or [`Content::copy_to`]), whichever the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// Read when the layer is written; its length must not change meanwhile.
    File(PathBuf),
    /// A member of a zip archive (a wheel), inflated and checked against
    /// its sha256 as it is read (see [`ZipMember::open`]).
    ZipMember(Box<ZipMember>),
}

/// An opened [`Content`]: its length, and a reader of exactly that many
/// bytes (a read fails rather than give more, fewer or wrong ones).
pub struct ContentReader<'a> {
    len: u64,
    inner: ReaderKind<'a>,
}

enum ReaderKind<'a> {
    Bytes(&'a [u8]),
    File(ExactReader<io::Take<File>>),
    Member(Box<crate::member::MemberReader<'a>>),
}

impl ContentReader<'_> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            ReaderKind::Bytes(b) => b.read(buf),
            ReaderKind::File(f) => f.read(buf),
            ReaderKind::Member(m) => m.read(buf),
        }
    }
}

impl Content {
    /// Opens the content for reading. Every reader of a tree's file
    /// contents goes through this (the layer writer, the key, a stage that
    /// copies sources out), so each variant is read one way, with its checks.
    pub fn open(&self) -> Result<ContentReader<'_>, LayerError> {
        Ok(match self {
            Content::Bytes(bytes) => ContentReader {
                len: bytes.len() as u64,
                inner: ReaderKind::Bytes(bytes),
            },
            Content::File(source) => {
                let file = open(source)?;
                let len = file
                    .metadata()
                    .map_err(|e| LayerError::read(source, e))?
                    .len();
                ContentReader {
                    len,
                    inner: ReaderKind::File(ExactReader {
                        inner: file.take(len),
                        remaining: len,
                        source: source.clone(),
                    }),
                }
            }
            Content::ZipMember(member) => ContentReader {
                len: member.size,
                inner: ReaderKind::Member(Box::new(member.open())),
            },
        })
    }

    /// Copies the whole content to `out`, checked as [`Content::open`]
    /// reads it; returns its length.
    pub fn copy_to(&self, out: &mut impl Write) -> Result<u64, LayerError> {
        let mut reader = self.open()?;
        let mut buf = [0u8; 64 << 10];
        let mut total = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            out.write_all(&buf[..n]).map_err(LayerError::Write)?;
            total += n as u64;
        }
    }

    /// The error of a failed read of this content's reader.
    pub fn read_error(&self, e: io::Error) -> LayerError {
        if e.get_ref().is_some_and(|i| i.is::<BadMember>()) {
            let bad = e.into_inner().expect("checked").downcast::<BadMember>();
            return LayerError::BadMember(*bad.expect("checked"));
        }
        match self {
            Content::File(source) if e.kind() == io::ErrorKind::UnexpectedEof => {
                LayerError::Changed {
                    path: source.clone(),
                }
            }
            Content::File(source) => LayerError::read(source, e),
            _ => LayerError::Write(e),
        }
    }
}

/// One entry of a layer. Modes are not stored: they are normalised when
/// written (directories 0755, files 0644 or 0755, symlinks 0777).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { content: Content, executable: bool },
    Symlink { target: String },
}

/// Fixed settings of the tar stream.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Every entry's mtime (seconds since the Unix epoch).
    pub mtime: u64,
    /// Compression worker threads; 0 means one per core. Never changes the
    /// bytes.
    pub workers: usize,
    /// How the tar is compressed.
    pub codec: Codec,
}

/// A layer's entries keyed by their path inside the image, without leading or
/// trailing slash. Keys sort by bytes, which is the order they are written in;
/// every parent directory is present.
#[derive(Debug, Default, Clone)]
pub struct LayerTree {
    nodes: BTreeMap<String, Node>,
}

/// Bumped whenever the tar format changes, so cached layers made by an older
/// writer are not reused (a codec's changes change its compressor id). Part
/// of every layer cache key.
pub const FORMAT_VERSION: &str = "dallinger-oci-layers/1";

impl LayerTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn add_dir(&mut self, path: &str) -> Result<(), LayerError> {
        self.insert(path, Node::Dir)
    }

    pub fn add_file(
        &mut self,
        path: &str,
        content: Content,
        executable: bool,
    ) -> Result<(), LayerError> {
        self.insert(
            path,
            Node::File {
                content,
                executable,
            },
        )
    }

    /// Hides `path` of a lower layer: an empty `.wh.NAME` file beside it
    /// (OCI whiteout). Adding the same whiteout twice is harmless.
    pub fn add_whiteout(&mut self, path: &str) -> Result<(), LayerError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let whiteout = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        if self.get(&whiteout).is_some() {
            return Ok(());
        }
        self.add_file(&whiteout, Content::Bytes(Vec::new()), false)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), LayerError> {
        if target.is_empty() || target.contains('\0') {
            return Err(LayerError::InvalidPath {
                path: path.to_string(),
                reason: "symlink target is empty or contains NUL".into(),
            });
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds `node` at `path` and every missing parent directory. A path may be
    /// added twice only as a directory; anything else is a collision.
    fn insert(&mut self, path: &str, node: Node) -> Result<(), LayerError> {
        let path = normalise(path)?;
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir);
                }
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(LayerError::Collision {
                        path: parent,
                        reason: format!("it is a file but {path} needs it to be a directory"),
                    })
                }
            }
        }
        match (self.nodes.get(&path), &node) {
            (None, _) => {
                self.nodes.insert(path, node);
                Ok(())
            }
            (Some(Node::Dir), Node::Dir) => Ok(()),
            (Some(_), _) => Err(LayerError::Collision {
                reason: "it was added twice".into(),
                path,
            }),
        }
    }

    /// Adds everything of the tree that determines the layer's tar to
    /// `key`: paths, kinds, modes, contents, link targets (the mtime, the
    /// format and the codec are the producer's to add). Reads every file
    /// once. Equal keys mean equal layers, so a cached blob can be reused
    /// without writing the tar again.
    pub fn add_to_key(&self, key: &mut KeyHasher) -> Result<(), LayerError> {
        key.u64(self.nodes.len() as u64);
        for (path, node) in &self.nodes {
            key.str(path);
            match node {
                Node::Dir => key.str("d"),
                Node::Symlink { target } => key.str("l").str(target),
                Node::File {
                    content,
                    executable,
                } => {
                    key.str(if *executable { "x" } else { "f" });
                    match content {
                        Content::Bytes(bytes) => key.bytes(bytes),
                        // A file and a member stand by their bytes alike.
                        _ => {
                            let reader = content.open()?;
                            let len = reader.len();
                            key.stream(len, reader).map_err(|e| content.read_error(e))?
                        }
                    }
                }
            };
        }
        Ok(())
    }

    /// The key of the tree alone (see [`LayerTree::add_to_key`]).
    pub fn content_key(&self) -> Result<Digest, LayerError> {
        let mut key = KeyHasher::new();
        self.add_to_key(&mut key)?;
        Ok(key.finish())
    }

    /// Writes the tar, compressed with `options.codec`, to `sink` and returns
    /// its digests. The blob's media type is `options.codec.media_type()`.
    pub fn write<W: Write>(
        &self,
        options: &WriteOptions,
        sink: W,
    ) -> Result<(LayerDigests, W), LayerError> {
        let compressed = HashingWriter::new(sink);
        let encoder = options
            .codec
            .encoder(compressed, options.workers)
            .map_err(LayerError::Write)?;
        let mut tar = tar::Builder::new(HashingWriter::new(encoder));
        for (path, node) in &self.nodes {
            self.append(&mut tar, path, node, options.mtime)?;
        }
        let uncompressed = tar.into_inner().map_err(LayerError::Write)?;
        crate::encoder::finish_layer(uncompressed)
    }

    fn append<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        path: &str,
        node: &Node,
        mtime: u64,
    ) -> Result<(), LayerError> {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let name = match node {
            Node::Dir => format!("{path}/"),
            _ => path.to_string(),
        };
        if header.set_path(&name).is_err() {
            pax.push(("path", name.clone().into_bytes()));
            set_truncated_name(&mut header, &name);
        }
        match node {
            Node::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                write_pax(tar, &pax)?;
                header.set_cksum();
                tar.append(&header, io::empty())
                    .map_err(LayerError::Write)?;
            }
            Node::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                if header.set_link_name(target).is_err() {
                    pax.push(("linkpath", target.clone().into_bytes()));
                }
                write_pax(tar, &pax)?;
                header.set_cksum();
                tar.append(&header, io::empty())
                    .map_err(LayerError::Write)?;
            }
            Node::File {
                content,
                executable,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                let mut reader = content.open()?;
                header.set_size(reader.len());
                write_pax(tar, &pax)?;
                header.set_cksum();
                tar.append(&header, &mut reader)
                    .map_err(|e| match content {
                        Content::Bytes(_) => LayerError::Write(e),
                        // A read error of a file other than its shrinking
                        // stays a write error, as before.
                        Content::File(_) if e.kind() != io::ErrorKind::UnexpectedEof => {
                            LayerError::Write(e)
                        }
                        _ => content.read_error(e),
                    })?;
            }
        }
        Ok(())
    }
}

fn write_pax<W: Write>(
    tar: &mut tar::Builder<W>,
    records: &[(&str, Vec<u8>)],
) -> Result<(), LayerError> {
    if records.is_empty() {
        return Ok(());
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_slice())))
        .map_err(LayerError::Write)
}

/// The ustar name field of an entry whose real path is in a PAX record: its
/// first 100 bytes, as Go's archive/tar keeps a best-effort short name.
fn set_truncated_name(header: &mut tar::Header, name: &str) {
    let ustar = header.as_ustar_mut().expect("ustar header");
    let bytes = name.as_bytes();
    let n = bytes.len().min(ustar.name.len());
    ustar.name[..n].copy_from_slice(&bytes[..n]);
}

/// Fails with UnexpectedEof when the file is shorter than its header says,
/// so a file truncated during the build cannot produce a corrupt tar.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    source: PathBuf,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was read", self.source.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn open(path: &PathBuf) -> Result<File, LayerError> {
    File::open(path).map_err(|e| LayerError::read(path, e))
}

/// Checks a layer path and returns it without `./`, leading or trailing slash.
fn normalise(path: &str) -> Result<String, LayerError> {
    let invalid = |reason: &str| LayerError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(invalid("names no entry"));
    }
    if parts.contains(&"..") {
        return Err(invalid("contains '..'"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn options() -> WriteOptions {
        WriteOptions {
            mtime: 946_684_800,
            workers: 2,
            codec: Codec::Gzip,
        }
    }

    /// A fixed tree of about 9.5 MiB (several gzip blocks, three zstd
    /// frames): text-like files, an executable, a symlink, a long name and
    /// a large file of mixed text and noise.
    fn golden_tree() -> LayerTree {
        let mut state = 0x00da_1119_e0c1_u64;
        let mut bytes = |len: usize, text: bool| -> Vec<u8> {
            (0..len)
                .map(|i| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let r = (state >> 33) as u8;
                    if text || i % 11 < 6 {
                        b"def return self import layer\n    "[r as usize % 33]
                    } else {
                        r
                    }
                })
                .collect()
        };
        let mut tree = LayerTree::new();
        for i in 0..40 {
            let path = format!("srv/app/pkg{}/module{i:02}.py", i % 4);
            tree.add_file(
                &path,
                Content::Bytes(bytes(20_000 + 997 * i, true)),
                i % 9 == 0,
            )
            .unwrap();
        }
        tree.add_file(
            &format!("srv/{}/deep.txt", "long".repeat(40)),
            Content::Bytes(bytes(3000, true)),
            false,
        )
        .unwrap();
        tree.add_file(
            "opt/data/blob.bin",
            Content::Bytes(bytes(8 << 20, false)),
            false,
        )
        .unwrap();
        tree.add_symlink("usr/bin/app", "../../srv/app/pkg0/module00.py")
            .unwrap();
        tree
    }

    /// The bytes of each codec, pinned. The gzip digest is the one the
    /// writer gave before it had a codec; the zstd one is that format's
    /// first. Update one only for a deliberate format change (which must
    /// change its compressor id too), and say why in the commit.
    #[test]
    fn golden_digests() {
        let tree = golden_tree();
        for (codec, digest) in [
            (
                Codec::Gzip,
                "sha256:f944af5aa7c762103cdc703e361124b3eb616dba65844c2a805042df1a8bc0dd",
            ),
            (
                Codec::Zstd,
                "sha256:c4e4438d00c0d607f696f38542a0393a87fe033b2ec6c26417d29dcf164a8c90",
            ),
        ] {
            for workers in [1, 2, 4] {
                let options = WriteOptions {
                    workers,
                    codec,
                    ..options()
                };
                let (digests, _) = tree.write(&options, io::sink()).unwrap();
                assert_eq!(
                    digests.digest.to_string(),
                    digest,
                    "{codec} with {workers} workers"
                );
                assert_eq!(digests.uncompressed_size, 10_011_136);
            }
        }
    }

    #[test]
    fn parents_are_added_and_collisions_refused() {
        let mut tree = LayerTree::new();
        tree.add_file("a/b/c.txt", Content::Bytes(b"x".to_vec()), false)
            .unwrap();
        let keys: Vec<&str> = tree.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "a/b", "a/b/c.txt"]);
        assert!(tree
            .add_file("a/b/c.txt", Content::Bytes(vec![]), false)
            .is_err());
        assert!(tree
            .add_file("a/b/c.txt/d", Content::Bytes(vec![]), false)
            .is_err());
        assert!(tree.add_dir("../x").is_err());
        tree.add_dir("./a/b/").unwrap();
    }

    #[test]
    fn tar_entries_are_normalised_and_sorted() {
        let mut tree = LayerTree::new();
        let long = format!("d/{}", "n".repeat(150));
        tree.add_file("z.sh", Content::Bytes(b"#!/bin/sh\n".to_vec()), true)
            .unwrap();
        tree.add_file(&long, Content::Bytes(b"long".to_vec()), false)
            .unwrap();
        tree.add_symlink("d/link", "../z.sh").unwrap();
        let (digests, bytes) = tree.write(&options(), Vec::new()).unwrap();
        assert_eq!(digests.size, bytes.len() as u64);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(digests.uncompressed_size, tar_bytes.len() as u64);
        // zstd holds the same tar.
        let zstd = WriteOptions {
            codec: Codec::Zstd,
            ..options()
        };
        let (zstd_digests, zstd_bytes) = tree.write(&zstd, Vec::new()).unwrap();
        let mut zstd_tar = Vec::new();
        Codec::Zstd
            .decoder(&zstd_bytes[..])
            .read_to_end(&mut zstd_tar)
            .unwrap();
        assert_eq!(zstd_tar, tar_bytes);
        assert_eq!(zstd_digests.diff_id, digests.diff_id);
        assert_eq!(zstd_digests.size, zstd_bytes.len() as u64);
        assert_eq!(
            digests.diff_id.to_string(),
            format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))
        );
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let seen: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["d/", "d/link", long.as_str(), "z.sh"]);
        assert_eq!(seen[0].1, 0o755);
        assert_eq!(seen[1].1, 0o777);
        assert_eq!(seen[2].1, 0o644);
        assert_eq!(seen[3].1, 0o755);
        assert!(seen.iter().all(|s| s.2 == 0 && s.3 == 946_684_800));
    }

    #[test]
    fn same_tree_gives_same_bytes_and_key() {
        let build = |order: &[&str], codec: Codec| {
            let mut tree = LayerTree::new();
            for name in order {
                tree.add_file(name, Content::Bytes(name.as_bytes().to_vec()), false)
                    .unwrap();
            }
            let options = WriteOptions { codec, ..options() };
            let key = tree.content_key().unwrap();
            (tree.write(&options, Vec::new()).unwrap().1, key)
        };
        for codec in Codec::ALL {
            let built = build(&["b", "a/x", "c"], codec);
            assert_eq!(built, build(&["c", "a/x", "b"], codec));
        }
        // Another tree, another key; the codec is the producer's to add.
        assert_ne!(build(&["a"], Codec::Gzip).1, build(&["b"], Codec::Gzip).1);
        assert_eq!(build(&["a"], Codec::Gzip).1, build(&["a"], Codec::Zstd).1);
    }
}
