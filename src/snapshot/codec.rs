//! The persisted forms shared by the snapshot's meta section and the
//! log's records: bincode 2 (standard configuration), written by hand so
//! that every enum's variants carry an explicit tag.
//!
//! A tag is a varint `u32`, as bincode writes a variant index, so these
//! forms read every file written when they were serde-derived. Tags are
//! append-only: a new variant takes the next unused number, an existing
//! tag never changes meaning, and reordering the declarations (here or in
//! the domain types they mirror) changes nothing on disk. The golden
//! fixtures (`fixtures/log`, `fixtures/snapshot`) fail a test if it does.

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use crate::ids::Partner;

/// The bincode configuration of every persisted form.
pub fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Writes an enum's tag.
pub(crate) fn encode_tag<E: Encoder>(tag: u32, e: &mut E) -> Result<(), EncodeError> {
    tag.encode(e)
}

/// Reads an enum's tag.
pub(crate) fn decode_tag<C, D: Decoder<Context = C>>(d: &mut D) -> Result<u32, DecodeError> {
    u32::decode(d)
}

/// The error of a tag no variant of `what` carries.
pub(crate) fn unknown_tag(what: &'static str, tag: u32) -> DecodeError {
    DecodeError::OtherString(format!("unknown {what} tag {tag}"))
}

/// A partner's persisted tag (exhaustive: a new partner must be given one).
pub(crate) fn partner_tag(p: Partner) -> u32 {
    match p {
        Partner::Amplitude => 0,
        Partner::Mixpanel => 1,
        Partner::Heap => 2,
        Partner::Census => 3,
        Partner::Hightouch => 4,
        Partner::Segment => 5,
        Partner::Kubit => 6,
        Partner::Tinyclues => 7,
    }
}

/// Writes a partner as its tag.
pub(crate) fn encode_partner<E: Encoder>(p: Partner, e: &mut E) -> Result<(), EncodeError> {
    encode_tag(partner_tag(p), e)
}

/// Reads a partner's tag.
pub(crate) fn decode_partner<C, D: Decoder<Context = C>>(
    d: &mut D,
) -> Result<Partner, DecodeError> {
    let tag = decode_tag(d)?;
    Partner::ALL
        .into_iter()
        .find(|&p| partner_tag(p) == tag)
        .ok_or_else(|| unknown_tag("partner", tag))
}

/// Writes a sequence: its length, then each item.
pub(crate) fn encode_seq<E: Encoder, T>(
    items: &[T],
    e: &mut E,
    mut item: impl FnMut(&T, &mut E) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    (items.len() as u64).encode(e)?;
    items.iter().try_for_each(|x| item(x, e))
}

/// Reads a sequence written by [`encode_seq`]. A corrupt length runs out
/// of input instead of allocating it.
pub(crate) fn decode_seq<C, D: Decoder<Context = C>, T>(
    d: &mut D,
    mut item: impl FnMut(&mut D) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = u64::decode(d)?;
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        out.push(item(d)?);
    }
    Ok(out)
}

/// A comparison on the random bucket, as persisted (mirrors
/// `segment::BucketCmp`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PBucketCmp {
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

impl PBucketCmp {
    /// The tag of [`PBucketCmp::Lt`].
    pub const LT: u32 = 0;
    /// The tag of [`PBucketCmp::Le`].
    pub const LE: u32 = 1;
    /// The tag of [`PBucketCmp::Gt`].
    pub const GT: u32 = 2;
    /// The tag of [`PBucketCmp::Ge`].
    pub const GE: u32 = 3;
    /// The tag of [`PBucketCmp::Between`].
    pub const BETWEEN: u32 = 4;
}

impl Encode for PBucketCmp {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        match *self {
            PBucketCmp::Lt(v) => (Self::LT, v).encode(e),
            PBucketCmp::Le(v) => (Self::LE, v).encode(e),
            PBucketCmp::Gt(v) => (Self::GT, v).encode(e),
            PBucketCmp::Ge(v) => (Self::GE, v).encode(e),
            PBucketCmp::Between(lo, hi) => (Self::BETWEEN, lo, hi).encode(e),
        }
    }
}

impl<C> Decode<C> for PBucketCmp {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(match decode_tag(d)? {
            Self::LT => PBucketCmp::Lt(u16::decode(d)?),
            Self::LE => PBucketCmp::Le(u16::decode(d)?),
            Self::GT => PBucketCmp::Gt(u16::decode(d)?),
            Self::GE => PBucketCmp::Ge(u16::decode(d)?),
            Self::BETWEEN => PBucketCmp::Between(u16::decode(d)?, u16::decode(d)?),
            tag => return Err(unknown_tag("bucket comparison", tag)),
        })
    }
}

/// A segment filter, as persisted (mirrors `segment::Filter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PFilter {
    /// A cohort test.
    Cohort {
        /// The cohort's partner.
        partner: Partner,
        /// Its cohort_id.
        cohort: String,
        /// `includes_value` (true) or `does_not_include_value`.
        includes: bool,
    },
    /// A random-bucket test.
    Bucket(PBucketCmp),
    /// Every child holds (none: every user).
    And(Vec<PFilter>),
    /// Some child holds (none: nobody).
    Or(Vec<PFilter>),
    /// The child does not hold.
    Not(Box<PFilter>),
    /// A custom attribute test.
    Attribute {
        /// The attribute.
        attribute: String,
        /// The comparison.
        cmp: PAttrCmp,
    },
    /// A saved segment reference.
    Segment {
        /// The saved segment's id.
        id: String,
        /// `in_segment` (true) or `not_in_segment`.
        included: bool,
    },
}

/// A number as persisted: `mantissa × 10^-scale`.
pub type PNumber = (i64, u8);

/// The most decimal places a persisted number has (the filter parsers'
/// bound).
pub const MAX_NUMBER_SCALE: u8 = 18;
/// The times a persisted filter holds: years 0000 to 9999, in seconds.
pub const TIME_RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;

/// A custom attribute comparison, as persisted (mirrors
/// `segment::ast::AttrCmp`; tags are append-only like every other).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PAttrCmp {
    Equals(String),
    DoesNotEqual(String),
    IsAnyOf(Vec<String>),
    MatchesRegex(String),
    StartsWith(String),
    Exists,
    DoesNotExist,
    Eq(PNumber),
    Ne(PNumber),
    Lt(PNumber),
    Le(PNumber),
    Gt(PNumber),
    Ge(PNumber),
    Between(PNumber, PNumber),
    IsTrue,
    IsFalse,
    Before(i64),
    After(i64),
    WithinLastDays(u32),
    WithinLastHours(u32),
    MoreThanDaysAgo(u32),
}

impl PAttrCmp {
    /// The tag of each comparison, in declaration order from 0.
    fn tag(&self) -> u32 {
        match self {
            PAttrCmp::Equals(_) => 0,
            PAttrCmp::DoesNotEqual(_) => 1,
            PAttrCmp::IsAnyOf(_) => 2,
            PAttrCmp::MatchesRegex(_) => 3,
            PAttrCmp::StartsWith(_) => 4,
            PAttrCmp::Exists => 5,
            PAttrCmp::DoesNotExist => 6,
            PAttrCmp::Eq(_) => 7,
            PAttrCmp::Ne(_) => 8,
            PAttrCmp::Lt(_) => 9,
            PAttrCmp::Le(_) => 10,
            PAttrCmp::Gt(_) => 11,
            PAttrCmp::Ge(_) => 12,
            PAttrCmp::Between(..) => 13,
            PAttrCmp::IsTrue => 14,
            PAttrCmp::IsFalse => 15,
            PAttrCmp::Before(_) => 16,
            PAttrCmp::After(_) => 17,
            PAttrCmp::WithinLastDays(_) => 18,
            PAttrCmp::WithinLastHours(_) => 19,
            PAttrCmp::MoreThanDaysAgo(_) => 20,
        }
    }
}

impl Encode for PAttrCmp {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        encode_tag(self.tag(), e)?;
        match self {
            PAttrCmp::Equals(v)
            | PAttrCmp::DoesNotEqual(v)
            | PAttrCmp::MatchesRegex(v)
            | PAttrCmp::StartsWith(v) => v.encode(e),
            PAttrCmp::IsAnyOf(v) => v.encode(e),
            PAttrCmp::Exists | PAttrCmp::DoesNotExist | PAttrCmp::IsTrue | PAttrCmp::IsFalse => {
                Ok(())
            }
            PAttrCmp::Eq(n)
            | PAttrCmp::Ne(n)
            | PAttrCmp::Lt(n)
            | PAttrCmp::Le(n)
            | PAttrCmp::Gt(n)
            | PAttrCmp::Ge(n) => n.encode(e),
            PAttrCmp::Between(lo, hi) => (lo, hi).encode(e),
            PAttrCmp::Before(t) | PAttrCmp::After(t) => t.encode(e),
            PAttrCmp::WithinLastDays(n)
            | PAttrCmp::WithinLastHours(n)
            | PAttrCmp::MoreThanDaysAgo(n) => n.encode(e),
        }
    }
}

fn decode_number<C, D: Decoder<Context = C>>(d: &mut D) -> Result<PNumber, DecodeError> {
    let n: PNumber = Decode::decode(d)?;
    if n.1 > MAX_NUMBER_SCALE {
        return Err(DecodeError::OtherString(format!(
            "a number with {} decimal places (at most {MAX_NUMBER_SCALE})",
            n.1
        )));
    }
    Ok(n)
}

fn decode_time<C, D: Decoder<Context = C>>(d: &mut D) -> Result<i64, DecodeError> {
    let t = i64::decode(d)?;
    if !TIME_RANGE.contains(&t) {
        return Err(DecodeError::OtherString(format!(
            "a time {t} out of years 0000 to 9999"
        )));
    }
    Ok(t)
}

impl<C> Decode<C> for PAttrCmp {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(match decode_tag(d)? {
            0 => PAttrCmp::Equals(String::decode(d)?),
            1 => PAttrCmp::DoesNotEqual(String::decode(d)?),
            2 => PAttrCmp::IsAnyOf(decode_seq(d, String::decode)?),
            3 => PAttrCmp::MatchesRegex(String::decode(d)?),
            4 => PAttrCmp::StartsWith(String::decode(d)?),
            5 => PAttrCmp::Exists,
            6 => PAttrCmp::DoesNotExist,
            7 => PAttrCmp::Eq(decode_number(d)?),
            8 => PAttrCmp::Ne(decode_number(d)?),
            9 => PAttrCmp::Lt(decode_number(d)?),
            10 => PAttrCmp::Le(decode_number(d)?),
            11 => PAttrCmp::Gt(decode_number(d)?),
            12 => PAttrCmp::Ge(decode_number(d)?),
            13 => PAttrCmp::Between(decode_number(d)?, decode_number(d)?),
            14 => PAttrCmp::IsTrue,
            15 => PAttrCmp::IsFalse,
            16 => PAttrCmp::Before(decode_time(d)?),
            17 => PAttrCmp::After(decode_time(d)?),
            18 => PAttrCmp::WithinLastDays(u32::decode(d)?),
            19 => PAttrCmp::WithinLastHours(u32::decode(d)?),
            20 => PAttrCmp::MoreThanDaysAgo(u32::decode(d)?),
            tag => return Err(unknown_tag("attribute comparison", tag)),
        })
    }
}

impl PFilter {
    /// The tag of [`PFilter::Cohort`].
    pub const COHORT: u32 = 0;
    /// The tag of [`PFilter::Bucket`].
    pub const BUCKET: u32 = 1;
    /// The tag of [`PFilter::And`].
    pub const AND: u32 = 2;
    /// The tag of [`PFilter::Or`].
    pub const OR: u32 = 3;
    /// The tag of [`PFilter::Not`].
    pub const NOT: u32 = 4;
    /// The tag of [`PFilter::Attribute`].
    pub const ATTRIBUTE: u32 = 5;
    /// The tag of [`PFilter::Segment`].
    pub const SEGMENT: u32 = 6;

    /// How deeply a persisted filter may nest (the root is level 1).
    /// The parsers accept at most 64 levels of parentheses and `not`s
    /// (`segment::text::MAX_DEPTH`) or of JSON nodes, which make trees of
    /// about twice that depth at most; decoding refuses deeper bytes.
    pub const MAX_DEPTH: usize = 256;
}

impl Encode for PFilter {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        match self {
            PFilter::Cohort {
                partner,
                cohort,
                includes,
            } => {
                encode_tag(Self::COHORT, e)?;
                encode_partner(*partner, e)?;
                (cohort, includes).encode(e)
            }
            PFilter::Bucket(b) => (Self::BUCKET, b).encode(e),
            PFilter::And(c) => (Self::AND, c).encode(e),
            PFilter::Or(c) => (Self::OR, c).encode(e),
            PFilter::Not(c) => (Self::NOT, c).encode(e),
            PFilter::Attribute { attribute, cmp } => (Self::ATTRIBUTE, attribute, cmp).encode(e),
            PFilter::Segment { id, included } => (Self::SEGMENT, id, included).encode(e),
        }
    }
}

impl<C> Decode<C> for PFilter {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        decode_filter(d, 1)
    }
}

/// A filter node at `depth` (the root is 1). The depth is checked before
/// going one level further, so bytes that nest without end (a corrupt or
/// crafted file) are an error instead of a stack overflow.
fn decode_filter<C, D: Decoder<Context = C>>(
    d: &mut D,
    depth: usize,
) -> Result<PFilter, DecodeError> {
    if depth > PFilter::MAX_DEPTH {
        return Err(DecodeError::OtherString(format!(
            "a filter nested more than {} levels deep",
            PFilter::MAX_DEPTH
        )));
    }
    let child = |d: &mut D| decode_filter(d, depth + 1);
    Ok(match decode_tag(d)? {
        PFilter::COHORT => PFilter::Cohort {
            partner: decode_partner(d)?,
            cohort: String::decode(d)?,
            includes: bool::decode(d)?,
        },
        PFilter::BUCKET => PFilter::Bucket(PBucketCmp::decode(d)?),
        PFilter::AND => PFilter::And(decode_seq(d, child)?),
        PFilter::OR => PFilter::Or(decode_seq(d, child)?),
        PFilter::NOT => PFilter::Not(Box::new(child(d)?)),
        PFilter::ATTRIBUTE => PFilter::Attribute {
            attribute: String::decode(d)?,
            cmp: PAttrCmp::decode(d)?,
        },
        PFilter::SEGMENT => PFilter::Segment {
            id: String::decode(d)?,
            included: bool::decode(d)?,
        },
        tag => return Err(unknown_tag("filter", tag)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` NOT tags and a bucket leaf, as bincode writes them.
    fn nested_nots(n: usize) -> Vec<u8> {
        let mut bytes = vec![PFilter::NOT as u8; n];
        bytes.extend([PFilter::BUCKET as u8, PBucketCmp::LT as u8, 5]);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<PFilter, DecodeError> {
        bincode::decode_from_slice(bytes, config()).map(|(f, _)| f)
    }

    #[test]
    fn a_deeply_nested_filter_is_an_error_not_a_stack_overflow() {
        let mut f = decode(&nested_nots(PFilter::MAX_DEPTH - 1)).unwrap();
        let mut levels = 1;
        while let PFilter::Not(inner) = f {
            (f, levels) = (*inner, levels + 1);
        }
        assert_eq!(levels, PFilter::MAX_DEPTH);
        let e = decode(&nested_nots(PFilter::MAX_DEPTH)).unwrap_err();
        assert!(e.to_string().contains("nested more than 256 levels"), "{e}");
        let e = decode(&nested_nots(1_000_000)).unwrap_err();
        assert!(e.to_string().contains("nested more than 256 levels"), "{e}");
        // Nested through ANDs (a one-child list each) too.
        let mut bytes = [PFilter::AND as u8, 1].repeat(100_000);
        bytes.extend(nested_nots(0));
        assert!(decode(&bytes).is_err());
    }
}
