//! Attribute types and values, and how JSON values become them.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::MAX_STRING_BYTES;
use crate::error::{Error, Result};

/// Decimals are kept as integers of this many units per 1 (four decimal
/// places): `120.5` is stored as `1_205_000`. A finer fraction is rounded
/// to the nearest unit.
pub const DECIMAL_SCALE: i64 = 10_000;

/// The type of a custom attribute.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrType {
    /// Text (at most 1,024 bytes a value).
    String,
    /// A 64-bit signed integer.
    Integer,
    /// A number with up to four decimal places (see [`DECIMAL_SCALE`]).
    Decimal,
    /// `true` or `false`.
    Boolean,
    /// A point in time, to the second (RFC 3339 on the wire).
    Time,
}

impl AttrType {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Integer => "integer",
            AttrType::Decimal => "decimal",
            AttrType::Boolean => "boolean",
            AttrType::Time => "time",
        }
    }

    /// The type a wire name names.
    pub fn parse(s: &str) -> Option<AttrType> {
        Some(match s {
            "string" => AttrType::String,
            "integer" => AttrType::Integer,
            "decimal" => AttrType::Decimal,
            "boolean" => AttrType::Boolean,
            "time" => AttrType::Time,
            _ => return None,
        })
    }

    /// The persisted tag (append only).
    pub(crate) fn tag(self) -> u8 {
        match self {
            AttrType::String => 1,
            AttrType::Integer => 2,
            AttrType::Decimal => 3,
            AttrType::Boolean => 4,
            AttrType::Time => 5,
        }
    }

    /// The type a persisted tag names.
    pub(crate) fn from_tag(t: u8) -> Option<AttrType> {
        Some(match t {
            1 => AttrType::String,
            2 => AttrType::Integer,
            3 => AttrType::Decimal,
            4 => AttrType::Boolean,
            5 => AttrType::Time,
            _ => return None,
        })
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user's value of an attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A decimal, in units of 1 / [`DECIMAL_SCALE`].
    Decimal(i64),
    /// A boolean.
    Boolean(bool),
    /// A time, in seconds since the Unix epoch.
    Time(i64),
}

impl AttrValue {
    /// Its type.
    pub fn ty(&self) -> AttrType {
        match self {
            AttrValue::String(_) => AttrType::String,
            AttrValue::Integer(_) => AttrType::Integer,
            AttrValue::Decimal(_) => AttrType::Decimal,
            AttrValue::Boolean(_) => AttrType::Boolean,
            AttrValue::Time(_) => AttrType::Time,
        }
    }

    /// The integer a numeric value is indexed by (`None` for strings and
    /// booleans).
    pub fn number(&self) -> Option<i64> {
        match self {
            AttrValue::Integer(v) | AttrValue::Decimal(v) | AttrValue::Time(v) => Some(*v),
            _ => None,
        }
    }

    /// The value of type `ty` that `number` indexes.
    pub fn from_number(ty: AttrType, number: i64) -> Option<AttrValue> {
        Some(match ty {
            AttrType::Integer => AttrValue::Integer(number),
            AttrType::Decimal => AttrValue::Decimal(number),
            AttrType::Time => AttrValue::Time(number),
            AttrType::String | AttrType::Boolean => return None,
        })
    }

    /// Reads a JSON value for attribute `name`. `Ok(None)` is `null`: unset.
    /// With `ty`, the value must be of that type (a decimal takes an
    /// integer; a time takes an RFC 3339 string or seconds since the epoch);
    /// without, the type is inferred as the module documents.
    pub fn from_json(
        name: &str,
        v: &serde_json::Value,
        ty: Option<AttrType>,
    ) -> Result<Option<AttrValue>> {
        use serde_json::Value as J;
        let wrong = |found: &str| {
            let want = ty.map_or("a string, number, boolean or time".to_string(), |t| {
                format!("of type {t}")
            });
            Error::AttributeType {
                attribute: name.to_string(),
                reason: format!("the value must be {want}, found {found}"),
            }
        };
        let out = match (v, ty) {
            (J::Null, _) => return Ok(None),
            (J::Bool(b), None | Some(AttrType::Boolean)) => AttrValue::Boolean(*b),
            (J::Number(n), None) if n.is_i64() => AttrValue::Integer(n.as_i64().unwrap_or(0)),
            (J::Number(n), Some(AttrType::Integer)) => match n.as_i64() {
                Some(i) => AttrValue::Integer(i),
                None => return Err(wrong(&format!("the number {n}"))),
            },
            (J::Number(n), None | Some(AttrType::Decimal)) => {
                AttrValue::Decimal(decimal_units(name, n.as_f64().unwrap_or(f64::NAN))?)
            }
            (J::Number(n), Some(AttrType::Time)) => match n.as_i64() {
                Some(s) if time_in_range(s) => AttrValue::Time(s),
                _ => return Err(wrong(&format!("the number {n}"))),
            },
            (J::String(s), None) => match parse_time(s) {
                Some(t) => AttrValue::Time(t),
                None => AttrValue::String(checked_string(name, s)?),
            },
            (J::String(s), Some(AttrType::String)) => AttrValue::String(checked_string(name, s)?),
            (J::String(s), Some(AttrType::Time)) => match parse_time(s) {
                Some(t) => AttrValue::Time(t),
                None => return Err(wrong("a string that is not an RFC 3339 time")),
            },
            (J::Bool(_), _) => return Err(wrong("a boolean")),
            (J::Number(n), _) => return Err(wrong(&format!("the number {n}"))),
            (J::String(_), _) => return Err(wrong("a string")),
            (J::Array(_), _) => return Err(wrong("an array")),
            (J::Object(_), _) => return Err(wrong("an object")),
        };
        Ok(Some(out))
    }

    /// Reads a text value (a CSV cell) for attribute `name`: with `ty`,
    /// as that type; without, `true`/`false` is a boolean, an integer an
    /// integer, another number a decimal, an RFC 3339 time a time, and
    /// anything else a string. An empty text is `Ok(None)`: no change.
    pub fn from_text(name: &str, s: &str, ty: Option<AttrType>) -> Result<Option<AttrValue>> {
        if s.is_empty() {
            return Ok(None);
        }
        let j = match ty {
            Some(AttrType::String) => serde_json::Value::String(s.to_string()),
            Some(AttrType::Time) => match s.parse::<i64>() {
                Ok(n) => serde_json::Value::from(n),
                Err(_) => serde_json::Value::String(s.to_string()),
            },
            _ => match s {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                _ => match (s.parse::<i64>(), s.parse::<f64>()) {
                    (Ok(i), _) => serde_json::Value::from(i),
                    (_, Ok(f)) if f.is_finite() => serde_json::Number::from_f64(f).map_or_else(
                        || serde_json::Value::String(s.into()),
                        serde_json::Value::Number,
                    ),
                    _ => serde_json::Value::String(s.to_string()),
                },
            },
        };
        AttrValue::from_json(name, &j, ty)
    }

    /// The value as JSON (times in RFC 3339, UTC; decimals as numbers).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::String(s) => serde_json::Value::String(s.clone()),
            AttrValue::Integer(i) => serde_json::Value::from(*i),
            AttrValue::Decimal(d) => serde_json::Value::from(*d as f64 / DECIMAL_SCALE as f64),
            AttrValue::Boolean(b) => serde_json::Value::Bool(*b),
            AttrValue::Time(t) => serde_json::Value::String(format_time(*t)),
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::String(s) => write!(f, "{s:?}"),
            AttrValue::Time(t) => f.write_str(&format_time(*t)),
            v => write!(f, "{}", v.to_json()),
        }
    }
}

/// Times a value may hold: years 1 to 9999, as RFC 3339 can write them.
fn time_in_range(s: i64) -> bool {
    (-62_135_596_800..=253_402_300_799).contains(&s)
}

/// An RFC 3339 time (`2026-11-01T10:00:00Z`, any offset) as seconds since
/// the epoch; fractions of a second are dropped.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(s).ok()?.timestamp();
    time_in_range(t).then_some(t)
}

/// Seconds since the epoch as RFC 3339, UTC.
pub fn format_time(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// A number as decimal units, refused when it is not finite or does not
/// fit.
pub fn decimal_units(name: &str, x: f64) -> Result<i64> {
    let units = (x * DECIMAL_SCALE as f64).round();
    // 2^62: far from i64's ends, so offsets from the index base stay exact.
    if x.is_finite() && units.abs() < 4.6e18 {
        Ok(units as i64)
    } else {
        Err(Error::AttributeType {
            attribute: name.to_string(),
            reason: format!("the decimal {x} is out of range (at most 4.6e14 either side of 0)"),
        })
    }
}

fn checked_string(name: &str, s: &str) -> Result<String> {
    if s.len() > MAX_STRING_BYTES {
        return Err(Error::AttributeType {
            attribute: name.to_string(),
            reason: format!(
                "a string value is at most {MAX_STRING_BYTES} bytes, found {}",
                s.len()
            ),
        });
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_are_inferred_from_the_first_value_and_checked_after() {
        let v = |j, t| AttrValue::from_json("a", &j, t);
        assert_eq!(
            v(json!("BR"), None).unwrap(),
            Some(AttrValue::String("BR".into()))
        );
        assert_eq!(v(json!(3), None).unwrap(), Some(AttrValue::Integer(3)));
        assert_eq!(
            v(json!(120.5), None).unwrap(),
            Some(AttrValue::Decimal(1_205_000))
        );
        assert_eq!(
            v(json!(true), None).unwrap(),
            Some(AttrValue::Boolean(true))
        );
        assert_eq!(
            v(json!("2026-11-01T10:00:00Z"), None).unwrap(),
            Some(AttrValue::Time(1_793_527_200))
        );
        assert_eq!(v(json!(null), Some(AttrType::Integer)).unwrap(), None);
        // A decimal takes an integer; an integer refuses a fraction.
        assert_eq!(
            v(json!(3), Some(AttrType::Decimal)).unwrap(),
            Some(AttrValue::Decimal(30_000))
        );
        let e = v(json!(2.5), Some(AttrType::Integer))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attribute a") && e.contains("integer"), "{e}");
        let e = v(json!("x"), Some(AttrType::Boolean))
            .unwrap_err()
            .to_string();
        assert!(e.contains("boolean") && e.contains("a string"), "{e}");
        assert!(v(json!("x".repeat(2000)), None).is_err());
        assert!(v(json!([1]), None).is_err());
        assert!(v(json!(1e300), Some(AttrType::Decimal)).is_err());
    }

    #[test]
    fn text_cells_are_typed_by_the_attribute_or_inferred() {
        let t = |s, ty| AttrValue::from_text("a", s, ty).unwrap();
        assert_eq!(
            t("00123", Some(AttrType::String)),
            Some(AttrValue::String("00123".into()))
        );
        assert_eq!(t("00123", None), Some(AttrValue::Integer(123)));
        assert_eq!(t("2.5", None), Some(AttrValue::Decimal(25_000)));
        assert_eq!(t("true", None), Some(AttrValue::Boolean(true)));
        assert_eq!(t("BR", None), Some(AttrValue::String("BR".into())));
        assert_eq!(t("", Some(AttrType::Integer)), None);
        assert_eq!(
            t("1700000000", Some(AttrType::Time)),
            Some(AttrValue::Time(1_700_000_000))
        );
        assert!(AttrValue::from_text("a", "x", Some(AttrType::Integer)).is_err());
    }

    #[test]
    fn values_print_back_as_they_were_given() {
        for j in [
            json!("BR"),
            json!(3),
            json!(120.5),
            json!(false),
            json!("2026-11-01T10:00:00Z"),
        ] {
            let v = AttrValue::from_json("a", &j, None).unwrap().unwrap();
            assert_eq!(v.to_json(), j);
            assert_eq!(AttrType::from_tag(v.ty().tag()), Some(v.ty()));
        }
    }
}
