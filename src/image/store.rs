//! The content-addressed blob store: every layer, config and manifest lives
//! here once, under `blobs/sha256/HEX`, and every output is written from it.
//! Layers are also indexed by the digest of their inputs, so an unchanged
//! layer is neither rebuilt nor recompressed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{HashingWriter, LayerDigests};
use serde::{Deserialize, Serialize};

/// A layer blob known to the store, with what the manifest and config need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLayer {
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<BlobStore> {
        for sub in ["blobs/sha256", "layers", "files", "pushed", "tmp"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` (`sha256:HEX`) is, whether or not present.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// True when the blob is present with the expected size.
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores `bytes`, returning `sha256:HEX`.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_digest(bytes);
        if !self.has_blob(&digest, bytes.len() as u64) {
            let (mut file, tmp) = self.temp_file()?;
            file.write_all(bytes)?;
            file.sync_all().ok();
            self.commit(tmp, &digest)?;
        }
        Ok(digest)
    }

    /// Writes a blob through `write` into a temporary file, then moves it to
    /// its digest. `write` returns the digests it computed while writing.
    pub fn put_layer_with<F>(&self, media_type: &str, write: F) -> Result<StoredLayer>
    where
        F: FnOnce(BufWriter<File>) -> Result<(LayerDigests, BufWriter<File>)>,
    {
        let (file, tmp) = self.temp_file()?;
        let result = write(BufWriter::with_capacity(1 << 20, file));
        let (digests, writer) = match result {
            Ok(ok) => ok,
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                return Err(err);
            }
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().ok();
        drop(file);
        self.commit(tmp, &digests.digest)?;
        Ok(StoredLayer {
            diff_id: digests.diff_id,
            digest: digests.digest,
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

    /// Reads a whole blob (configs and manifests only: they are small).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).with_context(|| format!("blob {digest} is missing from the cache"))
    }

    /// The layer recorded for `key`, if its blob is still present.
    pub fn cached_layer(&self, key: &str) -> Option<StoredLayer> {
        let bytes = fs::read(self.root.join("layers").join(key)).ok()?;
        let layer: StoredLayer = serde_json::from_slice(&bytes).ok()?;
        self.has_blob(&layer.digest, layer.size).then_some(layer)
    }

    /// Records that the inputs digested as `key` produce `layer`.
    pub fn remember_layer(&self, key: &str, layer: &StoredLayer) -> Result<()> {
        let (mut file, tmp) = self.temp_file()?;
        file.write_all(&serde_json::to_vec(layer)?)?;
        drop(file);
        fs::rename(&tmp, self.root.join("layers").join(key))?;
        Ok(())
    }

    /// sha256 of a large input file (a base tarball), remembered by the
    /// file's identity and change times so an unchanged file is not read again.
    pub fn file_digest(&self, path: &Path) -> Result<String> {
        use std::os::unix::fs::MetadataExt;
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
        let memo = self
            .root
            .join("files")
            .join(&sha256_digest(identity.as_bytes())["sha256:".len()..]);
        if let Ok(known) = fs::read_to_string(&memo) {
            if hex_of(known.trim()).is_ok() {
                return Ok(known.trim().to_string());
            }
        }
        let digest = sha256_file(path)?;
        let (mut file, tmp) = self.temp_file()?;
        file.write_all(digest.as_bytes())?;
        drop(file);
        fs::rename(&tmp, &memo)?;
        Ok(digest)
    }

    fn pushed_record(&self, registry: &str, digest: &str) -> PathBuf {
        let key = sha256_digest(format!("{registry}\0{digest}").as_bytes());
        self.root.join("pushed").join(&key["sha256:".len()..])
    }

    /// The repository of `registry` a blob was last pushed to, if any, so a
    /// push to another repository can mount it instead of uploading it.
    pub fn pushed_to(&self, registry: &str, digest: &str) -> Option<String> {
        let text = fs::read_to_string(self.pushed_record(registry, digest)).ok()?;
        Some(text.trim().to_string()).filter(|r| !r.is_empty())
    }

    /// Best effort: a lost record only costs an upload later.
    pub fn remember_pushed(&self, registry: &str, digest: &str, repository: &str) {
        if let Ok((mut file, tmp)) = self.temp_file() {
            if file.write_all(repository.as_bytes()).is_ok() {
                let _ = fs::rename(&tmp, self.pushed_record(registry, digest));
            } else {
                let _ = fs::remove_file(&tmp);
            }
        }
    }

    /// Stores a blob read from `reader`, verifying its digest and size.
    pub fn import_reader(
        &self,
        reader: &mut dyn Read,
        digest: &str,
        size: u64,
        origin: &str,
    ) -> Result<()> {
        let (file, tmp) = self.temp_file()?;
        let mut writer = HashingWriter::new(BufWriter::new(file));
        let copied = io::copy(reader, &mut writer);
        let (actual, actual_size, writer) = writer.finish();
        let flushed = writer.into_inner().map_err(|e| e.into_error());
        if let Err(err) = copied
            .map(|_| ())
            .map_err(anyhow::Error::from)
            .and(flushed.map(|_| ()).map_err(anyhow::Error::from))
        {
            let _ = fs::remove_file(&tmp);
            return Err(err.context(format!("cannot read blob {digest} from {origin}")));
        }
        if actual != digest || actual_size != size {
            let _ = fs::remove_file(&tmp);
            bail!(
                "blob {digest} from {origin} does not match its descriptor: it hashes to {actual} ({actual_size} bytes, expected {size}); refusing it"
            );
        }
        self.commit(tmp, digest)
    }

    fn temp_file(&self) -> Result<(File, PathBuf)> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .permissions(readable_file())
            .tempfile_in(self.root.join("tmp"))
            .context("cannot create a temporary file in the cache")?;
        let (file, path) = tmp.keep().context("cannot keep a temporary file")?;
        Ok((file, path))
    }

    fn commit(&self, tmp: PathBuf, digest: &str) -> Result<()> {
        let dest = self.blob_path(digest)?;
        fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot move a blob into {}", dest.display()))
    }
}

/// Mode of files we write: tempfile's default 0600 would make blobs and
/// outputs unreadable to other users.
pub fn readable_file() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o644)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut w = HashingWriter::new(io::sink());
    w.write_all(bytes).expect("sink never fails");
    w.finish().0
}

/// The hex part of `sha256:HEX`, checked so it is safe as a file name.
pub fn hex_of(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => bail!("unsupported or malformed digest {digest:?} (expected sha256:<64 hex>)"),
    }
}

/// sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut w = HashingWriter::new(io::sink());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    Ok(w.finish().0)
}
