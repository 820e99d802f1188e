//! Chunk-sampled estimates: a count (or a breakdown) read from a sample of
//! whole 65,536-user chunks, so that the work is the sampled fraction of
//! the exact count's.
//!
//! The sample is drawn among the chunks the exact count evaluates (an AND
//! of cohorts skips the chunks where its smallest cohort has no
//! container: they hold no match), so a fraction is a fraction of the
//! exact count's work. User ids follow sign-up order and cohort density
//! drifts with them, so those `C` chunks are sampled by a stratified
//! design: they are cut into `H` strata of consecutive chunks (sizes
//! differing by at most one), and two distinct chunks are drawn uniformly
//! in each.
//! Before the sample is drawn, every chunk's count is predicted from its
//! leaves' container sizes (read from the bitmaps' headers, the leaves
//! taken as independent: `Sampler::predict`), which follows the
//! drift and the bands of clustered cohorts at no evaluation cost. The
//! estimate is the predictions' sum plus the Horvitz-Thompson estimate of
//! what they miss, `sum over strata of C_h * (r1 + r2) / 2` for the
//! residuals `r = x - prediction` of the two chunks drawn: unbiased
//! whatever the drift and however good the prediction (and whatever the
//! filter: a `random_bucket` test is counted in the sampled chunks like
//! any other leaf). Its variance is estimated without bias from the two
//! draws of each stratum, `C_h^2 (1 - 2 / C_h) (r1 - r2)^2 / 4`, and the
//! 95% interval takes Student's t with Satterthwaite's degrees of
//! freedom (each stratum's estimate has one), so that a sample of a few
//! chunks gets the wide interval it deserves; but never less than the
//! binomial noise of the sampled chunks' rates (then with the normal
//! quantile), which a rare filter's chunks, counting 0 or 1, would
//! otherwise hide. Bounds never pass what the sample proves: at least
//! the matches seen, at most all but the non-matches seen.
//!
//! When the exact count evaluates few chunks (an AND led by a clustered
//! cohort), whole chunks are too coarse a unit: 5% of 20 chunks is one
//! chunk, and a variance needs two per stratum. Each chunk is then cut
//! into `P` windows of `1024 / P` words (`P` the smallest power of two up
//! to [`MAX_PARTS`] that gives the fraction [`MIN_STRATA`] strata), and
//! the same design draws windows instead of chunks
//! ([`chunk::Sampler::count_windows`] reads only the drawn windows'
//! words of each container); a window's prediction is its chunk's, in
//! proportion to its users.
//!
//! The caller picks the trade-off ([`Tradeoff`]): a fraction of the
//! chunks, a relative error to reach or a time budget; the last two size
//! the sample from a pilot of [`MIN_STRATA`] strata, then draw a fresh
//! one (a relative error) or keep the pilot when no more fits (a budget).
//! The estimate is never dearer than the exact count: a plan counted
//! without evaluation (one cohort, from its stored cardinality), a plan
//! whose exact count is small ([`EXACT_WORK`]), and a sample that would
//! read more than half of the exact count's chunks (or windows) are
//! answered exactly, with a zero-width interval and `exact: true`.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::View;
use crate::error::{Error, Result};
use crate::segment::chunk;
use crate::segment::plan;
use crate::segment::Filter;

/// The fraction of chunks an estimate samples unless told otherwise.
pub const DEFAULT_SAMPLE_FRACTION: f64 = 0.05;
/// The fewest strata (two chunks each) a sample has.
pub const MIN_STRATA: u32 = 4;
/// An exact count whose estimated work is at most this many units (a
/// cohort container in one chunk is one, a bucket range eight) is cheaper
/// than any sample worth taking: it is answered exactly. Past it, a
/// sample can be cut into windows small enough to cost a fraction of the
/// exact count.
pub const EXACT_WORK: u64 = 32;
/// The same for a breakdown, whose sample is of whole chunks (at least
/// [`MIN_STRATA`] strata of two): below it, the exact breakdown.
pub const EXACT_BREAKDOWN_WORK: u64 = 256;
/// The most windows a chunk is cut into for a sample (of 64 words each).
pub const MAX_PARTS: u32 = 16;
/// The largest time budget, in milliseconds.
pub const MAX_BUDGET_MS: f64 = 60_000.0;

/// `z` of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// How an estimate trades accuracy for work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tradeoff {
    /// [`DEFAULT_SAMPLE_FRACTION`] of the chunks.
    Default,
    /// This fraction of the chunks (0 < f <= 1).
    SampleFraction(f64),
    /// A sample large enough that the 95% interval's half-width is about
    /// this fraction of the estimate (0 < e < 1).
    MaxRelativeError(f64),
    /// As large a sample as fits this many milliseconds (0 < b <= 60,000).
    BudgetMs(f64),
}

impl Tradeoff {
    /// The name the API gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Tradeoff::Default => "default",
            Tradeoff::SampleFraction(_) => "sample_fraction",
            Tradeoff::MaxRelativeError(_) => "max_relative_error",
            Tradeoff::BudgetMs(_) => "budget_ms",
        }
    }

    /// Its value (the default's is its sample fraction).
    pub fn value(&self) -> f64 {
        match *self {
            Tradeoff::Default => DEFAULT_SAMPLE_FRACTION,
            Tradeoff::SampleFraction(v) | Tradeoff::MaxRelativeError(v) | Tradeoff::BudgetMs(v) => {
                v
            }
        }
    }

    /// The trade-off named `name` with `value`, checked.
    pub fn parse(name: &str, value: f64) -> Result<Tradeoff> {
        let (t, ok, range) = match name {
            "sample_fraction" => (
                Tradeoff::SampleFraction(value),
                value > 0.0 && value <= 1.0,
                "0 < sample_fraction <= 1",
            ),
            "max_relative_error" => (
                Tradeoff::MaxRelativeError(value),
                value > 0.0 && value < 1.0,
                "0 < max_relative_error < 1",
            ),
            "budget_ms" => (
                Tradeoff::BudgetMs(value),
                value > 0.0 && value <= MAX_BUDGET_MS,
                "0 < budget_ms <= 60000",
            ),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown estimate option {other:?}; expected \"sample_fraction\", \
                     \"max_relative_error\" or \"budget_ms\""
                )))
            }
        };
        if !(ok && value.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "{name} must be a number with {range}, found {value}"
            )));
        }
        Ok(t)
    }
}

/// One estimated quantity: the estimate and its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// The estimated number of users.
    pub estimate: u64,
    /// The interval's lower end.
    pub low: u64,
    /// Its upper end.
    pub high: u64,
    /// Matches among the sampled users.
    pub sample_matches: u64,
}

impl Interval {
    fn exact(n: u64) -> Interval {
        Interval {
            estimate: n,
            low: n,
            high: n,
            sample_matches: n,
        }
    }
}

/// What a sample was and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleInfo {
    /// Answered exactly, the interval of zero width.
    pub exact: bool,
    /// Why it was answered exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_reason: Option<String>,
    /// The trade-off asked for (`default`, `sample_fraction`,
    /// `max_relative_error`, `budget_ms`).
    pub option: &'static str,
    /// Its value.
    pub option_value: f64,
    /// The workspace's chunks.
    pub chunks: u32,
    /// The chunks the exact count evaluates (0: none, the count is
    /// stored): the sample is drawn among them, every other chunk holding
    /// no match.
    pub evaluated_chunks: u32,
    /// The chunks the sample read (all, when exact).
    pub sample_chunks: u32,
    /// The windows each chunk was cut into for the sample: 1, whole
    /// chunks were drawn; `P`, windows of `1024 / P` words (0 when exact).
    pub chunk_parts: u32,
    /// The sampling units drawn: chunks, or windows when `chunk_parts`
    /// is past 1 (0 when exact).
    pub sample_units: u32,
    /// The strata (two sampled units each; 0 when exact).
    pub strata: u32,
    /// The users of the sampled chunks.
    pub sample_users: u64,
    /// The degrees of freedom of the interval (none when exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrees_of_freedom: Option<f64>,
    /// The seed the chunks were drawn with.
    pub seed: u64,
    /// The units (chunks or windows) drawn by the pilot that sized the
    /// sample (0: none).
    pub pilot_chunks: u32,
}

/// A sampled count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampledCount {
    /// The estimate and interval.
    #[serde(flatten)]
    pub interval: Interval,
    /// The sample.
    #[serde(flatten)]
    pub sample: SampleInfo,
    /// The interval's half-width over the estimate (0 when exact; none
    /// when the estimate is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_error: Option<f64>,
    /// How long it took, in microseconds.
    pub took_us: u64,
}

/// The stratified design: strata of consecutive chunks, two drawn in each.
#[derive(Clone, Debug, PartialEq)]
pub struct Design {
    /// Each stratum's chunks `lo..hi`.
    pub strata: Vec<(u32, u32)>,
    /// The two chunks drawn in each stratum, stratum by stratum.
    pub picks: Vec<u32>,
}

impl Design {
    /// `strata` strata over `chunks` chunks (needs `chunks >= 2 * strata`),
    /// two distinct chunks drawn uniformly in each.
    pub fn draw(chunks: u32, strata: u32, rng: &mut impl Rng) -> Design {
        assert!(
            strata >= 1 && chunks >= 2 * strata,
            "{strata} strata of {chunks} chunks"
        );
        let bound = |h: u32| (u64::from(h) * u64::from(chunks) / u64::from(strata)) as u32;
        let mut s = Vec::with_capacity(strata as usize);
        let mut picks = Vec::with_capacity(2 * strata as usize);
        for h in 0..strata {
            let (lo, hi) = (bound(h), bound(h + 1));
            let size = hi - lo;
            let a = rng.gen_range(0..size);
            let mut b = rng.gen_range(0..size - 1);
            if b >= a {
                b += 1;
            }
            s.push((lo, hi));
            picks.push(lo + a);
            picks.push(lo + b);
        }
        Design { strata: s, picks }
    }

    /// The estimate of a total, its variance and the degrees of freedom,
    /// from the values `x` of the picks (in their order).
    pub fn combine(&self, x: &[f64]) -> (f64, f64, f64) {
        let (mut total, mut var, mut var2) = (0.0, 0.0, 0.0);
        for (h, &(lo, hi)) in self.strata.iter().enumerate() {
            let c = f64::from(hi - lo);
            let (x1, x2) = (x[2 * h], x[2 * h + 1]);
            total += c * (x1 + x2) / 2.0;
            let v = c * c * (1.0 - 2.0 / c) * (x1 - x2) * (x1 - x2) / 4.0;
            var += v;
            var2 += v * v;
        }
        let df = if var2 > 0.0 { var * var / var2 } else { 0.0 };
        (total, var, df)
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom
/// (fractional: interpolated in `1 / df`; at least one).
pub fn t975(df: f64) -> f64 {
    // The quantiles at 1..=30 degrees of freedom.
    const T: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    let df = if df.is_nan() { 1.0 } else { df.max(1.0) };
    if df >= 30.0 {
        // Cornish-Fisher: the normal quantile corrected in powers of 1/df.
        let z = Z95;
        let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
        return z
            + (z3 + z) / (4.0 * df)
            + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df)
            + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df.powi(3));
    }
    let lo = df.floor();
    let i = lo as usize - 1;
    if df == lo {
        return T[i];
    }
    let hi = lo + 1.0;
    // Linear in 1/df between the neighbours.
    let w = (1.0 / lo - 1.0 / df) / (1.0 / lo - 1.0 / hi);
    T[i] + w * (T[i + 1] - T[i])
}

/// The interval of a quantity from its counts `x` in the design's picks
/// (of `users` users each), given its prediction `pred` for every chunk:
/// `n` users in all. `(interval, degrees of freedom, half-width)`.
///
/// The difference estimator: the predictions summed over every chunk,
/// plus the Horvitz-Thompson estimate of what they miss (the residuals
/// of the sampled chunks). The predictions are fixed before the sample
/// is drawn, so the estimate is unbiased however good they are; the
/// better they are, the smaller the residuals' variance. That variance is
/// taken no smaller than the binomial noise of the sampled chunks' own
/// rates (Agresti-Coull-adjusted, per stratum; then with the normal
/// quantile): the design's estimate from two chunks a stratum is too
/// noisy to trust below it, as when a rare filter's chunks count 0 or 1.
fn interval(
    d: &Design,
    x: &[u64],
    users: &[u64],
    pred: Predicted,
    n: u64,
    windowed: bool,
) -> (Interval, f64, f64) {
    let r: Vec<f64> = x
        .iter()
        .zip(&d.picks)
        .map(|(&x, &k)| x as f64 - pred.unit(k))
        .collect();
    let (rest, var, df) = d.combine(&r);
    let total = pred.total() + rest;
    let matches: u64 = x.iter().sum();
    let sampled: u64 = users.iter().sum();
    let mut floor_var = 0.0;
    for (h, &(lo, hi)) in d.strata.iter().enumerate() {
        let c = f64::from(hi - lo);
        let xs = (x[2 * h] + x[2 * h + 1]) as f64;
        let ns = (users[2 * h] + users[2 * h + 1]) as f64;
        let p = (xs + 2.0) / (ns + 4.0);
        floor_var += c * c * (1.0 - 2.0 / c) * (ns / 2.0) * p * (1.0 - p) / 2.0;
    }
    // Below the floor, the design's estimate was low by chance (its two
    // draws a stratum agreed): the floor is taken. The users of a window
    // of a chunk are far from a binomial sample of the stratum (a window
    // sits in one cohort band or outside it), so there the floor itself
    // is uncertain and takes as many degrees of freedom as strata: with
    // the normal quantile, windowed samples covered about 92% in the
    // coverage test, against 94-95% so.
    let (var, df) = if var >= floor_var {
        (var, df)
    } else if windowed {
        (floor_var, d.strata.len() as f64)
    } else {
        (floor_var, f64::INFINITY)
    };
    let half = t975(df) * var.sqrt();
    let floor = matches;
    let ceil = n - (sampled - matches);
    let low = ((total - half).floor().max(0.0) as u64).clamp(floor, ceil);
    let high = ((total + half).ceil().max(0.0) as u64).clamp(floor, ceil);
    let estimate = (total.round().max(0.0) as u64).clamp(floor, ceil);
    (
        Interval {
            estimate,
            low,
            high,
            sample_matches: matches,
        },
        df,
        half,
    )
}

/// A quantity's predicted count in each sampling unit: the chunks'
/// predictions, a window taking its chunk's in proportion to its users
/// (the windows of a chunk add up to it).
#[derive(Clone, Copy)]
struct Predicted<'a> {
    /// Chunk `j`'s prediction (`j` among the chunks sampled from).
    chunks: &'a [f64],
    /// The windows a chunk is cut into (1: the units are the chunks).
    parts: u32,
    /// Chunk `j`'s users (asked only when `parts` is past 1).
    users: &'a dyn Fn(usize) -> u32,
}

impl Predicted<'_> {
    /// Every unit's prediction, summed.
    fn total(&self) -> f64 {
        self.chunks.iter().sum()
    }

    /// Unit `i`'s prediction (0 past the last).
    fn unit(&self, i: u32) -> f64 {
        let j = (i / self.parts) as usize;
        let Some(&p) = self.chunks.get(j) else {
            return 0.0;
        };
        if self.parts == 1 {
            return p;
        }
        let users = (self.users)(j);
        let per_user = p / f64::from(users).max(1.0);
        per_user * window_users(users, i % self.parts, self.parts) as f64
    }
}

/// What a sampled query evaluates: per chunk of `keys`, its quantities
/// (one for a count; own and running per row for a breakdown), one
/// chunk's after another.
type EvalChunks<'a> = dyn Fn(&[u32]) -> Result<Vec<u64>> + 'a;

/// The outcome of [`run`].
enum Outcome {
    Exact(String),
    Sampled {
        design: Design,
        /// `width` quantities a pick, pick after pick.
        per_chunk: Vec<u64>,
        pilot: u32,
    },
}

/// Strata for a fraction `f` of `chunks` chunks: `None` when such a
/// sample is not worth taking (the workspace is too small, or it would
/// read at least half the chunks).
fn strata_for(chunks: u32, f: f64) -> Option<u32> {
    let h = ((f * f64::from(chunks) / 2.0).round() as u32).max(MIN_STRATA);
    (4 * h <= chunks).then_some(h)
}

/// The windows each of `chunks` chunks is cut into for a sample sized by
/// `t`: 1 (whole chunks) when a fraction of the chunks makes
/// [`MIN_STRATA`] strata, or the pilot of a relative error or a budget is
/// at most an eighth of them; else the smallest power of two (up to
/// [`MAX_PARTS`]) that does.
fn parts_for(chunks: u32, t: Tradeoff) -> u32 {
    let enough = |p: u32| {
        let units = f64::from(chunks) * f64::from(p);
        match t {
            Tradeoff::Default | Tradeoff::SampleFraction(_) => {
                (t.value() * units / 2.0).round() >= f64::from(MIN_STRATA)
            }
            Tradeoff::MaxRelativeError(_) | Tradeoff::BudgetMs(_) => {
                units >= f64::from(16 * MIN_STRATA)
            }
        }
    };
    let mut p = 1;
    while p < MAX_PARTS && !enough(p) {
        p *= 2;
    }
    p
}

/// The users of window `part` of `parts` of a chunk of `chunk_users`.
fn window_users(chunk_users: u32, part: u32, parts: u32) -> u64 {
    let width = (1u32 << 16) / parts;
    u64::from(chunk_users.saturating_sub(part * width).min(width))
}

/// What a sampled query runs over: the chunks its exact answer evaluates
/// (the sample is drawn among them), and the workspace's users.
#[derive(Clone, Copy)]
struct Scope {
    /// The sampling units: chunks, or windows of them.
    chunks: u32,
    users: u64,
    /// What a unit is, for the answers' reasons: "chunks" or "windows".
    unit: &'static str,
}

impl Scope {
    fn windowed(&self) -> bool {
        self.unit == "windows"
    }
}

/// Sizes and draws the sample for `t`, or says why the exact answer is
/// the better one. `target`: the quantity a relative error is about, of
/// the `width` that `eval` gives a chunk.
fn run(
    scope: Scope,
    t: Tradeoff,
    seed: u64,
    (target, width): (usize, usize),
    pred: Predicted,
    users_of: &dyn Fn(u32) -> u64,
    eval: &EvalChunks,
) -> Result<Outcome> {
    let Scope {
        chunks,
        users,
        unit,
    } = scope;
    let windowed = scope.windowed();
    // Only a budget reads the clock.
    let started = matches!(t, Tradeoff::BudgetMs(_)).then(Instant::now);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let too_small = || {
        Outcome::Exact(format!(
            "the exact count evaluates {chunks} {unit}: a sample of at least \
             {MIN_STRATA} strata of two {unit} would read more than half of them"
        ))
    };
    let fraction = match t {
        Tradeoff::Default | Tradeoff::SampleFraction(_) => Some(t.value()),
        _ => None,
    };
    if let Some(f) = fraction {
        let Some(h) = strata_for(chunks, f) else {
            return Ok(too_small());
        };
        let design = Design::draw(chunks, h, &mut rng);
        let per_chunk = eval(&design.picks)?;
        return Ok(Outcome::Sampled {
            design,
            per_chunk,
            pilot: 0,
        });
    }
    // A pilot of the smallest sample sizes the real one.
    let Some(h0) = strata_for(chunks, 0.0) else {
        return Ok(too_small());
    };
    let pilot = Design::draw(chunks, h0, &mut rng);
    let pilot_counts = eval(&pilot.picks)?;
    let pilot_chunks = pilot.picks.len() as u32;
    let max_h = chunks / 4;
    let h = match t {
        Tradeoff::MaxRelativeError(e) => {
            let x: Vec<u64> = pilot_counts.chunks(width).map(|q| q[target]).collect();
            let sampled: Vec<u64> = pilot.picks.iter().map(|&k| users_of(k)).collect();
            let (iv, _, half) = interval(&pilot, &x, &sampled, pred, users, windowed);
            if iv.estimate == 0 {
                return Ok(Outcome::Exact(
                    "the pilot sample found no match: no relative error can be reached \
                     short of the exact count"
                        .into(),
                ));
            }
            // The variance of a sample of m chunks goes as 1/m - 1/C.
            let c = f64::from(chunks);
            let m0 = f64::from(2 * h0);
            let goal = e * iv.estimate as f64;
            let mut m = m0;
            for _ in 0..3 {
                let tq = t975(m / 2.0) / t975(f64::from(h0));
                let ratio = (goal / (half * tq)).powi(2);
                m = 1.0 / (ratio * (1.0 / m0 - 1.0 / c) + 1.0 / c);
            }
            let h = ((m / 2.0).ceil() as u32).max(MIN_STRATA);
            if h > max_h {
                return Ok(Outcome::Exact(format!(
                    "a relative error of {e} needs about {} of the {chunks} {unit}: \
                     the exact count is cheaper",
                    2 * h
                )));
            }
            h
        }
        Tradeoff::BudgetMs(ms) => {
            let spent = started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1e3);
            let per_chunk = (spent / f64::from(pilot_chunks)).max(1e-6);
            let left = ms - spent;
            if f64::from(chunks) * per_chunk <= left {
                return Ok(Outcome::Exact(format!(
                    "the exact count ({chunks} {unit}) fits in the budget"
                )));
            }
            let h = ((left / per_chunk / 2.0).floor().max(0.0) as u32).min(max_h);
            if h <= h0 {
                // No larger sample fits: the pilot is the sample.
                return Ok(Outcome::Sampled {
                    design: pilot,
                    per_chunk: pilot_counts,
                    pilot: 0,
                });
            }
            h
        }
        Tradeoff::Default | Tradeoff::SampleFraction(_) => unreachable!("sized above"),
    };
    let design = Design::draw(chunks, h, &mut rng);
    let per_chunk = eval(&design.picks)?;
    Ok(Outcome::Sampled {
        design,
        per_chunk,
        pilot: pilot_chunks,
    })
}

/// The workspace's chunks, those the exact answer evaluates, and the
/// windows each was cut into for the sample.
#[derive(Clone, Copy)]
struct Chunks {
    all: u32,
    evaluated: u32,
    parts: u32,
}

impl SampleInfo {
    /// An answer given exactly (`reason`), over a workspace of `chunks`
    /// chunks and `users` users, of which the exact count evaluated
    /// `evaluated_chunks`.
    pub fn exact(
        t: Tradeoff,
        chunks: u32,
        evaluated_chunks: u32,
        users: u64,
        seed: u64,
        reason: impl Into<String>,
    ) -> SampleInfo {
        SampleInfo {
            exact: true,
            exact_reason: Some(reason.into()),
            option: t.name(),
            option_value: t.value(),
            chunks,
            evaluated_chunks,
            sample_chunks: chunks,
            chunk_parts: 0,
            sample_units: 0,
            strata: 0,
            sample_users: users,
            degrees_of_freedom: None,
            seed,
            pilot_chunks: 0,
        }
    }
}

/// Estimates `filter`'s count from a sample of chunks drawn with `seed`,
/// as `t` asks (see the module's documentation).
pub fn sampled_count(
    view: &dyn View,
    filter: &Filter,
    t: Tradeoff,
    seed: u64,
) -> Result<SampledCount> {
    let started = Instant::now();
    let p = plan::plan(view.catalog(), filter)?;
    let prepared = view.prepare(&p)?;
    let users = u64::from(view.user_count());
    let chunks = prepared.chunk_count();
    let exact = |reason: String, n: u64, evaluated: u32| SampledCount {
        interval: Interval::exact(n),
        sample: SampleInfo::exact(t, chunks, evaluated, users, seed, reason),
        relative_error: Some(0.0),
        took_us: started.elapsed().as_micros() as u64,
    };
    if let Some(n) = prepared.stored_count() {
        return Ok(exact("the count is stored (no evaluation)".into(), n, 0));
    }
    // The sample is drawn among the chunks the exact count evaluates: the
    // others hold no match.
    let s = prepared.sampler()?;
    let keys = s.candidates();
    let evaluated = keys.len() as u32;
    let work = keys.len() as u64 * prepared.units();
    // The exact count, when that is the answer: the same chunks counted.
    let all = || s.count(&keys).into_iter().sum::<u64>();
    if work <= EXACT_WORK {
        return Ok(exact(
            format!("the exact count's work is small ({work} units)"),
            all(),
            evaluated,
        ));
    }
    // The sampling units: the chunks, or each cut into `parts` windows.
    let parts = parts_for(evaluated, t);
    let unit = |i: u32| (keys[(i / parts) as usize], i % parts);
    let survey = s.survey(&keys);
    let eval = |picks: &[u32]| -> Result<Vec<u64>> {
        Ok(if parts == 1 {
            // Chunks of an AND of bitmaps from the containers the survey
            // found; the others as the exact count evaluates them.
            let js: Vec<usize> = picks.iter().map(|&i| i as usize).collect();
            let counts = survey.count_bitmap_ands(&js);
            let rest: Vec<u32> = js
                .iter()
                .zip(&counts)
                .filter(|(_, n)| n.is_none())
                .map(|(&j, _)| keys[j])
                .collect();
            let mut counted = s.count(&rest).into_iter();
            counts
                .into_iter()
                .map(|n| n.or_else(|| counted.next()).unwrap_or(0))
                .collect()
        } else {
            let at: Vec<(usize, u32)> = picks
                .iter()
                .map(|&i| ((i / parts) as usize, i % parts))
                .collect();
            survey.count_windows(&at, parts)
        })
    };
    let users_of = |i: u32| {
        let (key, part) = unit(i);
        window_users(prepared.chunk_users(key), part, parts)
    };
    let scope = Scope {
        chunks: evaluated * parts,
        users,
        unit: if parts == 1 { "chunks" } else { "windows" },
    };
    let chunk_pred = survey.predict();
    let chunk_users = |j: usize| prepared.chunk_users(keys[j]);
    let pred = Predicted {
        chunks: &chunk_pred,
        parts,
        users: &chunk_users,
    };
    match run(scope, t, seed, (0, 1), pred, &users_of, &eval)? {
        Outcome::Exact(reason) => Ok(exact(reason, all(), evaluated)),
        Outcome::Sampled {
            design,
            per_chunk,
            pilot,
        } => {
            let per_pick: Vec<u64> = design.picks.iter().map(|&k| users_of(k)).collect();
            let (iv, df, half) = interval(&design, &per_chunk, &per_pick, pred, users, parts > 1);
            Ok(SampledCount {
                relative_error: (iv.estimate > 0).then(|| half / iv.estimate as f64),
                interval: iv,
                sample: sampled_info(
                    t,
                    Chunks {
                        all: chunks,
                        evaluated,
                        parts,
                    },
                    &design,
                    &per_pick,
                    df,
                    seed,
                    pilot,
                ),
                took_us: started.elapsed().as_micros() as u64,
            })
        }
    }
}

/// What a drawn sample was: `per_pick`, the users of each chunk drawn.
fn sampled_info(
    t: Tradeoff,
    chunks: Chunks,
    design: &Design,
    per_pick: &[u64],
    df: f64,
    seed: u64,
    pilot: u32,
) -> SampleInfo {
    SampleInfo {
        exact: false,
        exact_reason: None,
        option: t.name(),
        option_value: t.value(),
        chunks: chunks.all,
        evaluated_chunks: chunks.evaluated,
        sample_chunks: {
            let mut read: Vec<u32> = design.picks.iter().map(|&i| i / chunks.parts).collect();
            read.sort_unstable();
            read.dedup();
            read.len() as u32
        },
        chunk_parts: chunks.parts,
        sample_units: design.picks.len() as u32,
        strata: design.strata.len() as u32,
        sample_users: per_pick.iter().sum(),
        degrees_of_freedom: df.is_finite().then_some(df),
        seed,
        pilot_chunks: pilot,
    }
}

/// One row of a sampled breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampledRow {
    /// The filter, in the text form.
    pub filter: String,
    /// Its own count, estimated.
    pub count: Interval,
    /// The running count, estimated.
    pub running: Interval,
}

/// The builder's breakdown ([`super::breakdown_in`]) on one sample of
/// chunks: every row's own and running count estimated from the same
/// chunks, so the work is about that of one sampled count. A relative
/// error is sought for the last running count (the whole filter).
pub fn sampled_breakdown(
    view: &dyn View,
    filter: &Filter,
    t: Tradeoff,
    seed: u64,
) -> Result<(String, Vec<SampledRow>, SampleInfo)> {
    let (op, children, parts) = super::count::breakdown_parts(view, filter)?;
    let users = u64::from(view.user_count());
    let first = parts
        .first()
        .ok_or_else(|| Error::Internal("a breakdown has a part".into()))?;
    let chunks = first.chunk_count();
    // Every part is evaluated on every chunk the breakdown visits.
    let work: u64 = u64::from(chunks) * parts.iter().map(|p| p.units()).sum::<u64>();
    let rows_of = |sums: Vec<(Interval, Interval)>| -> Vec<SampledRow> {
        children
            .iter()
            .zip(sums)
            .map(|(c, (count, running))| SampledRow {
                filter: c.to_string(),
                count,
                running,
            })
            .collect()
    };
    let exact = |reason: String| -> Result<(String, Vec<SampledRow>, SampleInfo)> {
        let counts = chunk::breakdown_counts(&parts, op == "and")?;
        let rows = rows_of(
            counts
                .into_iter()
                .map(|(o, r)| (Interval::exact(o), Interval::exact(r)))
                .collect(),
        );
        Ok((
            op.to_string(),
            rows,
            SampleInfo::exact(t, chunks, chunks, users, seed, reason),
        ))
    };
    if work <= EXACT_BREAKDOWN_WORK {
        return exact(format!(
            "the exact breakdown's work is small ({work} units)"
        ));
    }
    let n = parts.len();
    let eval = |keys: &[u32]| -> Result<Vec<u64>> {
        Ok(chunk::breakdown_chunks(&parts, op == "and", keys)?
            .into_iter()
            .flat_map(|rows| rows.into_iter().flat_map(|(o, r)| [o, r]))
            .collect())
    };
    let users_of = |k: u32| u64::from(first.chunk_users(k));
    let target = 2 * n - 1;
    // Each row's prediction, and the running ones composed from them as
    // the rows combine (independent within a chunk).
    let mut pred: Vec<Vec<f64>> = Vec::with_capacity(2 * n);
    for (i, p) in parts.iter().enumerate() {
        let own = p.predict_chunks()?;
        let running: Vec<f64> = if i == 0 {
            own.clone()
        } else {
            let before = &pred[2 * i - 1];
            own.iter()
                .zip(before)
                .enumerate()
                .map(|(k, (&a, &b))| {
                    let len = f64::from(first.chunk_users(k as u32)).max(1.0);
                    let (a, b) = (a / len, b / len);
                    len * if op == "and" {
                        a * b
                    } else {
                        1.0 - (1.0 - a) * (1.0 - b)
                    }
                })
                .collect()
        };
        pred.push(own);
        pred.push(running);
    }
    let scope = Scope {
        chunks,
        users,
        unit: "chunks",
    };
    let whole = |_: usize| 0;
    let pred_of = |i: usize| Predicted {
        chunks: &pred[i],
        parts: 1,
        users: &whole,
    };
    match run(
        scope,
        t,
        seed,
        (target, 2 * n),
        pred_of(target),
        &users_of,
        &eval,
    )? {
        Outcome::Exact(reason) => exact(reason),
        Outcome::Sampled {
            design,
            per_chunk,
            pilot,
        } => {
            let per_pick: Vec<u64> = design.picks.iter().map(|&k| users_of(k)).collect();
            let q = |i: usize| -> (Interval, f64) {
                let x: Vec<u64> = per_chunk.chunks(2 * n).map(|c| c[i]).collect();
                let (iv, df, _) = interval(&design, &x, &per_pick, pred_of(i), users, false);
                (iv, df)
            };
            let sums = (0..n).map(|i| (q(2 * i).0, q(2 * i + 1).0)).collect();
            let all = Chunks {
                all: chunks,
                evaluated: chunks,
                parts: 1,
            };
            let info = sampled_info(t, all, &design, &per_pick, q(target).1, seed, pilot);
            Ok((op.to_string(), rows_of(sums), info))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables_and_fall_to_z() {
        assert!((t975(1.0) - 12.7062).abs() < 1e-4);
        assert!((t975(4.0) - 2.7764).abs() < 1e-4);
        assert!((t975(0.3) - 12.7062).abs() < 1e-4, "at least one");
        let mid = t975(4.5);
        assert!(mid < 2.7764 && mid > 2.5706, "{mid}");
        // Past the table: 2.0211 at 40, 2.0003 at 60, 1.9840 at 100.
        assert!((t975(40.0) - 2.0211).abs() < 2e-3, "{}", t975(40.0));
        assert!((t975(60.0) - 2.0003).abs() < 1e-3);
        assert!((t975(100.0) - 1.9840).abs() < 1e-3);
        assert!((t975(1e9) - Z95).abs() < 1e-6);
        // Continuous at 30.
        assert!((t975(29.999) - t975(30.0)).abs() < 2e-3);
    }

    #[test]
    fn the_design_covers_every_chunk_with_equal_probability() {
        // Strata partition the chunks, two distinct picks in each, and over
        // many draws every chunk is picked 2 / C_h of the time.
        let (chunks, strata) = (23u32, 5u32);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = vec![0u32; chunks as usize];
        let draws = 20_000;
        for _ in 0..draws {
            let d = Design::draw(chunks, strata, &mut rng);
            assert_eq!(d.strata.first().map(|s| s.0), Some(0));
            assert_eq!(d.strata.last().map(|s| s.1), Some(chunks));
            for (w, &(lo, hi)) in d.strata.windows(2).zip(&d.strata) {
                assert_eq!(w[0].1, w[1].0);
                assert!(hi - lo >= 4 && hi - lo <= 5);
            }
            for (h, &(lo, hi)) in d.strata.iter().enumerate() {
                let (a, b) = (d.picks[2 * h], d.picks[2 * h + 1]);
                assert!(a != b && (lo..hi).contains(&a) && (lo..hi).contains(&b));
                seen[a as usize] += 1;
                seen[b as usize] += 1;
            }
        }
        let d = Design::draw(chunks, strata, &mut rng);
        for (k, &n) in seen.iter().enumerate() {
            let (lo, hi) = *d
                .strata
                .iter()
                .find(|s| (s.0..s.1).contains(&(k as u32)))
                .expect("in a stratum");
            let want = f64::from(draws) * 2.0 / f64::from(hi - lo);
            assert!(
                (f64::from(n) - want).abs() < 5.0 * want.sqrt(),
                "chunk {k}: {n} vs {want}"
            );
        }
    }

    #[test]
    fn the_estimate_is_unbiased_and_the_variance_estimate_too() {
        // A population of chunk counts that drifts (and jumps) with the
        // chunk: the mean of the estimates is the total and the mean of the
        // variance estimates the variance of the estimates.
        let chunks = 60u32;
        let x: Vec<u64> = (0..chunks)
            .map(|k| 1_000 + 50 * u64::from(k) + if k % 7 == 0 { 3_000 } else { 0 })
            .collect();
        let truth: u64 = x.iter().sum();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let runs = 40_000;
        let (mut sum, mut sum2, mut vsum) = (0.0, 0.0, 0.0);
        for _ in 0..runs {
            let d = Design::draw(chunks, 6, &mut rng);
            let picked: Vec<f64> = d.picks.iter().map(|&k| x[k as usize] as f64).collect();
            let (t, v, _) = d.combine(&picked);
            sum += t;
            sum2 += t * t;
            vsum += v;
        }
        let mean = sum / f64::from(runs);
        let var = sum2 / f64::from(runs) - mean * mean;
        let se = (var / f64::from(runs)).sqrt();
        assert!((mean - truth as f64).abs() < 4.0 * se, "{mean} vs {truth}");
        let vmean = vsum / f64::from(runs);
        assert!((vmean / var - 1.0).abs() < 0.05, "{vmean} vs {var}");
    }

    #[test]
    fn and_roots_are_predicted_as_the_tree_predicts_them() {
        // The tight loop for an AND (NOT) of cohorts gives the tree's
        // predictions bit for bit; other roots go through the tree.
        let spec = crate::workload::Spec {
            users: 300_000,
            cohorts: 30,
            seed: 3,
        };
        let ws = crate::workload::generate("t", spec).unwrap().workspace;
        let src = crate::workspace::source::SerialCache::with_bucket_masks(0);
        let view = super::super::Live { ws: &ws, src: &src };
        let c = |i: u32| format!("amplitude_cohorts includes_value \"c{i}\"");
        for text in [
            format!("{} and {}", c(0), c(1)),
            format!("{} and {} and {} and not {}", c(2), c(3), c(4), c(25)),
            format!("{} and not {} and not {}", c(5), c(21), c(22)),
            format!("({} or {}) and {}", c(6), c(7), c(8)),
            format!("{} or {}", c(9), c(10)),
        ] {
            let filter = crate::segment::parse(&text).unwrap();
            let p = plan::plan(view.catalog(), &filter).unwrap();
            let prepared = view.prepare(&p).unwrap();
            let s = prepared.sampler().unwrap();
            let survey = s.survey(&s.candidates());
            let fast = survey.predict();
            assert_eq!(fast, survey.predict_by_tree(), "{text}");
            assert!(fast.iter().any(|&x| x > 0.0), "{text}: {fast:?}");
        }
    }

    #[test]
    fn tradeoffs_are_checked() {
        assert!(Tradeoff::parse("sample_fraction", 0.05).is_ok());
        assert!(Tradeoff::parse("sample_fraction", 1.0).is_ok());
        assert!(Tradeoff::parse("sample_fraction", 0.0).is_err());
        assert!(Tradeoff::parse("sample_fraction", 1.5).is_err());
        assert!(Tradeoff::parse("max_relative_error", 1.0).is_err());
        assert!(Tradeoff::parse("max_relative_error", f64::NAN).is_err());
        assert!(Tradeoff::parse("budget_ms", 2.0).is_ok());
        assert!(Tradeoff::parse("budget_ms", -1.0).is_err());
        assert!(Tradeoff::parse("budget_ms", 1e9).is_err());
        assert!(Tradeoff::parse("sample_size", 0.1).is_err());
    }
}
