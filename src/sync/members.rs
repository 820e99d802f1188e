//! A cohort's members as a sync reads them: a file of identifiers, one a
//! line, or a CSV file with a header and a named column.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};

/// How a members file is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One identifier a line. Surrounding spaces and tabs (and a `\r`
    /// before the newline) are trimmed; blank lines are skipped.
    Lines,
    /// CSV: a header line naming the columns, then rows; the identifiers
    /// are the named column's cells (trimmed; empty cells skipped). A field
    /// may be quoted with `"` (a quote inside doubled as `""`); a quoted
    /// field cannot span lines.
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
            let mut lines = text.lines().enumerate();
            let header = loop {
                match lines.next() {
                    None => return Err(format!("no header line naming column {column:?}")),
                    Some((_, l)) if l.trim().is_empty() => continue,
                    Some((n, l)) => {
                        break csv_fields(l).map_err(|m| format!("line {}: {m}", n + 1))?
                    }
                }
            };
            let at = header
                .iter()
                .position(|h| h.trim() == column)
                .ok_or_else(|| {
                    format!("the header has no column {column:?} (it has {header:?})")
                })?;
            for (n, line) in lines {
                if line.trim().is_empty() {
                    continue;
                }
                let fields = csv_fields(line).map_err(|m| format!("line {}: {m}", n + 1))?;
                let cell = fields.get(at).ok_or_else(|| {
                    format!(
                        "line {}: {} fields, but column {column:?} is field {}",
                        n + 1,
                        fields.len(),
                        at + 1
                    )
                })?;
                let id = cell.trim();
                if !id.is_empty() {
                    out.insert(id.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// The fields of one CSV line.
fn csv_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}
