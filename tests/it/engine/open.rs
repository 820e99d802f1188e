//! Opening a data directory: its configuration, its admin token, and
//! the modes of its secret files and folders.

use super::*;

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
                path.ends_with(file) && path.starts_with(dir),
                "the error should name {file} in {}, names {path:?}",
                dir.display()
            );
            let shown = Error::Config {
                path: path.clone(),
                reason: reason.clone(),
            }
            .to_string();
            assert!(shown.contains(&*path.to_string_lossy()), "{shown}");
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
