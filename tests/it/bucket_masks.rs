//! Bucket-range masks: a count that reads its bucket ranges through the
//! mask cache (cold, then warm) equals the count from the bucket array and
//! the reference, for random ranges and plans (the last chunk partial, the
//! edges 0 and 9999, NOT of a range); the cache keeps to its budget,
//! evicting the least recently used ranges, and a budget of 0 keeps none.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::query::{SerialCache, Uncached};
use segq::segment::chunk::Prepared;
use segq::segment::masks::{BucketMasks, MaskSource};
use segq::segment::{plan, reference, BucketCmp, Filter};
use segq::workload::{self, Spec};
use segq::Workspace;

/// Three full chunks and a partial one.
const SPEC: Spec = Spec {
    users: 3 * 65_536 + 4_321,
    cohorts: 30,
    seed: 12,
};

fn range(rng: &mut ChaCha8Rng) -> Filter {
    let (lo, hi) = match rng.gen_range(0..6) {
        0 => (0, rng.gen_range(0..10_000u16)),
        1 => (rng.gen_range(0..10_000u16), 9_999),
        2 => {
            let b = rng.gen_range(0..10_000u16);
            (b, b)
        }
        3 => (0, 9_999),
        _ => {
            let lo = rng.gen_range(0..10_000u16);
            (lo, rng.gen_range(lo..10_000u16))
        }
    };
    Filter::Bucket(BucketCmp::Between(lo, hi))
}

fn random_filter(rng: &mut ChaCha8Rng, depth: u32) -> Filter {
    let leaf = |rng: &mut ChaCha8Rng| {
        if rng.gen_bool(0.4) {
            let r = range(rng);
            if rng.gen_bool(0.2) {
                r.not()
            } else {
                r
            }
        } else {
            let c = workload::cohort_id(rng.gen_range(0..SPEC.cohorts));
            if rng.gen_bool(0.8) {
                Filter::includes(workload::PARTNER, c)
            } else {
                Filter::excludes(workload::PARTNER, c)
            }
        }
    };
    if depth == 0 || rng.gen_bool(0.25) {
        return leaf(rng);
    }
    let n = rng.gen_range(2..5);
    let children = (0..n).map(|_| random_filter(rng, depth - 1)).collect();
    match rng.gen_range(0..4) {
        0 | 1 => Filter::And(children),
        2 => Filter::Or(children),
        _ => Filter::And(children).not(),
    }
}

/// The filters tried: the mixed shape, a range alone and NOT of one at the
/// edges, and random trees.
fn filters() -> Vec<Filter> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut fs: Vec<Filter> = workload::query_shapes(SPEC.cohorts)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    for (lo, hi) in [
        (0, 0),
        (9_999, 9_999),
        (0, 9_999),
        (0, 4_000),
        (7_000, 9_999),
    ] {
        let b = Filter::Bucket(BucketCmp::Between(lo, hi));
        let c = Filter::includes(workload::PARTNER, workload::cohort_id(1));
        fs.push(b.clone());
        fs.push(b.clone().not());
        fs.push(Filter::And(vec![c.clone(), b.clone()]));
        fs.push(Filter::And(vec![c, b.not()]));
    }
    fs.extend((0..80).map(|_| random_filter(&mut rng, 3)));
    fs
}

fn workspace() -> Workspace {
    workload::generate("masks", SPEC).unwrap().workspace
}

#[test]
fn masked_counts_equal_the_bucket_array_and_the_reference() {
    let ws = workspace();
    let masked = SerialCache::with_bucket_masks(64 << 20);
    for f in filters() {
        let p = plan::plan(&ws, &f).unwrap();
        let plain = Prepared::new(&ws, &p, &Uncached).unwrap();
        let want = reference::count(&ws, &f).unwrap();
        assert_eq!(plain.count().unwrap(), want, "{f}");
        let members = plain.members().unwrap();
        for run in ["cold", "warm"] {
            let m = Prepared::new(&ws, &p, &masked).unwrap();
            assert_eq!(m.count().unwrap(), want, "{run} {f}");
            assert_eq!(m.members().unwrap(), members, "{run} {f}");
        }
    }
    let s = masked.bucket_mask_cache().unwrap().stats();
    assert!(s.hits > 0 && s.misses > 0 && s.bytes > 0, "{s:?}");
}

#[test]
fn the_breakdown_reads_the_masks_too() {
    let ws = workspace();
    let masked = SerialCache::with_bucket_masks(64 << 20);
    let fs = filters();
    let parts: Vec<_> = fs[..12]
        .iter()
        .map(|f| plan::plan(&ws, f).unwrap())
        .collect();
    for and in [true, false] {
        let plain: Vec<Prepared> = parts
            .iter()
            .map(|p| Prepared::new(&ws, p, &Uncached).unwrap())
            .collect();
        let want = segq::segment::chunk::breakdown_counts(&plain, and).unwrap();
        for _ in 0..2 {
            let with: Vec<Prepared> = parts
                .iter()
                .map(|p| Prepared::new(&ws, p, &masked).unwrap())
                .collect();
            assert_eq!(
                segq::segment::chunk::breakdown_counts(&with, and).unwrap(),
                want
            );
        }
    }
    assert!(masked.bucket_mask_cache().unwrap().stats().hits > 0);
}

/// The masks of one range over three full chunks: 3 × (8,192 + 64) bytes
/// when the range holds more than 4,096 users of a chunk.
const RANGE_BYTES: usize = 3 * (8_192 + 64);

#[test]
fn the_cache_keeps_to_its_budget_evicting_the_least_recently_used_range() {
    let ws = workspace();
    let cache = std::sync::Arc::new(BucketMasks::new(2 * RANGE_BYTES));
    let count = |lo: u16, hi: u16| {
        let f = Filter::Bucket(BucketCmp::Between(lo, hi));
        let p = plan::plan(&ws, &f).unwrap();
        let n = Prepared::new(&ws, &p, &Uncached)
            .unwrap()
            .with_bucket_masks(Some(MaskSource::new(cache.clone())))
            .count()
            .unwrap();
        assert_eq!(n, reference::count(&ws, &f).unwrap());
    };
    count(0, 4_999);
    count(5_000, 9_999);
    let s = cache.stats();
    assert_eq!(
        (s.ranges, s.bytes, s.misses),
        (2, 2 * RANGE_BYTES as u64, 6)
    );
    // The first range used again: the second is now the older.
    count(0, 4_999);
    assert_eq!(cache.stats().hits, 3);
    count(1_000, 8_999);
    let s = cache.stats();
    assert_eq!((s.ranges, s.bytes), (2, 2 * RANGE_BYTES as u64));
    // (0, 4999) stayed, (5000, 9999) went.
    count(0, 4_999);
    assert_eq!(cache.stats().hits, 6);
    count(5_000, 9_999);
    let s = cache.stats();
    assert_eq!(s.misses, 12, "{s:?}");
    assert!(s.bytes <= s.budget, "{s:?}");
}

#[test]
fn a_budget_of_zero_keeps_nothing_and_a_cleared_cache_serves_no_older_view() {
    assert!(SerialCache::with_bucket_masks(0)
        .bucket_mask_cache()
        .is_none());
    let ws = workspace();
    let f = Filter::Bucket(BucketCmp::Between(100, 7_000));
    let p = plan::plan(&ws, &f).unwrap();
    let want = reference::count(&ws, &f).unwrap();
    let off = std::sync::Arc::new(BucketMasks::new(0));
    let prepared = |cache: &std::sync::Arc<BucketMasks>| {
        Prepared::new(&ws, &p, &Uncached)
            .unwrap()
            .with_bucket_masks(Some(MaskSource::new(cache.clone())))
    };
    assert_eq!(prepared(&off).count().unwrap(), want);
    assert_eq!(off.stats().misses + off.stats().bytes, 0);

    // A view taken before a clear neither reads nor fills the cache.
    let cache = std::sync::Arc::new(BucketMasks::default());
    let before = prepared(&cache);
    cache.clear();
    assert_eq!(before.count().unwrap(), want);
    let s = cache.stats();
    assert_eq!((s.misses, s.ranges, s.bytes), (0, 0, 0));
    assert_eq!(prepared(&cache).count().unwrap(), want);
    assert_eq!(cache.stats().ranges, 1);
}
