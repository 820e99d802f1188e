//! The segment API on a real server (the in-process router on loopback,
//! driven by a real HTTP client): counts with explain, estimates, the
//! breakdown, member export with cursors, targeting look-ups, saved
//! segments across a restart and a cohort rename, bad input, and the CLI
//! against the server and against the data directory. Answers are checked
//! against the reference evaluator on the same workspace.
//!
//! Also, at library level: the estimate's 95% interval covers the exact
//! count about 95% of the time.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use segq::engine::WorkspaceHandle;
use segq::query;
use segq::segment::{self, reference, BucketCmp, Filter};
use segq::users::NewUser;
use segq::workload::{self, Spec};
use segq::{Partner, UserId};
use serde_json::{json, Value};

use crate::support::server::{self, InProcess, Resp};

const WS: &str = "acme";
/// Users of the fixture: enough for several stream blocks of members.
const USERS: u32 = 10_000;

// ----- a server on loopback -----

/// Short-hands of these tests for workspace `acme`.
trait Acme {
    fn handle(&self) -> Arc<WorkspaceHandle>;
    fn ws_post(&self, path: &str, body: &Value) -> Resp;
    fn ws_get(&self, path: &str) -> Resp;
    fn partner(&self, partner: &str, path: &str, body: Value) -> Resp;
    fn reference_count(&self, filter: &Filter) -> u64;
    fn reference_members(&self, filter: &Filter) -> Vec<UserId>;
}

impl Acme for InProcess {
    fn handle(&self) -> Arc<WorkspaceHandle> {
        self.engine().workspace(WS).expect("the workspace")
    }

    /// `POST /workspaces/acme{path}`.
    fn ws_post(&self, path: &str, body: &Value) -> Resp {
        self.admin_post(&format!("/workspaces/{WS}{path}"), body)
    }

    fn ws_get(&self, path: &str) -> Resp {
        self.admin_get(&format!("/workspaces/{WS}{path}"))
    }

    /// A partner request with a fresh data import key.
    fn partner(&self, partner: &str, path: &str, mut body: Value) -> Resp {
        let p: Partner = partner.parse().expect("a partner");
        let key = self.admin_post(
            &format!("/admin/workspaces/{WS}/partners/{partner}/keys"),
            &json!({}),
        );
        let key = key.expect_json(201)["key"]
            .as_str()
            .expect("a key")
            .to_string();
        body["partner_api_key"] = json!(self.engine().config().partner_api_keys[&p]);
        body["client_secret"] = json!(key);
        self.post(&format!("/partners/{partner}{path}"), &body)
    }

    /// The exact count by the reference evaluator.
    fn reference_count(&self, filter: &Filter) -> u64 {
        reference::count(&*self.handle().read(), filter).expect("the reference counts")
    }

    fn reference_members(&self, filter: &Filter) -> Vec<UserId> {
        reference::members(&*self.handle().read(), filter).expect("the reference lists")
    }
}

/// The fixture's users: `u{i}` (every fifth anonymous), device `d{i}`,
/// alias (`email`, `u{i}@example.com`) for every tenth, a fixed bucket.
fn fixture_user(i: u32) -> NewUser {
    NewUser {
        external_id: (i % 5 != 4).then(|| format!("u{i}")),
        devices: vec![format!("d{i}")],
        aliases: if i.is_multiple_of(10) {
            vec![("email".into(), format!("u{i}@example.com"))]
        } else {
            Vec::new()
        },
        bucket: Some(bucket_of(i)),
    }
}

/// The fixture's bucket of user `i`.
fn bucket_of(i: u32) -> u16 {
    ((u64::from(i) * 7919) % 10_000) as u16
}

/// The fixture's cohorts: (partner, cohort_id, name, members).
fn fixture_cohorts() -> Vec<(&'static str, &'static str, &'static str, Vec<u32>)> {
    vec![
        (
            "amplitude",
            "c-even",
            "Even users",
            (0..USERS).step_by(2).collect(),
        ),
        (
            "amplitude",
            "c-third",
            "Every third",
            (0..USERS).step_by(3).collect(),
        ),
        (
            "amplitude",
            "c-band",
            "Recent signups",
            (2_000..8_000).collect(),
        ),
        ("amplitude", "c-vip", "VIPs", (0..60).collect()),
        ("amplitude", "c-empty", "Nobody yet", Vec::new()),
        (
            "mixpanel",
            "m-power",
            "Power users",
            (0..USERS).step_by(7).collect(),
        ),
    ]
}

/// A server on a fresh data directory with the fixture loaded: users
/// through the engine, cohorts through the partner endpoints.
fn fixture(dir: &Path) -> InProcess {
    let s = InProcess::start(dir, None);
    s.admin_post("/admin/workspaces", &json!({"name": WS}))
        .expect_json(201);
    for p in ["amplitude", "mixpanel"] {
        s.admin_post(
            &format!("/admin/workspaces/{WS}/partners/{p}/enable"),
            &json!({}),
        )
        .expect_json(200);
    }
    let report = s
        .handle()
        .upsert_users((0..USERS).map(fixture_user).collect())
        .expect("loads");
    assert_eq!(report.created, u64::from(USERS));
    for (partner, id, name, members) in fixture_cohorts() {
        let r = s.partner(
            partner,
            "/cohorts",
            json!({"cohort_id": id, "name": name, "created_at": "2024-01-01T00:00:00Z"}),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        for chunk in members.chunks(1_000) {
            let user_ids: Vec<String> = chunk
                .iter()
                .filter(|&&i| i % 5 != 4)
                .map(|i| format!("u{i}"))
                .collect();
            let device_ids: Vec<String> = chunk
                .iter()
                .filter(|&&i| i % 5 == 4)
                .map(|i| format!("d{i}"))
                .collect();
            let r = s.partner(
                partner,
                "/cohorts/users",
                json!({"cohort_id": id,
                       "cohort_changes": [{"user_ids": user_ids, "device_ids": device_ids}]}),
            );
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    s
}

fn parse(text: &str) -> Filter {
    segment::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

// ----- counts, explain, estimates, breakdown -----

/// Every operator of both forms, in one filter.
const EVERY_OPERATOR_TEXT: &str = r#"(amplitude_cohorts includes_value "c-even"
    or mixpanel_cohorts includes_value "Power users")
  and amplitude_cohorts does_not_include_value "c-vip"
  and not (random_bucket < 1000 or random_bucket > 9000)
  and (random_bucket <= 8000 and random_bucket >= 500)
  and (random_bucket between 400 and 8500 or amplitude_cohorts includes_value "Recent signups")"#;

fn every_operator_json() -> Value {
    let cohort = |p: &str, cmp: &str, v: &str| json!({"filter": format!("{p}_cohorts"), "comparison": cmp, "value": v});
    let bucket =
        |cmp: &str, v: Value| json!({"filter": "random_bucket", "comparison": cmp, "value": v});
    json!({
        "groups": [
            {"combinator": "or", "filters": [
                cohort("amplitude", "includes_value", "c-even"),
                cohort("mixpanel", "includes_value", "Power users")]},
            {"combinator": "and", "filters": [
                cohort("amplitude", "does_not_include_value", "c-vip"),
                {"not": {"or": [bucket("less_than", json!(1000)), bucket("greater_than", json!(9000))]}},
                bucket("less_than_or_equal_to", json!(8000)),
                bucket("greater_than_or_equal_to", json!(500)),
                {"or": [bucket("between", json!([400, 8500])),
                        cohort("amplitude", "includes_value", "Recent signups")]}]}
        ],
        "groups_combinator": "and",
        "exclusions": [{"combinator": "and", "filters": [
            cohort("amplitude", "includes_value", "c-third"),
            bucket("less_than", json!(3000))]}]
    })
}

#[test]
fn counts_explain_breakdown_and_estimates() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());

    // Every operator, in the text form and in the JSON form (the builder's
    // groups and exclusions), against the reference evaluator.
    let text_filter = parse(EVERY_OPERATOR_TEXT);
    let want = s.reference_count(&text_filter);
    assert!(want > 100, "a filter that keeps somebody: {want}");
    let c = s
        .ws_post("/segments/count", &json!({"filter": EVERY_OPERATOR_TEXT}))
        .expect_json(200);
    assert_eq!(c["count"], want);
    assert!(c["generation"].as_u64().is_some_and(|g| g > 0), "{c}");
    assert!(c["took_us"].is_u64());
    assert!(c.get("explain").is_none());

    let json_filter = segment::json::parse(&every_operator_json().to_string()).expect("parses");
    let want_json = s.reference_count(&json_filter);
    assert_ne!(want_json, want, "the exclusion changes the count");
    let c = s
        .ws_post("/segments/count", &json!({"filter": every_operator_json()}))
        .expect_json(200);
    assert_eq!(c["count"], want_json);
    // A JSON filter in a string is parsed as JSON.
    let c = s
        .ws_post(
            "/segments/count",
            &json!({"filter": every_operator_json().to_string()}),
        )
        .expect_json(200);
    assert_eq!(c["count"], want_json);

    // Explain: the normalised tree, leaf cardinalities in evaluation
    // order, chunks.
    let c = s
        .ws_post(
            "/segments/count?explain=true",
            &json!({"filter": "amplitude_cohorts includes_value c-third and amplitude_cohorts includes_value VIPs and not amplitude_cohorts includes_value c-even"}),
        )
        .expect_json(200);
    let e = &c["explain"];
    assert_eq!(
        c["count"],
        (0..60).filter(|i| i % 3 == 0 && i % 2 == 1).count()
    );
    assert_eq!(e["plan"]["op"], "and", "{e}");
    let order: Vec<(String, u64)> = e["evaluation_order"]
        .as_array()
        .expect("leaves")
        .iter()
        .map(|l| {
            (
                l["cohort_id"].as_str().expect("an id").to_string(),
                l["cardinality"].as_u64().expect("a cardinality"),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("c-vip".to_string(), 60),
            ("c-third".to_string(), 3_334),
            ("c-even".to_string(), 5_000)
        ],
        "smallest first, the subtracted cohort last"
    );
    assert!(e["normalised"]
        .as_str()
        .is_some_and(|t| t.contains("c-vip")));
    assert_eq!(e["chunks"]["chunks"], 1);
    assert_eq!(
        e["chunks"]["touched"].as_u64().unwrap_or(0) + e["chunks"]["skipped"].as_u64().unwrap_or(0),
        1
    );

    // Estimates: the interval and sample, the whole population exactly,
    // the same start twice the same answer.
    let exact = s.reference_count(&parse("amplitude_cohorts includes_value c-band"));
    let e = s
        .ws_post(
            "/segments/count",
            &json!({"filter": "amplitude_cohorts includes_value c-band", "estimate": true,
                    "sample_start": 9_500, "sample_buckets": 1_000}),
        )
        .expect_json(200);
    assert_eq!(e["confidence"], 0.95);
    let (est, low, high) = (
        e["estimate"].as_u64().expect("estimate"),
        e["low"].as_u64().expect("low"),
        e["high"].as_u64().expect("high"),
    );
    assert!(low <= est && est <= high, "{e}");
    assert!(low <= exact && exact <= high, "{exact} outside {e}");
    let size = e["sample_size"].as_u64().expect("a sample");
    assert!((700..1_300).contains(&size), "about a tenth: {e}");
    assert!(e["sample_matches"].as_u64().expect("matches") <= size);
    assert_eq!(
        e["sampled_ranges"],
        json!([[0, 499], [9_500, 9_999]]),
        "wraps"
    );
    assert!(e["generation"].is_u64() && e["took_us"].is_u64());
    let again = s
        .ws_post(
            "/segments/count",
            &json!({"filter": "amplitude_cohorts includes_value c-band", "estimate": true,
                    "sample_start": 9_500, "sample_buckets": 1_000}),
        )
        .expect_json(200);
    assert_eq!(again["estimate"], e["estimate"]);
    let whole = s
        .ws_post(
            "/segments/count",
            &json!({"filter": EVERY_OPERATOR_TEXT, "estimate": true, "sample_buckets": 10_000}),
        )
        .expect_json(200);
    assert_eq!(
        (
            whole["estimate"].clone(),
            whole["low"].clone(),
            whole["high"].clone()
        ),
        (json!(want), json!(want), json!(want))
    );
    assert_eq!(whole["sample_size"], USERS);
    // The bucket sample's defaults: 1,000 buckets from a random start.
    let d = s
        .ws_post(
            "/segments/count",
            &json!({"filter": "amplitude_cohorts includes_value c-even", "estimate": true,
                    "sample_start": 20}),
        )
        .expect_json(200);
    assert_eq!(d["sample_buckets"], 1_000);
    assert_eq!(d["design"], "buckets");

    // A chunk sample: `true` is the default design (5% of the chunks),
    // an object picks the trade-off. This workspace is one chunk, so
    // every one is answered exactly, and says so.
    let mixed = "amplitude_cohorts includes_value c-even and not amplitude_cohorts includes_value c-third or random_bucket < 300";
    let want_mixed = s.reference_count(&parse(mixed));
    for (ask, option, value) in [
        (json!(true), "default", json!(0.05)),
        (json!({}), "default", json!(0.05)),
        (
            json!({"sample_fraction": 0.2}),
            "sample_fraction",
            json!(0.2),
        ),
        (
            json!({"max_relative_error": 0.01}),
            "max_relative_error",
            json!(0.01),
        ),
        (json!({"budget_ms": 2}), "budget_ms", json!(2.0)),
        (json!({"budget_ms": 2, "seed": 77}), "budget_ms", json!(2.0)),
    ] {
        let e = s
            .ws_post(
                "/segments/count",
                &json!({"filter": mixed, "estimate": ask}),
            )
            .expect_json(200);
        assert_eq!(e["design"], "chunks", "{e}");
        assert_eq!(
            (&e["option"], &e["option_value"]),
            (&json!(option), &value),
            "{e}"
        );
        assert_eq!(e["exact"], true, "{e}");
        assert!(
            e["exact_reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{e}"
        );
        for k in ["estimate", "low", "high"] {
            assert_eq!(e[k], want_mixed, "{k}: {e}");
        }
        assert_eq!((&e["chunks"], &e["sample_chunks"]), (&json!(1), &json!(1)));
        assert_eq!(e["sample_users"], USERS);
        assert_eq!(e["sample_size"], USERS);
        assert_eq!(e["confidence"], 0.95);
        assert!(e["seed"].is_u64() && e["generation"].is_u64() && e["took_us"].is_u64());
        if ask.get("seed").is_some() {
            assert_eq!(e["seed"], 77);
        }
    }
    // One cohort: its stored size, on the quick path too.
    let one = s
        .ws_post(
            "/segments/count",
            &json!({"filter": "amplitude_cohorts includes_value c-even",
                    "estimate": {"sample_fraction": 0.05}}),
        )
        .expect_json(200);
    assert_eq!(
        (&one["estimate"], &one["exact"]),
        (&json!(5_000), &json!(true))
    );
    assert!(
        one["exact_reason"]
            .as_str()
            .is_some_and(|r| r.contains("stored")),
        "{one}"
    );
    // A breakdown with an estimate: the same shape per row, exact here.
    let b = s
        .ws_post(
            "/segments/breakdown",
            &json!({"filter": mixed, "estimate": {"sample_fraction": 0.1, "seed": 5}}),
        )
        .expect_json(200);
    assert_eq!(
        (&b["design"], &b["exact"], &b["seed"]),
        (&json!("chunks"), &json!(true), &json!(5))
    );
    let rows = b["rows"].as_array().expect("rows");
    let last = rows.last().expect("a row");
    for k in ["running", "running_low", "running_high"] {
        assert_eq!(last[k], want_mixed, "{k}: {b}");
    }
    assert!(
        rows.iter()
            .all(|r| r["low"] == r["count"] && r["high"] == r["count"]),
        "{b}"
    );

    // The breakdown: each top-level filter and the running count.
    let b = s
        .ws_post(
            "/segments/breakdown",
            &json!({"filter": "amplitude_cohorts includes_value c-even and amplitude_cohorts includes_value c-third and random_bucket < 5000"}),
        )
        .expect_json(200);
    assert_eq!(b["combinator"], "and");
    let rows = b["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    let parts = [
        "amplitude_cohorts includes_value c-even",
        "amplitude_cohorts includes_value c-third",
        "random_bucket < 5000",
    ];
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["filter"], parse(parts[i]).to_string());
        assert_eq!(row["count"], s.reference_count(&parse(parts[i])));
        let so_far = Filter::And(parts[..=i].iter().map(|p| parse(p)).collect());
        assert_eq!(row["running"], s.reference_count(&so_far), "row {i}");
    }
    let b = s
        .ws_post(
            "/segments/breakdown",
            &json!({"filter": {"or": [
                {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-vip"},
                {"filter": "mixpanel_cohorts", "comparison": "includes_value", "value": "m-power"}]}}),
        )
        .expect_json(200);
    assert_eq!(b["combinator"], "or");
    assert_eq!(b["rows"][0]["running"], 60);
    assert_eq!(
        b["rows"][1]["running"],
        s.reference_count(&parse(
            "amplitude_cohorts includes_value c-vip or mixpanel_cohorts includes_value m-power"
        ))
    );
}

// ----- the estimate's coverage, at library level -----

fn random_filter(rng: &mut ChaCha8Rng, cohorts: u32, depth: u32) -> Filter {
    if depth == 0 || rng.gen_bool(0.3) {
        return match rng.gen_range(0..10) {
            0 | 1 => {
                let lo = rng.gen_range(0..10_000u16);
                let hi = rng.gen_range(lo..10_000u16);
                Filter::Bucket(BucketCmp::Between(lo, hi))
            }
            2 => Filter::Bucket(BucketCmp::Lt(rng.gen_range(1..10_000u16))),
            _ => {
                let c = workload::cohort_id(rng.gen_range(0..cohorts));
                if rng.gen_bool(0.8) {
                    Filter::includes(workload::PARTNER, c)
                } else {
                    Filter::excludes(workload::PARTNER, c)
                }
            }
        };
    }
    let n = rng.gen_range(2..5);
    let children = (0..n)
        .map(|_| random_filter(rng, cohorts, depth - 1))
        .collect();
    match rng.gen_range(0..3) {
        0 => Filter::And(children),
        1 => Filter::Or(children),
        _ => Filter::And(children).not(),
    }
}

fn has_bucket(f: &Filter) -> bool {
    match f {
        Filter::Bucket(_) => true,
        Filter::Cohort { .. } | Filter::Attribute { .. } | Filter::Segment { .. } => false,
        Filter::And(c) | Filter::Or(c) => c.iter().any(has_bucket),
        Filter::Not(c) => has_bucket(c),
    }
}

/// Over 3 generated workspaces of 50k users, the query shapes and random
/// trees (with and without bucket tests), a few random sample starts each:
/// the 95% interval covers the exact count 90% to 99% of the time, both
/// over all cases and over those whose filter tests the bucket.
#[test]
fn estimate_intervals_cover_the_exact_count() {
    const COHORTS: u32 = 50;
    let (mut covered, mut cases) = (0u32, 0u32);
    let (mut b_covered, mut b_cases) = (0u32, 0u32);
    let mut misses = Vec::new();
    for seed in [101u64, 202, 303] {
        let spec = Spec {
            users: 50_000,
            cohorts: COHORTS,
            seed,
        };
        let ws = workload::generate("coverage", spec)
            .expect("generates")
            .workspace;
        let src = segq::query::SerialCache::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut filters: Vec<Filter> = workload::query_shapes(COHORTS)
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        while filters.len() < 100 {
            filters.push(random_filter(&mut rng, COHORTS, 3));
        }
        for f in &filters {
            let exact = query::count(&ws, &src, f, false).expect("counts").count;
            if exact == 0 {
                continue;
            }
            for _ in 0..4 {
                let start = rng.gen_range(0..10_000u16);
                let e = query::estimate(&ws, &src, f, start, 1_000).expect("estimates");
                assert!(e.low <= e.estimate && e.estimate <= e.high, "{e:?}");
                assert!(e.sample_matches <= e.sample_size);
                if e.sample_size >= u64::from(spec.users) {
                    assert_eq!((e.low, e.high), (exact, exact), "{f}");
                    continue;
                }
                let hit = e.low <= exact && exact <= e.high;
                cases += 1;
                covered += u32::from(hit);
                if has_bucket(f) {
                    b_cases += 1;
                    b_covered += u32::from(hit);
                }
                if !hit && misses.len() < 5 {
                    misses.push(format!("{f}: exact {exact}, {e:?}"));
                }
            }
        }
    }
    let rate = f64::from(covered) / f64::from(cases);
    let b_rate = f64::from(b_covered) / f64::from(b_cases);
    eprintln!(
        "coverage {covered}/{cases} = {rate:.3}; with bucket tests {b_covered}/{b_cases} = {b_rate:.3}"
    );
    assert!(cases > 800 && b_cases > 200, "{cases} {b_cases}");
    assert!(
        (0.90..=0.99).contains(&rate),
        "coverage {rate:.3} over {cases} cases; misses such as {misses:#?}"
    );
    assert!(
        (0.90..=0.99).contains(&b_rate),
        "coverage {b_rate:.3} over {b_cases} cases testing the bucket; misses such as {misses:#?}"
    );
}

// ----- member export -----

/// Pages through a segment with `body` (plus cursors); returns the lines
/// of every page and the number of pages.
fn export(s: &InProcess, body: &Value) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut pages = 0;
    let mut body = body.clone();
    loop {
        let r = s.ws_post("/segments/members", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        pages += 1;
        lines.extend(r.text.lines().map(String::from));
        match r.header("x-next-cursor") {
            Some(c) => body["cursor"] = json!(c),
            None => return (lines, pages),
        }
        assert!(pages < 10_000, "the cursors end");
    }
}

fn expected_line(i: u32, aliases: bool, bucket: bool) -> Value {
    let u = fixture_user(i);
    let mut v = match &u.external_id {
        Some(e) => json!({"external_id": e}),
        None => json!({"user_id": i}),
    };
    if aliases {
        v["aliases"] = u
            .aliases
            .iter()
            .map(|(l, n)| json!({"alias_label": l, "alias_name": n}))
            .collect();
    }
    if bucket {
        v["bucket"] = json!(bucket_of(i));
    }
    v
}

#[test]
fn member_export_pages_with_cursors_in_jsonl_and_csv() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let text =
        "amplitude_cohorts includes_value c-band and not amplitude_cohorts includes_value c-third";
    let want: Vec<u32> = s
        .reference_members(&parse(text))
        .into_iter()
        .map(|u| u.0)
        .collect();
    assert_eq!(want.len(), 4_000);

    // One page of everything (several stream blocks), JSON Lines.
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": text, "limit": 100_000, "fields": ["aliases", "bucket"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(r.header("x-next-cursor"), None, "one page holds them all");
    assert!(r.header("x-generation").is_some());
    let got: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let expected: Vec<Value> = want.iter().map(|&i| expected_line(i, true, true)).collect();
    assert_eq!(got, expected);
    assert!(
        got.iter().any(|v| v.get("user_id").is_some()),
        "anonymous users"
    );
    assert!(
        got.iter()
            .any(|v| v["aliases"].as_array().is_some_and(|a| !a.is_empty())),
        "aliases"
    );

    // Pages of 333 by cursor: the same members, in order, no repeats.
    let (lines, pages) = export(&s, &json!({"filter": text, "limit": 333}));
    assert_eq!(pages, 4_000usize.div_ceil(333));
    let paged: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let expected: Vec<Value> = want
        .iter()
        .map(|&i| expected_line(i, false, false))
        .collect();
    assert_eq!(paged, expected);

    // The default page is 10,000: all of c-even but the last in one page.
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": "amplitude_cohorts includes_value c-even or amplitude_cohorts includes_value c-third"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text.lines().count(), 6_667);
    assert_eq!(r.header("x-next-cursor"), None);

    // CSV, by pages of 1,500, with a header on each page.
    let (lines, pages) = export(
        &s,
        &json!({"filter": text, "format": "csv", "limit": 1_500, "fields": ["bucket", "aliases"]}),
    );
    assert_eq!(pages, 3);
    let header = "external_id,user_id,aliases,bucket";
    assert_eq!(lines.iter().filter(|l| *l == header).count(), 3);
    let rows: Vec<&String> = lines.iter().filter(|l| *l != header).collect();
    assert_eq!(rows.len(), 4_000);
    for (row, &i) in rows.iter().zip(&want) {
        let u = fixture_user(i);
        let aliases = if u.aliases.is_empty() {
            String::new()
        } else {
            format!(
                "\"[{{\"\"alias_label\"\":\"\"email\"\",\"\"alias_name\"\":\"\"u{i}@example.com\"\"}}]\""
            )
        };
        let want_row = match &u.external_id {
            Some(e) => format!("{e},,{aliases},{}", bucket_of(i)),
            None => format!(",{i},{aliases},{}", bucket_of(i)),
        };
        assert_eq!(**row, want_row);
    }
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": text, "format": "csv", "limit": 2}),
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(r.text.lines().next(), Some("external_id,user_id"));

    // An empty segment: an empty page, no cursor.
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": "amplitude_cohorts includes_value c-empty"}),
    );
    assert_eq!((r.status, r.text.as_str()), (200, ""));
    assert_eq!(r.header("x-next-cursor"), None);

    // Cursors belong to their segment; a cursor must be one.
    let r = s.ws_post("/segments/members", &json!({"filter": text, "limit": 10}));
    let cursor = r.header("x-next-cursor").expect("more pages");
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": "amplitude_cohorts includes_value c-even", "cursor": cursor}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("another segment"), "{}", r.message());
    // The same segment written otherwise (by name, as JSON) takes it.
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": {"and": [
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "Recent signups"},
            {"not": {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "Every third"}}]},
            "cursor": cursor, "limit": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        serde_json::from_str::<Value>(r.text.trim()).expect("a line"),
        expected_line(want[10], false, false)
    );
    for bad in ["nope", "", "zzzzzzzzzzzzzzzzzzzzzzzz", &cursor[..20]] {
        let r = s.ws_post("/segments/members", &json!({"filter": text, "cursor": bad}));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.message().contains("cursor"), "{}", r.message());
    }
    let r = s.ws_post("/segments/members", &json!({"filter": text, "cursor": 12}));
    assert_eq!(r.status, 400, "{}", r.text);

    // Absurd limits, unknown formats and fields.
    for (body, needle) in [
        (json!({"filter": text, "limit": 0}), "limit"),
        (json!({"filter": text, "limit": 1_000_000_000u64}), "limit"),
        (json!({"filter": text, "limit": 1_000_001}), "limit"),
        (json!({"filter": text, "limit": -5}), "limit"),
        (json!({"filter": text, "limit": "ten"}), "limit"),
        (json!({"filter": text, "format": "xml"}), "format"),
        (json!({"filter": text, "fields": ["email"]}), "fields"),
        (json!({"filter": text, "fields": "bucket"}), "fields"),
    ] {
        let r = s.ws_post("/segments/members", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.message().contains(needle), "{body}: {}", r.message());
    }
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": text, "limit": 1_000_000}),
    );
    assert_eq!(r.status, 200, "the largest page is allowed");
}

// ----- targeting look-ups -----

#[test]
fn targeting_look_ups_one_user_many_users_many_segments() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let f =
        "amplitude_cohorts includes_value c-even and not amplitude_cohorts includes_value c-vip";

    // One user by each kind of identifier.
    for (user, id, member) in [
        (json!({"external_id": "u100"}), 100, true),
        (json!({"external_id": "u10"}), 10, false),
        (json!({"external_id": "u101"}), 101, false),
        (json!({"device_id": "d104"}), 104, true),
        (json!({"device_id": "d9"}), 9, false),
        (
            json!({"alias_label": "email", "alias_name": "u200@example.com"}),
            200,
            true,
        ),
    ] {
        let r = s
            .ws_post("/segments/check", &json!({"filter": f, "user": user}))
            .expect_json(200);
        assert_eq!(r["member"], member, "{user}");
        assert_eq!(r["user_id"], id, "{user}");
        assert!(r.get("reason").is_none());
        assert!(r["generation"].is_u64());
    }
    // An unknown user: 200, not a member, and why.
    let r = s
        .ws_post(
            "/segments/check",
            &json!({"filter": f, "user": {"external_id": "nobody"}}),
        )
        .expect_json(200);
    assert_eq!(r["member"], false);
    assert!(r.get("user_id").is_none());
    assert!(
        r["reason"].as_str().is_some_and(|m| m.contains("nobody")),
        "{r}"
    );

    // Many users: answers in order, against the reference.
    let users: Vec<Value> = (0..2_000)
        .map(|i| {
            if i % 7 == 0 {
                json!({"device_id": format!("d{i}")})
            } else {
                json!({"external_id": format!("u{i}")})
            }
        })
        .chain([json!({"external_id": "ghost"})])
        .collect();
    let r = s
        .ws_post("/segments/check", &json!({"filter": f, "users": users}))
        .expect_json(200);
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 2_001);
    let members: BTreeSet<u32> = s
        .reference_members(&parse(f))
        .into_iter()
        .map(|u| u.0)
        .collect();
    for i in 0..2_000u32 {
        let known = i % 7 == 0 || i % 5 != 4;
        let res = &results[i as usize];
        if known {
            assert_eq!(res["member"], members.contains(&i), "user {i}");
            assert_eq!(res["user_id"], i);
        } else {
            // An anonymous user has no external_id: nobody holds it.
            assert_eq!(res["member"], false, "user {i}");
            assert!(res["reason"].is_string(), "user {i}: {res}");
        }
    }
    assert_eq!(results[2_000]["member"], false);
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"external_id": format!("u{i}")}))
        .collect();
    let r = s.ws_post("/segments/check", &json!({"filter": f, "users": too_many}));
    assert_eq!(r.status, 400);
    assert!(r.message().contains("10000"), "{}", r.message());
    let r = s.ws_post(
        "/segments/check",
        &json!({"filter": f, "users": [{"external_id": "u1"}, {"phone": "1"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().starts_with("users[1]"), "{}", r.message());

    // One user, many segments: saved ones and filters (the Canvas entry
    // check).
    let saved = s
        .ws_post("/segments", &json!({"name": "evens", "filter": f}))
        .expect_json(201);
    let id = saved["id"].as_str().expect("an id").to_string();
    let r = s
        .ws_post(
            "/users/segments",
            &json!({"user": {"external_id": "u300"}, "segment_ids": [id],
                    "filters": ["amplitude_cohorts includes_value c-third",
                                {"filter": "random_bucket", "comparison": "less_than", "value": 1}]}),
        )
        .expect_json(200);
    let bucket_300 = bucket_of(300);
    assert_eq!(
        r["results"],
        json!([
            {"member": true, "user_id": 300, "segment_id": id},
            {"member": true, "user_id": 300, "filter": "amplitude_cohorts includes_value \"c-third\""},
            {"member": bucket_300 < 1, "user_id": 300, "filter": "random_bucket < 1"},
        ])
    );
    let r = s
        .ws_post(
            "/users/segments",
            &json!({"user": {"alias_label": "email", "alias_name": "who@x"}, "segment_ids": [id]}),
        )
        .expect_json(200);
    assert_eq!(r["results"][0]["member"], false);
    assert!(r["results"][0]["reason"].is_string());
    let r = s.ws_post(
        "/users/segments",
        &json!({"user": {"external_id": "u1"}, "segment_ids": ["seg_nope"]}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.ws_post("/users/segments", &json!({"user": {"external_id": "u1"}}));
    assert_eq!(r.status, 400);
    let r = s.ws_post(
        "/users/segments",
        &json!({"user": {"external_id": "u1"}, "filters": ["amplitude_cohorts includes_value c-even", "bogus"]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().starts_with("filters[1]"), "{}", r.message());
    // Checks by saved segment.
    let r = s
        .ws_post(
            "/segments/check",
            &json!({"segment_id": id, "user": {"external_id": "u102"}}),
        )
        .expect_json(200);
    assert_eq!(r["member"], true);
}

// ----- saved segments -----

#[test]
fn saved_segments_survive_a_restart_and_a_cohort_rename() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());

    // Saved by cohort name: stored by cohort_id, shown as JSON and text.
    let by_name = r#"amplitude_cohorts includes_value "Recent signups" and not amplitude_cohorts includes_value "Every third""#;
    let r = s.ws_post(
        "/segments",
        &json!({"name": "Band, not thirds", "filter": by_name}),
    );
    let seg = r.expect_json(201);
    let id = seg["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("seg_"), "{id}");
    assert_eq!(
        r.header("location"),
        Some(format!("/workspaces/{WS}/segments/{id}"))
    );
    assert_eq!(seg["name"], "Band, not thirds");
    let stored = parse(
        r#"amplitude_cohorts includes_value "c-band" and not amplitude_cohorts includes_value "c-third""#,
    );
    assert_eq!(seg["text"], stored.to_string());
    assert_eq!(
        seg["filter"],
        serde_json::to_value(&stored).expect("serialises")
    );
    assert!(seg["created_at"].is_string() && seg["updated_at"].is_string());
    let want = s.reference_count(&stored);
    assert_eq!(want, 4_000);

    // Read back, listed, sized (with explain), counted and exported by id.
    assert_eq!(s.ws_get(&format!("/segments/{id}")).expect_json(200), seg);
    let other = s
        .ws_post(
            "/segments",
            &json!({"name": "VIPs", "filter": {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-vip"}}),
        )
        .expect_json(201);
    let list = s.ws_get("/segments").expect_json(200);
    let ids: BTreeSet<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([id.as_str(), other["id"].as_str().unwrap_or("")])
    );
    let size = s.ws_get(&format!("/segments/{id}/size")).expect_json(200);
    assert_eq!(
        (size["count"].clone(), size["segment_id"].clone()),
        (json!(want), json!(id))
    );
    assert!(size["generation"].is_u64() && size.get("explain").is_none());
    let size = s
        .ws_get(&format!("/segments/{id}/size?explain=true"))
        .expect_json(200);
    assert_eq!(
        size["explain"]["evaluation_order"][0]["cohort_id"],
        "c-band"
    );
    let c = s
        .ws_post("/segments/count", &json!({"segment_id": id}))
        .expect_json(200);
    assert_eq!(c["count"], want);
    let (lines, _) = export(&s, &json!({"segment_id": id, "limit": 1_500}));
    assert_eq!(lines.len(), 4_000);

    // The stored JSON form is accepted back as a filter.
    let c = s
        .ws_post("/segments/count", &json!({"filter": seg["filter"]}))
        .expect_json(200);
    assert_eq!(c["count"], want);

    // Rename; then change the filter; each keeps the other part.
    let renamed = s
        .admin_put(
            &format!("/workspaces/{WS}/segments/{id}"),
            &json!({"name": "Band minus thirds"}),
        )
        .expect_json(200);
    assert_eq!(renamed["name"], "Band minus thirds");
    assert_eq!(renamed["text"], seg["text"]);
    assert_eq!(renamed["created_at"], seg["created_at"]);
    let changed = s
        .admin_put(
            &format!("/workspaces/{WS}/segments/{id}"),
            &json!({"filter": "amplitude_cohorts includes_value \"Recent signups\" and random_bucket < 5000"}),
        )
        .expect_json(200);
    assert_eq!(changed["name"], "Band minus thirds");
    let stored = parse("amplitude_cohorts includes_value c-band and random_bucket < 5000");
    assert_eq!(changed["text"], stored.to_string());
    let want = s.reference_count(&stored);
    assert_eq!(
        s.ws_get(&format!("/segments/{id}/size")).expect_json(200)["count"],
        want
    );

    // Refused: a cohort that does not exist, a bad name, nothing to change.
    let r = s.ws_post(
        "/segments",
        &json!({"name": "ghosts", "filter": "amplitude_cohorts includes_value ghost-cohort"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.message().contains("ghost-cohort"), "{}", r.message());
    let r = s.admin_put(
        &format!("/workspaces/{WS}/segments/{id}"),
        &json!({"filter": "mixpanel_cohorts includes_value c-band"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    for body in [
        json!({"name": "", "filter": "all"}),
        json!({"name": "   ", "filter": "all"}),
        json!({"name": "x".repeat(2_000), "filter": "all"}),
        json!({"name": "no filter"}),
        json!({"filter": "all"}),
        json!({"name": "x", "filter": "all", "color": "red"}),
        json!({"name": "x", "segment_id": id}),
    ] {
        let r = s.ws_post("/segments", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
    }
    let r = s.admin_put(&format!("/workspaces/{WS}/segments/{id}"), &json!({}));
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.admin_put("/workspaces/acme/segments/seg_nope", &json!({"name": "x"}));
    assert_eq!(r.status, 404, "{}", r.text);

    // A restart: the log brings the segments back.
    let generation =
        s.ws_get(&format!("/segments/{id}/size")).expect_json(200)["generation"].clone();
    let token = s.stop();
    let s = InProcess::start(dir.path(), Some(token));
    let after = s.ws_get(&format!("/segments/{id}")).expect_json(200);
    assert_eq!(after, changed);
    let size = s.ws_get(&format!("/segments/{id}/size")).expect_json(200);
    assert_eq!(
        (size["count"].clone(), size["generation"].clone()),
        (json!(want), generation)
    );
    assert_eq!(
        s.ws_get("/segments")
            .expect_json(200)
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A cohort rename by its partner breaks nothing: the segment names the
    // cohort by id. The builder's dropdown shows the new name.
    let r = s.partner(
        "amplitude",
        "/cohorts",
        json!({"cohort_id": "c-band", "name": "Signups 2024", "created_at": "2024-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        s.ws_get(&format!("/segments/{id}/size")).expect_json(200)["count"],
        want
    );
    assert_eq!(
        s.ws_get(&format!("/segments/{id}")).expect_json(200)["text"],
        after["text"]
    );
    let cohorts = s.ws_get("/partners/amplitude/cohorts").expect_json(200);
    let band = cohorts
        .as_array()
        .expect("a list")
        .iter()
        .find(|c| c["cohort_id"] == "c-band")
        .expect("listed")
        .clone();
    assert_eq!(band["name"], "Signups 2024");
    assert_eq!(band["size"], 6_000);
    assert!(band["last_sync"].is_string(), "{band}");
    let ids: Vec<&str> = cohorts
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["cohort_id"].as_str())
        .collect();
    assert_eq!(ids, ["c-band", "c-empty", "c-even", "c-third", "c-vip"]);
    let empty = &cohorts[1];
    assert_eq!(
        (empty["size"].clone(), empty["last_sync"].clone()),
        (json!(0), Value::Null)
    );
    let mixpanel = s.ws_get("/partners/mixpanel/cohorts").expect_json(200);
    assert_eq!(mixpanel.as_array().map(Vec::len), Some(1));
    let m = &mixpanel[0];
    assert_eq!(
        (m["cohort_id"].clone(), m["name"].clone(), m["size"].clone()),
        (json!("m-power"), json!("Power users"), json!(1_429))
    );
    assert!(m["last_sync"].is_string());
    assert_eq!(
        s.ws_get("/partners/heap/cohorts").expect_json(200),
        json!([])
    );
    let r = s.ws_get("/partners/acme-analytics/cohorts");
    assert_eq!(r.status, 404, "{}", r.text);

    // Delete.
    let r = s
        .admin_delete(&format!("/workspaces/{WS}/segments/{id}"))
        .expect_json(200);
    assert_eq!(r["id"], json!(id));
    for r in [
        s.ws_get(&format!("/segments/{id}")),
        s.ws_get(&format!("/segments/{id}/size")),
        s.admin_delete(&format!("/workspaces/{WS}/segments/{id}")),
        s.ws_post("/segments/count", &json!({"segment_id": id})),
        s.ws_post("/segments/members", &json!({"segment_id": id})),
    ] {
        assert_eq!(r.status, 404, "{}", r.text);
        assert!(r.message().contains(&id), "{}", r.message());
    }
    assert_eq!(
        s.ws_get("/segments")
            .expect_json(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

// ----- bad input -----

#[test]
fn bad_input_gets_a_clear_4xx() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let ok = "amplitude_cohorts includes_value c-even";
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        // The segment.
        ("/segments/count", json!({}), 400, "missing \"filter\""),
        (
            "/segments/count",
            json!({"filter": ok, "segment_id": "seg_1"}),
            400,
            "not both",
        ),
        ("/segments/count", json!({"filter": null}), 400, "missing"),
        (
            "/segments/count",
            json!({"filter": 42}),
            400,
            "filter must be",
        ),
        (
            "/segments/count",
            json!({"filter": ["a"]}),
            400,
            "filter must be",
        ),
        (
            "/segments/count",
            json!({"segment_id": "seg_nope"}),
            404,
            "seg_nope",
        ),
        (
            "/segments/count",
            json!({"filter": "amplitude_cohorts includes_value ghost"}),
            404,
            "ghost",
        ),
        (
            "/segments/count",
            json!({"filter": "acme_cohorts includes_value c-even"}),
            400,
            "acme_cohorts",
        ),
        (
            "/segments/count",
            json!({"filter": "amplitude_cohorts equals c-even"}),
            400,
            "includes_value",
        ),
        (
            "/segments/count",
            json!({"filter": "random_bucket ~ 5"}),
            400,
            "between",
        ),
        (
            "/segments/count",
            json!({"filter": "random_bucket < 10001"}),
            400,
            "filter",
        ),
        (
            "/segments/count",
            json!({"filter": "(amplitude_cohorts includes_value c-even"}),
            400,
            "line 1",
        ),
        ("/segments/count", json!({"filter": ""}), 400, "filter"),
        (
            "/segments/count",
            json!({"filter": {"filter": "amplitude_cohorts", "comparison": "equals", "value": "c-even"}}),
            400,
            "$.comparison",
        ),
        (
            "/segments/count",
            json!({"filter": {"and": [{"filter": "random_bucket", "comparison": "between", "value": [5, 3]}]}}),
            400,
            "$.and[0]",
        ),
        (
            "/segments/count",
            json!({"filter": {"xor": []}}),
            400,
            "filter",
        ),
        (
            "/segments/count",
            json!({"filter": "{\"and\": [}"}),
            400,
            "line 1",
        ),
        // The count's own options.
        (
            "/segments/count",
            json!({"filter": ok, "estimate": "yes"}),
            400,
            "estimate",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "sample_buckets": 10}),
            400,
            "estimate",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": true, "sample_buckets": 0}),
            400,
            "sample_buckets",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": true, "sample_buckets": 10_001}),
            400,
            "sample_buckets",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": true, "sample_start": 10_000}),
            400,
            "sample_start",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": true, "sample_start": -1}),
            400,
            "sample_start",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "limit": 5}),
            400,
            "limit",
        ),
        (
            "/segments/count?explain=true",
            json!({"filter": ok, "estimate": true}),
            400,
            "explain",
        ),
        (
            "/segments/count?explain=maybe",
            json!({"filter": ok}),
            400,
            "query string",
        ),
        (
            "/segments/count?explian=true",
            json!({"filter": ok}),
            400,
            "query string",
        ),
        // Estimate options: one trade-off at most, in range, no unknown
        // key, not with the bucket sample's fields.
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"sample_fraction": 0.05, "budget_ms": 2}}),
            400,
            "not sample_fraction and budget_ms",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"sample_fraction": 0}}),
            400,
            "0 < sample_fraction <= 1",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"sample_fraction": 1.5}}),
            400,
            "sample_fraction",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"max_relative_error": 1}}),
            400,
            "0 < max_relative_error < 1",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"budget_ms": -2}}),
            400,
            "0 < budget_ms <= 60000",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"budget_ms": "2"}}),
            400,
            "budget_ms must be a number",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"sample_size": 100}}),
            400,
            "unknown option \"sample_size\"",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"seed": -1}}),
            400,
            "seed must be a whole number",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": {"sample_fraction": 0.1}, "sample_buckets": 100}),
            400,
            "not with estimate options",
        ),
        (
            "/segments/count",
            json!({"filter": ok, "estimate": 1}),
            400,
            "estimate must be true, false or an object",
        ),
        (
            "/segments/count?explain=true",
            json!({"filter": ok, "estimate": {"sample_fraction": 0.1}}),
            400,
            "explain",
        ),
        (
            "/segments/breakdown",
            json!({"filter": ok, "estimate": {"budget_ms": 0}}),
            400,
            "budget_ms",
        ),
        (
            "/segments/breakdown",
            json!({"filter": ok, "sample_buckets": 10}),
            400,
            "sample_buckets",
        ),
        // Checks.
        (
            "/segments/check",
            json!({"filter": ok}),
            400,
            "missing \"user\"",
        ),
        (
            "/segments/check",
            json!({"filter": ok, "user": {"external_id": "u1"}, "users": []}),
            400,
            "not both",
        ),
        (
            "/segments/check",
            json!({"filter": ok, "user": "u1"}),
            400,
            "user must be an object",
        ),
        (
            "/segments/check",
            json!({"filter": ok, "user": {"email": "a@x"}}),
            400,
            "unknown key",
        ),
        (
            "/segments/check",
            json!({"filter": ok, "user": {"external_id": ""}}),
            400,
            "non-empty",
        ),
        (
            "/segments/check",
            json!({"filter": ok, "users": {"external_id": "u1"}}),
            400,
            "users",
        ),
        ("/users/segments", json!({"segment_ids": []}), 400, "user"),
        (
            "/users/segments",
            json!({"user": {"external_id": "u1"}, "segment_ids": "seg_1"}),
            400,
            "segment_ids",
        ),
    ];
    for (path, body, status, needle) in cases {
        let r = s.ws_post(path, &body);
        assert_eq!(r.status, status, "{path} {body}: {}", r.text);
        assert!(
            r.message().contains(needle),
            "{path} {body}: {:?} lacks {needle:?}",
            r.message()
        );
    }

    // The workspace, the auth, the method, the body itself.
    let r = s.admin_post("/workspaces/nope/segments/count", &json!({"filter": ok}));
    assert_eq!(r.status, 404);
    assert!(r.message().contains("nope"));
    for path in [
        "/workspaces/nope/segments",
        "/workspaces/nope/segments/seg_1",
        "/workspaces/nope/segments/seg_1/size",
        "/workspaces/nope/partners/amplitude/cohorts",
    ] {
        assert_eq!(s.admin_get(path).status, 404, "{path}");
    }
    let r = s.post(
        &format!("/workspaces/{WS}/segments/count"),
        &json!({"filter": ok}),
    );
    assert_eq!(r.status, 401);
    let r = s
        .client
        .post(format!("{}/workspaces/{WS}/segments", s.base))
        .bearer_auth("not-the-token")
        .json(&json!({"name": "x", "filter": ok}))
        .send()
        .expect("answers");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(s.ws_get("/segments/count").status, 405);
    assert_eq!(
        s.admin_put(&format!("/workspaces/{WS}/segments"), &json!({}))
            .status,
        405
    );
    let key = s.workspace_key(WS).expect("a workspace key");
    let r = s
        .client
        .post(format!("{}/workspaces/{WS}/segments/count", s.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"filter\": ")
        .send()
        .expect("answers");
    assert_eq!(r.status().as_u16(), 400);
    let r = s
        .client
        .post(format!("{}/workspaces/{WS}/segments/count", s.base))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("amplitude_cohorts includes_value c-even")
        .send()
        .expect("answers");
    assert_eq!(r.status().as_u16(), 415);
    // Over the body limit: 413, unless the server's early answer reset
    // the connection while the body was still going out.
    let huge = "x".repeat(segq::engine::DEFAULT_MAX_BODY_BYTES);
    let sent = s
        .client
        .post(format!("{}/workspaces/{WS}/segments/count", s.base))
        .bearer_auth(&key)
        .json(&json!({"filter": huge}))
        .send();
    match sent {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(
            e.is_request() || e.is_body() || e.is_connect(),
            "not a reset: {e}"
        ),
    }

    // Deeply nested filters are refused, not a stack overflow.
    let deep = format!("{}all{}", "not (".repeat(5_000), ")".repeat(5_000));
    let r = s.ws_post("/segments/count", &json!({"filter": deep}));
    assert_eq!(r.status, 400, "{}", &r.text[..r.text.len().min(200)]);
    let mut nested = json!({"filter": "random_bucket", "comparison": "less_than", "value": 5});
    for _ in 0..100 {
        nested = json!({"not": nested});
    }
    let r = s.ws_post("/segments/count", &json!({"filter": nested}));
    assert_eq!(r.status, 400, "{}", r.text);
}

// ----- the CLI -----

/// Exit code, stdout and stderr of a finished `segq`.
fn text(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn segq(args: &[&str]) -> (i32, String, String) {
    text(server::segq(args))
}

fn segq_once(args: &[&str]) -> (i32, String, String) {
    text(server::segq_once(args))
}

#[test]
fn the_cli_counts_lists_and_checks_on_a_server_and_on_a_data_directory() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let data = dir.path().to_str().expect("a UTF-8 path").to_string();
    let f =
        "amplitude_cohorts includes_value c-band and not amplitude_cohorts includes_value c-third";
    let want = s.reference_count(&parse(f));
    let members: Vec<u32> = s
        .reference_members(&parse(f))
        .into_iter()
        .map(|u| u.0)
        .collect();
    let saved = s
        .ws_post("/segments", &json!({"name": "band", "filter": f}))
        .expect_json(201);
    let seg = saved["id"].as_str().expect("an id").to_string();

    // A workspace API key (the admin token reads no workspace data).
    let key = s.workspace_key(WS).expect("a workspace key");
    let server = [
        "--server",
        s.base.as_str(),
        "--token",
        key.as_str(),
        "--workspace",
        WS,
    ];
    let run = |via: &[&str], args: &[&str]| -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(via);
        segq(&all)
    };
    let json_of = |out: &str| -> Value { serde_json::from_str(out.trim()).expect("JSON output") };

    let on_server = |args: &[&str]| run(&server, args);
    let (code, out, err) = on_server(&["count", f]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["count"], want);
    let (code, out, _) = on_server(&["count", &seg, "--explain"]);
    assert_eq!(code, 0);
    assert!(json_of(&out)["explain"]["plan"].is_object());
    let (code, out, err) = on_server(&[
        "count",
        f,
        "--estimate",
        "--sample-buckets",
        "2000",
        "--sample-start",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    let est = json_of(&out);
    assert_eq!(est["sample_buckets"], 2_000);
    let (code, out, err) = on_server(&["members", f, "--limit", "1500"]);
    assert_eq!(code, 0, "{err}");
    let first: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a line"))
        .collect();
    assert_eq!(
        first,
        members[..1_500]
            .iter()
            .map(|&i| expected_line(i, false, false))
            .collect::<Vec<_>>()
    );
    let cursor = err
        .split_whitespace()
        .skip_while(|w| *w != "cursor:")
        .nth(1)
        .expect("a next cursor on stderr")
        .to_string();
    let (code, out, err) = on_server(&[
        "members", &seg, "--limit", "1500", "--cursor", &cursor, "--format", "csv", "--fields",
        "bucket",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("external_id,user_id,bucket"));
    assert_eq!(lines.count(), 1_500);
    let (code, out, err) = on_server(&["check", f, "u2000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["member"], true);
    let (code, out, _) = on_server(&["check", f, "device_id:d2004"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["user_id"], 2_004);
    let (code, out, _) = on_server(&["check", f, "alias:email:u2020@example.com"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["member"], true);
    let (code, out, _) = on_server(&["check", f, "nobody"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["member"], false);
    // Errors: the server's message, exit code 2 for bad input.
    let (code, _, err) = on_server(&["count", "amplitude_cohorts includes_value ghost"]);
    assert_eq!(code, 2);
    assert!(err.contains("404") && err.contains("ghost"), "{err}");
    let (code, _, err) = on_server(&["members", f, "--limit", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("limit"), "{err}");
    let (code, _, err) = run(
        &[
            "--server",
            s.base.as_str(),
            "--token",
            "wrong",
            "--workspace",
            WS,
        ],
        &["count", f],
    );
    assert_eq!(code, 2);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(
        &[
            "--server",
            s.base.as_str(),
            "--token",
            s.token.as_str(),
            "--workspace",
            WS,
        ],
        &["count", f],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("403") && err.contains("segments:read"),
        "{err}"
    );

    // The data directory is read (read-only) while the server runs.
    let local = ["--data", data.as_str(), "--workspace", WS];
    let (code, out, err) = segq_once(&["count", f, "--data", &data, "--workspace", WS]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["count"], want);

    // Stopped, the data directory answers the same.
    let token = s.stop();
    let (code, out, err) = run(&local, &["count", f]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["count"], want);
    let (code, out, err) = run(
        &local,
        &[
            "count",
            f,
            "--estimate",
            "--sample-buckets",
            "2000",
            "--sample-start",
            "10",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let local_est = json_of(&out);
    for k in ["estimate", "low", "high", "sample_size", "sample_matches"] {
        assert_eq!(local_est[k], est[k], "{k}");
    }
    let (code, out, err) = run(&local, &["members", &seg, "--limit", "1500"]);
    assert_eq!(code, 0, "{err}");
    let local_first: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a line"))
        .collect();
    assert_eq!(local_first, first);
    assert!(err.contains(&cursor), "the same cursor: {err}");
    let (code, out, _) = run(&local, &["check", &seg, "u2000"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["member"], true);
    let (code, _, err) = run(&local, &["count", "amplitude_cohorts equals x"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&local, &["members", f, "--cursor", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cursor"), "{err}");
    let (code, _, err) = run(&["--data", &data, "--workspace", "nope"], &["count", f]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    let missing = dir.path().join("missing");
    let (code, _, err) = run(
        &[
            "--data",
            missing.to_str().expect("UTF-8"),
            "--workspace",
            WS,
        ],
        &["count", f],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not a segq data directory"), "{err}");
    assert!(!missing.exists(), "a read command creates nothing");
    drop(token);
}

// ----- query safety: bounded filters, bound cursors, safe CSV, writers -----

/// `n` tests of c-even, ORed: `n + 1` nodes.
fn wide_or(n: usize) -> String {
    vec!["amplitude_cohorts includes_value c-even"; n].join(" or ")
}

#[test]
fn filters_past_max_filter_nodes_are_refused_on_every_endpoint() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let limit = s.engine().config().max_filter_nodes;
    assert_eq!(limit, segment::DEFAULT_MAX_FILTER_NODES);
    let over = wide_or(limit); // limit + 1 nodes
    let at = wide_or(limit - 1);
    let want = s.reference_count(&parse("amplitude_cohorts includes_value c-even"));

    // At the limit: answered.
    let r = s.ws_post("/segments/count", &json!({"filter": at}));
    assert_eq!(r.expect_json(200)["count"], want);
    let r = s.ws_post("/segments/breakdown", &json!({"filter": at}));
    assert_eq!(
        r.expect_json(200)["rows"].as_array().map(Vec::len),
        Some(limit - 1)
    );

    let refused = |r: Resp, what: &str| {
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        let m = r.message();
        assert!(
            m.contains(&format!("{} nodes", limit + 1)) && m.contains(&format!("at most {limit}")),
            "{what}: {m}"
        );
    };
    refused(
        s.ws_post("/segments/count", &json!({"filter": over})),
        "count",
    );
    refused(
        s.ws_post(
            "/segments/count",
            &json!({"filter": over, "estimate": true}),
        ),
        "estimate",
    );
    refused(
        s.ws_post("/segments/breakdown", &json!({"filter": over})),
        "breakdown",
    );
    refused(
        s.ws_post("/segments/members", &json!({"filter": over})),
        "members",
    );
    refused(
        s.ws_post(
            "/segments/check",
            &json!({"filter": over, "user": {"external_id": "u2"}}),
        ),
        "check",
    );
    refused(
        s.ws_post(
            "/segments/check",
            &json!({"filter": over, "users": [{"external_id": "u2"}, {"external_id": "u3"}]}),
        ),
        "check many",
    );
    refused(
        s.ws_post(
            "/users/segments",
            &json!({"user": {"external_id": "u2"}, "filters": ["amplitude_cohorts includes_value c-vip", over]}),
        ),
        "users/segments",
    );
    refused(
        s.ws_post("/segments", &json!({"name": "too big", "filter": over})),
        "save",
    );
    let saved = s.ws_post("/segments", &json!({"name": "fine", "filter": at}));
    let id = saved.expect_json(201)["id"]
        .as_str()
        .expect("an id")
        .to_string();
    refused(
        s.admin_put(
            &format!("/workspaces/{WS}/segments/{id}"),
            &json!({"filter": over}),
        ),
        "update",
    );
    assert_eq!(
        s.ws_get(&format!("/segments/{id}/size")).expect_json(200)["count"],
        want
    );
    assert_eq!(
        s.ws_get("/segments")
            .expect_json(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// Custom attribute and segment reference leaves work on every endpoint:
/// counts, estimates, explain, breakdown, members, checks, saved segments
/// and their sizes; an unknown attribute or segment is a 404 naming it, a
/// comparison that does not fit its attribute a 400, a cycle of segment
/// references is refused, and a segment in use cannot be deleted.
#[test]
fn attribute_and_segment_leaves_work_on_every_endpoint() {
    use segq::attributes::AttrInput;
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    // Users with an external_id (i % 5 != 4): spend = i / 2, and country
    // BR for every fourth user, DE for the others but one in ten (none).
    // Anonymous users have no attributes.
    let batch = (0..USERS)
        .filter(|i| i % 5 != 4)
        .map(|i| {
            let mut a = vec![(
                "spend".to_string(),
                AttrInput::Json(json!(f64::from(i) / 2.0)),
            )];
            if i % 10 != 9 {
                let c = if i % 4 == 0 { "BR" } else { "DE" };
                a.push(("country".to_string(), AttrInput::Json(json!(c))));
            }
            (fixture_user(i), a)
        })
        .collect();
    let r = s.handle().upsert_users_with(batch).expect("sets");
    assert!(r.failed.is_empty(), "{r:?}");
    let churned = s
        .ws_post(
            "/segments",
            &json!({"name": "churned", "filter": "amplitude_cohorts includes_value c-third"}),
        )
        .expect_json(201)["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let cases = [
        (
            json!({"and": [
                {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-even"},
                {"filter": "custom_attribute", "attribute": "country", "comparison": "does_not_equal", "value": "BR"},
                {"filter": "custom_attribute", "attribute": "spend", "comparison": "between", "value": [100, 2000.5]}
            ]}),
            (0..USERS)
                .filter(|i| {
                    i % 2 == 0
                        && i % 5 != 4
                        && (i % 4 != 0 || i % 10 == 9)
                        && (200..=4001).contains(i)
                })
                .count() as u64,
        ),
        (
            json!(format!(
                "amplitude_cohorts includes_value c-even and not_in_segment {churned}"
            )),
            (0..USERS).filter(|i| i % 2 == 0 && i % 3 != 0).count() as u64,
        ),
    ];
    for (filter, want) in &cases {
        let c = s
            .ws_post("/segments/count", &json!({"filter": filter}))
            .expect_json(200);
        assert_eq!(&c["count"], &json!(want), "{filter}: {c}");
        let e = s
            .ws_post(
                "/segments/count",
                &json!({"filter": filter, "estimate": true}),
            )
            .expect_json(200);
        assert!(e["estimate"].as_u64().is_some(), "{e}");
        let x = s
            .ws_post("/segments/count?explain=true", &json!({"filter": filter}))
            .expect_json(200);
        assert_eq!(&x["count"], &json!(want), "{x}");
        let b = s
            .ws_post("/segments/breakdown", &json!({"filter": filter}))
            .expect_json(200);
        assert!(b.to_string().contains(&want.to_string()), "{b}");
        let m = s
            .ws_post(
                "/segments/members",
                &json!({"filter": filter, "limit": 100_000}),
            )
            .expect(200);
        let listed = m
            .text
            .lines()
            .filter(|l| l.contains("\"external_id\"") || l.contains("\"user_id\""))
            .count() as u64;
        assert_eq!(listed, *want, "{filter}");
        let ch = s
            .ws_post(
                "/segments/check",
                &json!({"filter": filter, "users": [{"external_id": "u2"}, {"external_id": "u6"}]}),
            )
            .expect_json(200);
        assert!(
            ch.to_string().contains("true") || ch.to_string().contains("false"),
            "{ch}"
        );
        let saved = s
            .ws_post("/segments", &json!({"name": "mixed", "filter": filter}))
            .expect_json(201);
        let id = saved["id"].as_str().expect("an id");
        assert_eq!(
            s.ws_get(&format!("/segments/{id}/size")).expect_json(200)["count"],
            json!(want)
        );
    }
    // The user check agrees with the definition: u2 is even, not a third,
    // DE, spend 1 (outside 100..=2000.5); u6 is a third.
    let ch = s
        .ws_post(
            "/segments/check",
            &json!({"filter": cases[1].0, "user": {"external_id": "u2"}}),
        )
        .expect_json(200);
    assert_eq!(ch["member"], json!(true), "{ch}");
    // Unknown names, a comparison that does not fit, a cycle, a segment in use.
    let r = s.ws_post(
        "/segments/count",
        &json!({"filter": {"filter": "custom_attribute", "attribute": "nope", "comparison": "exists"}}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.message().contains("nope"), "{}", r.text);
    let r = s.ws_post("/segments/count", &json!({"filter": "in_segment seg_nope"}));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.ws_post(
        "/segments/count",
        &json!({"filter": {"filter": "custom_attribute", "attribute": "country", "comparison": "less_than", "value": 3}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("country"), "{}", r.text);
    let outer = s
        .ws_post(
            "/segments",
            &json!({"name": "outer", "filter": format!("in_segment {churned}")}),
        )
        .expect_json(201)["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let r = s.admin_put(
        &format!("/workspaces/{WS}/segments/{churned}"),
        &json!({"filter": format!("in_segment {outer}")}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("cycle"), "{}", r.text);
    let r = s.admin_delete(&format!("/workspaces/{WS}/segments/{churned}"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains(&outer), "{}", r.text);
}

#[test]
fn a_member_cursor_works_only_for_its_workspace_and_segment() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    // A second workspace with users of its own: the same filter reads there.
    s.admin_post("/admin/workspaces", &json!({"name": "beta"}))
        .expect_json(201);
    let beta = s.engine().workspace("beta").expect("beta");
    beta.upsert_users((0..USERS).map(fixture_user).collect())
        .expect("loads");
    let text = "random_bucket < 5000";
    let r = s.ws_post("/segments/members", &json!({"filter": text, "limit": 10}));
    assert_eq!(r.status, 200, "{}", r.text);
    let cursor = r.header("x-next-cursor").expect("more pages");

    // On its own workspace: the next page.
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": text, "limit": 10, "cursor": cursor}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // On another workspace, for the same filter: refused.
    let r = s.admin_post(
        "/workspaces/beta/segments/members",
        &json!({"filter": text, "limit": 10, "cursor": cursor}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.message().contains("another workspace"), "{}", r.message());
    // Moved to another position, or its tag changed: refused.
    let moved = format!("{:08x}{}", 20, &cursor[8..]);
    let last = if cursor.ends_with('0') { "1" } else { "0" };
    let retagged = format!("{}{last}", &cursor[..cursor.len() - 1]);
    for bad in [moved, retagged] {
        let r = s.ws_post(
            "/segments/members",
            &json!({"filter": text, "limit": 10, "cursor": bad}),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.message().contains("altered"), "{}", r.message());
    }
}

#[test]
fn csv_exports_neutralise_cells_that_read_as_formulas() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let odd = [
        "=HYPERLINK(\"http://evil.example\",\"x\")",
        "+1-555-0100",
        "-2+3",
        "@SUM(A1)",
        "\tx",
    ];
    let users: Vec<NewUser> = odd
        .iter()
        .enumerate()
        .map(|(i, e)| NewUser {
            external_id: Some(e.to_string()),
            devices: Vec::new(),
            aliases: vec![("label".into(), format!("={i}+1"))],
            bucket: Some(0),
        })
        .collect();
    let report = s.handle().upsert_users(users).expect("loads");
    assert_eq!(report.created, odd.len() as u64, "{:?}", report.failed);
    let r = s.ws_post(
        "/segments/members",
        &json!({"filter": "random_bucket < 1", "format": "csv", "fields": ["aliases"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let lines: Vec<&str> = r.text.lines().collect();
    for want in [
        "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",,",
        "'+1-555-0100,,",
        "'-2+3,,",
        "'@SUM(A1),,",
        "'\tx,,",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want:?} in {lines:?}"
        );
    }
    // No cell of the export starts with a formula character.
    for l in &lines[1..] {
        assert!(!l.starts_with(['=', '+', '-', '@', '\t']), "{l:?}");
    }
    // JSON Lines carry the values as they are.
    let r = s.ws_post("/segments/members", &json!({"filter": "random_bucket < 1"}));
    assert!(r.text.contains("\"external_id\":\"-2+3\""), "{}", r.text);
}

#[test]
fn imports_complete_while_large_breakdowns_run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let s = fixture(dir.path());
    let handle = s.handle();
    let group = [
        "amplitude_cohorts includes_value c-even",
        "amplitude_cohorts includes_value c-third",
        "mixpanel_cohorts includes_value m-power",
    ]
    .repeat(300)
    .join(" or ");
    let target = segq::query::service::Target::Filter(parse(&group));
    let before = segq::query::service::breakdown(&handle, &target, None).expect("a breakdown");

    // A frozen view holds no lock: an import completes while it exists,
    // and the view still answers for the moment it was taken.
    let (frozen, filter, generation) =
        segq::query::service::freeze(&handle, &target, false).expect("a view");
    let r = s.partner(
        "amplitude",
        "/cohorts/users",
        json!({"cohort_id": "c-even", "cohort_changes": [{"user_ids": ["u1"]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, rows) = query::breakdown_in(&frozen, &filter).expect("a breakdown");
    assert_eq!(json!(rows), before["rows"]);
    assert_eq!(json!(generation), before["generation"]);
    let after = segq::query::service::breakdown(&handle, &target, None).expect("a breakdown");
    assert_eq!(after["rows"][0]["count"], json!(USERS / 2 + 1));

    // Breakdowns in a loop on one thread, imports on this one: both finish
    // (a bounded number of each).
    let h = handle.clone();
    let t = target.clone();
    let worker = std::thread::spawn(move || {
        (0..5)
            .map(|_| segq::query::service::breakdown(&h, &t, None).map(|v| v["rows"].clone()))
            .collect::<Vec<_>>()
    });
    for i in 0..20 {
        let r = s.partner(
            "amplitude",
            "/cohorts/users",
            json!({"cohort_id": "c-vip", "cohort_changes": [{"user_ids": [format!("u{}", 100 + i)]}]}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    for rows in worker.join().expect("the breakdowns finish") {
        // c-vip is not in the group: every breakdown sees the same rows.
        assert_eq!(rows.expect("a breakdown"), after["rows"]);
    }
}
