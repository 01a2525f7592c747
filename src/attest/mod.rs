//! What a build resolved, told to others: an SBOM (SPDX 2.3 or CycloneDX
//! 1.6 JSON, [`sbom`]) and an in-toto statement of SLSA provenance
//! ([`provenance`]), both made from the lock and the build's own
//! resolution — never from scanning the image — so the same inputs give the
//! same bytes. [`Inventory`] is what the build hands over.

pub mod license;
pub mod provenance;
pub mod sbom;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::plan::LockedDeb;
use crate::python::ResolvedWheel;

/// What went into an image besides the experiment's own files, as the
/// build resolved it: the base, every wheel, every `.deb`, and the inputs
/// that decided them. Filled by `build::build`.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// `None` for a scratch base.
    pub base: Option<BaseEntry>,
    /// Installed wheels, sorted by normalised name (Dallinger among them).
    pub wheels: Vec<ResolvedWheel>,
    /// The `.deb` files of `system_packages`, in the lock's order.
    pub debs: Vec<LockedDeb>,
    /// The experiment's git repository and commit, when it is in one.
    pub source: Option<SourceEntry>,
    /// sha256 (hex) of the lock file the build followed, when there is one.
    pub lock_sha256: Option<String>,
    /// The options that change the image's bytes, by name.
    pub parameters: BTreeMap<String, Value>,
    /// The image came from the experiment's own Dockerfile: a container
    /// engine resolved its contents, not dallinger-oci.
    pub from_dockerfile: bool,
}

impl Inventory {
    /// The `.deb`s by name, architecture and version: the documents' order.
    pub fn debs_in_order(&self) -> Vec<&LockedDeb> {
        let mut debs: Vec<&LockedDeb> = self.debs.iter().collect();
        debs.sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
        debs
    }

    /// The wheels by normalised name and version: the documents' order.
    pub fn wheels_in_order(&self) -> Vec<&ResolvedWheel> {
        let mut wheels: Vec<&ResolvedWheel> = self.wheels.iter().collect();
        wheels.sort_by(|a, b| (&a.normalised, &a.version).cmp(&(&b.normalised, &b.version)));
        wheels
    }
}

/// The base image.
#[derive(Debug, Clone)]
pub struct BaseEntry {
    /// As configured, without host paths (`docker://…`, `oci:DIR:TAG`, …).
    pub reference: String,
    /// `org.opencontainers.image.base.name`, when the base has a portable name.
    pub name: Option<String>,
    /// Its manifest digest (`sha256:…`), when it has one.
    pub digest: Option<String>,
}

impl BaseEntry {
    /// The name to show: the portable name, else the reference.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.reference)
    }

    /// A registry base, as `HOST/REPO` (no tag or digest), for its purl.
    pub fn repository(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        let reference = crate::registry::Reference::parse(name).ok()?;
        Some(reference.name())
    }
}

/// The experiment's source, from its git checkout.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// `remote.origin.url` without credentials.
    pub url: Option<String>,
    /// The commit, 40 hex.
    pub revision: String,
}

/// The image an SBOM or statement is about.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `HOST/REPO` (or a local build's repository name), no tag.
    pub repository: String,
    pub tag: String,
    /// The manifest digest, `sha256:HEX`.
    pub digest: String,
}

impl Subject {
    /// The subject of an image named `REPOSITORY:TAG` with this digest;
    /// a name on a registry as it is pushed (ghcr.io's lowercased).
    pub fn new(image_name: &str, tag: &str, digest: &str) -> Subject {
        use crate::registry::Reference;
        let pushed = Reference::names_registry_host(image_name)
            .then(|| Reference::parse(image_name).ok())
            .flatten();
        let repository = match pushed {
            Some(target) => target.name(),
            None => image_name
                .strip_suffix(tag)
                .and_then(|r| r.strip_suffix(':'))
                .unwrap_or(image_name)
                .to_string(),
        };
        Subject {
            repository,
            tag: tag.to_string(),
            digest: digest.to_string(),
        }
    }

    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// `pkg:oci/NAME@sha256%3AHEX?repository_url=HOST/REPO&tag=TAG`.
    pub fn purl(&self) -> String {
        oci_purl(&self.repository, &self.digest, Some(&self.tag))
    }
}

/// The purl of an OCI image: its last path segment as the name, the
/// repository as `repository_url`.
pub fn oci_purl(repository: &str, digest: &str, tag: Option<&str>) -> String {
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let mut purl = format!(
        "pkg:oci/{}@{}?repository_url={}",
        purl_escape(&name.to_lowercase()),
        purl_escape(digest),
        purl_escape(repository)
    );
    if let Some(tag) = tag {
        purl.push_str("&tag=");
        purl.push_str(&purl_escape(tag));
    }
    purl
}

/// `pkg:pypi/NAME@VERSION`: the name lowercased with `_` as `-`, as the
/// purl spec has it for PyPI.
pub fn pypi_purl(name: &str, version: &str) -> String {
    format!(
        "pkg:pypi/{}@{}",
        purl_escape(&name.to_lowercase().replace(['_', '.'], "-")),
        purl_escape(version)
    )
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH`.
pub fn deb_purl(name: &str, version: &str, arch: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_escape(name),
        purl_escape(version),
        purl_escape(arch)
    )
}

/// Percent-encodes what a purl component may not hold as is (`:`, `+`,
/// `@`, `?`, `#`, …); `/` too, as in the repository_url qualifier it is
/// kept for readability by most tools but never needed.
fn purl_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An `http(s)` URL, or `None`: a local path (`--find-links`, the cache) is
/// the builder's and never goes into a document.
pub fn public_url(url: &str) -> Option<&str> {
    (url.starts_with("https://") || url.starts_with("http://")).then_some(url)
}

/// sha256 (hex) of the lock file next to `config.txt`, if there is one.
pub fn lock_sha256(experiment_dir: &Path) -> Result<Option<String>> {
    let path = crate::plan::Lock::path(experiment_dir);
    match fs_err::read(&path) {
        Ok(bytes) => Ok(Some(
            crate::image::store::sha256_digest(&bytes)
                .trim_start_matches("sha256:")
                .to_string(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The package Dallinger is published as.
pub fn is_dallinger(wheel: &ResolvedWheel) -> bool {
    wheel.normalised.as_str() == "dallinger"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_escape_what_the_spec_reserves() {
        assert_eq!(
            pypi_purl("Flask_Login", "0.6.3"),
            "pkg:pypi/flask-login@0.6.3"
        );
        assert_eq!(
            pypi_purl("torch", "2.1.0+cpu"),
            "pkg:pypi/torch@2.1.0%2Bcpu"
        );
        assert_eq!(
            deb_purl("libpq5", "1:15.5-0+deb12u1", "amd64"),
            "pkg:deb/debian/libpq5@1%3A15.5-0%2Bdeb12u1?arch=amd64"
        );
        let ghcr = Subject::new("ghcr.io/Lab/App:v1", "v1", "sha256:ab");
        assert_eq!(ghcr.repository, "ghcr.io/lab/app");
        assert_eq!(
            Subject::new("golden:t", "t", "sha256:ab").repository,
            "golden"
        );
        let subject = Subject::new("127.0.0.1:5000/lab/app:v1", "v1", "sha256:ab");
        assert_eq!(subject.repository, "127.0.0.1:5000/lab/app");
        assert_eq!(
            subject.purl(),
            "pkg:oci/app@sha256%3Aab?repository_url=127.0.0.1%3A5000/lab/app&tag=v1"
        );
    }

    #[test]
    fn only_public_urls_are_told() {
        assert_eq!(public_url("https://x/y.whl"), Some("https://x/y.whl"));
        assert_eq!(public_url("/var/cache/lab/wheels/y.whl"), None);
    }
}
