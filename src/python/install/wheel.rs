//! Wheel files (PEP 427): their names, the metadata in their `.dist-info`
//! (`WHEEL`, `METADATA`, `entry_points.txt`, `RECORD`), and reading the
//! archive with every member path and every RECORD hash checked.
//!
//! Parsing follows what pip 23.2 does on Python 3.11 (its importlib
//! metadata backend), so that a wheel pip installs is read the same way here.

use fs_err::{self as fs, File};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dallinger_oci_layers::{Content, ZipArchiveFile, ZipMember, ZipMethod};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use std::sync::Arc;

use crate::python::spec::{
    header, headers_all, normalise_name, parse_headers, same_version, PackageName,
};

/// Metadata files larger than this are refused rather than read into memory.
pub const MAX_METADATA_FILE: u64 = 64 << 20;
/// A member may declare at most this many bytes uncompressed (the largest
/// files of real wheels, CUDA libraries, are under 2 GiB).
const MAX_MEMBER_SIZE: u64 = 4 << 30;
/// All members of a wheel together may declare at most this many bytes
/// (the largest real wheels unpack to under 8 GiB).
const MAX_UNPACKED_SIZE: u64 = 16 << 30;

/// What is wrong with a wheel. The caller adds which wheel it was.
#[derive(Debug, thiserror::Error)]
pub enum WheelError {
    #[error("invalid wheel file name {filename:?}: {reason}")]
    Filename { filename: String, reason: String },
    /// A member of the archive with a bad path, or one that fails its RECORD check.
    #[error("{path:?}: {reason}")]
    Member { path: String, reason: String },
    /// A metadata file (`WHEEL`, `METADATA`, `RECORD`, ...) that cannot be used.
    #[error("{file}: {reason}")]
    Metadata { file: String, reason: String },
    /// Anything else about the archive's layout.
    #[error("{0}")]
    Invalid(String),
    #[error("not a readable zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

fn member(path: &str, reason: impl Into<String>) -> WheelError {
    WheelError::Member {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn metadata_error(file: &str, reason: impl Into<String>) -> WheelError {
    WheelError::Metadata {
        file: file.to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// File names
// ---------------------------------------------------------------------------

/// A wheel file name, `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`.
/// Compressed tag sets (`py2.py3`) are split on `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelFilename {
    /// As written in the file name (`_` for runs of `-_.` in modern wheels).
    pub name: String,
    pub version: String,
    /// The optional build tag; it always starts with a digit.
    pub build: Option<String>,
    pub python_tags: Vec<String>,
    pub abi_tags: Vec<String>,
    pub platform_tags: Vec<String>,
}

impl WheelFilename {
    pub fn parse(filename: &str) -> Result<WheelFilename, WheelError> {
        let bad = |reason: &str| WheelError::Filename {
            filename: filename.to_string(),
            reason: reason.to_string(),
        };
        if filename.contains('/') || filename.contains('\\') {
            return Err(bad("it is a path, not a file name"));
        }
        let stem = filename
            .strip_suffix(".whl")
            .ok_or_else(|| bad("it does not end in .whl"))?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, build, tags) = match parts.as_slice() {
            [n, v, p, a, pl] => (*n, *v, None, [*p, *a, *pl]),
            [n, v, b, p, a, pl] => (*n, *v, Some(*b), [*p, *a, *pl]),
            _ => {
                return Err(bad(
                    "expected {name}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl",
                ))
            }
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        {
            return Err(bad(
                "the distribution name must be non-empty ASCII letters, digits, '_' and '.'",
            ));
        }
        if version.is_empty() || version.chars().any(|c| c.is_whitespace()) {
            return Err(bad("the version is empty or contains whitespace"));
        }
        if let Some(b) = build {
            if !b.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(bad("the build tag must start with a digit"));
            }
        }
        let split = |set: &str, what: &str| -> Result<Vec<String>, WheelError> {
            let tags: Vec<String> = set.split('.').map(str::to_string).collect();
            if tags
                .iter()
                .any(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(bad(&format!("invalid {what} tag set {set:?}")));
            }
            Ok(tags)
        };
        Ok(WheelFilename {
            name: name.to_string(),
            version: version.to_string(),
            build: build.map(str::to_string),
            python_tags: split(tags[0], "python")?,
            abi_tags: split(tags[1], "abi")?,
            platform_tags: split(tags[2], "platform")?,
        })
    }

    /// Every `(python, abi, platform)` tag the wheel claims.
    pub fn tags(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for p in &self.python_tags {
            for a in &self.abi_tags {
                for pl in &self.platform_tags {
                    out.push((p.clone(), a.clone(), pl.clone()));
                }
            }
        }
        out
    }
}

impl fmt::Display for WheelFilename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.name, self.version)?;
        if let Some(b) = &self.build {
            write!(f, "-{b}")?;
        }
        write!(
            f,
            "-{}-{}-{}.whl",
            self.python_tags.join("."),
            self.abi_tags.join("."),
            self.platform_tags.join(".")
        )
    }
}

// ---------------------------------------------------------------------------
// Email-header files: WHEEL and METADATA
// ---------------------------------------------------------------------------

/// The `.dist-info/WHEEL` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelInfo {
    /// (major, minor) of `Wheel-Version`; the major version is always 1.
    pub wheel_version: (u32, u32),
    pub root_is_purelib: bool,
    pub generator: Option<String>,
    pub tags: Vec<String>,
    pub build: Option<String>,
}

impl WheelInfo {
    /// `file` names the file in error messages.
    pub fn parse(file: &str, text: &str) -> Result<WheelInfo, WheelError> {
        let fields = parse_headers(text).map_err(|r| metadata_error(file, r))?;
        let version = header(&fields, "Wheel-Version")
            .ok_or_else(|| metadata_error(file, "it has no Wheel-Version"))?;
        let parsed = version
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        let Some((major, minor)) = parsed else {
            return Err(metadata_error(
                file,
                format!("Wheel-Version {version:?} is not MAJOR.MINOR"),
            ));
        };
        if major != 1 {
            return Err(metadata_error(
                file,
                format!("Wheel-Version {version} is not supported (only 1.x is)"),
            ));
        }
        Ok(WheelInfo {
            wheel_version: (major, minor),
            // pip: metadata.get("Root-Is-Purelib", "").lower() == "true"
            root_is_purelib: header(&fields, "Root-Is-Purelib")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            generator: header(&fields, "Generator").map(str::to_string),
            tags: headers_all(&fields, "Tag")
                .into_iter()
                .map(str::to_string)
                .collect(),
            build: header(&fields, "Build").map(str::to_string),
        })
    }
}

/// The parts of `.dist-info/METADATA` (core metadata) the installer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMetadata {
    pub metadata_version: Option<String>,
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
}

impl CoreMetadata {
    pub fn parse(file: &str, text: &str) -> Result<CoreMetadata, WheelError> {
        let fields = parse_headers(text).map_err(|r| metadata_error(file, r))?;
        let required = |name: &str| -> Result<String, WheelError> {
            match header(&fields, name) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(metadata_error(file, format!("it has no {name}"))),
            }
        };
        Ok(CoreMetadata {
            metadata_version: header(&fields, "Metadata-Version").map(str::to_string),
            name: required("Name")?,
            version: required("Version")?,
            requires_dist: headers_all(&fields, "Requires-Dist")
                .into_iter()
                .map(str::to_string)
                .collect(),
            requires_python: header(&fields, "Requires-Python")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        })
    }
}

// ---------------------------------------------------------------------------
// entry_points.txt
// ---------------------------------------------------------------------------

/// A `console_scripts` or `gui_scripts` entry: `name = module:attr.path [extras]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptEntry {
    pub name: String,
    /// `module` in `module:attr`.
    pub module: String,
    /// `attr.path` in `module:attr.path`.
    pub attr: String,
}

/// The script groups of `entry_points.txt`, in file order; a name given twice
/// in a group keeps its first place and its last value, as pip's dict does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPoints {
    pub console_scripts: Vec<ScriptEntry>,
    pub gui_scripts: Vec<ScriptEntry>,
}

impl EntryPoints {
    /// Parses like `importlib.metadata` (what pip 23.2 uses on Python 3.11):
    /// lines are stripped, empty lines and `#` comments skipped, `[group]`
    /// starts a group, entries are `name = value` split at the first `=`.
    /// Groups other than the two script groups are ignored.
    pub fn parse(file: &str, text: &str) -> Result<EntryPoints, WheelError> {
        let mut group: Option<String> = None;
        let mut out = EntryPoints::default();
        for (n, line) in text.lines().map(str::trim).enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                group = Some(line.trim_matches(|c| c == '[' || c == ']').to_string());
                continue;
            }
            let list = match group.as_deref() {
                Some("console_scripts") => &mut out.console_scripts,
                Some("gui_scripts") => &mut out.gui_scripts,
                _ => continue,
            };
            let Some((name, value)) = line.split_once('=') else {
                return Err(metadata_error(
                    file,
                    format!("line {}: {line:?} is not `name = value`", n + 1),
                ));
            };
            let entry = parse_script_entry(name.trim(), value.trim())
                .map_err(|r| metadata_error(file, format!("line {}: {r}", n + 1)))?;
            match list.iter_mut().find(|e| e.name == entry.name) {
                Some(existing) => *existing = entry,
                None => list.push(entry),
            }
        }
        Ok(out)
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The rules of distlib's `get_export_entry` as pip applies them: the name is
/// `[\w.+-]+`, the value starts with `module:attr` where both sides are
/// dotted `\w+` runs and there is exactly one `:`; extras after it are ignored.
fn parse_script_entry(name: &str, value: &str) -> Result<ScriptEntry, String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| is_word(c) || matches!(c, '-' | '.' | '+'))
    {
        return Err(format!("invalid script name {name:?}"));
    }
    let callable: String = value
        .chars()
        .take_while(|&c| is_word(c) || c == ':' || c == '.')
        .collect();
    let dotted = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(is_word))
    };
    let (module, attr) = match callable.split(':').collect::<Vec<_>>().as_slice() {
        [m, a] if dotted(m) && dotted(a) => (m.to_string(), a.to_string()),
        [m] if dotted(m) => {
            return Err(format!(
                "invalid script entry point {name} = {value}: a callable suffix (module:function) is required"
            ))
        }
        _ => return Err(format!("invalid script entry point {name} = {value}")),
    };
    Ok(ScriptEntry {
        name: name.to_string(),
        module,
        attr,
    })
}

// ---------------------------------------------------------------------------
// RECORD
// ---------------------------------------------------------------------------

/// One row of a RECORD file, as written: `path,hash,size`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordRow {
    pub path: String,
    /// `algorithm=urlsafe-base64-nopad digest`, or empty.
    pub hash: String,
    /// Decimal size, or empty.
    pub size: String,
}

/// Reads RECORD's CSV (`,` separated, `"` quoted with `""` escapes, LF or
/// CRLF line ends). Empty lines are skipped; fields past the third ignored.
pub fn parse_record(file: &str, text: &str) -> Result<Vec<RecordRow>, WheelError> {
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut in_quotes = false;
    let mut quoted_field = false;
    let finish_row = |fields: &mut Vec<String>, rows: &mut Vec<RecordRow>| {
        if fields.len() == 1 && fields[0].is_empty() {
            fields.clear();
            return;
        }
        let mut it = std::mem::take(fields).into_iter();
        rows.push(RecordRow {
            path: it.next().unwrap_or_default(),
            hash: it.next().unwrap_or_default(),
            size: it.next().unwrap_or_default(),
        });
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted_field => {
                in_quotes = true;
                quoted_field = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted_field = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                quoted_field = false;
                finish_row(&mut fields, &mut rows);
                line += 1;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(metadata_error(
            file,
            format!("line {line}: unterminated quoted field"),
        ));
    }
    if !field.is_empty() || !fields.is_empty() || quoted_field {
        fields.push(field);
        finish_row(&mut fields, &mut rows);
    }
    if let Some(row) = rows.iter().find(|r| r.path.is_empty()) {
        return Err(metadata_error(
            file,
            format!("a row has an empty path: {row:?}"),
        ));
    }
    Ok(rows)
}

fn csv_field(out: &mut String, value: &str) {
    // Python's csv.QUOTE_MINIMAL with the default dialect.
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Writes RECORD rows as CSV with LF line ends (pip writes CRLF).
pub fn write_record(rows: &[RecordRow]) -> String {
    let mut out = String::new();
    for row in rows {
        csv_field(&mut out, &row.path);
        out.push(',');
        csv_field(&mut out, &row.hash);
        out.push(',');
        csv_field(&mut out, &row.size);
        out.push('\n');
    }
    out
}

/// `sha256=<urlsafe base64, no padding>`, RECORD's hash format.
pub fn record_hash(sha256: &[u8]) -> String {
    format!("sha256={}", URL_SAFE_NO_PAD.encode(sha256))
}

/// A RECORD hash whose algorithm we can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

fn parse_record_hash(hash: &str) -> Result<(HashAlgorithm, Vec<u8>), String> {
    let (algorithm, digest) = hash
        .split_once('=')
        .ok_or_else(|| format!("hash {hash:?} is not algorithm=digest"))?;
    let (algorithm, len) = match algorithm {
        "sha256" => (HashAlgorithm::Sha256, 32),
        "sha384" => (HashAlgorithm::Sha384, 48),
        "sha512" => (HashAlgorithm::Sha512, 64),
        other => {
            return Err(format!(
                "hash algorithm {other:?} is not accepted (sha256, sha384 or sha512)"
            ))
        }
    };
    // Tolerate padding; the spec says none.
    let bytes = URL_SAFE_NO_PAD
        .decode(digest.trim_end_matches('='))
        .map_err(|_| format!("hash {hash:?} is not urlsafe base64"))?;
    if bytes.len() != len {
        return Err(format!("hash {hash:?} has the wrong length"));
    }
    Ok((algorithm, bytes))
}

/// Hashes a stream with sha256 and, if RECORD uses it, a stronger algorithm.
struct RecordHasher {
    sha256: Sha256,
    other: Option<Box<dyn sha2::digest::DynDigest>>,
    size: u64,
}

impl RecordHasher {
    fn new(algorithm: Option<HashAlgorithm>) -> Self {
        let other: Option<Box<dyn sha2::digest::DynDigest>> = match algorithm {
            Some(HashAlgorithm::Sha384) => Some(Box::new(Sha384::new())),
            Some(HashAlgorithm::Sha512) => Some(Box::new(Sha512::new())),
            _ => None,
        };
        RecordHasher {
            sha256: Sha256::new(),
            other,
            size: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(o) = self.other.as_mut() {
            o.update(bytes);
        }
        self.size += bytes.len() as u64;
    }
}

// ---------------------------------------------------------------------------
// The archive
// ---------------------------------------------------------------------------

/// A regular file in the archive (directory entries are not kept: like pip,
/// the installer creates directories only for the files in them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub name: String,
    index: usize,
    /// The uncompressed size the zip's central directory declares; reading
    /// stops (with an error) past it.
    declared_size: u64,
    /// Any exec bit in the zip entry's unix mode of a regular file (pip's
    /// `zip_item_is_executable`).
    pub executable: bool,
    /// Where its data starts, its compressed size and how it is stored;
    /// `None` for a compression method other than stored or deflated.
    data: Option<(u64, u64, ZipMethod)>,
}

/// The `.dist-info` metadata of a wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistInfo {
    /// The `.dist-info` directory name, e.g. `flask-3.1.0.dist-info`.
    pub dir: String,
    pub wheel: WheelInfo,
    pub metadata: CoreMetadata,
    pub entry_points: EntryPoints,
    /// RECORD rows as the wheel has them.
    pub record: Vec<RecordRow>,
}

impl DistInfo {
    /// Parses the four files from their contents (`None`: file absent).
    /// `filename` is the wheel's parsed file name; the dist-info directory
    /// and METADATA must agree with it.
    pub fn parse(
        filename: &WheelFilename,
        dir: &str,
        wheel: Option<&[u8]>,
        metadata: Option<&[u8]>,
        entry_points: Option<&[u8]>,
        record: Option<&[u8]>,
    ) -> Result<DistInfo, WheelError> {
        let text = |name: &str, bytes: Option<&[u8]>| -> Result<Option<String>, WheelError> {
            bytes
                .map(|b| {
                    String::from_utf8(b.to_vec())
                        .map_err(|_| metadata_error(&format!("{dir}/{name}"), "it is not UTF-8"))
                })
                .transpose()
        };
        let required = |name: &str, bytes: Option<&[u8]>| -> Result<String, WheelError> {
            text(name, bytes)?
                .ok_or_else(|| WheelError::Invalid(format!("the wheel has no {dir}/{name}")))
        };
        let wheel = WheelInfo::parse(&format!("{dir}/WHEEL"), &required("WHEEL", wheel)?)?;
        let metadata =
            CoreMetadata::parse(&format!("{dir}/METADATA"), &required("METADATA", metadata)?)?;
        let entry_points = match text("entry_points.txt", entry_points)? {
            Some(t) => EntryPoints::parse(&format!("{dir}/entry_points.txt"), &t)?,
            None => EntryPoints::default(),
        };
        let record = parse_record(&format!("{dir}/RECORD"), &required("RECORD", record)?)?;
        if PackageName::new(&metadata.name) != PackageName::new(&filename.name) {
            return Err(metadata_error(
                &format!("{dir}/METADATA"),
                format!(
                    "Name {:?} does not match the file name's {:?}",
                    metadata.name, filename.name
                ),
            ));
        }
        if !same_version(&metadata.version, &filename.version)
            .unwrap_or_else(|| loosely_same_version(&metadata.version, &filename.version))
        {
            return Err(metadata_error(
                &format!("{dir}/METADATA"),
                format!(
                    "Version {:?} does not match the file name's {:?}",
                    metadata.version, filename.version
                ),
            ));
        }
        Ok(DistInfo {
            dir: dir.to_string(),
            wheel,
            metadata,
            entry_points,
            record,
        })
    }
}

/// Versions that are not PEP 440 compared loosely (case, `-`/`_`/`.`
/// separators, a leading `v`): enough to catch a mislabelled wheel.
fn loosely_same_version(a: &str, b: &str) -> bool {
    let norm = |v: &str| {
        v.trim()
            .trim_start_matches(['v', 'V'])
            .to_ascii_lowercase()
            .replace(['-', '_'], ".")
    };
    norm(a) == norm(b)
}

/// Checks a member name. Returns the name without a directory's trailing `/`.
pub fn check_member_name(name: &str) -> Result<&str, WheelError> {
    if name.is_empty() {
        return Err(member(name, "the name is empty"));
    }
    if name.contains('\0') {
        return Err(member(name, "the name contains NUL"));
    }
    if name.contains('\\') {
        return Err(member(name, "the name contains a backslash"));
    }
    if name.starts_with('/') {
        return Err(member(name, "the path is absolute"));
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let parts: Vec<&str> = trimmed.split('/').collect();
    let first = parts[0].as_bytes();
    if first.len() == 2 && first[1] == b':' && first[0].is_ascii_alphabetic() {
        return Err(member(name, "the path is absolute (a drive letter)"));
    }
    if parts.contains(&"..") {
        return Err(member(name, "the path contains '..'"));
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err(member(name, "the path has an empty or '.' component"));
    }
    Ok(trimmed)
}

/// An open wheel whose member names have been checked: none absolute, none
/// with `..`, `.`, empty components, backslashes or NUL, no name twice, no
/// file where another member needs a directory, exactly one `.dist-info`;
/// and whose declared sizes are bounded: no member over 4 GiB, all of them
/// together under 16 GiB. A member is never read past its declared size.
pub struct WheelArchive<R> {
    zip: zip::ZipArchive<R>,
    filename: WheelFilename,
    files: Vec<ArchiveFile>,
    dist_info_dir: String,
}

impl WheelArchive<File> {
    pub fn open(path: &Path) -> Result<WheelArchive<File>, WheelError> {
        let filename = Self::filename_of(path)?;
        let file = File::open(path).map_err(|e| WheelError::Zip(e.into()))?;
        WheelArchive::new(filename, file)
    }

    /// The metadata and regular files of the wheel at `path`, the files'
    /// bytes to be read from the wheel when the layer is written (see
    /// [`WheelArchive::members`]). The archive is opened once: its listing
    /// and its members' bytes come from the same open file.
    pub fn read_members(path: &Path) -> Result<(DistInfo, Vec<WheelMember>), WheelError> {
        let filename = Self::filename_of(path)?;
        let archive = ZipArchiveFile::open(path).map_err(|e| WheelError::Zip(e.into()))?;
        let shared = archive
            .file()
            .try_clone()
            .map_err(|e| WheelError::Zip(e.into()))?;
        let mut wheel = WheelArchive::new(filename, File::from_parts(shared, path))?;
        wheel.members(&archive)
    }

    fn filename_of(path: &Path) -> Result<WheelFilename, WheelError> {
        let filename =
            path.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| WheelError::Filename {
                    filename: path.display().to_string(),
                    reason: "not a UTF-8 file name".into(),
                })?;
        WheelFilename::parse(filename)
    }
}

impl<R: Read + Seek> WheelArchive<R> {
    pub fn new(filename: WheelFilename, reader: R) -> Result<WheelArchive<R>, WheelError> {
        let mut zip = zip::ZipArchive::new(reader)?;
        if zip.has_duplicate_names() {
            return Err(duplicate_error(zip));
        }
        let mut files = Vec::new();
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut declared_total = 0u64;
        for index in 0..zip.len() {
            let entry = zip.by_index_raw(index)?;
            let raw_name = entry
                .name()
                .map_err(|e| member(&String::from_utf8_lossy(entry.name_raw()), e.to_string()))?
                .into_owned();
            let name = check_member_name(&raw_name)?.to_string();
            if entry.encrypted() {
                return Err(member(&raw_name, "the member is encrypted"));
            }
            if !seen.insert(name.clone()) {
                return Err(member(&raw_name, "the name occurs twice in the archive"));
            }
            let mut parent = name.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                dirs.insert(p.to_string());
                parent = p;
            }
            if raw_name.ends_with('/') {
                dirs.insert(name);
                continue;
            }
            let declared_size = entry.size();
            if declared_size > MAX_MEMBER_SIZE {
                return Err(member(
                    &raw_name,
                    format!(
                        "it declares {declared_size} bytes uncompressed, more than the \
                         {MAX_MEMBER_SIZE} a wheel member may have"
                    ),
                ));
            }
            declared_total = declared_total.saturating_add(declared_size);
            if declared_total > MAX_UNPACKED_SIZE {
                return Err(member(
                    &raw_name,
                    format!(
                        "with it the members declare more than {MAX_UNPACKED_SIZE} bytes \
                         uncompressed, the most a wheel may unpack to"
                    ),
                ));
            }
            // pip: mode and stat.S_ISREG(mode) and mode & 0o111
            let mode = entry.external_attributes() >> 16;
            let method = match entry.compression() {
                zip::CompressionMethod::Stored => Some(ZipMethod::Stored),
                zip::CompressionMethod::Deflated => Some(ZipMethod::Deflated),
                _ => None,
            };
            // The raw entry has read its local header, so its data start
            // is known.
            let data = method.and_then(|m| {
                entry
                    .data_start()
                    .map(|start| (start, entry.compressed_size(), m))
            });
            files.push(ArchiveFile {
                name,
                index,
                declared_size,
                executable: mode & 0o170000 == 0o100000 && mode & 0o111 != 0,
                data,
            });
        }
        if let Some(f) = files.iter().find(|f| dirs.contains(&f.name)) {
            return Err(member(
                &f.name,
                "it is a file, but other members are inside it as a directory",
            ));
        }
        // pip: the first components that end in .dist-info, exactly one.
        let tops: BTreeSet<&str> = seen.iter().map(|n| n.split('/').next().unwrap()).collect();
        let infos: Vec<&str> = tops
            .iter()
            .copied()
            .filter(|t| t.ends_with(".dist-info"))
            .collect();
        let dist_info_dir = match infos.as_slice() {
            [one] => one.to_string(),
            [] => return Err(WheelError::Invalid("it has no .dist-info directory".into())),
            many => {
                return Err(WheelError::Invalid(format!(
                    "it has several .dist-info directories: {}",
                    many.join(", ")
                )))
            }
        };
        if !normalise_name(&dist_info_dir).starts_with(&normalise_name(&filename.name)) {
            return Err(WheelError::Invalid(format!(
                ".dist-info directory {dist_info_dir:?} does not start with the name {:?}",
                filename.name
            )));
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(WheelArchive {
            zip,
            filename,
            files,
            dist_info_dir,
        })
    }

    pub fn filename(&self) -> &WheelFilename {
        &self.filename
    }

    /// The regular files, sorted by name.
    pub fn files(&self) -> &[ArchiveFile] {
        &self.files
    }

    pub fn dist_info_dir(&self) -> &str {
        &self.dist_info_dir
    }

    /// Reads a small member (metadata) into memory; `None` if absent.
    pub fn read_member(&mut self, name: &str) -> Result<Option<Vec<u8>>, WheelError> {
        let Some(file) = self.files.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        let declared = file.declared_size;
        if declared > MAX_METADATA_FILE {
            return Err(member(name, "too large for a metadata file"));
        }
        let entry = self.zip.by_index(file.index)?;
        let mut out = Vec::with_capacity(declared as usize);
        entry
            .take(declared + 1)
            .read_to_end(&mut out)
            .map_err(|e| member(name, format!("cannot be decompressed: {e}")))?;
        if out.len() as u64 != declared {
            return Err(member(
                name,
                format!(
                    "it inflates to {} bytes, not the {declared} its zip header declares",
                    out.len()
                ),
            ));
        }
        Ok(Some(out))
    }

    /// Reads and parses the `.dist-info` metadata.
    pub fn dist_info(&mut self) -> Result<DistInfo, WheelError> {
        let dir = self.dist_info_dir.clone();
        let read = |this: &mut Self, name: &str| this.read_member(&format!("{dir}/{name}"));
        let wheel = read(self, "WHEEL")?;
        let metadata = read(self, "METADATA")?;
        let entry_points = read(self, "entry_points.txt")?;
        let record = read(self, "RECORD")?;
        DistInfo::parse(
            &self.filename,
            &dir,
            wheel.as_deref(),
            metadata.as_deref(),
            entry_points.as_deref(),
            record.as_deref(),
        )
    }

    /// What RECORD says of each regular file (in [`WheelArchive::files`]'s
    /// order), checked against the archive's listing: every file but
    /// RECORD and its signatures must be listed with a hash (sha256, sha384
    /// or sha512) and a valid size, no path listed twice differently, and
    /// every row must name a file of the archive. `None` for the files
    /// RECORD need not list. The bytes are checked as they are read.
    fn record_expectations(&self, info: &DistInfo) -> Result<Vec<Option<Expected>>, WheelError> {
        let record_file = format!("{}/RECORD", info.dir);
        let unlisted_ok = [
            record_file.clone(),
            format!("{}/RECORD.jws", info.dir),
            format!("{}/RECORD.p7s", info.dir),
        ];
        let mut listed: BTreeMap<&str, &RecordRow> = BTreeMap::new();
        for row in &info.record {
            if let Some(previous) = listed.insert(row.path.as_str(), row) {
                if previous != row {
                    return Err(metadata_error(
                        &record_file,
                        format!("{:?} is listed twice, differently", row.path),
                    ));
                }
            }
        }
        let names: BTreeSet<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        if let Some(row) = info
            .record
            .iter()
            .find(|r| !names.contains(r.path.as_str()) && !unlisted_ok.contains(&r.path))
        {
            return Err(metadata_error(
                &record_file,
                format!("it lists {:?}, which is not in the wheel", row.path),
            ));
        }
        let mut out = Vec::with_capacity(self.files.len());
        for file in &self.files {
            out.push(match listed.get(file.name.as_str()) {
                _ if unlisted_ok.contains(&file.name) => None,
                None => return Err(member(&file.name, "it is not listed in RECORD")),
                Some(row) if row.hash.is_empty() => {
                    return Err(member(&file.name, "RECORD gives it no hash"))
                }
                Some(row) => {
                    let (algorithm, digest) = parse_record_hash(&row.hash)
                        .map_err(|r| member(&file.name, format!("in RECORD: {r}")))?;
                    let size = match row.size.as_str() {
                        "" => None,
                        s => Some(s.parse::<u64>().map_err(|_| {
                            member(&file.name, format!("in RECORD: size {s:?} is not a number"))
                        })?),
                    };
                    Some(Expected {
                        algorithm,
                        digest,
                        size,
                    })
                }
            });
        }
        Ok(out)
    }

    /// Streams member `file` to `out` through the zip reader, never past
    /// its declared size nor RECORD's, checking its hash against `expected`.
    /// Returns its sha256.
    fn stream_member(
        &mut self,
        file: &ArchiveFile,
        expected: Option<&Expected>,
        out: &mut dyn Write,
        write_err: &dyn Fn(io::Error) -> WheelError,
    ) -> Result<[u8; 32], WheelError> {
        let mut buf = vec![0u8; 256 << 10];
        let mut entry = self.zip.by_index(file.index)?;
        let mut hasher = RecordHasher::new(expected.map(|e| e.algorithm));
        // Never write more than RECORD promises, nor than the zip's
        // header declares (a zip bomb stops here).
        let record_limit = expected.and_then(|e| e.size);
        let declared = file.declared_size;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| member(&file.name, format!("cannot be decompressed: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some(limit) = record_limit.filter(|l| hasher.size > *l) {
                return Err(member(
                    &file.name,
                    format!("it is larger than the {limit} bytes RECORD gives"),
                ));
            }
            if hasher.size > declared {
                return Err(member(
                    &file.name,
                    format!("it inflates past the {declared} bytes its zip header declares"),
                ));
            }
            out.write_all(&buf[..n]).map_err(write_err)?;
        }
        drop(entry);
        if hasher.size != declared {
            return Err(member(
                &file.name,
                format!(
                    "it inflates to {} bytes, not the {declared} its zip header declares",
                    hasher.size
                ),
            ));
        }
        let size = hasher.size;
        let sha256: [u8; 32] = hasher.sha256.clone().finalize().into();
        if let Some(expected) = expected {
            let actual = match (expected.algorithm, hasher.other) {
                (HashAlgorithm::Sha256, _) | (_, None) => sha256.to_vec(),
                (_, Some(mut other)) => other.finalize_reset().to_vec(),
            };
            if actual != expected.digest {
                return Err(member(&file.name, "its hash does not match RECORD"));
            }
            if let Some(record_size) = expected.size {
                if record_size != size {
                    return Err(member(
                        &file.name,
                        format!("it has {size} bytes but RECORD says {record_size}"),
                    ));
                }
            }
        }
        Ok(sha256)
    }

    /// Writes every regular file under `dest` (mode 0644, or 0755 for
    /// executable members), checking each against RECORD as it streams
    /// (see [`WheelArchive::record_expectations`]). Returns the parsed
    /// metadata. On error `dest` may hold some files: the caller discards it.
    pub fn extract_verified(&mut self, dest: &Path) -> Result<DistInfo, WheelError> {
        let info = self.dist_info()?;
        let expectations = self.record_expectations(&info)?;
        let files = self.files.clone();
        for (file, expected) in files.iter().zip(&expectations) {
            let path = dest.join(&file.name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| WheelError::Write {
                    path: parent.to_path_buf(),
                    source: e,
                })?;
            }
            let write_err = |e: io::Error| WheelError::Write {
                path: path.clone(),
                source: e,
            };
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(write_err)?;
            self.stream_member(file, expected.as_ref(), &mut out, &write_err)?;
            let mode = if file.executable { 0o755 } else { 0o644 };
            set_mode(&out, mode).map_err(write_err)?;
        }
        Ok(info)
    }
}

/// What RECORD says one file must be.
struct Expected {
    algorithm: HashAlgorithm,
    digest: Vec<u8>,
    size: Option<u64>,
}

/// A regular file of a wheel whose bytes are read from the wheel itself
/// when the layer is written (see [`WheelArchive::members`]).
pub struct WheelMember {
    pub name: String,
    pub executable: bool,
    /// Its bytes: a zip member checked against its sha256 as it is read.
    pub content: Content,
    /// The sha256 its bytes have (RECORD's, or computed when RECORD gives
    /// another algorithm or need not list it).
    pub sha256: [u8; 32],
    pub size: u64,
}

impl WheelArchive<File> {
    /// The wheel's metadata and every regular file as a member read from
    /// `archive` (the same file, opened once) when the layer is written:
    /// nothing is unpacked. All of RECORD's checks that need no bytes are
    /// made here (see [`WheelArchive::record_expectations`]); a member whose
    /// RECORD hash is sha256 is hashed and size-checked while it streams
    /// into the layer, the others (other algorithms, RECORD's signatures)
    /// are read and checked here once, to learn their sha256.
    fn members(
        &mut self,
        archive: &Arc<ZipArchiveFile>,
    ) -> Result<(DistInfo, Vec<WheelMember>), WheelError> {
        let info = self.dist_info()?;
        let expectations = self.record_expectations(&info)?;
        let files = self.files.clone();
        let mut out = Vec::with_capacity(files.len());
        for (file, expected) in files.iter().zip(&expectations) {
            let Some((data_start, compressed_size, method)) = file.data else {
                return Err(member(
                    &file.name,
                    "its compression method is not supported (stored or deflated)",
                ));
            };
            let sha256 = match expected {
                Some(e) if e.algorithm == HashAlgorithm::Sha256 => {
                    if e.size.is_some_and(|size| size != file.declared_size) {
                        // RECORD and the zip disagree: read it now, so the
                        // refusal is the one streaming it gives (the hash
                        // first, then the sizes).
                        self.stream_member(file, Some(e), &mut io::sink(), &|e| {
                            member(&file.name, e.to_string())
                        })?;
                        return Err(member(
                            &file.name,
                            "its zip header's size differs from RECORD's",
                        ));
                    }
                    e.digest
                        .as_slice()
                        .try_into()
                        .expect("a sha256 is 32 bytes")
                }
                other => self.stream_member(file, other.as_ref(), &mut io::sink(), &|e| {
                    member(&file.name, e.to_string())
                })?,
            };
            out.push(WheelMember {
                name: file.name.clone(),
                executable: file.executable,
                content: Content::ZipMember(Box::new(ZipMember {
                    archive: archive.clone(),
                    name: file.name.clone(),
                    data_start,
                    compressed_size,
                    method,
                    size: file.declared_size,
                    sha256,
                })),
                sha256,
                size: file.declared_size,
            });
        }
        Ok((info, out))
    }
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Names a member that occurs twice: `ZipArchive` keeps one entry per name,
/// so the raw central directory is walked again (46-byte fixed headers, each
/// followed by the name, extra field and comment).
fn duplicate_error<R: Read + Seek>(zip: zip::ZipArchive<R>) -> WheelError {
    let fallback = WheelError::Invalid("a member name occurs twice in the archive".into());
    let start = zip.central_directory_start();
    let mut reader = zip.into_inner();
    let mut bytes = Vec::new();
    if reader.seek(io::SeekFrom::Start(start)).is_err()
        || reader.take(64 << 20).read_to_end(&mut bytes).is_err()
    {
        return fallback;
    }
    let mut seen = BTreeSet::new();
    let mut pos = 0usize;
    while pos + 46 <= bytes.len() && bytes[pos..pos + 4] == [0x50, 0x4b, 0x01, 0x02] {
        let le16 = |o: usize| u16::from_le_bytes([bytes[pos + o], bytes[pos + o + 1]]) as usize;
        let (name_len, extra_len, comment_len) = (le16(28), le16(30), le16(32));
        let Some(name) = bytes.get(pos + 46..pos + 46 + name_len) else {
            break;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if !seen.insert(name.clone()) {
            return member(&name, "the name occurs twice in the archive");
        }
        pos += 46 + name_len + extra_len + comment_len;
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_filenames() {
        let w = WheelFilename::parse(
            "zope.interface-7.2-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl",
        )
        .unwrap();
        assert_eq!(w.name, "zope.interface");
        assert_eq!(w.version, "7.2");
        assert_eq!(w.build, None);
        assert_eq!(w.python_tags, ["cp311"]);
        assert_eq!(w.abi_tags, ["cp311"]);
        assert_eq!(
            w.platform_tags,
            ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
        );
        assert_eq!(w.tags().len(), 2);
        assert_eq!(
            w.to_string(),
            "zope.interface-7.2-cp311-cp311-manylinux_2_5_x86_64.manylinux1_x86_64.whl"
        );
        let w = WheelFilename::parse("six-1.17.0-1local-py2.py3-none-any.whl").unwrap();
        assert_eq!(w.build.as_deref(), Some("1local"));
        assert_eq!(w.python_tags, ["py2", "py3"]);
        for (bad, why) in [
            ("six-1.17.0-py2.py3-none-any.zip", ".whl"),
            ("six-1.17.0-py3-none.whl", "expected"),
            ("six-1.17.0-x-py3-none-any.whl", "build tag"),
            ("six-1.17.0-1-2-py3-none-any.whl", "expected"),
            ("dir/six-1.17.0-py3-none-any.whl", "path"),
            ("six-1.17.0-py3..py2-none-any.whl", "python tag"),
            ("s ix-1.0-py3-none-any.whl", "distribution name"),
        ] {
            let err = WheelFilename::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(why), "{err}");
        }
    }

    #[test]
    fn headers_unfold_and_stop_at_the_body() {
        let fields = parse_headers(
            "Name: a\r\nSummary: one\r\n   two\r\n\tthree\r\nRequires-Dist: x\r\n\r\nName: body\n",
        )
        .unwrap();
        assert_eq!(
            fields,
            [
                ("Name".to_string(), "a".to_string()),
                ("Summary".to_string(), "one two three".to_string()),
                ("Requires-Dist".to_string(), "x".to_string())
            ]
        );
        assert!(parse_headers(" continued\n").is_err());
        assert!(parse_headers("no colon here\n").is_err());
        let m = CoreMetadata::parse(
            "METADATA",
            "Metadata-Version: 2.1\nname: Flask\nVersion: 3.1.0\n\
             Requires-Dist: Werkzeug>=3.1\nRequires-Dist: asgiref>=3.2; extra == \"async\"\n",
        )
        .unwrap();
        assert_eq!(m.name, "Flask");
        assert_eq!(m.requires_dist.len(), 2);
        assert_eq!(m.requires_python, None);
        let err = CoreMetadata::parse("x/METADATA", "Name: a\n").unwrap_err();
        assert_eq!(err.to_string(), "x/METADATA: it has no Version");
    }

    #[test]
    fn wheel_file() {
        let w = WheelInfo::parse(
            "WHEEL",
            "Wheel-Version: 1.0\nGenerator: bdist_wheel\nRoot-Is-Purelib: True\nTag: py2-none-any\nTag: py3-none-any\n",
        )
        .unwrap();
        assert!(w.root_is_purelib);
        assert_eq!(w.tags.len(), 2);
        let w = WheelInfo::parse("WHEEL", "Wheel-Version: 1.9\nRoot-Is-Purelib: false\n").unwrap();
        assert!(!w.root_is_purelib);
        assert_eq!(w.wheel_version, (1, 9));
        assert!(WheelInfo::parse("WHEEL", "Wheel-Version: 2.0\n").is_err());
        assert!(WheelInfo::parse("WHEEL", "Generator: x\n").is_err());
    }

    #[test]
    fn entry_points() {
        let ep = EntryPoints::parse(
            "entry_points.txt",
            "foo = x\n[console_scripts]\n# c\nflask = flask.cli:main\nflask=flask.cli:other\n\
             a.b+c-d = m.n:o.p [x, y]\n[gui_scripts]\ng = m:g\n[other]\nnot an entry\n",
        )
        .unwrap();
        let names: Vec<(&str, &str, &str)> = ep
            .console_scripts
            .iter()
            .map(|e| (e.name.as_str(), e.module.as_str(), e.attr.as_str()))
            .collect();
        assert_eq!(
            names,
            [("flask", "flask.cli", "other"), ("a.b+c-d", "m.n", "o.p")]
        );
        assert_eq!(ep.gui_scripts[0].name, "g");
        for bad in [
            "[console_scripts]\nnoequals\n",
            "[console_scripts]\nx = a:b:c\n",
            "[console_scripts]\nx = mod\n",
            "[console_scripts]\n.. = a:b\n",
            "[console_scripts]\na/b = a:b\n",
        ] {
            assert!(EntryPoints::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_csv() {
        let rows = parse_record(
            "RECORD",
            "a/b.py,sha256=abc,3\r\n\"a/c,d.py\",sha256=x,1\r\n\r\n\"q\"\"uote\",,\nx/RECORD,,",
        )
        .unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].path, "a/c,d.py");
        assert_eq!(rows[2].path, "q\"uote");
        assert_eq!(rows[3].path, "x/RECORD");
        assert_eq!(rows[3].hash, "");
        assert_eq!(
            write_record(&rows),
            "a/b.py,sha256=abc,3\n\"a/c,d.py\",sha256=x,1\n\"q\"\"uote\",,\nx/RECORD,,\n"
        );
        assert!(parse_record("RECORD", "\"open,,\n").is_err());
        assert_eq!(
            record_hash(&Sha256::digest(b"")),
            "sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        assert!(parse_record_hash("sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU").is_ok());
        assert!(parse_record_hash("md5=1B2M2Y8AsgTpgAmY7PhCfg").is_err());
        assert!(parse_record_hash("sha256=AAAA").is_err());
    }

    #[test]
    fn member_names() {
        assert_eq!(check_member_name("a/b/").unwrap(), "a/b");
        assert_eq!(
            check_member_name("a.dist-info/RECORD").unwrap(),
            "a.dist-info/RECORD"
        );
        for bad in [
            "", "/a", "a/../b", "..", "a\\b", "a//b", "./a", "C:/x", "a\0b",
        ] {
            assert!(check_member_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_version_is_the_file_name_version_as_pep_440_has_it() {
        let check = |file_version: &str, metadata_version: &str| {
            let filename =
                WheelFilename::parse(&format!("a-{file_version}-py3-none-any.whl")).unwrap();
            let metadata = format!("Metadata-Version: 2.1\nName: a\nVersion: {metadata_version}\n");
            DistInfo::parse(
                &filename,
                &format!("a-{file_version}.dist-info"),
                Some(b"Wheel-Version: 1.0\n"),
                Some(metadata.as_bytes()),
                None,
                Some(b""),
            )
            .map(|_| ())
        };
        check("1.0.0", "1.0").unwrap();
        check("1.0b0", "1.0-beta").unwrap();
        check("1.0.post1", "1.0-1").unwrap();
        let err = check("1.0.1", "1.0-1").unwrap_err().to_string();
        assert!(err.contains("does not match the file name"), "{err}");
        assert!(check("1.1", "1.0").is_err());
        // Versions that are not PEP 440 are compared loosely.
        check("nightly_1", "Nightly-1").unwrap();
        assert!(check("nightly_1", "nightly_2").is_err());
    }
}
