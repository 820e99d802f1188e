//! A workspace: one customer's user base (an "app group"), with its users,
//! its partner cohorts and its billing counters; [`source`], its cohorts'
//! in-memory members serialized for the chunk evaluator (the cache a live
//! workspace keeps) and a plan's leaves fetched from it.

pub mod cache;
pub mod live;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};

use std::sync::Arc;

use crate::attributes::Attributes;
use crate::cohorts::{BaseBitmap, ChangeReport, CohortCatalog, ResolvedChanges};
use crate::error::{Error, Result};
use crate::ids::{CohortKey, Partner, UserId};
use crate::snapshot::Snapshot;
use crate::users::UserRegistry;

/// A data import key of a workspace, as stored: only its SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id.
    pub id: String,
    /// The partner it is for.
    pub partner: Partner,
    /// The SHA-256 digest of the key.
    pub digest: [u8; 32],
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was invalidated, if it was.
    pub invalidated_at: Option<DateTime<Utc>>,
    /// The key's last use as logged: to the minute, the last time it
    /// passed `Engine::authorize` (`None`: never, or not since it was
    /// logged).
    pub last_used: Option<DateTime<Utc>>,
}

/// A named segment the workspace keeps. Its filter names cohorts by
/// cohort_id (names are resolved when it is saved), so renaming a cohort
/// changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SavedSegment {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its filter, cohorts by cohort_id.
    pub filter: crate::segment::Filter,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One customer's user base.
#[derive(Clone, Debug)]
pub struct Workspace {
    name: String,
    /// The users and their identifiers.
    pub users: UserRegistry,
    /// The partner cohorts.
    pub cohorts: CohortCatalog,
    data_points: BTreeMap<(Partner, NaiveDate), u64>,
    /// Data import keys by id, invalidated ones included.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Workspace API keys by id, revoked ones included.
    pub api_keys: BTreeMap<String, crate::access::ApiKeyRecord>,
    /// Partners allowed to import into this workspace.
    pub enabled_partners: BTreeSet<Partner>,
    /// Saved segments by id.
    pub segments: BTreeMap<String, SavedSegment>,
    /// The users' custom attributes, with their indexes.
    pub attributes: Attributes,
    /// Who changed what through the admin API (the last
    /// [`crate::access::AUDIT_RETENTION`] entries).
    pub audit: crate::access::AuditLog,
}

impl Workspace {
    /// An empty workspace; `seed` drives the random buckets of its users.
    pub fn new(name: impl Into<String>, seed: u64) -> Self {
        Workspace {
            name: name.into(),
            users: UserRegistry::new(seed),
            cohorts: CohortCatalog::new(),
            data_points: BTreeMap::new(),
            keys: BTreeMap::new(),
            api_keys: BTreeMap::new(),
            enabled_partners: BTreeSet::new(),
            segments: BTreeMap::new(),
            attributes: Attributes::new(),
            audit: crate::access::AuditLog::default(),
        }
    }

    /// A workspace whose users are `users` (read from a snapshot); the
    /// caller fills in the rest.
    pub fn on_snapshot(name: impl Into<String>, users: UserRegistry) -> Self {
        let mut ws = Workspace::new(name, users.seed());
        ws.users = users;
        ws
    }

    /// Renames the workspace.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// The workspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves onto `snap`, a snapshot written from `frozen` (an earlier
    /// clone of this workspace): what `frozen` held is read from the
    /// snapshot from now on, and only what changed after it stays in
    /// memory. The workspace's contents do not change.
    pub fn rebase(&mut self, frozen: &Workspace, snap: Arc<Snapshot>) -> Result<()> {
        let prepared = Rebase::prepare(frozen, snap)?;
        self.apply_rebase(frozen, prepared)
    }

    /// The second half of [`Self::rebase`], with the snapshot's cohorts
    /// found beforehand (compaction does that before it takes the write
    /// lock): O(what changed since the freeze) plus O(1) per cohort.
    pub fn apply_rebase(&mut self, frozen: &Workspace, r: Rebase) -> Result<()> {
        let users = r.snap.meta()?.users;
        let section = AttributesSection::of(r.snap.clone());
        self.users.rebase(&frozen.users, r.snap)?;
        for (key, base) in r.bases {
            // A cohort deleted since the freeze is gone; one created since
            // (also under the key of one deleted) stays wholly in memory.
            if !self.cohorts.same_cohort(&frozen.cohorts, &key) {
                continue;
            }
            if let (Some(c), Some(before)) = (self.cohorts.get_mut(&key), frozen.cohorts.get(&key))
            {
                c.members.rebase(&before.members, base);
                c.touch();
            }
        }
        if let Some(list) = r.attributes {
            self.attributes.rebase(section, list, users);
        }
        Ok(())
    }

    /// Whether [`Self::delete_users`] may delete `users`: each exists, is
    /// not deleted, and is named once. Changes nothing.
    pub fn check_delete_users(&self, users: &[UserId]) -> Result<()> {
        let mut seen = RoaringBitmap::new();
        for &u in users {
            self.users.check_delete(u)?;
            if !seen.insert(u.0) {
                return Err(Error::InvalidArgument(format!(
                    "user {u} is named twice in one deletion"
                )));
            }
        }
        Ok(())
    }

    /// Deletes users: out of every cohort and attribute, their
    /// identifiers freed, their ids holes from now on. Refused, changing
    /// nothing, as [`Self::check_delete_users`] says; an error reading a
    /// snapshot bitmap part way leaves the state part way (a live write
    /// undoes it). Returns the memberships and values removed.
    pub fn delete_users(&mut self, users: &[UserId]) -> Result<LifecycleReport> {
        self.check_delete_users(users)?;
        let set: RoaringBitmap = users.iter().map(|u| u.0).collect();
        let mut report = LifecycleReport::default();
        for (key, members) in self.members_among(&set)? {
            if let Some(c) = self.cohorts.get_mut(&key) {
                let (_, removed) = c.members.apply(members.iter().map(|&u| (u, true)))?;
                report.memberships += removed;
                c.touch();
            }
        }
        report.values = self.attributes.remove_users(&set).0;
        for &u in users {
            self.users.delete(u)?;
        }
        Ok(report)
    }

    /// Per cohort with members among `users`, those members (cohorts read
    /// in parallel).
    fn members_among(&self, users: &RoaringBitmap) -> Result<Vec<(CohortKey, Vec<u32>)>> {
        use rayon::prelude::*;
        let cohorts = self.cohorts.iter_sorted();
        let found = cohorts
            .par_iter()
            .map(|c| Ok((c.key.clone(), c.members.among(users)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(found.into_iter().filter(|(_, h)| !h.is_empty()).collect())
    }

    /// Whether [`Self::merge_users`] may merge `source` into `target`:
    /// both exist, are not deleted, and differ. Changes nothing.
    pub fn check_merge(&self, source: UserId, target: UserId) -> Result<()> {
        self.users.check_delete(source)?;
        self.users.check_delete(target)?;
        if source == target {
            return Err(Error::InvalidArgument(format!(
                "user {source} cannot be merged into itself"
            )));
        }
        Ok(())
    }

    /// Merges `source` into `target`, as the platform does: the target
    /// keeps its identifiers and gains the source's device_ids and aliases
    /// (the source's external_id is dropped), joins every cohort the
    /// source is in, and takes the source's value of each attribute it has
    /// none of (its own values win); then the source is deleted. Refused,
    /// changing nothing, as [`Self::check_merge`] says.
    pub fn merge_users(&mut self, source: UserId, target: UserId) -> Result<LifecycleReport> {
        self.check_merge(source, target)?;
        let mut report = LifecycleReport::default();
        let pair: RoaringBitmap = [source.0, target.0].into_iter().collect();
        for (key, members) in self.members_among(&pair)? {
            if members == [source.0] {
                if let Some(c) = self.cohorts.get_mut(&key) {
                    let (added, _) = c.members.apply([(target.0, false)])?;
                    report.memberships += added;
                    c.touch();
                }
            }
        }
        let mine = self.attributes.values_of(target.0);
        let fill: Vec<(String, Option<crate::attributes::AttrValue>)> = self
            .attributes
            .values_of(source.0)
            .into_iter()
            .filter(|(name, _)| !mine.contains_key(name))
            .map(|(name, v)| (name, Some(v)))
            .collect();
        report.values = fill.len() as u64;
        self.attributes.set(target.0, &fill)?;
        let (devices, aliases) = self.users.move_identifiers(source, target)?;
        report.devices = devices as u64;
        report.aliases = aliases as u64;
        self.delete_users(&[source])?;
        Ok(report)
    }

    /// Creates or renames a partner cohort. Returns whether it was created.
    pub fn upsert_cohort(
        &mut self,
        partner: Partner,
        cohort_id: &str,
        name: &str,
        created_at: Option<DateTime<FixedOffset>>,
    ) -> Result<bool> {
        self.cohorts
            .upsert(CohortKey::new(partner, cohort_id), name, created_at)
    }

    /// Whether [`Self::delete_cohort`] would delete the cohort: refused if
    /// there is no such cohort or a saved segment names it
    /// ([`Error::CohortInUse`] lists them). Changes nothing.
    pub fn check_delete_cohort(&self, partner: Partner, cohort_id: &str) -> Result<()> {
        let key = CohortKey::new(partner, cohort_id);
        if self.cohorts.get(&key).is_none() {
            return Err(Error::UnknownCohort { key });
        }
        let users = self.segments_using(&key);
        if !users.is_empty() {
            return Err(Error::CohortInUse {
                key,
                segments: users,
            });
        }
        Ok(())
    }

    /// Deletes a partner cohort. Refused, changing nothing, as
    /// [`Self::check_delete_cohort`] says.
    pub fn delete_cohort(&mut self, partner: Partner, cohort_id: &str) -> Result<()> {
        self.check_delete_cohort(partner, cohort_id)?;
        self.cohorts.remove(&CohortKey::new(partner, cohort_id));
        Ok(())
    }

    /// The ids of the saved segments whose filter names a cohort.
    pub fn segments_using(&self, key: &CohortKey) -> Vec<String> {
        self.segments
            .values()
            .filter(|s| {
                let mut uses = false;
                s.filter.for_each_cohort(&mut |p, id, _| {
                    uses |= p == key.partner && id == key.cohort_id;
                });
                uses
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// Applies changes already matched by [`crate::cohorts::resolve`] to a cohort
    /// (created on first use with its id as name): membership in order, the
    /// sync statistics, and the billable data points of `now`'s day. The
    /// matching happened before (see `WorkspaceHandle::import_users`); a
    /// `CohortChanged` log record is applied here, live and on replay.
    pub fn apply_resolved(
        &mut self,
        partner: Partner,
        cohort_id: &str,
        resolved: &ResolvedChanges,
        now: DateTime<Utc>,
    ) -> Result<ChangeReport> {
        let (cohort, created) = self
            .cohorts
            .get_or_create(CohortKey::new(partner, cohort_id))?;
        let mut report = cohort.apply(resolved, now)?;
        report.cohort_created = created;
        self.bill(partner, now.date_naive(), report.data_points);
        Ok(report)
    }

    fn bill(&mut self, partner: Partner, day: NaiveDate, points: u64) {
        self.add_data_points(partner, day, points);
    }

    /// Adds to the billable data points of a partner and day (loading a
    /// snapshot).
    pub fn add_data_points(&mut self, partner: Partner, day: NaiveDate, points: u64) {
        if points > 0 {
            *self.data_points.entry((partner, day)).or_default() += points;
        }
    }

    /// Billable data points of a partner on a (UTC) day.
    pub fn data_points(&self, partner: Partner, day: NaiveDate) -> u64 {
        self.data_points.get(&(partner, day)).copied().unwrap_or(0)
    }

    /// Every (partner, day, data points) with a non-zero count.
    pub fn data_points_by_day(&self) -> impl Iterator<Item = (Partner, NaiveDate, u64)> + '_ {
        self.data_points.iter().map(|(&(p, d), &n)| (p, d, n))
    }
}

/// What a deletion or a merge did beyond the users themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Deletion: memberships removed; merge: cohorts the target joined.
    pub memberships: u64,
    /// Deletion: attribute values removed; merge: values the target took.
    pub values: u64,
    /// Merge: device_ids moved to the target.
    pub devices: u64,
    /// Merge: aliases moved to the target.
    pub aliases: u64,
}

/// A snapshot's attributes section, kept mapped while an attribute still
/// reads from it.
pub(crate) struct AttributesSection(Arc<Snapshot>);

impl AttributesSection {
    /// `snap`'s section, for [`crate::attributes::Attributes`] to read.
    pub(crate) fn of(snap: Arc<Snapshot>) -> Arc<dyn crate::attributes::SectionBytes> {
        Arc::new(AttributesSection(snap))
    }
}

impl crate::attributes::SectionBytes for AttributesSection {
    fn section(&self) -> &[u8] {
        self.0.attributes_bytes().unwrap_or(&[])
    }

    fn file(&self) -> String {
        self.0.name().to_string()
    }
}

/// A snapshot's bitmaps of the cohorts a frozen workspace holds, found and
/// checked, ready for [`Workspace::apply_rebase`].
#[derive(Debug)]
pub struct Rebase {
    snap: Arc<Snapshot>,
    bases: Vec<(crate::ids::CohortKey, BaseBitmap)>,
    /// The snapshot's custom attributes, listed (names, types, where each
    /// index lies).
    attributes: Option<AttributeList>,
}

type AttributeList = Vec<(String, crate::attributes::AttrType, std::ops::Range<usize>)>;

impl Rebase {
    /// Finds every cohort of `frozen` in `snap` (one pass over its
    /// catalog) and checks its bitmap; fails, changing nothing, if one is
    /// missing or damaged.
    pub fn prepare(frozen: &Workspace, snap: Arc<Snapshot>) -> Result<Rebase> {
        let index: hashbrown::HashMap<(Partner, &str), usize> = snap
            .meta()?
            .cohorts
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.partner, c.cohort_id.as_str()), i))
            .collect();
        let mut bases = Vec::with_capacity(frozen.cohorts.len());
        for key in frozen.cohorts.keys() {
            let i = *index
                .get(&(key.partner, key.cohort_id.as_str()))
                .ok_or_else(|| Error::Corrupt {
                    path: snap.name().into(),
                    reason: format!("cohort {key} is missing"),
                })?;
            let base = BaseBitmap::new(snap.clone(), i)?;
            bases.push((key, base));
        }
        drop(index);
        let attributes = match snap.attributes_bytes() {
            Some(b) => Some(crate::attributes::codec::directory(b).map_err(|e| snap.corrupt(e))?),
            None => None,
        };
        Ok(Rebase {
            snap,
            bases,
            attributes,
        })
    }
}

// ----- what the segment evaluators read of a workspace -----

use std::borrow::Cow;

use roaring::RoaringBitmap;

use crate::bitmap_view::SharedBitmap;
use crate::ids::UserRef;
use crate::segment::attr::Test;
use crate::segment::plan::{Scan, Selected};
use crate::segment::{plan::Catalog, reference};

impl Workspace {
    /// The attribute a filter names ([`Error::UnknownAttribute`] if none).
    fn known_attribute(&self, name: &str) -> Result<&crate::attributes::Attribute> {
        self.attributes
            .get(name)
            .ok_or_else(|| Error::UnknownAttribute {
                attribute: name.to_string(),
            })
    }
}

impl Catalog for Workspace {
    fn users(&self) -> u64 {
        u64::from(self.users.len())
    }

    fn cohort(&self, partner: Partner, value: &str) -> Result<(String, u64)> {
        let c = self.cohorts.resolve(partner, value)?;
        Ok((c.key.cohort_id.clone(), c.len()))
    }

    fn attribute_type(&self, name: &str) -> Result<crate::attributes::AttrType> {
        self.attributes
            .type_of(name)
            .ok_or_else(|| Error::UnknownAttribute {
                attribute: name.to_string(),
            })
    }

    fn select(&self, name: &str, test: &Test) -> Result<(u64, Selected)> {
        let a = self.known_attribute(name)?;
        Ok((a.version(), Selected(test.select(a)?)))
    }

    fn scan(&self, name: &str, test: &Test) -> Result<Option<(u64, Scan)>> {
        let a = self.known_attribute(name)?;
        Ok(test.scan(a)?.map(|s| (a.version(), Scan(Arc::new(s)))))
    }

    fn deleted(&self) -> Option<Selected> {
        let d = self.users.deleted();
        (!d.is_empty()).then(|| Selected(Arc::new(SharedBitmap::new((**d).clone()))))
    }

    fn saved_filter(&self, id: &str) -> Result<crate::segment::Filter> {
        self.segments
            .get(id)
            .map(|s| s.filter.clone())
            .ok_or_else(|| Error::UnknownSegment { id: id.to_string() })
    }
}

impl reference::Data for Workspace {
    fn cohort_members(&self, partner: Partner, value: &str) -> Result<Cow<'_, RoaringBitmap>> {
        self.cohorts.resolve(partner, value)?.members.bitmap()
    }

    fn cohort_contains(&self, partner: Partner, value: &str, user: u32) -> Result<bool> {
        self.cohorts.resolve(partner, value)?.members.contains(user)
    }

    fn all_buckets(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        Box::new(self.users.buckets())
    }

    fn bucket(&self, user: UserId) -> Option<u16> {
        self.users.bucket(user)
    }

    fn lookup(&self, user: &UserRef) -> Option<UserId> {
        self.users.lookup(user)
    }

    fn attribute_values(&self, name: &str) -> Result<Vec<(u32, crate::attributes::AttrValue)>> {
        let a = self
            .attributes
            .get(name)
            .ok_or_else(|| Error::UnknownAttribute {
                attribute: name.to_string(),
            })?;
        Ok(a.values())
    }

    fn attribute_value(&self, name: &str, user: u32) -> Option<crate::attributes::AttrValue> {
        self.attributes.get(name).and_then(|a| a.get(user))
    }
}
