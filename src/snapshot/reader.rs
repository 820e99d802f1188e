//! Reads a snapshot in place: [`Snapshot::open`] maps the file and reads
//! its footer (O(1)); every section is touched only when asked for. The
//! workspace served from it is loaded by `engine::persist`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use hashbrown::HashMap;
use serde::Serialize;

use super::compact::{CompactDict, Layout};
use super::dict::{alias_key, Dict, Ids};
use super::format::{Section, SectionKind, SnapshotFile};
use super::meta::Meta;
use super::mmap::Mapped;
use crate::bitmap_view::{BitmapView, Container, Header};
use crate::error::{Error, Result};
use crate::ids::{CohortKey, Partner, UserId, UserRef, BUCKETS};

#[cfg(target_endian = "big")]
compile_error!("segq's snapshot format is little-endian and read in place");

/// The bytes of a snapshot: a memory map, or a buffer (tests, tools).
#[derive(Debug)]
pub enum Storage {
    /// The file, memory-mapped.
    Mapped(Mapped),
    /// The bytes, in memory.
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Storage {
    fn as_ref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m.as_ref(),
            Storage::Owned(v) => v,
        }
    }
}

/// An open snapshot.
#[derive(Debug)]
pub struct Snapshot {
    file: SnapshotFile<Storage>,
    meta: OnceLock<std::result::Result<Meta, String>>,
    /// Each cohort bitmap's header, parsed the first time it is read: the
    /// file does not change, so later reads skip the parse.
    headers: OnceLock<Vec<OnceLock<Header>>>,
    /// The cohorts by partner and id, and by partner and name, built from
    /// the meta section the first time a filter names a cohort.
    cohorts: OnceLock<CohortIndex>,
}

/// A snapshot's cohorts, indexed for a plan's lookups: each partner's by
/// id (unique), and by name (names may repeat), as indexes into the meta
/// section's cohorts.
#[derive(Debug, Default)]
struct CohortIndex {
    by_id: HashMap<Partner, HashMap<String, usize>>,
    by_name: HashMap<Partner, HashMap<String, Vec<usize>>>,
}

impl CohortIndex {
    fn new(meta: &Meta) -> CohortIndex {
        let mut ix = CohortIndex::default();
        for (i, c) in meta.cohorts.iter().enumerate() {
            ix.by_id
                .entry(c.partner)
                .or_default()
                .entry(c.cohort_id.clone())
                .or_insert(i);
            ix.by_name
                .entry(c.partner)
                .or_default()
                .entry(c.name.clone())
                .or_default()
                .push(i);
        }
        ix
    }
}

/// What `segq snapshot inspect` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The file's name or path.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The workspace it holds.
    pub workspace: String,
    /// The last log seq it holds.
    pub seq: u64,
    /// Its users.
    pub users: u32,
    /// Its sections, in file order.
    pub sections: Vec<SectionInfo>,
    /// Its cohorts, in the order of their bitmaps.
    pub cohorts: Vec<CohortInfo>,
    /// Containers of each kind over all cohorts.
    pub containers: BTreeMap<&'static str, u64>,
    /// The identifier dictionaries: external ids, devices, aliases.
    pub dictionaries: Vec<DictionaryInfo>,
}

/// One identifier dictionary, as `segq snapshot inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DictionaryInfo {
    /// Its section's kind.
    pub kind: &'static str,
    /// `hashed` (versions 1 to 3) or `compact` (version 4 on).
    pub format: &'static str,
    /// The identifiers it holds.
    pub entries: u64,
    /// Its section's size in bytes.
    pub bytes: u64,
    /// Bytes per user of the snapshot.
    pub bytes_per_user: f64,
    /// A compact one's parts: identifier -> user FST, group offsets and
    /// front-coded groups (bytes).
    pub fst: Option<u64>,
    /// See `fst`.
    pub offsets: Option<u64>,
    /// See `fst`.
    pub blocks: Option<u64>,
}

/// One section of a snapshot file, as `segq snapshot inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SectionInfo {
    /// Its kind (`meta`, `buckets`, …).
    pub kind: &'static str,
    /// Where it starts in the file (bytes).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its CRC-32, in hex.
    pub crc: String,
}

/// One cohort of a snapshot, as `segq snapshot inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CohortInfo {
    /// Its partner.
    pub partner: String,
    /// Its cohort_id.
    pub cohort_id: String,
    /// Its name.
    pub name: String,
    /// Its members.
    pub members: u64,
    /// Its bitmap's size in bytes.
    pub bytes: u64,
    /// Array containers in its bitmap.
    pub arrays: u32,
    /// Bitmap containers in its bitmap.
    pub bitmaps: u32,
    /// Run containers in its bitmap.
    pub runs: u32,
}

impl Snapshot {
    /// Maps a snapshot file and reads its footer. Nothing else is read.
    pub fn open(path: &Path) -> Result<Snapshot> {
        let map = Mapped::open(path)?;
        Self::new(Storage::Mapped(map), path.display().to_string())
    }

    /// A snapshot held in memory.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<String>) -> Result<Snapshot> {
        Self::new(Storage::Owned(bytes), name.into())
    }

    fn new(storage: Storage, name: String) -> Result<Snapshot> {
        Ok(Snapshot {
            file: SnapshotFile::open(storage, name)?,
            meta: OnceLock::new(),
            headers: OnceLock::new(),
            cohorts: OnceLock::new(),
        })
    }

    /// The snapshot's name: its path, or the name given to [`Snapshot::from_bytes`].
    pub fn name(&self) -> &str {
        self.file.name()
    }

    /// A `Corrupt` error naming this snapshot.
    pub fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.file.name().into(),
            reason: reason.into(),
        }
    }

    /// The sections of the file, as its section table lists them.
    pub fn sections(&self) -> &[Section] {
        self.file.sections()
    }

    /// The workspace-level contents, decoded on first use.
    pub fn meta(&self) -> Result<&Meta> {
        let m = self.meta.get_or_init(|| {
            let bytes = self
                .file
                .section(SectionKind::Meta)
                .map_err(|e| e.to_string())?;
            Meta::decode(bytes)
        });
        m.as_ref().map_err(|e| self.corrupt(e.clone()))
    }

    /// The number of users.
    pub fn users(&self) -> Result<u32> {
        Ok(self.meta()?.users)
    }

    /// Every user's random bucket, read in place.
    pub fn buckets(&self) -> Result<&[u16]> {
        let b = self.file.section(SectionKind::Buckets)?;
        bytemuck::try_cast_slice(b).map_err(|e| self.corrupt(format!("buckets section: {e}")))
    }

    /// The dictionary of `kinds` (packed, compact, hashed): the newest
    /// the file has (packed from version 5, compact in version 4, hashed
    /// before), and the kind of its section.
    fn dict_of(
        &self,
        [packed, compact, hashed]: [SectionKind; 3],
    ) -> Result<(SectionKind, Ids<'_>)> {
        for (kind, layout) in [(packed, Layout::Packed), (compact, Layout::Plain)] {
            if let Some(b) = self.file.optional_section(kind) {
                return CompactDict::parse(b, layout)
                    .map(|d| (kind, Ids::Compact(d)))
                    .map_err(|e| self.corrupt(format!("{} section: {e}", kind.name())));
            }
        }
        Dict::parse(self.file.section(hashed)?)
            .map(|d| (hashed, Ids::Hashed(d)))
            .map_err(|e| self.corrupt(format!("{} section: {e}", hashed.name())))
    }

    fn dict(&self, kinds: [SectionKind; 3]) -> Result<Ids<'_>> {
        self.dict_of(kinds).map(|(_, d)| d)
    }

    /// The attributes section's bytes (`None`: the file has none, as no
    /// version 1 file does).
    pub fn attributes_bytes(&self) -> Option<&[u8]> {
        self.file.optional_section(SectionKind::Attributes)
    }

    /// The deleted users section's bytes, the ids in the portable roaring
    /// format (`None`: the file has none: no user was deleted, or it is
    /// older than version 3).
    pub fn deleted_bytes(&self) -> Option<&[u8]> {
        self.file.optional_section(SectionKind::Deleted)
    }

    /// The bytes of section `kind`, if the file has one (a dictionary's,
    /// for a writer that copies it unchanged).
    pub fn section_bytes(&self, kind: SectionKind) -> Option<&[u8]> {
        self.file.optional_section(kind)
    }

    /// The file's format version.
    pub fn version(&self) -> u32 {
        self.file.version()
    }

    /// The external_id dictionary.
    pub fn external_ids(&self) -> Result<Ids<'_>> {
        self.dict(SectionKind::DICTIONARIES[0])
    }

    /// The device_id dictionary.
    pub fn devices(&self) -> Result<Ids<'_>> {
        self.dict(SectionKind::DICTIONARIES[1])
    }

    /// The alias dictionary.
    pub fn aliases(&self) -> Result<Ids<'_>> {
        self.dict(SectionKind::DICTIONARIES[2])
    }

    /// Whoever holds an identifier, from the mapped dictionaries.
    pub fn lookup(&self, r: &UserRef) -> Result<Option<UserId>> {
        Ok(match r {
            UserRef::ExternalId(e) => self.external_ids()?.get(e.as_bytes()),
            UserRef::DeviceId(d) => self.devices()?.get(d.as_bytes()),
            UserRef::Alias { label, name } => self.aliases()?.get(&alias_key(label, name)),
        })
    }

    /// A user's external id, if identified.
    pub fn external_id(&self, user: UserId) -> Result<Option<String>> {
        let mut key = Vec::new();
        if !self.external_ids()?.key_into(user, &mut key) {
            return Ok(None);
        }
        String::from_utf8(key)
            .map(Some)
            .map_err(|_| self.corrupt(format!("external id of user {user} is not UTF-8")))
    }

    /// The members of cohort `i` of the catalog, read in place.
    /// Its header is parsed once (the first read), then kept.
    pub fn bitmap(&self, i: usize) -> Result<BitmapView<'_>> {
        let bytes = self.bitmap_bytes(i)?;
        let corrupt = |e: crate::bitmap_view::ViewError| {
            let id = self.meta().map_or("?", |m| m.cohorts[i].cohort_id.as_str());
            self.corrupt(format!("cohort {id}: {e}"))
        };
        let headers = self.headers.get_or_init(|| {
            let n = self.meta().map_or(0, |m| m.cohorts.len());
            (0..n).map(|_| OnceLock::new()).collect()
        });
        match headers.get(i).and_then(OnceLock::get) {
            Some(h) => BitmapView::with_header(bytes, *h).map_err(corrupt),
            None => {
                let v = BitmapView::parse(bytes).map_err(corrupt)?;
                if let Some(slot) = headers.get(i) {
                    let _ = slot.set(v.header());
                }
                Ok(v)
            }
        }
    }

    /// The bytes of cohort `i`'s bitmap, not parsed (O(1)).
    pub fn bitmap_bytes(&self, i: usize) -> Result<&[u8]> {
        let c = self
            .meta()?
            .cohorts
            .get(i)
            .ok_or_else(|| self.corrupt(format!("no cohort {i}")))?;
        let section = self.file.section(SectionKind::Bitmaps)?;
        let bytes = usize::try_from(c.offset)
            .ok()
            .and_then(|o| section.get(o..o.checked_add(usize::try_from(c.len).ok()?)?))
            .ok_or_else(|| {
                self.corrupt(format!(
                    "cohort {} lies outside the bitmaps section",
                    c.cohort_id
                ))
            })?;
        Ok(bytes)
    }

    /// Checks everything: every checksum, the meta decodes, every bitmap
    /// parses and verifies with the cardinality the catalog says, every
    /// bucket is a bucket, and every dictionary is consistent.
    pub fn verify(&self) -> Result<()> {
        self.file.verify()?;
        let meta = self.meta()?;
        let buckets = self.buckets()?;
        if buckets.len() != meta.users as usize {
            return Err(self.corrupt(format!(
                "{} buckets for {} users",
                buckets.len(),
                meta.users
            )));
        }
        if let Some(u) = buckets.iter().position(|&b| b >= BUCKETS) {
            return Err(self.corrupt(format!("user {u} has bucket {}", buckets[u])));
        }
        for kinds in SectionKind::DICTIONARIES {
            let (kind, d) = self.dict_of(kinds)?;
            d.verify(meta.users)
                .map_err(|e| self.corrupt(format!("{} dictionary: {e}", kind.name())))?;
        }
        for (i, c) in meta.cohorts.iter().enumerate() {
            let v = self.bitmap(i)?;
            v.verify()
                .map_err(|e| self.corrupt(format!("cohort {}: {e}", c.cohort_id)))?;
            if v.len() != c.cardinality {
                return Err(self.corrupt(format!(
                    "cohort {}: catalog says {} members, bitmap holds {}",
                    c.cohort_id,
                    c.cardinality,
                    v.len()
                )));
            }
            let max = v.containers().checked_sub(1).and_then(|last| {
                let low = v.container(last).iter().last()?;
                Some(u32::from(v.key(last)) << 16 | u32::from(low))
            });
            if max.is_some_and(|m| m >= meta.users) {
                return Err(
                    self.corrupt(format!("cohort {} names a user past the last", c.cohort_id))
                );
            }
        }
        Ok(())
    }

    /// Checks every section's checksum by reading the file at `path` with
    /// plain reads rather than through the map, so that checking a large
    /// snapshot does not fill the process's resident memory: the start-up
    /// check. One thread reads the file front to back in 8 MiB chunks
    /// (sequential reads, at the disk's rate); the others compute each
    /// chunk's CRC-32 meanwhile, and a section's checksum is its chunks'
    /// combined in order.
    pub fn verify_streaming(&self, path: &Path) -> Result<()> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        self.verify_streaming_with(path, workers, 8 << 20)
    }

    /// [`Self::verify_streaming`] with `workers` checksum threads and
    /// chunks of `chunk` bytes.
    pub fn verify_streaming_with(&self, path: &Path, workers: usize, chunk: usize) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::sync::mpsc;
        use std::sync::Mutex;

        let io = |source| Error::io(path, source);
        let chunk = chunk.max(1);
        let sections = self.sections();
        // (section, chunk, bytes) to the workers; (section, chunk, crc,
        // len) back; spent buffers back to the reader.
        let (jobs, job_rx) = mpsc::sync_channel::<(usize, usize, Vec<u8>)>(workers * 2);
        let job_rx = Mutex::new(job_rx);
        let (done, results) = mpsc::channel::<(usize, usize, u32, u64)>();
        let (spent, free) = mpsc::channel::<Vec<u8>>();
        let read = std::thread::scope(|scope| -> Result<()> {
            for _ in 0..workers.max(1) {
                let (job_rx, done, spent) = (&job_rx, done.clone(), spent.clone());
                scope.spawn(move || loop {
                    let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((s, c, buf)) = job else { return };
                    let crc = crc32fast::hash(&buf);
                    let _ = done.send((s, c, crc, buf.len() as u64));
                    let _ = spent.send(buf);
                });
            }
            drop((done, spent));
            let mut f = std::fs::File::open(path).map_err(io)?;
            let mut at = None;
            let mut buffers = 0;
            for (i, s) in sections.iter().enumerate() {
                if at != Some(s.offset) {
                    f.seek(SeekFrom::Start(s.offset)).map_err(io)?;
                }
                let mut left = s.len;
                let mut c = 0;
                while left > 0 {
                    let n = left.min(chunk as u64) as usize;
                    let mut buf = match free.try_recv() {
                        Ok(b) => b,
                        // At most workers * 3 buffers are ever made.
                        Err(_) if buffers < workers * 3 => {
                            buffers += 1;
                            Vec::with_capacity(chunk)
                        }
                        Err(_) => free.recv().unwrap_or_default(),
                    };
                    buf.resize(n, 0);
                    f.read_exact(&mut buf).map_err(io)?;
                    if jobs.send((i, c, buf)).is_err() {
                        break;
                    }
                    left -= n as u64;
                    c += 1;
                }
                at = Some(s.offset + s.len);
            }
            drop(jobs);
            Ok(())
        });
        read?;
        let mut parts: Vec<Vec<(usize, u32, u64)>> = vec![Vec::new(); sections.len()];
        for (s, c, crc, len) in results.try_iter() {
            parts[s].push((c, crc, len));
        }
        for (s, mut p) in sections.iter().zip(parts) {
            p.sort_unstable_by_key(|x| x.0);
            let mut h = crc32fast::Hasher::new();
            let mut seen = 0u64;
            for (_, crc, len) in p {
                h.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
                seen += len;
            }
            if seen != s.len {
                return Err(Error::Internal(format!(
                    "checked {seen} of the {} bytes of section {}",
                    s.len,
                    s.kind.name()
                )));
            }
            s.check(self.name(), h.finalize())?;
        }
        Ok(())
    }

    /// Sections, sizes, cohorts and container kinds.
    pub fn inspect(&self) -> Result<Inspection> {
        let meta = self.meta()?;
        let mut containers = BTreeMap::new();
        let mut cohorts = Vec::new();
        for (i, c) in meta.cohorts.iter().enumerate() {
            let v = self.bitmap(i)?;
            let (mut a, mut b, mut r) = (0, 0, 0);
            for (_, cont) in v.iter_containers() {
                match cont {
                    Container::Array(_) => a += 1,
                    Container::Bitmap(_) => b += 1,
                    Container::Run(_) => r += 1,
                }
            }
            *containers.entry("array").or_insert(0) += u64::from(a);
            *containers.entry("bitmap").or_insert(0) += u64::from(b);
            *containers.entry("run").or_insert(0) += u64::from(r);
            cohorts.push(CohortInfo {
                partner: c.partner.to_string(),
                cohort_id: c.cohort_id.clone(),
                name: c.name.clone(),
                members: c.cardinality,
                bytes: c.len,
                arrays: a,
                bitmaps: b,
                runs: r,
            });
        }
        let mut dictionaries = Vec::new();
        for kinds in SectionKind::DICTIONARIES {
            let (kind, d) = self.dict_of(kinds)?;
            let (format, parts) = match &d {
                Ids::Hashed(_) => ("hashed", None),
                Ids::Compact(c) if c.layout() == Layout::Plain => ("compact", Some(c.parts())),
                Ids::Compact(c) => ("packed", Some(c.parts())),
            };
            let bytes = self
                .sections()
                .iter()
                .find(|s| s.kind == kind)
                .map_or(0, |s| s.len);
            dictionaries.push(DictionaryInfo {
                kind: kind.name(),
                format,
                entries: d.len() as u64,
                bytes,
                bytes_per_user: bytes as f64 / f64::from(meta.users.max(1)),
                fst: parts.map(|p| p.fst),
                offsets: parts.map(|p| p.offsets),
                blocks: parts.map(|p| p.blocks),
            });
        }
        Ok(Inspection {
            dictionaries,
            file: self.name().to_string(),
            bytes: self.file.bytes().len() as u64,
            workspace: meta.workspace.clone(),
            seq: meta.seq,
            users: meta.users,
            sections: self
                .sections()
                .iter()
                .map(|s| SectionInfo {
                    kind: s.kind.name(),
                    offset: s.offset,
                    len: s.len,
                    crc: format!("{:08x}", s.crc),
                })
                .collect(),
            cohorts,
            containers,
        })
    }

    /// The index of a cohort in the catalog.
    pub fn cohort_index(&self, key: &CohortKey) -> Result<Option<usize>> {
        self.cohort_with_id(key.partner, &key.cohort_id)
    }

    /// The index of `partner`'s cohort `cohort_id`, if the snapshot has it.
    pub fn cohort_with_id(&self, partner: Partner, cohort_id: &str) -> Result<Option<usize>> {
        Ok(self
            .cohort_lookup()?
            .by_id
            .get(&partner)
            .and_then(|m| m.get(cohort_id))
            .copied())
    }

    fn cohort_lookup(&self) -> Result<&CohortIndex> {
        let meta = self.meta()?;
        Ok(self.cohorts.get_or_init(|| CohortIndex::new(meta)))
    }

    /// The indexes of `partner`'s cohorts named `name` (names may repeat).
    pub fn cohorts_named(&self, partner: Partner, name: &str) -> Result<&[usize]> {
        Ok(self
            .cohort_lookup()?
            .by_name
            .get(&partner)
            .and_then(|m| m.get(name))
            .map_or(&[], Vec::as_slice))
    }
}
