//! Live segments: every saved segment of a workspace kept materialised as
//! a bitmap, and maintained as the workspace changes.
//!
//! A live workspace keeps one [`LiveSegments`] beside its state and
//! refreshes it under the same write lock, after the changes of a write
//! are applied and before the lock is released, from what they touched
//! ([`Touched`]): the users whose membership of a cohort changed, the
//! users created, the segments saved or deleted. Only the live segments
//! that read a touched cohort (or, for users created, that a user in no
//! cohort may satisfy: [`Filter::may_hold_cohortless`]) are looked at, and
//! only for the touched users: a 2^16-user chunk with many touched users
//! is re-evaluated whole, the other touched users are checked in one batch
//! on the cohorts' in-memory structures (their snapshot bitmaps in place,
//! their added and removed members as kept: nothing is serialized, so a
//! write leaves the evaluator's serialized deltas to the first query that
//! needs them; see `batch`). Compaction changes no member, so it touches
//! nothing.
//!
//! Nothing is persisted: the bitmaps are evaluated whole when a workspace
//! is opened (after its log is replayed) or rebuilt after an undo. A
//! segment that cannot be evaluated (a damaged bitmap) is left out, and
//! queries on it evaluate its filter as for any other.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use roaring::RoaringBitmap;

use super::source::BitmapSource;
use super::Workspace;
use crate::error::Result;
use crate::ids::{CohortKey, UserId};
use crate::segment::chunk::Prepared;
use crate::segment::{plan, Filter};
use batch::Batch;

mod batch;

/// Touched users of a chunk above which the chunk is re-evaluated whole
/// rather than checked in the batch (a chunk costs about as much as this
/// many one-user checks of a multi-leaf plan).
pub const DENSE_CHUNK: u64 = 96;

/// What the changes of one write touched, as far as segments go.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    /// Per cohort, the users whose membership may have changed.
    cohorts: HashMap<CohortKey, RoaringBitmap>,
    /// Users created.
    users: RoaringBitmap,
    /// Saved segments created, changed or deleted.
    segments: BTreeSet<String>,
    /// Per custom attribute, the users whose value changed.
    attributes: HashMap<String, RoaringBitmap>,
    /// Users deleted: taken out of every segment.
    deleted: RoaringBitmap,
    /// Users whose memberships and values may have changed in any way (a
    /// merge's target): checked against every segment.
    changed: RoaringBitmap,
}

impl Touched {
    /// Notes users whose membership of `key` may have changed.
    pub fn cohort(&mut self, key: CohortKey, users: impl IntoIterator<Item = UserId>) {
        let b = self.cohorts.entry(key).or_default();
        b.extend(users.into_iter().map(|u| u.0));
    }

    /// Notes a user created.
    pub fn user_created(&mut self, user: UserId) {
        self.users.insert(user.0);
    }

    /// Notes a user whose value of a custom attribute changed.
    pub fn attribute(&mut self, name: &str, user: UserId) {
        match self.attributes.get_mut(name) {
            Some(b) => {
                b.insert(user.0);
            }
            None => {
                self.attributes
                    .insert(name.to_string(), std::iter::once(user.0).collect());
            }
        }
    }

    /// Notes a user deleted.
    pub fn user_deleted(&mut self, user: UserId) {
        self.deleted.insert(user.0);
    }

    /// Notes a user whose memberships and values may all have changed.
    pub fn user_changed(&mut self, user: UserId) {
        self.changed.insert(user.0);
    }

    /// Notes a saved segment created, changed or deleted.
    pub fn segment(&mut self, id: &str) {
        self.segments.insert(id.to_string());
    }

    /// Whether the write touched nothing a live segment reads.
    pub fn is_empty(&self) -> bool {
        self.cohorts.is_empty()
            && self.users.is_empty()
            && self.segments.is_empty()
            && self.attributes.is_empty()
            && self.deleted.is_empty()
            && self.changed.is_empty()
    }
}

/// One saved segment, materialised.
#[derive(Clone, Debug)]
struct Segment {
    members: RoaringBitmap,
    /// `members.len()`, kept (the bitmap counts container by container).
    len: u64,
    /// [`plan::key`] of its plan on the current state.
    key: String,
    cohorts: Vec<CohortKey>,
    /// Whether a user created may join it.
    new_users: bool,
    /// The custom attributes it tests (saved segments it refers to
    /// included): a change of one re-evaluates it whole.
    attributes: Vec<String>,
}

/// The live segments of a workspace.
#[derive(Clone, Debug, Default)]
pub struct LiveSegments {
    segments: HashMap<String, Segment>,
    /// A segment id per plan key.
    by_key: HashMap<String, String>,
}

/// A saved segment's filter, planned and evaluated whole. A filter with a
/// relative time test (`within_last_days`, ...), itself or in a segment it
/// refers to, changes with the clock, not with writes: it is not kept live
/// (`None`).
fn evaluate(ws: &Workspace, filter: &Filter, src: &dyn BitmapSource) -> Result<Option<Segment>> {
    let expanded = crate::segment::expand_references(ws, filter, &mut |_, _| {})?;
    if expanded.is_relative() {
        return Ok(None);
    }
    let p = plan::plan(ws, filter)?;
    let members = Prepared::new(ws, &p, src)?.members()?;
    let mut cohorts = Vec::new();
    expanded.for_each_cohort(&mut |partner, id, _| cohorts.push(CohortKey::new(partner, id)));
    cohorts.sort_unstable();
    cohorts.dedup();
    let mut attributes = Vec::new();
    expanded.for_each_attribute(&mut |a| attributes.push(a.to_string()));
    attributes.sort_unstable();
    attributes.dedup();
    Ok(Some(Segment {
        len: members.len(),
        members,
        key: plan::key(&p),
        cohorts,
        new_users: expanded.may_hold_cohortless(),
        attributes,
    }))
}

impl LiveSegments {
    /// Every saved segment of `ws`, evaluated whole.
    pub fn build(ws: &Workspace, src: &dyn BitmapSource) -> LiveSegments {
        let mut live = LiveSegments::default();
        for (id, s) in &ws.segments {
            live.load(ws, id, &s.filter, src);
        }
        live.index();
        live
    }

    fn load(&mut self, ws: &Workspace, id: &str, filter: &Filter, src: &dyn BitmapSource) {
        match evaluate(ws, filter, src) {
            Ok(Some(seg)) => {
                self.segments.insert(id.to_string(), seg);
            }
            Ok(None) => {
                tracing::debug!(
                    workspace = ws.name(),
                    "segment {id} is not kept live: it tests a time relative to now"
                );
                self.segments.remove(id);
            }
            Err(e) => {
                tracing::warn!(workspace = ws.name(), "segment {id} is not kept live: {e}");
                self.segments.remove(id);
            }
        }
    }

    fn index(&mut self) {
        self.by_key.clear();
        let mut ids: Vec<&String> = self.segments.keys().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(s) = self.segments.get(id) {
                self.by_key
                    .entry(s.key.clone())
                    .or_insert_with(|| id.clone());
            }
        }
    }

    /// Brings the live segments up to date with `ws` after changes that
    /// touched `t` (applied to `ws` already).
    pub fn refresh(&mut self, ws: &Workspace, t: &Touched, src: &dyn BitmapSource) {
        let mut rekey = false;
        // Evaluated whole: segments saved or deleted; when one was, every
        // segment that refers to saved segments, live or not (one it
        // refers to may have started or stopped testing a relative time);
        // and live ones that test an attribute a write changed or that a
        // write touched at all (attribute tests are not checked in the
        // batch).
        let mut whole: BTreeSet<String> = t.segments.clone();
        if !t.segments.is_empty() {
            for (id, s) in &ws.segments {
                if s.filter.refers_to_any() {
                    whole.insert(id.clone());
                }
            }
        }
        for (id, seg) in &self.segments {
            let attrs = !seg.attributes.is_empty()
                && (seg.attributes.iter().any(|a| t.attributes.contains_key(a))
                    || !t.users.is_empty()
                    || !t.changed.is_empty()
                    || !t.deleted.is_empty()
                    || seg.cohorts.iter().any(|c| t.cohorts.contains_key(c)));
            if attrs {
                whole.insert(id.clone());
            }
        }
        for id in &whole {
            rekey = true;
            match ws.segments.get(id) {
                Some(s) => self.load(ws, id, &s.filter, src),
                None => {
                    self.segments.remove(id);
                }
            }
        }
        if !t.cohorts.is_empty()
            || !t.users.is_empty()
            || !t.deleted.is_empty()
            || !t.changed.is_empty()
        {
            use rayon::prelude::*;
            // Segments in parallel (each one's users in order).
            let results: Vec<(String, Result<bool>)> = self
                .segments
                .par_iter_mut()
                .filter(|(id, _)| !whole.contains(*id)) // evaluated whole just now
                .map(|(id, seg)| (id.clone(), update(ws, id, seg, t, src)))
                .collect();
            let mut failed = Vec::new();
            for (id, r) in results {
                match r {
                    Ok(changed_key) => rekey |= changed_key,
                    Err(e) => {
                        tracing::warn!(workspace = ws.name(), "segment {id} is not kept live: {e}");
                        failed.push(id);
                    }
                }
            }
            rekey |= !failed.is_empty();
            for id in failed {
                self.segments.remove(&id);
            }
        }
        if rekey {
            self.index();
        }
    }

    /// A live segment's members.
    pub fn members(&self, id: &str) -> Option<&RoaringBitmap> {
        self.segments.get(id).map(|s| &s.members)
    }

    /// A live segment's size: O(1).
    pub fn len(&self, id: &str) -> Option<u64> {
        self.segments.get(id).map(|s| s.len)
    }

    /// Whether a user is in a live segment: one bitmap probe.
    pub fn contains(&self, id: &str, user: UserId) -> Option<bool> {
        self.members(id).map(|m| m.contains(user.0))
    }

    /// The size of a live segment whose plan has this [`plan::key`] (made
    /// on the same state), if there is one.
    pub fn len_by_key(&self, key: &str) -> Option<u64> {
        self.by_key.get(key).and_then(|id| self.len(id))
    }

    /// How many segments are live.
    pub fn count(&self) -> usize {
        self.segments.len()
    }

    /// About how many bytes the live bitmaps take.
    pub fn bytes(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.members.serialized_size() as u64)
            .sum()
    }
}

/// Updates one segment for the touched users; returns whether its plan
/// key changed.
fn update(
    ws: &Workspace,
    id: &str,
    seg: &mut Segment,
    t: &Touched,
    src: &dyn BitmapSource,
) -> Result<bool> {
    // Borrowed when one cohort it reads was touched (the usual import).
    let mut users: Cow<RoaringBitmap> = Cow::Owned(RoaringBitmap::new());
    let mut read = false;
    for c in &seg.cohorts {
        if let Some(b) = t.cohorts.get(c) {
            users = if read {
                Cow::Owned(users.into_owned() | b)
            } else {
                Cow::Borrowed(b)
            };
            read = true;
        }
    }
    // A user created joins a segment a user in no cohort may satisfy, or
    // one reading a cohort that already names the new id (a bulk-loaded
    // cohort may hold ids of no user yet).
    let named = |first: u32| {
        seg.cohorts.iter().any(|c| {
            ws.cohorts
                .get(c)
                .and_then(|c| c.members.max_bound())
                .is_some_and(|m| m >= first)
        })
    };
    if t.users
        .min()
        .is_some_and(|first| seg.new_users || named(first))
    {
        *users.to_mut() |= &t.users;
    }
    if !t.changed.is_empty() {
        *users.to_mut() |= &t.changed;
    }
    // Deleted users leave every segment; a segment reading the users
    // themselves plans anew (its key names the deleted users).
    let deleted = !t.deleted.is_empty();
    if deleted {
        seg.members -= &t.deleted;
        seg.len = seg.members.len();
        *users.to_mut() -= &t.deleted;
    }
    if !read && users.is_empty() && !deleted {
        return Ok(false);
    }
    let filter = match ws.segments.get(id) {
        Some(s) => &s.filter,
        None => return Ok(false),
    };
    let p = plan::plan(ws, filter)?;
    let key = plan::key(&p);
    let changed = key != seg.key;
    seg.key = key;
    if users.is_empty() {
        return Ok(changed);
    }
    // Users past the last are in no segment; chunks with many touched
    // users are evaluated whole, the other users checked in one batch.
    let count = ws.users.len();
    let mut dense = Vec::new();
    let mut sparse = Vec::with_capacity(users.len() as usize);
    let mut it = users.iter().peekable();
    while let Some(&first) = it.peek() {
        let chunk = first >> 16;
        let from = sparse.len();
        while let Some(&u) = it.peek() {
            if u >> 16 != chunk {
                break;
            }
            if u < count && !ws.users.is_deleted(UserId(u)) {
                sparse.push(u);
            } else {
                seg.members.remove(u);
            }
            it.next();
        }
        if (sparse.len() - from) as u64 > DENSE_CHUNK {
            sparse.truncate(from);
            dense.push(chunk);
        }
    }
    let batch = Batch::new(sparse);
    if !batch.is_empty() {
        let masks = batch::evaluate(ws, &p, &batch, src)?;
        batch::apply(&batch, &masks, &mut seg.members);
    }
    if !dense.is_empty() {
        let prepared = Prepared::new(ws, &p, src)?;
        for chunk in dense {
            let lo = chunk << 16;
            seg.members.remove_range(lo..=lo | 0xFFFF);
            seg.members |= prepared.members_in(chunk, chunk + 1)?;
        }
    }
    seg.len = seg.members.len();
    Ok(changed)
}
