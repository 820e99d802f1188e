//! [`Frozen`]: what queries need of a workspace for some filters, copied
//! under its read lock and evaluated after the lock is released.

use std::sync::Arc;

use super::BitmapSource;
use crate::attributes::AttrType;
use crate::cohorts::BaseBitmap;
use crate::error::{Error, Result};
use crate::ids::{CohortKey, Partner};
use crate::segment::attr::Test;
use crate::segment::chunk::{LeafBytes, Prepared, Serialized};
use crate::segment::masks::MaskSource;
use crate::segment::plan::{Catalog, Plan, Scan, Selected};
use crate::segment::Filter;
use crate::snapshot::Snapshot;
use crate::users::Buckets;
use crate::workspace::Workspace;

/// A cohort as a [`Frozen`] view keeps it.
#[derive(Clone, Debug)]
struct FrozenCohort {
    cardinality: u64,
    max_bound: Option<u32>,
    base: Option<BaseBitmap>,
    delta: Option<Arc<Serialized>>,
}

/// What queries need of a workspace for some filters, taken under the
/// workspace's read lock and evaluated after it is released: the users'
/// count, the cohorts the filters name (the snapshot's bitmaps shared by
/// `Arc`, the in-memory changes as the serialized copies a
/// [`BitmapSource`] keeps) and, when the filters test buckets or when
/// asked, the buckets (the snapshot's shared, those of users created since
/// copied). Taking it costs the filters' size plus, with buckets, two bytes
/// per user created since the last snapshot; writers may change the
/// workspace while the view is evaluated, and the view does not change.
pub struct Frozen {
    users: u32,
    snap: Option<Arc<Snapshot>>,
    tail: Vec<u16>,
    /// `(partner, value as written)` -> cohort_id.
    names: hashbrown::HashMap<(Partner, String), String>,
    cohorts: hashbrown::HashMap<CohortKey, FrozenCohort>,
    /// The workspace's bucket-range masks, at the epoch of the freeze.
    masks: Option<MaskSource>,
    /// When the view was taken: relative time tests count back from it.
    now: i64,
    /// The types of the attributes the filters test.
    types: hashbrown::HashMap<String, AttrType>,
    /// What each attribute test takes, with the attribute's version,
    /// taken under the lock: the users it selects, or a range's slices.
    selections: hashbrown::HashMap<(String, Test), (u64, Taken)>,
    /// The saved segments the filters refer to, by id.
    segments: hashbrown::HashMap<String, Filter>,
    /// The deleted users (shared with the registry until it changes).
    deleted: Option<Selected>,
}

/// What an attribute test takes of the workspace: the users it selects,
/// or (a range that compares the slices) the index's slices as they are,
/// compared after the lock is released.
#[derive(Clone)]
enum Taken {
    Selected(Selected),
    Scan(Scan),
}

/// Runs (or, for ranges, takes what it needs of) every attribute test of
/// `f` (segment references expanded) on the workspace, as the planner
/// will ask for them.
fn select_all(
    ws: &Workspace,
    f: &Filter,
    now: i64,
    types: &mut hashbrown::HashMap<String, AttrType>,
    selections: &mut hashbrown::HashMap<(String, Test), (u64, Taken)>,
) -> Result<()> {
    match f {
        Filter::Attribute { attribute, cmp } => {
            let ty = ws.attribute_type(attribute)?;
            types.insert(attribute.clone(), ty);
            let (test, _) = crate::segment::attr::lower(attribute, cmp, ty, now)?;
            let key = (attribute.clone(), test);
            if !selections.contains_key(&key) {
                let got = match ws.scan(attribute, &key.1)? {
                    Some((version, scan)) => (version, Taken::Scan(scan)),
                    None => {
                        let (version, users) = ws.select(attribute, &key.1)?;
                        (version, Taken::Selected(users))
                    }
                };
                selections.insert(key, got);
            }
            Ok(())
        }
        Filter::And(c) | Filter::Or(c) => c
            .iter()
            .try_for_each(|c| select_all(ws, c, now, types, selections)),
        Filter::Not(c) => select_all(ws, c, now, types, selections),
        Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Segment { .. } => Ok(()),
    }
}

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("users", &self.users)
            .field("cohorts", &self.cohorts.len())
            .finish_non_exhaustive()
    }
}

impl Frozen {
    /// The view of `ws` that `filters` need (their cohort values resolved
    /// now: an unknown or ambiguous one fails here); with the buckets if a
    /// filter tests them or `buckets` is set.
    pub fn new(
        ws: &Workspace,
        src: &dyn BitmapSource,
        filters: &[&Filter],
        buckets: bool,
    ) -> Result<Frozen> {
        let now = chrono::Utc::now().timestamp();
        // Saved segments referred to are part of the filters: their
        // cohorts, attributes and buckets are frozen too.
        let mut segments = hashbrown::HashMap::new();
        let mut expanded = Vec::with_capacity(filters.len());
        for f in filters {
            expanded.push(crate::segment::expand_references(
                ws,
                f,
                &mut |id, inner| {
                    segments.insert(id.to_string(), inner.clone());
                },
            )?);
        }
        let filters: Vec<&Filter> = expanded.iter().collect();
        let mut types = hashbrown::HashMap::new();
        let mut selections = hashbrown::HashMap::new();
        for f in &filters {
            select_all(ws, f, now, &mut types, &mut selections)?;
        }
        let mut names = hashbrown::HashMap::new();
        let mut cohorts = hashbrown::HashMap::new();
        let mut first_err = None;
        for f in &filters {
            f.for_each_cohort(&mut |partner, value, _| {
                if first_err.is_some() || names.contains_key(&(partner, value.to_string())) {
                    return;
                }
                match ws.cohorts.resolve(partner, value) {
                    Ok(c) => {
                        names.insert((partner, value.to_string()), c.key.cohort_id.clone());
                        cohorts.entry(c.key.clone()).or_insert_with(|| {
                            let m = &c.members;
                            let base = m.base_bitmap().cloned();
                            let unchanged =
                                base.is_some() && m.added().is_empty() && m.removed().is_empty();
                            FrozenCohort {
                                cardinality: c.len(),
                                max_bound: m.max_bound(),
                                base,
                                delta: (!unchanged).then(|| src.bytes(c)),
                            }
                        });
                    }
                    Err(e) => first_err = Some(e),
                }
            });
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let (snap, tail) = if buckets || filters.iter().any(|f| f.tests_buckets()) {
            let b = ws.users.bucket_slices();
            // The snapshot's buckets are shared if they are what the
            // registry reads; anything else is copied.
            let shared = ws.users.snapshot().filter(|s| {
                s.buckets()
                    .is_ok_and(|x| x.as_ptr() == b.base.as_ptr() && x.len() == b.base.len())
            });
            match shared {
                Some(s) => (Some(s.clone()), b.tail.to_vec()),
                None => (None, b.iter().collect()),
            }
        } else {
            (None, Vec::new())
        };
        Ok(Frozen {
            users: ws.users.len(),
            snap,
            tail,
            names,
            cohorts,
            masks: src.bucket_masks(),
            now,
            types,
            selections,
            segments,
            deleted: ws.deleted(),
        })
    }

    /// The users' count.
    pub fn user_count(&self) -> u32 {
        self.users
    }

    /// The buckets (empty unless the view was taken with them).
    pub fn buckets(&self) -> Buckets<'_> {
        Buckets {
            base: self
                .snap
                .as_ref()
                .and_then(|s| s.buckets().ok())
                .unwrap_or(&[]),
            tail: &self.tail,
        }
    }
}

impl Catalog for Frozen {
    fn users(&self) -> u64 {
        u64::from(self.users)
    }

    fn deleted(&self) -> Option<Selected> {
        self.deleted.clone()
    }

    fn cohort(&self, partner: Partner, value: &str) -> Result<(String, u64)> {
        let id = self
            .names
            .get(&(partner, value.to_string()))
            .ok_or_else(|| Error::NoSuchCohort {
                partner,
                value: value.to_string(),
            })?;
        let c = self
            .cohorts
            .get(&CohortKey::new(partner, id.clone()))
            .ok_or_else(|| Error::UnknownCohort {
                key: CohortKey::new(partner, id.clone()),
            })?;
        Ok((id.clone(), c.cardinality))
    }

    fn attribute_type(&self, name: &str) -> Result<AttrType> {
        self.types
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownAttribute {
                attribute: name.to_string(),
            })
    }

    fn select(&self, name: &str, test: &Test) -> Result<(u64, Selected)> {
        match self.selections.get(&(name.to_string(), test.clone())) {
            Some((version, Taken::Selected(users))) => Ok((*version, users.clone())),
            // The planner asks `scan` first.
            Some((_, Taken::Scan(_))) | None => Err(Error::Internal(format!(
                "attribute test on {name} was not taken with the view"
            ))),
        }
    }

    fn scan(&self, name: &str, test: &Test) -> Result<Option<(u64, Scan)>> {
        Ok(
            match self.selections.get(&(name.to_string(), test.clone())) {
                Some((version, Taken::Scan(scan))) => Some((*version, scan.clone())),
                _ => None,
            },
        )
    }

    fn saved_filter(&self, id: &str) -> Result<Filter> {
        self.segments
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownSegment { id: id.to_string() })
    }

    fn now(&self) -> i64 {
        self.now
    }
}

impl<'f> Prepared<'f> {
    /// Fetches the leaves' bitmaps for `plan` (made by
    /// [`crate::segment::plan::plan`] on the same view) from a frozen view.
    pub fn frozen(f: &'f Frozen, plan: &Plan) -> Result<Self> {
        let p = Prepared::assemble(plan, f.users, f.buckets(), |key| {
            let c = f
                .cohorts
                .get(key)
                .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
            Ok(LeafBytes {
                base: c.base.as_ref().map(BaseBitmap::view).transpose()?,
                delta: c.delta.clone(),
                max: c.max_bound,
            })
        })?;
        Ok(p.with_bucket_masks(f.masks.clone()))
    }
}
