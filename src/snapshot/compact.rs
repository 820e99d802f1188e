//! A compact identifier dictionary (format version 4 on), read in place
//! from a mapped snapshot: an FST from each key to its user, and the
//! users' keys front-coded in groups of users with an offset per group.
//! It has two layouts; the section kind says which ([`Layout`]).
//!
//! ```text
//! offset 0      8       16        24           32            36        40    64
//!        +------+-------+---------+------------+-------------+---------+------+
//!        | count| users | fst_len | blocks_len | group_bits  | width   | zero |
//!        | u64  | u64   | u64     | u64        | u32         | u32     |      |
//!        +------+-------+---------+------------+-------------+---------+------+
//! 64     FST (the `fst` crate's map format): key -> user, zero-padded to 8
//! ...    offsets: groups + 1 non-decreasing integers, groups =
//!        ceil(users / 2^group_bits); group g's entries are
//!        blocks[off[g]..off[g+1]], and they cover users
//!        g << group_bits .. (g + 1) << group_bits
//! ...    blocks: the entries of every group, in user order
//! ```
//!
//! **Version 4** (`Layout::Plain`, kinds 9 to 11): `group_bits` is 4,
//! the offsets are `width` (4 or 8) bytes each, and an entry is
//!
//! ```text
//! +---------------------------+------------------+---------+--------+
//! | user - 16g << 4 | shared  | [shared - 15]    | suffix  | suffix |
//! | (one byte; shared <= 15) | varint if 15     | len var | bytes  |
//! +---------------------------+------------------+---------+--------+
//! ```
//!
//! with `shared` the length of the prefix it shares with the previous
//! entry of its group (0 for a group's first entry).
//!
//! **Version 5** (`Layout::Packed`, kinds 12 to 14): the writer picks
//! `group_bits` (4 to 16) so a group holds about 16 keys, `width` is 0 and
//! the offsets are Elias–Fano coded ([`super::elias_fano`]; universe
//! `blocks_len`), and an entry is
//!
//! ```text
//! +-------------------------------+-----------+-----------+-----------+--------+
//! | step:2 | drop:3 | len:3 (LSB  | [step-3]  | [drop-7]  | [len-7]   | suffix |
//! | first)                        | varint if | varint if | varint if | bytes  |
//! |                               | step = 3  | drop = 7  | len = 7   |        |
//! +-------------------------------+-----------+-----------+-----------+--------+
//! ```
//!
//! `step` is the user's distance from the previous entry's user (from the
//! group's first user for its first entry; 0: another key of the same
//! user), `drop` how many bytes of the previous entry's key are dropped
//! before the suffix is appended (0 for a group's first entry). Keys of
//! consecutive users such as `u1234567`, `u1234568` take two bytes, and a
//! user's key is rebuilt from the entries before it without copying them.
//!
//! `count` is the number of keys (entries and FST keys alike), `users`
//! one past the last user holding one. An alias key is
//! [`super::dict::alias_key`]'s, as in the older dictionaries.
//!
//! Identifier -> user is one FST look-up; user -> identifiers decodes at
//! most one group. ARCHITECTURE.md gives the measurements behind it.

use std::borrow::Cow;

use fst::{Map, MapBuilder, Streamer};

use super::elias_fano::{self, EliasFano};
use crate::error::{Error, Result};
use crate::ids::UserId;

const HEAD: usize = 64;
/// Users per group in version 4: `1 << GROUP_BITS` (an entry's first
/// byte holds the user's place in its group in four bits).
pub const GROUP_BITS: u32 = 4;
const GROUP: u32 = 1 << GROUP_BITS;
const SHARED_MAX: usize = 15;
/// The group sizes a version 5 dictionary may have, as powers of two.
const PACKED_BITS: std::ops::RangeInclusive<u32> = 4..=16;
const STEP_ESC: u8 = 3;
const DROP_ESC: u8 = 7;
const LEN_ESC: u8 = 7;

/// A dictionary section's layout.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Version 4: groups of 16 users, plain offsets, entries headed by
    /// (place, shared).
    Plain,
    /// Version 5: groups sized to the keys, Elias–Fano offsets, entries
    /// headed by (step, drop, len) in one byte.
    Packed,
}

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

#[inline]
fn get_varint(b: &[u8], pos: &mut usize) -> Option<usize> {
    let first = *b.get(*pos)?;
    *pos += 1;
    if first & 0x80 == 0 {
        return Some(usize::from(first));
    }
    let mut v = usize::from(first & 0x7f);
    for shift in (7..64).step_by(7) {
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

/// A version 5 entry's head and escapes.
fn put_packed_entry(out: &mut Vec<u8>, step: u32, drop: usize, suffix: &[u8]) {
    let s = (step as usize).min(usize::from(STEP_ESC)) as u8;
    let d = drop.min(usize::from(DROP_ESC)) as u8;
    let l = suffix.len().min(usize::from(LEN_ESC)) as u8;
    out.push(s | d << 2 | l << 5);
    if s == STEP_ESC {
        put_varint(out, step as usize - usize::from(STEP_ESC));
    }
    if d == DROP_ESC {
        put_varint(out, drop - usize::from(DROP_ESC));
    }
    if l == LEN_ESC {
        put_varint(out, suffix.len() - usize::from(LEN_ESC));
    }
    out.extend_from_slice(suffix);
}

/// Reads a version 5 entry's head: (step, drop, suffix length).
#[inline]
fn packed_head(group: &[u8], pos: &mut usize) -> Option<(u64, usize, usize)> {
    let head = *group.get(*pos)?;
    *pos += 1;
    let mut step = u64::from(head & 3);
    let mut drop = usize::from(head >> 2 & 7);
    let mut len = usize::from(head >> 5);
    if step == u64::from(STEP_ESC) {
        step = step.checked_add(get_varint(group, pos)? as u64)?;
    }
    if drop == usize::from(DROP_ESC) {
        drop = drop.checked_add(get_varint(group, pos)?)?;
    }
    if len == usize::from(LEN_ESC) {
        len = len.checked_add(get_varint(group, pos)?)?;
    }
    Some((step, drop, len))
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

    /// Checks the order and builds the FST: (one past the last user, the
    /// FST's bytes). Fails for keys out of user order or a key given
    /// twice.
    fn fst(&self) -> Result<(u64, Vec<u8>)> {
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
        Ok((users, fst))
    }

    /// The section's bytes in `layout`: [`Layout::Packed`] for the
    /// version 5 kinds, [`Layout::Plain`] for a version 4 file. Fails for
    /// keys out of user order or a key given twice.
    pub fn finish(self, layout: Layout) -> Result<Vec<u8>> {
        let (users, fst) = self.fst()?;
        let count = self.users.len();
        let bits = match layout {
            Layout::Plain => GROUP_BITS,
            Layout::Packed => {
                // About 16 keys a group: 16 users a key or more take
                // groups of 16 users times as many users a key.
                let per_key = users / (count as u64).max(1);
                (GROUP_BITS + per_key.max(1).ilog2())
                    .clamp(*PACKED_BITS.start(), *PACKED_BITS.end())
            }
        };
        let groups = users.div_ceil(1 << bits) as usize;

        // The groups, in user order.
        let mut offsets: Vec<u64> = Vec::with_capacity(groups + 1);
        let mut blocks = Vec::with_capacity(self.keys.len() / 2 + count * 3);
        let mut prev: &[u8] = &[];
        let mut prev_user = 0u32;
        for (i, &u) in self.users.iter().enumerate() {
            let g = (u >> bits) as usize;
            if offsets.len() <= g {
                while offsets.len() <= g {
                    offsets.push(blocks.len() as u64);
                }
                prev = &[];
                prev_user = (g as u32) << bits;
            }
            let key = self.key(i);
            let shared = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
            match layout {
                Layout::Plain => {
                    let low = (u & (GROUP - 1)) as u8;
                    blocks.push(low << 4 | shared.min(SHARED_MAX) as u8);
                    if shared >= SHARED_MAX {
                        put_varint(&mut blocks, shared - SHARED_MAX);
                    }
                    put_varint(&mut blocks, key.len() - shared);
                    blocks.extend_from_slice(&key[shared..]);
                }
                Layout::Packed => {
                    put_packed_entry(
                        &mut blocks,
                        u - prev_user,
                        prev.len() - shared,
                        &key[shared..],
                    );
                    prev_user = u;
                }
            }
            prev = key;
        }
        while offsets.len() <= groups {
            offsets.push(blocks.len() as u64);
        }
        let (width, offsets) = match layout {
            Layout::Plain => {
                let width: usize = if blocks.len() <= u32::MAX as usize {
                    4
                } else {
                    8
                };
                let mut out = Vec::with_capacity(offsets.len() * width);
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes()[..width]);
                }
                (width as u32, out)
            }
            Layout::Packed => {
                let ef = elias_fano::encode(&offsets, blocks.len() as u64)
                    .ok_or_else(|| Error::Internal("group offsets out of order".into()))?;
                (0, ef)
            }
        };

        let fst_padded = fst.len().next_multiple_of(8);
        let mut out = Vec::with_capacity(HEAD + fst_padded + offsets.len() + blocks.len());
        out.extend_from_slice(&(count as u64).to_le_bytes());
        out.extend_from_slice(&users.to_le_bytes());
        out.extend_from_slice(&(fst.len() as u64).to_le_bytes());
        out.extend_from_slice(&(blocks.len() as u64).to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(&width.to_le_bytes());
        out.resize(HEAD, 0);
        out.extend_from_slice(&fst);
        out.resize(HEAD + fst_padded, 0);
        drop(fst);
        out.extend_from_slice(&offsets);
        out.extend_from_slice(&blocks);
        Ok(out)
    }
}

/// A dictionary's group offsets.
#[derive(Copy, Clone)]
enum Offsets<'a> {
    /// Version 4: `width` bytes each.
    Plain { bytes: &'a [u8], width: usize },
    /// Version 5.
    EliasFano(EliasFano<'a>),
}

/// Plain offset `i` (parse checked that `bytes` holds every one).
fn plain_offset(bytes: &[u8], width: usize, i: usize) -> u64 {
    if width == 4 {
        u64::from(rd32(bytes, i * 4))
    } else {
        rd64(bytes, i * 8)
    }
}

/// A compact dictionary read in place.
#[derive(Clone)]
pub struct CompactDict<'a> {
    fst: Map<&'a [u8]>,
    offsets: Offsets<'a>,
    offsets_len: usize,
    blocks: &'a [u8],
    count: usize,
    users: u64,
    groups: usize,
    bits: u32,
    layout: Layout,
}

impl std::fmt::Debug for CompactDict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactDict")
            .field("layout", &self.layout)
            .field("count", &self.count)
            .field("users", &self.users)
            .field("group_bits", &self.bits)
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

/// Where a user's key was rebuilt from: (bytes kept from the previous
/// key, where its suffix starts in the group, the suffix's length).
type Link = (u32, u32, u32);
/// The entries [`CompactDict::key_into`] follows back before it decodes
/// forward instead.
const LINKS: usize = 64;

impl<'a> CompactDict<'a> {
    /// Checks the header's sizes against the section and opens the FST
    /// (O(1)); entries are checked as they are read, and all at once by
    /// [`CompactDict::verify`].
    pub fn parse(b: &'a [u8], layout: Layout) -> std::result::Result<CompactDict<'a>, String> {
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
        match layout {
            Layout::Plain => {
                if bits != GROUP_BITS {
                    return Err(format!(
                        "groups of 2^{bits} users (version 4 has 2^{GROUP_BITS})"
                    ));
                }
                if width != 4 && width != 8 {
                    return Err(format!("{width}-byte group offsets"));
                }
            }
            Layout::Packed => {
                if !PACKED_BITS.contains(&bits) {
                    return Err(format!("groups of 2^{bits} users"));
                }
                if width != 0 {
                    return Err(format!("{width}-byte group offsets in a version 5 section"));
                }
            }
        }
        if let Some(i) = b[40..HEAD].iter().position(|&x| x != 0) {
            return Err(format!("header byte {} is not zero", 40 + i));
        }
        if count >= u64::from(u32::MAX) || users > 1 << 32 {
            return Err(format!("{count} entries for {users} users"));
        }
        let groups = users.div_ceil(1 << bits);
        let offsets_len = match layout {
            Layout::Plain => Some((groups + 1) * width as u64),
            Layout::Packed => elias_fano::encoded_len(groups + 1, blocks_len),
        };
        let fst_padded = fst_len.checked_next_multiple_of(8);
        let need = fst_padded
            .and_then(|f| f.checked_add(HEAD as u64))
            .and_then(|n| n.checked_add(offsets_len?))
            .and_then(|n| n.checked_add(blocks_len));
        if need != Some(b.len() as u64) {
            return Err(format!(
                "header says {fst_len} FST bytes, {groups} groups, {blocks_len} block bytes; the section has {} bytes",
                b.len()
            ));
        }
        let offsets_len = offsets_len.unwrap_or(0) as usize;
        let fst_end = HEAD + fst_len as usize;
        let off_start = HEAD + fst_padded.unwrap_or(0) as usize;
        let off_end = off_start + offsets_len;
        let fst = Map::new(&b[HEAD..fst_end]).map_err(fst_err)?;
        if fst.len() as u64 != count {
            return Err(format!(
                "the FST holds {} keys; the header says {count}",
                fst.len()
            ));
        }
        let bytes = &b[off_start..off_end];
        let offsets = match layout {
            Layout::Plain => Offsets::Plain { bytes, width },
            Layout::Packed => Offsets::EliasFano(EliasFano::parse(bytes, groups + 1, blocks_len)?),
        };
        Ok(CompactDict {
            fst,
            offsets,
            offsets_len,
            blocks: &b[off_end..],
            count: count as usize,
            users,
            groups: groups as usize,
            bits,
            layout,
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

    /// Its layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Users per group, as a power of two.
    pub fn group_bits(&self) -> u32 {
        self.bits
    }

    /// The sizes of its parts.
    pub fn parts(&self) -> Parts {
        Parts {
            fst: self.fst.as_fst().as_bytes().len() as u64,
            offsets: self.offsets_len as u64,
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

    /// Group `g`'s bytes, or `None` when its offsets are out of order or
    /// outside the blocks.
    fn group(&self, g: usize) -> Option<&'a [u8]> {
        if g >= self.groups {
            return None;
        }
        let (start, end) = match self.offsets {
            Offsets::Plain { bytes, width } => (
                plain_offset(bytes, width, g),
                plain_offset(bytes, width, g + 1),
            ),
            Offsets::EliasFano(ef) => ef.pair(g)?,
        };
        self.blocks.get(start as usize..end as usize)
    }

    /// A cursor at the start of group `g` (empty where the group's
    /// offsets are corrupt).
    fn cursor(&self, g: usize) -> Cursor<'a> {
        self.cursor_on(g, self.group(g).unwrap_or(&[]))
    }

    /// A cursor at the start of group `g`, whose bytes are `group`.
    fn cursor_on(&self, g: usize, group: &'a [u8]) -> Cursor<'a> {
        Cursor {
            group,
            pos: 0,
            user: (g as u64) << self.bits,
            end: ((g as u64) + 1) << self.bits,
            layout: self.layout,
        }
    }

    /// The keys `user` holds, in the order they were written.
    pub fn keys_of(&self, user: UserId) -> Keys<'a> {
        Keys {
            cursor: self.cursor((user.0 >> self.bits) as usize),
            prev: Vec::new(),
            user: u64::from(user.0),
        }
    }

    /// `user`'s first key, written over `out`; `false` (and `out` empty)
    /// when the user holds none. Nothing is allocated once `out` has
    /// room, and in version 5 only the target key's bytes are copied.
    pub fn key_into(&self, user: UserId, out: &mut Vec<u8>) -> bool {
        if self.layout == Layout::Plain {
            return self.key_forward(user, out);
        }
        out.clear();
        let target = u64::from(user.0);
        let mut c = self.cursor((user.0 >> self.bits) as usize);
        let mut links: [Link; LINKS] = [(0, 0, 0); LINKS];
        let (mut n, mut prev_len) = (0usize, 0usize);
        while c.pos < c.group.len() {
            let Some((step, drop, len)) = packed_head(c.group, &mut c.pos) else {
                break;
            };
            c.user = c.user.saturating_add(step);
            let (Some(keep), Some(end)) = (prev_len.checked_sub(drop), c.pos.checked_add(len))
            else {
                break;
            };
            if end > c.group.len() || c.user > target {
                break;
            }
            if n == LINKS {
                // A long chain (many keys per user): decode forward.
                return self.key_forward(user, out);
            }
            links[n] = (keep as u32, c.pos as u32, len as u32);
            n += 1;
            c.pos = end;
            prev_len = keep + len;
            if c.user == target {
                out.resize(prev_len, 0);
                let mut need = prev_len;
                for &(keep, start, len) in links[..n].iter().rev() {
                    let (keep, start) = (keep as usize, start as usize);
                    if keep < need {
                        let take = need - keep;
                        if take > len as usize {
                            break; // corrupt: verify says where
                        }
                        out[keep..need].copy_from_slice(&c.group[start..start + take]);
                        need = keep;
                    }
                    if need == 0 {
                        return true;
                    }
                }
                out.clear();
                return false;
            }
        }
        out.clear();
        false
    }

    /// [`CompactDict::key_into`] by decoding the group forward, each
    /// entry into `out` (version 4, or a long chain in version 5).
    fn key_forward(&self, user: UserId, out: &mut Vec<u8>) -> bool {
        out.clear();
        let mut c = self.cursor((user.0 >> self.bits) as usize);
        while let Some(u) = c.next(out) {
            if u == u64::from(user.0) {
                return true;
            }
            if u > u64::from(user.0) {
                break;
            }
        }
        out.clear();
        false
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
            let mut c = self.cursor_on(g, group);
            let mut last = c.user;
            prev.clear();
            while c.pos < c.group.len() {
                let u = c
                    .next(&mut prev)
                    .ok_or_else(|| format!("group {g} does not decode at byte {}", c.pos))?;
                if u < last || u >= c.end || u >= self.users {
                    return Err(format!("group {g} is out of user order"));
                }
                last = u;
                visit(UserId(u as u32), &prev);
            }
        }
        Ok(())
    }

    /// Checks everything: the FST's own checksum, the offsets (every bit
    /// of version 5's), every group decodes in user order below `users`
    /// and the groups fill the blocks, every entry is found again through
    /// the FST with its user, and the FST holds exactly those entries (as
    /// many, and the same sum of their hashes). ([`CompactDict::key_into`]
    /// rebuilds a key from the same heads a group decodes by.)
    pub fn verify(&self, users: u32) -> std::result::Result<(), String> {
        self.fst.as_fst().verify().map_err(fst_err)?;
        if self.users > u64::from(users) {
            return Err(format!("covers {} users; there are {users}", self.users));
        }
        let (first, last) = match self.offsets {
            Offsets::EliasFano(ef) => {
                let v = ef.verify()?;
                (v[0], v[v.len() - 1])
            }
            Offsets::Plain { bytes, width } => (
                plain_offset(bytes, width, 0),
                plain_offset(bytes, width, self.groups),
            ),
        };
        if first != 0 || last != self.blocks.len() as u64 {
            return Err(format!(
                "the groups span bytes {first}..{last} of {} block bytes",
                self.blocks.len()
            ));
        }
        let (mut n, mut sum, mut bad) = (0usize, 0u64, None);
        self.for_each(|u, k| {
            n += 1;
            sum = sum.wrapping_add(entry_hash(u, k));
            if bad.is_none() && self.get(k) != Some(u) {
                bad = Some(format!(
                    "entry {:?} of user {u} is not found through the FST",
                    String::from_utf8_lossy(k)
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

/// A place in one group.
#[derive(Clone, Debug)]
struct Cursor<'a> {
    group: &'a [u8],
    pos: usize,
    /// The previous entry's user (version 5), or the group's first user.
    user: u64,
    /// One past the group's last user.
    end: u64,
    layout: Layout,
}

impl Cursor<'_> {
    /// Decodes the next entry into `prev` (which holds the previous
    /// entry's key) and returns its user; `None` at the group's end or
    /// where it does not decode.
    fn next(&mut self, prev: &mut Vec<u8>) -> Option<u64> {
        let (group, pos) = (self.group, &mut self.pos);
        let head = *group.get(*pos)?;
        let (user, keep, len) = match self.layout {
            Layout::Plain => {
                *pos += 1;
                let mut shared = usize::from(head & 0x0f);
                if shared == SHARED_MAX {
                    shared = shared.checked_add(get_varint(group, pos)?)?;
                }
                let len = get_varint(group, pos)?;
                let base = self.end - u64::from(GROUP);
                (base + u64::from(head >> 4), shared, len)
            }
            Layout::Packed => {
                let (step, drop, len) = packed_head(group, pos)?;
                (
                    self.user.checked_add(step)?,
                    prev.len().checked_sub(drop)?,
                    len,
                )
            }
        };
        if keep > prev.len() {
            return None;
        }
        let suffix = group.get(*pos..pos.checked_add(len)?)?;
        *pos += len;
        prev.truncate(keep);
        prev.extend_from_slice(suffix);
        self.user = user;
        Some(user)
    }
}

/// The keys of one user ([`CompactDict::keys_of`]).
#[derive(Clone, Debug)]
pub struct Keys<'a> {
    cursor: Cursor<'a>,
    prev: Vec<u8>,
    user: u64,
}

impl<'a> Iterator for Keys<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        let c = &mut self.cursor;
        while c.pos < c.group.len() {
            let Some(u) = c.next(&mut self.prev) else {
                // Corrupt (verify says where): nothing more is read.
                c.pos = c.group.len();
                return None;
            };
            if u == self.user {
                return Some(Cow::Owned(self.prev.clone()));
            }
            if u > self.user {
                c.pos = c.group.len();
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUTS: [Layout; 2] = [Layout::Plain, Layout::Packed];

    fn build(entries: &[(u32, &str)], layout: Layout) -> Vec<u8> {
        let mut w = CompactWriter::new();
        for &(u, k) in entries {
            w.push(UserId(u), k.as_bytes());
        }
        w.finish(layout).unwrap()
    }

    /// `user`'s keys through both look-ups.
    fn keys(d: &CompactDict, user: u32) -> Vec<Vec<u8>> {
        let all: Vec<Vec<u8>> = d.keys_of(UserId(user)).map(|k| k.into_owned()).collect();
        let mut first = b"junk".to_vec();
        let found = d.key_into(UserId(user), &mut first);
        assert_eq!(found, !all.is_empty(), "user {user}");
        assert_eq!(found.then_some(&first), all.first(), "user {user}");
        if !found {
            assert!(first.is_empty());
        }
        all
    }

    #[test]
    fn lookups_round_trip() {
        for layout in LAYOUTS {
            let mut w = CompactWriter::new();
            for u in 0..5000u32 {
                if u % 3 != 0 {
                    w.push(UserId(u), format!("u{u}").as_bytes());
                }
                if u % 7 == 0 {
                    w.push(UserId(u), format!("second-{u}").as_bytes());
                }
            }
            let bytes = w.finish(layout).unwrap();
            let d = CompactDict::parse(&bytes, layout).unwrap();
            d.verify(5000).unwrap();
            assert_eq!(d.get(b"u1"), Some(UserId(1)));
            assert_eq!(d.get(b"u3"), None);
            assert_eq!(d.get(b"second-14"), Some(UserId(14)));
            assert_eq!(d.get(b""), None);
            assert_eq!(keys(&d, 14), vec![b"u14".to_vec(), b"second-14".to_vec()]);
            assert_eq!(keys(&d, 21), vec![b"second-21".to_vec()]);
            assert!(keys(&d, 3).is_empty());
            assert!(keys(&d, 99_999).is_empty());
            for u in 0..5000 {
                keys(&d, u);
            }
            assert!(d.verify(4000).is_err());
        }
    }

    #[test]
    fn sparse_keys_get_larger_groups_in_version_5() {
        let entries: Vec<(u32, String)> = (0..100_000u32)
            .step_by(97)
            .map(|u| (u, format!("email:u{u}@example.com")))
            .collect();
        let refs: Vec<(u32, &str)> = entries.iter().map(|(u, k)| (*u, k.as_str())).collect();
        let plain = build(&refs, Layout::Plain);
        let packed = build(&refs, Layout::Packed);
        let p = CompactDict::parse(&packed, Layout::Packed).unwrap();
        assert_eq!(
            CompactDict::parse(&plain, Layout::Plain)
                .unwrap()
                .group_bits(),
            4
        );
        assert_eq!(p.group_bits(), 10);
        p.verify(100_000).unwrap();
        assert!(
            packed.len() * 3 < plain.len() * 2,
            "{} bytes packed, {} plain",
            packed.len(),
            plain.len()
        );
        for (u, k) in &entries {
            assert_eq!(keys(&p, *u), vec![k.as_bytes().to_vec()]);
            assert!(keys(&p, u + 1).is_empty());
        }
    }

    #[test]
    fn long_shared_prefixes_and_empty_keys() {
        for layout in LAYOUTS {
            let long = "x".repeat(1024);
            let a = format!("{long}a");
            let b = format!("{long}b");
            let bytes = build(&[(0, ""), (1, &a), (1, &b), (17, &long), (18, "y")], layout);
            let d = CompactDict::parse(&bytes, layout).unwrap();
            d.verify(19).unwrap();
            assert_eq!(d.get(b""), Some(UserId(0)));
            assert_eq!(d.get(b.as_bytes()), Some(UserId(1)));
            assert_eq!(keys(&d, 0), vec![Vec::<u8>::new()]);
            assert_eq!(
                keys(&d, 1),
                vec![a.clone().into_bytes(), b.clone().into_bytes()]
            );
            assert_eq!(keys(&d, 17), vec![long.clone().into_bytes()]);
            assert_eq!(keys(&d, 18), vec![b"y".to_vec()]);
        }
    }

    #[test]
    fn a_user_with_more_keys_than_links_rebuilds_forward() {
        let names: Vec<String> = (0..200).map(|i| format!("device-{i:04}")).collect();
        let mut entries: Vec<(u32, &str)> = names.iter().map(|k| (5, k.as_str())).collect();
        entries.push((6, "device-9999-x"));
        let bytes = build(&entries, Layout::Packed);
        let d = CompactDict::parse(&bytes, Layout::Packed).unwrap();
        d.verify(7).unwrap();
        assert_eq!(keys(&d, 5).len(), 200);
        assert_eq!(keys(&d, 6), vec![b"device-9999-x".to_vec()]);
    }

    #[test]
    fn empty_dictionary() {
        for layout in LAYOUTS {
            let bytes = CompactWriter::new().finish(layout).unwrap();
            let d = CompactDict::parse(&bytes, layout).unwrap();
            assert_eq!(d.get(b"x"), None);
            assert!(keys(&d, 0).is_empty());
            d.verify(0).unwrap();
        }
    }

    #[test]
    fn duplicates_and_disorder_are_refused() {
        for layout in LAYOUTS {
            let mut w = CompactWriter::new();
            w.push(UserId(0), b"a");
            w.push(UserId(1), b"a");
            assert!(w.finish(layout).is_err());
            let mut w = CompactWriter::new();
            w.push(UserId(1), b"a");
            w.push(UserId(0), b"b");
            assert!(w.finish(layout).is_err());
        }
    }

    #[test]
    fn a_section_reads_only_in_its_own_layout() {
        let plain = build(&[(0, "a"), (3, "ab")], Layout::Plain);
        let packed = build(&[(0, "a"), (3, "ab")], Layout::Packed);
        assert!(CompactDict::parse(&plain, Layout::Packed).is_err());
        assert!(CompactDict::parse(&packed, Layout::Plain).is_err());
    }

    #[test]
    fn malformed_sections_are_refused() {
        for layout in LAYOUTS {
            let good = build(
                &[
                    (0, "a"),
                    (3, "ab"),
                    (3, "abd"),
                    (40, "abc"),
                    (41, "b"),
                    (90, "xyz"),
                ],
                layout,
            );
            for n in 0..good.len() {
                assert!(
                    CompactDict::parse(&good[..n], layout).is_err(),
                    "length {n}"
                );
            }
            // Every flipped byte of the groups or offsets is refused by
            // parse or caught by verify.
            let d = CompactDict::parse(&good, layout).unwrap();
            let tail = d.parts().offsets as usize + d.blocks.len();
            for i in good.len() - tail..good.len() {
                for flip in [0x21, 0x80, 0x01] {
                    let mut bad = good.clone();
                    bad[i] ^= flip;
                    let caught = match CompactDict::parse(&bad, layout) {
                        Err(_) => true,
                        Ok(d) => {
                            // Look-ups on a corrupt section answer, never panic.
                            let mut out = Vec::new();
                            for u in 0..100 {
                                d.key_into(UserId(u), &mut out);
                                d.keys_of(UserId(u)).for_each(drop);
                            }
                            d.verify(91).is_err()
                        }
                    };
                    assert!(
                        caught,
                        "{layout:?}: flipped byte {i} ({flip:#x}) went unnoticed"
                    );
                }
            }
        }
    }
}
