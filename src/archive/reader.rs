//! Opens an archive for reading: decrypts an age-sealed one, detects gzip or zstd by magic bytes,
//! hashes the bytes as stored (for the sidecar) and refuses decompression bombs by bounding the
//! expansion ratio.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::encryption::{self, Identities, AGE_MAGIC};
use super::manifest::{DigestAlgo, FileHasher};

/// Default bound on decompressed/compressed bytes. Real state-server data stays far below it
/// (even SQLite free pages); a gzip bomb reaches 1000:1.
pub const DEFAULT_MAX_RATIO: u64 = 200;
/// Small archives may expand past the ratio (tar headers of empty files compress ~1000:1).
const RATIO_FLOOR: u64 = 64 << 20;

/// Bytes and digest of the file as stored, counted as the decoder reads it.
#[derive(Clone)]
pub struct RawStats {
    bytes: Arc<AtomicU64>,
    hash: Arc<Mutex<FileHasher>>,
}

impl RawStats {
    fn new(algo: DigestAlgo) -> Self {
        RawStats {
            bytes: Arc::default(),
            hash: Arc::new(Mutex::new(algo.hasher())),
        }
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// Hex digest of what was read, in the algorithm the archive was opened with (SHA-256 unless
    /// [`open_file_with`] chose otherwise).
    pub fn hex(&self) -> String {
        self.hash.lock().expect("hash lock").clone().finalize_hex()
    }
}

struct RawReader<R> {
    inner: R,
    stats: RawStats,
}

impl<R: Read> Read for RawReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats.hash.lock().expect("hash lock").update(&buf[..n]);
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct RatioLimit<R> {
    inner: R,
    raw: RawStats,
    out: u64,
    max_ratio: u64,
}

impl<R: Read> Read for RatioLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        check_ratio(self.raw.bytes(), self.out, self.max_ratio)?;
        Ok(n)
    }
}

/// Refuses `plain` bytes decoded from `compressed` beyond `max_ratio` (past a floor that small
/// archives may reach): the same bound wherever an archive is decoded.
pub fn check_ratio(compressed: u64, plain: u64, max_ratio: u64) -> io::Result<()> {
    if plain > ratio_allowance(compressed, max_ratio) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decompresses beyond {max_ratio}:1 (a compression bomb?); refused"),
        ));
    }
    Ok(())
}

/// The plain bytes that `compressed` bytes may decode to under `max_ratio` (see [`check_ratio`]).
pub fn ratio_allowance(compressed: u64, max_ratio: u64) -> u64 {
    RATIO_FLOOR.saturating_add(compressed.saturating_mul(max_ratio))
}

pub struct OpenedArchive {
    pub reader: Box<dyn Read + Send>,
    /// Bytes and digest of the file as stored (the ciphertext of an encrypted archive).
    pub raw: RawStats,
    pub compression: &'static str,
    pub encrypted: bool,
}

/// Opens `path` for reading its tar stream. An age-encrypted archive needs `identities`; without
/// them, or with ones it was not encrypted to, this fails before any plaintext exists.
pub fn open(
    path: &Path,
    max_ratio: u64,
    identities: Option<&Identities>,
) -> io::Result<OpenedArchive> {
    open_file(File::open(path)?, max_ratio, identities)
}

/// As [`open`], on a file already open (read from its current offset).
pub fn open_file(
    file: File,
    max_ratio: u64,
    identities: Option<&Identities>,
) -> io::Result<OpenedArchive> {
    open_file_with(file, max_ratio, identities, DigestAlgo::Sha256)
}

/// As [`open_file`], hashing the stored bytes with `algo` (the sidecar's SHA-256, or BLAKE3
/// where only a comparison with the writer's own hash is needed).
pub fn open_file_with(
    mut file: File,
    max_ratio: u64,
    identities: Option<&Identities>,
    algo: DigestAlgo,
) -> io::Result<OpenedArchive> {
    let mut magic = [0u8; AGE_MAGIC.len()];
    let got = read_up_to(&mut file, &mut magic)?;
    let raw = RawStats::new(algo);
    let counted = RawReader {
        inner: BufReader::with_capacity(
            1 << 20,
            io::Cursor::new(magic[..got].to_vec()).chain(file),
        ),
        stats: raw.clone(),
    };
    let encrypted = magic[..got] == *AGE_MAGIC;
    let plain: Box<dyn Read + Send> = if encrypted {
        let ids = identities.ok_or_else(encryption::identity_needed)?;
        Box::new(ids.open(counted)?)
    } else {
        Box::new(counted)
    };
    let (decoded, compression) = decompressor(plain)?;
    Ok(OpenedArchive {
        reader: Box::new(RatioLimit {
            inner: decoded,
            raw: raw.clone(),
            out: 0,
            max_ratio,
        }),
        raw,
        compression,
        encrypted,
    })
}

/// The tar stream inside `compressed`, told gzip or zstd by its magic bytes; also the name of
/// the compression.
pub fn decompressor(
    mut compressed: Box<dyn Read + Send>,
) -> io::Result<(Box<dyn Read + Send>, &'static str)> {
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut compressed, &mut magic)?;
    let input = io::Cursor::new(magic[..got].to_vec()).chain(compressed);
    Ok(match magic[..got] {
        [0x1f, 0x8b, ..] => (
            Box::new(super::blockgz::BlockGzReader::new(
                input,
                super::writer::default_threads(),
            )),
            "gzip",
        ),
        [0x28, 0xb5, 0x2f, 0xfd] => (Box::new(zstd::Decoder::new(input)?), "zstd"),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a gzip, zstd or age-encrypted archive (bad magic bytes)",
            ))
        }
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every member of the archive at `path` (not encrypted), name and content, in order: what
/// the writer's tests read back.
#[cfg(test)]
pub(crate) fn members_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let (plain, _) = decompressor(Box::new(File::open(path).unwrap())).unwrap();
    let mut ar = tar::Archive::new(plain);
    let mut members = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        members.push((e.path().unwrap().display().to_string(), bytes));
    }
    members
}
