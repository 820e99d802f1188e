//! A cohort's in-memory members, serialized for the chunk evaluator (once
//! per cohort version when cached), and a plan's leaves fetched from a
//! workspace.

use std::sync::Arc;

use crate::bitmap_view::portable;
use crate::cohorts::Cohort;
use crate::error::{Error, Result};
use crate::ids::CohortKey;
use crate::segment::chunk::{LeafBytes, Prepared, Serialized};
use crate::segment::masks::{BucketMasks, MaskSource};
use crate::segment::plan::Plan;
use crate::workspace::Workspace;

/// Supplies a cohort's in-memory members, serialized.
pub trait BitmapSource: Sync {
    /// The cohort's in-memory members, serialized (see [`Serialized`]).
    fn bytes(&self, cohort: &Cohort) -> Arc<Serialized>;

    /// The cohort's in-memory members, serialized, if they are at hand at
    /// its version already (this serializes nothing).
    fn cached(&self, _cohort: &Cohort) -> Option<Arc<Serialized>> {
        None
    }

    /// The workspace's cache of bucket-range masks, if it keeps one (at
    /// its epoch now).
    fn bucket_masks(&self) -> Option<MaskSource> {
        None
    }
}

/// Serializes on every call (no cache): for one-off queries and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Uncached;

/// Serializes a cohort's in-memory members.
pub fn serialize(cohort: &Cohort) -> Arc<Serialized> {
    Arc::new(Serialized {
        added: portable(cohort.members.added()),
        removed: portable(cohort.members.removed()),
    })
}

impl BitmapSource for Uncached {
    fn bytes(&self, cohort: &Cohort) -> Arc<Serialized> {
        serialize(cohort)
    }
}

/// A cohort's serialized members and the version they were taken at.
type Versioned = (u64, Arc<Serialized>);

/// Serialized cohorts kept while their version stays the same; and, for
/// one workspace only (a live workspace's handle keeps it for the
/// workspace's life), its bucket-range masks.
#[derive(Debug, Default)]
pub struct SerialCache {
    map: std::sync::Mutex<hashbrown::HashMap<CohortKey, Versioned>>,
    masks: Option<Arc<BucketMasks>>,
}

impl SerialCache {
    /// A cache that also keeps one workspace's bucket-range masks, within
    /// `bytes` (0: none kept).
    pub fn with_bucket_masks(bytes: usize) -> Self {
        SerialCache {
            map: Default::default(),
            masks: (bytes > 0).then(|| Arc::new(BucketMasks::new(bytes))),
        }
    }

    /// Keeps the bucket-range masks within `bytes` from now on (0: none),
    /// dropping those kept.
    pub fn set_bucket_masks(&mut self, bytes: usize) {
        self.masks = (bytes > 0).then(|| Arc::new(BucketMasks::new(bytes)));
    }

    /// Drops every bucket-range mask (the users' buckets may have changed:
    /// the workspace was rebuilt); views taken before read the buckets.
    pub fn clear_bucket_masks(&self) {
        if let Some(m) = &self.masks {
            m.clear();
        }
    }

    /// The bucket-range masks' cache, if kept.
    pub fn bucket_mask_cache(&self) -> Option<&BucketMasks> {
        self.masks.as_deref()
    }
}

impl BitmapSource for SerialCache {
    fn cached(&self, cohort: &Cohort) -> Option<Arc<Serialized>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&cohort.key)
            .filter(|(v, _)| *v == cohort.version)
            .map(|(_, b)| b.clone())
    }

    fn bytes(&self, cohort: &Cohort) -> Arc<Serialized> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, b)) = map.get(&cohort.key) {
            if *v == cohort.version {
                return b.clone();
            }
        }
        let b = serialize(cohort);
        map.insert(cohort.key.clone(), (cohort.version, b.clone()));
        b
    }

    fn bucket_masks(&self) -> Option<MaskSource> {
        self.masks.clone().map(MaskSource::new)
    }
}

impl<'w> Prepared<'w> {
    /// Fetches the leaves' bitmaps for `plan` (made by
    /// [`crate::segment::plan::plan`] on the same workspace): each cohort's
    /// snapshot bitmap in place, its in-memory changes from `src`.
    pub fn new(ws: &'w Workspace, plan: &Plan, src: &dyn BitmapSource) -> Result<Self> {
        let p = Prepared::assemble(plan, ws.users.len(), ws.users.bucket_slices(), |key| {
            let c = ws
                .cohorts
                .get(key)
                .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
            leaf_bytes(c, src)
        })?;
        Ok(p.with_bucket_masks(src.bucket_masks()))
    }
}

/// A workspace cohort's bytes for the evaluator.
fn leaf_bytes<'w>(c: &'w Cohort, src: &dyn BitmapSource) -> Result<LeafBytes<'w>> {
    let m = &c.members;
    let base = m.base()?;
    let unchanged = base.is_some() && m.added().is_empty() && m.removed().is_empty();
    Ok(LeafBytes {
        base,
        delta: (!unchanged).then(|| src.bytes(c)),
        max: m.max_bound(),
    })
}
