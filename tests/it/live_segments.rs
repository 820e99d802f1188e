//! Live segments and the result cache: every saved segment kept as a
//! bitmap equals a fresh evaluation after every change (random streams of
//! imports, users created, cohort deletes, segment saves and deletes,
//! compactions and restarts); sizes, checks and counts whose plan is a
//! saved segment's are answered from them; the result cache answers a
//! repeated count until something it read changes, and holds its budget.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use proptest::prelude::*;
use roaring::RoaringBitmap;
use segq::engine::{Engine, WorkspaceHandle};
use segq::import::parse_users_request;
use segq::query::service::{self, CountMode, Target};
use segq::segment::chunk::Prepared;
use segq::segment::{plan, BucketCmp, Filter};
use segq::users::NewUser;
use segq::workspace::source::Uncached;
use segq::{Partner, UserRef};
use serde_json::json;

const P: Partner = Partner::Amplitude;
const COHORTS: usize = 5;
const EXACT: CountMode = CountMode::Exact { explain: false };

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn handle(e: &Engine) -> Arc<WorkspaceHandle> {
    e.workspace("w").unwrap()
}

fn add_users(h: &WorkspaceHandle, from: u32, n: u32) {
    let users = (from..from + n)
        .map(|i| NewUser {
            external_id: Some(format!("u{i}")),
            devices: vec![],
            aliases: vec![],
            bucket: None,
        })
        .collect();
    let r = h.upsert_users(users).unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
}

fn import(h: &WorkspaceHandle, cohort: usize, add: &[u32], remove: &[u32]) {
    let ids = |v: &[u32]| v.iter().map(|u| format!("u{u}")).collect::<Vec<_>>();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": format!("c{cohort}"),
        "cohort_changes": [{"user_ids": ids(add)}, {"user_ids": ids(remove), "should_remove": true}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    h.import_users(P, &req, Utc::now()).unwrap();
}

/// A fresh evaluation of `filter` on the workspace as it is now.
fn fresh(h: &WorkspaceHandle, filter: &Filter) -> segq::Result<RoaringBitmap> {
    let ws = h.read();
    let p = plan::plan(&*ws, filter)?;
    Prepared::new(&ws, &p, &Uncached)?.members()
}

fn count(h: &WorkspaceHandle, target: Target) -> segq::Result<u64> {
    let v = service::count(h, &target, EXACT)?;
    Ok(v["count"].as_u64().unwrap())
}

#[derive(Clone, Debug)]
enum GenFilter {
    Cohort(usize, bool),
    Bucket(u16, u16),
    And(Vec<GenFilter>),
    Or(Vec<GenFilter>),
    Not(Box<GenFilter>),
}

impl GenFilter {
    fn filter(&self) -> Filter {
        match self {
            GenFilter::Cohort(i, inc) => Filter::Cohort {
                partner: P,
                cohort: format!("c{i}"),
                includes: *inc,
            },
            GenFilter::Bucket(a, b) => Filter::Bucket(BucketCmp::Between(*a.min(b), *a.max(b))),
            GenFilter::And(c) => Filter::And(c.iter().map(GenFilter::filter).collect()),
            GenFilter::Or(c) => Filter::Or(c.iter().map(GenFilter::filter).collect()),
            GenFilter::Not(c) => Filter::Not(Box::new(c.filter())),
        }
    }
}

fn gen_filter() -> impl Strategy<Value = GenFilter> {
    let leaf = prop_oneof![
        4 => (0..COHORTS, any::<bool>()).prop_map(|(i, inc)| GenFilter::Cohort(i, inc)),
        1 => (0u16..10_000, 0u16..10_000).prop_map(|(a, b)| GenFilter::Bucket(a, b)),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(GenFilter::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(GenFilter::Or),
            inner.prop_map(|c| GenFilter::Not(Box::new(c))),
        ]
    })
}

#[derive(Clone, Debug)]
enum Op {
    Import {
        cohort: usize,
        add: Vec<u32>,
        remove: Vec<u32>,
    },
    Users(u32),
    DeleteCohort(usize),
    Save(usize, GenFilter),
    DeleteSegment(usize),
    Compact,
    Restart,
}

/// Users in the first chunk, around the chunk boundary, anywhere (some
/// past the users: unmatched).
fn user() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..2_000, 65_400u32..65_700, 0u32..70_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..COHORTS, prop::collection::vec(user(), 0..250), prop::collection::vec(user(), 0..60))
            .prop_map(|(cohort, add, remove)| Op::Import { cohort, add, remove }),
        2 => (1u32..300).prop_map(Op::Users),
        1 => (0..COHORTS).prop_map(Op::DeleteCohort),
        3 => (0..3usize, gen_filter()).prop_map(|(s, f)| Op::Save(s, f)),
        1 => (0..3usize).prop_map(Op::DeleteSegment),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

/// Every live segment against a fresh evaluation; sizes, checks and
/// counts (by id and by an equal filter) against it; and the query
/// filters, counted through the result cache, against theirs.
fn check_all(h: &WorkspaceHandle, queries: &[Filter], probe: &[u32]) -> Result<(), TestCaseError> {
    let saved: Vec<(String, Filter)> = h
        .read()
        .segments
        .values()
        .map(|s| (s.id.clone(), s.filter.clone()))
        .collect();
    prop_assert_eq!(h.live().count(), saved.len());
    for (id, filter) in &saved {
        let want = fresh(h, filter).unwrap();
        prop_assert_eq!(
            h.live().members(id).cloned(),
            Some(want.clone()),
            "segment {} = {}",
            id,
            filter
        );
        prop_assert_eq!(count(h, Target::Segment(id.clone())).unwrap(), want.len());
        prop_assert_eq!(
            count(h, Target::Filter(filter.clone())).unwrap(),
            want.len()
        );
        for &u in probe {
            let v = service::check_user(
                h,
                &Target::Segment(id.clone()),
                &UserRef::ExternalId(format!("u{u}")),
            )
            .unwrap();
            if v.get("user_id").is_some() {
                let uid = v["user_id"].as_u64().unwrap() as u32;
                prop_assert_eq!(v["member"].as_bool(), Some(want.contains(uid)));
            } else {
                prop_assert_eq!(v["member"].as_bool(), Some(false));
            }
        }
    }
    for q in queries {
        // Twice: the second may come from the cache.
        for _ in 0..2 {
            match (fresh(h, q), count(h, Target::Filter(q.clone()))) {
                (Ok(want), Ok(got)) => prop_assert_eq!(got, want.len(), "query {}", q),
                (Err(_), Err(_)) => {}
                (want, got) => prop_assert!(false, "query {q}: fresh {want:?}, counted {got:?}"),
            }
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, queries: Vec<GenFilter>, probe: Vec<u32>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let mut h = handle(&engine);
    let mut users = 66_000;
    add_users(&h, 0, users);
    for c in 0..COHORTS {
        let add: Vec<u32> = (0..users)
            .filter(|u| u % (c as u32 + 2) == 0)
            .take(3_000)
            .collect();
        for part in add.chunks(1_000) {
            import(&h, c, part, &[]);
        }
    }
    let queries: Vec<Filter> = queries.iter().map(GenFilter::filter).collect();
    let mut slots: [Option<String>; 3] = Default::default();
    check_all(&h, &queries, &probe)?;
    for op in ops {
        match op {
            Op::Import {
                cohort,
                add,
                remove,
            } => import(&h, cohort, &add, &remove),
            Op::Users(n) => {
                add_users(&h, users, n);
                users += n;
            }
            Op::DeleteCohort(c) => {
                // Refused while a saved segment names it.
                let _ = h.delete_cohort(P, &format!("c{c}"));
            }
            Op::Save(s, f) => {
                // Changes the slot's segment, or saves a new one; refused
                // if it names a deleted cohort.
                let saved = match &slots[s] {
                    Some(id) => h.update_segment(id, None, Some(&f.filter())),
                    None => h.save_segment(None, "s", &f.filter()),
                };
                if let Ok(saved) = saved {
                    slots[s] = Some(saved.id);
                }
            }
            Op::DeleteSegment(s) => {
                if let Some(id) = slots[s].take() {
                    h.delete_segment(&id).unwrap();
                }
            }
            Op::Compact => {
                h.compact().unwrap();
            }
            Op::Restart => {
                drop(h);
                drop(engine);
                engine = open(dir.path());
                h = handle(&engine);
            }
        }
        check_all(&h, &queries, &probe)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn live_segments_equal_a_fresh_evaluation_after_every_change(
        ops in prop::collection::vec(op(), 1..14),
        queries in prop::collection::vec(gen_filter(), 1..4),
        probe in prop::collection::vec(user(), 1..6),
    ) {
        run(ops, queries, probe)?;
    }
}

fn cache(h: &WorkspaceHandle) -> (u64, u64) {
    let s = h.results().stats();
    (s.hits, s.misses)
}

/// Counts `f` and says whether the result cache answered it, checking the
/// count against a fresh evaluation.
fn counted_from_cache(h: &WorkspaceHandle, f: &Filter) -> bool {
    let before = cache(h);
    let got = count(h, Target::Filter(f.clone())).unwrap();
    assert_eq!(got, fresh(h, f).unwrap().len(), "{f}");
    let after = cache(h);
    assert_eq!(after.0 + after.1, before.0 + before.1 + 1, "one look-up");
    after.0 == before.0 + 1
}

fn parse(s: &str) -> Filter {
    segq::segment::parse(s).unwrap()
}

#[test]
fn the_result_cache_answers_repeats_until_something_it_read_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    add_users(&h, 0, 1_000);
    for c in 0..3 {
        let add: Vec<u32> = (0..1_000).filter(|u| u % (c + 2) == 0).collect();
        import(&h, c as usize, &add[..add.len().min(1_000)], &[]);
    }
    let and = parse("amplitude_cohorts includes c0 and amplitude_cohorts includes c1");
    let not = parse("amplitude_cohorts includes c0 and not amplitude_cohorts includes c1");
    let not_only = parse("not amplitude_cohorts includes c0");
    // Hit on repeat, also for the same plan written otherwise.
    assert!(!counted_from_cache(&h, &and));
    assert!(counted_from_cache(&h, &and));
    assert!(counted_from_cache(
        &h,
        &parse("amplitude_cohorts includes c1 and amplitude_cohorts includes c0")
    ));
    // An import to a cohort it reads: a miss; to another cohort: a hit.
    import(&h, 1, &[1, 3, 5], &[2]);
    assert!(!counted_from_cache(&h, &and));
    import(&h, 2, &[7, 9], &[]);
    assert!(counted_from_cache(&h, &and));
    // A user created: a miss for a plan reading the users (NOT), a hit
    // for one that reads only its cohorts.
    assert!(!counted_from_cache(&h, &not_only));
    assert!(!counted_from_cache(&h, &not));
    assert!(counted_from_cache(&h, &not_only));
    assert!(counted_from_cache(&h, &not));
    add_users(&h, 1_000, 1);
    assert!(!counted_from_cache(&h, &not_only));
    assert!(counted_from_cache(&h, &not));
    assert!(counted_from_cache(&h, &and));
    // A cohort deleted and created again under its id: a miss.
    let uses_c2 = parse("amplitude_cohorts includes c2 or amplitude_cohorts includes c1");
    assert!(!counted_from_cache(&h, &uses_c2));
    assert!(counted_from_cache(&h, &uses_c2));
    h.delete_cohort(P, "c2").unwrap();
    assert!(count(&h, Target::Filter(uses_c2.clone())).is_err());
    import(&h, 2, &[11, 12], &[]);
    assert!(!counted_from_cache(&h, &uses_c2));
    // A compaction: a miss (the cohorts move onto the new snapshot), the
    // same count.
    assert!(counted_from_cache(&h, &and));
    h.compact().unwrap();
    assert!(!counted_from_cache(&h, &and));
    assert!(counted_from_cache(&h, &and));
    // After a restart, nothing is cached.
    drop(h);
    drop(engine);
    let engine = open(dir.path());
    let h = handle(&engine);
    assert!(!counted_from_cache(&h, &and));
    assert!(counted_from_cache(&h, &and));
}

#[test]
fn the_result_cache_holds_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    // The configuration's budget: about three entries.
    drop(open(dir.path()));
    let path = dir.path().join("segq.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["result_cache_bytes"] = json!(700);
    std::fs::write(&path, config.to_string()).unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    add_users(&h, 0, 100);
    for c in 0..COHORTS {
        import(
            &h,
            c,
            &(0..50).map(|u| u + c as u32).collect::<Vec<_>>(),
            &[],
        );
    }
    let pairs: Vec<Filter> = (1..COHORTS)
        .map(|c| {
            parse(&format!(
                "amplitude_cohorts includes c0 and amplitude_cohorts includes c{c}"
            ))
        })
        .collect();
    for f in &pairs {
        assert!(!counted_from_cache(&h, f));
        let s = h.results().stats();
        assert!(s.bytes <= 700, "{s:?}");
    }
    let s = h.results().stats();
    assert!(s.entries < pairs.len() as u64 && s.entries > 0, "{s:?}");
    // The oldest went first; the newest is still there.
    assert!(counted_from_cache(&h, &pairs[pairs.len() - 1]));
    assert!(!counted_from_cache(&h, &pairs[0]));
    // The metric shows it.
    let mut text = String::new();
    segq::server::metrics::render_workspaces(&engine, &mut text);
    assert!(
        text.contains("segq_result_cache_hits_total{workspace=\"w\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("segq_result_cache_misses_total{workspace=\"w\"} 5"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "segq_result_cache_bytes{{workspace=\"w\"}} {}",
            h.results().stats().bytes
        )),
        "{text}"
    );
}

#[test]
fn sizes_checks_and_equal_counts_come_from_the_live_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    add_users(&h, 0, 100);
    import(&h, 0, &(0..40).collect::<Vec<_>>(), &[]);
    import(&h, 1, &(20..60).collect::<Vec<_>>(), &[]);
    let f = parse("amplitude_cohorts includes c0 and not amplitude_cohorts includes c1");
    let s = h.save_segment(None, "s", &f).unwrap();
    assert_eq!(h.live().len(&s.id), Some(20));
    // The same plan, written otherwise, is counted from it: no cache
    // look-up.
    let same = parse("not (amplitude_cohorts includes c1 or not amplitude_cohorts includes c0)");
    assert_eq!(count(&h, Target::Filter(same)).unwrap(), 20);
    assert_eq!(count(&h, Target::Segment(s.id.clone())).unwrap(), 20);
    assert_eq!(cache(&h), (0, 0));
    // One-user checks by segment id.
    let v = service::check_user(
        &h,
        &Target::Segment(s.id.clone()),
        &UserRef::ExternalId("u5".into()),
    )
    .unwrap();
    assert_eq!(v["member"], json!(true));
    let v = service::check_user(
        &h,
        &Target::Segment(s.id.clone()),
        &UserRef::ExternalId("u25".into()),
    )
    .unwrap();
    assert_eq!(v["member"], json!(false));
    let v = service::check_user(
        &h,
        &Target::Segment(s.id.clone()),
        &UserRef::ExternalId("nobody".into()),
    )
    .unwrap();
    assert_eq!(
        (v["member"].clone(), v["reason"].is_string()),
        (json!(false), true)
    );
    // A change moves it.
    import(&h, 1, &[], &[25]);
    assert_eq!(h.live().len(&s.id), Some(21));
    let v = service::check_user(
        &h,
        &Target::Segment(s.id.clone()),
        &UserRef::ExternalId("u25".into()),
    )
    .unwrap();
    assert_eq!(v["member"], json!(true));
}

/// A saved segment that refers to one testing a relative time is not
/// live; once that one is changed to test no relative time it is (kept
/// as a fresh evaluation says), and again not once it tests one again.
#[test]
fn a_segment_referring_to_a_changed_segment_is_live_as_that_one_allows() {
    use segq::attributes::AttrType;
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    add_users(&h, 0, 100);
    h.declare_attribute("seen", AttrType::Time).unwrap();
    import(&h, 0, &(0..40).collect::<Vec<_>>(), &[]);
    import(&h, 1, &(30..50).collect::<Vec<_>>(), &[]);
    let relative = parse("attribute seen within last 30 days");
    let inner = h.save_segment(None, "inner", &relative).unwrap();
    let outer_filter = parse(&format!(
        "amplitude_cohorts includes c0 and not_in_segment {}",
        inner.id
    ));
    let outer = h.save_segment(None, "outer", &outer_filter).unwrap();
    assert_eq!(h.live().len(&inner.id), None);
    assert_eq!(h.live().len(&outer.id), None);
    // The inner one no longer tests a relative time: both are live.
    h.update_segment(
        &inner.id,
        None,
        Some(&parse("amplitude_cohorts includes c1")),
    )
    .unwrap();
    assert_eq!(h.live().len(&inner.id), Some(20));
    let want = fresh(&h, &outer_filter).unwrap();
    assert_eq!(want.len(), 30);
    assert_eq!(h.live().members(&outer.id), Some(&want));
    assert_eq!(count(&h, Target::Segment(outer.id.clone())).unwrap(), 30);
    // And changes keep it so.
    import(&h, 1, &[], &[30]);
    assert_eq!(
        h.live().members(&outer.id),
        Some(&fresh(&h, &outer_filter).unwrap())
    );
    assert_eq!(h.live().len(&outer.id), Some(31));
    // Relative again: neither is live, and both still count.
    h.update_segment(&inner.id, None, Some(&relative)).unwrap();
    assert_eq!(h.live().len(&inner.id), None);
    assert_eq!(h.live().len(&outer.id), None);
    assert_eq!(count(&h, Target::Segment(outer.id.clone())).unwrap(), 40);
}

/// The batch path of a refresh on a workspace held in memory: touched
/// users in more than 64 of one chunk (two groups), across a chunk
/// boundary, in a chunk re-evaluated whole, past the last user, and users
/// created and added to a cohort in the same write; each cohort's changes
/// read both as the evaluator's serialized copy (cached) and as the
/// in-memory bitmaps (nothing cached).
#[test]
fn a_batch_refresh_equals_a_fresh_evaluation() {
    use segq::cohorts::{MemberOp, ResolvedChanges};
    use segq::engine::record::{self, Change};
    use segq::workspace::live::{LiveSegments, Touched};
    use segq::workspace::source::{BitmapSource, SerialCache};
    use segq::{UserId, Workspace};

    fn created(u: u32) -> Change {
        Change::UserCreated {
            user: UserId(u),
            external_id: Some(format!("u{u}")),
            devices: vec![],
            aliases: vec![],
            bucket: (u * 7 % 10_000) as u16,
        }
    }
    fn changed(cohort: usize, add: &[u32], remove: &[u32]) -> Change {
        let ops = add
            .iter()
            .map(|&u| (u, false))
            .chain(remove.iter().map(|&u| (u, true)))
            .map(|(u, remove)| MemberOp {
                user: UserId(u),
                remove,
            })
            .collect::<Vec<_>>();
        Change::CohortChanged {
            partner: P,
            cohort_id: format!("c{cohort}"),
            at_ms: 0,
            resolved: ResolvedChanges {
                matched: ops.len() as u64,
                ops,
                ..ResolvedChanges::default()
            },
        }
    }
    fn write(ws: &mut Workspace, live: &mut LiveSegments, src: &dyn BitmapSource, c: Change) {
        record::apply(ws, &c).unwrap();
        let mut t = Touched::default();
        record::touched(&c, &mut t);
        live.refresh(ws, &t, src);
        for (id, s) in &ws.segments {
            let p = plan::plan(&*ws, &s.filter).unwrap();
            let want = Prepared::new(ws, &p, &Uncached).unwrap().members().unwrap();
            assert_eq!(live.members(id), Some(&want), "segment {id} = {}", s.filter);
            assert_eq!(live.len(id), Some(want.len()));
        }
    }

    let mut ws = Workspace::new("w", 1);
    let users = 140_000u32;
    for u in 0..users {
        record::apply(&mut ws, &created(u)).unwrap();
    }
    for c in 0..3u32 {
        let add: Vec<u32> = (0..users).filter(|u| u % (c + 2) == 0).collect();
        record::apply(&mut ws, &changed(c as usize, &add, &[])).unwrap();
    }
    let c = |i: usize| Filter::includes(P, format!("c{i}"));
    let filters = [
        c(0),
        Filter::And(vec![c(0), c(1)]),
        Filter::Or(vec![c(0), c(1), c(2)]),
        Filter::And(vec![Filter::Or(vec![c(1), c(2)]), c(0).not()]),
        Filter::And(vec![c(0), Filter::Bucket(BucketCmp::Between(1_000, 5_999))]),
        c(2).not(),
    ];
    for (i, f) in filters.iter().enumerate() {
        record::apply(
            &mut ws,
            &Change::SegmentSaved {
                id: format!("s{i}"),
                name: format!("s{i}"),
                filter: f.clone(),
                at_ms: 0,
            },
        )
        .unwrap();
    }
    let cached = SerialCache::default();
    let mut live = LiveSegments::build(&ws, &cached);
    // 70 users of chunk 0 (two groups of it), both sides of the first
    // chunk boundary, 120 users of chunk 1 (evaluated whole), users past
    // the last.
    let mut add: Vec<u32> = (1..71).map(|i| i * 13).collect();
    add.extend(65_530..65_542);
    add.extend((0..120).map(|i| 70_001 + i * 3));
    add.extend([users + 5, users + 70_000]);
    let remove: Vec<u32> = (0..40).map(|i| i * 17 + 1).collect();
    for src in [&cached as &dyn BitmapSource, &Uncached] {
        write(&mut ws, &mut live, src, changed(0, &add, &remove));
        write(&mut ws, &mut live, src, changed(1, &remove, &add));
        write(&mut ws, &mut live, src, changed(0, &remove, &add));
    }
    // Users created and added to a cohort (and removed from another) in
    // the same write.
    let new: Vec<u32> = (users..users + 10).collect();
    let mut batch: Vec<Change> = new.iter().map(|&u| created(u)).collect();
    batch.push(changed(1, &new, &[]));
    batch.push(changed(2, &new[..3], &[]));
    batch.push(changed(2, &[], &new[..1]));
    write(&mut ws, &mut live, &cached, Change::Batch(batch));
    // Every cohort serialized at its version: the cached copies are read.
    for c in ws.cohorts.iter_sorted() {
        cached.bytes(c);
    }
    write(&mut ws, &mut live, &cached, changed(2, &add, &new[3..]));
}

/// The batch path of a refresh over a snapshot: a cohort's changes since
/// the snapshot read as the evaluator's serialized copy (a query took it
/// at the cohort's version) and, once the cohort changes again, as the
/// in-memory bitmaps.
#[test]
fn a_batch_refresh_reads_a_snapshot_and_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    add_users(&h, 0, 70_000);
    let evens: Vec<u32> = (0..4_000).map(|u| u * 2).collect();
    let thirds: Vec<u32> = (0..4_000).map(|u| u * 3).collect();
    for part in evens.chunks(1_000) {
        import(&h, 0, part, &[]);
    }
    for part in thirds.chunks(1_000) {
        import(&h, 1, part, &[]);
    }
    import(&h, 2, &[1], &[]);
    let both = parse("amplitude_cohorts includes c0 and amplitude_cohorts includes c1");
    let either = parse("amplitude_cohorts includes c0 or amplitude_cohorts includes c1");
    let s_both = h.save_segment(None, "both", &both).unwrap().id;
    let s_either = h.save_segment(None, "either", &either).unwrap().id;
    h.compact().unwrap();
    let check = |h: &WorkspaceHandle| {
        for (id, f) in [(&s_both, &both), (&s_either, &either)] {
            assert_eq!(h.live().members(id), Some(&fresh(h, f).unwrap()), "{f}");
        }
    };
    // Members of the snapshot's bitmap removed, in chunk 0 and 1.
    let removed: Vec<u32> = (0..200).map(|u| u * 12).chain([65_538, 66_000]).collect();
    import(&h, 0, &[], &removed);
    check(&h);
    // A query takes c0's changes serialized; a change to c1 then reads
    // them (c0 unchanged).
    count(
        &h,
        Target::Filter(parse(
            "amplitude_cohorts includes c0 and not amplitude_cohorts includes c2",
        )),
    )
    .unwrap();
    // Fewer than `DENSE_CHUNK` a chunk: checked in a batch.
    let touched: Vec<u32> = (0..70).map(|u| u * 4).chain(65_530..65_545).collect();
    import(&h, 1, &touched, &[]);
    check(&h);
    import(&h, 1, &[], &touched[..40]);
    check(&h);
    // c0 changed again: its changes are read in memory.
    import(&h, 0, &touched[..30], &touched[30..]);
    check(&h);
}
