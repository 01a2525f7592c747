//! The content-addressed blob store: every layer, config and manifest lives
//! here once, under `blobs/sha256/HEX`, and every output is written from it.
//! Layers are also indexed by the digest of their inputs, so an unchanged
//! layer is neither rebuilt nor recompressed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use dallinger_oci_layers::{
    compress_existing_tar, Codec, Digest, HashingWriter, KeyHasher, LayerDigests, LayerTree,
    WriteOptions, FORMAT_VERSION,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{ImageLayer, RemoteBlob};
use crate::fsutil::{self, FileLock, TempFile};

/// A layer blob known to the store, with what the manifest and config need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLayer {
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// Every entry is written into `tmp/` (exclusively, under a random name,
/// flock-ed by its writer), synced, and renamed to its name: a crash leaves
/// at most a temporary file, never a partial blob, record or memo under a
/// name a build trusts. A layer record is written only after its blob is
/// durable. Blobs are checked against their digest whenever they are
/// copied out to an output ([`BlobStore::open_blob`]), and a corrupt one is
/// removed, with the records naming it, so the next build makes it again;
/// only a blob this very process wrote, hashing it as it went, is copied
/// (or linked) out as it is while its file is untouched ([`WrittenHere`]).
///
/// The store is also the one producer of layers ([`BlobStore::produce`]):
/// a stage describes a layer, the store keys it (adding the format, the
/// codec and the mtime), finds it or writes it with its codec, and
/// remembers it; and the one place a base's missing blobs are fetched from
/// ([`BlobStore::fetch_missing`], through the fetcher registered on it).
#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// How produced layers are written.
    layers: WriteOptions,
    fetcher: Option<Arc<dyn BlobFetcher>>,
    /// Layers known by their key without being in the cache (the lock's,
    /// see [`BlobStore::predicting`]).
    predicted: Arc<Predictions>,
    /// Refuse to make a layer that is neither cached nor predicted
    /// ([`BlobStore::known_only`]).
    known_only: bool,
    /// The blobs this process committed (see [`WrittenHere`]).
    written: Arc<WrittenHere>,
}

/// The blobs this process committed to the store, each hashed as its bytes
/// were written (a layer by its writer, a fetched or imported blob against
/// its descriptor, a small one in memory), by the file it was committed
/// as. Copying such a blob out needs no second hash while the file at its
/// name is still that file: same device, inode, size and modification
/// time (another build renaming its own copy over it changes the inode; a
/// write into it, the time). A blob this process did not write (one a
/// previous build left, a base already in the cache) is not in here: it is
/// hashed as it is copied out, so a tampered cache never reaches an output.
#[derive(Default)]
struct WrittenHere(Mutex<std::collections::HashMap<String, FileIdentity>>);

/// What tells a blob's file from another one put at its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

impl WrittenHere {
    fn record(&self, digest: &str, identity: FileIdentity) {
        self.0.lock().unwrap().insert(digest.to_string(), identity);
    }

    /// Whether the file `meta` describes is the one this process committed
    /// as `digest`, with `size` bytes.
    fn is(&self, digest: &str, size: u64, meta: &fs::Metadata) -> bool {
        let identity = FileIdentity::of(meta);
        identity.size == size && self.0.lock().unwrap().get(digest) == Some(&identity)
    }
}

/// Layers a build need not make: the lock says what their inputs give, by
/// their store key, and where a registry holds the blob (none for
/// `digest`, which only adds them up).
#[derive(Debug, Default)]
pub struct Predictions {
    pub layers: std::collections::BTreeMap<String, PredictedLayer>,
    /// Every entry of the lock, up to date or not: a layer of a kind they
    /// have whose key matches none is named as stale when it is made.
    pub entries: Vec<crate::plan::LockedLayer>,
}

impl Predictions {
    /// Why the lock's entries do not give the layer `key` of `kind` made by
    /// `created_by` with `format` (tar format and compressor ids), when it
    /// has entries of that kind and none for `key`.
    fn stale_reason(
        &self,
        key: &str,
        kind: &str,
        created_by: &str,
        format: (&str, &str),
    ) -> Option<String> {
        let (tar, compressor) = format;
        // An entry that describes this layer as this build makes it is not
        // stale (the registry may just lack the blob); one with this key
        // but another recorded format or compressor is.
        let current = |e: &&crate::plan::LockedLayer| e.compressor == compressor && e.format == tar;
        if self.entries.iter().filter(current).any(|e| e.key == key) {
            return None;
        }
        let same_kind: Vec<_> = self.entries.iter().filter(|e| e.kind == kind).collect();
        let entry = same_kind
            .iter()
            .find(|e| e.key == key)
            .or_else(|| same_kind.iter().find(|e| e.created_by == created_by))
            .or(same_kind.first())?;
        Some(if entry.compressor != compressor {
            format!(
                "its entry was written with compressor {}, this build uses {compressor}",
                entry.compressor
            )
        } else if entry.format != tar {
            format!(
                "its entry was written in layer format {}, this build writes {tar}",
                entry.format
            )
        } else {
            "no entry describes it as its inputs are now".into()
        })
    }
}

/// A layer the lock predicts, and the registry repository that has it.
#[derive(Debug, Clone)]
pub struct PredictedLayer {
    pub blob: StoredLayer,
    pub remote: Option<RemoteBlob>,
}

/// A layer that [`BlobStore::known_only`] would have had to make: the
/// lock has no entry for it (as it is now), and the cache does not have it.
#[derive(Debug, thiserror::Error)]
#[error("layer {created_by:?}: not in the cache, and {} has no up-to-date entry for it: run `dallinger-oci lock`", crate::plan::LOCK_FILE)]
pub struct NotPredicted {
    pub created_by: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("root", &self.root)
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

/// Where blobs a store lacks come from (a registry, for a base's layers).
pub trait BlobFetcher: Send + Sync {
    /// Streams blob `digest` of `remote` to `import`, which verifies and
    /// stores it.
    fn fetch(
        &self,
        remote: &RemoteBlob,
        digest: &str,
        size: u64,
        import: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()>;
}

/// What a stage says about a layer it adds; the store does the rest (see
/// [`BlobStore::produce`]).
pub struct LayerDescription<'a> {
    /// What the layer is, a short word: its cache records are `KIND-HEX`.
    pub kind: &'static str,
    /// Everything the layer's entries are made from (never the format or
    /// the codec: the store adds those).
    pub key: KeyHasher,
    /// Its history entry.
    pub created_by: String,
    /// Makes the layer, when it is not in the cache, by handing its tree
    /// (or tar) to the writer.
    pub fill: Box<dyn FnOnce(LayerWriter<'_>) -> Result<WrittenLayer> + 'a>,
}

/// A layer the store produced.
#[derive(Debug, Clone)]
pub struct ProducedLayer {
    pub layer: ImageLayer,
    pub created_by: String,
    /// Whether it came from the cache (or the lock's prediction).
    pub reused: bool,
    /// What the store knows it by (see [`BlobStore::produce`]): the lock
    /// records it.
    pub key: String,
    /// Its stage's kind.
    pub kind: &'static str,
}

/// Writes one layer into the store, with the store's codec, mtime and
/// workers. Given to a [`LayerDescription`]'s `fill`.
pub struct LayerWriter<'s> {
    store: &'s BlobStore,
}

/// A layer blob a [`LayerWriter`] wrote (only it makes one).
pub struct WrittenLayer(StoredLayer);

impl LayerWriter<'_> {
    /// Writes `tree` as the layer.
    pub fn tree(self, tree: &LayerTree) -> Result<WrittenLayer> {
        let options = self.store.layers;
        let layer = self
            .store
            .put_layer_with(options.codec.media_type(), |sink| {
                Ok(tree.write(&options, sink)?)
            })?;
        Ok(WrittenLayer(layer))
    }

    /// Writes an existing tar (a root filesystem), its bytes kept as they
    /// are and checked (see `compress_existing_tar`); `name` says what it
    /// is in errors.
    pub fn tar(self, name: &str, tar: impl Read) -> Result<WrittenLayer> {
        let options = self.store.layers;
        let layer = self
            .store
            .put_layer_with(options.codec.media_type(), |sink| {
                Ok(compress_existing_tar(
                    name,
                    tar,
                    sink,
                    options.codec,
                    options.workers,
                )?)
            })?;
        Ok(WrittenLayer(layer))
    }

    /// The time every entry of the layer has (`SOURCE_DATE_EPOCH`).
    pub fn epoch(&self) -> u64 {
        self.store.layers.mtime
    }
}

/// The parts of the cache, each a directory under its root. Only the
/// store joins paths onto the root: everyone else asks for a bucket. The
/// names are the ones caches have always had, so existing caches keep
/// working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Blobs by digest: `sha256/HEX`.
    Blobs,
    /// Layer records: what inputs (a key) made which blob.
    Layers,
    /// Small memos: file digests, resolved tags, values read from bases.
    Memos,
    /// Which repository of a registry a blob was pushed to.
    Pushed,
    /// Files being written, and scratch directories of work in progress
    /// (on the blobs' filesystem, so a rename moves them in).
    Tmp,
    /// Image trees unpacked for the sandbox, by their layers.
    Rootfs,
    /// The package index's downloads and sdist builds (its own layout).
    Wheels,
    /// Pinned Debian files: `sha256/HEX/NAME`.
    Debian,
    /// What package indexes said about exact pins (`PROJECT-HEX`).
    IndexAnswers,
    /// The `.pyc` files compiled for one wheel's sources by one base's
    /// interpreter: a directory per key (see `python::install::bytecode`).
    Bytecode,
}

impl Bucket {
    /// Made when the store is opened.
    const OPENED: [Bucket; 5] = [
        Bucket::Blobs,
        Bucket::Layers,
        Bucket::Memos,
        Bucket::Pushed,
        Bucket::Tmp,
    ];

    fn dir_name(self) -> &'static str {
        match self {
            Bucket::Blobs => "blobs/sha256",
            Bucket::Layers => "layers",
            Bucket::Memos => "files",
            Bucket::Pushed => "pushed",
            Bucket::Tmp => "tmp",
            Bucket::Rootfs => "rootfs",
            Bucket::Wheels => "wheels",
            Bucket::Debian => "debian",
            Bucket::IndexAnswers => "index-answers",
            Bucket::Bytecode => "bytecode",
        }
    }

    /// The bucket's directory in the cache at `cache_root`, for settings
    /// made before the store is opened (the package index's cache).
    pub fn under(self, cache_root: &Path) -> PathBuf {
        cache_root.join(self.dir_name())
    }
}

/// Bumped when the way layer keys are made changes.
const LAYER_KEY_VERSION: &str = "dallinger-oci-layer-key/2";

/// Prefix of the store's temporary files (swept when their writer died).
const TEMP_PREFIX: &str = "blob-";

impl BlobStore {
    /// Opens (creating if needed) the store at `root`. It produces gzip
    /// layers at the default epoch until told otherwise
    /// ([`BlobStore::producing`]), and fetches nothing
    /// ([`BlobStore::fetching_with`]).
    pub fn open(root: &Path) -> Result<BlobStore> {
        let store = BlobStore {
            root: root.to_path_buf(),
            layers: WriteOptions {
                mtime: crate::build::DEFAULT_EPOCH,
                workers: 0,
                codec: Codec::Gzip,
            },
            fetcher: None,
            predicted: Arc::default(),
            known_only: false,
            written: Arc::default(),
        };
        for bucket in Bucket::OPENED {
            fs::create_dir_all(store.dir(bucket)).map_err(|e| store.write_error(e.into()))?;
        }
        store.sweep_temp_files();
        Ok(store)
    }

    /// The store, producing layers with `options` (codec, mtime, workers).
    pub fn producing(mut self, options: WriteOptions) -> BlobStore {
        self.layers = options;
        self
    }

    /// The store, fetching missing blobs through `fetcher`.
    pub fn fetching_with(mut self, fetcher: Arc<dyn BlobFetcher>) -> BlobStore {
        self.fetcher = Some(fetcher);
        self
    }

    /// The store, taking the layers of `predictions` as made when their
    /// key comes up and the cache lacks them.
    pub fn predicting(mut self, predictions: Predictions) -> BlobStore {
        self.predicted = Arc::new(predictions);
        self
    }

    /// Whether it was told of layers it lacks ([`BlobStore::predicting`]).
    pub fn predicts(&self) -> bool {
        !self.predicted.layers.is_empty()
    }

    /// The store, failing with [`NotPredicted`] instead of making a layer
    /// it neither has nor is told of.
    pub fn known_only(&self) -> BlobStore {
        BlobStore {
            known_only: true,
            ..self.clone()
        }
    }

    /// The format and compressor ids of the layers it produces, as the
    /// lock records them.
    pub fn layer_format(&self) -> (&'static str, &'static str) {
        (FORMAT_VERSION, self.layers.codec.compressor_id())
    }

    /// The codec of the layers it produces.
    pub fn codec(&self) -> Codec {
        self.layers.codec
    }

    fn dir(&self, bucket: Bucket) -> PathBuf {
        bucket.under(&self.root)
    }

    /// The directory of `bucket`, made if missing.
    pub fn bucket(&self, bucket: Bucket) -> Result<PathBuf> {
        let dir = self.dir(bucket);
        fs::create_dir_all(&dir).map_err(|e| self.write_error(e.into()))?;
        Ok(dir)
    }

    /// A scratch directory for work in progress (removed when dropped),
    /// named `PREFIX…`, on the cache's filesystem.
    pub fn scratch_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.dir(Bucket::Tmp))
            .map_err(|e| self.write_error(e.into()))
            .with_context(|| format!("cannot make a scratch directory ({prefix}…) in the cache"))
    }

    /// Where the memo of `kind` for `key` is kept: `KIND-HEX` (or `HEX`
    /// for an empty kind), HEX the sha256 of `key`. Write it with
    /// [`BlobStore::write_entry`].
    pub fn memo_path(&self, kind: &str, key: &str) -> PathBuf {
        let hex = hash_hex(key.as_bytes());
        let name = if kind.is_empty() {
            hex
        } else {
            format!("{kind}-{hex}")
        };
        self.dir(Bucket::Memos).join(name)
    }

    /// The key of a described layer: the stage's fields, and what the store
    /// adds (the key and tar format versions, the codec's compressor id,
    /// the mtime), so no stage can forget them.
    fn layer_key(&self, kind: &str, stage: &KeyHasher) -> String {
        let mut key = KeyHasher::new();
        key.str(LAYER_KEY_VERSION)
            .str(FORMAT_VERSION)
            .str(self.layers.codec.compressor_id())
            .u64(self.layers.mtime)
            .str(kind)
            .digest(&stage.finish());
        format!("{kind}-{}", key.finish().hex())
    }

    /// The layer `description` describes: from the cache when the same
    /// inputs made it before, else written now (with the store's codec,
    /// its media type and compressor annotation) and remembered.
    pub fn produce(&self, description: LayerDescription) -> Result<ProducedLayer> {
        let key = self.layer_key(description.kind, &description.key);
        let (blob, reused, remote) = match self.cached_layer(&key) {
            Some(layer) => (layer, true, None),
            None => match self.predicted.layers.get(&key) {
                Some(predicted) => (predicted.blob.clone(), true, predicted.remote.clone()),
                None if self.known_only => bail!(NotPredicted {
                    created_by: description.created_by
                }),
                None => {
                    let format = self.layer_format();
                    let why = self.predicted.stale_reason(
                        &key,
                        description.kind,
                        &description.created_by,
                        format,
                    );
                    if let Some(why) = why {
                        eprintln!(
                            "warning: layer {:?}: {} is stale for it ({why}): building it (run `dallinger-oci lock` to record it again)",
                            description.created_by,
                            crate::plan::LOCK_FILE
                        );
                    }
                    let WrittenLayer(layer) = (description.fill)(LayerWriter { store: self })?;
                    self.remember_layer(&key, &layer)?;
                    (layer, false, None)
                }
            },
        };
        let mut layer = ImageLayer::written(blob);
        layer.remote = remote;
        Ok(ProducedLayer {
            layer,
            created_by: description.created_by,
            reused,
            key,
            kind: description.kind,
        })
    }

    /// Downloads (verified) every blob of `layers` that is not in the
    /// store, through the registered fetcher.
    pub fn fetch_missing(&self, layers: &[ImageLayer]) -> Result<()> {
        for layer in layers {
            let (digest, size) = (&layer.blob.digest, layer.blob.size);
            if self.has_blob(digest, size) {
                continue;
            }
            let missing = || format!("blob {digest} is missing from the cache");
            let remote = layer.remote.as_ref().with_context(missing)?;
            let fetcher = self.fetcher.as_ref().with_context(missing)?;
            let origin = format!("{}/{}", remote.registry, remote.repository);
            eprintln!("fetching base layer {digest} from {origin}");
            fetcher.fetch(remote, digest, size, &mut |reader| {
                self.import_reader(reader, digest, size, &origin)
            })?;
        }
        Ok(())
    }

    /// Where the blob with `digest` (`sha256:HEX`) is, whether or not present.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir(Bucket::Blobs).join(hex_of(digest)?))
    }

    /// True when the blob is present with the expected size. (Its bytes are
    /// checked when they are copied out: see [`BlobStore::open_blob`].)
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores `bytes`, returning `sha256:HEX`. A small blob already present
    /// is compared byte for byte, and replaced if it differs.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        let path = self.blob_path(&digest)?;
        if self.has_blob(&digest, bytes.len() as u64)
            && fs::read(&path).is_ok_and(|present| present == bytes)
        {
            return Ok(digest);
        }
        let mut tmp = self.temp_file()?;
        tmp.file_mut()
            .write_all(bytes)
            .map_err(|e| self.write_error(e.into()))?;
        self.commit(tmp, &digest)?;
        Ok(digest)
    }

    /// Writes a blob through `write` into a temporary file, then moves it to
    /// its digest. `write` returns the digests it computed while writing.
    fn put_layer_with<F>(&self, media_type: &str, write: F) -> Result<StoredLayer>
    where
        F: FnOnce(BufWriter<File>) -> Result<(LayerDigests, BufWriter<File>)>,
    {
        let tmp = self.temp_file()?;
        let file = tmp
            .file()
            .try_clone()
            .map_err(|e| self.write_error(e.into()))?;
        // On an error `tmp` is dropped, which removes the temporary file.
        let (digests, writer) =
            write(BufWriter::with_capacity(1 << 20, file)).map_err(|e| self.full_or(e))?;
        writer
            .into_inner()
            .map_err(|e| self.write_error(e.into_error().into()))?;
        let digest = digests.digest.to_string();
        self.commit(tmp, &digest)?;
        Ok(StoredLayer {
            diff_id: digests.diff_id.to_string(),
            digest,
            size: digests.size,
            media_type: media_type.to_string(),
        })
    }

    /// Copies a blob from `source`, verifying its digest and size.
    pub fn import_blob(&self, source: &Path, digest: &str, size: u64) -> Result<()> {
        if self.has_blob(digest, size) {
            return Ok(());
        }
        let mut input =
            File::open(source).with_context(|| format!("cannot read blob {}", source.display()))?;
        self.import_reader(&mut input, digest, size, &source.display().to_string())
    }

    /// Reads a whole small blob (a config or a manifest), checked against
    /// its digest: a corrupt one is removed and refused.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes =
            fs::read(&path).with_context(|| format!("blob {digest} is missing from the cache"))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let identity = fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
            return Err(self.corrupt(digest, &actual, identity));
        }
        Ok(bytes)
    }

    /// The blob's bytes, for copying out to an output: they are hashed as
    /// they are read, and the last ones are withheld (the read fails) when
    /// the blob does not match `digest` and `size`, so a corrupt blob never
    /// completes an output. A corrupt blob is removed from the store.
    pub fn open_blob(&self, digest: &str, size: u64) -> Result<VerifiedBlob> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).with_context(|| {
            format!(
                "blob {digest} is missing from the cache ({}): build again to make or fetch it",
                self.root.display()
            )
        })?;
        let meta = file.metadata()?;
        let identity = (meta.dev(), meta.ino());
        if meta.len() != size {
            return Err(self.corrupt(
                digest,
                &format!("{} bytes instead of {size}", meta.len()),
                Some(identity),
            ));
        }
        if size == 0 && sha256_digest(b"") != digest {
            return Err(self.corrupt(digest, &sha256_digest(b""), Some(identity)));
        }
        // A blob this process wrote was hashed as it was written: while its
        // file is that one, its bytes are read as they are (see
        // [`WrittenHere`]); any other is hashed as it streams.
        let hashed = if self.written.is(digest, size, &meta) {
            size
        } else {
            0
        };
        Ok(VerifiedBlob {
            file,
            store: self.clone(),
            digest: digest.to_string(),
            size,
            identity,
            hasher: Sha256::new(),
            hashed,
            pos: 0,
            report: None,
        })
    }

    /// The layer recorded for `key`, if its blob is still present.
    pub fn cached_layer(&self, key: &str) -> Option<StoredLayer> {
        let bytes = fs::read(self.dir(Bucket::Layers).join(key)).ok()?;
        let layer: StoredLayer = serde_json::from_slice(&bytes).ok()?;
        self.has_blob(&layer.digest, layer.size).then_some(layer)
    }

    /// Records that the inputs digested as `key` produce `layer`, whose
    /// blob is already in the store (and durable: see [`BlobStore::commit`]).
    pub fn remember_layer(&self, key: &str, layer: &StoredLayer) -> Result<()> {
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            bail!("invalid layer key {key:?}");
        }
        if !self.has_blob(&layer.digest, layer.size) {
            bail!(
                "the layer {} is not in the cache; not recording it",
                layer.digest
            );
        }
        self.write_entry(
            &self.dir(Bucket::Layers).join(key),
            &serde_json::to_vec(layer)?,
        )
    }

    /// Writes a small cache entry (a record, a memo) atomically: its bytes
    /// are synced before the rename, so its name never shows a torn entry.
    /// Its directory is not synced: nothing durable names an entry (losing
    /// one to a crash only costs working it out again), and a cold build
    /// writes a hundred of them.
    pub fn write_entry(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.file_mut()
            .write_all(bytes)
            .and_then(|_| tmp.commit_leaving_dir(dest))
            .map_err(|e| self.write_error(e.into()))
    }

    /// sha256 of a large input file (a base tarball), remembered by the
    /// file's identity and change times so an unchanged file is not read again.
    pub fn file_digest(&self, path: &Path) -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let canonical = fs::canonicalize(path)?;
        let identity = format!(
            "{}\0{}\0{}.{}\0{}.{}\0{}\0{}",
            canonical.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino(),
            meta.dev()
        );
        let memo = self.memo_path("", &identity);
        if let Ok(known) = fs::read_to_string(&memo) {
            if hex_of(known.trim()).is_ok() {
                return Ok(known.trim().to_string());
            }
        }
        let digest = sha256_file(path)?;
        self.write_entry(&memo, digest.as_bytes())?;
        Ok(digest)
    }

    fn pushed_record(&self, registry: &str, digest: &str) -> PathBuf {
        let key = hash_hex(format!("{registry}\0{digest}").as_bytes());
        self.dir(Bucket::Pushed).join(key)
    }

    /// The repository of `registry` a blob was last pushed to, if any, so a
    /// push to another repository can mount it instead of uploading it.
    pub fn pushed_to(&self, registry: &str, digest: &str) -> Option<String> {
        let text = fs::read_to_string(self.pushed_record(registry, digest)).ok()?;
        Some(text.trim().to_string()).filter(|r| !r.is_empty())
    }

    /// Best effort: a lost record only costs an upload later.
    pub fn remember_pushed(&self, registry: &str, digest: &str, repository: &str) {
        if self.pushed_to(registry, digest).as_deref() != Some(repository) {
            let _ = self.write_entry(&self.pushed_record(registry, digest), repository.as_bytes());
        }
    }

    /// Stores a blob read from `reader`, verifying its digest and size. At
    /// most `size` + 1 bytes are read: a longer blob is refused, never
    /// allowed to fill the disk.
    pub fn import_reader(
        &self,
        reader: &mut dyn Read,
        digest: &str,
        size: u64,
        origin: &str,
    ) -> Result<()> {
        hex_of(digest)?;
        let tmp = self.temp_file()?;
        let file = tmp
            .file()
            .try_clone()
            .map_err(|e| self.write_error(e.into()))?;
        let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let copied = io::copy(&mut reader.take(size.saturating_add(1)), &mut writer);
        let (actual, actual_size, writer) = writer.finish();
        if let Err(err) = copied {
            if fsutil::io_out_of_space(&err) {
                return Err(self.write_error(err.into()));
            }
            return Err(anyhow::Error::from(err)
                .context(format!("cannot read blob {digest} from {origin}")));
        }
        if actual_size > size {
            bail!(
                "blob {digest} from {origin} is longer than the {size} bytes its descriptor gives; refusing it"
            );
        }
        writer
            .into_inner()
            .map_err(|e| self.write_error(e.into_error().into()))?;
        if actual != digest || actual_size != size {
            bail!(
                "blob {digest} from {origin} does not match its descriptor: it hashes to {actual} ({actual_size} bytes, expected {size}); refusing it"
            );
        }
        self.commit(tmp, digest)
    }

    /// A new temporary file under `tmp/`, locked by this process so a later
    /// build can tell it from one a killed build left behind.
    fn temp_file(&self) -> Result<TempFile> {
        TempFile::new_locked_in(&self.dir(Bucket::Tmp), TEMP_PREFIX, 0o644)
            .map_err(|e| self.write_error(e.into()))
    }

    /// Removes temporary files that no live build holds (left by a build
    /// that was killed).
    fn sweep_temp_files(&self) {
        fsutil::sweep_unlocked(&self.dir(Bucket::Tmp), TEMP_PREFIX);
    }

    /// Moves a fully written temporary file to the blob `digest`, durably:
    /// its bytes synced before the rename, the directory after.
    fn commit(&self, tmp: TempFile, digest: &str) -> Result<()> {
        let dest = self.blob_path(digest)?;
        tmp.file()
            .sync_all()
            .map_err(|e| self.write_error(e.into()))?;
        // Taken from the open file, whatever is at `dest` by the time it
        // is renamed: no more bytes go into it.
        let identity = tmp
            .file()
            .metadata()
            .map_err(|e| self.write_error(e.into()))?;
        let _lock = self.lock()?;
        tmp.commit_synced(&dest)
            .map_err(|e| self.write_error(e.into()))?;
        self.written.record(digest, FileIdentity::of(&identity));
        Ok(())
    }

    /// Puts the blob `digest` at `dest` (a name in an output directory) as
    /// a hard link to the store's file, when this process wrote that file
    /// (see [`WrittenHere`]) and `dest` is on the same file system: no byte
    /// is read, hashed or written again, and none needs syncing (the
    /// store's commit synced them). The link is made under a temporary
    /// name beginning with `.` beside `dest` (what a sweep of a layout's
    /// blobs removes when a build dies) and renamed over `dest` only when
    /// it is still that file. False when the blob must be copied instead:
    /// not written here, or not linkable there.
    pub fn link_written(&self, digest: &str, size: u64, dest: &Path) -> Result<bool> {
        let source = self.blob_path(digest)?;
        let is_written = |path: &Path| {
            fs::symlink_metadata(path)
                .is_ok_and(|m| m.is_file() && self.written.is(digest, size, &m))
        };
        if !is_written(&source) {
            return Ok(false);
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .map(|n| format!(".{}.link-", n.to_string_lossy()))
            .unwrap_or_else(|| ".link-".into());
        // `make_in` retries another random name when one is taken.
        let linked = tempfile::Builder::new()
            .prefix(&name)
            .make_in(dir, |path| fs::hard_link(&source, path));
        let Ok(linked) = linked else {
            // Another file system, or one without hard links: copy.
            return Ok(false);
        };
        // The store's file may have been replaced between the check and the
        // link: then the link is dropped (removed) and the blob copied,
        // hashed, as one this process did not write.
        if !is_written(linked.path()) {
            return Ok(false);
        }
        linked
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(true)
    }

    /// The store's lock, held while a blob is renamed into place or a
    /// corrupt one removed, so a build never removes a good blob that
    /// another build has just written under the same name.
    fn lock(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("lock")).map_err(|e| self.write_error(e.into()))
    }

    /// Removes the corrupt blob `digest` (when the file at its name is still
    /// the one read, `identity`), and the layer records naming it, and
    /// returns the error line to show.
    fn corrupt(&self, digest: &str, found: &str, identity: Option<(u64, u64)>) -> anyhow::Error {
        let removed = (|| -> Result<bool> {
            let _lock = self.lock()?;
            let path = self.blob_path(digest)?;
            let now = fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
            if identity.is_none() || now != identity {
                return Ok(false);
            }
            fs::remove_file(&path)?;
            for entry in fs::read_dir(self.dir(Bucket::Layers))?.flatten() {
                let names_it = fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<StoredLayer>(&b).ok())
                    .is_some_and(|l| l.digest == digest);
                if names_it {
                    let _ = fs::remove_file(entry.path());
                }
            }
            Ok(true)
        })()
        .unwrap_or(false);
        let found = if found.starts_with("sha256:") {
            format!("it hashes to {found}")
        } else {
            format!("it has {found}")
        };
        anyhow!(
            "blob {digest} in the cache directory {} is corrupt ({found}); {}build again to rebuild or fetch it",
            self.root.display(),
            if removed {
                "removed it and the layer records naming it: "
            } else {
                ""
            }
        )
    }

    /// The error for a failed write into the cache: a full disk is named as
    /// such, with the cache directory.
    fn write_error(&self, err: anyhow::Error) -> anyhow::Error {
        if fsutil::is_out_of_space(&err) {
            return self.full_or(err);
        }
        err.context(format!(
            "cannot write into the cache directory {}",
            self.root.display()
        ))
    }

    /// `err`, or when it comes from a full disk, one line saying so.
    pub fn full_or(&self, err: anyhow::Error) -> anyhow::Error {
        if fsutil::is_out_of_space(&err) {
            return anyhow!(
                "no space left on the device for the cache (cache directory {}): free some space there or choose another with --cache-dir",
                self.root.display()
            );
        }
        err
    }
}

/// A blob being read out of the store, checked against its digest as it
/// streams (see [`BlobStore::open_blob`]). Reads past what was hashed
/// (a resumed upload seeking back) are served from the file as it is.
pub struct VerifiedBlob {
    file: File,
    store: BlobStore,
    digest: String,
    size: u64,
    identity: (u64, u64),
    hasher: Sha256,
    hashed: u64,
    pos: u64,
    report: Option<Arc<Mutex<Option<String>>>>,
}

impl VerifiedBlob {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Also puts the error line into `slot` when the blob turns out corrupt
    /// (for a reader handed to an HTTP client, which keeps only its own error).
    pub fn report_to(mut self, slot: Arc<Mutex<Option<String>>>) -> VerifiedBlob {
        self.report = Some(slot);
        self
    }

    /// Hashes the bytes from `hashed` up to `upto` (a seek went past them).
    fn hash_up_to(&mut self, upto: u64) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        while self.hashed < upto {
            let want = (upto - self.hashed).min(buf.len() as u64) as usize;
            let n = self.file.read_at(&mut buf[..want], self.hashed)?;
            if n == 0 {
                return Err(self.failure("it ends early"));
            }
            self.hasher.update(&buf[..n]);
            self.hashed += n as u64;
            if self.hashed == self.size {
                self.check()?;
            }
        }
        Ok(())
    }

    /// All `size` bytes are hashed: they must give the digest, and the
    /// file must end there.
    fn check(&mut self) -> io::Result<()> {
        let actual = Digest::sha256(self.hasher.clone().finalize().into()).to_string();
        let mut probe = [0u8; 1];
        let longer = self.file.read_at(&mut probe, self.size)? > 0;
        if actual != self.digest || longer {
            let found = if longer {
                format!("more than {} bytes", self.size)
            } else {
                actual
            };
            return Err(self.failure(&found));
        }
        Ok(())
    }

    fn failure(&self, found: &str) -> io::Error {
        let err = self.store.corrupt(&self.digest, found, Some(self.identity));
        let message = format!("{err:#}");
        if let Some(slot) = &self.report {
            *slot.lock().unwrap() = Some(message.clone());
        }
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl Read for VerifiedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        if self.pos > self.hashed {
            self.hash_up_to(self.pos)?;
        }
        let mut want = (self.size - self.pos).min(buf.len() as u64);
        if self.pos < self.hashed {
            want = want.min(self.hashed - self.pos);
        }
        let n = self.file.read_at(&mut buf[..want as usize], self.pos)?;
        if n == 0 {
            return Err(self.failure("it ends early"));
        }
        if self.pos == self.hashed {
            self.hasher.update(&buf[..n]);
            self.hashed += n as u64;
            if self.hashed == self.size {
                // The last bytes are returned only when the whole blob is right.
                self.check()?;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VerifiedBlob {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// Mode of files we write: tempfile's default 0600 would make blobs and
/// outputs unreadable to other users.
pub fn readable_file() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o644)
}

/// The hex of the sha256 of `bytes`.
fn hash_hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_string()
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

/// The hex part of `sha256:HEX`, checked (as a [`Digest`]) so it is safe
/// as a file name.
pub fn hex_of(digest: &str) -> Result<&str> {
    digest.parse::<Digest>()?;
    Ok(&digest["sha256:".len()..])
}

/// sha256 (`sha256:HEX`) of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let (sum, _) = File::open(path)
        .and_then(sha256_stream)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Digest::sha256(sum).to_string())
}

/// The sha256 and the length of everything `reader` yields, read in 1 MiB
/// pieces: the one way a file's bytes are hashed.
pub fn sha256_stream(mut reader: impl Read) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok((hasher.finalize().into(), size)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dallinger_oci_layers::Content;

    fn description<'a>(
        tree: &'a LayerTree,
        fills: &'a std::cell::Cell<u32>,
    ) -> LayerDescription<'a> {
        let mut key = KeyHasher::new();
        tree.add_to_key(&mut key).unwrap();
        LayerDescription {
            kind: "test",
            key,
            created_by: "a test layer".into(),
            fill: Box::new(move |writer| {
                fills.set(fills.get() + 1);
                writer.tree(tree)
            }),
        }
    }

    /// The store keys a layer by its codec (and mtime), never the stage:
    /// a gzip and a zstd build of the same tree share no record, and each
    /// finds its own again.
    #[test]
    fn layers_are_keyed_by_codec_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = LayerTree::new();
        tree.add_file("a/b.txt", Content::Bytes(b"hello".to_vec()), false)
            .unwrap();
        let fills = std::cell::Cell::new(0);
        let with = |codec: Codec, mtime: u64| {
            BlobStore::open(dir.path())
                .unwrap()
                .producing(WriteOptions {
                    mtime,
                    workers: 1,
                    codec,
                })
        };
        let gzip = with(Codec::Gzip, 1)
            .produce(description(&tree, &fills))
            .unwrap();
        assert!(!gzip.reused);
        assert_eq!(gzip.layer.blob.media_type, Codec::Gzip.media_type());
        assert_eq!(gzip.created_by, "a test layer");
        let zstd = with(Codec::Zstd, 1)
            .produce(description(&tree, &fills))
            .unwrap();
        assert!(!zstd.reused);
        assert_eq!(zstd.layer.blob.media_type, Codec::Zstd.media_type());
        assert_eq!(
            zstd.layer.annotations[super::super::ANNOTATION_COMPRESSOR],
            Codec::Zstd.compressor_id()
        );
        assert_eq!(zstd.layer.blob.diff_id, gzip.layer.blob.diff_id);
        assert_ne!(zstd.layer.blob.digest, gzip.layer.blob.digest);
        assert_eq!(fills.get(), 2);
        for (codec, first) in [(Codec::Gzip, &gzip), (Codec::Zstd, &zstd)] {
            let again = with(codec, 1).produce(description(&tree, &fills)).unwrap();
            assert!(again.reused, "{codec}");
            assert_eq!(again.layer.blob, first.layer.blob);
        }
        assert_eq!(fills.get(), 2);
        // Another mtime is another layer.
        let later = with(Codec::Gzip, 2)
            .produce(description(&tree, &fills))
            .unwrap();
        assert!(!later.reused);
        assert_ne!(later.layer.blob.diff_id, gzip.layer.blob.diff_id);
        let records = fs::read_dir(dir.path().join("layers")).unwrap().count();
        assert_eq!(records, 3);
    }

    /// A predicted layer is taken as made (from where the registry has it),
    /// never filled; `known_only` refuses to make any other, naming it.
    #[test]
    fn predicted_layers_are_not_made_and_known_only_makes_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = LayerTree::new();
        tree.add_file("a.txt", Content::Bytes(b"a".to_vec()), false)
            .unwrap();
        let fills = std::cell::Cell::new(0);
        let made = {
            let other = tempfile::tempdir().unwrap();
            let store = BlobStore::open(other.path()).unwrap();
            store.produce(description(&tree, &fills)).unwrap()
        };
        assert_eq!(fills.get(), 1);
        let remote = RemoteBlob {
            registry: "127.0.0.1:5000".into(),
            repository: "lab/app".into(),
        };
        let store = BlobStore::open(dir.path()).unwrap();
        let refused = store
            .known_only()
            .produce(description(&tree, &fills))
            .unwrap_err();
        assert!(refused.is::<NotPredicted>(), "{refused}");
        assert!(refused.to_string().contains("\"a test layer\""));
        let predicting = store.clone().predicting(Predictions {
            layers: [(
                made.key.clone(),
                PredictedLayer {
                    blob: made.layer.blob.clone(),
                    remote: Some(remote.clone()),
                },
            )]
            .into(),
            entries: vec![],
        });
        assert!(predicting.predicts());
        let predicted = predicting
            .known_only()
            .produce(description(&tree, &fills))
            .unwrap();
        assert_eq!(fills.get(), 1);
        assert!(predicted.reused);
        assert_eq!(predicted.layer.blob, made.layer.blob);
        assert_eq!(predicted.layer.annotations, made.layer.annotations);
        assert_eq!(predicted.layer.remote, Some(remote));
        assert!(!predicting.has_blob(&made.layer.blob.digest, made.layer.blob.size));

        // An entry for the key is never stale; one of the kind by another
        // compressor, format or inputs is, saying which.
        let entry = |key: &str, format: &str, compressor: &str| crate::plan::LockedLayer {
            kind: "test".into(),
            created_by: "a test layer".into(),
            key: key.into(),
            format: format.into(),
            compressor: compressor.into(),
            media_type: made.layer.blob.media_type.clone(),
            diff_id: made.layer.blob.diff_id.clone(),
            digest: made.layer.blob.digest.clone(),
            size: made.layer.blob.size,
        };
        let (tar, gzip) = store.layer_format();
        let reason = |entries: Vec<crate::plan::LockedLayer>| {
            let predictions = Predictions {
                layers: Default::default(),
                entries,
            };
            predictions.stale_reason(&made.key, "test", "a test layer", (tar, gzip))
        };
        assert_eq!(reason(vec![entry(&made.key, tar, gzip)]), None);
        assert_eq!(reason(vec![]), None);
        let other = reason(vec![entry("test-other", tar, "zstd-x")]).unwrap();
        assert!(
            other.contains("compressor zstd-x, this build uses gzip"),
            "{other}"
        );
        let format = reason(vec![entry("test-other", "layers/0", gzip)]).unwrap();
        assert!(format.contains("layer format layers/0"), "{format}");
        let inputs = reason(vec![entry("test-other", tar, gzip)]).unwrap();
        assert_eq!(inputs, "no entry describes it as its inputs are now");
    }

    #[test]
    fn a_missing_blob_without_a_fetcher_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"elsewhere");
        let layer = ImageLayer {
            blob: StoredLayer {
                diff_id: digest.clone(),
                digest: digest.clone(),
                size: 9,
                media_type: Codec::Gzip.media_type().into(),
            },
            annotations: Default::default(),
            remote: Some(RemoteBlob {
                registry: "registry.example".into(),
                repository: "base".into(),
            }),
        };
        let err = store.fetch_missing(&[layer]).unwrap_err().to_string();
        assert_eq!(err, format!("blob {digest} is missing from the cache"));
    }

    /// A blob this process committed is linked out (the same file, nothing
    /// read again) and read out as it is; the same blob seen by another
    /// process (a store opened afresh) is neither: it is copied hashed, so
    /// a change made to it in the cache stops the output.
    #[test]
    fn only_blobs_written_here_are_linked_and_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = b"a blob written by this build".to_vec();
        let digest = store.put_bytes(&bytes).unwrap();
        let size = bytes.len() as u64;
        let dest = out.path().join("one");
        assert!(store.link_written(&digest, size, &dest).unwrap());
        let (src, linked) = (
            fs::metadata(store.blob_path(&digest).unwrap()).unwrap(),
            fs::metadata(&dest).unwrap(),
        );
        assert_eq!((src.dev(), src.ino()), (linked.dev(), linked.ino()));
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        // Nothing but the blob is left in the output directory.
        let names: Vec<_> = fs::read_dir(out.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        // A wrong size is not this blob.
        assert!(!store
            .link_written(&digest, size + 1, &out.path().join("two"))
            .unwrap());

        // Another process's view: same bytes, not written by it.
        let later = BlobStore::open(dir.path()).unwrap();
        assert!(!later
            .link_written(&digest, size, &out.path().join("three"))
            .unwrap());
        // Tampered in place (same length): the first store sees another
        // modification time and hashes it; so does the later one.
        let path = store.blob_path(&digest).unwrap();
        let mut tampered = bytes.clone();
        tampered[0] ^= 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(&tampered)
            .unwrap();
        assert!(!store
            .link_written(&digest, size, &out.path().join("four"))
            .unwrap());
        let mut read = Vec::new();
        let err = store
            .open_blob(&digest, size)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
        // And it was removed, so the next build makes it again.
        assert!(!path.exists());
    }

    /// The blob read out of a store that wrote it is what was written
    /// (read as it is, not hashed again).
    #[test]
    fn a_blob_written_here_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = store.put_bytes(&bytes).unwrap();
        let mut read = Vec::new();
        store
            .open_blob(&digest, bytes.len() as u64)
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, bytes);
    }
}
