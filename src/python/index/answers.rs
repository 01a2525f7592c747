//! What the package indexes said about an exact pin, remembered, so a
//! rebuild after an edit asks them nothing.
//!
//! An entry holds the files of one project at one version, as the
//! configured indexes listed them (in order), keyed by the project, the
//! version and the index URLs (without their credentials, which are never
//! stored). It does not depend on the target: choosing the wheel for the
//! target's tags happens after, on every build, so another base reuses the
//! answer. `--find-links` directories are listed afresh on every build (their
//! files' hashes remembered by each file's identity, see `local`).
//!
//! An answer is trusted for [`MAX_AGE`], and only while the file it leads
//! to is in the wheel cache (otherwise the build downloads anyway, and asks
//! first); `--refresh` asks again now. An exact pin's file list can grow
//! (a project uploads a wheel for a new Python to an existing version): a
//! build that finds no file for its target in a remembered answer asks the
//! index again before it fails. Entries are written exclusively and
//! atomically by the store; an entry that does not parse, or that is not
//! the one its name promises, is ignored and written again.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dallinger_oci_layers::KeyHasher;
use reqwest::blocking::Client;
use serde::{Deserialize, Serialize};

use super::client::{list_cache, list_find_links, list_index, of_version, Candidate};
use super::local::LocalFiles;
use super::{IndexConfig, IndexError};
use crate::http::redact;
use crate::image::store::{BlobStore, Bucket};
use crate::python::spec::normalise_name;

/// How long an answer is trusted: a day, as an edit loop lasts; after it
/// the index is asked again (and the answer renewed).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Bumped when the entries' meaning changes.
const FORMAT: &str = "dallinger-oci-index-answer/1";

/// The remembered answers of a build, in the store's bucket.
pub struct IndexAnswers {
    store: BlobStore,
    dir: PathBuf,
    /// Ask the indexes again, whatever is remembered (`--refresh`).
    refresh: bool,
    /// The wheel cache and `--find-links` directories, as this resolve
    /// read them.
    local: LocalFiles,
}

impl Drop for IndexAnswers {
    fn drop(&mut self) {
        self.local.save(&self.store);
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    format: String,
    project: String,
    version: String,
    /// The index URLs asked, in order, without credentials.
    indexes: Vec<String>,
    /// When they were asked (seconds since 1970).
    asked: u64,
    /// The files of `version`, as the indexes listed them.
    files: Vec<Candidate>,
}

/// The files of a pinned version, and whether they are a remembered
/// answer (rather than one the indexes gave now).
pub struct PinListing {
    pub files: Vec<Candidate>,
    pub remembered: bool,
}

impl IndexAnswers {
    pub fn new(store: &BlobStore, refresh: bool) -> anyhow::Result<IndexAnswers> {
        Ok(IndexAnswers {
            dir: store.bucket(Bucket::IndexAnswers)?,
            store: store.clone(),
            refresh,
            local: LocalFiles::default(),
        })
    }

    /// Where the answer for this pin and these indexes is kept.
    fn path(&self, project: &str, version: &str, indexes: &[String]) -> PathBuf {
        let mut key = KeyHasher::new();
        key.str(FORMAT).str(project).str(version);
        for index in indexes {
            key.str(index);
        }
        self.dir.join(format!("{project}-{}", key.finish().hex()))
    }

    fn read(&self, project: &str, version: &str, indexes: &[String]) -> Option<Entry> {
        let bytes = fs_err::read(self.path(project, version, indexes)).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        let same = entry.format == FORMAT
            && entry.project == project
            && entry.version == version
            && entry.indexes == indexes
            && !entry.files.is_empty();
        same.then_some(entry)
    }

    /// Best effort: a lost answer only costs asking again. An answer whose
    /// file URLs carry anything secret (a signed URL's query, credentials)
    /// is not kept: such URLs expire, and the cache holds no secrets.
    fn write(&self, project: &str, version: &str, indexes: &[String], files: Vec<Candidate>) {
        if files.is_empty() || files.iter().any(|f| redact(&f.url) != f.url) {
            return;
        }
        let entry = Entry {
            format: FORMAT.into(),
            project: project.into(),
            version: version.into(),
            indexes: indexes.to_vec(),
            asked: now(),
            files,
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            let _ = self
                .store
                .write_entry(&self.path(project, version, indexes), &bytes);
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an answer asked at `asked` is still trusted at `now`; one from
/// the future (a clock set back) is not.
fn fresh(asked: u64, now: u64) -> bool {
    asked <= now && now - asked < MAX_AGE.as_secs()
}

/// The files of `name` at `version`: from the indexes (main, then extras)
/// or what they said before (`answers`, unless `ask` or too old), then from
/// each find-links directory. Offline, a remembered answer of any age is
/// used, else the wheel cache is listed; no network either way. An answer
/// the indexes give now is remembered for the next build.
pub fn list_pin_files(
    name: &str,
    version: &str,
    config: &IndexConfig,
    client: &dyn Fn() -> Result<Client, IndexError>,
    answers: Option<&IndexAnswers>,
    ask: bool,
) -> Result<PinListing, IndexError> {
    let project = normalise_name(name);
    let indexes: Vec<String> = config.indexes().map(redact).collect();
    let remembered = answers
        .filter(|a| !ask && !a.refresh)
        .and_then(|a| a.read(&project, version, &indexes))
        .filter(|entry| config.offline || fresh(entry.asked, now()));
    let mut listing = match remembered {
        Some(entry) => PinListing {
            files: entry.files,
            remembered: true,
        },
        None if config.offline => PinListing {
            files: match answers {
                Some(answers) => answers.local.cached(&project, config),
                None => list_cache(&project, config)?,
            },
            remembered: false,
        },
        None => {
            let client = client()?;
            let mut files = Vec::new();
            for index in config.indexes() {
                files.extend(list_index(index, &project, &client, &config.retry)?);
            }
            if let Some(answers) = answers {
                answers.write(&project, version, &indexes, of_version(&files, version));
            }
            PinListing {
                files,
                remembered: false,
            }
        }
    };
    for dir in &config.find_links {
        listing.files.extend(match answers {
            Some(answers) => answers.local.find_links(&answers.store, dir, &project)?,
            None => list_find_links(dir, &project)?,
        });
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(filename: &str, url: &str) -> Candidate {
        Candidate {
            filename: filename.into(),
            url: url.into(),
            sha256: Some("a".repeat(64)),
            requires_python: None,
            yanked: None,
            size: Some(3),
            index: "https://index.example/simple/".into(),
        }
    }

    #[test]
    fn answers_are_trusted_for_a_day_and_never_from_the_future() {
        let day = MAX_AGE.as_secs();
        assert!(fresh(1000, 1000));
        assert!(fresh(1000, 1000 + day - 1));
        assert!(!fresh(1000, 1000 + day));
        assert!(!fresh(1001, 1000));
    }

    #[test]
    fn an_answer_is_found_again_and_a_corrupt_or_other_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let answers = IndexAnswers::new(&store, false).unwrap();
        let indexes = vec!["https://index.example/simple/".to_string()];
        let files = vec![candidate(
            "six-1.16.0-py2.py3-none-any.whl",
            "https://files.example/six-1.16.0-py2.py3-none-any.whl",
        )];
        answers.write("six", "1.16.0", &indexes, files.clone());
        let entry = answers.read("six", "1.16.0", &indexes).unwrap();
        assert_eq!(entry.files, files);
        // Another version, or another index, is another question.
        assert!(answers.read("six", "1.17.0", &indexes).is_none());
        assert!(answers
            .read("six", "1.16.0", &["https://other.example/simple/".into()])
            .is_none());
        // A corrupt entry is no answer.
        let path = answers.path("six", "1.16.0", &indexes);
        fs_err::write(&path, b"{\"format\": ").unwrap();
        assert!(answers.read("six", "1.16.0", &indexes).is_none());
        // --refresh: nothing remembered is used (see list_pin_files).
        assert!(IndexAnswers::new(&store, true).unwrap().refresh);
    }

    #[test]
    fn signed_urls_are_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let answers = IndexAnswers::new(&store, false).unwrap();
        let indexes = vec!["https://index.example/simple/".to_string()];
        let signed = candidate(
            "six-1.16.0-py2.py3-none-any.whl",
            "https://files.example/six.whl?X-Amz-Signature=secret-5a2f",
        );
        answers.write("six", "1.16.0", &indexes, vec![signed]);
        assert!(answers.read("six", "1.16.0", &indexes).is_none());
        assert_eq!(fs_err::read_dir(&answers.dir).unwrap().count(), 0);
    }
}
