//! [`FaultyFile`]: an in-memory [`LogFile`] that models the page cache
//! versus the disk, for crash and failure tests. It is public (not
//! `cfg(test)`) so that integration tests and the server's crash tests can
//! use it.
//!
//! The model: `contents` is what reads see (the page cache); `disk` is what
//! survives a crash. `append` and `truncate` change only the contents;
//! `sync` makes the disk equal to the contents. A crash keeps the disk plus
//! any *prefix* of the bytes appended since the last sync (a torn write at
//! any byte), which is what an ordered-data filesystem gives an append-only
//! file. (If a truncation was not synced yet, keeping 0 unsynced bytes
//! gives back the old, longer disk image; keeping some means the truncation
//! reached the disk too.)
//!
//! [`DiskFull`] is a switch over any other [`LogFile`] (a real file
//! included): while it is on, appends land part of their bytes and fail as
//! on a full disk, or syncs fail; turned off, the file works again. Tests
//! give it to an engine's workspace through the compaction's
//! `Fs::create_log` seam.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::storage::LogFile;

/// A cloneable handle to one in-memory file: give one clone to the log,
/// keep another to inject faults, count calls and crash it.
#[derive(Clone, Debug, Default)]
pub struct FaultyFile {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    name: String,
    /// What reads see.
    contents: Vec<u8>,
    /// What is on disk.
    disk: Vec<u8>,
    /// `contents[..low_water] == disk[..low_water]`: the contents have not
    /// changed below this offset since the last sync.
    low_water: usize,
    writes: u64,
    syncs: u64,
    truncates: u64,
    /// Completed mutating operations (writes, syncs, truncates).
    ops: u64,
    /// The n-th write (1-based) fails after landing this many of its bytes.
    fail_write: Option<(u64, usize)>,
    /// The n-th sync (1-based) fails and syncs nothing.
    fail_sync: Option<u64>,
    /// Crash right after the n-th mutating operation completes.
    crash_after_ops: Option<u64>,
    crashed: bool,
    sync_delay: Duration,
}

/// Call counts of a [`FaultyFile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `append` calls, including failed ones.
    pub writes: u64,
    /// `sync` calls, including failed ones.
    pub syncs: u64,
    /// `truncate` calls.
    pub truncates: u64,
    /// Completed writes, syncs and truncates: the crash points so far.
    pub ops: u64,
}

fn crashed_error() -> io::Error {
    io::Error::other("FaultyFile: the machine crashed")
}

impl FaultyFile {
    /// An empty file named `memory:faulty`.
    pub fn new() -> Self {
        Self::named("faulty")
    }

    /// An empty file named `memory:NAME`.
    pub fn named(name: &str) -> Self {
        let f = FaultyFile::default();
        f.lock().name = name.to_string();
        f
    }

    /// A file whose bytes are all on disk already (e.g. the image that a
    /// crash left, for the next "boot").
    pub fn from_disk(bytes: Vec<u8>) -> Self {
        let f = Self::new();
        {
            let mut s = f.lock();
            s.low_water = bytes.len();
            s.contents = bytes.clone();
            s.disk = bytes;
        }
        f
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the `nth` `append` call (1-based, counted since creation) fail
    /// after `partial` of its bytes reached the cache.
    pub fn fail_write(&self, nth: u64, partial: usize) {
        self.lock().fail_write = Some((nth, partial));
    }

    /// Makes the `nth` `sync` call (1-based, counted since creation) fail;
    /// it syncs nothing.
    pub fn fail_sync(&self, nth: u64) {
        self.lock().fail_sync = Some(nth);
    }

    /// Crashes the machine right after the `n`-th write, sync or truncate
    /// (counted since creation) completes: every later call fails. Use
    /// [`crash`](Self::crash) afterwards to get what survived. `n == 0`
    /// crashes before the next operation.
    pub fn crash_after_ops(&self, n: u64) {
        let mut s = self.lock();
        s.crash_after_ops = Some(n);
        if s.ops >= n {
            s.crashed = true;
        }
    }

    /// Makes every `sync` take this long (the time is spent outside the
    /// file's lock), as a real fsync does; group commit shows under it.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.lock().sync_delay = delay;
    }

    /// Crashes the machine (every later call on any clone fails) and
    /// returns what survives on disk: the synced bytes plus the first
    /// `keep_unsynced` of the bytes appended since the last sync (clamped
    /// to what there is). Can be called again with another `keep_unsynced`
    /// to get the other possible outcomes of the same crash.
    pub fn crash(&self, keep_unsynced: usize) -> Vec<u8> {
        let mut s = self.lock();
        s.crashed = true;
        if keep_unsynced == 0 {
            return s.disk.clone();
        }
        let end = s.low_water + keep_unsynced.min(s.contents.len() - s.low_water);
        s.contents[..end].to_vec()
    }

    /// How many bytes were appended since the last sync (the range a
    /// crash can keep a prefix of).
    pub fn unsynced_len(&self) -> usize {
        let s = self.lock();
        s.contents.len() - s.low_water
    }

    /// What reads see now (page cache).
    pub fn contents(&self) -> Vec<u8> {
        self.lock().contents.clone()
    }

    /// What is on disk now.
    pub fn durable(&self) -> Vec<u8> {
        self.lock().disk.clone()
    }

    /// Whether the file has crashed (by [`crash`](Self::crash) or a planned crash point): every call fails.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The calls the file has seen.
    pub fn stats(&self) -> FaultStats {
        let s = self.lock();
        FaultStats {
            writes: s.writes,
            syncs: s.syncs,
            truncates: s.truncates,
            ops: s.ops,
        }
    }
}

impl State {
    fn check(&self) -> io::Result<()> {
        if self.crashed {
            Err(crashed_error())
        } else {
            Ok(())
        }
    }

    fn op_done(&mut self) {
        self.ops += 1;
        if self.crash_after_ops.is_some_and(|n| self.ops >= n) {
            self.crashed = true;
        }
    }
}

impl LogFile for FaultyFile {
    fn name(&self) -> String {
        format!("memory:{}", self.lock().name)
    }

    fn len(&self) -> io::Result<u64> {
        let s = self.lock();
        s.check()?;
        Ok(s.contents.len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.lock();
        s.check()?;
        let len = s.contents.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(s.contents.len() - start);
        buf[..n].copy_from_slice(&s.contents[start..start + n]);
        Ok(n)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.check()?;
        s.writes += 1;
        if let Some((nth, partial)) = s.fail_write {
            if s.writes == nth {
                let n = partial.min(bytes.len());
                s.contents.extend_from_slice(&bytes[..n]);
                s.op_done();
                return Err(io::Error::other(format!(
                    "FaultyFile: injected failure of write #{nth}"
                )));
            }
        }
        s.contents.extend_from_slice(bytes);
        s.op_done();
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let delay = {
            let mut s = self.lock();
            s.check()?;
            s.syncs += 1;
            if s.fail_sync == Some(s.syncs) {
                let nth = s.syncs;
                s.op_done();
                return Err(io::Error::other(format!(
                    "FaultyFile: injected failure of sync #{nth}"
                )));
            }
            let lw = s.low_water;
            s.disk.truncate(lw);
            let State { disk, contents, .. } = &mut *s;
            disk.extend_from_slice(&contents[lw..]);
            s.low_water = s.contents.len();
            s.op_done();
            s.sync_delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.check()?;
        s.truncates += 1;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < s.contents.len() {
            s.contents.truncate(len);
        } else {
            s.contents.resize(len, 0);
        }
        s.low_water = s.low_water.min(len);
        s.op_done();
        Ok(())
    }
}

/// A disk that can run full and be freed again, shared by the files it
/// wraps ([`DiskFull::wrap`]). Cloning gives another handle to the same
/// switch.
#[derive(Clone, Debug, Default)]
pub struct DiskFull {
    inner: Arc<(Mutex<DiskState>, Condvar)>,
}

#[derive(Debug, Default)]
struct DiskState {
    refuse_writes: bool,
    refuse_syncs: bool,
    /// Syncs block while this is set.
    hold_syncs: bool,
    /// Syncs blocked now.
    held: u64,
    /// Appends and syncs refused so far.
    refused: u64,
}

fn disk_full_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!("no space left on device (injected: {what})"),
    )
}

impl DiskFull {
    /// A disk with room, until [`DiskFull`]'s switch is turned.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// While on, every append lands the first half of its bytes and fails
    /// with "no space left on device" (a torn write).
    pub fn refuse_writes(&self, on: bool) {
        self.lock().refuse_writes = on;
    }

    /// While on, every sync fails and syncs nothing (appends succeed).
    pub fn refuse_syncs(&self, on: bool) {
        self.lock().refuse_syncs = on;
    }

    /// While on, every sync waits (before it does anything) until it is
    /// turned off: a test holds a commit in flight with it.
    pub fn hold_syncs(&self, on: bool) {
        self.lock().hold_syncs = on;
        self.inner.1.notify_all();
    }

    /// Waits until `n` syncs are held, at most `timeout`; returns whether
    /// they are.
    pub fn wait_held(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.held < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .inner
                .1
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// How many appends and syncs were refused so far.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// `file`, on this disk.
    pub fn wrap<F: LogFile>(&self, file: F) -> OnDisk<F> {
        OnDisk {
            file,
            disk: self.clone(),
        }
    }
}

/// A [`LogFile`] on a [`DiskFull`]: the wrapped file while the disk takes
/// writes. Reads, lengths and truncation always go through, as on a full
/// disk.
#[derive(Debug)]
pub struct OnDisk<F> {
    file: F,
    disk: DiskFull,
}

impl<F: LogFile> LogFile for OnDisk<F> {
    fn name(&self) -> String {
        self.file.name()
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(offset, buf)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        {
            let mut s = self.disk.lock();
            if s.refuse_writes {
                s.refused += 1;
                drop(s);
                self.file.append(&bytes[..bytes.len() / 2])?;
                return Err(disk_full_error("write"));
            }
        }
        self.file.append(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        {
            let mut s = self.disk.lock();
            if s.hold_syncs {
                s.held += 1;
                self.disk.inner.1.notify_all();
                while s.hold_syncs {
                    s = self
                        .disk
                        .inner
                        .1
                        .wait(s)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                s.held -= 1;
            }
            if s.refuse_syncs {
                s.refused += 1;
                return Err(disk_full_error("sync"));
            }
        }
        self.file.sync()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_are_lost_or_torn_at_a_crash() {
        let mut f = FaultyFile::new();
        f.append(b"abc").unwrap();
        f.sync().unwrap();
        f.append(b"defg").unwrap();
        assert_eq!(f.unsynced_len(), 4);
        assert_eq!(f.contents(), b"abcdefg");
        assert_eq!(f.durable(), b"abc");
        assert_eq!(f.crash(0), b"abc");
        assert_eq!(f.crash(2), b"abcde");
        assert_eq!(f.crash(99), b"abcdefg");
        assert!(f.append(b"x").is_err());
        assert!(f.len().is_err());
    }

    #[test]
    fn an_unsynced_truncate_may_be_undone_by_a_crash() {
        let mut f = FaultyFile::from_disk(b"abcdef".to_vec());
        f.truncate(2).unwrap();
        f.append(b"XY").unwrap();
        assert_eq!(f.contents(), b"abXY");
        assert_eq!(f.crash(0), b"abcdef");
        assert_eq!(f.crash(1), b"abX");
        let mut g = FaultyFile::from_disk(b"abcdef".to_vec());
        g.truncate(2).unwrap();
        g.append(b"XY").unwrap();
        g.sync().unwrap();
        assert_eq!(g.durable(), b"abXY");
    }

    #[test]
    fn injected_failures_and_scheduled_crash() {
        let mut f = FaultyFile::new();
        f.fail_write(2, 1);
        f.fail_sync(1);
        f.append(b"ab").unwrap();
        assert!(f.append(b"cd").is_err());
        assert_eq!(f.contents(), b"abc");
        assert!(f.sync().is_err());
        assert_eq!(f.durable(), b"");
        f.sync().unwrap();
        assert_eq!(f.durable(), b"abc");
        assert_eq!(
            f.stats(),
            FaultStats {
                writes: 2,
                syncs: 2,
                truncates: 0,
                ops: 4
            }
        );
        f.crash_after_ops(5);
        f.append(b"e").unwrap();
        assert!(f.is_crashed());
        assert!(f.sync().is_err());
        assert_eq!(f.crash(0), b"abc");
        assert_eq!(f.crash(1), b"abce");
    }
}
