//! The log file of a workspace served from memory
//! ([`super::WorkspaceHandle::in_memory`]): every write takes the path it
//! takes on disk (the record built, applied, logged and made "durable"),
//! so what it answers is what a server answers; nothing touches the file
//! system. `segq demo` runs on one.

use crate::log::LogFile;
use std::io;

/// A log file held in memory: its bytes are durable as soon as they are
/// appended, and lost with the process.
#[derive(Debug, Default)]
pub struct MemoryFile {
    name: String,
    bytes: Vec<u8>,
}

impl MemoryFile {
    /// An empty file named `memory:NAME`.
    pub fn new(name: &str) -> MemoryFile {
        MemoryFile {
            name: name.to_string(),
            bytes: Vec::new(),
        }
    }
}

impl LogFile for MemoryFile {
    fn name(&self) -> String {
        format!("memory:{}", self.name)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(rest) = self.bytes.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.bytes
            .truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }
}
