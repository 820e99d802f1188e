//! The storage engine (src/engine/): the data directory, its configuration
//! and admin token, workspaces, data import keys and partner authorization,
//! durability and replay of every write, recovery from damaged logs, and
//! concurrent imports, reading only: one module per topic, the shared
//! helpers here.

mod buckets;
mod concurrency;
mod durability;
mod open;
mod partner_keys;
mod read_only;
mod recovery;
mod workspaces;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use segq::cohorts::CohortChange;
use segq::engine::{keys, Config, Engine, KeyInfo, NewKey, WorkspaceHandle, LOG_FILE};
use segq::import::{
    parse_cohort_request, parse_users_request, texts, CohortRequest, Credentials, ProtocolError,
    UsersRequest,
};
use segq::log::{Damage, HEADER_LEN, MAX_PAYLOAD, RECORD_HEADER_LEN};
use segq::users::{DeviceMatch, NewUser};
use segq::{CohortKey, Error, Partner, UserId, UserRef};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::new_user;
use crate::support::state::{engine_fingerprint, files_fingerprint};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Opens a data directory that must open.
fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir)
        .unwrap_or_else(|e| panic!("opening {} failed: {e}", dir.display()))
        .0
}

fn log_path(dir: &Path, workspace: &str) -> PathBuf {
    dir.join("workspaces").join(workspace).join(LOG_FILE)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

fn handle(engine: &Engine, workspace: &str) -> Arc<WorkspaceHandle> {
    engine
        .workspace(workspace)
        .unwrap_or_else(|| panic!("no workspace {workspace}"))
}

/// Noon UTC on a day of March 2024 (whole milliseconds, as the log keeps).
fn march(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, day, 12, 0, 0)
        .single()
        .expect("a valid date")
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 3, d).expect("a valid date")
}

fn partner_key(engine: &Engine, partner: Partner) -> String {
    engine.config().partner_api_keys[&partner].clone()
}

fn creds(engine: &Engine, partner: Partner, secret: &str) -> Credentials {
    Credentials {
        partner_api_key: partner_key(engine, partner),
        client_secret: secret.to_string(),
    }
}

/// Authorizes a key for a partner, returning the workspace name and key id.
fn authorized(engine: &Engine, partner: Partner, secret: &str) -> (String, String) {
    match engine.authorize(partner, &creds(engine, partner, secret)) {
        Ok((h, id)) => (h.name().to_string(), id),
        Err(e) => panic!("{partner} key refused: {e:?}"),
    }
}

/// The 401 text a request with these credentials gets.
fn refusal(
    engine: &Engine,
    partner: Partner,
    partner_api_key: &str,
    secret: &str,
) -> ProtocolError {
    let c = Credentials {
        partner_api_key: partner_api_key.to_string(),
        client_secret: secret.to_string(),
    };
    match engine.authorize(partner, &c) {
        Ok((h, id)) => panic!("expected a refusal, got workspace {} key {id}", h.name()),
        Err(e) => e,
    }
}

/// A users request as a partner client sends it, parsed and validated the
/// way the server does.
fn users_request(engine: &Engine, partner: Partner, secret: &str, body: Value) -> UsersRequest {
    let mut body = body;
    body["partner_api_key"] = json!(partner_key(engine, partner));
    body["client_secret"] = json!(secret);
    parse_users_request(&serde_json::to_vec(&body).unwrap())
        .unwrap_or_else(|e| panic!("a valid users request was refused: {e:?}"))
}

fn cohort_request(
    engine: &Engine,
    partner: Partner,
    secret: &str,
    cohort_id: &str,
    name: &str,
    created_at: &str,
) -> CohortRequest {
    let body = json!({
        "partner_api_key": partner_key(engine, partner),
        "client_secret": secret,
        "cohort_id": cohort_id,
        "name": name,
        "created_at": created_at,
    });
    parse_cohort_request(&serde_json::to_vec(&body).unwrap())
        .unwrap_or_else(|e| panic!("a valid cohort request was refused: {e:?}"))
}

/// Authorizes then imports, as the server does; the request must succeed.
fn import(
    engine: &Engine,
    partner: Partner,
    secret: &str,
    body: Value,
    now: DateTime<Utc>,
) -> segq::cohorts::ChangeReport {
    let req = users_request(engine, partner, secret, body);
    let (h, _) = engine
        .authorize(partner, &req.credentials)
        .unwrap_or_else(|e| panic!("refused: {e:?}"));
    h.import_users(partner, &req, now)
        .unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn ext(id: &str) -> UserRef {
    UserRef::ExternalId(id.to_string())
}

fn id_of(engine: &Engine, workspace: &str, external_id: &str) -> u32 {
    handle(engine, workspace)
        .read()
        .users
        .match_external_id(external_id)
        .unwrap_or_else(|| panic!("no user {external_id}"))
        .0
}

fn members(engine: &Engine, workspace: &str, partner: Partner, cohort_id: &str) -> Vec<u32> {
    let h = handle(engine, workspace);
    let ws = h.read();
    ws.cohorts
        .get(&CohortKey::new(partner, cohort_id))
        .unwrap_or_else(|| panic!("no cohort {partner}/{cohort_id}"))
        .members
        .iter()
        .expect("the cohort's bitmap reads")
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out
}

/// A workspace with users, a key and a cohort; returns the key.
fn small_workspace(engine: &Engine, name: &str) -> NewKey {
    engine.create_workspace(name).unwrap();
    let k = engine.create_key(name, Partner::Amplitude).unwrap();
    let h = handle(engine, name);
    h.upsert_users(
        (0..50)
            .map(|i| new_user(Some(&format!("u-{i}")), &[&format!("d-{i}")], &[]))
            .collect(),
    )
    .unwrap();
    import(
        engine,
        Partner::Amplitude,
        &k.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-1", "u-2", "u-3"]}]}),
        march(1),
    );
    k
}

/// A snapshot file of a small generated workspace (no keys), to restore.
fn generated_snapshot(dir: &Path) -> PathBuf {
    let spec = segq::workload::Spec {
        users: 500,
        cohorts: 3,
        seed: 11,
    };
    let (bytes, _) = segq::workload::write_snapshot("gen", spec, Vec::new()).unwrap();
    let file = dir.join("gen.segqsnap");
    fs::write(&file, bytes).unwrap();
    file
}
