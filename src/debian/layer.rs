//! The Debian packages' layer: their files, and dpkg's database extended
//! as dpkg would after `dpkg --unpack` and `--configure`, so `dpkg -l` and
//! `dpkg -s` inside the image show them. Maintainer scripts are not run.

use anyhow::{Context, Result};
use dallinger_oci_layers::{Content, LayerError, LayerTree};

use super::base::{DebianBase, STATUS};
use super::control::{parse_stanzas, Stanza};
use super::deb::{Deb, EntryKind};

/// dpkg's order of the fields it knows (`fieldinfos` in lib/dpkg/parse.c);
/// the others follow in the order the control file has them.
const DPKG_FIELD_ORDER: &[&str] = &[
    "Package",
    "Essential",
    "Protected",
    "Status",
    "Priority",
    "Section",
    "Installed-Size",
    "Origin",
    "Maintainer",
    "Bugs",
    "Architecture",
    "Multi-Arch",
    "Source",
    "Version",
    "Config-Version",
    "Replaces",
    "Provides",
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Breaks",
    "Conflicts",
    "Enhances",
    "Conffiles",
    "Description",
    "Triggers-Pending",
    "Triggers-Awaited",
];

/// Adds the unpacked packages and the updated dpkg database to `tree`.
pub fn add_packages(tree: &mut LayerTree, base: &DebianBase, debs: &[Deb]) -> Result<()> {
    let mut stanzas = parse_stanzas(&base.status_text, "/var/lib/dpkg/status")?;
    for deb in debs {
        let name = deb.name().to_string();
        let collide = |e: LayerError| -> anyhow::Error {
            match e {
                LayerError::Collision { path, .. } => anyhow::anyhow!(
                    "{name} installs /{path}, which another of the system_packages installs too; install one of them only"
                ),
                other => anyhow::Error::from(other).context(format!("unpacking {name}")),
            }
        };
        let mut list = String::from("/.\n");
        for entry in &deb.entries {
            list.push('/');
            list.push_str(&entry.path);
            list.push('\n');
            match &entry.kind {
                EntryKind::Dir => {
                    let resolved = base.resolve(&entry.path, true);
                    if !resolved.is_empty() {
                        tree.add_dir(&resolved).map_err(collide)?;
                    }
                }
                EntryKind::File { source, executable } => tree
                    .add_file(
                        &base.resolve(&entry.path, false),
                        Content::File(source.clone()),
                        *executable,
                    )
                    .map_err(collide)?,
                EntryKind::Symlink(target) => tree
                    .add_symlink(&base.resolve(&entry.path, false), target)
                    .map_err(collide)?,
            }
        }
        let info = info_name(&deb.control);
        let info_dir = "var/lib/dpkg/info";
        tree.add_file(
            &format!("{info_dir}/{info}.list"),
            Content::Bytes(list.into_bytes()),
            false,
        )
        .map_err(collide)?;
        for (member, (bytes, executable)) in &deb.control_files {
            tree.add_file(
                &format!("{info_dir}/{info}.{member}"),
                Content::Bytes(bytes.clone()),
                *executable,
            )
            .map_err(collide)?;
        }
        stanzas.retain(|s| {
            s.get("Package") != Some(name.as_str())
                || s.get("Architecture") != deb.control.get("Architecture")
        });
        stanzas.push(status_stanza(deb));
    }
    // dpkg keeps its status sorted by name, then architecture.
    stanzas.sort_by(|a, b| {
        (a.get("Package"), a.get("Architecture")).cmp(&(b.get("Package"), b.get("Architecture")))
    });
    let status: String = stanzas.iter().map(|s| s.to_text() + "\n").collect();
    tree.add_file(STATUS, Content::Bytes(status.into_bytes()), false)
        .context("writing the dpkg status")?;
    Ok(())
}

/// The name of a package's files in `/var/lib/dpkg/info`: `pkg`, or
/// `pkg:arch` for `Multi-Arch: same` packages, as dpkg names them.
fn info_name(control: &Stanza) -> String {
    let name = control.get("Package").unwrap_or_default();
    match (control.get("Multi-Arch"), control.get("Architecture")) {
        (Some("same"), Some(arch)) => format!("{name}:{arch}"),
        _ => name.to_string(),
    }
}

/// The package's status stanza: its control fields in dpkg's order, with
/// `Status: install ok installed` and its conffiles' MD5s.
fn status_stanza(deb: &Deb) -> Stanza {
    let mut fields: Vec<(String, String)> = deb.control.fields.clone();
    fields
        .retain(|(k, _)| !k.eq_ignore_ascii_case("Status") && !k.eq_ignore_ascii_case("Conffiles"));
    fields.push(("Status".into(), "install ok installed".into()));
    let conffiles = deb.conffiles();
    if !conffiles.is_empty() {
        let lines: String = conffiles
            .iter()
            .map(|c| {
                let md5 = deb
                    .conffile_md5
                    .get(c)
                    .map_or("newconffile", String::as_str);
                format!("\n {c} {md5}")
            })
            .collect();
        fields.push(("Conffiles".into(), lines));
    }
    let rank = |k: &str| {
        DPKG_FIELD_ORDER
            .iter()
            .position(|f| f.eq_ignore_ascii_case(k))
            .unwrap_or(DPKG_FIELD_ORDER.len())
    };
    // Stable: unknown fields keep their order, after the known ones.
    fields.sort_by_key(|(k, _)| rank(k));
    Stanza { fields }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn packages_and_their_dpkg_records_go_into_the_tree() {
        let base = DebianBase::for_tests(
            "Package: zlib1g\nStatus: install ok installed\nVersion: 1\nDescription: z \n\nPackage: base-files\nStatus: install ok installed\nVersion: 12\n",
        );
        let control = parse_stanzas(
            "Package: libjq1\nVersion: 1.6-2.1\nArchitecture: amd64\nMaintainer: M <m@example.test>\nInstalled-Size: 10\nDepends: libc6\nSection: libs\nPriority: optional\nMulti-Arch: same\nHomepage: https://example.test\nDescription: lib\n long\n",
            "control",
        )
        .unwrap()
        .remove(0);
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join("000002");
        std::fs::write(&so, b"ELF").unwrap();
        let deb = Deb {
            control,
            control_files: BTreeMap::from([
                (
                    "md5sums".to_string(),
                    (b"abc  usr/lib/libjq.so.1\n".to_vec(), false),
                ),
                ("postinst".to_string(), (b"#!/bin/sh\n".to_vec(), true)),
            ]),
            entries: vec![
                super::super::deb::DataEntry {
                    path: "usr".into(),
                    kind: EntryKind::Dir,
                },
                super::super::deb::DataEntry {
                    path: "usr/lib".into(),
                    kind: EntryKind::Dir,
                },
                super::super::deb::DataEntry {
                    path: "usr/lib/libjq.so.1.0.4".into(),
                    kind: EntryKind::File {
                        source: so,
                        executable: false,
                    },
                },
                super::super::deb::DataEntry {
                    path: "usr/lib/libjq.so.1".into(),
                    kind: EntryKind::Symlink("libjq.so.1.0.4".into()),
                },
            ],
            conffile_md5: BTreeMap::new(),
        };
        let mut tree = LayerTree::new();
        add_packages(&mut tree, &base, &[deb]).unwrap();
        let bytes = |path: &str| match tree.get(path) {
            Some(dallinger_oci_layers::Node::File {
                content: Content::Bytes(b),
                ..
            }) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            bytes("var/lib/dpkg/info/libjq1:amd64.list"),
            "/.\n/usr\n/usr/lib\n/usr/lib/libjq.so.1.0.4\n/usr/lib/libjq.so.1\n"
        );
        assert!(matches!(
            tree.get("var/lib/dpkg/info/libjq1:amd64.postinst"),
            Some(dallinger_oci_layers::Node::File {
                executable: true,
                ..
            })
        ));
        assert!(tree.get("var/lib/dpkg/info/libjq1:amd64.md5sums").is_some());
        assert_eq!(
            bytes(STATUS),
            "Package: base-files\nStatus: install ok installed\nVersion: 12\n\n\
             Package: libjq1\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 10\n\
             Maintainer: M <m@example.test>\nArchitecture: amd64\nMulti-Arch: same\nVersion: 1.6-2.1\nDepends: libc6\n\
             Description: lib\n long\nHomepage: https://example.test\n\n\
             Package: zlib1g\nStatus: install ok installed\nVersion: 1\nDescription: z \n\n"
        );
    }
}
