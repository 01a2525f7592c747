//! One layer's tar read once, as it streams: every path with its type,
//! mode, owner, size, content sha256, link target and mtime, and the
//! package records (wheel RECORD files, dpkg `.list` files) found in it.
//! No content is kept beyond the small records.

use std::collections::BTreeMap;
use std::io::{self, Read};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::python::target::normalise_join;

/// What a layer says about one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathInfo {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// `sha256:HEX` of a regular file's content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's or hard link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub mtime: u64,
}

/// A package that owns paths.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    /// `wheel` or `deb`.
    pub kind: &'static str,
    /// The normalised name (PEP 503 for wheels).
    pub name: String,
    /// A wheel's version (from its `.dist-info` directory's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Everything read from one layer.
#[derive(Debug, Default)]
pub struct Listing {
    pub paths: BTreeMap<String, PathInfo>,
    /// Paths named by the package records in this layer.
    pub owners: BTreeMap<String, Package>,
    /// `.dist-info` directories (path → package), for their own files.
    pub dist_infos: BTreeMap<String, Package>,
}

/// More entries than this in one layer is refused (the listing is kept).
const MAX_ENTRIES: usize = 4_000_000;
/// Package records larger than this are not read (a wheel's RECORD or a
/// package's `.list` is a few hundred KiB at most).
const MAX_RECORD: u64 = 32 << 20;

/// Reads the tar `tar` (already decompressed) to its end.
pub fn read_tar(tar: impl Read) -> Result<Listing> {
    let mut archive = tar::Archive::new(tar);
    let mut listing = Listing::default();
    let entries = archive.entries().context("not a tar archive")?;
    for entry in entries {
        let mut entry = entry.context("a malformed tar entry")?;
        if listing.paths.len() >= MAX_ENTRIES {
            bail!("more than {MAX_ENTRIES} entries: refusing to list it");
        }
        let path = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        let header = entry.header();
        let kind = kind_name(header.entry_type());
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let (mode, uid, gid, mtime) = (
            header.mode().unwrap_or(0) & 0o7777,
            header.uid().unwrap_or(0),
            header.gid().unwrap_or(0),
            header.mtime().unwrap_or(0),
        );
        let size = entry.size();
        let regular = header.entry_type().is_file();
        let keep = regular && size <= MAX_RECORD && is_record(&path);
        let mut kept = Vec::new();
        let sha256 = if regular {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = entry
                    .read(&mut buf)
                    .with_context(|| format!("cannot read {path}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            Some(format!("sha256:{}", hex::encode(hasher.finalize())))
        } else {
            None
        };
        if keep {
            listing.read_record(&path, &String::from_utf8_lossy(&kept));
        }
        listing.paths.insert(
            path,
            PathInfo {
                kind,
                mode,
                uid,
                gid,
                size: if regular { size } else { 0 },
                sha256,
                link: link.map(|l| if kind == "hardlink" { normalise(&l) } else { l }),
                mtime,
            },
        );
    }
    Ok(listing)
}

impl Listing {
    fn read_record(&mut self, path: &str, text: &str) {
        if let Some(dist_info) = path.strip_suffix("/RECORD") {
            let Some(package) = wheel_of(dist_info) else {
                return;
            };
            let site = dist_info.rsplit_once('/').map_or("", |(dir, _)| dir);
            for line in text.lines() {
                // RECORD is CSV; a path with a comma is quoted.
                let file = match line.strip_prefix('"') {
                    Some(rest) => rest.split_once('"').map_or(rest, |(p, _)| p),
                    None => line.split(',').next().unwrap_or(""),
                };
                if file.is_empty() {
                    continue;
                }
                self.owners
                    .insert(normalise_join(site, file), package.clone());
            }
            self.dist_infos.insert(dist_info.to_string(), package);
        } else if let Some(name) = dpkg_list_name(path) {
            let package = Package {
                kind: "deb",
                name: name.to_string(),
                version: None,
            };
            for line in text.lines() {
                let file = normalise(line);
                if !file.is_empty() {
                    self.owners.insert(file, package.clone());
                }
            }
        }
    }
}

/// The wheel a `.dist-info` directory is: `NAME-VERSION.dist-info`.
fn wheel_of(dist_info: &str) -> Option<Package> {
    let dir = dist_info.rsplit('/').next()?;
    let stem = dir.strip_suffix(".dist-info")?;
    let (name, version) = stem.split_once('-')?;
    Some(Package {
        kind: "wheel",
        name: normalise_name(name),
        version: Some(version.to_string()),
    })
}

/// PEP 503: lowercase, runs of `-_.` as one `-`.
fn normalise_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if "-_.".contains(c) {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `var/lib/dpkg/info/NAME[:ARCH].list` → NAME.
fn dpkg_list_name(path: &str) -> Option<&str> {
    let file = path.strip_prefix("var/lib/dpkg/info/")?;
    let stem = file.strip_suffix(".list")?;
    (!stem.contains('/')).then(|| stem.split(':').next().unwrap_or(stem))
}

fn is_record(path: &str) -> bool {
    path.ends_with(".dist-info/RECORD") || dpkg_list_name(path).is_some()
}

/// A tar path as the image's filesystem has it: no `./`, `/` or trailing `/`.
pub fn normalise(path: &str) -> String {
    let trimmed = path.trim_start_matches("./").trim_start_matches('/');
    let trimmed = trimmed.trim_end_matches('/');
    if trimmed == "." {
        String::new()
    } else {
        trimmed.to_string()
    }
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    use tar::EntryType::*;
    match kind {
        Regular | Continuous => "file",
        Directory => "directory",
        Symlink => "symlink",
        Link => "hardlink",
        Char => "character device",
        Block => "block device",
        Fifo => "fifo",
        _ => "other",
    }
}

/// Who owns each path, from the records of every layer read of one image.
#[derive(Debug, Default)]
pub struct Owners {
    paths: BTreeMap<String, Package>,
    dist_infos: BTreeMap<String, Package>,
}

impl Owners {
    pub fn add(&mut self, listing: &Listing) {
        self.paths
            .extend(listing.owners.iter().map(|(p, k)| (p.clone(), k.clone())));
        self.dist_infos.extend(
            listing
                .dist_infos
                .iter()
                .map(|(p, k)| (p.clone(), k.clone())),
        );
    }

    /// The package `path` belongs to: named by a record, inside a
    /// `.dist-info`, or the bytecode of a module a record names.
    pub fn of(&self, path: &str) -> Option<&Package> {
        if let Some(p) = self.paths.get(path).or_else(|| self.dist_infos.get(path)) {
            return Some(p);
        }
        let mut dir = path;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if parent.ends_with(".dist-info") {
                return self.dist_infos.get(parent);
            }
            dir = parent;
        }
        let (parent, file) = path.rsplit_once("/__pycache__/")?;
        let module = file.split('.').next()?;
        self.paths.get(&format!("{parent}/{module}.py"))
    }
}

/// A reader that hashes what passes through it and remembers whether the
/// source failed (a broken connection, as opposed to bad content).
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    pub count: u64,
    pub source_failed: bool,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
            source_failed: false,
        }
    }

    /// Reads what is left, then gives `sha256:HEX` of everything.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.source_failed = true;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(7);
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn paths_and_their_packages() {
        let record =
            "tiny/__init__.py,sha256=x,3\n../../../bin/tiny,,\nTiny_Pkg-2.0.dist-info/RECORD,,\n";
        let tar = tar_of(&[
            ("./usr/lib/python3/site-packages/tiny/__init__.py", b"x=1"),
            (
                "usr/lib/python3/site-packages/Tiny_Pkg-2.0.dist-info/RECORD",
                record.as_bytes(),
            ),
            (
                "var/lib/dpkg/info/libfoo1:amd64.list",
                b"/.\n/usr/lib/libfoo.so.1\n",
            ),
        ]);
        let listing = read_tar(&tar[..]).unwrap();
        let info = &listing.paths["usr/lib/python3/site-packages/tiny/__init__.py"];
        assert_eq!(info.kind, "file");
        assert_eq!((info.mode, info.size, info.mtime), (0o644, 3, 7));
        assert_eq!(
            info.sha256.as_deref(),
            Some(format!("sha256:{}", hex::encode(Sha256::digest(b"x=1"))).as_str())
        );
        let mut owners = Owners::default();
        owners.add(&listing);
        let wheel = owners
            .of("usr/lib/python3/site-packages/tiny/__init__.py")
            .unwrap();
        assert_eq!(
            (wheel.kind, wheel.name.as_str(), wheel.version.as_deref()),
            ("wheel", "tiny-pkg", Some("2.0"))
        );
        assert_eq!(owners.of("usr/bin/tiny"), Some(wheel));
        assert_eq!(
            owners.of("usr/lib/python3/site-packages/tiny/__pycache__/__init__.cpython-311.pyc"),
            Some(wheel)
        );
        assert_eq!(
            owners.of("usr/lib/python3/site-packages/Tiny_Pkg-2.0.dist-info/INSTALLER"),
            Some(wheel)
        );
        assert_eq!(owners.of("usr/lib/libfoo.so.1").unwrap().name, "libfoo1");
        assert_eq!(owners.of("etc/passwd"), None);
    }

    #[test]
    fn malformed_tars_are_errors_not_panics() {
        let mut tar = tar_of(&[("a", b"hello")]);
        tar[148..156].copy_from_slice(b"garbage!");
        let err = read_tar(&tar[..]).unwrap_err();
        assert!(format!("{err:#}").contains("malformed"), "{err:#}");
        // Cut short inside a file's content.
        let tar = tar_of(&[("a", &[7u8; 5000])]);
        assert!(read_tar(&tar[..1500]).is_err());
    }
}
