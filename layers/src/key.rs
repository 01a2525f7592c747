//! Cache keys from typed fields: each field is written as a type tag, its
//! length and its bytes, so no two different lists of fields give the same
//! stream (`("ab", "c")` and `("a", "bc")` differ, as do a string and the
//! same bytes as a number). A key names everything a cached value was made
//! from; a field forgotten is a stale hit, so stages list theirs in one place.

use std::io;

use sha2::{Digest as _, Sha256};

use crate::{Digest, HashingWriter};

/// Builds a key from fields, in order.
#[derive(Clone)]
pub struct KeyHasher {
    hasher: Sha256,
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    pub fn new() -> KeyHasher {
        KeyHasher {
            hasher: Sha256::new(),
        }
    }

    fn field(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        self.hasher.update([tag]);
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    pub fn str(&mut self, text: &str) -> &mut Self {
        self.field(b's', text.as_bytes())
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.field(b'b', bytes)
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.field(b'u', &n.to_le_bytes())
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.field(b'?', &[u8::from(b)])
    }

    pub fn digest(&mut self, digest: &Digest) -> &mut Self {
        self.field(b'#', digest.to_string().as_bytes())
    }

    /// A list: its length, then each item's fields. Two lists side by side
    /// cannot trade items.
    pub fn list<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.field(b'[', &(items.len() as u64).to_le_bytes());
        for item in items {
            each(self, item);
        }
        self
    }

    /// A field of `len` bytes streamed from `reader` (a file's content),
    /// which must yield exactly that many; it stands in the key by its
    /// sha256, as a [`KeyHasher::bytes`] field of the same bytes would not.
    pub fn stream(&mut self, len: u64, reader: impl io::Read) -> io::Result<&mut Self> {
        self.hasher.update([b'b']);
        self.hasher.update(len.to_le_bytes());
        let mut sink = HashingWriter::new(io::sink());
        let copied = io::copy(&mut reader.take(len), &mut sink)?;
        self.hasher.update(sink.finish_digest().0.hex().as_bytes());
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes instead of {len}"),
            ));
        }
        Ok(self)
    }

    /// The key: the sha256 of the fields.
    pub fn finish(&self) -> Digest {
        Digest::sha256(self.hasher.clone().finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: impl FnOnce(&mut KeyHasher)) -> Digest {
        let mut k = KeyHasher::new();
        fill(&mut k);
        k.finish()
    }

    #[test]
    fn fields_are_length_prefixed_and_typed() {
        let ab_c = key(|k| {
            k.str("ab").str("c");
        });
        let a_bc = key(|k| {
            k.str("a").str("bc");
        });
        let abc = key(|k| {
            k.str("abc");
        });
        assert_ne!(ab_c, a_bc);
        assert_ne!(ab_c, abc);
        assert_ne!(a_bc, abc);
        // The same bytes as another type are another key.
        assert_ne!(
            key(|k| {
                k.str("1");
            }),
            key(|k| {
                k.bytes(b"1");
            })
        );
        assert_ne!(
            key(|k| {
                k.u64(1);
            }),
            key(|k| {
                k.bool(true);
            })
        );
        // Lists cannot trade items.
        let two_lists = |a: &[&str], b: &[&str]| {
            key(|k| {
                k.list(a.iter(), |k, s| {
                    k.str(s);
                })
                .list(b.iter(), |k, s| {
                    k.str(s);
                });
            })
        };
        assert_ne!(two_lists(&["x", "y"], &[]), two_lists(&["x"], &["y"]));
        // And it holds still.
        assert_eq!(
            ab_c,
            key(|k| {
                k.str("ab").str("c");
            })
        );
    }

    #[test]
    fn a_stream_is_its_length_and_hash() {
        let streamed = |bytes: &[u8]| {
            let mut k = KeyHasher::new();
            k.stream(bytes.len() as u64, bytes).unwrap();
            k.finish()
        };
        assert_eq!(streamed(b"abc"), streamed(b"abc"));
        assert_ne!(streamed(b"abc"), streamed(b"abd"));
        let mut k = KeyHasher::new();
        assert!(k.stream(4, &b"abc"[..]).is_err());
    }
}
