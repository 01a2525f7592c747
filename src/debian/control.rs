//! Debian control data: deb822 stanzas (Packages, status, control files,
//! `.sources`), package relations (`Depends`, `Provides`) and versions.
//!
//! The stanza reader is ours: it streams a 50 MB Packages index line by line
//! and keeps each field's text byte for byte, which dpkg's status needs; the
//! crates we looked at (deb822-lossless, deb822-fast) build a whole document
//! in memory. Version ordering is the `debversion` crate's.

use std::cmp::Ordering;
use std::io::BufRead;

use anyhow::{bail, Context, Result};

/// One stanza: fields in file order. A value keeps its continuation lines
/// as they were (each starting with a space or tab), joined by `\n`, and
/// any trailing blanks (which [`Stanza::get`] leaves out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of `name` (case-insensitive, as deb822 field names are).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim_end())
    }

    /// A value's lines with their leading white space removed, the first
    /// line included when it is not empty (`SHA256`, `Conffiles`).
    pub fn lines_of(&self, name: &str) -> Vec<&str> {
        self.get(name)
            .map(|v| v.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The stanza as deb822 text, ending with a newline (no blank line).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.fields {
            out.push_str(name);
            out.push(':');
            if !value.starts_with('\n') {
                out.push(' ');
            }
            out.push_str(value);
            out.push('\n');
        }
        out
    }
}

/// Reads stanzas one at a time from deb822 text.
pub struct StanzaReader<R> {
    input: R,
    line: String,
    line_number: usize,
    origin: String,
}

impl<R: BufRead> StanzaReader<R> {
    /// `origin` names the input in errors.
    pub fn new(input: R, origin: &str) -> Self {
        StanzaReader {
            input,
            line: String::new(),
            line_number: 0,
            origin: origin.to_string(),
        }
    }

    fn next_stanza(&mut self) -> Result<Option<Stanza>> {
        let mut stanza = Stanza::default();
        loop {
            self.line.clear();
            let n = self
                .input
                .read_line(&mut self.line)
                .with_context(|| format!("cannot read {}", self.origin))?;
            if n == 0 {
                return Ok((!stanza.fields.is_empty()).then_some(stanza));
            }
            self.line_number += 1;
            let line = self.line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                if stanza.fields.is_empty() {
                    continue;
                }
                return Ok(Some(stanza));
            }
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = stanza.fields.last_mut() else {
                    bail!(
                        "{} line {}: a continuation line with no field before it",
                        self.origin,
                        self.line_number
                    );
                };
                value.push('\n');
                value.push_str(line);
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                bail!(
                    "{} line {}: {line:?} is not a `Field: value` line",
                    self.origin,
                    self.line_number
                );
            };
            // deb822: printable ASCII but `:`, not starting with `#` or `-`
            // (blanks around it are forgiven). What else was taken for a
            // name (`\r#`) would not read back as the same field.
            let name = name.trim_matches([' ', '\t']);
            if name.is_empty()
                || name.starts_with(['#', '-'])
                || !name.bytes().all(|b| (b'!'..=b'~').contains(&b))
            {
                bail!(
                    "{} line {}: {name:?} is not a field name (printable ASCII, not starting \
                     with # or -)",
                    self.origin,
                    self.line_number
                );
            }
            // Trailing blanks stay: the base's status is written back
            // byte for byte, as dpkg keeps them.
            stanza
                .fields
                .push((name.to_string(), value.trim_start().to_string()));
        }
    }
}

impl<R: BufRead> Iterator for StanzaReader<R> {
    type Item = Result<Stanza>;

    fn next(&mut self) -> Option<Result<Stanza>> {
        self.next_stanza().transpose()
    }
}

/// All stanzas of a text.
pub fn parse_stanzas(text: &str, origin: &str) -> Result<Vec<Stanza>> {
    StanzaReader::new(text.as_bytes(), origin).collect()
}

/// A version relation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Earlier,
    EarlierEqual,
    Equal,
    LaterEqual,
    Later,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "<<" => Op::Earlier,
            // `<` and `>` are dpkg's obsolete spellings of `<=` and `>=`.
            "<=" | "<" => Op::EarlierEqual,
            "=" => Op::Equal,
            ">=" | ">" => Op::LaterEqual,
            ">>" => Op::Later,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            Op::Earlier => "<<",
            Op::EarlierEqual => "<=",
            Op::Equal => "=",
            Op::LaterEqual => ">=",
            Op::Later => ">>",
        }
    }
}

/// One package in a relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// `any` or `native` (or an architecture); satisfied by the name alone here.
    pub arch: Option<String>,
    pub version: Option<(Op, String)>,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, version)) = &self.version {
            write!(f, " ({} {version})", op.text())?;
        }
        Ok(())
    }
}

impl Relation {
    /// Whether a package at `version` meets this relation's version part.
    pub fn accepts(&self, version: &str) -> bool {
        match &self.version {
            None => true,
            Some((op, wanted)) => {
                let order = compare_versions(version, wanted);
                match op {
                    Op::Earlier => order == Ordering::Less,
                    Op::EarlierEqual => order != Ordering::Greater,
                    Op::Equal => order == Ordering::Equal,
                    Op::LaterEqual => order != Ordering::Less,
                    Op::Later => order == Ordering::Greater,
                }
            }
        }
    }
}

/// A relation field: groups joined by `,`, each a list of alternatives
/// joined by `|`. Architecture lists (`[amd64]`) and build profiles
/// (`<!nocheck>`), which only source packages use, are dropped.
pub fn parse_relations(text: &str) -> Result<Vec<Vec<Relation>>> {
    let mut groups = Vec::new();
    for group in text.split(',') {
        if group.trim().is_empty() {
            continue;
        }
        let mut alternatives = Vec::new();
        for alternative in group.split('|') {
            alternatives.push(parse_relation(alternative).with_context(|| {
                format!("cannot read the package relation {:?}", alternative.trim())
            })?);
        }
        groups.push(alternatives);
    }
    Ok(groups)
}

fn parse_relation(text: &str) -> Result<Relation> {
    let text = without_restrictions(text);
    let (head, version) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .or_else(|| rest.trim_end().strip_suffix(')'))
                .context("no closing parenthesis")?
                .trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .context("no version after the operator")?;
            let (op, version) = inner.split_at(split);
            let op = Op::parse(op.trim())
                .with_context(|| format!("unknown version operator {:?}", op.trim()))?;
            let version = version.trim();
            if version.is_empty() || version.contains(char::is_whitespace) {
                bail!("bad version {version:?}");
            }
            (head, Some((op, version.to_string())))
        }
        None => (text, None),
    };
    let head = head.trim();
    let (name, arch) = match head.split_once(':') {
        Some((name, arch)) => (name, Some(arch.to_string())),
        None => (head, None),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        bail!("{name:?} is not a Debian package name");
    }
    Ok(Relation {
        name: name.to_string(),
        arch,
        version,
    })
}

/// `text` without its architecture list and build profiles: whatever
/// follows the version (or the name) from the first `[` or `<` on.
fn without_restrictions(text: &str) -> &str {
    let after = match (text.find('('), text.find(')')) {
        (Some(_), Some(close)) => close + 1,
        _ => 0,
    };
    match text[after..].find(['[', '<']) {
        Some(i) => &text[..after + i],
        None => text,
    }
}

/// dpkg's ordering of two versions. A version that does not parse (never
/// in the archive) sorts before every one that does, and by its text among
/// its kind: a total order, so the newest candidate of an index does not
/// depend on the order of its stanzas.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (
        a.parse::<debversion::Version>(),
        b.parse::<debversion::Version>(),
    ) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Err(_), Ok(_)) => Ordering::Less,
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_dpkg_does() {
        use Ordering::*;
        // Cases from dpkg's own test suite (t-version.c) and the policy manual.
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1:0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0+b1", "1.0", Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("1.6-2.1", "1.6-2.1+deb12u1", Less),
            ("10", "9", Greater),
            ("1.0a", "1.0", Greater),
            ("0:1.0", "1.0", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn versions_that_do_not_parse_sort_first_and_the_order_is_total() {
        // "2 " does not parse: it sorted by text between "2-0" and "0:3",
        // while dpkg puts "0:3" after "2-0".
        let (a, b, c) = ("2 ", "2-0", "0:3");
        assert_eq!(compare_versions(b, c), Ordering::Less);
        assert_eq!(compare_versions(a, b), Ordering::Less);
        assert_eq!(compare_versions(a, c), Ordering::Less);
        assert_eq!(compare_versions(c, a), Ordering::Greater);
        assert_eq!(compare_versions("x y", "a b"), Ordering::Greater);
    }

    #[test]
    fn relations_parse_with_alternatives_versions_and_qualifiers() {
        let groups = parse_relations(
            "libjq1 (= 1.6-2.1), libc6 (>= 2.34), python3:any, default-mta | mail-transport-agent, foo (<< 2) [amd64] <!nocheck>",
        )
        .unwrap();
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[0][0].name, "libjq1");
        assert_eq!(
            groups[0][0].version,
            Some((Op::Equal, "1.6-2.1".to_string()))
        );
        assert_eq!(groups[2][0].arch.as_deref(), Some("any"));
        assert_eq!(groups[3].len(), 2);
        assert_eq!(groups[3][1].name, "mail-transport-agent");
        assert_eq!(groups[4][0].version, Some((Op::Earlier, "2".to_string())));
        assert_eq!(groups[1][0].to_string(), "libc6 (>= 2.34)");
        assert!(groups[1][0].accepts("2.36-9"));
        assert!(!groups[1][0].accepts("2.33"));
        assert!(groups[4][0].accepts("1.9"));
        assert!(!groups[4][0].accepts("2"));
        // Obsolete `>` means `>=`; no space before the version is fine.
        let old = &parse_relations("bar (>1.0)").unwrap()[0][0];
        assert_eq!(old.version, Some((Op::LaterEqual, "1.0".to_string())));
        assert!(parse_relations("Bad_Name").is_err());
        assert!(parse_relations("foo (>= )").is_err());
        assert!(parse_relations("foo (~ 1)").is_err());
        assert!(parse_relations("").unwrap().is_empty());
    }

    #[test]
    fn stanzas_keep_continuation_lines_and_round_trip() {
        let text = "Package: jq\nVersion: 1.6-2.1 \nDescription: JSON\n processor\n .\n more\n\n\n# comment\nPackage: libjq1\nConffiles:\n /etc/a 0123\n";
        let stanzas = parse_stanzas(text, "test").unwrap();
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("package"), Some("jq"));
        assert_eq!(
            stanzas[0].get("Description"),
            Some("JSON\n processor\n .\n more")
        );
        assert_eq!(stanzas[1].lines_of("Conffiles"), ["/etc/a 0123"]);
        assert_eq!(
            stanzas[0].to_text(),
            "Package: jq\nVersion: 1.6-2.1 \nDescription: JSON\n processor\n .\n more\n"
        );
        assert_eq!(stanzas[0].get("Version"), Some("1.6-2.1"));
        assert_eq!(
            stanzas[1].to_text(),
            "Package: libjq1\nConffiles:\n /etc/a 0123\n"
        );
        assert!(parse_stanzas(" orphan\n", "test").is_err());
        assert!(parse_stanzas("no colon\n", "test").is_err());
    }

    #[test]
    fn a_field_name_that_would_not_read_back_is_refused() {
        // "\r#" was the field "#", written back as a comment.
        for bad in [
            "\r#: x\n",
            "Package: a\n\r#:\r\n",
            ": x\n",
            "-x: y\n",
            "a b: c\n",
            "\u{e9}: x\n",
        ] {
            let err = parse_stanzas(bad, "status").unwrap_err().to_string();
            assert!(err.contains("is not a field name"), "{bad:?}: {err}");
        }
        let ok = parse_stanzas("Package : a\nX-Custom\t: b\n", "status").unwrap();
        assert_eq!(ok[0].get("package"), Some("a"));
        assert_eq!(ok[0].get("x-custom"), Some("b"));
    }
}
