//! The header: format constants, bounds-checked field readers, and
//! [`BitmapView::parse`], which validates everything the header determines
//! (see the module docs of [`crate::bitmap_view`]).

use super::bitmap::BITMAP_BYTES;
use super::{BitmapView, ViewError};

/// Cookie of a bitmap without run containers.
pub const SERIAL_COOKIE_NO_RUNCONTAINER: u32 = 12346;
/// Low 16 bits of the cookie of a bitmap with run containers.
pub const SERIAL_COOKIE: u16 = 12347;
/// With run containers, the offset header is present only from this many
/// containers on.
pub const NO_OFFSET_THRESHOLD: usize = 4;
/// Largest cardinality stored as an array container (without the run flag).
pub const ARRAY_MAX_CARDINALITY: u32 = 4096;
/// Most containers a bitmap can have (one per key).
pub const MAX_CONTAINERS: usize = 1 << 16;

#[inline]
fn need(bytes: &[u8], offset: usize, len: usize, what: &'static str) -> Result<(), ViewError> {
    let found = bytes.len().saturating_sub(offset);
    if found < len {
        return Err(ViewError::Truncated {
            what,
            offset,
            expected: len,
            found,
        });
    }
    Ok(())
}

#[inline]
fn try_u16(bytes: &[u8], offset: usize, what: &'static str) -> Result<u16, ViewError> {
    need(bytes, offset, 2, what)?;
    Ok(le_u16(bytes, offset))
}

#[inline]
fn try_u32(bytes: &[u8], offset: usize, what: &'static str) -> Result<u32, ViewError> {
    need(bytes, offset, 4, what)?;
    Ok(le_u32(bytes, offset))
}

/// Reads a u16 at a position that the caller has already bounds-checked.
#[inline(always)]
pub(super) fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

#[inline(always)]
pub(super) fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offsets {
    /// Position of the offset header (validated against the layout).
    Header(usize),
    /// Computed offsets when the format omits the header (< 4 containers).
    Inline([usize; NO_OFFSET_THRESHOLD - 1]),
}

/// What [`BitmapView::parse`] found in a bitmap's header, without the
/// bytes: the owner of immutable bytes keeps it, so that later views of
/// the same bytes ([`BitmapView::with_header`]) skip the O(containers)
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    size: usize,
    count: usize,
    run_bitset: Option<usize>,
    desc: usize,
    offsets: Offsets,
    len: u64,
}

impl<'a> BitmapView<'a> {
    /// The header this view was parsed with.
    pub fn header(&self) -> Header {
        Header {
            size: self.bytes.len(),
            count: self.count,
            run_bitset: self.run_bitset,
            desc: self.desc,
            offsets: self.offsets,
            len: self.len,
        }
    }

    /// A view of `bytes` with the header that [`BitmapView::parse`] found in
    /// these same bytes before (the bytes are not read again). Bytes
    /// shorter than the parsed bitmap are refused; a header taken from
    /// other bytes gives wrong answers, never an out-of-bounds read.
    pub fn with_header(bytes: &'a [u8], h: Header) -> Result<Self, ViewError> {
        need(bytes, 0, h.size, "bitmap of a parsed header")?;
        Ok(Self {
            bytes: &bytes[..h.size],
            count: h.count,
            run_bitset: h.run_bitset,
            desc: h.desc,
            offsets: h.offsets,
            len: h.len,
        })
    }

    /// Parses and validates the header of the bitmap at the start of `bytes`.
    ///
    /// O(number of containers), no allocation. Trailing bytes are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ViewError> {
        let cookie = try_u32(bytes, 0, "cookie")?;
        let (count, run_bitset, mut pos) = if cookie == SERIAL_COOKIE_NO_RUNCONTAINER {
            let n = try_u32(bytes, 4, "container count")?;
            if n as usize > MAX_CONTAINERS {
                return Err(ViewError::TooManyContainers {
                    offset: 4,
                    expected: MAX_CONTAINERS as u64,
                    found: u64::from(n),
                });
            }
            (n as usize, None, 8usize)
        } else if cookie as u16 == SERIAL_COOKIE {
            let n = (cookie >> 16) as usize + 1;
            let bitset_len = n.div_ceil(8);
            need(bytes, 4, bitset_len, "run bitset")?;
            if !n.is_multiple_of(8) {
                let at = 4 + bitset_len - 1;
                let allowed = (1u8 << (n % 8)) - 1;
                let found = bytes[at];
                if found & !allowed != 0 {
                    return Err(ViewError::RunBitsetPadding {
                        offset: at,
                        expected: allowed,
                        found,
                    });
                }
            }
            (n, Some(4usize), 4 + bitset_len)
        } else {
            return Err(ViewError::BadCookie {
                offset: 0,
                found: cookie,
            });
        };

        let desc = pos;
        need(bytes, desc, 4 * count, "key/cardinality header")?;
        pos += 4 * count;
        let has_offset_header = run_bitset.is_none() || count >= NO_OFFSET_THRESHOLD;
        let offsets_at = pos;
        if has_offset_header {
            need(bytes, offsets_at, 4 * count, "offset header")?;
            pos += 4 * count;
        }

        let is_run = |i: usize| match run_bitset {
            Some(at) => bytes[at + i / 8] >> (i % 8) & 1 == 1,
            None => false,
        };
        let mut inline = [0usize; NO_OFFSET_THRESHOLD - 1];
        let mut len = 0u64;
        let mut previous: Option<u16> = None;
        for i in 0..count {
            let key = le_u16(bytes, desc + 4 * i);
            let card = u32::from(le_u16(bytes, desc + 4 * i + 2)) + 1;
            if let Some(previous) = previous {
                if key <= previous {
                    return Err(ViewError::KeysNotIncreasing {
                        offset: desc + 4 * i,
                        index: i,
                        previous,
                        found: key,
                    });
                }
            }
            previous = Some(key);
            if has_offset_header {
                let at = offsets_at + 4 * i;
                let found = le_u32(bytes, at);
                if found as usize != pos {
                    return Err(ViewError::BadOffset {
                        offset: at,
                        index: i,
                        expected: pos as u64,
                        found,
                    });
                }
            } else {
                // Only reached with count < NO_OFFSET_THRESHOLD, so always Some.
                if let Some(slot) = inline.get_mut(i) {
                    *slot = pos;
                }
            }
            let size = if is_run(i) {
                let runs = try_u16(bytes, pos, "run count")?;
                if runs == 0 || u32::from(runs) > card {
                    return Err(ViewError::BadRunCount {
                        offset: pos,
                        index: i,
                        expected_max: card,
                        found: runs,
                    });
                }
                2 + 4 * usize::from(runs)
            } else if card <= ARRAY_MAX_CARDINALITY {
                2 * card as usize
            } else {
                BITMAP_BYTES
            };
            need(bytes, pos, size, "container")?;
            pos += size;
            len += u64::from(card);
        }

        Ok(Self {
            bytes: &bytes[..pos],
            count,
            run_bitset,
            desc,
            offsets: if has_offset_header {
                Offsets::Header(offsets_at)
            } else {
                Offsets::Inline(inline)
            },
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap_view::tests::{edges_bytes, fixtures, misaligned, runs_few_bytes, serialize};

    #[test]
    fn every_truncation_is_an_error() {
        for (name, rb) in fixtures() {
            let bytes = serialize(&rb);
            let (buf, pad) = misaligned(&bytes);
            for cut in 0..bytes.len() {
                let err = BitmapView::parse(&buf[pad..pad + cut]);
                assert!(
                    matches!(err, Err(ViewError::Truncated { .. })),
                    "{name} cut at {cut}: {err:?}"
                );
            }
            assert!(BitmapView::parse(&buf[pad..pad + bytes.len()]).is_ok());
        }
    }

    // ---- malformed headers: each error, with its fields ----

    #[test]
    fn bad_cookie() {
        let mut bytes = edges_bytes();
        bytes[0] ^= 0xFF;
        assert!(matches!(
            BitmapView::parse(&bytes),
            Err(ViewError::BadCookie { offset: 0, .. })
        ));
        // 12346 in the low bits with a non-zero high half is not a cookie.
        bytes = edges_bytes();
        bytes[2] = 1;
        assert!(matches!(
            BitmapView::parse(&bytes),
            Err(ViewError::BadCookie { .. })
        ));
        assert!(matches!(
            BitmapView::parse(&[]),
            Err(ViewError::Truncated {
                offset: 0,
                expected: 4,
                found: 0,
                ..
            })
        ));
    }

    #[test]
    fn too_many_containers() {
        let mut bytes = edges_bytes();
        bytes[4..8].copy_from_slice(&65537u32.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::TooManyContainers {
                offset: 4,
                expected: 65536,
                found: 65537
            }
        );
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BitmapView::parse(&bytes).is_err());
    }

    #[test]
    fn keys_must_increase() {
        // Containers: keys 0, 1, 3, 4 (4 containers, no runs).
        let mut bytes = edges_bytes();
        assert_eq!(le_u32(&bytes, 4), 4);
        bytes[8 + 4 * 2..8 + 4 * 2 + 2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::KeysNotIncreasing {
                offset: 16,
                index: 2,
                previous: 1,
                found: 1
            }
        );
    }

    #[test]
    fn offsets_must_match_layout() {
        let mut bytes = edges_bytes();
        let at = 8 + 4 * 4 + 4; // offset of container 1
        let good = le_u32(&bytes, at);
        bytes[at..at + 4].copy_from_slice(&(good + 2).to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::BadOffset {
                offset: at,
                index: 1,
                expected: u64::from(good),
                found: good + 2
            }
        );
    }

    #[test]
    fn cardinality_past_the_end_is_truncation() {
        let mut bytes = edges_bytes();
        // Container 3 (last) claims 3 values but has 2 bytes.
        bytes[8 + 4 * 3 + 2] = 2;
        let err = BitmapView::parse(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                ViewError::Truncated {
                    what: "container",
                    expected: 6,
                    found: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn run_bitset_padding_and_run_count() {
        let mut bytes = runs_few_bytes();
        // 2 containers: bitset is byte 4, only bits 0b11 may be set.
        assert_eq!(bytes[4], 0b11);
        bytes[4] |= 0b100;
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::RunBitsetPadding {
                offset: 4,
                expected: 0b11,
                found: 0b111
            }
        );
        // Containers start at 4 + 1 + 2 * 4 = 13 (no offset header).
        let mut bytes = runs_few_bytes();
        bytes[13..15].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::BadRunCount {
                offset: 13,
                index: 0,
                expected_max: 4991,
                found: 0
            }
        );
    }

    #[test]
    fn error_messages_name_the_field() {
        let err = BitmapView::parse(&[0x3A, 0x30, 0, 0, 1, 0, 0, 0]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("key/cardinality header") && msg.contains("byte 8"),
            "{msg}"
        );
    }
}
