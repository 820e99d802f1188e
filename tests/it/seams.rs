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

#[test]
fn the_command_line_is_not_in_the_library() {
    for gone in [
        "src/main.rs",
        "src/bench_cmd.rs",
        "src/snapshot_cmd.rs",
        "src/snapshot/bench.rs",
    ] {
        assert!(!root().join(gone).exists(), "{gone} is back in the library");
    }
    assert!(root().join("src/bin/segq/main.rs").is_file());
    // The binary-only dependencies: nothing outside src/bin/ uses them
    // (unit test files may, as dev-dependencies).
    let lib: Vec<(PathBuf, String)> = sources(&root().join("src"))
        .into_iter()
        .filter(|(p, _)| !p.starts_with(root().join("src/bin")) && !p.ends_with("tests.rs"))
        .collect();
    for dep in ["clap::", "reqwest::", "indicatif::", "use clap", "#[arg("] {
        let found = lines_with(&lib, dep);
        assert!(found.is_empty(), "the library uses {dep}: {found:#?}");
    }
    // ... and they are optional, behind the default `cli` feature.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    for dep in ["clap", "reqwest", "indicatif"] {
        let line = deps
            .lines()
            .find(|l| l.starts_with(&format!("{dep} ")))
            .unwrap_or_else(|| panic!("{dep} is a dependency"));
        assert!(line.contains("optional = true"), "{line}");
    }
    assert!(manifest.contains("required-features = [\"cli\"]"));
}

#[test]
fn the_demo_runs_through_the_servers_paths() {
    let demo = std::fs::read_to_string(root().join("src/bin/segq/demo.rs")).expect("demo.rs");
    let examples = std::fs::read_to_string(root().join("src/examples.rs")).expect("examples.rs");
    for text in [&demo, &examples] {
        for other_path in ["import::handle", "apply_cohort_changes", "eval::count"] {
            assert!(!text.contains(other_path), "the demo calls {other_path}");
        }
    }
    assert!(demo.contains("WorkspaceHandle::in_memory"));
    assert!(examples.contains("partner::answer"));
    assert!(!root().join("src/demo.rs").exists());
}
