//! A bit-sliced index: integer values of users as one roaring bitmap per
//! bit of `value - base`, so a comparison with a constant takes two bitmap
//! operations per bit (O'Neil and Quass) and never visits a user.

use roaring::RoaringBitmap;

/// Integer values of users, sliced by bit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bsi {
    /// The smallest value the slices can hold (offsets are from it).
    base: i64,
    /// The users that have a value.
    has: RoaringBitmap,
    /// `slices[i]`: the users whose `value - base` has bit `i` set.
    slices: Vec<RoaringBitmap>,
}

fn offset(v: i64, base: i64) -> u64 {
    // Both are i64, so the difference of v >= base fits in u64.
    (i128::from(v) - i128::from(base)) as u64
}

impl Bsi {
    /// An index from its parts, as persisted. Slices past the highest
    /// significant bit may be empty.
    pub fn from_parts(base: i64, has: RoaringBitmap, slices: Vec<RoaringBitmap>) -> Bsi {
        Bsi { base, has, slices }
    }

    /// Its parts: the base, the users with a value, the bit slices.
    pub fn parts(&self) -> (i64, &RoaringBitmap, &[RoaringBitmap]) {
        (self.base, &self.has, &self.slices)
    }

    /// The users that have a value.
    pub fn has(&self) -> &RoaringBitmap {
        &self.has
    }

    /// One user's value.
    pub fn get(&self, user: u32) -> Option<i64> {
        if !self.has.contains(user) {
            return None;
        }
        let mut off = 0u64;
        for (i, s) in self.slices.iter().enumerate() {
            if s.contains(user) {
                off |= 1 << i;
            }
        }
        Some((i128::from(self.base) + i128::from(off)) as i64)
    }

    /// Takes the values of `users` out.
    pub fn remove_many(&mut self, users: &RoaringBitmap) {
        self.has -= users;
        for s in &mut self.slices {
            if !s.is_disjoint(users) {
                *s -= users;
            }
        }
    }

    /// Removes a user's value; whether it had one.
    pub fn remove(&mut self, user: u32) -> bool {
        if !self.has.remove(user) {
            return false;
        }
        for s in &mut self.slices {
            s.remove(user);
        }
        true
    }

    /// Sets a user's value. A value below the base re-slices every value
    /// from the new base (rare: the base is the first value, lowered).
    pub fn set(&mut self, user: u32, v: i64) {
        self.remove(user);
        if self.has.is_empty() {
            self.base = v;
            self.slices.clear();
        } else if v < self.base {
            let all: Vec<(u32, i64)> = self
                .has
                .iter()
                .filter_map(|u| self.get(u).map(|x| (u, x)))
                .collect();
            *self = Bsi {
                base: v,
                ..Bsi::default()
            };
            for (u, x) in all {
                self.put(u, x);
            }
        }
        self.put(user, v);
    }

    fn put(&mut self, user: u32, v: i64) {
        let off = offset(v, self.base);
        self.has.insert(user);
        let bits = 64 - off.leading_zeros() as usize;
        if self.slices.len() < bits {
            self.slices.resize_with(bits, RoaringBitmap::new);
        }
        for (i, s) in self.slices.iter_mut().enumerate().take(bits) {
            if off >> i & 1 == 1 {
                s.insert(user);
            }
        }
    }

    /// The users whose value is at most `c`.
    pub fn le(&self, c: i64) -> RoaringBitmap {
        if self.has.is_empty() || c < self.base {
            return RoaringBitmap::new();
        }
        let off = offset(c, self.base);
        let bits = self.slices.len();
        if bits < 64 && off >> bits != 0 {
            return self.has.clone();
        }
        // Walking from the top bit: `eq` holds the users equal to `c` on
        // the bits seen so far, `lt` those already found below it.
        let mut lt = RoaringBitmap::new();
        let mut eq = self.has.clone();
        for i in (0..bits).rev() {
            let s = &self.slices[i];
            if off >> i & 1 == 1 {
                lt |= &eq - s;
                eq &= s;
            } else {
                eq -= s;
            }
            if eq.is_empty() {
                break;
            }
        }
        lt | eq
    }

    /// The users whose value is exactly `c`.
    pub fn eq(&self, c: i64) -> RoaringBitmap {
        if self.has.is_empty() || c < self.base {
            return RoaringBitmap::new();
        }
        let off = offset(c, self.base);
        let bits = self.slices.len();
        if bits < 64 && off >> bits != 0 {
            return RoaringBitmap::new();
        }
        let mut eq = self.has.clone();
        for i in (0..bits).rev() {
            if eq.is_empty() {
                break;
            }
            if off >> i & 1 == 1 {
                eq &= &self.slices[i];
            } else {
                eq -= &self.slices[i];
            }
        }
        eq
    }

    /// The users whose value lies in `lo..=hi` (an end `None`: unbounded).
    pub fn range(&self, lo: Option<i64>, hi: Option<i64>) -> RoaringBitmap {
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > hi {
                return RoaringBitmap::new();
            }
            if lo == hi {
                return self.eq(lo);
            }
        }
        let upto = match hi {
            Some(hi) => self.le(hi),
            None => self.has.clone(),
        };
        match lo {
            Some(lo) if lo > self.base => upto - self.le(lo - 1),
            _ => upto,
        }
    }

    /// The smallest value (`None`: no user has one).
    pub fn min(&self) -> Option<i64> {
        self.extreme(false)
    }

    /// The largest value.
    pub fn max(&self) -> Option<i64> {
        self.extreme(true)
    }

    /// From the top bit down, keeps the users with the bit set (largest)
    /// or clear (smallest) whenever some are: one operation per bit.
    fn extreme(&self, largest: bool) -> Option<i64> {
        if self.has.is_empty() {
            return None;
        }
        let mut at = self.has.clone();
        let mut off = 0u64;
        for i in (0..self.slices.len()).rev() {
            let s = &self.slices[i];
            let with = if largest { &at & s } else { &at - s };
            if !with.is_empty() {
                at = with;
                if largest {
                    off |= 1 << i;
                }
            } else if !largest {
                off |= 1 << i;
            }
        }
        Some((i128::from(self.base) + i128::from(off)) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn scan(m: &BTreeMap<u32, i64>, lo: Option<i64>, hi: Option<i64>) -> RoaringBitmap {
        m.iter()
            .filter(|(_, &v)| lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h))
            .map(|(&u, _)| u)
            .collect()
    }

    proptest! {
        #[test]
        fn ranges_agree_with_a_full_scan(
            ops in prop::collection::vec((0u32..3000, prop::option::of(-1000i64..1000)), 1..400),
            bounds in prop::collection::vec((prop::option::of(-1100i64..1100), prop::option::of(-1100i64..1100)), 1..20),
            wide in any::<bool>(),
        ) {
            let mut b = Bsi::default();
            let mut m = BTreeMap::new();
            for (u, v) in ops {
                // Wide values reach both ends of i64.
                let v = v.map(|v| if wide { v.saturating_mul(9_000_000_000_000_000) } else { v });
                match v {
                    Some(v) => { b.set(u, v); m.insert(u, v); }
                    None => { b.remove(u); m.remove(&u); }
                }
            }
            for (&u, &v) in &m {
                prop_assert_eq!(b.get(u), Some(v));
            }
            prop_assert_eq!(b.has(), &m.keys().copied().collect::<RoaringBitmap>());
            for (lo, hi) in bounds {
                let (lo, hi) = if wide {
                    (lo.map(|v| v.saturating_mul(9_000_000_000_000_000)), hi.map(|v| v.saturating_mul(9_000_000_000_000_000)))
                } else { (lo, hi) };
                prop_assert_eq!(b.range(lo, hi), scan(&m, lo, hi));
                if let Some(c) = lo {
                    prop_assert_eq!(b.eq(c), scan(&m, Some(c), Some(c)));
                    prop_assert_eq!(b.le(c), scan(&m, None, Some(c)));
                }
            }
            prop_assert_eq!(b.le(i64::MAX), b.has().clone());
            prop_assert_eq!(b.min(), m.values().min().copied());
            prop_assert_eq!(b.max(), m.values().max().copied());
            prop_assert_eq!(b.range(Some(i64::MIN), None), b.has().clone());
        }
    }
}
