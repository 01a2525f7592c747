//! The parallel writer behind every codec: the input is cut into blocks of
//! the codec's fixed size, each block is compressed on its own by a pool of
//! workers, and the results are written in order between the codec's header
//! and trailer. Because the cut points depend only on the byte offsets, the
//! output is the same for any number of workers and any pattern of `write`
//! calls.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;

use crate::codec::Codec;
use crate::digest::{HashingWriter, LayerDigests};
use crate::LayerError;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A `Write` that compresses into `inner` with `codec`, using `workers`
/// threads. Memory: at most `2 * workers + 1` blocks in flight (queued,
/// being compressed or waiting for their turn), each of the codec's block
/// size (1 MiB for gzip, 4 MiB for zstd), and their compressed forms.
pub struct Encoder<W: Write> {
    codec: Codec,
    inner: W,
    block: Vec<u8>,
    block_size: usize,
    /// The CRC-32 of the whole input, for codecs whose trailer holds one.
    crc: Option<crc32fast::Hasher>,
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

impl<W: Write> Encoder<W> {
    /// `workers` threads compress; 0 means one per available core.
    pub fn new(codec: Codec, mut inner: W, workers: usize) -> io::Result<Self> {
        let workers = if workers == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        inner.write_all(codec.stream_header()?)?;
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
                    if tx.send((seq, codec.compress_frame(&data))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        let block_size = codec.frame_size();
        Ok(Self {
            codec,
            inner,
            block: Vec::with_capacity(block_size),
            block_size,
            crc: codec.trailer_has_crc().then(crc32fast::Hasher::new),
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
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(self.block_size));
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
            .map_err(|_| io::Error::other("compression worker stopped"))?;
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
            .map_err(|_| io::Error::other("compression worker stopped"))?;
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

    /// Flushes every block, writes the codec's trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let nothing_yet = self.next_seq == 0 && self.codec.needs_a_block();
        if !self.block.is_empty() || nothing_yet {
            self.submit_block()?;
        }
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        self.jobs = None; // workers see the closed queue and exit
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        let crc = self.crc.take().map(crc32fast::Hasher::finalize);
        self.inner
            .write_all(&self.codec.stream_trailer(crc, self.total_in))?;
        self.inner.flush()?;
        let Encoder { inner, .. } = self;
        Ok(inner)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        if let Some(crc) = &mut self.crc {
            crc.update(buf);
        }
        self.total_in += n as u64;
        while !buf.is_empty() {
            let room = self.block_size - self.block.len();
            let take = room.min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == self.block_size {
                self.submit_block()?;
            }
        }
        Ok(n)
    }

    /// Only flushes the sink: an early block would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Ends a layer written as tar → [`HashingWriter`] → [`Encoder`] →
/// [`HashingWriter`] → `sink`: flushes the encoder and returns both
/// digests (tar and blob) and the sink.
pub(crate) fn finish_layer<W: Write>(
    uncompressed: HashingWriter<Encoder<HashingWriter<W>>>,
) -> Result<(LayerDigests, W), LayerError> {
    let (diff_id, uncompressed_size, encoder) = uncompressed.finish_digest();
    let compressed = encoder.finish().map_err(LayerError::Write)?;
    let (digest, size, sink) = compressed.finish_digest();
    Ok((
        LayerDigests {
            diff_id,
            digest,
            size,
            uncompressed_size,
        },
        sink,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use crate::zstd;

    pub(crate) fn sample(len: usize) -> Vec<u8> {
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

    pub(crate) fn compress(codec: Codec, data: &[u8], workers: usize, chunk: usize) -> Vec<u8> {
        let mut w = Encoder::new(codec, Vec::new(), workers).unwrap();
        for part in data.chunks(chunk.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    /// A decoder that is not ours: flate2's single-member gzip reader, or
    /// libzstd's, which reads every frame of a stream.
    fn reference_decode(codec: Codec, stream: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        match codec {
            Codec::Gzip => {
                flate2::read::GzDecoder::new(stream)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Codec::Zstd => {
                zstd_safe::decompress(&mut out, stream).unwrap();
            }
        }
        out
    }

    #[test]
    fn round_trips_through_a_reference_decoder_and_ours() {
        for codec in Codec::ALL {
            let size = codec.frame_size();
            for len in [0, 1, 1000, size, size + 1, 2 * size + 17] {
                let data = sample(len);
                let out = compress(codec, &data, 2, 4096);
                assert_eq!(reference_decode(codec, &out, len), data, "{codec} {len}");
                let mut back = Vec::new();
                codec.decoder(&out[..]).read_to_end(&mut back).unwrap();
                assert_eq!(back, data, "{codec} {len}");
            }
        }
    }

    #[test]
    fn bytes_do_not_depend_on_workers_or_write_sizes() {
        for codec in Codec::ALL {
            let size = codec.frame_size();
            let data = sample(2 * size + 12345);
            let reference = compress(codec, &data, 1, data.len());
            assert_eq!(compress(codec, &data, 2, 1000), reference, "{codec}");
            assert_eq!(compress(codec, &data, 3, 4097), reference, "{codec}");
            assert_eq!(compress(codec, &data, 4, size), reference, "{codec}");
            assert_eq!(compress(codec, &data, 8, size + 1), reference, "{codec}");
        }
    }

    /// Every frame stands alone: it declares its content size and decodes by
    /// itself, with a fresh decoder, to its own slice of the input.
    #[test]
    fn zstd_frames_are_independent_and_sized() {
        let f = zstd::FRAME_SIZE;
        let data = sample(3 * f + 4321);
        let mut rest = &compress(Codec::Zstd, &data, 2, 65536)[..];
        let mut offset = 0;
        while !rest.is_empty() {
            let len = zstd_safe::find_frame_compressed_size(rest).unwrap();
            let (frame, tail) = rest.split_at(len);
            let size = zstd_safe::get_frame_content_size(frame).unwrap().unwrap() as usize;
            assert_eq!(size, f.min(data.len() - offset));
            let expected = &data[offset..offset + size];
            assert_eq!(reference_decode(Codec::Zstd, frame, size), expected);
            let mut ours = Vec::new();
            Codec::Zstd.decoder(frame).read_to_end(&mut ours).unwrap();
            assert_eq!(ours, expected);
            offset += size;
            rest = tail;
        }
        assert_eq!(offset, data.len());
    }
}
