//! What a query selects of an attribute's index, in the form the chunk
//! evaluator reads in place: the index's own bitmaps in the portable
//! roaring format, combined per 2^16-user chunk as the query runs, so a
//! query builds no bitmap of the users it selects.
//!
//! The portable copies are made when a query first needs them and kept
//! with the attribute until one of its values changes
//! ([`PortableCache`]), so repeated queries serialize nothing.

use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use roaring::RoaringBitmap;

/// A bitmap in the portable roaring format, shared.
pub type Portable = Arc<[u8]>;

/// `b` in the portable roaring format.
pub fn portable(b: &RoaringBitmap) -> Portable {
    let mut out = Vec::with_capacity(b.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = b.serialize_into(&mut out);
    out.into()
}

/// The users a selection holds, as the chunk evaluator combines them.
#[derive(Clone, PartialEq, Eq)]
pub enum Selection {
    /// The users of any of these bitmaps (none: nobody).
    Union(Vec<Portable>),
    /// The users of the first bitmap not in the second.
    Minus(Portable, Portable),
    /// The users of a bit-sliced index whose offset from its base lies in
    /// `lo..=hi` (an end `None`: unbounded), compared slice by slice
    /// from the top bit (O'Neil and Quass) one chunk at a time.
    Range {
        /// The users with a value.
        has: Portable,
        /// `slices[i]`: the users whose offset has bit `i` set.
        slices: Vec<Portable>,
        /// The lowest offset selected; below every offset a slice can
        /// hold when `None`.
        lo: Option<u64>,
        /// The highest offset selected; `None`: no bound.
        hi: Option<u64>,
    },
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::Union(all) => write!(f, "Union({} bitmaps)", all.len()),
            Selection::Minus(..) => write!(f, "Minus"),
            Selection::Range { slices, lo, hi, .. } => {
                write!(f, "Range({} slices, {lo:?}..={hi:?})", slices.len())
            }
        }
    }
}

impl Selection {
    /// Nobody.
    pub fn nobody() -> Selection {
        Selection::Union(Vec::new())
    }

    /// The users it holds, as one bitmap (for the callers that need them
    /// whole: footprints, peers, tests).
    pub fn to_bitmap(&self) -> RoaringBitmap {
        let read = |p: &Portable| RoaringBitmap::deserialize_from(&p[..]).unwrap_or_default();
        match self {
            Selection::Union(all) => all
                .iter()
                .map(read)
                .fold(RoaringBitmap::new(), |a, b| a | b),
            Selection::Minus(a, b) => read(a) - read(b),
            Selection::Range {
                has,
                slices,
                lo,
                hi,
            } => {
                let has = read(has);
                let slices: Vec<RoaringBitmap> = slices.iter().map(read).collect();
                let le = |c: u64| -> RoaringBitmap {
                    let mut lt = RoaringBitmap::new();
                    let mut eq = has.clone();
                    for (i, s) in slices.iter().enumerate().rev() {
                        if c >> i & 1 == 1 {
                            lt |= &eq - s;
                            eq &= s;
                        } else {
                            eq -= s;
                        }
                    }
                    lt | eq
                };
                let upto = match hi {
                    Some(h) => le(*h),
                    None => has.clone(),
                };
                match lo {
                    Some(0) | None => upto,
                    Some(l) => upto - le(l - 1),
                }
            }
        }
    }
}

/// Which of an attribute's bitmaps a portable copy is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// The users with a value.
    Has,
    /// A boolean's true users.
    Truth,
    /// A string value's users, by value id.
    Value(u32),
    /// A bit slice, by bit.
    Slice(u32),
}

/// Portable copies of an attribute's bitmaps, made on first use and
/// dropped when a value changes (the attribute clears it in every
/// change).
#[derive(Debug, Default)]
pub(crate) struct PortableCache {
    copies: Mutex<HashMap<Slot, Portable>>,
}

impl Clone for PortableCache {
    fn clone(&self) -> Self {
        let copies = self.copies.lock().map(|c| c.clone()).unwrap_or_default();
        PortableCache {
            copies: Mutex::new(copies),
        }
    }
}

impl PortableCache {
    /// The copy of `slot`, made from `bitmap` when there is none.
    pub(crate) fn get(&self, slot: Slot, bitmap: &RoaringBitmap) -> Portable {
        if let Ok(c) = self.copies.lock() {
            if let Some(p) = c.get(&slot) {
                return p.clone();
            }
        }
        // Serialized outside the lock: two queries may both make it.
        let p = portable(bitmap);
        if let Ok(mut c) = self.copies.lock() {
            c.insert(slot, p.clone());
        }
        p
    }

    /// Forgets every copy (a value changed).
    pub(crate) fn clear(&mut self) {
        match self.copies.get_mut() {
            Ok(c) => c.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }
}
