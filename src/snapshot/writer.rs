//! Writes a snapshot file from its storage-level contents: the meta (the
//! snapshot's own types), buckets, identifier dictionaries and cohort
//! bitmaps as bytes. What a workspace puts in it is the engine's business
//! (`engine::persist`).

use std::sync::Arc;

use super::compact::{CompactWriter, Layout};
use super::format::{SectionKind, SnapshotWriter, VERSION};
use super::meta::{CohortMeta, Meta};
use super::reader::Snapshot;
use crate::error::{Error, Result};

/// The contents of a snapshot being written.
pub struct Contents {
    /// Everything but the catalog's cohorts, which [`Contents::push_cohort`]
    /// adds.
    pub meta: Meta,
    /// The external_id dictionary.
    pub external_ids: CompactWriter,
    /// The device_id dictionary.
    pub devices: CompactWriter,
    /// The alias dictionary (keys made by [`super::dict::alias_key`]).
    pub aliases: CompactWriter,
    /// The attributes section ([`crate::attributes`] encodes it; empty:
    /// no section).
    pub attributes: Pieces,
    /// The deleted users section (the ids in the portable roaring format;
    /// empty: no section).
    pub deleted: Vec<u8>,
    /// A snapshot whose identifier dictionaries are written instead of the
    /// three above, copied as they are (it must hold them in the layout of
    /// `version`): for a workspace whose users did not change since.
    pub dictionaries_from: Option<Arc<Snapshot>>,
    /// The format version written: [`VERSION`] (packed dictionaries), or
    /// 4 (the compact layout of version 4, for a build that reads no
    /// newer file).
    pub version: u32,
    buckets: Vec<u8>,
    bitmaps: Vec<u8>,
}

impl Contents {
    /// Empty contents under `meta` (its cohorts are replaced by those
    /// pushed).
    pub fn new(mut meta: Meta) -> Contents {
        meta.cohorts.clear();
        Contents {
            meta,
            external_ids: CompactWriter::new(),
            devices: CompactWriter::new(),
            aliases: CompactWriter::new(),
            dictionaries_from: None,
            attributes: Pieces::new(),
            deleted: Vec::new(),
            version: VERSION,
            buckets: Vec::new(),
            bitmaps: Vec::new(),
        }
    }

    /// The next user's random bucket.
    pub fn push_bucket(&mut self, bucket: u16) {
        self.buckets.extend_from_slice(&bucket.to_le_bytes());
    }

    /// The next cohort of the catalog: `bitmap` appends its members in the
    /// portable roaring format; its offset and length in the bitmaps
    /// section (8-byte aligned) are filled in.
    pub fn push_cohort(
        &mut self,
        mut cohort: CohortMeta,
        bitmap: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        while !self.bitmaps.len().is_multiple_of(8) {
            self.bitmaps.push(0);
        }
        let offset = self.bitmaps.len() as u64;
        bitmap(&mut self.bitmaps)?;
        cohort.offset = offset;
        cohort.len = self.bitmaps.len() as u64 - offset;
        self.meta.cohorts.push(cohort);
        Ok(())
    }

    /// Room for `users` more buckets (a writer that knows its users).
    pub fn reserve_buckets(&mut self, users: usize) {
        self.buckets.reserve(users * 2);
    }

    /// The file's bytes.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.write_to(Vec::with_capacity(1 << 20))
    }

    /// Writes the file to `out`, section by section in the format's order
    /// (each section's memory is given back once it is written), and
    /// returns `out`.
    pub fn write_to<W: std::io::Write>(self, out: W) -> Result<W> {
        let Contents {
            meta,
            external_ids,
            devices,
            aliases,
            dictionaries_from,
            attributes,
            deleted,
            version,
            buckets,
            bitmaps,
        } = self;
        let meta = meta.encode().map_err(Error::Internal)?;
        let (layout, slot) = dictionary_layout(version)?;
        let mut w = SnapshotWriter::to_version(out, version)?;
        w.section(SectionKind::Meta, &meta)?;
        w.section(SectionKind::Buckets, &buckets)?;
        drop(buckets);
        // One dictionary built at a time: its keys are given back before
        // the next is built.
        for (kinds, dict) in
            SectionKind::DICTIONARIES
                .into_iter()
                .zip([external_ids, devices, aliases])
        {
            match &dictionaries_from {
                Some(snap) => {
                    let bytes = snap.section_bytes(kinds[slot]).ok_or_else(|| {
                        Error::Internal(format!(
                            "{} has no {} section to copy",
                            snap.name(),
                            kinds[slot].name()
                        ))
                    })?;
                    w.section(kinds[slot], bytes)?;
                }
                None => w.section(kinds[slot], &dict.finish(layout)?)?,
            }
        }
        w.section(SectionKind::Bitmaps, &bitmaps)?;
        drop(bitmaps);
        if !attributes.is_empty() {
            w.section_in_pieces(SectionKind::Attributes, &attributes.slices())?;
        }
        if !deleted.is_empty() {
            w.section(SectionKind::Deleted, &deleted)?;
        }
        w.finish()
    }
}

/// Bytes a section is written from where they already are (the mapped
/// section of the snapshot a workspace was read from), with no copy of
/// them made in memory.
pub trait SharedBytes: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];
}

/// A section's bytes in pieces, written one after another: buffers of
/// bytes made for it, and bytes shared with where they already are, so
/// that a section of mostly unchanged parts costs no memory of its size
/// to write.
#[derive(Default)]
pub struct Pieces {
    pieces: Vec<Piece>,
}

enum Piece {
    Owned(Vec<u8>),
    Shared(Box<dyn SharedBytes>),
}

impl Pieces {
    /// No bytes.
    pub fn new() -> Pieces {
        Pieces::default()
    }

    /// Appends `bytes`.
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.pieces.push(Piece::Owned(bytes));
        }
    }

    /// Appends `shared`'s bytes, kept where they are.
    pub fn push_shared(&mut self, shared: Box<dyn SharedBytes>) {
        self.pieces.push(Piece::Shared(shared));
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.iter().all(<[u8]>::is_empty)
    }

    /// The pieces in order.
    pub fn slices(&self) -> Vec<&[u8]> {
        self.iter().collect()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.pieces.iter().map(|p| match p {
            Piece::Owned(b) => b.as_slice(),
            Piece::Shared(s) => s.bytes(),
        })
    }
}

impl From<Vec<u8>> for Pieces {
    fn from(bytes: Vec<u8>) -> Pieces {
        let mut p = Pieces::new();
        p.push_owned(bytes);
        p
    }
}

/// How a file of `version` lays out its identifier dictionaries, and which
/// of [`SectionKind::DICTIONARIES`]' kinds (the index into each) it writes
/// them as: the dictionaries' layout makes every file a version 5 one (or
/// 4).
pub fn dictionary_layout(version: u32) -> Result<(Layout, usize)> {
    match version {
        5 => Ok((Layout::Packed, 0)),
        4 => Ok((Layout::Plain, 1)),
        v => Err(Error::Internal(format!(
            "snapshots are written at version 4 or 5, not {v}"
        ))),
    }
}
