//! Bitmaps held in memory, in the form the chunk evaluator reads: the
//! portable serialization (which [`super::BitmapView`] reads in place).

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use roaring::RoaringBitmap;

/// Members held in memory, in the portable roaring format: all of them
/// when there is no base bitmap (a snapshot's), else what changed since.
#[derive(Debug, Default)]
pub struct Serialized {
    /// Members not in the base bitmap (`None`: none).
    pub added: Option<Vec<u8>>,
    /// Members of the base bitmap removed since (`None`: none).
    pub removed: Option<Vec<u8>>,
}

impl Serialized {
    /// All of `bits`, as members added to no base (`added` is `None` for
    /// an empty bitmap).
    pub fn whole(bits: &RoaringBitmap) -> Serialized {
        Serialized {
            added: portable(bits),
            removed: None,
        }
    }
}

/// `bits` in the portable format; `None` when it is empty.
pub fn portable(bits: &RoaringBitmap) -> Option<Vec<u8>> {
    if bits.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(bits.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = bits.serialize_into(&mut bytes);
    Some(bytes)
}

/// A bitmap shared by reference (an attribute index's value bitmap, the
/// users a test selected) with its serialization, made the first time the
/// evaluator asks for it and kept while the bitmap is unchanged: a filter
/// that reads the same value bitmap again neither copies nor serializes
/// it. Changing it ([`SharedBitmap::bits_mut`]) copies it first if it is
/// shared, and drops the serialization.
#[derive(Debug, Default)]
pub struct SharedBitmap {
    bits: RoaringBitmap,
    portable: OnceLock<Arc<Serialized>>,
}

impl Clone for SharedBitmap {
    /// The bits; the serialization is made again when needed.
    fn clone(&self) -> Self {
        SharedBitmap::new(self.bits.clone())
    }
}

impl PartialEq for SharedBitmap {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl Deref for SharedBitmap {
    type Target = RoaringBitmap;

    fn deref(&self) -> &RoaringBitmap {
        &self.bits
    }
}

impl From<RoaringBitmap> for SharedBitmap {
    fn from(bits: RoaringBitmap) -> Self {
        SharedBitmap::new(bits)
    }
}

impl SharedBitmap {
    /// `bits`, not serialized yet.
    pub fn new(bits: RoaringBitmap) -> SharedBitmap {
        SharedBitmap {
            bits,
            portable: OnceLock::new(),
        }
    }

    /// The bits.
    pub fn bits(&self) -> &RoaringBitmap {
        &self.bits
    }

    /// Whether the serialization has been made (and is kept).
    pub fn is_serialized(&self) -> bool {
        self.portable.get().is_some()
    }

    /// The bits in the portable format, as members added to no base:
    /// serialized on the first call, shared after.
    pub fn serialized(&self) -> Arc<Serialized> {
        self.portable
            .get_or_init(|| Arc::new(Serialized::whole(&self.bits)))
            .clone()
    }

    /// The bits to change: copied first when another holder shares them,
    /// and the kept serialization dropped.
    pub fn bits_mut(this: &mut Arc<SharedBitmap>) -> &mut RoaringBitmap {
        let s = Arc::make_mut(this);
        s.portable = OnceLock::new();
        &mut s.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap_view::BitmapView;

    #[test]
    fn the_serialization_is_made_once_and_dropped_by_a_change() {
        let mut a = Arc::new(SharedBitmap::new(RoaringBitmap::from_iter([1u32, 70_000])));
        assert!(!a.is_serialized());
        let s1 = a.serialized();
        let s2 = a.serialized();
        assert!(Arc::ptr_eq(&s1, &s2), "made once, then shared");
        let v = BitmapView::parse(s1.added.as_deref().unwrap()).unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![1, 70_000]);
        // A holder keeps what it took; a change copies and serializes anew.
        let held = a.clone();
        SharedBitmap::bits_mut(&mut a).insert(5);
        assert!(!a.is_serialized());
        assert_eq!(held.len(), 2, "the other holder's bits are unchanged");
        assert!(held.is_serialized());
        let v2 = a.serialized();
        let v = BitmapView::parse(v2.added.as_deref().unwrap()).unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![1, 5, 70_000]);
        assert_eq!(SharedBitmap::default().serialized().added, None);
    }
}
