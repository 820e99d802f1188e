//! Custom attributes of users: what the platform knows of each user beside
//! partner cohorts (country, plan, lifetime_spend, last_seen_at, ...), kept
//! as bitmap indexes over the dense user ids so a filter on them is answered
//! without visiting users.
//!
//! - strings: a roaring bitmap per distinct value, the values in a
//!   dictionary (regexes and prefixes run over the dictionary, never over
//!   users);
//! - booleans: the bitmap of users whose value is true;
//! - integers, decimals and times: a bit-sliced index ([`bsi::Bsi`]), one
//!   bitmap per bit of `value - base`, so `<`, `between`, ... take a few
//!   bitmap operations per bit;
//! - every attribute: the bitmap of users that have a value.
//!
//! An attribute's type is fixed by its first value (or declared): a JSON
//! integer makes an integer, a number with a fraction a decimal, `true` /
//! `false` a boolean, an RFC 3339 timestamp a time, any other string a
//! string. A decimal attribute takes integers too; any other mismatch is
//! [`Error::AttributeType`], naming the attribute.

pub mod bsi;
pub mod codec;
mod index;
mod value;

/// An attribute value as a request carries it, before it is typed by the
/// workspace: a JSON value (`null`: unset), or a CSV cell's text (empty:
/// unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrInput {
    /// From JSON.
    Json(serde_json::Value),
    /// From a CSV cell.
    Text(String),
}

/// A user's attribute values as a request carries them, in order.
pub type AttrInputs = Vec<(String, AttrInput)>;

pub use index::{AttrQuery, Attribute, AttributeSummary, Attributes, CommonValue, SectionBytes};
pub use value::{format_time, parse_time, AttrType, AttrValue, DECIMAL_SCALE};

use crate::error::{Error, Result};

/// The OpenAPI schema of a user's custom attribute values as the API
/// takes and shows them (`"attributes": {...}`): the type, for
/// `#[schema(value_type = AttributeValues)]` on the fields that hold
/// them as JSON.
pub struct AttributeValues;

impl utoipa::PartialSchema for AttributeValues {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let value = ObjectBuilder::new().schema_type(
            [Type::String, Type::Number, Type::Boolean, Type::Null]
                .into_iter()
                .collect::<utoipa::openapi::schema::SchemaType>(),
        );
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Custom attribute values by name: a string, number, boolean or RFC 3339 time \
                 string; `null` unsets one. A value must fit the attribute's type (declared, or \
                 inferred from its first value).",
            ))
            .additional_properties(Some(value))
            .examples(
                [serde_json::json!({"country": "BR", "lifetime_spend": 120.5,
                "email_subscribed": true, "last_seen_at": "2026-11-01T10:00:00Z"})],
            )
            .into()
    }
}

impl utoipa::ToSchema for AttributeValues {}

/// Longest attribute name accepted.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest string value accepted.
pub const MAX_STRING_BYTES: usize = 1024;

/// Checks an attribute name: 1..=128 bytes of letters, digits, `_`, `-`,
/// `.` (the names a builder offers and the text form reads unquoted).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::AttributeType {
            attribute: name.to_string(),
            reason: format!(
                "an attribute name is 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' or '.'"
            ),
        })
    }
}
