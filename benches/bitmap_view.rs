//! What is measured: the zero-copy roaring reader (`segq::bitmap_view`) on
//! sparse (array), dense (bitmap) and range-shaped (run) cohorts of ~1M ids:
//! header parse, 1024 `contains` probes, each container ORed into a chunk's
//! words, and the evaluator's inner loop — a
//! chunk-by-chunk AND of two views into a `[u64; 1024]` plus popcount —
//! next to roaring's owned `intersection_len` on deserialized bitmaps.
//! The bytes sit at an odd offset, as they may in a mapped snapshot.
//!
//! Run: `cargo bench --bench bitmap_view` (append `-- --quick` for a smoke run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use roaring::RoaringBitmap;
use segq::bitmap_view::{popcount, BitmapView, Words, CHUNK_WORDS};

const UNIVERSE: u32 = 16 << 16; // 16 chunks, ~1M users

fn cohorts() -> Vec<(&'static str, RoaringBitmap)> {
    let sparse: RoaringBitmap = (0..UNIVERSE).step_by(37).collect();
    let dense: RoaringBitmap = (0..UNIVERSE)
        .filter(|v| v.wrapping_mul(0x9E37_79B9) >> 30 != 0)
        .collect();
    let mut runs = RoaringBitmap::new();
    for i in 0..64u32 {
        let start = i * (UNIVERSE / 64);
        runs.insert_range(start..start + 9_000);
    }
    runs.optimize();
    vec![("array", sparse), ("bitmap", dense), ("run", runs)]
}

/// Serialized bytes at an odd offset: (buffer, start).
fn misaligned(rb: &RoaringBitmap) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; 1];
    rb.serialize_into(&mut buf).expect("serialize into a Vec");
    (buf, 1)
}

fn and_count(a: &BitmapView<'_>, b: &BitmapView<'_>, words: &mut Words) -> u64 {
    let (mut i, mut j, mut total) = (0, 0, 0u64);
    while i < a.containers() && j < b.containers() {
        match a.key(i).cmp(&b.key(j)) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                a.container(i).write_into(words);
                b.container(j).and_into(words);
                total += u64::from(popcount(words));
                i += 1;
                j += 1;
            }
        }
    }
    total
}

fn bench(c: &mut Criterion) {
    let cohorts = cohorts();
    let buffers: Vec<(&str, Vec<u8>, usize, RoaringBitmap)> = cohorts
        .iter()
        .map(|(name, rb)| {
            let (buf, at) = misaligned(rb);
            (*name, buf, at, rb.clone())
        })
        .collect();
    let probes: Vec<u32> = (0..1024u32)
        .map(|i| i.wrapping_mul(0x9E37_79B9) % UNIVERSE)
        .collect();

    let mut group = c.benchmark_group("bitmap_view");
    for (name, buf, at, _) in &buffers {
        let bytes = &buf[*at..];
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                BitmapView::parse(black_box(bytes))
                    .expect("valid bitmap")
                    .len()
            })
        });
        let view = BitmapView::parse(bytes).expect("valid bitmap");
        group.bench_function(format!("contains_1024/{name}"), |b| {
            b.iter(|| {
                probes
                    .iter()
                    .filter(|&&x| view.contains(black_box(x)))
                    .count()
            })
        });
    }
    let mut words: Box<Words> = Box::new([0u64; CHUNK_WORDS]);
    // The evaluator's OR of a container into a chunk's words, over every
    // chunk of each cohort (array: scattered single bits).
    for (name, buf, at, rb) in &buffers {
        let view = BitmapView::parse(&buf[*at..]).expect("valid bitmap");
        group.bench_function(format!("or_into/{name}"), |b| {
            b.iter(|| {
                let mut n = 0u64;
                for (_, c) in view.iter_containers() {
                    words.fill(0);
                    c.or_into(&mut words);
                    n += u64::from(popcount(&words));
                }
                assert_eq!(n, rb.len());
                n
            })
        });
    }
    for (i, (left, lbuf, lat, lrb)) in buffers.iter().enumerate() {
        for (right, rbuf, rat, rrb) in &buffers[i..] {
            let a = BitmapView::parse(&lbuf[*lat..]).expect("valid bitmap");
            let b = BitmapView::parse(&rbuf[*rat..]).expect("valid bitmap");
            assert_eq!(and_count(&a, &b, &mut words), lrb.intersection_len(rrb));
            group.bench_function(format!("and_count/view/{left}&{right}"), |bench| {
                bench.iter(|| and_count(black_box(&a), black_box(&b), &mut words))
            });
            group.bench_function(format!("and_count/roaring/{left}&{right}"), |bench| {
                bench.iter(|| black_box(lrb).intersection_len(black_box(rrb)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
