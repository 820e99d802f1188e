//! Immutable snapshot files, the building blocks so far: the container
//! format with its section table and checksums ([`format`]), identifier
//! dictionaries read in place (hashed, versions 1 to 3: [`dict`]; compact,
//! version 4 on: [`compact`], whose version 5 group offsets are
//! [`elias_fano`] coded), and the memory map ([`mmap`]).
//! Cohort bitmaps are read in place by [`crate::bitmap_view`].

pub mod codec;
pub mod compact;
pub mod dict;
pub mod elias_fano;
pub mod format;
pub mod meta;
#[allow(unsafe_code)] // the one memory map: see the module's contract
pub mod mmap;
pub mod reader;
pub mod writer;

pub use reader::Snapshot;
