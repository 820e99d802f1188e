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
use rayon::prelude::*;
use serde::Serialize;

use std::sync::Arc;

use segq::segment::footprint::{self, Footprint};
use segq::segment::{chunk, masks, plan, reference, Filter};
use segq::snapshot::Snapshot;
use segq::workload::{self, LiveDelta, Spec};
use segq::{Error, UserId, Workspace};

use super::Failure;
use crate::args::{users_value, WorkloadArgs};
use crate::peers::{Algebra, CRoaring, Peers, RoaringRs};

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

/// The workload measured when `--users` and `--cohorts` are not given.
const DEFAULT: Spec = Spec {
    users: 1_000_000,
    cohorts: 200,
    seed: Spec::SMALL.seed,
};

#[derive(Args)]
#[command(
    mut_arg("users", |a| a.help("Users of the workload (`500k`, `10M` also work) [default: 1000000]")),
    mut_arg("cohorts", |a| a
        .help("Cohorts of the workload [default: 200]")
        .value_parser(clap::value_parser!(u32).range(1..))),
)]
pub struct BenchArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
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
    /// Also time CRoaring and roaring-rs on the same bitmaps and shapes,
    /// run by run in turn with segq, and check that their counts agree.
    #[arg(long)]
    peers: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Use this snapshot file: opened as it is if it exists (its users and
    /// cohorts are the workload), else written there and kept.
    #[arg(long)]
    snapshot: Option<PathBuf>,
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

/// A way of counting, named.
type Way<'a> = (&'a str, &'a mut dyn FnMut() -> Result<u64, Error>);

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

    /// Several ways of counting the same set, timed run by run in turn
    /// (run 1 of each, then run 2 of each, ...) after one warm-up call
    /// each, so that they share the machine's moods. Every answer, warm-up
    /// or timed, must be the first one's warm-up answer: a mismatch is an
    /// error. Returns that count and a timing per way, in order.
    fn interleaved(&self, shape: &str, ways: &mut [Way]) -> Result<(u64, Vec<Timing>), Failure> {
        let mut want: Option<(String, u64)> = None;
        let names: Vec<String> = ways.iter().map(|(n, _)| n.to_string()).collect();
        let timings = self.alternate(ways, &mut |i, n| match &want {
            None => {
                want = Some((names[i].clone(), n));
                Ok(())
            }
            Some((first, w)) if *w != n => Err(Failure::Other(format!(
                "{shape}: {} counts {n}, {first} counts {w}",
                names[i]
            ))),
            Some(_) => Ok(()),
        })?;
        let count = want.map_or(0, |(_, n)| n);
        Ok((count, timings))
    }

    /// Several ways timed run by run in turn (run 1 of each, then run 2
    /// of each, ...) after one warm-up call each, so that they share the
    /// machine's moods; every answer, warm-up or timed, goes to `check`
    /// with its way's index. A timing per way, in order.
    fn alternate(
        &self,
        ways: &mut [Way],
        check: &mut dyn FnMut(usize, u64) -> Result<(), Failure>,
    ) -> Result<Vec<Timing>, Failure> {
        self.turns(ways.len(), &mut |i| {
            let t = Instant::now();
            let n = black_box((ways[i].1)()?);
            let ns = t.elapsed().as_nanos() as f64;
            check(i, n)?;
            Ok(ns)
        })
    }

    /// `ways` ways run in turn: one warm-up run of each (its time
    /// dropped), then run 1 of each, run 2 of each, ... while the runs and
    /// the budget last. `run(i)` runs way `i` once and gives its time in
    /// nanoseconds. A timing per way, in order.
    fn turns(
        &self,
        ways: usize,
        run: &mut dyn FnMut(usize) -> Result<f64, Failure>,
    ) -> Result<Vec<Timing>, Failure> {
        for i in 0..ways {
            run(i)?;
        }
        let start = Instant::now();
        let mut ns = vec![Vec::with_capacity(self.runs); ways];
        while ns[0].len() < self.runs
            && (ns[0].len() < self.runs.min(3) || start.elapsed() < BUDGET)
        {
            for (i, ns) in ns.iter_mut().enumerate() {
                ns.push(run(i)?);
            }
        }
        Ok(ns.into_iter().map(Timing::of).collect())
    }

    /// A count on each of `pools`, timed inside the pool (the hop into a
    /// pool, whose threads may be asleep, is not the count's), run by run
    /// in turn after one warm-up call each; every answer must be `want`.
    /// A timing per pool, in order.
    fn in_pools(
        &self,
        shape: &str,
        pools: &[&rayon::ThreadPool],
        count: &(dyn Fn() -> Result<u64, Error> + Sync),
        want: u64,
    ) -> Result<Vec<Timing>, Failure> {
        self.turns(pools.len(), &mut |i| {
            let pool = pools[i];
            let (n, ns) = pool.install(|| {
                let t = Instant::now();
                let n = black_box(count());
                (n, t.elapsed().as_nanos() as f64)
            });
            match n? {
                n if n == want => Ok(ns),
                n => Err(Failure::Other(format!(
                    "{shape}: a count on {} threads answered {n} where it is {want}",
                    pool.current_num_threads()
                ))),
            }
        })
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

/// Timed sums of the bandwidth buffer (after one warm-up sum), at most.
const BANDWIDTH_RUNS: usize = 7;

/// The size of the largest cache of CPU 0 at the highest level, as Linux
/// reports it (None elsewhere).
fn last_level_cache() -> Option<u64> {
    let size = |t: &str| -> Option<u64> {
        let (digits, scale) = match t.as_bytes().last()? {
            b'K' => (&t[..t.len() - 1], 1 << 10),
            b'M' => (&t[..t.len() - 1], 1 << 20),
            b'G' => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        digits.parse::<u64>().ok()?.checked_mul(scale)
    };
    std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            let level: u32 = read("level")?.trim().parse().ok()?;
            Some((level, size(read("size")?.trim())?))
        })
        .max()
        .map(|(_, bytes)| bytes)
}

/// A sum that the compiler vectorises: eight independent lanes.
fn sum_words(w: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut it = w.chunks_exact(8);
    for c in &mut it {
        for (a, x) in lanes.iter_mut().zip(c) {
            *a = a.wrapping_add(*x);
        }
    }
    it.remainder()
        .iter()
        .chain(&lanes)
        .fold(0, |s, x| s.wrapping_add(*x))
}

/// The machine's read bandwidth on `pool`'s threads: the median time to
/// sum a buffer 8 times the last-level cache (256 MiB to 1 GiB), split in
/// one part per thread, over `runs` runs.
fn read_bandwidth(pool: &rayon::ThreadPool, runs: usize) -> Bandwidth {
    let llc = last_level_cache();
    let bytes = (8 * llc.unwrap_or(32 << 20)).clamp(256 << 20, 1 << 30);
    // Written whole, so every page is mapped before the timing.
    let words = vec![1u64; (bytes / 8) as usize];
    let threads = pool.current_num_threads();
    let part = words.len().div_ceil(threads);
    let sum = || {
        let w = black_box(words.as_slice());
        pool.install(|| {
            w.par_chunks(part)
                .map(sum_words)
                .reduce(|| 0, u64::wrapping_add)
        })
    };
    black_box(sum());
    let ns = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            black_box(sum());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    let timing = Timing::of(ns);
    Bandwidth {
        gb_per_s: bytes as f64 / timing.median_ns,
        buffer_bytes: bytes,
        last_level_cache_bytes: llc,
        threads,
        timing,
    }
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
    /// CRoaring and roaring-rs on the same bitmaps (with `--peers`).
    peers: Option<PeerFigures>,
    /// What a prepared count reads.
    reads: Footprint,
    /// Bytes read (containers and buckets) / fast-prepared median, in GB/s
    /// (None: the count reads nothing).
    read_gb_per_s: Option<f64>,
    /// `read_gb_per_s` / the machine's measured read bandwidth.
    of_read_bandwidth: Option<f64>,
}

#[derive(Debug, Serialize)]
struct PeerFigures {
    croaring: PeerFigure,
    roaring_rs: PeerFigure,
}

#[derive(Debug, Serialize)]
struct PeerFigure {
    #[serde(flatten)]
    timing: Timing,
    /// The peer's median / segq's fast-with-planning median.
    ratio: f64,
}

/// How the peers were set up, for one size.
#[derive(Debug, Serialize)]
struct PeersSetup {
    /// Decoding their bitmaps from the snapshot's bytes and building the
    /// bucket ranges' bitmaps, every shape.
    load_ms: f64,
    how: &'static str,
}

const PEERS_HOW: &str = "CRoaring (croaring crate) and roaring-rs, one thread each, \
    on bitmaps decoded from the snapshot's bytes; timed run by run in turn with segq's \
    count with planning; random-bucket leaves precomputed as a bitmap per shape, \
    outside the timed region; ratio: peer median / segq median";

/// The machine's read bandwidth: a sum over a buffer several times the
/// last-level cache, on the bench's threads.
#[derive(Debug, Serialize)]
struct Bandwidth {
    gb_per_s: f64,
    buffer_bytes: u64,
    /// The last-level cache's size, as the system reports it.
    last_level_cache_bytes: Option<u64>,
    threads: usize,
    timing: Timing,
}

/// One shape's chunk-sampled estimate at 5% beside its exact count.
#[derive(Debug, Serialize)]
struct EstimateRow {
    shape: &'static str,
    count: u64,
    estimate: u64,
    low: u64,
    high: u64,
    /// Answered exactly (why), the sample being no cheaper.
    exact_reason: Option<String>,
    sample_chunks: u32,
    chunks: u32,
    /// The exact count with planning, timed in turn with the estimate.
    exact: Timing,
    /// The estimate with planning.
    sampled: Timing,
    /// Exact median / estimate median.
    ratio: f64,
}

/// The sample fraction and seed of the estimate rows.
const ESTIMATE_FRACTION: f64 = 0.05;
const ESTIMATE_SEED: u64 = 7;

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
    /// With `--peers`.
    peers: Option<PeersSetup>,
    shapes: Vec<ShapeRow>,
    /// The attribute shapes, when the workload has the attributes.
    attribute_shapes: Vec<AttributeRow>,
    /// Every shape's 5% chunk-sampled estimate against its exact count.
    estimates: Vec<EstimateRow>,
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
    read_bandwidth: Bandwidth,
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
    let workload = args.workload.spec_or(DEFAULT);
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        sizes.push(workload.users);
    }
    let Spec { cohorts, seed, .. } = workload;
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
            seed,
            args.runs,
            BUDGET.as_secs()
        )
        .map_err(crate::io_err)?;
        out.flush().map_err(crate::io_err)?;
    }
    eprintln!("measuring the machine's read bandwidth");
    let bandwidth = read_bandwidth(&all, BANDWIDTH_RUNS.min(args.runs as usize));
    if !args.json {
        print_bandwidth(out, &bandwidth).map_err(crate::io_err)?;
        out.flush().map_err(crate::io_err)?;
    }

    let mut reports = Vec::new();
    for (i, &users) in sizes.iter().enumerate() {
        let spec = Spec {
            users,
            cohorts,
            seed,
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
            if let Some(u) = args.workload.users.filter(|&u| u != meta.users) {
                return Err(Failure::Other(format!(
                    "{} holds {} users, not --users {u}",
                    path.display(),
                    meta.users
                )));
            }
            if let Some(c) = args
                .workload
                .cohorts
                .filter(|&c| c as usize != meta.cohorts.len())
            {
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
                peers: args.peers,
                bandwidth: bandwidth.gb_per_s,
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
            seed,
            threads,
            runs: args.runs,
            budget_ms: BUDGET.as_millis() as u64,
            read_bandwidth: bandwidth,
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
    peers: bool,
    /// The measured read bandwidth, GB/s.
    bandwidth: f64,
    one: &'a rayon::ThreadPool,
    all: &'a rayon::ThreadPool,
}

/// One attribute shape's figures.
#[derive(Debug, Serialize)]
struct AttributeRow {
    shape: &'static str,
    filter: String,
    count: u64,
    /// Planning (the attribute tests run on their indexes) and counting
    /// over the live workspace.
    with_planning: Timing,
    /// Counting a plan made before.
    prepared: Timing,
}

/// The attribute shapes over the live workspace (its attributes decoded
/// from the snapshot), checked against the reference evaluator once;
/// nothing when the workload has no attributes (a version 1 file).
fn attribute_rows(
    live: &Workspace,
    cache: &segq::query::SerialCache,
    sampler: &Sampler,
) -> Result<Vec<AttributeRow>, Failure> {
    let shapes = workload::attribute_shapes(live.cohorts.len() as u32);
    let mut rows = Vec::new();
    for (name, filter) in shapes {
        let mut known = true;
        filter.for_each_attribute(&mut |a| known &= live.attributes.get(a).is_some());
        if !known {
            continue;
        }
        let run = || -> Result<u64, Error> {
            let p = plan::plan(live, black_box(&filter))?;
            chunk::Prepared::new(live, &p, cache)?.count()
        };
        let (count, with_planning) = sampler.time(run)?;
        let p = plan::plan(live, &filter)?;
        let prepared = chunk::Prepared::new(live, &p, cache)?;
        let (again, prepared_t) = sampler.time(|| prepared.count())?;
        let n = reference::count(live, &filter)?;
        if n != count || again != count {
            return Err(Failure::Other(format!(
                "{name}: the fast evaluator counts {count} ({again} prepared), the reference {n}"
            )));
        }
        rows.push(AttributeRow {
            shape: name,
            filter: filter.to_string(),
            count,
            with_planning,
            prepared: prepared_t,
        });
    }
    Ok(rows)
}

/// Every shape's estimate at a 5% chunk sample (`query::sample`, a fixed
/// seed) and its exact count, both with planning over the mapped
/// snapshot, timed run by run in turn; every run's exact count must be
/// the shape's, every estimate the first one (the seed fixes it).
fn estimate_rows(
    snap: &Snapshot,
    shapes: &[(&'static str, Filter)],
    rows: &[ShapeRow],
    sampler: &Sampler,
) -> Result<Vec<EstimateRow>, Failure> {
    use segq::query::sample::{sampled_count, Tradeoff};
    let t = Tradeoff::SampleFraction(ESTIMATE_FRACTION);
    let mut out = Vec::new();
    for ((name, filter), row) in shapes.iter().zip(rows) {
        let first = sampled_count(snap, filter, t, ESTIMATE_SEED)?;
        let mut exact = || Ok(segq::query::count_in(snap, black_box(filter), false)?.count);
        let mut sampled = || {
            Ok(sampled_count(snap, black_box(filter), t, ESTIMATE_SEED)?
                .interval
                .estimate)
        };
        let want = [row.count, first.interval.estimate];
        let timings = sampler.alternate(
            &mut [("exact", &mut exact), ("estimate", &mut sampled)],
            &mut |i, n| {
                if n == want[i] {
                    Ok(())
                } else {
                    Err(Failure::Other(format!(
                        "{name}: a run answered {n} where the first answered {}",
                        want[i]
                    )))
                }
            },
        )?;
        out.push(EstimateRow {
            shape: name,
            count: row.count,
            estimate: first.interval.estimate,
            low: first.interval.low,
            high: first.interval.high,
            exact_reason: first.sample.exact_reason,
            sample_chunks: first.sample.sample_chunks,
            chunks: first.sample.chunks,
            ratio: timings[0].median_ns / timings[1].median_ns,
            exact: timings[0],
            sampled: timings[1],
        });
    }
    Ok(out)
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
    let live_cache = segq::query::SerialCache::with_bucket_masks(masks::DEFAULT_BYTES);
    // The snapshot's bucket-range masks, kept across runs as a workspace
    // keeps them (the peers' bucket bitmaps are built before timing too).
    let snap_masks = Some(masks::MaskSource::new(Arc::new(
        masks::BucketMasks::default(),
    )));

    // The peers' bitmaps, decoded and built before anything is timed.
    let (peers, peers_setup) = if s.peers {
        eprintln!("loading the peers' bitmaps");
        let t = Instant::now();
        let peers = shapes
            .iter()
            .map(|(_, f)| Peers::new(snap, &plan::plan(snap, f)?).map(Some))
            .collect::<Result<Vec<_>, Error>>()?;
        let setup = PeersSetup {
            load_ms: t.elapsed().as_secs_f64() * 1e3,
            how: PEERS_HOW,
        };
        (peers, Some(setup))
    } else {
        (shapes.iter().map(|_| None).collect(), None)
    };

    let mut rows = Vec::new();
    let mut prepared_all = Vec::new();
    for ((name, filter), peers) in shapes.iter().zip(&peers) {
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
        // segq's count with planning, and the peers' run by run in turn.
        let mut segq = || {
            let p = plan::plan(snap, black_box(filter))?;
            chunk::Prepared::for_snapshot(snap, &p)?
                .with_bucket_masks(snap_masks.clone())
                .count()
        };
        let (count, timings) = match peers {
            None => sampler.interleaved(name, &mut [("segq", &mut segq)])?,
            Some(peers) => {
                let (c, r) = (&peers.croaring, &peers.roaring_rs);
                sampler.interleaved(
                    name,
                    &mut [
                        ("segq", &mut segq),
                        (CRoaring::NAME, &mut || Ok(black_box(c).count())),
                        (RoaringRs::NAME, &mut || Ok(black_box(r).count())),
                    ],
                )?
            }
        };
        let fast_with_planning = timings[0];
        let peers = peers.as_ref().map(|_| {
            let figure = |timing: Timing| PeerFigure {
                timing,
                ratio: timing.median_ns / fast_with_planning.median_ns,
            };
            PeerFigures {
                croaring: figure(timings[1]),
                roaring_rs: figure(timings[2]),
            }
        });
        let p = plan::plan(snap, filter)?;
        let prepared =
            chunk::Prepared::for_snapshot(snap, &p)?.with_bucket_masks(snap_masks.clone());
        let (again, fast_prepared) = sampler.time(|| prepared.count())?;
        let reads = footprint::for_snapshot(snap, &p)?;
        let read_gb_per_s =
            (reads.total() > 0).then(|| reads.total() as f64 / fast_prepared.median_ns);
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
            peers,
            reads,
            read_gb_per_s,
            of_read_bandwidth: read_gb_per_s.map(|g| g / s.bandwidth),
        });
        prepared_all.push(prepared);
    }
    drop(ws);
    let estimates = estimate_rows(snap, &shapes, &rows, sampler)?;
    let attribute_rows = attribute_rows(&live, &live_cache, sampler)?;
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

    // Thread scaling of the multi-leaf shapes: each count issued from a
    // thread of the pool it runs on.
    let mut thread_scaling = Vec::new();
    for (row, prepared) in rows.iter().zip(&prepared_all).skip(1) {
        let t = sampler.in_pools(row.shape, &[s.one, s.all], &|| prepared.count(), row.count)?;
        let (one_thread, all_threads) = (t[0], t[1]);
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
        peers: peers_setup,
        attribute_shapes: attribute_rows,
        estimates,
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
    if r.peers.is_some() {
        print_peers(out, r)?;
    }
    print_reads(out, r)?;
    if !r.attribute_shapes.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<52} {:>9}  {:>21}  {:>21}",
            "attribute shapes (live workspace)", "count", "with planning", "prepared"
        )?;
        for a in &r.attribute_shapes {
            writeln!(
                out,
                "{:<52} {:>9}  {:>21}  {:>21}",
                a.shape,
                a.count,
                cell(&a.with_planning),
                cell(&a.prepared)
            )?;
        }
        writeln!(
            out,
            "(with planning: each attribute test run on its index, then the chunk count;\n checked against the reference evaluator)"
        )?;
    }
    print_estimates(out, r)?;
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
    writeln!(
        out,
        "(each count issued from a thread of its own pool, the hop into the pool not timed;\n \
         one thread and all timed run by run in turn)"
    )?;
    Ok(())
}

fn print_estimates(out: &mut dyn Write, r: &SizeReport) -> std::io::Result<()> {
    let cell = |t: &Timing| format!("{} ({})", dur(t.median_ns), dur(t.p90_ns));
    writeln!(out)?;
    writeln!(
        out,
        "{:<36} {:>10}  {:>27}  {:>9}  {:>21}  {:>21}  {:>6}",
        "estimate at a 5% chunk sample",
        "count",
        "estimate [95% interval]",
        "chunks",
        "exact",
        "estimate",
        "ratio"
    )?;
    for e in &r.estimates {
        let chunks = match &e.exact_reason {
            Some(_) => "exact".to_string(),
            None => format!("{}/{}", e.sample_chunks, e.chunks),
        };
        writeln!(
            out,
            "{:<36} {:>10}  {:>27}  {:>9}  {:>21}  {:>21}  {:>6}",
            e.shape,
            e.count,
            format!("{} [{}, {}]", e.estimate, e.low, e.high),
            chunks,
            cell(&e.exact),
            cell(&e.sampled),
            format!("{:.1}x", e.ratio)
        )?;
    }
    for e in &r.estimates {
        if let Some(why) = &e.exact_reason {
            writeln!(out, "({}: answered exactly: {why})", e.shape)?;
        }
    }
    writeln!(
        out,
        "(both with planning over the mapped snapshot, timed run by run in turn; seed {ESTIMATE_SEED};\n ratio: exact median / estimate median)"
    )
}

fn print_bandwidth(out: &mut dyn Write, b: &Bandwidth) -> std::io::Result<()> {
    let cache = b
        .last_level_cache_bytes
        .map_or("an unknown".to_string(), |c| format!("a {}", mib(c)));
    writeln!(
        out,
        "machine read bandwidth: {:.1} GB/s ({} threads summing a {} buffer, {cache} last-level cache; median of {} runs, p90 {})",
        b.gb_per_s,
        b.threads,
        mib(b.buffer_bytes),
        b.timing.runs,
        dur(b.timing.p90_ns)
    )
}

fn print_peers(out: &mut dyn Write, r: &SizeReport) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<36} {:>10}  {:>21}  {:>8}  {:>21}  {:>8}",
        "peers (count)", "segq", "CRoaring", "ratio", "roaring-rs", "ratio"
    )?;
    let cell = |t: &Timing| format!("{} ({})", dur(t.median_ns), dur(t.p90_ns));
    for s in &r.shapes {
        let Some(p) = &s.peers else { continue };
        writeln!(
            out,
            "{:<36} {:>10}  {:>21}  {:>8}  {:>21}  {:>8}",
            s.shape,
            dur(s.fast_with_planning.median_ns),
            cell(&p.croaring.timing),
            format!("{:.2}x", p.croaring.ratio),
            cell(&p.roaring_rs.timing),
            format!("{:.2}x", p.roaring_rs.ratio)
        )?;
    }
    if let Some(setup) = &r.peers {
        writeln!(
            out,
            "(segq: fast, with planning, on every thread; the peers: one thread each, on bitmaps decoded\n \
             from the same snapshot bytes (in {}); every run of each in turn, every count checked;\n \
             random-bucket leaves: a bitmap per shape built before timing, as a platform would keep it;\n \
             ratio: peer median / segq median)",
            ms(setup.load_ms)
        )?;
    }
    Ok(())
}

fn print_reads(out: &mut dyn Write, r: &SizeReport) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<36} {:>10}  {:>12}  {:>9}  {:>10}  {:>8}  {:>12}",
        "reads (fast, prepared)",
        "containers",
        "container MB",
        "bucket MB",
        "median",
        "GB/s",
        "of bandwidth"
    )?;
    for s in &r.shapes {
        let mb = |b: u64| format!("{:.3}", b as f64 / 1e6);
        writeln!(
            out,
            "{:<36} {:>10}  {:>12}  {:>9}  {:>10}  {:>8}  {:>12}",
            s.shape,
            s.reads.containers,
            mb(s.reads.container_bytes),
            mb(s.reads.bucket_bytes),
            dur(s.fast_prepared.median_ns),
            s.read_gb_per_s.map_or("-".into(), |g| format!("{g:.2}")),
            s.of_read_bandwidth
                .map_or("-".into(), |f| format!("{:.0}%", f * 100.0))
        )?;
    }
    writeln!(
        out,
        "(the containers' payload bytes a count reads: per chunk, an AND stops at its first leaf with\n \
         no container there; buckets: at most 2 bytes per user of each chunk a bucket leaf is reached in;\n \
         GB/s: containers and buckets / the prepared count's median; reads smaller than the last-level\n \
         cache stay in it from one run to the next, so they can go faster than the memory bandwidth)"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<(u64, Vec<Timing>), Failure>) -> String {
        match r {
            Err(Failure::Other(m)) => m,
            Ok((n, _)) => panic!("counted {n}"),
            Err(_) => panic!("another failure"),
        }
    }

    #[test]
    fn ways_are_timed_in_turn_and_must_count_the_same() {
        let sampler = Sampler { runs: 4 };
        let order = std::cell::RefCell::new(Vec::new());
        let mut a = || {
            order.borrow_mut().push('a');
            Ok(5)
        };
        let mut b = || {
            order.borrow_mut().push('b');
            Ok(5)
        };
        let (n, timings) = sampler
            .interleaved("shape", &mut [("a", &mut a), ("b", &mut b)])
            .ok()
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(timings.len(), 2);
        assert!(timings.iter().all(|t| t.runs == 4));
        // A warm-up each, then run by run in turn.
        assert_eq!(order.borrow().iter().collect::<String>(), "ababababab");

        let mut segq = || Ok(5);
        let mut other = || Ok(6);
        let m = message(sampler.interleaved(
            "shape",
            &mut [("segq", &mut segq), ("CRoaring", &mut other)],
        ));
        assert_eq!(m, "shape: CRoaring counts 6, segq counts 5");
        // A timed run that differs fails too.
        let mut calls = 0;
        let mut late = || {
            calls += 1;
            Ok(if calls == 3 { 4 } else { 5 })
        };
        let m = message(sampler.interleaved(
            "shape",
            &mut [("segq", &mut segq), ("roaring-rs", &mut late)],
        ));
        assert_eq!(m, "shape: roaring-rs counts 4, segq counts 5");
    }
}
