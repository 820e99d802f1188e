//! A cohort's in-memory members, serialized for the chunk evaluator (once
//! per cohort version when cached), and a plan's leaves fetched from a
//! workspace.

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::cohorts::Cohort;
use crate::error::{Error, Result};
use crate::ids::CohortKey;
use crate::segment::chunk::{LeafBytes, Prepared, Serialized};
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
}

/// Serializes on every call (no cache): for one-off queries and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Uncached;

fn portable(bm: &RoaringBitmap) -> Option<Vec<u8>> {
    if bm.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(bm.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = bm.serialize_into(&mut bytes);
    Some(bytes)
}

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

/// Serialized cohorts kept while their version stays the same.
#[derive(Debug, Default)]
pub struct SerialCache {
    map: std::sync::Mutex<hashbrown::HashMap<CohortKey, Versioned>>,
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
}

impl<'w> Prepared<'w> {
    /// Fetches the leaves' bitmaps for `plan` (made by
    /// [`crate::segment::plan::plan`] on the same workspace): each cohort's
    /// snapshot bitmap in place, its in-memory changes from `src`.
    pub fn new(ws: &'w Workspace, plan: &Plan, src: &dyn BitmapSource) -> Result<Self> {
        Prepared::assemble(plan, ws.users.len(), ws.users.bucket_slices(), |key| {
            let c = ws
                .cohorts
                .get(key)
                .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
            leaf_bytes(c, src)
        })
    }
}

/// A workspace cohort's bytes for the evaluator.
fn leaf_bytes<'w>(c: &'w Cohort, src: &dyn BitmapSource) -> Result<LeafBytes<'w>> {
    let m = &c.members;
    let base = m.base_bytes()?;
    let unchanged = base.is_some() && m.added().is_empty() && m.removed().is_empty();
    Ok(LeafBytes {
        base,
        delta: (!unchanged).then(|| src.bytes(c)),
        max: m.max_bound(),
    })
}
