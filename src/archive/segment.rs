//! Compressed members written straight to a file, each one a complete gzip member or zstd frame.
//!
//! Backup compresses `root.tar` as the files are read, into a staging file of such members, and
//! later copies those compressed bytes into the archive as they are (gzip members and zstd frames
//! concatenate: `gzip -d`, Go's `compress/gzip` that Juju uses, flate2's `MultiGzDecoder` and every
//! zstd decoder read them as one stream). A file that changes while it is read is written into a
//! member of its own ([`MemberFile::seal`] before it), so a torn read can be cut back off the
//! staging file ([`MemberFile::rollback`]) and read again.
//!
//! Every member's uncompressed bytes are counted and CRC-32'd as they go in, so verification can
//! check that what decodes is exactly what was written, without a second hash of the content.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

use gzp::deflate::Mgzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::ZWriter;

use crate::archive::Compression;

/// How an archive's compressor is set up (`[backup] compression`, `level`, `threads`).
#[derive(Debug, Clone, Copy)]
pub struct CompressSpec {
    pub compression: Compression,
    pub level: u32,
    /// Already resolved: at least 1.
    pub threads: usize,
}

/// zstd: the window (2^21 = 2 MiB, what level 3 uses anyway) and the size of the jobs the worker
/// threads take, chosen so that memory stays within a few MiB per thread at every level.
const ZSTD_WINDOW_LOG: u32 = 21;
/// Uncompressed bytes after which a staging file's member is sealed at the next point where it
/// may be ([`MemberFile::seal_if_long`]). A new member costs a few bytes and the history the
/// compressor had (2 MiB for zstd, 32 KiB for gzip): the 1 GiB benchmark's zstd archive came out
/// no larger (273.11 MB, against 273.15 MB with one member per file region).
pub const SEGMENT_BYTES: u64 = 16 << 20;
const ZSTD_JOB_BYTES: u32 = 2 << 20;

/// One compressor over `W`, producing one gzip member or zstd frame until finished.
pub enum Compressor<W: Write + Send + 'static> {
    /// Block gzip (see [`super::blockgz`]): independent members compressed by libdeflate.
    Gzip(ParCompress<'static, Mgzip, W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write + Send + 'static> Compressor<W> {
    pub fn new(spec: CompressSpec, sink: W) -> io::Result<Self> {
        Ok(match spec.compression {
            Compression::Gzip => Compressor::Gzip(
                ParCompressBuilder::<Mgzip>::new()
                    .num_threads(spec.threads)
                    .map_err(io::Error::other)?
                    .buffer_size(super::blockgz::BLOCK_BYTES)
                    .map_err(io::Error::other)?
                    .compression_level(flate2::Compression::new(spec.level))
                    .from_writer(sink),
            ),
            Compression::Zstd => {
                let mut enc = zstd::Encoder::new(sink, spec.level as i32)?;
                if spec.threads > 1 {
                    enc.multithread(spec.threads as u32)?;
                    enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
                }
                enc.window_log(ZSTD_WINDOW_LOG)?;
                enc.include_checksum(true)?;
                Compressor::Zstd(enc)
            }
        })
    }

    /// Ends the member (gzip trailer, zstd frame end) and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(mut w) => w.finish().map_err(io::Error::other),
            Compressor::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

/// Uncompressed length and CRC-32 of a stream, combinable across concatenated parts.
#[derive(Clone, Default)]
pub struct PlainSum {
    pub len: u64,
    pub crc: crc32fast::Hasher,
}

impl PlainSum {
    pub fn update(&mut self, buf: &[u8]) {
        self.len += buf.len() as u64;
        self.crc.update(buf);
    }
    /// `self` followed by `next`.
    pub fn append(&mut self, next: &PlainSum) {
        self.len += next.len;
        self.crc.combine(&next.crc);
    }
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

/// The staging file's side of a compressor: counts what reaches the file.
struct Sink {
    out: BufWriter<File>,
    written: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A staging file of compressed members (see the module doc).
pub struct MemberFile {
    file: File,
    spec: CompressSpec,
    current: Option<Compressor<Sink>>,
    /// Compressed bytes of the sealed members: where the current member starts.
    sealed_bytes: u64,
    sealed: PlainSum,
    pending: PlainSum,
    /// Where each sealed member ends, in compressed bytes from the start of the file.
    ends: Vec<u64>,
}

/// A finished staging file: compressed length and the uncompressed stream's sum.
pub struct Members {
    pub file: File,
    pub compressed: u64,
    pub plain: PlainSum,
    /// Where each member ends (the last one at `compressed`).
    pub ends: Vec<u64>,
}

impl MemberFile {
    /// gzip at level 7 on one thread; [`MemberFile::with`] chooses.
    pub fn new(file: File) -> Self {
        Self::with(
            file,
            CompressSpec {
                compression: Compression::Gzip,
                level: 7,
                threads: 1,
            },
        )
    }

    pub fn with(file: File, spec: CompressSpec) -> Self {
        MemberFile {
            file,
            spec,
            current: None,
            sealed_bytes: 0,
            sealed: PlainSum::default(),
            pending: PlainSum::default(),
            ends: Vec::new(),
        }
    }

    fn current(&mut self) -> io::Result<&mut Compressor<Sink>> {
        if self.current.is_none() {
            let sink = Sink {
                out: BufWriter::with_capacity(1 << 20, self.file.try_clone()?),
                written: 0,
            };
            self.current = Some(Compressor::new(self.spec, sink)?);
        }
        Ok(self.current.as_mut().expect("just set"))
    }

    /// Ends the current member, if anything was written to it: what came before can no longer be
    /// rolled back, what comes next can.
    pub fn seal(&mut self) -> io::Result<()> {
        if let Some(c) = self.current.take() {
            let mut sink = c.finish()?;
            sink.flush()?;
            self.sealed_bytes += sink.written;
            if sink.written > 0 {
                self.ends.push(self.sealed_bytes);
            }
            self.sealed.append(&self.pending);
            self.pending = PlainSum::default();
        }
        Ok(())
    }

    /// Seals the current member if it holds at least [`SEGMENT_BYTES`] uncompressed bytes. Called
    /// where a member may end (between tar entries), it keeps members short enough for the
    /// decoding that verifies the archive to share them out between threads.
    pub fn seal_if_long(&mut self) -> io::Result<()> {
        if self.pending.len >= SEGMENT_BYTES {
            self.seal()?;
        }
        Ok(())
    }

    /// Drops everything written since the last [`seal`](Self::seal).
    pub fn rollback(&mut self) -> io::Result<()> {
        if let Some(c) = self.current.take() {
            // Whatever the abandoned compressor still writes is cut off below.
            drop(c);
        }
        self.file.set_len(self.sealed_bytes)?;
        self.file.seek(SeekFrom::Start(self.sealed_bytes))?;
        self.pending = PlainSum::default();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<Members> {
        self.seal()?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok(Members {
            file: self.file,
            compressed: self.sealed_bytes,
            plain: self.sealed,
            ends: self.ends,
        })
    }
}

impl Write for MemberFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.current()?.write(buf)?;
        self.pending.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Releases the disk blocks of `file` in `[from, to)` (rounded inwards to 1 MiB): the staging copy
/// of what has already been copied into the archive stops taking space. Filesystems that cannot
/// punch holes simply keep the blocks until the file is removed.
///
/// Returns where the released part ends, the `from` of the next call: copying in pieces that do
/// not start on a MiB (they end where members do), each piece alone would release nothing.
pub fn release(file: &File, from: u64, to: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let start = from.div_ceil(MIB) * MIB;
    let end = to / MIB * MIB;
    if end <= start {
        return from;
    }
    let _ = nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(file),
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        start as i64,
        (end - start) as i64,
    );
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(bytes: &[u8], c: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::Gzip => flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap(),
            Compression::Zstd => zstd::Decoder::new(bytes)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap(),
        };
        out
    }

    #[test]
    fn rolled_back_members_leave_no_trace_and_the_rest_concatenates() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let spec = CompressSpec {
                compression,
                level: 3,
                threads: 2,
            };
            let mut m = MemberFile::with(tempfile::tempfile().unwrap(), spec);
            m.write_all(b"one ").unwrap();
            m.seal().unwrap();
            m.write_all(&vec![7u8; 3 << 20]).unwrap();
            m.rollback().unwrap();
            m.write_all(b"two ").unwrap();
            m.seal().unwrap();
            m.write_all(b"three").unwrap();
            let mut done = m.finish().unwrap();
            let mut bytes = Vec::new();
            done.file.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes.len() as u64, done.compressed);
            let plain = decode(&bytes, compression);
            assert_eq!(plain, b"one two three");
            let mut want = PlainSum::default();
            want.update(b"one two three");
            assert_eq!((done.plain.len, done.plain.crc()), (want.len, want.crc()));
        }
    }
}
