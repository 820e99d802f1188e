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
