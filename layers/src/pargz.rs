//! Parallel gzip whose bytes do not depend on the thread count.
//!
//! Written by hand because no maintained crate gives this with the pure-Rust
//! backend: `gzp` needs a C zlib for its default features, and flate2's
//! single-stream encoder cannot use a second core. The scheme is pigz's: the
//! input is cut into fixed-size blocks, each block is deflated on its own with
//! a fresh compressor and ended with a sync flush (so it stops on a byte
//! boundary), and the blocks are concatenated in order followed by one empty
//! final block. Because the cut points depend only on the byte offsets, the
//! output is the same for any number of workers and any pattern of `write`
//! calls.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;

use flate2::{Compress, Compression, FlushCompress};

/// Uncompressed bytes per independently deflated block. Part of the output
/// format: changing it changes every layer digest.
pub const BLOCK_SIZE: usize = 1 << 20;
/// The deflate level. Part of the output format, as above.
pub const LEVEL: u32 = 6;
/// Recorded in layer annotations so a reader knows how the bytes were made.
pub const COMPRESSOR_ID: &str =
    "gzip;deflate=zlib-rs-0.6.8;level=6;block=1MiB;header-mtime=0;os=255";

/// Gzip header: magic, CM=deflate, no flags, MTIME 0, XFL 0, OS 255 (unknown),
/// as flate2 writes it, so the header never depends on the host.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty fixed-Huffman block: BFINAL=1, BTYPE=01, end-of-block.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A `Write` that gzips into `inner` using `workers` threads.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    block: Vec<u8>,
    crc: crc32fast::Hasher,
    total_in: u64,
    next_seq: u64,
    next_to_write: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Done>,
    workers: Vec<thread::JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl<W: Write> ParallelGzWriter<W> {
    /// `workers` threads compress; 0 means one per available core.
    pub fn new(mut inner: W, workers: usize) -> io::Result<Self> {
        let workers = if workers == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        inner.write_all(&GZIP_HEADER)?;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let handles = (0..workers)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                thread::spawn(move || loop {
                    let job = rx.lock().expect("job queue poisoned").recv();
                    let Ok((seq, data)) = job else { return };
                    if tx.send((seq, deflate_block(&data))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Ok(Self {
            inner,
            block: Vec::with_capacity(BLOCK_SIZE),
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            next_seq: 0,
            next_to_write: 0,
            pending: BTreeMap::new(),
            jobs: Some(job_tx),
            done: done_rx,
            workers: handles,
            in_flight: 0,
            // Bounds memory: at most this many blocks are queued, being
            // compressed or waiting to be written in order.
            max_in_flight: workers * 2 + 1,
        })
    }

    fn submit_block(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight += 1;
        self.jobs
            .as_ref()
            .expect("writer already finished")
            .send((seq, data))
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        // Write whatever is already finished, without waiting.
        while let Ok((seq, out)) = self.done.try_recv() {
            self.accept(seq, out)?;
        }
        Ok(())
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let (seq, out) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.accept(seq, out)
    }

    fn accept(&mut self, seq: u64, out: io::Result<Vec<u8>>) -> io::Result<()> {
        self.pending.insert(seq, out?);
        while let Some(bytes) = self.pending.remove(&self.next_to_write) {
            self.inner.write_all(&bytes)?;
            self.next_to_write += 1;
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Flushes every block, writes the gzip trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.submit_block()?;
        }
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        self.jobs = None; // workers see the closed queue and exit
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        self.inner.write_all(&FINAL_EMPTY_BLOCK)?;
        let crc = std::mem::take(&mut self.crc).finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        // ISIZE is the input length modulo 2^32, as RFC 1952 defines it.
        self.inner
            .write_all(&((self.total_in & 0xffff_ffff) as u32).to_le_bytes())?;
        self.inner.flush()?;
        let ParallelGzWriter { inner, .. } = self;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.crc.update(buf);
        self.total_in += n as u64;
        while !buf.is_empty() {
            let room = BLOCK_SIZE - self.block.len();
            let take = room.min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == BLOCK_SIZE {
                self.submit_block()?;
            }
        }
        Ok(n)
    }

    /// Only flushes the sink: an early deflate flush would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Raw deflate of one block, ending with a sync flush (an empty stored block)
/// so the next block starts on a byte boundary.
fn deflate_block(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = compress.total_in() as usize;
        compress
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        if compress.total_in() as usize == data.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64 * 1024));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x1234_5678u32;
        (0..len)
            .map(|i| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 7 < 4 {
                    b"abcdefgh"[(state >> 28) as usize % 8]
                } else {
                    (state >> 24) as u8
                }
            })
            .collect()
    }

    fn gz(data: &[u8], workers: usize, chunk: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), workers).unwrap();
        for part in data.chunks(chunk.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_through_a_standard_decoder() {
        for len in [0, 1, 1000, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 17] {
            let data = sample(len);
            let out = gz(&data, 2, 4096);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn bytes_do_not_depend_on_workers_or_write_sizes() {
        let data = sample(2 * BLOCK_SIZE + 12345);
        let reference = gz(&data, 1, data.len());
        assert_eq!(gz(&data, 2, 1), reference);
        assert_eq!(gz(&data, 3, 4097), reference);
        assert_eq!(gz(&data, 8, BLOCK_SIZE), reference);
    }
}
