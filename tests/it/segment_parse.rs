//! The text and JSON forms of segment filters: what they parse to, that they
//! agree, where and how they fail, and that `Display` round-trips.

use proptest::prelude::*;
use segq::error::FilterParseError;
use segq::ids::{Partner, BUCKETS};
use segq::segment::ast::{MAX_ANY_OF, MAX_DAYS, MAX_HOURS, MAX_REGEX_CHARS};
use segq::segment::{json, text, AttrCmp, BucketCmp, Filter, Number, Time};
use serde_json::json;

// ---------------------------------------------------------------- helpers

fn t(input: &str) -> Filter {
    text::parse(input).unwrap_or_else(|e| panic!("text {input:?} failed: {e}"))
}

fn j(input: &str) -> Filter {
    json::parse(input).unwrap_or_else(|e| panic!("json {input:?} failed: {e}"))
}

fn text_err(input: &str) -> FilterParseError {
    match text::parse(input) {
        Ok(f) => panic!("text {input:?} parsed to {f:?}"),
        Err(e) => e,
    }
}

fn json_err(input: &str) -> FilterParseError {
    match json::parse(input) {
        Ok(f) => panic!("json {input:?} parsed to {f:?}"),
        Err(e) => e,
    }
}

/// Asserts a text-form (or JSON syntax) error's position and `expected`.
#[track_caller]
fn assert_at(e: &FilterParseError, line: usize, column: usize, expected: &str) {
    assert_eq!(
        (e.line, e.column),
        (Some(line), Some(column)),
        "position of {e}"
    );
    assert_eq!(e.location, format!("line {line}, column {column}"));
    assert_eq!(e.expected, expected, "expected of {e}");
}

/// Asserts a JSON structure error's path and `expected`.
#[track_caller]
fn assert_path(e: &FilterParseError, path: &str, expected: &str) {
    assert_eq!(e.location, path, "location of {e}");
    assert_eq!((e.line, e.column), (None, None), "{e}");
    assert_eq!(e.expected, expected, "expected of {e}");
}

fn amp(c: &str) -> Filter {
    Filter::includes(Partner::Amplitude, c)
}

fn mix(c: &str) -> Filter {
    Filter::includes(Partner::Mixpanel, c)
}

fn heap_not(c: &str) -> Filter {
    Filter::excludes(Partner::Heap, c)
}

fn and(c: Vec<Filter>) -> Filter {
    Filter::And(c)
}

fn or(c: Vec<Filter>) -> Filter {
    Filter::Or(c)
}

const EXPECTED_FILTER: &str = "a filter: {partner}_cohorts, random_bucket, attribute, in_segment, not_in_segment, not, all, none or (";
const EXPECTED_CMP: &str = "includes_value or does_not_include_value";
const EXPECTED_INT: &str = "an integer from 0 to 9999";

// ------------------------------------------------------------ text: forms

#[test]
fn text_cohort_comparisons() {
    assert_eq!(t("amplitude_cohorts includes_value c1"), amp("c1"));
    assert_eq!(t("amplitude_cohorts includes c1"), amp("c1"));
    assert_eq!(t("heap_cohorts does_not_include_value c1"), heap_not("c1"));
    assert_eq!(t("heap_cohorts does_not_include c1"), heap_not("c1"));
    assert_eq!(t("heap_cohorts excludes c1"), heap_not("c1"));
    // Keywords, comparisons and filter names are case-insensitive; values
    // are kept as written.
    assert_eq!(t("Amplitude_Cohorts INCLUDES_VALUE C1"), amp("C1"));
    assert_eq!(t("HEAP_COHORTS Does_Not_Include \"X\""), heap_not("X"));
}

#[test]
fn text_every_partner() {
    for p in Partner::ALL {
        let input = format!("{} includes_value \"id\"", p.filter_name());
        assert_eq!(t(&input), Filter::includes(p, "id"));
    }
}

#[test]
fn text_values() {
    assert_eq!(
        t("amplitude_cohorts includes_value c-9f1e.v2:x@y_z"),
        amp("c-9f1e.v2:x@y_z")
    );
    // A bare number is a cohort id too.
    assert_eq!(t("amplitude_cohorts includes_value 123"), amp("123"));
    assert_eq!(
        t("amplitude_cohorts includes_value \"power users\""),
        amp("power users")
    );
    assert_eq!(
        t(r#"amplitude_cohorts includes_value "q\"b\\n\n\t\r\u{1F600}\u{0}""#),
        amp("q\"b\\n\n\t\r\u{1F600}\u{0}")
    );
    assert_eq!(t("amplitude_cohorts includes_value \"\""), amp(""));
    // A string keeps raw unicode and even raw newlines.
    assert_eq!(
        t("amplitude_cohorts includes_value \"日本\né\""),
        amp("日本\né")
    );
    // A quoted keyword is a value.
    assert_eq!(t("amplitude_cohorts includes_value \"and\""), amp("and"));
}

#[test]
fn text_buckets() {
    assert_eq!(t("random_bucket < 500"), Filter::Bucket(BucketCmp::Lt(500)));
    assert_eq!(
        t("random_bucket <= 500"),
        Filter::Bucket(BucketCmp::Le(500))
    );
    assert_eq!(t("random_bucket > 500"), Filter::Bucket(BucketCmp::Gt(500)));
    assert_eq!(
        t("random_bucket >= 500"),
        Filter::Bucket(BucketCmp::Ge(500))
    );
    assert_eq!(
        t("random_bucket between 10 and 20"),
        Filter::Bucket(BucketCmp::Between(10, 20))
    );
    assert_eq!(
        t("RANDOM_BUCKET BETWEEN 7 AND 7"),
        Filter::Bucket(BucketCmp::Between(7, 7))
    );
    assert_eq!(t("random_bucket<0"), Filter::Bucket(BucketCmp::Lt(0)));
    assert_eq!(
        t("random_bucket>=9999"),
        Filter::Bucket(BucketCmp::Ge(9999))
    );
    assert_eq!(
        t("random_bucket < 0500"),
        Filter::Bucket(BucketCmp::Lt(500))
    );
    assert_eq!(
        t("random_bucket between 0 and 9999"),
        Filter::Bucket(BucketCmp::Between(0, 9999))
    );
}

#[test]
fn text_all_none() {
    assert_eq!(t("all"), and(vec![]));
    assert_eq!(t("NONE"), or(vec![]));
    assert_eq!(t("not all"), and(vec![]).not());
    assert_eq!(t("all or none"), or(vec![and(vec![]), or(vec![])]));
}

#[test]
fn text_operators_and_precedence() {
    let a = "amplitude_cohorts includes a";
    let b = "mixpanel_cohorts includes b";
    let c = "heap_cohorts excludes c";
    assert_eq!(t(&format!("{a} and {b}")), and(vec![amp("a"), mix("b")]));
    assert_eq!(t(&format!("{a} or {b}")), or(vec![amp("a"), mix("b")]));
    assert_eq!(t(&format!("not {a}")), amp("a").not());
    assert_eq!(t(&format!("not not {a}")), amp("a").not().not());
    // n-ary chains.
    assert_eq!(
        t(&format!("{a} and {b} and {c}")),
        and(vec![amp("a"), mix("b"), heap_not("c")])
    );
    assert_eq!(
        t(&format!("{a} or {b} or {c}")),
        or(vec![amp("a"), mix("b"), heap_not("c")])
    );
    // and binds tighter than or.
    assert_eq!(
        t(&format!("{a} or {b} and {c}")),
        or(vec![amp("a"), and(vec![mix("b"), heap_not("c")])])
    );
    assert_eq!(
        t(&format!("{a} and {b} or {c}")),
        or(vec![and(vec![amp("a"), mix("b")]), heap_not("c")])
    );
    // not binds tighter than both.
    assert_eq!(
        t(&format!("{a} and not {b}")),
        and(vec![amp("a"), mix("b").not()])
    );
    assert_eq!(
        t(&format!("not {a} or {b}")),
        or(vec![amp("a").not(), mix("b")])
    );
    // Parentheses override and are kept as written: no flattening.
    assert_eq!(
        t(&format!("({a} or {b}) and {c}")),
        and(vec![or(vec![amp("a"), mix("b")]), heap_not("c")])
    );
    assert_eq!(
        t(&format!("({a} and {b}) and {c}")),
        and(vec![and(vec![amp("a"), mix("b")]), heap_not("c")])
    );
    assert_eq!(
        t(&format!("not ({a} and {b})")),
        and(vec![amp("a"), mix("b")]).not()
    );
    assert_eq!(t(&format!("((({a})))")), amp("a"));
}

#[test]
fn text_between_owns_its_and() {
    assert_eq!(
        t("random_bucket between 1 and 5 and amplitude_cohorts includes a"),
        and(vec![Filter::Bucket(BucketCmp::Between(1, 5)), amp("a")])
    );
    assert_eq!(
        t("amplitude_cohorts includes a and random_bucket between 1 and 5 or none"),
        or(vec![
            and(vec![amp("a"), Filter::Bucket(BucketCmp::Between(1, 5))]),
            or(vec![])
        ])
    );
}

#[test]
fn text_whitespace_is_free() {
    assert_eq!(
        t("\n\t (amplitude_cohorts\n  includes_value\r\n\"a\"\tor\nnot(random_bucket<5))  \n"),
        or(vec![amp("a"), Filter::Bucket(BucketCmp::Lt(5)).not()])
    );
}

#[test]
fn text_display_round_trip_examples() {
    let f = and(vec![
        or(vec![amp("a \"quoted\" \\ value"), heap_not("日本")]),
        Filter::Bucket(BucketCmp::Between(100, 200)).not(),
        and(vec![]),
        or(vec![]).not(),
        Filter::Bucket(BucketCmp::Ge(9999)),
        Filter::includes(Partner::Tinyclues, "\u{1}\u{7f}\n"),
    ]);
    assert_eq!(text::parse(&f.to_string()), Ok(f));
}

// ----------------------------------------------------------- text: errors

#[test]
fn text_empty_input() {
    let e = text_err("");
    assert_at(&e, 1, 1, EXPECTED_FILTER);
    assert_eq!(e.found, "end of input");
    let e = text_err("  \n   ");
    assert_at(&e, 2, 4, EXPECTED_FILTER);
    assert_eq!(e.found, "end of input");
}

#[test]
fn text_error_position_on_second_line() {
    let e = text_err("amplitude_cohorts includes_value \"x\" and\n    bogus");
    assert_at(&e, 2, 5, EXPECTED_FILTER);
    assert_eq!(e.found, "\"bogus\"");
    assert_eq!(
        e.to_string(),
        format!("line 2, column 5: expected {EXPECTED_FILTER}, found \"bogus\"")
    );
}

#[test]
fn text_columns_count_chars() {
    // "日本" is two chars (six bytes).
    let e = text_err("heap_cohorts includes \"日本\" bogus");
    assert_at(&e, 1, 28, "end of input");
}

#[test]
fn text_unknown_partner() {
    let e = text_err("all and foo_cohorts includes_value x");
    assert_eq!((e.line, e.column), (Some(1), Some(9)));
    assert_eq!(e.found, "\"foo_cohorts\"");
    for p in Partner::ALL {
        assert!(e.expected.contains(&p.filter_name()), "{}", e.expected);
    }
}

#[test]
fn text_unknown_comparison() {
    let e = text_err("heap_cohorts contains x");
    assert_at(&e, 1, 14, EXPECTED_CMP);
    assert_eq!(e.found, "unknown comparison \"contains\"");
    let e = text_err("heap_cohorts = x");
    assert_at(&e, 1, 14, EXPECTED_CMP);
    assert_eq!(e.found, "\"=\"");
    let e = text_err("heap_cohorts");
    assert_at(&e, 1, 13, EXPECTED_CMP);
    assert_eq!(e.found, "end of input");
}

#[test]
fn text_bad_values() {
    let expected = "a cohort id or name: a \"quoted string\" or a bare word";
    let e = text_err("heap_cohorts includes");
    assert_at(&e, 1, 22, expected);
    assert_eq!(e.found, "end of input");
    let e = text_err("heap_cohorts includes and");
    assert_at(&e, 1, 23, expected);
    assert_eq!(e.found, "the keyword \"and\"");
    let e = text_err("heap_cohorts includes (x)");
    assert_at(&e, 1, 23, expected);
    assert_eq!(e.found, "\"(\"");
}

#[test]
fn text_unterminated_string_points_at_the_quote() {
    let e = text_err("heap_cohorts includes \"abc");
    assert_at(&e, 1, 23, "a closing \" for the string that starts here");
    assert_eq!(e.found, "end of input");
    let e = text_err("all and\n  heap_cohorts includes \"abc\nd\\\"");
    assert_at(&e, 2, 25, "a closing \" for the string that starts here");
}

#[test]
fn text_errors_come_in_input_order() {
    // The unknown partner comes before the unterminated string.
    let e = text_err("foo_cohorts includes \"abc");
    assert_eq!(e.column, Some(1));
}

#[test]
fn text_bad_escapes() {
    let expected = "an escape: \\\", \\\\, \\n, \\t, \\r or \\u{hex}";
    let e = text_err(r#"heap_cohorts includes "ab\qc""#);
    assert_at(&e, 1, 26, expected);
    assert_eq!(e.found, "\"\\q\"");
    let e = text_err(r#"heap_cohorts includes "\u{zz}""#);
    assert_at(&e, 1, 24, expected);
    let e = text_err(r#"heap_cohorts includes "\u0041""#);
    assert_at(&e, 1, 24, expected);
    let e = text_err(r#"heap_cohorts includes "\u{D800}""#);
    assert_at(&e, 1, 24, expected);
}

#[test]
fn text_parentheses_and_trailing_input() {
    let e = text_err("(all");
    assert_at(&e, 1, 5, ")");
    assert_eq!(e.found, "end of input");
    let e = text_err("(all none)");
    assert_at(&e, 1, 6, ")");
    assert_eq!(e.found, "\"none\"");
    let e = text_err("all )");
    assert_at(&e, 1, 5, "end of input");
    assert_eq!(e.found, "\")\"");
    let e = text_err("all none");
    assert_at(&e, 1, 5, "end of input");
    let e = text_err("()");
    assert_at(&e, 1, 2, EXPECTED_FILTER);
    assert_eq!(e.found, "\")\"");
    let e = text_err("all and");
    assert_at(&e, 1, 8, EXPECTED_FILTER);
    let e = text_err("all or or none");
    assert_at(&e, 1, 8, EXPECTED_FILTER);
    assert_eq!(e.found, "\"or\"");
    let e = text_err("all & none");
    assert_at(&e, 1, 5, "end of input");
    assert_eq!(e.found, "\"&\"");
    let e = text_err("\"x\"");
    assert_at(&e, 1, 1, EXPECTED_FILTER);
    assert_eq!(e.found, "the string \"x\"");
    let e = text_err("not");
    assert_at(&e, 1, 4, EXPECTED_FILTER);
}

#[test]
fn text_bucket_errors() {
    for (input, column, found) in [
        ("random_bucket < 10000", 17, "\"10000\""),
        ("random_bucket <= -1", 18, "\"-1\""),
        ("random_bucket > 1.5", 17, "\"1.5\""),
        (
            "random_bucket >= 99999999999999999999999",
            18,
            "\"99999999999999999999999\"",
        ),
        ("random_bucket < x", 17, "\"x\""),
        ("random_bucket < \"5\"", 17, "the string \"5\""),
        ("random_bucket <", 16, "end of input"),
        ("random_bucket between 10000 and 10001", 23, "\"10000\""),
    ] {
        let e = text_err(input);
        assert_at(&e, 1, column, EXPECTED_INT);
        assert_eq!(e.found, found, "{input}");
    }
    let e = text_err("random_bucket between 5 and 3");
    assert_at(&e, 1, 29, "an integer from 5 to 9999");
    assert_eq!(e.found, "\"3\"");
    let e = text_err("random_bucket between 1 or 3");
    assert_at(&e, 1, 25, "and");
    assert_eq!(e.found, "\"or\"");
    let e = text_err("random_bucket = 3");
    assert_at(&e, 1, 15, "<, <=, >, >= or between");
    assert_eq!(e.found, "\"=\"");
    let e = text_err("random_bucket");
    assert_at(&e, 1, 14, "<, <=, >, >= or between");
}

#[test]
fn text_depth_limit() {
    let ok = format!("{}all", "not ".repeat(64));
    assert_eq!(t(&ok).leaves(), 0);
    let e = text_err(&format!("{}all", "not ".repeat(65)));
    assert_at(
        &e,
        1,
        64 * 4 + 1,
        "at most 64 levels of nested parentheses and nots",
    );
    assert_eq!(e.found, "\"not\"");

    let ok = format!("{}all{}", "(".repeat(64), ")".repeat(64));
    assert_eq!(t(&ok), and(vec![]));
    let e = text_err(&format!("{}all{}", "(".repeat(65), ")".repeat(65)));
    assert_at(
        &e,
        1,
        65,
        "at most 64 levels of nested parentheses and nots",
    );

    // Far deeper input fails cleanly instead of overflowing the stack.
    let e = text_err(&"(not ".repeat(100_000));
    assert_eq!(e.line, Some(1));
}

// ------------------------------------------------------------ JSON: forms

#[test]
fn json_cohorts() {
    assert_eq!(
        j(r#"{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "c-9f1e"}"#),
        amp("c-9f1e")
    );
    assert_eq!(
        j(r#"{"value": "c", "comparison": "does_not_include_value", "filter": "heap_cohorts"}"#),
        heap_not("c")
    );
    for p in Partner::ALL {
        let input =
            json!({"filter": p.filter_name(), "comparison": "includes_value", "value": "x y"});
        assert_eq!(j(&input.to_string()), Filter::includes(p, "x y"));
    }
}

#[test]
fn json_buckets() {
    for (cmp, expected) in [
        ("less_than", BucketCmp::Lt(500)),
        ("less_than_or_equal_to", BucketCmp::Le(500)),
        ("greater_than", BucketCmp::Gt(500)),
        ("greater_than_or_equal_to", BucketCmp::Ge(500)),
    ] {
        let input = json!({"filter": "random_bucket", "comparison": cmp, "value": 500});
        assert_eq!(j(&input.to_string()), Filter::Bucket(expected));
    }
    assert_eq!(
        j(r#"{"filter": "random_bucket", "comparison": "between", "value": [0, 9999]}"#),
        Filter::Bucket(BucketCmp::Between(0, 9999))
    );
    assert_eq!(
        j(r#"{"filter": "random_bucket", "comparison": "between", "value": [42, 42]}"#),
        Filter::Bucket(BucketCmp::Between(42, 42))
    );
}

#[test]
fn json_boolean_nodes() {
    let a = r#"{"filter": "amplitude_cohorts", "comparison": "includes_value", "value": "a"}"#;
    let b = r#"{"filter": "mixpanel_cohorts", "comparison": "includes_value", "value": "b"}"#;
    assert_eq!(
        j(&format!(r#"{{"and": [{a}, {b}]}}"#)),
        and(vec![amp("a"), mix("b")])
    );
    assert_eq!(
        j(&format!(r#"{{"or": [{a}, {b}, {a}]}}"#)),
        or(vec![amp("a"), mix("b"), amp("a")])
    );
    assert_eq!(j(&format!(r#"{{"not": {a}}}"#)), amp("a").not());
    // One child is kept as written.
    assert_eq!(j(&format!(r#"{{"and": [{a}]}}"#)), and(vec![amp("a")]));
    assert_eq!(j(&format!(r#"{{"or": [{a}]}}"#)), or(vec![amp("a")]));
    // Nested nodes are not flattened.
    assert_eq!(
        j(&format!(
            r#"{{"and": [{{"and": [{a}, {b}]}}, {{"not": {{"not": {a}}}}}]}}"#
        )),
        and(vec![and(vec![amp("a"), mix("b")]), amp("a").not().not()])
    );
}

fn leaf_json(partner: &str, cohort: &str) -> serde_json::Value {
    json!({"filter": format!("{partner}_cohorts"), "comparison": "includes_value", "value": cohort})
}

#[test]
fn json_builder_shape() {
    let a = leaf_json("amplitude", "a");
    let b = leaf_json("mixpanel", "b");
    // One group of one filter is that filter.
    assert_eq!(
        j(&json!({"groups": [{"filters": [a]}]}).to_string()),
        amp("a")
    );
    // Groups default to and, and so do their filters.
    assert_eq!(
        j(&json!({"groups": [{"filters": [a, b]}, {"filters": [b]}]}).to_string()),
        and(vec![and(vec![amp("a"), mix("b")]), mix("b")])
    );
    assert_eq!(
        j(&json!({
            "groups": [{"combinator": "or", "filters": [a, b]}, {"combinator": "and", "filters": [a]}],
            "groups_combinator": "or"
        })
        .to_string()),
        or(vec![or(vec![amp("a"), mix("b")]), amp("a")])
    );
    // An empty exclusion list excludes nothing.
    assert_eq!(
        j(&json!({"groups": [{"filters": [a]}], "exclusions": []}).to_string()),
        amp("a")
    );
    // Exclusions are subtracted one by one.
    assert_eq!(
        j(&json!({
            "groups": [{"filters": [a]}],
            "exclusions": [{"filters": [b]}, {"combinator": "or", "filters": [a, b]}]
        })
        .to_string()),
        and(vec![
            amp("a"),
            mix("b").not(),
            or(vec![amp("a"), mix("b")]).not()
        ])
    );
}

// ------------------------------------------------ the two forms agree

#[test]
fn json_and_text_agree() {
    let a = leaf_json("amplitude", "a");
    let b = leaf_json("mixpanel", "b");
    let c = json!({"filter": "heap_cohorts", "comparison": "does_not_include_value", "value": "c"});
    let lt = json!({"filter": "random_bucket", "comparison": "less_than", "value": 500});
    let btw = json!({"filter": "random_bucket", "comparison": "between", "value": [10, 20]});
    let e = leaf_json("census", "e");
    let f = leaf_json("kubit", "f");
    let g = leaf_json("segment", "g");
    let text_a = "amplitude_cohorts includes_value a";
    let text_b = "mixpanel_cohorts includes b";
    let text_c = "heap_cohorts excludes \"c\"";
    let text_e = "census_cohorts includes_value e";
    let text_f = "kubit_cohorts includes_value f";
    let text_g = "segment_cohorts includes_value g";
    let pairs = [
        (json!({"and": [a, b]}), format!("{text_a} and {text_b}")),
        (
            json!({"or": [a, {"and": [b, c]}]}),
            format!("{text_a} or {text_b} and {text_c}"),
        ),
        (
            json!({"and": [a, {"not": b}, lt]}),
            format!("{text_a} and not {text_b} and random_bucket < 500"),
        ),
        (
            json!({"or": [{"and": [a, b]}, {"not": {"or": [c, btw]}}]}),
            format!("({text_a} and {text_b}) or not ({text_c} or random_bucket between 10 and 20)"),
        ),
        (
            json!({
                "groups": [
                    {"filters": [a, b]},
                    {"combinator": "or", "filters": [c, btw]}
                ],
                "groups_combinator": "or",
                "exclusions": [
                    {"filters": [e]},
                    {"combinator": "or", "filters": [f, g]}
                ]
            }),
            format!(
                "(({text_a} and {text_b}) or ({text_c} or random_bucket between 10 and 20))\n\
                 and not {text_e}\n\
                 and not ({text_f} or {text_g})"
            ),
        ),
    ];
    for (json_form, text_form) in pairs {
        let from_json = j(&json_form.to_string());
        let from_text = t(&text_form);
        assert_eq!(from_json, from_text, "{json_form} vs {text_form}");
        // And the printed form parses back to the same tree.
        assert_eq!(t(&from_json.to_string()), from_json);
    }
}

#[test]
fn segment_parse_dispatches_on_the_first_character() {
    assert_eq!(
        segq::segment::parse("  {\"not\": {\"filter\": \"heap_cohorts\", \"comparison\": \"includes_value\", \"value\": \"h\"}}")
            .unwrap(),
        Filter::includes(Partner::Heap, "h").not()
    );
    assert_eq!(
        segq::segment::parse("not heap_cohorts includes h").unwrap(),
        Filter::includes(Partner::Heap, "h").not()
    );
}

// ----------------------------------------------------------- JSON: errors

#[test]
fn json_syntax_errors_have_positions() {
    let e = json_err("{\n  \"and\": [\n    {\"filter\": }\n  ]\n}");
    assert_at(&e, 3, 16, "a JSON value");
    assert_eq!(e.found, "\"}\"");
    let e = json_err("");
    assert_eq!(e.line, Some(1));
    assert!(e.column.is_some());
    assert_eq!(e.found, "end of input while parsing a value");
    let e = json_err("{\"not\": ");
    assert_eq!(e.line, Some(1));
    assert!(e.found.starts_with("end of input"), "{e}");
    let e = json_err("{\"and\": []} x");
    assert_at(&e, 1, 13, "valid JSON");
    assert_eq!(e.found, "trailing characters");
}

#[test]
fn json_node_shape_errors() {
    let e = json_err("[]");
    assert_path(
        &e,
        "$",
        "a filter object: {\"filter\": ...}, {\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}} or {\"groups\": [...]}",
    );
    assert_eq!(e.found, "an empty array");
    let e = json_err("{}");
    assert_path(&e, "$", &e.expected.clone());
    assert_eq!(e.found, "an empty object");
    let e = json_err(r#"{"nand": []}"#);
    assert_path(
        &e,
        "$.nand",
        "one of the keys \"filter\", \"and\", \"or\", \"not\" or \"groups\"",
    );
    assert_eq!(e.found, "the key \"nand\"");
    let e = json_err(r#"{"and": [{"and": [], "x": 1}]}"#);
    assert_path(&e, "$.and[0].x", "only the key \"and\"");
    assert_eq!(e.found, "the key \"x\"");
    let e = json_err(
        r#"{"and": [{"filter": "random_bucket", "comparison": "less_than", "value": 5}], "or": []}"#,
    );
    assert_path(&e, "$.or", "only the key \"and\"");
    let e = json_err(
        r#"{"not": {"filter": "random_bucket", "comparison": "less_than", "value": 5, "note": "x"}}"#,
    );
    assert_path(
        &e,
        "$.not.note",
        "only the keys \"filter\", \"comparison\" and \"value\"",
    );
    let e = json_err(r#"{"and": []}"#);
    assert_path(&e, "$.and", "a non-empty array of filters");
    assert_eq!(e.found, "an empty array");
    let e = json_err(r#"{"or": {"filter": "x"}}"#);
    assert_path(&e, "$.or", "a non-empty array of filters");
    assert_eq!(e.found, "an object");
    let e = json_err(r#"{"not": [1]}"#);
    assert_eq!(e.location, "$.not");
    assert_eq!(e.found, "an array");
    let e = json_err(r#"{"and": [null]}"#);
    assert_eq!(e.location, "$.and[0]");
    assert_eq!(e.found, "null");
    let e = json_err(r#"{"and": [{"weird key": 1}]}"#);
    assert_eq!(e.location, "$.and[0][\"weird key\"]");
}

#[test]
fn json_leaf_errors() {
    let leaf =
        |v: serde_json::Value| json_err(&json!({"and": [leaf_json("heap", "h"), v]}).to_string());

    let e = leaf(json!({"filter": "foo_cohorts", "comparison": "includes_value", "value": "x"}));
    assert_eq!(e.location, "$.and[1].filter");
    assert_eq!(e.found, "\"foo_cohorts\"");
    assert!(
        e.expected
            .starts_with("random_bucket, custom_attribute, segment or "),
        "{}",
        e.expected
    );
    for p in Partner::ALL {
        assert!(e.expected.contains(&p.filter_name()), "{}", e.expected);
    }
    let e = leaf(json!({"filter": 7, "comparison": "includes_value", "value": "x"}));
    assert_eq!(e.location, "$.and[1].filter");
    assert_eq!(e.found, "7");

    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "contains", "value": "x"}));
    assert_path(&e, "$.and[1].comparison", EXPECTED_CMP);
    assert_eq!(e.found, "unknown comparison \"contains\"");
    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "includes", "value": "x"}));
    assert_path(&e, "$.and[1].comparison", EXPECTED_CMP);
    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "less_than", "value": "x"}));
    assert_path(&e, "$.and[1].comparison", EXPECTED_CMP);
    let e = leaf(json!({"filter": "heap_cohorts", "value": "x"}));
    assert_path(&e, "$.and[1].comparison", EXPECTED_CMP);
    assert_eq!(e.found, "no \"comparison\" key");

    let expected_value = "a non-empty string: the cohort id or name";
    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "includes_value", "value": ""}));
    assert_path(&e, "$.and[1].value", expected_value);
    assert_eq!(e.found, "\"\"");
    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "includes_value", "value": 12}));
    assert_path(&e, "$.and[1].value", expected_value);
    let e = leaf(json!({"filter": "heap_cohorts", "comparison": "includes_value"}));
    assert_path(&e, "$.and[1].value", expected_value);
    let e = leaf(
        json!({"comparison": "includes_value", "value": "x", "filter": "heap_cohorts", "x": 1}),
    );
    assert_eq!(e.location, "$.and[1].x");
    let e = leaf(json!({"filter": "Heap_cohorts", "comparison": "includes_value", "value": "x"}));
    assert_eq!(e.location, "$.and[1].filter");
}

#[test]
fn json_bucket_errors() {
    let bucket = |cmp: &str, v: serde_json::Value| {
        json_err(
            &json!({"not": {"filter": "random_bucket", "comparison": cmp, "value": v}}).to_string(),
        )
    };
    for v in [
        json!(10000),
        json!(-1),
        json!(1.5),
        json!(500.0),
        json!("5"),
        json!(null),
        json!([5]),
    ] {
        let e = bucket("less_than", v.clone());
        assert_path(&e, "$.not.value", EXPECTED_INT);
        assert_eq!(
            e.found,
            match &v {
                serde_json::Value::Array(_) => "an array".to_string(),
                v => v.to_string(),
            }
        );
    }
    let e = bucket("between", json!([5, 3]));
    assert_path(&e, "$.not.value[1]", "an integer from 5 to 9999");
    assert_eq!(e.found, "3");
    let e = bucket("between", json!([-5, 3]));
    assert_path(&e, "$.not.value[0]", EXPECTED_INT);
    let e = bucket("between", json!([1, 10000]));
    assert_path(&e, "$.not.value[1]", "an integer from 1 to 9999");
    let between_expected = "an array [lo, hi] of two integers from 0 to 9999";
    for v in [json!(5), json!([1]), json!([1, 2, 3]), json!({"lo": 1})] {
        let e = bucket("between", v);
        assert_path(&e, "$.not.value", between_expected);
    }
    let e = bucket("equals", json!(5));
    assert_path(
        &e,
        "$.not.comparison",
        "less_than, less_than_or_equal_to, greater_than, greater_than_or_equal_to or between",
    );
    assert_eq!(e.found, "unknown comparison \"equals\"");
    let e = bucket("includes_value", json!(5));
    assert_eq!(e.location, "$.not.comparison");
    let e = json_err(r#"{"filter": "random_bucket", "comparison": "less_than"}"#);
    assert_path(&e, "$.value", EXPECTED_INT);
    assert_eq!(e.found, "no \"value\" key");
}

#[test]
fn json_builder_errors() {
    let a = leaf_json("amplitude", "a");
    let err = |v: serde_json::Value| json_err(&v.to_string());
    let e = err(json!({"groups": []}));
    assert_path(&e, "$.groups", "a non-empty array of groups");
    let e = err(json!({"groups": {"filters": [a]}}));
    assert_path(&e, "$.groups", "a non-empty array of groups");
    let e = err(json!({"groups": [{"filters": []}]}));
    assert_path(&e, "$.groups[0].filters", "a non-empty array of filters");
    let e = err(json!({"groups": [{"combinator": "and"}]}));
    assert_path(&e, "$.groups[0].filters", "a non-empty array of filters");
    assert_eq!(e.found, "no \"filters\" key");
    let e = err(json!({"groups": [{"filters": [a]}, {"filters": [a], "name": "x"}]}));
    assert_path(
        &e,
        "$.groups[1].name",
        "only the keys \"combinator\" and \"filters\"",
    );
    let e = err(json!({"groups": [{"filters": [a], "combinator": "xor"}]}));
    assert_path(&e, "$.groups[0].combinator", "\"and\" or \"or\"");
    assert_eq!(e.found, "\"xor\"");
    let e = err(json!({"groups": [{"filters": [a]}], "groups_combinator": "OR"}));
    assert_path(&e, "$.groups_combinator", "\"and\" or \"or\"");
    let e = err(json!({"groups": [{"filters": [a]}], "exclusions": {"filters": [a]}}));
    assert_path(&e, "$.exclusions", "an array of groups");
    let e = err(json!({"groups": [{"filters": [a]}], "exclusions": [{"filters": [{"and": []}]}]}));
    assert_path(
        &e,
        "$.exclusions[0].filters[0].and",
        "a non-empty array of filters",
    );
    let e = err(json!({"groups": [["x"]]}));
    assert_eq!(e.location, "$.groups[0]");
    assert_eq!(e.found, "an array");
    let e = err(json!({"groups": [{"filters": [a]}], "limit": 5}));
    assert_path(
        &e,
        "$.limit",
        "only the keys \"groups\", \"groups_combinator\" and \"exclusions\"",
    );
}

#[test]
fn json_depth_limit() {
    let leaf = r#"{"filter": "random_bucket", "comparison": "less_than", "value": 5}"#;
    // 63 nots and a leaf: 64 levels.
    let nots = |n: usize| format!("{}{leaf}{}", "{\"not\": ".repeat(n), "}".repeat(n));
    let f = j(&nots(63));
    assert_eq!(f.leaves(), 1);
    let e = json_err(&nots(64));
    assert_path(
        &e,
        &format!("${}", ".not".repeat(64)),
        "at most 64 levels of nested filters",
    );
    assert_eq!(e.found, "a filter nested 65 levels deep");
    // Far beyond serde_json's own limit: its syntax error, no stack overflow.
    let e = json_err(&nots(100_000));
    assert!(e.line.is_some() && e.column.is_some(), "{e}");

    // 63 nested "and"s around a leaf (64 levels, 127 nested containers) are
    // the deepest that serde_json accepts; one more is its syntax error.
    let ands = |n: usize| format!("{}{leaf}{}", "{\"and\": [".repeat(n), "]}".repeat(n));
    assert_eq!(j(&ands(63)).leaves(), 1);
    let e = json_err(&ands(64));
    assert!(e.line.is_some(), "{e}");

    // Builder groups count as levels too.
    let deep = format!(r#"{{"groups": [{{"filters": [{}]}}]}}"#, nots(61));
    assert_eq!(j(&deep).leaves(), 1);
    let deep = format!(r#"{{"groups": [{{"filters": [{}]}}]}}"#, nots(62));
    let e = json_err(&deep);
    assert!(e.location.starts_with("$.groups[0].filters[0].not"), "{e}");
}

// ------------------------------------- custom attributes and segments

fn attr(attribute: &str, cmp: AttrCmp) -> Filter {
    Filter::Attribute {
        attribute: attribute.to_string(),
        cmp,
    }
}

fn n(s: &str) -> Number {
    s.parse().unwrap()
}

fn time(s: &str) -> Time {
    s.parse().unwrap()
}

/// A JSON attribute leaf.
fn attr_json(attribute: &str, cmp: &str, value: Option<serde_json::Value>) -> String {
    let mut leaf = json!({"filter": "custom_attribute", "attribute": attribute, "comparison": cmp});
    if let Some(v) = value {
        leaf["value"] = v;
    }
    leaf.to_string()
}

/// Every comparison: its JSON leaf, a text form, the tree, and the text
/// the tree prints.
#[test]
fn attribute_comparisons_parse_in_both_forms_and_print_back() {
    let br = || Some(json!("BR"));
    let cases: Vec<(String, &str, Filter, &str)> = vec![
        (
            attr_json("country", "equals", br()),
            r#"attribute country equals "BR""#,
            attr("country", AttrCmp::Equals("BR".into())),
            r#"attribute country equals "BR""#,
        ),
        (
            attr_json("country", "does_not_equal", br()),
            "attribute country does_not_equal BR",
            attr("country", AttrCmp::DoesNotEqual("BR".into())),
            r#"attribute country does_not_equal "BR""#,
        ),
        (
            attr_json("country", "is_any_of", Some(json!(["BR", "PT", "a \"b\""]))),
            r#"attribute country is_any_of (BR, "PT", "a \"b\"")"#,
            attr(
                "country",
                AttrCmp::IsAnyOf(vec!["BR".into(), "PT".into(), "a \"b\"".into()]),
            ),
            r#"attribute country is_any_of ("BR", "PT", "a \"b\"")"#,
        ),
        (
            attr_json("favourite_product", "matches_regex", Some(json!("^ab\\d+"))),
            r#"attribute favourite_product matches_regex "^ab\\d+""#,
            attr("favourite_product", AttrCmp::MatchesRegex("^ab\\d+".into())),
            r#"attribute favourite_product matches_regex "^ab\\d+""#,
        ),
        (
            attr_json("favourite_product", "starts_with", Some(json!("ab"))),
            "attribute favourite_product starts_with ab",
            attr("favourite_product", AttrCmp::StartsWith("ab".into())),
            r#"attribute favourite_product starts_with "ab""#,
        ),
        (
            attr_json("plan", "exists", None),
            "attribute plan exists",
            attr("plan", AttrCmp::Exists),
            "attribute plan exists",
        ),
        (
            attr_json("plan", "does_not_exist", Some(serde_json::Value::Null)),
            "ATTRIBUTE plan DOES_NOT_EXIST",
            attr("plan", AttrCmp::DoesNotExist),
            "attribute plan does_not_exist",
        ),
        (
            attr_json("sessions", "equals", Some(json!(12))),
            "attribute sessions equals 12",
            attr("sessions", AttrCmp::Eq(Number::int(12))),
            "attribute sessions = 12",
        ),
        (
            attr_json("sessions", "does_not_equal", Some(json!(-3))),
            "attribute sessions != -3",
            attr("sessions", AttrCmp::Ne(Number::int(-3))),
            "attribute sessions != -3",
        ),
        (
            attr_json("lifetime_spend", "less_than", Some(json!(100.5))),
            "attribute lifetime_spend < 100.50",
            attr("lifetime_spend", AttrCmp::Lt(n("100.5"))),
            "attribute lifetime_spend < 100.5",
        ),
        (
            attr_json("lifetime_spend", "less_than_or_equal_to", Some(json!(0.1))),
            "attribute lifetime_spend <= 0.1",
            attr("lifetime_spend", AttrCmp::Le(n("0.1"))),
            "attribute lifetime_spend <= 0.1",
        ),
        (
            attr_json("lifetime_spend", "greater_than", Some(json!(100))),
            "attribute lifetime_spend>100",
            attr("lifetime_spend", AttrCmp::Gt(Number::int(100))),
            "attribute lifetime_spend > 100",
        ),
        (
            attr_json(
                "lifetime_spend",
                "greater_than_or_equal_to",
                Some(json!(1e3)),
            ),
            "attribute lifetime_spend >= 1000.0",
            attr("lifetime_spend", AttrCmp::Ge(Number::int(1000))),
            "attribute lifetime_spend >= 1000",
        ),
        (
            attr_json("lifetime_spend", "between", Some(json!([100, 200.25]))),
            "attribute lifetime_spend between 100 and 200.25",
            attr(
                "lifetime_spend",
                AttrCmp::Between(Number::int(100), n("200.25")),
            ),
            "attribute lifetime_spend between 100 and 200.25",
        ),
        (
            attr_json("email_subscribed", "is_true", None),
            "attribute email_subscribed is true",
            attr("email_subscribed", AttrCmp::IsTrue),
            "attribute email_subscribed is true",
        ),
        (
            attr_json("email_subscribed", "is_false", None),
            "attribute email_subscribed is FALSE",
            attr("email_subscribed", AttrCmp::IsFalse),
            "attribute email_subscribed is false",
        ),
        (
            attr_json("email_subscribed", "equals", Some(json!(true))),
            "attribute email_subscribed = true",
            attr("email_subscribed", AttrCmp::IsTrue),
            "attribute email_subscribed is true",
        ),
        (
            attr_json("email_subscribed", "does_not_equal", Some(json!(true))),
            "attribute email_subscribed does_not_equal true",
            attr("email_subscribed", AttrCmp::IsTrue).not(),
            "not attribute email_subscribed is true",
        ),
        (
            attr_json(
                "last_seen_at",
                "before",
                Some(json!("2026-11-01T12:00:00+02:00")),
            ),
            r#"attribute last_seen_at before "2026-11-01T10:00:00.000Z""#,
            attr(
                "last_seen_at",
                AttrCmp::Before(time("2026-11-01T10:00:00Z")),
            ),
            "attribute last_seen_at before 2026-11-01T10:00:00Z",
        ),
        (
            attr_json("last_seen_at", "after", Some(json!("2026-11-01T10:00:00Z"))),
            "attribute last_seen_at after 2026-11-01T10:00:00Z",
            attr("last_seen_at", AttrCmp::After(time("2026-11-01T10:00:00Z"))),
            "attribute last_seen_at after 2026-11-01T10:00:00Z",
        ),
        (
            attr_json("last_seen_at", "within_last_days", Some(json!(30))),
            "attribute last_seen_at within the last 30 days",
            attr("last_seen_at", AttrCmp::WithinLastDays(30)),
            "attribute last_seen_at within last 30 days",
        ),
        (
            attr_json("last_seen_at", "within_last_hours", Some(json!(1))),
            "attribute last_seen_at within last 1 hour",
            attr("last_seen_at", AttrCmp::WithinLastHours(1)),
            "attribute last_seen_at within last 1 hours",
        ),
        (
            attr_json("last_seen_at", "more_than_days_ago", Some(json!(90))),
            "attribute last_seen_at more than 90 days ago",
            attr("last_seen_at", AttrCmp::MoreThanDaysAgo(90)),
            "attribute last_seen_at more than 90 days ago",
        ),
    ];
    for (json_form, text_form, tree, printed) in cases {
        assert_eq!(j(&json_form), tree, "{json_form}");
        assert_eq!(t(text_form), tree, "{text_form}");
        assert_eq!(tree.to_string(), printed);
        assert_eq!(t(printed), tree, "{printed}");
    }
}

#[test]
fn segment_references_parse_in_both_forms_and_print_back() {
    let seg = |id: &str, included| Filter::Segment {
        id: id.to_string(),
        included,
    };
    let cases = [
        (
            json!({"filter": "segment", "comparison": "in", "value": "seg_123"}),
            "in_segment seg_123",
            seg("seg_123", true),
            "in_segment seg_123",
        ),
        (
            json!({"filter": "segment", "comparison": "not_in", "value": "seg 9"}),
            r#"not_in_segment "seg 9""#,
            seg("seg 9", false),
            r#"not_in_segment "seg 9""#,
        ),
    ];
    for (json_form, text_form, tree, printed) in cases {
        assert_eq!(j(&json_form.to_string()), tree);
        assert_eq!(t(text_form), tree);
        assert_eq!(tree.to_string(), printed);
    }
    // `not in_segment` is the negation of the reference: a different tree
    // for the same users.
    assert_eq!(t("not in_segment seg_1"), seg("seg_1", true).not());
}

#[test]
fn attribute_leaves_mix_with_the_grammar() {
    let f = t("amplitude_cohorts includes power_users\n\
         and attribute country equals \"BR\"\n\
         and attribute lifetime_spend between 100 and 200\n\
         and attribute last_seen_at within last 30 days\n\
         and not_in_segment seg_churned");
    assert_eq!(
        f,
        and(vec![
            amp("power_users"),
            attr("country", AttrCmp::Equals("BR".into())),
            attr(
                "lifetime_spend",
                AttrCmp::Between(Number::int(100), Number::int(200))
            ),
            attr("last_seen_at", AttrCmp::WithinLastDays(30)),
            Filter::Segment {
                id: "seg_churned".into(),
                included: false
            },
        ])
    );
    assert_eq!(f.leaves(), 5);
    assert_eq!(t(&f.to_string()), f);
    // Names that are keywords or need quotes sit after `attribute`.
    assert_eq!(
        t(r#"attribute and exists or attribute "a b" exists"#),
        or(vec![
            attr("and", AttrCmp::Exists),
            attr("a b", AttrCmp::Exists)
        ])
    );
    let odd = attr("a b", AttrCmp::Exists);
    assert_eq!(odd.to_string(), r#"attribute "a b" exists"#);
    // The same builder JSON in groups.
    let g = json!({"groups": [{"filters": [
        {"filter": "custom_attribute", "attribute": "plan", "comparison": "equals", "value": "pro"},
        {"filter": "segment", "comparison": "in", "value": "seg_1"}
    ]}]});
    assert_eq!(
        j(&g.to_string()),
        and(vec![
            attr("plan", AttrCmp::Equals("pro".into())),
            Filter::Segment {
                id: "seg_1".into(),
                included: true
            }
        ])
    );
}

#[test]
fn text_attribute_errors_name_the_attribute() {
    let e = text_err("attribute lifetime_spend < abc");
    assert_at(
        &e,
        1,
        28,
        "a number such as 42, -7 or 120.5 (attribute \"lifetime_spend\")",
    );
    let e = text_err("attribute x between 5 and 3");
    assert_at(&e, 1, 27, "a number no less than 5 (attribute \"x\")");
    let e = text_err("attribute x > 1e5");
    assert!(e.expected.contains("attribute \"x\""), "{e}");
    let e = text_err("attribute x > 99999999999999999999");
    assert!(e.expected.starts_with("a number of at most 18"), "{e}");
    let e = text_err("attribute x contains \"a\"");
    assert_at(&e, 1, 13, EXPECTED_ATTR_CMP_TEXT);
    assert_eq!(e.found, "unknown comparison \"contains\"");
    let e = text_err("attribute x");
    assert_at(&e, 1, 12, EXPECTED_ATTR_CMP_TEXT);
    assert_eq!(e.found, "end of input");
    let e = text_err("attribute x matches_regex \"(ab\"");
    assert_at(
        &e,
        1,
        27,
        "a valid regular expression of at most 1024 characters (attribute \"x\")",
    );
    assert!(e.found.contains("unclosed group"), "{}", e.found);
    let long = format!(
        "attribute x matches_regex \"{}\"",
        "a".repeat(MAX_REGEX_CHARS + 1)
    );
    assert_eq!(text_err(&long).found, "a pattern of 1025 characters");
    let e = text_err("attribute x matches_regex ab");
    assert_at(
        &e,
        1,
        27,
        "a \"quoted\" regular expression (attribute \"x\")",
    );
    let e = text_err("attribute x starts_with \"\"");
    assert!(e.expected.starts_with("a non-empty prefix"), "{e}");
    let e = text_err("attribute x before yesterday");
    assert_at(
        &e,
        1,
        20,
        "an RFC 3339 time to the second, such as 2026-11-01T10:00:00Z (attribute \"x\")",
    );
    assert!(text_err("attribute x after 2026-11-01T10:00:00.5Z")
        .expected
        .starts_with("an RFC 3339 time"));
    let e = text_err("attribute x within last 0 days");
    assert_at(
        &e,
        1,
        25,
        "a whole number from 1 to 876000 (attribute \"x\")",
    );
    let e = text_err(&format!("attribute x within last {} days", MAX_DAYS + 1));
    assert_at(
        &e,
        1,
        25,
        "a whole number of days from 1 to 36500 (attribute \"x\")",
    );
    let e = text_err("attribute x within last 3 weeks");
    assert_at(&e, 1, 27, "days or hours");
    let e = text_err("attribute x more than 3 days");
    assert_at(&e, 1, 29, "ago");
    let e = text_err("attribute x is maybe");
    assert_at(&e, 1, 16, "true or false (attribute \"x\")");
    let e = text_err("attribute x equals and");
    assert!(e.expected.starts_with("a value: "), "{e}");
    let e = text_err("attribute x = 12abc");
    assert!(e.expected.starts_with("a number such as"), "{e}");
    let e = text_err("attribute x is_any_of ()");
    assert_at(
        &e,
        1,
        24,
        "a value: a \"quoted string\" or a bare word (attribute \"x\")",
    );
    let e = text_err("attribute x is_any_of (a b)");
    assert_at(&e, 1, 26, ", or )");
    let e = text_err("attribute x is_any_of a");
    assert!(e.expected.starts_with("( and a list of 1 to 256"), "{e}");
    let many: Vec<String> = (0..=MAX_ANY_OF).map(|i| format!("v{i}")).collect();
    let e = text_err(&format!("attribute x is_any_of ({})", many.join(", ")));
    assert_eq!(e.expected, "at most 256 values (attribute \"x\")");
    let ok: Vec<String> = (0..MAX_ANY_OF).map(|i| format!("v{i}")).collect();
    assert!(text::parse(&format!("attribute x is_any_of ({})", ok.join(", "))).is_ok());
    let e = text_err("attribute");
    assert!(e.expected.starts_with("an attribute name"), "{e}");
    let e = text_err("attribute \"\" exists");
    assert_at(
        &e,
        1,
        11,
        "an attribute name: a word or a \"quoted string\" of 1 to 256 characters",
    );
    let e = text_err("in_segment (");
    assert!(e.expected.starts_with("a saved segment id"), "{e}");
    let e = text_err("attribute x = 1 !");
    assert_at(&e, 1, 17, "end of input");
}

const EXPECTED_ATTR_CMP_TEXT: &str = "a comparison: equals, does_not_equal, is_any_of, matches_regex, starts_with, exists, does_not_exist, =, !=, <, <=, >, >=, between, is, before, after, within or more";

#[test]
fn json_attribute_errors_name_the_path_and_attribute() {
    let leaf =
        |v: serde_json::Value| json_err(&json!({"or": [leaf_json("heap", "h"), v]}).to_string());
    let a = |cmp: &str, value: serde_json::Value| {
        leaf(
            json!({"filter": "custom_attribute", "attribute": "spend", "comparison": cmp, "value": value}),
        )
    };
    // Wrong type for the comparison.
    let e = a("less_than", json!("100"));
    assert_path(
        &e,
        "$.or[1].value",
        "a number for less_than on the attribute \"spend\"",
    );
    assert_eq!(e.found, "\"100\"");
    let e = a("equals", json!([1]));
    assert_path(
        &e,
        "$.or[1].value",
        "a string, a number or a boolean for equals on the attribute \"spend\"",
    );
    let e = a("starts_with", json!(5));
    assert_path(
        &e,
        "$.or[1].value",
        "a non-empty string for starts_with on the attribute \"spend\"",
    );
    let e = a("starts_with", json!(""));
    assert_eq!(e.found, "an empty string");
    let e = a("is_any_of", json!("BR"));
    assert_path(
        &e,
        "$.or[1].value",
        "an array of 1 to 256 strings for is_any_of on the attribute \"spend\"",
    );
    let e = a("is_any_of", json!([]));
    assert_eq!(e.found, "an empty array");
    let e = a("is_any_of", json!(["a", 2]));
    assert_path(
        &e,
        "$.or[1].value[1]",
        "a string for is_any_of on the attribute \"spend\"",
    );
    // Too many values.
    let many: Vec<String> = (0..=MAX_ANY_OF).map(|i| i.to_string()).collect();
    let e = a("is_any_of", json!(many));
    assert_path(
        &e,
        "$.or[1].value",
        "an array of 1 to 256 strings for is_any_of on the attribute \"spend\"",
    );
    assert_eq!(e.found, "an array of 257 values");
    // A bad regex.
    let e = a("matches_regex", json!("[a-"));
    assert_path(
        &e,
        "$.or[1].value",
        "a regular expression of at most 1024 characters for matches_regex on the attribute \"spend\"",
    );
    assert!(e.found.starts_with("the pattern \"[a-\": "), "{}", e.found);
    let e = a("matches_regex", json!("a".repeat(MAX_REGEX_CHARS + 1)));
    assert_eq!(e.found, "a pattern of 1025 characters");
    // A bad time.
    let e = a("before", json!("2026-13-01T00:00:00Z"));
    assert_path(
        &e,
        "$.or[1].value",
        "an RFC 3339 time to the second, such as 2026-11-01T10:00:00Z for before on the attribute \"spend\"",
    );
    let e = a("after", json!(1_700_000_000));
    assert_path(
        &e,
        "$.or[1].value",
        "an RFC 3339 time to the second, such as 2026-11-01T10:00:00Z for after on the attribute \"spend\"",
    );
    // Counts.
    let e = a("within_last_days", json!(0));
    assert_path(
        &e,
        "$.or[1].value",
        "a whole number from 1 to 36500 for within_last_days on the attribute \"spend\"",
    );
    let e = a("within_last_hours", json!(2.5));
    assert_path(
        &e,
        "$.or[1].value",
        "a whole number from 1 to 876000 for within_last_hours on the attribute \"spend\"",
    );
    let e = a("more_than_days_ago", json!("7"));
    assert_eq!(e.location, "$.or[1].value");
    // between.
    let e = a("between", json!([200, 100]));
    assert_path(
        &e,
        "$.or[1].value[1]",
        "a number no less than 200 for between on the attribute \"spend\"",
    );
    assert_eq!(e.found, "100");
    let e = a("between", json!({"lo": 1, "hi": 2}));
    assert_path(
        &e,
        "$.or[1].value",
        "an array [lo, hi] of two numbers, lo <= hi for between on the attribute \"spend\"",
    );
    let e = a("between", json!([1, "2"]));
    assert_eq!(e.location, "$.or[1].value[1]");
    // Numbers beyond the representation.
    let e = a("greater_than", json!(u64::MAX));
    assert!(e.expected.contains("at most 18 significant digits"), "{e}");
    let e = a("greater_than", json!(1e-30));
    assert!(e.expected.contains("18 decimal places"), "{e}");
    // A value where none belongs.
    let e = a("exists", json!(true));
    assert_path(
        &e,
        "$.or[1].value",
        "no value for exists on the attribute \"spend\"",
    );
    let e = a("is_true", json!(true));
    assert_path(
        &e,
        "$.or[1].value",
        "no value for is_true on the attribute \"spend\"",
    );
    // Missing value.
    let e =
        leaf(json!({"filter": "custom_attribute", "attribute": "spend", "comparison": "equals"}));
    assert_path(
        &e,
        "$.or[1].value",
        "a string, a number or a boolean for equals on the attribute \"spend\"",
    );
    assert_eq!(e.found, "no \"value\" key");
    // Unknown comparison.
    let e = a("contains", json!("x"));
    assert_eq!(e.location, "$.or[1].comparison");
    assert_eq!(e.found, "unknown comparison \"contains\"");
    assert!(e.expected.contains("more_than_days_ago"), "{e}");
    let e = a("includes_value", json!("x"));
    assert_eq!(e.location, "$.or[1].comparison");
    // The attribute itself.
    let e = leaf(json!({"filter": "custom_attribute", "comparison": "exists"}));
    assert_path(
        &e,
        "$.or[1].attribute",
        "an attribute name: a string of 1 to 256 characters",
    );
    let e = leaf(json!({"filter": "custom_attribute", "attribute": "", "comparison": "exists"}));
    assert_eq!(e.location, "$.or[1].attribute");
    let e = leaf(
        json!({"filter": "custom_attribute", "attribute": "x".repeat(257), "comparison": "exists"}),
    );
    assert_eq!(e.location, "$.or[1].attribute");
    let e = leaf(
        json!({"filter": "custom_attribute", "attribute": "a", "comparison": "exists", "extra": 1}),
    );
    assert_eq!(e.location, "$.or[1].extra");
    // A segment reference.
    let e = leaf(json!({"filter": "segment", "comparison": "includes_value", "value": "s"}));
    assert_path(&e, "$.or[1].comparison", "in or not_in");
    let e = leaf(json!({"filter": "segment", "comparison": "in", "value": ""}));
    assert_path(
        &e,
        "$.or[1].value",
        "a saved segment id: a string of 1 to 256 characters",
    );
    let e = leaf(json!({"filter": "segment", "comparison": "in"}));
    assert_eq!(e.found, "no \"value\" key");
    let e = leaf(json!({"filter": "segment", "comparison": "in", "value": "s", "attribute": "a"}));
    assert_eq!(e.location, "$.or[1].attribute");
}

#[test]
fn json_numbers_are_read_as_written() {
    let gt = |v: serde_json::Value| j(&attr_json("x", "greater_than", Some(v)));
    assert_eq!(gt(json!(120.5)), attr("x", AttrCmp::Gt(n("120.5"))));
    assert_eq!(gt(json!(0.1)), attr("x", AttrCmp::Gt(n("0.1"))));
    assert_eq!(
        gt(json!(i64::MIN)),
        attr("x", AttrCmp::Gt(Number::int(i64::MIN)))
    );
    assert_eq!(gt(json!(-0.0)), attr("x", AttrCmp::Gt(Number::int(0))));
    assert_eq!(
        j(
            r#"{"filter": "custom_attribute", "attribute": "x", "comparison": "greater_than", "value": 1.50}"#
        ),
        attr("x", AttrCmp::Gt(n("1.5")))
    );
    assert_eq!(
        j(
            r#"{"filter": "custom_attribute", "attribute": "x", "comparison": "greater_than", "value": 2E2}"#
        ),
        attr("x", AttrCmp::Gt(Number::int(200)))
    );
}

// ------------------------------------------------------------- proptests

fn partner() -> impl Strategy<Value = Partner> {
    prop::sample::select(Partner::ALL.to_vec())
}

fn cohort_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.:@-]{1,12}",
        "[\"\\\\ a-z\n\t\r\u{1}\u{7f}\u{85}\u{2028}éß日本🎉]{0,12}",
        any::<String>(),
    ]
}

fn bucket_cmp() -> impl Strategy<Value = BucketCmp> {
    prop_oneof![
        (0..BUCKETS).prop_map(BucketCmp::Lt),
        (0..BUCKETS).prop_map(BucketCmp::Le),
        (0..BUCKETS).prop_map(BucketCmp::Gt),
        (0..BUCKETS).prop_map(BucketCmp::Ge),
        (0..BUCKETS, 0..BUCKETS).prop_map(|(a, b)| BucketCmp::Between(a.min(b), a.max(b))),
    ]
}

fn cohort_leaf(values: BoxedStrategy<String>) -> impl Strategy<Value = Filter> {
    (partner(), values, any::<bool>()).prop_map(|(partner, cohort, includes)| Filter::Cohort {
        partner,
        cohort,
        includes,
    })
}

/// A number: any mantissa and scale (`exact_in_f64`: at most 15
/// significant digits when it has a fraction, what the JSON form, read as
/// doubles, keeps exactly).
fn number(exact_in_f64: bool) -> impl Strategy<Value = Number> {
    (any::<i64>(), 0u8..=18, any::<bool>()).prop_map(move |(m, scale, small)| {
        let m = if small { m % 1_000 } else { m };
        let m = if exact_in_f64 && scale > 0 {
            m % 1_000_000_000_000_000
        } else {
            m
        };
        Number::new(m, if small { scale % 4 } else { scale }).unwrap()
    })
}

fn any_time() -> impl Strategy<Value = Time> {
    prop_oneof![
        (Time::MIN..=Time::MAX),
        Just(Time::MIN),
        Just(Time::MAX),
        (1_700_000_000i64..1_900_000_000)
    ]
    .prop_map(|s| Time::from_unix(s).unwrap())
}

/// Attribute names and segment ids: words, and strings that need quotes.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.:@-]{1,12}",
        Just("and".to_string()),
        Just("not".to_string()),
        "[ a-z\"\\\\éß=!,()]{1,8}",
    ]
}

fn attr_cmp(json: bool) -> impl Strategy<Value = AttrCmp> {
    let string = cohort_string().boxed();
    let non_empty = cohort_string()
        .prop_filter("non-empty", |s| !s.is_empty())
        .boxed();
    let pattern = prop::sample::select(vec![
        "^ab",
        "",
        "a|b",
        "[0-9]+$",
        "(?i)caf\u{e9}",
        "\\d{2,3}",
        "\"q\"",
        "\\\\",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        string.clone().prop_map(AttrCmp::Equals),
        string.clone().prop_map(AttrCmp::DoesNotEqual),
        prop::collection::vec(string, 1..=5).prop_map(AttrCmp::IsAnyOf),
        pattern.prop_map(AttrCmp::MatchesRegex),
        non_empty.prop_map(AttrCmp::StartsWith),
        Just(AttrCmp::Exists),
        Just(AttrCmp::DoesNotExist),
        number(json).prop_map(AttrCmp::Eq),
        number(json).prop_map(AttrCmp::Ne),
        number(json).prop_map(AttrCmp::Lt),
        number(json).prop_map(AttrCmp::Le),
        number(json).prop_map(AttrCmp::Gt),
        number(json).prop_map(AttrCmp::Ge),
        (number(json), number(json)).prop_map(|(a, b)| AttrCmp::Between(a.min(b), a.max(b))),
        Just(AttrCmp::IsTrue),
        Just(AttrCmp::IsFalse),
        any_time().prop_map(AttrCmp::Before),
        any_time().prop_map(AttrCmp::After),
        (1..=MAX_DAYS).prop_map(AttrCmp::WithinLastDays),
        (1..=MAX_HOURS).prop_map(AttrCmp::WithinLastHours),
        (1..=MAX_DAYS).prop_map(AttrCmp::MoreThanDaysAgo),
    ]
}

fn attribute_leaf(json: bool) -> impl Strategy<Value = Filter> {
    (name(), attr_cmp(json)).prop_map(|(attribute, cmp)| Filter::Attribute { attribute, cmp })
}

fn segment_leaf() -> impl Strategy<Value = Filter> {
    (name(), any::<bool>()).prop_map(|(id, included)| Filter::Segment { id, included })
}

/// Trees whose And/Or nodes have 0 or 2..=4 children, at most 4 levels of
/// operators above the leaves.
fn text_filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        3 => cohort_leaf(cohort_string().boxed()),
        2 => bucket_cmp().prop_map(Filter::Bucket),
        3 => attribute_leaf(false),
        1 => segment_leaf(),
        1 => Just(Filter::And(vec![])),
        1 => Just(Filter::Or(vec![])),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..=4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 2..=4).prop_map(Filter::Or),
            inner.prop_map(Filter::not),
        ]
    })
}

/// Trees the JSON form can write: And/Or with 1..=4 children, non-empty
/// cohort values.
fn json_filter() -> impl Strategy<Value = Filter> {
    let values = cohort_string()
        .prop_filter("non-empty", |s| !s.is_empty())
        .boxed();
    let leaf = prop_oneof![
        cohort_leaf(values),
        bucket_cmp().prop_map(Filter::Bucket),
        attribute_leaf(true),
        segment_leaf(),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..=4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 1..=4).prop_map(Filter::Or),
            inner.prop_map(Filter::not),
        ]
    })
}

fn to_json(f: &Filter) -> serde_json::Value {
    match f {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => json!({
            "filter": partner.filter_name(),
            "comparison": if *includes { "includes_value" } else { "does_not_include_value" },
            "value": cohort,
        }),
        Filter::Bucket(cmp) => {
            let (comparison, value) = match *cmp {
                BucketCmp::Lt(v) => ("less_than", json!(v)),
                BucketCmp::Le(v) => ("less_than_or_equal_to", json!(v)),
                BucketCmp::Gt(v) => ("greater_than", json!(v)),
                BucketCmp::Ge(v) => ("greater_than_or_equal_to", json!(v)),
                BucketCmp::Between(lo, hi) => ("between", json!([lo, hi])),
            };
            json!({"filter": "random_bucket", "comparison": comparison, "value": value})
        }
        Filter::And(c) => json!({"and": c.iter().map(to_json).collect::<Vec<_>>()}),
        Filter::Or(c) => json!({"or": c.iter().map(to_json).collect::<Vec<_>>()}),
        Filter::Not(c) => json!({"not": to_json(c)}),
        Filter::Attribute { attribute, cmp } => {
            let mut leaf = json!({
                "filter": "custom_attribute",
                "attribute": attribute,
                "comparison": json_cmp_name(cmp),
            });
            let value = match cmp {
                AttrCmp::Equals(s)
                | AttrCmp::DoesNotEqual(s)
                | AttrCmp::MatchesRegex(s)
                | AttrCmp::StartsWith(s) => json!(s),
                AttrCmp::IsAnyOf(v) => json!(v),
                AttrCmp::Exists | AttrCmp::DoesNotExist | AttrCmp::IsTrue | AttrCmp::IsFalse => {
                    return leaf
                }
                AttrCmp::Eq(n)
                | AttrCmp::Ne(n)
                | AttrCmp::Lt(n)
                | AttrCmp::Le(n)
                | AttrCmp::Gt(n)
                | AttrCmp::Ge(n) => json_number(*n),
                AttrCmp::Between(lo, hi) => json!([json_number(*lo), json_number(*hi)]),
                AttrCmp::Before(t) | AttrCmp::After(t) => json!(t.to_string()),
                AttrCmp::WithinLastDays(n)
                | AttrCmp::WithinLastHours(n)
                | AttrCmp::MoreThanDaysAgo(n) => json!(n),
            };
            leaf["value"] = value;
            leaf
        }
        Filter::Segment { id, included } => json!({
            "filter": "segment",
            "comparison": if *included { "in" } else { "not_in" },
            "value": id,
        }),
    }
}

/// The JSON form's name of an attribute comparison (by hand, not by the
/// library, so the test checks the library's names).
fn json_cmp_name(cmp: &AttrCmp) -> &'static str {
    match cmp {
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

/// A number as a client writes it: an integer, or a double.
fn json_number(n: Number) -> serde_json::Value {
    match n.as_i64() {
        Some(i) => json!(i),
        None => json!(n.to_string().parse::<f64>().unwrap()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn text_display_round_trips(f in text_filter()) {
        let printed = f.to_string();
        prop_assert_eq!(text::parse(&printed), Ok(f), "printed: {}", printed);
    }

    #[test]
    fn json_round_trips(f in json_filter()) {
        let written = to_json(&f).to_string();
        prop_assert_eq!(json::parse(&written), Ok(f), "written: {}", written);
    }

    #[test]
    fn text_errors_always_have_a_position(input in "[a-z_ ()<>=\"\\\\0-9\n]{0,40}") {
        if let Err(e) = text::parse(&input) {
            prop_assert!(e.line.is_some() && e.column.is_some());
            prop_assert_eq!(
                e.location,
                format!("line {}, column {}", e.line.unwrap(), e.column.unwrap())
            );
        }
    }

    #[test]
    fn arbitrary_input_never_panics(input in any::<String>()) {
        let _ = text::parse(&input);
        let _ = json::parse(&input);
    }
}
