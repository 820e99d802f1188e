//! Random buckets: given to new users, kept across a restart.

use super::*;

#[test]
fn users_get_random_buckets_that_survive_a_restart() {
    let dir = tempdir();
    let engine = open(dir.path());
    let mut buckets = Vec::new();
    for w in ["acme", "beta"] {
        engine.create_workspace(w).unwrap();
        let h = handle(&engine, w);
        let one = h.upsert_user(new_user(Some("first"), &[], &[])).unwrap();
        let anon = h.upsert_user(new_user(None, &["dev"], &[])).unwrap();
        h.upsert_users(
            (0..2_000)
                .map(|i| new_user(Some(&format!("u-{i}")), &[], &[]))
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
    h.upsert_user(new_user(Some("u-5"), &["d-5"], &[])).unwrap();
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
    let u = h.upsert_user(new_user(Some("after"), &[], &[])).unwrap();
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
