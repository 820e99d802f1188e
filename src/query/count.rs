//! Exact counts (with an optional plan explanation), sampled estimates
//! with a confidence interval, and the builder's per-filter breakdown.

use std::time::Instant;

use serde::Serialize;

use super::{Live, View};
use crate::error::{Error, Result};
use crate::ids::BUCKETS;
use crate::segment::chunk::{self, ChunkStats};
use crate::segment::plan::{self, Leaf, Plan};
use crate::segment::{BucketCmp, Filter};
use crate::workspace::Workspace;

use super::BitmapSource;

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
    /// What the chunk evaluator met.
    pub chunks: ChunkStats,
}

/// An exact count.
#[derive(Clone, Debug, Serialize)]
pub struct Count {
    /// The users that match.
    pub count: u64,
    /// How long the count took, in microseconds.
    pub took_us: u64,
    /// The plan and what evaluating it met, when asked for.
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
    /// The estimated number of users that match.
    pub estimate: u64,
    /// The 95% confidence interval.
    pub low: u64,
    /// The interval's upper end.
    pub high: u64,
    /// The interval's confidence level (0.95).
    pub confidence: f64,
    /// Users whose membership is known (the sampled buckets, plus the
    /// bucket ranges the filter decides without any cohort), and how many
    /// of them matched.
    pub sample_size: u64,
    /// How many users of the sample matched.
    pub sample_matches: u64,
    /// The sampled bucket ranges (inclusive, ascending).
    pub sample_buckets: Vec<(u16, u16)>,
    /// How long the estimate took, in microseconds.
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
            Filter::Cohort { .. } | Filter::Attribute { .. } | Filter::Segment { .. } => {}
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
        Filter::Cohort { .. } | Filter::Attribute { .. } | Filter::Segment { .. } => f.clone(),
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

/// A breakdown's combinator (`"and"` or `"or"`), its top-level filters
/// (a filter of neither kind is one row) and each one's prepared plan.
pub(crate) fn breakdown_parts<'v, 'f>(
    view: &'v dyn View,
    filter: &'f Filter,
) -> Result<(&'static str, &'f [Filter], Vec<chunk::Prepared<'v>>)> {
    let (op, children): (&'static str, &[Filter]) = match filter {
        Filter::And(c) if !c.is_empty() => ("and", c),
        Filter::Or(c) if !c.is_empty() => ("or", c),
        other => ("and", std::slice::from_ref(other)),
    };
    let parts = children
        .iter()
        .map(|c| view.prepare(&plan::plan(view.catalog(), c)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((op, children, parts))
}

/// [`breakdown`] on any view. The running count of filter `i` extends
/// that of `i - 1` ([`chunk::breakdown_counts`] keeps the running set per
/// chunk), so the work is that of counting the whole filter once.
pub fn breakdown_in(view: &dyn View, filter: &Filter) -> Result<(String, Vec<BreakdownRow>)> {
    let (op, children, parts) = breakdown_parts(view, filter)?;
    let counts = chunk::breakdown_counts(&parts, op == "and")?;
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
}
