//! The Debian side of the base image, read from its layers (never the
//! host): release, apt sources, keyrings, dpkg status and symlinks.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use pgp::composed::SignedPublicKey;

use super::control::{parse_relations, parse_stanzas, Stanza};
use super::release::{
    parse_os_release, parse_sources_deb822, parse_sources_list, read_keyring, AptSource, OsRelease,
    SignedBy,
};
use crate::image::store::BlobStore;
use crate::image::ImageLayer;
use crate::python::target::{scan_layers_with, BaseFiles};

pub const STATUS: &str = "var/lib/dpkg/status";

/// Paths of the base we read.
fn wanted(path: &str, is_symlink: bool) -> (bool, bool) {
    let read = path == "etc/os-release"
        || path == "usr/lib/os-release"
        || path == STATUS
        || path == "etc/apt/sources.list"
        || path == "etc/apt/trusted.gpg"
        || (path.starts_with("etc/apt/sources.list.d/")
            && (path.ends_with(".list") || path.ends_with(".sources")))
        || path.starts_with("etc/apt/trusted.gpg.d/")
        || path.starts_with("etc/apt/keyrings/")
        || path.starts_with("usr/share/keyrings/");
    // Every symlink: a package's `lib/…` must go where the base's `lib`
    // symlink points (merged /usr), as dpkg follows it on disk.
    (read || is_symlink, read)
}

/// A package dpkg has installed in the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    pub arch: String,
}

/// The base as the Debian stage needs it.
pub struct DebianBase {
    pub os: OsRelease,
    pub sources: Vec<AptSource>,
    /// The status file as it is, to be extended.
    pub status_text: String,
    pub installed: BTreeMap<String, Installed>,
    /// Virtual package → versions provided by installed packages (`None`
    /// for an unversioned Provides).
    pub provided: BTreeMap<String, Vec<Option<String>>>,
    files: BaseFiles,
}

impl DebianBase {
    /// Reads the base layers once, then from the cache under their digests.
    pub fn read(store: &BlobStore, layers: &[ImageLayer]) -> Result<DebianBase> {
        let mut key = String::from("debian-base/1\n");
        for layer in layers {
            key.push_str(&layer.blob.digest);
            key.push('\n');
        }
        let files = crate::image::memoised(store, "debian-base", &key, || {
            scan_layers_with(&crate::image::layer_files(store, layers)?, &wanted)
        })?;
        DebianBase::from_files(files)
    }

    fn from_files(files: BaseFiles) -> Result<DebianBase> {
        let os_text = files
            .texts
            .get("etc/os-release")
            .or_else(|| files.texts.get("usr/lib/os-release"))
            .context("the base image has no /etc/os-release, so its Debian release is unknown: system_packages needs a Debian-based base")?;
        let os = parse_os_release(os_text);
        let mut sources = Vec::new();
        if let Some(text) = files.texts.get("etc/apt/sources.list") {
            sources.extend(parse_sources_list(text, "/etc/apt/sources.list")?);
        }
        for (path, text) in files.texts.range("etc/apt/sources.list.d/".to_string()..) {
            if !path.starts_with("etc/apt/sources.list.d/") {
                break;
            }
            let origin = format!("/{path}");
            if path.ends_with(".list") {
                sources.extend(parse_sources_list(text, &origin)?);
            } else if path.ends_with(".sources") {
                sources.extend(parse_sources_deb822(text, &origin)?);
            }
        }
        if sources.is_empty() {
            bail!(
                "the base image ({}) has no apt sources (/etc/apt/sources.list or sources.list.d/): system_packages needs a Debian base that names its archive",
                os.pretty_name
            );
        }
        let status_text = files.texts.get(STATUS).cloned().unwrap_or_default();
        let mut installed = BTreeMap::new();
        let mut provided: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for stanza in parse_stanzas(&status_text, "/var/lib/dpkg/status")? {
            if !is_installed(&stanza) {
                continue;
            }
            let (Some(name), Some(version)) = (stanza.get("Package"), stanza.get("Version")) else {
                continue;
            };
            for group in parse_relations(stanza.get("Provides").unwrap_or_default())? {
                for p in group {
                    provided
                        .entry(p.name)
                        .or_default()
                        .push(p.version.map(|(_, v)| v));
                }
            }
            installed.insert(
                name.to_string(),
                Installed {
                    version: version.to_string(),
                    arch: stanza.get("Architecture").unwrap_or_default().to_string(),
                },
            );
        }
        Ok(DebianBase {
            os,
            sources,
            status_text,
            installed,
            provided,
            files,
        })
    }

    /// The keys that may sign `source`'s InRelease, as apt chooses them.
    pub fn keys_for(&self, source: &AptSource) -> Result<Vec<SignedPublicKey>> {
        let mut keys = Vec::new();
        match &source.signed_by {
            SignedBy::Inline(text) => keys.extend(read_keyring(text.as_bytes(), "Signed-By")?),
            SignedBy::Files(files) => {
                for file in files {
                    let bytes = self.file_bytes(file).with_context(|| {
                        format!("the apt source {} names the keyring /{file} (Signed-By), which is not in the base image", source.uri)
                    })?;
                    keys.extend(read_keyring(bytes, &format!("/{file}"))?);
                }
            }
            SignedBy::Trusted => {
                for (path, bytes) in self.all_bytes() {
                    let trusted = path == "etc/apt/trusted.gpg"
                        || (path.starts_with("etc/apt/trusted.gpg.d/")
                            && (path.ends_with(".gpg") || path.ends_with(".asc")));
                    if trusted {
                        keys.extend(read_keyring(bytes, &format!("/{path}"))?);
                    }
                }
            }
        }
        Ok(keys)
    }

    fn file_bytes(&self, path: &str) -> Option<&[u8]> {
        let resolved = self.resolve(path, true);
        self.files
            .binaries
            .get(&resolved)
            .map(Vec::as_slice)
            .or_else(|| self.files.texts.get(&resolved).map(|t| t.as_bytes()))
    }

    fn all_bytes(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files
            .binaries
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .chain(
                self.files
                    .texts
                    .iter()
                    .map(|(p, t)| (p.as_str(), t.as_bytes())),
            )
    }

    /// `path` (no leading `/`) with the base's symlinks followed: in every
    /// directory on the way, and in the last component when `last` is set.
    pub fn resolve(&self, path: &str, last: bool) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    parts.pop();
                    continue;
                }
                _ => {}
            }
            parts.push(part);
            let is_last = pending.iter().all(|p| p.is_empty() || p == ".");
            if is_last && !last {
                break;
            }
            let here = parts.join("/");
            let Some(target) = self.files.links.get(&here) else {
                continue;
            };
            hops += 1;
            if hops > 40 {
                break;
            }
            parts.pop();
            if target.starts_with('/') {
                parts.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_string));
        }
        parts.join("/")
    }
}

#[cfg(test)]
impl DebianBase {
    /// A bookworm base with `status` as its dpkg status.
    pub(crate) fn for_tests(status: &str) -> DebianBase {
        let mut files = BaseFiles::default();
        for (path, text) in [
            ("etc/os-release", "ID=debian\nVERSION_CODENAME=bookworm\n"),
            ("etc/apt/sources.list", "deb http://m bookworm main\n"),
            (STATUS, status),
        ] {
            files.texts.insert(path.to_string(), text.to_string());
        }
        DebianBase::from_files(files).unwrap()
    }
}

/// `Status: install ok installed` (or `hold ok installed`).
fn is_installed(stanza: &Stanza) -> bool {
    stanza
        .get("Status")
        .is_some_and(|s| s.split_whitespace().last() == Some("installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(links: &[(&str, &str)], texts: &[(&str, &str)]) -> Result<DebianBase> {
        let mut files = BaseFiles::default();
        for (p, t) in links {
            files.links.insert(p.to_string(), t.to_string());
        }
        for (p, t) in texts {
            files.texts.insert(p.to_string(), t.to_string());
        }
        DebianBase::from_files(files)
    }

    #[test]
    fn status_sources_and_merged_usr_links_are_read() {
        let b = base(
            &[("lib", "usr/lib"), ("lib64", "usr/lib64"), ("etc/os-release", "../usr/lib/os-release"), ("var/run", "/run")],
            &[
                ("usr/lib/os-release", "ID=debian\nVERSION_CODENAME=bookworm\n"),
                ("etc/apt/sources.list", "deb http://deb.debian.org/debian bookworm main\n"),
                (
                    "etc/apt/sources.list.d/extra.sources",
                    "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n",
                ),
                (
                    STATUS,
                    "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
                     Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                     Package: mawk\nStatus: install ok installed\nVersion: 1.3.4\nProvides: awk\n",
                ),
            ],
        )
        .unwrap();
        assert_eq!(b.os.codename, "bookworm");
        assert_eq!(b.sources.len(), 2);
        assert_eq!(b.sources[1].suite, "bookworm-security");
        assert_eq!(b.installed["libc6"].version, "2.36-9");
        assert!(!b.installed.contains_key("gone"));
        assert_eq!(b.provided["awk"], [None]);
        assert_eq!(
            b.resolve("lib/x86_64-linux-gnu/libonig.so.5", false),
            "usr/lib/x86_64-linux-gnu/libonig.so.5"
        );
        assert_eq!(b.resolve("lib", false), "lib");
        assert_eq!(b.resolve("lib", true), "usr/lib");
        assert_eq!(b.resolve("var/run/x", false), "run/x");
        assert_eq!(b.resolve("./usr/bin/jq", false), "usr/bin/jq");

        let err = base(&[], &[]).err().unwrap().to_string();
        assert!(err.contains("os-release"), "{err}");
        let err = base(&[], &[("etc/os-release", "ID=debian\n")])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no apt sources"), "{err}");
    }
}
