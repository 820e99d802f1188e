//! Workspaces: created once, and which names are refused.

use super::*;

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
