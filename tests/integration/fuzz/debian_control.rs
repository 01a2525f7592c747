//! Debian control data (`debian::control`): deb822 stanzas (Packages
//! indexes, dpkg's status, `.sources`) with continuation lines, comments and
//! blank lines; package relations; version ordering.

use std::cmp::Ordering;
use std::io::BufReader;

use dallinger_oci::debian::control::{
    compare_versions, parse_relations, parse_stanzas, StanzaReader,
};
use dallinger_oci::debian::release::{parse_os_release, parse_sources_deb822, parse_sources_list};
use proptest::prelude::*;

use super::text::{joined, noise, raw_text, TEXT};
use crate::ensure;

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(
            &["Package", "Version", "Depends", "Description", "SHA256", "Conffiles", "Status",
              "package", "Pre-Depends", "Provides", "Types", "URIs", "Suites", "Signed-By"][..]
        )
        .prop_map(str::to_string),
        1 => "[A-Za-z0-9-]{0,8}",
        1 => "[ -9;-~]{0,6}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (field_name(), prop::sample::select(&[": ", ":", ":  ", " : "][..]), "[ -~]{0,16}")
            .prop_map(|(n, sep, v)| format!("{n}{sep}{v}")),
        5 => ("[ \t]{1,2}", "[ -~]{0,16}").prop_map(|(pad, v)| format!("{pad}{v}")),
        1 => Just(" .".to_string()),
        3 => "[ \t]{0,2}",
        1 => "#[ -~]{0,10}",
        1 => noise(16),
    ]
}

fn control_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => raw_text(300),
        6 => prop::collection::vec((line(), any::<u8>()), 0..20).prop_map(joined),
    ]
}

fn check_control(text: String) -> Result<(), TestCaseError> {
    let parsed = parse_stanzas(&text, "fuzz");
    // Streaming through a tiny buffer reads the same.
    let streamed: Result<Vec<_>, _> =
        StanzaReader::new(BufReader::with_capacity(3, text.as_bytes()), "fuzz").collect();
    ensure!(
        parsed.as_ref().ok() == streamed.as_ref().ok(),
        "streamed and whole readings differ"
    );
    let _ = parse_sources_deb822(&text, "fuzz.sources");
    let _ = parse_sources_list(&text, "sources.list");
    let _ = parse_os_release(&text);
    let Ok(stanzas) = parsed else {
        return Ok(());
    };
    for s in &stanzas {
        ensure!(!s.fields.is_empty(), "an empty stanza");
        for (name, _) in &s.fields {
            let _ = s.get(name);
            let _ = s.lines_of(name);
        }
        // dpkg's status is written back from the stanzas: byte for byte.
        let text = s.to_text();
        let again = parse_stanzas(&text, "again")
            .map_err(|e| TestCaseError::fail(format!("{e}: {text:?}")))?;
        ensure!(
            again == [s.clone()],
            "{s:?} written as {text:?} reads as {again:?}"
        );
    }
    Ok(())
}

#[test]
fn debian_control() {
    super::harness::fuzz("debian_control", control_text(), TEXT, check_control);
}

// ---------------------------------------------------------------------------
// Relations and versions
// ---------------------------------------------------------------------------

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "([0-9]:)?[0-9]{1,2}(\\.[0-9]{1,2}){0,2}(~[a-z0-9]{1,3})?(-[0-9a-z.+~]{1,4})?",
        1 => "[0-9][0-9a-zA-Z.+~:-]{0,6}",
        1 => "[ -~]{0,6}",
    ]
}

fn relation() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            6 => "[a-z0-9][a-z0-9+.-]{1,8}",
            1 => "[A-Za-z_ ]{0,4}",
        ],
        prop::sample::select(&["", ":any", ":native", ":amd64", ":"][..]),
        prop::option::weighted(
            0.6,
            (
                prop::sample::select(&["<<", "<=", "=", ">=", ">>", "<", ">", "~", ""][..]),
                version(),
                "[ ]{0,2}",
            ),
        ),
        prop::sample::select(
            &[
                "",
                " [amd64]",
                " <!nocheck>",
                " [!i386] <stage1>",
                " )",
                " (",
            ][..],
        ),
    )
        .prop_map(|(name, arch, version, restriction)| {
            let version = version
                .map(|(op, v, pad)| format!(" ({op}{pad}{v})"))
                .unwrap_or_default();
            format!("{name}{arch}{version}{restriction}")
        })
}

fn relations_text() -> impl Strategy<Value = (String, [String; 3])> {
    (
        prop_oneof![
            1 => noise(30),
            5 => prop::collection::vec(prop::collection::vec(relation(), 1..3), 0..4).prop_map(|groups| {
                groups
                    .into_iter()
                    .map(|alternatives| alternatives.join(" | "))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ],
        [version(), version(), version()],
    )
}

fn check_relations((text, versions): (String, [String; 3])) -> Result<(), TestCaseError> {
    if let Ok(groups) = parse_relations(&text) {
        for r in groups.iter().flatten() {
            let written = r.to_string();
            let again = parse_relations(&written)
                .map_err(|e| TestCaseError::fail(format!("{r:?} written as {written:?}: {e}")))?;
            ensure!(
                again == [vec![r.clone()]],
                "{r:?} written as {written:?} reads as {again:?}"
            );
            for v in &versions {
                let _ = r.accepts(v);
            }
        }
    }
    // dpkg's order is a total order: the newest candidate must not depend
    // on the order of an index.
    let [a, b, c] = &versions;
    for (x, y) in [(a, b), (b, c), (a, c)] {
        ensure!(
            compare_versions(x, y) == compare_versions(y, x).reverse(),
            "{x:?} vs {y:?} is not antisymmetric"
        );
    }
    ensure!(
        compare_versions(a, a) == Ordering::Equal,
        "{a:?} is not equal to itself"
    );
    let ab = compare_versions(a, b);
    if ab != Ordering::Greater && compare_versions(b, c) == ab {
        ensure!(
            compare_versions(a, c) == ab,
            "{a:?} {ab:?} {b:?} {ab:?} {c:?}, but {a:?} {:?} {c:?}",
            compare_versions(a, c)
        );
    }
    Ok(())
}

#[test]
fn debian_relations() {
    super::harness::fuzz(
        "debian_relations",
        relations_text(),
        super::harness::Bytes {
            read: |bytes| {
                let text = String::from_utf8_lossy(bytes).into_owned();
                let mut parts = text.split('\n').map(str::to_string);
                let relations = parts.next().unwrap_or_default();
                let mut v = || parts.next().unwrap_or_default();
                (relations, [v(), v(), v()])
            },
            write: |(relations, [a, b, c])| format!("{relations}\n{a}\n{b}\n{c}").into_bytes(),
        },
        check_relations,
    );
}
