//! Where code lives: the segment evaluators know nothing of the workspace
//! or the layers above, the query service has no HTTP in it, the server's
//! request helpers exist once, and the command line is not in the library.
//! Read from the source, so a move back fails here.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("a readable source file");
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// The lines of `files` that contain `needle`, comments aside, as
/// `path: line`.
fn lines_with(files: &[(PathBuf, String)], needle: &str) -> Vec<String> {
    files
        .iter()
        .flat_map(|(p, text)| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("//") && l.contains(needle))
                .map(move |l| format!("{}: {}", p.display(), l.trim()))
        })
        .collect()
}

#[test]
fn segment_imports_nothing_above_it() {
    let files = sources(&root().join("src/segment"));
    assert!(!files.is_empty());
    for above in [
        "crate::workspace",
        "crate::query",
        "crate::engine",
        "crate::server",
        "crate::cohorts",
    ] {
        let found = lines_with(&files, above);
        assert!(found.is_empty(), "segment/ uses {above}: {found:#?}");
    }
}

#[test]
fn the_segment_api_module_holds_no_query_code() {
    let text = std::fs::read_to_string(root().join("src/server/segments.rs")).expect("read");
    for item in [
        "enum CountMode",
        "enum Target",
        "fn render_members",
        "fn member_page(",
        "fn csv_header",
        "fn page_limit",
        "fn freeze(",
        "query::check(",
        "query::check_many(",
    ] {
        assert!(
            !text.contains(item),
            "server/segments.rs still holds {item}"
        );
    }
}

#[test]
fn server_request_helpers_exist_once() {
    let server = sources(&root().join("src/server"));
    let outside_extract = |needle: &str| -> Vec<String> {
        lines_with(&server, needle)
            .into_iter()
            .filter(|l| {
                !["extract.rs:", "tests.rs:", "error.rs:"]
                    .iter()
                    .any(|f| l.contains(f))
            })
            .collect()
    };
    for needle in [
        "Error::UnknownWorkspace",
        "CONTENT_LENGTH",
        "serde_json::from_slice",
        "fn run_blocking",
        "fn parse_user_ref",
    ] {
        let found = outside_extract(needle);
        assert!(
            found.is_empty(),
            "{needle} outside server/extract.rs: {found:#?}"
        );
    }
}
