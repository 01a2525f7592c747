//! `config.txt` (`experiment::config::Config::parse`): sections, keys,
//! continuation lines, comments and `%(name)s` interpolation.

use std::path::Path;

use dallinger_oci::experiment::config::Config;
use proptest::prelude::*;

use super::text::{joined, noise, raw_text, TEXT};
use crate::ensure;

const KEYS: &[&str] = &["a", "B", "key", "Key", "docker_image_name", "x y", "é", "İ"];
const SECTIONS: &[&str] = &[
    "Parameters",
    "DEFAULT",
    "Docker",
    "a]b",
    " s ",
    "Parameters ",
];

fn value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z0-9 ./:=;#\\[\\]]{0,8}",
        2 => prop::sample::select(KEYS).prop_map(|k| format!("%({k})s")),
        1 => Just("%%".to_string()),
        1 => Just("%".to_string()),
        1 => Just("%(".to_string()),
        1 => Just("%()s".to_string()),
        1 => Just("%(a)".to_string()),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|p| p.concat())
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (prop::sample::select(SECTIONS), "[ \t]{0,2}", "[a-z \\]]{0,3}")
            .prop_map(|(s, pad, junk)| format!("{pad}[{s}]{junk}")),
        6 => (
            prop::sample::select(KEYS),
            prop::sample::select(&[" = ", "=", ": ", ":", " =", " := "][..]),
            value(),
        )
            .prop_map(|(k, sep, v)| format!("{k}{sep}{v}")),
        3 => ("[ \t]{1,4}", value()).prop_map(|(pad, v)| format!("{pad}{v}")),
        1 => "[ \t]{0,3}",
        1 => "[ \t]{0,2}[#;][ -~]{0,10}",
        1 => noise(20),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => raw_text(256),
        6 => (
            any::<bool>(),
            prop::collection::vec((line(), any::<u8>()), 0..24),
        )
            .prop_map(|(bom, lines)| {
                let text = joined(lines);
                if bom {
                    format!("\u{feff}{text}")
                } else {
                    text
                }
            }),
    ]
}

/// The entries written back as a file of their own (one section each, no
/// `[DEFAULT]`, `%` escaped), when that file can say them.
fn written_back(config: &Config) -> Option<String> {
    let mut out = String::new();
    let mut section: Option<&str> = None;
    for e in config.entries() {
        if e.key.starts_with(['[', '#', ';']) {
            return None;
        }
        let lines: Vec<&str> = e.value.split('\n').collect();
        let awkward = lines.iter().enumerate().any(|(i, l)| {
            l.trim() != *l || (i > 0 && l.starts_with(['#', ';', '[']) && !l.is_empty())
        });
        // configparser drops a value's trailing empty lines when it reads
        // them, so a value ending in a newline (an interpolation that came
        // out empty on the last line) cannot be written back as text.
        let trailing_empty = lines.len() > 1 && lines.last() == Some(&"");
        if awkward || trailing_empty {
            return None;
        }
        if section != Some(e.section.as_str()) {
            out.push_str(&format!("[{}]\n", e.section));
            section = Some(&e.section);
        }
        out.push_str(&format!(
            "{} = {}\n",
            e.key,
            lines.join("\n  ").replace('%', "%%")
        ));
    }
    Some(out)
}

fn check(text: String) -> Result<(), TestCaseError> {
    let Ok(config) = Config::parse(Path::new("config.txt"), &text) else {
        return Ok(());
    };
    let line_count = text.split(['\n', '\r']).count();
    let mut total = 0usize;
    for e in config.entries() {
        ensure!(
            !e.key.is_empty() && e.key == e.key.trim() && !e.key.contains(['=', ':']),
            "bad key {:?}",
            e.key
        );
        ensure!(
            e.key == e.key.to_lowercase(),
            "key {:?} is not lowercase",
            e.key
        );
        ensure!(e.section != "DEFAULT", "an entry of [DEFAULT]: {e:?}");
        ensure!(
            e.line >= 1 && e.line <= line_count,
            "line {} of {line_count}",
            e.line
        );
        total += e.value.len();
    }
    // Interpolation and the [DEFAULT] keys copied into every section must not
    // turn a small file into a huge configuration.
    ensure!(
        total <= 64 * (text.len() + 1024),
        "{} bytes of values from a {}-byte file",
        total,
        text.len()
    );
    for (key, value) in config.iter() {
        ensure!(
            config.get(key) == Some(value),
            "get({key:?}) is not the winning value"
        );
    }
    if let Some(again) = written_back(&config) {
        let reparsed = Config::parse(Path::new("again.txt"), &again)
            .map_err(|e| TestCaseError::fail(format!("{e}\nin:\n{again}")))?;
        let pairs = |c: &Config| -> Vec<(String, String, String)> {
            c.entries()
                .iter()
                .map(|e| (e.section.clone(), e.key.clone(), e.value.clone()))
                .collect()
        };
        ensure!(
            pairs(&reparsed) == pairs(&config),
            "written back and read again, the entries differ:\n{again}"
        );
    }
    Ok(())
}

#[test]
fn config_txt() {
    super::harness::fuzz("config_txt", config_text(), TEXT, check);
}
