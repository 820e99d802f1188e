//! The snapshot container format: a header, 64-byte-aligned sections, and a
//! footer with the section table and a checksum per section.
//!
//! ```text
//! offset 0      8         12        16                        64
//!        +------+---------+---------+-------------------------+
//! header | magic| version | flags=0 | zero                    |
//!        +------+---------+---------+-------------------------+
//! 64     section 0 (zero-padded to a multiple of 64)
//!        section 1 ...
//! T      section table: one 32-byte entry per section
//!        +---------+----------+-----------+--------+---------+----------+
//!        | kind u32| flags u32| offset u64| len u64| crc u32 | zero u32 |
//!        +---------+----------+-----------+--------+---------+----------+
//! E-32   tail (32 bytes)
//!        +-----------------+-----------+-----------+---------+----------+--------+
//!        | table_offset u64| count u32 | table_crc | version | tail_crc | magic  |
//!        |                 |           | u32       | u32     | u32      | 8 bytes|
//!        +-----------------+-----------+-----------+---------+----------+--------+
//! ```
//!
//! All integers are little-endian. `magic` is `SEGQSNAP` at both ends.
//! `crc` is the CRC-32 (IEEE) of a section's `len` bytes, `table_crc` that
//! of the section table, `tail_crc` that of the tail's first 20 bytes.
//! Opening reads the tail and the table only (O(1) in the file's size);
//! [`SnapshotFile::verify`] checks every section's checksum.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The bytes at the start and the end of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SEGQSNAP";
/// The newest format version this build writes. Version 2 added the
/// optional attributes section, version 3 the optional deleted users
/// section, version 4 the compact identifier dictionaries (kinds 9 to 11,
/// which replace kinds 3 to 5), version 5 their packed layout (kinds 12
/// to 14, which replace kinds 9 to 11); versions [`MIN_VERSION`]`..=VERSION` are
/// read. A file is written at the oldest version that holds its sections,
/// never older than [`WRITTEN_SINCE`] ([`SnapshotWriter::to_version`]).
/// Every snapshot segq writes holds the packed dictionaries, so it is a
/// version 5 file (a version 4 one when asked: [`super::writer::Contents`]);
/// versions 1 to 4 keep reading the same.
pub const VERSION: u32 = 5;
/// The oldest format version this build writes.
pub const WRITTEN_SINCE: u32 = 2;
/// The oldest format version this build reads.
pub const MIN_VERSION: u32 = 1;
/// Header length; sections start here.
pub const HEADER_LEN: usize = 64;
/// Sections start at multiples of this.
pub const ALIGN: usize = 64;
/// One section table entry.
pub const ENTRY_LEN: usize = 32;
/// The tail at the very end.
pub const TAIL_LEN: usize = 32;

/// What a section holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum SectionKind {
    /// Workspace metadata, cohort catalog, keys, counters (bincode).
    Meta = 1,
    /// One u16 random bucket per user.
    Buckets = 2,
    /// external_id dictionary.
    ExternalIds = 3,
    /// device_id dictionary.
    Devices = 4,
    /// (alias_label, alias_name) dictionary.
    Aliases = 5,
    /// Cohort bitmaps, portable roaring format, each 8-byte aligned.
    Bitmaps = 6,
    /// Users' custom attributes and their indexes (version 2 on).
    Attributes = 7,
    /// The ids of deleted users, portable roaring format (version 3 on):
    /// holes, never given again and counted nowhere.
    Deleted = 8,
    /// external_id dictionary, compact (version 4 on; replaces kind 3).
    ExternalIdsCompact = 9,
    /// device_id dictionary, compact (version 4 on; replaces kind 4).
    DevicesCompact = 10,
    /// (alias_label, alias_name) dictionary, compact (version 4 on;
    /// replaces kind 5).
    AliasesCompact = 11,
    /// external_id dictionary, compact and packed (version 5 on;
    /// replaces kind 9).
    ExternalIdsPacked = 12,
    /// device_id dictionary, compact and packed (version 5 on; replaces
    /// kind 10).
    DevicesPacked = 13,
    /// (alias_label, alias_name) dictionary, compact and packed (version
    /// 5 on; replaces kind 11).
    AliasesPacked = 14,
}

impl SectionKind {
    /// Every kind, in tag order.
    pub const ALL: [SectionKind; 14] = [
        SectionKind::Meta,
        SectionKind::Buckets,
        SectionKind::ExternalIds,
        SectionKind::Devices,
        SectionKind::Aliases,
        SectionKind::Bitmaps,
        SectionKind::Attributes,
        SectionKind::Deleted,
        SectionKind::ExternalIdsCompact,
        SectionKind::DevicesCompact,
        SectionKind::AliasesCompact,
        SectionKind::ExternalIdsPacked,
        SectionKind::DevicesPacked,
        SectionKind::AliasesPacked,
    ];

    /// The first format version with this kind of section.
    pub fn since(self) -> u32 {
        match self {
            SectionKind::Attributes => 2,
            SectionKind::Deleted => 3,
            SectionKind::ExternalIdsCompact
            | SectionKind::DevicesCompact
            | SectionKind::AliasesCompact => 4,
            SectionKind::ExternalIdsPacked
            | SectionKind::DevicesPacked
            | SectionKind::AliasesPacked => 5,
            _ => 1,
        }
    }

    fn from_u32(v: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// The kind's name, as `segq snapshot inspect` shows it.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Meta => "meta",
            SectionKind::Buckets => "buckets",
            SectionKind::ExternalIds => "external_ids",
            SectionKind::Devices => "devices",
            SectionKind::Aliases => "aliases",
            SectionKind::Bitmaps => "bitmaps",
            SectionKind::Attributes => "attributes",
            SectionKind::Deleted => "deleted",
            SectionKind::ExternalIdsCompact => "external_ids_fst",
            SectionKind::DevicesCompact => "devices_fst",
            SectionKind::AliasesCompact => "aliases_fst",
            SectionKind::ExternalIdsPacked => "external_ids_packed",
            SectionKind::DevicesPacked => "devices_packed",
            SectionKind::AliasesPacked => "aliases_packed",
        }
    }

    /// The identifier dictionary kinds, newest first: (packed, version 5
    /// on; compact, version 4; hashed, versions 1 to 3) for external ids,
    /// devices and aliases.
    pub const DICTIONARIES: [[SectionKind; 3]; 3] = [
        [
            SectionKind::ExternalIdsPacked,
            SectionKind::ExternalIdsCompact,
            SectionKind::ExternalIds,
        ],
        [
            SectionKind::DevicesPacked,
            SectionKind::DevicesCompact,
            SectionKind::Devices,
        ],
        [
            SectionKind::AliasesPacked,
            SectionKind::AliasesCompact,
            SectionKind::Aliases,
        ],
    ];

    /// Whether this kind is an identifier dictionary (any format).
    pub fn is_dictionary(self) -> bool {
        Self::DICTIONARIES.iter().flatten().any(|&k| k == self)
    }
}

/// Where a section lies.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// What the section holds.
    pub kind: SectionKind,
    /// Where it starts in the file (bytes).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The CRC-32 of its bytes.
    pub crc: u32,
}

/// Writes a snapshot section by section to any sink (a `Vec<u8>`, or a
/// buffered file for snapshots larger than memory should hold twice).
#[derive(Debug)]
pub struct SnapshotWriter<W: Write = Vec<u8>> {
    out: W,
    pos: u64,
    sections: Vec<Section>,
    version: u32,
}

impl Section {
    /// `Ok` when `computed` (the checksum of this section's bytes in the
    /// file `name`) is the one the section table stores.
    pub fn check(&self, name: &str, computed: u32) -> Result<()> {
        if computed == self.crc {
            return Ok(());
        }
        let what = format!(
            "section {} (offset {}, {} bytes)",
            self.kind.name(),
            self.offset,
            self.len
        );
        Err(Error::checksum_mismatch(name, what, self.crc, computed))
    }
}

impl SnapshotWriter<Vec<u8>> {
    /// A snapshot built in memory.
    pub fn new() -> Self {
        Self::to(Vec::with_capacity(1 << 20)).expect("writing to a Vec cannot fail")
    }
}

impl Default for SnapshotWriter<Vec<u8>> {
    fn default() -> Self {
        Self::new()
    }
}

fn write_err(e: std::io::Error) -> Error {
    Error::io("<snapshot>", e)
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot on `out` (writes the header) at version
    /// [`WRITTEN_SINCE`]: it takes no section of a later version.
    pub fn to(out: W) -> Result<Self> {
        Self::to_version(out, WRITTEN_SINCE)
    }

    /// Starts a snapshot of format `version` (`WRITTEN_SINCE..=VERSION`)
    /// on `out`: the header says it, and a section kind newer than it is
    /// refused.
    pub fn to_version(mut out: W, version: u32) -> Result<Self> {
        if !(WRITTEN_SINCE..=VERSION).contains(&version) {
            return Err(Error::Internal(format!(
                "a snapshot of version {version} cannot be written (this build writes {WRITTEN_SINCE} to {VERSION})"
            )));
        }
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&version.to_le_bytes());
        out.write_all(&header).map_err(write_err)?;
        Ok(SnapshotWriter {
            out,
            pos: HEADER_LEN as u64,
            sections: Vec::new(),
            version,
        })
    }

    fn pad(&mut self) -> Result<()> {
        let rem = (self.pos % ALIGN as u64) as usize;
        if rem != 0 {
            let zeros = [0u8; ALIGN];
            self.out
                .write_all(&zeros[..ALIGN - rem])
                .map_err(write_err)?;
            self.pos += (ALIGN - rem) as u64;
        }
        Ok(())
    }

    /// Appends a section. Each kind may appear once.
    pub fn section(&mut self, kind: SectionKind, bytes: &[u8]) -> Result<()> {
        self.section_in_pieces(kind, &[bytes])
    }

    /// Appends a section whose bytes are `pieces` one after another (as
    /// [`SnapshotWriter::section`] of their concatenation, which is never
    /// made): each piece is written where it is.
    pub fn section_in_pieces(&mut self, kind: SectionKind, pieces: &[&[u8]]) -> Result<()> {
        if self.sections.iter().any(|s| s.kind == kind) {
            return Err(Error::Internal(format!(
                "snapshot section {} written twice",
                kind.name()
            )));
        }
        if kind.since() > self.version {
            return Err(Error::Internal(format!(
                "snapshot section {} in a version {} file",
                kind.name(),
                self.version
            )));
        }
        self.pad()?;
        let offset = self.pos;
        let mut crc = crc32fast::Hasher::new();
        for bytes in pieces {
            self.out.write_all(bytes).map_err(write_err)?;
            self.pos += bytes.len() as u64;
            crc.update(bytes);
        }
        self.sections.push(Section {
            kind,
            offset,
            len: self.pos - offset,
            crc: crc.finalize(),
        });
        Ok(())
    }

    /// Writes the section table and the tail; returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.pad()?;
        let table_offset = self.pos;
        let mut table = Vec::with_capacity(self.sections.len() * ENTRY_LEN);
        for s in &self.sections {
            table.extend_from_slice(&(s.kind as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&s.offset.to_le_bytes());
            table.extend_from_slice(&s.len.to_le_bytes());
            table.extend_from_slice(&s.crc.to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
        }
        let mut tail = Vec::with_capacity(TAIL_LEN);
        tail.extend_from_slice(&table_offset.to_le_bytes());
        tail.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        tail.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
        tail.extend_from_slice(&self.version.to_le_bytes());
        let tail_crc = crc32fast::hash(&tail);
        tail.extend_from_slice(&tail_crc.to_le_bytes());
        tail.extend_from_slice(&MAGIC);
        self.out.write_all(&table).map_err(write_err)?;
        self.out.write_all(&tail).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        Ok(self.out)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A snapshot file's bytes with its section table read. Generic over the
/// storage: a `Vec<u8>` in tests, a memory map in production.
#[derive(Debug)]
pub struct SnapshotFile<B> {
    bytes: B,
    name: String,
    sections: Vec<Section>,
    version: u32,
}

impl<B: AsRef<[u8]>> SnapshotFile<B> {
    /// Reads the header, the tail and the section table (checking their
    /// magic, version and checksums); nothing else is read. `name` (the
    /// path) appears in errors.
    pub fn open(bytes: B, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let corrupt = |reason: String| Error::Corrupt {
            path: PathBuf::from(&name),
            reason,
        };
        let b = bytes.as_ref();
        if b.len() < HEADER_LEN + TAIL_LEN {
            return Err(corrupt(format!(
                "{} bytes is too short for a snapshot (at least {})",
                b.len(),
                HEADER_LEN + TAIL_LEN
            )));
        }
        if b[..8] != MAGIC {
            return Err(corrupt(format!(
                "expected magic {:?} at offset 0, found {:?}",
                MAGIC,
                &b[..8]
            )));
        }
        let version = u32_at(b, 8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(corrupt(format!(
                "format version {version} is not supported (this build reads {MIN_VERSION} to {VERSION})"
            )));
        }
        if let Some(i) = b[12..HEADER_LEN].iter().position(|&x| x != 0) {
            return Err(corrupt(format!(
                "header byte {} is {:#04x}; expected 0",
                12 + i,
                b[12 + i]
            )));
        }
        let t = b.len() - TAIL_LEN;
        let tail = &b[t..];
        if tail[24..32] != MAGIC {
            return Err(corrupt(format!(
                "expected magic {:?} at the end, found {:?}",
                MAGIC,
                &tail[24..32]
            )));
        }
        let tail_crc = u32_at(tail, 20);
        let computed = crc32fast::hash(&tail[..20]);
        if tail_crc != computed {
            return Err(Error::checksum_mismatch(
                &name, "footer", tail_crc, computed,
            ));
        }
        if u32_at(tail, 16) != version {
            return Err(corrupt(format!(
                "footer version {} does not match the header's {version}",
                u32_at(tail, 16)
            )));
        }
        let table_offset = u64_at(tail, 0);
        let count = u32_at(tail, 8) as usize;
        let table_len = count
            .checked_mul(ENTRY_LEN)
            .ok_or_else(|| corrupt(format!("{count} sections")))?;
        let table_end = (table_offset as usize).checked_add(table_len);
        if table_offset < HEADER_LEN as u64 || table_end != Some(t) {
            return Err(corrupt(format!(
                "section table at {table_offset} with {count} entries does not end at the footer ({t})"
            )));
        }
        let table = &b[table_offset as usize..t];
        let stored = u32_at(tail, 12);
        let computed = crc32fast::hash(table);
        if stored != computed {
            return Err(Error::checksum_mismatch(
                &name,
                "section table",
                stored,
                computed,
            ));
        }
        let mut sections = Vec::with_capacity(count);
        for e in table.chunks_exact(ENTRY_LEN) {
            let kind_raw = u32_at(e, 0);
            let kind = SectionKind::from_u32(kind_raw)
                .ok_or_else(|| corrupt(format!("unknown section kind {kind_raw}")))?;
            let offset = u64_at(e, 8);
            let len = u64_at(e, 16);
            let end = offset.checked_add(len);
            if offset < HEADER_LEN as u64
                || !offset.is_multiple_of(ALIGN as u64)
                || end.is_none_or(|end| end > table_offset)
            {
                return Err(corrupt(format!(
                    "section {} at {offset}+{len} lies outside the sections area 64..{table_offset}",
                    kind.name()
                )));
            }
            if kind.since() > version {
                return Err(corrupt(format!(
                    "section {} in a version {version} file (it exists from version {})",
                    kind.name(),
                    kind.since()
                )));
            }
            if sections.iter().any(|s: &Section| s.kind == kind) {
                return Err(corrupt(format!("section {} appears twice", kind.name())));
            }
            sections.push(Section {
                kind,
                offset,
                len,
                crc: u32_at(e, 24),
            });
        }
        for kinds in SectionKind::DICTIONARIES {
            let has: Vec<&str> = kinds
                .iter()
                .filter(|&&k| sections.iter().any(|s: &Section| s.kind == k))
                .map(|k| k.name())
                .collect();
            if has.len() > 1 {
                return Err(corrupt(format!(
                    "sections {} both hold the same identifiers",
                    has.join(" and ")
                )));
            }
        }
        Ok(SnapshotFile {
            bytes,
            name,
            sections,
            version,
        })
    }

    /// The file's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The file's name or path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sections, as the section table lists them.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// A section's bytes (unverified), or an error naming the file if the
    /// snapshot has no such section.
    pub fn section(&self, kind: SectionKind) -> Result<&[u8]> {
        let s = self
            .sections
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| Error::Corrupt {
                path: PathBuf::from(&self.name),
                reason: format!("no {} section", kind.name()),
            })?;
        Ok(&self.bytes.as_ref()[s.offset as usize..(s.offset + s.len) as usize])
    }

    /// A section's bytes (unverified), or `None` when the file has no such
    /// section (a kind a file may lack: see [`SectionKind::since`]).
    pub fn optional_section(&self, kind: SectionKind) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| &self.bytes.as_ref()[s.offset as usize..(s.offset + s.len) as usize])
    }

    /// Checks every section's checksum, and that the padding between
    /// sections is zero.
    pub fn verify(&self) -> Result<()> {
        let mut spans: Vec<(u64, u64)> = self
            .sections
            .iter()
            .map(|s| (s.offset, s.offset + s.len))
            .collect();
        spans.sort_unstable();
        let table_offset =
            (self.bytes.as_ref().len() - TAIL_LEN - self.sections.len() * ENTRY_LEN) as u64;
        let mut at = HEADER_LEN as u64;
        for (start, end) in spans.into_iter().chain([(table_offset, table_offset)]) {
            if start < at {
                return Err(Error::Corrupt {
                    path: PathBuf::from(&self.name),
                    reason: format!("sections overlap at offset {start}"),
                });
            }
            let gap = &self.bytes.as_ref()[at as usize..start as usize];
            if let Some(i) = gap.iter().position(|&x| x != 0) {
                return Err(Error::Corrupt {
                    path: PathBuf::from(&self.name),
                    reason: format!("padding byte at offset {} is not zero", at as usize + i),
                });
            }
            at = end;
        }
        for s in &self.sections {
            let bytes = &self.bytes.as_ref()[s.offset as usize..(s.offset + s.len) as usize];
            s.check(&self.name, crc32fast::hash(bytes))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new();
        w.section(SectionKind::Meta, b"meta bytes").unwrap();
        w.section(SectionKind::Buckets, &[1, 2, 3]).unwrap();
        w.section(SectionKind::Bitmaps, &[]).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_and_alignment() {
        let bytes = sample();
        let f = SnapshotFile::open(bytes, "t").unwrap();
        f.verify().unwrap();
        assert_eq!(f.section(SectionKind::Meta).unwrap(), b"meta bytes");
        assert_eq!(f.section(SectionKind::Buckets).unwrap(), &[1, 2, 3]);
        assert!(f.section(SectionKind::Devices).is_err());
        for s in f.sections() {
            assert_eq!(s.offset % ALIGN as u64, 0);
        }
        assert_eq!(f.sections()[0].offset, HEADER_LEN as u64);
    }

    #[test]
    fn a_section_in_pieces_is_the_section_of_their_concatenation() {
        let whole = {
            let mut w = SnapshotWriter::new();
            w.section(SectionKind::Meta, b"meta").unwrap();
            w.section(SectionKind::Buckets, b"one two three").unwrap();
            w.finish().unwrap()
        };
        let mut w = SnapshotWriter::new();
        w.section_in_pieces(SectionKind::Meta, &[b"me", b"", b"ta"])
            .unwrap();
        w.section_in_pieces(SectionKind::Buckets, &[b"one ", b"two", b" three"])
            .unwrap();
        assert_eq!(w.finish().unwrap(), whole);
        let mut w = SnapshotWriter::new();
        w.section_in_pieces(SectionKind::Meta, &[b"a"]).unwrap();
        assert!(w.section_in_pieces(SectionKind::Meta, &[b"b"]).is_err());
    }

    #[test]
    fn checksum_mismatches_read_alike() {
        let good = sample();
        let f = SnapshotFile::open(good.clone(), "t").unwrap();
        let s = f.sections()[1];
        assert!(s.check("t", s.crc).is_ok());
        let mut bad = good.clone();
        bad[s.offset as usize] ^= 1;
        let e = SnapshotFile::open(bad, "t").unwrap().verify().unwrap_err();
        let expected = format!(
            "t: corrupt: section buckets (offset {}, 3 bytes) checksum: stored {:#010x}, computed",
            s.offset, s.crc
        );
        assert!(e.to_string().starts_with(&expected), "{e}");
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - TAIL_LEN - 1] ^= 1; // the section table's last byte
        let e = SnapshotFile::open(bad, "t").map(|_| ()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t: corrupt: section table checksum: stored"),
            "{e}"
        );
    }

    #[test]
    fn every_flipped_byte_is_caught_by_open_or_verify() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let caught = match SnapshotFile::open(bad, "t") {
                Err(_) => true,
                Ok(f) => f.verify().is_err(),
            };
            assert!(caught, "flipped byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_files_are_refused() {
        let good = sample();
        for n in 0..good.len() {
            assert!(SnapshotFile::open(&good[..n], "t").is_err(), "length {n}");
        }
    }
}
