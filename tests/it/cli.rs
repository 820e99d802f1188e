//! The `segq` binary: query counts agree with the library, bad input exits
//! 2 with a positioned message, generate is deterministic.

use std::process::Command;

use segq::segment::{self, eval};
use segq::workload::{self, Spec};

fn segq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_segq"))
        .args(args)
        .output()
        .expect("segq runs")
}

const SIZE: [&str; 6] = ["--users", "3000", "--cohorts", "30", "--seed", "9"];

#[test]
fn query_prints_the_exact_count() {
    let filter = "amplitude_cohorts includes c0 and not amplitude_cohorts includes c1";
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push(filter);
    let out = segq(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ws = workload::generate(
        "x",
        Spec {
            users: 3000,
            cohorts: 30,
            seed: 9,
        },
    )
    .unwrap()
    .workspace;
    let f = segment::parse(filter).unwrap();
    assert_eq!(printed, eval::count(&ws, &f).unwrap());
}

#[test]
fn query_members_and_check() {
    let mut args = vec!["query", "--members", "--check", "u1"];
    args.extend_from_slice(&SIZE);
    args.push("random_bucket < 100");
    let out = segq(&args);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() > 5, "about 1% of 3000 users");
    assert!(lines.last().unwrap().starts_with("external_id:u1: "));
}

#[test]
fn a_bad_filter_exits_2_with_line_and_column() {
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push("amplitude_cohorts contains c0");
    let out = segq(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 1, column 19"), "{err}");
}

#[test]
fn an_unknown_cohort_exits_2() {
    let mut args = vec!["query"];
    args.extend_from_slice(&SIZE);
    args.push("amplitude_cohorts includes no-such-cohort");
    let out = segq(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no-such-cohort"));
}

#[test]
fn generate_is_deterministic() {
    let mut args = vec!["generate"];
    args.extend_from_slice(&SIZE);
    let a = segq(&args);
    let b = segq(&args);
    assert!(a.status.success());
    let fp = |o: &std::process::Output| {
        String::from_utf8(o.stdout.clone())
            .unwrap()
            .lines()
            .find(|l| l.starts_with("fingerprint"))
            .unwrap()
            .to_string()
    };
    assert_eq!(fp(&a), fp(&b));
    let other = [
        "generate",
        "--users",
        "3000",
        "--cohorts",
        "30",
        "--seed",
        "10",
    ];
    assert_ne!(fp(&a), fp(&segq(&other)));
}
