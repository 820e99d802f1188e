//! Bucket-range masks: per full chunk, the users whose random bucket lies
//! in `lo..=hi`, kept so that a range counted before reads an 8 KiB bitmap
//! (or, when sparse, an array of the users) per chunk instead of its
//! 128 KiB of buckets.
//!
//! A user's bucket never changes once the user exists, and users are only
//! ever appended, so the mask of a full chunk (2^16 users that all exist)
//! stays true for the workspace's life; the last, partial chunk is always
//! computed from the buckets. The one event that can give an existing id
//! another bucket is an undo (the state rebuilt from the durable log after
//! a failed write: users created and then abandoned may come back with
//! other buckets), and it calls [`BucketMasks::clear`]: a view frozen
//! before it carries the old epoch and neither reads nor fills the cache.
//!
//! The masks of a range are built as the evaluator meets its chunks, on
//! whichever thread evaluates the chunk. The cache holds at most its byte
//! budget: a mask that does not fit once the least recently used other
//! ranges are evicted is used once and not kept; a budget of 0 turns the
//! cache off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::buckets;
use crate::bitmap_view::{Container, Kernels, Words, CHUNK_WORDS};

/// The default budget: 64 MiB (the masks of some fifty ranges over ten
/// million users).
pub const DEFAULT_BYTES: usize = 64 << 20;

/// What a mask is charged beyond its bytes.
const OVERHEAD: usize = 64;

/// One chunk's mask: a container's bytes in the portable format's layout.
#[derive(Debug)]
pub(crate) struct Mask {
    bytes: Box<[u8]>,
    card: u32,
}

impl Mask {
    /// The mask of a full chunk's users (`buckets`: 2^16 of them), built
    /// with `w` as scratch.
    fn build(k: Kernels, buckets: &[u16], lo: u16, hi: u16, w: &mut Words) -> Mask {
        let card = buckets::write(k, buckets, lo, hi, w);
        let bytes: Box<[u8]> =
            if card as usize <= crate::bitmap_view::ARRAY_MAX_CARDINALITY as usize {
                let mut v = Vec::with_capacity(2 * card as usize);
                for (i, &word) in w.iter().enumerate() {
                    let mut x = word;
                    while x != 0 {
                        let b = x.trailing_zeros();
                        x &= x - 1;
                        v.extend_from_slice(&((i as u16) << 6 | b as u16).to_le_bytes());
                    }
                }
                v.into()
            } else {
                w.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
        Mask { bytes, card }
    }

    /// The users in range, as a container (`None`: nobody).
    pub(crate) fn container(&self) -> Option<Container<'_>> {
        if self.card == 0 {
            return None;
        }
        Container::from_parts(&self.bytes, self.card)
    }

    fn charge(&self) -> usize {
        self.bytes.len() + OVERHEAD
    }
}

/// The masks of one range, one slot per chunk that was full when the range
/// was looked up.
#[derive(Debug)]
pub(crate) struct RangeMasks {
    lo: u16,
    hi: u16,
    chunks: Box<[OnceLock<Arc<Mask>>]>,
}

impl RangeMasks {
    pub(crate) fn lo(&self) -> u16 {
        self.lo
    }
    pub(crate) fn hi(&self) -> u16 {
        self.hi
    }
    /// The chunks it has a slot for (`0..slots()`).
    pub(crate) fn slots(&self) -> usize {
        self.chunks.len()
    }
}

#[derive(Debug)]
struct Entry {
    range: Arc<RangeMasks>,
    used: u64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    ranges: HashMap<(u16, u16), Entry>,
    bytes: usize,
    tick: u64,
    epoch: u64,
}

/// Hits, misses and size of a [`BucketMasks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskStats {
    /// Chunk masks read from the cache.
    pub hits: u64,
    /// Chunk masks built from the buckets (then kept, if they fit).
    pub misses: u64,
    /// Ranges held now.
    pub ranges: u64,
    /// Bytes the held masks take.
    pub bytes: u64,
    /// The byte budget (`bucket_mask_cache_bytes`); 0: the cache is off.
    pub budget: u64,
}

/// A bounded cache of bucket-range masks, shared by every view of one
/// workspace (or of one snapshot).
#[derive(Debug)]
pub struct BucketMasks {
    budget: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for BucketMasks {
    fn default() -> Self {
        BucketMasks::new(DEFAULT_BYTES)
    }
}

impl BucketMasks {
    /// A cache of at most about `budget` bytes (0: off).
    pub fn new(budget: usize) -> Self {
        BucketMasks {
            budget,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch: a view notes it when it is taken, and uses the
    /// cache only while it has not changed.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Drops every mask and starts a new epoch: the users' buckets may
    /// have changed (the workspace was rebuilt).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.ranges.clear();
        inner.bytes = 0;
        inner.epoch += 1;
    }

    /// Hits, misses and size now.
    pub fn stats(&self) -> MaskStats {
        let inner = self.lock();
        MaskStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            ranges: inner.ranges.len() as u64,
            bytes: inner.bytes as u64,
            budget: self.budget as u64,
        }
    }

    /// The masks of `lo..=hi` for a view of `full` full chunks taken at
    /// `epoch`; `None` when the cache is off or the epoch is past. A range
    /// held for fewer chunks is replaced by one of `full` slots that keeps
    /// its masks.
    pub(crate) fn range(&self, lo: u16, hi: u16, full: u32, epoch: u64) -> Option<Arc<RangeMasks>> {
        if self.budget == 0 || full == 0 {
            return None;
        }
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let full = full as usize;
        let e = inner.ranges.entry((lo, hi)).or_insert_with(|| Entry {
            range: Arc::new(RangeMasks {
                lo,
                hi,
                chunks: Box::new([]),
            }),
            used: tick,
            bytes: 0,
        });
        e.used = tick;
        if e.range.chunks.len() < full {
            let chunks = (0..full)
                .map(|i| match e.range.chunks.get(i).and_then(OnceLock::get) {
                    Some(m) => OnceLock::from(m.clone()),
                    None => OnceLock::new(),
                })
                .collect();
            e.range = Arc::new(RangeMasks { lo, hi, chunks });
        }
        Some(e.range.clone())
    }

    /// The mask of chunk `key` of `range`, if it is kept (a hit).
    pub(crate) fn get(&self, range: &RangeMasks, key: u32) -> Option<Arc<Mask>> {
        let m = range.chunks.get(key as usize)?.get()?.clone();
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(m)
    }

    /// Builds the mask of chunk `key` of `range` from the chunk's
    /// `buckets` (all 2^16 of them), with `scratch`, and keeps it if the
    /// chunk has a slot and the mask fits (a miss).
    pub(crate) fn build(
        &self,
        range: &RangeMasks,
        key: u32,
        k: Kernels,
        buckets: &[u16],
        scratch: &mut Words,
    ) -> Arc<Mask> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let m = Arc::new(Mask::build(k, buckets, range.lo, range.hi, scratch));
        if let Some(slot) = range.chunks.get(key as usize) {
            if buckets.len() == CHUNK_WORDS * 64 {
                self.keep(range, slot, &m);
            }
        }
        m
    }

    /// Keeps `m` in `slot` of `range` if the range is still held and the
    /// mask fits the budget once the least recently used other ranges are
    /// evicted.
    fn keep(&self, range: &RangeMasks, slot: &OnceLock<Arc<Mask>>, m: &Arc<Mask>) {
        let charge = m.charge();
        let mut inner = self.lock();
        let held = inner
            .ranges
            .get(&(range.lo, range.hi))
            .is_some_and(|e| std::ptr::eq(Arc::as_ptr(&e.range), range));
        if !held || slot.get().is_some() || charge > self.budget {
            return;
        }
        while inner.bytes + charge > self.budget {
            let oldest = inner
                .ranges
                .iter()
                .filter(|(&r, _)| r != (range.lo, range.hi))
                .min_by_key(|(_, e)| e.used)
                .map(|(&r, _)| r);
            let Some(r) = oldest else { return };
            if let Some(e) = inner.ranges.remove(&r) {
                inner.bytes -= e.bytes;
            }
        }
        if slot.set(m.clone()).is_ok() {
            inner.bytes += charge;
            if let Some(e) = inner.ranges.get_mut(&(range.lo, range.hi)) {
                e.bytes += charge;
            }
        }
    }
}

/// A cache and the epoch a view was taken at: what a prepared plan reads
/// its bucket masks through.
#[derive(Clone, Debug)]
pub struct MaskSource {
    cache: Arc<BucketMasks>,
    epoch: u64,
}

impl MaskSource {
    /// `cache` as it is now (a view taken under the workspace's lock
    /// notes the epoch then).
    pub fn new(cache: Arc<BucketMasks>) -> Self {
        let epoch = cache.epoch();
        MaskSource { cache, epoch }
    }

    pub(crate) fn range(&self, lo: u16, hi: u16, full: u32) -> Option<Arc<RangeMasks>> {
        self.cache.range(lo, hi, full, self.epoch)
    }

    /// The cache.
    pub(crate) fn cache(&self) -> &BucketMasks {
        &self.cache
    }
}
