//! The storage under the log: a trait with the five operations the log
//! needs, the real implementation over [`std::fs::File`], and (in
//! `faulty.rs`) an in-memory one that can crash and fail on demand.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// One append-only file, as the log uses it.
///
/// Contract: [`append`](LogFile::append) adds bytes at the end (they may
/// sit in a cache); [`sync`](LogFile::sync) returns once every byte
/// appended before it, and the current length, are durable. After an error
/// from `append` or `sync` the writer appends nothing until it has cut the
/// file back to its durable length with [`truncate`](LogFile::truncate)
/// and synced that, so `truncate`, `sync` and reads must keep working on
/// a file whose last append or sync failed (as on a full disk).
pub trait LogFile: Send {
    /// A name for error messages: the path, or `memory:NAME`.
    fn name(&self) -> String;

    /// Current length in bytes (including bytes not yet synced).
    fn len(&self) -> io::Result<u64>;

    /// True when the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were
    /// read, 0 at or past the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Appends all of `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Makes every byte appended so far, and the length, durable.
    fn sync(&mut self) -> io::Result<()>;

    /// Cuts the file to `len` bytes (not durable until the next `sync`).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl<T: LogFile + ?Sized> LogFile for Box<T> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).append(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        (**self).truncate(len)
    }
}

/// A log file on the filesystem, opened for reading and appending.
/// `sync` is `fdatasync` (`File::sync_data`): it flushes the data and the
/// file size, which is all a reader of an append-only file needs.
#[derive(Debug)]
pub struct FsFile {
    file: File,
    path: PathBuf,
}

impl FsFile {
    /// Opens an existing file.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().read(true).append(true).open(&path)?;
        Ok(FsFile { file, path })
    }

    /// Creates a new, empty file; fails if the path exists. The directory
    /// entry is not synced: [`crate::log::create_file`] does the full,
    /// crash-safe creation.
    pub fn create_new(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        Ok(FsFile { file, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LogFile for FsFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    #[cfg(unix)]
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    #[cfg(not(unix))]
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        // The file is opened in append mode, so moving the cursor for a
        // read does not move where appends go.
        self.file.seek(SeekFrom::Start(offset))?;
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}
