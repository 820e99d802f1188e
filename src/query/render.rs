//! Member pages as JSON Lines or CSV, the same bytes on the HTTP export
//! and on `segq members --data`.

use std::io::Write as _;

use crate::error::{Error, Result};
use crate::ids::UserId;
use crate::workspace::Workspace;

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines: one JSON object a member.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

impl Format {
    /// `jsonl` or `csv`.
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            other => Err(Error::InvalidArgument(format!(
                "format {other:?}: expected \"jsonl\" or \"csv\""
            ))),
        }
    }

    /// The HTTP `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The optional columns of an export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// A column with the member's aliases.
    pub aliases: bool,
    /// A column with the member's random bucket.
    pub bucket: bool,
}

impl Extras {
    /// The columns named (`aliases`, `bucket`); any other name is an error.
    pub fn parse<S: AsRef<str>>(fields: &[S]) -> Result<Extras> {
        let mut x = Extras::default();
        for f in fields {
            match f.as_ref() {
                "aliases" => x.aliases = true,
                "bucket" => x.bucket = true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown field {other:?} in fields: expected \"aliases\" or \"bucket\""
                    )))
                }
            }
        }
        Ok(x)
    }
}

/// A CSV writer (the `csv` crate's) appending to `out`: fields quoted
/// when they hold a comma, a quote or a line break, records ended by `\n`.
fn csv_writer(out: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out)
}

/// Writes `records` with [`csv_writer`].
fn write_csv<I, R>(out: &mut Vec<u8>, records: I)
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut w = csv_writer(out);
    for r in records {
        // Writing into a Vec cannot fail.
        let _ = w.write_record(r);
    }
    let _ = w.flush();
}

/// The CSV header line.
pub fn csv_header(extras: Extras) -> String {
    let mut h = vec!["external_id", "user_id"];
    if extras.aliases {
        h.push("aliases");
    }
    if extras.bucket {
        h.push("bucket");
    }
    let mut out = Vec::new();
    write_csv(&mut out, [h]);
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a spreadsheet would read a cell starting so as a formula.
fn formula_like(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// A text cell: a value a spreadsheet would take for a formula (one
/// starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a `'`
/// before it, as spreadsheet exporters do. (Quoting is the writer's.)
fn text_cell(s: &str) -> String {
    if formula_like(s) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn aliases_json(out: &mut Vec<u8>, aliases: &[(Box<str>, Box<str>)]) {
    out.push(b'[');
    for (i, (label, name)) in aliases.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"alias_label\":");
        json_string(out, label);
        out.extend_from_slice(b",\"alias_name\":");
        json_string(out, name);
        out.push(b'}');
    }
    out.push(b']');
}

/// Renders members: one JSON object per line
/// (`{"external_id": …}`, or `{"user_id": N}` for an anonymous user, plus
/// `"aliases"` and `"bucket"` when asked), or CSV rows under
/// [`csv_header`], where exactly one of `external_id` and `user_id` is set,
/// `aliases` is the JSON array of the line form (empty when none).
pub fn render_members(
    ws: &Workspace,
    members: &[u32],
    format: Format,
    extras: Extras,
    out: &mut Vec<u8>,
) {
    if format == Format::Csv {
        let rows = members.iter().map(|&u| csv_row(ws, UserId(u), extras));
        write_csv(out, rows);
        return;
    }
    for &u in members {
        let user = UserId(u);
        let ext = ws.users.external_id(user);
        let rec = extras.aliases.then(|| ws.users.get(user)).flatten();
        let aliases = rec.as_ref().map_or(&[][..], |r| &r.aliases[..]);
        let bucket = ws.users.bucket(user).unwrap_or(0);
        match ext {
            Some(e) => {
                out.extend_from_slice(b"{\"external_id\":");
                json_string(out, &e);
            }
            None => {
                let _ = write!(out, "{{\"user_id\":{u}");
            }
        }
        if extras.aliases {
            out.extend_from_slice(b",\"aliases\":");
            aliases_json(out, aliases);
        }
        if extras.bucket {
            let _ = write!(out, ",\"bucket\":{bucket}");
        }
        out.extend_from_slice(b"}\n");
    }
}

/// One member's CSV cells, in [`csv_header`]'s order.
fn csv_row(ws: &Workspace, user: UserId, extras: Extras) -> Vec<String> {
    let mut row = Vec::with_capacity(4);
    match ws.users.external_id(user) {
        Some(e) => row.extend([text_cell(&e), String::new()]),
        None => row.extend([String::new(), user.0.to_string()]),
    }
    if extras.aliases {
        let rec = ws.users.get(user);
        let aliases = rec.as_ref().map_or(&[][..], |r| &r.aliases[..]);
        let mut cell = String::new();
        if !aliases.is_empty() {
            let mut a = Vec::new();
            aliases_json(&mut a, aliases);
            cell = text_cell(&String::from_utf8_lossy(&a));
        }
        row.push(cell);
    }
    if extras.bucket {
        row.push(ws.users.bucket(user).unwrap_or(0).to_string());
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_fields() {
        assert!(Format::parse("xml").is_err());
        assert_eq!(
            Extras::parse(&["bucket"]).ok(),
            Some(Extras {
                aliases: false,
                bucket: true
            })
        );
        assert!(Extras::parse(&["email"]).is_err());
    }

    #[test]
    fn csv_quoting() {
        let mut out = Vec::new();
        write_csv(&mut out, [["plain", "a,\"b\"\nc", "x\ry", ""]]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "plain,\"a,\"\"b\"\"\nc\",\"x\ry\",\n"
        );
    }

    #[test]
    fn csv_cells_that_look_like_formulas_are_neutralised() {
        let cell = |v: &str| {
            let mut out = Vec::new();
            write_csv(&mut out, [[text_cell(v), "-".into()]]);
            let text = String::from_utf8(out).unwrap();
            text.strip_suffix(",-\n").unwrap().to_string()
        };
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("=1+2"), "'=1+2");
        assert_eq!(cell("+33 1 23"), "'+33 1 23");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("\rx"), "\"'\rx\"");
        // Only the first character counts.
        assert_eq!(cell("a=b"), "a=b");
        assert_eq!(cell("u-1"), "u-1");
    }
}
