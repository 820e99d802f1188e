//! The attributes of a workspace's users, each with its index.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use hashbrown::HashMap;
use roaring::{MultiOps, RoaringBitmap};
use serde::Serialize;

use super::bsi::Bsi;
use super::value::{AttrType, AttrValue};
use crate::bitmap_view::SharedBitmap;
use crate::error::{Error, Result};

/// A bitmap built from users in ascending order, a run of them at a
/// time: roaring's one-value push looks for a bitmap container's maximum
/// by scanning its words from the end, for every value.
#[derive(Clone, Default)]
struct Ascending {
    bitmap: RoaringBitmap,
    pending: Vec<u32>,
}

impl Ascending {
    /// Users held before they are appended together.
    const RUN: usize = 512;

    fn push(&mut self, u: u32) {
        self.pending.push(u);
        if self.pending.len() >= Self::RUN {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.bitmap.append(self.pending.iter().copied()).is_err() {
            // Out of order after all: inserted one by one.
            self.bitmap.extend(self.pending.iter().copied());
        }
        self.pending.clear();
    }

    fn finish(mut self) -> RoaringBitmap {
        self.flush();
        self.bitmap
    }
}

/// Marks "no value" in a string attribute's per-user column.
const NONE: u32 = u32::MAX;

/// A string attribute's index: a bitmap per distinct value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Strings {
    has: RoaringBitmap,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Each value's users, shared with the selections that read them.
    members: Vec<Arc<SharedBitmap>>,
    /// Each user's value id, built on the first change of a user that
    /// already has a value (updates need the old value; loading and
    /// queries do not).
    column: Option<Vec<u32>>,
}

/// The fewest values a thread of the pool takes when a string test or a
/// union is split: below it, splitting costs more than it saves.
const PAR_VALUES: usize = 4096;

impl Strings {
    fn column(&mut self) -> &mut Vec<u32> {
        let (members, has) = (&self.members, &self.has);
        self.column.get_or_insert_with(|| {
            let len = has.max().map_or(0, |m| m as usize + 1);
            let mut c = vec![NONE; len];
            for (id, m) in members.iter().enumerate() {
                for u in m.iter() {
                    c[u as usize] = id as u32;
                }
            }
            c
        })
    }

    /// The users of the values `ids` (distinct): one value's bitmap
    /// shared, or the n-way union of several (not one union per value),
    /// in parts of at least [`PAR_VALUES`] values over the thread pool.
    fn union_of(&self, ids: &[u32]) -> Arc<SharedBitmap> {
        use rayon::prelude::*;
        let union = |ids: &[u32]| -> RoaringBitmap {
            ids.iter()
                .map(|&id| self.members[id as usize].bits())
                .union()
        };
        match ids {
            [id] => self.members[*id as usize].clone(),
            _ if ids.len() < 2 * PAR_VALUES => Arc::new(SharedBitmap::new(union(ids))),
            _ => Arc::new(SharedBitmap::new(
                ids.par_chunks(PAR_VALUES)
                    .map(union)
                    .reduce(RoaringBitmap::new, |a, b| a | b),
            )),
        }
    }

    /// The values `p` holds for (and that some user has), in order; over
    /// the thread pool in parts of at least [`PAR_VALUES`] values (a regex
    /// over a 100,000-value dictionary takes milliseconds on one thread).
    fn matching(&self, p: &(dyn Fn(&str) -> bool + Sync)) -> Vec<u32> {
        use rayon::prelude::*;
        (0..self.names.len() as u32)
            .into_par_iter()
            .with_min_len(PAR_VALUES)
            .filter(|&id| !self.members[id as usize].is_empty() && p(&self.names[id as usize]))
            .collect()
    }

    fn value_id(&self, user: u32) -> Option<u32> {
        if !self.has.contains(user) {
            return None;
        }
        if let Some(c) = &self.column {
            return c.get(user as usize).copied().filter(|&v| v != NONE);
        }
        self.members
            .iter()
            .position(|m| m.contains(user))
            .map(|i| i as u32)
    }

    /// Takes the values of `users` out (deleted users): a difference per
    /// value bitmap that holds one of them, no per-user column needed.
    fn remove_many(&mut self, users: &RoaringBitmap) {
        use rayon::prelude::*;
        // In parallel: an attribute may have 100,000 values.
        self.members.par_iter_mut().for_each(|m| {
            if !m.is_disjoint(users) {
                *SharedBitmap::bits_mut(m) -= users;
            }
        });
        if let Some(c) = &mut self.column {
            for u in users {
                if let Some(x) = c.get_mut(u as usize) {
                    *x = NONE;
                }
            }
        }
        self.has -= users;
    }

    fn remove(&mut self, user: u32) {
        if !self.has.contains(user) {
            return;
        }
        let c = self.column();
        let old = c.get(user as usize).copied().unwrap_or(NONE);
        if let Some(x) = c.get_mut(user as usize) {
            *x = NONE;
        }
        if let Some(m) = self.members.get_mut(old as usize) {
            SharedBitmap::bits_mut(m).remove(user);
        }
        self.has.remove(user);
    }

    fn set(&mut self, user: u32, v: &str) {
        self.remove(user);
        let id = match self.ids.get(v) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.ids.insert(v.to_string(), id);
                self.names.push(v.to_string());
                self.members.push(Arc::default());
                id
            }
        };
        SharedBitmap::bits_mut(&mut self.members[id as usize]).insert(user);
        self.has.insert(user);
        if let Some(c) = &mut self.column {
            if c.len() <= user as usize {
                c.resize(user as usize + 1, NONE);
            }
            c[user as usize] = id;
        }
    }
}

/// An attribute's index, by type.
#[derive(Clone, Debug)]
pub(crate) enum Index {
    Strings(Strings),
    Booleans {
        has: RoaringBitmap,
        /// Shared with the selections of `is true`.
        truth: Arc<SharedBitmap>,
    },
    Numbers(Bsi),
}

/// Bytes an attribute's index is read from on first use: a mapped
/// snapshot's attributes section, held open while any attribute still
/// needs it.
pub trait SectionBytes: Send + Sync {
    /// The whole section.
    fn section(&self) -> &[u8];

    /// The file it is in, for errors.
    fn file(&self) -> String {
        String::new()
    }
}

/// Where an attribute's index is read from until it is first needed.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) bytes: Arc<dyn SectionBytes>,
    /// The attribute's index within the section.
    pub(crate) range: Range<usize>,
    /// The users any bitmap may hold.
    pub(crate) users: u32,
}

impl Source {
    /// The index's bytes, or why they cannot be read: its range does not
    /// lie inside the section (it was found there when the section was
    /// listed, and a section's bytes never change, so this is a bug or a
    /// damaged map, never an index to read as empty).
    pub(crate) fn bytes(&self) -> Result<&[u8], String> {
        let section = self.bytes.section();
        section.get(self.range.clone()).ok_or_else(|| {
            format!(
                "its index (bytes {}..{}) is not inside the attributes section ({} bytes)",
                self.range.start,
                self.range.end,
                section.len()
            )
        })
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({:?})", self.range)
    }
}

/// One custom attribute: its type and its index. An attribute loaded from
/// a snapshot reads its index from the snapshot's bytes the first time
/// anything needs it, so opening a workspace costs no index. An index
/// found damaged then is refused as corrupt by [`Attribute::select`] (a
/// filter's test) and reads as empty elsewhere; the damage is logged and
/// reported by [`Attribute::damage`] (the section's checksum is checked
/// when the snapshot opens, so only a writer's bug gets this far).
#[derive(Clone, Debug)]
pub struct Attribute {
    name: String,
    ty: AttrType,
    /// Shared by the clones until one changes it.
    index: OnceLock<Arc<Index>>,
    /// Until the index is changed: where it is read from (a snapshot
    /// writer copies these bytes as they are).
    source: Option<Source>,
    /// What was wrong with the source's bytes, if anything.
    damage: OnceLock<String>,
    version: u64,
}

/// A string value and how many users have it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CommonValue {
    /// The value.
    pub value: String,
    /// Users with it.
    pub users: u64,
}

/// What the attribute list shows of an attribute.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "country", "type": "string", "users": 1200,
    "distinct_values": 14, "common_values": [{"value": "BR", "users": 700}]}))]
pub struct AttributeSummary {
    /// Its name.
    pub name: String,
    /// Its type: `string`, `integer`, `decimal`, `boolean` or `time`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub ty: AttrType,
    /// How many users have a value.
    pub users: u64,
    /// For strings: how many distinct values users have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_values: Option<u64>,
    /// For strings: the most common values, most users first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_values: Option<Vec<CommonValue>>,
    /// For booleans: how many users have `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_users: Option<u64>,
    /// For numbers and times: the smallest and largest value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    /// See `min`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
}

/// A comparison an index answers, in the index's own terms (the segment
/// layer turns a filter's comparison into one of these).
pub enum AttrQuery<'a> {
    /// Users with a value.
    Exists,
    /// Users whose string is one of these.
    AnyOf(&'a [String]),
    /// Users whose string satisfies a predicate (run once per distinct
    /// value, never per user).
    Matching(&'a (dyn Fn(&str) -> bool + Sync)),
    /// Users whose boolean is this.
    Is(bool),
    /// Users whose number lies in `lo..=hi` (an end `None`: unbounded).
    Range(Option<i64>, Option<i64>),
}

impl Attribute {
    fn new(name: &str, ty: AttrType) -> Attribute {
        let index = Index::empty(ty);
        Attribute::from_index(name.to_string(), ty, index)
    }

    /// The index, read from the source the first time.
    fn ix(&self) -> &Index {
        self.index.get_or_init(|| Arc::new(self.load()))
    }

    /// The index to change: read first if need be; the source is let go.
    fn ix_mut(&mut self) -> &mut Index {
        if self.index.get().is_none() {
            let ix = self.load();
            let _ = self.index.set(Arc::new(ix));
        }
        self.source = None;
        match self.index.get_mut() {
            Some(ix) => Arc::make_mut(ix),
            None => unreachable!("the index was set above"),
        }
    }

    /// Reads the index from the source (an empty one if there is none, or
    /// it is damaged).
    fn load(&self) -> Index {
        let Some(src) = &self.source else {
            return Index::empty(self.ty);
        };
        let read = src
            .bytes()
            .map_err(|e| format!("attribute {}: {e}", self.name))
            .and_then(|b| super::codec::read_index(&self.name, self.ty, b, src.users));
        match read {
            Ok(ix) => ix,
            Err(e) => {
                tracing::error!(attribute = %self.name, "{e}");
                let _ = self.damage.set(e);
                Index::empty(self.ty)
            }
        }
    }

    /// Reads the index now if it is still in the source; what was wrong
    /// with the source, if anything (then the attribute reads as empty).
    pub fn damage(&self) -> Option<&str> {
        self.ix();
        self.damage.get().map(String::as_str)
    }

    /// Whether the index is still only in the source (not read yet).
    pub fn is_loaded(&self) -> bool {
        self.index.get().is_some()
    }

    /// The source, while the index is unchanged since it was read from
    /// it: a snapshot writer writes its bytes from where they are.
    pub(crate) fn unchanged_source(&self) -> Option<&Source> {
        self.source.as_ref().filter(|_| self.damage.get().is_none())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its type.
    pub fn ty(&self) -> AttrType {
        self.ty
    }

    /// Changes with every change of a value (for caches).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The users that have a value.
    pub fn has(&self) -> &RoaringBitmap {
        self.ix().has()
    }

    /// One user's value.
    pub fn get(&self, user: u32) -> Option<AttrValue> {
        match self.ix() {
            Index::Strings(s) => s
                .value_id(user)
                .map(|id| AttrValue::String(s.names[id as usize].clone())),
            Index::Booleans { has, truth } => has
                .contains(user)
                .then(|| AttrValue::Boolean(truth.contains(user))),
            Index::Numbers(b) => b.get(user).and_then(|v| AttrValue::from_number(self.ty, v)),
        }
    }

    /// Every user's value, as `(user, value)` in user order (strings read
    /// per value, so this costs the users, not users times values).
    pub fn values(&self) -> Vec<(u32, AttrValue)> {
        let mut out: Vec<(u32, AttrValue)> = match self.ix() {
            Index::Strings(s) => s
                .names
                .iter()
                .zip(&s.members)
                .flat_map(|(n, m)| m.iter().map(move |u| (u, AttrValue::String(n.clone()))))
                .collect(),
            _ => self
                .has()
                .iter()
                .filter_map(|u| self.get(u).map(|v| (u, v)))
                .collect(),
        };
        out.sort_unstable_by_key(|(u, _)| *u);
        out
    }

    /// The users a query selects. A query that does not fit the type (a
    /// range on strings) is [`Error::AttributeType`]. A query of one
    /// value's users (`equals`, `is true`, a regex that matches one value)
    /// shares the index's bitmap, serialization included; the others are
    /// computed.
    pub fn select(&self, q: &AttrQuery<'_>) -> Result<Arc<SharedBitmap>> {
        let ix = self.ix();
        if let Some(reason) = self.damage.get() {
            return Err(Error::Corrupt {
                path: self
                    .source
                    .as_ref()
                    .map(|s| s.bytes.file())
                    .unwrap_or_default()
                    .into(),
                reason: reason.clone(),
            });
        }
        let computed = |b: RoaringBitmap| Arc::new(SharedBitmap::new(b));
        Ok(match (ix, q) {
            (_, AttrQuery::Exists) => computed(self.has().clone()),
            (Index::Strings(s), AttrQuery::AnyOf(values)) => {
                let mut ids: Vec<u32> = values
                    .iter()
                    .filter_map(|v| s.ids.get(v.as_str()).copied())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                s.union_of(&ids)
            }
            (Index::Strings(s), AttrQuery::Matching(p)) => s.union_of(&s.matching(*p)),
            (Index::Booleans { has, truth }, AttrQuery::Is(b)) => {
                if *b {
                    truth.clone()
                } else {
                    computed(has - truth.bits())
                }
            }
            (Index::Numbers(b), AttrQuery::Range(lo, hi)) => computed(b.range(*lo, *hi)),
            _ => {
                return Err(Error::AttributeType {
                    attribute: self.name.clone(),
                    reason: format!("a {} attribute cannot be compared this way", self.ty),
                })
            }
        })
    }

    /// A numeric range `lo..=hi` kept for evaluating chunk by chunk
    /// ([`super::bsi::RangeScan`]); `None` when [`Self::select`] answers
    /// it as well (it selects nobody or everyone with a value, or the
    /// attribute is not a number). A damaged index is refused as
    /// [`Self::select`] refuses it.
    pub fn scan(&self, lo: Option<i64>, hi: Option<i64>) -> Result<Option<super::bsi::RangeScan>> {
        match self.ix() {
            Index::Numbers(b) => match b.scan(lo, hi) {
                // `select` reports the damage.
                Some(_) if self.damage.get().is_some() => Ok(None),
                scan => Ok(scan),
            },
            _ => Ok(None),
        }
    }

    /// Unsets the values of `users` (each of which has one).
    fn remove_many(&mut self, users: &RoaringBitmap) {
        self.version += 1;
        match self.ix_mut() {
            Index::Strings(s) => s.remove_many(users),
            Index::Booleans { has, truth } => {
                *has -= users;
                *SharedBitmap::bits_mut(truth) -= users;
            }
            Index::Numbers(b) => b.remove_many(users),
        }
    }

    fn set(&mut self, user: u32, v: Option<&AttrValue>) {
        self.version += 1;
        match (self.ix_mut(), v) {
            (Index::Strings(s), None) => s.remove(user),
            (Index::Strings(s), Some(AttrValue::String(v))) => s.set(user, v),
            (Index::Booleans { has, truth }, v) => match v {
                Some(AttrValue::Boolean(b)) => {
                    has.insert(user);
                    // Only a change of the truth copies or unserializes it.
                    if truth.contains(user) != *b {
                        let t = SharedBitmap::bits_mut(truth);
                        if *b {
                            t.insert(user);
                        } else {
                            t.remove(user);
                        }
                    }
                }
                _ => {
                    has.remove(user);
                    if truth.contains(user) {
                        SharedBitmap::bits_mut(truth).remove(user);
                    }
                }
            },
            (Index::Numbers(b), v) => match v.and_then(AttrValue::number) {
                Some(x) => b.set(user, x),
                None => {
                    b.remove(user);
                }
            },
            // Values are checked against the type before they are set.
            (Index::Strings(_), Some(_)) => {}
        }
    }

    /// The attribute list's view of it, with up to `top` common values.
    pub fn summary(&self, top: usize) -> AttributeSummary {
        let mut s = AttributeSummary {
            name: self.name.clone(),
            ty: self.ty,
            users: self.has().len(),
            distinct_values: None,
            common_values: None,
            true_users: None,
            min: None,
            max: None,
        };
        match self.ix() {
            Index::Strings(st) => {
                let mut all: Vec<CommonValue> = st
                    .names
                    .iter()
                    .zip(&st.members)
                    .filter(|(_, m)| !m.is_empty())
                    .map(|(n, m)| CommonValue {
                        value: n.clone(),
                        users: m.len(),
                    })
                    .collect();
                s.distinct_values = Some(all.len() as u64);
                all.sort_by(|a, b| b.users.cmp(&a.users).then_with(|| a.value.cmp(&b.value)));
                all.truncate(top);
                s.common_values = Some(all);
            }
            Index::Booleans { truth, .. } => s.true_users = Some(truth.len()),
            Index::Numbers(b) => {
                s.min = b
                    .min()
                    .and_then(|v| AttrValue::from_number(self.ty, v))
                    .map(|v| v.to_json());
                s.max = b
                    .max()
                    .and_then(|v| AttrValue::from_number(self.ty, v))
                    .map(|v| v.to_json());
            }
        }
        s
    }

    /// A string attribute built in one pass: `values` are the distinct
    /// values, `users` yields `(user, index into values)` in ascending
    /// user order (a generator's way: no per-user updates).
    pub fn build_strings(
        name: &str,
        values: Vec<String>,
        users: impl Iterator<Item = (u32, u32)>,
    ) -> Attribute {
        let mut members = vec![Ascending::default(); values.len()];
        let mut has = Ascending::default();
        for (u, v) in users {
            if let Some(m) = members.get_mut(v as usize) {
                m.push(u);
                has.push(u);
            }
        }
        let mut s = Strings {
            has: has.finish(),
            ..Strings::default()
        };
        for (v, m) in values
            .into_iter()
            .zip(members.into_iter().map(Ascending::finish))
        {
            s.ids.insert(v.clone(), s.names.len() as u32);
            s.names.push(v);
            s.members.push(Arc::new(m.into()));
        }
        Attribute::from_index(name.to_string(), AttrType::String, Index::Strings(s))
    }

    /// A boolean attribute built in one pass (users in ascending order).
    pub fn build_booleans(name: &str, users: impl Iterator<Item = (u32, bool)>) -> Attribute {
        let (mut has, mut truth) = (Ascending::default(), Ascending::default());
        for (u, b) in users {
            has.push(u);
            if b {
                truth.push(u);
            }
        }
        Attribute::from_index(
            name.to_string(),
            AttrType::Boolean,
            Index::Booleans {
                has: has.finish(),
                truth: Arc::new(truth.finish().into()),
            },
        )
    }

    /// A numeric attribute of type `ty` built in one pass (users in
    /// ascending order, values at least `base`; a value below it is
    /// raised to it).
    pub fn build_numbers(
        name: &str,
        ty: AttrType,
        base: i64,
        users: impl Iterator<Item = (u32, i64)>,
    ) -> Attribute {
        let mut has = Ascending::default();
        let mut slices: Vec<Ascending> = Vec::new();
        for (u, v) in users {
            let off = (i128::from(v.max(base)) - i128::from(base)) as u64;
            has.push(u);
            let bits = 64 - off.leading_zeros() as usize;
            if slices.len() < bits {
                slices.resize_with(bits, Ascending::default);
            }
            for (i, s) in slices.iter_mut().enumerate().take(bits) {
                if off >> i & 1 == 1 {
                    s.push(u);
                }
            }
        }
        let slices = slices.into_iter().map(Ascending::finish).collect();
        Attribute::from_index(
            name.to_string(),
            ty,
            Index::Numbers(Bsi::from_parts(base, has.finish(), slices)),
        )
    }

    /// Its parts for persistence: strings as `(value, members)` pairs,
    /// booleans as `(has, truth)`, numbers as the bit-sliced index.
    pub(crate) fn index(&self) -> &Index {
        self.ix()
    }

    /// An attribute from its persisted parts.
    pub(crate) fn from_index(name: String, ty: AttrType, index: Index) -> Attribute {
        Attribute {
            name,
            ty,
            index: OnceLock::from(Arc::new(index)),
            source: None,
            damage: OnceLock::new(),
            version: 0,
        }
    }

    /// An attribute whose index is read from `bytes[range]` (part of a
    /// section) when first needed; `users` bounds its bitmaps' user ids.
    fn from_section(
        name: String,
        ty: AttrType,
        bytes: &Arc<dyn SectionBytes>,
        range: Range<usize>,
        users: u32,
    ) -> Attribute {
        Attribute {
            name,
            ty,
            index: OnceLock::new(),
            source: Some(Source {
                bytes: bytes.clone(),
                range,
                users,
            }),
            damage: OnceLock::new(),
            version: 0,
        }
    }
}

impl Index {
    /// The users that have a value.
    pub(crate) fn has(&self) -> &RoaringBitmap {
        match self {
            Index::Strings(s) => &s.has,
            Index::Booleans { has, .. } => has,
            Index::Numbers(b) => b.has(),
        }
    }

    /// An index of type `ty` with no values.
    pub(crate) fn empty(ty: AttrType) -> Index {
        match ty {
            AttrType::String => Index::Strings(Strings::default()),
            AttrType::Boolean => Index::Booleans {
                has: RoaringBitmap::new(),
                truth: Arc::default(),
            },
            AttrType::Integer | AttrType::Decimal | AttrType::Time => {
                Index::Numbers(Bsi::default())
            }
        }
    }

    /// A string index from its values and their members (a value appears
    /// once; users are in at most one value's bitmap).
    pub(crate) fn strings(values: Vec<(String, RoaringBitmap)>) -> Index {
        let mut s = Strings::default();
        for (name, m) in values {
            s.has |= &m;
            s.ids.insert(name.clone(), s.names.len() as u32);
            s.names.push(name);
            s.members.push(Arc::new(m.into()));
        }
        Index::Strings(s)
    }

    /// A string index's values and members, in dictionary order.
    pub(crate) fn string_values(&self) -> Option<Vec<(&str, &RoaringBitmap)>> {
        match self {
            Index::Strings(s) => {
                let mut v: Vec<(&str, &RoaringBitmap)> = s
                    .names
                    .iter()
                    .map(String::as_str)
                    .zip(s.members.iter().map(|m| m.bits()))
                    .filter(|(_, m)| !m.is_empty())
                    .collect();
                v.sort_by(|a, b| a.0.cmp(b.0));
                Some(v)
            }
            _ => None,
        }
    }
}

/// Every custom attribute of a workspace, by name. Cloning shares each
/// attribute until one side changes it. Attributes loaded from a
/// snapshot are listed from its section on first use (names, types and
/// where each index lies), each index read when first needed.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    by_name: OnceLock<BTreeMap<String, Arc<Attribute>>>,
    /// Until first use: the section they are listed from.
    pending: Option<Pending>,
    /// What was wrong with the section's list, if anything (then there
    /// are no attributes).
    damage: OnceLock<String>,
}

/// A snapshot's attributes section, not listed yet.
#[derive(Clone)]
struct Pending {
    bytes: Arc<dyn SectionBytes>,
    users: u32,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pending({} bytes)", self.bytes.section().len())
    }
}

impl Attributes {
    /// No attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The attributes a snapshot's section holds, listed from `bytes` on
    /// first use and each index read from them only when it is first
    /// needed: nothing is read now. `users` bounds the user ids their
    /// bitmaps may hold.
    pub fn on_section(bytes: Arc<dyn SectionBytes>, users: u32) -> Self {
        Attributes {
            by_name: OnceLock::new(),
            pending: Some(Pending { bytes, users }),
            damage: OnceLock::new(),
        }
    }

    /// The attributes by name, listed from the section the first time.
    fn map(&self) -> &BTreeMap<String, Arc<Attribute>> {
        self.by_name.get_or_init(|| {
            let Some(p) = &self.pending else {
                return BTreeMap::new();
            };
            match super::codec::directory(p.bytes.section()) {
                Ok(list) => list
                    .into_iter()
                    .map(|(name, ty, range)| {
                        let a = Attribute::from_section(name.clone(), ty, &p.bytes, range, p.users);
                        (name, Arc::new(a))
                    })
                    .collect(),
                Err(e) => {
                    tracing::error!("{e}");
                    let _ = self.damage.set(e);
                    BTreeMap::new()
                }
            }
        })
    }

    /// The attributes to change (listed first if need be).
    fn map_mut(&mut self) -> &mut BTreeMap<String, Arc<Attribute>> {
        self.map();
        self.pending = None;
        match self.by_name.get_mut() {
            Some(m) => m,
            None => unreachable!("listed above"),
        }
    }

    /// Lists the attributes now if they are still only in the section;
    /// what was wrong with the list, if anything (then there are none).
    pub fn damage(&self) -> Option<&str> {
        self.map();
        self.damage.get().map(String::as_str)
    }

    /// Moves onto a new snapshot's attributes section, written from an
    /// earlier clone of these: every attribute unchanged since it was
    /// loaded (so unchanged in that clone too) reads from the new section
    /// from now on, its index kept if it was read, so the old snapshot is
    /// no longer held. `list` is the new section's list
    /// ([`super::codec::directory`], made before the caller took its
    /// lock). The attributes themselves do not change.
    pub(crate) fn rebase(
        &mut self,
        bytes: Arc<dyn SectionBytes>,
        list: Vec<(String, AttrType, Range<usize>)>,
        users: u32,
    ) {
        if self.pending.is_some() && self.by_name.get().is_none() {
            // Never listed, so never changed: the new section holds them.
            *self = Attributes::on_section(bytes, users);
            return;
        }
        let at: HashMap<String, (AttrType, Range<usize>)> = list
            .into_iter()
            .map(|(name, ty, range)| (name, (ty, range)))
            .collect();
        for (name, a) in self.map_mut().iter_mut() {
            let Some((ty, range)) = at.get(name).filter(|(ty, _)| *ty == a.ty) else {
                continue;
            };
            if a.source.is_none() || a.damage.get().is_some() {
                continue;
            }
            let mut moved =
                Attribute::from_section(name.clone(), *ty, &bytes, range.clone(), users);
            moved.version = a.version;
            if let Some(ix) = a.index.get() {
                let _ = moved.index.set(ix.clone());
            }
            *a = Arc::new(moved);
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// An attribute by name.
    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.map().get(name).map(|a| &**a)
    }

    /// Every attribute, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Attribute> {
        self.map().values().map(|a| &**a)
    }

    /// A user's values, by attribute name.
    pub fn values_of(&self, user: u32) -> BTreeMap<String, AttrValue> {
        self.map()
            .iter()
            .filter_map(|(n, a)| a.get(user).map(|v| (n.clone(), v)))
            .collect()
    }

    /// The type of attribute `name`, if it exists.
    pub fn type_of(&self, name: &str) -> Option<AttrType> {
        self.get(name).map(Attribute::ty)
    }

    /// Types a request's values, checking each name and each value
    /// against its attribute's type (or the type an earlier value of the
    /// request gave it); an empty CSV cell is left out. Changes nothing.
    pub fn parse_inputs(
        &self,
        inputs: &[(String, super::AttrInput)],
    ) -> Result<Vec<(String, Option<AttrValue>)>> {
        let mut pending = BTreeMap::new();
        let mut out = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            super::check_name(name)?;
            let ty = self.type_of(name).or_else(|| pending.get(name).copied());
            let value = match input {
                super::AttrInput::Json(v) => AttrValue::from_json(name, v, ty)?,
                super::AttrInput::Text(t) if t.is_empty() => continue,
                super::AttrInput::Text(t) => AttrValue::from_text(name, t, ty)?,
            };
            if let (None, Some(v)) = (ty, &value) {
                pending.insert(name.clone(), v.ty());
            }
            out.push((name.clone(), value));
        }
        Ok(out)
    }

    /// Checks values against the attributes' types; changes nothing.
    pub fn check(&self, sets: &[(String, Option<AttrValue>)]) -> Result<()> {
        let mut pending = BTreeMap::new();
        for (name, v) in sets {
            super::check_name(name)?;
            let Some(v) = v else { continue };
            let ty = self
                .type_of(name)
                .or_else(|| pending.get(name.as_str()).copied());
            match ty {
                Some(t) if t != v.ty() => {
                    return Err(Error::AttributeType {
                        attribute: name.clone(),
                        reason: format!(
                            "the attribute is of type {t}, the value of type {}",
                            v.ty()
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    pending.insert(name.as_str(), v.ty());
                }
            }
        }
        Ok(())
    }

    /// Whether declaring attribute `name` of type `ty` changes anything:
    /// `false` when it has that type already; a bad name or another type
    /// is [`Error::AttributeType`].
    pub fn check_declare(&self, name: &str, ty: AttrType) -> Result<bool> {
        super::check_name(name)?;
        match self.type_of(name) {
            Some(t) if t == ty => Ok(false),
            Some(t) => Err(Error::AttributeType {
                attribute: name.to_string(),
                reason: format!("the attribute is already of type {t}, not {ty}"),
            }),
            None => Ok(true),
        }
    }

    /// Declares an attribute's type before any user has it; declaring the
    /// type it has is a no-op, another type is [`Error::AttributeType`].
    pub fn declare(&mut self, name: &str, ty: AttrType) -> Result<()> {
        if self.check_declare(name, ty)? {
            self.map_mut()
                .insert(name.to_string(), Arc::new(Attribute::new(name, ty)));
        }
        Ok(())
    }

    /// Sets (or, with `None`, unsets) a user's values. Checked whole
    /// first: on an error nothing changed.
    pub fn set(&mut self, user: u32, sets: &[(String, Option<AttrValue>)]) -> Result<()> {
        self.check(sets)?;
        for (name, v) in sets {
            match (self.map_mut().get_mut(name.as_str()), v) {
                (Some(a), v) => Arc::make_mut(a).set(user, v.as_ref()),
                (None, Some(v)) => {
                    let mut a = Attribute::new(name, v.ty());
                    a.set(user, Some(v));
                    self.map_mut().insert(name.clone(), Arc::new(a));
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Unsets every value of `users` (deleted users); returns the values
    /// removed, and per attribute that changed, the users it lost.
    pub fn remove_users(&mut self, users: &RoaringBitmap) -> (u64, Vec<(String, RoaringBitmap)>) {
        let mut removed = 0;
        let mut changed = Vec::new();
        for (name, a) in self.map_mut().iter_mut() {
            let hit = a.has() & users;
            if hit.is_empty() {
                continue;
            }
            Arc::make_mut(a).remove_many(&hit);
            removed += hit.len();
            changed.push((name.clone(), hit));
        }
        (removed, changed)
    }

    /// Puts an attribute in place, replacing one of the same name (loading
    /// a snapshot, generating a workload).
    pub fn insert(&mut self, a: Attribute) {
        self.map_mut().insert(a.name.clone(), Arc::new(a));
    }

    /// The attribute list: every attribute's summary, with up to `top`
    /// common values for strings.
    pub fn summaries(&self, top: usize) -> Vec<AttributeSummary> {
        self.iter().map(|a| a.summary(top)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(a: &mut Attributes, user: u32, j: serde_json::Value) -> Result<()> {
        let inputs: Vec<(String, crate::attributes::AttrInput)> = j
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), crate::attributes::AttrInput::Json(v.clone())))
            .collect();
        let sets = a.parse_inputs(&inputs)?;
        a.set(user, &sets)
    }

    #[test]
    fn tests_over_large_dictionaries_split_across_threads_select_exactly() {
        const VALUES: u32 = 3 * PAR_VALUES as u32;
        let mut a = Attributes::new();
        for u in 0..2 * VALUES {
            set(&mut a, u, json!({ "product": format!("p{}", u % VALUES) })).unwrap();
        }
        let product = a.get("product").unwrap();
        let select = |p: &(dyn Fn(&str) -> bool + Sync)| {
            product
                .select(&AttrQuery::Matching(p))
                .unwrap()
                .bits()
                .clone()
        };
        // Every value: the union runs in parts over the pool.
        assert_eq!(
            select(&|_| true),
            (0..2 * VALUES).collect::<RoaringBitmap>()
        );
        // Some values, spread over every part of the dictionary.
        let sevens: RoaringBitmap = (0..2 * VALUES).filter(|u| u % VALUES % 10 == 7).collect();
        assert_eq!(select(&|s| s.ends_with('7')), sevens);
        assert!(select(&|_| false).is_empty());
    }

    #[test]
    fn one_value_selections_share_the_index_bitmap_until_it_changes() {
        let mut a = Attributes::new();
        set(&mut a, 3, json!({"country": "BR", "sub": true})).unwrap();
        set(&mut a, 5, json!({"country": "DE", "sub": false})).unwrap();
        let br = |a: &Attributes| {
            a.get("country")
                .unwrap()
                .select(&AttrQuery::AnyOf(&["BR".to_string(), "BR".to_string()]))
                .unwrap()
        };
        let truth = |a: &Attributes| a.get("sub").unwrap().select(&AttrQuery::Is(true)).unwrap();
        let (b1, b2) = (br(&a), br(&a));
        assert!(Arc::ptr_eq(&b1, &b2), "equals shares the value's bitmap");
        assert!(
            Arc::ptr_eq(&b1.serialized(), &b2.serialized()),
            "serialized once"
        );
        let t1 = truth(&a);
        assert!(
            Arc::ptr_eq(&t1, &truth(&a)),
            "is true shares the truth bitmap"
        );
        let before = t1.serialized();
        // Several values, a regex's many: computed, not shared.
        let q = AttrQuery::AnyOf(&["BR".to_string(), "DE".to_string()]);
        let c = a.get("country").unwrap();
        assert!(!Arc::ptr_eq(&c.select(&q).unwrap(), &c.select(&q).unwrap()));
        // A change: the holders keep what they took; a new selection sees it.
        set(&mut a, 7, json!({"country": "BR", "sub": true})).unwrap();
        assert_eq!(b1.iter().collect::<Vec<_>>(), vec![3]);
        assert_eq!(t1.iter().collect::<Vec<_>>(), vec![3]);
        assert_eq!(br(&a).iter().collect::<Vec<_>>(), vec![3, 7]);
        let t2 = truth(&a);
        assert_eq!(t2.iter().collect::<Vec<_>>(), vec![3, 7]);
        assert!(!t2.is_serialized(), "a change drops the serialization");
        let s2 = t2.serialized();
        let v = crate::bitmap_view::BitmapView::parse(s2.added.as_deref().unwrap()).unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![3, 7]);
        let v = crate::bitmap_view::BitmapView::parse(before.added.as_deref().unwrap()).unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![3]);
        // Setting a boolean to what it is neither copies nor unserializes.
        set(&mut a, 7, json!({"sub": true})).unwrap();
        assert!(truth(&a).is_serialized());
    }

    #[test]
    fn values_set_read_back_and_unset() {
        let mut a = Attributes::new();
        set(&mut a, 3, json!({"country": "BR", "spend": 120.5, "sub": true, "seen": "2026-11-01T10:00:00Z", "n": 7})).unwrap();
        set(
            &mut a,
            5,
            json!({"country": "DE", "spend": 3, "sub": false}),
        )
        .unwrap();
        set(&mut a, 3, json!({"country": "DE", "n": null})).unwrap();
        let v = a.values_of(3);
        assert_eq!(v["country"], AttrValue::String("DE".into()));
        assert_eq!(v["spend"], AttrValue::Decimal(1_205_000));
        assert!(!v.contains_key("n"));
        assert_eq!(a.get("n").unwrap().has().len(), 0);
        let de = a
            .get("country")
            .unwrap()
            .select(&AttrQuery::AnyOf(&["DE".to_string()]))
            .unwrap();
        assert_eq!(de.iter().collect::<Vec<_>>(), vec![3, 5]);
        let f = a.get("sub").unwrap().select(&AttrQuery::Is(false)).unwrap();
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![5]);
        let s = a
            .get("spend")
            .unwrap()
            .select(&AttrQuery::Range(Some(30_000), Some(30_000)))
            .unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_value_of_the_wrong_type_changes_nothing_of_the_request() {
        let mut a = Attributes::new();
        set(&mut a, 1, json!({"country": "BR", "n": 1})).unwrap();
        let e = set(&mut a, 2, json!({"country": "AR", "n": "x"})).unwrap_err();
        assert!(e.to_string().contains("attribute n"), "{e}");
        assert!(a.get("country").unwrap().get(2).is_none());
        // The same attribute twice in one request with two types.
        let sets = vec![
            ("m".to_string(), Some(AttrValue::Integer(1))),
            ("m".to_string(), Some(AttrValue::Boolean(true))),
        ];
        assert!(a.set(4, &sets).is_err());
        assert!(a.get("m").is_none());
    }

    #[test]
    fn summaries_show_types_counts_common_values_and_bounds() {
        let mut a = Attributes::new();
        for u in 0..10u32 {
            let c = if u < 6 {
                "BR"
            } else if u < 9 {
                "DE"
            } else {
                "FR"
            };
            set(
                &mut a,
                u,
                json!({"country": c, "n": i64::from(u) - 3, "b": u % 2 == 0}),
            )
            .unwrap();
        }
        let s = a.summaries(2);
        let c = s.iter().find(|s| s.name == "country").unwrap();
        assert_eq!(c.users, 10);
        assert_eq!(c.distinct_values, Some(3));
        assert_eq!(
            c.common_values.as_ref().unwrap(),
            &vec![
                CommonValue {
                    value: "BR".into(),
                    users: 6
                },
                CommonValue {
                    value: "DE".into(),
                    users: 3
                }
            ]
        );
        let n = s.iter().find(|s| s.name == "n").unwrap();
        assert_eq!(
            (n.min.clone(), n.max.clone()),
            (Some(json!(-3)), Some(json!(6)))
        );
        assert_eq!(
            s.iter().find(|s| s.name == "b").unwrap().true_users,
            Some(5)
        );
    }

    #[test]
    fn a_clone_keeps_its_values_when_the_original_changes() {
        let mut a = Attributes::new();
        set(&mut a, 1, json!({"country": "BR"})).unwrap();
        let frozen = a.clone();
        set(&mut a, 1, json!({"country": "AR"})).unwrap();
        assert_eq!(
            frozen.values_of(1)["country"],
            AttrValue::String("BR".into())
        );
        assert_eq!(a.values_of(1)["country"], AttrValue::String("AR".into()));
    }

    /// The one-pass builders hold exactly the users and values given, over
    /// chunks dense enough for bitmap containers and sparse ones, and their
    /// ranges agree with a scan.
    #[test]
    fn built_indexes_hold_what_they_were_given() {
        let users: Vec<u32> = (0..300_000u32)
            .filter(|u| u % 3 != 0 || (100_000..110_000).contains(u))
            .filter(|u| !(150_000..200_000).contains(u) || u % 97 == 0)
            .collect();
        let value = |u: u32| i64::from(u.wrapping_mul(2_654_435_761) % 5_000);
        let n = Attribute::build_numbers(
            "n",
            AttrType::Integer,
            0,
            users.iter().map(|&u| (u, value(u))),
        );
        let want: Vec<(u32, AttrValue)> = users
            .iter()
            .map(|&u| (u, AttrValue::Integer(value(u))))
            .collect();
        assert_eq!(n.values(), want);
        let Index::Numbers(bsi) = n.index() else {
            panic!("numbers")
        };
        let scan: RoaringBitmap = users
            .iter()
            .copied()
            .filter(|&u| (1_000..=3_000).contains(&value(u)))
            .collect();
        assert_eq!(bsi.range(Some(1_000), Some(3_000)), scan);
        let s = Attribute::build_strings(
            "s",
            vec!["a".into(), "b".into()],
            users.iter().map(|&u| (u, u % 2)),
        );
        let b = Attribute::build_booleans("b", users.iter().map(|&u| (u, u % 5 == 0)));
        for &u in users.iter().step_by(101) {
            let want = if u % 2 == 0 { "a" } else { "b" };
            assert_eq!(s.get(u), Some(AttrValue::String(want.into())));
            assert_eq!(b.get(u), Some(AttrValue::Boolean(u % 5 == 0)));
        }
        assert_eq!(s.has().len(), users.len() as u64);
        assert_eq!(b.has().len(), users.len() as u64);
        assert_eq!(s.get(0), None);
    }
}
