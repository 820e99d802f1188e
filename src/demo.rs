//! `segq demo`: the main job on embedded data, in seconds.
//!
//! Generates the small workload, adds the users that the wire examples name
//! (`fixtures/demo/users.json`), replays the wire examples
//! (`fixtures/wire/*.json`) through [`crate::import::handle`], the code path
//! the HTTP API serves, then evaluates combined filters and one-user checks.
//! The fixtures are compiled into the binary, so the demo runs anywhere.

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::cohorts::Alias;
use crate::error::{Error, Result};
use crate::ids::{Partner, UserRef};
use crate::import::{self, texts, Credentials, Endpoint, ProtocolError};
use crate::segment::{self, eval};
use crate::users::NewUser;
use crate::workload::{self, Spec};
use crate::workspace::Workspace;

/// The demo users, compiled in.
pub const USERS: &str = include_str!("../fixtures/demo/users.json");

/// The wire examples, in replay order, compiled in.
pub const WIRE: [(&str, &str); 9] = [
    (
        "01-create-cohort.json",
        include_str!("../fixtures/wire/01-create-cohort.json"),
    ),
    (
        "02-credentials-check.json",
        include_str!("../fixtures/wire/02-credentials-check.json"),
    ),
    (
        "03-add-remove-users.json",
        include_str!("../fixtures/wire/03-add-remove-users.json"),
    ),
    (
        "04-unmatched-and-refused.json",
        include_str!("../fixtures/wire/04-unmatched-and-refused.json"),
    ),
    (
        "05-replay.json",
        include_str!("../fixtures/wire/05-replay.json"),
    ),
    (
        "06-rename-cohort.json",
        include_str!("../fixtures/wire/06-rename-cohort.json"),
    ),
    (
        "07-unknown-cohort-id.json",
        include_str!("../fixtures/wire/07-unknown-cohort-id.json"),
    ),
    (
        "08-bad-cohort-changes.json",
        include_str!("../fixtures/wire/08-bad-cohort-changes.json"),
    ),
    (
        "09-wrong-partner-key.json",
        include_str!("../fixtures/wire/09-wrong-partner-key.json"),
    ),
];

/// The demo's partner API keys and data import key (the server's
/// configuration and key store play this part).
const PARTNER_KEYS: [(Partner, &str); 2] = [
    (Partner::Amplitude, "123456-1234-1234-12345678"),
    (Partner::Mixpanel, "mixpanel-partner-key"),
];
const DATA_IMPORT_KEY: &str = "234567-2345-2345-23456789";

fn authorize(partner: Partner, c: &Credentials) -> Result<(), ProtocolError> {
    let ok = PARTNER_KEYS
        .iter()
        .any(|&(p, k)| p == partner && k == c.partner_api_key);
    if !ok {
        return Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY));
    }
    if c.client_secret != DATA_IMPORT_KEY {
        return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
    }
    Ok(())
}

#[derive(Deserialize)]
struct DemoUser {
    external_id: Option<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    aliases: Vec<Alias>,
}

#[derive(Deserialize)]
struct Identify {
    device_id: String,
    external_id: String,
}

#[derive(Deserialize)]
struct DemoUsers {
    users: Vec<DemoUser>,
    identify: Vec<Identify>,
}

#[derive(Deserialize)]
struct WireExample {
    path: String,
    body: serde_json::Value,
}

fn fixture_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("fixture {name}: {e}"))
}

/// Adds the demo users to a workspace.
pub fn add_demo_users(ws: &mut Workspace) -> Result<()> {
    let d: DemoUsers =
        serde_json::from_str(USERS).map_err(|e| fixture_error("demo/users.json", e))?;
    for u in d.users {
        ws.users.create(NewUser {
            external_id: u.external_id,
            devices: u.devices,
            aliases: u
                .aliases
                .into_iter()
                .map(|a| (a.alias_label, a.alias_name))
                .collect(),
            bucket: None,
        })?;
    }
    for i in d.identify {
        let user = ws
            .users
            .lookup(&UserRef::DeviceId(i.device_id.clone()))
            .ok_or_else(|| Error::UnknownUser(format!("device_id:{}", i.device_id)))?;
        ws.users.identify(user, &i.external_id)?;
    }
    Ok(())
}

/// Replays one wire example; returns its path and the response.
pub fn replay(
    ws: &mut Workspace,
    name: &str,
    text: &str,
    now: DateTime<Utc>,
) -> Result<(String, import::Response)> {
    let ex: WireExample = serde_json::from_str(text).map_err(|e| fixture_error(name, e))?;
    let (partner, endpoint) =
        Endpoint::route(&ex.path).ok_or_else(|| fixture_error(name, "unknown path"))?;
    let body = serde_json::to_vec(&ex.body).map_err(|e| fixture_error(name, e))?;
    let resp = import::handle(ws, partner, endpoint, &body, now, &authorize);
    Ok((ex.path, resp))
}

/// The fixed clock of the demo, so its billing lines are reproducible.
pub fn demo_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .single()
        .expect("a valid fixed date")
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// The filters the demo evaluates, in text or JSON form.
pub fn demo_filters(cohorts: u32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = workload::query_shapes(cohorts)
        .into_iter()
        .map(|(name, f)| (name.to_string(), f.to_string()))
        .collect();
    v.push((
        "a partner cohort by name, OR another partner's".into(),
        r#"amplitude_cohorts includes "Power users (90d)" or mixpanel_cohorts includes churn-risk"#
            .into(),
    ));
    v.push((
        "builder groups with an exclusion group (JSON)".into(),
        r#"{"groups": [{"combinator": "or", "filters": [
              {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c0"},
              {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"}]},
            {"filters": [{"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}],
  "groups_combinator": "and",
  "exclusions": [{"filters": [{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c1"}]}]}"#
            .into(),
    ));
    v
}

/// What the demo found, for tests.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoSummary {
    pub users: u32,
    pub statuses: Vec<u16>,
    pub counts: Vec<(String, u64)>,
    pub checks: Vec<(String, bool)>,
}

/// Runs the demo on a workload of `spec`, writing its report to `out`.
pub fn run(out: &mut dyn Write, spec: Spec) -> Result<DemoSummary> {
    let io = |e: std::io::Error| Error::Io {
        path: "<stdout>".into(),
        source: e,
    };
    let t = Instant::now();
    let mut ws = workload::generate("demo", spec)?.workspace;
    writeln!(
        out,
        "generated workspace: {} users, {} cohorts (seed {}) in {}",
        ws.users.len(),
        ws.cohorts.len(),
        spec.seed,
        fmt_duration(t.elapsed())
    )
    .map_err(io)?;
    add_demo_users(&mut ws)?;

    writeln!(
        out,
        "\nreplaying the wire examples through the import path:"
    )
    .map_err(io)?;
    let now = demo_now();
    let mut statuses = Vec::new();
    for (name, text) in WIRE {
        let (path, resp) = replay(&mut ws, name, text, now)?;
        writeln!(
            out,
            "  {name:<32} POST {path} -> {} {}",
            resp.status, resp.body
        )
        .map_err(io)?;
        statuses.push(resp.status);
    }
    for (partner, day, n) in ws.data_points_by_day() {
        writeln!(out, "  billable data points: {partner} on {day}: {n}").map_err(io)?;
    }
    if let Ok(c) = ws.cohorts.resolve(Partner::Amplitude, "c-9f1e") {
        let sample: Vec<&str> = c.sync.recent_unmatched.iter().map(String::as_str).collect();
        writeln!(
            out,
            "  cohort {} \"{}\": {} members; unmatched so far {}, e.g. {:?}",
            c.key,
            c.name,
            c.len(),
            c.sync.unmatched_total,
            sample
        )
        .map_err(io)?;
    }

    writeln!(out, "\nsegment sizes (exact, reference evaluator):").map_err(io)?;
    let mut counts = Vec::new();
    for (name, input) in demo_filters(spec.cohorts) {
        let filter = segment::parse(&input)?;
        let t = Instant::now();
        let n = eval::count(&ws, &filter)?;
        let took = t.elapsed();
        writeln!(out, "  {n:>8} users  {:>9}  {name}", fmt_duration(took)).map_err(io)?;
        writeln!(out, "           {}", filter).map_err(io)?;
        counts.push((name, n));
    }

    writeln!(out, "\none-user checks:").map_err(io)?;
    let check_filter = r#"amplitude_cohorts includes_value "c-9f1e" and not mixpanel_cohorts includes "churn-risk""#;
    let filter = segment::parse(check_filter)?;
    writeln!(out, "  filter: {check_filter}").map_err(io)?;
    let mut checks = Vec::new();
    for who in [
        "u-1",
        "u-2",
        "alias:email:ann@example.com",
        "device_id:web-anon-42",
        "nobody-1",
    ] {
        let user = UserRef::parse_cli(who)?;
        let t = Instant::now();
        let m = eval::contains(&ws, &filter, &user)?;
        let took = t.elapsed();
        let answer = match m {
            eval::Membership::Member(id) => format!("yes (user {id})"),
            eval::Membership::NotMember(id) => format!("no (user {id})"),
            eval::Membership::UnknownUser => "no: no user holds this identifier".to_string(),
        };
        writeln!(out, "  {who:<30} {answer}  ({})", fmt_duration(took)).map_err(io)?;
        checks.push((who.to_string(), m.is_member()));
    }
    Ok(DemoSummary {
        users: ws.users.len(),
        statuses,
        counts,
        checks,
    })
}
