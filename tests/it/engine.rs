//! The storage engine (src/engine/): the data directory, its configuration
//! and admin token, workspaces, data import keys and partner authorization,
//! durability and replay of every write, recovery from damaged logs, and
//! concurrent imports.

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

fn user(external_id: Option<&str>, devices: &[&str], aliases: &[(&str, &str)]) -> NewUser {
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

// ---------------------------------------------------------------------------
// 1. Opening a data directory: configuration and admin token
// ---------------------------------------------------------------------------

#[test]
fn engine_is_shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<WorkspaceHandle>();
}

#[test]
fn first_open_creates_config_and_admin_token_and_later_opens_keep_them() {
    let dir = tempdir();
    let (engine, token) = Engine::open(dir.path()).unwrap();
    let token = token.expect("the first open generates an admin token");
    assert!(token.len() >= 32, "admin token too short: {}", token.len());
    assert!(dir.path().join("workspaces").is_dir());

    // segq.json: a non-empty, distinct partner_api_key per partner, and
    // what the engine loaded is what the file says.
    let text = fs::read(dir.path().join("segq.json")).unwrap();
    let file: Value = serde_json::from_slice(&text).unwrap();
    let mut seen = BTreeSet::new();
    for p in Partner::ALL {
        let k = file["partner_api_keys"][p.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("no partner_api_key for {p} in {file}"));
        assert!(!k.is_empty(), "empty partner_api_key for {p}");
        assert!(seen.insert(k.to_string()), "partner_api_key shared: {k}");
        assert_eq!(partner_key(&engine, p), k);
    }
    let loaded: Config = serde_json::from_slice(&text).unwrap();
    assert_eq!(&loaded, engine.config());

    // admin-token.sha256: the digest only.
    let stored = fs::read_to_string(dir.path().join("admin-token.sha256")).unwrap();
    assert_eq!(stored.trim(), keys::hex(&keys::digest(&token)));
    for (path, bytes) in all_files(dir.path()) {
        assert!(
            !contains(&bytes, token.as_bytes()),
            "the admin token is stored in {}",
            path.display()
        );
    }

    assert!(engine.check_admin_token(&token));
    for wrong in [
        "".to_string(),
        format!("{token}x"),
        token[..token.len() - 1].to_string(),
        token.to_uppercase(),
        stored.trim().to_string(),
    ] {
        assert!(!engine.check_admin_token(&wrong), "accepted {wrong:?}");
    }
    let config = engine.config().clone();
    drop(engine);

    let (again, token2) = Engine::open(dir.path()).unwrap();
    assert_eq!(token2, None, "a second open must not generate a token");
    assert!(again.check_admin_token(&token));
    assert!(!again.check_admin_token("adm_0000"));
    assert_eq!(again.config(), &config);
    assert_eq!(again.dir(), dir.path());
    assert!(again.recoveries().is_empty());
}

fn expect_config_error(dir: &Path, file: &str) -> String {
    match Engine::open(dir) {
        Err(Error::Config { path, reason }) => {
            assert!(
                path.ends_with(file) && path.starts_with(&dir.display().to_string()),
                "the error should name {file} in {}, names {path:?}",
                dir.display()
            );
            let shown = Error::Config {
                path: path.clone(),
                reason: reason.clone(),
            }
            .to_string();
            assert!(shown.contains(&path), "{shown}");
            reason
        }
        Err(e) => panic!("expected Error::Config, got {e:?}"),
        Ok(_) => panic!("a bad {file} was accepted"),
    }
}

#[test]
fn a_bad_segq_json_is_a_config_error_naming_the_file() {
    let mut good = serde_json::Map::new();
    for p in Partner::ALL {
        good.insert(p.as_str().into(), json!(format!("pk-{p}")));
    }
    let good = json!({"partner_api_keys": good});

    // The well-formed file loads as written.
    let dir = tempdir();
    fs::write(dir.path().join("segq.json"), good.to_string()).unwrap();
    let engine = open(dir.path());
    assert_eq!(partner_key(&engine, Partner::Heap), "pk-heap");
    drop(engine);

    let mut unknown_field = good.clone();
    unknown_field["rate_limit_per_hr"] = json!(10);
    let mut empty_key = good.clone();
    empty_key["partner_api_keys"]["mixpanel"] = json!("");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown field",
            unknown_field.to_string().into_bytes(),
            "rate_limit_per_hr",
        ),
        ("empty key", empty_key.to_string().into_bytes(), "mixpanel"),
        ("not JSON", b"{\"partner_api_keys\": {".to_vec(), ""),
        ("not JSON at all", b"partner_api_keys = 1".to_vec(), ""),
        ("empty file", Vec::new(), ""),
    ];
    for (what, bytes, mentioned) in cases {
        let dir = tempdir();
        fs::write(dir.path().join("segq.json"), &bytes).unwrap();
        let reason = expect_config_error(dir.path(), "segq.json");
        assert!(
            reason.contains(mentioned),
            "{what}: the reason should mention {mentioned:?}: {reason}"
        );
        // The file is left as it was.
        assert_eq!(
            fs::read(dir.path().join("segq.json")).unwrap(),
            bytes,
            "{what}"
        );
    }
}

#[test]
fn a_corrupt_admin_token_file_is_a_config_error() {
    for content in [
        "not hex at all".to_string(),
        "ab".repeat(31),                  // too short
        "ab".repeat(33),                  // too long
        format!("{}zz", "ab".repeat(31)), // not hex
        String::new(),
    ] {
        let dir = tempdir();
        drop(open(dir.path()));
        fs::write(dir.path().join("admin-token.sha256"), &content).unwrap();
        expect_config_error(dir.path(), "admin-token.sha256");
    }
}

// ---------------------------------------------------------------------------
// 2. Workspaces
// ---------------------------------------------------------------------------

#[test]
fn workspaces_are_created_once_and_names_are_checked() {
    let dir = tempdir();
    let engine = open(dir.path());
    assert!(engine.workspace_names().is_empty());
    assert!(engine.create_workspace("acme").unwrap());
    assert!(!engine.create_workspace("acme").unwrap(), "second create");
    let longest = "a".repeat(64);
    assert!(engine.create_workspace("Beta_2-x").unwrap());
    assert!(engine.create_workspace(&longest).unwrap());

    let too_long = "a".repeat(65);
    for bad in [
        "",
        too_long.as_str(),
        "a/b",
        "..",
        ".",
        "a b",
        " acme",
        "acme\n",
        "a.b",
        "a\\b",
        "é",
    ] {
        match engine.create_workspace(bad) {
            Err(Error::InvalidWorkspaceName { name }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: expected InvalidWorkspaceName, got {other:?}"),
        }
    }
    let mut expected = vec!["Beta_2-x".to_string(), "acme".to_string(), longest.clone()];
    expected.sort();
    assert_eq!(engine.workspace_names(), expected);
    assert!(engine.workspace("nope").is_none());
    assert_eq!(handle(&engine, "acme").name(), "acme");

    // Nothing was created on disk for the refused names.
    let mut on_disk: Vec<String> = fs::read_dir(dir.path().join("workspaces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected);
    assert!(!dir.path().join("a").exists(), "a/b escaped the folder");

    // Unknown workspaces.
    let unknown = |r: Result<(), Error>, what: &str| match r {
        Err(Error::UnknownWorkspace { name }) => assert_eq!(name, "nope", "{what}"),
        other => panic!("{what}: expected UnknownWorkspace, got {other:?}"),
    };
    unknown(
        engine.create_key("nope", Partner::Amplitude).map(|_| ()),
        "create_key",
    );
    unknown(engine.list_keys("nope", None).map(|_| ()), "list_keys");
    unknown(engine.invalidate_key("nope", "key_0"), "invalidate_key");
    unknown(
        engine.enable_partner("nope", Partner::Amplitude),
        "enable_partner",
    );
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(engine.workspace_names(), expected, "after reopen");
    assert!(!engine.create_workspace("acme").unwrap());
}

// ---------------------------------------------------------------------------
// 3. Data import keys and authorization
// ---------------------------------------------------------------------------

#[test]
fn a_key_is_shown_once_and_only_its_digest_is_stored() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let before = Utc::now();
    let k: NewKey = engine.create_key("acme", Partner::Amplitude).unwrap();
    let after = Utc::now();
    assert!(k.key.len() >= 32, "key too short: {}", k.key.len());
    assert!(k.key.starts_with(&k.prefix));
    assert!(
        !k.prefix.is_empty() && k.prefix.len() <= k.key.len() / 2,
        "prefix {:?} gives away too much of the key",
        k.prefix
    );
    assert_eq!(k.partner, Partner::Amplitude);
    assert!(before - chrono::Duration::milliseconds(1) <= k.created_at && k.created_at <= after);
    assert_ne!(k.id, k.key);

    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(
        listed,
        vec![KeyInfo {
            id: k.id.clone(),
            partner: Partner::Amplitude,
            prefix: k.prefix.clone(),
            created_at: k.created_at,
            last_used: None,
            invalidated_at: None,
        }]
    );
    let listed_json = serde_json::to_string(&listed).unwrap();
    assert!(!listed_json.contains(&k.key), "listing shows the key");

    // last_used: set by an authorization, for that key only.
    let other = engine.create_key("acme", Partner::Amplitude).unwrap();
    let used_from = Utc::now();
    authorized(&engine, Partner::Amplitude, &k.key);
    let used_to = Utc::now();
    let listed = engine.list_keys("acme", Some(Partner::Amplitude)).unwrap();
    let of = |id: &str| listed.iter().find(|i| i.id == id).unwrap().clone();
    let used = of(&k.id).last_used.expect("last_used after a request");
    assert!(
        used_from - chrono::Duration::milliseconds(1) <= used && used <= used_to,
        "last_used {used} not within {used_from}..{used_to}"
    );
    assert_eq!(of(&other.id).last_used, None);
    assert!(engine
        .list_keys("acme", Some(Partner::Mixpanel))
        .unwrap()
        .is_empty());

    // Nowhere on disk: only the digest is.
    engine.sync_all().unwrap();
    let log = fs::read(log_path(dir.path(), "acme")).unwrap();
    assert!(
        contains(&log, &keys::digest(&k.key)),
        "the log should hold the key's digest"
    );
    for (path, bytes) in all_files(dir.path()) {
        for secret in [&k.key, &other.key] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "a key is stored in {}",
                path.display()
            );
            let hex = keys::hex(secret.as_bytes());
            assert!(!contains(&bytes, hex.as_bytes()), "{}", path.display());
        }
    }
    drop(engine);
    // Reopened: the key still works, found by its digest.
    let engine = open(dir.path());
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &k.key),
        ("acme".to_string(), k.id.clone())
    );
}

#[test]
fn authorization_checks_partner_key_then_secret_then_partner() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let amp = engine.create_key("acme", Partner::Amplitude).unwrap();

    assert_eq!(
        authorized(&engine, Partner::Amplitude, &amp.key),
        ("acme".to_string(), amp.id.clone())
    );
    let unauthorized = |e: ProtocolError, text: &'static str| {
        assert_eq!(e, ProtocolError::Unauthorized(text));
        assert_eq!(e.status(), 401);
        assert!(!e.body().to_string().contains(&amp.key), "secret echoed");
    };
    let amp_pk = partner_key(&engine, Partner::Amplitude);
    let mix_pk = partner_key(&engine, Partner::Mixpanel);

    // Wrong partner_api_key: another partner's, a near miss, empty.
    for pk in [mix_pk.clone(), format!("{amp_pk}x"), String::new()] {
        unauthorized(
            refusal(&engine, Partner::Amplitude, &pk, &amp.key),
            texts::BAD_PARTNER_KEY,
        );
    }
    // The partner_api_key is checked first, even with an unknown secret.
    unauthorized(
        refusal(&engine, Partner::Amplitude, "nope", "nope"),
        texts::BAD_PARTNER_KEY,
    );
    // Unknown client_secret.
    for secret in [
        "234567-2345-2345-23456789".to_string(),
        format!("{}0", amp.key),
        amp.key.to_uppercase(),
        amp.prefix.clone(),
        amp.id.clone(),
        keys::hex(&keys::digest(&amp.key)),
    ] {
        unauthorized(
            refusal(&engine, Partner::Amplitude, &amp_pk, &secret),
            texts::BAD_CLIENT_SECRET,
        );
    }
    // An amplitude key on /partners/mixpanel, with mixpanel's partner key.
    unauthorized(
        refusal(&engine, Partner::Mixpanel, &mix_pk, &amp.key),
        texts::PARTNER_NOT_ENABLED,
    );
    // Even once mixpanel is enabled for the workspace: the key is amplitude's.
    engine.enable_partner("acme", Partner::Mixpanel).unwrap();
    unauthorized(
        refusal(&engine, Partner::Mixpanel, &mix_pk, &amp.key),
        texts::PARTNER_NOT_ENABLED,
    );
    let mix = engine.create_key("acme", Partner::Mixpanel).unwrap();
    assert_eq!(authorized(&engine, Partner::Mixpanel, &mix.key).1, mix.id);
    unauthorized(
        refusal(&engine, Partner::Amplitude, &amp_pk, &mix.key),
        texts::PARTNER_NOT_ENABLED,
    );
}

#[test]
fn keys_rotate_and_invalidate_and_it_survives_reopen() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    assert!(handle(&engine, "acme").read().enabled_partners.is_empty());
    let first = engine.create_key("acme", Partner::Amplitude).unwrap();
    assert_eq!(
        handle(&engine, "acme")
            .read()
            .enabled_partners
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![Partner::Amplitude],
        "the first key enables its partner"
    );
    let second = engine.create_key("acme", Partner::Amplitude).unwrap();
    assert_ne!(first.id, second.id);
    assert_ne!(first.key, second.key);
    // Both valid during the rotation.
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &first.key).1,
        first.id
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );

    let at = Utc::now();
    engine.invalidate_key("acme", &first.id).unwrap();
    let pk = partner_key(&engine, Partner::Amplitude);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &first.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );
    // Invalidating twice is harmless; an unknown id is an error.
    engine.invalidate_key("acme", &first.id).unwrap();
    match engine.invalidate_key("acme", "key_does_not_exist") {
        Err(Error::UnknownKey { id }) => assert_eq!(id, "key_does_not_exist"),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    // A key id of another workspace is unknown here.
    engine.create_workspace("other").unwrap();
    assert!(matches!(
        engine.invalidate_key("other", &second.id),
        Err(Error::UnknownKey { .. })
    ));
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );

    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(listed.len(), 2, "invalidated keys stay listed");
    let inv = listed.iter().find(|k| k.id == first.id).unwrap();
    let inv_at = inv.invalidated_at.expect("invalidated_at");
    assert!(inv_at >= at - chrono::Duration::milliseconds(1));
    assert_eq!(
        listed
            .iter()
            .find(|k| k.id == second.id)
            .unwrap()
            .invalidated_at,
        None
    );
    let before = engine_fingerprint(&engine);
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), before);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &first.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET),
        "an invalidated key must stay invalid after a restart"
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &second.key).1,
        second.id
    );
    let listed = engine.list_keys("acme", None).unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|k| k.id == first.id)
            .unwrap()
            .invalidated_at,
        Some(inv_at)
    );
    // The last key can go too: the partner stays enabled, no key works.
    engine.invalidate_key("acme", &second.id).unwrap();
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &second.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &second.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
}

#[test]
fn enable_partner_without_a_key_and_keys_lead_to_their_own_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    engine.create_workspace("beta").unwrap();

    engine.enable_partner("acme", Partner::Heap).unwrap();
    engine.enable_partner("acme", Partner::Heap).unwrap(); // idempotent
    assert!(handle(&engine, "acme")
        .read()
        .enabled_partners
        .contains(&Partner::Heap));
    assert!(engine.list_keys("acme", None).unwrap().is_empty());
    assert!(handle(&engine, "beta").read().enabled_partners.is_empty());

    let a = engine.create_key("acme", Partner::Amplitude).unwrap();
    let b = engine.create_key("beta", Partner::Amplitude).unwrap();
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &a.key),
        ("acme".to_string(), a.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &b.key),
        ("beta".to_string(), b.id.clone())
    );
    // Each workspace lists its own keys only.
    let ids = |w: &str| -> Vec<String> {
        engine
            .list_keys(w, None)
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect()
    };
    assert_eq!(ids("acme"), vec![a.id.clone()]);
    assert_eq!(ids("beta"), vec![b.id.clone()]);

    // An import through each key lands in its workspace only.
    for (w, key) in [("acme", &a.key), ("beta", &b.key)] {
        engine
            .workspace(w)
            .unwrap()
            .upsert_user(user(Some(&format!("{w}-user")), &[], &[]))
            .unwrap();
        let r = import(
            &engine,
            Partner::Amplitude,
            key,
            json!({"cohort_id": "c", "cohort_changes": [
                {"user_ids": ["acme-user", "beta-user"]}]}),
            march(1),
        );
        assert_eq!((r.matched, r.unmatched), (1, 1), "{w}");
    }
    assert_eq!(members(&engine, "acme", Partner::Amplitude, "c"), vec![0]);
    assert_eq!(members(&engine, "beta", Partner::Amplitude, "c"), vec![0]);
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), before);
    assert!(handle(&engine, "acme")
        .read()
        .enabled_partners
        .contains(&Partner::Heap));
    assert_eq!(authorized(&engine, Partner::Amplitude, &b.key).0, "beta");
}

// ---------------------------------------------------------------------------
// 4. Durability and replay
// ---------------------------------------------------------------------------

/// The secrets of the scenario below.
struct Secrets {
    invalidated: NewKey,
    amp: NewKey,
    mix: NewKey,
    beta: NewKey,
}

/// Writes a bit of everything through the engine and the handles, checking
/// each answer on the way.
fn populate(engine: &Engine) -> Secrets {
    assert!(engine.create_workspace("acme").unwrap());
    assert!(engine.create_workspace("beta").unwrap());
    let invalidated = engine.create_key("acme", Partner::Amplitude).unwrap();
    let amp = engine.create_key("acme", Partner::Amplitude).unwrap();
    engine.invalidate_key("acme", &invalidated.id).unwrap();
    let mix = engine.create_key("acme", Partner::Mixpanel).unwrap();
    engine.enable_partner("acme", Partner::Heap).unwrap();
    let beta = engine.create_key("beta", Partner::Amplitude).unwrap();
    let h = handle(engine, "acme");

    // Users, one write at a time.
    let u1 = h
        .upsert_user(user(Some("u-1"), &["d-1"], &[("email", "ann@example.com")]))
        .unwrap();
    assert!(u1.created);
    assert!(h.upsert_user(user(Some("u-2"), &[], &[])).unwrap().created);
    assert!(h.upsert_user(user(Some("u-3"), &[], &[])).unwrap().created);
    let anon = h.upsert_user(user(None, &["d-anon"], &[])).unwrap();
    assert!(anon.created);
    let later = h.upsert_user(user(None, &["d-later"], &[])).unwrap();
    // An existing user gains identifiers.
    let again = h
        .upsert_user(user(
            Some("u-1"),
            &["d-1", "d-1b"],
            &[("email", "ann@example.com"), ("amplitude_id", "42")],
        ))
        .unwrap();
    assert_eq!((again.user, again.created), (u1.user, false));
    assert_eq!(
        h.add_alias(&ext("u-2"), "email", "bob@example.com")
            .unwrap(),
        UserId(1)
    );
    assert_eq!(h.add_device(&ext("u-3"), "d-3").unwrap(), UserId(2));
    // An anonymous user is identified: its device no longer matches.
    assert_eq!(
        h.identify(&UserRef::DeviceId("d-later".into()), "u-later")
            .unwrap(),
        later.user
    );
    // A user with an explicit bucket.
    let fixed = NewUser {
        bucket: Some(1234),
        ..user(Some("u-fixed"), &[], &[])
    };
    h.upsert_user(fixed).unwrap();

    // A bulk load where some users fail: reported by index, others applied.
    let report = h
        .upsert_users(vec![
            user(Some("u-10"), &["d-10"], &[]),
            user(Some("u-1"), &[], &[("crm", "c-1")]),
            user(Some("u-11"), &["d-1"], &[]), // device held by u-1
            user(None, &["d-20"], &[("email", "anon20@example.com")]),
            user(Some(""), &[], &[]), // empty external_id
            user(Some("u-12"), &[], &[("email", "ann@example.com")]), // alias held by u-1
            user(Some("u-10"), &["d-10b"], &[]), // the first of this batch, updated
            user(Some("u-13"), &["d-13", "d-13"], &[]), // a device named twice
        ])
        .unwrap();
    assert_eq!((report.created, report.updated), (2, 2), "{report:?}");
    let failed: Vec<usize> = report.failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![2, 4, 5, 7], "{report:?}");
    assert!(report.failed[0].1.contains("d-1"), "{report:?}");
    {
        let ws = h.read();
        assert_eq!(ws.users.match_external_id("u-11"), None);
        assert_eq!(ws.users.match_external_id("u-12"), None);
        assert_eq!(ws.users.match_external_id("u-13"), None);
        let u10 = ws.users.match_external_id("u-10").unwrap();
        assert_eq!(
            ws.users.get(u10).unwrap().devices,
            vec!["d-10".into(), "d-10b".into()] as Vec<Box<str>>
        );
        assert_eq!(ws.users.match_alias("crm", "c-1"), Some(u1.user));
    }

    // Cohorts: created, then renamed (the creation time stays).
    let create = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-9f1e",
        "Power users",
        "2021-01-21T19:20:30+05:00",
    );
    assert!(h.upsert_cohort(Partner::Amplitude, &create).unwrap());
    let rename = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-9f1e",
        "Power users (30d)",
        "2022-02-02T00:00:00Z",
    );
    assert!(!h.upsert_cohort(Partner::Amplitude, &rename).unwrap());

    // The PROTOCOL.md example, then the same request replayed.
    let example = json!({
        "cohort_id": "c-9f1e",
        "cohort_changes": [
            {"user_ids": ["u-1", "u-2"], "device_ids": [],
             "aliases": [{"alias_name": "ann@example.com", "alias_label": "email"}]},
            {"user_ids": ["u-3"], "should_remove": true}]});
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        example.clone(),
        march(1),
    );
    assert_eq!(
        (
            r.matched,
            r.unmatched,
            r.refused_device_ids,
            r.added,
            r.removed
        ),
        (4, 0, 0, 2, 0)
    );
    assert_eq!(r.data_points, 4);
    assert!(!r.cohort_created);
    let r = import(engine, Partner::Amplitude, &amp.key, example, march(1));
    assert_eq!((r.matched, r.added, r.removed), (4, 0, 0), "a replay");
    let acme_members = |c: &str| members(engine, "acme", Partner::Amplitude, c);
    assert_eq!(acme_members("c-9f1e"), vec![0, 1]);

    // Unmatched ids, a matched anonymous device, a refused device, a
    // removal, on another day; the cohort is created by the request.
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        json!({"cohort_id": "c-new", "cohort_changes": [
            {"user_ids": ["u-3", "nobody"], "device_ids": ["d-anon", "d-later", "d-none"],
             "aliases": [{"alias_name": "x@y", "alias_label": "email"}]},
            {"user_ids": ["u-3", "u-10"], "should_remove": true, "device_ids": null}]}),
        march(2),
    );
    assert_eq!(
        (
            r.matched,
            r.unmatched,
            r.refused_device_ids,
            r.added,
            r.removed
        ),
        (4, 3, 1, 2, 1),
        "{r:?}"
    );
    assert!(r.cohort_created);
    assert_eq!(acme_members("c-new"), vec![anon.user.0]);
    // The credentials test: an empty request changes nothing.
    let r = import(
        engine,
        Partner::Amplitude,
        &amp.key,
        json!({"cohort_id": "c-test", "cohort_changes": []}),
        march(2),
    );
    assert_eq!(r, Default::default());
    // The partner names the cohort the request created.
    let name_it = cohort_request(
        engine,
        Partner::Amplitude,
        &amp.key,
        "c-new",
        "New cohort",
        "2024-03-02T08:00:00.250-07:00",
    );
    assert!(!h.upsert_cohort(Partner::Amplitude, &name_it).unwrap());

    // Mixpanel, through its own key.
    let r = import(
        engine,
        Partner::Mixpanel,
        &mix.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [
            {"user_ids": ["u-10", "u-later"], "device_ids": ["d-20"]}]}),
        march(3),
    );
    assert_eq!((r.matched, r.added), (3, 3));

    // The other workspace.
    let hb = handle(engine, "beta");
    hb.upsert_user(user(Some("u-1"), &["d-1"], &[])).unwrap();
    let r = import(
        engine,
        Partner::Amplitude,
        &beta.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [{"user_ids": ["u-1", "u-2"]}]}),
        march(1),
    );
    assert_eq!((r.matched, r.unmatched), (1, 1));

    Secrets {
        invalidated,
        amp,
        mix,
        beta,
    }
}

#[test]
fn every_acknowledged_write_survives_a_restart() {
    let dir = tempdir();
    let engine = open(dir.path());
    let s = populate(&engine);
    let before = engine_fingerprint(&engine);

    // A few things the fingerprint must hold, so that equality means
    // something.
    let acme = &before.workspaces[0];
    assert_eq!(acme.name, "acme");
    assert_eq!(acme.users.len(), 8);
    assert_eq!(acme.users[5].external_id.as_deref(), Some("u-fixed"));
    assert_eq!(acme.users[5].bucket, 1234);
    let c = acme
        .cohorts
        .iter()
        .find(|c| c.key == CohortKey::new(Partner::Amplitude, "c-9f1e"))
        .unwrap();
    assert_eq!(c.name, "Power users (30d)");
    assert_eq!(c.created_at.as_deref(), Some("2021-01-21T19:20:30+05:00"));
    assert_eq!(c.sync.matched_total, 8);
    assert_eq!(c.sync.last_sync, Some(march(1)));
    let c = acme
        .cohorts
        .iter()
        .find(|c| c.key == CohortKey::new(Partner::Amplitude, "c-new"))
        .unwrap();
    assert_eq!(
        c.sync.recent_unmatched,
        ["user_id:nobody", "alias:email:x@y", "device_id:d-none"]
    );
    assert_eq!(c.sync.refused_total, 1);
    assert_eq!(
        c.created_at.as_deref(),
        Some("2024-03-02T08:00:00.250-07:00")
    );
    assert!(!acme.cohorts.iter().any(|c| c.key.cohort_id == "c-test"));
    assert_eq!(
        acme.data_points,
        vec![
            (Partner::Amplitude, day(1), 8),
            (Partner::Amplitude, day(2), 4),
            (Partner::Mixpanel, day(3), 3),
        ]
    );
    assert_eq!(
        acme.enabled_partners,
        vec![Partner::Amplitude, Partner::Mixpanel, Partner::Heap]
    );
    assert_eq!(acme.keys.len(), 3);
    let beta = &before.workspaces[1];
    assert_eq!(beta.data_points, vec![(Partner::Amplitude, day(1), 1)]);
    assert!(beta
        .lookups
        .iter()
        .any(|l| l.contains("device_id:d-1") && l.contains("Refused")));

    drop(engine);
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty(), "{:?}", engine.recoveries());
    assert_eq!(engine_fingerprint(&engine), before);

    // Keys: still valid, still invalidated, each leading to its workspace.
    let pk = partner_key(&engine, Partner::Amplitude);
    assert_eq!(
        refusal(&engine, Partner::Amplitude, &pk, &s.invalidated.key),
        ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET)
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &s.amp.key),
        ("acme".into(), s.amp.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Mixpanel, &s.mix.key),
        ("acme".into(), s.mix.id.clone())
    );
    assert_eq!(
        authorized(&engine, Partner::Amplitude, &s.beta.key),
        ("beta".into(), s.beta.id.clone())
    );

    // Replay is deterministic: the replayed state goes on the same way.
    let r = import(
        &engine,
        Partner::Amplitude,
        &s.amp.key,
        json!({"cohort_id": "c-9f1e", "cohort_changes": [{"user_ids": ["u-3"]}]}),
        march(4),
    );
    assert_eq!(r.added, 1);
    let h = handle(&engine, "acme");
    let created = h.upsert_user(user(Some("u-new"), &[], &[])).unwrap();
    assert_eq!(created.user, UserId(8), "ids stay dense after replay");
    drop(h);
    let after_more = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), after_more);
}

/// The log records the sync time with the precision it is given: a restart
/// must not change a cohort's `last_sync`.
#[test]
fn import_time_survives_a_restart_exactly() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let k = engine.create_key("acme", Partner::Amplitude).unwrap();
    handle(&engine, "acme")
        .upsert_user(user(Some("u-1"), &[], &[]))
        .unwrap();
    // What a server passes: the current time, with sub-millisecond digits.
    let now = Utc
        .timestamp_opt(1_710_000_000, 123_456_789)
        .single()
        .unwrap();
    import(
        &engine,
        Partner::Amplitude,
        &k.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-1"]}]}),
        now,
    );
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine_fingerprint(&engine),
        before,
        "the state after a restart differs from the acknowledged state"
    );
}

#[test]
fn refused_and_no_op_requests_log_nothing() {
    let dir = tempdir();
    let engine = open(dir.path());
    let s = populate(&engine);
    let path = log_path(dir.path(), "acme");
    let len = file_len(&path);
    let state = engine_fingerprint(&engine);
    let h = handle(&engine, "acme");
    let check = |what: &str| {
        assert_eq!(file_len(&path), len, "{what} wrote to the log");
    };

    // Authorization failures.
    let pk = partner_key(&engine, Partner::Amplitude);
    refusal(&engine, Partner::Amplitude, "bad", &s.amp.key);
    refusal(&engine, Partner::Amplitude, &pk, &s.invalidated.key);
    refusal(
        &engine,
        Partner::Heap,
        &partner_key(&engine, Partner::Heap),
        &s.amp.key,
    );
    check("a refused authorization");

    // Protocol validation failures (the server stops there).
    let bad = json!({"partner_api_key": pk, "client_secret": s.amp.key,
        "cohort_id": "", "cohort_changes": [{"user_ids": [1]}]});
    assert_eq!(
        parse_users_request(&serde_json::to_vec(&bad).unwrap())
            .unwrap_err()
            .status(),
        400
    );

    // Refused by the handle.
    let creds = creds(&engine, Partner::Amplitude, &s.amp.key);
    let blank = UsersRequest {
        credentials: creds.clone(),
        cohort_id: "  ".into(),
        cohort_changes: vec![CohortChange {
            user_ids: vec!["u-1".into()],
            ..Default::default()
        }],
    };
    assert!(matches!(
        h.import_users(Partner::Amplitude, &blank, march(5)),
        Err(Error::InvalidCohort(_))
    ));
    check("an import with a blank cohort_id");
    let nameless = CohortRequest {
        credentials: creds.clone(),
        cohort_id: "c-x".into(),
        name: String::new(),
        created_at: "2024-01-01T00:00:00+00:00".parse().unwrap(),
    };
    assert!(h.upsert_cohort(Partner::Amplitude, &nameless).is_err());
    check("a cohort without a name");
    assert!(matches!(
        h.upsert_user(user(Some("u-new"), &["d-1"], &[])),
        Err(Error::DuplicateDevice { .. })
    ));
    assert!(matches!(
        h.upsert_user(user(None, &[], &[("email", "ann@example.com")])),
        Err(Error::DuplicateAlias { .. })
    ));
    assert!(matches!(
        h.upsert_user(NewUser {
            bucket: Some(10_000),
            ..user(Some("u-bucket"), &[], &[])
        }),
        Err(Error::InvalidArgument(_))
    ));
    check("a refused upsert");
    assert!(matches!(
        h.add_alias(&ext("nobody"), "email", "n@x"),
        Err(Error::UnknownUser(_))
    ));
    assert!(matches!(
        h.add_alias(&ext("u-2"), "email", "ann@example.com"),
        Err(Error::DuplicateAlias { .. })
    ));
    assert!(matches!(
        h.add_device(&ext("u-2"), "d-anon"),
        Err(Error::DuplicateDevice { .. })
    ));
    assert!(matches!(
        h.add_device(&ext("u-2"), ""),
        Err(Error::InvalidIdentifier { .. })
    ));
    assert!(matches!(
        h.identify(&ext("u-1"), "u-other"),
        Err(Error::AlreadyIdentified { .. })
    ));
    assert!(matches!(
        h.identify(&UserRef::DeviceId("d-anon".into()), "u-2"),
        Err(Error::DuplicateExternalId { .. })
    ));
    assert!(matches!(
        h.identify(&UserRef::DeviceId("d-none".into()), "u-x"),
        Err(Error::UnknownUser(_))
    ));
    check("a refused identifier change");
    let all_fail = h
        .upsert_users(vec![
            user(Some("u-9"), &["d-1"], &[]),
            user(Some(""), &[], &[]),
        ])
        .unwrap();
    assert_eq!(all_fail.failed.len(), 2);
    check("a bulk load where every user fails");
    assert!(matches!(
        engine.invalidate_key("acme", "key_unknown"),
        Err(Error::UnknownKey { .. })
    ));
    check("invalidating an unknown key");

    // No-ops.
    let r = h
        .import_users(
            Partner::Amplitude,
            &users_request(
                &engine,
                Partner::Amplitude,
                &s.amp.key,
                json!({"cohort_id": "c-9f1e", "cohort_changes": [
                    {"user_ids": [], "device_ids": null, "should_remove": null}]}),
            ),
            march(5),
        )
        .unwrap();
    assert_eq!(r, Default::default());
    h.add_alias(&ext("u-2"), "email", "bob@example.com")
        .unwrap();
    h.add_device(&ext("u-3"), "d-3").unwrap();
    h.identify(&ext("u-1"), "u-1").unwrap();
    let same = h
        .upsert_user(user(Some("u-1"), &["d-1"], &[("email", "ann@example.com")]))
        .unwrap();
    assert!(!same.created);
    engine.enable_partner("acme", Partner::Heap).unwrap();
    engine.invalidate_key("acme", &s.invalidated.id).unwrap();
    check("a no-op");

    drop(h);
    assert_eq!(
        engine_fingerprint(&engine),
        state,
        "a refused request changed the state"
    );
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine_fingerprint(&engine), state);
}

// ---------------------------------------------------------------------------
// 5. Recovery
// ---------------------------------------------------------------------------

/// A workspace with users, a key and a cohort; returns the key.
fn small_workspace(engine: &Engine, name: &str) -> NewKey {
    engine.create_workspace(name).unwrap();
    let k = engine.create_key(name, Partner::Amplitude).unwrap();
    let h = handle(engine, name);
    h.upsert_users(
        (0..50)
            .map(|i| user(Some(&format!("u-{i}")), &[&format!("d-{i}")], &[]))
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

/// Writes after a recovery, checks they are acknowledged, and that they and
/// everything before survive another restart with a clean log.
fn write_after_recovery(dir: &Path, engine: Arc<Engine>, key: &NewKey) {
    let h = handle(&engine, "acme");
    let created = h.upsert_user(user(Some("u-after"), &[], &[])).unwrap();
    assert!(created.created);
    let r = import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-after", "u-4"]}]}),
        march(2),
    );
    assert_eq!(r.added, 2);
    let k2 = engine.create_key("acme", Partner::Mixpanel).unwrap();
    drop(h);
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir);
    assert!(
        engine.recoveries().is_empty(),
        "the recovered log should be clean now: {:?}",
        engine.recoveries()
    );
    assert_eq!(engine_fingerprint(&engine), expected);
    assert_eq!(authorized(&engine, Partner::Mixpanel, &k2.key).0, "acme");
    assert_eq!(authorized(&engine, Partner::Amplitude, &key.key).0, "acme");
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_writing_goes_on() {
    // Garbage: a torn frame, a frame whose payload runs past the end, and
    // bytes that are not a record at all.
    let mut torn_payload = Vec::new();
    torn_payload.extend_from_slice(&100u32.to_le_bytes());
    torn_payload.extend_from_slice(&9999u64.to_le_bytes());
    torn_payload.extend_from_slice(&0u32.to_le_bytes());
    torn_payload.extend_from_slice(b"ten bytes!");
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("torn frame", vec![0x10, 0, 0, 0, 7], true),
        ("torn payload", torn_payload, true),
        ("garbage", vec![0xff; 40], false),
    ];
    for (what, garbage, torn) in cases {
        let dir = tempdir();
        let engine = open(dir.path());
        let key = small_workspace(&engine, "acme");
        small_workspace(&engine, "other");
        let acknowledged = engine_fingerprint(&engine);
        drop(engine);

        let path = log_path(dir.path(), "acme");
        let len = file_len(&path);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&garbage);
        fs::write(&path, &bytes).unwrap();

        let engine = open(dir.path());
        let rec = engine.recoveries();
        assert_eq!(rec.len(), 1, "{what}: {rec:?}");
        let r = &rec[0];
        assert_eq!(r.path, path.display().to_string(), "{what}");
        assert_eq!(r.truncated_at, Some(len), "{what}");
        assert_eq!(r.valid_len, len, "{what}");
        assert_eq!(r.bytes_cut, garbage.len() as u64, "{what}");
        let damage = r.reason.clone().expect("a reason");
        assert_eq!(damage.offset(), len, "{what}");
        assert_eq!(damage.is_torn_tail(), torn, "{what}: {damage:?}");
        assert!(r.to_string().contains(&path.display().to_string()));
        assert_eq!(file_len(&path), len, "{what}: the tail is cut on disk");
        assert_eq!(engine_fingerprint(&engine), acknowledged, "{what}");
        write_after_recovery(dir.path(), engine, &key);
    }
}

#[test]
fn a_last_record_cut_in_the_middle_is_dropped() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let path = log_path(dir.path(), "acme");
    let state_before_last = engine_fingerprint(&engine);
    let len_before_last = file_len(&path);
    let r = import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [
            {"user_ids": ["u-10", "u-11", "u-12", "u-13", "u-14"]}]}),
        march(1),
    );
    assert_eq!(r.added, 5);
    drop(engine);
    let len = file_len(&path);
    assert!(len > len_before_last + RECORD_HEADER_LEN);

    // Cut inside the payload, then (another run) inside the frame.
    for cut_at in [
        (len_before_last + len) / 2,
        len_before_last + RECORD_HEADER_LEN / 2,
    ] {
        let dir2 = tempdir();
        copy_dir(dir.path(), dir2.path());
        let path2 = log_path(dir2.path(), "acme");
        let f = fs::OpenOptions::new().write(true).open(&path2).unwrap();
        f.set_len(cut_at).unwrap();
        drop(f);

        let engine = open(dir2.path());
        let rec = engine.recoveries();
        assert_eq!(rec.len(), 1, "{rec:?}");
        assert_eq!(rec[0].truncated_at, Some(len_before_last));
        assert_eq!(rec[0].bytes_cut, cut_at - len_before_last);
        assert!(matches!(
            rec[0].reason,
            Some(Damage::TornPayload { .. } | Damage::TornFrame { .. })
        ));
        assert_eq!(file_len(&path2), len_before_last);
        assert_eq!(engine_fingerprint(&engine), state_before_last);
        write_after_recovery(dir2.path(), engine, &key);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_damaged_log_header_stops_the_open_with_an_error_naming_the_file() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    small_workspace(&engine, "other");
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let path = log_path(dir.path(), "acme");
    let good = fs::read(&path).unwrap();
    assert!(good.len() as u64 > HEADER_LEN);

    // Magic, version, first_seq, the header checksum.
    for offset in [0usize, 3, 8, 13, 19, 20, 23] {
        let mut bad = good.clone();
        bad[offset] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        match Engine::open(dir.path()) {
            Ok(_) => panic!("opened with a damaged header (byte {offset})"),
            Err(e) => {
                assert!(
                    matches!(&e, Error::Log(l) if l.is_bad_header()),
                    "byte {offset}: {e:?}"
                );
                assert!(
                    e.to_string().contains(&path.display().to_string()),
                    "byte {offset}: the error should name the log: {e}"
                );
            }
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bad,
            "byte {offset}: a failed open must not change the log"
        );
    }
    // Repaired, it opens as before.
    fs::write(&path, &good).unwrap();
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty());
    assert_eq!(engine_fingerprint(&engine), expected);
}

#[test]
fn a_workspace_whose_creation_was_never_acknowledged_is_dropped() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    drop(engine);

    // Header only: the creation record never reached the disk.
    let ws = dir.path().join("workspaces");
    fs::create_dir_all(ws.join("ghost")).unwrap();
    drop(segq::log::create_file(ws.join("ghost").join(LOG_FILE), 1).unwrap());
    // Header and a torn creation record.
    fs::create_dir_all(ws.join("torn")).unwrap();
    drop(segq::log::create_file(ws.join("torn").join(LOG_FILE), 1).unwrap());
    let mut bytes = fs::read(ws.join("torn").join(LOG_FILE)).unwrap();
    bytes.extend_from_slice(&[30, 0, 0, 0, 1, 0]);
    fs::write(ws.join("torn").join(LOG_FILE), bytes).unwrap();
    // A folder whose log was never even renamed into place.
    fs::create_dir_all(ws.join("tmponly")).unwrap();
    fs::write(ws.join("tmponly").join(format!("{LOG_FILE}.tmp")), b"SEGQ").unwrap();

    let engine = open(dir.path());
    assert_eq!(engine.workspace_names(), vec!["acme".to_string()]);
    for name in ["ghost", "torn", "tmponly"] {
        assert!(engine.workspace(name).is_none(), "{name}");
        assert!(engine.create_workspace(name).unwrap(), "{name}");
        handle(&engine, name)
            .upsert_user(user(Some("u-1"), &[], &[]))
            .unwrap();
    }
    let expected = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.workspace_names(),
        vec!["acme", "ghost", "tmponly", "torn"]
    );
    assert_eq!(engine_fingerprint(&engine), expected);
}

/// Damage to the first record of a workspace that holds data is not a
/// creation that was never acknowledged: it must not make the workspace
/// (and its log) disappear without a word.
#[test]
fn a_damaged_first_record_does_not_silently_delete_the_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    small_workspace(&engine, "acme");
    drop(engine);
    let path = log_path(dir.path(), "acme");
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    // A byte of the first record's payload (the WorkspaceCreated change).
    bytes[(HEADER_LEN + RECORD_HEADER_LEN) as usize] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let shown = path.display().to_string();
    match Engine::open(dir.path()) {
        Err(e) => assert!(e.to_string().contains(&shown), "{e}"),
        Ok((engine, _)) => {
            let reported = engine.recoveries().iter().any(|r| r.path == shown);
            assert!(
                reported || engine.workspace("acme").is_some(),
                "workspace acme ({len} bytes of log) vanished: not served, not reported \
                 in recoveries(), log file exists: {}",
                path.exists()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Concurrency
// ---------------------------------------------------------------------------

#[test]
fn concurrent_imports_are_all_applied_and_survive_a_restart() {
    const THREADS: usize = 4;
    const REQUESTS: usize = 50;
    const IDS: usize = 100;
    const USERS: usize = 10_000;
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let key = engine.create_key("acme", Partner::Amplitude).unwrap();
    let report = handle(&engine, "acme")
        .upsert_users(
            (0..USERS)
                .map(|i| user(Some(&format!("u-{i}")), &[], &[]))
                .collect(),
        )
        .unwrap();
    assert_eq!(report.created, USERS as u64);

    // Thread t, request r: 95 users (overlapping between threads and
    // requests) and 5 ids that match nobody, into cohort c-(t % 2).
    let ids = |t: usize, r: usize| -> Vec<String> {
        (0..IDS)
            .map(|j| {
                if j % 20 == 19 {
                    format!("ghost-{t}-{r}-{j}")
                } else {
                    format!("u-{}", (t * 1_700 + r * 97 + j * 3) % USERS)
                }
            })
            .collect()
    };
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let engine = &engine;
            let key = &key;
            scope.spawn(move || {
                for r in 0..REQUESTS {
                    let rep = import(
                        engine,
                        Partner::Amplitude,
                        &key.key,
                        json!({"cohort_id": format!("c-{}", t % 2),
                               "cohort_changes": [{"user_ids": ids(t, r)}]}),
                        march(1),
                    );
                    assert_eq!(
                        (rep.matched, rep.unmatched),
                        (95, 5),
                        "thread {t} request {r}"
                    );
                }
            });
        }
    });

    for c in 0..2 {
        let mut union = BTreeSet::new();
        for t in (0..THREADS).filter(|t| t % 2 == c) {
            for r in 0..REQUESTS {
                for id in ids(t, r) {
                    if let Some(n) = id.strip_prefix("u-") {
                        union.insert(n.parse::<u32>().unwrap());
                    }
                }
            }
        }
        let got = members(&engine, "acme", Partner::Amplitude, &format!("c-{c}"));
        assert_eq!(got, union.into_iter().collect::<Vec<_>>(), "cohort c-{c}");
        let h = handle(&engine, "acme");
        let ws = h.read();
        let sync = &ws
            .cohorts
            .get(&CohortKey::new(Partner::Amplitude, format!("c-{c}")))
            .unwrap()
            .sync;
        let requests = (THREADS / 2 * REQUESTS) as u64;
        assert_eq!(sync.matched_total, 95 * requests);
        assert_eq!(sync.unmatched_total, 5 * requests);
    }
    let total = (THREADS * REQUESTS * 95) as u64;
    assert_eq!(
        handle(&engine, "acme")
            .read()
            .data_points(Partner::Amplitude, day(1)),
        total
    );
    let before = engine_fingerprint(&engine);
    drop(engine);
    let engine = open(dir.path());
    assert!(engine.recoveries().is_empty());
    assert_eq!(engine_fingerprint(&engine), before);
}

// ---------------------------------------------------------------------------
// 7. Random buckets
// ---------------------------------------------------------------------------

#[test]
fn users_get_random_buckets_that_survive_a_restart() {
    let dir = tempdir();
    let engine = open(dir.path());
    let mut buckets = Vec::new();
    for w in ["acme", "beta"] {
        engine.create_workspace(w).unwrap();
        let h = handle(&engine, w);
        let one = h.upsert_user(user(Some("first"), &[], &[])).unwrap();
        let anon = h.upsert_user(user(None, &["dev"], &[])).unwrap();
        h.upsert_users(
            (0..2_000)
                .map(|i| user(Some(&format!("u-{i}")), &[], &[]))
                .collect(),
        )
        .unwrap();
        let ws = h.read();
        let b: Vec<u16> = ws.users.buckets().collect();
        assert_eq!(b.len(), 2_002);
        assert!(b.iter().all(|&x| x < 10_000), "{w}: a bucket out of range");
        let distinct: BTreeSet<u16> = b.iter().copied().collect();
        assert!(distinct.len() > 1_600, "{w}: {} distinct", distinct.len());
        let mean = b.iter().map(|&x| f64::from(x)).sum::<f64>() / b.len() as f64;
        assert!((4_500.0..5_500.0).contains(&mean), "{w}: mean {mean}");
        let low = b.iter().filter(|&&x| x < 1_000).count();
        assert!((100..320).contains(&low), "{w}: {low} users below 1000");
        assert_eq!(ws.users.bucket(one.user), Some(b[0]));
        assert_eq!(ws.users.bucket(anon.user), Some(b[1]));
        drop(ws);
        buckets.push(b);
    }
    assert_ne!(
        buckets[0], buckets[1],
        "two workspaces drew the same buckets: not random"
    );

    // Later changes to a user keep its bucket.
    let h = handle(&engine, "acme");
    h.add_alias(&ext("first"), "email", "f@x").unwrap();
    h.identify(&UserRef::DeviceId("dev".into()), "was-anon")
        .unwrap();
    h.upsert_user(user(Some("u-5"), &["d-5"], &[])).unwrap();
    assert_eq!(h.read().users.buckets().collect::<Vec<_>>(), buckets[0]);
    assert_eq!(
        h.read().users.match_device("dev"),
        DeviceMatch::Refused(UserId(1))
    );
    drop(h);
    drop(engine);

    let engine = open(dir.path());
    for (w, b) in ["acme", "beta"].into_iter().zip(&buckets) {
        let h = handle(&engine, w);
        assert_eq!(&h.read().users.buckets().collect::<Vec<_>>(), b, "{w}");
    }
    // And a user created after the restart also gets a bucket in range,
    // which survives the next restart.
    let h = handle(&engine, "acme");
    let u = h.upsert_user(user(Some("after"), &[], &[])).unwrap();
    let b = h.read().users.bucket(u.user).unwrap();
    assert!(b < 10_000);
    drop(h);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        handle(&engine, "acme").read().users.bucket(UserId(2_002)),
        Some(b)
    );
    assert_eq!(id_of(&engine, "acme", "after"), 2_002);
}

// ---------------------------------------------------------------------------
// Robustness beyond the happy path
// ---------------------------------------------------------------------------

/// A write the log refuses (a record over the log's size limit) must be
/// refused whole: the workspace keeps serving, and the refused user is not
/// visible in memory while missing from the log.
#[test]
fn a_write_too_large_for_the_log_is_refused_without_breaking_the_workspace() {
    let dir = tempdir();
    let engine = open(dir.path());
    engine.create_workspace("acme").unwrap();
    let h = handle(&engine, "acme");
    h.upsert_user(user(Some("u-1"), &[], &[])).unwrap();
    let huge = "x".repeat(MAX_PAYLOAD + 1);
    let err = h
        .upsert_user(user(Some("u-huge"), &[], &[("blob", &huge)]))
        .expect_err("a record over MAX_PAYLOAD cannot be logged");
    drop(huge);
    assert!(
        !matches!(err, Error::WorkspaceFailed { .. }),
        "one oversized request took the whole workspace down: {err}"
    );
    assert_eq!(
        h.read().users.match_external_id("u-huge"),
        None,
        "a user that was never logged is visible"
    );
    h.upsert_user(user(Some("u-2"), &[], &[]))
        .expect("the workspace still takes writes");
}

/// Two engines on one data directory both append to the same logs, and a
/// restart then cuts the records of one of them: writes that were
/// acknowledged are lost. A second open must be refused while the first is
/// live (or both engines' writes must survive).
#[test]
fn a_second_engine_on_a_live_data_directory_cannot_lose_writes() {
    let dir = tempdir();
    let first = open(dir.path());
    let key = small_workspace(&first, "acme");
    let second = match Engine::open(dir.path()) {
        Err(_) => return, // refused: the data directory is locked
        Ok((e, _)) => e,
    };
    for (engine, id) in [(&first, "u-20"), (&second, "u-21")] {
        let r = import(
            engine,
            Partner::Amplitude,
            &key.key,
            json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [id]}]}),
            march(1),
        );
        assert_eq!(r.added, 1);
    }
    drop(first);
    drop(second);
    let engine = open(dir.path());
    let got = members(&engine, "acme", Partner::Amplitude, "c");
    assert!(
        got.contains(&20) && got.contains(&21),
        "an acknowledged write was lost: members {got:?}, recoveries {:?}",
        engine.recoveries()
    );
}

// ---------------------------------------------------------------------------
// 7. Locks, names, file modes, key uses, reading only
// ---------------------------------------------------------------------------

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

/// Restores, key creation and invalidation, listing and partner imports run
/// together from several threads. Restores took the table of workspaces and
/// then the key index, authorization the index and then the table: with a
/// key writer waiting between them, each waited for the other forever. A
/// watchdog fails the test instead of letting it hang.
#[test]
fn restores_key_changes_and_imports_together_do_not_deadlock() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempdir();
    let data = dir.path().join("data");
    let engine = open(&data);
    let file = generated_snapshot(dir.path());
    let key = small_workspace(&engine, "acme");

    let (done, finished) = mpsc::channel::<&'static str>();
    let mut threads = Vec::new();
    for t in 0..2 {
        let (engine, file, done) = (engine.clone(), file.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..12 {
                engine
                    .restore_workspace(&format!("r-{t}-{i}"), &file)
                    .unwrap();
            }
            done.send("restores").unwrap();
        }));
    }
    for _ in 0..2 {
        let (engine, done) = (engine.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..60 {
                let k = engine.create_key("acme", Partner::Mixpanel).unwrap();
                engine.list_keys("acme", None).unwrap();
                engine.invalidate_key("acme", &k.id).unwrap();
            }
            done.send("keys").unwrap();
        }));
    }
    for t in 0..3 {
        let (engine, secret, done) = (engine.clone(), key.key.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..150 {
                let id = format!("u-{}", (t * 7 + i) % 50);
                let r = import(
                    &engine,
                    Partner::Amplitude,
                    &secret,
                    json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [id]}]}),
                    march(1),
                );
                assert_eq!(r.matched, 1);
                let bad = creds(&engine, Partner::Amplitude, "not-a-key");
                assert!(engine.authorize(Partner::Amplitude, &bad).is_err());
            }
            done.send("imports").unwrap();
        }));
    }
    drop(done);
    for _ in 0..threads.len() {
        match finished.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no thread finished within 30 s: deadlocked")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a thread panicked"),
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(engine.workspace_names().len(), 1 + 2 * 12);
}

#[test]
fn workspace_names_differing_only_in_case_or_naming_a_device_are_refused() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let engine = open(&data);
    let file = generated_snapshot(dir.path());
    assert!(engine.create_workspace("acme").unwrap());
    for clash in ["ACME", "Acme", "acmE"] {
        match engine.create_workspace(clash) {
            Err(Error::WorkspaceNameClash { name, existing }) => {
                assert_eq!((name.as_str(), existing.as_str()), (clash, "acme"))
            }
            other => panic!("{clash}: expected a clash, got {other:?}"),
        }
        match engine.restore_workspace(clash, &file) {
            Err(Error::WorkspaceNameClash { existing, .. }) => assert_eq!(existing, "acme"),
            other => panic!("{clash}: expected a clash, got {:?}", other.map(|_| ())),
        }
    }
    engine.restore_workspace("Backup", &file).unwrap();
    assert!(matches!(
        engine.create_workspace("backup"),
        Err(Error::WorkspaceNameClash { .. })
    ));
    for device in [
        "con", "CON", "Prn", "aux", "NUL", "com1", "COM9", "com0", "lpt1", "LpT9",
    ] {
        match engine.create_workspace(device) {
            Err(Error::ReservedWorkspaceName { name }) => assert_eq!(name, device),
            other => panic!("{device}: expected a reserved name, got {other:?}"),
        }
        match engine.restore_workspace(device, &file) {
            Err(Error::ReservedWorkspaceName { name }) => assert_eq!(name, device),
            other => panic!(
                "{device}: expected a reserved name, got {:?}",
                other.map(|_| ())
            ),
        }
        assert!(!segq::engine::valid_workspace_name(device));
    }
    for device_like in ["console", "com10", "lpt", "nul_1", "aux-2", "comx"] {
        assert!(
            engine.create_workspace(device_like).unwrap(),
            "{device_like}"
        );
    }
    for with_extension in ["con.txt", "NUL.tar.gz", "com1.x"] {
        assert!(segq::engine::reserved_device_name(with_extension));
        assert!(!segq::engine::valid_workspace_name(with_extension));
    }
    // Nothing was made on disk for the refused names.
    let mut on_disk: Vec<String> = fs::read_dir(data.join("workspaces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut expected = engine.workspace_names();
    expected.sort();
    assert_eq!(on_disk, expected);
}

#[cfg(unix)]
#[test]
fn secrets_are_0600_and_folders_0700_and_looser_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let dir = tempdir();
    let data = dir.path().join("data");
    let engine = open(&data);
    small_workspace(&engine, "acme");
    engine.compact("acme").unwrap();
    drop(engine);
    let folders = [
        data.clone(),
        data.join("workspaces"),
        data.join("workspaces/acme"),
    ];
    let secrets = [data.join("segq.json"), data.join("admin-token.sha256")];
    for f in &folders {
        assert_eq!(mode(f), 0o700, "{}", f.display());
    }
    for f in &secrets {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // Loosened by hand (or made by an older segq): tightened on open.
    for f in &folders {
        set(f, 0o755);
    }
    for f in &secrets {
        set(f, 0o644);
    }
    drop(open(&data));
    for f in &folders {
        assert_eq!(mode(f), 0o700, "{}", f.display());
    }
    for f in &secrets {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // A workspace created later, and a restored one, too.
    let engine = open(&data);
    engine.create_workspace("beta").unwrap();
    engine
        .restore_workspace("gamma", &generated_snapshot(dir.path()))
        .unwrap();
    assert_eq!(mode(&data.join("workspaces/beta")), 0o700);
    assert_eq!(mode(&data.join("workspaces/gamma")), 0o700);
}

/// The `KeyUsed` records of a workspace's logs, in order.
fn key_used_records(data: &Path, workspace: &str) -> Vec<(String, i64)> {
    let folder = data.join("workspaces").join(workspace);
    let mut logs: Vec<PathBuf> = fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .collect();
    logs.sort();
    let mut out = Vec::new();
    for path in logs {
        let mut file = segq::log::FsFile::open(&path).unwrap();
        let replay = segq::log::LogWriter::scan(&mut file).unwrap();
        for r in replay.records {
            let change = segq::engine::Change::decode(&r.payload, "log", r.seq).unwrap();
            if let segq::engine::Change::KeyUsed { id, at_ms } = change {
                out.push((id, at_ms));
            }
        }
    }
    out
}

/// Authorizes at `at` and imports, as the server does.
fn import_at(engine: &Engine, secret: &str, user: &str, at: DateTime<Utc>) {
    let req = users_request(
        engine,
        Partner::Amplitude,
        secret,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": [user]}]}),
    );
    let (h, _) = engine
        .authorize_at(Partner::Amplitude, &req.credentials, at)
        .unwrap_or_else(|e| panic!("refused: {e:?}"));
    h.import_users(Partner::Amplitude, &req, at).unwrap();
}

/// A time after every real use the test makes (whole milliseconds).
fn later() -> DateTime<Utc> {
    let t = Utc::now() + chrono::Duration::days(1);
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

fn last_used(engine: &Engine, id: &str) -> Option<DateTime<Utc>> {
    engine
        .list_keys("acme", None)
        .unwrap()
        .into_iter()
        .find(|k| k.id == id)
        .expect("the key is listed")
        .last_used
}

#[test]
fn a_keys_use_is_logged_at_most_once_a_minute_with_the_import() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let before = key_used_records(dir.path(), "acme");
    let t0 = later();
    let secs = |s: i64| t0 + chrono::Duration::seconds(s);
    let h = handle(&engine, "acme");
    let commits = h.log_stats().commits;
    for (i, s) in [0, 1, 10, 30, 59].into_iter().enumerate() {
        import_at(&engine, &key.key, &format!("u-{i}"), secs(s));
    }
    assert_eq!(
        h.log_stats().commits - commits,
        5,
        "one commit per import: the key's use rides with the first"
    );
    assert_eq!(
        last_used(&engine, &key.id),
        Some(secs(59)),
        "exact in memory"
    );
    import_at(&engine, &key.key, "u-9", secs(60));
    import_at(&engine, &key.key, "u-10", secs(61));
    let logged = key_used_records(dir.path(), "acme");
    assert_eq!(
        logged[before.len()..],
        [
            (key.id.clone(), t0.timestamp_millis()),
            (key.id.clone(), secs(60).timestamp_millis())
        ],
        "at most one record per key per minute"
    );
}

#[test]
fn a_keys_last_use_survives_a_restart_and_a_compaction() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    let other = engine.create_key("acme", Partner::Amplitude).unwrap();
    let t0 = later();
    let secs = |s: i64| t0 + chrono::Duration::seconds(s);
    import_at(&engine, &key.key, "u-1", secs(0));
    import_at(&engine, &key.key, "u-2", secs(40));
    drop(engine);

    // Kept to the minute: the use logged is at most a minute before the
    // last one.
    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(0)));
    assert_eq!(last_used(&engine, &other.id), None);
    // A use within the minute of the logged one is not logged again.
    let records = key_used_records(dir.path(), "acme").len();
    import_at(&engine, &key.key, "u-3", secs(50));
    assert_eq!(key_used_records(dir.path(), "acme").len(), records);
    import_at(&engine, &key.key, "u-4", secs(130));
    // A credentials test writes nothing; its use is logged at shutdown.
    engine
        .authorize_at(
            Partner::Amplitude,
            &creds(&engine, Partner::Amplitude, &other.key),
            secs(140),
        )
        .unwrap();
    engine.compact("acme").unwrap();
    engine.sync_all().unwrap();
    drop(engine);

    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(130)));
    assert_eq!(last_used(&engine, &other.id), Some(secs(140)));
    // Both folded into a snapshot: the logs after it hold no key use.
    engine.compact("acme").unwrap();
    drop(engine);
    assert!(key_used_records(dir.path(), "acme").is_empty());
    let engine = open(dir.path());
    assert_eq!(last_used(&engine, &key.id), Some(secs(130)));
    assert_eq!(last_used(&engine, &other.id), Some(secs(140)));
}

#[test]
fn opening_read_only_changes_nothing_and_ignores_a_torn_tail_in_memory() {
    let dir = tempdir();
    let engine = open(dir.path());
    let key = small_workspace(&engine, "acme");
    engine.compact("acme").unwrap();
    import(
        &engine,
        Partner::Amplitude,
        &key.key,
        json!({"cohort_id": "c", "cohort_changes": [{"user_ids": ["u-7"]}]}),
        march(3),
    );
    small_workspace(&engine, "beta");
    let expected: Vec<u32> = members(&engine, "acme", Partner::Amplitude, "c");
    drop(engine);
    // A torn tail on both kinds of log, litter a read-write open removes,
    // and no configuration.
    let acme = dir.path().join("workspaces/acme");
    let acme_log = fs::read_dir(&acme)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .unwrap();
    for log in [acme_log, log_path(dir.path(), "beta")] {
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&log, bytes).unwrap();
    }
    fs::write(acme.join("snap-00000000000000000009.segqsnap.tmp"), b"x").unwrap();
    fs::remove_file(dir.path().join("segq.json")).unwrap();
    let before = files_fingerprint(dir.path());

    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(members(&ro, "acme", Partner::Amplitude, "c"), expected);
    assert_eq!(ro.recoveries().len(), 2, "both torn tails seen");
    // Writes are refused, and change nothing.
    assert!(ro.create_workspace("gamma").is_err());
    assert!(ro.create_key("acme", Partner::Heap).is_err());
    assert!(handle(&ro, "acme")
        .upsert_user(user(Some("new"), &[], &[]))
        .is_err());
    assert!(ro.compact("acme").is_err());
    let elsewhere = tempdir();
    assert!(ro
        .restore_workspace("delta", &generated_snapshot(elsewhere.path()))
        .is_err());
    drop(ro);
    assert_eq!(files_fingerprint(dir.path()), before, "nothing changed");

    // Beside a read-write engine holding the LOCK, too.
    let rw = open(dir.path());
    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(members(&ro, "acme", Partner::Amplitude, "c"), expected);
    drop((ro, rw));

    // Not a data directory: refused, nothing made.
    let missing = dir.path().join("missing");
    assert!(Engine::open_read_only(&missing).is_err());
    assert!(!missing.exists());
}
