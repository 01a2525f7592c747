//! `requirements.txt` / `constraints.txt` files, read as pip reads them
//! (`pip/_internal/req/req_file.py`): comments, backslash continuations,
//! `${VAR}` expansion, per-requirement `--hash` options, `-r`/`-c`
//! includes and the index options.
//!
//! What a wheel-only installer cannot honour is refused with the file, the
//! line and what to do instead: VCS URLs other than git, editables, local
//! paths and direct URLs that are not hashed wheels. git URLs are kept for
//! a build from source ([`crate::python::source::git`]).

use std::path::{Path, PathBuf};

use pep440_rs::Operator;
use pep508_rs::{Requirement as Pep508Requirement, VersionOrUrl};

use super::markers;
use super::metadata::parse_pep508;
use super::names::{normalised_version, PackageName};
use crate::python::install::WheelFilename;
use crate::python::source::GitUrl;

/// One requirement line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The distribution name as written.
    pub name: String,
    pub normalised: PackageName,
    /// Requested extras, PEP 685 normalised.
    pub extras: Vec<String>,
    /// The version specifier (normalised rendering of what was written, e.g.
    /// "==3.0.3" or ">=2.0, <3"); "" if none or for a URL.
    pub specifier: String,
    /// The exact version when the specifier is a single `==` without
    /// wildcard; for a direct wheel URL, the version in the wheel's name.
    pub pinned: Option<String>,
    /// The environment marker as written (after `;`), if any.
    pub marker: Option<String>,
    /// `sha256:HEX` (lowercase hex), from `--hash` options and a
    /// `#sha256=` URL fragment.
    pub hashes: Vec<String>,
    /// Direct wheel URL (without a `#sha256=` fragment), if any.
    pub url: Option<String>,
    /// A `git+` URL, built from source; `pinned` is then `None`, the
    /// version being known only from the built wheel.
    pub git: Option<GitUrl>,
    /// The file the line is in, as reached from the top file's path.
    pub file: PathBuf,
    /// 1-based number of the line's first physical line.
    pub line: usize,
}

/// Where a requirement's distribution comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// From the package index (or `--find-links`).
    Index,
    /// A direct wheel URL and its expected sha256 (hex).
    Url { url: String, sha256: String },
}

impl Requirement {
    /// Where to get this requirement's wheel.
    pub fn source(&self) -> Source {
        match &self.url {
            None => Source::Index,
            Some(url) => Source::Url {
                url: url.clone(),
                sha256: self
                    .hashes
                    .iter()
                    .find_map(|h| h.strip_prefix("sha256:"))
                    .unwrap_or_default()
                    .to_string(),
            },
        }
    }
}

/// Index options found in the files (merged over all included files; for
/// `--index-url`, the last one read wins, as in pip).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileOptions {
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    /// URLs or paths. A relative path is resolved against the directory of
    /// the file that names it when that path exists (as pip does), and kept
    /// as written otherwise.
    pub find_links: Vec<String>,
    /// `--no-index`.
    pub no_index: bool,
    /// `--require-hashes`.
    pub require_hashes: bool,
}

/// A requirements file with everything it includes.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    /// The top file's path.
    pub path: PathBuf,
    /// From the top file and files it includes with `-r`.
    pub requirements: Vec<Requirement>,
    /// From files included with `-c`.
    pub constraints: Vec<Requirement>,
    pub options: FileOptions,
    /// Options read but without effect here (e.g. `--pre`), one message
    /// each, with file and line.
    pub warnings: Vec<String>,
    /// Every file read (the top one first, then includes in reading
    /// order) with the sha256 (hex) of its bytes: what a lock depends on.
    pub inputs: Vec<(PathBuf, String)>,
}

impl ParsedFile {
    /// One digest (hex) of every file read: the top file's own sha256 when
    /// it includes nothing, else the sha256 of the files' digests in order.
    pub fn inputs_sha256(&self) -> String {
        match self.inputs.as_slice() {
            [(_, only)] => only.clone(),
            all => {
                use sha2::Digest;
                let mut hasher = sha2::Sha256::new();
                for (_, sha) in all {
                    hasher.update(sha.as_bytes());
                    hasher.update(b"\n");
                }
                hex::encode(hasher.finalize())
            }
        }
    }
}

/// Errors from reading requirements files.
#[derive(Debug, thiserror::Error)]
pub enum RequirementsError {
    #[error("cannot read requirements file {}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// The largest requirements file read (a real one is a few KiB).
const MAX_FILE: u64 = 16 << 20;

/// Reads `path` and every file it includes. Includes (`-r`, `-c`) must stay
/// inside the top file's directory (the experiment), where nothing the
/// build's user keeps (a credential file, `/proc/self/environ`) can be read
/// and quoted back in an error; and a file must be a regular one of at most
/// 16 MiB (`-r /dev/zero` would never end).
pub fn parse_file(path: &Path) -> Result<ParsedFile, RequirementsError> {
    let root = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .and_then(|p| std::fs::canonicalize(p).ok());
    let mut parser = Parser {
        out: ParsedFile {
            path: path.to_path_buf(),
            ..ParsedFile::default()
        },
        stack: Vec::new(),
        root,
    };
    if let (Some(root), Ok(top)) = (&parser.root, std::fs::canonicalize(path)) {
        if !top.starts_with(root) {
            return Err(RequirementsError::Line {
                file: path.to_path_buf(),
                line: 1,
                message: format!(
                    "it is a link to {}, outside the experiment directory: make it a file",
                    top.display()
                ),
            });
        }
    }
    parser.parse(path, false)?;
    Ok(parser.out)
}

struct Parser {
    out: ParsedFile,
    /// Canonical paths of the files being read (for include cycles).
    stack: Vec<PathBuf>,
    /// The top file's directory, canonical: includes stay below it.
    root: Option<PathBuf>,
}

/// What a line is, after comments are gone.
enum LineKind<'a> {
    Requirement { arg: &'a str, options: Vec<String> },
    Options(Vec<String>),
}

impl Parser {
    fn parse(&mut self, path: &Path, constraint: bool) -> Result<(), RequirementsError> {
        let io = |source| RequirementsError::Io {
            file: path.to_path_buf(),
            source,
        };
        let too_big = || RequirementsError::Line {
            file: path.to_path_buf(),
            line: 1,
            message: format!(
                "not a regular file of at most {} MiB: a requirements file is a short text",
                MAX_FILE >> 20
            ),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(too_big());
        }
        {
            use sha2::Digest;
            let sha = hex::encode(sha2::Sha256::digest(&bytes));
            self.out.inputs.push((path.to_path_buf(), sha));
        }
        let text = String::from_utf8(bytes).map_err(|_| RequirementsError::Line {
            file: path.to_path_buf(),
            line: 1,
            message: "the file is not UTF-8: re-save it as UTF-8".into(),
        })?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.stack.push(canonical);
        let result = self.parse_text(&text, path, constraint);
        self.stack.pop();
        result
    }

    fn parse_text(
        &mut self,
        text: &str,
        path: &Path,
        constraint: bool,
    ) -> Result<(), RequirementsError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (line_no, logical) in join_lines(text) {
            let line = expand_env_vars(strip_comment(&logical).trim());
            if line.is_empty() {
                continue;
            }
            let err = |message: String| RequirementsError::Line {
                file: path.to_path_buf(),
                line: line_no,
                message,
            };
            match split_line(&line).map_err(err)? {
                LineKind::Requirement { arg, options } => {
                    let req =
                        parse_requirement(arg, &options, path, line_no, &mut self.out.warnings)
                            .map_err(err)?;
                    if constraint {
                        self.out.constraints.push(req);
                    } else {
                        self.out.requirements.push(req);
                    }
                }
                LineKind::Options(tokens) => {
                    self.options_line(&tokens, path, line_no)?;
                }
            }
        }
        Ok(())
    }

    fn options_line(
        &mut self,
        tokens: &[String],
        path: &Path,
        line_no: usize,
    ) -> Result<(), RequirementsError> {
        let err = |message: String| RequirementsError::Line {
            file: path.to_path_buf(),
            line: line_no,
            message,
        };
        let mut i = 0;
        while i < tokens.len() {
            let (opt, value) = next_option(tokens, &mut i).map_err(err)?;
            let value = value.unwrap_or_default();
            match opt.kind {
                OptKind::Requirement | OptKind::Constraint => {
                    let nested_constraint = opt.kind == OptKind::Constraint;
                    let include = self.include_path(&value, path).map_err(err)?;
                    let canonical =
                        std::fs::canonicalize(&include).unwrap_or_else(|_| include.clone());
                    if let Some(root) = &self.root {
                        if include.exists() && !canonical.starts_with(root) {
                            return Err(err(format!(
                                "`{} {value}`: {} is outside the experiment directory {}: copy \
                                 the file into the experiment and include it from there",
                                opt.name,
                                include.display(),
                                root.display()
                            )));
                        }
                    }
                    if self.stack.contains(&canonical) {
                        return Err(err(format!(
                            "`{} {value}` includes {}, which is already being read (an include \
                             cycle): remove one of the -r/-c lines",
                            opt.name,
                            include.display()
                        )));
                    }
                    if !include.exists() {
                        return Err(err(format!(
                            "`{} {value}`: {} does not exist (paths are relative to the \
                             including file's directory)",
                            opt.name,
                            include.display()
                        )));
                    }
                    // As in pip, `-r` inside a constraints file reads
                    // requirements, and `-c` always reads constraints.
                    self.parse(&include, nested_constraint)?;
                }
                OptKind::Editable => {
                    return Err(err(format!(
                        "editable requirements (`{} {value}`) are not supported: build a wheel \
                         and put it in a --find-links directory, or pin a released version",
                        opt.name
                    )));
                }
                OptKind::IndexUrl => self.out.options.index_url = Some(value),
                OptKind::ExtraIndexUrl => {
                    if !self.out.options.extra_index_urls.contains(&value) {
                        self.out.options.extra_index_urls.push(value);
                    }
                }
                OptKind::FindLinks => {
                    let resolved = resolve_find_links(&value, path);
                    if !self.out.options.find_links.contains(&resolved) {
                        self.out.options.find_links.push(resolved);
                    }
                }
                OptKind::NoIndex => self.out.options.no_index = true,
                OptKind::RequireHashes => self.out.options.require_hashes = true,
                OptKind::Ignored => self.out.warnings.push(format!(
                    "{}:{line_no}: ignoring `{}` (no effect on a wheel-only install)",
                    path.display(),
                    opt.name
                )),
                OptKind::Hash | OptKind::RequirementIgnored => {
                    return Err(err(format!(
                        "`{}` must follow a requirement on the same (logical) line",
                        opt.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn include_path(&self, value: &str, including: &Path) -> Result<PathBuf, String> {
        if has_scheme(value) {
            return Err(format!(
                "including requirements by URL (`{value}`) is not supported: download the file \
                 next to this one and include it by path"
            ));
        }
        let p = Path::new(value);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            including.parent().unwrap_or(Path::new("")).join(p)
        })
    }
}

fn resolve_find_links(value: &str, including: &Path) -> String {
    if has_scheme(value) || Path::new(value).is_absolute() {
        return value.to_string();
    }
    let relative = including.parent().unwrap_or(Path::new("")).join(value);
    if relative.exists() {
        relative.to_string_lossy().into_owned()
    } else {
        value.to_string()
    }
}

/// pip's `join_lines`: a line ending in `\` continues on the next one; a
/// comment line ends the continuation. Yields (first line number, text).
fn join_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let is_comment = raw.trim_start().starts_with('#');
        if !raw.ends_with('\\') || is_comment {
            let piece = if is_comment {
                format!(" {raw}")
            } else {
                raw.to_string()
            };
            match pending.take() {
                Some((first, mut acc)) => {
                    acc.push_str(&piece);
                    out.push((first, acc));
                }
                None => out.push((line_no, piece)),
            }
        } else {
            let piece = raw.trim_matches('\\');
            match &mut pending {
                Some((_, acc)) => acc.push_str(piece),
                None => pending = Some((line_no, piece.to_string())),
            }
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// pip's `COMMENT_RE` (`(^|\s+)#.*$`): a `#` at the start or after
/// whitespace starts a comment; `url#sha256=…` does not.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line
}

/// pip's `expand_env_variables`: `${NAME}` (NAME in `[A-Z0-9_]+`) becomes
/// the variable's value when it is set, and is kept as is otherwise.
fn expand_env_vars(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end)
                if end > 0
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
            {
                let name = &after[..end];
                match std::env::var(name) {
                    Ok(v) => out.push_str(&v),
                    Err(_) => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// pip's `break_args_options`: tokens (split on single spaces) up to the
/// first one starting with `-` are the requirement; the rest are options.
fn split_line(line: &str) -> Result<LineKind<'_>, String> {
    let mut arg_end = line.len();
    let mut pos = 0;
    for token in line.split(' ') {
        if token.starts_with('-') {
            arg_end = pos;
            break;
        }
        pos += token.len() + 1;
    }
    let arg = line[..arg_end.min(line.len())].trim();
    let options = shell_split(&line[arg_end.min(line.len())..])?;
    if arg.is_empty() {
        Ok(LineKind::Options(options))
    } else {
        Ok(LineKind::Requirement { arg, options })
    }
}

/// `shlex.split` as optparse-based pip uses it for option strings.
fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            '\'' => {
                in_token = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_token = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptKind {
    Requirement,
    Constraint,
    Editable,
    IndexUrl,
    ExtraIndexUrl,
    FindLinks,
    NoIndex,
    RequireHashes,
    /// A file option with no effect here (warned about).
    Ignored,
    /// `--hash`.
    Hash,
    /// A per-requirement option with no effect on wheels (warned about).
    RequirementIgnored,
}

struct Opt {
    name: &'static str,
    short: Option<char>,
    kind: OptKind,
    takes_value: bool,
}

#[rustfmt::skip]
const OPTIONS: &[Opt] = &[
    Opt { name: "--requirement", short: Some('r'), kind: OptKind::Requirement, takes_value: true },
    Opt { name: "--constraint", short: Some('c'), kind: OptKind::Constraint, takes_value: true },
    Opt { name: "--editable", short: Some('e'), kind: OptKind::Editable, takes_value: true },
    Opt { name: "--index-url", short: Some('i'), kind: OptKind::IndexUrl, takes_value: true },
    Opt { name: "--extra-index-url", short: None, kind: OptKind::ExtraIndexUrl, takes_value: true },
    Opt { name: "--find-links", short: Some('f'), kind: OptKind::FindLinks, takes_value: true },
    Opt { name: "--no-index", short: None, kind: OptKind::NoIndex, takes_value: false },
    Opt { name: "--require-hashes", short: None, kind: OptKind::RequireHashes, takes_value: false },
    Opt { name: "--pre", short: None, kind: OptKind::Ignored, takes_value: false },
    Opt { name: "--prefer-binary", short: None, kind: OptKind::Ignored, takes_value: false },
    Opt { name: "--only-binary", short: None, kind: OptKind::Ignored, takes_value: true },
    Opt { name: "--no-binary", short: None, kind: OptKind::Ignored, takes_value: true },
    Opt { name: "--trusted-host", short: None, kind: OptKind::Ignored, takes_value: true },
    Opt { name: "--use-feature", short: None, kind: OptKind::Ignored, takes_value: true },
    Opt { name: "--hash", short: None, kind: OptKind::Hash, takes_value: true },
    Opt { name: "--config-settings", short: Some('C'), kind: OptKind::RequirementIgnored, takes_value: true },
    Opt { name: "--global-option", short: None, kind: OptKind::RequirementIgnored, takes_value: true },
    Opt { name: "--install-option", short: None, kind: OptKind::RequirementIgnored, takes_value: true },
];

/// Reads the option at `tokens[*i]` (and its value), advancing `i`.
/// Accepts `--name value`, `--name=value`, `-x value` and `-xvalue`.
fn next_option(tokens: &[String], i: &mut usize) -> Result<(&'static Opt, Option<String>), String> {
    let tok = &tokens[*i];
    *i += 1;
    let (opt, inline) = if let Some(long) = tok.strip_prefix("--") {
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        let opt = OPTIONS
            .iter()
            .find(|o| &o.name[2..] == name)
            .ok_or_else(|| format!("unknown option `--{name}`"))?;
        (opt, inline)
    } else if let Some(short) = tok.strip_prefix('-') {
        let mut chars = short.chars();
        let c = chars.next().ok_or("a lone `-` is not an option")?;
        let opt = OPTIONS
            .iter()
            .find(|o| o.short == Some(c))
            .ok_or_else(|| format!("unknown option `-{c}`"))?;
        let rest: String = chars.collect();
        (opt, (!rest.is_empty()).then_some(rest))
    } else {
        return Err(format!("unexpected `{tok}` among options"));
    };
    if !opt.takes_value {
        if inline.is_some() {
            return Err(format!("`{}` takes no value", opt.name));
        }
        return Ok((opt, None));
    }
    match inline {
        Some(v) => Ok((opt, Some(v))),
        None => {
            let v = tokens
                .get(*i)
                .ok_or_else(|| format!("`{}` needs a value", opt.name))?
                .clone();
            *i += 1;
            Ok((opt, Some(v)))
        }
    }
}

fn has_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, _)) => {
            scheme.len() > 1
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

const VCS_MESSAGE: &str = "only git is supported among version control systems \
                           (`name @ git+https://…@REF`): pin a released version or provide a \
                           wheel in --find-links";

fn is_vcs(s: &str) -> bool {
    let s = s.trim().to_ascii_lowercase();
    ["hg+", "svn+", "bzr+", "git://", "svn://"]
        .iter()
        .any(|p| s.starts_with(p))
}

fn is_git(s: &str) -> bool {
    s.trim().to_ascii_lowercase().starts_with("git+")
}

fn local_path_error(what: &str) -> String {
    format!(
        "local paths are not supported (`{what}`): build a wheel and put it in a --find-links \
         directory, or pin a released version"
    )
}

/// Validates a `--hash` value; returns `sha256:hex` with lowercase hex.
fn parse_hash(value: &str) -> Result<String, String> {
    let (algo, hex) = value
        .split_once(':')
        .ok_or_else(|| format!("`--hash={value}` is not of the form sha256:HEX"))?;
    if !algo.eq_ignore_ascii_case("sha256") {
        return Err(format!(
            "`--hash={value}`: only sha256 hashes are supported (regenerate with \
             `--generate-hashes`, which writes sha256)"
        ));
    }
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`--hash={value}`: a sha256 is 64 hex digits"));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Splits `url#fragment`, returning the URL without a `sha256=` fragment
/// and that hash.
fn split_hash_fragment(url: &str) -> Result<(String, Option<String>), String> {
    match url.split_once('#') {
        Some((base, fragment)) => {
            let mut hash = None;
            for part in fragment.split('&') {
                if let Some(h) = part.strip_prefix("sha256=") {
                    hash = Some(parse_hash(&format!("sha256:{h}"))?);
                }
            }
            if hash.is_some() {
                Ok((base.to_string(), hash))
            } else {
                Ok((url.to_string(), None))
            }
        }
        None => Ok((url.to_string(), None)),
    }
}

/// The marker after `;`. After a URL, where `;` is a valid character, the
/// `;` must be preceded (PEP 508) or followed (pip's `"; "`) by whitespace.
fn split_marker(arg: &str, url_form: bool) -> (&str, Option<&str>) {
    let idx = if url_form {
        arg.char_indices()
            .find(|&(i, c)| {
                c == ';'
                    && (arg[..i].ends_with(char::is_whitespace)
                        || arg[i + 1..].starts_with(char::is_whitespace))
            })
            .map(|(i, _)| i)
    } else {
        arg.find(';')
    };
    match idx {
        Some(i) => {
            let marker = arg[i + 1..].trim();
            (arg[..i].trim(), (!marker.is_empty()).then_some(marker))
        }
        None => (arg.trim(), None),
    }
}

fn looks_like_path(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    s.starts_with(['.', '/', '~'])
        || s.contains(['/', '\\'])
        || [".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

fn parse_requirement(
    arg: &str,
    options: &[String],
    file: &Path,
    line: usize,
    warnings: &mut Vec<String>,
) -> Result<Requirement, String> {
    // Per-requirement options.
    let mut hashes: Vec<String> = Vec::new();
    let mut i = 0;
    while i < options.len() {
        let (opt, value) = next_option(options, &mut i)?;
        match opt.kind {
            OptKind::Hash => {
                let h = parse_hash(value.as_deref().unwrap_or_default())?;
                if !hashes.contains(&h) {
                    hashes.push(h);
                }
            }
            OptKind::RequirementIgnored => warnings.push(format!(
                "{}:{line}: ignoring `{}` (only used when building from source)",
                file.display(),
                opt.name
            )),
            OptKind::Editable => {
                return Err(format!(
                    "editable requirements (`{}`) are not supported: build a wheel and put it in \
                     a --find-links directory, or pin a released version",
                    opt.name
                ))
            }
            _ => {
                return Err(format!(
                    "`{}` must be on a line of its own, not after a requirement",
                    opt.name
                ))
            }
        }
    }

    if is_vcs(arg) {
        return Err(format!("`{arg}`: {VCS_MESSAGE}"));
    }
    // pip's `git+URL@REF#egg=name` form.
    if is_git(arg) {
        let (url, marker) = split_marker(arg, true);
        return git_requirement(None, url, marker, hashes, file, line);
    }

    // A bare URL: pip takes the name from the wheel file name.
    if has_scheme(arg) && !arg.contains(" @") && !arg.contains("@ ") {
        let (url, marker) = split_marker(arg, true);
        if url.to_ascii_lowercase().starts_with("file:") {
            return Err(local_path_error(url));
        }
        return url_requirement(None, url, marker, hashes, file, line);
    }

    // `name [extras] @ url`: the name part has no `@`, no `;` and no URL.
    let at = arg.find('@');
    if let Some(at) = at.filter(|&at| !arg[..at].contains([';', ':'])) {
        let (rest, marker) = split_marker(&arg[at + 1..], true);
        let url = rest.trim();
        if is_vcs(url) {
            return Err(format!("`{arg}`: {VCS_MESSAGE}"));
        }
        if !is_git(url) && (url.to_ascii_lowercase().starts_with("file:") || !has_scheme(url)) {
            return Err(local_path_error(url));
        }
        // `name[extras]` alone is a valid PEP 508 requirement.
        let parsed = parse_pep508(arg[..at].trim()).map_err(|e| invalid_requirement(arg, &e))?;
        let name = (super::metadata::written_name(arg), name_extras(&parsed));
        if is_git(url) {
            return git_requirement(Some(name), url, marker, hashes, file, line);
        }
        return url_requirement(Some(name), url, marker, hashes, file, line);
    }

    let (head, marker) = split_marker(arg, false);
    if looks_like_path(head) {
        return Err(local_path_error(head));
    }
    let parsed = parse_pep508(arg).map_err(|e| invalid_requirement(arg, &e))?;
    let (specifier, pinned) = match &parsed.version_or_url {
        None => (String::new(), None),
        Some(VersionOrUrl::VersionSpecifier(specs)) => {
            let pinned = match &specs[..] {
                [only] if *only.operator() == Operator::Equal => Some(only.version().to_string()),
                _ => None,
            };
            (specs.to_string(), pinned)
        }
        // `name @ url` forms are handled above; anything else is malformed.
        Some(VersionOrUrl::Url(_)) => {
            return Err(format!(
                "`{arg}`: write a direct URL as `name @ https://…/file.whl` with a \
                 `--hash=sha256:HEX`"
            ))
        }
    };
    Ok(Requirement {
        name: super::metadata::written_name(arg),
        normalised: PackageName::new(parsed.name.as_ref()),
        extras: name_extras(&parsed),
        specifier,
        pinned,
        marker: marker.map(str::to_string),
        hashes,
        url: None,
        git: None,
        file: file.to_path_buf(),
        line,
    })
}

fn name_extras(parsed: &Pep508Requirement) -> Vec<String> {
    parsed.extras.iter().map(|e| e.to_string()).collect()
}

fn invalid_requirement(arg: &str, message: &str) -> String {
    format!(
        "`{arg}` is not a valid requirement: {message} (expected e.g. `flask==3.0.3` or \
         `flask==3.0.3 ; python_version >= \"3.8\"`)"
    )
}

/// A `git+` requirement, `name @ git+…` or `git+…#egg=name`: built from
/// source at the commit its revision names.
fn git_requirement(
    name: Option<(String, Vec<String>)>,
    url: &str,
    marker: Option<&str>,
    hashes: Vec<String>,
    file: &Path,
    line: usize,
) -> Result<Requirement, String> {
    let git = GitUrl::parse(url)?;
    if !hashes.is_empty() {
        return Err(format!(
            "`{}`: a git requirement cannot have --hash (its source is pinned by the commit): \
             remove the --hash options",
            git.display()
        ));
    }
    let (name, extras) = match (name, &git.egg) {
        (Some((n, _)), Some(egg)) if PackageName::new(egg) != PackageName::new(&n) => {
            return Err(format!(
                "`{n} @ {}`: `#egg={egg}` names another package",
                git.display()
            ))
        }
        (Some(named), _) => named,
        (None, Some(egg)) => {
            let parsed = parse_pep508(egg).map_err(|e| invalid_requirement(egg, &e))?;
            (parsed.name.to_string(), name_extras(&parsed))
        }
        (None, None) => {
            return Err(format!(
                "`{}` does not name its package: write `NAME @ {}`",
                git.display(),
                git.display()
            ))
        }
    };
    if let Some(m) = marker {
        markers::parse(m).map_err(|e| e.to_string())?;
    }
    Ok(Requirement {
        normalised: PackageName::new(&name),
        name,
        extras,
        specifier: String::new(),
        pinned: None,
        marker: marker.map(str::to_string),
        hashes,
        url: None,
        git: Some(git),
        file: file.to_path_buf(),
        line,
    })
}

/// A direct URL requirement: it must be an http(s) URL to a wheel, with a
/// sha256 from `--hash` or a `#sha256=` fragment.
fn url_requirement(
    name: Option<(String, Vec<String>)>,
    url: &str,
    marker: Option<&str>,
    mut hashes: Vec<String>,
    file: &Path,
    line: usize,
) -> Result<Requirement, String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(format!(
            "`{url}`: only http(s) URLs to wheels are supported: pin a released version or \
             provide a wheel in --find-links"
        ));
    }
    let (url, fragment_hash) = split_hash_fragment(url)?;
    if let Some(h) = fragment_hash {
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
    let path = url.split(['?', '#']).next().unwrap_or(&url);
    let filename = path.rsplit('/').next().unwrap_or(path);
    let filename = percent_encoding::percent_decode_str(filename).decode_utf8_lossy();
    let wheel = WheelFilename::parse(&filename).map_err(|_| {
        format!(
            "`{url}` is not a wheel: direct URLs must point to a .whl file (sdists need a \
             build); pin a released version or provide a wheel in --find-links"
        )
    })?;
    if hashes.is_empty() {
        return Err(format!(
            "`{url}`: a direct URL needs its sha256: add `--hash=sha256:HEX` or a `#sha256=HEX` \
             fragment"
        ));
    }
    let wheel_norm = PackageName::new(&wheel.name);
    let (name, extras) = match name {
        Some((n, e)) => {
            if PackageName::new(&n) != wheel_norm {
                return Err(format!(
                    "`{n} @ {url}`: the wheel is for `{}`, not `{n}`",
                    wheel.name
                ));
            }
            (n, e)
        }
        None => (wheel.name.clone(), Vec::new()),
    };
    if let Some(m) = marker {
        markers::parse(m).map_err(|e| e.to_string())?;
    }
    let version = normalised_version(&wheel.version);
    Ok(Requirement {
        normalised: PackageName::new(&name),
        name,
        extras,
        specifier: String::new(),
        pinned: Some(version),
        marker: marker.map(str::to_string),
        hashes,
        url: Some(url),
        git: None,
        file: file.to_path_buf(),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    fn parse(text: &str) -> Result<ParsedFile, RequirementsError> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "requirements.txt", text);
        parse_file(&p)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const H1: &str = "34e7c11f39c2fd1d5e38b3c8b2b4b0bb7a5ac2f1b8d1a8d0c0c7b8b5f8f1e2d3";
    const H2: &str = "CEB27B0AF3823EA2737928A4D99D125A06175B8512C445CBD9A9CE200EF76842";

    #[test]
    fn includes_stay_in_the_experiment_and_files_are_bounded() {
        let outside = tempfile::tempdir().unwrap();
        let secret = write(
            outside.path(),
            "credentials",
            "https://user:s3cret@git.test\n",
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("exp")).unwrap();
        write(dir.path(), "common.txt", "flask==3.0.3\n");
        for include in [
            secret.display().to_string(),
            "../common.txt".to_string(),
            "/proc/self/environ".to_string(),
        ] {
            let top = write(
                dir.path(),
                "exp/requirements.txt",
                &format!("-r {include}\n"),
            );
            let msg = parse_file(&top).unwrap_err().to_string();
            assert!(msg.contains("is outside the experiment directory"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        // The top file itself a link to outside.
        #[cfg(unix)]
        {
            let link = dir.path().join("exp/constraints.txt");
            std::os::unix::fs::symlink(&secret, &link).unwrap();
            let msg = parse_file(&link).unwrap_err().to_string();
            assert!(msg.contains("outside the experiment directory"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        // Inside, through a subdirectory, is fine.
        write(dir.path(), "exp/sub/more.txt", "-r ../inc.txt\n");
        write(dir.path(), "exp/inc.txt", "flask==3.0.3\n");
        let top = write(dir.path(), "exp/requirements.txt", "-r sub/more.txt\n");
        assert_eq!(parse_file(&top).unwrap().requirements.len(), 1);
        // Not a regular file, or too large.
        let msg = parse_file(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            msg.contains("not a regular file of at most 16 MiB"),
            "{msg}"
        );
        let big = write(dir.path(), "big.txt", &"#\n".repeat(9 << 20));
        let msg = parse_file(&big).unwrap_err().to_string();
        assert!(
            msg.contains("not a regular file of at most 16 MiB"),
            "{msg}"
        );
    }

    #[test]
    fn a_name_or_extra_ending_in_a_separator_is_an_error_not_a_panic() {
        for (line, what) in [
            ("flask-[async]==3.0.3", "the name `flask-`"),
            ("flask[A-]==3.0.3", "the extra `A-`"),
            (
                "flask_[x] @ https://x.test/flask-3.0.3-py3-none-any.whl",
                "the name `flask_`",
            ),
        ] {
            let msg = err(&format!("{line}\n"));
            assert!(
                msg.contains("requirements.txt:1: ") && msg.contains(what),
                "{line}: {msg}"
            );
        }
    }

    #[test]
    fn dallinger_constraints_with_via_comments_and_hashes() {
        let text = format!(
            "#\n\
             # This file was autogenerated by uv via the following command:\n\
             #    dallinger constraints generate\n\
             #\n\
             # Compiled from a requirements.txt file with md5sum 4f1 and a .python-version file requesting Python 3.11\n\
             alembic==1.13.1 \\\n    --hash=sha256:{H1}\n\
             \x20   # via\n\
             \x20   #   -c https://raw.githubusercontent.com/Dallinger/Dallinger/v12.3.0/dev-requirements.txt\n\
             \x20   #   dallinger\n\
             flask==3.0.3 \\\n    --hash=sha256:{H1} \\\n    --hash sha256:{H2}\n\
             \x20   # via dallinger\n\
             gevent[recommended]==24.2.1 ; python_version >= \"3.8\" \\\n    --hash=sha256:{H1}\n\
             async-timeout==4.0.3 ; python_full_version < '3.11.3'  # redis on 3.11.2\n"
        );
        let parsed = parse(&text).unwrap();
        assert!(parsed.constraints.is_empty());
        let reqs = &parsed.requirements;
        assert_eq!(reqs.len(), 4);

        assert_eq!(reqs[0].name, "alembic");
        assert_eq!(reqs[0].pinned.as_deref(), Some("1.13.1"));
        assert_eq!(reqs[0].line, 6);
        assert_eq!(reqs[0].hashes, vec![format!("sha256:{H1}")]);

        assert_eq!(reqs[1].line, 11);
        assert_eq!(reqs[1].specifier, "==3.0.3");
        assert_eq!(
            reqs[1].hashes,
            vec![
                format!("sha256:{H1}"),
                format!("sha256:{}", H2.to_ascii_lowercase())
            ]
        );
        assert_eq!(reqs[1].source(), Source::Index);

        assert_eq!(reqs[2].name, "gevent");
        assert_eq!(reqs[2].extras, vec!["recommended"]);
        assert_eq!(reqs[2].pinned.as_deref(), Some("24.2.1"));
        assert_eq!(reqs[2].marker.as_deref(), Some("python_version >= \"3.8\""));
        assert_eq!(reqs[2].hashes.len(), 1);

        assert_eq!(reqs[3].normalised, "async-timeout");
        assert_eq!(
            reqs[3].marker.as_deref(),
            Some("python_full_version < '3.11.3'")
        );
        assert!(reqs[3].hashes.is_empty());
    }

    #[test]
    fn specifiers_and_names() {
        let parsed = parse(
            "Flask_SQLAlchemy == 3.1.1\n\
             requests>=2.31,<3\n\
             six\n\
             zope.interface==6.*\n\
             PyYAML===6.0.1\n\
             pkg==1.0-post1\n\
             SQLAlchemy (==2.0.29)\n",
        )
        .unwrap();
        let r = &parsed.requirements;
        assert_eq!(r[0].name, "Flask_SQLAlchemy");
        assert_eq!(r[0].normalised, "flask-sqlalchemy");
        assert_eq!(r[0].pinned.as_deref(), Some("3.1.1"));
        assert_eq!(r[1].pinned, None);
        assert!(r[1].specifier.contains(">=2.31") && r[1].specifier.contains("<3"));
        assert_eq!(r[2].specifier, "");
        assert_eq!(r[2].pinned, None);
        assert_eq!(r[3].pinned, None);
        assert_eq!(r[4].pinned, None);
        assert_eq!(r[5].pinned.as_deref(), Some("1.0.post1"));
        assert_eq!(r[6].pinned.as_deref(), Some("2.0.29"));
    }

    #[test]
    fn comments_and_continuations() {
        let parsed = parse(
            "# a comment\n\
             \n\
             flask==3.0.3 # trailing\n\
             click\\\n==8.1.7\n\
             markupsafe==2.1.5 \\\n# comment ends the continuation\n\
             werkzeug==3.0.3\\\n",
        )
        .unwrap();
        let r = &parsed.requirements;
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].normalised.as_str(), r[0].line), ("flask", 3));
        assert_eq!((r[1].normalised.as_str(), r[1].line), ("click", 4));
        assert_eq!(r[1].pinned.as_deref(), Some("8.1.7"));
        assert_eq!((r[2].normalised.as_str(), r[2].line), ("markupsafe", 6));
        assert_eq!((r[3].normalised.as_str(), r[3].line), ("werkzeug", 8));
    }

    #[test]
    fn inputs_cover_every_included_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "more.txt", "six==1.16.0\n");
        let top = write(dir.path(), "top.txt", "-r more.txt\nflask==3.0.3\n");
        let one = parse_file(&top).unwrap();
        assert_eq!(one.inputs.len(), 2);
        write(dir.path(), "more.txt", "six==1.17.0\n");
        let two = parse_file(&top).unwrap();
        assert_ne!(one.inputs_sha256(), two.inputs_sha256());
        // Without includes, the digest is the file's own sha256.
        let alone = write(dir.path(), "alone.txt", "flask==3.0.3\n");
        use sha2::Digest;
        assert_eq!(
            parse_file(&alone).unwrap().inputs_sha256(),
            hex::encode(sha2::Sha256::digest(b"flask==3.0.3\n"))
        );
    }

    #[test]
    fn includes_are_relative_and_cycle_safe() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sub/base.txt",
            "-c ../constraints.txt\nflask\n-r more.txt\n",
        );
        write(dir.path(), "sub/more.txt", "click\n");
        write(
            dir.path(),
            "constraints.txt",
            "flask==3.0.3\n-r other.txt\n",
        );
        write(dir.path(), "other.txt", "six==1.16.0\n");
        let top = write(
            dir.path(),
            "requirements.txt",
            "--requirement=sub/base.txt\n-rsub/more.txt\n",
        );
        let parsed = parse_file(&top).unwrap();
        let reqs: Vec<_> = parsed
            .requirements
            .iter()
            .map(|r| r.normalised.as_str())
            .collect();
        // `-r` inside a constraints file reads requirements, as in pip.
        assert_eq!(reqs, vec!["six", "flask", "click", "click"]);
        let cons: Vec<_> = parsed
            .constraints
            .iter()
            .map(|r| r.normalised.as_str())
            .collect();
        assert_eq!(cons, vec!["flask"]);
        assert!(parsed.constraints[0].file.ends_with("constraints.txt"));
        assert_eq!(
            parsed.requirements[2].file,
            dir.path().join("sub").join("more.txt")
        );

        write(dir.path(), "a.txt", "flask==3.0.3\n-r b.txt\n");
        write(dir.path(), "b.txt", "\n\n--constraint a.txt\n");
        let e = parse_file(&dir.path().join("a.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.txt:3:") && e.contains("include cycle"), "{e}");

        let e = parse_file(&write(dir.path(), "c.txt", "-r missing.txt\n")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = parse_file(&write(dir.path(), "d.txt", "-r https://x/r.txt\n")).unwrap_err();
        assert!(e.to_string().contains("by URL"), "{e}");
        let e = parse_file(&dir.path().join("nope.txt")).unwrap_err();
        assert!(matches!(e, RequirementsError::Io { .. }));
    }

    #[test]
    fn index_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wheels")).unwrap();
        let p = write(
            dir.path(),
            "requirements.txt",
            "--index-url https://pypi.example/simple\n\
             -i https://mirror.example/simple\n\
             --extra-index-url=https://extra.example/simple\n\
             --find-links wheels\n\
             -f https://download.example/wheels/\n\
             --no-index\n\
             --pre --prefer-binary\n\
             --only-binary :all:\n\
             flask==3.0.3\n",
        );
        let parsed = parse_file(&p).unwrap();
        let o = &parsed.options;
        assert_eq!(
            o.index_url.as_deref(),
            Some("https://mirror.example/simple")
        );
        assert_eq!(o.extra_index_urls, vec!["https://extra.example/simple"]);
        assert_eq!(
            o.find_links,
            vec![
                dir.path().join("wheels").to_string_lossy().into_owned(),
                "https://download.example/wheels/".to_string()
            ]
        );
        assert!(o.no_index);
        assert!(!o.require_hashes);
        assert_eq!(parsed.warnings.len(), 3, "{:?}", parsed.warnings);
        assert!(parsed.warnings[0].contains(":7: ignoring `--pre`"));
        assert_eq!(parsed.requirements.len(), 1);
    }

    #[test]
    fn env_vars_expand_like_pip() {
        // PATH is always set; tests must not set variables (threads).
        let path = std::env::var("PATH").unwrap();
        let parsed = parse(
            "--find-links https://x.example/${PATH}/\n\
             --extra-index-url https://${UNSET_lower_is_not_a_var}/x\n\
             --index-url https://${DALLINGER_OCI_SURELY_UNSET_VAR}/simple\n",
        )
        .unwrap();
        assert_eq!(
            parsed.options.find_links,
            vec![format!("https://x.example/{path}/")]
        );
        assert_eq!(
            parsed.options.extra_index_urls,
            vec!["https://${UNSET_lower_is_not_a_var}/x"]
        );
        assert_eq!(
            parsed.options.index_url.as_deref(),
            Some("https://${DALLINGER_OCI_SURELY_UNSET_VAR}/simple")
        );
    }

    #[test]
    fn git_requirements() {
        let parsed = parse(
            "git+https://github.com/Dallinger/Dallinger@v12.3.0#egg=dallinger\n\
             tinygit[extra] @ git+ssh://git@example.test/owner/tinygit.git@main ; python_version >= \"3\"\n\
             other@git+file:///srv/other#subdirectory=pkg\n",
        )
        .unwrap();
        let r = &parsed.requirements;
        assert_eq!(r[0].normalised, "dallinger");
        assert_eq!(r[0].pinned, None);
        let git = r[0].git.as_ref().unwrap();
        assert_eq!(git.fetch_url, "https://github.com/Dallinger/Dallinger");
        assert_eq!(git.revision.as_deref(), Some("v12.3.0"));
        assert_eq!(r[1].name, "tinygit");
        assert_eq!(r[1].extras, vec!["extra"]);
        assert_eq!(r[1].marker.as_deref(), Some("python_version >= \"3\""));
        assert_eq!(
            r[1].git.as_ref().unwrap().fetch_url,
            "ssh://git@example.test/owner/tinygit.git"
        );
        assert_eq!(
            r[2].git.as_ref().unwrap().subdirectory.as_deref(),
            Some("pkg")
        );

        let e = err("git+https://example.test/x.git@main\n");
        assert!(e.contains(":1: `git+https://example.test/x.git@main` does not name its package: write `NAME @ git+"), "{e}");
        let e = err("x @ git+https://example.test/x.git@main#egg=y\n");
        assert!(e.contains("`#egg=y` names another package"), "{e}");
        let e = err(&format!(
            "x @ git+https://example.test/x.git@main --hash=sha256:{H1}\n"
        ));
        assert!(e.contains("cannot have --hash"), "{e}");
        let e = err("-e git+https://x/y#egg=y\n");
        assert!(e.contains("editable requirements"), "{e}");
    }

    #[test]
    fn refuses_vcs_editable_and_paths() {
        for line in ["hg+https://hg.example/pkg#egg=pkg", "pkg @ svn+https://x/y"] {
            let e = err(&format!("flask==3.0.3\n{line}\n"));
            assert!(e.contains("requirements.txt:2: "), "{e}");
            assert!(e.contains("only git is supported"), "{e}");
        }
        for line in ["-e .", "--editable ./pkg", "-e git+https://x/y#egg=y"] {
            let e = err(line);
            assert!(e.contains(":1: editable requirements"), "{e}");
        }
        for line in [
            "./pkg",
            "../pkg/dist/x-1.0-py3-none-any.whl",
            "/abs/x-1.0-py3-none-any.whl",
            "x-1.0-py3-none-any.whl",
            "file:///abs/x-1.0-py3-none-any.whl",
            "x @ file:///abs/x-1.0-py3-none-any.whl",
            "x @ ./x-1.0-py3-none-any.whl",
            "pkg/sub",
        ] {
            let e = err(line);
            assert!(
                e.contains(":1: local paths are not supported"),
                "{line}: {e}"
            );
        }
        let e = err("flask=3.0.3\n");
        assert!(
            e.contains(":1: `flask=3.0.3` is not a valid requirement"),
            "{e}"
        );
        let e = err("flask==3.0.3 --hash=md5:abc\n");
        assert!(e.contains("only sha256"), "{e}");
        let e = err("flask==3.0.3 --hash=sha256:abc\n");
        assert!(e.contains("64 hex digits"), "{e}");
        let e = err("flask==3.0.3 --index-url https://x\n");
        assert!(e.contains("line of its own"), "{e}");
        let e = err("--bogus\n");
        assert!(e.contains("unknown option `--bogus`"), "{e}");
        let e = err("--hash=sha256:abc\n");
        assert!(e.contains("must follow a requirement"), "{e}");
    }

    #[test]
    fn direct_wheel_urls() {
        let url = "https://files.example/packages/psycopg2-2.9.9-cp311-cp311-linux_x86_64.whl";
        let parsed = parse(&format!(
            "psycopg2 @ {url} ; python_version >= \"3.7\" --hash=sha256:{H1}\n\
             {url}#sha256={H2}\n\
             My_Pkg[extra1] @ https://files.example/my_pkg-1.0-py3-none-any.whl#sha256={H1}\n"
        ))
        .unwrap();
        let r = &parsed.requirements;
        assert_eq!(r[0].name, "psycopg2");
        assert_eq!(r[0].url.as_deref(), Some(url));
        assert_eq!(r[0].pinned.as_deref(), Some("2.9.9"));
        assert_eq!(r[0].marker.as_deref(), Some("python_version >= \"3.7\""));
        assert_eq!(
            r[0].source(),
            Source::Url {
                url: url.into(),
                sha256: H1.into()
            }
        );
        assert_eq!(r[1].name, "psycopg2");
        assert_eq!(r[1].url.as_deref(), Some(url));
        assert_eq!(
            r[1].hashes,
            vec![format!("sha256:{}", H2.to_ascii_lowercase())]
        );
        assert_eq!(r[2].name, "My_Pkg");
        assert_eq!(r[2].normalised, "my-pkg");
        assert_eq!(r[2].extras, vec!["extra1"]);

        let e = err(&format!("{url}\n"));
        assert!(e.contains("needs its sha256"), "{e}");
        let e = err(&format!(
            "psycopg2 @ https://x/psycopg2-2.9.9.tar.gz --hash=sha256:{H1}\n"
        ));
        assert!(e.contains("is not a wheel"), "{e}");
        let e = err(&format!("other @ {url}#sha256={H1}\n"));
        assert!(
            e.contains("the wheel is for `psycopg2`, not `other`"),
            "{e}"
        );
    }

    #[test]
    fn split_line_like_pip() {
        match split_line("flask==3.0.3     --hash=sha256:aa --hash 'sha256:bb'").unwrap() {
            LineKind::Requirement { arg, options } => {
                assert_eq!(arg, "flask==3.0.3");
                assert_eq!(options, vec!["--hash=sha256:aa", "--hash", "sha256:bb"]);
            }
            LineKind::Options(_) => panic!("a requirement line"),
        }
        assert!(matches!(
            split_line("-r x.txt").unwrap(),
            LineKind::Options(_)
        ));
        assert_eq!(strip_comment("a#b # c"), "a#b");
        assert_eq!(strip_comment("# c"), "");
    }
}
