//! `segq snapshot bench FILE`: what opening and querying a snapshot costs,
//! measured in the process that runs it (so its resident memory is the
//! snapshot's, not a generator's).

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use segq::segment::{chunk, plan};
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
    /// Median ns per look-up of a known external id (over batches of 100).
    pub known_median_ns: f64,
    /// Median ns per look-up of an unknown external id.
    pub unknown_median_ns: f64,
    /// Median ns per user -> external id.
    pub user_to_external_median_ns: f64,
    /// Opening the snapshot as a workspace (mapping it, then
    /// `load_workspace`: catalog, keys, saved segments, cohort headers),
    /// ms; the median of [`OPENS`] opens.
    pub workspace_open_ms: f64,
    /// Custom attributes in the snapshot.
    pub attributes: usize,
    /// Reading every attribute's index after the open, as first uses
    /// do, ms (0 without attributes).
    pub attributes_read_ms: f64,
}

/// How many times the workspace is opened for its median.
pub const OPENS: usize = 9;

/// The median over batches of `BATCH` calls of the time per call (ns).
fn median_ns<T>(items: &[T], mut f: impl FnMut(&T) -> bool) -> (f64, usize) {
    const BATCH: usize = 100;
    let mut per = Vec::with_capacity(items.len() / BATCH + 1);
    let mut hits = 0;
    for batch in items.chunks(BATCH) {
        let t = Instant::now();
        for x in batch {
            hits += usize::from(std::hint::black_box(f(x)));
        }
        per.push(t.elapsed().as_secs_f64() * 1e9 / batch.len() as f64);
    }
    per.sort_by(f64::total_cmp);
    (per.get(per.len() / 2).copied().unwrap_or(0.0), hits)
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
        .filter(|s| s.kind.is_dictionary())
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
    // Medians: known ids (those found above), unknown ids (past the
    // last user, and of another form), user -> external id.
    let known: Vec<&String> = ids
        .iter()
        .filter(|id| dict.get(id.as_bytes()).is_some())
        .collect();
    let (known_median_ns, _) = median_ns(&known, |id| dict.get(id.as_bytes()).is_some());
    let unknown: Vec<String> = (0..lookups)
        .map(|i| match i % 2 {
            0 => format!(
                "u{}",
                u64::from(users) + rng.gen_range(0..u64::from(users.max(1)))
            ),
            _ => format!("x{}", rng.gen_range(0..users.max(1))),
        })
        .collect();
    let (unknown_median_ns, found) = median_ns(&unknown, |id| dict.get(id.as_bytes()).is_some());
    if found != 0 {
        return Err(segq::Error::Internal(format!(
            "{found} unknown ids were found"
        )));
    }
    let user_ids: Vec<u32> = (0..lookups)
        .map(|_| rng.gen_range(0..users.max(1)))
        .collect();
    // Into one reused buffer, as a member export reads them.
    let mut key = Vec::new();
    let (user_to_external_median_ns, _) =
        median_ns(&user_ids, |&u| dict.key_into(segq::UserId(u), &mut key));

    // The snapshot as a server opens it (after its start-up check): the
    // file mapped, a workspace over the map.
    let mut opens = Vec::with_capacity(OPENS);
    let mut ws = None;
    for _ in 0..OPENS {
        let t = Instant::now();
        let snap = std::sync::Arc::new(Snapshot::open(path)?);
        let w = segq::engine::persist::load_workspace(snap)?;
        opens.push(t.elapsed().as_secs_f64() * 1e3);
        ws = Some(w);
    }
    opens.sort_by(f64::total_cmp);
    let workspace_open_ms = opens[OPENS / 2];
    let (attributes, attributes_read_ms) = match &ws {
        Some(ws) => {
            let t = Instant::now();
            for a in ws.attributes.iter() {
                if let Some(e) = a.damage() {
                    return Err(segq::Error::Internal(format!(
                        "attribute {}: {e}",
                        a.name()
                    )));
                }
            }
            (
                ws.attributes.iter().count(),
                t.elapsed().as_secs_f64() * 1e3,
            )
        }
        None => (0, 0.0),
    };
    Ok(Report {
        workspace_open_ms,
        attributes,
        attributes_read_ms,
        known_median_ns,
        unknown_median_ns,
        user_to_external_median_ns,
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
