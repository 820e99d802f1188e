//! A cohort's members, layered like the user registry: the bitmap of the
//! snapshot the workspace was loaded from, read in place, plus what changed
//! since, in memory: members added (not in the snapshot's bitmap) and
//! members removed (in it). `added ∩ base = ∅` and `removed ⊆ base` always
//! hold, so the members are `(base ∪ added) \ removed` and the count is
//! kept exactly.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use roaring::RoaringBitmap;

use crate::bitmap_view::BitmapView;
use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

/// A cohort's bitmap in a snapshot: catalog entry `index`.
#[derive(Clone, Debug)]
pub struct BaseBitmap {
    snap: Arc<Snapshot>,
    index: usize,
    /// The number of members and the largest, read once.
    len: u64,
    max: Option<u32>,
    /// Whether the containers hold what their headers say: checked once,
    /// when made ([`BaseBitmap::new`]) or on the first read
    /// ([`BaseBitmap::open`]); shared by the clones.
    checked: Arc<OnceLock<std::result::Result<(), String>>>,
}

impl BaseBitmap {
    /// Catalog entry `index` of `snap`; checks that its bitmap parses and
    /// that its containers hold what their headers say (sorted arrays,
    /// bitmap and run cardinalities), so that evaluating it cannot count
    /// wrong.
    pub fn new(snap: Arc<Snapshot>, index: usize) -> Result<Self> {
        let b = BaseBitmap::open(snap, index)?;
        b.check()?;
        Ok(b)
    }

    /// Catalog entry `index` of `snap`, its header parsed (the count and
    /// the largest member read from it); the containers are checked as
    /// [`BaseBitmap::new`] checks them on the first read of the bitmap,
    /// which fails if they do not hold what their headers say. Opening a
    /// workspace so costs O(containers), not O(bytes).
    pub fn open(snap: Arc<Snapshot>, index: usize) -> Result<Self> {
        let view = snap.bitmap(index)?;
        let (len, max) = (view.len(), view.max());
        Ok(BaseBitmap {
            snap,
            index,
            len,
            max,
            checked: Arc::default(),
        })
    }

    /// The containers' check, run the first time.
    fn check(&self) -> Result<()> {
        let checked = self.checked.get_or_init(|| {
            let view = self.snap.bitmap(self.index).map_err(|e| e.to_string())?;
            view.verify().map_err(|e| {
                let id = self
                    .snap
                    .meta()
                    .ok()
                    .and_then(|m| m.cohorts.get(self.index))
                    .map_or("?", |c| c.cohort_id.as_str());
                format!("cohort {id}: {e}")
            })
        });
        match checked {
            Ok(()) => Ok(()),
            Err(e) => Err(self.snap.corrupt(e.clone())),
        }
    }

    /// The bitmap, read in place. It was checked when this was made or is
    /// checked now, and the file does not change, but should it fail to
    /// parse or check, that is an error (`Corrupt`), never an empty set.
    pub fn view(&self) -> Result<BitmapView<'_>> {
        self.check()?;
        self.snap.bitmap(self.index)
    }

    /// The bitmap's bytes, not parsed (O(1) once checked).
    pub fn bytes(&self) -> Result<&[u8]> {
        self.check()?;
        self.snap.bitmap_bytes(self.index)
    }

    /// The snapshot the bitmap is read from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }
}

/// The members of a cohort.
#[derive(Clone, Debug, Default)]
pub struct Members {
    base: Option<BaseBitmap>,
    added: RoaringBitmap,
    removed: RoaringBitmap,
    len: u64,
}

impl PartialEq for Members {
    /// Members whose snapshot bitmap cannot be read equal nothing.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && matches!((self.bitmap(), other.bitmap()), (Ok(a), Ok(b)) if a == b)
    }
}

impl From<RoaringBitmap> for Members {
    fn from(added: RoaringBitmap) -> Self {
        Members {
            base: None,
            len: added.len(),
            added,
            removed: RoaringBitmap::new(),
        }
    }
}

impl FromIterator<u32> for Members {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        RoaringBitmap::from_iter(iter).into()
    }
}

impl Members {
    /// The members a snapshot holds, read in place.
    pub fn on_snapshot(base: BaseBitmap) -> Self {
        let len = base.len;
        Members {
            base: Some(base),
            added: RoaringBitmap::new(),
            removed: RoaringBitmap::new(),
            len,
        }
    }

    /// The number of members.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The snapshot's bitmap, if the cohort is in the snapshot.
    pub fn base(&self) -> Result<Option<BitmapView<'_>>> {
        self.base.as_ref().map(BaseBitmap::view).transpose()
    }

    /// The snapshot's bitmap, unparsed, if the cohort is in the snapshot.
    pub fn base_bitmap(&self) -> Option<&BaseBitmap> {
        self.base.as_ref()
    }

    /// Members added since the snapshot (none of them in its bitmap).
    pub fn added(&self) -> &RoaringBitmap {
        &self.added
    }

    /// Members of the snapshot's bitmap removed since.
    pub fn removed(&self) -> &RoaringBitmap {
        &self.removed
    }

    /// Whether user `u` is a member (an error when the snapshot's bitmap does not read).
    pub fn contains(&self, u: u32) -> Result<bool> {
        Ok(self.added.contains(u)
            || (self.base()?.is_some_and(|b| b.contains(u)) && !self.removed.contains(u)))
    }

    /// The members among `users`, ascending (the snapshot's bitmap parsed
    /// once for all of them).
    pub fn among(&self, users: &RoaringBitmap) -> Result<Vec<u32>> {
        let view = self.base()?;
        Ok(users
            .iter()
            .filter(|&u| {
                self.added.contains(u)
                    || (view.as_ref().is_some_and(|v| v.contains(u)) && !self.removed.contains(u))
            })
            .collect())
    }

    /// A bound on the largest member: exact unless members were removed
    /// since the snapshot (removals only lower it). Decodes nothing.
    pub fn max_bound(&self) -> Option<u32> {
        let b = self.base.as_ref().and_then(|b| b.max);
        b.max(self.added.max())
    }

    /// Adds and removes members in order (`true`: remove). Returns how many
    /// were actually added and removed. Fails, changing nothing, if the
    /// snapshot's bitmap cannot be read.
    pub fn apply(&mut self, ops: impl IntoIterator<Item = (u32, bool)>) -> Result<(u64, u64)> {
        let base = self.base.clone();
        let view = base.as_ref().map(BaseBitmap::view).transpose()?;
        let in_base = |u: u32| view.is_some_and(|v| v.contains(u));
        let (mut added, mut removed) = (0, 0);
        for (u, remove) in ops {
            let changed = match (remove, in_base(u)) {
                (false, true) => self.removed.remove(u),
                (false, false) => self.added.insert(u),
                (true, true) => self.removed.insert(u),
                (true, false) => self.added.remove(u),
            };
            if changed {
                if remove {
                    removed += 1;
                } else {
                    added += 1;
                }
            }
        }
        self.len = self.len + added - removed;
        Ok((added, removed))
    }

    /// The members as one bitmap: borrowed when nothing is read from a
    /// snapshot, decoded otherwise.
    pub fn bitmap(&self) -> Result<Cow<'_, RoaringBitmap>> {
        Ok(match self.base()? {
            None => Cow::Borrowed(&self.added),
            Some(v) => {
                let mut bm = RoaringBitmap::deserialize_from(v.as_bytes())
                    .unwrap_or_else(|_| v.to_roaring());
                bm -= &self.removed;
                bm |= &self.added;
                Cow::Owned(bm)
            }
        })
    }

    /// The members in ascending order.
    pub fn iter(&self) -> Result<Box<dyn Iterator<Item = u32> + '_>> {
        Ok(match self.bitmap()? {
            Cow::Borrowed(b) => Box::new(b.iter()),
            Cow::Owned(b) => Box::new(b.into_iter()),
        })
    }

    /// The members in the portable roaring format: the snapshot's bytes
    /// as they are when nothing changed since.
    pub fn serialize_into(&self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(v) = self.base()? {
            if self.added.is_empty() && self.removed.is_empty() {
                out.extend_from_slice(v.as_bytes());
                return Ok(());
            }
        }
        self.bitmap()?
            .serialize_into(out)
            .map_err(|e| Error::Internal(format!("serializing members: {e}")))
    }

    /// Moves onto `base`, the same cohort in a snapshot written from
    /// `frozen` (an earlier clone of these members, over the same base as
    /// `self`): what changed after `frozen` stays in memory.
    pub fn rebase(&mut self, frozen: &Members, base: BaseBitmap) {
        // With B the old base, new base N = (B \ removed_f) ∪ added_f and
        // members M = (B \ removed) ∪ added:
        //   M \ N = (added \ added_f) ∪ (removed_f \ removed)
        //   N \ M = (removed \ removed_f) ∪ (added_f \ added)
        let added = (&self.added - &frozen.added) | (&frozen.removed - &self.removed);
        let removed = (&self.removed - &frozen.removed) | (&frozen.added - &self.added);
        self.base = Some(base);
        self.added = added;
        self.removed = removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CohortKey, Partner};
    use crate::query::Uncached;
    use crate::segment::Filter;
    use crate::snapshot::format::{SectionKind, SnapshotWriter};
    use crate::users::NewUser;
    use crate::workspace::Workspace;

    /// A snapshot of 1,000 users and one cohort (the even users) whose
    /// bitmap no longer parses (its cookie is gone), every checksum
    /// written again so that only reading the bitmap can tell.
    fn unreadable() -> (Arc<Snapshot>, u64, Option<u32>) {
        let mut ws = Workspace::new("w", 1);
        for i in 0..1_000 {
            let u = NewUser {
                external_id: Some(format!("u{i}")),
                ..NewUser::default()
            };
            ws.users.create(u).unwrap();
        }
        let key = CohortKey::new(Partner::Amplitude, "evens");
        ws.cohorts.get_or_create(key).unwrap().0.members = (0..1_000u32).step_by(2).collect();
        let bytes = crate::engine::persist::write_snapshot(&ws, 1).unwrap();
        let good = Snapshot::from_bytes(bytes.clone(), "good").unwrap();
        let at = good.meta().unwrap().cohorts[0].offset as usize;
        let mut w = SnapshotWriter::to_version(Vec::new(), good.version()).unwrap();
        for s in good.sections() {
            let mut b = bytes[s.offset as usize..(s.offset + s.len) as usize].to_vec();
            if s.kind == SectionKind::Bitmaps {
                b[at..at + 4].fill(0);
            }
            w.section(s.kind, &b).unwrap();
        }
        let snap = Snapshot::from_bytes(w.finish().unwrap(), "bad").unwrap();
        (Arc::new(snap), 500, Some(998))
    }

    #[test]
    fn a_bitmap_that_cannot_be_read_is_an_error_not_an_empty_set() {
        let (snap, len, max) = unreadable();
        assert!(BaseBitmap::new(snap.clone(), 0).is_err(), "refused at load");
        // Made as if it had parsed at load: every use fails.
        let base = BaseBitmap {
            snap,
            index: 0,
            len,
            max,
            checked: Arc::default(),
        };
        assert!(matches!(base.view(), Err(Error::Corrupt { .. })));
        let mut m = Members::on_snapshot(base);
        assert!(m.contains(0).is_err());
        assert!(m.bitmap().is_err());
        assert!(m.iter().is_err());
        assert!(m.serialize_into(&mut Vec::new()).is_err());
        assert!(m.apply([(1, false)]).is_err());
        assert_eq!(m.len(), 500, "a failed apply changes nothing");
        assert!(m.added().is_empty());

        // A query over it answers an error, not a count of an empty set.
        let mut ws = Workspace::new("w", 1);
        for i in 0..1_000 {
            let u = NewUser {
                external_id: Some(format!("u{i}")),
                ..NewUser::default()
            };
            ws.users.create(u).unwrap();
        }
        let key = CohortKey::new(Partner::Amplitude, "evens");
        ws.cohorts.get_or_create(key).unwrap().0.members = m;
        for f in [
            Filter::excludes(Partner::Amplitude, "evens"),
            Filter::And(vec![
                Filter::includes(Partner::Amplitude, "evens"),
                Filter::Bucket(crate::segment::BucketCmp::Lt(5_000)),
            ]),
        ] {
            let n = crate::query::count(&ws, &Uncached, &f, false);
            assert!(matches!(n, Err(Error::Corrupt { .. })), "{f}: {n:?}");
            let b = crate::query::breakdown(&ws, &Uncached, &f);
            assert!(matches!(b, Err(Error::Corrupt { .. })), "{f}: {b:?}");
        }
    }
}
