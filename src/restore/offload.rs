//! Restore's single pass on two cores: reading, inflating, checking and hashing stay on the
//! verifying thread while the staging directory's file I/O (create, write, chown, chmod, times)
//! runs on a thread of its own. Measured on the bench's 105k-file tree, that I/O was half of the
//! pass, all of it on one core.
//!
//! What the verifier hands over travels in batches through a bounded channel, so at most
//! `DEPTH + 2` batches of about `BATCH_BYTES` each (2.5 MiB; members' paths and xattrs count
//! towards it) are in memory at once. The staging thread applies them in order to the real
//! stage; its first failure stops it, and the verifier learns of it at its next call (or when
//! the pass ends), so a pass never succeeds over a failed write.

use std::io::{self, Write};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;

use crate::archive::manifest::Entry;
use crate::archive::member::Attrs;
use crate::archive::verify::Stage;

/// A batch is sent once it holds this much file content...
const BATCH_BYTES: usize = 512 << 10;
/// ...or this many operations (small files: three each).
const BATCH_OPS: usize = 384;
/// File content moves in chunks of this size.
const CHUNK: usize = BATCH_BYTES / 4;
/// Batches queued between the threads.
const DEPTH: usize = 2;

enum Op {
    File(PathBuf),
    Data(Vec<u8>),
    Member(PathBuf, Entry, Attrs),
    Dump(String),
    /// The dump file is complete; the reply tells the verifier it may read it back.
    DumpDone(SyncSender<Result<(), String>>),
}

impl Op {
    /// Bytes an operation holds besides file content: a member's path and extended attributes
    /// are the archive's to choose, so they count towards a batch too.
    fn held(&self) -> usize {
        match self {
            Op::File(p) => p.as_os_str().len(),
            Op::Member(p, _, attrs) => {
                p.as_os_str().len()
                    + attrs
                        .xattrs
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            _ => 0,
        }
    }
}

/// Runs `pass` with a stage that hands its work to `stage` on a thread of its own. The pass's
/// own error wins; otherwise the staging thread's first failure (through `staging_failed`).
pub fn offload<S, T, E>(
    stage: &mut S,
    dump_dir: PathBuf,
    pass: impl FnOnce(&mut dyn Stage) -> Result<T, E>,
    staging_failed: impl FnOnce(String) -> E,
) -> Result<T, E>
where
    S: Stage + Send,
{
    let failed = OnceLock::new();
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(DEPTH);
        let worker = scope.spawn(|| apply(stage, rx, &failed));
        let mut front = Front {
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
            data: Vec::new(),
            failed: &failed,
            dump_dir,
        };
        let result = pass(&mut front);
        // Whatever is still batched goes over before the thread is told there is no more.
        let _ = front.send();
        front.tx = None;
        if worker.join().is_err() {
            let _ = failed.set("the staging thread panicked".to_string());
        }
        let t = result?;
        match failed.get() {
            Some(m) => Err(staging_failed(m.clone())),
            None => Ok(t),
        }
    })
}

/// The staging thread: applies the operations in order until the first failure.
fn apply<S: Stage>(stage: &mut S, rx: Receiver<Vec<Op>>, failed: &OnceLock<String>) {
    let mut ops = rx.into_iter().flatten().peekable();
    while let Some(op) = ops.next() {
        let applied = match op {
            Op::File(path) => stage.file(&path).and_then(|w| content(w, &mut ops)),
            Op::Dump(rel) => stage.dump(&rel).and_then(|(w, _)| content(w, &mut ops)),
            Op::Data(_) => Err("staging: content outside a file".to_string()),
            Op::Member(path, entry, attrs) => stage.member(&path, &entry, &attrs),
            Op::DumpDone(reply) => {
                let r = stage.dump_done();
                let _ = reply.send(r.clone());
                r
            }
        };
        if let Err(m) = applied {
            let _ = failed.set(m);
            // Dropping the receiver makes the verifier's next send fail, and it reads `failed`.
            return;
        }
    }
}

/// Writes the content that follows a file or dump into its writer.
fn content(w: &mut dyn Write, ops: &mut Peekable<impl Iterator<Item = Op>>) -> Result<(), String> {
    while let Some(Op::Data(d)) = ops.next_if(|op| matches!(op, Op::Data(_))) {
        w.write_all(&d).map_err(|e| format!("staging: {e}"))?;
    }
    Ok(())
}

/// The verifier's side: batches the work and sends it on.
struct Front<'f> {
    tx: Option<SyncSender<Vec<Op>>>,
    batch: Vec<Op>,
    batch_bytes: usize,
    /// Content of the current file not yet in the batch.
    data: Vec<u8>,
    failed: &'f OnceLock<String>,
    dump_dir: PathBuf,
}

impl Front<'_> {
    fn check(&self) -> Result<(), String> {
        match self.failed.get() {
            Some(m) => Err(m.clone()),
            None => Ok(()),
        }
    }

    fn take_data(&mut self) {
        if self.data.is_empty() {
            return;
        }
        self.batch_bytes += self.data.len();
        // A full chunk moves as it is; a small file's tail is copied out at its own size, so a
        // batch of small files does not hold a chunk's capacity each.
        let chunk = if self.data.len() >= CHUNK {
            std::mem::take(&mut self.data)
        } else {
            let tail = self.data.clone();
            self.data.clear();
            tail
        };
        self.batch.push(Op::Data(chunk));
    }

    fn push(&mut self, op: Op) -> Result<(), String> {
        self.take_data();
        // What an operation holds besides file content counts too: a member's path and
        // extended attributes are the archive's to choose.
        self.batch_bytes += op.held();
        self.batch.push(op);
        if self.batch.len() >= BATCH_OPS || self.batch_bytes >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), String> {
        self.take_data();
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sent = self.tx.as_ref().map(|tx| tx.send(batch));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Why the staging thread is gone.
    fn stopped(&self) -> String {
        self.failed
            .get()
            .cloned()
            .unwrap_or_else(|| "the staging thread stopped".to_string())
    }
}

impl Write for Front<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.data.capacity() == 0 {
            self.data.reserve(CHUNK);
        }
        self.data.extend_from_slice(buf);
        if self.data.len() >= CHUNK {
            self.take_data();
            if self.batch_bytes >= BATCH_BYTES {
                self.send().map_err(io::Error::other)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stage for Front<'_> {
    fn file(&mut self, path: &Path) -> Result<&mut dyn Write, String> {
        self.check()?;
        self.push(Op::File(path.to_path_buf()))?;
        Ok(self)
    }

    fn member(&mut self, path: &Path, entry: &Entry, attrs: &Attrs) -> Result<(), String> {
        self.check()?;
        self.push(Op::Member(path.to_path_buf(), entry.clone(), attrs.clone()))
    }

    fn dump(&mut self, rel: &str) -> Result<(&mut dyn Write, PathBuf), String> {
        self.check()?;
        self.push(Op::Dump(rel.to_string()))?;
        let at = self.dump_dir.join(rel);
        Ok((self, at))
    }

    fn dump_done(&mut self) -> Result<(), String> {
        let (reply, done) = sync_channel(1);
        self.push(Op::DumpDone(reply))?;
        self.send()?;
        done.recv().unwrap_or_else(|_| Err(self.stopped()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::Kind;

    /// Records what reaches it, failing on the `fail_at`th file.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        current: Vec<u8>,
        fail_at: Option<usize>,
        files: usize,
    }

    impl Stage for Recorder {
        fn file(&mut self, path: &Path) -> Result<&mut dyn Write, String> {
            self.files += 1;
            if Some(self.files) == self.fail_at {
                return Err(format!("cannot create {}", path.display()));
            }
            self.log.push(format!("file {}", path.display()));
            self.current.clear();
            Ok(&mut self.current)
        }
        fn member(&mut self, path: &Path, entry: &Entry, _: &Attrs) -> Result<(), String> {
            self.log.push(format!(
                "member {} {} bytes {}",
                path.display(),
                entry.size,
                self.current.len()
            ));
            Ok(())
        }
        fn dump(&mut self, rel: &str) -> Result<(&mut dyn Write, PathBuf), String> {
            self.log.push(format!("dump {rel}"));
            self.current.clear();
            Ok((&mut self.current, PathBuf::from(rel)))
        }
        fn dump_done(&mut self) -> Result<(), String> {
            self.log.push(format!("dump done {}", self.current.len()));
            Ok(())
        }
    }

    fn file_entry(size: u64) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            digest: String::new(),
            link: None,
        }
    }

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: std::time::SystemTime::UNIX_EPOCH,
            xattrs: Vec::new(),
        }
    }

    /// Files of every size up to several batches, then a dump the verifier waits for: the stage
    /// sees each operation once, in order, with all its content.
    #[test]
    fn work_arrives_in_order_and_whole() {
        let mut rec = Recorder::default();
        let sizes = [
            0usize,
            1,
            4095,
            CHUNK - 1,
            CHUNK,
            BATCH_BYTES + 7,
            3 * BATCH_BYTES,
        ];
        let r: Result<(), String> = offload(
            &mut rec,
            PathBuf::from("/d"),
            |s| {
                for (i, n) in sizes.iter().enumerate() {
                    let p = PathBuf::from(format!("f{i}"));
                    let w = s.file(&p)?;
                    // Written in uneven pieces, as tar hands them over.
                    let body = vec![i as u8; *n];
                    for piece in body.chunks(1000 + i) {
                        w.write_all(piece).map_err(|e| e.to_string())?;
                    }
                    s.member(&p, &file_entry(*n as u64), &attrs())?;
                }
                let (w, at) = s.dump("db")?;
                assert_eq!(at, PathBuf::from("/d/db"));
                w.write_all(&[7; 100]).map_err(|e| e.to_string())?;
                s.dump_done()
            },
            |m| m,
        );
        r.unwrap();
        let mut want = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            want.push(format!("file f{i}"));
            want.push(format!("member f{i} {n} bytes {n}"));
        }
        want.push("dump db".into());
        want.push("dump done 100".into());
        assert_eq!(rec.log, want);
    }

    /// A failure on the staging thread fails the pass, even when the verifier itself finishes
    /// without error, and it stops the work that follows.
    #[test]
    fn a_staging_failure_fails_the_pass() {
        let mut rec = Recorder {
            fail_at: Some(2),
            ..Recorder::default()
        };
        let r: Result<(), String> = offload(
            &mut rec,
            PathBuf::from("/d"),
            |s| {
                for i in 0..3 {
                    let p = PathBuf::from(format!("f{i}"));
                    // Until the verifier learns of it, its calls may still succeed.
                    if s.file(&p).is_err() || s.member(&p, &file_entry(0), &attrs()).is_err() {
                        break;
                    }
                }
                Ok(())
            },
            |m| format!("staging failed: {m}"),
        );
        assert_eq!(r.unwrap_err(), "staging failed: cannot create f1");
        assert_eq!(rec.log, vec!["file f0", "member f0 0 bytes 0"]);
    }

    /// The verifier's own error comes first.
    #[test]
    fn the_pass_error_wins() {
        let mut rec = Recorder::default();
        let r: Result<(), String> = offload(
            &mut rec,
            PathBuf::from("/d"),
            |s| {
                s.file(Path::new("f"))?;
                Err("root.tar: digest mismatch".to_string())
            },
            |m| m,
        );
        assert_eq!(r.unwrap_err(), "root.tar: digest mismatch");
    }
}
