//! Property tests of custom attribute and segment filters through the
//! engine: random change streams (users created with attributes of every
//! type, values changed and unset, cohorts imported, saved segments that
//! refer to saved segments, compactions and restarts), after each of which
//! random trees mixing cohort, bucket, attribute (every comparison) and
//! segment leaves count and check as the reference evaluator says, and
//! live segments hold what a fresh evaluation does; and the bit-sliced
//! range filters against a full scan of a model of the values, with
//! changes on top of a snapshot, across compactions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use chrono::Utc;
use proptest::prelude::*;
use segq::attributes::{AttrInput, AttrType};
use segq::engine::{Engine, WorkspaceHandle};
use segq::import::parse_users_request;
use segq::query::service::{self, CountMode, Target};
use segq::segment::chunk::Prepared;
use segq::segment::reference;
use segq::segment::{plan, AttrCmp, BucketCmp, Filter, Number, Time};
use segq::users::NewUser;
use segq::workspace::source::Uncached;
use segq::{Partner, UserRef};
use serde_json::{json, Value};

const P: Partner = Partner::Amplitude;
const COHORTS: usize = 3;
const SLOTS: usize = 3;
const EXACT: CountMode = CountMode::Exact { explain: false };

/// When the test binary first asked: every generated time is a whole hour
/// and a half away from it, and every relative bound (`within last N
/// days|hours`, `more than N days ago`) a whole number of hours, so no
/// value crosses a bound while the tests run (for 30 minutes): the fast
/// path and the reference, each reading the clock, agree without a pinned
/// `now`.
static START: LazyLock<i64> = LazyLock::new(|| Utc::now().timestamp());

/// The attributes: name and type. `never` is declared and given to nobody.
const ATTRS: [(&str, AttrType); 6] = [
    ("country", AttrType::String),
    ("sessions", AttrType::Integer),
    ("spend", AttrType::Decimal),
    ("subscribed", AttrType::Boolean),
    ("seen", AttrType::Time),
    ("never", AttrType::Integer),
];

const STRINGS: [&str; 7] = ["BR", "BE", "DE", "US", "us", "B.R", "Brasil"];

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(dir).unwrap().0
}

fn handle(e: &Engine) -> Arc<WorkspaceHandle> {
    e.workspace("w").unwrap()
}

/// A generated value of attribute `ATTRS[attr]`.
#[derive(Clone, Debug)]
enum GenValue {
    String(usize),
    Integer(i64),
    /// Decimal units (1/10,000).
    Decimal(i64),
    Boolean(bool),
    /// Hours from [`START`] (plus half an hour, away from it), written as
    /// RFC 3339 or as seconds.
    Time(i64, bool),
}

/// Seconds of a generated time: `START ± (|hours| h + 30 min)`.
fn time_at(hours: i64) -> i64 {
    let half = if hours < 0 { -1_800 } else { 1_800 };
    *START + hours * 3_600 + half
}

impl GenValue {
    fn json(&self) -> Value {
        match self {
            GenValue::String(i) => json!(STRINGS[*i]),
            GenValue::Integer(v) => json!(v),
            GenValue::Decimal(u) => json!(*u as f64 / 10_000.0),
            GenValue::Boolean(b) => json!(b),
            GenValue::Time(h, as_text) => {
                let t = time_at(*h);
                if *as_text {
                    json!(Time::from_unix(t).unwrap().to_string())
                } else {
                    json!(t)
                }
            }
        }
    }
}

fn gen_value(attr: usize) -> BoxedStrategy<GenValue> {
    match ATTRS[attr].1 {
        AttrType::String => (0..STRINGS.len()).prop_map(GenValue::String).boxed(),
        AttrType::Integer => prop_oneof![
            8 => -30i64..30,
            1 => prop::sample::select(vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, -1 << 40]),
        ]
        .prop_map(GenValue::Integer)
        .boxed(),
        AttrType::Decimal => prop_oneof![
            // Quarters (equal to some bounds), and any unit.
            (-160i64..160).prop_map(|q| q * 2_500),
            -400_000i64..400_000,
        ]
        .prop_map(GenValue::Decimal)
        .boxed(),
        AttrType::Boolean => any::<bool>().prop_map(GenValue::Boolean).boxed(),
        AttrType::Time => (-2_400i64..2_400, any::<bool>())
            .prop_map(|(h, t)| GenValue::Time(h, t))
            .boxed(),
    }
}

/// Some of a user's attributes (by index in [`ATTRS`]): `None` unsets.
type GenAttrs = Vec<(usize, Option<GenValue>)>;

/// A new user's attributes: each (but `never`) most of the time.
fn full_attrs() -> impl Strategy<Value = GenAttrs> {
    let each: Vec<_> = (0..ATTRS.len() - 1)
        .map(|a| prop::option::weighted(0.75, gen_value(a)))
        .collect();
    each.prop_map(|values| {
        values
            .into_iter()
            .enumerate()
            .filter_map(|(a, v)| v.map(|v| (a, Some(v))))
            .collect()
    })
}

/// Some attributes of one user: `None` unsets (JSON `null`).
fn gen_attrs() -> impl Strategy<Value = GenAttrs> {
    prop::collection::vec(
        // Not `never` (the last).
        (0..ATTRS.len() - 1)
            .prop_flat_map(|a| (Just(a), prop::option::weighted(0.85, gen_value(a)).boxed())),
        0..5,
    )
}

fn inputs(attrs: &[(usize, Option<GenValue>)]) -> Vec<(String, AttrInput)> {
    attrs
        .iter()
        .map(|(a, v)| {
            let v = v.as_ref().map_or(Value::Null, GenValue::json);
            (ATTRS[*a].0.to_string(), AttrInput::Json(v))
        })
        .collect()
}

/// A comparison, its times as hours from [`START`].
#[derive(Clone, Debug)]
enum GenCmp {
    Plain(AttrCmp),
    Before(i64),
    After(i64),
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        4 => (-35i64..35).prop_map(Number::int),
        // Quarters, hundredths, and places past a decimal's four.
        2 => (-170i64..170).prop_map(|q| Number::new(q * 25, 2).unwrap()),
        2 => (-4_500i64..4_500).prop_map(|c| Number::new(c, 2).unwrap()),
        2 => (-4_000_000i64..4_000_000, 4u8..=6).prop_map(|(m, s)| Number::new(m, s).unwrap()),
        1 => prop::sample::select(vec![
            Number::int(i64::MIN),
            Number::int(i64::MAX),
            Number::int(i64::MAX - 1),
            Number::int(-1 << 40),
            Number::new(i64::MAX, 4).unwrap(),
            Number::new(i64::MIN, 18).unwrap(),
        ]),
    ]
}

fn string_cmp() -> impl Strategy<Value = AttrCmp> {
    let value = || (0..STRINGS.len() + 1).prop_map(|i| STRINGS.get(i).unwrap_or(&"XX").to_string());
    prop_oneof![
        value().prop_map(AttrCmp::Equals),
        value().prop_map(AttrCmp::DoesNotEqual),
        prop::collection::vec(value(), 1..4).prop_map(AttrCmp::IsAnyOf),
        prop::sample::select(vec![
            "^B",
            "R$",
            "^(BR|DE)$",
            "u",
            "[a-z]",
            "^$",
            ".",
            "(?i)^us$"
        ])
        .prop_map(|r| AttrCmp::MatchesRegex(r.to_string())),
        prop::sample::select(vec!["B", "BR", "U", "u", "Br", "B."])
            .prop_map(|p| AttrCmp::StartsWith(p.to_string())),
    ]
}

fn number_cmp() -> impl Strategy<Value = AttrCmp> {
    prop_oneof![
        number().prop_map(AttrCmp::Eq),
        number().prop_map(AttrCmp::Ne),
        number().prop_map(AttrCmp::Lt),
        number().prop_map(AttrCmp::Le),
        number().prop_map(AttrCmp::Gt),
        number().prop_map(AttrCmp::Ge),
        // lo > hi too (the parsers refuse it; a tree may hold it).
        (number(), number()).prop_map(|(a, b)| AttrCmp::Between(a.min(b), a.max(b))),
        (number(), number()).prop_map(|(a, b)| AttrCmp::Between(a, b)),
    ]
}

fn time_cmp() -> impl Strategy<Value = GenCmp> {
    prop_oneof![
        // On a value (equal: neither before nor after) or between values.
        (-2_500i64..2_500).prop_map(GenCmp::Before),
        (-2_500i64..2_500).prop_map(GenCmp::After),
        (1u32..110).prop_map(|n| GenCmp::Plain(AttrCmp::WithinLastDays(n))),
        (1u32..2_500).prop_map(|n| GenCmp::Plain(AttrCmp::WithinLastHours(n))),
        (1u32..110).prop_map(|n| GenCmp::Plain(AttrCmp::MoreThanDaysAgo(n))),
    ]
}

/// A comparison on attribute `a`: one of its type's, or (rarely) any,
/// which the planner and the reference both refuse when it does not fit.
fn attr_leaf() -> impl Strategy<Value = GenFilter> {
    let typed = (0..ATTRS.len()).prop_flat_map(|a| {
        let cmp: BoxedStrategy<GenCmp> = match ATTRS[a].1 {
            AttrType::String => string_cmp().prop_map(GenCmp::Plain).boxed(),
            AttrType::Integer | AttrType::Decimal => number_cmp().prop_map(GenCmp::Plain).boxed(),
            AttrType::Boolean => prop_oneof![Just(AttrCmp::IsTrue), Just(AttrCmp::IsFalse)]
                .prop_map(GenCmp::Plain)
                .boxed(),
            AttrType::Time => time_cmp().boxed(),
        };
        let any_type = prop_oneof![
            Just(GenCmp::Plain(AttrCmp::Exists)),
            Just(GenCmp::Plain(AttrCmp::DoesNotExist)),
        ];
        (Just(a), prop_oneof![6 => cmp, 1 => any_type])
    });
    let misfit = (
        0..ATTRS.len(),
        prop_oneof![
            string_cmp().prop_map(GenCmp::Plain),
            number_cmp().prop_map(GenCmp::Plain),
            time_cmp(),
            Just(GenCmp::Plain(AttrCmp::IsTrue)),
        ],
    );
    prop_oneof![20 => typed, 1 => misfit].prop_map(|(a, c)| GenFilter::Attr(a, c))
}

#[derive(Clone, Debug)]
enum GenFilter {
    Cohort(usize, bool),
    Bucket(u16, u16),
    Attr(usize, GenCmp),
    /// A saved segment slot (an empty slot names no segment).
    Segment(usize, bool),
    And(Vec<GenFilter>),
    Or(Vec<GenFilter>),
    Not(Box<GenFilter>),
}

impl GenFilter {
    fn attr_leaves<'a>(&'a self, out: &mut Vec<&'a GenFilter>) {
        match self {
            GenFilter::Attr(..) => out.push(self),
            GenFilter::And(c) | GenFilter::Or(c) => c.iter().for_each(|c| c.attr_leaves(out)),
            GenFilter::Not(c) => c.attr_leaves(out),
            GenFilter::Cohort(..) | GenFilter::Bucket(..) | GenFilter::Segment(..) => {}
        }
    }

    fn filter(&self, slots: &[Option<String>]) -> Filter {
        match self {
            GenFilter::Cohort(i, inc) => Filter::Cohort {
                partner: P,
                cohort: format!("c{i}"),
                includes: *inc,
            },
            GenFilter::Bucket(a, b) => Filter::Bucket(BucketCmp::Between(*a.min(b), *a.max(b))),
            GenFilter::Attr(a, c) => Filter::Attribute {
                attribute: ATTRS[*a].0.to_string(),
                cmp: match c {
                    GenCmp::Plain(c) => c.clone(),
                    GenCmp::Before(h) => AttrCmp::Before(Time::from_unix(time_at(*h)).unwrap()),
                    GenCmp::After(h) => AttrCmp::After(Time::from_unix(time_at(*h)).unwrap()),
                },
            },
            GenFilter::Segment(s, included) => Filter::Segment {
                id: slots[*s].clone().unwrap_or_else(|| "seg_none".into()),
                included: *included,
            },
            GenFilter::And(c) => Filter::And(c.iter().map(|c| c.filter(slots)).collect()),
            GenFilter::Or(c) => Filter::Or(c.iter().map(|c| c.filter(slots)).collect()),
            GenFilter::Not(c) => Filter::Not(Box::new(c.filter(slots))),
        }
    }
}

fn gen_filter() -> impl Strategy<Value = GenFilter> {
    let leaf = prop_oneof![
        2 => (0..COHORTS, any::<bool>()).prop_map(|(i, inc)| GenFilter::Cohort(i, inc)),
        1 => (0u16..10_000, 0u16..10_000).prop_map(|(a, b)| GenFilter::Bucket(a, b)),
        6 => attr_leaf(),
        1 => (0..SLOTS, any::<bool>()).prop_map(|(s, inc)| GenFilter::Segment(s, inc)),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(GenFilter::And),
            prop::collection::vec(inner.clone(), 0..4).prop_map(GenFilter::Or),
            inner.prop_map(|c| GenFilter::Not(Box::new(c))),
        ]
    })
}

#[derive(Clone, Debug)]
enum Op {
    /// Users created (or, for existing external ids, updated) with
    /// attributes, in one batch.
    Users(Vec<(u32, GenAttrs)>),
    /// One user's attributes set and unset.
    Set(u32, GenAttrs),
    Import {
        cohort: usize,
        add: Vec<u32>,
        remove: Vec<u32>,
    },
    Save(usize, GenFilter),
    DeleteSegment(usize),
    Compact,
    Restart,
}

const MAX_USER: u32 = 400;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0..MAX_USER, gen_attrs()), 1..40).prop_map(Op::Users),
        4 => (0..MAX_USER, gen_attrs()).prop_map(|(u, a)| Op::Set(u, a)),
        2 => (0..COHORTS, prop::collection::vec(0..MAX_USER, 0..80), prop::collection::vec(0..MAX_USER, 0..20))
            .prop_map(|(cohort, add, remove)| Op::Import { cohort, add, remove }),
        3 => (0..SLOTS, gen_filter()).prop_map(|(s, f)| Op::Save(s, f)),
        1 => (0..SLOTS).prop_map(Op::DeleteSegment),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

fn import(h: &WorkspaceHandle, cohort: usize, add: &[u32], remove: &[u32]) {
    let ids = |v: &[u32]| v.iter().map(|u| format!("u{u}")).collect::<Vec<_>>();
    let body = json!({"partner_api_key": "k", "client_secret": "s", "cohort_id": format!("c{cohort}"),
        "cohort_changes": [{"user_ids": ids(add)}, {"user_ids": ids(remove), "should_remove": true}]});
    let req = parse_users_request(body.to_string().as_bytes()).unwrap();
    h.import_users(P, &req, Utc::now()).unwrap();
}

fn new_user(u: u32) -> NewUser {
    NewUser {
        external_id: Some(format!("u{u}")),
        ..NewUser::default()
    }
}

/// The fast paths' answer for `f`: the service's count (live segments,
/// result cache, frozen views), and the chunk evaluator's count and
/// members, which must agree with each other.
fn fast_count(h: &WorkspaceHandle, f: &Filter) -> segq::Result<u64> {
    let counted =
        service::count(h, &Target::Filter(f.clone()), EXACT).map(|v| v["count"].as_u64().unwrap());
    let ws = h.read();
    let direct = plan::plan(&*ws, f).and_then(|p| {
        let prepared = Prepared::new(&ws, &p, &Uncached)?;
        Ok((prepared.count()?, prepared.members()?.len()))
    });
    match (&counted, &direct) {
        (Ok(a), Ok((b, c))) => assert!(a == b && b == c, "{f}: {a} {b} {c}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{f}: service {counted:?}, chunk evaluator {direct:?}"),
    }
    counted
}

/// One filter, counted and checked (for `probe` users) by the fast paths
/// and by the reference evaluator.
fn check_filter(h: &WorkspaceHandle, f: &Filter, probe: &[u32]) -> Result<(), TestCaseError> {
    let want = reference::evaluate(&*h.read(), f);
    let got = fast_count(h, f);
    match (&want, &got) {
        (Ok(want), Ok(got)) => prop_assert_eq!(*got, want.len(), "{}", f),
        (Err(_), Err(_)) => return Ok(()),
        _ => prop_assert!(false, "{f}: reference {want:?}, counted {got:?}"),
    }
    let refs: Vec<UserRef> = probe
        .iter()
        .map(|u| UserRef::ExternalId(format!("u{u}")))
        .collect();
    let batch = service::check_users(h, &Target::Filter(f.clone()), &refs).unwrap();
    let ws = h.read();
    for (i, r) in refs.iter().enumerate() {
        let want = match ws.users.lookup(r) {
            Some(id) => reference::contains_user(&*ws, f, id).unwrap(),
            None => false,
        };
        prop_assert_eq!(
            batch["results"][i]["member"].as_bool(),
            Some(want),
            "{} for {}",
            f,
            r
        );
    }
    drop(ws);
    if let Some(r) = refs.first() {
        let one = service::check_user(h, &Target::Filter(f.clone()), r).unwrap();
        prop_assert_eq!(&one["member"], &batch["results"][0]["member"]);
    }
    Ok(())
}

/// Every saved segment (live or not) against the reference; every query.
fn check_all(
    h: &WorkspaceHandle,
    queries: &[GenFilter],
    slots: &[Option<String>],
    probe: &[u32],
) -> Result<(), TestCaseError> {
    let saved: Vec<(String, Filter)> = h
        .read()
        .segments
        .values()
        .map(|s| (s.id.clone(), s.filter.clone()))
        .collect();
    for (id, filter) in &saved {
        let want = reference::evaluate(&*h.read(), filter).unwrap();
        if let Some(live) = h.live().members(id) {
            prop_assert_eq!(live, &want, "live segment {} = {}", id, filter);
        } else {
            // Only a filter testing a relative time (itself or in a
            // segment it refers to) is left to queries.
            let expanded =
                segq::segment::expand_references(&*h.read(), filter, &mut |_, _| {}).unwrap();
            prop_assert!(expanded.is_relative(), "{id} = {filter} is not live");
        }
        let counted = service::count(h, &Target::Segment(id.clone()), EXACT).unwrap();
        prop_assert_eq!(counted["count"].as_u64(), Some(want.len()), "{}", filter);
        for &u in probe {
            let v = service::check_user(
                h,
                &Target::Segment(id.clone()),
                &UserRef::ExternalId(format!("u{u}")),
            )
            .unwrap();
            let member = v["user_id"]
                .as_u64()
                .is_some_and(|u| want.contains(u as u32));
            prop_assert_eq!(v["member"].as_bool(), Some(member), "{} for u{}", filter, u);
        }
        check_filter(
            h,
            &Filter::Segment {
                id: id.clone(),
                included: false,
            },
            probe,
        )?;
    }
    for q in queries {
        check_filter(h, &q.filter(slots), probe)?;
        // And each of its attribute leaves alone (most trees are
        // answered by a few of their leaves).
        let mut leaves = Vec::new();
        q.attr_leaves(&mut leaves);
        for l in leaves {
            check_filter(h, &l.filter(slots), probe)?;
        }
    }
    Ok(())
}

fn run(
    initial: Vec<GenAttrs>,
    ops: Vec<Op>,
    queries: Vec<GenFilter>,
    probe: Vec<u32>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let mut h = handle(&engine);
    for (name, ty) in ATTRS {
        h.declare_attribute(name, ty).unwrap();
    }
    // Every other user to start with, so later ones are created by the
    // stream.
    let first: Vec<_> = (0..MAX_USER)
        .step_by(2)
        .zip(&initial)
        .map(|(u, a)| (new_user(u), inputs(a)))
        .collect();
    let r = h.upsert_users_with(first).unwrap();
    prop_assert!(r.failed.is_empty(), "{:?}", r);
    for c in 0..COHORTS {
        let add: Vec<u32> = (0..MAX_USER).filter(|u| u % (c as u32 + 2) == 0).collect();
        import(&h, c, &add, &[]);
    }
    let mut slots: Vec<Option<String>> = vec![None; SLOTS];
    check_all(&h, &queries, &slots, &probe)?;
    for op in ops {
        match op {
            Op::Users(users) => {
                let batch = users
                    .iter()
                    .map(|(u, a)| (new_user(*u), inputs(a)))
                    .collect();
                let r = h.upsert_users_with(batch).unwrap();
                prop_assert!(r.failed.is_empty(), "{:?}", r);
            }
            Op::Set(u, a) => {
                let r = h.set_attributes(&UserRef::ExternalId(format!("u{u}")), &inputs(&a));
                let known = h
                    .read()
                    .users
                    .lookup(&UserRef::ExternalId(format!("u{u}")))
                    .is_some();
                prop_assert_eq!(r.is_ok(), known, "{:?}", r);
            }
            Op::Import {
                cohort,
                add,
                remove,
            } => import(&h, cohort, &add, &remove),
            Op::Save(s, f) => {
                // Refused when it would make a cycle, or names an empty
                // slot or a comparison that does not fit.
                let f = f.filter(&slots);
                let saved = match &slots[s] {
                    Some(id) => h.update_segment(id, None, Some(&f)),
                    None => h.save_segment(None, "s", &f),
                };
                if let Ok(saved) = saved {
                    slots[s] = Some(saved.id);
                }
            }
            Op::DeleteSegment(s) => {
                // Refused while another segment refers to it.
                if let Some(id) = &slots[s] {
                    if h.delete_segment(id).is_ok() {
                        slots[s] = None;
                    }
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
        check_all(&h, &queries, &slots, &probe)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn attribute_and_segment_filters_agree_with_the_reference_after_every_change(
        initial in prop::collection::vec(full_attrs(), MAX_USER as usize / 2),
        ops in prop::collection::vec(op(), 1..12),
        queries in prop::collection::vec(gen_filter(), 1..6),
        probe in prop::collection::vec(0..MAX_USER + 3, 1..6),
    ) {
        run(initial, ops, queries, probe)?;
    }
}

// ----- the bit-sliced index against a full scan -----

/// A number attribute's model: each user's value (integer, or decimal
/// units), as a number.
type Model = BTreeMap<u32, Number>;

#[derive(Clone, Debug)]
enum RangeOp {
    /// `(user, value)`: `None` unsets.
    Set(Vec<(u32, Option<i64>)>),
    Compact,
}

/// Users in the first chunk, around the boundary and in the second.
fn chunk_user() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..500, 65_500u32..65_600, 65_536u32..66_000]
}

fn range_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -300i64..300,
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1, 1 << 62, -(1 << 62)]),
    ]
}

/// Bounds near the values: for the integers (`k`, `k.d`) and for the
/// decimals, whose values are the same numbers of units (`k` units,
/// between two units).
fn range_cmp() -> impl Strategy<Value = AttrCmp> {
    let near = (-320i64..320, 1i64..10, 0..5usize).prop_map(|(k, d, kind)| match kind {
        0 => Number::int(k),
        1 => Number::new(k * 10 + d, 1).unwrap(),
        2 => Number::new(k, 4).unwrap(),
        3 => Number::new(k * 10 + d, 5).unwrap(),
        _ => Number::new(k * 100 - d, 6).unwrap(),
    });
    let bound = prop_oneof![
        8 => near,
        1 => prop::sample::select(vec![
            Number::int(i64::MIN),
            Number::int(i64::MAX),
            Number::int(1 << 62),
            Number::new(i64::MIN, 4).unwrap(),
        ]),
    ];
    (bound.clone(), bound).prop_flat_map(|(a, b)| {
        prop::sample::select(vec![
            AttrCmp::Eq(a),
            AttrCmp::Ne(a),
            AttrCmp::Lt(a),
            AttrCmp::Le(a),
            AttrCmp::Gt(a),
            AttrCmp::Ge(a),
            AttrCmp::Between(a.min(b), a.max(b)),
        ])
    })
}

fn holds(cmp: &AttrCmp, v: Option<Number>) -> bool {
    match (cmp, v) {
        (AttrCmp::Ne(n), v) => v != Some(*n),
        (_, None) => false,
        (AttrCmp::Eq(n), Some(v)) => v == *n,
        (AttrCmp::Lt(n), Some(v)) => v < *n,
        (AttrCmp::Le(n), Some(v)) => v <= *n,
        (AttrCmp::Gt(n), Some(v)) => v > *n,
        (AttrCmp::Ge(n), Some(v)) => v >= *n,
        (AttrCmp::Between(lo, hi), Some(v)) => *lo <= v && v <= *hi,
        (other, _) => panic!("{other:?}"),
    }
}

const USERS: u32 = 66_000;

fn range_check(
    h: &WorkspaceHandle,
    models: &[Model; 2],
    cmps: &[AttrCmp],
) -> Result<(), TestCaseError> {
    for (a, name) in ["int", "dec"].iter().enumerate() {
        for cmp in cmps {
            let f = Filter::Attribute {
                attribute: name.to_string(),
                cmp: cmp.clone(),
            };
            let want = (0..USERS)
                .filter(|u| holds(cmp, models[a].get(u).copied()))
                .count() as u64;
            prop_assert_eq!(fast_count(h, &f).unwrap(), want, "{}", f);
        }
    }
    Ok(())
}

fn run_ranges(ops: Vec<RangeOp>, cmps: Vec<AttrCmp>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_workspace("w").unwrap();
    let h = handle(&engine);
    h.declare_attribute("int", AttrType::Integer).unwrap();
    h.declare_attribute("dec", AttrType::Decimal).unwrap();
    h.upsert_users((0..USERS).map(new_user).collect()).unwrap();
    let mut models: [Model; 2] = Default::default();
    range_check(&h, &models, &cmps)?;
    for op in ops {
        match op {
            RangeOp::Set(values) => {
                // The same value for both: an integer, and decimal units
                // (a decimal's JSON number: an f64, exact to about 15
                // digits).
                let batch = values
                    .iter()
                    .map(|(u, v)| {
                        let dec = v.map(|v| v.clamp(-(1 << 40), 1 << 40));
                        let attrs = vec![
                            ("int".to_string(), AttrInput::Json(json!(v))),
                            (
                                "dec".to_string(),
                                AttrInput::Json(
                                    dec.map_or(Value::Null, |d| json!(d as f64 / 10_000.0)),
                                ),
                            ),
                        ];
                        match v {
                            Some(v) => {
                                models[0].insert(*u, Number::int(*v));
                                models[1].insert(*u, Number::new(dec.unwrap(), 4).unwrap());
                            }
                            None => {
                                models[0].remove(u);
                                models[1].remove(u);
                            }
                        }
                        (new_user(*u), attrs)
                    })
                    .collect();
                let r = h.upsert_users_with(batch).unwrap();
                prop_assert!(r.failed.is_empty(), "{:?}", r);
            }
            RangeOp::Compact => {
                h.compact().unwrap();
            }
        }
        range_check(&h, &models, &cmps)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn bit_sliced_ranges_agree_with_a_full_scan_across_compactions(
        ops in prop::collection::vec(prop_oneof![
            4 => prop::collection::vec((chunk_user(), prop::option::weighted(0.85, range_value())), 1..200)
                .prop_map(RangeOp::Set),
            1 => Just(RangeOp::Compact),
        ], 1..8),
        cmps in prop::collection::vec(range_cmp(), 1..10),
    ) {
        run_ranges(ops, cmps)?;
    }
}
