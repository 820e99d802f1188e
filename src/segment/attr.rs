//! Custom attribute tests: what a filter's comparison asks of an
//! attribute's index, in the index's own units.

use std::sync::Arc;

use super::ast::{AttrCmp, Filter, Number, Time};
use crate::attributes::{AttrQuery, AttrType, AttrValue, Attribute};
use crate::bitmap_view::SharedBitmap;
use crate::error::{Error, Result};

/// A positive test on one attribute (negative comparisons are NOT of one),
/// its numbers in the attribute's units (decimal units, seconds).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Test {
    /// Has a value.
    Exists,
    /// A string among these.
    AnyOf(Vec<String>),
    /// A string the regular expression matches (anywhere, as `regex` does).
    Regex(String),
    /// A string starting with this.
    Prefix(String),
    /// A boolean of this value.
    Is(bool),
    /// A number or time in `lo..=hi` (an end `None`: unbounded).
    Range(Option<i64>, Option<i64>),
}

impl Test {
    /// The test in the text form's words, as explain and plan keys show
    /// it.
    pub fn describe(&self, ty: AttrType) -> String {
        let num = |v: i64| match AttrValue::from_number(ty, v) {
            Some(v) => v.to_string(),
            None => v.to_string(),
        };
        match self {
            Test::Exists => "exists".into(),
            Test::AnyOf(v) if v.len() == 1 => format!("equals {:?}", v[0]),
            Test::AnyOf(v) => format!("is_any_of {v:?}"),
            Test::Regex(r) => format!("matches_regex {r:?}"),
            Test::Prefix(p) => format!("starts_with {p:?}"),
            Test::Is(b) => format!("is {b}"),
            Test::Range(Some(lo), Some(hi)) if lo == hi => format!("= {}", num(*lo)),
            Test::Range(Some(lo), Some(hi)) => format!("between {} and {}", num(*lo), num(*hi)),
            Test::Range(Some(lo), None) => format!(">= {}", num(*lo)),
            Test::Range(None, Some(hi)) => format!("<= {}", num(*hi)),
            Test::Range(None, None) => "exists".into(),
        }
    }

    /// The users of `a` the test selects (shared with the index when they
    /// are one value's). A regex is compiled here and run over the
    /// attribute's distinct values, never over users.
    pub fn select(&self, a: &Attribute) -> Result<Arc<SharedBitmap>> {
        match self {
            Test::Exists => a.select(&AttrQuery::Exists),
            Test::AnyOf(v) => a.select(&AttrQuery::AnyOf(v)),
            Test::Regex(r) => {
                let re = regex::Regex::new(r).map_err(|e| Error::AttributeType {
                    attribute: a.name().to_string(),
                    reason: format!("not a valid regular expression: {e}"),
                })?;
                a.select(&AttrQuery::Matching(&|s: &str| re.is_match(s)))
            }
            Test::Prefix(p) => a.select(&AttrQuery::Matching(&|s: &str| s.starts_with(p.as_str()))),
            Test::Is(b) => a.select(&AttrQuery::Is(*b)),
            Test::Range(lo, hi) => a.select(&AttrQuery::Range(*lo, *hi)),
        }
    }

    /// A range test kept for evaluation where the plan reads it (see
    /// [`crate::attributes::bsi::RangeScan`]); `None` for other tests and
    /// for ranges [`Self::select`] answers at once.
    pub fn scan(&self, a: &Attribute) -> Result<Option<crate::attributes::bsi::RangeScan>> {
        match self {
            Test::Range(lo, hi) => a.scan(*lo, *hi),
            _ => Ok(None),
        }
    }
}

/// `n` in units of `10^-units` (0: integers, 4: decimal units): its floor,
/// and whether it is exact there.
fn in_units(n: Number, units: u8) -> (i128, bool) {
    let m = i128::from(n.mantissa());
    let s = n.scale();
    if units >= s {
        (m * 10i128.pow(u32::from(units - s)), true)
    } else {
        let d = 10i128.pow(u32::from(s - units));
        (m.div_euclid(d), m.rem_euclid(d) == 0)
    }
}

/// A range with ends in `i128`, clamped to the values an index can hold
/// (an end past them selects all or nobody, as it should).
fn range(lo: Option<i128>, hi: Option<i128>) -> Test {
    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
    match (lo, hi) {
        (Some(lo), _) if lo > max => Test::Range(Some(1), Some(0)),
        (_, Some(hi)) if hi < min => Test::Range(Some(1), Some(0)),
        _ => Test::Range(
            lo.filter(|&l| l > min).map(|l| l as i64),
            hi.filter(|&h| h < max).map(|h| h as i64),
        ),
    }
}

/// What a comparison on an attribute of type `ty` asks of its index: a
/// positive test, and whether the comparison is its negation (`true` for
/// `does_not_equal`, `!=` and `does_not_exist`: they hold for users
/// without the attribute too). Relative times count back from `now`
/// (seconds since the epoch). A comparison that does not fit the type is
/// [`Error::AttributeType`].
pub fn lower(attribute: &str, cmp: &AttrCmp, ty: AttrType, now: i64) -> Result<(Test, bool)> {
    use AttrCmp as C;
    let wrong = || Error::AttributeType {
        attribute: attribute.to_string(),
        reason: format!(
            "a {ty} attribute cannot be compared with {}",
            cmp.json_name()
        ),
    };
    let units = match ty {
        AttrType::Integer => Some(0),
        AttrType::Decimal => Some(4),
        _ => None,
    };
    let num = |n: Number| units.map(|u| in_units(n, u)).ok_or_else(wrong);
    let day = 86_400i128;
    let now = i128::from(now);
    Ok(match (cmp, ty) {
        (C::Exists, _) => (Test::Exists, false),
        (C::DoesNotExist, _) => (Test::Exists, true),
        (C::Equals(v), AttrType::String) => (Test::AnyOf(vec![v.clone()]), false),
        (C::DoesNotEqual(v), AttrType::String) => (Test::AnyOf(vec![v.clone()]), true),
        (C::IsAnyOf(v), AttrType::String) => (Test::AnyOf(v.clone()), false),
        (C::MatchesRegex(r), AttrType::String) => (Test::Regex(r.clone()), false),
        (C::StartsWith(p), AttrType::String) => (Test::Prefix(p.clone()), false),
        (C::IsTrue, AttrType::Boolean) => (Test::Is(true), false),
        (C::IsFalse, AttrType::Boolean) => (Test::Is(false), false),
        (C::Eq(n) | C::Ne(n), _) => {
            let (f, exact) = num(*n)?;
            let t = if exact {
                range(Some(f), Some(f))
            } else {
                range(Some(1), Some(0))
            };
            (t, matches!(cmp, C::Ne(_)))
        }
        (C::Lt(n), _) => {
            let (f, exact) = num(*n)?;
            (range(None, Some(if exact { f - 1 } else { f })), false)
        }
        (C::Le(n), _) => (range(None, Some(num(*n)?.0)), false),
        (C::Gt(n), _) => (range(Some(num(*n)?.0 + 1), None), false),
        (C::Ge(n), _) => {
            let (f, exact) = num(*n)?;
            (range(Some(if exact { f } else { f + 1 }), None), false)
        }
        (C::Between(lo, hi), _) => {
            let (l, exact) = num(*lo)?;
            let (h, _) = num(*hi)?;
            (range(Some(if exact { l } else { l + 1 }), Some(h)), false)
        }
        (C::Before(t), AttrType::Time) => (range(None, Some(i128::from(t.unix()) - 1)), false),
        (C::After(t), AttrType::Time) => (range(Some(i128::from(t.unix()) + 1), None), false),
        (C::WithinLastDays(n), AttrType::Time) => {
            (range(Some(now - i128::from(*n) * day), Some(now)), false)
        }
        (C::WithinLastHours(n), AttrType::Time) => {
            (range(Some(now - i128::from(*n) * 3_600), Some(now)), false)
        }
        (C::MoreThanDaysAgo(n), AttrType::Time) => {
            (range(None, Some(now - i128::from(*n) * day - 1)), false)
        }
        _ => return Err(wrong()),
    })
}

/// Whether a comparison depends on when it is asked.
pub fn is_relative(cmp: &AttrCmp) -> bool {
    matches!(
        cmp,
        AttrCmp::WithinLastDays(_) | AttrCmp::WithinLastHours(_) | AttrCmp::MoreThanDaysAgo(_)
    )
}

/// A filter meaning what `test` on `attribute` (of type `ty`) selects: the
/// plan read back as a filter.
pub fn to_filter(attribute: &str, ty: AttrType, test: &Test) -> Filter {
    let leaf = |cmp: AttrCmp| Filter::Attribute {
        attribute: attribute.to_string(),
        cmp,
    };
    let number = |v: i64| match ty {
        AttrType::Decimal => Number::new(v, 4).unwrap_or(Number::int(v)),
        _ => Number::int(v),
    };
    let time = |v: i64| Time::from_unix(v);
    match test {
        Test::Exists => leaf(AttrCmp::Exists),
        Test::AnyOf(v) if v.len() == 1 => leaf(AttrCmp::Equals(v[0].clone())),
        Test::AnyOf(v) => leaf(AttrCmp::IsAnyOf(v.clone())),
        Test::Regex(r) => leaf(AttrCmp::MatchesRegex(r.clone())),
        Test::Prefix(p) => leaf(AttrCmp::StartsWith(p.clone())),
        Test::Is(true) => leaf(AttrCmp::IsTrue),
        Test::Is(false) => leaf(AttrCmp::IsFalse),
        Test::Range(lo, hi) if ty == AttrType::Time => {
            let mut parts = vec![leaf(AttrCmp::Exists)];
            if let Some(t) = lo.and_then(|l| time(l.saturating_sub(1))) {
                parts.push(leaf(AttrCmp::After(t)));
            }
            if let Some(t) = hi.and_then(|h| time(h.saturating_add(1))) {
                parts.push(leaf(AttrCmp::Before(t)));
            }
            Filter::And(parts)
        }
        Test::Range(Some(lo), Some(hi)) if lo == hi => leaf(AttrCmp::Eq(number(*lo))),
        Test::Range(Some(lo), Some(hi)) => leaf(AttrCmp::Between(number(*lo), number(*hi))),
        Test::Range(Some(lo), None) => leaf(AttrCmp::Ge(number(*lo))),
        Test::Range(None, Some(hi)) => leaf(AttrCmp::Le(number(*hi))),
        Test::Range(None, None) => leaf(AttrCmp::Exists),
    }
}
