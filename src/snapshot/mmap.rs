//! The one place segq maps files into memory.
//!
//! Contract: only *published* snapshot files are mapped, and a published
//! file is never written again. A snapshot is written to a temporary file,
//! fsynced, and renamed into place; segq never opens it for writing after
//! that, and removes it only by unlinking, which leaves existing mappings
//! intact. Under this contract the mapped bytes do not change while a
//! `Mapped` is alive, which is what makes handing out `&[u8]` sound.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// A read-only memory map of a published snapshot file.
#[derive(Debug)]
pub struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    /// Maps the whole file read-only. Reads nothing but the file's size.
    pub fn open(path: &Path) -> Result<Mapped> {
        let io = |source| Error::io(path, source);
        let file = File::open(path).map_err(io)?;
        // SAFETY: `path` is a published snapshot, which segq never modifies
        // or truncates after publishing (see the module contract), so the
        // mapped bytes stay valid and unchanged for the map's lifetime.
        // Another process writing to it would break this; segq's data
        // directory belongs to one segq process.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Mapped { map })
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}
