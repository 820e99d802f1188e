//! CSV records, read by the `csv` crate's own parser (`csv-core`), fed in
//! chunks: the one CSV reader of the crate, shared by the bulk user import
//! ([`crate::bulk`], over HTTP and from the CLI) and the sync client's
//! members files ([`crate::sync`]).
//!
//! # The rule
//!
//! Fields are separated by `,` and records by `\n`, `\r\n` or `\r`. A field
//! may be quoted with `"`; a quoted field may hold commas, line breaks and
//! quotes (written doubled, `""`). A UTF-8 byte-order mark at the very
//! start is skipped, and so are empty lines. Where the input strays from
//! that, the reading is the crate's: a `"` inside an unquoted field is kept
//! as it is, and text right after a closing quote is joined to the field.
//!
//! A record that cannot be used is an error naming the line it starts on:
//! one not valid UTF-8, one over the size limit, and a quoted field still
//! open at the end of the input (it would otherwise swallow every line
//! after its opening quote). Checking a record against a header is
//! [`check_width`].
//!
//! Input is pushed in chunks of any size ([`Records::feed`]), so a
//! streamed body is never held whole: only the record being read is
//! buffered.

use std::fmt;

use csv_core::ReadRecordResult;

/// One record: its fields, and the line it starts on.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    line: u64,
    text: &'a str,
    ends: &'a [usize],
}

impl<'a> Row<'a> {
    /// The 1-based line the record starts on.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the record has no field (never, for a record read).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`, unquoted.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// The fields, unquoted, in order.
    pub fn fields(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// A line holding nothing but blanks: one field of only whitespace.
    pub fn is_blank(&self) -> bool {
        self.len() == 1 && self.text.trim().is_empty()
    }
}

/// Why a record cannot be used, and the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// The 1-based line the record starts on.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// `row` has as many fields as the header names, or why not.
pub fn check_width(row: &Row<'_>, header: usize) -> Result<(), String> {
    if row.len() != header {
        return Err(format!(
            "expected {header} fields as the header names, found {}",
            row.len()
        ));
    }
    Ok(())
}

/// What the parser is handed for each record: the record or why it
/// cannot be used. The callback's own error stops the reading.
pub type Item<'a> = Result<Row<'a>, RecordError>;

/// A CSV reader fed in chunks.
#[derive(Debug)]
pub struct Records {
    reader: csv_core::Reader,
    /// The longest record accepted, in input bytes.
    max_bytes: usize,
    /// Until the first 3 bytes are in: them (the parser strips a
    /// byte-order mark only when it sees it whole).
    head: Vec<u8>,
    started: bool,
    /// The current record's field bytes and field ends.
    out: Vec<u8>,
    nout: usize,
    ends: Vec<usize>,
    nend: usize,
    /// Input bytes of the current record so far.
    record_bytes: usize,
    /// The current record is over the limit: its fields are dropped as
    /// they come; only the line breaks in them are counted.
    too_long: bool,
    dropped_newlines: u64,
}

impl Records {
    /// A reader at the start of its input; a record over `max_bytes` input
    /// bytes is an error (and its bytes are not kept).
    pub fn new(max_bytes: usize) -> Self {
        Records {
            reader: csv_core::Reader::new(),
            max_bytes,
            head: Vec::new(),
            started: false,
            out: vec![0; 4096],
            nout: 0,
            ends: vec![0; 64],
            nend: 0,
            record_bytes: 0,
            too_long: false,
            dropped_newlines: 0,
        }
    }

    /// The line breaks read so far (so the last complete line's number).
    pub fn lines(&self) -> u64 {
        self.reader.line() - 1
    }

    /// Reads every record that `chunk` completes and passes each to `out`;
    /// what is left of a record waits for the next chunk.
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut impl FnMut(Item<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.started {
            return self.run(chunk, out);
        }
        if self.head.len() + chunk.len() < 3 {
            self.head.extend_from_slice(chunk);
            return Ok(());
        }
        self.started = true;
        if self.head.is_empty() {
            return self.run(chunk, out);
        }
        let mut first = std::mem::take(&mut self.head);
        first.extend_from_slice(chunk);
        self.run(&first, out)
    }

    /// Ends the input: reads its last record, or reports a quoted field
    /// still open.
    pub fn finish<E>(&mut self, out: &mut impl FnMut(Item<'_>) -> Result<(), E>) -> Result<(), E> {
        if !self.started {
            self.started = true;
            let head = std::mem::take(&mut self.head);
            self.run(&head, out)?;
        }
        // A line break ends a record left without one. If the parser takes
        // it as field text instead, a quoted field is open.
        self.run(b"\n", out)?;
        if self.nout > 0 || self.nend > 0 || self.too_long {
            let line = self.start_line(false);
            self.reset_record();
            // The parser's own end of input closes the record; it is dropped.
            let _ = self.reader.read_record(&[], &mut self.out, &mut self.ends);
            out(Err(RecordError {
                line,
                message: "a quoted field is not closed by the end of the input".into(),
            }))?;
        }
        while self
            .reader
            .read_record(&[], &mut self.out, &mut self.ends)
            .0
            != ReadRecordResult::End
        {}
        Ok(())
    }

    fn reset_record(&mut self) {
        self.nout = 0;
        self.nend = 0;
        self.record_bytes = 0;
        self.too_long = false;
        self.dropped_newlines = 0;
    }

    /// The line the current record starts on, from the parser's line count
    /// less the line breaks inside it (and its terminating `\n`, when it
    /// was one).
    fn start_line(&self, ended_by_newline: bool) -> u64 {
        let inside = self.out[..self.nout]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + self.dropped_newlines;
        self.reader.line() - inside - u64::from(ended_by_newline)
    }

    fn run<E>(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(Item<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let (res, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.out[self.nout..],
                &mut self.ends[self.nend..],
            );
            let ended_by_newline = nin > 0 && input[nin - 1] == b'\n';
            input = &input[nin..];
            self.nout += nout;
            self.nend += nend;
            self.record_bytes += nin;
            match res {
                ReadRecordResult::End => return Ok(()),
                ReadRecordResult::Record => {
                    let line = self.start_line(ended_by_newline);
                    let item = if self.too_long {
                        Err(RecordError {
                            line,
                            message: format!("the record is longer than {} bytes", self.max_bytes),
                        })
                    } else {
                        match std::str::from_utf8(&self.out[..self.nout]) {
                            Ok(text) => Ok(Row {
                                line,
                                text,
                                ends: &self.ends[..self.nend],
                            }),
                            Err(_) => Err(RecordError {
                                line,
                                message: "the record is not valid UTF-8".into(),
                            }),
                        }
                    };
                    let r = out(item);
                    self.reset_record();
                    r?;
                    continue;
                }
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    if !self.too_long && self.nout == self.out.len() {
                        self.out.resize(self.out.len() * 2, 0);
                    }
                }
                ReadRecordResult::OutputEndsFull => {
                    if !self.too_long && self.nend == self.ends.len() {
                        self.ends.resize(self.ends.len() * 2, 0);
                    }
                }
            }
            if self.nout == 0 && self.nend == 0 && !self.too_long {
                // Nothing of a record yet: only empty lines were skipped.
                self.record_bytes = 0;
            }
            if self.record_bytes > self.max_bytes && !self.too_long {
                self.too_long = true;
            }
            if self.too_long {
                // Keep nothing of it but the count of its line breaks.
                self.dropped_newlines += self.out[..self.nout]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                self.nout = 0;
                self.nend = 0;
            }
            if res == ReadRecordResult::InputEmpty {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record of `input` fed in chunks of `chunk` bytes: its line
    /// and fields, or its error.
    fn read(
        input: &[u8],
        chunk: usize,
        max: usize,
    ) -> Vec<Result<(u64, Vec<String>), RecordError>> {
        let mut r = Records::new(max);
        let mut got = Vec::new();
        let mut sink = |item: Item<'_>| -> Result<(), ()> {
            got.push(item.map(|row| (row.line(), row.fields().map(String::from).collect())));
            Ok(())
        };
        for c in input.chunks(chunk.max(1)) {
            r.feed(c, &mut sink).unwrap();
        }
        r.finish(&mut sink).unwrap();
        got
    }

    fn ok(line: u64, fields: &[&str]) -> Result<(u64, Vec<String>), RecordError> {
        Ok((line, fields.iter().map(|f| f.to_string()).collect()))
    }

    #[test]
    fn quotes_commas_line_breaks_crlf_and_a_byte_order_mark_in_any_chunking() {
        let input =
            "\u{feff}a,b\r\n\"x,1\",\"say \"\"hi\"\"\"\r\n\r\n\"two\r\nlines\",z\n\nlast,\"\"";
        for chunk in [1, 2, 3, 5, 1000] {
            assert_eq!(
                read(input.as_bytes(), chunk, 100),
                vec![
                    ok(1, &["a", "b"]),
                    ok(2, &["x,1", "say \"hi\""]),
                    ok(4, &["two\r\nlines", "z"]),
                    ok(7, &["last", ""]),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_open_quote_at_the_end_is_an_error_on_its_first_line() {
        for chunk in [1, 4, 100] {
            let got = read(b"a\n\"x\ny\n", chunk, 100);
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[0], ok(1, &["a"]));
            let e = got[1].clone().unwrap_err();
            assert_eq!(e.line, 2);
            assert!(e.message.contains("not closed"), "{e}");
        }
        // Closed on the last line without a line break: fine.
        assert_eq!(read(b"\"x\ny\"", 2, 100), vec![ok(1, &["x\ny"])]);
    }

    #[test]
    fn long_and_non_utf8_records_are_errors_and_reading_goes_on() {
        let mut input = b"a\n\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 50));
        input.extend_from_slice(b"\n\n\",y\n\xff,z\nb\n");
        let got = read(&input, 7, 20);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], ok(1, &["a"]));
        assert_eq!(got[1].clone().unwrap_err().line, 2);
        assert!(got[1]
            .clone()
            .unwrap_err()
            .message
            .contains("longer than 20"));
        assert_eq!(got[2].clone().unwrap_err().line, 5);
        assert!(got[2].clone().unwrap_err().message.contains("UTF-8"));
        assert_eq!(got[3], ok(6, &["b"]));
        // Empty lines before a record do not count towards its size.
        let mut input = vec![b'\n'; 100];
        input.extend_from_slice(b"short\n");
        assert_eq!(read(&input, 7, 20), vec![ok(101, &["short"])]);
    }

    #[test]
    fn a_stray_quote_reads_as_the_csv_crate_reads_it() {
        assert_eq!(
            read(b"a\"b,\"c\"d\n", 100, 100),
            vec![ok(1, &["a\"b", "cd"])]
        );
    }

    #[test]
    fn an_empty_input_has_no_record() {
        assert_eq!(read(b"", 1, 10), vec![]);
        assert_eq!(read(b"\n\r\n", 1, 10), vec![]);
        assert_eq!(read(b"\xef\xbb\xbf", 1, 10), vec![]);
    }
}
