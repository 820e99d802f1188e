//! Golden files: a version 1 log and snapshot, written once and read by
//! every later build with the same result, so that a persisted encoding
//! cannot change by accident; and the imports the storage layer may make.

use std::path::Path;

/// The code of a source file (relative to the crate root), without its
/// comments: what it imports, not what its docs link to.
pub fn code_of(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}
