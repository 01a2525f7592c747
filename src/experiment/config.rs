//! `config.txt` / `~/.dallingerconfig` reader.
//!
//! Hand-written rather than taken from an INI crate, on purpose: we need the
//! 1-based line number in every error, and Python's exact
//! `configparser.ConfigParser()` behaviour as Dallinger uses it
//! (`dallinger/config.py`, `load_from_file`):
//!
//! - `[Section]` headers (`\[(.+)\]` matched at the start of the stripped
//!   line, greedy, so `[a] junk` is section `a`); section names are
//!   case-sensitive; `[DEFAULT]` values are visible in every section.
//! - `key = value` or `key: value`, split at the first `=` or `:`; keys are
//!   trimmed and lowercased, values trimmed.
//! - Full-line comments only (`#` or `;` after optional whitespace). There
//!   are no inline comments: `x = a;b` keeps `a;b`.
//! - A line indented more than its key line continues the value (joined with
//!   `\n`); blank lines inside a value are kept, trailing ones dropped.
//! - Strict mode: a duplicate section, or a duplicate key within a section,
//!   is an error (Python's `DuplicateSectionError`/`DuplicateOptionError`).
//! - `BasicInterpolation`: `%(name)s` looks `name` up in the same section and
//!   then in `[DEFAULT]` (recursively, at most 10 levels), `%%` is `%`, any
//!   other `%` is an error.
//!
//! Dallinger then flattens the file: `for section in parser.sections():
//! data.update(dict(parser.items(section)))`. `items(section)` lists the
//! `[DEFAULT]` keys first (with the section's value where it has one), then
//! the section's own keys. [`Config::entries`] holds exactly that sequence,
//! so a later occurrence of a key wins, as it does in Dallinger; a file with
//! only a `[DEFAULT]` section therefore contributes nothing, also as in
//! Dallinger.
//!
//! Deliberate differences: a UTF-8 byte order mark is skipped (Python would
//! fail with a missing-section error), a line starting with `[` that is not a
//! valid header is an error (Python would take `[abc = 1` as a key named
//! `[abc`), the first error is reported rather than all of them, and a file
//! whose flattened entries would exceed [`MAX_FLATTENED`] bytes is refused:
//! `%(name)s` references that repeat a value, nested ten deep, or `[DEFAULT]`
//! keys copied into thousands of sections, would otherwise turn a few hundred
//! bytes into gigabytes (Python's parser has no such limit).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Python's `MAX_INTERPOLATION_DEPTH`.
const MAX_INTERPOLATION_DEPTH: usize = 10;
/// What the flattened entries of one file may add up to: their keys,
/// section names and interpolated values, a fixed amount per entry and
/// `REFERENCE_COST` per `%(name)s` reference followed. A real config.txt
/// flattens to a few KiB.
pub const MAX_FLATTENED: usize = 16 << 20;
const REFERENCE_COST: usize = 64;
const DEFAULT_SECTION: &str = "DEFAULT";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}:{line}: the file is not valid UTF-8; save it with UTF-8 encoding",
        path.display()
    )]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One effective key of a section, as Python's `parser.items(section)`
/// returns it (interpolated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    /// Lowercase.
    pub key: String,
    /// Interpolated value; may contain `\n` (continuation lines).
    pub value: String,
    /// 1-based line of the key in its file.
    pub line: usize,
}

/// A parsed configuration, possibly several files layered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Flattened entries, lowest priority first: a later entry for the same
    /// key wins.
    entries: Vec<Entry>,
}

impl Config {
    /// Reads and parses a file. A file that is not UTF-8 is an error naming it.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            ConfigError::NotUtf8 {
                path: path.to_path_buf(),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            }
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = RawConfig::parse(text).map_err(|(line, message)| ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        })?;
        let entries = raw
            .flatten()
            .map_err(|(line, message)| ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message,
            })?;
        Ok(Config { entries })
    }

    /// `upper` over `lower`: lookups see `upper`'s value where both have a key.
    pub fn layered(lower: Config, upper: Config) -> Config {
        let mut entries = lower.entries;
        entries.extend(upper.entries);
        Config { entries }
    }

    /// The winning value of `key` (matched case-insensitively) in any section.
    pub fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_lowercase();
        self.entries
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Every effective entry, in Dallinger's flattening order (see module docs).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// `(key, winning value)` pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut map = BTreeMap::new();
        for e in &self.entries {
            map.insert(e.key.as_str(), e.value.as_str());
        }
        map.into_iter()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

type LineError = (usize, String);

struct RawOption {
    key: String,
    /// The value's lines while the file is read; joined into `value` at the end.
    lines: Vec<String>,
    /// The value before interpolation.
    value: String,
    line: usize,
}

struct RawSection {
    name: String,
    options: Vec<RawOption>,
    /// Key -> index in `options`.
    index: HashMap<String, usize>,
}

impl RawSection {
    fn new(name: &str) -> RawSection {
        RawSection {
            name: name.to_string(),
            options: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn find(&self, key: &str) -> Option<&RawOption> {
        self.index.get(key).map(|&i| &self.options[i])
    }
}

/// What is left of [`MAX_FLATTENED`] while a file is flattened.
struct Budget {
    left: usize,
}

impl Budget {
    fn charge(&mut self, amount: usize) -> Result<(), String> {
        match self.left.checked_sub(amount) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "the settings grow past {} MiB here ([DEFAULT] keys repeat in every section and \
                 %(name)s references copy values in): make the file smaller",
                MAX_FLATTENED >> 20
            )),
        }
    }
}

/// The file before interpolation. `sections[0]` is `[DEFAULT]`.
struct RawConfig {
    sections: Vec<RawSection>,
}

impl RawConfig {
    fn parse(text: &str) -> Result<RawConfig, LineError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Python reads in universal-newlines mode: \r\n, \r and \n all end a line.
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut sections = vec![RawSection::new(DEFAULT_SECTION)];
        let mut section_lines: HashMap<String, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        let mut current_option: Option<usize> = None;
        let mut indent_level = 0usize;

        for (index, raw_line) in text.split('\n').enumerate() {
            let lineno = index + 1;
            let line = raw_line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.is_empty() {
                if let (Some(s), Some(o)) = (current, current_option) {
                    sections[s].options[o].lines.push(String::new());
                }
                continue;
            }
            let indent = raw_line.chars().take_while(|c| c.is_whitespace()).count();
            if let (Some(s), Some(o)) = (current, current_option) {
                if indent > indent_level {
                    sections[s].options[o].lines.push(line.to_string());
                    continue;
                }
            }
            indent_level = indent;

            if line.starts_with('[') {
                let header = match line.rfind(']') {
                    Some(close) if close >= 2 => &line[1..close],
                    _ => {
                        return Err((
                            lineno,
                            format!(
                                "invalid section header `{line}`: write it as `[Name]` \
                                 with a non-empty name and a closing `]`"
                            ),
                        ))
                    }
                };
                current_option = None;
                if header == DEFAULT_SECTION {
                    current = Some(0);
                    continue;
                }
                if let Some(first) = section_lines.get(header) {
                    return Err((
                        lineno,
                        format!(
                            "section [{header}] appears a second time (first at line {first}); \
                             merge the two sections into one"
                        ),
                    ));
                }
                section_lines.insert(header.to_string(), lineno);
                sections.push(RawSection::new(header));
                current = Some(sections.len() - 1);
                continue;
            }

            let Some(s) = current else {
                return Err((
                    lineno,
                    format!(
                        "`{line}` comes before any section header; \
                         put a header such as [Parameters] above it"
                    ),
                ));
            };
            let Some(split) = line.find(['=', ':']) else {
                return Err((
                    lineno,
                    format!(
                        "cannot parse `{line}`: expected `key = value`, a [Section] header \
                         or a comment starting with # or ; (indent a line to continue \
                         the previous value)"
                    ),
                ));
            };
            let key = line[..split].trim().to_lowercase();
            if key.is_empty() {
                return Err((
                    lineno,
                    format!("`{line}` has no key before `{}`", &line[split..split + 1]),
                ));
            }
            let value = line[split + 1..].trim().to_string();
            let section = &mut sections[s];
            if let Some(first) = section.find(&key) {
                return Err((
                    lineno,
                    format!(
                        "key `{key}` appears a second time in section [{}] \
                         (first at line {}); remove one of them",
                        section.name, first.line
                    ),
                ));
            }
            section.index.insert(key.clone(), section.options.len());
            section.options.push(RawOption {
                key,
                lines: vec![value],
                value: String::new(),
                line: lineno,
            });
            current_option = Some(section.options.len() - 1);
        }
        for option in sections.iter_mut().flat_map(|s| s.options.iter_mut()) {
            option.value = std::mem::take(&mut option.lines)
                .join("\n")
                .trim_end()
                .to_string();
        }
        Ok(RawConfig { sections })
    }

    /// Python's `for section in sections(): data.update(items(section))`,
    /// as a list of entries.
    fn flatten(&self) -> Result<Vec<Entry>, LineError> {
        let defaults = &self.sections[0];
        let mut entries = Vec::new();
        let mut budget = Budget {
            left: MAX_FLATTENED,
        };
        for section in &self.sections[1..] {
            let items = defaults
                .options
                .iter()
                .map(|d| section.find(&d.key).unwrap_or(d))
                .chain(
                    section
                        .options
                        .iter()
                        .filter(|o| defaults.find(&o.key).is_none()),
                );
            for option in items {
                let mut value = String::new();
                budget
                    .charge(std::mem::size_of::<Entry>() + section.name.len() + option.key.len())
                    .and_then(|()| {
                        self.interpolate(section, &option.value, 1, &mut value, &mut budget)
                    })
                    .map_err(|message| {
                        (
                            option.line,
                            format!(
                                "in the value of `{}` (section [{}]): {message}",
                                option.key, section.name
                            ),
                        )
                    })?;
                entries.push(Entry {
                    section: section.name.clone(),
                    key: option.key.clone(),
                    value,
                    line: option.line,
                });
            }
        }
        Ok(entries)
    }

    /// Python's `BasicInterpolation._interpolate_some`.
    fn interpolate(
        &self,
        section: &RawSection,
        mut rest: &str,
        depth: usize,
        out: &mut String,
        budget: &mut Budget,
    ) -> Result<(), String> {
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(format!(
                "%(name)s references nest more than {MAX_INTERPOLATION_DEPTH} deep; \
                 check for a reference loop"
            ));
        }
        while let Some(p) = rest.find('%') {
            budget.charge(p + 1)?;
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            match rest.as_bytes().get(1) {
                Some(b'%') => {
                    out.push('%');
                    rest = &rest[2..];
                }
                Some(b'(') => {
                    let name = rest[2..]
                        .find(')')
                        .filter(|&end| end > 0 && rest[2 + end + 1..].starts_with('s'))
                        .map(|end| &rest[2..2 + end]);
                    let Some(name) = name else {
                        return Err(format!(
                            "bad interpolation reference `{rest}`: write `%(name)s` to use \
                             another key's value, or `%%` for a literal %"
                        ));
                    };
                    // A reference costs more than the bytes it copies: the
                    // lookup is the work when the values are short.
                    budget.charge(REFERENCE_COST + name.len())?;
                    let key = name.to_lowercase();
                    rest = &rest[2 + name.len() + 2..];
                    let Some(option) = section.find(&key).or_else(|| self.sections[0].find(&key))
                    else {
                        return Err(format!(
                            "`%({name})s` refers to `{key}`, which is not set in section \
                             [{}] or [DEFAULT]; define it, or write `%%` for a literal %",
                            section.name
                        ));
                    };
                    let value = &option.value;
                    if value.contains('%') {
                        self.interpolate(section, value, depth + 1, out, budget)?;
                    } else {
                        budget.charge(value.len())?;
                        out.push_str(value);
                    }
                }
                _ => {
                    return Err(format!(
                        "`%` must be followed by `%` or `(`, found `{rest}`; \
                         write `%%` for a literal %"
                    ))
                }
            }
        }
        budget.charge(rest.len())?;
        out.push_str(rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/exp/config.txt"), text)
    }

    fn err(text: &str) -> (usize, String) {
        match parse(text).unwrap_err() {
            e @ ConfigError::Parse { .. } => {
                let ConfigError::Parse { line, .. } = &e else {
                    unreachable!()
                };
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("/exp/config.txt:{line}: ")),
                    "{msg}"
                );
                (*line, msg)
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn basic_sections_keys_and_flattening() {
        let c = parse(
            "# comment\n; other comment\n[Experiment]\nMode = debug\ntitle: A: b = c\n\n\
             [Docker]\n  docker_image_base_name =  ghcr.io/x/y  \nmode=live\n",
        )
        .unwrap();
        assert_eq!(c.get("mode"), Some("live"));
        assert_eq!(c.get("MODE"), Some("live"));
        assert_eq!(c.get("title"), Some("A: b = c"));
        assert_eq!(c.get("docker_image_base_name"), Some("ghcr.io/x/y"));
        assert_eq!(c.get("missing"), None);
        let keys: Vec<_> = c.iter().collect();
        assert_eq!(
            keys,
            vec![
                ("docker_image_base_name", "ghcr.io/x/y"),
                ("mode", "live"),
                ("title", "A: b = c")
            ]
        );
        assert_eq!(c.entries()[0].line, 4);
        assert_eq!(c.entries()[0].section, "Experiment");
    }

    #[test]
    fn no_inline_comments_and_empty_values() {
        let c = parse("[P]\nx = a;b # c\ny =\nz = ; not a comment\n").unwrap();
        assert_eq!(c.get("x"), Some("a;b # c"));
        assert_eq!(c.get("y"), Some(""));
        assert_eq!(c.get("z"), Some("; not a comment"));
    }

    #[test]
    fn continuation_lines() {
        let c =
            parse("[P]\ndesc = first\n  second\n\n    third\n  # a comment\n\n\nnext = 1\n  [P]\n")
                .unwrap();
        assert_eq!(c.get("desc"), Some("first\nsecond\n\nthird"));
        // `  [P]` is indented more than `next = 1`, so it continues that value.
        assert_eq!(c.get("next"), Some("1\n[P]"));
        // An indented first key is not a continuation of the header.
        let c = parse("[P]\n  a = 1\n    b = 2\nc = 3\r\n").unwrap();
        assert_eq!(c.get("a"), Some("1\nb = 2"));
        assert_eq!(c.get("c"), Some("3"));
    }

    #[test]
    fn default_section_and_interpolation() {
        let c = parse(
            "[DEFAULT]\nhost = example.org\nurl = https://%(HOST)s/%(path)s\n\
             [A]\npath = a\npct = 100%%\n[B]\npath = b\nhost = b.example.org\n",
        )
        .unwrap();
        let e: Vec<_> = c
            .entries()
            .iter()
            .map(|e| (e.section.as_str(), e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            e,
            vec![
                ("A", "host", "example.org"),
                ("A", "url", "https://example.org/a"),
                ("A", "path", "a"),
                ("A", "pct", "100%"),
                ("B", "host", "b.example.org"),
                ("B", "url", "https://b.example.org/b"),
                ("B", "path", "b"),
            ]
        );
        assert_eq!(c.get("url"), Some("https://b.example.org/b"));
        // Only [DEFAULT]: Dallinger sees nothing.
        assert!(parse("[DEFAULT]\na = 1\n").unwrap().is_empty());
    }

    #[test]
    fn layered_upper_wins() {
        let home = parse("[Heroku]\nteam = home\nregion = eu\n").unwrap();
        let exp = parse("[Parameters]\nteam = exp\n").unwrap();
        let c = Config::layered(home, exp);
        assert_eq!(c.get("team"), Some("exp"));
        assert_eq!(c.get("region"), Some("eu"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let (line, msg) = err("# c\nkey = 1\n[P]\n");
        assert_eq!(line, 2);
        assert!(msg.contains("before any section header"), "{msg}");

        let (line, msg) = err("[P]\na = 1\njust words\n");
        assert_eq!(line, 3);
        assert!(msg.contains("expected `key = value`"), "{msg}");

        let (line, msg) = err("[P]\na = 1\n[Q]\n[P]\n");
        assert_eq!(line, 4);
        assert!(msg.contains("section [P] appears a second time (first at line 1)"));

        let (line, msg) = err("[P]\na = 1\n[Q]\nA = 2\n\nA: 3\n");
        assert_eq!(line, 6);
        assert!(msg.contains("key `a` appears a second time in section [Q] (first at line 4)"));

        let (line, msg) = err("[P]\na = 1\n[Parameters\n");
        assert_eq!(line, 3);
        assert!(msg.contains("closing `]`"), "{msg}");
        assert_eq!(err("[]\n").0, 1);

        let (line, msg) = err("[P]\n= 1\n");
        assert_eq!(line, 2);
        assert!(msg.contains("no key"), "{msg}");

        let (line, msg) = err("[P]\na = 1\nb = %(nope)s\n");
        assert_eq!(line, 3);
        assert!(msg.contains("`nope`, which is not set"), "{msg}");

        let (line, msg) = err("[P]\nb = 100%\n");
        assert_eq!(line, 2);
        assert!(msg.contains("must be followed by"), "{msg}");

        let (_, msg) = err("[P]\nb = %(x\n");
        assert!(msg.contains("bad interpolation reference"), "{msg}");

        let (line, msg) = err("[P]\na = %(b)s\nb = %(a)s\n");
        assert_eq!(line, 2);
        assert!(msg.contains("loop"), "{msg}");
    }

    #[test]
    fn a_file_that_flattens_to_gigabytes_is_refused() {
        // Twenty references to a 1 MiB value: 20 MiB from a 1 MiB file.
        let text = format!(
            "[DEFAULT]\nbig = {}\n[P]\ncopies = {}\n",
            "x".repeat(1 << 20),
            "%(big)s".repeat(20)
        );
        let (line, msg) = err(&text);
        assert_eq!(line, 4);
        assert!(
            msg.contains("in the value of `copies` (section [P])"),
            "{msg}"
        );
        assert!(msg.contains("grow past 16 MiB"), "{msg}");
        // Eight references per level, ten levels deep: 8^10 copies of `x`
        // from 500 bytes.
        let mut text = String::from("[P]\n");
        for i in 0..10 {
            text.push_str(&format!("k{i} = {}\n", format!("%(k{})s", i + 1).repeat(8)));
        }
        text.push_str("k10 = x\n");
        assert!(err(&text).1.contains("grow past"));
        // 1000 [DEFAULT] keys in each of 1000 sections: a million entries
        // from 14 KB.
        let mut text = String::from("[DEFAULT]\n");
        for i in 0..1000 {
            text.push_str(&format!("d{i} = 1\n"));
        }
        for i in 0..1000 {
            text.push_str(&format!("[s{i}]\n"));
        }
        let (line, msg) = err(&text);
        assert!(msg.contains("grow past"), "{msg}");
        assert!((2..=1001).contains(&line), "{line}");
        // What a real file does stays well inside the limit.
        let mut text = String::from("[DEFAULT]\n");
        for i in 0..50 {
            text.push_str(&format!("d{i} = %(v)s/{i}\n"));
        }
        text.push_str(&format!("v = {}\n", "y".repeat(1000)));
        for i in 0..20 {
            text.push_str(&format!("[s{i}]\nown = 1\n"));
        }
        assert_eq!(parse(&text).unwrap().entries().len(), 20 * 52);
    }

    #[test]
    fn not_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.txt");
        std::fs::write(&path, b"[P]\na = 1\nb = \xff\n").unwrap();
        let e = Config::read(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("{}:3:", path.display())), "{msg}");
        assert!(msg.contains("UTF-8"), "{msg}");
        let e = Config::read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
    }
}
