//! The packages to install: what `system_packages` asks for and everything
//! its `Depends` and `Pre-Depends` need that the base does not have.
//!
//! As apt does by default: the highest version a suite offers; for a group
//! of alternatives, the first that is already met, else the first that can
//! be installed; a virtual package by the provider first in name order.
//! Packages of the base are never upgraded or removed: a need the base
//! cannot meet at its installed version is an error.

use std::collections::{BTreeMap, VecDeque};

use anyhow::{bail, Result};

use super::base::DebianBase;
use super::control::{compare_versions, parse_relations, Relation};
use super::index::{Candidate, PackageIndex};

/// One entry of `system_packages`: `name` or `name=version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub version: Option<String>,
}

/// Parses `system_packages` (space or comma separated).
pub fn parse_request(text: &str) -> Result<Vec<Request>> {
    let mut requests: Vec<Request> = Vec::new();
    for word in text.split([' ', ',', '\t', '\n']).filter(|w| !w.is_empty()) {
        let (name, version) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (word, None),
        };
        let relation = parse_relations(name)
            .ok()
            .and_then(|g| g.into_iter().next())
            .and_then(|mut g| g.pop())
            .filter(|r| r.arch.is_none() && r.version.is_none());
        if relation.is_none() || version.as_deref() == Some("") {
            bail!("system_packages in config.txt: {word:?} is not a Debian package name (names are lowercase letters, digits and + - .; optionally =VERSION)");
        }
        if !requests.iter().any(|r| r.name == name) {
            requests.push(Request {
                name: name.to_string(),
                version,
            });
        }
    }
    Ok(requests)
}

/// The packages to install, sorted by name.
pub fn resolve(
    requests: &[Request],
    base: &DebianBase,
    index: &PackageIndex,
) -> Result<Vec<Candidate>> {
    let mut chosen: BTreeMap<String, Candidate> = BTreeMap::new();
    // (relation group, who needs it)
    let mut queue: VecDeque<(Vec<Relation>, String)> = VecDeque::new();
    for request in requests {
        let relation = Relation {
            name: request.name.clone(),
            arch: None,
            version: request
                .version
                .clone()
                .map(|v| (super::control::Op::Equal, v)),
        };
        if !index.packages.contains_key(&request.name)
            && !base.installed.contains_key(&request.name)
        {
            bail!(
                "system_packages: there is no package {:?} in {} for this architecture; check the name (https://packages.debian.org)",
                request.name,
                index.description
            );
        }
        queue.push_back((vec![relation], "system_packages".to_string()));
    }
    while let Some((group, needed_by)) = queue.pop_front() {
        if group.iter().any(|r| met(r, base, &chosen, index)) {
            continue;
        }
        let Some(candidate) = group.iter().find_map(|r| installable(r, index)) else {
            bail!("{}", unmet_message(&group, &needed_by, base, index));
        };
        for field in [&candidate.pre_depends, &candidate.depends] {
            for next in parse_relations(field)? {
                queue.push_back((next, candidate.name.clone()));
            }
        }
        chosen.insert(candidate.name.clone(), candidate.clone());
    }
    check_conflicts(&chosen, base)?;
    Ok(chosen.into_values().collect())
}

/// Whether the base or the packages chosen so far meet `relation`.
fn met(
    relation: &Relation,
    base: &DebianBase,
    chosen: &BTreeMap<String, Candidate>,
    index: &PackageIndex,
) -> bool {
    if let Some(installed) = base.installed.get(&relation.name) {
        if relation.accepts(&installed.version) {
            return true;
        }
    }
    if let Some(c) = chosen.get(&relation.name) {
        if relation.accepts(&c.version) {
            return true;
        }
    }
    let provided_ok = |version: &Option<String>| match (&relation.version, version) {
        (None, _) => true,
        (Some(_), Some(v)) => relation.accepts(v),
        (Some(_), None) => false,
    };
    if base
        .provided
        .get(&relation.name)
        .is_some_and(|versions| versions.iter().any(provided_ok))
    {
        return true;
    }
    index
        .providers
        .get(&relation.name)
        .is_some_and(|providers| {
            providers.iter().any(|(name, version)| {
                chosen.get(name).is_some_and(|c| &c.version == version)
                    && provided_version(&chosen[name], &relation.name)
                        .is_some_and(|v| provided_ok(&v))
            })
        })
}

/// What version of `virtual_name` a candidate provides (`Some(None)` for
/// an unversioned Provides).
fn provided_version(candidate: &Candidate, virtual_name: &str) -> Option<Option<String>> {
    parse_relations(&candidate.provides)
        .ok()?
        .into_iter()
        .flatten()
        .find(|p| p.name == virtual_name)
        .map(|p| p.version.map(|(_, v)| v))
}

/// The best candidate for `relation`: the highest version of the package
/// itself, else of the first provider in name order.
fn installable<'a>(relation: &Relation, index: &'a PackageIndex) -> Option<&'a Candidate> {
    let best = |name: &str, accept: &dyn Fn(&Candidate) -> bool| {
        index
            .packages
            .get(name)?
            .iter()
            .filter(|c| accept(c))
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    };
    if let Some(c) = best(&relation.name, &|c| relation.accepts(&c.version)) {
        return Some(c);
    }
    let mut providers: Vec<&(String, String)> =
        index.providers.get(&relation.name)?.iter().collect();
    providers.sort();
    providers.into_iter().find_map(|(name, _)| {
        best(name, &|c| {
            provided_version(c, &relation.name).is_some_and(|v| match (&relation.version, v) {
                (None, _) => true,
                (Some(_), Some(v)) => relation.accepts(&v),
                (Some(_), None) => false,
            })
        })
    })
}

fn unmet_message(
    group: &[Relation],
    needed_by: &str,
    base: &DebianBase,
    index: &PackageIndex,
) -> String {
    let wanted = group
        .iter()
        .map(Relation::to_string)
        .collect::<Vec<_>>()
        .join(" | ");
    let release = &index.description;
    if let Some((relation, installed)) = group
        .iter()
        .find_map(|r| base.installed.get(&r.name).map(|i| (r, i)))
    {
        return format!(
            "{needed_by} needs {wanted}, but the base image has {} {}; dallinger-oci does not upgrade the base's packages: use a newer base image (from {release})",
            relation.name, installed.version
        );
    }
    let offered: Vec<String> = group
        .iter()
        .filter_map(|r| index.packages.get(&r.name))
        .flatten()
        .map(|c| format!("{} {}", c.name, c.version))
        .collect();
    if needed_by == "system_packages" {
        format!(
            "system_packages asks for {wanted}, which {release} does not have{}",
            if offered.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", offered.join(", "))
            }
        )
    } else {
        format!(
            "{needed_by} needs {wanted}, which neither the base image nor {release} can satisfy{}",
            if offered.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", offered.join(", "))
            }
        )
    }
}

/// A chosen package that `Conflicts` with or `Breaks` a package of the base
/// would need apt to remove it: refused.
fn check_conflicts(chosen: &BTreeMap<String, Candidate>, base: &DebianBase) -> Result<()> {
    for candidate in chosen.values() {
        for field in [&candidate.conflicts, &candidate.breaks] {
            for relation in parse_relations(field)?.into_iter().flatten() {
                if relation.name == candidate.name {
                    continue;
                }
                if let Some(installed) = base.installed.get(&relation.name) {
                    if relation.accepts(&installed.version) {
                        bail!(
                            "{} {} conflicts with {} {} in the base image ({relation}); dallinger-oci does not remove the base's packages: choose another package or base",
                            candidate.name, candidate.version, relation.name, installed.version
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> PackageIndex {
        let mut index = PackageIndex::default();
        index
            .add(text.as_bytes(), "http://m", "amd64", "Packages")
            .unwrap();
        index.description = "Debian bookworm (main)".into();
        index
    }

    fn base() -> DebianBase {
        DebianBase::for_tests(
            "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nArchitecture: amd64\n\n\
             Package: mawk\nStatus: install ok installed\nVersion: 1.3.4\nArchitecture: amd64\nProvides: awk\n",
        )
    }

    const ARCHIVE: &str = "\
Package: jq\nVersion: 1.6-2.1\nArchitecture: amd64\nDepends: libjq1 (= 1.6-2.1), libc6 (>= 2.34)\nFilename: j.deb\nSize: 1\nSHA256: 01\n\n\
Package: libjq1\nVersion: 1.6-2.1\nArchitecture: amd64\nDepends: libonig5 (>= 6.1.0), libc6 (>= 2.34)\nFilename: l.deb\nSize: 1\nSHA256: 02\n\n\
Package: libonig5\nVersion: 6.9.8-1\nArchitecture: amd64\nPre-Depends: awk | gawk\nFilename: o.deb\nSize: 1\nSHA256: 03\n\n\
Package: libonig5\nVersion: 6.9.1-1\nArchitecture: amd64\nFilename: o-old.deb\nSize: 1\nSHA256: 04\n\n\
Package: newlibc-user\nVersion: 1\nArchitecture: amd64\nDepends: libc6 (>= 2.40)\nFilename: n.deb\nSize: 1\nSHA256: 05\n\n\
Package: mail-user\nVersion: 1\nArchitecture: all\nDepends: default-mta | mail-transport-agent, python3:any\nFilename: m.deb\nSize: 1\nSHA256: 06\n\n\
Package: postfix\nVersion: 3.7\nArchitecture: amd64\nProvides: mail-transport-agent\nFilename: p.deb\nSize: 1\nSHA256: 07\n\n\
Package: exim4\nVersion: 4.96\nArchitecture: amd64\nProvides: mail-transport-agent\nFilename: e.deb\nSize: 1\nSHA256: 08\n\n\
Package: python3\nVersion: 3.11.2-1\nArchitecture: amd64\nFilename: py.deb\nSize: 1\nSHA256: 09\n\n\
Package: libc-hater\nVersion: 1\nArchitecture: amd64\nConflicts: libc6\nFilename: h.deb\nSize: 1\nSHA256: 10\n";

    fn names(c: &[Candidate]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{} {}", c.name, c.version))
            .collect()
    }

    #[test]
    fn the_closure_skips_what_the_base_has_and_takes_the_highest_version() {
        let got = resolve(&parse_request("jq").unwrap(), &base(), &index(ARCHIVE)).unwrap();
        assert_eq!(
            names(&got),
            ["jq 1.6-2.1", "libjq1 1.6-2.1", "libonig5 6.9.8-1"]
        );
        let pinned = resolve(
            &parse_request("libonig5=6.9.1-1").unwrap(),
            &base(),
            &index(ARCHIVE),
        )
        .unwrap();
        assert_eq!(names(&pinned), ["libonig5 6.9.1-1"]);
    }

    #[test]
    fn alternatives_virtual_packages_and_arch_qualifiers() {
        let got = resolve(
            &parse_request("mail-user").unwrap(),
            &base(),
            &index(ARCHIVE),
        )
        .unwrap();
        // default-mta is unknown; mail-transport-agent is provided by exim4
        // and postfix: the first by name wins. python3:any is python3.
        assert_eq!(
            names(&got),
            ["exim4 4.96", "mail-user 1", "python3 3.11.2-1"]
        );
    }

    #[test]
    fn unknown_unsatisfiable_and_conflicting_packages_are_named() {
        let err = resolve(
            &parse_request("nosuchpackage").unwrap(),
            &base(),
            &index(ARCHIVE),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"nosuchpackage\"") && err.contains("Debian bookworm"),
            "{err}"
        );
        let err = resolve(
            &parse_request("newlibc-user").unwrap(),
            &base(),
            &index(ARCHIVE),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("newlibc-user needs libc6 (>= 2.40)") && err.contains("has libc6 2.36-9"),
            "{err}"
        );
        let err = resolve(&parse_request("jq=9").unwrap(), &base(), &index(ARCHIVE))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jq (= 9)") && err.contains("jq 1.6-2.1"),
            "{err}"
        );
        let err = resolve(
            &parse_request("libc-hater").unwrap(),
            &base(),
            &index(ARCHIVE),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("conflicts with libc6"), "{err}");
        assert!(parse_request("Bad_Name").is_err());
        assert!(parse_request("jq=").is_err());
        assert_eq!(parse_request("jq, ffmpeg jq").unwrap().len(), 2);
    }
}
