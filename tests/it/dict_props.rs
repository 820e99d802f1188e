//! Property tests: random identifier sets (none at all, unicode, 1,024-byte
//! ids, long shared prefixes, several per user) written to a snapshot and
//! looked up exactly like a `HashMap` model, in a version 3 file (hashed
//! dictionaries) and a version 4 file (compact dictionaries), in the
//! version 5 file a compaction makes of either (packed dictionaries), and
//! straight from the dictionaries of every layout.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use segq::engine::persist;
use segq::snapshot::compact::{CompactDict, CompactWriter, Layout};
use segq::snapshot::dict::{DictWriter, Ids};
use segq::snapshot::format::{SectionKind, SnapshotFile, SnapshotWriter};
use segq::snapshot::Snapshot;
use segq::users::NewUser;
use segq::{UserId, UserRef, Workspace};

/// An identifier: short with shared prefixes, unicode, or 1,024 bytes.
fn ident() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..300).prop_map(|n| format!("u{n}")),
        (0u32..50).prop_map(|n| format!("u{n}x")),
        "[a-zé用ü]{1,6}",
        (0u32..20).prop_map(|n| format!("{}{n:04}", "p".repeat(1_020))),
    ]
}

#[derive(Clone, Debug)]
struct Spec {
    external_id: Option<String>,
    devices: Vec<String>,
    aliases: Vec<(String, String)>,
}

fn users() -> impl Strategy<Value = Vec<Spec>> {
    let one = (
        proptest::option::of(ident()),
        proptest::collection::vec(ident(), 0..3),
        proptest::collection::vec(("[a-zé]{1,3}", ident()), 0..2),
    )
        .prop_map(|(external_id, devices, aliases)| Spec {
            external_id,
            devices,
            aliases,
        });
    proptest::collection::vec(one, 0..60)
}

/// The workspace the specs make (an identifier already taken is left
/// out), and the model: who holds what.
fn build(specs: &[Spec]) -> (Workspace, HashMap<UserRef, UserId>) {
    let mut ws = Workspace::new("props", 5);
    let mut model = HashMap::new();
    for s in specs {
        let free = |r: &UserRef, model: &HashMap<UserRef, UserId>| !model.contains_key(r);
        let external_id = s
            .external_id
            .clone()
            .filter(|e| free(&UserRef::ExternalId(e.clone()), &model));
        let mut devices: Vec<String> = Vec::new();
        for d in &s.devices {
            if free(&UserRef::DeviceId(d.clone()), &model) && !devices.contains(d) {
                devices.push(d.clone());
            }
        }
        let mut aliases: Vec<(String, String)> = Vec::new();
        for (l, n) in &s.aliases {
            let r = UserRef::Alias {
                label: l.clone(),
                name: n.clone(),
            };
            if free(&r, &model) && !aliases.contains(&(l.clone(), n.clone())) {
                aliases.push((l.clone(), n.clone()));
            }
        }
        let id = ws
            .users
            .create(NewUser {
                external_id: external_id.clone(),
                devices: devices.clone(),
                aliases: aliases.clone(),
                bucket: Some(7),
            })
            .expect("creates");
        model.extend(external_id.map(|e| (UserRef::ExternalId(e), id)));
        model.extend(devices.into_iter().map(|d| (UserRef::DeviceId(d), id)));
        model.extend(
            aliases
                .into_iter()
                .map(|(label, name)| (UserRef::Alias { label, name }, id)),
        );
    }
    (ws, model)
}

/// The same snapshot with older dictionaries: hashed ones in a version 3
/// file, or compact ones in a version 4 file; what a workspace written
/// before version 4 or 5 holds.
fn as_version(bytes: &[u8], version: u32) -> Vec<u8> {
    let f = SnapshotFile::open(bytes, "v5").expect("opens");
    let mut w = SnapshotWriter::to_version(Vec::new(), version).expect("writes");
    for s in f.sections() {
        let b = f.section(s.kind).expect("a section");
        let old = SectionKind::DICTIONARIES
            .iter()
            .find(|kinds| kinds[0] == s.kind);
        let Some(&[_, compact, hashed]) = old else {
            w.section(s.kind, b).expect("a section");
            continue;
        };
        let packed = CompactDict::parse(b, Layout::Packed).expect("parses");
        if version == 4 {
            let mut d = CompactWriter::new();
            packed.for_each(|u, k| d.push(u, k)).expect("decodes");
            w.section(compact, &d.finish(Layout::Plain).expect("builds"))
                .expect("a section");
        } else {
            let mut d = DictWriter::new();
            packed.for_each(|u, k| d.push(u, k)).expect("decodes");
            w.section(hashed, &d.finish().expect("builds"))
                .expect("a section");
        }
    }
    w.finish().expect("finishes")
}

/// Every look-up the model knows, and some it does not, answered by the
/// snapshot and by the workspace loaded from it.
fn check(snap: &Arc<Snapshot>, model: &HashMap<UserRef, UserId>, users: u32) {
    snap.verify().expect("verifies");
    let ws = persist::load_workspace(snap.clone()).expect("loads");
    assert_eq!(ws.users.len(), users);
    for (r, &u) in model {
        assert_eq!(snap.lookup(r).unwrap(), Some(u), "{r}");
        assert_eq!(ws.users.lookup(r), Some(u), "{r}");
    }
    for unknown in ["", "u", "u1000", "zz-unknown", "u1x1", &"p".repeat(1_024)] {
        for r in [
            UserRef::ExternalId(unknown.into()),
            UserRef::DeviceId(unknown.into()),
            UserRef::Alias {
                label: "nolabel".into(),
                name: unknown.into(),
            },
        ] {
            let expected = model.get(&r).copied();
            assert_eq!(snap.lookup(&r).unwrap(), expected, "{r}");
        }
    }
    // User -> identifiers: each user holds exactly what the model gives it.
    let mut held: HashMap<UserId, Vec<UserRef>> = HashMap::new();
    for (r, &u) in model {
        held.entry(u).or_default().push(r.clone());
    }
    for u in 0..users {
        let rec = ws.users.get(UserId(u)).expect("a user");
        let mut got: Vec<UserRef> = rec
            .external_id
            .iter()
            .map(|e| UserRef::ExternalId(e.to_string()))
            .chain(rec.devices.iter().map(|d| UserRef::DeviceId(d.to_string())))
            .chain(rec.aliases.iter().map(|(l, n)| UserRef::Alias {
                label: l.to_string(),
                name: n.to_string(),
            }))
            .collect();
        let mut want = held.remove(&UserId(u)).unwrap_or_default();
        got.sort_by_key(|r| r.to_string());
        want.sort_by_key(|r| r.to_string());
        assert_eq!(got, want, "user {u}");
        assert_eq!(
            snap.external_id(UserId(u)).unwrap().as_deref(),
            rec.external_id.as_deref()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn identifiers_look_up_like_a_hash_map_across_version_3_and_4_to_5_compactions(
        specs in users()
    ) {
        let (ws, model) = build(&specs);
        let v5 = persist::write_snapshot(&ws, 1).expect("writes");
        for version in [3, 4] {
            let old = as_version(&v5, version);
            let old = Arc::new(Snapshot::from_bytes(old, "old").expect("opens"));
            prop_assert_eq!(old.version(), version);
            check(&old, &model, ws.users.len());
            // The compaction of the older file: a version 5 file, the
            // same bytes as one written from memory.
            let loaded = persist::load_workspace(old).expect("loads");
            let compacted = persist::write_snapshot(&loaded, 1).expect("writes");
            prop_assert!(compacted == v5, "the compaction of version {} writes other bytes", version);
        }
        let new = Arc::new(Snapshot::from_bytes(v5, "v5").expect("opens"));
        prop_assert_eq!(new.version(), 5);
        check(&new, &model, ws.users.len());
    }

    #[test]
    fn compact_dictionaries_look_up_like_a_hash_map(
        keys in proptest::collection::vec(
            (0u32..3, prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..8),
                (0usize..1_024, any::<u8>()).prop_map(|(n, b)| {
                    let mut k = vec![b'k'; 1_024 - n];
                    k.push(b);
                    k
                }),
            ]),
            0..200,
        ),
        probes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 0..50),
    ) {
        // Users ascending, one to three keys each (gaps between them).
        let mut model: HashMap<Vec<u8>, UserId> = HashMap::new();
        let mut w = CompactWriter::new();
        let mut old = DictWriter::new();
        let mut user = 0u32;
        let mut order: Vec<(UserId, Vec<u8>)> = Vec::new();
        for (gap, k) in keys {
            user += gap;
            if model.contains_key(&k) {
                continue;
            }
            model.insert(k.clone(), UserId(user));
            w.push(UserId(user), &k);
            old.push(UserId(user), &k);
            order.push((UserId(user), k));
        }
        let mut again = CompactWriter::new();
        for (u, k) in &order {
            again.push(*u, k);
        }
        let packed = w.finish(Layout::Packed).expect("builds");
        let plain = again.finish(Layout::Plain).expect("builds");
        let hashed = old.finish().expect("builds");
        let dicts = [
            Ids::Compact(CompactDict::parse(&packed, Layout::Packed).expect("parses")),
            Ids::Compact(CompactDict::parse(&plain, Layout::Plain).expect("parses")),
            Ids::Hashed(segq::snapshot::dict::Dict::parse(&hashed).expect("parses")),
        ];
        let mut first = Vec::new();
        for d in &dicts {
            d.verify(user + 1).expect("verifies");
            prop_assert_eq!(d.len(), model.len());
            for (k, &u) in &model {
                prop_assert_eq!(d.get(k), Some(u));
            }
            for p in &probes {
                prop_assert_eq!(d.get(p), model.get(p).copied());
            }
            let mut all = Vec::new();
            d.for_each(|u, k| all.push((u, k.to_vec()))).expect("decodes");
            prop_assert_eq!(&all, &order);
            for u in 0..=user + 17 {
                let want: Vec<&[u8]> = order
                    .iter()
                    .filter(|(o, _)| o.0 == u)
                    .map(|(_, k)| &k[..])
                    .collect();
                let got: Vec<Vec<u8>> = d.keys_of(UserId(u)).map(|k| k.into_owned()).collect();
                let found = d.key_into(UserId(u), &mut first);
                prop_assert_eq!(found.then_some(&first[..]), want.first().copied());
                prop_assert_eq!(got, want);
            }
        }
    }
}
