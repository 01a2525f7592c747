//! The archive's package lists: `InRelease` for each suite the base names,
//! verified, then `Packages` for the architecture, verified by the sha256
//! the signed `InRelease` gives.

use fs_err::File;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::base::DebianBase;
use super::control::{Stanza, StanzaReader};
use super::fetch::{fetch, get_text, Fetcher, Pinned};
use super::release::verify_in_release;

/// A binary package the archive offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub version: String,
    /// The architecture or `all`.
    pub arch: String,
    pub depends: String,
    pub pre_depends: String,
    pub provides: String,
    pub conflicts: String,
    pub breaks: String,
    /// The `.deb`: its URL, sha256 and size.
    pub deb: Pinned,
}

impl Candidate {
    fn from_stanza(stanza: &Stanza, mirror: &str) -> Option<Candidate> {
        let field = |name: &str| stanza.get(name).unwrap_or_default().to_string();
        let filename = stanza.get("Filename")?;
        Some(Candidate {
            name: stanza.get("Package")?.to_string(),
            version: stanza.get("Version")?.to_string(),
            arch: stanza.get("Architecture")?.to_string(),
            depends: field("Depends"),
            pre_depends: field("Pre-Depends"),
            provides: field("Provides"),
            conflicts: field("Conflicts"),
            breaks: field("Breaks"),
            deb: Pinned {
                url: format!("{mirror}/{}", filename.trim_start_matches('/')),
                sha256: stanza.get("SHA256")?.to_ascii_lowercase(),
                size: stanza.get("Size")?.parse().ok()?,
            },
        })
    }
}

/// Every package of the base's suites for one architecture.
#[derive(Debug, Default)]
pub struct PackageIndex {
    /// Name → candidates (all versions the suites offer).
    pub packages: BTreeMap<String, Vec<Candidate>>,
    /// Virtual name → (package, version) of the candidates providing it.
    pub providers: BTreeMap<String, Vec<(String, String)>>,
    /// The suites read, for messages: `bookworm, bookworm-updates (main)`.
    pub description: String,
}

impl PackageIndex {
    /// Adds the packages of one `Packages` file for `arch` (and `all`).
    pub fn add(
        &mut self,
        input: impl std::io::BufRead,
        mirror: &str,
        arch: &str,
        origin: &str,
    ) -> Result<()> {
        for stanza in StanzaReader::new(input, origin) {
            let stanza = stanza?;
            let Some(candidate) = Candidate::from_stanza(&stanza, mirror) else {
                continue;
            };
            if candidate.arch != arch && candidate.arch != "all" {
                continue;
            }
            for group in super::control::parse_relations(&candidate.provides).unwrap_or_default() {
                for p in group {
                    self.providers
                        .entry(p.name)
                        .or_default()
                        .push((candidate.name.clone(), candidate.version.clone()));
                }
            }
            self.packages
                .entry(candidate.name.clone())
                .or_default()
                .push(candidate);
        }
        Ok(())
    }
}

/// Debian's name for an OCI architecture.
pub fn debian_arch(platform: &str) -> Result<&'static str> {
    let parsed = crate::image::platform::Platform::parse(platform)?;
    Ok(
        match (parsed.architecture.as_str(), parsed.variant.as_deref()) {
            ("amd64", _) => "amd64",
            ("arm64", _) => "arm64",
            // Debian's armel is ARMv5 and up; armhf needs ARMv7.
            ("arm", Some("v5" | "v6")) => "armel",
            ("arm", _) => "armhf",
            ("386", _) => "i386",
            ("ppc64le", _) => "ppc64el",
            ("s390x", _) => "s390x",
            ("riscv64", _) => "riscv64",
            _ => bail!("no Debian architecture is known for the platform {platform} ({parsed})"),
        },
    )
}

/// Downloads, verifies and reads the package lists of every `deb` source
/// of the base.
pub fn load(
    fetcher: &Fetcher,
    cache_dir: &Path,
    base: &DebianBase,
    arch: &str,
) -> Result<PackageIndex> {
    let mut index = PackageIndex::default();
    let mut described = Vec::new();
    for source in &base.sources {
        let dist = format!("{}/dists/{}", source.uri, source.suite);
        let url = format!("{dist}/InRelease");
        eprintln!("Reading {url}");
        let text = get_text(fetcher, &url)?;
        let keys = base.keys_for(source)?;
        let release = verify_in_release(&text, &keys, &url)?;
        for component in &source.components {
            let stem = format!("{component}/binary-{arch}/Packages");
            let Some((path, (sha256, size))) = [".xz", ".gz", ""].iter().find_map(|ext| {
                let path = format!("{stem}{ext}");
                release.sha256.get(&path).map(|h| (path, h.clone()))
            }) else {
                bail!("{url} lists no {stem} with a SHA256: the suite {} has no {component} packages for {arch}", source.suite);
            };
            let file_url = if release.by_hash() {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dist}/{dir}/by-hash/SHA256/{sha256}")
            } else {
                format!("{dist}/{path}")
            };
            let pinned = Pinned {
                url: file_url,
                sha256,
                size,
            };
            let file = fetch(fetcher, cache_dir, &pinned)
                .with_context(|| format!("fetching {dist}/{path}"))?;
            let reader = decompress(&path, File::open(&file)?)?;
            index.add(
                BufReader::with_capacity(1 << 20, reader),
                &source.uri,
                arch,
                &format!("{dist}/{path}"),
            )?;
        }
        described.push(format!(
            "{} ({})",
            source.suite,
            source.components.join(" ")
        ));
    }
    index.description = format!(
        "{} {}",
        if base.os.pretty_name.is_empty() {
            "the base's release"
        } else {
            &base.os.pretty_name
        },
        described.join(", ")
    );
    Ok(index)
}

fn decompress(path: &str, file: File) -> Result<Box<dyn Read>> {
    let input = BufReader::with_capacity(1 << 20, file);
    Ok(if path.ends_with(".xz") {
        Box::new(lzma_rust2::XzReader::new(input, true))
    } else if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(input))
    } else {
        Box::new(input)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_for_the_architecture_and_their_provides_are_indexed() {
        let text = "Package: jq\nVersion: 1.6-2.1\nArchitecture: amd64\nDepends: libjq1 (= 1.6-2.1), libc6 (>= 2.34)\n\
            Filename: pool/main/j/jq/jq_1.6-2.1_amd64.deb\nSize: 64920\nSHA256: ABCD\n\n\
            Package: jq\nVersion: 1.6-2.1\nArchitecture: arm64\nFilename: pool/x.deb\nSize: 1\nSHA256: ef\n\n\
            Package: mawk\nVersion: 1.3.4\nArchitecture: amd64\nProvides: awk\nFilename: pool/m.deb\nSize: 2\nSHA256: 12\n\n\
            Package: tzdata\nVersion: 2024a\nArchitecture: all\nFilename: pool/t.deb\nSize: 3\nSHA256: 34\n\n\
            Package: broken\nVersion: 1\nArchitecture: amd64\n";
        let mut index = PackageIndex::default();
        index
            .add(
                text.as_bytes(),
                "http://deb.debian.org/debian",
                "amd64",
                "Packages",
            )
            .unwrap();
        assert_eq!(index.packages.len(), 3);
        let jq = &index.packages["jq"][0];
        assert_eq!(
            jq.deb.url,
            "http://deb.debian.org/debian/pool/main/j/jq/jq_1.6-2.1_amd64.deb"
        );
        assert_eq!(jq.deb.sha256, "abcd");
        assert_eq!(jq.deb.size, 64920);
        assert_eq!(index.packages["jq"].len(), 1);
        assert_eq!(
            index.providers["awk"],
            [("mawk".to_string(), "1.3.4".to_string())]
        );
        assert_eq!(debian_arch("linux/arm64").unwrap(), "arm64");
        assert!(debian_arch("linux/mips").is_err());
        assert_eq!(debian_arch("linux/arm").unwrap(), "armhf");
        assert_eq!(debian_arch("linux/arm/v7").unwrap(), "armhf");
        assert_eq!(debian_arch("linux/arm/v5").unwrap(), "armel");
        assert_eq!(debian_arch("linux/arm64/v8").unwrap(), "arm64");
    }
}
