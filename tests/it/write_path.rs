//! The one write path: every write of a [`WorkspaceHandle`] computes its
//! change from the state, applies it with the function log replay uses,
//! then logs it. Random sequences of writes (refused ones included) are
//! applied live; the log replayed into a fresh workspace must give the same
//! state, and a refused write must change nothing.

use chrono::Duration;
use proptest::prelude::*;
use segq::engine::WorkspaceHandle;
use segq::import::{parse_created_at, CohortRequest, Credentials, UsersRequest};
use segq::segment::Filter;
use segq::{Partner, UserRef, Workspace};
use serde_json::json;

use crate::support::{fingerprint, jan, new_user, CLIENT_SECRET, PARTNER_API_KEY};

const PARTNERS: [Partner; 2] = [Partner::Amplitude, Partner::Mixpanel];

#[derive(Clone, Debug)]
enum Write {
    Upsert {
        ext: Option<u8>,
        device: Option<u8>,
        alias: Option<u8>,
    },
    Batch(Vec<(Option<u8>, u8)>),
    AddAlias {
        device: u8,
        alias: u8,
    },
    AddDevice {
        ext: u8,
        device: u8,
    },
    Identify {
        device: u8,
        ext: u8,
    },
    Cohort {
        partner: usize,
        cohort: u8,
        name: u8,
        created_at: usize,
    },
    Import {
        partner: usize,
        cohort: u8,
        ids: Vec<(u8, u8)>,
        remove: bool,
        /// Nanoseconds past noon: records keep milliseconds.
        nanos: i64,
    },
    DeleteCohort {
        partner: usize,
        cohort: u8,
    },
    SaveSegment {
        existing: Option<usize>,
        cohort: u8,
        negate: bool,
    },
    DeleteSegment(usize),
}

fn write() -> impl Strategy<Value = Write> {
    let small = || 0u8..8;
    prop_oneof![
        3 => (proptest::option::of(small()), proptest::option::of(small()), proptest::option::of(small()))
            .prop_map(|(ext, device, alias)| Write::Upsert { ext, device, alias }),
        1 => prop::collection::vec((proptest::option::of(small()), small()), 1..6).prop_map(Write::Batch),
        1 => (small(), small()).prop_map(|(device, alias)| Write::AddAlias { device, alias }),
        1 => (small(), small()).prop_map(|(ext, device)| Write::AddDevice { ext, device }),
        1 => (small(), small()).prop_map(|(device, ext)| Write::Identify { device, ext }),
        1 => (0usize..2, 0u8..3, 0u8..3, 0usize..3).prop_map(|(partner, cohort, name, created_at)| {
            Write::Cohort { partner, cohort, name, created_at }
        }),
        4 => (0usize..2, 0u8..3, prop::collection::vec((0u8..3, small()), 0..8), any::<bool>(), 0i64..86_400_000_000_000)
            .prop_map(|(partner, cohort, ids, remove, nanos)| Write::Import { partner, cohort, ids, remove, nanos }),
        1 => (0usize..2, 0u8..3).prop_map(|(partner, cohort)| Write::DeleteCohort { partner, cohort }),
        1 => (proptest::option::of(0usize..4), 0u8..3, any::<bool>())
            .prop_map(|(existing, cohort, negate)| Write::SaveSegment { existing, cohort, negate }),
        1 => (0usize..4).prop_map(Write::DeleteSegment),
    ]
}

fn credentials() -> Credentials {
    Credentials {
        partner_api_key: PARTNER_API_KEY.into(),
        client_secret: CLIENT_SECRET.into(),
    }
}

/// Applies one write through the handle; `Err` says it was refused.
fn apply(h: &WorkspaceHandle, w: &Write) -> Result<(), segq::Error> {
    let ext = |e: &u8| format!("u{e}");
    let dev = |d: &u8| format!("d{d}");
    let mail = |a: &u8| ("email".to_string(), format!("a{a}@x"));
    match w {
        Write::Upsert {
            ext: e,
            device,
            alias,
        } => h
            .upsert_user(segq::users::NewUser {
                external_id: e.as_ref().map(ext),
                devices: device.iter().map(dev).collect(),
                aliases: alias.iter().map(mail).collect(),
                bucket: None,
            })
            .map(drop),
        Write::Batch(users) => {
            let batch = users
                .iter()
                .map(|(e, d)| new_user(e.as_ref().map(ext).as_deref(), &[&dev(d)], &[]))
                .collect();
            h.upsert_users(batch).map(drop)
        }
        Write::AddAlias { device, alias } => {
            let (label, name) = mail(alias);
            h.add_alias(&UserRef::DeviceId(dev(device)), &label, &name)
                .map(drop)
        }
        Write::AddDevice { ext: e, device } => h
            .add_device(&UserRef::ExternalId(ext(e)), &dev(device))
            .map(drop),
        Write::Identify { device, ext: e } => h
            .identify(&UserRef::DeviceId(dev(device)), &ext(e))
            .map(drop),
        Write::Cohort {
            partner,
            cohort,
            name,
            created_at,
        } => {
            let t = [
                "2021-01-21T19:20:30+05:00",
                "2024-02-29T00:00Z",
                "1999-12-31T23:59:59.5-08:00",
            ][*created_at];
            let req = CohortRequest {
                credentials: credentials(),
                cohort_id: format!("c{cohort}"),
                name: format!("Cohort {name}"),
                created_at: parse_created_at(t).expect("a valid time"),
            };
            h.upsert_cohort(PARTNERS[*partner], &req).map(drop)
        }
        Write::Import {
            partner,
            cohort,
            ids,
            remove,
            nanos,
        } => {
            let mut change =
                json!({"user_ids": [], "device_ids": [], "aliases": [], "should_remove": remove});
            for (kind, n) in ids {
                match kind {
                    0 => change["user_ids"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!(ext(n))),
                    1 => change["device_ids"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!(dev(n))),
                    _ => {
                        let (label, name) = mail(n);
                        change["aliases"]
                            .as_array_mut()
                            .unwrap()
                            .push(json!({"alias_label": label, "alias_name": name}));
                    }
                }
            }
            let req = UsersRequest {
                credentials: credentials(),
                cohort_id: format!("c{cohort}"),
                cohort_changes: vec![serde_json::from_value(change).expect("a cohort change")],
            };
            let now = jan(1) + Duration::nanoseconds(*nanos);
            h.import_users(PARTNERS[*partner], &req, now).map(drop)
        }
        Write::DeleteCohort { partner, cohort } => h
            .delete_cohort(PARTNERS[*partner], &format!("c{cohort}"))
            .map(drop),
        Write::SaveSegment {
            existing,
            cohort,
            negate,
        } => {
            let mut f = Filter::includes(Partner::Amplitude, format!("c{cohort}"));
            if *negate {
                f = f.not();
            }
            let id = existing.and_then(|i| h.read().segments.keys().nth(i).cloned());
            h.save_segment(id.as_deref(), &format!("segment {cohort}"), &f)
                .map(drop)
        }
        Write::DeleteSegment(i) => {
            let id = h.read().segments.keys().nth(*i).cloned();
            h.delete_segment(id.as_deref().unwrap_or("seg_none"))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn writes_applied_live_equal_their_log_replayed(
        seed in any::<u64>(),
        writes in prop::collection::vec(write(), 1..40),
    ) {
        let h = WorkspaceHandle::in_memory(Workspace::new("live", seed)).unwrap();
        let mut refused = 0;
        for w in &writes {
            let before = fingerprint(&h);
            if apply(&h, w).is_err() {
                refused += 1;
                prop_assert_eq!(&fingerprint(&h), &before, "a refused write changed the state: {:?}", w);
            }
        }
        let replayed = h.durable_state().unwrap();
        prop_assert_eq!(fingerprint(&replayed), fingerprint(&h), "{} writes, {} refused", writes.len(), refused);
    }
}
