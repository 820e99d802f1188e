//! The text form of a segment filter, e.g.
//!
//! ```text
//! amplitude_cohorts includes_value "c-9f1e"
//!     and not (mixpanel_cohorts includes_value power_users or random_bucket < 500)
//! ```
//!
//! Grammar (keywords are case-insensitive, whitespace including newlines is
//! free):
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | primary
//! primary    := "(" expr ")" | "all" | "none" | cohort | bucket | attr | segment
//! cohort     := {partner}_cohorts COMPARISON VALUE
//! COMPARISON := "includes_value" | "includes"
//!             | "does_not_include_value" | "does_not_include" | "excludes"
//! VALUE      := "double-quoted string" | bare word of [A-Za-z0-9_.:@-]+ (not a keyword)
//! bucket     := "random_bucket" ("<" | "<=" | ">" | ">=") INT
//!             | "random_bucket" "between" INT "and" INT
//! attr       := "attribute" NAME ATTR_TEST
//! segment    := ("in_segment" | "not_in_segment") NAME
//! NAME       := any bare word | "double-quoted string"   (1..=256 chars)
//! ATTR_TEST  := ("equals" | "=" | "does_not_equal" | "!=") (VALUE | NUMBER | "true" | "false")
//!             | "is_any_of" "(" VALUE ("," VALUE)* ")"   (1..=256 values)
//!             | "matches_regex" "pattern" | "starts_with" VALUE
//!             | "exists" | "does_not_exist"
//!             | ("<" | "<=" | ">" | ">=") NUMBER | "between" NUMBER "and" NUMBER
//!             | "is" ("true" | "false")
//!             | ("before" | "after") TIME
//!             | "within" ["the"] "last" N ("days" | "day" | "hours" | "hour")
//!             | "more" "than" N ("days" | "day") "ago"
//! NUMBER     := -?[0-9]+(.[0-9]+)?          (see [`Number`])
//! TIME       := an RFC 3339 time, bare or quoted (see [`Time`])
//! ```
//!
//! After `equals`/`=`, the value's kind picks the comparison: a quoted
//! string or a bare word is a string (`Equals`), a bare word starting with
//! a digit or `-` a number (`Eq`), `true`/`false` a boolean (`IsTrue`,
//! `IsFalse`); `!= true` is `not (attribute … is true)`, which holds for the
//! users without the attribute as every negative comparison does.
//!
//! `and` binds tighter than `or`, `not` tighter than both. A chain such as
//! `a and b and c` is one n-ary [`Filter::And`]; parentheses are kept as
//! written (`(a and b) and c` is `And[And[a, b], c]`), so the parser inverts
//! [`Filter`]'s `Display`. `all` is the empty `And`, `none` the empty `Or`.

use super::ast::{
    check_name, check_regex, is_word_char, AttrCmp, BucketCmp, Filter, Number, Time, MAX_ANY_OF,
    MAX_DAYS, MAX_HOURS, MAX_NAME_CHARS,
};
use crate::error::FilterParseError;
use crate::ids::{Partner, BUCKETS};

/// How deeply parentheses and `not`s may nest. Keeps the recursive descent
/// far away from the end of the stack.
pub const MAX_DEPTH: usize = 64;

const EXPECTED_FILTER: &str = "a filter: {partner}_cohorts, random_bucket, attribute, in_segment, not_in_segment, not, all, none or (";
const EXPECTED_ATTR_CMP: &str = "a comparison: equals, does_not_equal, is_any_of, matches_regex, starts_with, exists, does_not_exist, =, !=, <, <=, >, >=, between, is, before, after, within or more";
const EXPECTED_STRING: &str = "a \"quoted string\" or a bare word";
const EXPECTED_COMPARISON: &str = "includes_value or does_not_include_value";
const EXPECTED_BUCKET_CMP: &str = "<, <=, >, >= or between";
const EXPECTED_VALUE: &str = "a cohort id or name: a \"quoted string\" or a bare word";
const EXPECTED_ESCAPE: &str = "an escape: \\\", \\\\, \\n, \\t, \\r or \\u{hex}";

/// The words with a meaning of their own, which a bare cohort value may not
/// be (lower case; matched case-insensitively).
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "not",
    "all",
    "none",
    "between",
    "random_bucket",
    "includes_value",
    "includes",
    "does_not_include_value",
    "does_not_include",
    "excludes",
];

fn is_keyword(w: &str) -> bool {
    KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k))
}

/// Parses the text form of a segment filter.
pub fn parse(input: &str) -> Result<Filter, FilterParseError> {
    let mut parser = Parser {
        tokens: lex(input),
        pos: 0,
        depth: 0,
    };
    let filter = parser.expr()?;
    let tok = parser.peek()?;
    if tok.kind != Kind::Eof {
        return Err(tok.error("end of input"));
    }
    Ok(filter)
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A bare word: a keyword, a filter name, a number or a cohort value.
    Word(String),
    /// A double-quoted string, unescaped.
    Str(String),
    LParen,
    RParen,
    Lt,
    Le,
    Gt,
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `,`
    Comma,
    /// A character that starts no token.
    Other(char),
    Eof,
    /// The lexer failed here; the parser reports it when it gets this far.
    Error(Box<FilterParseError>),
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    line: usize,
    column: usize,
}

impl Token {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Word(w) => format!("{w:?}"),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::LParen => "\"(\"".to_string(),
            Kind::RParen => "\")\"".to_string(),
            Kind::Lt => "\"<\"".to_string(),
            Kind::Le => "\"<=\"".to_string(),
            Kind::Gt => "\">\"".to_string(),
            Kind::Ge => "\">=\"".to_string(),
            Kind::Eq => "\"=\"".to_string(),
            Kind::Ne => "\"!=\"".to_string(),
            Kind::Comma => "\",\"".to_string(),
            Kind::Other(c) => format!("{:?}", c.to_string()),
            Kind::Eof => "end of input".to_string(),
            Kind::Error(e) => e.found.clone(),
        }
    }

    fn error(&self, expected: impl Into<String>) -> FilterParseError {
        self.error_found(expected, self.describe())
    }

    fn error_found(&self, expected: impl Into<String>, found: String) -> FilterParseError {
        error_at(self.line, self.column, expected.into(), found)
    }

    /// The word in lower case, if this is a word.
    fn word(&self) -> Option<String> {
        match &self.kind {
            Kind::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        }
    }

    fn is_word(&self, keyword: &str) -> bool {
        matches!(&self.kind, Kind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

/// `amplitude_cohorts, mixpanel_cohorts, ... or tinyclues_cohorts`.
pub(crate) fn partner_filter_names() -> String {
    let names: Vec<String> = Partner::ALL.iter().map(|p| p.filter_name()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

fn error_at(line: usize, column: usize, expected: String, found: String) -> FilterParseError {
    FilterParseError {
        location: format!("line {line}, column {column}"),
        line: Some(line),
        column: Some(column),
        expected,
        found,
    }
}

/// A character cursor that knows its line and column (1-based, in chars).
struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    column: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }
}

/// Splits the input into tokens. The list always ends with `Eof` or, when a
/// string literal is malformed, with an `Error` token at that point.
fn lex(input: &str) -> Vec<Token> {
    let mut cur = Cursor {
        chars: input.chars().peekable(),
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    loop {
        while cur.peek().is_some_and(char::is_whitespace) {
            cur.bump();
        }
        let (line, column) = (cur.line, cur.column);
        let Some(c) = cur.bump() else {
            tokens.push(Token {
                kind: Kind::Eof,
                line,
                column,
            });
            return tokens;
        };
        let kind = match c {
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            '=' => Kind::Eq,
            '!' if cur.peek() == Some('=') => {
                cur.bump();
                Kind::Ne
            }
            '<' | '>' => {
                let eq = cur.peek() == Some('=');
                if eq {
                    cur.bump();
                }
                match (c, eq) {
                    ('<', false) => Kind::Lt,
                    ('<', true) => Kind::Le,
                    ('>', false) => Kind::Gt,
                    _ => Kind::Ge,
                }
            }
            '"' => match lex_string(&mut cur, line, column) {
                Ok(s) => Kind::Str(s),
                Err(e) => {
                    tokens.push(Token {
                        kind: Kind::Error(Box::new(e)),
                        line,
                        column,
                    });
                    return tokens;
                }
            },
            c if is_word_char(c) => {
                let mut word = String::from(c);
                while let Some(c) = cur.peek().filter(|&c| is_word_char(c)) {
                    word.push(c);
                    cur.bump();
                }
                Kind::Word(word)
            }
            c => Kind::Other(c),
        };
        tokens.push(Token { kind, line, column });
    }
}

/// Reads a string literal whose opening quote, at `line`:`column`, has been
/// consumed.
fn lex_string(
    cur: &mut Cursor<'_>,
    line: usize,
    column: usize,
) -> Result<String, FilterParseError> {
    let unterminated = || {
        error_at(
            line,
            column,
            "a closing \" for the string that starts here".to_string(),
            "end of input".to_string(),
        )
    };
    let mut s = String::new();
    loop {
        let (esc_line, esc_column) = (cur.line, cur.column);
        match cur.bump().ok_or_else(unterminated)? {
            '"' => return Ok(s),
            '\\' => {
                let bad = |found: String| {
                    error_at(esc_line, esc_column, EXPECTED_ESCAPE.to_string(), found)
                };
                match cur.bump().ok_or_else(unterminated)? {
                    '"' => s.push('"'),
                    '\\' => s.push('\\'),
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        let mut seen = String::from("\\u");
                        if cur.peek() != Some('{') {
                            return Err(bad(format!("{seen:?}")));
                        }
                        cur.bump();
                        seen.push('{');
                        let mut hex = String::new();
                        loop {
                            match cur.peek() {
                                Some('}') => {
                                    cur.bump();
                                    seen.push('}');
                                    break;
                                }
                                Some(c) if c.is_ascii_hexdigit() && hex.len() < 6 => {
                                    cur.bump();
                                    hex.push(c);
                                    seen.push(c);
                                }
                                Some(c) if c != '"' && !c.is_whitespace() => {
                                    seen.push(c);
                                    return Err(bad(format!("{seen:?}")));
                                }
                                _ => return Err(bad(format!("{seen:?}"))),
                            }
                        }
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| bad(format!("{seen:?}")))?;
                        s.push(c);
                    }
                    c => return Err(bad(format!("\"\\{c}\""))),
                }
            }
            c => s.push(c),
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// The parentheses and `not`s open around the current position.
    depth: usize,
}

impl Parser {
    /// The next token, or the lexer's error if it failed here.
    fn peek(&self) -> Result<&Token, FilterParseError> {
        // `lex` always ends the list with `Eof` or `Error`, and the parser
        // never moves past either.
        let tok = &self.tokens[self.pos.min(self.tokens.len() - 1)];
        match &tok.kind {
            Kind::Error(e) => Err((**e).clone()),
            _ => Ok(tok),
        }
    }

    /// Consumes and returns the next token.
    fn next(&mut self) -> Result<Token, FilterParseError> {
        let tok = self.peek()?.clone();
        if tok.kind != Kind::Eof {
            self.pos += 1;
        }
        Ok(tok)
    }

    /// Consumes the next token if it is the keyword.
    fn eat_word(&mut self, keyword: &str) -> Result<bool, FilterParseError> {
        let eat = self.peek()?.is_word(keyword);
        if eat {
            self.pos += 1;
        }
        Ok(eat)
    }

    /// Enters a parenthesis or a `not` at `tok`.
    fn enter(&mut self, tok: &Token) -> Result<(), FilterParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(tok.error(format!(
                "at most {MAX_DEPTH} levels of nested parentheses and nots"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    fn expr(&mut self) -> Result<Filter, FilterParseError> {
        self.or()
    }

    fn or(&mut self) -> Result<Filter, FilterParseError> {
        let mut children = vec![self.and()?];
        while self.eat_word("or")? {
            children.push(self.and()?);
        }
        Ok(match <[Filter; 1]>::try_from(children) {
            Ok([only]) => only,
            Err(children) => Filter::Or(children),
        })
    }

    fn and(&mut self) -> Result<Filter, FilterParseError> {
        let mut children = vec![self.unary()?];
        while self.eat_word("and")? {
            children.push(self.unary()?);
        }
        Ok(match <[Filter; 1]>::try_from(children) {
            Ok([only]) => only,
            Err(children) => Filter::And(children),
        })
    }

    fn unary(&mut self) -> Result<Filter, FilterParseError> {
        let tok = self.peek()?.clone();
        if tok.is_word("not") {
            self.enter(&tok)?;
            self.pos += 1;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(inner.not());
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterParseError> {
        let tok = self.peek()?.clone();
        if tok.kind == Kind::LParen {
            self.enter(&tok)?;
            self.pos += 1;
            let inner = self.expr()?;
            let close = self.peek()?;
            if close.kind != Kind::RParen {
                return Err(close.error(")"));
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(inner);
        }
        let Some(word) = tok.word() else {
            return Err(tok.error(EXPECTED_FILTER));
        };
        match word.as_str() {
            "all" => {
                self.pos += 1;
                Ok(Filter::And(Vec::new()))
            }
            "none" => {
                self.pos += 1;
                Ok(Filter::Or(Vec::new()))
            }
            "random_bucket" => {
                self.pos += 1;
                self.bucket().map(Filter::Bucket)
            }
            "attribute" => {
                self.pos += 1;
                self.attribute()
            }
            "in_segment" | "not_in_segment" => {
                self.pos += 1;
                let id = self.name("a saved segment id")?;
                Ok(Filter::Segment {
                    id,
                    included: word == "in_segment",
                })
            }
            w if w.ends_with("_cohorts") => {
                let Some(partner) = Partner::from_filter_name(w) else {
                    return Err(tok.error(format!(
                        "a partner's cohorts filter: {}",
                        partner_filter_names()
                    )));
                };
                self.pos += 1;
                self.cohort(partner)
            }
            _ => Err(tok.error(EXPECTED_FILTER)),
        }
    }

    /// The rest of a cohort filter, after `{partner}_cohorts`.
    fn cohort(&mut self, partner: Partner) -> Result<Filter, FilterParseError> {
        let tok = self.next()?;
        let includes = match tok.word().as_deref() {
            Some("includes_value" | "includes") => true,
            Some("does_not_include_value" | "does_not_include" | "excludes") => false,
            Some(_) => {
                let found = format!("unknown comparison {}", tok.describe());
                return Err(tok.error_found(EXPECTED_COMPARISON, found));
            }
            None => return Err(tok.error(EXPECTED_COMPARISON)),
        };
        let tok = self.next()?;
        let cohort = match tok.kind {
            Kind::Str(s) => s,
            Kind::Word(w) if !is_keyword(&w) => w,
            Kind::Word(_) => {
                let found = format!("the keyword {}", tok.describe());
                return Err(tok.error_found(EXPECTED_VALUE, found));
            }
            _ => return Err(tok.error(EXPECTED_VALUE)),
        };
        Ok(Filter::Cohort {
            partner,
            cohort,
            includes,
        })
    }

    /// The rest of a bucket filter, after `random_bucket`.
    fn bucket(&mut self) -> Result<BucketCmp, FilterParseError> {
        let tok = self.next()?;
        let cmp: fn(u16) -> BucketCmp = match tok.kind {
            Kind::Lt => BucketCmp::Lt,
            Kind::Le => BucketCmp::Le,
            Kind::Gt => BucketCmp::Gt,
            Kind::Ge => BucketCmp::Ge,
            _ if tok.is_word("between") => {
                let lo = self.int(0)?;
                let tok = self.next()?;
                if !tok.is_word("and") {
                    return Err(tok.error("and"));
                }
                let hi = self.int(lo)?;
                return Ok(BucketCmp::Between(lo, hi));
            }
            _ => return Err(tok.error(EXPECTED_BUCKET_CMP)),
        };
        Ok(cmp(self.int(0)?))
    }

    /// An attribute name or a segment id: any word, or a quoted string, of
    /// 1 to `MAX_NAME_CHARS` characters.
    fn name(&mut self, what: &str) -> Result<String, FilterParseError> {
        let tok = self.next()?;
        let expected =
            || format!("{what}: a word or a \"quoted string\" of 1 to {MAX_NAME_CHARS} characters");
        match tok.kind {
            Kind::Word(ref w) if check_name(w) => Ok(w.clone()),
            Kind::Str(ref s) if check_name(s) => Ok(s.clone()),
            _ => Err(tok.error(expected())),
        }
    }

    /// The rest of an attribute filter, after `attribute`.
    fn attribute(&mut self) -> Result<Filter, FilterParseError> {
        let attribute = self.name("an attribute name")?;
        let of = |expected: &str| format!("{expected} (attribute {attribute:?})");
        let tok = self.next()?;
        let number = |p: &mut Self| p.number(&attribute);
        let cmp = match &tok.kind {
            Kind::Eq => return self.equality(attribute, true),
            Kind::Ne => return self.equality(attribute, false),
            Kind::Lt => AttrCmp::Lt(number(self)?),
            Kind::Le => AttrCmp::Le(number(self)?),
            Kind::Gt => AttrCmp::Gt(number(self)?),
            Kind::Ge => AttrCmp::Ge(number(self)?),
            Kind::Word(_) => match tok.word().as_deref().unwrap_or_default() {
                "equals" => return self.equality(attribute, true),
                "does_not_equal" => return self.equality(attribute, false),
                "is_any_of" => AttrCmp::IsAnyOf(self.string_list(&attribute)?),
                "matches_regex" => {
                    let tok = self.next()?;
                    let Kind::Str(pattern) = &tok.kind else {
                        return Err(tok.error(of("a \"quoted\" regular expression")));
                    };
                    if let Err(found) = check_regex(pattern) {
                        return Err(tok.error_found(
                            of("a valid regular expression of at most 1024 characters"),
                            found,
                        ));
                    }
                    AttrCmp::MatchesRegex(pattern.clone())
                }
                "starts_with" => {
                    let tok = self.next()?;
                    match self.string(&tok) {
                        Some(prefix) if !prefix.is_empty() => AttrCmp::StartsWith(prefix),
                        _ => {
                            return Err(tok.error(of(
                                "a non-empty prefix: a \"quoted string\" or a bare word",
                            )))
                        }
                    }
                }
                "exists" => AttrCmp::Exists,
                "does_not_exist" => AttrCmp::DoesNotExist,
                "between" => {
                    let lo = number(self)?;
                    let tok = self.next()?;
                    if !tok.is_word("and") {
                        return Err(tok.error("and"));
                    }
                    let tok = self.peek()?.clone();
                    let hi = number(self)?;
                    if hi < lo {
                        return Err(tok.error(of(&format!("a number no less than {lo}"))));
                    }
                    AttrCmp::Between(lo, hi)
                }
                "is" => {
                    let tok = self.next()?;
                    match tok.word().as_deref() {
                        Some("true") => AttrCmp::IsTrue,
                        Some("false") => AttrCmp::IsFalse,
                        _ => return Err(tok.error(of("true or false"))),
                    }
                }
                "before" => AttrCmp::Before(self.time(&attribute)?),
                "after" => AttrCmp::After(self.time(&attribute)?),
                "within" => {
                    self.eat_word("the")?;
                    self.keyword("last")?;
                    let tok = self.peek()?.clone();
                    let n = self.count(&attribute, MAX_HOURS)?;
                    let unit = self.next()?;
                    match unit.word().as_deref() {
                        Some("days" | "day") if n <= MAX_DAYS => AttrCmp::WithinLastDays(n),
                        Some("days" | "day") => {
                            return Err(tok.error(of(&format!(
                                "a whole number of days from 1 to {MAX_DAYS}"
                            ))))
                        }
                        Some("hours" | "hour") => AttrCmp::WithinLastHours(n),
                        _ => return Err(unit.error("days or hours")),
                    }
                }
                "more" => {
                    self.keyword("than")?;
                    let n = self.count(&attribute, MAX_DAYS)?;
                    let unit = self.next()?;
                    if !matches!(unit.word().as_deref(), Some("days" | "day")) {
                        return Err(unit.error("days"));
                    }
                    self.keyword("ago")?;
                    AttrCmp::MoreThanDaysAgo(n)
                }
                _ => {
                    let found = format!("unknown comparison {}", tok.describe());
                    return Err(tok.error_found(EXPECTED_ATTR_CMP, found));
                }
            },
            _ => return Err(tok.error(EXPECTED_ATTR_CMP)),
        };
        Ok(Filter::Attribute { attribute, cmp })
    }

    /// Consumes the keyword, or fails naming it.
    fn keyword(&mut self, keyword: &str) -> Result<(), FilterParseError> {
        let tok = self.next()?;
        if tok.is_word(keyword) {
            Ok(())
        } else {
            Err(tok.error(keyword))
        }
    }

    /// A string value: a quoted string, or a bare word that is not a
    /// keyword.
    fn string(&self, tok: &Token) -> Option<String> {
        match &tok.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Word(w) if !is_keyword(w) => Some(w.clone()),
            _ => None,
        }
    }

    /// The value of `equals`/`=` (`positive`) or `does_not_equal`/`!=`: a
    /// string, a number or `true`/`false`. The value's kind picks the
    /// comparison; `!= true` is `not (attribute is true)`, which holds for
    /// the users without the attribute as every negative comparison does.
    fn equality(&mut self, attribute: String, positive: bool) -> Result<Filter, FilterParseError> {
        let tok = self.next()?;
        let cmp = match &tok.kind {
            Kind::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                let cmp = if w.eq_ignore_ascii_case("true") {
                    AttrCmp::IsTrue
                } else {
                    AttrCmp::IsFalse
                };
                let leaf = Filter::Attribute { attribute, cmp };
                return Ok(if positive { leaf } else { leaf.not() });
            }
            Kind::Word(w) if w.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
                let n = w.parse::<Number>().map_err(|e| {
                    tok.error(format!("{} (attribute {attribute:?})", e.expected()))
                })?;
                if positive {
                    AttrCmp::Eq(n)
                } else {
                    AttrCmp::Ne(n)
                }
            }
            _ => match self.string(&tok) {
                Some(s) if positive => AttrCmp::Equals(s),
                Some(s) => AttrCmp::DoesNotEqual(s),
                None => {
                    return Err(tok.error(format!(
                    "a value: {EXPECTED_STRING}, a number, true or false (attribute {attribute:?})"
                )))
                }
            },
        };
        Ok(Filter::Attribute { attribute, cmp })
    }

    /// `("a", "b", ...)`: 1 to `MAX_ANY_OF` strings.
    fn string_list(&mut self, attribute: &str) -> Result<Vec<String>, FilterParseError> {
        let open = self.next()?;
        if open.kind != Kind::LParen {
            return Err(open.error(format!(
                "( and a list of 1 to {MAX_ANY_OF} strings (attribute {attribute:?})"
            )));
        }
        let mut values = Vec::new();
        loop {
            let tok = self.next()?;
            let Some(v) = self.string(&tok) else {
                return Err(tok.error(format!(
                    "a value: {EXPECTED_STRING} (attribute {attribute:?})"
                )));
            };
            if values.len() == MAX_ANY_OF {
                return Err(tok.error_found(
                    format!("at most {MAX_ANY_OF} values (attribute {attribute:?})"),
                    format!("a value past the {MAX_ANY_OF}th"),
                ));
            }
            values.push(v);
            let tok = self.next()?;
            match tok.kind {
                Kind::Comma => {}
                Kind::RParen => return Ok(values),
                _ => return Err(tok.error(", or )")),
            }
        }
    }

    /// A number such as `42`, `-7` or `120.5`.
    fn number(&mut self, attribute: &str) -> Result<Number, FilterParseError> {
        let tok = self.next()?;
        let parsed = match &tok.kind {
            Kind::Word(w) => w.parse::<Number>(),
            _ => Err(super::ast::NumberError::Syntax),
        };
        parsed.map_err(|e| tok.error(format!("{} (attribute {attribute:?})", e.expected())))
    }

    /// An RFC 3339 time, bare or quoted.
    fn time(&mut self, attribute: &str) -> Result<Time, FilterParseError> {
        let tok = self.next()?;
        let parsed = match &tok.kind {
            Kind::Word(w) | Kind::Str(w) => w.parse::<Time>().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| tok.error(format!("{} (attribute {attribute:?})", Time::EXPECTED)))
    }

    /// A count of days or hours in `1..=max`.
    fn count(&mut self, attribute: &str, max: u32) -> Result<u32, FilterParseError> {
        let tok = self.next()?;
        let value = match &tok.kind {
            Kind::Word(w) if w.bytes().all(|b| b.is_ascii_digit()) => w.parse::<u32>().ok(),
            _ => None,
        };
        match value {
            Some(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(tok.error(format!(
                "a whole number from 1 to {max} (attribute {attribute:?})"
            ))),
        }
    }

    /// An integer bucket in `min..BUCKETS`.
    fn int(&mut self, min: u16) -> Result<u16, FilterParseError> {
        let tok = self.next()?;
        let value = match &tok.kind {
            Kind::Word(w) if w.bytes().all(|b| b.is_ascii_digit()) => {
                // Too many digits for a u16 is out of range too.
                w.parse::<u16>().ok()
            }
            _ => None,
        };
        match value {
            Some(v) if (min..BUCKETS).contains(&v) => Ok(v),
            _ => Err(tok.error(format!("an integer from {min} to {}", BUCKETS - 1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_positions_in_chars() {
        let toks = lex("é (\n  <= \"x\"");
        let pos: Vec<_> = toks.iter().map(|t| (t.line, t.column)).collect();
        assert_eq!(pos, vec![(1, 1), (1, 3), (2, 3), (2, 6), (2, 9)]);
    }

    #[test]
    fn unicode_escape_limits() {
        assert!(parse(r#"heap_cohorts includes "\u{110000}""#).is_err());
        assert!(parse(r#"heap_cohorts includes "\u{d800}""#).is_err());
        assert!(parse(r#"heap_cohorts includes "\u{1234567}""#).is_err());
        assert!(parse(r#"heap_cohorts includes "\u{}""#).is_err());
        assert_eq!(
            parse(r#"heap_cohorts includes "\u{1F600}""#),
            Ok(Filter::includes(Partner::Heap, "\u{1F600}"))
        );
    }
}
