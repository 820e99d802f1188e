//! An identifier dictionary (external ids, device ids or aliases -> user)
//! that is read in place from a mapped snapshot: an open-addressing hash
//! table over entries sorted by user.
//!
//! ```text
//! offset 0         8         16          24          32
//!        +---------+---------+-----------+-----------+
//!        | count   | slots   | blob_len  | zero      |   u64 each
//!        +---------+---------+-----------+-----------+
//! 32     entries: count x 16 bytes, sorted by user
//!        +----------+---------+--------------+
//!        | user u32 | len u32 | blob_off u64 |
//!        +----------+---------+--------------+
//! 32+16c slots: `slots` (a power of two) x 8 bytes
//!        +----------+---------------+
//!        | tag u32  | entry + 1 u32 |   (entry + 1 = 0: empty)
//!        +----------+---------------+
//! ...    blob: the keys' bytes
//! ```
//!
//! A key is found by hashing it ([`hash`], stable across versions), probing
//! slots linearly from `hash & (slots - 1)`, and comparing the tag (the
//! hash's high 32 bits) before the bytes. The table is at most 3/4 full.
//! An alias key is `label.len() as u32 LE ++ label ++ name`.

use std::borrow::Cow;

use super::compact::{CompactDict, Keys};
use crate::error::{Error, Result};
use crate::ids::UserId;

const HEAD: usize = 32;
const ENTRY: usize = 16;
const SLOT: usize = 8;

/// The dictionary's hash: FNV-1a 64 with a splitmix64 finaliser. Part of
/// the file format: changing it breaks existing snapshots.
pub fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The dictionary key of an alias.
pub(crate) fn alias_key(label: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + label.len() + name.len());
    k.extend_from_slice(&(label.len() as u32).to_le_bytes());
    k.extend_from_slice(label.as_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// Splits an alias key back into (label, name).
pub(crate) fn split_alias_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_le_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let rest = &key[4..];
    (n <= rest.len()).then(|| rest.split_at(n))
}

/// Builds a dictionary section.
#[derive(Debug, Default)]
pub struct DictWriter {
    entries: Vec<(u32, u64, u32)>,
    blob: Vec<u8>,
}

impl DictWriter {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key held by `user`. Keys must be unique; users must come in
    /// ascending order (several keys per user are fine).
    pub fn push(&mut self, user: UserId, key: &[u8]) {
        let off = self.blob.len() as u64;
        self.blob.extend_from_slice(key);
        self.entries.push((user.0, off, key.len() as u32));
    }

    /// The keys added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The section's bytes.
    pub fn finish(self) -> Result<Vec<u8>> {
        let count = self.entries.len();
        if count >= u32::MAX as usize {
            return Err(Error::Internal(format!("{count} dictionary entries")));
        }
        if self.entries.windows(2).any(|w| w[0].0 > w[1].0) {
            return Err(Error::Internal(
                "dictionary entries must come in user order".into(),
            ));
        }
        let slots = (count * 4 / 3 + 1).next_power_of_two();
        let mut out = Vec::with_capacity(HEAD + count * ENTRY + slots * SLOT + self.blob.len());
        out.extend_from_slice(&(count as u64).to_le_bytes());
        out.extend_from_slice(&(slots as u64).to_le_bytes());
        out.extend_from_slice(&(self.blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        for &(user, off, len) in &self.entries {
            out.extend_from_slice(&user.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        let mut table = vec![(0u32, 0u32); slots];
        let mask = slots - 1;
        for (i, &(_, off, len)) in self.entries.iter().enumerate() {
            let key = &self.blob[off as usize..off as usize + len as usize];
            let h = hash(key);
            let mut s = (h as usize) & mask;
            while table[s].1 != 0 {
                s = (s + 1) & mask;
            }
            table[s] = ((h >> 32) as u32, i as u32 + 1);
        }
        for (tag, e) in table {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
        out.extend_from_slice(&self.blob);
        Ok(out)
    }
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rd64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A dictionary read in place.
#[derive(Copy, Clone, Debug)]
pub struct Dict<'a> {
    entries: &'a [u8],
    slots: &'a [u8],
    blob: &'a [u8],
    count: usize,
    mask: usize,
}

impl<'a> Dict<'a> {
    /// Checks the header's sizes against the section (O(1)); entries are
    /// checked as they are read, and all at once by [`Dict::verify`].
    pub fn parse(b: &'a [u8]) -> std::result::Result<Dict<'a>, String> {
        if b.len() < HEAD {
            return Err(format!(
                "{} bytes is shorter than the 32-byte header",
                b.len()
            ));
        }
        let count = rd64(b, 0);
        let slots = rd64(b, 8);
        let blob_len = rd64(b, 16);
        if !slots.is_power_of_two() || count > slots * 3 / 4 + 1 || count >= u64::from(u32::MAX) {
            return Err(format!("{count} entries in {slots} slots"));
        }
        let need = (HEAD as u64)
            .checked_add(count * ENTRY as u64)
            .and_then(|n| n.checked_add(slots.checked_mul(SLOT as u64)?))
            .and_then(|n| n.checked_add(blob_len));
        if need != Some(b.len() as u64) {
            return Err(format!(
                "header says {count} entries, {slots} slots, {blob_len} key bytes; the section has {} bytes",
                b.len()
            ));
        }
        let (count, slots) = (count as usize, slots as usize);
        let e_end = HEAD + count * ENTRY;
        let s_end = e_end + slots * SLOT;
        Ok(Dict {
            entries: &b[HEAD..e_end],
            slots: &b[e_end..s_end],
            blob: &b[s_end..],
            count,
            mask: slots - 1,
        })
    }

    /// The keys in the dictionary.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the dictionary holds no key.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `i`: its user and key, or `None` if the entry points outside
    /// the blob.
    pub fn entry(&self, i: usize) -> Option<(UserId, &'a [u8])> {
        if i >= self.count {
            return None;
        }
        let at = i * ENTRY;
        let user = rd32(self.entries, at);
        let len = rd32(self.entries, at + 4) as usize;
        let off = usize::try_from(rd64(self.entries, at + 8)).ok()?;
        let key = self.blob.get(off..off.checked_add(len)?)?;
        Some((UserId(user), key))
    }

    fn user_of(&self, i: usize) -> u32 {
        rd32(self.entries, i * ENTRY)
    }

    /// The user holding `key`.
    pub fn get(&self, key: &[u8]) -> Option<UserId> {
        if self.count == 0 {
            return None;
        }
        let h = hash(key);
        let tag = (h >> 32) as u32;
        let mut s = (h as usize) & self.mask;
        for _ in 0..=self.mask {
            let e = rd32(self.slots, s * SLOT + 4);
            if e == 0 {
                return None;
            }
            if rd32(self.slots, s * SLOT) == tag {
                if let Some((user, k)) = self.entry(e as usize - 1) {
                    if k == key {
                        return Some(user);
                    }
                }
            }
            s = (s + 1) & self.mask;
        }
        None
    }

    /// The entries of one user, as an index range (binary search).
    pub fn entries_of(&self, user: UserId) -> std::ops::Range<usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.user_of(mid) < user.0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = lo;
        let mut end = start;
        while end < self.count && self.user_of(end) == user.0 {
            end += 1;
        }
        start..end
    }

    /// Checks every entry: inside the blob, in user order, below `users`,
    /// found again through the hash table, and keys unique.
    pub fn verify(&self, users: u32) -> std::result::Result<(), String> {
        let mut prev = 0u32;
        for i in 0..self.count {
            let (user, key) = self
                .entry(i)
                .ok_or_else(|| format!("entry {i} points outside the key bytes"))?;
            if user.0 < prev {
                return Err(format!("entry {i} (user {user}) is out of user order"));
            }
            if user.0 >= users {
                return Err(format!("entry {i} names user {user}; there are {users}"));
            }
            prev = user.0;
            if self.get(key) != Some(user) {
                return Err(format!(
                    "entry {i} (user {user}) is not found through the hash table"
                ));
            }
        }
        let used = (0..=self.mask)
            .filter(|&s| rd32(self.slots, s * SLOT + 4) != 0)
            .count();
        if used != self.count {
            return Err(format!("{used} slots in use for {} entries", self.count));
        }
        Ok(())
    }
}

/// An identifier dictionary of either format: the hashed one of versions
/// 1 to 3 ([`Dict`]) or the compact one of version 4 on
/// ([`CompactDict`], in either layout). Both answer the same questions
/// the same way.
#[derive(Clone, Debug)]
pub enum Ids<'a> {
    /// Versions 1 to 3.
    Hashed(Dict<'a>),
    /// Version 4 on.
    Compact(CompactDict<'a>),
}

impl<'a> Ids<'a> {
    /// The keys in the dictionary.
    pub fn len(&self) -> usize {
        match self {
            Ids::Hashed(d) => d.len(),
            Ids::Compact(d) => d.len(),
        }
    }

    /// Whether the dictionary holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user holding `key`.
    pub fn get(&self, key: &[u8]) -> Option<UserId> {
        match self {
            Ids::Hashed(d) => d.get(key),
            Ids::Compact(d) => d.get(key),
        }
    }

    /// The keys `user` holds, in the order they were written. An entry
    /// that does not decode (a corrupt file: `verify` says where) is
    /// left out.
    pub fn keys_of(&self, user: UserId) -> KeysOf<'a> {
        match self {
            Ids::Hashed(d) => KeysOf::Hashed(*d, d.entries_of(user)),
            Ids::Compact(d) => KeysOf::Compact(d.keys_of(user)),
        }
    }

    /// `user`'s first key, written over `out` (`false`, and `out` empty:
    /// none). It allocates nothing once `out` has room: the way to read
    /// many users' external ids.
    pub fn key_into(&self, user: UserId, out: &mut Vec<u8>) -> bool {
        out.clear();
        match self {
            Ids::Hashed(d) => match d.entries_of(user).find_map(|i| d.entry(i)) {
                Some((_, k)) => {
                    out.extend_from_slice(k);
                    true
                }
                None => false,
            },
            Ids::Compact(d) => d.key_into(user, out),
        }
    }

    /// Every (user, key) in user order. `Err` says where the dictionary
    /// does not decode.
    pub fn for_each(
        &self,
        mut visit: impl FnMut(UserId, &[u8]),
    ) -> std::result::Result<(), String> {
        match self {
            Ids::Hashed(d) => {
                for i in 0..d.len() {
                    let (u, k) = d
                        .entry(i)
                        .ok_or_else(|| format!("entry {i} points outside the key bytes"))?;
                    visit(u, k);
                }
                Ok(())
            }
            Ids::Compact(d) => d.for_each(visit),
        }
    }

    /// Checks the whole dictionary against `users` users.
    pub fn verify(&self, users: u32) -> std::result::Result<(), String> {
        match self {
            Ids::Hashed(d) => d.verify(users),
            Ids::Compact(d) => d.verify(users),
        }
    }
}

/// The keys of one user ([`Ids::keys_of`]).
#[derive(Clone, Debug)]
pub enum KeysOf<'a> {
    /// From a hashed dictionary: entries in place.
    Hashed(Dict<'a>, std::ops::Range<usize>),
    /// From a compact one: decoded.
    Compact(Keys<'a>),
}

impl<'a> Iterator for KeysOf<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        match self {
            KeysOf::Hashed(d, r) => loop {
                let i = r.next()?;
                if let Some((_, k)) = d.entry(i) {
                    return Some(Cow::Borrowed(k));
                }
            },
            KeysOf::Compact(k) => k.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_round_trip() {
        let mut w = DictWriter::new();
        for u in 0..5000u32 {
            if u % 3 != 0 {
                w.push(UserId(u), format!("u{u}").as_bytes());
            }
            if u % 7 == 0 {
                w.push(UserId(u), format!("second-{u}").as_bytes());
            }
        }
        let bytes = w.finish().unwrap();
        let d = Dict::parse(&bytes).unwrap();
        d.verify(5000).unwrap();
        assert_eq!(d.get(b"u1"), Some(UserId(1)));
        assert_eq!(d.get(b"u3"), None);
        assert_eq!(d.get(b"second-14"), Some(UserId(14)));
        assert_eq!(d.get(b""), None);
        let r = d.entries_of(UserId(14));
        assert_eq!(r.len(), 2);
        assert_eq!(d.entries_of(UserId(3)).len(), 0);
    }

    #[test]
    fn empty_dictionary() {
        let bytes = DictWriter::new().finish().unwrap();
        let d = Dict::parse(&bytes).unwrap();
        assert_eq!(d.get(b"x"), None);
        d.verify(0).unwrap();
    }

    #[test]
    fn alias_keys_are_unambiguous() {
        assert_ne!(alias_key("ab", "c"), alias_key("a", "bc"));
        let k = alias_key("email", "a@x");
        assert_eq!(split_alias_key(&k), Some((&b"email"[..], &b"a@x"[..])));
    }

    #[test]
    fn malformed_sections_are_refused() {
        let mut w = DictWriter::new();
        w.push(UserId(0), b"a");
        let good = w.finish().unwrap();
        for n in 0..good.len() {
            assert!(Dict::parse(&good[..n]).is_err());
        }
        let mut bad = good.clone();
        bad[32 + 8] = 200; // entry 0's offset outside the blob
        let d = Dict::parse(&bad).unwrap();
        assert!(d.verify(1).is_err());
        assert_eq!(d.get(b"a"), None);
    }
}
