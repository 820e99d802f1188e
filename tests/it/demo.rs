//! `segq demo`: the wire examples replay through the server's partner path
//! with the expected statuses, and the filters and one-user checks answer
//! correctly.

use segq::engine::WorkspaceHandle;
use segq::examples;
use segq::segment::{self, reference};
use segq::workload::Spec;
use segq::{Partner, UserRef};

const SPEC: Spec = Spec {
    users: 5_000,
    cohorts: 50,
    seed: 7,
};

/// Runs `segq demo` on [`SPEC`]; its stdout.
fn run_demo() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segq"))
        .args(["demo", "--users", "5000", "--cohorts", "50", "--seed", "7"])
        .output()
        .expect("segq runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The lines of the section that starts with `heading`, up to the next
/// blank line.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn demo_replays_the_wire_examples_with_the_protocol_statuses() {
    let text = run_demo();
    // create (201), credentials check, add/remove, unmatched+refused,
    // replay, rename (200), unknown cohort_id created on first use (201),
    // malformed cohort_changes (400), wrong partner key (401).
    let statuses: Vec<u16> = section(&text, "replaying the wire examples")
        .iter()
        .filter_map(|l| l.split(" -> ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(statuses, vec![201, 200, 200, 200, 200, 200, 201, 400, 401]);
    assert!(text.contains("\"refused_device_ids\":1"), "{text}");
    assert!(text.contains(segq::import::texts::COHORT_CHANGES), "{text}");
    assert!(text.contains("Invalid Partner API key"), "{text}");
    assert!(!text.contains("not-the-key\""), "the key is never echoed");
    // The demo users are the workload's plus the six of the fixture.
    assert!(
        text.contains(&format!("the wire examples name: {} users", SPEC.users + 6)),
        "{text}"
    );
    let sizes = section(&text, "segment sizes");
    let counted = sizes.iter().filter(|l| l.contains(" users  ")).count();
    assert_eq!(
        counted,
        segq::workload::query_shapes(SPEC.cohorts).len() + 2,
        "{text}"
    );
    let checks: Vec<(&str, bool)> = section(&text, "one-user checks")
        .iter()
        .skip(1) // the filter
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()? == "yes"))
        })
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
fn demo_counts_are_the_reference_counts() {
    let text = run_demo();
    let ws = replayed_workspace();
    let sizes = section(&text, "segment sizes");
    let mut checked = 0;
    for pair in sizes.chunks(2) {
        let [count, filter] = pair else { continue };
        let n: u64 = count.split_whitespace().next().unwrap().parse().unwrap();
        let f = segment::parse(filter.trim()).expect("the printed filter parses");
        assert_eq!(reference::count(&ws, &f).unwrap(), n, "{filter}");
        checked += 1;
    }
    assert_eq!(
        checked,
        segq::workload::query_shapes(SPEC.cohorts).len() + 2
    );
}

/// The demo's workspace rebuilt step by step: the workload, served from
/// memory, the examples' users added and the wire examples replayed.
fn replayed_workspace() -> segq::Workspace {
    let ws = segq::workload::generate("demo", SPEC).unwrap().workspace;
    let handle = std::sync::Arc::new(WorkspaceHandle::in_memory(ws).unwrap());
    examples::add_users(&handle).unwrap();
    for (name, text) in examples::WIRE {
        examples::replay(&handle, name, text, examples::demo_now()).unwrap();
    }
    let ws = handle.read().clone();
    ws
}

#[test]
fn demo_state_matches_the_wire_examples() {
    // Rebuild the demo's workspace step by step and check the cohort.
    let ws = replayed_workspace();
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
        reference::count(&ws, &by_name).unwrap(),
        reference::count(&ws, &by_id).unwrap()
    );
    assert_eq!(reference::count(&ws, &by_id).unwrap(), c.len());
}
