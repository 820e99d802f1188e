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
    for dep in [
        "clap::",
        "reqwest::",
        "indicatif::",
        "mimalloc::",
        "use clap",
        "#[arg(",
    ] {
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
    for dep in ["clap", "reqwest", "indicatif", "mimalloc"] {
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
        for other_path in ["import::handle", "apply_cohort_changes", "reference::count"] {
            assert!(!text.contains(other_path), "the demo calls {other_path}");
        }
    }
    assert!(demo.contains("WorkspaceHandle::in_memory"));
    assert!(examples.contains("partner::answer"));
    assert!(!root().join("src/demo.rs").exists());
}

/// The library's top-level modules from the bottom up, each with what it
/// may import: storage (`log`, `snapshot`) knows bytes and its own types,
/// never the domain; the domain sits on storage; the engine on the
/// domain; the services (queries, HTTP, the examples) on the engine. A
/// module may import only modules listed before it, so the graph is a DAG
/// by construction; ARCHITECTURE.md draws the same table.
const LAYERS: &[(&str, &[&str])] = &[
    // Base: newtypes, the error type, the portable bitmap reader.
    ("ids", &[]),
    ("log", &[]),
    ("bitmap_view", &[]),
    ("csv_records", &[]),
    ("error", &["ids", "log"]),
    // Storage.
    ("snapshot", &["bitmap_view", "error", "ids"]),
    // The domain.
    ("users", &["error", "ids", "snapshot"]),
    ("attributes", &["error", "bitmap_view"]),
    // Workspace API keys' scopes and records.
    ("access", &["error"]),
    (
        "segment",
        &[
            "attributes",
            "bitmap_view",
            "error",
            "ids",
            "snapshot",
            "users",
        ],
    ),
    (
        "cohorts",
        &["bitmap_view", "error", "ids", "snapshot", "users"],
    ),
    (
        "workspace",
        &[
            "access",
            "attributes",
            "bitmap_view",
            "cohorts",
            "error",
            "ids",
            "segment",
            "snapshot",
            "users",
        ],
    ),
    ("import", &["cohorts", "error", "ids"]),
    (
        "bulk",
        &["attributes", "csv_records", "error", "ids", "users"],
    ),
    (
        "workload",
        &[
            "attributes",
            "cohorts",
            "error",
            "ids",
            "segment",
            "snapshot",
            "users",
            "workspace",
        ],
    ),
    // The engine: data directories, logs, compaction, live workspaces.
    (
        "engine",
        &[
            "access",
            "attributes",
            "bitmap_view",
            "cohorts",
            "error",
            "ids",
            "import",
            "log",
            "segment",
            "snapshot",
            "users",
            "workspace",
        ],
    ),
    // Services.
    (
        "query",
        &[
            "attributes",
            "bitmap_view",
            "cohorts",
            "engine",
            "error",
            "ids",
            "segment",
            "snapshot",
            "users",
            "workspace",
        ],
    ),
    (
        "server",
        &[
            "access",
            "attributes",
            "bulk",
            "cohorts",
            "engine",
            "error",
            "ids",
            "import",
            "query",
            "segment",
            "snapshot",
            "users",
            "workspace",
        ],
    ),
    (
        "examples",
        &[
            "cohorts",
            "engine",
            "error",
            "ids",
            "import",
            "query",
            "segment",
            "server",
            "users",
            "workspace",
        ],
    ),
    // The partner sync client: the protocol's other side (the HTTP is the
    // binary's).
    ("sync", &["csv_records", "error", "ids", "import"]),
];

/// The top-level modules `src/lib.rs` declares.
fn top_level_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_string())
        })
        .collect()
}

/// Code only: a file's unit tests (its `#[cfg(test)] mod tests`, at the
/// end by convention) and line comments left out.
fn code_of(text: &str) -> String {
    let mut end = text.len();
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]") {
        let at = from + at;
        if text[at + "#[cfg(test)]".len()..]
            .trim_start()
            .starts_with("mod tests")
        {
            end = at;
            break;
        }
        from = at + 1;
    }
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` in `code`: `crate::a::…` gives `a`,
/// `crate::{a, b::c}` gives `a` and `b`.
fn names_after(code: &str, prefix: &str, into: &mut std::collections::BTreeSet<String>) {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if before_ok {
            if let Some(group) = after.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    let name = ident(part.trim());
                    if !name.is_empty() {
                        into.insert(name);
                    }
                }
            } else {
                let name = ident(after);
                if !name.is_empty() {
                    into.insert(name);
                }
            }
        }
        rest = after;
    }
}

/// What each top-level module imports of the others.
fn module_imports() -> Vec<(String, Vec<String>)> {
    let modules = top_level_modules();
    modules
        .iter()
        .map(|m| {
            let mut files = Vec::new();
            let file = root().join(format!("src/{m}.rs"));
            if let Ok(text) = std::fs::read_to_string(&file) {
                files.push((file.clone(), text));
            }
            files.extend(sources(&root().join("src").join(m)));
            let mut names = std::collections::BTreeSet::new();
            for (path, text) in &files {
                if path.ends_with("tests.rs") {
                    continue;
                }
                let code = code_of(text);
                names_after(&code, "crate::", &mut names);
                // In a module's root file, `super::` is the crate.
                let is_root = path == &file || path.ends_with(format!("src/{m}/mod.rs"));
                if is_root {
                    names_after(&code, "super::", &mut names);
                }
            }
            let deps = names
                .into_iter()
                .filter(|n| n != m && modules.contains(n))
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn the_layer_table_is_ordered_and_storage_knows_no_domain() {
    for (i, (module, allowed)) in LAYERS.iter().enumerate() {
        for dep in *allowed {
            let at = LAYERS.iter().position(|(m, _)| m == dep);
            assert!(
                at.is_some_and(|at| at < i),
                "{module} may import {dep}, which is not below it"
            );
        }
    }
    let domain = [
        "users",
        "access",
        "attributes",
        "segment",
        "cohorts",
        "workspace",
        "import",
        "bulk",
        "workload",
        "engine",
        "query",
        "server",
        "examples",
    ];
    for storage in ["log", "snapshot"] {
        let allowed = LAYERS
            .iter()
            .find(|(m, _)| *m == storage)
            .map(|(_, a)| *a)
            .expect("listed");
        assert!(allowed.iter().all(|d| !domain.contains(d)), "{storage}");
    }
}

#[test]
fn every_module_imports_only_what_its_layer_allows() {
    let imports = module_imports();
    assert!(imports.len() >= LAYERS.len(), "{imports:?}");
    let mut wrong = Vec::new();
    for (module, deps) in &imports {
        let Some((_, allowed)) = LAYERS.iter().find(|(m, _)| m == module) else {
            wrong.push(format!("{module} is in no layer: add it to LAYERS"));
            continue;
        };
        for dep in deps {
            if !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{module} imports {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn the_import_reader_sees_imports() {
    let mut names = std::collections::BTreeSet::new();
    let code = code_of(
        "use crate::{a, b::c};\nuse crate::d::E; // crate::x\nfn f() { crate::g::h(); }\n\
         #[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    names_after(&code, "crate::", &mut names);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b", "d", "g"]);
}

#[test]
fn the_crate_root_is_documented_and_unsafe_code_lives_in_the_map_kernel_and_helper_modules_only() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    assert!(
        lib.starts_with("//! "),
        "src/lib.rs opens with the crate docs"
    );
    for layer in ["base", "storage", "domain", "engine", "services"] {
        assert!(
            lib.contains(&format!("//! - **{layer}**")),
            "the crate docs name the {layer} layer"
        );
    }
    assert!(
        lib.contains("\n#![deny(unsafe_code)]\n"),
        "unsafe code is denied"
    );
    let allowed: Vec<String> = lines_with(&sources(&root().join("src")), "allow(unsafe_code)");
    assert_eq!(allowed.len(), 3, "{allowed:?}");
    // Each allowance sits on the one module it names, with its reason.
    for (file, line, what) in [
        (
            "src/snapshot/mod.rs",
            "#[allow(unsafe_code)] // the one memory map: see the module's contract\npub mod mmap;",
            "one allowance is on the map module",
        ),
        (
            "src/bitmap_view/mod.rs",
            "#[allow(unsafe_code)] // run-time CPU dispatch: see the module's contract\nmod kernels;",
            "another is on the (private) kernels module",
        ),
        (
            "src/segment/chunk.rs",
            "#[allow(unsafe_code)] // helpers that may wake late: see the module's contract\nmod helpers;",
            "the third is on the (private) module of a count's pool helpers",
        ),
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        assert!(text.contains(line), "{what}");
    }
    let main =
        std::fs::read_to_string(root().join("src/bin/segq/main.rs")).expect("src/bin/segq/main.rs");
    assert!(
        main.contains("\n#![deny(unsafe_code)]\n") && main.contains("\nmod heap;\n"),
        "the binary denies unsafe code, with no allowance"
    );
    let heap =
        std::fs::read_to_string(root().join("src/bin/segq/heap.rs")).expect("src/bin/segq/heap.rs");
    assert!(
        heap.contains(
            "#[global_allocator]\nstatic ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;"
        ),
        "the binary allocates with mimalloc"
    );
    let homes = [
        "src/snapshot/mmap.rs",
        "src/bitmap_view/kernels.rs",
        "src/segment/chunk/helpers.rs",
    ]
    .map(|p| format!("{}", root().join(p).display()));
    let unsafe_blocks = lines_with(&sources(&root().join("src")), "unsafe {");
    assert!(
        unsafe_blocks
            .iter()
            .all(|l| homes.iter().any(|h| l.starts_with(h.as_str()))),
        "{unsafe_blocks:?}"
    );
}

#[test]
fn fault_injection_is_behind_the_test_support_feature() {
    let log = std::fs::read_to_string(root().join("src/log/mod.rs")).expect("log/mod.rs");
    for item in ["mod faulty;", "pub use faulty::"] {
        let line = log
            .lines()
            .position(|l| l.trim_start().starts_with(item))
            .unwrap_or_else(|| panic!("{item} in log/mod.rs"));
        let gate = log.lines().nth(line.saturating_sub(1)).unwrap_or("");
        assert_eq!(
            gate.trim(),
            "#[cfg(any(test, feature = \"test-support\"))]",
            "{item} is not gated"
        );
    }
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let default = manifest
        .lines()
        .find(|l| l.starts_with("default ="))
        .expect("default features");
    assert!(!default.contains("test-support"), "{default}");
}
