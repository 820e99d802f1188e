//! The segment queries that campaign and Canvas targeting and the segment
//! builder make: exact counts (with an optional plan explanation), sampled
//! estimates with a confidence interval, the builder's per-filter
//! breakdown, member pages with a cursor, and one-user checks.
//!
//! Every function reads one workspace view and uses the chunk evaluator
//! ([`crate::segment::fast`]); the HTTP layer and the CLI call these.

use std::time::Instant;

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::{UserId, UserRef, BUCKETS};
use crate::segment::fast::{self, BitmapSource, ChunkStats, Frozen, Prepared};
use crate::segment::plan::{self, Catalog, Leaf, Plan};
use crate::segment::{BucketCmp, Filter};
use crate::users::Buckets;
use crate::workspace::Workspace;

/// What the counts, estimates and breakdowns read: a workspace (under its
/// lock, [`Live`]) or a [`Frozen`] view of it (evaluated without the
/// lock).
pub trait View: Sync {
    fn catalog(&self) -> &dyn Catalog;
    /// The plan ready to run.
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>>;
    /// Every user's bucket (a frozen view holds them when its filters test
    /// buckets or it was taken with them).
    fn buckets(&self) -> Buckets<'_>;
    fn user_count(&self) -> u32;
}

/// A workspace read in place, with the serialized cohorts of `src`.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub ws: &'a Workspace,
    pub src: &'a dyn BitmapSource,
}

impl View for Live<'_> {
    fn catalog(&self) -> &dyn Catalog {
        self.ws
    }
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>> {
        Prepared::new(self.ws, plan, self.src)
    }
    fn buckets(&self) -> Buckets<'_> {
        self.ws.users.bucket_slices()
    }
    fn user_count(&self) -> u32 {
        self.ws.users.len()
    }
}

impl View for Frozen {
    fn catalog(&self) -> &dyn Catalog {
        self
    }
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>> {
        Prepared::frozen(self, plan)
    }
    fn buckets(&self) -> Buckets<'_> {
        Frozen::buckets(self)
    }
    fn user_count(&self) -> u32 {
        Frozen::user_count(self)
    }
}

/// The most bucket ranges an estimate counts apart (see [`estimate`]).
pub const MAX_ESTIMATE_STRATA: usize = 64;

/// `z` of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The plan as `explain` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Explain {
    /// The normalised tree.
    pub plan: Plan,
    /// The normalised tree in the text form.
    pub normalised: String,
    /// The leaves in the order they are evaluated, with cardinalities.
    pub evaluation_order: Vec<Leaf>,
    pub chunks: ChunkStats,
}

/// An exact count.
#[derive(Clone, Debug, Serialize)]
pub struct Count {
    pub count: u64,
    pub took_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
}

/// Counts a filter exactly.
pub fn count(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    explain: bool,
) -> Result<Count> {
    count_in(&Live { ws, src }, filter, explain)
}

/// [`count`] on any view.
pub fn count_in(view: &dyn View, filter: &Filter, explain: bool) -> Result<Count> {
    let t = Instant::now();
    let p = plan::plan(view.catalog(), filter)?;
    let (count, chunks) = view.prepare(&p)?.count_with_stats()?;
    let took_us = t.elapsed().as_micros() as u64;
    let explain = explain.then(|| Explain {
        normalised: p.to_string(),
        evaluation_order: p.leaves().into_iter().cloned().collect(),
        plan: p,
        chunks,
    });
    Ok(Count {
        count,
        took_us,
        explain,
    })
}

/// A sampled estimate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub estimate: u64,
    /// The 95% confidence interval.
    pub low: u64,
    pub high: u64,
    pub confidence: f64,
    /// Users whose membership is known (the sampled buckets, plus the
    /// bucket ranges the filter decides without any cohort), and how many
    /// of them matched.
    pub sample_size: u64,
    pub sample_matches: u64,
    /// The sampled bucket ranges (inclusive, ascending).
    pub sample_buckets: Vec<(u16, u16)>,
    pub took_us: u64,
}

/// Estimates a filter's size from the users of about `width` of the
/// 10,000 random buckets, with a 95% Wilson score interval corrected for
/// sampling without replacement.
///
/// Buckets are uniform and independent of everything else, so the users
/// of a set of buckets are a uniform random sample of the users for any
/// filter that does not test the bucket. A filter that does is cut into
/// strata, the bucket ranges between its thresholds (on each the bucket
/// tests are constant): a stratum the filter decides without a cohort is
/// counted exactly from the bucket histogram; each other stratum of `L`
/// buckets is sampled on `width * L / 10000` consecutive buckets of its
/// own, starting (wrapping inside the stratum) at the same fraction
/// `start / 10000` of it. The strata estimates are summed, and the
/// interval is Wilson's with the stratified design's effective sample
/// size. A filter without bucket tests is one stratum: `width`
/// consecutive buckets from `start`, wrapping past 9999.
///
/// Each stratum is counted apart, so a filter whose bucket tests cut more
/// than [`MAX_ESTIMATE_STRATA`] ranges is refused (an exact count serves
/// it).
pub fn estimate(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    start: u16,
    width: u16,
) -> Result<Estimate> {
    estimate_in(&Live { ws, src }, filter, start, width)
}

/// [`estimate`] on any view (a frozen one must hold the buckets).
pub fn estimate_in(view: &dyn View, filter: &Filter, start: u16, width: u16) -> Result<Estimate> {
    let t = Instant::now();
    if width == 0 || width > BUCKETS || start >= BUCKETS {
        return Err(Error::InvalidArgument(format!(
            "sample of {width} buckets from {start}: need 1..=10000 buckets starting at 0..=9999"
        )));
    }
    // Plans the whole filter first: an unknown cohort fails here, whatever
    // the strata keep of it.
    let ws = view.catalog();
    plan::plan(ws, filter)?;
    let cuts = strata(filter);
    if cuts.len() > MAX_ESTIMATE_STRATA {
        return Err(Error::InvalidArgument(format!(
            "an estimate counts each range between the filter's bucket thresholds apart: \
             this filter has {} ranges, at most {MAX_ESTIMATE_STRATA} are estimated; \
             ask for an exact count",
            cuts.len()
        )));
    }
    let b = view.buckets();
    let hist = bucket_histogram(b.base, b.tail);
    let users_in =
        |lo: u16, hi: u16| -> u64 { hist[usize::from(lo)..=usize::from(hi)].iter().sum() };

    let mut known = 0u64; // users whose membership is known
    let mut known_matches = 0u64;
    let mut exact = 0.0f64; // matches of the exactly counted strata
    let mut sampled: Vec<(u64, u64, u64)> = Vec::new(); // (n, m, x) per sampled stratum
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in cuts {
        let n = users_in(lo, hi);
        if n == 0 {
            continue;
        }
        let fixed = fix_buckets(filter, lo);
        let p = plan::plan(ws, &fixed)?;
        let decided = match p {
            Plan::All => Some(n),
            Plan::Nothing => Some(0),
            _ => None,
        };
        if let Some(x) = decided {
            known += n;
            known_matches += x;
            exact += x as f64;
            continue;
        }
        let len = u32::from(hi - lo) + 1;
        let w =
            ((u32::from(width) * len + u32::from(BUCKETS) / 2) / u32::from(BUCKETS)).clamp(1, len);
        let offset = u32::from(start) * len / u32::from(BUCKETS);
        let mut window = stratum_window(lo, len, offset, w);
        let mut m: u64 = window.iter().map(|&(a, b)| users_in(a, b)).sum();
        if m == 0 {
            // No user in the sampled buckets: count the stratum whole.
            window = vec![(lo, hi)];
            m = n;
        }
        let bucket_filter = Filter::Or(
            window
                .iter()
                .map(|&(a, b)| Filter::Bucket(BucketCmp::Between(a, b)))
                .collect(),
        );
        let sample = Filter::And(vec![bucket_filter, fixed]);
        let x = view.prepare(&plan::plan(ws, &sample)?)?.count()?;
        known += m;
        known_matches += x;
        ranges.extend(window);
        if m >= n {
            exact += x as f64;
        } else {
            sampled.push((n, m, x));
        }
    }
    ranges.sort_unstable();
    let n = u64::from(view.user_count());
    let (estimate, low, high) = match sampled.as_slice() {
        [] => (known_matches, known_matches, known_matches),
        // One stratum sampled, nothing known besides: the simple sample.
        &[(sn, sm, sx)] if sn == n && sm == known => wilson(sx, sm, sn),
        _ => stratified(&sampled, exact, n, known, known_matches),
    };
    Ok(Estimate {
        estimate,
        low,
        high,
        confidence: 0.95,
        sample_size: known,
        sample_matches: known_matches,
        sample_buckets: ranges,
        took_us: t.elapsed().as_micros() as u64,
    })
}

/// Users per bucket.
fn bucket_histogram(base: &[u16], tail: &[u16]) -> Vec<u64> {
    use rayon::prelude::*;
    let size = usize::from(BUCKETS);
    base.par_chunks(1 << 16)
        .chain(tail.par_chunks(1 << 16))
        .fold(
            || vec![0u64; size],
            |mut h, chunk| {
                for &b in chunk {
                    if let Some(c) = h.get_mut(usize::from(b)) {
                        *c += 1;
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; size],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The bucket ranges between the thresholds of the filter's bucket tests:
/// on each, every bucket test of the filter has one answer.
fn strata(filter: &Filter) -> Vec<(u16, u16)> {
    fn cuts(f: &Filter, out: &mut Vec<u32>) {
        match f {
            Filter::Bucket(c) => {
                if let Some((lo, hi)) = c.range() {
                    out.push(u32::from(lo));
                    out.push(u32::from(hi) + 1);
                }
            }
            Filter::Cohort { .. } => {}
            Filter::And(c) | Filter::Or(c) => c.iter().for_each(|c| cuts(c, out)),
            Filter::Not(c) => cuts(c, out),
        }
    }
    let mut points = vec![0, u32::from(BUCKETS)];
    cuts(filter, &mut points);
    points.retain(|&p| p <= u32::from(BUCKETS));
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| (w[0] as u16, (w[1] - 1) as u16))
        .collect()
}

/// The filter with every bucket test answered for `bucket`.
fn fix_buckets(f: &Filter, bucket: u16) -> Filter {
    match f {
        Filter::Bucket(c) if c.accepts(bucket) => Filter::And(Vec::new()),
        Filter::Bucket(_) => Filter::Or(Vec::new()),
        Filter::Cohort { .. } => f.clone(),
        Filter::And(c) => Filter::And(c.iter().map(|c| fix_buckets(c, bucket)).collect()),
        Filter::Or(c) => Filter::Or(c.iter().map(|c| fix_buckets(c, bucket)).collect()),
        Filter::Not(c) => Filter::Not(Box::new(fix_buckets(c, bucket))),
    }
}

/// `w` consecutive buckets of the stratum `lo..lo + len` from `offset`,
/// wrapping inside it: one or two inclusive ranges.
fn stratum_window(lo: u16, len: u32, offset: u32, w: u32) -> Vec<(u16, u16)> {
    let at = |i: u32| (u32::from(lo) + i) as u16;
    let end = offset + w - 1;
    if end < len {
        vec![(at(offset), at(end))]
    } else {
        vec![(at(0), at(end - len)), (at(offset), at(len - 1))]
    }
}

/// The stratified estimate and its Wilson interval. `sampled` holds
/// `(users, sampled, matches)` per sampled stratum; `exact` the matches of
/// the strata counted whole; `known`/`known_matches` what is known for
/// sure.
fn stratified(
    sampled: &[(u64, u64, u64)],
    exact: f64,
    n: u64,
    known: u64,
    known_matches: u64,
) -> (u64, u64, u64) {
    let z2 = Z95 * Z95;
    let pop: f64 = sampled.iter().map(|s| s.0 as f64).sum();
    let sample: f64 = sampled.iter().map(|s| s.1 as f64).sum();
    let (mut point, mut adj, mut var) = (0.0, 0.0, 0.0);
    for &(sn, sm, sx) in sampled {
        let (nf, mf, xf) = (sn as f64, sm as f64, sx as f64);
        let share = nf / pop;
        point += share * xf / mf;
        // Agresti-Coull-adjusted proportions, so that a stratum whose
        // sample is all in or all out still carries some variance.
        let pt = (xf + z2 / 2.0) / (mf + z2);
        adj += share * pt;
        let fpc = if sn > 1 { (nf - mf) / (nf - 1.0) } else { 0.0 };
        var += share * share * pt * (1.0 - pt) / (mf + z2) * fpc;
    }
    // The design effect against a simple random sample of the same size
    // gives the effective sample size of the Wilson interval.
    let fpc = (pop - sample) / (pop - 1.0).max(1.0);
    let srs = adj * (1.0 - adj) / (sample + z2) * fpc;
    let m_eff = if var > 0.0 && srs > 0.0 {
        sample * (pop - 1.0) / (pop - sample).max(1.0) * (srs / var)
    } else {
        sample * (pop - 1.0) / (pop - sample).max(1.0)
    };
    let (lo, hi) = wilson_bounds(point, m_eff);
    let to_count = |p: f64| exact + p * pop;
    let lo = (to_count(lo).floor().max(0.0) as u64).max(known_matches);
    let hi = (to_count(hi).ceil() as u64).min(n - (known - known_matches));
    let est = (to_count(point).round() as u64).clamp(lo, hi);
    (est, lo, hi)
}

/// The 95% Wilson score interval of a proportion `p` seen in a sample of
/// effective size `m_eff`.
fn wilson_bounds(p: f64, m_eff: f64) -> (f64, f64) {
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / m_eff;
    let center = (p + z2 / (2.0 * m_eff)) / denom;
    let half = Z95 * (p * (1.0 - p) / m_eff + z2 / (4.0 * m_eff * m_eff)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Point estimate and 95% interval of a population count from `x` matches
/// in a sample of `m` of `n` users.
pub fn wilson(x: u64, m: u64, n: u64) -> (u64, u64, u64) {
    if m == 0 || n == 0 {
        return (0, 0, n);
    }
    if m >= n {
        return (x, x, x);
    }
    let (xf, mf, nf) = (x as f64, m as f64, n as f64);
    let p = xf / mf;
    // Without replacement the variance shrinks by (n - m) / (n - 1): the
    // same as a sample with replacement of this effective size.
    let m_eff = mf * (nf - 1.0) / (nf - mf);
    let (lo, hi) = wilson_bounds(p, m_eff);
    // At least the x sampled matches are in; at most all but the sampled
    // non-matches.
    let lo = ((lo * nf).floor() as u64).max(x);
    let hi = ((hi * nf).ceil() as u64).min(n - (m - x));
    ((p * nf).round() as u64, lo, hi)
}

/// One row of the builder's breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakdownRow {
    /// The filter, in the text form.
    pub filter: String,
    /// Its own count.
    pub count: u64,
    /// The count of this filter combined with all before it.
    pub running: u64,
}

/// The breakdown of a filter group: each top-level filter's own count and
/// the running count as they are combined in order by the group's AND or
/// OR. A filter that is not a group is one row.
pub fn breakdown(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
) -> Result<(String, Vec<BreakdownRow>)> {
    breakdown_in(&Live { ws, src }, filter)
}

/// [`breakdown`] on any view. The running count of filter `i` extends
/// that of `i - 1` ([`fast::breakdown_counts`] keeps the running set per
/// chunk), so the work is that of counting the whole filter once.
pub fn breakdown_in(view: &dyn View, filter: &Filter) -> Result<(String, Vec<BreakdownRow>)> {
    let (op, children): (&str, &[Filter]) = match filter {
        Filter::And(c) if !c.is_empty() => ("and", c),
        Filter::Or(c) if !c.is_empty() => ("or", c),
        other => ("and", std::slice::from_ref(other)),
    };
    let plans = children
        .iter()
        .map(|c| plan::plan(view.catalog(), c))
        .collect::<Result<Vec<_>>>()?;
    let parts = plans
        .iter()
        .map(|p| view.prepare(p))
        .collect::<Result<Vec<_>>>()?;
    let counts = fast::breakdown_counts(&parts, op == "and")?;
    let rows = children
        .iter()
        .zip(counts)
        .map(|(c, (count, running))| BreakdownRow {
            filter: c.to_string(),
            count,
            running,
        })
        .collect();
    Ok((op.to_string(), rows))
}

/// A page of members.
#[derive(Clone, Debug)]
pub struct Page {
    pub members: Vec<UserId>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<Cursor>,
}

/// A position in a segment's member list: the first user of the next
/// page. Its text form is bound to the workspace and the segment by a
/// [`CursorScope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub next_user: u32,
}

/// What a cursor is bound to: one workspace (its name and secret seed)
/// and one segment (the filter with its cohorts resolved to ids). The text
/// form of a cursor carries an HMAC-SHA-256 tag (128 bits) over the
/// position under a key derived from these, so a cursor made for another
/// workspace or segment, or altered, is refused.
#[derive(Clone)]
pub struct CursorScope {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorScope(..)")
    }
}

/// Hex digits of a cursor's text form: the position, then the tag.
const CURSOR_HEX: usize = 8 + 32;

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

impl CursorScope {
    /// The scope of `filter` (resolved: cohorts by id) in `ws`.
    pub fn new(ws: &Workspace, filter: &Filter) -> CursorScope {
        use sha2::{Digest, Sha256};
        let name = ws.name().as_bytes();
        let text = filter.to_string();
        let mut h = Sha256::new();
        h.update(b"segq member cursor\0");
        h.update(ws.users.seed().to_le_bytes());
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
        CursorScope {
            key: h.finalize().into(),
        }
    }

    fn tag(&self, next_user: u32) -> [u8; 16] {
        let mac = hmac_sha256(&self.key, &[b"next_user", &next_user.to_le_bytes()]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&mac[..16]);
        tag
    }

    /// The opaque text form of `c`: 40 hex digits.
    pub fn encode(&self, c: Cursor) -> String {
        let mut s = format!("{:08x}", c.next_user);
        for b in self.tag(c.next_user) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Reads a cursor made in this scope.
    pub fn decode(&self, text: &str) -> Result<Cursor> {
        let shown: String = text.chars().take(48).collect();
        let bad = |why: &str| Error::InvalidCursor(format!("{shown:?}: {why}"));
        if text.len() != CURSOR_HEX || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "expected the 40 hex digits of the X-Next-Cursor a previous page returned",
            ));
        }
        let next_user = u32::from_str_radix(&text[..8], 16).map_err(|_| bad("not hex"))?;
        let mut given = [0u8; 16];
        for (i, g) in given.iter_mut().enumerate() {
            let at = 8 + 2 * i;
            *g = u8::from_str_radix(&text[at..at + 2], 16).map_err(|_| bad("not hex"))?;
        }
        // Compared in constant time.
        let diff = self
            .tag(next_user)
            .iter()
            .zip(given.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(bad(
                "it was made for another segment or another workspace, or was altered",
            ));
        }
        Ok(Cursor { next_user })
    }
}

/// The most members one page may hold.
pub const MAX_PAGE: usize = 1_000_000;

/// Up to `limit` members from `after` on (user id order). Evaluates only
/// the chunks it needs, so paging through millions of members keeps
/// memory bounded by the page.
pub fn members_page(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    from: Option<Cursor>,
    limit: usize,
) -> Result<Page> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::InvalidArgument(format!(
            "limit must be 1..={MAX_PAGE}, found {limit}"
        )));
    }
    let prepared = Prepared::new(ws, &plan::plan(ws, filter)?, src)?;
    let start = from.map_or(0, |c| c.next_user);
    let chunks = ws.users.len().div_ceil(1 << 16);
    let mut out: Vec<UserId> = Vec::with_capacity(limit.min(1 << 16));
    let mut key = start >> 16;
    while key < chunks && out.len() <= limit {
        // A few chunks at a time, in parallel.
        let to = (key + 8).min(chunks);
        let part: RoaringBitmap = prepared.members_in(key, to)?;
        out.extend(part.range(start..).take(limit + 1 - out.len()).map(UserId));
        key = to;
    }
    let next = if out.len() > limit {
        let first_of_next = out[limit];
        out.truncate(limit);
        Some(Cursor {
            next_user: first_of_next.0,
        })
    } else {
        None
    };
    Ok(Page { members: out, next })
}

/// A one-user answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub member: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Why the answer is `false` when no user was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether the user holding `user` is in each of `filters` (one check per
/// filter; unknown users answer `false` with a reason).
pub fn check(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filters: &[&Filter],
    user: &UserRef,
) -> Result<Vec<Check>> {
    let prepared = filters
        .iter()
        .map(|f| plan::plan(ws, f).and_then(|p| Prepared::new(ws, &p, src)))
        .collect::<Result<Vec<_>>>()?;
    let Some(id) = ws.users.lookup(user) else {
        let reason = format!("no user holds {user}");
        return Ok(filters
            .iter()
            .map(|_| Check {
                member: false,
                user_id: None,
                reason: Some(reason.clone()),
            })
            .collect());
    };
    prepared
        .iter()
        .map(|p| {
            Ok(Check {
                member: p.contains(id)?,
                user_id: Some(id),
                reason: None,
            })
        })
        .collect()
}

/// Whether each of `users` is in the segment.
pub fn check_many(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    users: &[UserRef],
) -> Result<Vec<Check>> {
    let prepared = Prepared::new(ws, &plan::plan(ws, filter)?, src)?;
    let checker = prepared.checker()?;
    Ok(users
        .iter()
        .map(|u| match ws.users.lookup(u) {
            None => Check {
                member: false,
                user_id: None,
                reason: Some(format!("no user holds {u}")),
            },
            Some(id) => Check {
                member: checker.contains(id),
                user_id: Some(id),
                reason: None,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals_are_sane() {
        // The whole population sampled: exact.
        assert_eq!(wilson(40, 100, 100), (40, 40, 40));
        // Nothing sampled: nothing known.
        assert_eq!(wilson(0, 0, 100), (0, 0, 100));
        // Half of a 10% sample: about half, interval around it.
        let (e, lo, hi) = wilson(5_000, 10_000, 100_000);
        assert_eq!(e, 50_000);
        assert!(lo < 50_000 && hi > 50_000 && hi - lo < 2_500, "{lo} {hi}");
        // Zero matches: low is 0, high is small but positive.
        let (e, lo, hi) = wilson(0, 1_000, 100_000);
        assert_eq!((e, lo), (0, 0));
        assert!(hi > 0 && hi < 1_000, "{hi}");
        // Bounds respect what the sample proves.
        let (_, lo, hi) = wilson(990, 1_000, 1_010);
        assert!(lo >= 990 && hi <= 1_000, "{lo} {hi}");
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_segment_of_one_workspace() {
        let a = Filter::includes(crate::ids::Partner::Amplitude, "a");
        let b = Filter::includes(crate::ids::Partner::Amplitude, "b");
        let ws = Workspace::new("acme", 7);
        let same_name_other_seed = Workspace::new("acme", 8);
        let other_name_same_seed = Workspace::new("beta", 7);
        let here = CursorScope::new(&ws, &a);
        let c = Cursor { next_user: 70_000 };
        let text = here.encode(c);
        assert_eq!(text.len(), 40);
        assert_eq!(here.decode(&text).unwrap(), c);
        for scope in [
            CursorScope::new(&ws, &b),
            CursorScope::new(&same_name_other_seed, &a),
            CursorScope::new(&other_name_same_seed, &a),
        ] {
            assert!(matches!(scope.decode(&text), Err(Error::InvalidCursor(_))));
        }
        // Another position with the same tag, or a changed tag: refused.
        let moved = format!("{:08x}{}", 70_001, &text[8..]);
        assert!(matches!(here.decode(&moved), Err(Error::InvalidCursor(_))));
        let flipped = format!(
            "{}{}",
            &text[..39],
            if text.ends_with('0') { "1" } else { "0" }
        );
        assert!(matches!(
            here.decode(&flipped),
            Err(Error::InvalidCursor(_))
        ));
        assert!(here.decode("xyz").is_err());
        // The old 24-digit form is refused with the expected form.
        let old = format!("{:016x}{:08x}", 1u64, 70_000);
        let e = here.decode(&old).unwrap_err().to_string();
        assert!(e.contains("40 hex digits"), "{e}");
    }
}
