//! CSV by the book, end to end: a bulk import over HTTP reads quoted
//! cells with commas, quotes and line breaks, CRLF and a byte-order mark;
//! the members export writes such cells so that they read back, with the
//! sync client's reader and with the csv crate's own.

use std::collections::BTreeSet;

use segq::sync::{parse_members, Layout};
use serde_json::{json, Value};

use crate::support::server::InProcess;

/// The external ids the import below creates, one for each rule.
const IDS: [&str; 6] = [
    "q1",
    "c,1",
    "n\n1",
    "say \"hi\"",
    "crlf\r\nid",
    "all, \"of\"\nthem",
];

fn import_body() -> String {
    "\u{feff}external_id,device_id,attr:note\r\n\
     \"q1\",d-q1,plain\r\n\
     \"c,1\",d-c1,\"a, b\"\r\n\
     \"n\n1\",d-n1,\"line one\nline two\"\r\n\
     \"say \"\"hi\"\"\",d-dq,\"x\"\"y\"\r\n\
     \"crlf\r\nid\",d-cr,z\r\n\
     \"all, \"\"of\"\"\nthem\",d-all,\"=1,\r\n2\"\r\n\
     bad,row\r\n"
        .to_string()
}

fn members(s: &InProcess, filter: Value) -> String {
    let r = s.admin_post(
        "/workspaces/w/segments/members",
        &json!({"filter": filter, "format": "csv"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.text
}

fn note(comparison: &str, value: Value) -> Value {
    json!({"filter": "custom_attribute", "attribute": "note", "comparison": comparison, "value": value})
}

#[test]
fn a_csv_import_over_http_and_the_csv_export_follow_the_csv_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), None);
    s.create_workspace("w");
    let r = s.request(
        reqwest::Method::POST,
        "/admin/workspaces/w/users/import",
        Some("text/csv"),
        import_body().into_bytes(),
        true,
    );
    let v = r.expect_json(200);
    assert_eq!((&v["created"], &v["failed"]), (&json!(6), &json!(1)), "{v}");
    // Rows are numbered by the line they start on: the bad one is on 13.
    assert_eq!(v["errors"][0]["line"], json!(13), "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expected 3 fields")),
        "{v}"
    );

    // Each attribute cell arrived whole.
    for (value, who) in [
        ("plain", "q1"),
        ("a, b", "c,1"),
        ("line one\nline two", "n\n1"),
        ("x\"y", "say \"hi\""),
        ("z", "crlf\r\nid"),
        ("=1,\r\n2", "all, \"of\"\nthem"),
    ] {
        let text = members(&s, note("equals", json!(value)));
        let got = parse_members(
            &text,
            &Layout::Csv {
                column: "external_id".into(),
            },
        )
        .unwrap_or_else(|e| panic!("{value:?}: {e}\n{text}"));
        assert_eq!(got, BTreeSet::from([who.to_string()]), "{value:?}");
    }

    // The export of everyone reads back to the same ids, with the sync
    // client's reader and with the csv crate's.
    let text = members(
        &s,
        json!({"filter": "custom_attribute", "attribute": "note", "comparison": "exists"}),
    );
    let want: BTreeSet<String> = IDS.iter().map(|s| s.to_string()).collect();
    let got = parse_members(
        &text,
        &Layout::Csv {
            column: "external_id".into(),
        },
    )
    .unwrap();
    assert_eq!(got, want, "{text}");
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        ["external_id", "user_id"]
    );
    let read: BTreeSet<String> = rdr
        .records()
        .map(|r| r.expect("a record")[0].to_string())
        .collect();
    assert_eq!(read, want, "{text}");
}
