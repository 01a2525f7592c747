//! Content digests: the [`Digest`] type (an algorithm and its validated
//! hex, as go-containerregistry's `v1.Hash`), and the digests of a layer,
//! computed while its bytes stream past.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The hash algorithms a digest may name. Only sha256: it is what every
/// registry and engine uses, and all this tool writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
        }
    }

    /// Length of its hex encoding.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
        }
    }
}

/// A content digest, `ALGORITHM:HEX`, checked once when it is made: a known
/// algorithm and lowercase hex of its exact length, so its hex part is safe
/// as a file name and two spellings of one digest cannot differ.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed digest {text:?}: {why} (expected sha256: and 64 lowercase hex digits)")]
pub struct BadDigest {
    pub text: String,
    pub why: &'static str,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::sha256(Sha256::digest(bytes).into())
    }

    /// The digest whose sha256 sum is `sum`.
    pub fn sha256(sum: [u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sum),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as engines show an image id.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(text: &str) -> Result<Digest, BadDigest> {
        let bad = |why| BadDigest {
            text: text.chars().take(100).collect(),
            why,
        };
        let (name, hex) = text.split_once(':').ok_or_else(|| bad("no algorithm"))?;
        let algorithm = match name {
            "sha256" => Algorithm::Sha256,
            _ => return Err(bad("unknown algorithm")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad("wrong length"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("not lowercase hex"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What identifies a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// Of the uncompressed tar (the config's rootfs diff_id).
    pub diff_id: Digest,
    /// Of the compressed blob (the manifest descriptor's digest).
    pub digest: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns (`sha256:HEX`, byte count, inner writer).
    pub fn finish(self) -> (String, u64, W) {
        let (digest, count, inner) = self.finish_digest();
        (digest.to_string(), count, inner)
    }

    /// Returns the digest, byte count and inner writer.
    pub fn finish_digest(self) -> (Digest, u64, W) {
        (
            Digest::sha256(self.hasher.finalize().into()),
            self.count,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_prints_and_serialises_the_string_form() {
        let digest: Digest = EMPTY.parse().unwrap();
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest.algorithm(), Algorithm::Sha256);
        assert_eq!(digest.hex(), &EMPTY[7..]);
        assert_eq!(digest.short(), "e3b0c44298fc");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
    }

    #[test]
    fn refuses_what_is_not_one_spelling_of_a_sha256() {
        let upper = EMPTY.replace("e3b0", "E3B0");
        for (text, why) in [
            (upper, "not lowercase hex"),
            (EMPTY[..70].to_string(), "wrong length"),
            ("sha256:".to_string(), "wrong length"),
            (format!("{EMPTY}0"), "wrong length"),
            (EMPTY.replace("sha256", "sha512"), "unknown algorithm"),
            (EMPTY.replace("sha256", "md5"), "unknown algorithm"),
            (EMPTY[7..].to_string(), "no algorithm"),
            (EMPTY.replace('e', "g"), "not lowercase hex"),
        ] {
            let err = text.parse::<Digest>().unwrap_err();
            assert_eq!(err.why, why, "{text}");
            let line = err.to_string();
            assert_eq!(
                line,
                format!(
                    "malformed digest {text:?}: {why} (expected sha256: and 64 lowercase hex digits)"
                )
            );
            assert!(!line.contains('\n'));
            let json = format!("\"{text}\"");
            assert!(serde_json::from_str::<Digest>(&json).is_err(), "{text}");
        }
    }
}
