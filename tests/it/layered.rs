//! Property test: a workspace served from a snapshot plus the changes
//! since (users, identifiers and cohort members layered over the mapped
//! file) is the same workspace as one held wholly in memory, through any
//! interleaving of changes, freezes and moves onto a newer snapshot
//! (compaction's `rebase`). Compared: every user record and look-up, every
//! cohort's members, the snapshot each would write, and the chunk
//! evaluator's counts, member lists and one-user checks over the layers
//! against the reference evaluator over the plain workspace.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use segq::cohorts::{MemberOp, ResolvedChanges};
use segq::engine::persist;
use segq::segment::{chunk, plan, reference};
use segq::snapshot::Snapshot;
use segq::users::NewUser;
use segq::{UserId, UserRef, Workspace};

use super::reference_props::{build, cohort_key, gen_filter, gen_workspace, to_filter};

#[derive(Clone, Debug)]
enum Step {
    Create {
        anonymous: bool,
        bucket: u16,
    },
    Identify(usize),
    Device {
        user: usize,
        name: usize,
    },
    Alias {
        user: usize,
        name: usize,
    },
    Members {
        cohort: usize,
        users: Vec<usize>,
        remove: bool,
    },
    /// Members of a cohort that may not exist yet (created on first use).
    NewCohort {
        id: usize,
        users: Vec<usize>,
    },
    Upsert {
        user: usize,
        device: usize,
    },
    Freeze,
    Rebase,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (prop::bool::weighted(0.3), 0u16..10_000)
            .prop_map(|(anonymous, bucket)| Step::Create { anonymous, bucket }),
        1 => any::<usize>().prop_map(Step::Identify),
        1 => (any::<usize>(), 0usize..400).prop_map(|(user, name)| Step::Device { user, name }),
        1 => (any::<usize>(), 0usize..60).prop_map(|(user, name)| Step::Alias { user, name }),
        5 => (0usize..6, prop::collection::vec(any::<usize>(), 1..40), any::<bool>())
            .prop_map(|(cohort, users, remove)| Step::Members { cohort, users, remove }),
        1 => (0usize..3, prop::collection::vec(any::<usize>(), 1..10))
            .prop_map(|(id, users)| Step::NewCohort { id, users }),
        1 => (any::<usize>(), 0usize..400).prop_map(|(user, device)| Step::Upsert { user, device }),
        1 => Just(Step::Freeze),
        1 => Just(Step::Rebase),
    ]
}

/// Applies a change to a workspace; the outcome (changed, or refused) is
/// returned for comparison.
fn apply(ws: &mut Workspace, step: &Step, cohorts: usize) -> Result<(), String> {
    let n = ws.users.len() as usize;
    let user = |u: &usize| UserId((u % n.max(1)) as u32);
    let r = match step {
        Step::Create { anonymous, bucket } => ws
            .users
            .create(NewUser {
                external_id: (!anonymous).then(|| format!("new{n}")),
                devices: vec![format!("nd{n}")],
                aliases: Vec::new(),
                bucket: Some(*bucket),
            })
            .map(drop),
        _ if n == 0 => return Ok(()),
        Step::Identify(u) => ws.users.identify(user(u), &format!("late{}", u % n)),
        Step::Device { user: u, name } => ws.users.add_device(user(u), &format!("d{name}")),
        Step::Alias { user: u, name } => {
            ws.users
                .add_alias(user(u), "email", &format!("a{name}@example.com"))
        }
        Step::Members {
            cohort,
            users,
            remove,
        } => {
            let key = cohort_key(cohort % cohorts);
            let resolved = ResolvedChanges {
                ops: users
                    .iter()
                    .map(|u| MemberOp {
                        user: user(u),
                        remove: *remove,
                    })
                    .collect(),
                matched: users.len() as u64,
                ..ResolvedChanges::default()
            };
            let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
            ws.apply_resolved(key.partner, &key.cohort_id, &resolved, now)
                .map(drop)
        }
        Step::NewCohort { id, users } => {
            let resolved = ResolvedChanges {
                ops: users
                    .iter()
                    .map(|u| MemberOp {
                        user: user(u),
                        remove: false,
                    })
                    .collect(),
                matched: users.len() as u64,
                ..ResolvedChanges::default()
            };
            let now = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
            ws.apply_resolved(
                segq::Partner::Amplitude,
                &format!("late{id}"),
                &resolved,
                now,
            )
            .map(drop)
        }
        Step::Upsert { user: u, device } => {
            let id = user(u);
            let ext = ws.users.external_id(id).map(|e| e.into_owned());
            ws.users
                .upsert(NewUser {
                    external_id: Some(ext.unwrap_or_else(|| format!("up{}", u % n))),
                    devices: vec![format!("d{device}"), format!("ud{}", u % n)],
                    aliases: vec![("crm".into(), format!("c{}", u % n))],
                    bucket: None,
                })
                .map(drop)
        }
        Step::Freeze | Step::Rebase => unreachable!("not a change"),
    };
    r.map_err(|e| e.to_string())
}

fn snapshot_of(ws: &Workspace) -> Arc<Snapshot> {
    let bytes = persist::write_snapshot(ws, 0).unwrap();
    Arc::new(Snapshot::from_bytes(bytes, "layered").unwrap())
}

fn same_users(plain: &Workspace, layered: &Workspace) -> Result<(), TestCaseError> {
    prop_assert_eq!(plain.users.len(), layered.users.len());
    for u in 0..plain.users.len() {
        let id = UserId(u);
        let rec = plain.users.get(id).unwrap();
        prop_assert_eq!(Some(rec.clone()), layered.users.get(id), "user {}", u);
        prop_assert_eq!(plain.users.display_id(id), layered.users.display_id(id));
        let mut refs = Vec::new();
        if let Some(e) = &rec.external_id {
            refs.push(UserRef::ExternalId(e.to_string()));
        }
        refs.extend(rec.devices.iter().map(|d| UserRef::DeviceId(d.to_string())));
        refs.extend(rec.aliases.iter().map(|(l, n)| UserRef::Alias {
            label: l.to_string(),
            name: n.to_string(),
        }));
        for r in &refs {
            prop_assert_eq!(layered.users.lookup(r), Some(id), "{}", r);
        }
        for d in &rec.devices {
            prop_assert_eq!(plain.users.match_device(d), layered.users.match_device(d));
        }
        // A batch's matcher (the dictionaries opened once) follows the
        // same rules, for these identifiers and for unknown ones.
        let m = layered.users.matcher();
        for r in refs.iter().chain(&[
            UserRef::ExternalId(format!("unknown-{u}")),
            UserRef::DeviceId(format!("unknown-{u}")),
            UserRef::Alias {
                label: "unknown".into(),
                name: u.to_string(),
            },
        ]) {
            match r {
                UserRef::ExternalId(e) => {
                    prop_assert_eq!(m.match_external_id(e), plain.users.match_external_id(e))
                }
                UserRef::DeviceId(d) => {
                    prop_assert_eq!(m.match_device(d), plain.users.match_device(d))
                }
                UserRef::Alias { label, name } => prop_assert_eq!(
                    m.match_alias(label, name),
                    plain.users.match_alias(label, name)
                ),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_workspace_layered_over_snapshots_is_the_workspace(
        g in gen_workspace(),
        steps in prop::collection::vec(step(), 0..50),
        filters in prop::collection::vec(gen_filter(), 1..4),
    ) {
        let cohorts = g.cohorts.len();
        let mut plain = build(&g);
        let mut layered = persist::load_workspace(snapshot_of(&plain)).unwrap();
        let mut frozen: Option<Workspace> = None;
        for s in &steps {
            match s {
                Step::Freeze => frozen = Some(layered.clone()),
                Step::Rebase => {
                    if let Some(f) = frozen.take() {
                        layered.rebase(&f, snapshot_of(&f)).unwrap();
                    }
                }
                change => {
                    let a = apply(&mut plain, change, cohorts);
                    let b = apply(&mut layered, change, cohorts);
                    prop_assert_eq!(a, b, "{:?}", change);
                }
            }
        }
        same_users(&plain, &layered)?;
        for c in plain.cohorts.iter_sorted() {
            let l = layered.cohorts.get(&c.key).unwrap();
            prop_assert_eq!(c.members.len(), l.members.len(), "{}", c.key);
            prop_assert_eq!(c.members.bitmap().unwrap(), l.members.bitmap().unwrap(), "{}", c.key);
            // Every cohort, those created after the snapshot included, as
            // a filter of its own and excluded from all users.
            for includes in [true, false] {
                let f = segq::segment::Filter::Cohort {
                    partner: c.key.partner,
                    cohort: c.key.cohort_id.clone(),
                    includes,
                };
                let p = plan::plan(&layered, &f).unwrap();
                let prepared = chunk::Prepared::new(&layered, &p, &segq::query::Uncached).unwrap();
                prop_assert_eq!(prepared.count().unwrap(), reference::count(&plain, &f).unwrap(), "{}", f);
            }
        }
        prop_assert!(
            persist::write_snapshot(&plain, 0).unwrap() == persist::write_snapshot(&layered, 0).unwrap(),
            "the two write different snapshots"
        );
        for f in &filters {
            let filter = to_filter(f, cohorts);
            let want: roaring::RoaringBitmap =
                reference::members(&plain, &filter).unwrap().iter().map(|u| u.0).collect();
            let p = plan::plan(&layered, &filter).unwrap();
            let prepared = chunk::Prepared::new(&layered, &p, &segq::query::Uncached).unwrap();
            prop_assert_eq!(prepared.count().unwrap(), want.len(), "plan {}", p);
            prop_assert_eq!(prepared.members().unwrap(), want.clone());
            // Counted window by window, as a sample over few chunks reads
            // them: the windows of each chunk sum to its count.
            let sampler = prepared.sampler().unwrap();
            let keys: Vec<u32> = (0..prepared.chunk_count()).collect();
            let by_chunk = sampler.count(&keys);
            for parts in [2u32, 16] {
                let windows: Vec<(u32, u32)> =
                    keys.iter().flat_map(|&k| (0..parts).map(move |p| (k, p))).collect();
                let counts = sampler.count_windows(&windows, parts);
                for (k, want) in by_chunk.iter().enumerate() {
                    let got: u64 = counts[k * parts as usize..(k + 1) * parts as usize].iter().sum();
                    prop_assert_eq!(got, *want, "chunk {} in {} windows, plan {}", k, parts, p);
                }
            }
            let check = prepared.checker().unwrap();
            for u in 0..plain.users.len() {
                prop_assert_eq!(check.contains(UserId(u)), want.contains(u), "user {}", u);
            }
        }
    }
}
