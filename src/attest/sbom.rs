//! `--sbom PATH`: the image's software bill of materials, SPDX 2.3 JSON
//! (`.spdx.json`) or CycloneDX 1.6 JSON (`.cdx.json`), from the
//! [`Inventory`] the build resolved. Deterministic: times are the build's
//! epoch, ids derive from the image digest, everything is in a stable order
//! and the JSON is canonical (sorted keys).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::license::{self, License};
use super::{deb_purl, is_dallinger, oci_purl, public_url, pypi_purl, Inventory, Subject};

/// The two formats, by the file name's ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Spdx,
    CycloneDx,
}

impl Format {
    /// The format `path`'s name asks for; any other ending is refused.
    pub fn from_path(path: &Path) -> Result<Format> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if name.ends_with(".spdx.json") {
            Ok(Format::Spdx)
        } else if name.ends_with(".cdx.json") {
            Ok(Format::CycloneDx)
        } else {
            bail!(
                "--sbom {}: the file name says the format: end it in .spdx.json (SPDX 2.3) or \
                 .cdx.json (CycloneDX 1.6)",
                path.display()
            )
        }
    }

    /// The media type of the document (an OCI referrer's `artifactType`).
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => "application/spdx+json",
            Format::CycloneDx => "application/vnd.cyclonedx+json",
        }
    }
}

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Base,
    Deb,
    Wheel,
    /// Dallinger's wheel.
    Framework,
    /// The sdist a wheel was built from.
    Sdist,
    /// The git commit a wheel was built from.
    Git,
}

/// One thing in the image (or a wheel's source), in neither format yet.
struct Component {
    /// Unique in the document; letters, digits, `.` and `-`.
    id: String,
    kind: Kind,
    name: String,
    version: String,
    purl: Option<String>,
    sha256: Option<String>,
    /// Where it was downloaded from (`git+URL@COMMIT` for git).
    url: Option<String>,
    license: License,
    /// The sources this was built from (ids, each a component too).
    built_from: Option<Box<Component>>,
}

/// The document's bytes: canonical JSON and a final newline.
pub fn render(
    format: Format,
    inventory: &Inventory,
    subject: &Subject,
    epoch: u64,
) -> Result<Vec<u8>> {
    if inventory.from_dockerfile {
        bail!(
            "--sbom is made from what dallinger-oci resolved, and an image built from the \
             experiment's own Dockerfile was resolved by the container engine: drop --sbom, or \
             build without the Dockerfile (system_packages and prepare_docker_image.sh)"
        );
    }
    let components = components(inventory)?;
    let created = crate::image::rfc3339(epoch)?;
    let document = match format {
        Format::Spdx => spdx(&components, subject, &created),
        Format::CycloneDx => cyclonedx(&components, subject, &created),
    };
    let mut bytes = serde_json::to_vec_pretty(&document)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes the document to `path` exclusively (temp file, fsync, rename).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write(path, bytes, 0o644)
}

fn components(inventory: &Inventory) -> Result<Vec<Component>> {
    let mut out = Vec::new();
    if let Some(base) = &inventory.base {
        out.push(Component {
            id: id("base", base.display_name(), ""),
            kind: Kind::Base,
            name: base.display_name().to_string(),
            version: base.digest.clone().unwrap_or_default(),
            purl: match (base.repository(), &base.digest) {
                (Some(repository), Some(digest)) => Some(oci_purl(&repository, digest, None)),
                _ => None,
            },
            sha256: base
                .digest
                .as_deref()
                .and_then(|d| d.strip_prefix("sha256:"))
                .map(String::from),
            url: None,
            license: License::None,
            built_from: None,
        });
    }
    for deb in inventory.debs_in_order() {
        out.push(Component {
            id: id("deb", &format!("{}-{}", deb.name, deb.arch), &deb.version),
            kind: Kind::Deb,
            name: deb.name.clone(),
            version: deb.version.clone(),
            purl: Some(deb_purl(&deb.name, &deb.version, &deb.arch)),
            sha256: Some(deb.sha256.clone()),
            url: public_url(&deb.url).map(String::from),
            license: License::None,
            built_from: None,
        });
    }
    for wheel in inventory.wheels_in_order() {
        let name = wheel.normalised.as_str();
        let built_from = match (&wheel.vcs, &wheel.sdist) {
            (Some(vcs), _) => Some(Component {
                id: id("git", name, &vcs.commit_id),
                kind: Kind::Git,
                name: wheel.name.clone(),
                version: vcs.commit_id.clone(),
                purl: None,
                sha256: None,
                url: Some(format!("git+{}@{}", vcs.url, vcs.commit_id)),
                license: License::None,
                built_from: None,
            }),
            (None, Some(sdist)) => Some(Component {
                id: id("sdist", name, &wheel.version),
                kind: Kind::Sdist,
                name: wheel.name.clone(),
                version: wheel.version.clone(),
                purl: Some(pypi_purl(name, &wheel.version)),
                sha256: Some(sdist.sha256.clone()),
                url: public_url(&sdist.url).map(String::from),
                license: License::None,
                built_from: None,
            }),
            (None, None) => None,
        };
        let license = if wheel.path.is_file() {
            license::of_wheel(&wheel.path)?
        } else {
            eprintln!(
                "warning: {} is not in the cache: its license is NOASSERTION in the SBOM",
                wheel.filename
            );
            License::None
        };
        out.push(Component {
            id: id("wheel", name, &wheel.version),
            kind: if is_dallinger(wheel) {
                Kind::Framework
            } else {
                Kind::Wheel
            },
            name: wheel.name.clone(),
            version: wheel.version.clone(),
            purl: Some(pypi_purl(name, &wheel.version)),
            sha256: Some(wheel.sha256.clone()),
            url: public_url(&wheel.url).map(String::from),
            license,
            built_from: built_from.map(Box::new),
        });
    }
    Ok(out)
}

/// A document-unique id: kind, name and version, with every character
/// that SPDX ids may not hold as `-`.
fn id(kind: &str, name: &str, version: &str) -> String {
    let text = if version.is_empty() {
        format!("{kind}-{name}")
    } else {
        format!("{kind}-{name}-{version}")
    };
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A UUID (RFC 9562 version 5, SHA-1 in the URL namespace) named by the
/// format and the image digest: the same image, the same id.
fn uuid_for(format: &str, digest: &str) -> String {
    use sha1::Digest as _;
    const URL_NAMESPACE: [u8; 16] = [
        0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30,
        0xc8,
    ];
    let mut hasher = sha1::Sha1::new();
    hasher.update(URL_NAMESPACE);
    hasher.update(format!("dallinger-oci:{format}:{digest}").as_bytes());
    let hash = hasher.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn tool() -> (&'static str, &'static str) {
    ("dallinger-oci", env!("CARGO_PKG_VERSION"))
}

// ---------------------------------------------------------------------------
// SPDX 2.3
// ---------------------------------------------------------------------------

fn spdx(components: &[Component], subject: &Subject, created: &str) -> Value {
    let image_id = "SPDXRef-Image";
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": subject.repository,
        "versionInfo": subject.digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": subject.hex()}],
        "externalRefs": [purl_ref(&subject.purl())],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id)];
    for component in components {
        let id = format!("SPDXRef-{}", component.id);
        packages.push(spdx_package(component, &id, &mut extracted));
        let kind = if component.kind == Kind::Base {
            "DESCENDANT_OF"
        } else {
            "CONTAINS"
        };
        relationships.push(relationship(image_id, kind, &id));
        if let Some(source) = &component.built_from {
            let source_id = format!("SPDXRef-{}", source.id);
            packages.push(spdx_package(source, &source_id, &mut extracted));
            relationships.push(relationship(&id, "GENERATED_FROM", &source_id));
        }
    }
    let (tool, version) = tool();
    let mut document = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", subject.repository, subject.digest),
        "documentNamespace": format!(
            "https://spdx.org/spdxdocs/{tool}/{}-{}",
            id("image", subject.repository.rsplit('/').next().unwrap_or(""), ""),
            uuid_for("spdx", &subject.digest)
        ),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: {tool}-{version}")],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        document["hasExtractedLicensingInfos"] = extracted
            .into_iter()
            .map(|(id, text)| {
                json!({
                    "licenseId": id,
                    "extractedText": text,
                    "name": first_line(&text),
                })
            })
            .collect();
    }
    document
}

fn spdx_package(c: &Component, id: &str, extracted: &mut BTreeMap<String, String>) -> Value {
    let mut package = json!({
        "SPDXID": id,
        "name": c.name,
        "downloadLocation": c.url.as_deref().unwrap_or("NOASSERTION"),
        "filesAnalyzed": false,
        "primaryPackagePurpose": match c.kind {
            Kind::Base => "CONTAINER",
            Kind::Framework => "FRAMEWORK",
            Kind::Sdist | Kind::Git => "SOURCE",
            Kind::Wheel | Kind::Deb => "LIBRARY",
        },
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": spdx_license(&c.license, extracted),
        "copyrightText": "NOASSERTION",
    });
    if !c.version.is_empty() {
        package["versionInfo"] = json!(c.version);
    }
    if let Some(sha256) = &c.sha256 {
        package["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha256}]);
    }
    if let Some(purl) = &c.purl {
        package["externalRefs"] = json!([purl_ref(purl)]);
    }
    if c.kind == Kind::Git {
        package["sourceInfo"] = json!(format!("git commit {}", c.version));
    }
    package
}

/// An SPDX expression for `license`; text becomes a `LicenseRef-` whose
/// text the document carries (`hasExtractedLicensingInfos`).
fn spdx_license(license: &License, extracted: &mut BTreeMap<String, String>) -> String {
    match license {
        License::None => "NOASSERTION".into(),
        License::Expression(expression) => {
            // A LicenseRef- of the package's own needs its text declared.
            for token in expression.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                if token.starts_with("LicenseRef-") {
                    extracted.entry(token.to_string()).or_insert_with(|| {
                        format!("{token}, as declared in the package's License-Expression")
                    });
                }
            }
            expression.clone()
        }
        License::Text(text) => {
            let digest = crate::image::store::sha256_digest(text.as_bytes());
            let id = format!("LicenseRef-{}", &digest["sha256:".len()..][..16]);
            extracted.insert(id.clone(), text.clone());
            id
        }
    }
}

fn purl_ref(purl: &str) -> Value {
    json!({
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": purl,
    })
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({
        "spdxElementId": from,
        "relationshipType": kind,
        "relatedSpdxElement": to,
    })
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

// ---------------------------------------------------------------------------
// CycloneDX 1.6
// ---------------------------------------------------------------------------

fn cyclonedx(components: &[Component], subject: &Subject, created: &str) -> Value {
    let (tool, version) = tool();
    let image_ref = "image";
    let mut depends_on = Vec::new();
    let mut entries = Vec::new();
    for component in components {
        depends_on.push(json!(component.id));
        let mut entry = cdx_component(component);
        if let Some(source) = &component.built_from {
            entry["pedigree"] = json!({"ancestors": [cdx_component(source)]});
        }
        entries.push(entry);
    }
    let mut dependencies = vec![json!({"ref": image_ref, "dependsOn": depends_on})];
    dependencies.extend(components.iter().map(|c| json!({"ref": c.id})));
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_for("cyclonedx", &subject.digest)),
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": tool, "version": version}]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": subject.repository,
                "version": subject.tag,
                "purl": subject.purl(),
                "hashes": [{"alg": "SHA-256", "content": subject.hex()}],
            },
        },
        "components": entries,
        "dependencies": dependencies,
    })
}

fn cdx_component(c: &Component) -> Value {
    let mut entry = json!({
        "type": match c.kind {
            Kind::Base => "container",
            Kind::Framework => "framework",
            Kind::Wheel | Kind::Deb | Kind::Sdist | Kind::Git => "library",
        },
        "bom-ref": c.id,
        "name": c.name,
    });
    if !c.version.is_empty() {
        entry["version"] = json!(c.version);
    }
    if let Some(purl) = &c.purl {
        entry["purl"] = json!(purl);
    }
    if let Some(sha256) = &c.sha256 {
        entry["hashes"] = json!([{"alg": "SHA-256", "content": sha256}]);
    }
    if let Some(url) = &c.url {
        let kind = if c.kind == Kind::Git {
            "vcs"
        } else {
            "distribution"
        };
        entry["externalReferences"] = json!([{"type": kind, "url": url}]);
    }
    match &c.license {
        License::None => {}
        License::Expression(expression) => {
            entry["licenses"] = json!([{"expression": expression}]);
        }
        License::Text(text) => {
            entry["licenses"] = json!([{"license": {
                "name": first_line(text),
                "text": {"content": text, "contentType": "text/plain"},
            }}]);
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_says_the_format() {
        assert_eq!(
            Format::from_path(Path::new("out/x.spdx.json")).unwrap(),
            Format::Spdx
        );
        assert_eq!(
            Format::from_path(Path::new("x.cdx.json")).unwrap(),
            Format::CycloneDx
        );
        let err = Format::from_path(Path::new("sbom.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".spdx.json") && err.contains(".cdx.json"),
            "{err}"
        );
    }

    #[test]
    fn ids_are_stable_and_uuids_well_formed() {
        assert_eq!(
            id("wheel", "zope-interface", "6.0+local"),
            "wheel-zope-interface-6.0-local"
        );
        let a = uuid_for("spdx", "sha256:00");
        assert_eq!(a, uuid_for("spdx", "sha256:00"));
        assert_ne!(a, uuid_for("spdx", "sha256:01"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
        assert!("89ab".contains(&a[19..20]));
    }

    #[test]
    fn the_same_inventory_gives_the_same_bytes() {
        let inventory = Inventory {
            base: Some(super::super::BaseEntry {
                reference: "docker://docker.io/library/python:3.12".into(),
                name: Some("docker.io/library/python:3.12".into()),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
            }),
            debs: vec![crate::plan::LockedDeb {
                name: "libpq5".into(),
                version: "15.5-0+deb12u1".into(),
                arch: "amd64".into(),
                url: "https://deb.debian.org/debian/pool/main/p/libpq5.deb".into(),
                sha256: "b".repeat(64),
                size: 1,
            }],
            ..Default::default()
        };
        let subject = Subject::new(
            "ghcr.io/lab/app:v1",
            "v1",
            &format!("sha256:{}", "c".repeat(64)),
        );
        for format in [Format::Spdx, Format::CycloneDx] {
            let one = render(format, &inventory, &subject, 946_684_800).unwrap();
            assert_eq!(
                one,
                render(format, &inventory, &subject, 946_684_800).unwrap()
            );
            let text = String::from_utf8(one).unwrap();
            assert!(
                text.contains("pkg:deb/debian/libpq5@15.5-0%2Bdeb12u1?arch=amd64"),
                "{text}"
            );
            assert!(text.contains("2000-01-01T00:00:00Z"), "{text}");
        }
    }
}
