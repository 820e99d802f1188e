//! `segq demo`: the wire examples replay through the import path with the
//! expected statuses, and the filters and one-user checks answer correctly.

use segq::demo;
use segq::segment::{self, eval};
use segq::workload::Spec;
use segq::{Partner, UserRef};

const SPEC: Spec = Spec {
    users: 5_000,
    cohorts: 50,
    seed: 7,
};

#[test]
fn demo_replays_the_wire_examples_with_the_protocol_statuses() {
    let mut out = Vec::new();
    let summary = demo::run(&mut out, SPEC).expect("the demo runs");
    // create (201), credentials check, add/remove, unmatched+refused,
    // replay, rename (200), unknown cohort_id created on first use (201),
    // malformed cohort_changes (400), wrong partner key (401).
    assert_eq!(
        summary.statuses,
        vec![201, 200, 200, 200, 200, 200, 201, 400, 401]
    );
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.contains("\"refused_device_ids\":1"), "{text}");
    assert!(text.contains(segq::import::texts::COHORT_CHANGES), "{text}");
    assert!(text.contains("Invalid Partner API key"), "{text}");
    assert!(!text.contains("not-the-key\""), "the key is never echoed");
    // The demo users are the workload's plus the six of the fixture.
    assert_eq!(summary.users, SPEC.users + 6);
    assert_eq!(summary.counts.len(), demo::demo_filters(SPEC.cohorts).len());
    let checks: Vec<(&str, bool)> = summary
        .checks
        .iter()
        .map(|(w, m)| (w.as_str(), *m))
        .collect();
    assert_eq!(
        checks,
        vec![
            ("u-1", true),
            ("u-2", false),
            ("alias:email:ann@example.com", true),
            ("device_id:web-anon-42", true),
            ("nobody-1", false),
        ]
    );
}

#[test]
fn demo_state_matches_the_wire_examples() {
    // Rebuild the demo's workspace step by step and check the cohort.
    let mut ws = segq::workload::generate("demo", SPEC).unwrap().workspace;
    demo::add_demo_users(&mut ws).unwrap();
    for (name, text) in demo::WIRE {
        demo::replay(&mut ws, name, text, demo::demo_now()).unwrap();
    }
    let c = ws.cohorts.resolve(Partner::Amplitude, "c-9f1e").unwrap();
    assert_eq!(c.name, "Power users (90d)", "renamed by 06");
    let named = |r: &str| ws.users.lookup(&UserRef::parse_cli(r).unwrap()).unwrap();
    assert!(c.members.contains(named("u-1").0).unwrap());
    assert!(c.members.contains(named("u-2").0).unwrap());
    assert!(c
        .members
        .contains(named("alias:email:ann@example.com").0)
        .unwrap());
    assert!(
        !c.members.contains(named("u-3").0).unwrap(),
        "removed by 03"
    );
    assert!(c
        .members
        .contains(named("device_id:web-anon-42").0)
        .unwrap());
    assert!(
        !c.members
            .contains(named("device_id:android-late-7").0)
            .unwrap(),
        "a device of an identified user is refused"
    );
    assert!(c
        .sync
        .recent_unmatched
        .iter()
        .any(|u| u == "user_id:nobody-1"));
    let churn = ws.cohorts.resolve(Partner::Mixpanel, "churn-risk").unwrap();
    assert_eq!(
        churn.name, "churn-risk",
        "created on first use, named by id"
    );
    // By name and by id the filter means the same.
    let by_name = segment::parse(r#"amplitude_cohorts includes "Power users (90d)""#).unwrap();
    let by_id = segment::parse(r#"amplitude_cohorts includes "c-9f1e""#).unwrap();
    assert_eq!(
        eval::count(&ws, &by_name).unwrap(),
        eval::count(&ws, &by_id).unwrap()
    );
    assert_eq!(eval::count(&ws, &by_id).unwrap(), c.len());
}
