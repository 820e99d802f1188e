//! `segq bench`: the evaluator figures of `benches/evaluator.rs`, without
//! criterion. Per size: the workload is written as a snapshot file, mapped,
//! and the chunk evaluator runs over the mapped bitmaps; the reference
//! evaluator runs over an in-memory workspace loaded from the same file.
//!
//! Each figure is the median (and 90th percentile) of up to `--runs` timed
//! runs after one warm-up run; a figure stops early once it has taken
//! [`BUDGET`] and has at least three runs, so slow figures get fewer runs.

use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use std::sync::Arc;

use segq::segment::{chunk, plan, reference, Filter};
use segq::snapshot::Snapshot;
use segq::workload::{self, LiveDelta, Spec};
use segq::{Error, UserId, Workspace};

use super::Failure;

/// How long one figure may keep adding runs (once it has three).
const BUDGET: Duration = Duration::from_secs(3);
/// Above this many users the reference evaluator is skipped: its
/// in-memory workspace would not fit beside everything else.
const REFERENCE_MAX_USERS: u32 = 20_000_000;
/// The member list measured is the segment closest to this size.
const MEMBERS_TARGET: u64 = 500_000;
/// Random users drawn for the one-user check, and checks per timed run.
const CHECK_USERS: usize = 100_000;
const CHECK_BATCH: usize = 1_000;
/// Single-cohort counts per timed run.
const SINGLE_BATCH: usize = 100;

#[derive(Args)]
pub struct BenchArgs {
    /// Users of the workload [default: 1000000]; `10M`, `500k` also work.
    #[arg(long, value_parser = users_value)]
    users: Option<u32>,
    /// Cohorts of the workload [default: 200].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cohorts: Option<u32>,
    /// Random seed of the workload.
    #[arg(long, default_value_t = Spec::SMALL.seed)]
    seed: u64,
    /// Several sizes, comma-separated (e.g. 1M,10M,100M): every
    /// measurement at each size in turn, then a table of count latency
    /// by size.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = users_value,
        conflicts_with_all = ["users", "snapshot"]
    )]
    sizes: Vec<u32>,
    /// Threads of the global pool (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: Option<u32>,
    /// At most this many timed runs per figure.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Skip the reference evaluator (always skipped above 20M users).
    #[arg(long)]
    no_reference: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Use this snapshot file: opened as it is if it exists (its users and
    /// cohorts are the workload), else written there and kept.
    #[arg(long)]
    snapshot: Option<PathBuf>,
}

/// A number of users: digits (underscores allowed), optionally followed by
/// `k` or `M`; at least 1.
fn users_value(s: &str) -> Result<u32, String> {
    let bad = || "expected a number of users of at least 1, such as 1000000 or 10M".to_string();
    let t = s.trim().replace('_', "");
    let (digits, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1_000u64),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1_000_000u64),
        _ => (&t[..], 1u64),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)?;
    match u32::try_from(n) {
        Ok(0) => Err(bad()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("at most {} users", u32::MAX)),
    }
}

/// Median and 90th percentile of timed runs, in nanoseconds.
#[derive(Clone, Copy, Debug, Serialize)]
struct Timing {
    median_ns: f64,
    p90_ns: f64,
    runs: usize,
}

impl Timing {
    fn of(mut ns: Vec<f64>) -> Timing {
        ns.sort_by(f64::total_cmp);
        let n = ns.len();
        if n == 0 {
            return Timing {
                median_ns: f64::NAN,
                p90_ns: f64::NAN,
                runs: 0,
            };
        }
        let median = if n % 2 == 1 {
            ns[n / 2]
        } else {
            (ns[n / 2 - 1] + ns[n / 2]) / 2.0
        };
        let p90 = ns[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
        Timing {
            median_ns: median,
            p90_ns: p90,
            runs: n,
        }
    }
}

struct Sampler {
    runs: usize,
}

impl Sampler {
    /// Times `batch` calls of `f` per run; the figure is per call.
    fn batched(
        &self,
        batch: usize,
        mut f: impl FnMut() -> Result<(), Error>,
    ) -> Result<Timing, Error> {
        let start = Instant::now();
        let mut ns = Vec::with_capacity(self.runs);
        while ns.len() < self.runs && (ns.len() < self.runs.min(3) || start.elapsed() < BUDGET) {
            let t = Instant::now();
            for _ in 0..batch {
                f()?;
            }
            ns.push(t.elapsed().as_nanos() as f64 / batch as f64);
        }
        Ok(Timing::of(ns))
    }

    /// One warm-up call of `f` (its answer is returned), then timed runs.
    fn time<T>(&self, mut f: impl FnMut() -> Result<T, Error>) -> Result<(T, Timing), Error> {
        let first = f()?;
        let timing = self.batched(1, || f().map(|x| drop(black_box(x))))?;
        Ok((first, timing))
    }
}

/// The workspace the reference evaluator needs: loaded from the snapshot,
/// with every cohort's members decoded into an in-memory bitmap, so that
/// it measures whole-bitmap roaring algebra and not decoding.
fn reference_workspace(snap: &Arc<Snapshot>) -> Result<Workspace, Error> {
    let mut ws = segq::engine::persist::load_workspace(snap.clone())?;
    for key in ws.cohorts.keys() {
        if let Some(c) = ws.cohorts.get_mut(&key) {
            c.members = c.members.bitmap()?.into_owned().into();
        }
    }
    Ok(ws)
}

/// The workspace as a live engine serves it between two compactions: the
/// snapshot, mapped, plus [`LiveDelta::TYPICAL`] in memory.
fn live_workspace(snap: &Arc<Snapshot>) -> Result<Workspace, Error> {
    let mut ws = segq::engine::persist::load_workspace(snap.clone())?;
    LiveDelta::TYPICAL.apply(&mut ws)?;
    Ok(ws)
}

#[derive(Debug, Serialize)]
struct ShapeRow {
    shape: &'static str,
    filter: String,
    count: u64,
    /// Planning, preparing and counting.
    fast_with_planning: Timing,
    /// Counting a prepared plan.
    fast_prepared: Timing,
    /// Counting a prepared plan over the snapshot plus a live delta.
    fast_live: Timing,
    /// The count with the delta.
    live_count: u64,
    reference: Option<Timing>,
    /// Reference median / fast-with-planning median.
    speedup: Option<f64>,
    /// Reference median / fast-prepared median.
    speedup_prepared: Option<f64>,
}

#[derive(Debug, Serialize)]
struct DeltaReport {
    users_created: u32,
    /// Members added, and as many removed, in every cohort.
    churn_per_cohort: u64,
    /// Loading the snapshot and applying the delta.
    applied_ms: f64,
}

#[derive(Debug, Serialize)]
struct SingleCohort {
    cohort: String,
    count: u64,
    /// Planning, preparing and counting (from the stored cardinality).
    timing: Timing,
}

#[derive(Debug, Serialize)]
struct Check {
    shape: &'static str,
    /// Random users drawn (uniformly, with repetition).
    users: usize,
    /// How many of them are in the segment.
    members: usize,
    /// Per check, with a `Checker` made once.
    timing: Timing,
}

#[derive(Debug, Serialize)]
struct Members {
    shape: &'static str,
    members: u64,
    timing: Timing,
}

#[derive(Debug, Serialize)]
struct ThreadRow {
    shape: &'static str,
    one_thread: Timing,
    all_threads: Timing,
    /// One-thread median / all-threads median.
    speedup: f64,
}

#[derive(Debug, Serialize)]
struct SizeReport {
    users: u32,
    cohorts: usize,
    /// The snapshot file, when it is kept.
    snapshot: Option<String>,
    snapshot_bytes: u64,
    /// Generating and writing the snapshot (None: an existing file).
    generate_ms: Option<f64>,
    open_us: f64,
    /// Loading the reference's workspace (None: reference skipped).
    reference_load_ms: Option<f64>,
    /// Why the reference was skipped.
    reference_skipped: Option<String>,
    live_delta: DeltaReport,
    shapes: Vec<ShapeRow>,
    single_cohort: SingleCohort,
    check: Check,
    members: Members,
    /// The "all threads" pool's size.
    threads: usize,
    thread_scaling: Vec<ThreadRow>,
}

#[derive(Debug, Serialize)]
struct ScalingRow {
    shape: &'static str,
    /// Fast count with planning, median, per size.
    median_ns: Vec<f64>,
    /// The factor per ten times the users, from the smallest size to the
    /// largest (None with one size).
    growth_per_10x: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Scaling {
    users: Vec<u32>,
    rows: Vec<ScalingRow>,
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    threads: usize,
    runs: u32,
    budget_ms: u64,
    sizes: Vec<SizeReport>,
    scaling: Scaling,
}

/// Removes a temporary snapshot file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Generates `spec` into a new snapshot file at `path`.
fn write_file(spec: Spec, path: &Path, create_new: bool) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(create_new)
        .truncate(true)
        .open(path)
        .map_err(Error::io_at(path))?;
    let (w, _) = workload::write_snapshot("bench", spec, BufWriter::new(file))?;
    w.into_inner()
        .map_err(|e| Error::io_at(path)(e.into_error()))?;
    Ok(())
}

pub fn run(args: BenchArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
            .map_err(|e| Failure::Other(format!("cannot size the thread pool: {e}")))?;
    }
    let threads = rayon::current_num_threads();
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        sizes.push(args.users.unwrap_or(1_000_000));
    }
    let cohorts = args.cohorts.unwrap_or(200);
    let sampler = Sampler {
        runs: args.runs as usize,
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Failure::Other(format!("cannot build a one-thread pool: {e}")))?;
    let all = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Failure::Other(format!("cannot build a {threads}-thread pool: {e}")))?;

    if !args.json {
        writeln!(
            out,
            "segq bench: seed {}, {threads} threads, up to {} runs a figure \
             (fewer once a figure has taken {} s); medians, p90 in brackets",
            args.seed,
            args.runs,
            BUDGET.as_secs()
        )
        .map_err(crate::io_err)?;
        out.flush().map_err(crate::io_err)?;
    }

    let mut reports = Vec::new();
    for (i, &users) in sizes.iter().enumerate() {
        let spec = Spec {
            users,
            cohorts,
            seed: args.seed,
        };
        // The temporary file (if any) outlives the mapping, declared first.
        let mut temp = None;
        let (path, kept, generate_ms) = match &args.snapshot {
            Some(p) if p.exists() => (p.clone(), true, None),
            Some(p) => {
                eprintln!(
                    "generating {users} users, {cohorts} cohorts into {}",
                    p.display()
                );
                let t = Instant::now();
                let tmp = p.with_extension("tmp");
                if let Err(e) = write_file(spec, &tmp, false) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
                std::fs::rename(&tmp, p).map_err(Error::io_at(p))?;
                (p.clone(), true, Some(t.elapsed().as_secs_f64() * 1e3))
            }
            None => {
                let p = std::env::temp_dir().join(format!(
                    "segq-bench-{}-{i}-{users}.segqsnap",
                    std::process::id()
                ));
                eprintln!("generating {users} users, {cohorts} cohorts into a temporary snapshot");
                let t = Instant::now();
                let guard = TempFile(p.clone());
                write_file(spec, &p, true)?;
                temp = Some(guard);
                (p, false, Some(t.elapsed().as_secs_f64() * 1e3))
            }
        };
        let t = Instant::now();
        let snap = Arc::new(Snapshot::open(&path)?);
        let open_us = t.elapsed().as_secs_f64() * 1e6;
        let meta = snap.meta()?;
        if generate_ms.is_none() {
            // An existing file: its workload is the one measured.
            if let Some(u) = args.users.filter(|&u| u != meta.users) {
                return Err(Failure::Other(format!(
                    "{} holds {} users, not --users {u}",
                    path.display(),
                    meta.users
                )));
            }
            if let Some(c) = args.cohorts.filter(|&c| c as usize != meta.cohorts.len()) {
                return Err(Failure::Other(format!(
                    "{} holds {} cohorts, not --cohorts {c}",
                    path.display(),
                    meta.cohorts.len()
                )));
            }
        }
        let report = measure(
            &snap,
            &sampler,
            Setup {
                path: &path,
                kept,
                generate_ms,
                open_us,
                no_reference: args.no_reference,
                one: &one,
                all: &all,
            },
        )?;
        drop(snap);
        drop(temp);
        if !args.json {
            print_size(out, &report).map_err(crate::io_err)?;
            out.flush().map_err(crate::io_err)?;
        }
        reports.push(report);
    }

    let scaling = scaling(&reports);
    if args.json {
        let report = Report {
            seed: args.seed,
            threads,
            runs: args.runs,
            budget_ms: BUDGET.as_millis() as u64,
            sizes: reports,
            scaling,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Other(format!("cannot print JSON: {e}")))?;
        writeln!(out, "{text}").map_err(crate::io_err)?;
    } else if reports.len() > 1 {
        print_scaling(out, &scaling).map_err(crate::io_err)?;
    }
    Ok(())
}

struct Setup<'a> {
    path: &'a Path,
    kept: bool,
    generate_ms: Option<f64>,
    open_us: f64,
    no_reference: bool,
    one: &'a rayon::ThreadPool,
    all: &'a rayon::ThreadPool,
}

/// Every figure for one mapped snapshot.
fn measure(shared: &Arc<Snapshot>, sampler: &Sampler, s: Setup) -> Result<SizeReport, Failure> {
    let snap: &Snapshot = shared;
    let meta = snap.meta()?;
    let users = meta.users;
    let cohorts = meta.cohorts.len();
    let snapshot_bytes = std::fs::metadata(s.path).map_or(0, |m| m.len());
    let shapes = workload::query_shapes(cohorts as u32);

    let reference_skipped = if s.no_reference {
        Some("--no-reference".to_string())
    } else if users > REFERENCE_MAX_USERS {
        Some(format!("more than {REFERENCE_MAX_USERS} users"))
    } else {
        None
    };
    let (ws, reference_load_ms) = if reference_skipped.is_none() {
        eprintln!("loading the reference evaluator's workspace");
        let t = Instant::now();
        let ws = reference_workspace(shared)?;
        (Some(ws), Some(t.elapsed().as_secs_f64() * 1e3))
    } else {
        (None, None)
    };

    eprintln!("applying a live delta");
    let t = Instant::now();
    let live = live_workspace(shared)?;
    let live_ms = t.elapsed().as_secs_f64() * 1e3;
    let live_cache = segq::query::SerialCache::default();

    let mut rows = Vec::new();
    let mut prepared_all = Vec::new();
    for (name, filter) in &shapes {
        let lp = plan::plan(&live, filter)?;
        let live_prepared = chunk::Prepared::new(&live, &lp, &live_cache)?;
        let (live_count, fast_live) = sampler.time(|| live_prepared.count())?;
        if ws.is_some() {
            // The reference over the same layers (decoding them).
            let n = reference::count(&live, filter)?;
            if n != live_count {
                return Err(Failure::Other(format!(
                    "{name} with the live delta: the fast evaluator counts {live_count}, the reference {n}"
                )));
            }
        }
        let (count, fast_with_planning) = sampler.time(|| {
            let p = plan::plan(snap, black_box(filter))?;
            chunk::Prepared::for_snapshot(snap, &p)?.count()
        })?;
        let p = plan::plan(snap, filter)?;
        let prepared = chunk::Prepared::for_snapshot(snap, &p)?;
        let (again, fast_prepared) = sampler.time(|| prepared.count())?;
        if again != count {
            return Err(Failure::Other(format!(
                "{name}: the prepared count {again} differs from {count}"
            )));
        }
        let reference = match &ws {
            Some(ws) => {
                let (n, t) = sampler.time(|| reference::count(ws, black_box(filter)))?;
                if n != count {
                    return Err(Failure::Other(format!(
                        "{name}: the fast evaluator counts {count}, the reference {n}"
                    )));
                }
                Some(t)
            }
            None => None,
        };
        rows.push(ShapeRow {
            shape: name,
            filter: filter.to_string(),
            count,
            fast_with_planning,
            fast_prepared,
            fast_live,
            live_count,
            reference,
            speedup: reference.map(|r| r.median_ns / fast_with_planning.median_ns),
            speedup_prepared: reference.map(|r| r.median_ns / fast_prepared.median_ns),
        });
        prepared_all.push(prepared);
    }
    drop(ws);
    let live_delta = DeltaReport {
        users_created: live.users.len() - users,
        churn_per_cohort: LiveDelta::TYPICAL.sizes(users).1,
        applied_ms: live_ms,
    };
    drop(live);

    // A single cohort: counted from its stored cardinality.
    let cohort = workload::cohort_id(0);
    let single = Filter::includes(workload::PARTNER, cohort.clone());
    let mut single_count = 0;
    let single_timing = sampler.batched(SINGLE_BATCH, || {
        let p = plan::plan(snap, black_box(&single))?;
        single_count = chunk::Prepared::for_snapshot(snap, &p)?.count()?;
        Ok(())
    })?;

    // One-user checks of the five-leaf filter, over random users.
    let (five_name, _) = &shapes[3];
    let checker = prepared_all[3].checker()?;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let picks: Vec<UserId> = (0..CHECK_USERS)
        .map(|_| UserId(rng.gen_range(0..users)))
        .collect();
    let check_members = picks.iter().filter(|&&u| checker.contains(u)).count();
    let mut at = 0;
    let check_timing = sampler.batched(CHECK_BATCH, || {
        black_box(checker.contains(black_box(picks[at])));
        at = (at + 1) % picks.len();
        Ok(())
    })?;

    // The member list of the segment closest to MEMBERS_TARGET members.
    let m = (0..rows.len())
        .min_by_key(|&i| rows[i].count.abs_diff(MEMBERS_TARGET))
        .unwrap_or(0);
    let (listed, members_timing) = sampler.time(|| prepared_all[m].members())?;
    if listed.len() != rows[m].count {
        return Err(Failure::Other(format!(
            "{}: {} members listed, {} counted",
            rows[m].shape,
            listed.len(),
            rows[m].count
        )));
    }

    // Thread scaling of the multi-leaf shapes.
    let mut thread_scaling = Vec::new();
    for (row, prepared) in rows.iter().zip(&prepared_all).skip(1) {
        let (_, one_thread) = sampler.time(|| s.one.install(|| prepared.count()))?;
        let (_, all_threads) = sampler.time(|| s.all.install(|| prepared.count()))?;
        thread_scaling.push(ThreadRow {
            shape: row.shape,
            one_thread,
            all_threads,
            speedup: one_thread.median_ns / all_threads.median_ns,
        });
    }

    Ok(SizeReport {
        users,
        cohorts,
        snapshot: s.kept.then(|| s.path.display().to_string()),
        snapshot_bytes,
        generate_ms: s.generate_ms,
        open_us: s.open_us,
        reference_load_ms,
        reference_skipped,
        live_delta,
        single_cohort: SingleCohort {
            cohort,
            count: single_count,
            timing: single_timing,
        },
        check: Check {
            shape: five_name,
            users: picks.len(),
            members: check_members,
            timing: check_timing,
        },
        members: Members {
            shape: rows[m].shape,
            members: listed.len(),
            timing: members_timing,
        },
        threads: s.all.current_num_threads(),
        thread_scaling,
        shapes: rows,
    })
}

fn scaling(reports: &[SizeReport]) -> Scaling {
    let users: Vec<u32> = reports.iter().map(|r| r.users).collect();
    let rows = match reports.first() {
        None => Vec::new(),
        Some(first) => (0..first.shapes.len())
            .map(|i| {
                let median_ns: Vec<f64> = reports
                    .iter()
                    .map(|r| r.shapes[i].fast_with_planning.median_ns)
                    .collect();
                let (u0, u1) = (users[0], users[users.len() - 1]);
                let growth_per_10x = (u1 != u0).then(|| {
                    let decades = (f64::from(u1) / f64::from(u0)).log10();
                    (median_ns[median_ns.len() - 1] / median_ns[0]).powf(1.0 / decades)
                });
                ScalingRow {
                    shape: first.shapes[i].shape,
                    median_ns,
                    growth_per_10x,
                }
            })
            .collect(),
    };
    Scaling { users, rows }
}

/// A duration in nanoseconds, to three significant figures.
fn dur(ns: f64) -> String {
    if !ns.is_finite() {
        return "-".into();
    }
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn ms(x: f64) -> String {
    dur(x * 1e6)
}

fn print_size(out: &mut dyn Write, r: &SizeReport) -> std::io::Result<()> {
    writeln!(out)?;
    let made = match r.generate_ms {
        Some(g) => format!("generated and written in {}", ms(g)),
        None => "existing file".to_string(),
    };
    let kept = r
        .snapshot
        .as_deref()
        .map_or("temporary".to_string(), |p| format!("kept at {p}"));
    writeln!(
        out,
        "{} users, {} cohorts: snapshot {} ({kept}), {made}, opened (mapped) in {}",
        r.users,
        r.cohorts,
        mib(r.snapshot_bytes),
        dur(r.open_us * 1e3)
    )?;
    match (&r.reference_skipped, r.reference_load_ms) {
        (Some(why), _) => writeln!(out, "reference evaluator skipped ({why})")?,
        (None, Some(t)) => writeln!(out, "reference evaluator's workspace loaded in {}", ms(t))?,
        (None, None) => {}
    }
    writeln!(
        out,
        "live delta: {} users created and, in every cohort, {} members added and {} removed since the snapshot (applied in {})",
        r.live_delta.users_created,
        r.live_delta.churn_per_cohort,
        r.live_delta.churn_per_cohort,
        ms(r.live_delta.applied_ms)
    )?;
    writeln!(out)?;
    let cell = |t: &Timing| format!("{} ({})", dur(t.median_ns), dur(t.p90_ns));
    writeln!(
        out,
        "{:<36} {:>10}  {:>21}  {:>21}  {:>21}  {:>10}  {:>8}",
        "count",
        "users",
        "fast, with planning",
        "fast, prepared",
        "fast, live delta",
        "reference",
        "speed-up"
    )?;
    for s in &r.shapes {
        writeln!(
            out,
            "{:<36} {:>10}  {:>21}  {:>21}  {:>21}  {:>10}  {:>8}",
            s.shape,
            s.count,
            cell(&s.fast_with_planning),
            cell(&s.fast_prepared),
            cell(&s.fast_live),
            s.reference.map_or("-".into(), |t| dur(t.median_ns)),
            s.speedup.map_or("-".into(), |x| format!("{x:.1}x"))
        )?;
    }
    writeln!(
        out,
        "(fast: over the mapped snapshot; live delta: over the snapshot plus the delta, prepared;\n speed-up: reference median / fast-with-planning median)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "single cohort count ({}, {} users, with planning): {:.0} ns ({})",
        r.single_cohort.cohort,
        r.single_cohort.count,
        r.single_cohort.timing.median_ns,
        dur(r.single_cohort.timing.p90_ns)
    )?;
    writeln!(
        out,
        "one-user check ({}, Checker, {} random users, {} in): {:.0} ns ({})",
        r.check.shape,
        r.check.users,
        r.check.members,
        r.check.timing.median_ns,
        dur(r.check.timing.p90_ns)
    )?;
    writeln!(
        out,
        "members ({}): {} members listed in {}",
        r.members.shape,
        r.members.members,
        cell(&r.members.timing)
    )?;
    writeln!(out)?;
    let all = format!("{} threads", r.threads);
    writeln!(
        out,
        "{:<36} {:>21}  {:>21}  {:>8}",
        "threads (fast, prepared)", "1 thread", all, "speed-up"
    )?;
    for t in &r.thread_scaling {
        writeln!(
            out,
            "{:<36} {:>21}  {:>21}  {:>8}",
            t.shape,
            cell(&t.one_thread),
            cell(&t.all_threads),
            format!("{:.2}x", t.speedup)
        )?;
    }
    Ok(())
}

fn print_scaling(out: &mut dyn Write, s: &Scaling) -> std::io::Result<()> {
    writeln!(out)?;
    write!(out, "{:<36}", "count, fast with planning, by users")?;
    for u in &s.users {
        write!(out, " {u:>11}")?;
    }
    writeln!(out, "  {:>13}", "per 10x users")?;
    for r in &s.rows {
        write!(out, "{:<36}", r.shape)?;
        for t in &r.median_ns {
            write!(out, " {:>11}", dur(*t))?;
        }
        writeln!(
            out,
            "  {:>13}",
            r.growth_per_10x.map_or("-".into(), |g| format!("{g:.2}x"))
        )?;
    }
    Ok(())
}
