//! Decompresses an archive's bytes on a thread of its own while they are being written
//! (`backup.verify_after`), so the decoding that verification needs overlaps the writing instead
//! of following it as a second read of the finished file.
//!
//! The writer hands every compressed byte it writes (and hashes) to [`DecodeCheck::feed`]; the
//! thread decodes them with the same decoders `verify` uses and sums what comes out. What this
//! proves is about the bytes as written; `verify::verify_written` then reads the file back and
//! requires the same size and digest (BLAKE3, computed beside the sidecar's SHA-256), which ties
//! the proof to the bytes on disk.
//!
//! The writer marks where compressed members end ([`DecodeCheck::cut`]); the segments between
//! are decoded by [`WORKERS`] threads in turn, and their sums are joined in order.
//!
//! Memory is bounded: at most [`DEPTH`] chunks of [`CHUNK`] bytes wait per segment, and at most
//! two segments per thread are open (16 MiB in all). If a thread stops early (the bytes do not decode), feeding
//! stops too and [`DecodeCheck::finish`] returns the first error in the stream's order; the
//! writing goes on unharmed.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use super::reader::{check_ratio, ratio_allowance, DEFAULT_MAX_RATIO};
use super::segment::PlainSum;

/// Compressed bytes handed over at a time.
const CHUNK: usize = 256 << 10;
/// Chunks that may wait for a decoding thread, per segment: 4 MiB, about a whole segment of a
/// state-server's data ([`super::segment::SEGMENT_BYTES`] uncompressed), so the writer can hand
/// one segment over while the thread still decodes the one before, and go on to the next thread.
const DEPTH: usize = 16;
/// Decoding threads. A segment (see [`DecodeCheck::cut`]) is decoded whole by one of them, the
/// one with the least work waiting: two keep both cores of a small state-server busy while the
/// writer copies staged members, where one left a core idle.
const WORKERS: usize = 2;

/// What the compressed bytes decoded to: length and CRC-32 of the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub compressed: u64,
    pub plain_len: u64,
    pub plain_crc: u32,
}

/// The writer's end of the check.
pub struct DecodeCheck {
    workers: Vec<Worker>,
    /// Segments handed out so far: the next one's number.
    segments: usize,
    /// The open segment's bytes, on their way to its worker.
    segment: Option<mpsc::SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    /// Compressed bytes fed so far: where the next segment starts.
    fed: u64,
    /// A worker has stopped (the bytes do not decode): its result says why; feeding stops.
    stopped: bool,
}

struct Worker {
    tx: Option<mpsc::SyncSender<Segment>>,
    /// Segments handed to it and not yet decoded.
    queued: Arc<AtomicU64>,
    thread: thread::JoinHandle<Decodings>,
}

/// One segment for a worker: its number, where it starts in the compressed stream, its bytes.
struct Segment {
    index: usize,
    start: u64,
    rx: mpsc::Receiver<Vec<u8>>,
}

/// What one segment decoded to.
struct Part {
    compressed: u64,
    plain: PlainSum,
    /// The largest `plain - max_ratio * compressed` seen within the segment (both counted from
    /// its start): enough to apply the ratio bound to the whole stream once the parts before it
    /// are known.
    excess: i128,
}

/// A worker's segments by number, and the error that stopped it, with the segment's number.
struct Decodings {
    parts: Vec<(usize, Part)>,
    failed: Option<(usize, String)>,
}

impl DecodeCheck {
    pub fn start() -> io::Result<Self> {
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            // One segment may wait while the worker decodes another.
            let (tx, rx) = mpsc::sync_channel(1);
            let queued = Arc::new(AtomicU64::new(0));
            let count = queued.clone();
            let thread = thread::Builder::new()
                .name("decode-check".into())
                .spawn(move || work(rx, &count))?;
            workers.push(Worker {
                tx: Some(tx),
                queued,
                thread,
            });
        }
        Ok(DecodeCheck {
            workers,
            segments: 0,
            segment: None,
            buf: Vec::with_capacity(CHUNK),
            fed: 0,
            stopped: false,
        })
    }

    /// The next compressed bytes, in the order they are written; handed over in chunks of at
    /// most [`CHUNK`] bytes however large the writes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.stopped && !bytes.is_empty() {
            if self.segment.is_none() {
                self.open_segment();
                continue;
            }
            let take = bytes.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.fed += take as u64;
            if self.buf.len() == CHUNK {
                self.send();
            }
        }
    }

    /// The bytes fed so far end a compressed member (gzip member or zstd frame), and the next
    /// ones start another: what follows may be decoded apart from what came before, on another
    /// thread. The writer cuts where it knows members end; without cuts the whole stream is one
    /// segment, decoded by one thread.
    pub fn cut(&mut self) {
        if self.segment.is_some() {
            self.send();
            self.segment = None;
        }
    }

    fn open_segment(&mut self) {
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let segment = Segment {
            index: self.segments,
            start: self.fed,
            rx,
        };
        self.segments += 1;
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.queued.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.queued.fetch_add(1, Ordering::Relaxed);
        let sent = worker.tx.as_ref().is_some_and(|w| w.send(segment).is_ok());
        if sent {
            self.segment = Some(tx);
        } else {
            self.stopped = true;
        }
    }

    fn send(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        if let Some(tx) = &self.segment {
            if tx.send(chunk).is_err() {
                // The worker has stopped: its result says why.
                self.stopped = true;
                self.segment = None;
            }
        }
    }

    /// The end of the compressed bytes: waits for the threads and returns what the bytes decoded
    /// to, or the first failure in the stream's order.
    pub fn finish(mut self) -> Result<Decoded, String> {
        self.cut();
        let mut results = Vec::with_capacity(self.workers.len());
        for mut w in self.workers.drain(..) {
            drop(w.tx.take());
            let done = w.thread.join().unwrap_or_else(|_| Decodings {
                parts: Vec::new(),
                failed: Some((usize::MAX, "the decoding thread panicked".into())),
            });
            results.push(done);
        }
        merge(results)
    }
}

/// The workers' parts in the stream's order, summed, with the ratio bound applied to every prefix
/// of the whole stream as one decoder would have.
fn merge(results: Vec<Decodings>) -> Result<Decoded, String> {
    let mut parts = std::collections::BTreeMap::new();
    let mut failures = std::collections::BTreeMap::new();
    for r in results {
        parts.extend(r.parts);
        failures.extend(r.failed);
    }
    let (mut compressed, mut plain) = (0u64, PlainSum::default());
    for k in 0.. {
        let Some(part) = parts.remove(&k) else {
            break;
        };
        let allowed = ratio_allowance(compressed, DEFAULT_MAX_RATIO) as i128;
        if plain.len as i128 + part.excess > allowed {
            return Err(ratio_error());
        }
        compressed += part.compressed;
        plain.append(&part.plain);
    }
    // The first failure in the stream's order; any later one may only be the feeding stopping.
    if let Some((_, e)) = failures.into_iter().next() {
        return Err(e);
    }
    Ok(Decoded {
        compressed,
        plain_len: plain.len,
        plain_crc: plain.crc(),
    })
}

fn ratio_error() -> String {
    check_ratio(0, u64::MAX, DEFAULT_MAX_RATIO)
        .expect_err("beyond any bound")
        .to_string()
}

/// A worker: decodes its segments one after another.
fn work(rx: mpsc::Receiver<Segment>, queued: &AtomicU64) -> Decodings {
    let mut parts = Vec::new();
    for segment in rx.iter() {
        let index = segment.index;
        let decoded = decode(segment);
        queued.fetch_sub(1, Ordering::Relaxed);
        match decoded {
            Ok(part) => parts.push((index, part)),
            Err(e) => {
                return Decodings {
                    parts,
                    failed: Some((index, e)),
                }
            }
        }
    }
    Decodings {
        parts,
        failed: None,
    }
}

/// Reads a segment's chunks as one stream, counting them.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    seen: Arc<AtomicU64>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(next) => (self.chunk, self.pos) = (next, 0),
                // The segment is over (or the writer gone): end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.seen.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn decode(segment: Segment) -> Result<Part, String> {
    // The decoder keeps the reader once boxed; the count of what it took is shared.
    let seen = Arc::new(AtomicU64::new(0));
    let input = ChunkReader {
        rx: segment.rx,
        chunk: Vec::new(),
        pos: 0,
        seen: seen.clone(),
    };
    let (mut plain, _) =
        super::reader::decompressor(Box::new(input)).map_err(|e| format!("cannot decode: {e}"))?;
    let mut sum = PlainSum::default();
    let mut excess = i128::MIN;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("archive is damaged or truncated: {e}")),
        }
        // The bound `verify` and restore hold every archive to: one they would refuse must not
        // pass for verified here. Exactly, once the parts before are known (`merge`); here, the
        // plain bytes before this segment counted as none, which stops a bomb early.
        let compressed = seen.load(Ordering::Relaxed);
        let r = DEFAULT_MAX_RATIO as i128;
        excess = excess.max(sum.len as i128 - r * compressed as i128);
        check_ratio(segment.start + compressed, sum.len, DEFAULT_MAX_RATIO)
            .map_err(|e| e.to_string())?;
    }
    // Both decoders read their input to its end (a trailing byte is an error to them); `seen`
    // says how much that was.
    drop(plain);
    Ok(Part {
        compressed: seen.load(Ordering::Relaxed),
        plain: sum,
        excess,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sum(bytes: &[u8]) -> (u64, u32) {
        let mut s = PlainSum::default();
        s.update(bytes);
        (s.len, s.crc())
    }

    fn check(bytes: &[u8], pieces: usize) -> Result<Decoded, String> {
        let mut c = DecodeCheck::start().unwrap();
        for part in bytes.chunks(bytes.len().div_ceil(pieces).max(1)) {
            c.feed(part);
        }
        c.finish()
    }

    /// zstd as the writer makes it: with the frame checksum.
    fn zstd(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// `bytes` with one bit of the middle byte flipped.
    fn flipped_in_the_middle(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
        v
    }

    fn sample() -> Vec<u8> {
        (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8)
            .collect()
    }

    #[test]
    fn what_was_written_is_what_decodes() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd(&data);
        for (bytes, pieces) in [(&gz, 1), (&gz, 977), (&zst, 3), (&zst, 10_000)] {
            let got = check(bytes, pieces).unwrap();
            assert_eq!((got.plain_len, got.plain_crc), sum(&data));
            assert_eq!(got.compressed, bytes.len() as u64);
        }
    }

    /// What verify and restore would refuse as a compression bomb fails here too.
    #[test]
    fn past_the_ratio_restore_accepts_it_fails() {
        let zeros = vec![0u8; 80 << 20];
        let err = check(&zstd(&zeros), 7).unwrap_err();
        assert!(err.contains("beyond 200:1"), "{err}");
        // Below the floor small archives may reach, it passes.
        assert!(check(&zstd(&zeros[..60 << 20]), 7).is_ok());
    }

    /// One large write is handed over in bounded chunks, and still whole.
    #[test]
    fn large_writes_are_handed_over_in_chunks() {
        let data = sample();
        let zst = zstd(&data);
        let mut c = DecodeCheck::start().unwrap();
        c.feed(&zst);
        assert!(c.buf.len() < CHUNK && c.buf.capacity() <= CHUNK);
        let got = c.finish().unwrap();
        assert_eq!((got.plain_len, got.plain_crc), sum(&data));
    }

    /// Segments fed with cuts between them: decoded by different threads, joined in order.
    fn check_segments(segments: &[Vec<u8>], pieces: usize) -> Result<Decoded, String> {
        let mut c = DecodeCheck::start().unwrap();
        for seg in segments {
            for part in seg.chunks(seg.len().div_ceil(pieces).max(1)) {
                c.feed(part);
            }
            c.cut();
        }
        c.finish()
    }

    #[test]
    fn segments_decoded_apart_join_to_the_whole() {
        let data = sample();
        for codec in [zstd as fn(&[u8]) -> Vec<u8>, gzip] {
            // Uneven sizes, an empty cut, many more segments than threads.
            let bounds = [
                0, 10, 700_000, 700_001, 2_500_000, 2_600_000, 4_999_999, 5_000_000,
            ];
            let segments: Vec<Vec<u8>> = bounds
                .windows(2)
                .map(|b| codec(&data[b[0]..b[1]]))
                .collect();
            let total: usize = segments.iter().map(Vec::len).sum();
            for pieces in [1, 3, 1000] {
                let got = check_segments(&segments, pieces).unwrap();
                assert_eq!((got.plain_len, got.plain_crc), sum(&data));
                assert_eq!(got.compressed, total as u64);
            }
            // A cut inside a member is a member cut short: the check fails.
            let whole = codec(&data);
            let (a, b) = whole.split_at(whole.len() / 2);
            assert!(check_segments(&[a.to_vec(), b.to_vec()], 5).is_err());
        }
    }

    /// Each segment alone is below the bound, the stream is not: the bound holds for the whole.
    #[test]
    fn the_ratio_bound_spans_segments() {
        let zeros = zstd(&vec![0u8; 40 << 20]);
        let err = check_segments(&[zeros.clone(), zeros.clone()], 3).unwrap_err();
        assert!(err.contains("beyond 200:1"), "{err}");
        assert!(check_segments(&[zeros], 3).is_ok());
    }

    /// The first damaged segment is what the check reports, whichever thread got it.
    #[test]
    fn the_first_failure_in_the_stream_is_reported() {
        let data = sample();
        let good = zstd(&data);
        let bad = flipped_in_the_middle(&good);
        let segments = [good.clone(), bad, b"not an archive".to_vec(), good];
        let err = check_segments(&segments, 20).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn damaged_or_cut_bytes_fail_and_feeding_goes_on() {
        let data = sample();
        let zst = zstd(&data);
        let flipped = flipped_in_the_middle(&zst);
        // Many more bytes than the channel holds after the thread has given up: no hang.
        let mut long = flipped.clone();
        long.extend(std::iter::repeat_n(0u8, 40 << 20));
        for bad in [&flipped, &long, &b"not an archive".to_vec()] {
            let err = check(bad, 50).unwrap_err();
            assert!(
                err.contains("damaged") || err.contains("cannot decode"),
                "{err}"
            );
        }
        // A zstd frame cut short may decode without complaint: what it decodes to differs,
        // which `verify_written` compares with what was written.
        match check(&zst[..zst.len() - 7], 50) {
            Err(e) => assert!(e.contains("damaged"), "{e}"),
            Ok(d) => assert_ne!((d.plain_len, d.plain_crc), sum(&data)),
        }
    }
}
