//! The whole view against the `roaring` crate: every fixture, every
//! alignment, seeded and property-based mutations (parse and verify must
//! never panic, and whatever verifies decodes as roaring decodes it). Also
//! the fixtures and helpers the tests beside each file share.

use super::header::{le_u16, le_u32, Offsets};
use super::*;
use proptest::prelude::*;
use roaring::RoaringBitmap;

pub(super) fn serialize(rb: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::new();
    rb.serialize_into(&mut out).unwrap();
    assert_eq!(out.len(), rb.serialized_size());
    out
}

/// The bytes at an odd offset inside a larger buffer, with trailing
/// garbage: returns the buffer and the bitmap's start.
pub(super) fn misaligned(bytes: &[u8]) -> (Vec<u8>, usize) {
    let pad = 3;
    let mut buf = vec![0xA5u8; pad];
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(&[0x5A; 5]);
    (buf, pad)
}

pub(super) fn zero_words() -> Box<Words> {
    Box::new([0u64; CHUNK_WORDS])
}

/// Chunk `key` of `rb` as words.
fn chunk_words(rb: &RoaringBitmap, key: u16) -> Box<Words> {
    let base = u32::from(key) << 16;
    let mut words = zero_words();
    for v in rb.range(base..=base | 0xFFFF) {
        let low = v as u16;
        words[usize::from(low >> 6)] |= 1 << (low & 63);
    }
    words
}

fn chunk_values(rb: &RoaringBitmap, key: u16) -> Vec<u16> {
    let base = u32::from(key) << 16;
    rb.range(base..=base | 0xFFFF).map(|v| v as u16).collect()
}

fn kinds(view: &BitmapView<'_>) -> (usize, usize, usize) {
    let mut k = (0, 0, 0);
    for (_, c) in view.iter_containers() {
        match c {
            Container::Array(_) => k.0 += 1,
            Container::Bitmap(_) => k.1 += 1,
            Container::Run(_) => k.2 += 1,
        }
    }
    k
}

pub(super) fn range_set(ranges: &[std::ops::RangeInclusive<u32>]) -> RoaringBitmap {
    let mut rb = RoaringBitmap::new();
    for r in ranges {
        rb.insert_range(r.clone());
    }
    rb
}

/// Bitmaps covering every container kind and the chunk edges.
pub(super) fn fixtures() -> Vec<(&'static str, RoaringBitmap)> {
    let mut out = vec![
        ("empty", RoaringBitmap::new()),
        (
            "edges",
            [
                0,
                1,
                63,
                64,
                65535,
                65536,
                131071,
                1 << 31,
                u32::MAX - 1,
                u32::MAX,
            ]
            .into_iter()
            .collect(),
        ),
        ("sparse", (0..10_000_000).step_by(997).collect()),
        ("dense", (0..300_000).step_by(3).collect()),
        (
            "array_bitmap_boundary",
            (0..65536u32)
                .step_by(16)
                .chain((65536..65536 + 4097 * 15).step_by(15))
                .collect(),
        ),
        ("alternating_chunk", (7 << 16..8 << 16).step_by(2).collect()),
    ];
    let mut runs_few = range_set(&[10..=5000, u32::MAX - 100..=u32::MAX]);
    runs_few.optimize();
    out.push(("runs_few", runs_few));
    let mut runs_three = range_set(&[0..=65535, 70_000..=70_099, 200_000..=210_000]);
    runs_three.optimize();
    out.push(("runs_three", runs_three));
    let mut runs_four = range_set(&[0..=99, 65536..=65635, 131072..=140000, 196608..=262143]);
    runs_four.optimize();
    out.push(("runs_four", runs_four));
    let mut mixed = range_set(&[10..=5000, 70_000..=140_000, 65536 * 9 + 1..=65536 * 9 + 3]);
    mixed.extend((65536 * 3..65536 * 4).step_by(3));
    mixed.extend((65536 * 5..65536 * 6).step_by(101));
    mixed.extend([u32::MAX, u32::MAX - 2, 1 << 20]);
    mixed.optimize();
    out.push(("mixed", mixed));
    let mut full_run = range_set(&[0..=65535, 5 * 65536..=6 * 65536 - 1]);
    full_run.optimize();
    out.push(("full_chunk_run", full_run));
    let mut full_bitmap = range_set(&[0..=65535, 5 * 65536..=6 * 65536 - 1]);
    full_bitmap.remove_run_compression();
    out.push(("full_chunk_bitmap", full_bitmap));
    out
}

fn others() -> Vec<RoaringBitmap> {
    vec![
        RoaringBitmap::new(),
        (0..8 * 65536u32).filter(|v| v % 7 < 3).collect(),
        range_set(&[0..=u32::MAX]),
        range_set(&[
            100..=65_000,
            65536 * 9..=65536 * 9 + 2,
            u32::MAX - 50..=u32::MAX,
        ]),
    ]
}

/// Checks a view of `rb` (parsed from misaligned bytes) against roaring,
/// including the word ops against `other`'s chunks.
fn check_against(rb: &RoaringBitmap, others: &[RoaringBitmap]) {
    let bytes = serialize(rb);
    let (buf, pad) = misaligned(&bytes);
    let view = BitmapView::parse(&buf[pad..]).unwrap();
    view.verify().unwrap();
    assert_eq!(view.serialized_len(), bytes.len());
    assert_eq!(view.as_bytes(), &bytes[..]);
    assert_eq!(view.len(), rb.len());
    assert_eq!(view.is_empty(), rb.is_empty());
    let keys: Vec<u16> = {
        let mut k: Vec<u16> = rb.iter().map(|v| (v >> 16) as u16).collect();
        k.dedup();
        k
    };
    assert_eq!(view.containers(), keys.len());
    assert!(view.iter().eq(rb.iter()));
    assert_eq!(&view.to_roaring(), rb);

    // contains: members, their neighbours, chunk edges.
    let step = (rb.len() / 50_000).max(1) as usize;
    for v in rb.iter().step_by(step) {
        assert!(view.contains(v), "{v}");
        for n in [v.wrapping_sub(1), v.wrapping_add(1)] {
            assert_eq!(view.contains(n), rb.contains(n), "{n}");
        }
    }
    for v in [0, 1, 65535, 65536, 65537, 1 << 31, u32::MAX - 1, u32::MAX] {
        assert_eq!(view.contains(v), rb.contains(v), "{v}");
    }
    for k in 0..=255u32 {
        let v = k.wrapping_mul(0x9E37_79B9);
        assert_eq!(view.contains(v), rb.contains(v), "{v}");
    }

    let ors: Vec<RoaringBitmap> = others.iter().map(|o| o | rb).collect();
    let ands: Vec<RoaringBitmap> = others.iter().map(|o| o & rb).collect();
    let diffs: Vec<RoaringBitmap> = others.iter().map(|o| o - rb).collect();
    for (i, key) in keys.iter().copied().enumerate() {
        assert_eq!(view.key(i), key);
        assert_eq!(view.find(key), Some(i));
        let c = view.container(i);
        let values = chunk_values(rb, key);
        assert_eq!(c.cardinality() as usize, values.len());
        assert_eq!(view.cardinality(i), c.cardinality());
        assert!(c.iter().eq(values.iter().copied()));
        let expected = chunk_words(rb, key);
        for low in (0..=u16::MAX)
            .step_by(61)
            .chain([0, 1, 63, 64, 65534, 65535])
        {
            let want = expected[usize::from(low >> 6)] >> (low & 63) & 1 == 1;
            assert_eq!(c.contains(low), want, "key {key} low {low}");
        }
        // Windows of every width the sampler uses, at the chunk's start,
        // end and inside; each holds exactly the chunk's words there.
        for width in [1usize, 64, 128, 1024] {
            for first in [
                0,
                CHUNK_WORDS - width,
                (CHUNK_WORDS / 2 / width) * width,
                37 % (CHUNK_WORDS - width + 1),
            ] {
                let mut out = vec![u64::MAX; width];
                c.write_window(first, &mut out);
                assert_eq!(
                    out[..],
                    expected[first..first + width],
                    "window {first}+{width} of key {key}"
                );
                // ANDed into a window of another pattern, with every
                // kernel level: the AND of the two, and whether it is empty.
                for k in Kernels::available() {
                    let mask: Vec<u64> = (0..width as u64)
                        .map(|i| 0x5555_5555_5555_5555u64.rotate_left((i % 64) as u32) ^ i)
                        .collect();
                    let mut out = mask.clone();
                    let mut scratch = vec![u64::MAX; width];
                    let any = c.and_window(k, first, &mut out, &mut scratch);
                    let want: Vec<u64> = mask
                        .iter()
                        .zip(&expected[first..first + width])
                        .map(|(a, b)| a & b)
                        .collect();
                    assert_eq!(out, want, "{k:?} and window {first}+{width} of key {key}");
                    assert_eq!(any, want.iter().any(|&w| w != 0));
                }
            }
        }
        for (j, o) in others.iter().enumerate() {
            let start = chunk_words(o, key);
            let mut w = start.clone();
            c.or_into(&mut w);
            let want = chunk_words(&ors[j], key);
            assert_eq!(w, want, "or key {key}");
            assert_eq!(
                u64::from(popcount(&w)),
                ors[j].range_cardinality(chunk_range(key))
            );
            let mut w = start.clone();
            c.and_into(&mut w);
            assert_eq!(w, chunk_words(&ands[j], key), "and key {key}");
            assert_eq!(
                u64::from(popcount(&w)),
                ands[j].range_cardinality(chunk_range(key))
            );
            let mut w = start.clone();
            c.andnot_into(&mut w);
            assert_eq!(w, chunk_words(&diffs[j], key), "andnot key {key}");
            assert_eq!(
                u64::from(popcount(&w)),
                diffs[j].range_cardinality(chunk_range(key))
            );
            let mut w = start.clone();
            c.write_into(&mut w);
            assert_eq!(w, expected, "write key {key}");
            assert_eq!(popcount(&w), c.cardinality());
        }
    }
    // Keys between and around the containers are absent.
    for k in [0u16, 1, 2, 100, 65534, 65535] {
        assert_eq!(view.find(k), keys.binary_search(&k).ok());
    }
    // Every key (present, between, around), sought from every start at
    // or before its place, answers as a binary search does; a walk over
    // rising keys carrying the answer on finds each container.
    let mut probes: Vec<u16> = keys
        .iter()
        .flat_map(|&k| [k.saturating_sub(1), k, k.saturating_add(1)])
        .chain([0, 1, 100, 65534, 65535])
        .collect();
    probes.sort_unstable();
    probes.dedup();
    for &k in &probes {
        let want = keys.binary_search(&k);
        let place = want.unwrap_or_else(|i| i);
        for from in (0..=place).step_by(1 + place / 8).chain([place]) {
            assert_eq!(view.seek(k, from), want, "key {k} from {from}");
        }
        assert_eq!(view.find(k), want.ok(), "find {k}");
    }
    let mut at = 0;
    for &k in &probes {
        let r = view.seek(k, at);
        assert_eq!(r, keys.binary_search(&k), "walk {k}");
        at = r.unwrap_or_else(|i| i);
    }
}

fn chunk_range(key: u16) -> std::ops::RangeInclusive<u32> {
    let base = u32::from(key) << 16;
    base..=base | 0xFFFF
}

/// Runs every accessor on whatever `bytes` parse to; must never panic.
/// A view that also verifies must be self-consistent and agree with
/// roaring's own decoder.
pub(super) fn exercise(bytes: &[u8]) {
    let Ok(view) = BitmapView::parse(bytes) else {
        return;
    };
    assert!(view.serialized_len() <= bytes.len());
    let verified = view.verify().is_ok();
    let mut total = 0u64;
    let mut words = zero_words();
    for i in 0..view.containers() {
        let key = view.key(i);
        assert_eq!(view.find(key), Some(i));
        let c = view.container(i);
        assert_eq!(c.cardinality(), view.cardinality(i));
        total += u64::from(c.cardinality());
        for low in [0u16, 1, 64, 4096, 32767, 65535] {
            let _ = c.contains(low);
            let _ = view.contains(u32::from(key) << 16 | u32::from(low));
        }
        words.fill(!0);
        c.and_into(&mut words);
        c.or_into(&mut words);
        c.andnot_into(&mut words);
        c.write_into(&mut words);
        let pc = popcount(&words);
        let n = c.iter().take(70_000).count();
        if let Container::Run(r) = c {
            let _ = r.runs().count();
        }
        if verified {
            assert_eq!(pc, c.cardinality());
            assert_eq!(n, c.cardinality() as usize);
            assert!(c.iter().all(|low| c.contains(low)));
            let mut prev: Option<u16> = None;
            for low in c.iter() {
                if let Some(p) = prev {
                    assert!(p < low);
                }
                assert!(words[usize::from(low >> 6)] >> (low & 63) & 1 == 1);
                prev = Some(low);
            }
        }
    }
    assert_eq!(total, view.len());
    if verified {
        let rb = view.to_roaring();
        assert_eq!(rb.len(), view.len());
        assert!(view.iter().eq(rb.iter()));
        if let Ok(theirs) = RoaringBitmap::deserialize_from(view.as_bytes()) {
            assert_eq!(theirs, rb);
        }
    }
}

pub(super) fn edges_bytes() -> Vec<u8> {
    serialize(&[1u32, 2, 70_000, 200_000, 300_000].into_iter().collect())
}

pub(super) fn runs_few_bytes() -> Vec<u8> {
    let mut rb = range_set(&[10..=5000, u32::MAX - 100..=u32::MAX]);
    rb.optimize();
    serialize(&rb)
}

#[test]
fn fixtures_agree_with_roaring() {
    let others = others();
    for (name, rb) in fixtures() {
        eprintln!("fixture {name}");
        check_against(&rb, &others);
        check_against(&rb, std::slice::from_ref(&rb));
    }
}

#[test]
fn fixtures_cover_every_container_kind_and_header_form() {
    let all = fixtures();
    let get = |name: &str| &all.iter().find(|(n, _)| *n == name).unwrap().1;
    let view_of = |name: &str| serialize(get(name));

    let bytes = view_of("empty");
    assert_eq!(bytes.len(), 8);
    let view = BitmapView::parse(&bytes).unwrap();
    assert_eq!(
        (view.len(), view.containers(), view.serialized_len()),
        (0, 0, 8)
    );
    assert!(view.iter().next().is_none());
    assert!(!view.contains(0) && !view.contains(u32::MAX));

    let bytes = view_of("edges");
    assert_eq!(le_u32(&bytes, 0), SERIAL_COOKIE_NO_RUNCONTAINER);
    let view = BitmapView::parse(&bytes).unwrap();
    assert_eq!(kinds(&view), (4, 0, 0));
    assert_eq!(view.key(view.containers() - 1), u16::MAX);

    let view_kinds = |name: &str| {
        let bytes = view_of(name);
        kinds(&BitmapView::parse(&bytes).unwrap())
    };
    assert_eq!(view_kinds("dense"), (0, 5, 0));
    assert_eq!(view_kinds("array_bitmap_boundary"), (1, 1, 0));
    assert_eq!(view_kinds("alternating_chunk"), (0, 1, 0));
    assert_eq!(view_kinds("full_chunk_bitmap"), (0, 2, 0));
    assert_eq!(view_kinds("full_chunk_run"), (0, 0, 2));
    let (a, b, r) = view_kinds("mixed");
    assert!(a >= 1 && b >= 1 && r >= 2, "{a} {b} {r}");

    // Run cookie without offset header (< 4 containers) and with it.
    for (name, n) in [("runs_few", 2usize), ("runs_three", 3), ("runs_four", 4)] {
        let bytes = view_of(name);
        assert_eq!(le_u16(&bytes, 0), SERIAL_COOKIE, "{name}");
        assert_eq!(usize::from(le_u16(&bytes, 2)) + 1, n, "{name}");
        let view = BitmapView::parse(&bytes).unwrap();
        assert_eq!(view.containers(), n);
        assert!(view
            .iter_containers()
            .any(|(_, c)| matches!(c, Container::Run(_))));
        let has_header = matches!(view.offsets, Offsets::Header(_));
        assert_eq!(has_header, n >= NO_OFFSET_THRESHOLD, "{name}");
    }

    // A full chunk stored as one run: cardinality 65536 (header 65535).
    let bytes = view_of("full_chunk_run");
    let view = BitmapView::parse(&bytes).unwrap();
    let Container::Run(r) = view.container(0) else {
        panic!("expected a run container");
    };
    assert_eq!(
        (r.cardinality(), r.run_count(), r.run(0)),
        (65536, 1, (0, 65535))
    );
    let mut w = zero_words();
    r.or_into(&mut w);
    assert!(w.iter().all(|&x| x == !0));
}

#[test]
fn view_works_at_every_alignment() {
    let all = fixtures();
    let rb = &all.iter().find(|(n, _)| *n == "mixed").unwrap().1;
    let bytes = serialize(rb);
    for pad in 0..16 {
        let mut buf = vec![0xFFu8; pad];
        buf.extend_from_slice(&bytes);
        let view = BitmapView::parse(&buf[pad..]).unwrap();
        view.verify().unwrap();
        assert!(view.iter().eq(rb.iter()));
    }
}

/// Seeded header mutations: every outcome occurs, and whatever parses
/// and verifies is accepted by roaring's own decoder with the same set.
#[test]
fn seeded_mutations_agree_with_roaring_decoder() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5E6_0001);
    let (mut parse_err, mut verify_err, mut verified) = (0, 0, 0);
    for _ in 0..4000 {
        let mut rb = RoaringBitmap::new();
        for _ in 0..rng.gen_range(0..6) {
            let start = rng.gen_range(0..4 * 65536u32);
            if rng.gen_bool(0.5) {
                rb.insert_range(start..=start + rng.gen_range(0..20_000));
            } else {
                rb.insert(start);
            }
        }
        if rng.gen_bool(0.5) {
            rb.optimize();
        }
        let mut bytes = serialize(&rb);
        for _ in 0..rng.gen_range(1..3) {
            let i = rng.gen_range(0..bytes.len().min(80));
            bytes[i] = rng.gen();
        }
        exercise(&bytes);
        match BitmapView::parse(&bytes) {
            Err(_) => parse_err += 1,
            Ok(view) => match view.verify() {
                Err(_) => verify_err += 1,
                Ok(()) => {
                    verified += 1;
                    let theirs = RoaringBitmap::deserialize_from(view.as_bytes()).unwrap();
                    assert_eq!(theirs, view.to_roaring());
                }
            },
        }
    }
    assert!(
        parse_err > 100 && verify_err > 100 && verified > 100,
        "{parse_err} {verify_err} {verified}"
    );
}

// ---- property tests ----

fn arb_bitmap() -> impl Strategy<Value = RoaringBitmap> {
    let low_value = (0u32..6 * 65536).boxed();
    let any_value = any::<u32>().boxed();
    let item = prop_oneof![
        3 => low_value.clone().prop_map(|v| (v, 0u32)),
        1 => any_value.prop_map(|v| (v, 0u32)),
        2 => (low_value, 0u32..70_000).prop_map(|(v, n)| (v, n)),
        1 => (0u32..70_000).prop_map(|n| (u32::MAX - n, n)),
        1 => ((0u32..8).prop_map(|k| k << 16), 0u32..8000)
            .prop_map(|(base, n)| (base, n)),
    ];
    (prop::collection::vec(item, 0..40), any::<bool>(), 0u32..4).prop_map(
        |(items, optimize, stride)| {
            let mut rb = RoaringBitmap::new();
            for (start, n) in items {
                let end = start.saturating_add(n);
                if stride == 0 || n < 4 {
                    rb.insert_range(start..=end);
                } else {
                    rb.extend((start..=end).step_by(stride as usize + 1));
                }
            }
            if optimize {
                rb.optimize();
            }
            rb
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn prop_view_agrees_with_roaring(rb in arb_bitmap(), other in arb_bitmap()) {
        check_against(&rb, &[other]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn prop_mutated_bytes_never_panic(
        rb in arb_bitmap(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = serialize(&rb);
        for (i, b) in mutations {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let (buf, pad) = misaligned(&bytes);
        exercise(&buf[pad..pad + bytes.len()]);
    }

    #[test]
    fn prop_mutated_header_never_panics(
        rb in arb_bitmap(),
        mutations in prop::collection::vec((0usize..64, any::<u8>()), 1..4),
    ) {
        // Mutations aimed at the header, where the structure is decided.
        let mut bytes = serialize(&rb);
        for (i, b) in mutations {
            if i < bytes.len() {
                bytes[i] = b;
            }
        }
        exercise(&bytes);
    }

    #[test]
    fn prop_random_bytes_never_panic(
        cookie in prop_oneof![
            Just(SERIAL_COOKIE_NO_RUNCONTAINER),
            (0u32..8).prop_map(|n| u32::from(SERIAL_COOKIE) | n << 16),
            any::<u32>(),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = cookie.to_le_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        exercise(&bytes);
    }
}

#[test]
fn the_empty_view_is_the_empty_bitmap() {
    let parsed = BitmapView::parse(&EMPTY).unwrap();
    let e = BitmapView::empty();
    assert_eq!((parsed.len(), parsed.containers()), (0, 0));
    assert_eq!((e.len(), e.containers(), e.max()), (0, 0, None));
    assert!(!e.contains(0) && e.as_bytes() == serialize(&RoaringBitmap::new()));
}

#[test]
fn max_is_the_largest_value_of_every_container_kind() {
    let mut run: RoaringBitmap = (0..10).collect();
    run.insert_range(131_000..=131_071);
    run.optimize();
    for rb in [
        [5u32, 70_000, 1 << 20]
            .into_iter()
            .collect::<RoaringBitmap>(),
        (0..100_000).step_by(3).collect(),
        run,
    ] {
        let bytes = serialize(&rb);
        assert_eq!(BitmapView::parse(&bytes).unwrap().max(), rb.max());
    }
}

/// A header kept from a parse gives a view of the same bytes that reads
/// as the parsed one (every fixture, misaligned), and bytes shorter than
/// the parsed bitmap are refused.
#[test]
fn a_kept_header_views_the_same_bytes_without_parsing_again() {
    for (name, rb) in fixtures() {
        let (buf, at) = misaligned(&serialize(&rb));
        let bytes = &buf[at..];
        let parsed = BitmapView::parse(bytes).unwrap();
        let again = BitmapView::with_header(bytes, parsed.header()).unwrap();
        assert_eq!(again.header(), parsed.header(), "{name}");
        assert_eq!(again.len(), rb.len(), "{name}");
        assert!(again.iter().eq(rb.iter()), "{name}");
        let size = rb.serialized_size();
        assert!(
            BitmapView::with_header(&bytes[..size - 1], parsed.header()).is_err(),
            "{name}"
        );
    }
}
