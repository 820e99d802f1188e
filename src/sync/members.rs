//! A cohort's members as a sync reads them: a file of identifiers, one a
//! line, or a CSV file with a header and a named column.

use std::collections::BTreeSet;
use std::path::Path;

use crate::csv_records::{self, Records};
use crate::error::{Error, Result};

/// The longest CSV record read, in bytes.
const MAX_RECORD_BYTES: usize = 1 << 20;

/// How a members file is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One identifier a line. Surrounding spaces and tabs (and a `\r`
    /// before the newline) are trimmed; blank lines are skipped.
    Lines,
    /// CSV, as [`crate::csv_records`] reads it (quoted fields with commas,
    /// line breaks and doubled quotes, CRLF, a byte-order mark): a header
    /// naming the columns, then rows of as many fields; the identifiers are
    /// the named column's cells (trimmed; empty cells skipped).
    Csv {
        /// The column's name in the header.
        column: String,
    },
}

/// Reads the members file at `path`: its distinct identifiers.
pub fn read_members(path: &Path, layout: &Layout) -> Result<BTreeSet<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::InvalidArgument(format!(
            "members file {}: not UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_members(&text, layout)
        .map_err(|m| Error::InvalidArgument(format!("members file {}: {m}", path.display())))
}

/// The distinct identifiers of a members file's text, or why it is not
/// one (with the 1-based line).
pub fn parse_members(text: &str, layout: &Layout) -> std::result::Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    match layout {
        Layout::Lines => {
            for line in text.lines() {
                let id = line.trim_matches([' ', '\t', '\r']);
                if !id.is_empty() {
                    out.insert(id.to_string());
                }
            }
        }
        Layout::Csv { column } => {
            let mut records = Records::new(MAX_RECORD_BYTES);
            let mut at: Option<(usize, usize)> = None;
            let mut take = |item: csv_records::Item<'_>| -> std::result::Result<(), String> {
                let row = item.map_err(|e| e.to_string())?;
                if row.is_blank() {
                    return Ok(());
                }
                let line = row.line();
                let Some((at, width)) = at else {
                    let found = row
                        .fields()
                        .position(|h| h.trim() == column)
                        .ok_or_else(|| {
                            let header: Vec<&str> = row.fields().collect();
                            format!("the header has no column {column:?} (it has {header:?})")
                        })?;
                    at = Some((found, row.len()));
                    return Ok(());
                };
                csv_records::check_width(&row, width).map_err(|m| format!("line {line}: {m}"))?;
                let id = row.get(at).unwrap_or_default().trim();
                if !id.is_empty() {
                    out.insert(id.to_string());
                }
                Ok(())
            };
            records.feed(text.as_bytes(), &mut take)?;
            records.finish(&mut take)?;
            if at.is_none() {
                return Err(format!("no header line naming column {column:?}"));
            }
        }
    }
    Ok(out)
}
