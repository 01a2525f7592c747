//! The local places a resolve lists files from, read once per resolve
//! rather than once per pin: the wheel cache (one pass over its
//! directories) and each `--find-links` directory (one listing), whose
//! files' sha256s are remembered across builds by each file's identity.
//!
//! A remembered sha256 is used only while the file has the same device,
//! inode, size, modification and change times as when it was hashed (a
//! change time cannot be set back by a user, so any write, rename over or
//! `touch` makes it hashed again), and only for a file that had not changed
//! for [`SETTLED`] before it was hashed (as git treats a file changed in the
//! same tick as its index as "racy": a write in the same timestamp tick
//! could otherwise leave the old identity on new bytes). One memo per
//! directory, written once at the end of a resolve when it learnt something.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::client::{
    find_links_candidate, find_links_names, hash_file, io_error, scan_cache, Candidate,
};
use super::{IndexConfig, IndexError};
use crate::image::store::BlobStore;

/// How long a file must have been unchanged before its hash is remembered.
const SETTLED: i64 = 2;

/// Bumped when the memo's meaning changes.
const FORMAT: &str = "dallinger-oci-find-links/1";

/// What one resolve read of the local places.
pub(super) struct LocalFiles {
    cache: OnceLock<BTreeMap<String, Vec<Candidate>>>,
    find_links: Mutex<HashMap<PathBuf, Arc<Mutex<Directory>>>>,
    /// [`SETTLED`], but for tests.
    settled: i64,
}

impl Default for LocalFiles {
    fn default() -> Self {
        LocalFiles {
            cache: OnceLock::new(),
            find_links: Mutex::new(HashMap::new()),
            settled: SETTLED,
        }
    }
}

/// One `--find-links` directory: its wheel and sdist names by project, and
/// the hashes known for its files.
struct Directory {
    /// Filenames by normalised project name, sorted.
    by_project: BTreeMap<String, Vec<String>>,
    memo_path: PathBuf,
    memo: Memo,
    changed: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Memo {
    format: String,
    /// The directory, as given (its canonical form is in the memo's name).
    dir: String,
    files: BTreeMap<String, Known>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Clone, Serialize, Deserialize)]
struct Known {
    identity: Identity,
    sha256: String,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Changed (or modified) at least `settled` seconds before `now`, so
    /// no write can share its timestamps.
    fn settled(&self, now: i64, settled: i64) -> bool {
        self.ctime.0.max(self.mtime.0) + settled <= now
    }
}

impl LocalFiles {
    /// The wheel cache's files of `project`, the cache scanned once.
    pub(super) fn cached(&self, project: &str, config: &IndexConfig) -> Vec<Candidate> {
        self.cache
            .get_or_init(|| scan_cache(config, None))
            .get(project)
            .cloned()
            .unwrap_or_default()
    }

    /// The files of `project` in the `--find-links` directory `dir`, with
    /// their sha256s and sizes.
    pub(super) fn find_links(
        &self,
        store: &BlobStore,
        dir: &Path,
        project: &str,
    ) -> Result<Vec<Candidate>, IndexError> {
        let directory = self.directory(store, dir)?;
        let names = directory
            .lock()
            .expect("find-links memo poisoned")
            .by_project
            .get(project)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(names.len());
        for filename in names {
            let (sha256, size) = hashed(&directory, &filename, &dir.join(&filename), self.settled)?;
            out.push(find_links_candidate(dir, filename, sha256, size));
        }
        Ok(out)
    }

    fn directory(
        &self,
        store: &BlobStore,
        dir: &Path,
    ) -> Result<Arc<Mutex<Directory>>, IndexError> {
        let mut dirs = self.find_links.lock().expect("find-links memo poisoned");
        if let Some(known) = dirs.get(dir) {
            return Ok(known.clone());
        }
        let by_project = find_links_names(dir)?;
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let memo_path = store.memo_path("find-links", &canonical.display().to_string());
        let memo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
            .filter(|m| m.format == FORMAT)
            .unwrap_or_else(|| Memo {
                format: FORMAT.into(),
                dir: dir.display().to_string(),
                files: BTreeMap::new(),
            });
        let directory = Arc::new(Mutex::new(Directory {
            by_project,
            memo_path,
            memo,
            changed: false,
        }));
        dirs.insert(dir.to_path_buf(), directory.clone());
        Ok(directory)
    }

    /// Writes what was learnt (best effort: a lost memo costs hashing again).
    pub(super) fn save(&self, store: &BlobStore) {
        let dirs = self.find_links.lock().expect("find-links memo poisoned");
        for directory in dirs.values() {
            let mut directory = directory.lock().expect("find-links memo poisoned");
            if !directory.changed {
                continue;
            }
            // Only the files still there are kept.
            let present: std::collections::BTreeSet<String> =
                directory.by_project.values().flatten().cloned().collect();
            directory
                .memo
                .files
                .retain(|name, _| present.contains(name));
            if let Ok(bytes) = serde_json::to_vec(&directory.memo) {
                let _ = store.write_entry(&directory.memo_path, &bytes);
            }
            directory.changed = false;
        }
    }
}

/// sha256 and size of `path` (`filename` in `directory`): remembered when
/// its identity is the one it was hashed with, else hashed now.
fn hashed(
    directory: &Mutex<Directory>,
    filename: &str,
    path: &Path,
    settled: i64,
) -> Result<(String, u64), IndexError> {
    let stat = || {
        std::fs::metadata(path)
            .map(|m| Identity::of(&m))
            .map_err(io_error(format!("cannot read {}", path.display())))
    };
    let before = stat()?;
    if let Some(known) = directory
        .lock()
        .expect("find-links memo poisoned")
        .memo
        .files
        .get(filename)
        .filter(|k| k.identity == before)
    {
        return Ok((known.sha256.clone(), before.size));
    }
    let (sha256, size) = hash_file(path)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Remembered only when nothing changed it while (or just before) it was
    // read.
    if stat()? == before && before.size == size && before.settled(now, settled) {
        let mut directory = directory.lock().expect("find-links memo poisoned");
        directory.memo.files.insert(
            filename.to_string(),
            Known {
                identity: before,
                sha256: sha256.clone(),
            },
        );
        directory.changed = true;
    }
    Ok((sha256, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> BlobStore {
        BlobStore::open(&dir.join("cache")).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// Sets a file's modification time an hour back (its change time stays
    /// now).
    fn age(path: &Path) {
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_times(
            std::fs::FileTimes::new()
                .set_modified(old)
                .set_accessed(old),
        )
        .unwrap();
    }

    #[test]
    fn a_file_changed_just_now_is_not_settled() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        age(&path);
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // Its change time is now, whatever its modification time says.
        assert!(!identity.settled(now, SETTLED));
        assert!(identity.settled(now + SETTLED, SETTLED));
    }

    #[test]
    fn a_remembered_hash_is_used_only_for_the_same_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let wheels = tmp.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        let wheel = wheels.join("six-1.16.0-py2.py3-none-any.whl");
        std::fs::write(&wheel, b"first").unwrap();
        std::fs::write(wheels.join("not-a-wheel.txt"), b"x").unwrap();
        age(&wheel);
        // Files written by this test are all "just now": remembered anyway.
        let list = |store: &BlobStore| {
            let local = LocalFiles {
                settled: 0,
                ..LocalFiles::default()
            };
            let files = local.find_links(store, &wheels, "six").unwrap();
            local.save(store);
            files
        };
        let first = list(&store);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].sha256.as_deref(), Some(sha(b"first").as_str()));
        assert_eq!(first[0].size, Some(5));
        // Remembered: a build reads the memo, not the file.
        let memo = store.memo_path(
            "find-links",
            &std::fs::canonicalize(&wheels)
                .unwrap()
                .display()
                .to_string(),
        );
        let text = std::fs::read_to_string(&memo).unwrap();
        assert!(text.contains(&sha(b"first")), "{text}");
        assert_eq!(list(&store)[0].sha256, first[0].sha256);

        // Rewritten with the same size and its old times put back: its
        // change time moved, so it is hashed again.
        std::fs::write(&wheel, b"other").unwrap();
        age(&wheel);
        let second = list(&store);
        assert_eq!(second[0].sha256.as_deref(), Some(sha(b"other").as_str()));

        // Replaced by another file under the same name: hashed again.
        let fresh = wheels.join("fresh.tmp");
        std::fs::write(&fresh, b"third!").unwrap();
        std::fs::rename(&fresh, &wheel).unwrap();
        let third = list(&store);
        assert_eq!(third[0].sha256.as_deref(), Some(sha(b"third!").as_str()));
        assert_eq!(third[0].size, Some(6));

        // With the real margin, a file changed just now is hashed and not
        // remembered (it may still change within its timestamp's tick).
        std::fs::write(&wheel, b"fourth").unwrap();
        let local = LocalFiles::default();
        let fourth = local.find_links(&store, &wheels, "six").unwrap();
        local.save(&store);
        assert_eq!(fourth[0].sha256.as_deref(), Some(sha(b"fourth").as_str()));
        let text = std::fs::read_to_string(&memo).unwrap();
        assert!(!text.contains(&sha(b"fourth")), "{text}");
        assert!(text.contains(&sha(b"third!")), "{text}");
    }

    #[test]
    fn the_cache_is_scanned_once_and_split_by_project() {
        let tmp = tempfile::tempdir().unwrap();
        let config = IndexConfig::new(tmp.path().join("wheels"));
        for (hex, name) in [
            ("a".repeat(64), "six-1.16.0-py2.py3-none-any.whl"),
            ("b".repeat(64), "Flask-3.0.0-py3-none-any.whl"),
            ("c".repeat(64), "six-1.17.0-py2.py3-none-any.whl"),
        ] {
            let dir = config.cache_dir.join("sha256").join(hex);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), b"w").unwrap();
        }
        let local = LocalFiles::default();
        let six = local.cached("six", &config);
        assert_eq!(
            six.iter().map(|c| c.filename.as_str()).collect::<Vec<_>>(),
            [
                "six-1.16.0-py2.py3-none-any.whl",
                "six-1.17.0-py2.py3-none-any.whl"
            ]
        );
        assert_eq!(local.cached("flask", &config).len(), 1);
        assert!(local.cached("nothing", &config).is_empty());
        // The same as listing one project on its own.
        assert_eq!(
            super::super::client::list_cache("six", &config)
                .unwrap()
                .iter()
                .map(|c| (&c.filename, &c.sha256))
                .collect::<Vec<_>>(),
            six.iter()
                .map(|c| (&c.filename, &c.sha256))
                .collect::<Vec<_>>()
        );
    }
}
