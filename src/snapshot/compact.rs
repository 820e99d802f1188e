//! A compact identifier dictionary (format version 4 on), read in place
//! from a mapped snapshot: an FST from each key to its user, and the
//! users' keys front-coded in groups of 16 users with an offset per group.
//!
//! ```text
//! offset 0      8       16        24           32            36        40    64
//!        +------+-------+---------+------------+-------------+---------+------+
//!        | count| users | fst_len | blocks_len | group_bits  | width   | zero |
//!        | u64  | u64   | u64     | u64        | u32 (= 4)   | u32 4|8 |      |
//!        +------+-------+---------+------------+-------------+---------+------+
//! 64     FST (the `fst` crate's map format): key -> user, zero-padded to 8
//! ...    offsets: groups + 1 integers of `width` bytes, groups =
//!        ceil(users / 16); group g's entries are blocks[off[g]..off[g+1]]
//! ...    blocks: the entries of users 16g..16g+16, in user order, each
//!        +---------------------------+------------------+---------+
//!        | user - 16g << 4 | shared  | [shared - 15]    | suffix  | suffix
//!        | (one byte; shared <= 15) | varint if 15     | len var | bytes
//!        +---------------------------+------------------+---------+
//! ```
//!
//! `shared` is the length of the prefix an entry shares with the previous
//! entry of its group (0 for a group's first entry), so a group decodes
//! from its own offset. `count` is the number of keys (entries and FST
//! keys alike), `users` one past the last user holding one. An alias key
//! is [`super::dict::alias_key`]'s, as in the older dictionaries.
//!
//! Identifier -> user is one FST look-up; user -> identifiers decodes at
//! most one group. ARCHITECTURE.md gives the measurements behind it.

use std::borrow::Cow;

use fst::{Map, MapBuilder, Streamer};

use crate::error::{Error, Result};
use crate::ids::UserId;

const HEAD: usize = 64;
/// Users per group: `1 << GROUP_BITS`. Part of the format (an entry's
/// first byte holds the user's place in its group in four bits).
pub const GROUP_BITS: u32 = 4;
const GROUP: u32 = 1 << GROUP_BITS;
const SHARED_MAX: usize = 15;

fn rd64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v: usize = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The FST map's error, as text.
fn fst_err(e: fst::Error) -> String {
    format!("identifier FST: {e}")
}

/// Builds a compact dictionary section. The keys are held once, in one
/// buffer, with an offset and a user per key; [`CompactWriter::finish`]
/// sorts an index over them (four bytes a key) for the FST and writes
/// the groups in the order the keys came.
#[derive(Debug, Default)]
pub struct CompactWriter {
    keys: Vec<u8>,
    /// Where each key starts in `keys` (it ends where the next starts).
    starts: Vec<u64>,
    users: Vec<u32>,
}

impl CompactWriter {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key held by `user`. Keys must be unique; users must come in
    /// ascending order (several keys per user are fine).
    pub fn push(&mut self, user: UserId, key: &[u8]) {
        self.starts.push(self.keys.len() as u64);
        self.keys.extend_from_slice(key);
        self.users.push(user.0);
    }

    /// The keys added.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no key was added.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.keys.len(), |&e| e as usize);
        &self.keys[start..end]
    }

    /// The section's bytes. Fails for keys out of user order or a key
    /// given twice.
    pub fn finish(self) -> Result<Vec<u8>> {
        let count = self.users.len();
        if count >= u32::MAX as usize {
            return Err(Error::Internal(format!("{count} dictionary entries")));
        }
        if self.users.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::Internal(
                "dictionary entries must come in user order".into(),
            ));
        }
        let users = self.users.last().map_or(0, |&u| u64::from(u) + 1);
        let groups = users.div_ceil(u64::from(GROUP)) as usize;

        // The FST, from an index sorted by key.
        let mut order: Vec<u32> = (0..count as u32).collect();
        order.sort_unstable_by(|&a, &b| self.key(a as usize).cmp(self.key(b as usize)));
        let mut fst = MapBuilder::memory();
        for w in order.windows(2) {
            if self.key(w[0] as usize) == self.key(w[1] as usize) {
                return Err(Error::Internal(format!(
                    "identifier {:?} held by users {} and {}",
                    String::from_utf8_lossy(self.key(w[0] as usize)),
                    self.users[w[0] as usize],
                    self.users[w[1] as usize]
                )));
            }
        }
        for &i in &order {
            let i = i as usize;
            fst.insert(self.key(i), u64::from(self.users[i]))
                .map_err(|e| Error::Internal(fst_err(e)))?;
        }
        drop(order);
        let fst = fst.into_inner().map_err(|e| Error::Internal(fst_err(e)))?;

        // The groups, in user order.
        let mut offsets: Vec<u64> = Vec::with_capacity(groups + 1);
        let mut blocks = Vec::with_capacity(self.keys.len() / 2 + count * 3);
        let mut prev: &[u8] = &[];
        for (i, &u) in self.users.iter().enumerate() {
            let g = (u >> GROUP_BITS) as usize;
            if offsets.len() <= g {
                while offsets.len() <= g {
                    offsets.push(blocks.len() as u64);
                }
                prev = &[];
            }
            let key = self.key(i);
            let shared = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
            let low = (u & (GROUP - 1)) as u8;
            blocks.push(low << 4 | shared.min(SHARED_MAX) as u8);
            if shared >= SHARED_MAX {
                put_varint(&mut blocks, shared - SHARED_MAX);
            }
            put_varint(&mut blocks, key.len() - shared);
            blocks.extend_from_slice(&key[shared..]);
            prev = key;
        }
        while offsets.len() <= groups {
            offsets.push(blocks.len() as u64);
        }
        let width: usize = if blocks.len() <= u32::MAX as usize {
            4
        } else {
            8
        };

        let fst_padded = fst.len().next_multiple_of(8);
        let mut out = Vec::with_capacity(HEAD + fst_padded + offsets.len() * width + blocks.len());
        out.extend_from_slice(&(count as u64).to_le_bytes());
        out.extend_from_slice(&users.to_le_bytes());
        out.extend_from_slice(&(fst.len() as u64).to_le_bytes());
        out.extend_from_slice(&(blocks.len() as u64).to_le_bytes());
        out.extend_from_slice(&GROUP_BITS.to_le_bytes());
        out.extend_from_slice(&(width as u32).to_le_bytes());
        out.resize(HEAD, 0);
        out.extend_from_slice(&fst);
        out.resize(HEAD + fst_padded, 0);
        drop(fst);
        for o in offsets {
            out.extend_from_slice(&o.to_le_bytes()[..width]);
        }
        out.extend_from_slice(&blocks);
        Ok(out)
    }
}

/// A compact dictionary read in place.
#[derive(Clone)]
pub struct CompactDict<'a> {
    fst: Map<&'a [u8]>,
    offsets: &'a [u8],
    width: usize,
    blocks: &'a [u8],
    count: usize,
    users: u64,
    groups: usize,
}

impl std::fmt::Debug for CompactDict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactDict")
            .field("count", &self.count)
            .field("users", &self.users)
            .field("fst_bytes", &self.fst.as_fst().as_bytes().len())
            .field("blocks_bytes", &self.blocks.len())
            .finish()
    }
}

/// The sizes of a compact dictionary's parts, in bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Parts {
    /// The identifier -> user FST.
    pub fst: u64,
    /// The group offsets.
    pub offsets: u64,
    /// The front-coded groups.
    pub blocks: u64,
}

impl<'a> CompactDict<'a> {
    /// Checks the header's sizes against the section and opens the FST
    /// (O(1)); entries are checked as they are read, and all at once by
    /// [`CompactDict::verify`].
    pub fn parse(b: &'a [u8]) -> std::result::Result<CompactDict<'a>, String> {
        if b.len() < HEAD {
            return Err(format!(
                "{} bytes is shorter than the {HEAD}-byte header",
                b.len()
            ));
        }
        let count = rd64(b, 0);
        let users = rd64(b, 8);
        let fst_len = rd64(b, 16);
        let blocks_len = rd64(b, 24);
        let bits = rd32(b, 32);
        let width = rd32(b, 36) as usize;
        if bits != GROUP_BITS {
            return Err(format!(
                "groups of 2^{bits} users (this build reads 2^{GROUP_BITS})"
            ));
        }
        if width != 4 && width != 8 {
            return Err(format!("{width}-byte group offsets"));
        }
        if let Some(i) = b[40..HEAD].iter().position(|&x| x != 0) {
            return Err(format!("header byte {} is not zero", 40 + i));
        }
        if count >= u64::from(u32::MAX) || users > 1 << 32 {
            return Err(format!("{count} entries for {users} users"));
        }
        let groups = users.div_ceil(u64::from(GROUP));
        let fst_padded = fst_len.checked_next_multiple_of(8);
        let need = fst_padded
            .and_then(|f| f.checked_add(HEAD as u64))
            .and_then(|n| n.checked_add((groups + 1) * width as u64))
            .and_then(|n| n.checked_add(blocks_len));
        if need != Some(b.len() as u64) {
            return Err(format!(
                "header says {fst_len} FST bytes, {groups} groups, {blocks_len} block bytes; the section has {} bytes",
                b.len()
            ));
        }
        let fst_end = HEAD + fst_len as usize;
        let off_start = HEAD + fst_padded.unwrap_or(0) as usize;
        let off_end = off_start + (groups as usize + 1) * width;
        let fst = Map::new(&b[HEAD..fst_end]).map_err(fst_err)?;
        if fst.len() as u64 != count {
            return Err(format!(
                "the FST holds {} keys; the header says {count}",
                fst.len()
            ));
        }
        Ok(CompactDict {
            fst,
            offsets: &b[off_start..off_end],
            width,
            blocks: &b[off_end..],
            count: count as usize,
            users,
            groups: groups as usize,
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

    /// The sizes of its parts.
    pub fn parts(&self) -> Parts {
        Parts {
            fst: self.fst.as_fst().as_bytes().len() as u64,
            offsets: self.offsets.len() as u64,
            blocks: self.blocks.len() as u64,
        }
    }

    /// The user holding `key`.
    pub fn get(&self, key: &[u8]) -> Option<UserId> {
        self.fst
            .get(key)
            .and_then(|u| u32::try_from(u).ok())
            .map(UserId)
    }

    fn offset(&self, i: usize) -> usize {
        let at = i * self.width;
        if self.width == 4 {
            rd32(self.offsets, at) as usize
        } else {
            rd64(self.offsets, at) as usize
        }
    }

    /// Group `g`'s bytes, or `None` when its offsets are out of order or
    /// outside the blocks.
    fn group(&self, g: usize) -> Option<&'a [u8]> {
        if g >= self.groups {
            return None;
        }
        let (start, end) = (self.offset(g), self.offset(g + 1));
        self.blocks.get(start..end)
    }

    /// The keys `user` holds, in the order they were written.
    pub fn keys_of(&self, user: UserId) -> Keys<'a> {
        let g = (user.0 >> GROUP_BITS) as usize;
        Keys {
            group: self.group(g).unwrap_or(&[]),
            pos: 0,
            prev: Vec::new(),
            low: (user.0 & (GROUP - 1)) as u8,
        }
    }

    /// Every (user, key), in user order; `Err` names the first group that
    /// does not decode.
    pub fn for_each(
        &self,
        mut visit: impl FnMut(UserId, &[u8]),
    ) -> std::result::Result<(), String> {
        let mut prev = Vec::new();
        for g in 0..self.groups {
            let group = self
                .group(g)
                .ok_or_else(|| format!("group {g} lies outside the blocks"))?;
            let (mut pos, mut last_low) = (0, 0u8);
            prev.clear();
            while pos < group.len() {
                let low = decode(group, &mut pos, &mut prev)
                    .ok_or_else(|| format!("group {g} does not decode at byte {pos}"))?;
                if low < last_low {
                    return Err(format!("group {g} is out of user order"));
                }
                last_low = low;
                visit(UserId((g as u32) << GROUP_BITS | u32::from(low)), &prev);
            }
        }
        Ok(())
    }

    /// Checks everything: the FST's own checksum, every group decodes in
    /// user order below `users`, every entry is found again through the
    /// FST with its user, and the FST holds exactly those entries (as
    /// many, and the same sum of their hashes).
    pub fn verify(&self, users: u32) -> std::result::Result<(), String> {
        self.fst.as_fst().verify().map_err(fst_err)?;
        if self.users > u64::from(users) {
            return Err(format!("covers {} users; there are {users}", self.users));
        }
        let (mut n, mut sum, mut bad) = (0usize, 0u64, None);
        self.for_each(|u, key| {
            n += 1;
            sum = sum.wrapping_add(entry_hash(u, key));
            if bad.is_none() && self.get(key) != Some(u) {
                bad = Some(format!(
                    "entry {:?} of user {u} is not found through the FST",
                    String::from_utf8_lossy(key)
                ));
            }
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        if n != self.count {
            return Err(format!(
                "{n} entries in the groups, {} in the FST",
                self.count
            ));
        }
        let mut fst_sum = 0u64;
        let mut s = self.fst.stream();
        while let Some((key, u)) = s.next() {
            let u = u32::try_from(u).map_err(|_| format!("the FST names user {u}"))?;
            fst_sum = fst_sum.wrapping_add(entry_hash(UserId(u), key));
        }
        if fst_sum != sum {
            return Err("the FST and the groups hold different entries".into());
        }
        Ok(())
    }
}

fn entry_hash(u: UserId, key: &[u8]) -> u64 {
    super::dict::hash(key) ^ u64::from(u.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Decodes the entry at `pos` of a group into `prev` (which holds the
/// previous entry's key); returns the user's place in the group.
fn decode(group: &[u8], pos: &mut usize, prev: &mut Vec<u8>) -> Option<u8> {
    let head = *group.get(*pos)?;
    *pos += 1;
    let mut shared = usize::from(head & 0x0f);
    if shared == SHARED_MAX {
        shared = shared.checked_add(get_varint(group, pos)?)?;
    }
    let len = get_varint(group, pos)?;
    if shared > prev.len() {
        return None;
    }
    let suffix = group.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    prev.truncate(shared);
    prev.extend_from_slice(suffix);
    Some(head >> 4)
}

/// The keys of one user ([`CompactDict::keys_of`]).
#[derive(Clone, Debug)]
pub struct Keys<'a> {
    group: &'a [u8],
    pos: usize,
    prev: Vec<u8>,
    low: u8,
}

impl<'a> Iterator for Keys<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        while self.pos < self.group.len() {
            let low = match decode(self.group, &mut self.pos, &mut self.prev) {
                Some(low) => low,
                None => {
                    // Corrupt (verify says where): nothing more is read.
                    self.pos = self.group.len();
                    return None;
                }
            };
            if low == self.low {
                return Some(Cow::Owned(self.prev.clone()));
            }
            if low > self.low {
                self.pos = self.group.len();
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(entries: &[(u32, &str)]) -> Vec<u8> {
        let mut w = CompactWriter::new();
        for &(u, k) in entries {
            w.push(UserId(u), k.as_bytes());
        }
        w.finish().unwrap()
    }

    #[test]
    fn lookups_round_trip() {
        let mut w = CompactWriter::new();
        for u in 0..5000u32 {
            if u % 3 != 0 {
                w.push(UserId(u), format!("u{u}").as_bytes());
            }
            if u % 7 == 0 {
                w.push(UserId(u), format!("second-{u}").as_bytes());
            }
        }
        let bytes = w.finish().unwrap();
        let d = CompactDict::parse(&bytes).unwrap();
        d.verify(5000).unwrap();
        assert_eq!(d.get(b"u1"), Some(UserId(1)));
        assert_eq!(d.get(b"u3"), None);
        assert_eq!(d.get(b"second-14"), Some(UserId(14)));
        assert_eq!(d.get(b""), None);
        let keys: Vec<_> = d.keys_of(UserId(14)).collect();
        assert_eq!(keys, vec![&b"u14"[..], &b"second-14"[..]]);
        assert_eq!(d.keys_of(UserId(3)).count(), 0);
        assert_eq!(d.keys_of(UserId(3)).count(), 0);
        assert_eq!(d.keys_of(UserId(99_999)).count(), 0);
        assert!(d.verify(4000).is_err());
    }

    #[test]
    fn long_shared_prefixes_and_empty_keys() {
        let long = "x".repeat(1024);
        let a = format!("{long}a");
        let b = format!("{long}b");
        let bytes = build(&[(0, ""), (1, &a), (1, &b), (17, &long)]);
        let d = CompactDict::parse(&bytes).unwrap();
        d.verify(18).unwrap();
        assert_eq!(d.get(b""), Some(UserId(0)));
        assert_eq!(d.get(b.as_bytes()), Some(UserId(1)));
        let keys: Vec<_> = d.keys_of(UserId(1)).collect();
        assert_eq!(keys, vec![a.as_bytes(), b.as_bytes()]);
        assert_eq!(d.keys_of(UserId(17)).next().unwrap(), long.as_bytes());
    }

    #[test]
    fn empty_dictionary() {
        let bytes = CompactWriter::new().finish().unwrap();
        let d = CompactDict::parse(&bytes).unwrap();
        assert_eq!(d.get(b"x"), None);
        assert_eq!(d.keys_of(UserId(0)).count(), 0);
        d.verify(0).unwrap();
    }

    #[test]
    fn duplicates_and_disorder_are_refused() {
        let mut w = CompactWriter::new();
        w.push(UserId(0), b"a");
        w.push(UserId(1), b"a");
        assert!(w.finish().is_err());
        let mut w = CompactWriter::new();
        w.push(UserId(1), b"a");
        w.push(UserId(0), b"b");
        assert!(w.finish().is_err());
    }

    #[test]
    fn malformed_sections_are_refused() {
        let good = build(&[(0, "a"), (3, "ab"), (40, "abc")]);
        for n in 0..good.len() {
            assert!(CompactDict::parse(&good[..n]).is_err(), "length {n}");
        }
        // Every flipped byte of the groups or offsets is refused by parse
        // or caught by verify.
        let d = CompactDict::parse(&good).unwrap();
        let tail = d.offsets.len() + d.blocks.len();
        for i in good.len() - tail..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x21;
            let caught = match CompactDict::parse(&bad) {
                Err(_) => true,
                Ok(d) => d.verify(41).is_err(),
            };
            assert!(caught, "flipped byte {i} went unnoticed");
        }
    }
}
