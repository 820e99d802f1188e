//! `segq bench`: every row is printed, the counts are the library's, the
//! JSON form holds every figure, a kept snapshot is reused, and bad flag
//! values fail with a clear message; with `--peers`, CRoaring and
//! roaring-rs are timed beside segq and count the same; what each count
//! reads is the library's footprint of its plan.

use std::process::Output;

use serde_json::Value;

use segq::segment::reference;
use segq::workload::{self, Spec};

/// `segq bench ARGS`.
fn segq(args: &[&str]) -> Output {
    crate::support::server::segq(&[&["bench"], args].concat())
}

const TINY: [&str; 6] = ["--users", "30000", "--cohorts", "30", "--runs", "3"];

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("the output is JSON")
}

/// The reference counts of the six shapes on the tiny workload.
fn reference_counts() -> Vec<(&'static str, u64)> {
    let ws = workload::generate(
        "x",
        Spec {
            users: 30_000,
            cohorts: 30,
            seed: 42,
        },
    )
    .unwrap()
    .workspace;
    workload::query_shapes(30)
        .into_iter()
        .map(|(name, f)| (name, reference::count(&ws, &f).unwrap()))
        .collect()
}

#[test]
fn the_table_has_every_row() {
    let text = ok(&segq(&TINY));
    let lines: Vec<&str> = text.lines().collect();
    assert!(text.contains("30000 users, 30 cohorts: snapshot"), "{text}");
    assert!(text.contains("generated and written in"), "{text}");
    assert!(
        text.contains("live delta: 300 users created and, in every cohort, 30 members added"),
        "{text}"
    );
    for (i, (name, count)) in reference_counts().into_iter().enumerate() {
        let rows: Vec<&&str> = lines.iter().filter(|l| l.starts_with(name)).collect();
        // The count table, the reads table, the estimates table, and the
        // thread table for every multi-leaf shape.
        assert_eq!(rows.len(), if i == 0 { 3 } else { 4 }, "{name}: {text}");
        let printed: u64 = rows[0][name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(printed, count, "{name}");
        // Five figures (two with their p90), a reference and a speed-up.
        assert!(rows[0].trim_end().ends_with('x'), "{}", rows[0]);
        assert!(!rows[0].contains(" - "), "{}", rows[0]);
        // Containers, their MB, bucket MB, a median, GB/s, a share.
        let reads: Vec<&str> = rows[1][name.len()..].split_whitespace().collect();
        if i == 0 {
            assert!(reads.ends_with(&["-", "-"]), "reads nothing: {}", rows[1]);
        } else {
            assert!(reads[reads.len() - 1].ends_with('%'), "{}", rows[1]);
            assert!(reads[0].parse::<u64>().unwrap() > 0, "{}", rows[1]);
            assert!(rows[3].trim_end().ends_with('x'), "{}", rows[3]);
        }
        // The exact count, an estimate [interval], the chunks, two
        // timings and their ratio.
        let est: Vec<&str> = rows[2][name.len()..].split_whitespace().collect();
        assert_eq!(est[0].parse::<u64>().unwrap(), count, "{}", rows[2]);
        assert!(est[2].starts_with('['), "{}", rows[2]);
        assert!(rows[2].trim_end().ends_with('x'), "{}", rows[2]);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("estimate at a 5% chunk sample")),
        "{text}"
    );
    for start in [
        "machine read bandwidth: ",
        "reads (fast, prepared)",
        "single cohort count (c0, ",
        "one-user check (five large ANDed, Checker, ",
        "members (",
        "threads (fast, prepared)",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "no {start:?} row: {text}"
        );
    }
}

#[test]
fn the_json_form_has_every_figure() {
    let mut args = TINY.to_vec();
    args.push("--json");
    let v = json(&segq(&args));
    assert_eq!(v["runs"], 3);
    let size = &v["sizes"][0];
    assert_eq!(size["users"], 30_000);
    assert_eq!(size["cohorts"], 30);
    assert!(size["generate_ms"].as_f64().unwrap() > 0.0);
    assert!(size["open_us"].as_f64().is_some());
    assert!(size["snapshot"].is_null(), "a temporary snapshot");
    let positive = |t: &Value, what: &str| {
        assert!(t["median_ns"].as_f64().unwrap() > 0.0, "{what}: {t}");
        assert!(t["p90_ns"].as_f64().unwrap() >= t["median_ns"].as_f64().unwrap());
        assert!(
            (1..=3).contains(&t["runs"].as_u64().unwrap()),
            "{what}: {t}"
        );
    };
    let shapes = size["shapes"].as_array().unwrap();
    let expected = reference_counts();
    assert_eq!(shapes.len(), expected.len());
    for (s, (name, count)) in shapes.iter().zip(expected) {
        assert_eq!(s["shape"], name);
        assert_eq!(s["count"], count, "{name}");
        positive(&s["fast_with_planning"], name);
        positive(&s["fast_prepared"], name);
        positive(&s["fast_live"], name);
        assert!(s["live_count"].as_u64().is_some(), "{name}");
        positive(&s["reference"], name);
        assert!(s["speedup"].as_f64().unwrap() > 0.0);
        assert!(s["speedup_prepared"].as_f64().unwrap() > 0.0);
        assert!(s["peers"].is_null(), "no --peers");
        assert!(s["reads"]["container_bytes"].as_u64().is_some(), "{name}");
    }
    let bandwidth = &v["read_bandwidth"];
    assert!(bandwidth["gb_per_s"].as_f64().unwrap() > 0.0);
    assert!(bandwidth["buffer_bytes"].as_u64().unwrap() >= 256 << 20);
    assert_eq!(bandwidth["threads"], v["threads"]);
    positive(&bandwidth["timing"], "read bandwidth");
    assert!(size["peers"].is_null());
    let live = &size["live_delta"];
    assert_eq!(live["users_created"], 300, "1% of the users");
    assert_eq!(live["churn_per_cohort"], 30, "0.1% of the users");
    let single = &size["single_cohort"];
    assert_eq!(single["cohort"], "c0");
    assert_eq!(single["count"], shapes[0]["count"]);
    positive(&single["timing"], "single cohort");
    let check = &size["check"];
    assert_eq!(check["shape"], "five large ANDed");
    assert!(check["members"].as_u64().unwrap() <= check["users"].as_u64().unwrap());
    positive(&check["timing"], "check");
    let members = &size["members"];
    let listed = shapes
        .iter()
        .find(|s| s["shape"] == members["shape"])
        .unwrap();
    assert_eq!(members["members"], listed["count"]);
    positive(&members["timing"], "members");
    let estimates = size["estimates"].as_array().unwrap();
    assert_eq!(estimates.len(), shapes.len());
    for (e, s) in estimates.iter().zip(shapes) {
        let name = e["shape"].as_str().unwrap();
        assert_eq!(e["shape"], s["shape"]);
        assert_eq!(e["count"], s["count"], "{name}");
        let (low, high) = (e["low"].as_u64().unwrap(), e["high"].as_u64().unwrap());
        assert!(low <= e["estimate"].as_u64().unwrap() && e["estimate"].as_u64().unwrap() <= high);
        if e["exact_reason"].is_string() {
            assert_eq!(e["estimate"], e["count"], "{name}");
        }
        positive(&e["exact"], name);
        positive(&e["sampled"], name);
        assert!(e["ratio"].as_f64().unwrap() > 0.0);
    }
    // One cohort is answered from its stored size.
    assert!(estimates[0]["exact_reason"]
        .as_str()
        .unwrap()
        .contains("stored"));
    let threads = size["thread_scaling"].as_array().unwrap();
    assert_eq!(threads.len(), 5);
    for t in threads {
        positive(&t["one_thread"], "one thread");
        positive(&t["all_threads"], "all threads");
        assert!(t["speedup"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(v["scaling"]["users"], serde_json::json!([30_000]));
    assert_eq!(v["scaling"]["rows"].as_array().unwrap().len(), 6);
}

#[test]
fn sizes_give_a_growth_factor_and_no_reference_skips_it() {
    let v = json(&segq(&[
        "--sizes",
        "20000,2k",
        "--cohorts",
        "30",
        "--runs",
        "2",
        "--no-reference",
        "--json",
    ]));
    assert_eq!(v["scaling"]["users"], serde_json::json!([2_000, 20_000]));
    for r in v["scaling"]["rows"].as_array().unwrap() {
        assert_eq!(r["median_ns"].as_array().unwrap().len(), 2);
        assert!(r["growth_per_10x"].as_f64().unwrap() > 0.0, "{r}");
    }
    for size in v["sizes"].as_array().unwrap() {
        assert_eq!(size["reference_skipped"], "--no-reference");
        for s in size["shapes"].as_array().unwrap() {
            assert!(s["reference"].is_null() && s["speedup"].is_null());
        }
    }
}

#[test]
fn a_snapshot_file_is_kept_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.segqsnap");
    let path = file.to_str().unwrap();
    let args = [
        "--users",
        "20000",
        "--cohorts",
        "30",
        "--runs",
        "2",
        "--no-reference",
        "--json",
        "--snapshot",
        path,
    ];
    let first = json(&segq(&args));
    assert!(first["sizes"][0]["generate_ms"].as_f64().is_some());
    assert_eq!(first["sizes"][0]["snapshot"], path);
    assert!(file.exists());
    let again = json(&segq(&args[2..]));
    assert!(again["sizes"][0]["generate_ms"].is_null(), "reused");
    assert_eq!(again["sizes"][0]["users"], 20_000);
    assert_eq!(
        again["sizes"][0]["shapes"][3]["count"],
        first["sizes"][0]["shapes"][3]["count"]
    );
    // A file of another size is not silently measured as --users.
    let out = segq(&["--users", "30000", "--snapshot", path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("holds 20000 users, not --users 30000"),
        "{err}"
    );
}

#[test]
fn bad_flag_values_fail_clearly() {
    for (args, needle) in [
        (&["--sizes", "abc"][..], "invalid value 'abc' for '--sizes"),
        (&["--sizes", "1000,x"][..], "invalid value 'x' for '--sizes"),
        (&["--users", "0"][..], "invalid value '0' for '--users"),
        (&["--runs", "0"][..], "invalid value '0' for '--runs"),
        (&["--threads", "0"][..], "invalid value '0' for '--threads"),
        (
            &["--users", "1000", "--sizes", "1000"][..],
            "cannot be used with",
        ),
    ] {
        let out = segq(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = segq(&["--sizes", "abc"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("expected a number of users"), "{err}");
}

/// The six shapes' plans over a snapshot file.
fn plans(snap: &segq::snapshot::Snapshot) -> Vec<segq::segment::plan::Plan> {
    let cohorts = snap.meta().unwrap().cohorts.len() as u32;
    workload::query_shapes(cohorts)
        .iter()
        .map(|(_, f)| segq::segment::plan::plan(snap, f).unwrap())
        .collect()
}

#[test]
fn peers_are_timed_beside_segq_and_count_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.segqsnap");
    let mut args = TINY.to_vec();
    args.extend(["--peers", "--json", "--snapshot", file.to_str().unwrap()]);
    // A count of a peer that differs from segq's fails the run.
    let v = json(&segq(&args));
    let size = &v["sizes"][0];
    let how = size["peers"]["how"].as_str().unwrap();
    assert!(how.contains("random-bucket leaves precomputed"), "{how}");
    assert!(size["peers"]["load_ms"].as_f64().unwrap() > 0.0);
    let shapes = size["shapes"].as_array().unwrap();
    for (s, (name, count)) in shapes.iter().zip(reference_counts()) {
        assert_eq!(s["count"], count, "{name}");
        let segq_ns = s["fast_with_planning"]["median_ns"].as_f64().unwrap();
        for peer in ["croaring", "roaring_rs"] {
            let p = &s["peers"][peer];
            let median = p["median_ns"].as_f64().unwrap();
            assert!(median > 0.0, "{name} {peer}: {p}");
            assert!(p["p90_ns"].as_f64().unwrap() >= median, "{name} {peer}");
            // Run by run in turn with segq: as many runs each.
            assert_eq!(p["runs"], s["fast_with_planning"]["runs"], "{name} {peer}");
            let ratio = p["ratio"].as_f64().unwrap();
            assert!(
                (ratio - median / segq_ns).abs() <= 1e-9 * ratio,
                "{name} {peer}"
            );
        }
    }

    // What each count reads is the library's footprint of its plan, and
    // the GB/s are those bytes over the prepared count's median.
    let snap = segq::snapshot::Snapshot::open(&file).unwrap();
    let bandwidth = v["read_bandwidth"]["gb_per_s"].as_f64().unwrap();
    for (s, p) in shapes.iter().zip(plans(&snap)) {
        let f = segq::segment::footprint::for_snapshot(&snap, &p).unwrap();
        let name = &s["shape"];
        assert_eq!(s["reads"], serde_json::to_value(&f).unwrap(), "{name}");
        match s["read_gb_per_s"].as_f64() {
            None => assert_eq!(f.total(), 0, "{name}"),
            Some(g) => {
                let median = s["fast_prepared"]["median_ns"].as_f64().unwrap();
                assert!((g - f.total() as f64 / median).abs() <= 1e-9 * g, "{name}");
                let share = s["of_read_bandwidth"].as_f64().unwrap();
                assert!((share - g / bandwidth).abs() <= 1e-9 * share, "{name}");
            }
        }
    }
    // One cohort is counted from its cardinality; the others read
    // containers; only the mixed shape has a bucket leaf.
    let bytes = |i: usize, what: &str| shapes[i]["reads"][what].as_u64().unwrap();
    assert_eq!(bytes(0, "container_bytes"), 0);
    for i in 1..6 {
        assert!(bytes(i, "container_bytes") > 0, "{i}");
        assert_eq!(bytes(i, "bucket_bytes") > 0, i == 5, "{i}");
    }
    assert!(bytes(5, "bucket_bytes") <= 2 * 30_000);
}

#[test]
fn the_table_has_the_peers() {
    let mut args = TINY.to_vec();
    args.extend(["--peers", "--no-reference"]);
    let text = ok(&segq(&args));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("peers (count)"))
        .unwrap_or_else(|| panic!("no peers table: {text}"));
    assert!(lines[header].contains("CRoaring") && lines[header].contains("roaring-rs"));
    for (i, (name, _)) in reference_counts().into_iter().enumerate() {
        let row = lines[header + 1 + i];
        assert!(row.starts_with(name), "{row}");
        // segq's median, and each peer's median (p90) and ratio.
        let ratios = row
            .split_whitespace()
            .filter(|t| {
                t.strip_suffix('x')
                    .is_some_and(|n| n.parse::<f64>().is_ok())
            })
            .count();
        assert_eq!(ratios, 2, "{row}");
    }
    assert!(text.contains("random-bucket leaves: a bitmap per shape built before timing"));
}
