//! Block gzip: the archive as a run of independent gzip members, each saying in its header how
//! long it is, so both ends can work on several at once.
//!
//! Writing uses gzp's `Mgzip` format: every member carries an `IG` extra subfield with the size of
//! the whole member, and holds at most [`BLOCK_BYTES`] of input compressed by libdeflate. Any gzip
//! reader (`gzip -d`, Go's `compress/gzip` that Juju uses, Python's `tarfile`) reads the
//! concatenation as one stream and ignores the subfield.
//!
//! Reading ([`BlockGzReader`]) splits the stream at the sizes the headers give, without inflating
//! anything, and inflates up to `threads` members at once. The sizes come from the archive, so
//! they are hostile:
//! - a member larger than [`MAX_MEMBER`] or expanding past [`MAX_PLAIN`] is refused, which bounds
//!   memory at `2 x threads` members in flight;
//! - a member's deflate data must end exactly where its claimed size puts the trailer, and the
//!   trailer's CRC-32 and length must match what it inflated to. So the split is the one every
//!   gzip reader makes: bytes hidden after a deflate stream's end (which `gzip -d` and Juju would
//!   read as another member) cannot pass here unread. That is why the inflating is flate2's, which
//!   reports how much input it consumed, and not libdeflate's, which ignores trailing bytes.
//!
//! gzp's own reader is not used because it panics on a bad header and allocates whatever the
//! trailer claims. A stream that is not block gzip (Juju's
//! own archives, a member without the subfield) is read from that point on by flate2's
//! `MultiGzDecoder`, one member after another, as before.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;

/// Input bytes per member on the writing side.
pub const BLOCK_BYTES: usize = 1 << 20;
/// Largest member (header to trailer) the parallel reader accepts.
pub const MAX_MEMBER: usize = 4 << 20;
/// Largest uncompressed member the parallel reader accepts.
pub const MAX_PLAIN: usize = 4 << 20;

/// Header of a member as gzp's `Mgzip` writes it: the fixed ten bytes with only FEXTRA set, XLEN 8,
/// then subfield `IG` of length 4 holding the whole member's size.
const HEADER: usize = 20;
const TRAILER: usize = 8;

/// The whole member's size when `h` is a block-gzip header, else `None`.
fn member_size(h: &[u8; HEADER]) -> Option<usize> {
    let fixed = h[0] == 0x1f && h[1] == 0x8b && h[2] == 8 && h[3] == 4;
    let extra = u16::from_le_bytes([h[10], h[11]]) == 8
        && h[12] == b'I'
        && h[13] == b'G'
        && u16::from_le_bytes([h[14], h[15]]) == 4;
    let size = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
    (fixed && extra).then_some(size)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

type Inflated = io::Result<Vec<u8>>;

/// Inflates one whole member: its deflate data must fill it exactly up to the trailer, and
/// inflate to the trailer's length and CRC-32.
fn inflate(member: &[u8], d: &mut flate2::Decompress) -> Inflated {
    let (body, t) = member[HEADER..].split_at(member.len() - HEADER - TRAILER);
    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let plain = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
    if plain > MAX_PLAIN {
        return Err(invalid(format!(
            "a gzip member claims {plain} bytes uncompressed, more than the {MAX_PLAIN} a block holds"
        )));
    }
    // One byte of room beyond the claim, so inflating to more than it says is seen.
    let mut out = Vec::with_capacity(plain + 1);
    d.reset(false);
    let status = d
        .decompress_vec(body, &mut out, flate2::FlushDecompress::Finish)
        .map_err(|e| invalid(format!("corrupt gzip member: {e}")))?;
    if status != flate2::Status::StreamEnd || d.total_in() != body.len() as u64 {
        return Err(invalid(format!(
            "a gzip member's deflate data does not end where its header says ({} of {} bytes used)",
            d.total_in(),
            body.len()
        )));
    }
    if out.len() != plain || crc32fast::hash(&out) != crc {
        return Err(invalid(format!(
            "a gzip member inflates to {} bytes that do not match its trailer ({plain} bytes, CRC-32 {crc:08x})",
            out.len()
        )));
    }
    Ok(out)
}

struct Job {
    member: Vec<u8>,
    reply: mpsc::SyncSender<Inflated>,
}

/// Reads a gzip stream, in parallel where it is block gzip (see the module doc).
pub struct BlockGzReader<R: Read + Send + 'static> {
    /// The compressed stream, until it ends or turns out not to be block gzip.
    input: Option<R>,
    /// Members handed to the workers, oldest first.
    pending: VecDeque<mpsc::Receiver<Inflated>>,
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
    depth: usize,
    /// The member being served.
    current: Vec<u8>,
    pos: usize,
    /// The rest of a stream that is not block gzip.
    serial: Option<flate2::read::MultiGzDecoder<io::Chain<io::Cursor<Vec<u8>>, R>>>,
    /// Whether any member has been read (an empty input goes to flate2, which refuses it).
    started: bool,
}

impl<R: Read + Send + 'static> BlockGzReader<R> {
    pub fn new(input: R, threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || {
                    let mut d = flate2::Decompress::new(false);
                    loop {
                        let job = match queue.lock().map(|q| q.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        let _ = job.reply.send(inflate(&job.member, &mut d));
                    }
                })
            })
            .collect();
        BlockGzReader {
            input: Some(input),
            pending: VecDeque::new(),
            jobs: Some(jobs),
            workers,
            depth: 2 * threads,
            current: Vec::new(),
            pos: 0,
            serial: None,
            started: false,
        }
    }

    /// Reads the next member and hands it to a worker; `false` at the end of the block part.
    fn submit_next(&mut self) -> io::Result<bool> {
        let Some(input) = self.input.as_mut() else {
            return Ok(false);
        };
        let mut header = [0u8; HEADER];
        let got = read_up_to(input, &mut header)?;
        if got == 0 && self.started {
            self.input = None;
            return Ok(false);
        }
        self.started = true;
        let size = if got == HEADER {
            member_size(&header)
        } else {
            None
        };
        let Some(size) = size else {
            // Not block gzip from here on: the rest goes through the streaming decoder, after
            // the members already in flight.
            let input = self.input.take().expect("checked above");
            let head = io::Cursor::new(header[..got].to_vec());
            self.serial = Some(flate2::read::MultiGzDecoder::new(head.chain(input)));
            return Ok(false);
        };
        if !(HEADER + TRAILER..=MAX_MEMBER).contains(&size) {
            return Err(invalid(format!(
                "a gzip member claims to be {size} bytes long; block members are {} to {MAX_MEMBER}",
                HEADER + TRAILER
            )));
        }
        let mut member = vec![0u8; size];
        member[..HEADER].copy_from_slice(&header);
        input.read_exact(&mut member[HEADER..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("incomplete gzip member: the archive ends inside it (truncated?)".into())
            } else {
                e
            }
        })?;
        let (reply, result) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().expect("workers run until drop");
        jobs.send(Job { member, reply })
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.pending.push_back(result);
        Ok(true)
    }
}

impl<R: Read + Send + 'static> Read for BlockGzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.len().min(self.current.len() - self.pos);
                buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            while self.pending.len() < self.depth && self.submit_next()? {}
            match self.pending.pop_front() {
                Some(result) => {
                    self.current = result
                        .recv()
                        .map_err(|_| io::Error::other("gzip worker stopped"))??;
                    self.pos = 0;
                }
                None => {
                    return match self.serial.as_mut() {
                        Some(s) => s.read(buf),
                        None => Ok(0),
                    }
                }
            }
        }
    }
}

impl<R: Read + Send + 'static> Drop for BlockGzReader<R> {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn block_gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut w = super::super::segment::Compressor::new(
            super::super::segment::CompressSpec {
                compression: crate::archive::Compression::Gzip,
                level,
                threads: 2,
            },
            Vec::new(),
        )
        .unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] % 17)
            .collect()
    }

    fn read_all(bytes: Vec<u8>, threads: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        BlockGzReader::new(io::Cursor::new(bytes), threads).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn block_members_round_trip_and_plain_gzip_readers_read_them() {
        let data = sample(3 * BLOCK_BYTES + 12345);
        let gz = block_gzip(&data, 6);
        assert!(member_size(&gz[..HEADER].try_into().unwrap()).is_some());
        for threads in [1, 2, 4] {
            assert_eq!(read_all(gz.clone(), threads).unwrap(), data);
        }
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn plain_gzip_and_a_plain_tail_are_read_serially() {
        let data = sample(2 * BLOCK_BYTES);
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        plain.write_all(&data).unwrap();
        let plain = plain.finish().unwrap();
        assert_eq!(read_all(plain.clone(), 2).unwrap(), data);
        let mut mixed = block_gzip(&data, 6);
        mixed.extend_from_slice(&plain);
        let mut want = data.clone();
        want.extend_from_slice(&data);
        assert_eq!(read_all(mixed, 2).unwrap(), want);
        // No member at all is not a gzip stream.
        assert!(read_all(Vec::new(), 2).is_err());
    }

    #[test]
    fn hostile_members_are_refused_not_trusted() {
        let data = sample(BLOCK_BYTES + 99);
        let good = block_gzip(&data, 6);
        let first = member_size(&good[..HEADER].try_into().unwrap()).unwrap();
        // A flipped byte inside the deflate data or the CRC.
        for at in [HEADER + 100, first - 6] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(read_all(bad, 2).is_err(), "corruption at {at} accepted");
        }
        // A claimed size beyond the bound, or too small to hold a member.
        for size in [MAX_MEMBER as u32 + 1, u32::MAX, 3] {
            let mut bad = good.clone();
            bad[16..20].copy_from_slice(&size.to_le_bytes());
            let err = read_all(bad, 2).unwrap_err();
            assert!(err.to_string().contains("claims to be"), "{err}");
        }
        // A trailer claiming a huge plain size: refused before anything is allocated.
        let mut bad = good.clone();
        bad[first - 4..first].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_all(bad, 2).unwrap_err();
        assert!(err.to_string().contains("uncompressed"), "{err}");
        // Bytes hidden after the deflate data's end, inside the claimed size: another reader
        // would find them (here a whole second member), so they are refused, not skipped.
        let small = block_gzip(b"benign", 6);
        let hidden = block_gzip(b"hidden", 6);
        let mut smuggled = small[..small.len() - TRAILER].to_vec();
        smuggled.extend_from_slice(&small[small.len() - TRAILER..]);
        smuggled.extend_from_slice(&hidden);
        smuggled.extend_from_slice(&small[small.len() - TRAILER..]);
        let size = smuggled.len() as u32;
        smuggled[16..20].copy_from_slice(&size.to_le_bytes());
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&smuggled[..])
            .read_to_end(&mut plain)
            .ok();
        assert!(plain.starts_with(b"benignhidden"), "other readers see both");
        let err = read_all(smuggled, 2).unwrap_err();
        assert!(err.to_string().contains("does not end where"), "{err}");
        // A member size pointing past the end: truncation.
        let err = read_all(good[..first - 1].to_vec(), 2).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
