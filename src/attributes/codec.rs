//! The attributes section of a snapshot: every attribute with its index.
//!
//! ```text
//! section  = format u32 (1), count u32, attribute*
//! attribute = name string, type u8 (AttrType's tag), index
//! index    = string:  values u32, (value string, bitmap)*   in value order
//!            boolean: has bitmap, true bitmap
//!            integer, decimal, time: base i64, has bitmap, slices u32, bitmap*
//! bitmap   = bytes (length-prefixed) in the portable roaring format
//! ```
//!
//! bincode 2 standard configuration (varint lengths), like the meta
//! section. A new index layout takes a new `format` number; this one is
//! never changed.

use std::ops::Range;

use bincode::Decode;
use roaring::RoaringBitmap;

use super::bsi::Bsi;
use super::index::{Attribute, Index};
use super::{AttrType, Attributes};

/// The layout number this build writes and reads.
const FORMAT: u32 = 1;

fn bitmap_bytes(b: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = b.serialize_into(&mut out);
    out
}

/// The section's bytes (empty when there are no attributes).
pub fn encode(attrs: &Attributes) -> Result<Vec<u8>, String> {
    if attrs.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = bincode::config::standard();
    let mut out = Vec::new();
    let mut put = |v: &dyn Fn(&mut Vec<u8>) -> Result<usize, bincode::error::EncodeError>| {
        v(&mut out).map(|_| ()).map_err(|e| e.to_string())
    };
    let count = attrs.iter().count() as u32;
    put(&|o| bincode::encode_into_std_write((FORMAT, count), o, cfg))?;
    for a in attrs.iter() {
        put(&|o| bincode::encode_into_std_write((a.name(), a.ty().tag()), o, cfg))?;
        // Unchanged since it was loaded: its bytes are what this would write.
        if let Some(b) = a.source_bytes() {
            put(&|o| {
                o.extend_from_slice(b);
                Ok(b.len())
            })?;
            continue;
        }
        match a.index() {
            Index::Strings(_) => {
                let values = a.index().string_values().unwrap_or_default();
                put(&|o| bincode::encode_into_std_write(values.len() as u32, o, cfg))?;
                for (v, m) in &values {
                    put(&|o| bincode::encode_into_std_write((*v, bitmap_bytes(m)), o, cfg))?;
                }
            }
            Index::Booleans { has, truth } => {
                put(&|o| {
                    bincode::encode_into_std_write(
                        (bitmap_bytes(has), bitmap_bytes(truth.bits())),
                        o,
                        cfg,
                    )
                })?;
            }
            Index::Numbers(b) => {
                let (base, has, slices) = b.parts();
                put(&|o| {
                    bincode::encode_into_std_write(
                        (base, bitmap_bytes(has), slices.len() as u32),
                        o,
                        cfg,
                    )
                })?;
                for s in slices {
                    put(&|o| bincode::encode_into_std_write(bitmap_bytes(s), o, cfg))?;
                }
            }
        }
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn get<T: Decode<()>>(&mut self, what: &str) -> Result<T, String> {
        let (v, used) = bincode::decode_from_slice(self.bytes, bincode::config::standard())
            .map_err(|e| format!("attributes section: {what}: {e}"))?;
        self.bytes = &self.bytes[used..];
        Ok(v)
    }

    /// A length or count as bincode's standard configuration writes it
    /// (a byte below 251, else a tag for 2, 4 or 8 little-endian bytes).
    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let cut = || format!("attributes section: {what}: cut short");
        let (&first, rest) = self.bytes.split_first().ok_or_else(cut)?;
        let width = match first {
            0..=250 => {
                self.bytes = rest;
                return Ok(u64::from(first));
            }
            251 => 2,
            252 => 4,
            253 => 8,
            _ => {
                return Err(format!(
                    "attributes section: {what}: bad length tag {first}"
                ))
            }
        };
        let b = rest.get(..width).ok_or_else(cut)?;
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(b);
        self.bytes = &rest[width..];
        Ok(u64::from_le_bytes(le))
    }

    /// A length-prefixed byte string, borrowed.
    fn slice(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.varint(what)?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| format!("attributes section: {what}: cut short"))?;
        let (b, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(b)
    }

    fn bitmap(&mut self, what: &str) -> Result<RoaringBitmap, String> {
        let bytes = self.slice(what)?;
        RoaringBitmap::deserialize_from(bytes)
            .map_err(|e| format!("attributes section: {what}: {e}"))
    }
}

/// The attributes a section holds, every index read now; an error says
/// what is wrong with it. `users` bounds the user ids any bitmap may hold.
pub fn decode(bytes: &[u8], users: u32) -> Result<Attributes, String> {
    let mut out = Attributes::new();
    for (name, ty, range) in directory(bytes)? {
        let index = read_index(&name, ty, &bytes[range], users)?;
        out.insert(Attribute::from_index(name, ty, index));
    }
    Ok(out)
}

/// Every attribute of a section: its name, type, and where its index
/// lies, found by skipping over the index's lengths (nothing decoded).
pub(crate) fn directory(bytes: &[u8]) -> Result<Vec<(String, AttrType, Range<usize>)>, String> {
    let mut out: Vec<(String, AttrType, Range<usize>)> = Vec::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let mut r = Reader { bytes };
    let (format, count): (u32, u32) = r.get("header")?;
    if format != FORMAT {
        return Err(format!(
            "attributes section layout {format} is not supported (this build reads {FORMAT})"
        ));
    }
    let mut names = std::collections::HashSet::new();
    for _ in 0..count {
        let (name, tag): (String, u8) = r.get("attribute")?;
        super::check_name(&name).map_err(|e| format!("attributes section: {e}"))?;
        if !names.insert(name.clone()) {
            return Err(format!(
                "attributes section: attribute {name:?} appears twice"
            ));
        }
        let ty = AttrType::from_tag(tag)
            .ok_or_else(|| format!("attributes section: {name}: unknown type tag {tag}"))?;
        let start = bytes.len() - r.bytes.len();
        match ty {
            AttrType::String => {
                let n = r.varint(&name)?;
                for _ in 0..n {
                    r.slice(&name)?;
                    r.slice(&name)?;
                }
            }
            AttrType::Boolean => {
                r.slice(&name)?;
                r.slice(&name)?;
            }
            AttrType::Integer | AttrType::Decimal | AttrType::Time => {
                r.varint(&name)?;
                r.slice(&name)?;
                let n = r.varint(&name)?;
                if n > 64 {
                    return Err(format!(
                        "attributes section: {name}: {n} bit slices (at most 64)"
                    ));
                }
                for _ in 0..n {
                    r.slice(&name)?;
                }
            }
        }
        out.push((name, ty, start..bytes.len() - r.bytes.len()));
    }
    if !r.bytes.is_empty() {
        return Err(format!(
            "attributes section: {} bytes after the last attribute",
            r.bytes.len()
        ));
    }
    Ok(out)
}

/// One attribute's index from its bytes (the part of the section after
/// its name and type), checked whole: values in order, users below
/// `users`, a user in one value at most, bits only for users with a
/// value.
pub(crate) fn read_index(
    name: &str,
    ty: AttrType,
    bytes: &[u8],
    users: u32,
) -> Result<Index, String> {
    let mut r = Reader { bytes };
    let within = |b: &RoaringBitmap| -> Result<(), String> {
        match b.max() {
            Some(m) if m >= users => Err(format!(
                "attributes section: {name} holds user {m}, past the {users} users"
            )),
            _ => Ok(()),
        }
    };
    let index = match ty {
        AttrType::String => {
            let n: u32 = r.get(name)?;
            let mut values: Vec<(String, RoaringBitmap)> = Vec::new();
            let mut total = 0u64;
            for _ in 0..n {
                let v: String = r.get(name)?;
                let m = r.bitmap(name)?;
                within(&m)?;
                if values.last().is_some_and(|(last, _)| *last >= v) {
                    return Err(format!(
                        "attributes section: {name}: values out of order at {v:?}"
                    ));
                }
                total += m.len();
                values.push((v, m));
            }
            let index = Index::strings(values);
            // The values' members are disjoint when their union holds
            // as many users as they do together.
            if index.has().len() != total {
                return Err(format!("attributes section: {name}: a user has two values"));
            }
            index
        }
        AttrType::Boolean => {
            let has = r.bitmap(name)?;
            let truth = r.bitmap(name)?;
            within(&has)?;
            if !truth.is_subset(&has) {
                return Err(format!(
                    "attributes section: {name}: a user is true without a value"
                ));
            }
            Index::Booleans {
                has,
                truth: std::sync::Arc::new(truth.into()),
            }
        }
        AttrType::Integer | AttrType::Decimal | AttrType::Time => {
            let base: i64 = r.get(name)?;
            let has = r.bitmap(name)?;
            within(&has)?;
            let n: u32 = r.get(name)?;
            if n > 64 {
                return Err(format!(
                    "attributes section: {name}: {n} bit slices (at most 64)"
                ));
            }
            let mut slices = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let s = r.bitmap(name)?;
                if !s.is_subset(&has) {
                    return Err(format!(
                        "attributes section: {name}: a bit set for a user without a value"
                    ));
                }
                slices.push(s);
            }
            Index::Numbers(Bsi::from_parts(base, has, slices))
        }
    };
    if !r.bytes.is_empty() {
        return Err(format!(
            "attributes section: {name}: {} bytes after its index",
            r.bytes.len()
        ));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::AttrValue;

    #[test]
    fn every_type_reads_back_the_same_and_damage_is_an_error() {
        let mut a = Attributes::new();
        for u in 0..300u32 {
            let sets = vec![
                (
                    "country".to_string(),
                    Some(AttrValue::String(["BR", "DE", "AR"][u as usize % 3].into())),
                ),
                (
                    "spend".to_string(),
                    Some(AttrValue::Decimal(i64::from(u) * 1234 - 5000)),
                ),
                (
                    "sub".to_string(),
                    (u % 5 != 0).then_some(AttrValue::Boolean(u % 2 == 0)),
                ),
                (
                    "seen".to_string(),
                    Some(AttrValue::Time(1_700_000_000 + i64::from(u))),
                ),
            ];
            a.set(u, &sets).unwrap();
        }
        a.declare("empty", AttrType::Integer).unwrap();
        let bytes = encode(&a).unwrap();
        let b = decode(&bytes, 300).unwrap();
        for u in 0..300 {
            assert_eq!(a.values_of(u), b.values_of(u));
        }
        assert_eq!(b.get("empty").map(Attribute::ty), Some(AttrType::Integer));
        assert_eq!(encode(&b).unwrap(), bytes);
        // Users past the count, cut bytes, trailing bytes.
        assert!(decode(&bytes, 100)
            .unwrap_err()
            .contains("past the 100 users"));
        assert!(decode(&bytes[..bytes.len() - 3], 300).is_err());
        let mut more = bytes.clone();
        more.push(0);
        assert!(decode(&more, 300)
            .unwrap_err()
            .contains("after the last attribute"));
        assert!(decode(&[], 0).unwrap().is_empty());
    }
}
