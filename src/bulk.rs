//! Bulk loading of users from JSON Lines or CSV, shared by the HTTP import
//! (`POST /admin/workspaces/{ws}/users/import`) and the CLI
//! (`segq users import FILE`).
//!
//! Both read their input in chunks and push the chunks through a
//! [`Parser`], which splits lines, parses each one into a [`NewUser`] and
//! hands the results on with their 1-based line numbers. Callers gather the
//! users in a [`Batch`] of up to [`BATCH_SIZE`], apply each batch as one
//! durable upsert, and add up the outcome in [`Totals`].
//!
//! # Formats
//!
//! JSON Lines: one user object per line,
//! `{"external_id": "u1", "devices": ["d1"], "aliases": [{"alias_label": "email", "alias_name": "a@x"}], "attributes": {"country": "BR"}}`;
//! every key is optional, `null` means absent, and any other key is an
//! error (a typo must not silently drop an identifier). In `attributes`,
//! a `null` value unsets the attribute. Blank lines are skipped.
//!
//! CSV: a header line naming some of the columns `external_id`,
//! `device_id`, `alias_label`, `alias_name` and custom attributes as
//! `attr:NAME` (any order), then one row per user. An empty cell is
//! absent (an attribute left as it is); an attribute cell is read as the
//! attribute's type, or its type is inferred (see [`crate::attributes`]).
//! The CSV is read by [`crate::csv_records`]: fields may be quoted with `"`
//! and then hold commas, line breaks and quotes (doubled, `""`); lines may
//! end in `\r\n`; a UTF-8 byte-order mark at the start is skipped. Rows
//! that name the same external_id again add their device and alias to that
//! user (an upsert), so a user with two devices is two rows. A row's line
//! number is the line it starts on.
//!
//! # Errors
//!
//! A malformed line or CSV record (bad JSON, wrong number of CSV fields,
//! no identifier, a quoted field never closed, a line or record over
//! [`MAX_LINE_BYTES`]) is reported with its line number and
//! skipped; the load goes on. So is a user the engine refuses (for example
//! an identifier held by another user). Only a missing or invalid CSV
//! header stops the whole load ([`BulkError`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::attributes::{AttrInput, AttrInputs};
use crate::csv_records::{self, Records, Row};
use crate::users::NewUser;

/// Users applied per batch (one durable log record each).
pub const BATCH_SIZE: usize = 10_000;

/// Errors kept in [`Totals::errors`]: the first ones, by line number.
pub const MAX_ERRORS: usize = 100;

/// The longest line (JSON Lines) or record (CSV) the parser accepts.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The input format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines: one [`UserJson`] object a line.
    JsonLines,
    /// CSV with a header naming the columns.
    Csv,
}

impl Format {
    /// By file extension: `.jsonl`/`.ndjson` or `.csv` (case-insensitive).
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// By name, as the CLI's `--format` takes it: `jsonl`, `ndjson` or `csv`.
    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json-lines" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// By the essence of a `Content-Type`: `application/x-ndjson`,
    /// `application/jsonl`, `application/json-lines` or `text/csv`
    /// (parameters such as `charset=utf-8` are ignored).
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let is = |m: &str| essence.eq_ignore_ascii_case(m);
        if is("application/x-ndjson")
            || is("application/ndjson")
            || is("application/jsonl")
            || is("application/x-jsonlines")
            || is("application/json-lines")
        {
            Some(Format::JsonLines)
        } else if is("text/csv") {
            Some(Format::Csv)
        } else {
            None
        }
    }
}

/// An alias as the admin API and JSON Lines spell it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasJson {
    /// The alias label.
    pub alias_label: String,
    /// The alias name.
    pub alias_name: String,
}

/// One user as the admin API (`POST /admin/workspaces/{ws}/users`) and
/// JSON Lines take it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"external_id": "u-1", "devices": ["ios-1"],
    "aliases": [{"alias_label": "email", "alias_name": "ann@example.com"}],
    "attributes": {"country": "BR", "lifetime_spend": 120.5}}))]
pub struct UserJson {
    /// The user's external_id, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Device_ids to give the user.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// Aliases to give the user.
    #[serde(default)]
    pub aliases: Option<Vec<AliasJson>>,
    /// Custom attributes to set (a `null` value unsets one).
    #[serde(default)]
    #[schema(value_type = Option<crate::attributes::AttributeValues>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

impl UserJson {
    /// Takes the custom attributes out, in the order given.
    pub fn take_attributes(&mut self) -> AttrInputs {
        self.attributes
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, AttrInput::Json(v)))
            .collect()
    }

    /// The user to upsert. A user needs at least one identifier: one
    /// without any could never be found again.
    pub fn into_new_user(self) -> Result<NewUser, String> {
        let user = NewUser {
            external_id: self.external_id,
            devices: self.devices.unwrap_or_default(),
            aliases: self
                .aliases
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.alias_label, a.alias_name))
                .collect(),
            bucket: None,
        };
        check_has_identifier(&user)?;
        Ok(user)
    }
}

fn check_has_identifier(user: &NewUser) -> Result<(), String> {
    if user.external_id.is_none() && user.devices.is_empty() && user.aliases.is_empty() {
        return Err(
            "a user needs at least one identifier (external_id, a device or an alias)".into(),
        );
    }
    Ok(())
}

/// A fatal error: the input cannot be read as the format at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkError(pub String);

impl fmt::Display for BulkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BulkError {}

/// One parsed line: its 1-based number, and the user or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The line's 1-based number.
    pub line: u64,
    /// The user, or why the line is refused.
    pub user: Result<NewUser, String>,
    /// Its custom attributes (none when the line is refused).
    pub attributes: AttrInputs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Column {
    ExternalId,
    DeviceId,
    AliasLabel,
    AliasName,
    Attribute(String),
}

/// Splits chunks of input into lines (JSON Lines) or records (CSV) and
/// parses them.
#[derive(Debug)]
pub struct Parser {
    format: Format,
    /// JSON Lines only: the start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    /// JSON Lines only: the line being read is over [`MAX_LINE_BYTES`]:
    /// drop it up to its end.
    too_long: bool,
    /// JSON Lines only: lines seen so far.
    line: u64,
    /// CSV only: the records.
    records: Records,
    /// CSV only: the columns, once the header is read.
    columns: Option<Vec<Column>>,
}

impl Parser {
    /// A parser of `format` input, at its first line.
    pub fn new(format: Format) -> Self {
        Parser {
            format,
            pending: Vec::new(),
            too_long: false,
            line: 0,
            records: Records::new(MAX_LINE_BYTES),
            columns: None,
        }
    }

    /// Lines seen so far (the number of the last complete line).
    pub fn lines(&self) -> u64 {
        match self.format {
            Format::JsonLines => self.line,
            Format::Csv => self.records.lines(),
        }
    }

    /// Parses every complete line of `chunk` (with what is left of earlier
    /// chunks) and passes each non-blank one to `out`. Fails only on a bad
    /// CSV header.
    pub fn feed(&mut self, chunk: &[u8], out: &mut impl FnMut(Parsed)) -> Result<(), BulkError> {
        if self.format == Format::Csv {
            let Parser {
                records, columns, ..
            } = self;
            return records.feed(chunk, &mut |item| csv_record(item, columns, out));
        }
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.too_long {
                self.too_long = false;
                self.pending.clear();
                self.line += 1;
                self.report_too_long(out);
                continue;
            }
            if self.pending.is_empty() {
                self.line += 1;
                self.parse_line(head, out)?;
            } else if self.pending.len() + head.len() > MAX_LINE_BYTES {
                self.pending.clear();
                self.line += 1;
                self.report_too_long(out);
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(head);
                self.line += 1;
                let r = self.parse_line(&line, out);
                line.clear();
                self.pending = line;
                r?;
            }
        }
        if !rest.is_empty() && !self.too_long {
            if self.pending.len() + rest.len() > MAX_LINE_BYTES {
                self.pending.clear();
                self.too_long = true;
            } else {
                self.pending.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    /// Parses the last line if the input did not end with a newline, and
    /// checks that a CSV input had its header.
    pub fn finish(&mut self, out: &mut impl FnMut(Parsed)) -> Result<(), BulkError> {
        if self.format == Format::Csv {
            let Parser {
                records, columns, ..
            } = self;
            records.finish(&mut |item| csv_record(item, columns, out))?;
            if columns.is_none() {
                return Err(BulkError(
                    "the CSV input is empty: expected a header line such as external_id,device_id,alias_label,alias_name".into(),
                ));
            }
            return Ok(());
        }
        if self.too_long {
            self.too_long = false;
            self.line += 1;
            self.report_too_long(out);
        } else if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line += 1;
            self.parse_line(&line, out)?;
        }
        Ok(())
    }

    fn report_too_long(&self, out: &mut impl FnMut(Parsed)) {
        out(Parsed {
            line: self.line,
            user: Err(format!("line is longer than {MAX_LINE_BYTES} bytes")),
            attributes: Vec::new(),
        });
    }

    /// One JSON Lines line.
    fn parse_line(&mut self, raw: &[u8], out: &mut impl FnMut(Parsed)) -> Result<(), BulkError> {
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.line == 1 {
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        out(parsed(self.line, parse_json_line(raw)));
        Ok(())
    }
}

fn parsed(line: u64, result: Result<(NewUser, AttrInputs), String>) -> Parsed {
    let (user, attributes) = match result {
        Ok((u, a)) => (Ok(u), a),
        Err(e) => (Err(e), Vec::new()),
    };
    Parsed {
        line,
        user,
        attributes,
    }
}

/// One CSV record: the header while `columns` is unset, else a user. A
/// header that cannot be read is fatal; a bad row is reported.
fn csv_record(
    item: csv_records::Item<'_>,
    columns: &mut Option<Vec<Column>>,
    out: &mut impl FnMut(Parsed),
) -> Result<(), BulkError> {
    match (item, columns.as_ref()) {
        (Err(e), None) => Err(BulkError(format!(
            "line {} (the CSV header): {}",
            e.line, e.message
        ))),
        (Err(e), Some(_)) => {
            out(parsed(e.line, Err(e.message)));
            Ok(())
        }
        (Ok(row), _) if row.is_blank() => Ok(()),
        (Ok(row), None) => {
            *columns = Some(parse_header(&row)?);
            Ok(())
        }
        (Ok(row), Some(columns)) => {
            out(parsed(row.line(), csv_row(&row, columns)));
            Ok(())
        }
    }
}

fn parse_json_line(raw: &[u8]) -> Result<(NewUser, AttrInputs), String> {
    let mut user: UserJson = serde_json::from_slice(raw).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("not valid JSON: {e}")
        } else {
            format!("not a user object: {e}")
        }
    })?;
    let attributes = user.take_attributes();
    Ok((user.into_new_user()?, attributes))
}

fn parse_header(row: &Row<'_>) -> Result<Vec<Column>, BulkError> {
    let at = row.line();
    let mut columns = Vec::with_capacity(row.len());
    for name in row.fields() {
        let column = match name.trim() {
            "external_id" => Column::ExternalId,
            "device_id" => Column::DeviceId,
            "alias_label" => Column::AliasLabel,
            "alias_name" => Column::AliasName,
            other => match other.strip_prefix("attr:") {
                Some(attr) => {
                    crate::attributes::check_name(attr)
                        .map_err(|e| BulkError(format!("line {at} (the CSV header): {e}")))?;
                    Column::Attribute(attr.to_string())
                }
                None => {
                    return Err(BulkError(format!(
                        "line {at} (the CSV header): unknown column {other:?}: expected external_id, device_id, alias_label, alias_name or attr:NAME"
                    )))
                }
            },
        };
        if columns.contains(&column) {
            return Err(BulkError(format!(
                "line {at} (the CSV header): column {:?} is named twice",
                name.trim()
            )));
        }
        columns.push(column);
    }
    if columns.contains(&Column::AliasLabel) != columns.contains(&Column::AliasName) {
        return Err(BulkError(format!(
            "line {at} (the CSV header): alias_label and alias_name go together"
        )));
    }
    Ok(columns)
}

fn csv_row(row: &Row<'_>, columns: &[Column]) -> Result<(NewUser, AttrInputs), String> {
    csv_records::check_width(row, columns.len())?;
    let mut user = NewUser::default();
    let mut attributes = Vec::new();
    let (mut label, mut name) = (None, None);
    for (column, value) in columns.iter().zip(row.fields()) {
        if value.is_empty() {
            continue;
        }
        let value = value.to_string();
        match column {
            Column::ExternalId => user.external_id = Some(value),
            Column::DeviceId => user.devices.push(value),
            Column::AliasLabel => label = Some(value),
            Column::AliasName => name = Some(value),
            Column::Attribute(a) => attributes.push((a.clone(), AttrInput::Text(value))),
        }
    }
    match (label, name) {
        (Some(l), Some(n)) => user.aliases.push((l, n)),
        (None, None) => {}
        _ => return Err("alias_label and alias_name must both be set or both be empty".into()),
    }
    check_has_identifier(&user)?;
    Ok((user, attributes))
}

/// Users waiting to be applied, with their line numbers.
#[derive(Debug, Default)]
pub struct Batch {
    /// The users, in input order.
    pub users: Vec<NewUser>,
    /// Each user's line number.
    pub lines: Vec<u64>,
    /// Each user's custom attributes.
    pub attributes: Vec<AttrInputs>,
}

impl Batch {
    /// An empty batch, with room for [`BATCH_SIZE`] users.
    pub fn new() -> Self {
        Batch {
            users: Vec::with_capacity(BATCH_SIZE),
            lines: Vec::with_capacity(BATCH_SIZE),
            attributes: Vec::with_capacity(BATCH_SIZE),
        }
    }

    /// Adds a user read from `line`.
    pub fn push(&mut self, line: u64, user: NewUser) {
        self.push_with(line, user, Vec::new());
    }

    /// Adds a user read from `line`, with its custom attributes.
    pub fn push_with(&mut self, line: u64, user: NewUser, attributes: AttrInputs) {
        self.users.push(user);
        self.lines.push(line);
        self.attributes.push(attributes);
    }

    /// The users with their attributes, for `upsert_users_with`.
    pub fn into_users(self) -> Vec<(NewUser, AttrInputs)> {
        self.users.into_iter().zip(self.attributes).collect()
    }

    /// The users in the batch.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the batch holds no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the batch holds [`BATCH_SIZE`] users, so it is to be applied.
    pub fn is_full(&self) -> bool {
        self.users.len() >= BATCH_SIZE
    }

    /// Takes the batch out, leaving an empty one.
    pub fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::new())
    }
}

/// A line that failed, as the import response and the CLI report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// The line's 1-based number.
    pub line: u64,
    /// Why it failed.
    pub message: String,
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Users created.
    pub created: u64,
    /// Users found and updated.
    pub updated: u64,
    /// Lines that failed, all of them.
    pub failed: u64,
    /// The first [`MAX_ERRORS`] failures by line number.
    pub errors: Vec<LineError>,
}

impl Totals {
    /// Counts a failed line.
    pub fn fail(&mut self, line: u64, message: String) {
        self.failed += 1;
        self.errors.push(LineError { line, message });
        if self.errors.len() >= 2 * MAX_ERRORS {
            self.trim_errors();
        }
    }

    /// Adds the outcome of one applied batch: `failed` holds the indexes
    /// (within `lines`) of the users the engine refused, and why.
    pub fn add_batch(
        &mut self,
        lines: &[u64],
        created: u64,
        updated: u64,
        failed: Vec<(usize, String)>,
    ) {
        self.created += created;
        self.updated += updated;
        for (i, message) in failed {
            let line = lines.get(i).copied().unwrap_or(0);
            self.fail(line, message);
        }
    }

    fn trim_errors(&mut self) {
        self.errors.sort_by_key(|e| e.line);
        self.errors.truncate(MAX_ERRORS);
    }

    /// Sorts and trims the kept errors; call once at the end.
    pub fn finish(&mut self) {
        self.trim_errors();
    }
}

/// What one applied batch did: created, updated, and the refused users
/// by index in the batch with the reason.
pub type BatchOutcome = (u64, u64, Vec<(usize, String)>);

/// Loads a whole input synchronously (the CLI): reads `input` in chunks,
/// parses it, and calls `apply` for every batch of up to [`BATCH_SIZE`]
/// users; `progress` is told the bytes read so far and the totals after
/// every chunk. A bad line is counted and skipped; a read error, a bad CSV
/// header or a failing `apply` stops the load (batches applied before stay
/// applied). `name` names the input in errors.
pub fn load(
    mut input: impl std::io::Read,
    name: &str,
    format: Format,
    mut apply: impl FnMut(Batch) -> crate::error::Result<BatchOutcome>,
    mut progress: impl FnMut(u64, &Totals),
) -> crate::error::Result<Totals> {
    use crate::error::Error;
    let mut parser = Parser::new(format);
    let mut totals = Totals::default();
    let mut batch = Batch::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let fatal = |e: BulkError| Error::InvalidArgument(format!("{name}: {e}"));
    let mut apply_batch = |batch: Batch, totals: &mut Totals| -> crate::error::Result<()> {
        let lines = batch.lines.clone();
        let (created, updated, failed) = apply(batch)?;
        totals.add_batch(&lines, created, updated, failed);
        Ok(())
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(name, e)),
        };
        read += n as u64;
        let mut full = Vec::new();
        parser
            .feed(&buf[..n], &mut |p| {
                match p.user {
                    Ok(u) => batch.push_with(p.line, u, p.attributes),
                    Err(message) => totals.fail(p.line, message),
                }
                if batch.is_full() {
                    full.push(batch.take());
                }
            })
            .map_err(fatal)?;
        for b in full {
            apply_batch(b, &mut totals)?;
        }
        progress(read, &totals);
    }
    parser
        .finish(&mut |p| match p.user {
            Ok(u) => batch.push_with(p.line, u, p.attributes),
            Err(message) => totals.fail(p.line, message),
        })
        .map_err(fatal)?;
    if !batch.is_empty() {
        apply_batch(batch.take(), &mut totals)?;
    }
    totals.finish();
    progress(read, &totals);
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(format: Format, input: &[u8], chunk: usize) -> Result<Vec<Parsed>, BulkError> {
        let mut p = Parser::new(format);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            p.feed(c, &mut |x| out.push(x))?;
        }
        p.finish(&mut |x| out.push(x))?;
        Ok(out)
    }

    #[test]
    fn json_lines_in_any_chunking() {
        let input = b"{\"external_id\":\"u1\",\"devices\":[\"d1\"]}\r\n\n{\"aliases\":[{\"alias_label\":\"email\",\"alias_name\":\"a@x\"}]}\n{bad\n{\"devcies\":[]}\n{}";
        for chunk in [1, 3, 7, 1000] {
            let out = parse_all(Format::JsonLines, input, chunk).expect("no fatal error");
            assert_eq!(out.len(), 5, "chunk {chunk}");
            assert_eq!(out[0].line, 1);
            assert_eq!(
                out[0].user,
                Ok(NewUser {
                    external_id: Some("u1".into()),
                    devices: vec!["d1".into()],
                    ..NewUser::default()
                })
            );
            assert_eq!(out[1].line, 3);
            assert_eq!(
                out[1].user.as_ref().map(|u| u.aliases.clone()),
                Ok(vec![("email".to_string(), "a@x".to_string())])
            );
            assert_eq!(out[2].line, 4);
            assert!(out[2]
                .user
                .as_ref()
                .is_err_and(|e| e.contains("not valid JSON")));
            assert!(out[3].user.as_ref().is_err_and(|e| e.contains("devcies")));
            assert_eq!(out[4].line, 6);
            assert!(out[4]
                .user
                .as_ref()
                .is_err_and(|e| e.contains("identifier")));
        }
    }

    #[test]
    fn csv_rows_quotes_and_errors() {
        let input = "\u{feff}external_id,device_id,alias_label,alias_name\nu1,d1,,\n,d2,email,\"a,\"\"b\"\"\"\nu3,,email\n,,,\n\"open,,,\n,,,\n";
        let out = parse_all(Format::Csv, input.as_bytes(), 5).expect("header is fine");
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].line, 2);
        assert_eq!(
            out[0].user,
            Ok(NewUser {
                external_id: Some("u1".into()),
                devices: vec!["d1".into()],
                ..NewUser::default()
            })
        );
        assert_eq!(
            out[1].user,
            Ok(NewUser {
                devices: vec!["d2".into()],
                aliases: vec![("email".into(), "a,\"b\"".into())],
                ..NewUser::default()
            })
        );
        assert!(out[2]
            .user
            .as_ref()
            .is_err_and(|e| e.contains("expected 4 fields")));
        assert_eq!(out[3].line, 5);
        assert!(out[3]
            .user
            .as_ref()
            .is_err_and(|e| e.contains("identifier")));
        // An open quote takes every line after it: one error, on its line.
        assert_eq!(out[4].line, 6);
        assert!(out[4]
            .user
            .as_ref()
            .is_err_and(|e| e.contains("not closed")));
    }

    /// Each CSV rule, alone, in every chunking: the users read, by line.
    #[test]
    fn csv_by_the_rules_in_any_chunking() {
        let user = |ext: &str, dev: &str| NewUser {
            external_id: Some(ext.into()),
            devices: vec![dev.into()],
            ..NewUser::default()
        };
        type Case = (&'static str, &'static str, Vec<(u64, NewUser)>);
        let cases: &[Case] = &[
            (
                "quoted",
                "\"external_id\",\"device_id\"\n\"u1\",\"d1\"\n",
                vec![(2, user("u1", "d1"))],
            ),
            (
                "embedded comma",
                "external_id,device_id\n\"u,1\",d1\n",
                vec![(2, user("u,1", "d1"))],
            ),
            (
                "embedded newline",
                "external_id,device_id\n\"u\n1\",\"d\r\n1\"\nu2,d2\n",
                vec![(2, user("u\n1", "d\r\n1")), (5, user("u2", "d2"))],
            ),
            (
                "doubled quote",
                "external_id,device_id\n\"u\"\"1\"\"\",d1\n",
                vec![(2, user("u\"1\"", "d1"))],
            ),
            (
                "CRLF",
                "external_id,device_id\r\nu1,d1\r\n\r\nu2,\"d2\"\r\n",
                vec![(2, user("u1", "d1")), (4, user("u2", "d2"))],
            ),
            // Lines are counted by their `\n`s.
            (
                "CR alone",
                "external_id,device_id\ru1,d1\ru2,d2",
                vec![(1, user("u1", "d1")), (1, user("u2", "d2"))],
            ),
            (
                "byte-order mark",
                "\u{feff}external_id,device_id\nu1,d1\n",
                vec![(2, user("u1", "d1"))],
            ),
        ];
        for (name, input, want) in cases {
            for chunk in [1, 2, 3, 4, 1000] {
                let out = parse_all(Format::Csv, input.as_bytes(), chunk)
                    .unwrap_or_else(|e| panic!("{name}, chunk {chunk}: {e}"));
                let got: Vec<(u64, NewUser)> = out
                    .into_iter()
                    .map(|p| (p.line, p.user.expect(name)))
                    .collect();
                assert_eq!(&got, want, "{name}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn csv_attribute_cells_keep_their_commas_quotes_and_line_breaks() {
        let input = "external_id,attr:note\nu1,\"a, \"\"b\"\"\nc\"\n";
        let out = parse_all(Format::Csv, input.as_bytes(), 3).expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].attributes,
            vec![("note".to_string(), AttrInput::Text("a, \"b\"\nc".into()))]
        );
    }

    /// One rule where the old line splitters differed: a stray quote is
    /// read as the csv crate reads it, in the header and in rows.
    #[test]
    fn csv_stray_quotes_read_as_the_csv_crate_reads_them() {
        let out = parse_all(Format::Csv, b"external_id,device_id\nu\"1,\"d\"1\n", 100).expect("ok");
        assert_eq!(out[0].user, Ok(user_with("u\"1", "d1")));
    }

    fn user_with(ext: &str, dev: &str) -> NewUser {
        NewUser {
            external_id: Some(ext.into()),
            devices: vec![dev.into()],
            ..NewUser::default()
        }
    }

    #[test]
    fn csv_header_errors_are_fatal() {
        assert!(parse_all(Format::Csv, b"", 10).is_err());
        assert!(parse_all(Format::Csv, b"\xef\xbb\xbf\r\n", 1).is_err());
        assert!(parse_all(Format::Csv, b"\n\n\"external_id\nu1\n", 10)
            .is_err_and(
                |e| e.0.starts_with("line 3 (the CSV header)") && e.0.contains("not closed")
            ));
        assert!(parse_all(Format::Csv, b"external_\xffid\nu1\n", 10)
            .is_err_and(|e| e.0.contains("UTF-8")));
        assert!(parse_all(Format::Csv, b"external_id,email\nu1,x\n", 10)
            .is_err_and(|e| e.0.contains("unknown column \"email\"")));
        assert!(parse_all(Format::Csv, b"external_id,alias_label\n", 10).is_err());
        let out = parse_all(Format::Csv, b"device_id,external_id\nd1,u1", 4).expect("ok");
        assert_eq!(out[0].user.as_ref().map(|u| u.devices.len()), Ok(1));
    }

    #[test]
    fn long_lines_are_reported_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\n{\"external_id\":\"u\"}\n");
        let out = parse_all(Format::JsonLines, &input, 4096).expect("ok");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].line, 1);
        assert!(out[0].user.is_err());
        assert_eq!(out[1].line, 2);
        assert!(out[1].user.is_ok());
    }

    #[test]
    fn totals_keep_the_first_errors_by_line() {
        let mut t = Totals::default();
        for line in (1..=500).rev() {
            t.fail(line, "bad".into());
        }
        t.add_batch(&[7, 8], 1, 0, vec![(1, "taken".into())]);
        t.finish();
        assert_eq!(t.failed, 501);
        assert_eq!(t.created, 1);
        assert_eq!(t.errors.len(), MAX_ERRORS);
        assert_eq!(t.errors[0].line, 1);
        assert_eq!(t.errors[99].line, 99);
        assert!(t.errors.iter().any(|e| e.line == 8 && e.message == "taken"));
    }

    #[test]
    fn load_applies_in_batches() {
        let mut input = String::from("external_id,device_id\n");
        for i in 0..(BATCH_SIZE + 5) {
            input.push_str(&format!("u{i},d{i}\n"));
        }
        input.push_str("x,y,z\n");
        let mut batches = Vec::new();
        let mut last_progress = 0;
        let totals = load(
            input.as_bytes(),
            "users.csv",
            Format::Csv,
            |b| {
                batches.push(b.len());
                let failed = if batches.len() == 2 {
                    vec![(0, "taken".to_string())]
                } else {
                    Vec::new()
                };
                Ok((b.len() as u64 - failed.len() as u64, 0, failed))
            },
            |read, _| last_progress = read,
        )
        .expect("loads");
        assert_eq!(batches, vec![BATCH_SIZE, 5]);
        assert_eq!(totals.created, BATCH_SIZE as u64 + 4);
        assert_eq!(totals.failed, 2);
        assert_eq!(
            totals.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![BATCH_SIZE as u64 + 2, BATCH_SIZE as u64 + 7]
        );
        assert_eq!(last_progress, input.len() as u64);
        let bad = load(
            &b"nope\n"[..],
            "x.csv",
            Format::Csv,
            |_| Ok((0, 0, Vec::new())),
            |_, _| {},
        );
        assert!(bad.is_err_and(|e| e.to_string().contains("x.csv")));
    }

    #[test]
    fn formats() {
        assert_eq!(
            Format::from_content_type("application/x-ndjson; charset=utf-8"),
            Some(Format::JsonLines)
        );
        assert_eq!(Format::from_content_type("TEXT/CSV"), Some(Format::Csv));
        assert_eq!(Format::from_content_type("application/json"), None);
        assert_eq!(
            Format::from_path(std::path::Path::new("a/users.CSV")),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_path(std::path::Path::new("users.txt")), None);
    }
}
