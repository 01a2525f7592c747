//! Throughput of the layer writers, for each codec (gzip, zstd) with 1 and 2
//! workers, into `io::sink()`:
//!
//! - `write_32mib_tree`: `LayerTree::write` of a generated in-memory tree
//!   (32 MiB of file contents: ~2,400 files of 1–16 KiB plus three of
//!   2–6 MiB). Throughput is counted in bytes of file contents (tar headers
//!   and padding are not counted). The contents are deterministic (seeded
//!   PRNG): runs of words from a small vocabulary mixed with runs of random
//!   bytes, which gzip -6 shrinks to roughly 40% of their size, like a mix of
//!   source code and binaries.
//! - `import_tar`: `compress_existing_tar` of a real tar when
//!   `LAYER_BENCH_TAR` names one (say a Python site-packages layer, as
//!   `zcat` of a cached dependency layer gives), else of the tree above as a
//!   tar; counted in bytes of tar. It is read into memory once.
//!
//! Run with `cargo bench -p dallinger-oci-layers`; the compressed size of each
//! input with each codec is printed first. The generated tree is kept small
//! so one sample at 1 worker takes well under a second even on a slow core
//! (zlib-rs at level 6 does ~60 MB/s per core).

use std::io::{self, Read};
use std::sync::LazyLock;

use dallinger_oci_layers::{compress_existing_tar, Codec, Content, LayerTree, WriteOptions};
use divan::counter::BytesCount;
use divan::Bencher;

const MIB: usize = 1 << 20;
/// Contents of the small files, in total.
const SMALL_TOTAL: usize = 20 * MIB;
/// The large files, 12 MiB together.
const LARGE_SIZES: [usize; 3] = [2 * MIB, 4 * MIB, 6 * MIB];
/// Material the files are cut from; larger than gzip's 32 KiB window, so
/// repeated slices are not found by the compressor.
const POOL_SIZE: usize = 8 * MIB;

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "layer", "image", "file", "return", "self", "let", "mut", "impl", "for", "while",
    "match", "Some", "None", "Ok", "Err", "fn", "pub", "struct", "enum", "use", "std", "io",
    "write", "read", "path", "digest", "sha256", "config", "manifest", "blob", "index", "tar",
    "gzip", "entry", "header", "mode", "0o644", "0o755", "experiment", "participant", "network",
    "node", "info", "vector", "question", "bot", "recruiter", "server", "import", "from", "def",
    "class", "if", "else", "elif", "in", "not", "and", "or", "True", "False", "print", "lambda",
    "yield", "async", "await", "{", "}", "(", ")", "[", "]", ";", ":", "=", "==", "->", "=>",
    "\n", "\n    ", "\n        ", "//", "#", "\"", "'", ",", ".", "0", "1", "42", "1024",
];

/// splitmix64: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// Text runs of 64–512 bytes alternating with random runs of 8–96 bytes.
fn pool(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(POOL_SIZE + 1024);
    while out.len() < POOL_SIZE {
        let text_end = out.len() + rng.range(64, 512);
        while out.len() < text_end {
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            out.push(b' ');
        }
        for _ in 0..rng.range(1, 12) {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
    }
    out.truncate(POOL_SIZE);
    out
}

fn slice(rng: &mut Rng, pool: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let start = rng.below(pool.len());
        let take = (len - out.len()).min(pool.len() - start).min(64 * 1024);
        out.extend_from_slice(&pool[start..start + take]);
    }
    out
}

struct Fixture {
    tree: LayerTree,
    content_bytes: usize,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut rng = Rng(0xda11_1196_e500_00c1);
    let pool = pool(&mut rng);
    let mut tree = LayerTree::new();
    let mut content_bytes = 0;
    let mut i = 0;
    while content_bytes < SMALL_TOTAL {
        let len = rng.range(1024, 16 * 1024);
        let path = format!("app/d{:02}/s{}/f{i:05}.txt", i % 64, (i / 64) % 8);
        tree.add_file(
            &path,
            Content::Bytes(slice(&mut rng, &pool, len)),
            i % 9 == 0,
        )
        .expect("valid path");
        content_bytes += len;
        i += 1;
    }
    for (n, &len) in LARGE_SIZES.iter().enumerate() {
        let path = format!("opt/big/blob{n}.bin");
        tree.add_file(&path, Content::Bytes(slice(&mut rng, &pool, len)), false)
            .expect("valid path");
        content_bytes += len;
    }
    tree.add_symlink("app/current", "d00").expect("valid link");
    Fixture {
        tree,
        content_bytes,
    }
});

fn write_tree(bencher: Bencher, codec: Codec, workers: usize) {
    let fixture = &*FIXTURE;
    let options = WriteOptions {
        mtime: 0,
        workers,
        codec,
    };
    bencher
        .counter(BytesCount::new(fixture.content_bytes))
        .bench(|| {
            fixture
                .tree
                .write(&options, io::sink())
                .expect("layer written")
                .0
        });
}

mod write_32mib_tree {
    use super::*;

    #[divan::bench(args = [1, 2], sample_count = 3, sample_size = 1)]
    fn gzip(bencher: Bencher, workers: usize) {
        write_tree(bencher, Codec::Gzip, workers);
    }

    #[divan::bench(args = [1, 2], sample_count = 3, sample_size = 1)]
    fn zstd(bencher: Bencher, workers: usize) {
        write_tree(bencher, Codec::Zstd, workers);
    }
}

/// The tar `import_tar` compresses: `LAYER_BENCH_TAR`'s, or the tree's.
static TAR: LazyLock<(String, Vec<u8>)> =
    LazyLock::new(|| match std::env::var("LAYER_BENCH_TAR") {
        Ok(path) => {
            let tar =
                std::fs::read(&path).unwrap_or_else(|e| panic!("LAYER_BENCH_TAR={path}: {e}"));
            (path, tar)
        }
        Err(_) => {
            let options = WriteOptions {
                mtime: 0,
                workers: 0,
                codec: Codec::Gzip,
            };
            let (_, gz) = FIXTURE
                .tree
                .write(&options, Vec::new())
                .expect("layer written");
            let mut tar = Vec::new();
            Codec::Gzip
                .decoder(&gz[..])
                .read_to_end(&mut tar)
                .expect("own layer reads back");
            ("the generated tree".into(), tar)
        }
    });

fn import(bencher: Bencher, codec: Codec, workers: usize) {
    let tar = &TAR.1;
    bencher.counter(BytesCount::new(tar.len())).bench(|| {
        compress_existing_tar("bench.tar", &tar[..], io::sink(), codec, workers)
            .expect("tar imported")
            .0
    });
}

mod import_tar {
    use super::*;

    #[divan::bench(args = [1, 2], sample_count = 3, sample_size = 1)]
    fn gzip(bencher: Bencher, workers: usize) {
        import(bencher, Codec::Gzip, workers);
    }

    #[divan::bench(args = [1, 2], sample_count = 3, sample_size = 1)]
    fn zstd(bencher: Bencher, workers: usize) {
        import(bencher, Codec::Zstd, workers);
    }
}

/// Prints each input's shape and compressed size per codec once (these
/// writes also warm the fixtures up), except when only listing or
/// smoke-testing the benches.
fn print_fixture_stats() {
    let fixture = &*FIXTURE;
    eprintln!(
        "tree: {} entries, {} content bytes",
        fixture.tree.len(),
        fixture.content_bytes,
    );
    let (name, tar) = &*TAR;
    eprintln!("import_tar input: {name}, {} bytes", tar.len());
    for codec in Codec::ALL {
        let options = WriteOptions {
            mtime: 0,
            workers: 0,
            codec,
        };
        let (tree, _) = fixture
            .tree
            .write(&options, io::sink())
            .expect("layer written");
        let (imported, _) = compress_existing_tar("bench.tar", &tar[..], io::sink(), codec, 0)
            .expect("tar imported");
        for (what, d) in [("tree", tree), ("import_tar input", imported)] {
            eprintln!(
                "{what}: tar {} bytes, {codec} {} bytes (ratio {:.3})",
                d.uncompressed_size,
                d.size,
                d.size as f64 / d.uncompressed_size as f64,
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list") {
        print_fixture_stats();
    }
    divan::main();
}
