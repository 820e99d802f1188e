//! The logical segment filter: what a marketer built, before any planning.
//!
//! Both the JSON form ([`super::json`]) and the text form ([`super::text`])
//! parse to this tree, and [`Filter`]'s `Display` prints the text form, so
//! `text::parse(&f.to_string()) == f` for every tree whose `And`/`Or` nodes
//! have zero or at least two children (a one-child `And` prints as `(x)`,
//! which reads back as `x`), whose bucket values are buckets (0..=9999,
//! `between` with lo <= hi) and whose attribute and segment leaves are
//! within the limits [`AttrCmp`] lists: the parser refuses the others.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Partner, BUCKETS};

/// A comparison on the user's random bucket (0..=9999).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketCmp {
    /// `random_bucket < v`
    Lt(u16),
    /// `random_bucket <= v`
    Le(u16),
    /// `random_bucket > v`
    Gt(u16),
    /// `random_bucket >= v`
    Ge(u16),
    /// `random_bucket between lo and hi`, both ends included.
    Between(u16, u16),
}

impl BucketCmp {
    /// The inclusive range of buckets this comparison accepts, or `None` when
    /// it accepts none (`< 0`, `> 9999`, or `between 5 and 3`).
    pub fn range(self) -> Option<(u16, u16)> {
        let max = BUCKETS - 1;
        let (lo, hi) = match self {
            BucketCmp::Lt(0) => return None,
            BucketCmp::Lt(v) => (0, v - 1),
            BucketCmp::Le(v) => (0, v),
            BucketCmp::Gt(v) if v >= max => return None,
            BucketCmp::Gt(v) => (v + 1, max),
            BucketCmp::Ge(v) => (v, max),
            BucketCmp::Between(lo, hi) => (lo, hi),
        };
        let hi = hi.min(max);
        (lo <= hi).then_some((lo, hi))
    }

    /// Whether a bucket value satisfies the comparison.
    pub fn accepts(self, bucket: u16) -> bool {
        self.range()
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&bucket))
    }
}

/// A segment filter tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// `{partner}_cohorts includes_value|does_not_include_value <cohort>`.
    ///
    /// `cohort` is the value as written: a cohort_id, or (before
    /// [`crate::segment::resolve`]) a unique cohort name. After resolution it
    /// is always the cohort_id.
    Cohort {
        /// The partner whose cohort is tested.
        partner: Partner,
        /// The cohort value: a cohort_id or a unique cohort name.
        cohort: String,
        /// `includes_value` (true) or `does_not_include_value`.
        includes: bool,
    },
    /// `random_bucket <cmp> <value>`.
    Bucket(BucketCmp),
    /// Every child holds. An empty `And` holds for every user.
    And(Vec<Filter>),
    /// Some child holds. An empty `Or` holds for nobody.
    Or(Vec<Filter>),
    /// The users of the workspace for whom the child does not hold.
    Not(Box<Filter>),
    /// `attribute <name> <cmp>`: a test of a user's custom attribute.
    Attribute {
        /// The attribute's name, as written (case-sensitive).
        attribute: String,
        /// The comparison.
        cmp: AttrCmp,
    },
    /// `in_segment <id>` (`included`) or `not_in_segment <id>`: a
    /// reference to a saved segment. `not_in_segment` holds for every user
    /// of the workspace not in the segment.
    Segment {
        /// The saved segment's id.
        id: String,
        /// `in` (true) or `not_in`.
        included: bool,
    },
}

impl Filter {
    /// `{partner}_cohorts includes_value cohort`.
    pub fn includes(partner: Partner, cohort: impl Into<String>) -> Filter {
        Filter::Cohort {
            partner,
            cohort: cohort.into(),
            includes: true,
        }
    }

    /// `{partner}_cohorts does_not_include_value cohort`.
    pub fn excludes(partner: Partner, cohort: impl Into<String>) -> Filter {
        Filter::Cohort {
            partner,
            cohort: cohort.into(),
            includes: false,
        }
    }

    /// `not self`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }

    /// The tree with every relative time test made absolute at `now`
    /// (seconds since the epoch): `within last N days|hours` becomes
    /// `after (now minus N, less 1s) and before (now plus 1s)`, both ends
    /// included as the relative test has them, and `more than N days ago`
    /// becomes `before (now minus N days)`. A request pins its `now` so;
    /// saved segments it refers to keep their relative tests (read at the
    /// query's time).
    pub fn pin_now(&self, now: i64) -> Result<Filter, crate::error::Error> {
        let time = |t: i64| {
            Time::from_unix(t).ok_or_else(|| {
                crate::error::Error::InvalidArgument(format!(
                    "now {now} puts a relative time test outside years 0000 to 9999"
                ))
            })
        };
        let at = |attribute: &str, cmp: AttrCmp| Filter::Attribute {
            attribute: attribute.to_string(),
            cmp,
        };
        let within = |attribute: &str, secs: i64| -> Result<Filter, crate::error::Error> {
            Ok(Filter::And(vec![
                at(attribute, AttrCmp::After(time(now - secs - 1)?)),
                at(attribute, AttrCmp::Before(time(now + 1)?)),
            ]))
        };
        Ok(match self {
            Filter::Attribute { attribute, cmp } => match cmp {
                AttrCmp::WithinLastDays(n) => within(attribute, i64::from(*n) * 86_400)?,
                AttrCmp::WithinLastHours(n) => within(attribute, i64::from(*n) * 3_600)?,
                AttrCmp::MoreThanDaysAgo(n) => at(
                    attribute,
                    AttrCmp::Before(time(now - i64::from(*n) * 86_400)?),
                ),
                _ => self.clone(),
            },
            Filter::And(c) => {
                Filter::And(c.iter().map(|c| c.pin_now(now)).collect::<Result<_, _>>()?)
            }
            Filter::Or(c) => {
                Filter::Or(c.iter().map(|c| c.pin_now(now)).collect::<Result<_, _>>()?)
            }
            Filter::Not(c) => Filter::Not(Box::new(c.pin_now(now)?)),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Segment { .. } => self.clone(),
        })
    }

    /// Whether the tree tests a time relative to now (`within_last_days`,
    /// `within_last_hours`, `more_than_days_ago`).
    pub fn is_relative(&self) -> bool {
        match self {
            Filter::Attribute { cmp, .. } => super::attr::is_relative(cmp),
            Filter::And(c) | Filter::Or(c) => c.iter().any(Filter::is_relative),
            Filter::Not(c) => c.is_relative(),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Segment { .. } => false,
        }
    }

    /// Calls `f` with the name of every custom attribute the tree tests.
    pub fn for_each_attribute(&self, f: &mut dyn FnMut(&str)) {
        match self {
            Filter::Attribute { attribute, .. } => f(attribute),
            Filter::And(c) | Filter::Or(c) => c.iter().for_each(|c| c.for_each_attribute(f)),
            Filter::Not(c) => c.for_each_attribute(f),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Segment { .. } => {}
        }
    }

    /// Whether the tree refers to any saved segment.
    pub fn refers_to_any(&self) -> bool {
        match self {
            Filter::Segment { .. } => true,
            Filter::And(c) | Filter::Or(c) => c.iter().any(Filter::refers_to_any),
            Filter::Not(c) => c.refers_to_any(),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Attribute { .. } => false,
        }
    }

    /// Whether the tree has an `in_segment` / `not_in_segment` leaf naming
    /// saved segment `id`.
    pub fn refers_to(&self, id: &str) -> bool {
        match self {
            Filter::Segment { id: to, .. } => to == id,
            Filter::And(c) | Filter::Or(c) => c.iter().any(|c| c.refers_to(id)),
            Filter::Not(c) => c.refers_to(id),
            Filter::Cohort { .. } | Filter::Bucket(_) | Filter::Attribute { .. } => false,
        }
    }

    /// The number of leaves (cohort, bucket, attribute and segment filters) in the tree.
    pub fn leaves(&self) -> usize {
        match self {
            Filter::Cohort { .. }
            | Filter::Bucket(_)
            | Filter::Attribute { .. }
            | Filter::Segment { .. } => 1,
            Filter::And(c) | Filter::Or(c) => c.iter().map(Filter::leaves).sum(),
            Filter::Not(c) => c.leaves(),
        }
    }

    /// The number of nodes in the tree: leaves (cohort, bucket, attribute
    /// and segment filters) and operators (`and`, `or`, `not`). What a query's work is bounded
    /// by (see [`crate::segment::check_size`]).
    pub fn nodes(&self) -> usize {
        match self {
            Filter::Cohort { .. }
            | Filter::Bucket(_)
            | Filter::Attribute { .. }
            | Filter::Segment { .. } => 1,
            Filter::And(c) | Filter::Or(c) => 1 + c.iter().map(Filter::nodes).sum::<usize>(),
            Filter::Not(c) => 1 + c.nodes(),
        }
    }

    /// Whether the tree tests the random bucket anywhere.
    pub fn tests_buckets(&self) -> bool {
        match self {
            Filter::Cohort { .. } | Filter::Attribute { .. } | Filter::Segment { .. } => false,
            Filter::Bucket(_) => true,
            Filter::And(c) | Filter::Or(c) => c.iter().any(Filter::tests_buckets),
            Filter::Not(c) => c.tests_buckets(),
        }
    }

    /// Whether a user in no cohort may satisfy the filter (its random
    /// bucket unknown): three-valued, cohorts false, buckets unknown. A
    /// segment for which this is false never gains a user by a user being
    /// created (a new user is in no cohort until a cohort change adds it).
    pub fn may_hold_cohortless(&self) -> bool {
        self.cohortless() != Some(false)
    }

    /// The filter's value for a user in no cohort: `None` when it depends
    /// on the bucket.
    fn cohortless(&self) -> Option<bool> {
        match self {
            Filter::Cohort { includes, .. } => Some(!*includes),
            // A user's attributes and a saved segment's members are not
            // known from its cohorts.
            Filter::Bucket(_) | Filter::Attribute { .. } | Filter::Segment { .. } => None,
            Filter::Not(c) => c.cohortless().map(|v| !v),
            Filter::And(c) => {
                let mut out = Some(true);
                for v in c.iter().map(Filter::cohortless) {
                    match v {
                        Some(false) => return Some(false),
                        None => out = None,
                        Some(true) => {}
                    }
                }
                out
            }
            Filter::Or(c) => {
                let mut out = Some(false);
                for v in c.iter().map(Filter::cohortless) {
                    match v {
                        Some(true) => return Some(true),
                        None => out = None,
                        Some(false) => {}
                    }
                }
                out
            }
        }
    }

    /// Visits every cohort leaf as `(partner, cohort, includes)`.
    pub fn for_each_cohort<'a>(&'a self, f: &mut impl FnMut(Partner, &'a str, bool)) {
        match self {
            Filter::Cohort {
                partner,
                cohort,
                includes,
            } => f(*partner, cohort, *includes),
            Filter::Bucket(_) | Filter::Attribute { .. } | Filter::Segment { .. } => {}
            Filter::And(c) | Filter::Or(c) => c.iter().for_each(|c| c.for_each_cohort(f)),
            Filter::Not(c) => c.for_each_cohort(f),
        }
    }
}

/// Writes a cohort value as a double-quoted string literal of the text form.
pub(crate) fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for BucketCmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketCmp::Lt(v) => write!(f, "random_bucket < {v}"),
            BucketCmp::Le(v) => write!(f, "random_bucket <= {v}"),
            BucketCmp::Gt(v) => write!(f, "random_bucket > {v}"),
            BucketCmp::Ge(v) => write!(f, "random_bucket >= {v}"),
            BucketCmp::Between(lo, hi) => write!(f, "random_bucket between {lo} and {hi}"),
        }
    }
}

/// Prints the text form, fully parenthesised where precedence needs it.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Cohort {
                partner,
                cohort,
                includes,
            } => {
                let cmp = if *includes {
                    "includes_value"
                } else {
                    "does_not_include_value"
                };
                write!(f, "{}_cohorts {cmp} ", partner.as_str())?;
                write_quoted(f, cohort)
            }
            Filter::Bucket(cmp) => write!(f, "{cmp}"),
            Filter::And(children) | Filter::Or(children) => {
                let (op, empty) = if matches!(self, Filter::And(_)) {
                    ("and", "all")
                } else {
                    ("or", "none")
                };
                if children.is_empty() {
                    return f.write_str(empty);
                }
                f.write_str("(")?;
                for (i, c) in children.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {op} ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(")")
            }
            Filter::Not(c) => write!(f, "not {c}"),
            Filter::Attribute { attribute, cmp } => {
                f.write_str("attribute ")?;
                write_word(f, attribute)?;
                write!(f, " {cmp}")
            }
            Filter::Segment { id, included } => {
                f.write_str(if *included {
                    "in_segment "
                } else {
                    "not_in_segment "
                })?;
                write_word(f, id)
            }
        }
    }
}

/// Writes an attribute name or a segment id: bare when it is a word of the
/// text form (`[A-Za-z0-9_.:@-]+`), else quoted. Both sit where the parser
/// takes any word, so a keyword prints bare too.
fn write_word(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if !s.is_empty() && s.chars().all(is_word_char) {
        f.write_str(s)
    } else {
        write_quoted(f, s)
    }
}

/// The characters of a bare word of the text form.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// The most values an `is_any_of` takes.
pub const MAX_ANY_OF: usize = 256;
/// The longest `matches_regex` pattern, in characters.
pub const MAX_REGEX_CHARS: usize = 1_024;
/// The longest attribute name or segment id, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// The most days of `within_last_days` and `more_than_days_ago` (100 years).
pub const MAX_DAYS: u32 = 36_500;
/// The most hours of `within_last_hours` (100 years).
pub const MAX_HOURS: u32 = MAX_DAYS * 24;
/// The most decimal places of a [`Number`].
pub const MAX_SCALE: u8 = 18;

/// A number of an attribute filter, held exactly as written: the decimal
/// `mantissa × 10^-scale`, with a 64-bit signed mantissa and at most
/// [`MAX_SCALE`] decimal places.
///
/// A decimal rather than an `f64` so that `120.5` or `0.1` means that
/// value exactly (integer, decimal and time attributes compare against it
/// without rounding), and so that equality and hashing are plain: the form
/// is normalized (no trailing zero after the point: `1.50` is `1.5`, `-0`
/// is `0`), so two `Number`s are equal exactly when their values are.
/// `Ord` orders by value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Number {
    mantissa: i64,
    scale: u8,
}

impl Number {
    /// `mantissa × 10^-scale`, normalized; `None` when `scale` exceeds
    /// [`MAX_SCALE`].
    pub fn new(mut mantissa: i64, mut scale: u8) -> Option<Number> {
        if scale > MAX_SCALE {
            return None;
        }
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        Some(Number { mantissa, scale })
    }

    /// The integer `n`.
    pub fn int(n: i64) -> Number {
        Number {
            mantissa: n,
            scale: 0,
        }
    }

    /// The mantissa: the value is `mantissa × 10^-scale`.
    pub fn mantissa(self) -> i64 {
        self.mantissa
    }

    /// The decimal places (0 for an integer).
    pub fn scale(self) -> u8 {
        self.scale
    }

    /// The value when it is an integer.
    pub fn as_i64(self) -> Option<i64> {
        (self.scale == 0).then_some(self.mantissa)
    }

    /// The nearest `f64`.
    pub fn to_f64(self) -> f64 {
        // Exact for the scale; the division rounds once.
        self.mantissa as f64 / 10f64.powi(i32::from(self.scale))
    }

    /// The value × 10^18, exactly (|mantissa| < 2^63, × 10^18 < 2^124).
    fn scaled(self) -> i128 {
        i128::from(self.mantissa) * 10i128.pow(u32::from(MAX_SCALE - self.scale))
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.scaled().cmp(&other.scaled())
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a text is not a [`Number`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// Not `-?digits(.digits)?`.
    Syntax,
    /// More than [`MAX_SCALE`] decimal places, or a mantissa beyond 64 bits.
    Range,
}

impl NumberError {
    /// What was expected, for a parse error.
    pub fn expected(self) -> String {
        match self {
            NumberError::Syntax => "a number such as 42, -7 or 120.5".to_string(),
            NumberError::Range => {
                format!("a number of at most 18 significant digits and {MAX_SCALE} decimal places")
            }
        }
    }
}

impl std::str::FromStr for Number {
    type Err = NumberError;

    /// `-?[0-9]+(\.[0-9]+)?`: no exponent, no `+`, no lone point.
    fn from_str(s: &str) -> Result<Number, NumberError> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let well_formed = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
            && (frac.is_empty() != digits.contains('.'));
        if !well_formed {
            return Err(NumberError::Syntax);
        }
        let frac = frac.trim_end_matches('0');
        let scale = u8::try_from(frac.len())
            .ok()
            .filter(|&s| s <= MAX_SCALE)
            .ok_or(NumberError::Range)?;
        let mut mantissa: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            let d = i64::from(b - b'0');
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| {
                    if negative {
                        m.checked_sub(d)
                    } else {
                        m.checked_add(d)
                    }
                })
                .ok_or(NumberError::Range)?;
        }
        Number::new(mantissa, scale).ok_or(NumberError::Range)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = usize::from(self.scale);
        let digits = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        let sign = if self.mantissa < 0 { "-" } else { "" };
        write!(f, "{sign}{int}.{frac}")
    }
}

impl From<Number> for String {
    fn from(n: Number) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for Number {
    type Error = String;

    fn try_from(s: String) -> Result<Number, String> {
        s.parse().map_err(|e: NumberError| e.expected())
    }
}

/// A point in time of an attribute filter: whole seconds since
/// 1970-01-01T00:00:00Z, from an RFC 3339 time (`2026-11-01T10:00:00Z`,
/// `2026-11-01T12:00:00+02:00`) of year 0000 to 9999. A fraction of a
/// second must be zero (`.000`): attribute times are kept to the second.
/// Printed in UTC, `Z`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Time(i64);

impl Time {
    /// The earliest time: 0000-01-01T00:00:00Z.
    pub const MIN: i64 = -62_167_219_200;
    /// The latest time: 9999-12-31T23:59:59Z.
    pub const MAX: i64 = 253_402_300_799;
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Time = Time(0);

    /// The time `secs` seconds after the epoch, when it is of year 0000 to 9999.
    pub fn from_unix(secs: i64) -> Option<Time> {
        (Time::MIN..=Time::MAX)
            .contains(&secs)
            .then_some(Time(secs))
    }

    /// Seconds since the epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// What a time is written as, for a parse error.
    pub const EXPECTED: &'static str =
        "an RFC 3339 time to the second, such as 2026-11-01T10:00:00Z";
}

impl std::str::FromStr for Time {
    type Err = ();

    fn from_str(s: &str) -> Result<Time, ()> {
        let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| ())?;
        if t.timestamp_subsec_nanos() != 0 {
            return Err(());
        }
        Time::from_unix(t.timestamp()).ok_or(())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp(self.0, 0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<Time> for String {
    fn from(t: Time) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Time {
    type Error = String;

    fn try_from(s: String) -> Result<Time, String> {
        s.parse().map_err(|()| Time::EXPECTED.to_string())
    }
}

/// A comparison on a user's custom attribute.
///
/// What the parsers refuse, neither form builds: an empty `is_any_of` or
/// one of more than [`MAX_ANY_OF`] values, a pattern the `regex` crate
/// does not compile or longer than [`MAX_REGEX_CHARS`], an empty
/// `starts_with`, `between lo and hi` with lo > hi, and day or hour counts
/// outside 1..=[`MAX_DAYS`] / 1..=[`MAX_HOURS`].
///
/// A negative comparison (`DoesNotEqual`, `Ne`) holds for the users
/// without the attribute too, as `Not` of its positive form would.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrCmp {
    /// A string attribute equals the value.
    Equals(String),
    /// The attribute is absent, or a string other than the value.
    DoesNotEqual(String),
    /// A string attribute equals one of the values (1..=256 of them).
    IsAnyOf(Vec<String>),
    /// A string attribute matches the pattern (`regex` crate syntax,
    /// unanchored: `^`/`$` anchor).
    MatchesRegex(String),
    /// A string attribute starts with the (non-empty) prefix.
    StartsWith(String),
    /// The user has a value for the attribute, of any type.
    Exists,
    /// The user has no value for the attribute.
    DoesNotExist,
    /// A number attribute `= n`.
    Eq(Number),
    /// The attribute is absent, or a number `!= n`.
    Ne(Number),
    /// A number attribute `< n`.
    Lt(Number),
    /// A number attribute `<= n`.
    Le(Number),
    /// A number attribute `> n`.
    Gt(Number),
    /// A number attribute `>= n`.
    Ge(Number),
    /// A number attribute between `lo` and `hi`, both included (lo <= hi).
    Between(Number, Number),
    /// A boolean attribute is true.
    IsTrue,
    /// A boolean attribute is false (absent is neither).
    IsFalse,
    /// A time attribute strictly before the time.
    Before(Time),
    /// A time attribute strictly after the time.
    After(Time),
    /// A time attribute within the last N days: in `[now - N days, now]`.
    WithinLastDays(u32),
    /// A time attribute within the last N hours: in `[now - N hours, now]`.
    WithinLastHours(u32),
    /// A time attribute more than N days ago: before `now - N days`.
    MoreThanDaysAgo(u32),
}

impl AttrCmp {
    /// The comparison's name in the JSON form.
    pub fn json_name(&self) -> &'static str {
        match self {
            AttrCmp::Equals(_) | AttrCmp::Eq(_) => "equals",
            AttrCmp::DoesNotEqual(_) | AttrCmp::Ne(_) => "does_not_equal",
            AttrCmp::IsAnyOf(_) => "is_any_of",
            AttrCmp::MatchesRegex(_) => "matches_regex",
            AttrCmp::StartsWith(_) => "starts_with",
            AttrCmp::Exists => "exists",
            AttrCmp::DoesNotExist => "does_not_exist",
            AttrCmp::Lt(_) => "less_than",
            AttrCmp::Le(_) => "less_than_or_equal_to",
            AttrCmp::Gt(_) => "greater_than",
            AttrCmp::Ge(_) => "greater_than_or_equal_to",
            AttrCmp::Between(..) => "between",
            AttrCmp::IsTrue => "is_true",
            AttrCmp::IsFalse => "is_false",
            AttrCmp::Before(_) => "before",
            AttrCmp::After(_) => "after",
            AttrCmp::WithinLastDays(_) => "within_last_days",
            AttrCmp::WithinLastHours(_) => "within_last_hours",
            AttrCmp::MoreThanDaysAgo(_) => "more_than_days_ago",
        }
    }
}

/// Checks a `matches_regex` pattern: at most [`MAX_REGEX_CHARS`]
/// characters, and one the `regex` crate compiles. The error is `found`
/// for a parse error.
pub fn check_regex(pattern: &str) -> Result<(), String> {
    let chars = pattern.chars().count();
    if chars > MAX_REGEX_CHARS {
        return Err(format!("a pattern of {chars} characters"));
    }
    match regex::Regex::new(pattern) {
        Ok(_) => Ok(()),
        Err(regex::Error::Syntax(msg)) => {
            // The message shows the pattern with a caret, then `error: …`.
            let why = msg
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or("not a valid pattern");
            Err(format!("the pattern {pattern:?}: {why}"))
        }
        Err(regex::Error::CompiledTooBig(_)) => Err(format!(
            "the pattern {pattern:?}: it compiles to more than the regex size limit"
        )),
        Err(e) => Err(format!("the pattern {pattern:?}: {e}")),
    }
}

/// Whether an attribute name or a segment id is 1 to [`MAX_NAME_CHARS`] characters.
pub fn check_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS
}

impl fmt::Display for AttrCmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrCmp::Equals(s) => {
                f.write_str("equals ")?;
                write_quoted(f, s)
            }
            AttrCmp::DoesNotEqual(s) => {
                f.write_str("does_not_equal ")?;
                write_quoted(f, s)
            }
            AttrCmp::IsAnyOf(values) => {
                f.write_str("is_any_of (")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_quoted(f, v)?;
                }
                f.write_str(")")
            }
            AttrCmp::MatchesRegex(s) => {
                f.write_str("matches_regex ")?;
                write_quoted(f, s)
            }
            AttrCmp::StartsWith(s) => {
                f.write_str("starts_with ")?;
                write_quoted(f, s)
            }
            AttrCmp::Exists => f.write_str("exists"),
            AttrCmp::DoesNotExist => f.write_str("does_not_exist"),
            AttrCmp::Eq(n) => write!(f, "= {n}"),
            AttrCmp::Ne(n) => write!(f, "!= {n}"),
            AttrCmp::Lt(n) => write!(f, "< {n}"),
            AttrCmp::Le(n) => write!(f, "<= {n}"),
            AttrCmp::Gt(n) => write!(f, "> {n}"),
            AttrCmp::Ge(n) => write!(f, ">= {n}"),
            AttrCmp::Between(lo, hi) => write!(f, "between {lo} and {hi}"),
            AttrCmp::IsTrue => f.write_str("is true"),
            AttrCmp::IsFalse => f.write_str("is false"),
            AttrCmp::Before(t) => write!(f, "before {t}"),
            AttrCmp::After(t) => write!(f, "after {t}"),
            AttrCmp::WithinLastDays(n) => write!(f, "within last {n} days"),
            AttrCmp::WithinLastHours(n) => write!(f, "within last {n} hours"),
            AttrCmp::MoreThanDaysAgo(n) => write!(f, "more than {n} days ago"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Number {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_are_normalized_and_print_back() {
        assert_eq!(num("1.50"), num("1.5"));
        assert_eq!(num("-0"), num("0"));
        assert_eq!(num("-0.0"), Number::int(0));
        assert_eq!(num("007"), Number::int(7));
        for s in [
            "0",
            "42",
            "-7",
            "120.5",
            "0.05",
            "-0.05",
            "9223372036854775807",
        ] {
            assert_eq!(num(s).to_string(), s);
        }
        assert_eq!(
            num("-9223372036854775808").as_i64(),
            Some(i64::MIN),
            "the smallest mantissa is read without overflow"
        );
        assert_eq!(num("0.000000000000000001").scale(), 18);
    }

    #[test]
    fn numbers_refuse_other_shapes() {
        for s in [
            "", "-", "1.", ".5", "+1", "1e5", "1.2.3", "0x10", " 1", "1_000",
        ] {
            assert_eq!(s.parse::<Number>(), Err(NumberError::Syntax), "{s:?}");
        }
        for s in ["9223372036854775808", "0.0000000000000000001"] {
            assert_eq!(s.parse::<Number>(), Err(NumberError::Range), "{s:?}");
        }
        // Trailing zeros past the 18th place do not count.
        assert_eq!(num("1.0000000000000000000000"), Number::int(1));
    }

    #[test]
    fn numbers_order_by_value() {
        assert!(num("0.5") < num("1"));
        assert!(num("-1.5") < num("-1"));
        assert!(num("100") > num("99.9999999999999999"));
        assert!(num("9223372036854775807") > num("922337203685477580.7"));
        assert_eq!(num("2.0").cmp(&Number::int(2)), std::cmp::Ordering::Equal);
    }

    #[test]
    fn times_are_rfc3339_to_the_second() {
        let t: Time = "2026-11-01T12:00:00+02:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-01T10:00:00Z");
        assert_eq!(t.unix(), 1_793_527_200);
        assert_eq!("2026-11-01T10:00:00.000Z".parse::<Time>(), Ok(t));
        assert!("2026-11-01T10:00:00.5Z".parse::<Time>().is_err());
        assert!("2026-11-01".parse::<Time>().is_err());
        assert!("yesterday".parse::<Time>().is_err());
        for secs in [Time::MIN, Time::MAX, 0] {
            let t = Time::from_unix(secs).unwrap();
            assert_eq!(t.to_string().parse::<Time>(), Ok(t));
        }
        assert_eq!(Time::from_unix(Time::MAX + 1), None);
    }

    #[test]
    fn regexes_are_checked() {
        assert_eq!(check_regex("^ab+c$"), Ok(()));
        let e = check_regex("(ab").unwrap_err();
        assert!(e.contains("unclosed group"), "{e}");
        let long = "a".repeat(MAX_REGEX_CHARS + 1);
        assert!(check_regex(&long).unwrap_err().contains("1025 characters"));
        assert!(check_regex("\\w{1000}{1000}").is_err());
    }
}
