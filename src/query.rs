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
use crate::segment::fast::{BitmapSource, ChunkStats, Prepared};
use crate::segment::plan::{self, Leaf, Plan};
use crate::segment::{BucketCmp, Filter};
use crate::workspace::Workspace;

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
    let t = Instant::now();
    let p = plan::plan(ws, filter)?;
    let (count, chunks) = Prepared::new(ws, &p, src)?.count_with_stats()?;
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
    /// Users in the sampled buckets, and how many of them matched.
    pub sample_size: u64,
    pub sample_matches: u64,
    /// The sampled bucket range (inclusive; it may wrap past 9999).
    pub sample_buckets: (u16, u16),
    pub took_us: u64,
}

/// Estimates a filter's size from the users of `width` consecutive random
/// buckets starting at `start` (wrapping), with a 95% Wilson score interval
/// corrected for sampling without replacement. Buckets are uniform and
/// independent of everything else, so the sample is a uniform random
/// subset of the users.
pub fn estimate(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    start: u16,
    width: u16,
) -> Result<Estimate> {
    let t = Instant::now();
    if width == 0 || width > BUCKETS || start >= BUCKETS {
        return Err(Error::InvalidArgument(format!(
            "sample of {width} buckets from {start}: need 1..=10000 buckets starting at 0..=9999"
        )));
    }
    let end = (u32::from(start) + u32::from(width) - 1) % u32::from(BUCKETS);
    let end = end as u16;
    let window = if start <= end {
        Filter::Bucket(BucketCmp::Between(start, end))
    } else {
        Filter::Or(vec![
            Filter::Bucket(BucketCmp::Ge(start)),
            Filter::Bucket(BucketCmp::Le(end)),
        ])
    };
    let sampled = Filter::And(vec![window.clone(), filter.clone()]);
    let x = Prepared::new(ws, &plan::plan(ws, &sampled)?, src)?.count()?;
    let m = Prepared::new(ws, &plan::plan(ws, &window)?, src)?.count()?;
    let n = u64::from(ws.users.len());
    let (estimate, low, high) = wilson(x, m, n);
    Ok(Estimate {
        estimate,
        low,
        high,
        confidence: 0.95,
        sample_size: m,
        sample_matches: x,
        sample_buckets: (start, end),
        took_us: t.elapsed().as_micros() as u64,
    })
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
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / m_eff;
    let center = (p + z2 / (2.0 * m_eff)) / denom;
    let half = Z95 * (p * (1.0 - p) / m_eff + z2 / (4.0 * m_eff * m_eff)).sqrt() / denom;
    // At least the x sampled matches are in; at most all but the sampled
    // non-matches.
    let lo = ((center - half).max(0.0) * nf).floor() as u64;
    let hi = ((center + half).min(1.0) * nf).ceil() as u64;
    let lo = lo.max(x);
    let hi = hi.min(n - (m - x));
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
    let (op, children): (&str, Vec<Filter>) = match filter {
        Filter::And(c) if !c.is_empty() => ("and", c.clone()),
        Filter::Or(c) if !c.is_empty() => ("or", c.clone()),
        other => ("and", vec![other.clone()]),
    };
    let mut rows = Vec::with_capacity(children.len());
    for i in 0..children.len() {
        let own = Prepared::new(ws, &plan::plan(ws, &children[i])?, src)?.count()?;
        let so_far = children[..=i].to_vec();
        let combined = if op == "and" {
            Filter::And(so_far)
        } else {
            Filter::Or(so_far)
        };
        let running = Prepared::new(ws, &plan::plan(ws, &combined)?, src)?.count()?;
        rows.push(BreakdownRow {
            filter: children[i].to_string(),
            count: own,
            running,
        });
    }
    Ok((op.to_string(), rows))
}

/// A page of members.
#[derive(Clone, Debug)]
pub struct Page {
    pub members: Vec<UserId>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<Cursor>,
}

/// A position in one segment's member list. It carries a fingerprint of
/// the segment, so it cannot be used with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub next_user: u32,
}

/// A fingerprint of a filter, for cursors.
pub fn fingerprint(filter: &Filter) -> u64 {
    crate::snapshot::dict::hash(filter.to_string().as_bytes())
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        format!("{:016x}{:08x}", self.segment, self.next_user)
    }

    /// Reads a cursor made for `filter`.
    pub fn decode(text: &str, filter: &Filter) -> Result<Cursor> {
        let bad = |why: &str| Error::InvalidCursor(format!("{text:?}: {why}"));
        if text.len() != 24 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected the 24 hex digits a previous page returned"));
        }
        let segment = u64::from_str_radix(&text[..16], 16).map_err(|_| bad("not hex"))?;
        let next_user = u32::from_str_radix(&text[16..], 16).map_err(|_| bad("not hex"))?;
        if segment != fingerprint(filter) {
            return Err(bad("it was made for another segment"));
        }
        Ok(Cursor { segment, next_user })
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
    let fp = fingerprint(filter);
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
            segment: fp,
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
    users
        .iter()
        .map(|u| match ws.users.lookup(u) {
            None => Ok(Check {
                member: false,
                user_id: None,
                reason: Some(format!("no user holds {u}")),
            }),
            Some(id) => Ok(Check {
                member: prepared.contains(id)?,
                user_id: Some(id),
                reason: None,
            }),
        })
        .collect()
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
    fn cursors_round_trip_and_belong_to_one_segment() {
        let a = Filter::includes(crate::ids::Partner::Amplitude, "a");
        let b = Filter::includes(crate::ids::Partner::Amplitude, "b");
        let c = Cursor {
            segment: fingerprint(&a),
            next_user: 70_000,
        };
        let text = c.encode();
        assert_eq!(Cursor::decode(&text, &a).unwrap(), c);
        assert!(matches!(
            Cursor::decode(&text, &b),
            Err(Error::InvalidCursor(_))
        ));
        assert!(Cursor::decode("xyz", &a).is_err());
    }
}
