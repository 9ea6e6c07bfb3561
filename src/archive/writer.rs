//! Writes one compressed archive safely: into `NAME.part` (mode 0600, created exclusively), fsync,
//! rename to `NAME`, fsync the directory, then the `NAME.sha256` sidecar the same way.
//!
//! A writer that is dropped before `finish` removes its `.part`, so a failed backup leaves nothing
//! that looks like an archive. A crash can leave a `.part`, which listing ignores and the daemon
//! removes at start-up.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::decode_check::{DecodeCheck, Decoded};
use super::encryption::Recipients;
use super::name::{ArchiveName, PART_SUFFIX};
use super::segment::{CompressSpec, Compressor, PlainSum};
use super::sidecar::{self, Listing};
use super::writeback::Writeback;

/// What a finished archive is, as written.
#[derive(Debug, Clone)]
pub struct WrittenArchive {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// BLAKE3 of the same bytes. Reading the archive back after a backup compares against this
    /// instead of the SHA-256: as strong a proof that the file holds what was written, at a
    /// fraction of the cost (the sidecar keeps the SHA-256, which Juju's tools know).
    pub blake3: String,
    /// Length and CRC-32 of the uncompressed tar stream that went into the compressor.
    pub plain_len: u64,
    pub plain_crc: u32,
    /// What the bytes decoded to as they were written, when [`ArchiveWriter::decode_as_written`]
    /// asked for it.
    pub decoded: Option<Result<Decoded, String>>,
}

/// The compressed bytes go through here on their way to disk, so the sidecar's checksum costs no
/// second read of the archive.
pub(crate) struct HashingFile {
    out: BufWriter<File>,
    hash: Sha256,
    quick: blake3::Hasher,
    bytes: u64,
    check: Option<DecodeCheck>,
    writeback: Writeback,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.quick.update(&buf[..n]);
        self.bytes += n as u64;
        self.writeback.wrote(n as u64);
        if let Some(c) = &mut self.check {
            c.feed(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl HashingFile {
    /// A compressed member ends here (see [`DecodeCheck::cut`]).
    fn cut(&mut self) {
        if let Some(c) = &mut self.check {
            c.cut();
        }
    }
}

/// Between the compressor and the file: plain, or an age stream when the archive is encrypted.
/// The sidecar's checksum is over what reaches the disk (the ciphertext when sealed).
pub(crate) enum Sealed {
    Plain(HashingFile),
    Age(age::stream::StreamWriter<HashingFile>),
}

impl Write for Sealed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

impl Sealed {
    /// A compressed member ends here. (An encrypted archive is decoded after it is written.)
    fn cut(&mut self) {
        if let Sealed::Plain(w) = self {
            w.cut();
        }
    }

    fn finish(self) -> io::Result<HashingFile> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

/// The archive's uncompressed tar stream on its way to the sink: one compressed member at a time
/// (a new one starts after a precompressed part is copied in), with the sum of every byte.
pub(crate) struct Stream {
    spec: CompressSpec,
    current: Option<Compressor<Sealed>>,
    sink: Option<Sealed>,
    plain: PlainSum,
}

impl Stream {
    fn sink(&mut self) -> io::Result<&mut Sealed> {
        if let Some(c) = self.current.take() {
            self.sink = Some(c.finish()?);
        }
        Ok(self.sink.as_mut().expect("sink present between members"))
    }

    fn finish(mut self) -> io::Result<(HashingFile, PlainSum)> {
        self.sink()?;
        let sink = self.sink.take().expect("sink");
        Ok((sink.finish()?, self.plain))
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.current.is_none() {
            let sink = self.sink.take().expect("sink present between members");
            self.current = Some(Compressor::new(self.spec, sink)?);
        }
        let n = self.current.as_mut().expect("just set").write(buf)?;
        self.plain.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some(c) => c.flush(),
            None => Ok(()),
        }
    }
}

pub struct ArchiveWriter {
    dir: PathBuf,
    name: ArchiveName,
    part: PathBuf,
    tar: Option<tar::Builder<Stream>>,
    mtime: u64,
    listing: Option<Listing>,
}

/// Number of compression threads to use for `threads = 0`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ArchiveWriter {
    /// `recipients` must be given exactly when `name` is an encrypted archive's name.
    pub fn create(
        dir: &Path,
        name: ArchiveName,
        level: u32,
        threads: usize,
        recipients: Option<&Recipients>,
    ) -> io::Result<ArchiveWriter> {
        assert_eq!(
            name.encrypted,
            recipients.is_some(),
            "name and sealing disagree"
        );
        let part = dir.join(format!("{name}{PART_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", part.display())))?;
        let writeback = Writeback::start(&file)?;
        let file = HashingFile {
            writeback,
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            quick: blake3::Hasher::new(),
            bytes: 0,
            check: None,
        };
        let sink = match recipients {
            Some(r) => Sealed::Age(r.seal(file)?),
            None => Sealed::Plain(file),
        };
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        let compressor = Stream {
            spec: CompressSpec {
                compression: name.compression,
                level,
                threads,
            },
            current: None,
            sink: Some(sink),
            plain: PlainSum::default(),
        };
        let mut tar = tar::Builder::new(compressor);
        tar.mode(tar::HeaderMode::Complete);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(ArchiveWriter {
            dir: dir.to_path_buf(),
            name,
            part,
            tar: Some(tar),
            mtime,
            listing: None,
        })
    }

    /// What the sidecar records for listing the archive without opening it.
    pub fn set_listing(&mut self, listing: Listing) {
        self.listing = Some(listing);
    }

    /// Decodes the compressed bytes on a thread of its own as they are written (see
    /// [`super::decode_check`]); the result comes back in [`WrittenArchive::decoded`]. Call it
    /// before anything is appended. A sealed archive is not decoded this way: what reaches its
    /// file is ciphertext.
    pub fn decode_as_written(&mut self) -> io::Result<()> {
        let stream = self.tar().get_mut();
        assert!(stream.current.is_none(), "decode_as_written before writing");
        if let Some(Sealed::Plain(file)) = stream.sink.as_mut() {
            assert_eq!(file.bytes, 0, "decode_as_written before writing");
            file.check = Some(DecodeCheck::start()?);
        }
        Ok(())
    }

    pub fn name(&self) -> &ArchiveName {
        &self.name
    }

    fn header(&self, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(self.mtime);
        h.set_uid(nix::unistd::getuid().as_raw() as u64);
        h.set_gid(nix::unistd::getgid().as_raw() as u64);
        h
    }

    fn tar(&mut self) -> &mut tar::Builder<Stream> {
        self.tar.as_mut().expect("writer used after finish")
    }

    pub fn append_dir(&mut self, path: &str) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0, 0o700);
        self.tar().append_data(&mut h, path, io::empty())
    }

    pub fn append_bytes(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, data.len() as u64, 0o600);
        self.tar().append_data(&mut h, path, data)
    }

    /// Appends exactly `size` bytes read from `src`; a short source is an error, never a short entry.
    pub fn append_reader(&mut self, path: &str, size: u64, src: impl io::Read) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, size, 0o600);
        let mut exact = src.take(size);
        self.tar().append_data(&mut h, path, &mut exact)?;
        if exact.limit() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: source ended {} bytes early", exact.limit()),
            ));
        }
        Ok(())
    }

    /// Appends the member `path` of `size` bytes whose content begins already compressed in
    /// `head` (see [`super::segment`]): its header goes through the compressor, then `head`'s
    /// compressed bytes are copied into the archive as they are, releasing the staging file's
    /// blocks as they go, then the rest of the content is read from `rest` and compressed, then
    /// the tar padding. A short `rest` is an error, never a short entry.
    pub fn append_compressed(
        &mut self,
        path: &str,
        size: u64,
        head: &mut super::segment::Members,
        rest: impl io::Read,
        progress: &dyn Fn(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        assert!(head.plain.len <= size, "the head is part of the content");
        let mut h = self.header(tar::EntryType::Regular, size, 0o600);
        // The header alone (any length of name: a GNU long-name entry first when needed); the
        // content follows below.
        self.tar().append_data(&mut h, path, io::empty())?;
        let stream = self.tar().get_mut();
        let sink = stream.sink()?;
        // The members before are whole, and so is each staged one: the decoding that verifies
        // the archive may take them apart.
        sink.cut();
        let mut ends = head.ends.iter().copied().peekable();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let mut released = 0u64;
        while done < head.compressed {
            while ends.next_if(|&end| end <= done).is_some() {
                sink.cut();
            }
            let end = ends.peek().copied().unwrap_or(head.compressed);
            let want = buf.len().min((end - done) as usize);
            let n = io::Read::read(&mut head.file, &mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{path}: staged data ended early"),
                ));
            }
            sink.write_all(&buf[..n])?;
            released = super::segment::release(&head.file, released, done + n as u64);
            done += n as u64;
            progress(n as u64)?;
        }
        sink.cut();
        stream.plain.append(&head.plain);
        let mut left = size - head.plain.len;
        let mut rest = rest;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match rest.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path}: source ended {left} bytes early"),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let pad = (size.next_multiple_of(512) - size) as usize;
        stream.write_all(&[0u8; 512][..pad])
    }

    /// Completes the archive: tar trailer, compressor, fsync, rename, directory fsync, sidecar.
    /// On an error nothing that looks like an archive is left: not the `.part`, and not the
    /// renamed archive or its sidecar when the error came after the rename.
    pub fn finish(mut self) -> io::Result<WrittenArchive> {
        let mut renamed = false;
        let result = self.complete(&mut renamed);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.part);
            if renamed {
                let _ = std::fs::remove_file(self.dir.join(self.name.to_string()));
                let _ = std::fs::remove_file(self.dir.join(self.name.sidecar()));
            }
        }
        result
    }

    fn complete(&mut self, renamed: &mut bool) -> io::Result<WrittenArchive> {
        let tar = self.tar.take().expect("finish called once");
        let compressor = tar.into_inner()?;
        let (mut sink, plain) = compressor.finish()?;
        sink.out.flush()?;
        // The decoding catches up while the file is synced.
        let check = sink.check.take();
        let file = sink.out.into_inner().map_err(|e| e.into_error())?;
        sink.writeback.finish()?;
        file.sync_all()?;
        drop(file);
        let final_path = self.dir.join(self.name.to_string());
        std::fs::rename(&self.part, &final_path)?;
        *renamed = true;
        sync_dir(&self.dir)?;
        let sha256 = hex::encode(sink.hash.finalize());
        write_atomic(
            &self.dir.join(self.name.sidecar()),
            sidecar::render(&sha256, &self.name.to_string(), self.listing.as_ref()).as_bytes(),
            0o600,
        )?;
        let decoded = check.map(DecodeCheck::finish);
        Ok(WrittenArchive {
            path: final_path,
            size: sink.bytes,
            sha256,
            blake3: sink.quick.finalize().to_hex().to_string(),
            plain_len: plain.len,
            plain_crc: plain.crc(),
            decoded,
        })
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if self.tar.is_some() {
            // Not finished: stop the compressor threads, then remove the partial file.
            drop(self.tar.take());
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` via `path.part`, fsync and rename: readers see the old or the new
/// content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut part = path.as_os_str().to_owned();
    part.push(PART_SUFFIX);
    let part = PathBuf::from(part);
    let _ = std::fs::remove_file(&part);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&part)?;
    let result = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = result.and_then(|()| std::fs::rename(&part, path)) {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::verify::verify_written;
    use crate::archive::Compression;

    /// An archive of a few MiB of varied bytes, written with or without the decoding check.
    fn written(dir: &Path, compression: Compression, check: bool) -> WrittenArchive {
        let name = ArchiveName::first_free(dir, chrono::Utc::now(), compression, false);
        let mut w = ArchiveWriter::create(dir, name, 3, 2, None).unwrap();
        if check {
            w.decode_as_written().unwrap();
        }
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 26) as u8)
            .collect();
        w.append_bytes("juju-backup/a", &data).unwrap();
        w.append_bytes("juju-backup/b", b"small").unwrap();
        w.finish().unwrap()
    }

    fn flip_a_byte(path: &Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    }

    #[test]
    fn decoding_as_written_proves_what_reading_back_proved() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            for check in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let w = written(dir.path(), compression, check);
                assert_eq!(w.decoded.is_some(), check);
                if let Some(d) = &w.decoded {
                    let d = d.clone().unwrap();
                    assert_eq!(
                        (d.compressed, d.plain_len, d.plain_crc),
                        (w.size, w.plain_len, w.plain_crc)
                    );
                }
                verify_written(&w).unwrap();
                // Both digests are of the bytes on disk: the sidecar's SHA-256 and the BLAKE3
                // that reading back compares with.
                let bytes = std::fs::read(&w.path).unwrap();
                assert_eq!(hex::encode(Sha256::digest(&bytes)), w.sha256);
                assert_eq!(blake3::hash(&bytes).to_hex().to_string(), w.blake3);
                // A sidecar that says otherwise fails it.
                let mut side_path = w.path.as_os_str().to_owned();
                side_path.push(super::super::name::SIDECAR_SUFFIX);
                let good = std::fs::read_to_string(&side_path).unwrap();
                std::fs::write(&side_path, good.replacen(&w.sha256[..8], "00000000", 1)).unwrap();
                let err = verify_written(&w).unwrap_err().message;
                assert!(err.contains("sidecar"), "{err}");
                std::fs::write(&side_path, good).unwrap();

                // The bytes on disk are held to the ones decoded (without the check, decoding
                // them is what fails).
                flip_a_byte(&w.path, w.size / 2);
                let err = verify_written(&w).unwrap_err().message;
                let want = if check { "read back as" } else { "damaged" };
                assert!(err.contains(want), "{err}");
            }
        }
    }

    /// A member whose content begins precompressed and ends from a reader reads back whole,
    /// padding and a long name included, at every split (none, some, all of it precompressed).
    /// An empty staging file of compressed members, at level 3.
    fn staging(compression: Compression, threads: usize) -> super::super::segment::MemberFile {
        let spec = CompressSpec {
            compression,
            level: 3,
            threads,
        };
        super::super::segment::MemberFile::with(tempfile::tempfile().unwrap(), spec)
    }

    #[test]
    fn a_member_split_between_staged_and_fresh_bytes_reads_back_whole() {
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        // Longer than a tar header holds: a GNU long-name entry comes first.
        let long = format!("juju-backup/dump/{}", "m".repeat(150));
        for compression in [Compression::Zstd, Compression::Gzip] {
            for split in [0, 1, 1 << 20, data.len()] {
                let dir = tempfile::tempdir().unwrap();
                let mut staged = staging(compression, 1);
                staged.write_all(&data[..split]).unwrap();
                let mut head = staged.finish().unwrap();
                let name =
                    ArchiveName::first_free(dir.path(), chrono::Utc::now(), compression, false);
                let mut w = ArchiveWriter::create(dir.path(), name, 3, 2, None).unwrap();
                let size = data.len() as u64;
                w.append_compressed(&long, size, &mut head, &data[split..], &|_| Ok(()))
                    .unwrap();
                w.append_bytes("after", b"z").unwrap();
                // A short rest is an error, not a short member.
                let mut short = staging(compression, 1).finish().unwrap();
                let err = w
                    .append_compressed("short", 10, &mut short, &b"123"[..], &|_| Ok(()))
                    .unwrap_err();
                assert!(err.to_string().contains("7 bytes early"), "{err}");
                drop(w);

                let name =
                    ArchiveName::first_free(dir.path(), chrono::Utc::now(), compression, false);
                let mut w = ArchiveWriter::create(dir.path(), name, 3, 2, None).unwrap();
                let mut staged = staging(compression, 1);
                staged.write_all(&data[..split]).unwrap();
                let mut head = staged.finish().unwrap();
                w.append_compressed(&long, size, &mut head, &data[split..], &|_| Ok(()))
                    .unwrap();
                w.append_bytes("after", b"z").unwrap();
                let written = w.finish().unwrap();
                verify_written(&written).unwrap();
                let got = crate::archive::reader::members_of(&written.path);
                assert_eq!(got.len(), 2);
                assert_eq!(got[0], (long.clone(), data.clone()), "split {split}");
                assert_eq!(got[1], ("after".to_string(), b"z".to_vec()));
            }
        }
    }

    /// Staged members sealed at several points are copied in as segments that the decoding
    /// threads take apart, and what they decode to, joined, is the whole stream as written.
    #[test]
    fn staged_members_are_decoded_apart_and_joined_whole() {
        let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        for compression in [Compression::Zstd, Compression::Gzip] {
            let dir = tempfile::tempdir().unwrap();
            let mut staged = staging(compression, 2);
            for piece in data[..5_000_000].chunks(700_001) {
                staged.write_all(piece).unwrap();
                staged.seal().unwrap();
            }
            let mut head = staged.finish().unwrap();
            assert_eq!(head.ends.len(), 8);
            assert_eq!(head.ends.last(), Some(&head.compressed));
            let name = ArchiveName::first_free(dir.path(), chrono::Utc::now(), compression, false);
            let mut w = ArchiveWriter::create(dir.path(), name, 3, 2, None).unwrap();
            w.decode_as_written().unwrap();
            w.append_bytes("before", b"a").unwrap();
            let size = data.len() as u64;
            w.append_compressed("m", size, &mut head, &data[5_000_000..], &|_| Ok(()))
                .unwrap();
            w.append_bytes("after", b"z").unwrap();
            let written = w.finish().unwrap();
            let decoded = written.decoded.clone().unwrap().unwrap();
            assert_eq!(
                (decoded.compressed, decoded.plain_len, decoded.plain_crc),
                (written.size, written.plain_len, written.plain_crc)
            );
            verify_written(&written).unwrap();
            let got = crate::archive::reader::members_of(&written.path);
            assert_eq!(got[1], ("m".to_string(), data.clone()));
        }
    }

    /// The staging file's blocks are given back as they are copied, also when members end off
    /// the MiB boundaries that releasing rounds to.
    #[test]
    fn staged_blocks_are_released_as_they_are_copied() {
        use std::os::unix::fs::MetadataExt;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..8_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut staged = staging(Compression::Zstd, 1);
        for piece in noise.chunks(700_001) {
            staged.write_all(piece).unwrap();
            staged.seal().unwrap();
        }
        let mut head = staged.finish().unwrap();
        let allocated = |f: &File| f.metadata().unwrap().blocks() * 512;
        assert!(
            allocated(&head.file) >= 8_000_000,
            "the staging file is written"
        );
        let name =
            ArchiveName::first_free(dir.path(), chrono::Utc::now(), Compression::Zstd, false);
        let mut w = ArchiveWriter::create(dir.path(), name, 3, 2, None).unwrap();
        let size = noise.len() as u64;
        w.append_compressed("m", size, &mut head, io::empty(), &|_| Ok(()))
            .unwrap();
        // All but the last, partial MiB (and the one before, when a piece ended just short).
        let left = allocated(&head.file);
        assert!(left <= 2 << 20, "{left} bytes of staging still allocated");
        w.finish().unwrap();
    }

    /// A failure after the archive was renamed into place (here: its sidecar cannot be
    /// written) leaves neither the archive nor its `.part`.
    #[test]
    fn a_failed_finish_leaves_nothing_that_looks_like_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let name =
            ArchiveName::first_free(dir.path(), chrono::Utc::now(), Compression::Zstd, false);
        let blocker = dir.path().join(name.sidecar());
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("keep"), b"").unwrap();
        let mut w = ArchiveWriter::create(dir.path(), name.clone(), 3, 2, None).unwrap();
        w.append_bytes("juju-backup/a", b"content").unwrap();
        assert!(w.finish().is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            left,
            vec![name.sidecar()],
            "only the directory in the way is left"
        );
        assert!(blocker.join("keep").exists());
    }

    #[test]
    fn a_failed_or_different_decoding_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let w = written(dir.path(), Compression::Zstd, true);
        let failed = WrittenArchive {
            decoded: Some(Err("archive is damaged or truncated: x".into())),
            ..w.clone()
        };
        let err = verify_written(&failed).unwrap_err().message;
        assert!(err.contains("damaged"), "{err}");
        let mut d = w.decoded.clone().unwrap().unwrap();
        d.plain_crc ^= 1;
        let other = WrittenArchive {
            decoded: Some(Ok(d)),
            ..w.clone()
        };
        let err = verify_written(&other).unwrap_err().message;
        assert!(err.contains("decompresses to"), "{err}");
        let mut d = w.decoded.clone().unwrap().unwrap();
        d.compressed -= 1;
        let short = WrittenArchive {
            decoded: Some(Ok(d)),
            ..w
        };
        let err = verify_written(&short).unwrap_err().message;
        assert!(err.contains("stream ends after"), "{err}");
    }
}
