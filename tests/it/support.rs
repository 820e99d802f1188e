//! Helpers shared by the test modules: request bodies as partner clients
//! send them, the parse-then-apply path of the HTTP API, and snapshots of a
//! workspace's whole observable state.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use segq::cohorts::{ChangeReport, Cohort};
use segq::import::{apply_users_request, parse_users_request, ProtocolError};
use segq::users::{NewUser, UserRecord};
use segq::{Partner, UserId, Workspace};
use serde_json::{json, Value};

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
    serde_json::to_vec(&json!({
        "partner_api_key": PARTNER_API_KEY,
        "client_secret": CLIENT_SECRET,
        "cohort_id": cohort_id,
        "cohort_changes": changes,
    }))
    .expect("a JSON value serialises")
}

/// What the HTTP API does with a users request: validate the whole body,
/// then apply it.
pub fn import(
    ws: &mut Workspace,
    partner: Partner,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<ChangeReport, ProtocolError> {
    let req = parse_users_request(body)?;
    Ok(apply_users_request(ws, partner, &req, now).expect("a validated request applies"))
}

/// [`import`] of a body that must be valid.
pub fn import_ok(
    ws: &mut Workspace,
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

/// Everything a workspace lets a caller observe.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub users: Vec<UserRecord>,
    pub cohorts: Vec<Cohort>,
    pub data_points: Vec<(Partner, NaiveDate, u64)>,
}

pub fn snapshot(ws: &Workspace) -> Snapshot {
    Snapshot {
        users: (0..ws.users.len())
            .map(|u| ws.users.get(UserId(u)).expect("ids are dense").clone())
            .collect(),
        cohorts: ws.cohorts.iter_sorted().into_iter().cloned().collect(),
        data_points: ws.data_points_by_day().collect(),
    }
}
