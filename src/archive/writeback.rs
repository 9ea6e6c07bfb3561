//! Flushes a file to disk in the background while it is still being written, so the fsync that
//! makes it durable at the end has only the last few MiB left to wait for: a backup's last
//! tenth of a second was that wait, with both cores idle.
//!
//! A thread of its own calls `fdatasync` each time another [`STEP`] bytes have been written
//! (requests that arrive while one runs are merged into the next). An error there is kept and
//! returned by [`Writeback::finish`]: after a failed `fdatasync` the kernel may report the final
//! fsync as a success, so the failure must not be lost.

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::thread;

/// Bytes written between two background flushes.
const STEP: u64 = 32 << 20;

pub struct Writeback {
    tx: Option<mpsc::SyncSender<()>>,
    thread: thread::JoinHandle<io::Result<u64>>,
    written: u64,
    next: u64,
}

impl Writeback {
    /// Starts flushing `file` (through a descriptor of its own) as it grows.
    pub fn start(file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let thread = thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                let mut flushes = 0;
                for () in rx {
                    file.sync_data()?;
                    flushes += 1;
                }
                Ok(flushes)
            })?;
        Ok(Writeback {
            tx: Some(tx),
            thread,
            written: 0,
            next: STEP,
        })
    }

    /// `n` more bytes went to the file.
    pub fn wrote(&mut self, n: u64) {
        self.written += n;
        if self.written >= self.next {
            self.next = self.written + STEP;
            if let Some(tx) = &self.tx {
                // Full: a flush is already waiting and will take these bytes too. Disconnected:
                // the thread stopped on an error, which `finish` returns.
                let _ = tx.try_send(());
            }
        }
    }

    /// Waits for the flushes under way; how many there were, or the first error any met.
    pub fn finish(mut self) -> io::Result<u64> {
        drop(self.tx.take());
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the background flush panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flushes_as_the_file_grows_and_finishes_cleanly() {
        let mut f = tempfile::tempfile().unwrap();
        let mut wb = Writeback::start(&f).unwrap();
        let block = vec![5u8; 1 << 20];
        for _ in 0..70 {
            f.write_all(&block).unwrap();
            wb.wrote(block.len() as u64);
        }
        assert_eq!(wb.next, 70 * (1 << 20) + STEP - 6 * (1 << 20));
        // Two requests (at 32 and 64 MiB); the second may have been merged into the first.
        let flushes = wb.finish().unwrap();
        assert!((1..=2).contains(&flushes), "{flushes}");
    }

    /// A file that cannot be flushed (a pipe) makes `finish` fail rather than pass quietly.
    #[test]
    fn a_failed_flush_is_reported_at_the_end() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let file = File::from(writer);
        let mut wb = Writeback::start(&file).unwrap();
        wb.wrote(STEP);
        assert!(wb.finish().is_err());
        drop(reader);
    }
}
