//! Registry mirrors: `registries.conf` in the containers format
//! (containers-registries.conf(5), containers-registries.conf.d(5)), read
//! as podman and skopeo read it, and the pull sources it gives an image:
//! its mirrors in order, then its location.
//!
//! Files, as containers/image finds them: `$CONTAINERS_REGISTRIES_CONF`
//! (else `$REGISTRIES_CONFIG_PATH`), which must exist, else
//! `~/.config/containers/registries.conf` if it exists (then only the
//! user's drop-ins are read), else `/etc/containers/registries.conf` (may be
//! missing); then the `*.conf` drop-ins of `/etc/containers/registries.conf.d`
//! and `~/.config/containers/registries.conf.d`, in name order, whose
//! `[[registry]]` tables replace earlier ones with the same prefix.
//!
//! A mirror is not trusted: whatever it serves is checked against the digest
//! asked for or computed, and bytes that do not match stop the pull naming
//! it (they never fall through to another source). A mirror that does not
//! answer, lacks the image or refuses us is passed over, with a line saying
//! so. Pushes never use this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use fs_err as fs;
use serde::Deserialize;

use super::client::RegistryClient;
use super::error::RegistryError;
use super::reference::Reference;

/// The system-wide file and drop-in directory.
const SYSTEM_DIR: &str = "/etc/containers";

/// One `[[registry]]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `host[:port][/namespace…]` or `*.domain`.
    prefix: String,
    /// Where the image is, the prefix replaced by it; empty only for a
    /// wildcard prefix (the image's own host).
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
    /// The file the table is in, for messages.
    file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFromMirror,
}

/// A mirror's `pull-from-mirror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFromMirror {
    All,
    DigestOnly,
    TagOnly,
}

/// The registries configuration: every `[[registry]]` table of the files
/// read, one per prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    entries: Vec<Entry>,
}

/// Where one image is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// The image's reference there (the prefix rewritten to the mirror's
    /// or the location's).
    pub reference: Reference,
    /// Plain HTTP allowed (`insecure = true`).
    pub insecure: bool,
    /// The registries.conf file that sent us there, when it is a mirror.
    pub mirror_of: Option<PathBuf>,
}

impl PullSource {
    /// The image itself, with no configuration in between.
    pub fn direct(reference: &Reference) -> PullSource {
        PullSource {
            reference: reference.clone(),
            insecure: false,
            mirror_of: None,
        }
    }

    /// How messages name this source.
    pub fn describe(&self) -> String {
        match &self.mirror_of {
            Some(file) => format!(
                "mirror {} (registries.conf {})",
                self.reference.registry,
                file.display()
            ),
            None => self.reference.registry.clone(),
        }
    }
}

/// The files to read, in order (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfPaths {
    main: PathBuf,
    /// Named by the environment: missing is an error.
    main_required: bool,
    drop_in_dirs: Vec<PathBuf>,
}

impl ConfPaths {
    fn find(env_file: Option<PathBuf>, home: Option<&Path>, system: &Path) -> ConfPaths {
        let user_file = home.map(|h| h.join(".config/containers/registries.conf"));
        let user_dir = home.map(|h| h.join(".config/containers/registries.conf.d"));
        let system_dir = system.join("registries.conf.d");
        if let Some(file) = env_file {
            return ConfPaths {
                main: file,
                main_required: true,
                drop_in_dirs: [Some(system_dir), user_dir].into_iter().flatten().collect(),
            };
        }
        if let Some(file) = user_file.filter(|f| f.exists()) {
            return ConfPaths {
                main: file,
                main_required: false,
                drop_in_dirs: user_dir.into_iter().collect(),
            };
        }
        ConfPaths {
            main: system.join("registries.conf"),
            main_required: false,
            drop_in_dirs: [Some(system_dir), user_dir].into_iter().flatten().collect(),
        }
    }
}

impl RegistriesConf {
    /// Reads the configuration podman would read with this environment and
    /// home directory.
    pub fn load(env: &BTreeMap<String, String>, home: Option<&Path>) -> Result<RegistriesConf> {
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let env_file = var("CONTAINERS_REGISTRIES_CONF").or_else(|| var("REGISTRIES_CONFIG_PATH"));
        Self::load_paths(&ConfPaths::find(env_file, home, Path::new(SYSTEM_DIR)))
    }

    fn load_paths(paths: &ConfPaths) -> Result<RegistriesConf> {
        let mut conf = match fs::read_to_string(&paths.main) {
            Ok(text) => parse_file(&text, &paths.main, false)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !paths.main_required => {
                RegistriesConf::default()
            }
            Err(e) => bail!("cannot read the registries configuration: {e}"),
        };
        for path in drop_ins(&paths.drop_in_dirs)? {
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                // Removed since the listing: as podman, not an error.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => bail!("cannot read the registries configuration drop-in: {e}"),
            };
            conf.merge(parse_file(&text, &path, true)?);
        }
        Ok(conf)
    }

    /// A drop-in's tables replace those with the same prefix.
    fn merge(&mut self, later: RegistriesConf) {
        for entry in later.entries {
            self.entries.retain(|e| e.prefix != entry.prefix);
            self.entries.push(entry);
        }
    }

    /// The table whose prefix matches `name` (`HOST/REPOSITORY`) longest.
    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| prefix_match(name, &e.prefix).is_some())
            .max_by_key(|e| e.prefix.len())
    }

    /// Where `reference` is pulled from, in order: the mirrors that apply to
    /// it, then its location (the image itself when no table matches). A
    /// blocked registry is an error. `any_mirror` takes every mirror
    /// whatever its `pull-from-mirror` (for blobs, which are addressed by
    /// digest and checked against it wherever they come from).
    pub fn pull_sources(&self, reference: &Reference, any_mirror: bool) -> Result<Vec<PullSource>> {
        let name = reference.name();
        let Some(entry) = self.find(&name) else {
            return Ok(vec![PullSource::direct(reference)]);
        };
        if entry.blocked {
            bail!(
                "{reference}: registry {} is blocked in {}: pulling from it is refused (remove \
                 `blocked = true` from its [[registry]] table to allow it)",
                entry.prefix,
                entry.file.display()
            );
        }
        let by_digest = reference.digest.is_some();
        let mirrors = entry.mirrors.iter().filter(|m| {
            any_mirror
                || match (entry.mirror_by_digest_only, m.pull_from) {
                    (true, _) => by_digest,
                    (false, PullFromMirror::All) => true,
                    (false, PullFromMirror::DigestOnly) => by_digest,
                    (false, PullFromMirror::TagOnly) => !by_digest,
                }
        });
        let mut sources = Vec::new();
        for mirror in mirrors {
            sources.push(PullSource {
                reference: rewrite(reference, entry, &mirror.location)?,
                insecure: mirror.insecure,
                mirror_of: Some(entry.file.clone()),
            });
        }
        let location = if entry.location.is_empty() {
            reference.clone()
        } else {
            rewrite(reference, entry, &entry.location)?
        };
        sources.push(PullSource {
            reference: location,
            insecure: entry.insecure,
            mirror_of: None,
        });
        Ok(sources)
    }
}

/// `reference` with the part `entry`'s prefix matched replaced by `location`.
fn rewrite(reference: &Reference, entry: &Entry, location: &str) -> Result<Reference> {
    let text = reference.to_string();
    let matched = prefix_match(&text, &entry.prefix).context("the prefix no longer matches")?;
    let rewritten = format!("{location}{}", &text[matched..]);
    let parsed = Reference::parse(&rewritten).with_context(|| {
        format!(
            "{}: [[registry]] prefix {:?} rewrites {reference} to {rewritten:?}, which is not an \
             image reference",
            entry.file.display(),
            entry.prefix
        )
    })?;
    // A location without a host would be read as Docker Hub's.
    if !Reference::names_registry_host(&rewritten) {
        bail!(
            "{}: location {location:?} (for prefix {:?}) does not start with a registry host",
            entry.file.display(),
            entry.prefix
        );
    }
    Ok(parsed)
}

/// How much of `name` (`HOST/REPO[:TAG][@DIGEST]`) `prefix` matches, as
/// containers/image decides: the whole prefix followed by the end, `/`, `:`
/// or `@`; a `*.domain` prefix matches any subdomain of the host.
fn prefix_match(name: &str, prefix: &str) -> Option<usize> {
    let boundary =
        |at: usize| at == name.len() || matches!(name.as_bytes()[at], b'/' | b':' | b'@');
    if let Some(domain) = prefix.strip_prefix('*') {
        // `domain` is `.example.com`: somewhere in the host, ending it.
        let at = name.find(domain)?;
        if name[..at].contains('/') {
            return None;
        }
        let end = at + domain.len();
        return boundary(end).then_some(end);
    }
    (name.starts_with(prefix) && boundary(prefix.len())).then_some(prefix.len())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct FileToml {
    registry: Option<Vec<RegistryToml>>,
    /// Version 1: `[registries.search]`, `.insecure`, `.block`.
    registries: Option<V1Toml>,
    // Read for the v1/v2 mixing check only; short names are not ours.
    unqualified_search_registries: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryToml {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    pull_from_mirror: Option<String>,
    #[serde(default)]
    mirror: Vec<MirrorToml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorToml {
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(Deserialize, Default)]
struct V1Toml {
    search: Option<V1List>,
    insecure: Option<V1List>,
    block: Option<V1List>,
}

#[derive(Deserialize, Default)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// Parses and validates one file, as containers/image does (errors name the
/// file and say what to change).
fn parse_file(text: &str, file: &Path, drop_in: bool) -> Result<RegistriesConf> {
    let shown = file.display();
    let parsed: FileToml = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow!("{shown}{at}: not a registries.conf: {}", e.message().trim())
    })?;
    let tables = match parsed.registries {
        Some(v1) => {
            if drop_in {
                bail!("{shown}: a registries.conf.d drop-in must be in the version 2 format ([[registry]] tables), not [registries.*] lists");
            }
            if parsed.registry.is_some() || parsed.unqualified_search_registries.is_some() {
                bail!("{shown}: mixes the version 1 format ([registries.*] lists) with version 2 ([[registry]], unqualified-search-registries): use one");
            }
            from_v1(v1)
        }
        None => parsed.registry.unwrap_or_default(),
    };
    let mut entries: Vec<Entry> = Vec::new();
    for table in tables {
        let entry = validate(table, file)?;
        // Tables with the same prefix after the first are ignored, as
        // containers/image does.
        if !entries.iter().any(|e| e.prefix == entry.prefix) {
            entries.push(entry);
        }
    }
    for (i, a) in entries.iter().enumerate() {
        let key = |e: &Entry| {
            if e.location.is_empty() {
                e.prefix.clone()
            } else {
                e.location.clone()
            }
        };
        for b in &entries[i + 1..] {
            if key(a) == key(b) && (a.insecure != b.insecure || a.blocked != b.blocked) {
                let what = if a.insecure != b.insecure {
                    "insecure"
                } else {
                    "blocked"
                };
                bail!(
                    "{shown}: registry {:?} is defined several times with conflicting {what:?} settings",
                    key(a)
                );
            }
        }
    }
    Ok(RegistriesConf { entries })
}

/// Version 1 lists as tables: each registry its own prefix; `search` only
/// concerns short names, which we do not resolve.
fn from_v1(v1: V1Toml) -> Vec<RegistryToml> {
    let mut tables: Vec<RegistryToml> = Vec::new();
    let lists = [
        (v1.search, false, false),
        (v1.block, true, false),
        (v1.insecure, false, true),
    ];
    for (list, blocked, insecure) in lists {
        for location in list.map(|l| l.registries).unwrap_or_default() {
            let index = match tables
                .iter()
                .position(|t| t.location.as_deref() == Some(location.as_str()))
            {
                Some(i) => i,
                None => {
                    tables.push(RegistryToml {
                        prefix: None,
                        location: Some(location),
                        insecure: false,
                        blocked: false,
                        mirror_by_digest_only: false,
                        pull_from_mirror: None,
                        mirror: Vec::new(),
                    });
                    tables.len() - 1
                }
            };
            tables[index].blocked |= blocked;
            tables[index].insecure |= insecure;
        }
    }
    tables
}

/// A location or prefix as containers/image takes it: no trailing `/`, no
/// URL scheme.
fn location(value: &str, file: &Path, key: &str) -> Result<String> {
    let trimmed = value.trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        bail!(
            "{}: {key} {value:?}: URL schemes are not supported, write HOST[:PORT][/NAMESPACE] (and `insecure = true` for plain HTTP)",
            file.display()
        );
    }
    Ok(trimmed.to_string())
}

fn validate(table: RegistryToml, file: &Path) -> Result<Entry> {
    let shown = file.display();
    let loc = location(table.location.as_deref().unwrap_or(""), file, "location")?;
    let prefix = match table.prefix.as_deref().filter(|p| !p.is_empty()) {
        None if loc.is_empty() => {
            bail!("{shown}: a [[registry]] table has neither prefix nor location")
        }
        None => loc.clone(),
        Some(p) => {
            let p = location(p, file, "prefix")?;
            if p.starts_with("*.") {
                if p.contains(['/', '@', ':']) {
                    bail!("{shown}: wildcard prefix {p:?} must be of the form *.example.com");
                }
            } else if loc.is_empty() {
                bail!("{shown}: [[registry]] prefix {p:?} has no location (only a *.example.com prefix may leave it out)");
            }
            p
        }
    };
    if table.pull_from_mirror.is_some() {
        bail!("{shown}: pull-from-mirror belongs in a [[registry.mirror]] table, not in the [[registry]] of {prefix:?}");
    }
    let mut mirrors = Vec::new();
    for mirror in table.mirror {
        let mirror_location = location(
            mirror.location.as_deref().unwrap_or(""),
            file,
            "mirror location",
        )?;
        if mirror_location.is_empty() {
            bail!("{shown}: a [[registry.mirror]] of {prefix:?} has no location");
        }
        let pull_from = match mirror.pull_from_mirror.as_deref() {
            Some(_) if table.mirror_by_digest_only => bail!(
                "{shown}: {prefix:?} sets mirror-by-digest-only and its mirror {mirror_location:?} pull-from-mirror: use one"
            ),
            None | Some("") | Some("all") => PullFromMirror::All,
            Some("digest-only") => PullFromMirror::DigestOnly,
            Some("tag-only") => PullFromMirror::TagOnly,
            Some(other) => bail!(
                "{shown}: pull-from-mirror {other:?} of mirror {mirror_location:?}: use \"all\", \"digest-only\" or \"tag-only\""
            ),
        };
        mirrors.push(Mirror {
            location: mirror_location,
            insecure: mirror.insecure,
            pull_from,
        });
    }
    Ok(Entry {
        prefix,
        location: loc,
        insecure: table.insecure,
        blocked: table.blocked,
        mirror_by_digest_only: table.mirror_by_digest_only,
        mirrors,
        file: file.to_path_buf(),
    })
}

/// The `*.conf` files of the drop-in directories, each directory in name
/// order (not recursive); a missing directory has none.
fn drop_ins(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in dirs {
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("cannot list {}: {e}", dir.display()),
        };
        let mut here = Vec::new();
        for entry in listing {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let is_conf = path.extension().is_some_and(|e| e == "conf");
            if is_conf && !entry.file_type().is_ok_and(|t| t.is_dir()) {
                here.push(path);
            }
        }
        here.sort();
        files.extend(here);
    }
    Ok(files)
}

/// The environment variables and home directory the files are found with.
type Environment = (BTreeMap<String, String>, Option<PathBuf>);

/// How a [`Puller`] reaches one source.
pub type Connect<'a> = Box<dyn Fn(&PullSource) -> Result<RegistryClient> + 'a>;

/// The registries configuration, read once, when a pull first needs it
/// (a malformed file only stops commands that pull).
#[derive(Clone, Default)]
pub struct Mirrors {
    /// The environment and home directory to find the files with; `None`
    /// reads nothing (no mirrors).
    from: Option<Arc<Environment>>,
    loaded: Arc<OnceLock<Result<Arc<RegistriesConf>, String>>>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrors").finish_non_exhaustive()
    }
}

impl Mirrors {
    /// The configuration podman would read with this environment and home.
    pub fn from_environment(env: BTreeMap<String, String>, home: Option<PathBuf>) -> Mirrors {
        Mirrors {
            from: Some(Arc::new((env, home))),
            loaded: Default::default(),
        }
    }

    /// A configuration given whole (tests).
    pub fn fixed(conf: RegistriesConf) -> Mirrors {
        let loaded = OnceLock::new();
        let _ = loaded.set(Ok(Arc::new(conf)));
        Mirrors {
            from: None,
            loaded: Arc::new(loaded),
        }
    }

    pub fn conf(&self) -> Result<Arc<RegistriesConf>> {
        let loaded = self.loaded.get_or_init(|| match &self.from {
            None => Ok(Arc::new(RegistriesConf::default())),
            Some(from) => RegistriesConf::load(&from.0, from.1.as_deref())
                .map(Arc::new)
                .map_err(|e| format!("{e:#}")),
        });
        loaded.clone().map_err(|e| anyhow!(e))
    }
}

/// The sources of one image, and how to reach each.
pub struct Puller<'a> {
    /// The image as the build names it (`ghcr.io/…`).
    pub image: Reference,
    pub sources: Vec<PullSource>,
    pub connect: Connect<'a>,
}

impl Puller<'_> {
    /// Runs `op` (given a client and the image's reference on that source)
    /// on each source in turn until one succeeds. A source that does not
    /// answer, lacks the image or refuses us is passed over with a line on
    /// stderr; one whose answer does not verify (a digest that does not
    /// match, a blob past its size) stops the pull naming it. With one
    /// source, its error is returned as it is.
    pub fn pull<T>(
        &self,
        mut op: impl FnMut(&RegistryClient, &Reference) -> Result<T>,
    ) -> Result<T> {
        let mut passed_over: Vec<String> = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let last = i + 1 == self.sources.len();
            let attempt = (self.connect)(source).and_then(|client| op(&client, &source.reference));
            let error = match attempt {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if self.sources.len() == 1 {
                return Err(error);
            }
            if !passes_over(&error) {
                // Not tried elsewhere: bytes that do not verify are a
                // source to fix or remove, not one to route around.
                return Err(error.context(format!(
                    "{} (as {}) for {}",
                    source.describe(),
                    source.reference,
                    self.image
                )));
            }
            if last {
                let tried = passed_over.join("; ");
                return Err(error.context(format!(
                    "{}: no source has it (tried {tried}; then {})",
                    self.image,
                    source.describe()
                )));
            }
            let next = &self.sources[i + 1];
            eprintln!(
                "{} did not give {}: {}; trying {}",
                source.describe(),
                source.reference,
                one_line(&error),
                next.describe()
            );
            passed_over.push(format!("{}: {}", source.describe(), one_line(&error)));
        }
        bail!("{}: no source to pull it from", self.image)
    }
}

impl Puller<'_> {
    /// Streams blob `digest` of `size` bytes from the first source that has
    /// it into `import`, which verifies it (see [`Puller::pull`]).
    pub fn get_blob(
        &self,
        digest: &str,
        size: u64,
        import: &mut dyn FnMut(&mut dyn std::io::Read) -> Result<()>,
    ) -> Result<()> {
        self.pull(|client, source| Ok(client.get_blob(&source.repository, digest, size, import)?))
    }
}

/// The error's innermost message, on one line.
fn one_line(error: &anyhow::Error) -> String {
    error.root_cause().to_string().replace('\n', " ")
}

/// Whether another source may do better after `error`: no answer, not
/// there, not allowed, an answer we cannot use. Not for bytes that do not
/// verify (the source lies or is damaged), nor for our own side's errors.
fn passes_over(error: &anyhow::Error) -> bool {
    fn registry(error: &RegistryError) -> bool {
        match error {
            RegistryError::NotFound { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Denied { .. }
            | RegistryError::InvalidName { .. }
            | RegistryError::Refused { .. }
            | RegistryError::Transport { .. }
            | RegistryError::Status { .. } => true,
            RegistryError::Exhausted { last, .. } => registry(last),
            RegistryError::TooLarge { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::Local(_) => false,
        }
    }
    error
        .chain()
        .any(|cause| cause.downcast_ref::<RegistryError>().is_some_and(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        parse_file(text, Path::new("registries.conf"), false).unwrap()
    }

    fn error(text: &str) -> String {
        format!(
            "{:#}",
            parse_file(text, Path::new("registries.conf"), false).unwrap_err()
        )
    }

    fn sources(conf: &RegistriesConf, image: &str) -> Vec<String> {
        conf.pull_sources(&Reference::parse(image).unwrap(), false)
            .unwrap()
            .iter()
            .map(|s| {
                let m = if s.mirror_of.is_some() { "mirror " } else { "" };
                format!("{m}{}", s.reference)
            })
            .collect()
    }

    #[test]
    fn prefixes_match_at_a_boundary_and_the_longest_wins() {
        assert_eq!(prefix_match("ghcr.io/a/b", "ghcr.io"), Some(7));
        assert_eq!(prefix_match("ghcr.io/a/b", "ghcr.io/a"), Some(9));
        assert_eq!(prefix_match("ghcr.io/ab/c", "ghcr.io/a"), None);
        assert_eq!(prefix_match("ghcr.iox/a", "ghcr.io"), None);
        assert_eq!(prefix_match("ghcr.io/a:t", "ghcr.io/a"), Some(9));
        assert_eq!(prefix_match("ghcr.io/a@sha256:00", "ghcr.io/a"), Some(9));
        assert_eq!(prefix_match("x.example.com/a", "*.example.com"), Some(13));
        assert_eq!(prefix_match("example.com/a", "*.example.com"), None);
        assert_eq!(prefix_match("h.io/x.example.com/a", "*.example.com"), None);

        let c = conf(
            r#"
[[registry]]
prefix = "ghcr.io"
location = "ghcr.io"
[[registry.mirror]]
location = "127.0.0.1:5001"

[[registry]]
prefix = "ghcr.io/astral-sh"
location = "127.0.0.1:5002/astral"
[[registry.mirror]]
location = "127.0.0.1:5003/cache/astral"
[[registry.mirror]]
location = "127.0.0.1:5004"
"#,
        );
        assert_eq!(
            sources(&c, "ghcr.io/astral-sh/uv:python3.11-bookworm"),
            [
                "mirror 127.0.0.1:5003/cache/astral/uv:python3.11-bookworm",
                "mirror 127.0.0.1:5004/uv:python3.11-bookworm",
                "127.0.0.1:5002/astral/uv:python3.11-bookworm",
            ]
        );
        assert_eq!(
            sources(&c, "ghcr.io/lab/exp:v1"),
            ["mirror 127.0.0.1:5001/lab/exp:v1", "ghcr.io/lab/exp:v1"]
        );
        assert_eq!(sources(&c, "quay.io/x/y:1"), ["quay.io/x/y:1"]);
        // Docker Hub's names are matched in their full form.
        let hub = conf("[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:5001\"\n");
        assert_eq!(
            sources(&hub, "python:3.11"),
            [
                "mirror 127.0.0.1:5001/library/python:3.11",
                "docker.io/library/python:3.11"
            ]
        );
    }

    #[test]
    fn pull_from_mirror_and_mirror_by_digest_only_choose_mirrors() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let c = conf(
            r#"
[[registry]]
location = "ghcr.io"
[[registry.mirror]]
location = "127.0.0.1:5001"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "127.0.0.1:5002"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "127.0.0.1:5003"

[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "127.0.0.1:5004"
"#,
        );
        assert_eq!(
            sources(&c, "ghcr.io/a/b:t"),
            [
                "mirror 127.0.0.1:5002/a/b:t",
                "mirror 127.0.0.1:5003/a/b:t",
                "ghcr.io/a/b:t"
            ]
        );
        assert_eq!(
            sources(&c, &format!("ghcr.io/a/b@{digest}")),
            [
                format!("mirror 127.0.0.1:5001/a/b@{digest}"),
                format!("mirror 127.0.0.1:5003/a/b@{digest}"),
                format!("ghcr.io/a/b@{digest}")
            ]
        );
        assert_eq!(sources(&c, "quay.io/a/b:t"), ["quay.io/a/b:t"]);
        assert_eq!(
            sources(&c, &format!("quay.io/a/b@{digest}")),
            [
                format!("mirror 127.0.0.1:5004/a/b@{digest}"),
                format!("quay.io/a/b@{digest}")
            ]
        );
        // Blobs take every mirror.
        let all = c
            .pull_sources(&Reference::parse("ghcr.io/a/b").unwrap(), true)
            .unwrap();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn blocked_and_wildcards_and_insecure() {
        let c = conf(
            r#"
[[registry]]
prefix = "*.internal.example"
blocked = true

[[registry]]
prefix = "*.example.org"

[[registry]]
location = "registry.lab:5000"
insecure = true
"#,
        );
        let blocked = c
            .pull_sources(&Reference::parse("a.internal.example/x:1").unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(
            blocked.contains(
                "a.internal.example/x:1: registry *.internal.example is blocked in registries.conf"
            ),
            "{blocked}"
        );
        assert_eq!(sources(&c, "r.example.org/x:1"), ["r.example.org/x:1"]);
        let lab = c
            .pull_sources(&Reference::parse("registry.lab:5000/x:1").unwrap(), false)
            .unwrap();
        assert!(lab[0].insecure);
    }

    #[test]
    fn invalid_files_are_one_line_naming_the_file() {
        for (text, expected) in [
            ("[[registry]]\nlocation = \"https://ghcr.io\"\n", "URL schemes are not supported"),
            ("[[registry]]\ninsecure = true\n", "neither prefix nor location"),
            ("[[registry]]\nprefix = \"ghcr.io\"\n", "has no location"),
            ("[[registry]]\nprefix = \"*.a.com/x\"\n", "must be of the form"),
            ("[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\ninsecure = true\n", "has no location"),
            ("[[registry]]\nlocation = \"a.io\"\npull-from-mirror = \"all\"\n", "belongs in a [[registry.mirror]]"),
            ("[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"b.io\"\npull-from-mirror = \"sometimes\"\n", "\"sometimes\""),
            ("[[registry]]\nlocation = \"a.io\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"b.io\"\npull-from-mirror = \"all\"\n", "use one"),
            ("[[registry]]\nprefix = \"a.io/x\"\nlocation = \"a.io\"\ninsecure = true\n[[registry]]\nprefix = \"a.io/y\"\nlocation = \"a.io\"\n", "conflicting \"insecure\""),
            ("[[registry]]\nlocation = 5\n", "registries.conf (line 2): not a registries.conf"),
            ("[registries.block]\nregistries = [\"a.io\"]\n[[registry]]\nlocation = \"b.io\"\n", "mixes the version 1 format"),
        ] {
            let e = error(text);
            assert!(e.starts_with("registries.conf"), "{e}");
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn version_one_lists_and_ignored_keys() {
        let c = conf(
            "unused-key = 1\n[registries.search]\nregistries = [\"docker.io\"]\n[registries.block]\nregistries = [\"bad.io\"]\n[registries.insecure]\nregistries = [\"lab.io:5000\"]\n",
        );
        assert!(c
            .pull_sources(&Reference::parse("bad.io/x").unwrap(), false)
            .is_err());
        assert!(
            c.pull_sources(&Reference::parse("lab.io:5000/x").unwrap(), false)
                .unwrap()[0]
                .insecure
        );
        // What podman's own drop-ins hold (short-name aliases) is accepted.
        let aliases = parse_file(
            "[aliases]\n\"python\" = \"docker.io/library/python\"\nshort-name-mode = \"enforcing\"\n",
            Path::new("shortnames.conf"),
            true,
        )
        .unwrap();
        assert_eq!(aliases, RegistriesConf::default());
        let v1_drop_in = parse_file(
            "[registries.block]\nregistries = [\"a.io\"]\n",
            Path::new("d.conf"),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(v1_drop_in.contains("version 2 format"), "{v1_drop_in}");
    }

    #[test]
    fn the_files_are_found_in_podmans_order_and_drop_ins_replace_by_prefix() {
        let root = tempfile::tempdir().unwrap();
        let system = root.path().join("etc");
        let home = root.path().join("home");
        let user = home.join(".config/containers");
        fs::create_dir_all(system.join("registries.conf.d")).unwrap();
        fs::create_dir_all(user.join("registries.conf.d")).unwrap();
        let table = |location: &str, mirror: &str| {
            format!("[[registry]]\nprefix = \"ghcr.io\"\nlocation = \"{location}\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\n")
        };
        let mirror_of = |paths: &ConfPaths| {
            let c = RegistriesConf::load_paths(paths).unwrap();
            sources(&c, "ghcr.io/a/b:1").join(" ")
        };
        fs::write(system.join("registries.conf"), table("ghcr.io", "sys:1")).unwrap();
        let env_file = root.path().join("env.conf");
        fs::write(&env_file, table("ghcr.io", "env:1")).unwrap();

        // The system file, with no user file.
        let paths = ConfPaths::find(None, Some(&home), &system);
        assert_eq!(mirror_of(&paths), "mirror sys:1/a/b:1 ghcr.io/a/b:1");
        // A system drop-in replaces the table with its prefix; a user
        // drop-in comes after it; files not named *.conf are not read.
        fs::write(
            system.join("registries.conf.d/50-a.conf"),
            table("ghcr.io", "sysdrop:1"),
        )
        .unwrap();
        fs::write(system.join("registries.conf.d/40-b.txt"), "not toml [").unwrap();
        assert_eq!(mirror_of(&paths), "mirror sysdrop:1/a/b:1 ghcr.io/a/b:1");
        fs::write(
            user.join("registries.conf.d/10-a.conf"),
            table("ghcr.io", "userdrop:1"),
        )
        .unwrap();
        assert_eq!(mirror_of(&paths), "mirror userdrop:1/a/b:1 ghcr.io/a/b:1");
        fs::remove_file(user.join("registries.conf.d/10-a.conf")).unwrap();

        // A user file replaces the system file and its drop-ins.
        fs::write(user.join("registries.conf"), table("ghcr.io", "user:1")).unwrap();
        let paths = ConfPaths::find(None, Some(&home), &system);
        assert_eq!(paths.drop_in_dirs, [user.join("registries.conf.d")]);
        assert_eq!(mirror_of(&paths), "mirror user:1/a/b:1 ghcr.io/a/b:1");

        // The environment's file wins over both; drop-ins still apply.
        let paths = ConfPaths::find(Some(env_file.clone()), Some(&home), &system);
        assert_eq!(paths.main, env_file);
        assert_eq!(mirror_of(&paths), "mirror sysdrop:1/a/b:1 ghcr.io/a/b:1");
        fs::remove_file(system.join("registries.conf.d/50-a.conf")).unwrap();
        assert_eq!(mirror_of(&paths), "mirror env:1/a/b:1 ghcr.io/a/b:1");
        // … and must exist, where the system file need not.
        let missing = ConfPaths::find(Some(root.path().join("none.conf")), Some(&home), &system);
        assert!(RegistriesConf::load_paths(&missing).is_err());
        let none = ConfPaths::find(None, None, &root.path().join("nowhere"));
        assert_eq!(
            RegistriesConf::load_paths(&none).unwrap(),
            RegistriesConf::default()
        );

        // CONTAINERS_REGISTRIES_CONF first, then REGISTRIES_CONFIG_PATH.
        let env: BTreeMap<String, String> = [
            (
                "REGISTRIES_CONFIG_PATH".to_string(),
                "/nonexistent/b.conf".to_string(),
            ),
            (
                "CONTAINERS_REGISTRIES_CONF".to_string(),
                env_file.display().to_string(),
            ),
        ]
        .into();
        let c = RegistriesConf::load(&env, Some(&home)).unwrap();
        assert_eq!(sources(&c, "ghcr.io/a/b:1")[0], "mirror env:1/a/b:1");
    }

    #[test]
    fn only_unverifiable_answers_stop_the_fall_over() {
        let not_found = anyhow::Error::from(RegistryError::NotFound {
            registry: "r".into(),
            message: "gone".into(),
        })
        .context("base x");
        assert!(passes_over(&not_found));
        let lying = anyhow::Error::from(RegistryError::Protocol {
            registry: "r".into(),
            message: "hashes to".into(),
        });
        assert!(!passes_over(&lying));
        let exhausted = anyhow::Error::from(RegistryError::Exhausted {
            what: "fetching".into(),
            attempts: 6,
            last: Box::new(RegistryError::Local(anyhow!(
                "does not match its descriptor"
            ))),
        });
        assert!(!passes_over(&exhausted));
    }
}
