//! The cohort catalog of one workspace: per partner, cohorts keyed by
//! cohort_id with a display name, a creation time, sync statistics, and
//! their [`Members`] over [`UserId`](crate::ids::UserId)s: a snapshot's
//! bitmap read in place plus the changes since, as roaring bitmaps.

mod changes;
mod members;

pub use changes::{
    resolve, Alias, ChangeReport, CohortChange, MemberOp, ResolvedChanges, Resolving,
};
pub use members::{BaseBitmap, Members};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, FixedOffset, Utc};
use hashbrown::HashMap;

use crate::error::{Error, Result};
use crate::ids::{CohortKey, Partner};

/// How many recent unmatched identifiers a cohort keeps for troubleshooting.
pub const UNMATCHED_SAMPLE: usize = 100;

/// How many sizes a cohort's [`Cohort::size_history`] keeps: the oldest
/// go first.
pub const SIZE_HISTORY: usize = 256;

/// The most bytes (of the identifiers' text) that sample holds: the oldest
/// go first past either bound. A request's sample in its log record has
/// the same bounds.
pub const UNMATCHED_SAMPLE_BYTES: usize = 4096;

/// Appends `entry` to a sample of recent unmatched identifiers whose text
/// is `bytes` long, dropping the oldest past [`UNMATCHED_SAMPLE`] entries
/// or [`UNMATCHED_SAMPLE_BYTES`] bytes.
pub(crate) fn push_sample(sample: &mut VecDeque<String>, bytes: &mut usize, entry: String) {
    *bytes += entry.len();
    sample.push_back(entry);
    while sample.len() > UNMATCHED_SAMPLE || *bytes > UNMATCHED_SAMPLE_BYTES {
        match sample.pop_front() {
            Some(old) => *bytes -= old.len(),
            None => break,
        }
    }
}

/// What the people who run syncs ask about a cohort.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// When the last users request for this cohort was applied.
    pub last_sync: Option<DateTime<Utc>>,
    /// Members the last request added and removed (actual changes).
    pub last_added: u64,
    /// Members the last request removed (actual changes).
    pub last_removed: u64,
    /// Identifiers that matched a user / matched nobody, over all requests.
    pub matched_total: u64,
    /// Identifiers that matched nobody, over all requests.
    pub unmatched_total: u64,
    /// Device ids refused because their user is identified, over all requests.
    pub refused_total: u64,
    /// The most recent unmatched identifiers, oldest first, at most
    /// [`UNMATCHED_SAMPLE`] of them and [`UNMATCHED_SAMPLE_BYTES`], e.g.
    /// `user_id:u-9` or `alias:email:x@y`; an identifier longer than any
    /// user may hold is kept as its beginning and its length.
    pub recent_unmatched: VecDeque<String>,
}

/// One partner cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct Cohort {
    /// Its partner and cohort_id.
    pub key: CohortKey,
    /// Shown in the segment builder; the cohort_id until the partner names it.
    pub name: String,
    /// As the partner sent it; `None` for a cohort created by a users request.
    pub created_at: Option<DateTime<FixedOffset>>,
    /// Its members.
    pub members: Members,
    /// What its partner's requests did.
    pub sync: SyncStats,
    /// `(ms since the Unix epoch, members)` after each of its partner's
    /// users requests, oldest first, at most [`SIZE_HISTORY`]: kept by the
    /// apply that log replay runs too, and in snapshots.
    pub size_history: VecDeque<(i64, u64)>,
    /// Changes whenever `members` may have changed (unique across cohorts
    /// and workspaces), so caches of the serialized members know when they
    /// are stale. Whoever changes `members` directly calls [`Cohort::touch`].
    pub version: u64,
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// A version no cohort has had.
pub(crate) fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

impl Cohort {
    /// An empty cohort named by its id.
    pub fn new(key: CohortKey) -> Self {
        Cohort {
            name: key.cohort_id.clone(),
            key,
            created_at: None,
            members: Members::default(),
            sync: SyncStats::default(),
            size_history: VecDeque::new(),
            version: next_version(),
        }
    }

    /// Records the size after a sync at `at_ms`, dropping the oldest past
    /// [`SIZE_HISTORY`].
    pub fn record_size(&mut self, at_ms: i64, size: u64) {
        self.size_history.push_back((at_ms, size));
        while self.size_history.len() > SIZE_HISTORY {
            self.size_history.pop_front();
        }
    }

    /// Marks the members as changed.
    pub fn touch(&mut self) {
        self.version = next_version();
    }

    /// The number of members.
    pub fn len(&self) -> u64 {
        self.members.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Checks a cohort_id as the protocol requires: a non-empty string.
pub(crate) fn check_cohort_id(cohort_id: &str) -> Result<()> {
    if cohort_id.trim().is_empty() || cohort_id.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidCohort(
            "cohort_id must be a valid string".into(),
        ));
    }
    Ok(())
}

/// Checks a cohort name as the protocol requires: a non-empty string (not
/// only white space) of at most [`MAX_NAME_BYTES`]. The wire validator and
/// the catalog (so log replay too) use this one check.
pub(crate) fn check_cohort_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidCohort(
            "name must be a non-empty string".into(),
        ));
    }
    Ok(())
}

/// The longest cohort_id or cohort name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// All cohorts of a workspace.
#[derive(Clone, Debug, Default)]
pub struct CohortCatalog {
    cohorts: HashMap<CohortKey, Cohort>,
    /// Per cohort, a number set when it is put in the catalog (unique like
    /// versions): a cohort deleted and created again under the same key is
    /// another cohort, which a compaction that froze the first must not
    /// rebase.
    lineage: HashMap<CohortKey, u64>,
}

impl CohortCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of cohorts over all partners.
    pub fn len(&self) -> usize {
        self.cohorts.len()
    }

    /// Whether the catalog holds no cohort.
    pub fn is_empty(&self) -> bool {
        self.cohorts.is_empty()
    }

    /// The cohort of this key, if there is one.
    pub fn get(&self, key: &CohortKey) -> Option<&Cohort> {
        self.cohorts.get(key)
    }

    /// The cohort, created empty (named by its id) if it does not exist.
    /// Returns whether it was created.
    pub fn get_or_create(&mut self, key: CohortKey) -> Result<(&mut Cohort, bool)> {
        check_cohort_id(&key.cohort_id)?;
        let mut created = false;
        let lineage = &mut self.lineage;
        let cohort = self.cohorts.entry(key).or_insert_with_key(|k| {
            created = true;
            lineage.insert(k.clone(), next_version());
            Cohort::new(k.clone())
        });
        Ok((cohort, created))
    }

    /// Creates or renames a cohort: an upsert keyed by (partner, cohort_id).
    /// A rename keeps the creation time the cohort already has. Returns
    /// whether the cohort was created.
    pub fn upsert(
        &mut self,
        key: CohortKey,
        name: &str,
        created_at: Option<DateTime<FixedOffset>>,
    ) -> Result<bool> {
        check_cohort_name(name)?;
        let (cohort, created) = self.get_or_create(key)?;
        cohort.name = name.to_string();
        if cohort.created_at.is_none() {
            cohort.created_at = created_at;
        }
        Ok(created)
    }

    /// Installs a cohort as it is (bulk loading, generated workloads).
    pub fn insert(&mut self, mut cohort: Cohort) -> Result<()> {
        check_cohort_id(&cohort.key.cohort_id)?;
        cohort.touch();
        self.lineage.insert(cohort.key.clone(), next_version());
        self.cohorts.insert(cohort.key.clone(), cohort);
        Ok(())
    }

    /// The cohort of this key, to change, if there is one.
    pub fn get_mut(&mut self, key: &CohortKey) -> Option<&mut Cohort> {
        self.cohorts.get_mut(key)
    }

    /// Removes a cohort; returns it, or `None` if there was none.
    pub fn remove(&mut self, key: &CohortKey) -> Option<Cohort> {
        self.lineage.remove(key);
        self.cohorts.remove(key)
    }

    /// Whether the cohort under `key` here is the very one under it in
    /// `earlier` (a clone of this catalog, taken before): not deleted and
    /// created again since.
    pub fn same_cohort(&self, earlier: &CohortCatalog, key: &CohortKey) -> bool {
        matches!(
            (self.lineage.get(key), earlier.lineage.get(key)),
            (Some(a), Some(b)) if a == b
        )
    }

    /// How many cohorts a partner has.
    pub fn count(&self, partner: Partner) -> usize {
        self.cohorts.keys().filter(|k| k.partner == partner).count()
    }

    /// A partner's cohorts, by cohort_id.
    pub fn by_partner(&self, partner: Partner) -> Vec<&Cohort> {
        let mut v: Vec<&Cohort> = self
            .cohorts
            .values()
            .filter(|c| c.key.partner == partner)
            .collect();
        v.sort_by(|a, b| a.key.cohort_id.cmp(&b.key.cohort_id));
        v
    }

    /// Every cohort's key, ordered by partner then cohort_id.
    pub fn keys(&self) -> Vec<CohortKey> {
        let mut v: Vec<CohortKey> = self.cohorts.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every cohort, ordered by partner then cohort_id.
    pub fn iter_sorted(&self) -> Vec<&Cohort> {
        let mut v: Vec<&Cohort> = self.cohorts.values().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Resolves a filter's cohort value: a cohort_id of the partner, or else
    /// the name of exactly one of its cohorts.
    pub fn resolve(&self, partner: Partner, value: &str) -> Result<&Cohort> {
        let mine = self
            .cohorts
            .values()
            .filter(|c| c.key.partner == partner)
            .map(|c| (c.key.cohort_id.as_str(), c.name.as_str(), c));
        Ok(crate::ids::resolve_cohort(
            partner,
            value,
            |id| self.cohorts.get(&CohortKey::new(partner, id)),
            mine,
        )?)
    }
}
