//! The package-index client: lists the files of a pinned project from PEP 691
//! JSON Simple API indexes and `--find-links` directories, picks the wheel
//! that fits the target, and fetches it, verified by sha256, into a
//! content-addressed wheel cache.
//!
//! Cache layout: `{cache_dir}/sha256/{hex}/{filename}`, with the candidate it
//! was fetched as beside it in `{cache_dir}/sha256/{hex}/.{filename}.json`
//! (so an offline build selects exactly as an online one did), and
//! `{cache_dir}/tmp/` for downloads in flight. Nothing is renamed into
//! `sha256/` before its hash has been checked.

use fs_err::{self as fs, File};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use dallinger_oci_layers::HashingWriter;
use pep440_rs::{Version, VersionSpecifiers};
use reqwest::blocking::Client;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::http::{self, redact, BodyError, DeclaredSize, Failure, Problem, RetryPolicy, Stop};
use crate::image::store::{readable_file, sha256_stream};
use crate::python::spec::{normalise_name, same_version};

/// The default index, as pip has it.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple/";

/// The media type of the PEP 691 JSON Simple API, version 1.
pub const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// The most we read of one project's index page: the largest real ones
/// (thousands of files) are a few MiB; anything past this is refused.
const MAX_INDEX_PAGE: u64 = 64 << 20;

/// Where wheels come from and where they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// The main Simple API index (default [`DEFAULT_INDEX_URL`]). Empty means
    /// no main index (pip's `--no-index`): only extras and find-links.
    pub index_url: String,
    /// Further indexes, asked after the main one; their files are appended.
    pub extra_index_urls: Vec<String>,
    /// Local directories of wheels (and sdists), pip's `--find-links`.
    pub find_links: Vec<PathBuf>,
    /// The wheel cache (see the module documentation for its layout).
    pub cache_dir: PathBuf,
    /// No network at all: list find-links and the cache, fetch from them.
    pub offline: bool,
    /// How often a request to an index is tried (`--retries`).
    pub retry: RetryPolicy,
}

impl IndexConfig {
    /// PyPI, no extras, no find-links, online.
    pub fn new(cache_dir: PathBuf) -> IndexConfig {
        IndexConfig {
            index_url: DEFAULT_INDEX_URL.to_string(),
            extra_index_urls: Vec::new(),
            find_links: Vec::new(),
            cache_dir,
            offline: false,
            retry: RetryPolicy::default(),
        }
    }

    /// The command line's values, falling back to `PIP_INDEX_URL` when
    /// `index_url` is `None` and to `PIP_EXTRA_INDEX_URL` (whitespace
    /// separated, as pip reads it) when no `--extra-index-url` was given.
    pub fn from_env_and_flags(
        index_url: Option<String>,
        extra_index_urls: Vec<String>,
        find_links: Vec<PathBuf>,
        cache_dir: PathBuf,
        offline: bool,
    ) -> IndexConfig {
        Self::from_vars_and_flags(
            |var| std::env::var(var).ok(),
            index_url,
            extra_index_urls,
            find_links,
            cache_dir,
            offline,
        )
    }

    /// [`IndexConfig::from_env_and_flags`] with the environment given as a
    /// lookup function (for tests).
    pub fn from_vars_and_flags(
        var: impl Fn(&str) -> Option<String>,
        index_url: Option<String>,
        extra_index_urls: Vec<String>,
        find_links: Vec<PathBuf>,
        cache_dir: PathBuf,
        offline: bool,
    ) -> IndexConfig {
        let index_url = index_url
            .or_else(|| {
                var("PIP_INDEX_URL")
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_INDEX_URL.to_string());
        let extra_index_urls = if extra_index_urls.is_empty() {
            var("PIP_EXTRA_INDEX_URL")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            extra_index_urls
        };
        IndexConfig {
            index_url,
            extra_index_urls,
            find_links,
            cache_dir,
            offline,
            retry: RetryPolicy::default(),
        }
    }

    /// The indexes to ask, in order: the main one, then the extras.
    pub fn indexes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.index_url.as_str())
            .chain(self.extra_index_urls.iter().map(String::as_str))
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// Where a file with this sha256 (hex) and name is kept.
    pub fn cache_path(&self, sha256_hex: &str, filename: &str) -> PathBuf {
        self.cache_dir
            .join("sha256")
            .join(sha256_hex)
            .join(filename)
    }
}

/// One file of a project, as an index, a find-links directory or the cache
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub filename: String,
    /// An absolute URL, or a local file path for find-links and the cache.
    pub url: String,
    /// Lowercase hex, when the index gives one (always for local files).
    pub sha256: Option<String>,
    pub requires_python: Option<String>,
    /// The reason, `""` if yanked without one; `None` if not yanked.
    pub yanked: Option<String>,
    pub size: Option<u64>,
    /// The index URL (credentials removed), find-links directory, or `cache`.
    pub index: String,
}

impl Candidate {
    /// True for `.whl` files.
    pub fn is_wheel(&self) -> bool {
        self.filename.ends_with(".whl")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(
        "cannot reach the package index {index}: {detail}; check --index-url or use \
         --find-links/--offline with a warm cache"
    )]
    Unreachable { index: String, detail: String },
    #[error("the package index {index} failed for {package}: {detail}")]
    BadAnswer {
        index: String,
        package: String,
        detail: String,
    },
    #[error("cannot download {filename} from {url}: {detail}")]
    Download {
        filename: String,
        url: String,
        detail: String,
    },
    #[error(
        "sha256 mismatch for {filename}: expected {expected} ({origin}), got {actual}; \
         the download was discarded"
    )]
    HashMismatch {
        filename: String,
        expected: String,
        actual: String,
        origin: String,
    },
    #[error(
        "conflicting sha256 for {filename}: --hash or the lock says {expected}, but {index} \
         says {index_hash}"
    )]
    HashConflict {
        filename: String,
        expected: String,
        index_hash: String,
        index: String,
    },
    #[error(
        "the wheel {filename} is not in the wheel cache {cache} and the network is off \
         (--offline): run once without --offline to fill the cache, or provide it with \
         --find-links DIR"
    )]
    OfflineMissing { filename: String, cache: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> IndexError {
    let what = what.into();
    move |source| IndexError::Io { what, source }
}

/// Why [`select`] found no file to install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no files are published for {package}")]
    NoFiles { package: String },
    #[error("{package} {version} is not published{where_}; versions that exist: {}", list_versions(.available))]
    UnknownVersion {
        package: String,
        version: String,
        /// Every version found, oldest first.
        available: Vec<String>,
        /// e.g. " on the package index".
        where_: String,
    },
    #[error(
        "{package} {version} is published only as an sdist: provide a wheel with \
         --find-links DIR, or build it with --build-sdists"
    )]
    SdistOnly {
        package: String,
        version: String,
        sdists: Vec<String>,
    },
    #[error("no file of {package} {version} can be installed on the target:{}", list_rejected(.rejected, .sdists))]
    NoWheel {
        package: String,
        version: String,
        /// (filename, why it was rejected), by filename.
        rejected: Vec<(String, String)>,
        sdists: Vec<String>,
    },
}

fn list_versions(versions: &[String]) -> String {
    const SHOWN: usize = 30;
    if versions.is_empty() {
        return "none".to_string();
    }
    if versions.len() <= SHOWN {
        return versions.join(", ");
    }
    format!(
        "{} older, then {}",
        versions.len() - SHOWN,
        versions[versions.len() - SHOWN..].join(", ")
    )
}

fn list_rejected(rejected: &[(String, String)], sdists: &[String]) -> String {
    let mut text = String::new();
    for (file, why) in rejected {
        text.push_str(&format!("\n  {file}: {why}"));
    }
    if !sdists.is_empty() {
        text.push_str(&format!(
            "\n  an sdist exists ({}): provide a wheel with --find-links DIR, or build it with \
             --build-sdists",
            sdists.join(", ")
        ));
    }
    text
}

/// The HTTP client for indexes and downloads (the policy's downloads
/// client: index pages are bounded per request as small ones).
pub fn http_client() -> anyhow::Result<Client> {
    Ok(http::client(http::Patience::Download)?)
}

/// The HTTP client, made when first asked for: a build that finds every
/// answer and file in the cache makes none (setting up TLS costs more
/// than the rest of such a rebuild).
#[derive(Default)]
pub struct LazyClient(std::sync::OnceLock<Client>);

impl LazyClient {
    pub fn get(&self) -> Result<Client, IndexError> {
        if let Some(client) = self.0.get() {
            return Ok(client.clone());
        }
        let made = http_client()
            .map_err(|e| IndexError::Invalid(format!("cannot set up the HTTP client: {e:#}")))?;
        Ok(self.0.get_or_init(|| made).clone())
    }
}

// ---------------------------------------------------------------------------
// File names

/// What a distribution file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileName {
    /// Normalised (PEP 503).
    name: String,
    version: String,
    kind: FileKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileKind {
    /// Build tag (number, rest), if any.
    Wheel {
        build: Option<(u64, String)>,
    },
    Sdist,
}

const SDIST_EXTENSIONS: [&str; 6] = [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".tar"];

fn parse_filename(filename: &str) -> Option<FileName> {
    if let Some(stem) = filename.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        let build = match parts.len() {
            5 => None,
            6 => {
                let tag = parts[2];
                let digits = tag.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return None;
                }
                Some((tag[..digits].parse().ok()?, tag[digits..].to_string()))
            }
            _ => return None,
        };
        if parts[0].is_empty() || parts[1].is_empty() {
            return None;
        }
        return Some(FileName {
            name: normalise_name(parts[0]),
            version: parts[1].to_string(),
            kind: FileKind::Wheel { build },
        });
    }
    let stem = SDIST_EXTENSIONS
        .iter()
        .find_map(|ext| filename.strip_suffix(ext))?;
    // Legacy sdist names may hold dashes in the name (python-dateutil-2.8.2)
    // or the version (foo-1.0-beta): take the longest tail that is a version.
    let dashes: Vec<usize> = stem.match_indices('-').map(|(i, _)| i).collect();
    let split = dashes
        .iter()
        .copied()
        .filter(|&i| i > 0 && Version::from_str(&stem[i + 1..]).is_ok())
        .min()
        .or_else(|| dashes.last().copied().filter(|&i| i > 0))?;
    let (name, version) = (&stem[..split], &stem[split + 1..]);
    if version.is_empty() {
        return None;
    }
    Some(FileName {
        name: normalise_name(name),
        version: version.to_string(),
        kind: FileKind::Sdist,
    })
}

/// Whether a file name's version is `version`: the same PEP 440 version,
/// or, for a legacy name's version that is not PEP 440, the same once
/// normalised as names are.
fn is_file_version(file_version: &str, version: &str) -> bool {
    same_version(file_version, version)
        .unwrap_or_else(|| normalise_name(file_version) == normalise_name(version))
}

// ---------------------------------------------------------------------------
// Selection

/// Picks the wheel of `version` to install: a `.whl` of exactly that
/// version whose tags the target supports (`tag_priority(filename)`, lower is
/// better), whose `Requires-Python` admits `python`, and that is not yanked
/// unless `exact_pin` (PEP 592: an `==` pin may use a yanked file; a
/// non-yanked one is still preferred, so check `yanked` on the result to
/// warn). Among those: non-yanked first, then the best tag, then the highest
/// build tag, then the filename, so the choice is deterministic.
///
/// A `Requires-Python` that does not parse is ignored, as pip does.
pub fn select<'a>(
    candidates: &'a [Candidate],
    version: &str,
    tag_priority: &dyn Fn(&str) -> Option<usize>,
    python: (u32, u32, u32),
    exact_pin: bool,
) -> Result<&'a Candidate, SelectError> {
    let parsed: Vec<(&Candidate, Option<FileName>)> = candidates
        .iter()
        .map(|c| (c, parse_filename(&c.filename)))
        .collect();
    let package = parsed
        .iter()
        .find_map(|(_, f)| f.as_ref().map(|f| f.name.clone()))
        .unwrap_or_else(|| "the package".to_string());
    if candidates.is_empty() {
        return Err(SelectError::NoFiles { package });
    }
    let of_version: Vec<(&Candidate, &FileName)> = parsed
        .iter()
        .filter_map(|(c, f)| f.as_ref().map(|f| (*c, f)))
        .filter(|(_, f)| is_file_version(&f.version, version))
        .collect();
    if of_version.is_empty() {
        return Err(unknown_version(&parsed, package, version));
    }
    let sdists: Vec<String> = of_version
        .iter()
        .filter(|(_, f)| f.kind == FileKind::Sdist)
        .map(|(c, _)| c.filename.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let wheels: Vec<(&Candidate, &FileName)> = of_version
        .iter()
        .copied()
        .filter(|(c, f)| c.is_wheel() && matches!(f.kind, FileKind::Wheel { .. }))
        .collect();
    if wheels.is_empty() {
        return Err(SelectError::SdistOnly {
            package,
            version: version.to_string(),
            sdists,
        });
    }
    let python_version = Version::new([python.0 as u64, python.1 as u64, python.2 as u64]);
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (candidate, name) in wheels {
        let mut why = Vec::new();
        let priority = tag_priority(&candidate.filename);
        if priority.is_none() {
            why.push("its tags are not supported by the target".to_string());
        }
        if let Some(spec) = candidate.requires_python.as_deref() {
            if let Ok(specifiers) = VersionSpecifiers::from_str(spec) {
                if !specifiers.contains(&python_version) {
                    why.push(format!(
                        "it requires Python {spec}, the target has {}.{}.{}",
                        python.0, python.1, python.2
                    ));
                }
            }
        }
        if let Some(reason) = candidate.yanked.as_deref() {
            if !exact_pin {
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                why.push(format!(
                    "it is yanked{reason}, and only an exact == pin may install a yanked file"
                ));
            }
        }
        match priority {
            Some(priority) if why.is_empty() => {
                let build = match &name.kind {
                    FileKind::Wheel { build } => build.clone(),
                    FileKind::Sdist => None,
                };
                accepted.push((candidate, priority, build));
            }
            _ => rejected.push((candidate.filename.clone(), why.join("; "))),
        }
    }
    accepted.sort_by(|a, b| {
        (a.0.yanked.is_some(), a.1)
            .cmp(&(b.0.yanked.is_some(), b.1))
            .then_with(|| b.2.cmp(&a.2))
            .then_with(|| a.0.filename.cmp(&b.0.filename))
    });
    if let Some((chosen, _, _)) = accepted.first() {
        return Ok(chosen);
    }
    rejected.sort();
    Err(SelectError::NoWheel {
        package,
        version: version.to_string(),
        rejected,
        sdists,
    })
}

/// The sdist of `version` to build when no wheel fits: not yanked before
/// yanked, `.tar.gz` (PEP 625's format) before older archive kinds, then by
/// name, so the choice is deterministic.
pub fn select_sdist<'a>(candidates: &'a [Candidate], version: &str) -> Option<&'a Candidate> {
    let rank = |c: &Candidate| {
        let ext = SDIST_EXTENSIONS
            .iter()
            .position(|e| c.filename.ends_with(e))
            .unwrap_or(usize::MAX);
        (c.yanked.is_some(), ext, c.filename.clone())
    };
    candidates
        .iter()
        .filter(|c| {
            parse_filename(&c.filename)
                .is_some_and(|f| f.kind == FileKind::Sdist && is_file_version(&f.version, version))
        })
        .min_by_key(|c| rank(c))
}

fn unknown_version(
    parsed: &[(&Candidate, Option<FileName>)],
    package: String,
    version: &str,
) -> SelectError {
    let mut versions: Vec<(Option<Version>, String)> = Vec::new();
    for (_, name) in parsed.iter() {
        let Some(name) = name else { continue };
        let v = Version::from_str(&name.version).ok();
        if !versions
            .iter()
            .any(|(_, s)| same_version(s, &name.version).unwrap_or(*s == name.version))
        {
            versions.push((v, name.version.clone()));
        }
    }
    versions.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let sources: BTreeSet<&str> = parsed.iter().map(|(c, _)| c.index.as_str()).collect();
    let where_ = match sources.into_iter().collect::<Vec<_>>().as_slice() {
        ["cache"] => " in the wheel cache".to_string(),
        [only] => format!(" on {only}"),
        several => format!(" on any of {}", several.join(", ")),
    };
    SelectError::UnknownVersion {
        package,
        version: version.to_string(),
        available: versions.into_iter().map(|(_, s)| s).collect(),
        where_,
    }
}

// ---------------------------------------------------------------------------
// Listing

#[derive(Deserialize)]
struct SimplePage {
    #[serde(default)]
    meta: Option<SimpleMeta>,
    #[serde(default)]
    files: Vec<SimpleFile>,
}

#[derive(Deserialize)]
struct SimpleMeta {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

#[derive(Deserialize)]
struct SimpleFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    #[serde(rename = "requires-python", default)]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: Option<Yanked>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Yanked {
    Flag(bool),
    Reason(String),
}

/// Every file of project `name`: from each index in order (main, then
/// extras), then from each find-links directory. Offline, from find-links
/// and the wheel cache only, without any network access.
pub fn list_files(
    name: &str,
    config: &IndexConfig,
    client: &Client,
) -> Result<Vec<Candidate>, IndexError> {
    let normalised = normalise_name(name);
    let mut out = Vec::new();
    if config.offline {
        out.extend(list_cache(&normalised, config)?);
    } else {
        for index in config.indexes() {
            out.extend(list_index(index, &normalised, client, &config.retry)?);
        }
    }
    for dir in &config.find_links {
        out.extend(list_find_links(dir, &normalised)?);
    }
    Ok(out)
}

pub(super) fn list_index(
    index: &str,
    name: &str,
    client: &Client,
    retry: &RetryPolicy,
) -> Result<Vec<Candidate>, IndexError> {
    let shown = redact(index);
    let bad = |detail: String| IndexError::BadAnswer {
        index: shown.clone(),
        package: name.to_string(),
        detail,
    };
    let base = Url::parse(index.trim()).map_err(|e| {
        IndexError::Invalid(format!(
            "the package index URL {shown} is not a URL ({e}): check --index-url"
        ))
    })?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(IndexError::Invalid(format!(
            "the package index URL {shown} is not http(s): use --find-links for local directories"
        )));
    }
    let page_url = format!("{}/{}/", index.trim().trim_end_matches('/'), name);
    let problem = |problem: Problem| match problem {
        Problem::Transport { kind, detail } if kind.unreachable() => IndexError::Unreachable {
            index: shown.clone(),
            detail: format!("{detail} (looking up {name})"),
        },
        problem => bad(problem.to_string()),
    };
    let fetched = retry.run("", || {
        let request = client
            .get(&page_url)
            .header(reqwest::header::ACCEPT, SIMPLE_JSON);
        let response = http::send(http::small(request)).map_err(|f| f.map(problem))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Failure::fatal(bad(format!("HTTP {status}"))));
        }
        let final_url = response.url().clone();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !content_type.contains("json") {
            return Err(Failure::fatal(bad(format!(
                "it answered {} instead of the JSON Simple API ({SIMPLE_JSON}, PEP 691), which \
                 is the only one supported",
                if content_type.is_empty() {
                    "without a content type"
                } else {
                    content_type.as_str()
                }
            ))));
        }
        match http::read_bounded(response, MAX_INDEX_PAGE, "the answer") {
            Ok(body) => Ok(Some((final_url, body))),
            Err(e @ BodyError::TooLarge { .. }) => Err(Failure::fatal(bad(e.to_string()))),
            Err(e @ BodyError::Broken { .. }) => Err(Failure::transient(bad(e.to_string()))),
        }
    });
    let Some((final_url, body)) = fetched.map_err(Stop::into_error)? else {
        return Ok(Vec::new());
    };
    let page: SimplePage =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if let Some(version) = page.meta.and_then(|m| m.api_version) {
        if version.split('.').next() != Some("1") {
            return Err(bad(format!(
                "it speaks Simple API version {version}; only 1.x is supported"
            )));
        }
    }
    let mut out = Vec::with_capacity(page.files.len());
    for file in page.files {
        let mut url = final_url
            .join(&file.url)
            .map_err(|e| bad(format!("bad URL {:?} for {}: {e}", file.url, file.filename)))?;
        let fragment_hash = url.fragment().and_then(|f| {
            f.strip_prefix("sha256=")
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| is_hex64(h))
        });
        url.set_fragment(None);
        let sha256 = match file.hashes.get("sha256") {
            Some(h) if is_hex64(&h.to_ascii_lowercase()) => Some(h.to_ascii_lowercase()),
            Some(h) => return Err(bad(format!("malformed sha256 {h:?} for {}", file.filename))),
            None => fragment_hash,
        };
        // As pip: `true` is yanked without a reason; `false`, `""` are not yanked.
        let yanked = match file.yanked {
            Some(Yanked::Flag(true)) => Some(String::new()),
            Some(Yanked::Reason(reason)) if !reason.is_empty() => Some(reason),
            _ => None,
        };
        out.push(Candidate {
            filename: file.filename,
            url: url.to_string(),
            sha256,
            requires_python: file.requires_python.filter(|s| !s.trim().is_empty()),
            yanked,
            size: file.size,
            index: shown.clone(),
        });
    }
    Ok(out)
}

pub(super) fn list_find_links(dir: &Path, name: &str) -> Result<Vec<Candidate>, IndexError> {
    let names = find_links_names(dir)?.remove(name).unwrap_or_default();
    let mut out = Vec::new();
    for filename in names {
        let (hex, size) = hash_file(&dir.join(&filename))?;
        out.push(find_links_candidate(dir, filename, hex, size));
    }
    Ok(out)
}

/// The wheel and sdist file names of a `--find-links` directory, by
/// normalised project name, each list sorted.
pub(super) fn find_links_names(dir: &Path) -> Result<BTreeMap<String, Vec<String>>, IndexError> {
    let entries = fs::read_dir(dir).map_err(io_error(format!(
        "cannot read the --find-links directory {}",
        dir.display()
    )))?;
    let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(io_error(format!("cannot read {}", dir.display())))?;
        let Some(filename) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(project) = parse_filename(&filename).map(|f| f.name) else {
            continue;
        };
        if entry.path().is_file() && safe_filename(&filename) {
            by_project.entry(project).or_default().push(filename);
        }
    }
    for names in by_project.values_mut() {
        names.sort();
    }
    Ok(by_project)
}

/// The candidate `filename` of the `--find-links` directory `dir` is.
pub(super) fn find_links_candidate(
    dir: &Path,
    filename: String,
    sha256: String,
    size: u64,
) -> Candidate {
    Candidate {
        url: dir.join(&filename).display().to_string(),
        filename,
        sha256: Some(sha256),
        requires_python: None,
        yanked: None,
        size: Some(size),
        index: dir.display().to_string(),
    }
}

/// The cached files of project `name`, with what the index said of them
/// when they were fetched.
pub(super) fn list_cache(name: &str, config: &IndexConfig) -> Result<Vec<Candidate>, IndexError> {
    Ok(scan_cache(config, Some(name))
        .remove(name)
        .unwrap_or_default())
}

/// The wheel cache's files, by project (normalised name), in one pass over
/// its directories; only `only`'s when given. A resolve lists the cache
/// once this way rather than once per pin (each listing reads every
/// directory of the cache: quadratic in the number of cached files).
pub(super) fn scan_cache(
    config: &IndexConfig,
    only: Option<&str>,
) -> BTreeMap<String, Vec<Candidate>> {
    let mut out: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let root = config.cache_dir.join("sha256");
    let Ok(dirs) = fs::read_dir(&root) else {
        return out;
    };
    for dir in dirs.flatten() {
        let Some(hex) = dir.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_hex64(&hex) {
            continue;
        }
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Some(filename) = file.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if filename.starts_with('.') {
                continue;
            }
            let Some(project) = parse_filename(&filename).map(|f| f.name) else {
                continue;
            };
            if only.is_some_and(|name| name != project) {
                continue;
            }
            let Ok(meta) = file.metadata() else { continue };
            let path = file.path();
            let recorded: Option<Candidate> = fs::read(dir.path().join(sidecar_name(&filename)))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let mut candidate = recorded.unwrap_or_else(|| Candidate {
                filename: filename.clone(),
                url: path.display().to_string(),
                sha256: None,
                requires_python: None,
                yanked: None,
                size: None,
                index: "cache".to_string(),
            });
            candidate.filename = filename;
            candidate.sha256 = Some(hex.clone());
            candidate.size = Some(meta.len());
            out.entry(project).or_default().push(candidate);
        }
    }
    for files in out.values_mut() {
        files.sort_by(|a, b| {
            (&a.filename, &a.sha256, &a.index).cmp(&(&b.filename, &b.sha256, &b.index))
        });
    }
    out
}

/// The files of `files` whose names give `version` (what an answer about
/// an exact pin keeps).
pub(super) fn of_version(files: &[Candidate], version: &str) -> Vec<Candidate> {
    files
        .iter()
        .filter(|c| {
            parse_filename(&c.filename).is_some_and(|f| is_file_version(&f.version, version))
        })
        .cloned()
        .collect()
}

fn sidecar_name(filename: &str) -> String {
    format!(".{filename}.json")
}

// ---------------------------------------------------------------------------
// Fetching

/// Makes `candidate` available in the wheel cache, verified, and returns its
/// path there.
///
/// The file must hash to `expected_sha256` (from `--hash` or the lock; hex,
/// `sha256:` prefix allowed) and to the index's hash, when given. A file
/// already at its content-addressed path (with the known size) is used as
/// it is, without network. Local candidates (find-links) are copied in.
/// Downloads stream to a temporary file while hashing (never past the size
/// the index lists), and are tried again as `config.retry` says.
pub fn fetch(
    candidate: &Candidate,
    expected_sha256: Option<&str>,
    config: &IndexConfig,
    client: &Client,
) -> Result<PathBuf, IndexError> {
    fetch_via(candidate, expected_sha256, config, &|| Ok(client.clone()))
}

/// [`fetch`], with the client made only if a download is needed.
fn fetch_via(
    candidate: &Candidate,
    expected_sha256: Option<&str>,
    config: &IndexConfig,
    client: &dyn Fn() -> Result<Client, IndexError>,
) -> Result<PathBuf, IndexError> {
    let filename = candidate.filename.as_str();
    if !safe_filename(filename) {
        return Err(IndexError::Invalid(format!(
            "refusing the file name {filename:?} from {}: not a plain file name",
            candidate.index
        )));
    }
    let expected = expected_sha256
        .map(|h| parse_hex(h, &format!("the expected sha256 of {filename}")))
        .transpose()?;
    let index_hash = candidate
        .sha256
        .as_deref()
        .map(|h| {
            parse_hex(
                h,
                &format!("the sha256 {} gives for {filename}", candidate.index),
            )
        })
        .transpose()?;
    if let (Some(e), Some(i)) = (&expected, &index_hash) {
        if e != i {
            return Err(IndexError::HashConflict {
                filename: filename.to_string(),
                expected: e.clone(),
                index_hash: i.clone(),
                index: candidate.index.clone(),
            });
        }
    }
    if let Some(hex) = expected.as_ref().or(index_hash.as_ref()) {
        let path = config.cache_path(hex, filename);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.is_file() && candidate.size.is_none_or(|s| s == meta.len()) {
                return Ok(path);
            }
        }
    }
    let checks = Checks {
        filename,
        expected: expected.as_deref(),
        index_hash: index_hash.as_deref(),
        index: &candidate.index,
        size: candidate.size,
    };
    if let Some(local) = local_path(&candidate.url) {
        let mut input = File::open(&local).map_err(io_error(format!(
            "cannot read {} (from {})",
            local.display(),
            candidate.index
        )))?;
        let (tmp, actual) = store_temp(config, &mut input).map_err(|e| match e {
            CopyError::Write(e) => e,
            CopyError::Read(e) => io_error(format!("cannot read {}", local.display()))(e),
        })?;
        return commit(tmp, &actual, &checks, candidate, config);
    }
    if config.offline {
        return Err(IndexError::OfflineMissing {
            filename: filename.to_string(),
            cache: config.cache_dir.display().to_string(),
        });
    }
    download(candidate, &checks, config, &client()?)
}

/// Fetches several candidates, `parallel` at a time. Results come in input
/// order; on failure the error of the first failed item (in input order) is
/// returned, and items not yet started are skipped.
pub fn fetch_all(
    items: &[(Candidate, Option<String>)],
    config: &IndexConfig,
    client: &Client,
    parallel: usize,
) -> Result<Vec<PathBuf>, IndexError> {
    fetch_all_via(items, config, &|| Ok(client.clone()), parallel)
}

/// [`fetch_all`] with a client made on first use (see [`LazyClient`]).
pub fn fetch_all_lazy(
    items: &[(Candidate, Option<String>)],
    config: &IndexConfig,
    client: &LazyClient,
    parallel: usize,
) -> Result<Vec<PathBuf>, IndexError> {
    fetch_all_via(items, config, &|| client.get(), parallel)
}

fn fetch_all_via(
    items: &[(Candidate, Option<String>)],
    config: &IndexConfig,
    client: &(dyn Fn() -> Result<Client, IndexError> + Sync),
    parallel: usize,
) -> Result<Vec<PathBuf>, IndexError> {
    let results: Vec<Mutex<Option<Result<PathBuf, IndexError>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = parallel.clamp(1, items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((candidate, expected)) = items.get(i) else {
                    break;
                };
                let result = fetch_via(candidate, expected.as_deref(), config, client);
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            });
        }
    });
    let mut paths = Vec::with_capacity(items.len());
    let mut first_error = None;
    for slot in results {
        match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(path)) => paths.push(path),
            Some(Err(e)) => {
                first_error = Some(e);
                break;
            }
            None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if paths.len() == items.len() => Ok(paths),
        None => Err(IndexError::Invalid(
            "a download worker stopped without a result".to_string(),
        )),
    }
}

struct Checks<'a> {
    filename: &'a str,
    expected: Option<&'a str>,
    index_hash: Option<&'a str>,
    index: &'a str,
    size: Option<u64>,
}

/// What was written: its sha256 hex and size.
struct Written {
    hex: String,
    size: u64,
}

enum CopyError {
    Read(io::Error),
    Write(IndexError),
}

/// Copies `input` into a new temporary file of the cache, hashing it.
fn store_temp(
    config: &IndexConfig,
    input: &mut dyn Read,
) -> Result<(tempfile::NamedTempFile, Written), CopyError> {
    let tmp_dir = config.cache_dir.join("tmp");
    fs::create_dir_all(&tmp_dir)
        .map_err(io_error(format!(
            "cannot create the wheel cache {}",
            tmp_dir.display()
        )))
        .map_err(CopyError::Write)?;
    let tmp = tempfile::Builder::new()
        .prefix("wheel-")
        .permissions(readable_file())
        .tempfile_in(&tmp_dir)
        .map_err(io_error(format!(
            "cannot create a temporary file in {}",
            tmp_dir.display()
        )))
        .map_err(CopyError::Write)?;
    let write_error = |e| {
        CopyError::Write(io_error(format!(
            "cannot write into the wheel cache {}",
            tmp_dir.display()
        ))(e))
    };
    let mut writer = HashingWriter::new(BufWriter::with_capacity(
        1 << 16,
        tmp.as_file().try_clone().map_err(write_error)?,
    ));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(write_error)?;
    }
    let (digest, size, inner) = writer.finish();
    let file = inner
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    file.sync_all().ok();
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or(&digest)
        .to_string();
    Ok((tmp, Written { hex, size }))
}

/// Checks a written temporary file and moves it to its content address.
/// On a mismatch the temporary file is dropped, which deletes it.
fn commit(
    tmp: tempfile::NamedTempFile,
    actual: &Written,
    checks: &Checks,
    candidate: &Candidate,
    config: &IndexConfig,
) -> Result<PathBuf, IndexError> {
    let filename = checks.filename;
    if let Some(expected) = checks.expected {
        if expected != actual.hex {
            return Err(IndexError::HashMismatch {
                filename: filename.to_string(),
                expected: expected.to_string(),
                actual: actual.hex.clone(),
                origin: "from --hash or the lock".to_string(),
            });
        }
    }
    if let Some(expected) = checks.index_hash {
        if expected != actual.hex {
            return Err(IndexError::HashMismatch {
                filename: filename.to_string(),
                expected: expected.to_string(),
                actual: actual.hex.clone(),
                origin: format!("as listed by {}", checks.index),
            });
        }
    }
    if let Some(size) = checks.size {
        if size != actual.size {
            return Err(IndexError::Invalid(format!(
                "{filename} from {} has {} bytes, but the index lists {size}; the download was \
                 discarded",
                checks.index, actual.size
            )));
        }
    }
    let dest = config.cache_path(&actual.hex, filename);
    let dir = dest.parent().unwrap_or(&config.cache_dir).to_path_buf();
    fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
    tmp.persist(&dest).map_err(|e| IndexError::Io {
        what: format!("cannot move {filename} into {}", dest.display()),
        source: e.error,
    })?;
    remember(candidate, actual, &dir, config);
    Ok(dest)
}

/// Best effort: records what the index said of a cached file, for offline
/// listing. A missing record only loses `Requires-Python` and `yanked`.
fn remember(candidate: &Candidate, actual: &Written, dir: &Path, config: &IndexConfig) {
    let mut record = candidate.clone();
    record.sha256 = Some(actual.hex.clone());
    record.size = Some(actual.size);
    let Ok(bytes) = serde_json::to_vec_pretty(&record) else {
        return;
    };
    let Ok(mut tmp) = tempfile::Builder::new()
        .prefix("meta-")
        .permissions(readable_file())
        .tempfile_in(config.cache_dir.join("tmp"))
    else {
        return;
    };
    if tmp.write_all(&bytes).is_ok() {
        let _ = tmp.persist(dir.join(sidecar_name(&candidate.filename)));
    }
}

fn download(
    candidate: &Candidate,
    checks: &Checks,
    config: &IndexConfig,
    client: &Client,
) -> Result<PathBuf, IndexError> {
    let filename = checks.filename;
    let failed = |detail: String| IndexError::Download {
        filename: filename.to_string(),
        url: redact(&candidate.url),
        detail,
    };
    let credentials = credentials_for(&candidate.url, config);
    let attempt = || {
        let mut request = client.get(&candidate.url);
        if let Some((user, password)) = &credentials {
            request = request.basic_auth(user, password.as_ref());
        }
        let response = http::send(request).map_err(|f| {
            f.map(|problem| match problem {
                Problem::Transport { kind, detail } if kind.unreachable() => failed(format!(
                    "{detail}; check the network, or use --find-links/--offline with a warm cache"
                )),
                problem => failed(problem.to_string()),
            })
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::fatal(failed(format!("HTTP {status}"))));
        }
        let mut body = DeclaredSize::new(response, checks.size.unwrap_or(u64::MAX));
        match store_temp(config, &mut body) {
            Ok((tmp, written)) => {
                commit(tmp, &written, checks, candidate, config).map_err(Failure::fatal)
            }
            Err(CopyError::Write(e)) => Err(Failure::fatal(e)),
            Err(CopyError::Read(_)) if body.overran() => {
                Err(Failure::fatal(IndexError::Invalid(format!(
                    "{filename} from {} is longer than the {} bytes the index lists; the \
                     download was discarded",
                    checks.index,
                    checks.size.unwrap_or_default()
                ))))
            }
            Err(CopyError::Read(e)) => Err(Failure::transient(failed(format!(
                "the transfer broke off: {e}"
            )))),
        }
    };
    config.retry.run("", attempt).map_err(Stop::into_error)
}

// ---------------------------------------------------------------------------
// Helpers

/// The credentials of the configured index on the same host and port as
/// `url`, when `url` carries none: files of a private index are usually
/// served by the same host, and candidates never hold credentials.
fn credentials_for(url: &str, config: &IndexConfig) -> Option<(String, Option<String>)> {
    let target = Url::parse(url).ok()?;
    if !target.username().is_empty() {
        return None;
    }
    config.indexes().find_map(|index| {
        let index = Url::parse(index).ok()?;
        let same = index.host_str() == target.host_str()
            && index.port_or_known_default() == target.port_or_known_default();
        (same && !index.username().is_empty()).then(|| {
            (
                percent_decode(index.username()),
                index.password().map(percent_decode),
            )
        })
    })
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn local_path(url: &str) -> Option<PathBuf> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return None;
    }
    if let Some(rest) = url.strip_prefix("file://") {
        return Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .or_else(|| Some(PathBuf::from(rest)));
    }
    Some(PathBuf::from(url))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_hex(hash: &str, what: &str) -> Result<String, IndexError> {
    let trimmed = hash.trim();
    let hex = trimmed
        .strip_prefix("sha256:")
        .or_else(|| trimmed.strip_prefix("sha256="))
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if is_hex64(&hex) {
        Ok(hex)
    } else {
        Err(IndexError::Invalid(format!(
            "{what} is {hash:?}, not a sha256 (64 hex digits)"
        )))
    }
}

/// A name that is safe to use as one path component of the cache.
fn safe_filename(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']) && name != ".."
}

/// sha256 (hex) and size of a local file, streamed.
pub(super) fn hash_file(path: &Path) -> Result<(String, u64), IndexError> {
    let (sum, size) = File::open(path)
        .and_then(sha256_stream)
        .map_err(io_error(format!("cannot read {}", path.display())))?;
    Ok((hex::encode(sum), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(filename: &str) -> Candidate {
        Candidate {
            filename: filename.to_string(),
            url: format!("https://files.example/{filename}"),
            sha256: None,
            requires_python: None,
            yanked: None,
            size: None,
            index: "https://pypi.org/simple/".to_string(),
        }
    }

    /// A target that supports cp311-manylinux_2_17 (best), abi3, and py3-none-any.
    fn tags(filename: &str) -> Option<usize> {
        if filename.contains("-cp311-cp311-manylinux_2_17_x86_64") {
            Some(0)
        } else if filename.contains("-abi3-manylinux_2_17_x86_64") {
            Some(5)
        } else if filename.ends_with("-py3-none-any.whl") || filename.ends_with("py3-none-any.whl")
        {
            Some(20)
        } else {
            None
        }
    }

    const PY: (u32, u32, u32) = (3, 11, 2);

    #[test]
    fn picks_the_best_tag() {
        let files = vec![
            file("pkg-1.0-py3-none-any.whl"),
            file("pkg-1.0-cp311-abi3-manylinux_2_17_x86_64.whl"),
            file("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
            file("pkg-1.0-cp311-cp311-manylinux_2_34_x86_64.whl"),
            file("pkg-1.0.tar.gz"),
            file("pkg-1.1-cp311-cp311-manylinux_2_17_x86_64.whl"),
        ];
        let chosen = select(&files, "1.0", &tags, PY, true).unwrap();
        assert_eq!(
            chosen.filename,
            "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
        );
        let chosen = select(&files, "1.0.0", &tags, PY, true).unwrap();
        assert_eq!(
            chosen.filename, "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
            "1.0.0 == 1.0"
        );
    }

    #[test]
    fn ties_are_broken_by_build_tag_then_filename() {
        let prio = |_: &str| Some(1);
        let files = vec![
            file("b_pkg-2.0-py3-none-any.whl"),
            file("B_Pkg-2.0-py3-none-any.whl"),
        ];
        let chosen = select(&files, "2.0", &prio, PY, true).unwrap();
        assert_eq!(chosen.filename, "B_Pkg-2.0-py3-none-any.whl");
        let reversed: Vec<_> = files.iter().rev().cloned().collect();
        assert_eq!(
            select(&reversed, "2.0", &prio, PY, true).unwrap().filename,
            "B_Pkg-2.0-py3-none-any.whl"
        );
        let files = vec![
            file("pkg-2.0-py3-none-any.whl"),
            file("pkg-2.0-2-py3-none-any.whl"),
            file("pkg-2.0-10-py3-none-any.whl"),
        ];
        assert_eq!(
            select(&files, "2.0", &prio, PY, true).unwrap().filename,
            "pkg-2.0-10-py3-none-any.whl"
        );
    }

    #[test]
    fn yanked_files_need_an_exact_pin_and_lose_to_others() {
        let mut yanked = file("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl");
        yanked.yanked = Some("broken build".to_string());
        let plain = file("pkg-1.0-py3-none-any.whl");
        let both = vec![yanked.clone(), plain.clone()];
        assert_eq!(
            select(&both, "1.0", &tags, PY, true).unwrap().filename,
            plain.filename,
            "a non-yanked file wins even with a worse tag"
        );
        assert_eq!(
            select(&both, "1.0", &tags, PY, false).unwrap().filename,
            plain.filename
        );
        let only = vec![yanked.clone()];
        let chosen = select(&only, "1.0", &tags, PY, true).unwrap();
        assert_eq!(chosen.yanked.as_deref(), Some("broken build"));
        let err = select(&only, "1.0", &tags, PY, false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pkg 1.0"), "{text}");
        assert!(text.contains("yanked (broken build)"), "{text}");
        assert!(text.contains("exact == pin"), "{text}");
        let mut no_reason = yanked;
        no_reason.yanked = Some(String::new());
        let text = select(&[no_reason], "1.0", &tags, PY, false)
            .unwrap_err()
            .to_string();
        assert!(text.contains("it is yanked, and"), "{text}");
    }

    #[test]
    fn requires_python_is_checked_with_the_full_version() {
        let mut new = file("pkg-1.0-py3-none-any.whl");
        new.requires_python = Some(">=3.11.3".to_string());
        let err = select(std::slice::from_ref(&new), "1.0", &tags, PY, true).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "pkg-1.0-py3-none-any.whl: it requires Python >=3.11.3, the target has 3.11.2"
            ),
            "{text}"
        );
        assert!(select(std::slice::from_ref(&new), "1.0", &tags, (3, 11, 3), true).is_ok());
        let mut other = file("pkg-1.0-cp311-abi3-manylinux_2_17_x86_64.whl");
        other.requires_python = Some(">=2.7, !=3.0.*, !=3.1.*".to_string());
        let both = [new, other.clone()];
        let chosen = select(&both, "1.0", &tags, PY, true).unwrap();
        assert_eq!(chosen.filename, other.filename);
        // Unparseable Requires-Python is ignored, as pip does.
        let mut junk = file("pkg-1.0-py3-none-any.whl");
        junk.requires_python = Some(">=3.6.*junk".to_string());
        assert!(select(&[junk], "1.0", &tags, PY, true).is_ok());
    }

    #[test]
    fn every_rejection_is_explained() {
        let mut old_python = file("pkg-1.0-py3-none-any.whl");
        old_python.requires_python = Some("<3".to_string());
        let files = vec![
            file("pkg-1.0-cp311-cp311-manylinux_2_34_x86_64.whl"),
            file("pkg-1.0-cp311-cp311-win_amd64.whl"),
            old_python,
            file("pkg-1.0.tar.gz"),
        ];
        let err = select(&files, "1.0", &tags, PY, true).unwrap_err();
        let SelectError::NoWheel {
            ref rejected,
            ref sdists,
            ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(rejected.len(), 3);
        assert_eq!(sdists, &["pkg-1.0.tar.gz"]);
        let text = err.to_string();
        assert!(
            text.starts_with("no file of pkg 1.0 can be installed on the target:"),
            "{text}"
        );
        assert!(
            text.contains(
                "pkg-1.0-cp311-cp311-manylinux_2_34_x86_64.whl: its tags are not supported"
            ),
            "{text}"
        );
        assert!(text.contains("requires Python <3"), "{text}");
        assert!(text.contains("--build-sdists"), "{text}");
    }

    #[test]
    fn sdist_only_says_what_to_do() {
        let files = vec![
            file("psycopg2-2.9.9.tar.gz"),
            file("psycopg2-2.9.8-cp311-cp311-win_amd64.whl"),
        ];
        let err = select(&files, "2.9.9", &tags, PY, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "psycopg2 2.9.9 is published only as an sdist: provide a wheel with --find-links \
             DIR, or build it with --build-sdists"
        );
    }

    #[test]
    fn unknown_version_lists_the_versions_that_exist() {
        let files = vec![
            file("six-1.16.0-py2.py3-none-any.whl"),
            file("six-1.16.0.tar.gz"),
            file("six-1.9.0-py2.py3-none-any.whl"),
            file("six-1.17.0-py2.py3-none-any.whl"),
        ];
        let err = select(&files, "1.18.0", &tags, PY, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "six 1.18.0 is not published on https://pypi.org/simple/; versions that exist: \
             1.9.0, 1.16.0, 1.17.0"
        );
        let err = select(&[], "1.0", &tags, PY, true).unwrap_err();
        assert!(matches!(err, SelectError::NoFiles { .. }));
    }

    #[test]
    fn file_names() {
        let wheel = parse_filename("Foo.Bar-1.0-py3-none-any.whl").unwrap();
        assert_eq!(wheel.name, "foo-bar");
        assert_eq!(wheel.version, "1.0");
        assert_eq!(wheel.kind, FileKind::Wheel { build: None });
        let built = parse_filename("foo-1.0-3a-py3-none-any.whl").unwrap();
        assert_eq!(
            built.kind,
            FileKind::Wheel {
                build: Some((3, "a".to_string()))
            }
        );
        let sdist = parse_filename("python-dateutil-2.8.2.tar.gz").unwrap();
        assert_eq!(
            (sdist.name.as_str(), sdist.version.as_str()),
            ("python-dateutil", "2.8.2")
        );
        let legacy = parse_filename("foo-1.0-beta.zip").unwrap();
        assert_eq!(
            (legacy.name.as_str(), legacy.version.as_str()),
            ("foo", "1.0-beta")
        );
        assert!(parse_filename("foo-1.0.exe").is_none());
        assert!(parse_filename("foo-1.0-py3-none.whl").is_none());
    }

    #[test]
    fn config_falls_back_to_pip_variables() {
        let vars = |v: &str| match v {
            "PIP_INDEX_URL" => Some("https://mirror.example/simple".to_string()),
            "PIP_EXTRA_INDEX_URL" => Some(" https://a.example/simple  https://b.example/ ".into()),
            _ => None,
        };
        let c = IndexConfig::from_vars_and_flags(vars, None, vec![], vec![], "/c".into(), false);
        assert_eq!(c.index_url, "https://mirror.example/simple");
        assert_eq!(
            c.extra_index_urls,
            ["https://a.example/simple", "https://b.example/"]
        );
        let c = IndexConfig::from_vars_and_flags(
            vars,
            Some("https://flag.example/simple/".into()),
            vec!["https://x.example/".into()],
            vec![],
            "/c".into(),
            false,
        );
        assert_eq!(c.index_url, "https://flag.example/simple/");
        assert_eq!(c.extra_index_urls, ["https://x.example/"]);
        let c = IndexConfig::from_vars_and_flags(|_| None, None, vec![], vec![], "/c".into(), true);
        assert_eq!(c.index_url, DEFAULT_INDEX_URL);
        assert!(c.extra_index_urls.is_empty());
    }

    #[test]
    fn hashes_and_names_are_checked() {
        let hex = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";
        assert_eq!(
            parse_hex(&format!("sha256:{}", hex.to_uppercase()), "x").unwrap(),
            hex
        );
        assert!(parse_hex("md5:abc", "x").is_err());
        assert!(!safe_filename("../x.whl"));
        assert!(!safe_filename(".hidden.whl"));
        assert!(safe_filename("six-1.16.0-py2.py3-none-any.whl"));
        assert_eq!(
            redact("https://user:secret@host.example/simple/"),
            "https://host.example/simple/"
        );
    }
}
