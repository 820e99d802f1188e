//! Helpers shared by the test modules: request bodies as partner clients
//! send them and the parse-then-apply path of the HTTP API; the one way to
//! start a server ([`server`]) and the one fingerprint of a workspace's
//! whole observable state ([`state`]).

pub mod server;
pub mod state;

pub use state::fingerprint;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use segq::cohorts::{ChangeReport, Cohort};
use segq::engine::WorkspaceHandle;
use segq::import::{parse_users_request, ProtocolError};
use segq::users::NewUser;
use segq::{Partner, Workspace};
use serde_json::Value;

/// The partner_api_key of the PROTOCOL.md examples; the tests' servers are
/// configured with it for amplitude.
pub const PARTNER_API_KEY: &str = "123456-1234-1234-12345678";
pub const CLIENT_SECRET: &str = "234567-2345-2345-23456789";

/// Noon UTC on a day of January 2024.
pub fn jan(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, day, 12, 0, 0)
        .single()
        .expect("a valid date")
}

pub fn date(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, day).expect("a valid date")
}

/// A users request body with valid credentials.
pub fn users_body(cohort_id: &str, changes: Value) -> Vec<u8> {
    serde_json::to_vec(&server::users_body(CLIENT_SECRET, cohort_id, changes))
        .expect("a JSON value serialises")
}

/// What the HTTP API does with a users request: validate the whole body,
/// then apply it through the workspace's write path.
pub fn import(
    h: &WorkspaceHandle,
    partner: Partner,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<ChangeReport, ProtocolError> {
    let req = parse_users_request(body)?;
    Ok(h.import_users(partner, &req, now)
        .expect("a validated request applies"))
}

/// [`import`] of a body that must be valid.
pub fn import_ok(
    ws: &WorkspaceHandle,
    partner: Partner,
    cohort_id: &str,
    changes: Value,
    now: DateTime<Utc>,
) -> ChangeReport {
    import(ws, partner, &users_body(cohort_id, changes), now)
        .unwrap_or_else(|e| panic!("request for {cohort_id} refused: {e:?}"))
}

/// A cohort's members as user ids.
pub fn members(ws: &Workspace, partner: Partner, cohort_id: &str) -> Vec<u32> {
    ws.cohorts
        .get(&segq::CohortKey::new(partner, cohort_id))
        .unwrap_or_else(|| panic!("no cohort {partner}/{cohort_id}"))
        .members
        .iter()
        .expect("the cohort's bitmap reads")
        .collect()
}

pub fn cohort<'a>(ws: &'a Workspace, partner: Partner, cohort_id: &str) -> &'a Cohort {
    ws.cohorts
        .get(&segq::CohortKey::new(partner, cohort_id))
        .unwrap_or_else(|| panic!("no cohort {partner}/{cohort_id}"))
}

/// A `NewUser` from borrowed parts.
pub fn new_user(external_id: Option<&str>, devices: &[&str], aliases: &[(&str, &str)]) -> NewUser {
    NewUser {
        external_id: external_id.map(str::to_string),
        devices: devices.iter().map(|d| d.to_string()).collect(),
        aliases: aliases
            .iter()
            .map(|(l, n)| (l.to_string(), n.to_string()))
            .collect(),
        bucket: None,
    }
}

/// A snapshot file's bytes with the section of `kind` replaced by `f` of
/// it, written again so every checksum holds (damage only a writer's bug
/// could make).
pub fn rewrite_section(
    bytes: &[u8],
    kind: segq::snapshot::format::SectionKind,
    f: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    use segq::snapshot::format::SnapshotWriter;
    let snap = segq::snapshot::Snapshot::from_bytes(bytes.to_vec(), "orig").expect("opens");
    let mut w = SnapshotWriter::to_version(Vec::new(), snap.version()).expect("writes");
    let mut f = Some(f);
    for s in snap.sections() {
        let mut section = bytes[s.offset as usize..(s.offset + s.len) as usize].to_vec();
        if s.kind == kind {
            if let Some(f) = f.take() {
                f(&mut section);
            }
        }
        w.section(s.kind, &section).expect("a section");
    }
    w.finish().expect("finishes")
}
