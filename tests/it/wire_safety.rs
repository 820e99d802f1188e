//! The partner protocol's edges: every value the partner endpoints accept
//! must replay (restart, compaction), per-cohort memory is bounded, cohorts
//! can be deleted durably, error bodies echo inputs short, and the limits
//! fit every request the protocol allows.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use segq::cohorts::{UNMATCHED_SAMPLE, UNMATCHED_SAMPLE_BYTES};
use segq::engine::{Engine, WorkspaceHandle, DEFAULT_MAX_BODY_BYTES};
use segq::import::{
    parse_cohort_request, parse_created_at, parse_delete_request, parse_users_request, Credentials,
};
use segq::users::NewUser;
use segq::{CohortKey, Error, Partner, UserId};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::fingerprint;
use crate::support::server::{cohort_body, partner_api_key, users_body, Fixture, Server};

const CREATED_AT: &str = "created_at must be a valid time as an ISO-8601 string";
const AMP: Partner = Partner::Amplitude;
const WS: &str = "acme";

// ---------------------------------------------------------------------------
// An engine on a temporary directory, driven the way the server drives it
// ---------------------------------------------------------------------------

struct Setup {
    dir: TempDir,
    engine: Option<Arc<Engine>>,
    secret: String,
}

impl Setup {
    /// A data directory with workspace `acme`, an amplitude key and five
    /// users: `u0`..`u4`, devices `d0`..`d4` (of `u3` and `u4`: anonymous
    /// users `a3`, `a4` hold `d3`, `d4`), aliases `email:u{i}@x.io`.
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (engine, _) = Engine::open(dir.path().join("data")).expect("opens");
        engine.create_workspace(WS).expect("creates");
        let key = engine.create_key(WS, AMP).expect("a key");
        let h = engine.workspace(WS).expect("the workspace");
        for i in 0..5 {
            let (external_id, device) = if i < 3 {
                (Some(format!("u{i}")), format!("d{i}"))
            } else {
                (None, format!("d{i}"))
            };
            h.upsert_user(NewUser {
                external_id,
                devices: vec![device],
                aliases: vec![("email".into(), format!("u{i}@x.io"))],
                bucket: None,
            })
            .expect("a user");
        }
        Setup {
            dir,
            engine: Some(engine),
            secret: key.key,
        }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn engine(&self) -> &Arc<Engine> {
        self.engine.as_ref().expect("open")
    }

    fn handle(&self) -> Arc<WorkspaceHandle> {
        self.engine().workspace(WS).expect("the workspace")
    }

    fn reopen(&mut self) {
        self.engine = None;
        let (engine, token) = Engine::open(self.data())
            .unwrap_or_else(|e| panic!("the data directory does not open again: {e}"));
        assert!(token.is_none());
        self.engine = Some(engine);
    }

    fn credentials(&self) -> (String, String) {
        (
            self.engine().config().partner_api_keys[&AMP].clone(),
            self.secret.clone(),
        )
    }

    /// Serves one partner request body as the server does: validate,
    /// authorize, apply. `Ok(None)`: refused by validation (400/401).
    fn serve(&self, endpoint: Endpoint, mut body: Value) -> Option<Result<(), Error>> {
        let (pk, secret) = self.credentials();
        body["partner_api_key"] = json!(pk);
        body["client_secret"] = json!(secret);
        let bytes = serde_json::to_vec(&body).expect("serialises");
        let creds = |c: &Credentials| {
            self.engine()
                .authorize(AMP, c)
                .unwrap_or_else(|e| panic!("valid credentials refused: {e:?}"))
                .0
        };
        match endpoint {
            Endpoint::Cohorts => {
                let req = parse_cohort_request(&bytes).ok()?;
                Some(creds(&req.credentials).upsert_cohort(AMP, &req).map(drop))
            }
            Endpoint::Users => {
                let req = parse_users_request(&bytes).ok()?;
                let now = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
                Some(
                    creds(&req.credentials)
                        .import_users(AMP, &req, now)
                        .map(drop),
                )
            }
            Endpoint::Delete => {
                let req = parse_delete_request(&bytes).ok()?;
                Some(creds(&req.credentials).delete_cohort(AMP, &req.cohort_id))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Cohorts,
    Users,
    Delete,
}

fn log_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("workspaces").join(WS))
        .expect("the workspace folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "segqlog"))
        .map(|p| std::fs::metadata(p).expect("metadata").len())
        .sum()
}

// ---------------------------------------------------------------------------
// 1. created_at: what the wire accepts, replay and snapshot load read
// ---------------------------------------------------------------------------

#[test]
fn created_at_accepts_the_iso_forms_and_only_what_the_store_reads_back() {
    for ok in [
        "2021-01-21T19:20:30+05:00",
        "2021-01-21T19:20:30Z",
        "2021-01-21T19:20:30z",
        "2021-01-21T19:20:30.123456789-08:00",
        "2021-01-21T19:20+05:00",
        "2021-01-21T19:20Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999+14:00",
        "9999-12-31T23:59:59-23:59",
    ] {
        let t = parse_created_at(ok).unwrap_or_else(|| panic!("{ok} refused"));
        let stored = segq::import::format_created_at(&t);
        let back = parse_created_at(&stored).unwrap_or_else(|| panic!("{stored} refused"));
        assert_eq!((back, back.offset()), (t, t.offset()), "{ok}");
    }
    for bad in [
        "+10000-01-01T00:00:00Z",
        "-0001-01-01T00:00:00Z",
        "10000-01-01T00:00Z",
        "2021-01-21",
        "2021-13-01T00:00:00Z",
        "yesterday",
        "",
    ] {
        assert_eq!(parse_created_at(bad), None, "{bad} accepted");
    }
}

/// The reproduction of the issue: a year the wire's fallback read but the
/// store cannot was accepted (201), and the server never started again.
#[test]
fn a_created_at_the_store_cannot_keep_is_a_400_and_the_server_starts_again() {
    let f = Fixture::new(&[]);
    let (ws, data, token) = (f.ws.clone(), f.data(), f.server.token.clone());
    let s = &f.server;
    for bad in ["+10000-01-01T00:00:00Z", "-0001-01-01T00:00:00Z"] {
        let mut b = cohort_body(&f.secret, "c-far", "Far");
        b["created_at"] = json!(bad);
        let r = s.create_cohort("amplitude", &b);
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(
            r.json(),
            json!({"message": CREATED_AT, "errors": [CREATED_AT]})
        );
    }
    let mut b = cohort_body(&f.secret, "c-edge", "Edge");
    b["created_at"] = json!("9999-12-31T23:59:59.5-05:00");
    s.create_cohort("amplitude", &b).expect(201);
    f.server.stop();
    let s = Server::restart(&data, &token, &[]);
    let listed = s.cohorts(&ws);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["cohort_id"], "c-edge");
    assert_eq!(listed[0]["created_at"], "9999-12-31T23:59:59.500-05:00");
    s.stop();
}

// The request grammar, for the property below.

fn year() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0i32..=9999).prop_map(|y| format!("{y:04}")),
        2 => Just("0000".to_string()),
        2 => Just("9999".to_string()),
        2 => Just("10000".to_string()),
        2 => Just("+10000".to_string()),
        2 => Just("-0001".to_string()),
        1 => Just("+2021".to_string()),
        1 => Just("999".to_string()),
        2 => (10_000i32..300_000).prop_map(|y| y.to_string()),
    ]
}

fn offset() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Z".to_string()),
        Just("Z".to_string()),
        Just("z".to_string()),
        Just("+00:00".to_string()),
        Just("-00:00".to_string()),
        Just("+05:30".to_string()),
        Just("-23:59".to_string()),
        Just("+23:59".to_string()),
        Just("+24:00".to_string()),
        Just("+0530".to_string()),
        Just("+05".to_string()),
        Just("+05:30:15".to_string()),
        Just(String::new()),
        (0u32..24, 0u32..60, any::<bool>())
            .prop_map(|(h, m, neg)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
    ]
}

fn created_at() -> impl Strategy<Value = Value> {
    // Mostly valid fields, so that the years and offsets are what decides.
    let mostly = |valid: std::ops::RangeInclusive<u32>, any: std::ops::RangeInclusive<u32>| prop_oneof![6 => valid, 1 => any];
    let date = (
        year(),
        mostly(1..=12, 0..=13),
        mostly(1..=28, 0..=32),
        mostly(0..=23, 0..=24),
        mostly(0..=59, 0..=60),
        prop::option::weighted(0.8, mostly(0..=59, 0..=61)),
        prop::option::of("[0-9]{1,12}"),
        offset(),
        prop_oneof![4 => Just('T'), 1 => Just('t'), 1 => Just(' ')],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off, sep)| {
            let mut t = format!("{y}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}");
            if let Some(s) = s {
                t += &format!(":{s:02}");
                if let Some(f) = frac {
                    t += &format!(".{f}");
                }
            }
            t + &off
        });
    prop_oneof![
        6 => date.prop_map(Value::String),
        1 => "\\PC{0,12}".prop_map(Value::String),
        1 => Just(json!(1611256830)),
        1 => Just(Value::Null),
    ]
}

/// Names and ids: short, unicode, control characters, white space, and
/// lengths around the 1,024-byte limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["c1", "c2", "c3", "Power users (30d)"])
            .prop_map(str::to_string),
        2 => "\\PC{1,12}",
        1 => "[\\x00-\\x1f\\x7f]{1,6}",
        1 => "[ \\t\\n]{0,3}",
        1 => (1020usize..=1026).prop_map(|n| "n".repeat(n)),
        1 => (510usize..=514).prop_map(|n| "é".repeat(n)),
        1 => (254usize..=257).prop_map(|n| "😀".repeat(n)),
        1 => Just("\u{feff}\u{200b}\u{0}".to_string()),
    ]
}

fn cohort_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["c1", "c2", "c3"]).prop_map(|s| json!(s)),
        2 => text().prop_map(Value::String),
        1 => Just(json!(7)),
    ]
}

/// An identifier: one of the users' (so they match), or anything.
fn identifier(kind: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u32..6).prop_map(move |i| format!("{kind}{i}")),
        2 => text(),
        1 => (1023usize..=1030).prop_map(|n| "i".repeat(n)),
        1 => Just(String::new()),
    ]
}

fn change() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(identifier("u"), 0..4),
        prop::collection::vec(identifier("d"), 0..3),
        prop::collection::vec((identifier("email"), identifier("u")), 0..3),
        prop_oneof![Just(json!(true)), Just(json!(false)), Just(Value::Null)],
    )
        .prop_map(|(users, devices, aliases, remove)| {
            let aliases: Vec<Value> = aliases
                .into_iter()
                .map(|(label, name)| {
                    // Make the users' own aliases reachable now and then.
                    let (label, name) = if label.starts_with("email") && name.len() < 4 {
                        ("email".to_string(), format!("{name}@x.io"))
                    } else {
                        (label, name)
                    };
                    json!({"alias_label": label, "alias_name": name})
                })
                .collect();
            json!({"user_ids": users, "device_ids": devices, "aliases": aliases,
                   "should_remove": remove})
        })
}

fn request() -> impl Strategy<Value = (Endpoint, Value)> {
    prop_oneof![
        4 => (cohort_id(), text(), created_at()).prop_map(|(id, name, at)| (
            Endpoint::Cohorts,
            json!({"cohort_id": id, "name": name, "created_at": at})
        )),
        3 => (cohort_id(), prop::collection::vec(change(), 0..3)).prop_map(|(id, c)| (
            Endpoint::Users,
            json!({"cohort_id": id, "cohort_changes": c})
        )),
        1 => cohort_id().prop_map(|id| (Endpoint::Delete, json!({"cohort_id": id}))),
    ]
}

proptest! {
    // Each case opens a data directory three times and compacts once.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every request the partner endpoints accept, applied through an
    /// engine, leaves a state that a restart, and a compaction followed by
    /// a restart, give back exactly.
    #[test]
    fn whatever_the_partner_endpoints_accept_survives_restart_and_compaction(
        requests in prop::collection::vec(request(), 1..10)
    ) {
        let mut s = Setup::new();
        let mut accepted = 0;
        for (endpoint, body) in requests {
            if let Some(Ok(())) = s.serve(endpoint, body) {
                accepted += 1;
            }
        }
        let before = fingerprint(&s.handle());
        s.reopen();
        prop_assert_eq!(&fingerprint(&s.handle()), &before, "after a restart ({} applied)", accepted);
        s.handle().compact().expect("compacts");
        prop_assert_eq!(&fingerprint(&s.handle()), &before, "after the compaction");
        s.reopen();
        prop_assert_eq!(&fingerprint(&s.handle()), &before, "after a compaction and a restart");
    }
}

// ---------------------------------------------------------------------------
// 9. Bounded samples, bounded cohorts, durable deletion
// ---------------------------------------------------------------------------

fn unmatched_body(cohort_id: &str, tag: usize) -> Value {
    let ids: Vec<String> = (0..1000)
        .map(|i| format!("{tag}-{i}-{}", "x".repeat(1000)))
        .collect();
    json!({"cohort_id": cohort_id, "cohort_changes": [{"user_ids": ids}]})
}

#[test]
fn the_unmatched_sample_is_bounded_in_bytes_in_memory_and_in_the_log() {
    let mut s = Setup::new();
    let mut grown = Vec::new();
    for tag in 0..4 {
        let before = log_bytes(&s.data());
        s.serve(Endpoint::Users, unmatched_body("c1", tag))
            .expect("valid")
            .expect("applied");
        grown.push(log_bytes(&s.data()) - before);
    }
    let check = |h: &WorkspaceHandle| {
        let ws = h.read();
        let sample = &ws.cohorts.get(&CohortKey::new(AMP, "c1")).unwrap().sync;
        let bytes: usize = sample.recent_unmatched.iter().map(String::len).sum();
        assert!(bytes <= UNMATCHED_SAMPLE_BYTES, "a sample of {bytes} bytes");
        assert!(sample.recent_unmatched.len() <= UNMATCHED_SAMPLE);
        assert!(!sample.recent_unmatched.is_empty());
        // The newest are kept.
        let last = sample.recent_unmatched.back().unwrap();
        assert!(last.starts_with("user_id:3-999-"), "{last}");
        assert_eq!(sample.unmatched_total, 4000);
    };
    check(&s.handle());
    // 1,000 ids of 1 KB matched nobody: the record holds the counts and a
    // bounded sample, not ~100 KB of ids.
    for g in &grown {
        assert!(
            *g < 2 * UNMATCHED_SAMPLE_BYTES as u64 + 1024,
            "the log grew by {g}"
        );
    }
    s.reopen();
    check(&s.handle());
}

/// Sets `max_cohorts_per_partner` in a data directory's configuration.
fn set_cohort_limit(data: &Path, max: usize) {
    let path = data.join("segq.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["max_cohorts_per_partner"] = json!(max);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

#[test]
fn a_partner_creates_at_most_max_cohorts_per_partner_and_a_deletion_makes_room() {
    let f = Fixture::new(&[]);
    let (ws, data, token) = (f.ws.clone(), f.data(), f.server.token.clone());
    let (_, heap) = f.server.create_key(&ws, "heap");
    f.server.stop();
    set_cohort_limit(&data, 2);
    let s = Server::restart(&data, &token, &[]);
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"))
        .expect(201);
    s.users(
        "amplitude",
        &users_body(&f.secret, "c2", json!([{"user_ids": ["nobody"]}])),
    )
    .expect(201);
    // A third: refused, whichever endpoint would create it.
    let r = s.create_cohort("amplitude", &cohort_body(&f.secret, "c3", "Three"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(
        r.message().contains("max_cohorts_per_partner"),
        "{}",
        r.text
    );
    let r = s.users(
        "amplitude",
        &users_body(&f.secret, "c3", json!([{"user_ids": ["nobody"]}])),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains("2 cohorts"), "{}", r.text);
    // What exists still changes; another partner has its own count.
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "Renamed"))
        .expect(200);
    s.users(
        "amplitude",
        &users_body(&f.secret, "c2", json!([{"user_ids": ["nobody"]}])),
    )
    .expect(200);
    let mut b = cohort_body(&heap, "c3", "Heap's");
    b["partner_api_key"] = json!(partner_api_key("heap"));
    s.create_cohort("heap", &b).expect(201);
    // The partner deletes one of its own: room for another.
    let del = json!({"partner_api_key": crate::support::server::PARTNER_API_KEY,
                     "client_secret": f.secret, "cohort_id": "c1"});
    s.post("/partners/amplitude/cohorts/delete", &del)
        .expect(200);
    let r = s.post("/partners/amplitude/cohorts/delete", &del);
    assert_eq!(r.status, 404, "{}", r.text);
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c3", "Three"))
        .expect(201);
    let listed: Vec<String> = s
        .cohorts(&ws)
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c["partner"].as_str().unwrap(),
                c["cohort_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, ["amplitude/c2", "amplitude/c3", "heap/c3"]);
    s.stop();
}

#[test]
fn the_cohort_limit_in_segq_json_is_checked() {
    let s = Setup::new();
    let data = s.data();
    drop(s.engine);
    set_cohort_limit(&data, 0);
    match Engine::open(&data) {
        Err(Error::Config { reason, .. }) => {
            assert!(reason.contains("max_cohorts_per_partner"), "{reason}")
        }
        other => panic!(
            "expected a configuration error, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(s.dir);
}

#[test]
fn deleting_a_cohort_survives_restart_and_compaction_and_it_can_come_back() {
    let mut s = Setup::new();
    let add = |s: &Setup, id: &str, users: &[&str]| {
        s.serve(
            Endpoint::Users,
            json!({"cohort_id": id, "cohort_changes": [{"user_ids": users}]}),
        )
        .expect("valid")
        .expect("applied");
    };
    add(&s, "c1", &["u0", "u1"]);
    add(&s, "c2", &["u2"]);
    s.handle().compact().expect("compacts");
    // c1 now lives in the snapshot; delete it after.
    s.serve(Endpoint::Delete, json!({"cohort_id": "c1"}))
        .expect("valid")
        .expect("deleted");
    let key = CohortKey::new(AMP, "c1");
    assert!(s.handle().read().cohorts.get(&key).is_none());
    let gone = fingerprint(&s.handle());
    s.reopen();
    assert_eq!(fingerprint(&s.handle()), gone, "after a restart");
    s.handle().compact().expect("compacts");
    s.reopen();
    assert_eq!(
        fingerprint(&s.handle()),
        gone,
        "after a compaction and a restart"
    );
    // Created again under the same id: a new, empty cohort.
    add(&s, "c1", &["u2"]);
    let members = |s: &Setup| {
        s.handle().read().cohorts.get(&key).map(|c| {
            c.members
                .iter()
                .expect("readable members")
                .collect::<Vec<_>>()
        })
    };
    let u2 = s.handle().read().users.match_external_id("u2").unwrap().0;
    assert_eq!(members(&s), Some(vec![u2]));
    s.reopen();
    assert_eq!(members(&s), Some(vec![u2]));
    // The admin route deletes too; unknown ones are 404 (an error here).
    match s.handle().delete_cohort(AMP, "nope") {
        Err(e @ Error::UnknownCohort { .. }) => assert!(e.to_string().contains("nope")),
        other => panic!("expected UnknownCohort, got {other:?}"),
    }
}

/// A cohort deleted and created again while a compaction runs (between
/// its freeze and its move onto the new snapshot) is another cohort: its
/// members must not be rebased on the old one's.
#[test]
fn a_cohort_deleted_and_created_again_during_a_compaction_keeps_only_its_own_members() {
    let mut ws = segq::Workspace::new("acme", 7);
    let u: Vec<UserId> = (0..4)
        .map(|i| {
            ws.users
                .create(NewUser {
                    external_id: Some(format!("u{i}")),
                    devices: vec![],
                    aliases: vec![],
                    bucket: None,
                })
                .unwrap()
        })
        .collect();
    let now = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    let ch = |ids: &[&str]| {
        vec![segq::cohorts::CohortChange {
            user_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }]
    };
    let dir = tempfile::tempdir().unwrap();
    let compact = |ws: &mut segq::Workspace, frozen: &segq::Workspace, n: u64| {
        let path = dir.path().join(format!("snap-{n}.segqsnap"));
        std::fs::write(
            &path,
            segq::engine::persist::write_snapshot(frozen, n).unwrap(),
        )
        .unwrap();
        let snap = Arc::new(segq::snapshot::Snapshot::open(&path).unwrap());
        ws.rebase(frozen, snap).unwrap();
    };
    // c1 = {u0, u1} lives in a first snapshot.
    let resolved = segq::cohorts::resolve(&ws.users, &ch(&["u0", "u1"]));
    ws.apply_resolved(AMP, "c1", &resolved, now).unwrap();
    let frozen = ws.clone();
    compact(&mut ws, &frozen, 1);
    // A second compaction freezes it; then it is deleted and made again.
    let frozen = ws.clone();
    ws.delete_cohort(AMP, "c1").unwrap();
    let resolved = segq::cohorts::resolve(&ws.users, &ch(&["u2"]));
    ws.apply_resolved(AMP, "c1", &resolved, now).unwrap();
    compact(&mut ws, &frozen, 2);
    let c = ws.cohorts.get(&CohortKey::new(AMP, "c1")).unwrap();
    assert_eq!(
        c.members
            .iter()
            .expect("readable members")
            .collect::<Vec<_>>(),
        vec![u[2].0]
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn a_cohort_a_saved_segment_uses_is_not_deleted_409_naming_the_segments() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c1", "One"))
        .expect(201);
    s.create_cohort("amplitude", &cohort_body(&f.secret, "c2", "Two"))
        .expect(201);
    let saved = s.admin_post(
        &format!("/workspaces/{ws}/segments"),
        &json!({"name": "uses c1", "filter": "amplitude_cohorts includes c1"}),
    );
    assert!(saved.status == 200 || saved.status == 201, "{}", saved.text);
    let seg_id = saved.json()["id"].as_str().expect("an id").to_string();
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/cohorts/amplitude/c1"));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains(&seg_id), "{}", r.text);
    let r = s.post(
        "/partners/amplitude/cohorts/delete",
        &json!({"partner_api_key": crate::support::server::PARTNER_API_KEY,
                "client_secret": f.secret, "cohort_id": "c1"}),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.message().contains(&seg_id), "{}", r.text);
    assert_eq!(s.cohorts(ws).len(), 2);
    // Unused: deleted by the admin route; then unknown.
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/cohorts/amplitude/c2"));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/cohorts/amplitude/c2"));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/cohorts/nosuch/c2"));
    assert_eq!(r.status, 404, "{}", r.text);
    // Wrong credentials: 401, nothing deleted.
    let r = s.post(
        "/partners/amplitude/cohorts/delete",
        &json!({"partner_api_key": crate::support::server::PARTNER_API_KEY,
                "client_secret": "wrong", "cohort_id": "c1"}),
    );
    assert_eq!(r.status, 401, "{}", r.text);
    // Once the segment is gone, the cohort can go.
    s.request(
        reqwest::Method::DELETE,
        &format!("/workspaces/{ws}/segments/{seg_id}"),
        None,
        Vec::new(),
        true,
    )
    .expect(200);
    let r = s.admin_delete(&format!("/admin/workspaces/{ws}/cohorts/amplitude/c1"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(s.cohorts(ws).is_empty());
    // The metrics label the new routes.
    let m = s.metrics();
    assert!(
        m.contains("route=\"/admin/workspaces/{ws}/cohorts/{partner}/{cohort_id}\""),
        "{m}"
    );
    assert!(
        m.contains("route=\"/partners/{partner}/cohorts/delete\""),
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// 12. Error bodies echo inputs short
// ---------------------------------------------------------------------------

#[test]
fn a_900_kb_cohort_name_comes_back_short_in_the_404() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    let long = "é".repeat(450_000); // 900,000 bytes
    let r = s.admin_post(
        &format!("/workspaces/{ws}/segments/count"),
        &json!({"filter": {"filter": "amplitude_cohorts", "comparison": "includes_value",
                           "value": long}}),
    );
    assert_eq!(r.status, 404, "{}", &r.text[..r.text.len().min(300)]);
    assert!(r.text.len() < 1024, "a body of {} bytes", r.text.len());
    let m = r.message();
    assert!(m.contains("… (900000 bytes)"), "{m}");
    assert!(m.contains(&"é".repeat(64)), "{m}");
    // The text form too.
    let r = s.admin_post(
        &format!("/workspaces/{ws}/segments/count"),
        &json!({"filter": format!("amplitude_cohorts includes \"{long}\"")}),
    );
    assert_eq!(r.status, 404, "{}", &r.text[..r.text.len().min(300)]);
    assert!(r.text.len() < 1024, "a body of {} bytes", r.text.len());
}

#[test]
fn library_errors_cut_echoed_values_on_char_boundaries() {
    let long = "ü".repeat(1000);
    let e = Error::NoSuchCohort {
        partner: AMP,
        value: long.clone(),
    };
    let text = e.to_string();
    assert!(text.len() < 300, "{text}");
    assert!(
        text.ends_with(&format!("\"{}\"… (2000 bytes)", "ü".repeat(64))),
        "{text}"
    );
    // Short values are shown whole, as before.
    let e = Error::UnknownWorkspace {
        name: "acme".into(),
    };
    assert_eq!(e.to_string(), "no workspace \"acme\"");
    let e = Error::UnknownCohort {
        key: CohortKey::new(AMP, long),
    };
    assert!(e.to_string().len() < 300);
    let e = Error::AmbiguousCohortName {
        partner: AMP,
        name: "x".repeat(5000),
        ids: (0..50)
            .map(|i| format!("{i}{}", "y".repeat(5000)))
            .collect(),
    };
    let text = e.to_string();
    assert!(text.len() < 2000, "{} bytes", text.len());
    assert!(text.contains("and 40 more"), "{text}");
}

// ---------------------------------------------------------------------------
// 16. Long identifiers and the body limit
// ---------------------------------------------------------------------------

#[test]
fn an_identifier_over_1024_bytes_is_unmatched_and_the_rest_of_the_batch_applies() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    s.upsert_user(ws, &json!({"external_id": "u0"}));
    let long = "x".repeat(1025);
    let r = s.users(
        "amplitude",
        &users_body(
            &f.secret,
            "c1",
            json!([{"user_ids": ["u0", long], "device_ids": [long],
                    "aliases": [{"alias_label": "email", "alias_name": long}]}]),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"message": "success", "matched": 1, "unmatched": 3, "refused_device_ids": 0})
    );
    assert_eq!(s.size(ws, "amplitude", "c1"), 1);
    let c = s.cohort(ws, "amplitude", "c1").expect("listed");
    let sample: Vec<&str> = c["recent_unmatched"]
        .as_array()
        .expect("a sample")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sample.len(), 3, "{sample:?}");
    for entry in &sample {
        assert!(entry.len() < 200, "an entry of {} bytes", entry.len());
        assert!(entry.contains("… (1025 bytes)"), "{entry}");
    }
    assert!(sample[0].starts_with("user_id:xxx"));
}

/// The largest request the protocol allows: 1,000 aliases, each in its own
/// object, labels and names at 1,024 bytes of characters JSON escapes as
/// six bytes, and a cohort_id like them.
fn largest_request(secret: &str) -> Value {
    let worst = "\u{1}".repeat(1024);
    let changes: Vec<Value> = (0..1000)
        .map(|_| {
            json!({"aliases": [{"alias_name": worst, "alias_label": worst}],
                   "should_remove": false})
        })
        .collect();
    users_body(secret, &worst, json!(changes))
}

#[test]
fn the_default_body_limit_fits_every_request_the_protocol_allows() {
    let body = serde_json::to_vec(&largest_request("234567-2345-2345-23456789")).unwrap();
    assert!(body.len() > 12_000_000, "{} bytes", body.len());
    assert!(
        body.len() <= DEFAULT_MAX_BODY_BYTES,
        "{} bytes over the default {DEFAULT_MAX_BODY_BYTES}",
        body.len()
    );
    let req = parse_users_request(&body).expect("a valid request");
    assert_eq!(req.identifiers(), 1000);
}

#[test]
fn a_batch_of_1000_aliases_at_the_length_limits_is_served_with_the_default_limit() {
    let f = Fixture::new(&[]);
    let (s, ws) = (&f.server, f.ws.as_str());
    let label = "l".repeat(1024);
    s.upsert_user(
        ws,
        &json!({"external_id": "u0",
                "aliases": [{"alias_label": label, "alias_name": format!("0000{}", "n".repeat(1020))}]}),
    );
    let aliases: Vec<Value> = (0..1000)
        .map(|i| {
            let name = format!("{i:04}{}", "n".repeat(1020));
            json!({"alias_label": label, "alias_name": name})
        })
        .collect();
    let body = users_body(&f.secret, "c1", json!([{"aliases": aliases}]));
    assert!(serde_json::to_vec(&body).unwrap().len() > 2_000_000);
    let r = s.users("amplitude", &body);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["unmatched"], 999);
    assert_eq!(r.json()["matched"], 1, "{}", r.text);
    // The largest request, too.
    let r = s.users("amplitude", &largest_request(&f.secret));
    assert_eq!(r.status, 201, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.json()["unmatched"], 1000);
}
