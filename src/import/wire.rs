//! A partner request body read in one pass, straight into the fields the
//! protocol uses: no JSON tree is built, and each identifier is copied
//! once, from the body into its `String`.
//!
//! It reads what parsing the body into a `serde_json::Value` and looking
//! the fields up did: every value goes through the parser's
//! `deserialize_any`, so the same bodies are valid JSON (numbers out of
//! range, lone surrogates, bad escapes and nesting past the parser's
//! limit are refused wherever they are); a key given twice counts with
//! its last value, as in a JSON object read into a map; and a field of
//! the wrong shape is recorded as such, never an error of the parse, so
//! the validation above it ([`super::parse_users_request`] and the
//! others) gives the protocol's own texts. The tests hold it to the
//! tree-based reading on random bodies.
//!
//! One difference, on purpose: with serde_json's `raw_value` feature on
//! (the HTTP stack turns it on), a tree read an object whose first key is
//! serde_json's private token `$serde_json::private::RawValue` as the
//! JSON text of its string value instead of as an object. Here that key
//! is a key like any other (ignored where the protocol names no such
//! key).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::cohorts::{Alias, CohortChange};

/// A field as read: `Absent`, or present with a value of the expected
/// shape (`Value`) or not (`Wrong`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) enum Field<T> {
    /// The key is not in the object.
    #[default]
    Absent,
    /// The key's last value is not of the shape asked for.
    Wrong,
    /// The key's last value.
    Value(T),
}

impl<T> Field<T> {
    /// The value, if the key holds one of the right shape.
    pub(super) fn value(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// The top-level fields of the partner endpoints' bodies.
#[derive(Debug, Default)]
pub(super) struct Body {
    pub partner_api_key: Field<String>,
    pub client_secret: Field<String>,
    pub cohort_id: Field<String>,
    pub name: Field<String>,
    pub created_at: Field<String>,
    /// `null` reads as `Wrong` here (the endpoint refuses it).
    pub cohort_changes: Field<Vec<CohortChange>>,
}

/// What a body is: an object's fields, or the kind of value it is instead
/// ("a string", "an array", ...).
pub(super) enum Read {
    Object(Body),
    Not(&'static str),
}

/// Reads `body` (UTF-8 already checked by the caller).
pub(super) fn read(body: &str) -> serde_json::Result<Read> {
    let mut de = serde_json::Deserializer::from_str(body);
    let read = (&mut de).deserialize_any(TopVisitor)?;
    de.end()?;
    Ok(read)
}

/// Visits any value, keeping nothing (each value still goes through
/// `deserialize_any`, as a tree would read it).
struct Drain;

impl<'de> de::Deserialize<'de> for Drain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Drain, D::Error> {
        d.deserialize_any(DrainVisitor)
    }
}

struct DrainVisitor;

impl<'de> Visitor<'de> for DrainVisitor {
    type Value = Drain;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_str<E>(self, _: &str) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_unit<E>(self) -> Result<Drain, E> {
        Ok(Drain)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Drain, A::Error> {
        drain_seq(seq).map(|()| Drain)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Drain, A::Error> {
        drain_map(map).map(|()| Drain)
    }
}

/// Reads every element of an array, keeping none.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Drain>()?.is_some() {}
    Ok(())
}

/// Reads every entry of an object, keeping none.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<KeyName>()?.is_some() {
        map.next_value::<Drain>()?;
    }
    Ok(())
}

/// Every element of an array read by `seed`: `Wrong` (every element still
/// read) unless each is of its shape and passes `keep`.
fn all_of<'de, A, S, T>(
    mut seq: A,
    seed: S,
    keep: impl Fn(&T) -> bool,
) -> Result<Field<Vec<T>>, A::Error>
where
    A: SeqAccess<'de>,
    S: DeserializeSeed<'de, Value = Field<T>> + Copy,
{
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
    let mut ok = true;
    while let Some(x) = seq.next_element_seed(seed)? {
        match x {
            Field::Value(x) if ok && keep(&x) => out.push(x),
            _ => ok = false,
        }
    }
    Ok(if ok { Field::Value(out) } else { Field::Wrong })
}

/// An object key, as the fields this module reads name them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyName {
    PartnerApiKey,
    ClientSecret,
    CohortId,
    Name,
    CreatedAt,
    CohortChanges,
    UserIds,
    DeviceIds,
    Aliases,
    ShouldRemove,
    AliasName,
    AliasLabel,
    Other,
}

impl<'de> de::Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyName, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = KeyName;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<KeyName, E> {
        Ok(match k {
            "partner_api_key" => KeyName::PartnerApiKey,
            "client_secret" => KeyName::ClientSecret,
            "cohort_id" => KeyName::CohortId,
            "name" => KeyName::Name,
            "created_at" => KeyName::CreatedAt,
            "cohort_changes" => KeyName::CohortChanges,
            "user_ids" => KeyName::UserIds,
            "device_ids" => KeyName::DeviceIds,
            "aliases" => KeyName::Aliases,
            "should_remove" => KeyName::ShouldRemove,
            "alias_name" => KeyName::AliasName,
            "alias_label" => KeyName::AliasLabel,
            _ => KeyName::Other,
        })
    }
}

/// Implements the scalar and container visits of a lenient visitor whose
/// value is a [`Field`]: every kind not handled by the visitor itself is
/// consumed whole and read as [`Field::Wrong`].
macro_rules! wrong_otherwise {
    (scalars) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
        wrong_otherwise!(numbers);
    };
    (numbers) => {
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
    };
    (str) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
    };
    (unit) => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Field::Wrong)
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq).map(|()| Field::Wrong)
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map).map(|()| Field::Wrong)
        }
    };
}

/// Makes a lenient visitor its own seed: it reads any value through
/// `deserialize_any`.
macro_rules! seed_of_itself {
    ($t:ty) => {
        impl<'de> DeserializeSeed<'de> for $t {
            type Value = <$t as Visitor<'de>>::Value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// A string field.
#[derive(Clone, Copy)]
struct Str;

seed_of_itself!(Str);

impl<'de> Visitor<'de> for Str {
    type Value = Field<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<Field<String>, E> {
        Ok(Field::Value(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Field<String>, E> {
        Ok(Field::Value(s))
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(unit);
    wrong_otherwise!(seq);
    wrong_otherwise!(map);
}

/// An identifier array: `null` is empty; else an array of non-empty
/// strings.
struct Ids;

seed_of_itself!(Ids);

impl<'de> Visitor<'de> for Ids {
    type Value = Field<Vec<String>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Value(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        all_of(seq, Str, |s| super::identifier_ok(s))
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(str);
    wrong_otherwise!(map);
}

/// `should_remove`: `null` is false.
struct Flag;

seed_of_itself!(Flag);

impl<'de> Visitor<'de> for Flag {
    type Value = Field<bool>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Value(false))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Field::Value(b))
    }
    wrong_otherwise!(numbers);
    wrong_otherwise!(str);
    wrong_otherwise!(seq);
    wrong_otherwise!(map);
}

/// One alias object: exactly `alias_name` and `alias_label`, both
/// non-empty strings.
#[derive(Clone, Copy)]
struct AliasSeed;

seed_of_itself!(AliasSeed);

impl<'de> Visitor<'de> for AliasSeed {
    type Value = Field<Alias>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut label, mut other) = (Field::Absent, Field::Absent, false);
        while let Some(k) = map.next_key::<KeyName>()? {
            match k {
                KeyName::AliasName => name = map.next_value_seed(Str)?,
                KeyName::AliasLabel => label = map.next_value_seed(Str)?,
                _ => {
                    map.next_value::<Drain>()?;
                    other = true;
                }
            }
        }
        Ok(match (name, label) {
            (Field::Value(alias_name), Field::Value(alias_label))
                if !other
                    && super::identifier_ok(&alias_name)
                    && super::identifier_ok(&alias_label) =>
            {
                Field::Value(Alias {
                    alias_name,
                    alias_label,
                })
            }
            _ => Field::Wrong,
        })
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(str);
    wrong_otherwise!(unit);
    wrong_otherwise!(seq);
}

/// An alias array: `null` is empty.
struct AliasList;

seed_of_itself!(AliasList);

impl<'de> Visitor<'de> for AliasList {
    type Value = Field<Vec<Alias>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Value(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        all_of(seq, AliasSeed, |_| true)
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(str);
    wrong_otherwise!(map);
}

/// One `cohort_changes` object: only the keys `user_ids`, `device_ids`,
/// `aliases` and `should_remove`, each of its shape. Any other key is
/// refused: a typo such as `shouldRemove` must not silently add instead
/// of remove.
#[derive(Clone, Copy)]
struct ChangeSeed;

seed_of_itself!(ChangeSeed);

impl<'de> Visitor<'de> for ChangeSeed {
    type Value = Field<CohortChange>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut user_ids = Field::Absent;
        let mut device_ids = Field::Absent;
        let mut aliases = Field::Absent;
        let mut remove = Field::Absent;
        let mut other = false;
        while let Some(k) = map.next_key::<KeyName>()? {
            match k {
                KeyName::UserIds => user_ids = map.next_value_seed(Ids)?,
                KeyName::DeviceIds => device_ids = map.next_value_seed(Ids)?,
                KeyName::Aliases => aliases = map.next_value_seed(AliasList)?,
                KeyName::ShouldRemove => remove = map.next_value_seed(Flag)?,
                _ => {
                    map.next_value::<Drain>()?;
                    other = true;
                }
            }
        }
        /// An absent key reads as its empty value.
        fn or_empty<T: Default>(f: Field<T>) -> Option<T> {
            match f {
                Field::Absent => Some(T::default()),
                Field::Wrong => None,
                Field::Value(v) => Some(v),
            }
        }
        let change = (|| {
            if other {
                return None;
            }
            Some(CohortChange {
                should_remove: or_empty(remove)?,
                user_ids: or_empty(user_ids)?,
                device_ids: or_empty(device_ids)?,
                aliases: or_empty(aliases)?,
            })
        })();
        Ok(change.map_or(Field::Wrong, Field::Value))
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(str);
    wrong_otherwise!(unit);
    wrong_otherwise!(seq);
}

/// `cohort_changes`: an array of change objects (`null` is wrong).
struct Changes;

seed_of_itself!(Changes);

impl<'de> Visitor<'de> for Changes {
    type Value = Field<Vec<CohortChange>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        all_of(seq, ChangeSeed, |_| true)
    }
    wrong_otherwise!(scalars);
    wrong_otherwise!(str);
    wrong_otherwise!(unit);
    wrong_otherwise!(map);
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Read;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let mut b = Body::default();
        while let Some(k) = map.next_key::<KeyName>()? {
            match k {
                KeyName::PartnerApiKey => b.partner_api_key = map.next_value_seed(Str)?,
                KeyName::ClientSecret => b.client_secret = map.next_value_seed(Str)?,
                KeyName::CohortId => b.cohort_id = map.next_value_seed(Str)?,
                KeyName::Name => b.name = map.next_value_seed(Str)?,
                KeyName::CreatedAt => b.created_at = map.next_value_seed(Str)?,
                KeyName::CohortChanges => b.cohort_changes = map.next_value_seed(Changes)?,
                _ => {
                    map.next_value::<Drain>()?;
                }
            }
        }
        Ok(Read::Object(b))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Read, E> {
        Ok(Read::Not("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Read, E> {
        Ok(Read::Not("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Read, E> {
        Ok(Read::Not("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Read, E> {
        Ok(Read::Not("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Read, E> {
        Ok(Read::Not("a string"))
    }
    fn visit_unit<E>(self) -> Result<Read, E> {
        Ok(Read::Not("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Read, A::Error> {
        drain_seq(seq).map(|()| Read::Not("an array"))
    }
}

#[cfg(test)]
mod tests {
    //! The reading a JSON tree gives (the parsers as they were before this
    //! module) is the model: on random bodies, near-valid and not, both
    //! must give the same request or the same error.

    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::super::{
        identifier_ok, parse_cohort_request, parse_created_at, parse_delete_request,
        parse_users_request, texts, CohortRequest, Credentials, DeleteRequest, ProtocolError,
        UsersRequest, MAX_IDENTIFIERS,
    };
    use crate::cohorts::{Alias, CohortChange};

    fn bad(errors: Vec<String>) -> ProtocolError {
        ProtocolError::BadRequest {
            message: errors.first().cloned().unwrap_or_default(),
            errors,
        }
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    fn object(body: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            bad(vec![if body.iter().all(u8::is_ascii_whitespace) {
                "request body is empty: expected a JSON object".to_string()
            } else {
                format!("request body is not valid JSON: {e}")
            }])
        })?;
        match value {
            Value::Object(m) => Ok(m),
            other => Err(bad(vec![format!(
                "request body must be a JSON object, found {}",
                kind(&other)
            )])),
        }
    }

    fn credentials(m: &Map<String, Value>) -> Result<Credentials, ProtocolError> {
        let get = |k: &str| match m.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        Ok(Credentials {
            partner_api_key: get("partner_api_key")
                .ok_or(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY))?,
            client_secret: get("client_secret")
                .ok_or(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET))?,
        })
    }

    fn cohort_id(m: &Map<String, Value>, errors: &mut Vec<String>) -> String {
        match m.get("cohort_id") {
            Some(Value::String(s)) if crate::cohorts::check_cohort_id(s).is_ok() => s.clone(),
            _ => {
                errors.push(texts::COHORT_ID.into());
                String::new()
            }
        }
    }

    fn strings(v: Option<&Value>) -> Option<Vec<String>> {
        match v {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) if identifier_ok(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            Some(_) => None,
        }
    }

    fn aliases(v: Option<&Value>) -> Option<Vec<Alias>> {
        match v {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    let o = i.as_object()?;
                    let name = o.get("alias_name")?.as_str()?;
                    let label = o.get("alias_label")?.as_str()?;
                    if !identifier_ok(name) || !identifier_ok(label) || o.len() != 2 {
                        return None;
                    }
                    Some(Alias {
                        alias_name: name.to_string(),
                        alias_label: label.to_string(),
                    })
                })
                .collect(),
            Some(_) => None,
        }
    }

    fn change(v: &Value) -> Option<CohortChange> {
        const KEYS: [&str; 4] = ["user_ids", "device_ids", "aliases", "should_remove"];
        let o = v.as_object()?;
        if o.keys().any(|k| !KEYS.contains(&k.as_str())) {
            return None;
        }
        let should_remove = match o.get("should_remove") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return None,
        };
        Some(CohortChange {
            user_ids: strings(o.get("user_ids"))?,
            device_ids: strings(o.get("device_ids"))?,
            aliases: aliases(o.get("aliases"))?,
            should_remove,
        })
    }

    fn users_model(body: &[u8]) -> Result<UsersRequest, ProtocolError> {
        let m = object(body)?;
        let credentials = credentials(&m)?;
        let mut errors = Vec::new();
        let cohort_id = cohort_id(&m, &mut errors);
        let changes = match m.get("cohort_changes") {
            Some(Value::Array(items)) => items.iter().map(change).collect::<Option<Vec<_>>>(),
            _ => None,
        };
        let cohort_changes = match changes {
            Some(c) => {
                if c.iter().map(CohortChange::identifiers).sum::<usize>() > MAX_IDENTIFIERS {
                    errors.push(texts::TOO_MANY.into());
                }
                c
            }
            None => {
                errors.push(texts::COHORT_CHANGES.into());
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(bad(errors));
        }
        Ok(UsersRequest {
            credentials,
            cohort_id,
            cohort_changes,
        })
    }

    fn cohort_model(body: &[u8]) -> Result<CohortRequest, ProtocolError> {
        let m = object(body)?;
        let credentials = credentials(&m)?;
        let mut errors = Vec::new();
        let cohort_id = cohort_id(&m, &mut errors);
        let name = match m.get("name") {
            Some(Value::String(s)) if crate::cohorts::check_cohort_name(s).is_ok() => s.clone(),
            _ => {
                errors.push(texts::NAME.into());
                String::new()
            }
        };
        let created_at = match m.get("created_at") {
            Some(Value::String(s)) => parse_created_at(s),
            _ => None,
        };
        if created_at.is_none() {
            errors.push(texts::CREATED_AT.into());
        }
        match created_at {
            Some(created_at) if errors.is_empty() => Ok(CohortRequest {
                credentials,
                cohort_id,
                name,
                created_at,
            }),
            _ => Err(bad(errors)),
        }
    }

    fn delete_model(body: &[u8]) -> Result<DeleteRequest, ProtocolError> {
        let m = object(body)?;
        let credentials = credentials(&m)?;
        let mut errors = Vec::new();
        let cohort_id = cohort_id(&m, &mut errors);
        if !errors.is_empty() {
            return Err(bad(errors));
        }
        Ok(DeleteRequest {
            credentials,
            cohort_id,
        })
    }

    /// JSON text of any value, from a small set of scalars and the
    /// protocol's keys, nested a few levels.
    fn any_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("-3".to_string()),
            Just("1.5e3".to_string()),
            Just("1e400".to_string()),
            Just("18446744073709551616".to_string()),
            Just(r#""""#.to_string()),
            Just(r#""u1""#.to_string()),
            Just(r#""c\u00e9""#.to_string()),
            Just(r#""\ud800""#.to_string()),
            Just(r#""a\"b""#.to_string()),
            Just(r#""2021-01-21T19:20:30Z""#.to_string()),
            Just(r#""email""#.to_string()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                    let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", kv.join(","))
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "partner_api_key",
            "client_secret",
            "cohort_id",
            "name",
            "created_at",
            "cohort_changes",
            "user_ids",
            "device_ids",
            "aliases",
            "should_remove",
            "alias_name",
            "alias_label",
            "shouldRemove",
            "",
            "user\\u005fids",
        ])
        .prop_map(|k| format!("\"{k}\""))
    }

    fn ids() -> impl Strategy<Value = String> {
        let few = prop::collection::vec(
            prop_oneof![
                8 => (0u32..50).prop_map(|i| format!("\"u{i}\"")),
                1 => Just("\"\"".to_string()),
                1 => any_json(),
            ],
            0..6,
        );
        // Around the 1,000 identifiers a request may carry.
        let many = (995usize..1010).prop_map(|n| (0..n).map(|i| format!("\"u{i}\"")).collect());
        prop_oneof![16 => few, 4 => many].prop_map(|v: Vec<String>| format!("[{}]", v.join(",")))
    }

    fn alias() -> impl Strategy<Value = String> {
        let field = |k: &'static str| {
            prop_oneof![
                6 => (0u32..5).prop_map(move |i| format!("\"{k}\":\"v{i}\"")),
                1 => Just(format!("\"{k}\":\"\"")),
                1 => any_json().prop_map(move |v| format!("\"{k}\":{v}")),
                1 => (key(), any_json()).prop_map(|(k, v)| format!("{k}:{v}")),
            ]
        };
        prop::collection::vec(prop_oneof![field("alias_name"), field("alias_label")], 0..4)
            .prop_map(|f| format!("{{{}}}", f.join(",")))
    }

    fn change_json() -> impl Strategy<Value = String> {
        let entry = prop_oneof![
            4 => ids().prop_map(|v| format!("\"user_ids\":{v}")),
            2 => ids().prop_map(|v| format!("\"device_ids\":{v}")),
            2 => prop::collection::vec(alias(), 0..3)
                .prop_map(|v| format!("\"aliases\":[{}]", v.join(","))),
            2 => prop_oneof![Just("true"), Just("false"), Just("null"), Just("1")]
                .prop_map(|v| format!("\"should_remove\":{v}")),
            1 => (key(), any_json()).prop_map(|(k, v)| format!("{k}:{v}")),
        ];
        prop::collection::vec(entry, 0..4).prop_map(|e| format!("{{{}}}", e.join(",")))
    }

    /// A body near a valid request: the protocol's fields, mostly of the
    /// right shape, sometimes wrong, repeated or joined by others; and
    /// sometimes cut short or not an object at all.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let string = |k: &'static str, good: &'static [&'static str]| {
            prop_oneof![
                6 => prop::sample::select(good.to_vec()).prop_map(move |v| format!("\"{k}\":\"{v}\"")),
                1 => any_json().prop_map(move |v| format!("\"{k}\":{v}")),
            ]
        };
        let changes = prop_oneof![
            6 => prop::collection::vec(change_json(), 0..3)
                .prop_map(|c| format!("\"cohort_changes\":[{}]", c.join(","))),
            1 => any_json().prop_map(|v| format!("\"cohort_changes\":{v}")),
        ];
        let extra = prop_oneof![
            string("partner_api_key", &["pk", ""]),
            string("client_secret", &["sk", ""]),
            string("cohort_id", &["c1", ""]),
            changes.clone(),
            (key(), any_json()).prop_map(|(k, v)| format!("{k}:{v}")),
        ];
        let object = (
            string("partner_api_key", &["pk", "pk", "pk", ""]),
            string("client_secret", &["sk", "sk", "sk", ""]),
            string("cohort_id", &["c1", "c2", "c2", ""]),
            string("name", &["Power users", "Power users", ""]),
            string(
                "created_at",
                &[
                    "2021-01-21T19:20:30Z",
                    "2021-01-21T19:20+05:00",
                    "yesterday",
                ],
            ),
            changes,
            prop::collection::vec(extra, 0..3),
            0usize..6,
        )
            .prop_map(|(a, b, c, d, e, f, extra, drop)| {
                let mut v = vec![a, b, c, d, e, f];
                // Sometimes a field is missing.
                if drop < v.len() && extra.len() == 2 {
                    v.remove(drop);
                }
                v.extend(extra);
                v
            })
            .prop_shuffle()
            .prop_map(|e| format!("{{{}}}", e.join(",")));
        (
            prop_oneof![8 => object, 1 => any_json(), 1 => Just(" ".to_string())],
            prop_oneof![
                12 => Just(None),
                1 => any::<usize>().prop_map(Some),
            ],
            prop_oneof![
                12 => Just(None),
                1 => (any::<usize>(), any::<u8>()).prop_map(Some),
            ],
        )
            .prop_map(|(text, cut, poke)| {
                let mut b = text.into_bytes();
                if let Some(c) = cut {
                    b.truncate(c % (b.len() + 1));
                }
                if let Some((at, byte)) = poke {
                    if !b.is_empty() {
                        let at = at % b.len();
                        b[at] = byte;
                    }
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Every request kind reads a random body exactly as the tree did.
        #[test]
        fn reads_bodies_as_a_json_tree_does(b in body()) {
            prop_assert_eq!(parse_users_request(&b), users_model(&b), "{}", String::from_utf8_lossy(&b));
            prop_assert_eq!(parse_cohort_request(&b), cohort_model(&b), "{}", String::from_utf8_lossy(&b));
            prop_assert_eq!(parse_delete_request(&b), delete_model(&b), "{}", String::from_utf8_lossy(&b));
        }
    }

    /// Nesting up to the parser's limit reads the same, and past it is
    /// the same error, wherever the nesting is.
    #[test]
    fn nesting_reads_as_a_tree_does_up_to_and_past_the_limit() {
        for depth in [126, 127, 128, 129, 200] {
            let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            for body in [
                format!(
                    r#"{{"partner_api_key":"pk","client_secret":"sk","cohort_id":"c","x":{deep}}}"#
                ),
                format!(
                    r#"{{"partner_api_key":"pk","client_secret":"sk","cohort_id":"c","cohort_changes":[{{"user_ids":{deep}}}]}}"#
                ),
                format!(
                    r#"{{"partner_api_key":"pk","client_secret":"sk","cohort_id":"c","cohort_changes":[{{"aliases":[{{"alias_name":{deep},"alias_label":"e"}}]}}]}}"#
                ),
            ] {
                let b = body.as_bytes();
                assert_eq!(parse_users_request(b), users_model(b), "depth {depth}");
                assert_eq!(parse_delete_request(b), delete_model(b), "depth {depth}");
            }
        }
    }

    /// serde_json's private raw-value key is an ordinary key here (the
    /// one reading that differs from the tree's, see the module's notes).
    #[test]
    fn the_raw_value_token_is_an_ordinary_key() {
        let token = "$serde_json::private::RawValue";
        let inner = r#"{\"partner_api_key\":\"pk\",\"client_secret\":\"sk\",\"cohort_id\":\"c1\"}"#;
        let body = format!(r#"{{"{token}":"{inner}"}}"#);
        assert_eq!(
            parse_delete_request(body.as_bytes()),
            Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY))
        );
        let body = format!(
            r#"{{"partner_api_key":"pk","client_secret":"sk","cohort_id":"c1","{token}":1}}"#
        );
        assert_eq!(
            parse_delete_request(body.as_bytes()).map(|r| r.cohort_id),
            Ok("c1".to_string())
        );
        let body = format!(
            r#"{{"partner_api_key":"pk","client_secret":"sk","cohort_id":"c1","cohort_changes":[{{"{token}":"{{}}"}}]}}"#
        );
        assert_eq!(
            parse_users_request(body.as_bytes()),
            Err(bad(vec![texts::COHORT_CHANGES.into()]))
        );
    }

    /// The generator reaches valid requests of every kind, and refusals of
    /// each shape (else the comparison above would say little).
    #[test]
    fn the_bodies_reach_valid_and_refused_requests() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut users_ok, mut cohort_ok, mut delete_ok, mut changes_bad, mut not_json) =
            (0, 0, 0, 0, 0);
        let mut too_many = 0;
        for _ in 0..4000 {
            let b = body().new_tree(&mut runner).unwrap().current();
            users_ok += usize::from(users_model(&b).is_ok());
            cohort_ok += usize::from(cohort_model(&b).is_ok());
            delete_ok += usize::from(delete_model(&b).is_ok());
            if let Err(ProtocolError::BadRequest { errors, .. }) = users_model(&b) {
                changes_bad += usize::from(errors.iter().any(|e| e == texts::COHORT_CHANGES));
                not_json += usize::from(errors[0].contains("not valid JSON"));
                too_many += usize::from(errors.iter().any(|e| e == texts::TOO_MANY));
            }
        }
        for (what, n, least) in [
            ("valid users requests", users_ok, 100),
            ("valid cohort requests", cohort_ok, 100),
            ("valid delete requests", delete_ok, 100),
            ("refused cohort_changes", changes_bad, 100),
            ("bodies that are not JSON", not_json, 100),
            ("bodies with too many identifiers", too_many, 10),
        ] {
            assert!(n >= least, "only {n} {what} in 4,000 bodies");
        }
    }
}
