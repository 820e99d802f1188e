//! `segq loadtest` at a small size: sync clients and query clients
//! against a server on loopback with a compaction forced in the middle,
//! and the final check that every cohort holds exactly what its client
//! last had acknowledged.

use serde_json::Value;

use crate::support::server::segq_once;

#[test]
fn the_small_load_test_loses_nothing_and_reports_its_figures() {
    let out = segq_once(&[
        "loadtest",
        "--users",
        "20000",
        "--cohorts",
        "10",
        "--members",
        "3000",
        "--seconds",
        "3",
        "--sync-clients",
        "2",
        "--query-clients",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    for field in [
        "changes_per_sec",
        "count_p50_ms",
        "count_p99_ms",
        "check_p50_ms",
        "check_p99_ms",
        "compaction_ms",
    ] {
        assert!(r[field].is_number(), "{field} in {r}");
    }
    assert_eq!(
        (&r["errors"], &r["lost"], &r["extra"]),
        (&0.into(), &0.into(), &0.into()),
        "{r}"
    );
    // The first round of each client sends its 3,000 members.
    assert!(r["changes"].as_u64().unwrap() >= 6000, "{r}");
    assert!(r["rounds"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        r["counts"].as_u64().unwrap() > 0 && r["checks"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(r["during_compaction"].is_object(), "{r}");
}
