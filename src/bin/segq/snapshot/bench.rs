//! `segq snapshot bench FILE`: what opening and querying a snapshot costs,
//! measured in the process that runs it (so its resident memory is the
//! snapshot's, not a generator's).

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use segq::segment::{chunk, plan};
use segq::snapshot::format::SectionKind;
use segq::snapshot::Snapshot;
use segq::{Result, UserRef};

/// The figures.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub file_bytes: u64,
    /// Sum of the cohorts' portable roaring sizes.
    pub bitmap_bytes: u64,
    /// The identifier dictionaries' sections.
    pub dictionary_bytes: u64,
    /// file / (bitmaps + dictionaries).
    pub size_ratio: f64,
    pub users: u32,
    pub cohorts: usize,
    pub open_us: f64,
    pub rss_before_open: Option<u64>,
    pub rss_after_open: Option<u64>,
    pub query: String,
    pub query_count: u64,
    pub query_ms: f64,
    pub rss_after_query: Option<u64>,
    pub lookups: usize,
    pub lookup_hits: usize,
    pub lookups_ms: f64,
    pub rss_after_lookups: Option<u64>,
}

/// The process's resident set size in bytes (Linux), if known.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Opens `path`, runs the "five large cohorts ANDed" query, and looks up
/// `lookups` random external ids of the workload's form (`u{n}`).
pub fn run(path: &Path, lookups: usize) -> Result<Report> {
    let rss_before_open = rss_bytes();
    let t = Instant::now();
    let snap = Snapshot::open(path)?;
    let open_us = t.elapsed().as_secs_f64() * 1e6;
    let rss_after_open = rss_bytes();

    let file_bytes = snap.sections().iter().map(|s| s.len).sum::<u64>();
    let file_bytes = std::fs::metadata(path).map_or(file_bytes, |m| m.len());
    let meta = snap.meta()?;
    let bitmap_bytes: u64 = meta.cohorts.iter().map(|c| c.len).sum();
    let dictionary_bytes: u64 = snap
        .sections()
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                SectionKind::ExternalIds | SectionKind::Devices | SectionKind::Aliases
            )
        })
        .map(|s| s.len)
        .sum();

    let cohorts = meta.cohorts.len() as u32;
    let (name, filter) = segq::workload::query_shapes(cohorts)
        .into_iter()
        .nth(3)
        .expect("six query shapes");
    let t = Instant::now();
    let p = plan::plan(&snap, &filter)?;
    let query_count = chunk::Prepared::for_snapshot(&snap, &p)?.count()?;
    let query_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_after_query = rss_bytes();

    let users = meta.users;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ids: Vec<String> = (0..lookups)
        .map(|_| format!("u{}", rng.gen_range(0..users.max(1))))
        .collect();
    let t = Instant::now();
    let mut hits = 0;
    let dict = snap.external_ids()?;
    for id in &ids {
        hits += usize::from(dict.get(id.as_bytes()).is_some());
    }
    let lookups_ms = t.elapsed().as_secs_f64() * 1e3;
    // Through the public look-up too, for one id: the same answer.
    if let Some(first) = ids.first() {
        debug_assert_eq!(
            snap.lookup(&UserRef::ExternalId(first.clone()))?,
            dict.get(first.as_bytes())
        );
    }
    Ok(Report {
        file_bytes,
        bitmap_bytes,
        dictionary_bytes,
        size_ratio: file_bytes as f64 / (bitmap_bytes + dictionary_bytes).max(1) as f64,
        users,
        cohorts: meta.cohorts.len(),
        open_us,
        rss_before_open,
        rss_after_open,
        query: format!("{name}: {filter}"),
        query_count,
        query_ms,
        rss_after_query,
        lookups,
        lookup_hits: hits,
        lookups_ms,
        rss_after_lookups: rss_bytes(),
    })
}
