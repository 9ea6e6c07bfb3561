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
//! Memory is bounded: at most [`DEPTH`] chunks of [`CHUNK`] bytes wait for the thread. If the
//! thread stops early (the bytes do not decode), feeding stops too and [`DecodeCheck::finish`]
//! returns its error; the writing goes on unharmed.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;

use super::segment::PlainSum;

/// Compressed bytes handed over at a time.
const CHUNK: usize = 256 << 10;
/// Chunks that may wait for the decoding thread.
const DEPTH: usize = 4;

/// What the compressed bytes decoded to: length and CRC-32 of the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub compressed: u64,
    pub plain_len: u64,
    pub plain_crc: u32,
}

/// The writer's end of the check.
pub struct DecodeCheck {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    thread: thread::JoinHandle<Result<Decoded, String>>,
}

impl DecodeCheck {
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let thread = thread::Builder::new()
            .name("decode-check".into())
            .spawn(move || decode(rx))?;
        Ok(DecodeCheck {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK),
            thread,
        })
    }

    /// The next compressed bytes, in the order they are written; handed over in chunks of at
    /// most [`CHUNK`] bytes however large the writes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while self.tx.is_some() && !bytes.is_empty() {
            let take = bytes.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == CHUNK {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        if let Some(tx) = &self.tx {
            if tx.send(chunk).is_err() {
                // The thread has stopped: its result says why.
                self.tx = None;
            }
        }
    }

    /// The end of the compressed bytes: waits for the thread and returns what they decoded to.
    pub fn finish(mut self) -> Result<Decoded, String> {
        if !self.buf.is_empty() {
            self.send();
        }
        drop(self.tx.take());
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the decoding thread panicked".into()))
    }
}

/// Reads the chunks as one stream, counting them.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    total: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(next) => (self.chunk, self.pos) = (next, 0),
                // The writer is done (or gone): end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.total += n as u64;
        Ok(n)
    }
}

/// Shares the count of compressed bytes the decoder has taken, which it keeps once boxed.
struct Counted {
    inner: ChunkReader,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen
            .store(self.inner.total, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

fn decode(rx: mpsc::Receiver<Vec<u8>>) -> Result<Decoded, String> {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let input = Counted {
        inner: ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            total: 0,
        },
        seen: seen.clone(),
    };
    let (mut plain, _) =
        super::reader::decompressor(Box::new(input)).map_err(|e| format!("cannot decode: {e}"))?;
    let mut sum = PlainSum::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("archive is damaged or truncated: {e}")),
        }
        // The bound `verify` and restore hold every archive to: one they would refuse must not
        // pass for verified here.
        let compressed = seen.load(std::sync::atomic::Ordering::Relaxed);
        let ratio = super::reader::DEFAULT_MAX_RATIO;
        if let Err(e) = super::reader::check_ratio(compressed, sum.len, ratio) {
            return Err(e.to_string());
        }
    }
    // Both decoders read their input to its end (a trailing byte is an error to them); `seen`
    // says how much that was.
    drop(plain);
    Ok(Decoded {
        compressed: seen.load(std::sync::atomic::Ordering::Relaxed),
        plain_len: sum.len,
        plain_crc: sum.crc(),
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

    #[test]
    fn damaged_or_cut_bytes_fail_and_feeding_goes_on() {
        let data = sample();
        let zst = zstd(&data);
        let mut flipped = zst.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
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
