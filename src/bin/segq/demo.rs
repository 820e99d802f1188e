//! `segq demo`: the main job on embedded data, in seconds.
//!
//! Generates the small workload and serves it from memory
//! ([`WorkspaceHandle::in_memory`]: the same handle a server serves, its
//! log on a memory file), adds the users that the wire examples name,
//! replays the wire examples through the server's partner path
//! ([`segq::examples`]), then counts combined filters and answers
//! one-user checks with the query service the server's segment API calls,
//! so it shows what a server answers.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use segq::engine::WorkspaceHandle;
use segq::examples::{self, WIRE};
use segq::ids::Partner;
use segq::query::service::{self, CountMode, Target};
use segq::segment;
use segq::workload::{self, Spec};
use segq::{Error, UserRef};

use crate::io_err;

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
fn demo_filters(cohorts: u32) -> Vec<(String, String)> {
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

/// Runs the demo on a workload of `spec`, writing its report to `out`.
pub fn run(out: &mut dyn Write, spec: Spec) -> Result<(), Error> {
    let io = io_err;
    let t = Instant::now();
    let ws = workload::generate("demo", spec)?.workspace;
    writeln!(
        out,
        "generated workspace: {} users, {} cohorts (seed {}) in {}",
        ws.users.len(),
        ws.cohorts.len(),
        spec.seed,
        fmt_duration(t.elapsed())
    )
    .map_err(io)?;
    let handle = Arc::new(WorkspaceHandle::in_memory(ws)?);
    let added = examples::add_users(&handle)?;
    writeln!(
        out,
        "added the {added} users the wire examples name: {} users",
        handle.read().users.len()
    )
    .map_err(io)?;

    writeln!(
        out,
        "\nreplaying the wire examples through the server's partner path:"
    )
    .map_err(io)?;
    let now = examples::demo_now();
    for (name, text) in WIRE {
        let r = examples::replay(&handle, name, text, now)?;
        writeln!(
            out,
            "  {name:<32} POST {} -> {} {}",
            r.path, r.status, r.body
        )
        .map_err(io)?;
    }
    {
        let ws = handle.read();
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
    }

    writeln!(
        out,
        "\nsegment sizes (exact, as the segment API counts them):"
    )
    .map_err(io)?;
    for (name, input) in demo_filters(spec.cohorts) {
        let filter = segment::parse(&input)?;
        let t = Instant::now();
        let answer = service::count(
            &handle,
            &Target::Filter(filter.clone()),
            CountMode::Exact { explain: false },
        )?;
        let took = t.elapsed();
        let n = answer["count"].as_u64().unwrap_or_default();
        writeln!(out, "  {n:>8} users  {:>9}  {name}", fmt_duration(took)).map_err(io)?;
        writeln!(out, "           {}", filter).map_err(io)?;
    }

    writeln!(out, "\none-user checks:").map_err(io)?;
    let check_filter = r#"amplitude_cohorts includes_value "c-9f1e" and not mixpanel_cohorts includes "churn-risk""#;
    let target = Target::Filter(segment::parse(check_filter)?);
    writeln!(out, "  filter: {check_filter}").map_err(io)?;
    for who in [
        "u-1",
        "u-2",
        "alias:email:ann@example.com",
        "device_id:web-anon-42",
        "nobody-1",
    ] {
        let user = UserRef::parse_cli(who)?;
        let t = Instant::now();
        let a = service::check_user(&handle, &target, &user)?;
        let took = t.elapsed();
        let answer = match (a["member"].as_bool(), a["user_id"].as_u64()) {
            (Some(true), Some(id)) => format!("yes (user {id})"),
            (_, Some(id)) => format!("no (user {id})"),
            _ => "no: no user holds this identifier".to_string(),
        };
        writeln!(out, "  {who:<30} {answer}  ({})", fmt_duration(took)).map_err(io)?;
    }
    Ok(())
}
