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
use super::index::{Attribute, Index, Source};
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
    let mut out = Vec::new();
    for part in encode_in_parts(attrs)? {
        out.extend_from_slice(part.bytes());
    }
    Ok(out)
}

/// A part of the section's bytes, as [`encode_in_parts`] gives them.
pub(crate) enum Part {
    /// Bytes encoded now.
    Encoded(Vec<u8>),
    /// The bytes of an index unchanged since it was read from them, where
    /// they are (in a mapped snapshot's section), checked to lie inside
    /// the section when the part was made.
    Unchanged(Source),
}

impl Part {
    /// Its bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Part::Encoded(b) => b,
            // Checked by `encode_in_parts`; a section's bytes never change.
            Part::Unchanged(source) => &source.bytes.section()[source.range.clone()],
        }
    }
}

/// The section's bytes in parts, one after another: a snapshot writer
/// writes an unchanged index from the mapped section it was read from,
/// with no copy of it made in memory (at 10M users the attributes are the
/// largest section, and a compaction rarely changes them).
pub(crate) fn encode_in_parts(attrs: &Attributes) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    if attrs.is_empty() {
        return Ok(parts);
    }
    let mut out = Vec::new();
    let count = attrs.iter().count() as u32;
    put(&mut out, (FORMAT, count))?;
    for a in attrs.iter() {
        put(&mut out, (a.name(), a.ty().tag()))?;
        // Unchanged since it was loaded: its bytes are what this would write.
        if let Some(source) = a.unchanged_source() {
            // Never an empty index for one that cannot be read: the
            // snapshot is not written.
            source
                .bytes()
                .map_err(|e| format!("attribute {}: {e}", a.name()))?;
            parts.push(Part::Encoded(std::mem::take(&mut out)));
            parts.push(Part::Unchanged(source.clone()));
            continue;
        }
        match a.index() {
            Index::Strings(_) => {
                let values = a.index().string_values().unwrap_or_default();
                put(&mut out, values.len() as u32)?;
                for (v, m) in &values {
                    put(&mut out, (*v, bitmap_bytes(m)))?;
                }
            }
            Index::Booleans { has, truth } => {
                put(&mut out, (bitmap_bytes(has), bitmap_bytes(truth.bits())))?;
            }
            Index::Numbers(b) => {
                let (base, has, slices) = b.parts();
                put(&mut out, (base, bitmap_bytes(has), slices.len() as u32))?;
                for s in slices {
                    put(&mut out, bitmap_bytes(s))?;
                }
            }
        }
    }
    parts.push(Part::Encoded(out));
    Ok(parts)
}

/// Appends `v` as the section's bincode configuration writes it.
fn put(out: &mut Vec<u8>, v: impl bincode::Encode) -> Result<(), String> {
    bincode::encode_into_std_write(v, out, bincode::config::standard())
        .map(drop)
        .map_err(|e| e.to_string())
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

    /// Attributes of every type for 300 users (and an integer declared,
    /// without values).
    fn sample() -> Attributes {
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
        a
    }

    #[test]
    fn every_type_reads_back_the_same_and_damage_is_an_error() {
        let a = sample();
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

    use std::sync::Arc;

    struct Held(Vec<u8>);

    impl crate::attributes::SectionBytes for Held {
        fn section(&self) -> &[u8] {
            &self.0
        }
    }

    /// The bytes of `parts` written from `held` where they are, and all
    /// of them one after another.
    fn shared_and_all(parts: &[Part], held: &Held) -> (usize, Vec<u8>) {
        let (mut shared, mut all) = (0, Vec::new());
        for p in parts {
            if let Part::Unchanged(source) = p {
                if std::ptr::eq(source.bytes.section(), held.0.as_slice()) {
                    shared += source.range.len();
                }
            }
            all.extend_from_slice(p.bytes());
        }
        (shared, all)
    }

    #[test]
    fn unchanged_indexes_are_written_from_their_section_not_copied() {
        let mut a = sample();
        let bytes = encode(&a).unwrap();
        let indexes: usize = directory(&bytes)
            .unwrap()
            .iter()
            .map(|(_, _, r)| r.len())
            .sum();
        let held = Arc::new(Held(bytes.clone()));
        let mut b = Attributes::on_section(held.clone(), 300);
        // Read (as a filter reads it), an index is still unchanged.
        assert_eq!(b.values_of(7), a.values_of(7));
        let (shared, all) = shared_and_all(&encode_in_parts(&b).unwrap(), &held);
        assert_eq!(all, bytes);
        assert_eq!(shared, indexes);
        // A changed index is encoded anew; the others still come from
        // the section.
        let change = [("spend".to_string(), Some(AttrValue::Decimal(-5)))];
        b.set(0, &change).unwrap();
        a.set(0, &change).unwrap();
        let (shared, all) = shared_and_all(&encode_in_parts(&b).unwrap(), &held);
        let spend = directory(&bytes)
            .unwrap()
            .into_iter()
            .find(|(name, _, _)| name == "spend")
            .map(|(_, _, r)| r.len())
            .unwrap();
        assert_eq!(shared, indexes - spend);
        let c = decode(&all, 300).unwrap();
        for u in 0..300 {
            assert_eq!(c.values_of(u), a.values_of(u));
        }
    }

    /// A section whose bytes are cut short after it was listed: what a
    /// broken invariant (a bug, a damaged map) would look like.
    struct Cut(Vec<u8>, std::sync::atomic::AtomicBool);

    impl crate::attributes::SectionBytes for Cut {
        fn section(&self) -> &[u8] {
            let cut = self.1.load(std::sync::atomic::Ordering::Relaxed);
            &self.0[..if cut { 8 } else { self.0.len() }]
        }
    }

    #[test]
    fn an_unchanged_index_outside_its_section_is_an_error_not_an_empty_index() {
        let a = sample();
        let bytes = encode(&a).unwrap();
        let section = Arc::new(Cut(bytes, false.into()));
        let b = Attributes::on_section(section.clone(), 300);
        // Listed while whole; then the section no longer holds the indexes.
        assert_eq!(b.iter().count(), a.iter().count());
        section.1.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = encode_in_parts(&b).err().expect("no parts");
        assert!(e.contains("is not inside the attributes section"), "{e}");
        assert!(encode(&b).is_err());
        // Read, the index is damaged (and named so), not empty.
        let spend = b.get("spend").unwrap();
        assert_eq!(spend.get(7), None);
        let e = spend.damage().expect("damaged");
        assert!(e.contains("spend") && e.contains("is not inside"), "{e}");
    }
}
