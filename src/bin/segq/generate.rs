//! `segq generate` and `segq query`: a generated workload, described or
//! queried with the reference evaluator.

use std::io::Write;
use std::time::Instant;

use clap::Args;

use segq::segment::{self, reference};
use segq::workload::{self, CohortKind, Spec};
use segq::{Error, UserRef};

use crate::args::WorkloadArgs;
use crate::io_err;

/// `segq query`.
#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Print the members (external ids; `user_id:N` for anonymous users).
    #[arg(long)]
    members: bool,
    /// With --members, print at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Also answer whether this user is in the segment:
    /// `u42`, `external_id:u42`, `alias:email:u42@example.com` or
    /// `device_id:d42`.
    #[arg(long)]
    check: Option<String>,
    /// The filter, in the text form or as JSON (see the README).
    filter: String,
}

/// `segq query`: counts (or lists) a filter's users on a generated
/// workload, with the reference evaluator.
pub fn query(args: QueryArgs, out: &mut dyn Write) -> Result<(), Error> {
    let QueryArgs {
        workload,
        members,
        limit,
        check,
        filter,
    } = args;
    // Parse before generating: a bad filter fails at once.
    let filter = segment::parse(&filter)?;
    let check = check.as_deref().map(UserRef::parse_cli).transpose()?;
    let ws = workload::generate("query", workload.spec())?.workspace;
    let filter = segment::resolve(&ws, &filter)?;
    let t = Instant::now();
    if members {
        let ids = reference::members(&ws, &filter)?;
        for id in ids.iter().take(limit.unwrap_or(usize::MAX)) {
            writeln!(out, "{}", ws.users.display_id(*id)).map_err(io_err)?;
        }
        eprintln!("{} members in {:?}", ids.len(), t.elapsed());
    } else {
        let n = reference::count(&ws, &filter)?;
        writeln!(out, "{n}").map_err(io_err)?;
        eprintln!("counted in {:?}", t.elapsed());
    }
    if let Some(user) = check {
        let m = reference::contains(&ws, &filter, &user)?;
        let answer = match m {
            reference::Membership::Member(_) => "yes",
            reference::Membership::NotMember(_) => "no",
            reference::Membership::UnknownUser => "no (unknown user)",
        };
        writeln!(out, "{user}: {answer}").map_err(io_err)?;
    }
    Ok(())
}

/// `segq generate`: what a generated workload holds.
pub fn generate(out: &mut dyn Write, spec: Spec) -> Result<(), Error> {
    let t = Instant::now();
    let w = workload::generate("generated", spec)?;
    let took = t.elapsed();
    let ws = &w.workspace;
    let (mut anonymous, mut aliased) = (0u64, 0u64);
    for id in 0..ws.users.len() {
        if let Some(u) = ws.users.get(segq::UserId(id)) {
            anonymous += u64::from(u.is_anonymous());
            aliased += u64::from(!u.aliases.is_empty());
        }
    }
    let e = io_err;
    writeln!(
        out,
        "{} users ({} anonymous, {} with an email alias), {} cohorts, seed {}, generated in {:.2?}",
        ws.users.len(),
        anonymous,
        aliased,
        ws.cohorts.len(),
        spec.seed,
        took
    )
    .map_err(e)?;
    writeln!(
        out,
        "{:<8} {:<7} {:<22} {:>9} {:>9} {:>12}",
        "cohort", "band", "kind", "target", "actual", "members"
    )
    .map_err(e)?;
    let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
    for c in &w.cohorts {
        let kind = match c.kind {
            CohortKind::Behavioural { k } => format!("behavioural k={k}"),
            CohortKind::Clustered { start, len } => format!("clustered {start}+{len}"),
        };
        let actual = c.members as f64 / f64::from(ws.users.len());
        writeln!(
            out,
            "{:<8} {:<7} {:<22} {:>8.4}% {:>8.4}% {:>12}",
            c.cohort_id,
            c.band,
            kind,
            c.target_density * 100.0,
            actual * 100.0,
            c.members
        )
        .map_err(e)?;
        if let Ok(cohort) = ws.cohorts.resolve(workload::PARTNER, &c.cohort_id) {
            for m in cohort.members.bitmap()?.iter() {
                fingerprint = (fingerprint ^ u64::from(m)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    for b in ws.users.buckets() {
        fingerprint = (fingerprint ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    writeln!(
        out,
        "fingerprint {fingerprint:016x} (equal runs give equal fingerprints)"
    )
    .map_err(e)?;
    Ok(())
}
