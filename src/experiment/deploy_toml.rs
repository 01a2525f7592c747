//! `deploy.toml`, Dallinger 12.4.0's exclude-only file policy
//! (`dallinger/deployment_plan.py`, `docs/source/deploy_toml.rst`). When
//! the experiment has one, it alone decides which of the experiment's files
//! go to `/experiment`: git, Dallinger's old exclusion list and our
//! `.dallingerignore` no longer do, and `.dockerignore` never did.
//!
//! The semantics are 12.4.0's, rule for rule and in its order:
//! - `version = 1` and an `[exclude]` table with optional `paths`
//!   (literal root-relative prefixes), `names` (basenames in every
//!   directory) and `suffixes` (`.db`-style endings in every directory), all
//!   NFC-normalised, without globs or negation, no duplicates, and none
//!   naming a reserved path.
//! - Always omitted: version-control metadata at the root (`.git`, `.hg`,
//!   `.svn`, `.bzr`), the source `config.txt`, the generated root files
//!   (`constraints.txt`, `requirements.txt`, `runtime.txt`,
//!   `experiment_id.txt`), `.slugignore` and `*.dockerignore` anywhere.
//! - `deploy.toml` itself is in the set.
//! - Errors: a symlink, a special file (fifo, socket, device) or a nested
//!   repository (`.git` and the like below the root) that is not excluded,
//!   and two names that normalise to the same destination.
//!
//! Error texts are Dallinger's; a policy error also names the line and key.

use std::collections::{BTreeSet, HashMap};
use std::fs::FileType;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use fs_err::File;
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use unicode_normalization::UnicodeNormalization as _;

use super::files::{Collected, MAX_SIZE_BYTES};
use super::{Exclusion, ExperimentError, ExperimentFile, FileKind};

/// The policy file at the experiment root.
pub(crate) const POLICY_FILE: &str = "deploy.toml";

const VCS_NAMES: &[&str] = &[".git", ".hg", ".svn", ".bzr"];
const GENERATED_ROOT_NAMES: &[&str] = &[
    "config.txt",
    "constraints.txt",
    "experiment_id.txt",
    "requirements.txt",
    "runtime.txt",
];
const GLOB_CHARACTERS: &[char] = &['*', '?', '[', ']', '{', '}'];

/// A validated, normalised version 1 policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    pub paths: BTreeSet<String>,
    pub names: BTreeSet<String>,
    pub suffixes: BTreeSet<String>,
}

/// Dallinger's `_reserved_kind`: paths at or below prefixes no policy can
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reserved {
    Policy,
    Vcs,
    Configuration,
    Generated,
    BackendIgnore,
}

impl Reserved {
    /// The name Dallinger gives the kind, which is also our rule's name.
    fn rule(self) -> &'static str {
        match self {
            Reserved::Policy => "policy",
            Reserved::Vcs => "vcs",
            Reserved::Configuration => "configuration",
            Reserved::Generated => "generated",
            Reserved::BackendIgnore => "backend-ignore",
        }
    }
}

fn reserved_kind(parts: &[&str]) -> Option<Reserved> {
    let root_name = parts[0];
    if root_name == POLICY_FILE {
        Some(Reserved::Policy)
    } else if parts.iter().any(|p| VCS_NAMES.contains(p)) {
        Some(Reserved::Vcs)
    } else if root_name == "config.txt" {
        Some(Reserved::Configuration)
    } else if GENERATED_ROOT_NAMES.contains(&root_name) {
        Some(Reserved::Generated)
    } else if parts
        .iter()
        .any(|p| *p == ".slugignore" || p.ends_with(".dockerignore"))
    {
        Some(Reserved::BackendIgnore)
    } else {
        None
    }
}

/// Whether `root` has a policy: Dallinger's `os.path.lexists`, so a
/// symlinked or broken `deploy.toml` selects the policy (and is an error).
pub(crate) fn present(root: &Path) -> bool {
    root.join(POLICY_FILE).symlink_metadata().is_ok()
}

/// Python's `repr()` of a string, as Dallinger's messages quote values.
fn py_repr(value: &str) -> String {
    let quote = if value.contains('\'') && !value.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn invalid(message: String) -> ExperimentError {
    ExperimentError::Invalid { message }
}

/// Parses and validates the policy text of `path` (for messages).
pub(crate) fn parse(path: &Path, text: &str) -> Result<Policy, ExperimentError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let fail = |offset: usize, key: &str, message: String| {
        invalid(format!(
            "{}:{}: {key}: {message}",
            path.display(),
            line_of(offset)
        ))
    };
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        invalid(format!(
            "{}:{line}: Invalid TOML in deployment policy {}: {}",
            path.display(),
            path.display(),
            e.message().trim()
        ))
    })?;
    let table = table.get_ref();

    if let Some((keys, first, offset)) = unknown_keys(table, &["version", "exclude"]) {
        return Err(fail(
            offset,
            first,
            format!("Unknown deployment policy key(s): {}.", keys.join(", ")),
        ));
    }
    let missing: Vec<&str> = ["exclude", "version"]
        .into_iter()
        .filter(|k| value(table, k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            0,
            missing[0],
            format!("Missing deployment policy key(s): {}.", missing.join(", ")),
        ));
    }

    let version = value(table, "version").expect("checked above");
    let is_one = match version.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()) == Ok(1),
        _ => false,
    };
    if !is_one {
        return Err(fail(
            version.span().start,
            "version",
            "Deployment policy version must be the integer 1.".into(),
        ));
    }

    let exclude = value(table, "exclude").expect("checked above");
    let DeValue::Table(exclude_table) = exclude.get_ref() else {
        return Err(fail(
            exclude.span().start,
            "exclude",
            "Deployment policy exclude must be a table with paths, names, and suffixes.".into(),
        ));
    };
    if let Some((keys, first, offset)) =
        unknown_keys(exclude_table, &["paths", "names", "suffixes"])
    {
        return Err(fail(
            offset,
            &format!("exclude.{first}"),
            format!("Unknown exclude key(s): {}.", keys.join(", ")),
        ));
    }

    let mut policy = Policy::default();
    let lists: [(&str, Validator, &str, &mut BTreeSet<String>); 3] = [
        (
            "paths",
            validate_path,
            "exclude.paths entry",
            &mut policy.paths,
        ),
        (
            "names",
            validate_name,
            "exclude.names entry",
            &mut policy.names,
        ),
        (
            "suffixes",
            validate_suffix,
            "exclude.suffixes entry",
            &mut policy.suffixes,
        ),
    ];
    for (key, validator, label, into) in lists {
        let Some(list) = value(exclude_table, key) else {
            continue;
        };
        let full_key = format!("exclude.{key}");
        let items = match list.get_ref() {
            DeValue::Array(items)
                if items
                    .iter()
                    .all(|i| matches!(i.get_ref(), DeValue::String(_))) =>
            {
                items
            }
            _ => {
                return Err(fail(
                    list.span().start,
                    &full_key,
                    format!("Deployment policy {key} must be an array of strings."),
                ))
            }
        };
        for item in items.iter() {
            let DeValue::String(raw) = item.get_ref() else {
                unreachable!("checked above")
            };
            let normalized = validator(raw).map_err(|m| fail(item.span().start, &full_key, m))?;
            if into.contains(&normalized) {
                return Err(fail(
                    item.span().start,
                    &full_key,
                    format!("Duplicate normalized {label}: {}.", py_repr(&normalized)),
                ));
            }
            into.insert(normalized);
        }
    }
    Ok(policy)
}

/// The keys of `table` not in `allowed`, sorted as Dallinger lists them,
/// with the first of them in the file and its offset; `None` when all are.
fn unknown_keys<'t>(
    table: &'t DeTable<'_>,
    allowed: &[&str],
) -> Option<(Vec<&'t str>, &'t str, usize)> {
    let unknown: Vec<(&str, usize)> = table
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.get_ref().as_ref()))
        .map(|(k, _)| (k.get_ref().as_ref(), k.span().start))
        .collect();
    let (first, offset) = unknown.iter().min_by_key(|(_, o)| *o).copied()?;
    let mut keys: Vec<&str> = unknown.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    Some((keys, first, offset))
}

/// The value of `key` in `table`.
fn value<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

type Validator = fn(&str) -> Result<String, String>;

fn reject_globs(value: &str, field: &str) -> Result<(), String> {
    if value.contains(GLOB_CHARACTERS) {
        return Err(format!(
            "Glob syntax is unsupported in {field}: {}.",
            py_repr(value)
        ));
    }
    Ok(())
}

fn normalize_component(component: &str, context: &str) -> Result<String, String> {
    let normalized: String = component.nfc().collect();
    if normalized.is_empty() || normalized == "." || normalized == ".." {
        return Err(format!(
            "Invalid path component in {context}: {}.",
            py_repr(component)
        ));
    }
    Ok(normalized)
}

fn reject_reserved(parts: &[&str]) -> Result<(), String> {
    match reserved_kind(parts) {
        None => Ok(()),
        Some(_) => Err(format!(
            "Deployment policy cannot exclude required or reserved path {}.",
            py_repr(&parts.join("/"))
        )),
    }
}

fn validate_path(value: &str) -> Result<String, String> {
    let r = py_repr(value);
    if value.is_empty() {
        return Err("Exclusion paths must not be empty.".into());
    }
    if value.contains('\\') {
        return Err(format!("Exclusion paths must use POSIX separators: {r}."));
    }
    if value.starts_with('/') {
        return Err(format!(
            "Exclusion paths must be relative to the experiment root: {r}."
        ));
    }
    if value.starts_with('!') {
        return Err(format!("Negated exclusion paths are unsupported: {r}."));
    }
    reject_globs(value, "exclude.paths")?;
    if value.split('/').any(str::is_empty) {
        return Err(format!(
            "Exclusion paths must not contain empty components: {r}."
        ));
    }
    let context = format!("exclusion path {r}");
    let parts = value
        .split('/')
        .map(|c| normalize_component(c, &context))
        .collect::<Result<Vec<_>, _>>()?;
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    reject_reserved(&parts)?;
    Ok(parts.join("/"))
}

fn validate_name(value: &str) -> Result<String, String> {
    let r = py_repr(value);
    if value.is_empty() {
        return Err("exclude.names entries must not be empty.".into());
    }
    if value.contains(['/', '\\']) {
        return Err(format!(
            "exclude.names entries must be a single path component: {r}."
        ));
    }
    if value.starts_with('!') {
        return Err(format!(
            "Negated exclude.names entries are unsupported: {r}."
        ));
    }
    reject_globs(value, "exclude.names")?;
    let normalized = normalize_component(value, &format!("exclude.names entry {r}"))?;
    reject_reserved(&[&normalized])?;
    Ok(normalized)
}

fn validate_suffix(value: &str) -> Result<String, String> {
    let r = py_repr(value);
    if value.contains(['/', '\\']) {
        return Err(format!(
            "exclude.suffixes entries must be a single path component: {r}."
        ));
    }
    reject_globs(value, "exclude.suffixes")?;
    let normalized: String = value.nfc().collect();
    if !normalized.starts_with('.')
        || normalized == "."
        || normalized == ".."
        || normalized.chars().count() < 2
    {
        return Err(format!(
            "exclude.suffixes entries must look like '.db': {r}."
        ));
    }
    reject_reserved(&[&normalized])?;
    Ok(normalized)
}

/// Reads the policy file as Dallinger's `_read_policy_snapshot` does: not
/// through a symlink, a regular file, UTF-8 TOML. Gives the policy and the
/// file's size.
fn read_policy(root: &Path) -> Result<(Policy, u64, bool), ExperimentError> {
    let path = root.join(POLICY_FILE);
    let metadata = path.symlink_metadata().map_err(|e| {
        invalid(format!(
            "Cannot inspect deployment policy {}: {e}",
            path.display()
        ))
    })?;
    if metadata.file_type().is_symlink() {
        return Err(invalid(format!(
            "Deployment policy {} must not be a symbolic link.",
            path.display()
        )));
    }
    if !metadata.file_type().is_file() {
        return Err(invalid(format!(
            "Deployment policy {} must be a regular file.",
            path.display()
        )));
    }
    let bytes = fs_err::read(&path).map_err(|source| ExperimentError::Io {
        path: path.clone(),
        source: std::io::Error::new(source.kind(), source.to_string()),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        invalid(format!(
            "{}:{line}: Invalid TOML in deployment policy {}: the file is not valid UTF-8; \
             save it as UTF-8",
            path.display(),
            path.display()
        ))
    })?;
    let policy = parse(&path, &text)?;
    let executable = metadata.permissions().mode() & 0o111 != 0;
    Ok((policy, metadata.len(), executable))
}

/// Dallinger's `_source_type`.
fn source_type(file_type: &FileType) -> &'static str {
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character-device"
    } else if file_type.is_block_device() {
        "block-device"
    } else {
        "special-file"
    }
}

struct Walk<'a> {
    policy: &'a Policy,
    files: Vec<ExperimentFile>,
    excluded: Vec<Exclusion>,
    total_size: u64,
}

impl Walk<'_> {
    fn exclude(&mut self, path: String, directory: bool, rule: &'static str, value: Option<&str>) {
        self.excluded.push(Exclusion {
            path,
            directory,
            rule,
            value: value.map(str::to_string),
        });
    }

    /// Dallinger's `walk`, in name order (Dallinger's is the directory's).
    fn walk(&mut self, directory: &Path, parts: &[String]) -> Result<(), ExperimentError> {
        let cannot_scan = |e: std::io::Error| {
            invalid(format!(
                "Cannot scan experiment directory {}: {e}",
                directory.display()
            ))
        };
        let mut children = std::fs::read_dir(directory)
            .map_err(cannot_scan)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(cannot_scan)?;
        children.sort_by_key(|c| c.file_name());
        // Destinations in this directory: those of two sources can only
        // meet here, as their parents' are distinct.
        let mut destinations: HashMap<String, PathBuf> = HashMap::new();
        for child in children {
            let source = child.path();
            let Some(raw_name) = child.file_name().to_str().map(str::to_string) else {
                return Err(invalid(format!(
                    "{}: the file name is not valid UTF-8; rename it, or exclude it in {}",
                    source.display(),
                    POLICY_FILE
                )));
            };
            let name: String = raw_name.nfc().collect();
            let mut child_parts = parts.to_vec();
            child_parts.push(name.clone());
            let part_refs: Vec<&str> = child_parts.iter().map(String::as_str).collect();
            let destination = child_parts.join("/");
            let file_type = child.file_type().map_err(|e| {
                invalid(format!(
                    "Cannot inspect deployment source {}: {e}",
                    source.display()
                ))
            })?;
            let is_dir = file_type.is_dir();

            if self.policy.paths.contains(&destination) {
                self.exclude(
                    destination.clone(),
                    is_dir,
                    "exclude.paths",
                    Some(&destination),
                );
                continue;
            }
            if self.policy.names.contains(&name) {
                self.exclude(destination, is_dir, "exclude.names", Some(&name));
                continue;
            }
            if let Some(suffix) = self.policy.suffixes.iter().find(|s| name.ends_with(*s)) {
                let suffix = suffix.clone();
                self.exclude(destination, is_dir, "exclude.suffixes", Some(&suffix));
                continue;
            }
            match reserved_kind(&part_refs) {
                // Added by `collect`, from the file it parsed.
                Some(Reserved::Policy) => continue,
                Some(Reserved::Vcs) if !parts.is_empty() => {
                    return Err(invalid(format!(
                        "Nested repository or submodule metadata is unsupported: {}. \
                         Exclude the complete nested repository or move it outside the \
                         experiment root.",
                        source.display()
                    )));
                }
                Some(kind) => {
                    self.exclude(destination, is_dir, kind.rule(), None);
                    continue;
                }
                None => {}
            }
            if let Some(existing) = destinations.insert(destination.clone(), source.clone()) {
                return Err(invalid(format!(
                    "Source paths normalize to the same deployment destination {}: {} and {}.",
                    py_repr(&destination),
                    existing.display(),
                    source.display()
                )));
            }
            if file_type.is_symlink() {
                return Err(invalid(format!(
                    "Symbolic links are unsupported deployment sources: {}. Exclude the link \
                     or replace it with a regular file or directory.",
                    source.display()
                )));
            }
            if is_dir {
                self.walk(&source, &child_parts)?;
                continue;
            }
            if !file_type.is_file() {
                return Err(invalid(format!(
                    "Unsupported {} deployment source: {}. Only regular files and \
                     directories are supported.",
                    source_type(&file_type),
                    source.display()
                )));
            }
            let metadata = child.metadata().map_err(|e| {
                invalid(format!(
                    "Cannot inspect deployment source {}: {e}",
                    source.display()
                ))
            })?;
            // Fail now rather than halfway through writing a layer.
            File::open(&source).map_err(|e| ExperimentError::Io {
                path: source.clone(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            })?;
            self.total_size += metadata.len();
            self.files.push(ExperimentFile {
                rel: destination,
                kind: FileKind::File {
                    source,
                    executable: metadata.permissions().mode() & 0o111 != 0,
                },
            });
        }
        Ok(())
    }
}

/// The experiment's files under the policy in `root` (canonical), before
/// the generated files are applied. Sorted by `rel`.
pub(crate) fn collect(root: &Path) -> Result<Collected, ExperimentError> {
    let (policy, policy_size, policy_executable) = read_policy(root)?;
    let mut walk = Walk {
        policy: &policy,
        files: vec![ExperimentFile {
            rel: POLICY_FILE.to_string(),
            kind: FileKind::File {
                source: root.join(POLICY_FILE),
                executable: policy_executable,
            },
        }],
        excluded: Vec::new(),
        total_size: policy_size,
    };
    walk.walk(root, &[])?;
    let Walk {
        mut files,
        mut excluded,
        total_size,
        ..
    } = walk;
    if total_size > MAX_SIZE_BYTES {
        return Err(invalid(format!(
            "the experiment's files total {:.1} MiB ({total_size} bytes), over Dallinger's \
             limit of {} MiB; leave out large files (data, media, virtualenvs, build output) \
             with [exclude] paths, names or suffixes in {}",
            total_size as f64 / (1024.0 * 1024.0),
            MAX_SIZE_BYTES / (1024 * 1024),
            root.join(POLICY_FILE).display()
        )));
    }
    files.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    excluded.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(Collected {
        files,
        links: Vec::new(),
        excluded,
    })
}

/// Whether an authored root input that Dallinger restores outside the plan
/// (`requirements.txt`, `constraints.txt`) is there: a regular file. A
/// symlink is an error here, as every other symlink is under a policy
/// (Dallinger would follow it).
pub(crate) fn root_input(root: &Path, name: &str) -> Result<bool, ExperimentError> {
    let path = root.join(name);
    match path.symlink_metadata() {
        Err(_) => Ok(false),
        Ok(m) if m.file_type().is_file() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(invalid(format!(
            "Symbolic links are unsupported deployment sources: {}. Replace it with a \
             regular file.",
            path.display()
        ))),
        Ok(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("x/deploy.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_and_normalises() {
        let policy = parse(
            Path::new("deploy.toml"),
            "version = 1\n[exclude]\npaths = [\"data\", \"static/a\u{30a}\"]\n\
             names = [\"__pycache__\"]\nsuffixes = [\".db\"]\n",
        )
        .unwrap();
        assert_eq!(
            policy.paths.iter().collect::<Vec<_>>(),
            ["data", "static/\u{e5}"]
        );
        assert_eq!(policy.names.iter().collect::<Vec<_>>(), ["__pycache__"]);
        assert_eq!(policy.suffixes.iter().collect::<Vec<_>>(), [".db"]);
        // Every list is optional; an inline table is a table.
        let policy = parse(Path::new("deploy.toml"), "version = 1\nexclude = {}\n").unwrap();
        assert_eq!(policy, Policy::default());
    }

    #[test]
    fn errors_name_file_line_and_key_in_dallingers_words() {
        let cases = [
            ("version = 1\n", "x/deploy.toml:1: exclude: Missing deployment policy key(s): exclude."),
            (
                "version = 1\nexclude = {}\nextra = 2\n",
                "x/deploy.toml:3: extra: Unknown deployment policy key(s): extra.",
            ),
            (
                "version = true\n[exclude]\n",
                "x/deploy.toml:1: version: Deployment policy version must be the integer 1.",
            ),
            (
                "version = 2\n[exclude]\n",
                "x/deploy.toml:1: version: Deployment policy version must be the integer 1.",
            ),
            (
                "version = 1\nexclude = 3\n",
                "x/deploy.toml:2: exclude: Deployment policy exclude must be a table",
            ),
            (
                "version = 1\n[exclude]\npath = []\n",
                "x/deploy.toml:3: exclude.path: Unknown exclude key(s): path.",
            ),
            (
                "version = 1\n[exclude]\nnames = \"x\"\n",
                "x/deploy.toml:3: exclude.names: Deployment policy names must be an array of strings.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\n  \"ok\",\n  \"data/*\",\n]\n",
                "x/deploy.toml:5: exclude.paths: Glob syntax is unsupported in exclude.paths: 'data/*'.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\"/abs\"]\n",
                "Exclusion paths must be relative to the experiment root: '/abs'.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\"a//b\"]\n",
                "Exclusion paths must not contain empty components: 'a//b'.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\"a/../b\"]\n",
                "Invalid path component in exclusion path 'a/../b': '..'.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\"!keep\"]\n",
                "Negated exclusion paths are unsupported: '!keep'.",
            ),
            (
                "version = 1\n[exclude]\npaths = [\"config.txt\"]\n",
                "Deployment policy cannot exclude required or reserved path 'config.txt'.",
            ),
            (
                "version = 1\n[exclude]\nnames = [\"a/b\"]\n",
                "exclude.names entries must be a single path component: 'a/b'.",
            ),
            (
                "version = 1\n[exclude]\nnames = [\".git\"]\n",
                "Deployment policy cannot exclude required or reserved path '.git'.",
            ),
            (
                "version = 1\n[exclude]\nsuffixes = [\"db\"]\n",
                "exclude.suffixes entries must look like '.db': 'db'.",
            ),
            (
                "version = 1\n[exclude]\nsuffixes = [\"*.db\"]\n",
                "Glob syntax is unsupported in exclude.suffixes: '*.db'.",
            ),
            (
                "version = 1\n[exclude]\nsuffixes = [\".dockerignore\"]\n",
                "Deployment policy cannot exclude required or reserved path '.dockerignore'.",
            ),
            (
                "version = 1\n[exclude]\nnames = [\"a\u{30a}\", \"\u{e5}\"]\n",
                "x/deploy.toml:3: exclude.names: Duplicate normalized exclude.names entry: '\u{e5}'.",
            ),
            ("version = 1\n[exclude\n", "x/deploy.toml:2: Invalid TOML in deployment policy"),
        ];
        for (text, expected) in cases {
            let message = err(text);
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn reserved_kinds() {
        assert_eq!(reserved_kind(&["deploy.toml"]), Some(Reserved::Policy));
        assert_eq!(reserved_kind(&["a", ".hg"]), Some(Reserved::Vcs));
        assert_eq!(reserved_kind(&["runtime.txt"]), Some(Reserved::Generated));
        assert_eq!(
            reserved_kind(&["a", "x.dockerignore"]),
            Some(Reserved::BackendIgnore)
        );
        assert_eq!(reserved_kind(&["a", "config.txt"]), None);
        assert_eq!(reserved_kind(&["a", "deploy.toml"]), None);
    }

    #[test]
    fn python_repr() {
        assert_eq!(py_repr("a"), "'a'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
    }
}
