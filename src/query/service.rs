//! The segment queries on a live workspace, as the segment API answers
//! them: JSON values carrying `"generation"`, the log sequence number of
//! the last change the answer saw. The HTTP handlers
//! ([`crate::server::segments`]) and the command line (`segq count|members|
//! check --data`) both call these, so both answer the same.
//!
//! Each takes the workspace's read lock only briefly: counts, estimates and
//! breakdowns take a [`Frozen`] view under it (time proportional to the
//! filter) and evaluate after releasing it; a member page is gathered in
//! chunks of [`PAGE_CHUNK`] members, the lock released between them (and
//! rendered in blocks of [`STREAM_BLOCK`] users, see [`super::render`]);
//! checks hold it for one bounded evaluation.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::{Check, CursorScope, Frozen};
use crate::engine::WorkspaceHandle;
use crate::error::{Error, Result};
use crate::ids::UserRef;
use crate::query;
use crate::query::sample::{Interval, SampleInfo, SampledCount, Tradeoff};
use crate::segment::reference::Membership;
use crate::segment::{self, Filter};
use crate::workspace::cache::Key;
use crate::workspace::live::LiveSegments;
use crate::workspace::Workspace;

/// The page size of the member export when the request names none.
pub const DEFAULT_LIMIT: u64 = 10_000;
/// The default sample of an estimate, in buckets (10% of the users).
pub const DEFAULT_SAMPLE_BUCKETS: u16 = 1_000;
/// Members computed per read lock while a page is gathered.
pub const PAGE_CHUNK: usize = 65_536;
/// Users rendered per read lock while a page is streamed.
pub const STREAM_BLOCK: usize = 4_096;

/// What a request names: a filter, or a saved segment.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A filter, as given.
    Filter(Filter),
    /// A saved segment, by id.
    Segment(String),
}

impl Target {
    /// The filter, as the workspace holds it now.
    pub fn filter<'a>(&'a self, ws: &'a Workspace) -> Result<Cow<'a, Filter>> {
        match self {
            Target::Filter(f) => Ok(Cow::Borrowed(f)),
            Target::Segment(id) => ws
                .segments
                .get(id)
                .map(|s| Cow::Borrowed(&s.filter))
                .ok_or_else(|| Error::UnknownSegment { id: id.clone() }),
        }
    }
}

/// `target` with its relative time tests read as absolute times at `now`
/// (seconds since the epoch), for reproducible answers: the saved segments
/// it refers to are expanded first, so their relative tests are pinned
/// too. A target without relative tests is returned as it is (keeping the
/// answers of live segments and the result cache).
pub fn pin(handle: &WorkspaceHandle, target: Target, now: Option<i64>) -> Result<Target> {
    let Some(now) = now else {
        return Ok(target);
    };
    let (ws, _) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let expanded = segment::expand_references(&*ws, &filter, &mut |_, _| {})?;
    if !expanded.is_relative() {
        return Ok(target);
    }
    Ok(Target::Filter(expanded.pin_now(now)?))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("cannot serialise: {e}")))
}

/// How to count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CountMode {
    /// An exact count.
    Exact {
        /// With the plan and what evaluating it met.
        explain: bool,
    },
    /// `width` buckets from `start`.
    Estimate {
        /// The first sampled bucket.
        start: u16,
        /// How many buckets to sample.
        width: u16,
    },
    /// A sample of whole chunks ([`query::sample`]).
    Sampled(Sampling),
}

/// A chunk sample: the trade-off asked for and the seed the chunks are
/// drawn with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// What the caller picked.
    pub tradeoff: Tradeoff,
    /// The seed (the same seed on the same state draws the same chunks).
    pub seed: u64,
}

impl Sampling {
    /// `tradeoff` with `seed`, or a random seed (below 2^53, so that a
    /// JSON client reads it back exactly).
    pub fn new(tradeoff: Tradeoff, seed: Option<u64>) -> Sampling {
        use rand::Rng;
        Sampling {
            tradeoff,
            seed: seed.unwrap_or_else(|| rand::thread_rng().gen_range(0..1u64 << 53)),
        }
    }
}

/// A sampled count's answer.
fn sampled_json(e: &SampledCount, generation: u64) -> Result<Value> {
    let mut out = to_value(e)?;
    out["design"] = json!("chunks");
    out["confidence"] = json!(0.95);
    out["sample_size"] = json!(e.sample.sample_users);
    out["generation"] = json!(generation);
    Ok(out)
}

/// The answer of a sampled count answered exactly without evaluation (a
/// live segment's size, a cohort's cardinality).
fn stored_estimate(
    n: u64,
    s: Sampling,
    users: u32,
    reason: &str,
    generation: u64,
    took_us: u64,
) -> Result<Value> {
    let chunks = users.div_ceil(1 << 16);
    let e = SampledCount {
        interval: Interval {
            estimate: n,
            low: n,
            high: n,
            sample_matches: n,
        },
        sample: SampleInfo::exact(s.tradeoff, chunks, 0, u64::from(users), s.seed, reason),
        relative_error: Some(0.0),
        took_us,
    };
    sampled_json(&e, generation)
}

/// A frozen view of what `target` needs (with every bucket if `buckets`),
/// taken under the workspace's read lock, which is released on return; the
/// filter (checked against `max_filter_nodes`) and the generation seen.
pub fn freeze(
    handle: &WorkspaceHandle,
    target: &Target,
    buckets: bool,
) -> Result<(Frozen, Filter, u64)> {
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let frozen = Frozen::new(&ws, handle.bitmaps(), &[&filter], buckets)?;
    Ok((frozen, filter.into_owned(), generation))
}

/// The count (or estimate) of a segment, as the count endpoint answers it.
/// An exact count without `explain` is answered, in this order, by the
/// live segment the target names, by a live segment whose plan is the
/// filter's ([`segment::plan::key`] on the same state), by the result
/// cache, or else evaluated on a frozen view, without the workspace's
/// lock (and filed in the cache).
pub fn count(handle: &WorkspaceHandle, target: &Target, mode: CountMode) -> Result<Value> {
    if mode == (CountMode::Exact { explain: false }) {
        return exact_count(handle, target);
    }
    if let (CountMode::Sampled(s), Target::Segment(id)) = (mode, target) {
        let t = std::time::Instant::now();
        let (ws, generation) = handle.view();
        handle.check_filter(&*target.filter(&ws)?)?;
        if let Some(n) = handle.live().len(id) {
            let took = t.elapsed().as_micros() as u64;
            return stored_estimate(n, s, ws.users.len(), LIVE, generation, took);
        }
    }
    let estimate = matches!(mode, CountMode::Estimate { .. });
    let (frozen, filter, generation) = freeze(handle, target, estimate)?;
    match mode {
        CountMode::Sampled(s) => {
            let e = query::sampled_count(&frozen, &filter, s.tradeoff, s.seed)?;
            sampled_json(&e, generation)
        }
        CountMode::Exact { explain } => {
            let c = query::count_in(&frozen, &filter, explain)?;
            let mut out = json!({"count": c.count, "generation": generation, "took_us": c.took_us});
            if let Some(e) = &c.explain {
                out["explain"] = to_value(e)?;
            }
            Ok(out)
        }
        CountMode::Estimate { start, width } => {
            let e = query::estimate_in(&frozen, &filter, start, width)?;
            Ok(json!({
                "design": "buckets",
                "estimate": e.estimate,
                "low": e.low,
                "high": e.high,
                "confidence": e.confidence,
                "sample_size": e.sample_size,
                "sample_matches": e.sample_matches,
                "sample_start": start,
                "sample_buckets": width,
                "sampled_ranges": e.sample_buckets,
                "generation": generation,
                "took_us": e.took_us,
            }))
        }
    }
}

fn exact_count(handle: &WorkspaceHandle, target: &Target) -> Result<Value> {
    let t = std::time::Instant::now();
    let answer = |count: u64, generation: u64| json!({"count": count, "generation": generation, "took_us": t.elapsed().as_micros() as u64});
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    if let Target::Segment(id) = target {
        if let Some(n) = handle.live().len(id) {
            return Ok(answer(n, generation));
        }
    }
    let p = segment::plan::plan(&*ws, &filter)?;
    if let Some(n) = handle.live().len_by_key(&segment::plan::key(&p)) {
        return Ok(answer(n, generation));
    }
    let key = Key::new(&ws, &p);
    if let Some(n) = key.as_ref().and_then(|k| handle.results().get(k)) {
        return Ok(answer(n, generation));
    }
    let frozen = Frozen::new(&ws, handle.bitmaps(), &[&filter], false)?;
    let filter = filter.into_owned();
    drop(ws);
    let c = query::count_in(&frozen, &filter, false)?;
    if let Some(k) = key {
        handle.results().insert(k, c.count);
    }
    Ok(answer(c.count, generation))
}

/// The most nodes of a filter a quick one-user check evaluates
/// ([`check_user_quick`]): a bound on its work, one membership probe per
/// leaf.
pub const QUICK_CHECK_NODES: usize = 64;

/// Why a sampled count of a live segment is exact.
const LIVE: &str = "a saved segment kept live: its size is stored";
/// Why a sampled count of one cohort is exact.
const STORED: &str = "the count is stored (no evaluation)";

/// Whether [`count_quick`] answers a count of `filter` in `mode` (`live`:
/// the request names a saved segment kept live): an exact count, without
/// `explain`, or a chunk-sampled estimate (answered exactly), of a live
/// segment (its size) or of one cohort, included or excluded (read from
/// the cohort's cardinality).
pub fn count_is_quick(filter: &Filter, live: bool, mode: CountMode) -> bool {
    matches!(
        mode,
        CountMode::Exact { explain: false } | CountMode::Sampled(_)
    ) && (live || matches!(filter, Filter::Cohort { .. }))
}

/// Whether [`check_user_quick`] answers a one-user check of `filter`
/// (`live`: the request names a saved segment kept live): a live segment
/// (one bitmap probe), or a filter of at most [`QUICK_CHECK_NODES`] nodes
/// (one probe per leaf).
pub fn check_is_quick(filter: &Filter, live: bool) -> bool {
    live || filter.nodes() <= QUICK_CHECK_NODES
}

/// The workspace's state, the generation, the target's filter (checked
/// against `max_filter_nodes`) and whether the target is a live segment,
/// if the locks are free now; `None` otherwise and on any error.
fn quick_view<'h>(
    handle: &'h WorkspaceHandle,
    target: &Target,
) -> Option<(
    std::sync::RwLockReadGuard<'h, Workspace>,
    u64,
    std::sync::RwLockReadGuard<'h, LiveSegments>,
)> {
    let (ws, generation) = handle.try_view()?;
    let filter = target.filter(&ws).ok()?;
    handle.check_filter(&filter).ok()?;
    let live = handle.try_live()?;
    Some((ws, generation, live))
}

/// [`count`]'s answer when it costs O(1) ([`count_is_quick`]) and the
/// workspace's locks are free now; `None` otherwise (and on any error:
/// [`count`] then answers, or says what is wrong). Never waits, so the
/// server gives it on an async worker.
pub fn count_quick(handle: &WorkspaceHandle, target: &Target, mode: CountMode) -> Option<Value> {
    let t = std::time::Instant::now();
    let (ws, generation, live) = quick_view(handle, target)?;
    let filter = target.filter(&ws).ok()?;
    let live_len = match target {
        Target::Segment(id) => live.len(id),
        Target::Filter(_) => None,
    };
    if !count_is_quick(&filter, live_len.is_some(), mode) {
        return None;
    }
    let count = match (live_len, &*filter) {
        (Some(n), _) => n,
        (
            None,
            Filter::Cohort {
                partner,
                cohort,
                includes,
            },
        ) => {
            let c = ws.cohorts.resolve(*partner, cohort).ok()?;
            let users = ws.users.len();
            // The cardinality counts the members among the users only if
            // the largest member is one (as the chunk evaluator trusts it).
            if c.members.max_bound().is_some_and(|m| m >= users) {
                return None;
            }
            if *includes {
                c.len()
            } else {
                // Deleted users are in no cohort and in no complement.
                ws.users.live_len().checked_sub(c.len())?
            }
        }
        (None, _) => return None,
    };
    let users = ws.users.len();
    drop((ws, live));
    let took_us = t.elapsed().as_micros() as u64;
    match mode {
        CountMode::Sampled(s) => {
            let why = if live_len.is_some() { LIVE } else { STORED };
            stored_estimate(count, s, users, why, generation, took_us).ok()
        }
        _ => Some(json!({"count": count, "generation": generation, "took_us": took_us})),
    }
}

/// [`check_user`]'s answer when it is bounded ([`check_is_quick`]) and the
/// workspace's locks are free now; `None` otherwise (and on any error).
/// The filter, given or saved, is neither parsed nor planned again: a live
/// segment is one bitmap probe, any other filter one membership probe per
/// leaf ([`segment::reference::contains`]). Never waits, so the server
/// gives it on an async worker.
pub fn check_user_quick(
    handle: &WorkspaceHandle,
    target: &Target,
    user: &UserRef,
) -> Option<Value> {
    let (ws, generation, live) = quick_view(handle, target)?;
    let filter = target.filter(&ws).ok()?;
    let from_live = match target {
        Target::Segment(id) => live_check(&ws, &live, id, user),
        Target::Filter(_) => None,
    };
    let check = match from_live {
        Some(c) => c,
        None => {
            if !check_is_quick(&filter, false) {
                return None;
            }
            match segment::reference::contains(&*ws, &filter, user).ok()? {
                Membership::Member(id) => Check {
                    member: true,
                    user_id: Some(id),
                    reason: None,
                },
                Membership::NotMember(id) => Check {
                    member: false,
                    user_id: Some(id),
                    reason: None,
                },
                Membership::UnknownUser => Check {
                    member: false,
                    user_id: None,
                    reason: Some(format!("no user holds {user}")),
                },
            }
        }
    };
    drop((ws, live));
    let mut out = check_json(&check);
    out["generation"] = json!(generation);
    Some(out)
}

/// The breakdown of a segment, as the breakdown endpoint answers it:
/// exact, or estimated on one chunk sample (`sampling`). Evaluated on a
/// frozen view, without the workspace's lock.
pub fn breakdown(
    handle: &WorkspaceHandle,
    target: &Target,
    sampling: Option<Sampling>,
) -> Result<Value> {
    let t = std::time::Instant::now();
    let (frozen, filter, generation) = freeze(handle, target, false)?;
    let Some(s) = sampling else {
        let (combinator, rows) = query::breakdown_in(&frozen, &filter)?;
        return Ok(json!({
            "combinator": combinator,
            "rows": to_value(&rows)?,
            "generation": generation,
            "took_us": t.elapsed().as_micros() as u64,
        }));
    };
    let (combinator, rows, info) = query::sampled_breakdown(&frozen, &filter, s.tradeoff, s.seed)?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "filter": r.filter,
                "count": r.count.estimate,
                "low": r.count.low,
                "high": r.count.high,
                "running": r.running.estimate,
                "running_low": r.running.low,
                "running_high": r.running.high,
            })
        })
        .collect();
    let mut out = to_value(&info)?;
    out["combinator"] = json!(combinator);
    out["rows"] = json!(rows);
    out["design"] = json!("chunks");
    out["confidence"] = json!(0.95);
    out["generation"] = json!(generation);
    out["took_us"] = json!(t.elapsed().as_micros() as u64);
    Ok(out)
}

/// Checks a page size: 1..=[`query::MAX_PAGE`].
pub fn page_limit(limit: Option<u64>) -> Result<usize> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1.. if n <= query::MAX_PAGE as u64 => Ok(n as usize),
        n => Err(Error::InvalidArgument(format!(
            "limit must be 1..={}, found {n}",
            query::MAX_PAGE
        ))),
    }
}

/// A page of members, gathered.
#[derive(Clone, Debug)]
pub struct MemberPage {
    /// The members' user ids, in page order.
    pub members: Vec<u32>,
    /// The next page's cursor, in its text form.
    pub next: Option<String>,
    /// The generation of the first chunk.
    pub generation: u64,
}

/// Gathers one page: the filter (cohort names resolved to ids, so that a
/// cursor does not depend on how a cohort was named), the cursor checked
/// against it and the workspace ([`CursorScope`]), then `limit` members in chunks of [`PAGE_CHUNK`], the read
/// lock released between chunks.
pub fn member_page(
    handle: &WorkspaceHandle,
    target: &Target,
    cursor: Option<&str>,
    limit: usize,
) -> Result<MemberPage> {
    let (filter, scope, mut from, generation) = {
        let (ws, generation) = handle.view();
        let given = target.filter(&ws)?;
        handle.check_filter(&given)?;
        let filter = segment::resolve(&*ws, &given)?;
        let scope = CursorScope::new(&ws, &filter);
        let from = cursor.map(|c| scope.decode(c)).transpose()?;
        (filter, scope, from, generation)
    };
    let mut members: Vec<u32> = Vec::with_capacity(limit.min(PAGE_CHUNK));
    loop {
        let take = (limit - members.len()).min(PAGE_CHUNK);
        let page = {
            let ws = handle.read();
            query::members_page(&ws, handle.bitmaps(), &filter, from, take)?
        };
        members.extend(page.members.iter().map(|u| u.0));
        from = page.next;
        if from.is_none() || members.len() >= limit {
            break;
        }
    }
    Ok(MemberPage {
        members,
        next: from.map(|c| scope.encode(c)),
        generation,
    })
}

fn check_json(c: &Check) -> Value {
    let mut o = Map::new();
    o.insert("member".into(), Value::Bool(c.member));
    if let Some(u) = c.user_id {
        o.insert("user_id".into(), json!(u.0));
    }
    if let Some(r) = &c.reason {
        o.insert("reason".into(), Value::String(r.clone()));
    }
    Value::Object(o)
}

/// A user's check against a live segment: one bitmap probe (unknown
/// users answer `false` with a reason, as [`query::check`] does).
fn live_check(ws: &Workspace, live: &LiveSegments, id: &str, user: &UserRef) -> Option<Check> {
    let Some(uid) = ws.users.lookup(user) else {
        return live.members(id).map(|_| Check {
            member: false,
            user_id: None,
            reason: Some(format!("no user holds {user}")),
        });
    };
    live.contains(id, uid).map(|member| Check {
        member,
        user_id: Some(uid),
        reason: None,
    })
}

/// One user's check, as the check endpoint answers it; a saved segment
/// kept live answers with one bitmap probe.
pub fn check_user(handle: &WorkspaceHandle, target: &Target, user: &UserRef) -> Result<Value> {
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let live = match target {
        Target::Segment(id) => live_check(&ws, &handle.live(), id, user),
        Target::Filter(_) => None,
    };
    let mut out = match live {
        Some(c) => check_json(&c),
        None => {
            let checks = query::check(&ws, handle.bitmaps(), &[&filter], user)?;
            checks.first().map(check_json).unwrap_or_else(|| json!({}))
        }
    };
    out["generation"] = json!(generation);
    Ok(out)
}

/// Whether each of `users` is in the segment, as the check endpoint
/// answers a list: `{"results": [...], "generation"}` in the same order.
pub fn check_users(handle: &WorkspaceHandle, target: &Target, users: &[UserRef]) -> Result<Value> {
    let (ws, generation) = handle.view();
    let filter = target.filter(&ws)?;
    handle.check_filter(&filter)?;
    let live = match target {
        Target::Segment(id) => {
            let live = handle.live();
            users
                .iter()
                .map(|u| live_check(&ws, &live, id, u))
                .collect::<Option<Vec<_>>>()
        }
        Target::Filter(_) => None,
    };
    let checks = match live {
        Some(c) => c,
        None => query::check_many(&ws, handle.bitmaps(), &filter, users)?,
    };
    drop(ws);
    let results: Vec<Value> = checks.iter().map(check_json).collect();
    Ok(json!({"results": results, "generation": generation}))
}

/// Whether one user is in each of the saved segments `ids` (results first,
/// in order, each with its `"segment_id"`; live ones by a bitmap probe)
/// and of `filters` (then, in order, each with its `"filter"` in the text
/// form).
pub fn user_segments(
    handle: &WorkspaceHandle,
    ids: &[String],
    filters: &[Filter],
    user: &UserRef,
    now: Option<i64>,
) -> Result<Value> {
    let (ws, generation) = handle.view();
    let mut all: Vec<&Filter> = Vec::with_capacity(ids.len() + filters.len());
    for id in ids {
        let s = ws
            .segments
            .get(id)
            .ok_or_else(|| Error::UnknownSegment { id: id.clone() })?;
        all.push(&s.filter);
    }
    all.extend(filters.iter());
    for f in &all {
        handle.check_filter(f)?;
    }
    // Pinned at `now`: each filter with its references expanded and its
    // relative time tests read at that time (live segments do not apply).
    let pinned = match now {
        None => None,
        Some(now) => Some(
            all.iter()
                .map(|f| {
                    let e = segment::expand_references(&*ws, f, &mut |_, _| {})?;
                    if e.is_relative() {
                        e.pin_now(now)
                    } else {
                        Ok((*f).clone())
                    }
                })
                .collect::<Result<Vec<Filter>>>()?,
        ),
    };
    let live = match pinned {
        Some(_) => None,
        None => {
            let live = handle.live();
            ids.iter()
                .map(|id| live_check(&ws, &live, id, user))
                .collect::<Option<Vec<_>>>()
        }
    };
    let checks = match (live, &pinned) {
        (_, Some(p)) => {
            let p: Vec<&Filter> = p.iter().collect();
            query::check(&ws, handle.bitmaps(), &p, user)?
        }
        (live, None) => match live {
            Some(mut checks) => {
                let rest = &all[ids.len()..];
                if !rest.is_empty() {
                    checks.extend(query::check(&ws, handle.bitmaps(), rest, user)?);
                }
                checks
            }
            None => query::check(&ws, handle.bitmaps(), &all, user)?,
        },
    };
    let results: Vec<Value> = checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = check_json(c);
            match ids.get(i) {
                Some(id) => v["segment_id"] = Value::String(id.clone()),
                None => {
                    if let Some(f) = all.get(i) {
                        v["filter"] = Value::String(f.to_string());
                    }
                }
            }
            v
        })
        .collect();
    drop(ws);
    Ok(json!({"results": results, "generation": generation}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_o1_counts_and_bounded_checks_are_quick() {
        use crate::ids::Partner;
        use crate::segment::BucketCmp;
        let exact = CountMode::Exact { explain: false };
        let c = |i: u32| Filter::includes(Partner::Amplitude, format!("c{i}"));
        // A count: one cohort, included or excluded, exact, no explain.
        assert!(count_is_quick(&c(0), false, exact));
        assert!(count_is_quick(
            &Filter::excludes(Partner::Amplitude, "c0"),
            false,
            exact
        ));
        assert!(!count_is_quick(
            &c(0),
            false,
            CountMode::Exact { explain: true }
        ));
        assert!(!count_is_quick(
            &c(0),
            false,
            CountMode::Estimate {
                start: 0,
                width: 100
            }
        ));
        for multi in [
            Filter::And(vec![c(0), c(1)]),
            Filter::Or(vec![c(0), c(1)]),
            c(0).not(),
            Filter::And(vec![c(0)]),
            Filter::Bucket(BucketCmp::Lt(10)),
            Filter::And(Vec::new()),
        ] {
            assert!(!count_is_quick(&multi, false, exact), "{multi}");
            // A live segment's size is O(1) whatever its filter.
            assert!(count_is_quick(&multi, true, exact), "{multi}");
            assert!(!count_is_quick(
                &multi,
                true,
                CountMode::Exact { explain: true }
            ));
        }
        // A check: at most QUICK_CHECK_NODES nodes.
        assert!(check_is_quick(&c(0), false));
        let wide = |n: u32| Filter::Or((0..n).map(c).collect());
        assert!(check_is_quick(&wide(QUICK_CHECK_NODES as u32 - 1), false));
        assert!(!check_is_quick(&wide(QUICK_CHECK_NODES as u32), false));
        assert!(check_is_quick(&wide(QUICK_CHECK_NODES as u32), true));
        let mut deep = c(0);
        for _ in 0..QUICK_CHECK_NODES {
            deep = deep.not();
        }
        assert!(!check_is_quick(&deep, false));
    }

    #[test]
    fn page_limits() {
        assert_eq!(page_limit(None).ok(), Some(10_000));
        assert_eq!(page_limit(Some(1)).ok(), Some(1));
        assert_eq!(page_limit(Some(1_000_000)).ok(), Some(1_000_000));
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(1_000_000_000)).is_err());
    }
}
