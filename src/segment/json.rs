//! The JSON form of a segment filter.
//!
//! A filter node is an object with exactly one of these shapes:
//!
//! ```text
//! {"filter": "amplitude_cohorts", "comparison": "includes_value" | "does_not_include_value", "value": "c-9f1e"}
//! {"filter": "random_bucket", "comparison": "less_than" | "less_than_or_equal_to"
//!      | "greater_than" | "greater_than_or_equal_to", "value": 500}
//! {"filter": "random_bucket", "comparison": "between", "value": [lo, hi]}
//! {"filter": "custom_attribute", "attribute": "country", "comparison": C, "value": V}
//! {"filter": "segment", "comparison": "in" | "not_in", "value": "seg_…"}
//! {"and": [node, ...]}      {"or": [node, ...]}      {"not": node}
//! {"groups": [G, ...], "groups_combinator": "and" | "or", "exclusions": [G, ...]}
//!     where G = {"combinator": "and" | "or", "filters": [node, ...]}
//! ```
//!
//! The last is the segment builder's shape: each group is the `And`/`Or` of
//! its filters (a one-filter group is just that filter), the groups are
//! combined by `groups_combinator` (default `and`; one group is just that
//! group), and each exclusion group is subtracted:
//! `And([base, Not(exclusion_1), ...])`. Combinators default to `and`.
//!
//! A `custom_attribute` comparison `C` takes a value `V` by kind:
//! `equals`/`does_not_equal` a string, number or boolean (the value's type
//! picks [`AttrCmp::Equals`], [`AttrCmp::Eq`] or [`AttrCmp::IsTrue`]/
//! [`AttrCmp::IsFalse`]; `does_not_equal` a boolean is `not` of it);
//! `is_any_of` an array of 1..=256 strings; `matches_regex` and
//! `starts_with` a string; `exists`, `does_not_exist`, `is_true`,
//! `is_false` none (absent or `null`); `less_than`,
//! `less_than_or_equal_to`, `greater_than`, `greater_than_or_equal_to` a
//! number; `between` an array `[lo, hi]` as for `random_bucket`; `before`
//! and `after` an RFC 3339 string; `within_last_days`,
//! `within_last_hours`, `more_than_days_ago` a whole number.
//!
//! Syntax errors carry serde_json's line and column (in characters);
//! structural errors carry a JSON path such as `$.and[1].comparison`.

use serde_json::{Map, Value};

use super::ast::{
    check_name, check_regex, AttrCmp, BucketCmp, Filter, Number, Time, MAX_ANY_OF, MAX_DAYS,
    MAX_HOURS, MAX_NAME_CHARS, MAX_REGEX_CHARS,
};
use super::text::partner_filter_names;
use crate::error::FilterParseError;
use crate::ids::{Partner, BUCKETS};

/// How deeply filter nodes (and the builder's groups) may nest. The root is
/// level 1.
pub const MAX_DEPTH: usize = 64;

const EXPECTED_NODE: &str =
    "a filter object: {\"filter\": ...}, {\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}} or {\"groups\": [...]}";
const EXPECTED_NODE_KEY: &str =
    "one of the keys \"filter\", \"and\", \"or\", \"not\" or \"groups\"";
const EXPECTED_COHORT_CMP: &str = "includes_value or does_not_include_value";
const EXPECTED_BUCKET_CMP: &str =
    "less_than, less_than_or_equal_to, greater_than, greater_than_or_equal_to or between";
const EXPECTED_COHORT_VALUE: &str = "a non-empty string: the cohort id or name";
const EXPECTED_ATTR_CMP: &str = "equals, does_not_equal, is_any_of, matches_regex, starts_with, exists, does_not_exist, less_than, less_than_or_equal_to, greater_than, greater_than_or_equal_to, between, is_true, is_false, before, after, within_last_days, within_last_hours or more_than_days_ago";
const EXPECTED_SEGMENT_CMP: &str = "in or not_in";
const EXPECTED_COMBINATOR: &str = "\"and\" or \"or\"";
const EXPECTED_GROUP: &str = "a group: {\"combinator\": \"and\" | \"or\", \"filters\": [...]}";

/// Parses the JSON form of a segment filter.
pub fn parse(input: &str) -> Result<Filter, FilterParseError> {
    let value: Value = serde_json::from_str(input).map_err(|e| syntax_error(input, &e))?;
    node(&value, "$", 1)
}

/// A serde_json syntax error, at its line and column (in characters).
fn syntax_error(input: &str, e: &serde_json::Error) -> FilterParseError {
    let line = e.line().max(1);
    let (column, at) = char_column(input, line, e.column());
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    let at = || match at {
        Some(c) => format!("{:?}", c.to_string()),
        None => "end of input".to_string(),
    };
    let (expected, found) = if let Some(rest) = message.strip_prefix("expected ") {
        let expected = if rest == "value" {
            "a JSON value"
        } else {
            rest
        };
        (expected.to_string(), at())
    } else if let Some(rest) = message.strip_prefix("EOF") {
        ("valid JSON".to_string(), format!("end of input{rest}"))
    } else {
        ("valid JSON".to_string(), message.to_string())
    };
    FilterParseError {
        location: format!("line {line}, column {column}"),
        line: Some(line),
        column: Some(column),
        expected,
        found,
    }
}

/// Converts serde_json's 1-based byte column on `line` to a 1-based
/// character column, and returns the character there, if any.
fn char_column(input: &str, line: usize, byte_column: usize) -> (usize, Option<char>) {
    let text = input.split('\n').nth(line - 1).unwrap_or("");
    let offset = byte_column.saturating_sub(1);
    if offset >= text.len() {
        return (text.chars().count() + 1 + (offset - text.len()), None);
    }
    let mut column = 0;
    let mut at = None;
    for (i, c) in text.char_indices() {
        if i > offset {
            break;
        }
        column += 1;
        at = Some(c);
    }
    (column.max(1), at)
}

fn error(
    location: &str,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> FilterParseError {
    FilterParseError {
        location: location.to_string(),
        line: None,
        column: None,
        expected: expected.into(),
        found: found.into(),
    }
}

/// A short description of a JSON value, for `found`.
fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) if a.is_empty() => "an empty array".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(o) if o.is_empty() => "an empty object".to_string(),
        Value::Object(_) => "an object".to_string(),
        scalar => scalar.to_string(),
    }
}

/// The path of `key` inside the object at `path`.
fn child(path: &str, key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::from(key))
    }
}

/// `"a"`, `"a" and "b"`, `"a", "b" and "c"`.
fn key_list(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Fails on the first key of `obj` that is not in `allowed`.
fn check_keys(
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
) -> Result<(), FilterParseError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => {
            let expected = if allowed.len() == 1 {
                format!("only the key {}", key_list(allowed))
            } else {
                format!("only the keys {}", key_list(allowed))
            };
            Err(error(
                &child(path, key),
                expected,
                format!("the key {}", Value::from(key.as_str())),
            ))
        }
    }
}

/// The value under `key`, which must be there.
fn required<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    key: &str,
    expected: &str,
) -> Result<&'a Value, FilterParseError> {
    obj.get(key)
        .ok_or_else(|| error(&child(path, key), expected, format!("no {key:?} key")))
}

fn check_depth(path: &str, depth: usize) -> Result<(), FilterParseError> {
    if depth > MAX_DEPTH {
        return Err(error(
            path,
            format!("at most {MAX_DEPTH} levels of nested filters"),
            format!("a filter nested {depth} levels deep"),
        ));
    }
    Ok(())
}

/// A filter node at `depth` (the root is 1).
fn node(v: &Value, path: &str, depth: usize) -> Result<Filter, FilterParseError> {
    check_depth(path, depth)?;
    let Value::Object(obj) = v else {
        return Err(error(path, EXPECTED_NODE, describe(v)));
    };
    if obj.contains_key("filter") {
        return leaf(obj, path);
    }
    if obj.contains_key("groups") {
        return builder(obj, path, depth);
    }
    for op in ["and", "or"] {
        if let Some(children) = obj.get(op) {
            check_keys(obj, path, &[op])?;
            let children = filter_list(children, &child(path, op), depth + 1)?;
            return Ok(if op == "and" {
                Filter::And(children)
            } else {
                Filter::Or(children)
            });
        }
    }
    if let Some(inner) = obj.get("not") {
        check_keys(obj, path, &["not"])?;
        return Ok(node(inner, &child(path, "not"), depth + 1)?.not());
    }
    if obj.len() == 1 && STORED_LEAVES.iter().any(|k| obj.contains_key(*k)) {
        return stored_leaf(v, path);
    }
    match obj.keys().next() {
        Some(key) => Err(error(
            &child(path, key),
            EXPECTED_NODE_KEY,
            format!("the key {}", Value::from(key.as_str())),
        )),
        None => Err(error(path, EXPECTED_NODE, "an empty object")),
    }
}

/// The leaves of the stored form (a saved segment's `"filter"`).
const STORED_LEAVES: [&str; 4] = ["cohort", "bucket", "attribute", "segment"];

/// A leaf in the stored form (`{"cohort": {...}}`, `{"bucket": {...}}`,
/// `{"attribute": {...}}`, `{"segment": {...}}`), as a saved segment shows
/// its filter: accepted wherever a node is, so that a saved filter's parts
/// go back into a builder's groups. Checked as the text form checks it.
fn stored_leaf(v: &Value, path: &str) -> Result<Filter, FilterParseError> {
    const EXPECTED: &str = "a leaf of the stored form (cohort, bucket, attribute or segment)";
    let f: Filter =
        serde_json::from_value(v.clone()).map_err(|e| error(path, EXPECTED, e.to_string()))?;
    let checked =
        super::text::parse(&f.to_string()).map_err(|e| error(path, EXPECTED, e.to_string()))?;
    let mut empty = false;
    checked.for_each_cohort(&mut |_, c, _| empty |= c.is_empty());
    if empty {
        return Err(error(path, "a cohort id", "an empty one"));
    }
    Ok(checked)
}

/// A non-empty array of filter nodes at `path`, each at `depth`.
fn filter_list(v: &Value, path: &str, depth: usize) -> Result<Vec<Filter>, FilterParseError> {
    match v {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| node(item, &format!("{path}[{i}]"), depth))
            .collect(),
        _ => Err(error(path, "a non-empty array of filters", describe(v))),
    }
}

/// `{"filter": ..., "comparison": ..., "value": ...}`.
fn leaf(obj: &Map<String, Value>, path: &str) -> Result<Filter, FilterParseError> {
    match obj.get("filter").and_then(Value::as_str) {
        Some("custom_attribute") => return attribute(obj, path),
        Some("segment") => return segment_ref(obj, path),
        _ => {}
    }
    check_keys(obj, path, &["filter", "comparison", "value"])?;
    let expected_name = format!(
        "random_bucket, custom_attribute, segment or a partner's cohorts filter: {}",
        partner_filter_names()
    );
    let name = required(obj, path, "filter", &expected_name)?;
    let partner = match name.as_str() {
        Some("random_bucket") => None,
        Some(n) => match Partner::from_filter_name(n) {
            Some(p) => Some(p),
            None => return Err(error(&child(path, "filter"), expected_name, describe(name))),
        },
        None => return Err(error(&child(path, "filter"), expected_name, describe(name))),
    };
    match partner {
        Some(partner) => cohort(obj, path, partner),
        None => bucket(obj, path).map(Filter::Bucket),
    }
}

/// `found` for a bad comparison.
fn describe_comparison(v: &Value) -> String {
    match v {
        Value::String(_) => format!("unknown comparison {v}"),
        _ => describe(v),
    }
}

fn cohort(
    obj: &Map<String, Value>,
    path: &str,
    partner: Partner,
) -> Result<Filter, FilterParseError> {
    let cmp = required(obj, path, "comparison", EXPECTED_COHORT_CMP)?;
    let includes = match cmp.as_str() {
        Some("includes_value") => true,
        Some("does_not_include_value") => false,
        _ => {
            return Err(error(
                &child(path, "comparison"),
                EXPECTED_COHORT_CMP,
                describe_comparison(cmp),
            ))
        }
    };
    let value = required(obj, path, "value", EXPECTED_COHORT_VALUE)?;
    match value.as_str() {
        Some(cohort) if !cohort.is_empty() => Ok(Filter::Cohort {
            partner,
            cohort: cohort.to_string(),
            includes,
        }),
        _ => Err(error(
            &child(path, "value"),
            EXPECTED_COHORT_VALUE,
            describe(value),
        )),
    }
}

fn bucket(obj: &Map<String, Value>, path: &str) -> Result<BucketCmp, FilterParseError> {
    let cmp = required(obj, path, "comparison", EXPECTED_BUCKET_CMP)?;
    let make: fn(u16) -> BucketCmp = match cmp.as_str() {
        Some("less_than") => BucketCmp::Lt,
        Some("less_than_or_equal_to") => BucketCmp::Le,
        Some("greater_than") => BucketCmp::Gt,
        Some("greater_than_or_equal_to") => BucketCmp::Ge,
        Some("between") => {
            let expected = format!(
                "an array [lo, hi] of two integers from 0 to {}",
                BUCKETS - 1
            );
            let value = required(obj, path, "value", &expected)?;
            let vpath = child(path, "value");
            return match value.as_array().map(Vec::as_slice) {
                Some([lo, hi]) => {
                    let lo = int(lo, &format!("{vpath}[0]"), 0)?;
                    let hi = int(hi, &format!("{vpath}[1]"), lo)?;
                    Ok(BucketCmp::Between(lo, hi))
                }
                _ => Err(error(&vpath, expected, describe(value))),
            };
        }
        _ => {
            return Err(error(
                &child(path, "comparison"),
                EXPECTED_BUCKET_CMP,
                describe_comparison(cmp),
            ))
        }
    };
    let expected = format!("an integer from 0 to {}", BUCKETS - 1);
    let value = required(obj, path, "value", &expected)?;
    Ok(make(int(value, &child(path, "value"), 0)?))
}

/// An integer bucket in `min..BUCKETS`.
fn int(v: &Value, path: &str, min: u16) -> Result<u16, FilterParseError> {
    match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(n) if (min..BUCKETS).contains(&n) => Ok(n),
        _ => Err(error(
            path,
            format!("an integer from {min} to {}", BUCKETS - 1),
            describe(v),
        )),
    }
}

/// `{"filter": "segment", "comparison": "in" | "not_in", "value": "seg_…"}`.
fn segment_ref(obj: &Map<String, Value>, path: &str) -> Result<Filter, FilterParseError> {
    check_keys(obj, path, &["filter", "comparison", "value"])?;
    let cmp = required(obj, path, "comparison", EXPECTED_SEGMENT_CMP)?;
    let included = match cmp.as_str() {
        Some("in") => true,
        Some("not_in") => false,
        _ => {
            return Err(error(
                &child(path, "comparison"),
                EXPECTED_SEGMENT_CMP,
                describe_comparison(cmp),
            ))
        }
    };
    let expected = format!("a saved segment id: a string of 1 to {MAX_NAME_CHARS} characters");
    let value = required(obj, path, "value", &expected)?;
    match value.as_str() {
        Some(id) if check_name(id) => Ok(Filter::Segment {
            id: id.to_string(),
            included,
        }),
        _ => Err(error(&child(path, "value"), expected, describe(value))),
    }
}

/// `{"filter": "custom_attribute", "attribute": ..., "comparison": ..., "value": ...}`.
fn attribute(obj: &Map<String, Value>, path: &str) -> Result<Filter, FilterParseError> {
    check_keys(obj, path, &["filter", "attribute", "comparison", "value"])?;
    let expected = format!("an attribute name: a string of 1 to {MAX_NAME_CHARS} characters");
    let name = required(obj, path, "attribute", &expected)?;
    let attribute = match name.as_str() {
        Some(a) if check_name(a) => a.to_string(),
        _ => return Err(error(&child(path, "attribute"), expected, describe(name))),
    };
    let cmp_value = required(obj, path, "comparison", EXPECTED_ATTR_CMP)?;
    let bad_cmp = || {
        error(
            &child(path, "comparison"),
            EXPECTED_ATTR_CMP,
            describe_comparison(cmp_value),
        )
    };
    let cmp = cmp_value.as_str().ok_or_else(bad_cmp)?;
    let vpath = child(path, "value");
    // What the value must be, naming the comparison and the attribute.
    let of = |what: &str| format!("{what} for {cmp} on the attribute {attribute:?}");
    let value = |what: &str| required(obj, path, "value", &of(what));
    let no_value = || match obj.get("value") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => Err(error(&vpath, of("no value"), describe(v))),
    };
    let string = |what: &str| {
        let v = value(what)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| error(&vpath, of(what), describe(v)))
    };
    let num = |what: &str| number(value(what)?, &vpath, &of(what));
    let time = || {
        let v = value(Time::EXPECTED)?;
        v.as_str()
            .and_then(|s| s.parse::<Time>().ok())
            .ok_or_else(|| error(&vpath, of(Time::EXPECTED), describe(v)))
    };
    let count = |max: u32| {
        let what = format!("a whole number from 1 to {max}");
        let v = value(&what)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| error(&vpath, of(&what), describe(v)))
    };
    let cmp = match cmp {
        "equals" | "does_not_equal" => {
            let positive = cmp == "equals";
            let v = value("a string, a number or a boolean")?;
            match v {
                Value::String(s) if positive => AttrCmp::Equals(s.clone()),
                Value::String(s) => AttrCmp::DoesNotEqual(s.clone()),
                Value::Number(_) => {
                    let n = number(v, &vpath, &of("a number"))?;
                    if positive {
                        AttrCmp::Eq(n)
                    } else {
                        AttrCmp::Ne(n)
                    }
                }
                Value::Bool(b) => {
                    let cmp = if *b {
                        AttrCmp::IsTrue
                    } else {
                        AttrCmp::IsFalse
                    };
                    let leaf = Filter::Attribute { attribute, cmp };
                    // `does_not_equal true` holds for the users without the
                    // attribute too: `not (is true)`, not `is false`.
                    return Ok(if positive { leaf } else { leaf.not() });
                }
                _ => {
                    return Err(error(
                        &vpath,
                        of("a string, a number or a boolean"),
                        describe(v),
                    ))
                }
            }
        }
        "is_any_of" => {
            let what = format!("an array of 1 to {MAX_ANY_OF} strings");
            let v = value(&what)?;
            let items = match v.as_array() {
                Some(items) if !items.is_empty() && items.len() <= MAX_ANY_OF => items,
                Some(items) if items.len() > MAX_ANY_OF => {
                    return Err(error(
                        &vpath,
                        of(&what),
                        format!("an array of {} values", items.len()),
                    ))
                }
                _ => return Err(error(&vpath, of(&what), describe(v))),
            };
            let values = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        error(&format!("{vpath}[{i}]"), of("a string"), describe(item))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            AttrCmp::IsAnyOf(values)
        }
        "matches_regex" => {
            let what = format!("a regular expression of at most {MAX_REGEX_CHARS} characters");
            let pattern = string(&what)?;
            check_regex(&pattern).map_err(|found| error(&vpath, of(&what), found))?;
            AttrCmp::MatchesRegex(pattern)
        }
        "starts_with" => {
            let what = "a non-empty string";
            let prefix = string(what)?;
            if prefix.is_empty() {
                return Err(error(&vpath, of(what), "an empty string"));
            }
            AttrCmp::StartsWith(prefix)
        }
        "exists" => no_value().map(|()| AttrCmp::Exists)?,
        "does_not_exist" => no_value().map(|()| AttrCmp::DoesNotExist)?,
        "less_than" => AttrCmp::Lt(num("a number")?),
        "less_than_or_equal_to" => AttrCmp::Le(num("a number")?),
        "greater_than" => AttrCmp::Gt(num("a number")?),
        "greater_than_or_equal_to" => AttrCmp::Ge(num("a number")?),
        "between" => {
            let what = "an array [lo, hi] of two numbers, lo <= hi";
            let v = value(what)?;
            let Some([lo, hi]) = v.as_array().map(Vec::as_slice) else {
                return Err(error(&vpath, of(what), describe(v)));
            };
            let lo = number(lo, &format!("{vpath}[0]"), &of("a number"))?;
            let hi_path = format!("{vpath}[1]");
            let hi_expected = of(&format!("a number no less than {lo}"));
            let hi = number(hi, &hi_path, &hi_expected)?;
            if hi < lo {
                return Err(error(&hi_path, hi_expected, hi.to_string()));
            }
            AttrCmp::Between(lo, hi)
        }
        "is_true" => no_value().map(|()| AttrCmp::IsTrue)?,
        "is_false" => no_value().map(|()| AttrCmp::IsFalse)?,
        "before" => AttrCmp::Before(time()?),
        "after" => AttrCmp::After(time()?),
        "within_last_days" => AttrCmp::WithinLastDays(count(MAX_DAYS)?),
        "within_last_hours" => AttrCmp::WithinLastHours(count(MAX_HOURS)?),
        "more_than_days_ago" => AttrCmp::MoreThanDaysAgo(count(MAX_DAYS)?),
        _ => return Err(bad_cmp()),
    };
    Ok(Filter::Attribute { attribute, cmp })
}

/// A JSON number as a [`Number`]: an integer as it is, a fraction by the
/// shortest decimal that reads back as the same `f64` (`120.5`, `0.1`).
fn number(v: &Value, path: &str, expected: &str) -> Result<Number, FilterParseError> {
    let Value::Number(n) = v else {
        return Err(error(path, expected, describe(v)));
    };
    let parsed = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Ok(Number::int(i)),
        // Rust prints an f64 in full decimal, never with an exponent.
        (None, Some(f)) if n.as_u64().is_none() => f.to_string().parse::<Number>(),
        _ => Err(super::ast::NumberError::Range),
    };
    parsed.map_err(|e| error(path, format!("{expected}: {}", e.expected()), describe(v)))
}

/// An optional `"and"`/`"or"` under `key`; `true` for `and`, the default.
fn combinator(obj: &Map<String, Value>, path: &str, key: &str) -> Result<bool, FilterParseError> {
    match obj.get(key) {
        None => Ok(true),
        Some(v) => match v.as_str() {
            Some("and") => Ok(true),
            Some("or") => Ok(false),
            _ => Err(error(&child(path, key), EXPECTED_COMBINATOR, describe(v))),
        },
    }
}

/// The `And` (or `Or`) of `children`; one child is itself.
fn combine(and: bool, children: Vec<Filter>) -> Filter {
    match <[Filter; 1]>::try_from(children) {
        Ok([only]) => only,
        Err(children) if and => Filter::And(children),
        Err(children) => Filter::Or(children),
    }
}

/// The segment builder's `{"groups": ..., "groups_combinator": ..., "exclusions": ...}`.
fn builder(obj: &Map<String, Value>, path: &str, depth: usize) -> Result<Filter, FilterParseError> {
    check_keys(obj, path, &["groups", "groups_combinator", "exclusions"])?;
    let and = combinator(obj, path, "groups_combinator")?;
    let groups_path = child(path, "groups");
    let groups = match &obj["groups"] {
        Value::Array(groups) if !groups.is_empty() => groups
            .iter()
            .enumerate()
            .map(|(i, g)| group(g, &format!("{groups_path}[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()?,
        v => {
            return Err(error(
                &groups_path,
                "a non-empty array of groups",
                describe(v),
            ));
        }
    };
    let base = combine(and, groups);
    let Some(exclusions) = obj.get("exclusions") else {
        return Ok(base);
    };
    let excl_path = child(path, "exclusions");
    let Value::Array(exclusions) = exclusions else {
        return Err(error(
            &excl_path,
            "an array of groups",
            describe(exclusions),
        ));
    };
    if exclusions.is_empty() {
        return Ok(base);
    }
    let mut children = vec![base];
    for (i, g) in exclusions.iter().enumerate() {
        children.push(group(g, &format!("{excl_path}[{i}]"), depth + 1)?.not());
    }
    Ok(Filter::And(children))
}

/// A builder group `{"combinator": ..., "filters": [...]}` at `depth`.
fn group(v: &Value, path: &str, depth: usize) -> Result<Filter, FilterParseError> {
    check_depth(path, depth)?;
    let Value::Object(obj) = v else {
        return Err(error(path, EXPECTED_GROUP, describe(v)));
    };
    check_keys(obj, path, &["combinator", "filters"])?;
    let and = combinator(obj, path, "combinator")?;
    let filters = required(obj, path, "filters", "a non-empty array of filters")?;
    let filters = filter_list(filters, &child(path, "filters"), depth + 1)?;
    Ok(combine(and, filters))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_leaves_go_back_into_builder_groups() {
        let stored = r#"{"groups": [{"combinator": "or", "filters": [
            {"cohort": {"partner": "amplitude", "cohort": "c-1", "includes": true}},
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-2"}]},
            {"filters": [{"bucket": {"lt": 5000}}]}]}"#;
        let api = r#"{"groups": [{"combinator": "or", "filters": [
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-1"},
            {"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-2"}]},
            {"filters": [{"filter": "random_bucket", "comparison": "less_than", "value": 5000}]}]}"#;
        assert_eq!(super::parse(stored).unwrap(), super::parse(api).unwrap());
        // Checked as the text form checks them: no empty cohort, buckets
        // in range, and one key only.
        for bad in [
            r#"{"and": [{"cohort": {"partner": "amplitude", "cohort": "", "includes": true}}]}"#,
            r#"{"and": [{"bucket": {"lt": 123456}}]}"#,
            r#"{"and": [{"cohort": {"partner": "nobody", "cohort": "c", "includes": true}}]}"#,
            r#"{"and": [{"cohort": {"partner": "amplitude", "cohort": "c", "includes": true}, "x": 1}]}"#,
        ] {
            let e = super::parse(bad).unwrap_err();
            assert!(e.location.starts_with("$.and[0]"), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(child("$", "and"), "$.and");
        assert_eq!(child("$", "a b"), "$[\"a b\"]");
        assert_eq!(child("$", "1x"), "$[\"1x\"]");
    }

    #[test]
    fn syntax_columns_are_chars() {
        let e = parse("{\"é\": ]}").unwrap_err();
        assert_eq!((e.line, e.column), (Some(1), Some(7)));
        assert_eq!(e.expected, "a JSON value");
        assert_eq!(e.found, "\"]\"");
    }
}
