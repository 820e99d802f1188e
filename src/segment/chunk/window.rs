//! A plan counted on a window of a chunk: the words `first..first + width`
//! of its 1024 (users `64 * first..64 * (first + width)` of the chunk).
//! Sampled estimates over few chunks cut each chunk into windows and
//! count only the windows drawn ([`super::Sampler::count_windows`]), so a
//! 5% sample reads about 5% of each container's words.
//!
//! Every node writes its window in full (a window is at most a chunk, and
//! usually 64 or 128 words: it stays in the first-level cache); an AND
//! stops at its first empty child. An AND of cohort leaves whose
//! containers are all bitmaps is counted as the exact count counts it on
//! a whole chunk: the containers' windows read once each, in one pass,
//! nothing written.

use super::{Ctx, Lc, Node, GROUP};
use crate::attributes::bsi::{Mode, ScanState};
use crate::bitmap_view::{Container, Words, CHUNK_WORDS, KERNEL_BLOCK};

/// What a node holds on the window.
enum St {
    Empty,
    Full,
    Words,
}

/// Buffers of one window's width, one per nesting level, and an
/// attribute range's (made on first use): the window as a chunk's users,
/// then the range's users among them; the range's state.
pub(super) struct Pool {
    width: usize,
    free: Vec<Vec<u64>>,
    range: Option<(Box<Words>, ScanState)>,
}

impl Pool {
    pub(super) fn new(width: usize) -> Pool {
        Pool {
            width,
            free: Vec::new(),
            range: None,
        }
    }
    fn take(&mut self) -> Vec<u64> {
        self.free.pop().unwrap_or_else(|| vec![0; self.width])
    }
    fn give(&mut self, w: Vec<u64>) {
        self.free.push(w);
    }
}

/// One window of one chunk, with the chunk's leaves looked up once.
pub(super) struct At<'c, 'a> {
    pub ctx: &'c Ctx<'a>,
    pub key: u32,
    /// Each leaf's members in the chunk.
    pub lcs: &'c [Lc<'a>],
    pub first: usize,
}

impl At<'_, '_> {
    /// The chunk's users inside the window: bits `0..n` of it.
    fn users(&self, width: usize) -> usize {
        (self.ctx.chunk_len(self.key) as usize)
            .saturating_sub(64 * self.first)
            .min(64 * width)
    }

    /// `out` = the chunk's users inside the window.
    fn universe(&self, out: &mut [u64]) {
        let n = self.users(out.len());
        let full = n / 64;
        out[..full].fill(u64::MAX);
        if full < out.len() {
            out[full] = if n.is_multiple_of(64) {
                0
            } else {
                (1u64 << (n % 64)) - 1
            };
            out[full + 1..].fill(0);
        }
    }

    /// The count of `node` on the window.
    pub(super) fn count(&self, node: &Node, pool: &mut Pool) -> u64 {
        if let Some(n) = self.and_of_bitmaps(node, pool.width) {
            return n;
        }
        let mut out = pool.take();
        let n = match self.eval(node, &mut out, pool) {
            St::Empty => 0,
            St::Full => self.users(out.len()) as u64,
            St::Words if self.users(out.len()) == 64 * out.len() => {
                u64::from(self.ctx.k.window_popcount(&out))
            }
            St::Words => {
                // Cohort bitmaps may hold ids past the last user.
                let mut u = pool.take();
                self.universe(&mut u);
                let n = u64::from(self.ctx.k.window_and_count(&out, &u));
                pool.give(u);
                n
            }
        };
        pool.give(out);
        n
    }

    /// The count of an AND of cohort leaves whose containers in this
    /// chunk are all bitmaps (the `minus` ones may be missing), on a
    /// window of `width` words that holds only users ([`and_of_bitmaps`]).
    /// `None` when the node has another shape here.
    fn and_of_bitmaps(&self, node: &Node, width: usize) -> Option<u64> {
        and_of_bitmaps(
            self.ctx,
            node,
            self.key,
            (self.first, width),
            |i| match self.lcs[i] {
                Lc::Empty => Some(None),
                Lc::One(c) => Some(Some(c)),
                Lc::Merge(..) => None,
            },
        )
    }

    fn eval(&self, node: &Node, out: &mut [u64], pool: &mut Pool) -> St {
        match node {
            Node::All => St::Full,
            Node::Nothing => St::Empty,
            Node::Cohort(i) => match self.lcs[*i] {
                Lc::Empty => St::Empty,
                Lc::One(c) => {
                    c.write_window(self.first, out);
                    St::Words
                }
                Lc::Merge(b, a, r) => {
                    match b {
                        Some(b) => b.write_window(self.first, out),
                        None => out.fill(0),
                    }
                    let mut t = pool.take();
                    if let Some(a) = a {
                        a.write_window(self.first, &mut t);
                        out.iter_mut().zip(&t).for_each(|(o, x)| *o |= x);
                    }
                    if let Some(r) = r {
                        r.write_window(self.first, &mut t);
                        out.iter_mut().zip(&t).for_each(|(o, x)| *o &= !x);
                    }
                    pool.give(t);
                    St::Words
                }
            },
            Node::Bucket(lo, hi) => {
                out.fill(0);
                let n = self.users(out.len());
                if n == 0 {
                    return St::Empty;
                }
                let start = ((self.key << 16) as usize) + 64 * self.first;
                let buckets = self.ctx.buckets.range(start, n);
                let mut any = false;
                for (i, b) in buckets.iter().enumerate() {
                    if (*lo..=*hi).contains(b) {
                        out[i / 64] |= 1 << (i % 64);
                        any = true;
                    }
                }
                if any {
                    St::Words
                } else {
                    St::Empty
                }
            }
            // The range compared among the window's users only: the
            // chunk's other blocks read no slice.
            Node::Range(i) => {
                let (mask, st) = pool
                    .range
                    .get_or_insert_with(|| (Box::new([0; CHUNK_WORDS]), ScanState::default()));
                let span = self.first..self.first + out.len();
                mask.fill(0);
                mask[span.clone()].fill(u64::MAX);
                self.ctx.scans[*i].chunk(self.key as u16, mask, Mode::Keep, st);
                out.copy_from_slice(&mask[span]);
                if out.iter().any(|&w| w != 0) {
                    St::Words
                } else {
                    St::Empty
                }
            }
            Node::Not(c) => match self.eval(c, out, pool) {
                St::Empty => St::Full,
                St::Full => St::Empty,
                St::Words => {
                    let mut u = pool.take();
                    self.universe(&mut u);
                    out.iter_mut().zip(&u).for_each(|(o, x)| *o = !*o & x);
                    pool.give(u);
                    St::Words
                }
            },
            Node::And(all, minus) => {
                let mut state = St::Full;
                let mut t = pool.take();
                for c in all {
                    // A leaf of one container ANDs straight into `out`.
                    if let (St::Words, Node::Cohort(i)) = (&state, c) {
                        match self.lcs[*i] {
                            Lc::Empty => {
                                pool.give(t);
                                return St::Empty;
                            }
                            Lc::One(container) => {
                                if !container.and_window(self.ctx.k, self.first, out, &mut t) {
                                    pool.give(t);
                                    return St::Empty;
                                }
                                continue;
                            }
                            Lc::Merge(..) => {}
                        }
                    }
                    let into: &mut [u64] = match state {
                        St::Full => &mut *out,
                        _ => &mut t,
                    };
                    match (self.eval(c, into, pool), &state) {
                        (St::Empty, _) => {
                            pool.give(t);
                            return St::Empty;
                        }
                        (St::Full, _) => {}
                        (St::Words, St::Full) => state = St::Words,
                        (St::Words, _) => {
                            let mut any = 0;
                            for (o, x) in out.iter_mut().zip(&t) {
                                *o &= x;
                                any |= *o;
                            }
                            if any == 0 {
                                pool.give(t);
                                return St::Empty;
                            }
                        }
                    }
                }
                for c in minus {
                    match self.eval(c, &mut t, pool) {
                        St::Empty => {}
                        St::Full => {
                            pool.give(t);
                            return St::Empty;
                        }
                        St::Words => {
                            if let St::Full = state {
                                self.universe(out);
                                state = St::Words;
                            }
                            out.iter_mut().zip(&t).for_each(|(o, x)| *o &= !x);
                        }
                    }
                }
                pool.give(t);
                state
            }
            Node::Or(any) => {
                let mut state = St::Empty;
                let mut t = pool.take();
                for c in any {
                    let into: &mut [u64] = match state {
                        St::Empty => &mut *out,
                        _ => &mut t,
                    };
                    match (self.eval(c, into, pool), &state) {
                        (St::Empty, _) => {}
                        (St::Full, _) => {
                            pool.give(t);
                            return St::Full;
                        }
                        (St::Words, St::Empty) => state = St::Words,
                        (St::Words, _) => out.iter_mut().zip(&t).for_each(|(o, x)| *o |= x),
                    }
                }
                pool.give(t);
                state
            }
        }
    }
}

/// The count of an AND of cohort leaves (`node`) whose containers in
/// chunk `key` are all bitmaps (the `minus` ones may be missing), on the
/// window `(first, width)` of it when the window holds only users: the
/// containers' windows read once each in one pass, nothing written.
/// `leaf(i)` gives leaf `i`'s container in the chunk (`Some(None)`: it
/// has none), or `None` when the leaf is not one container there. `None`
/// when the node or the window has another shape.
pub(super) fn and_of_bitmaps<'a>(
    ctx: &Ctx,
    node: &Node,
    key: u32,
    (first, width): (usize, usize),
    leaf: impl Fn(usize) -> Option<Option<Container<'a>>>,
) -> Option<u64> {
    let Node::And(all, minus) = node else {
        return None;
    };
    // Cohort bitmaps may hold ids past the last user.
    let only_users = ctx.chunk_len(key) as usize >= 64 * (first + width);
    if all.is_empty()
        || all.len() > GROUP
        || minus.len() > GROUP
        || !width.is_multiple_of(KERNEL_BLOCK)
        || !only_users
    {
        return None;
    }
    let span = 8 * first..8 * (first + width);
    let mut a: [&[u8]; GROUP] = [&[]; GROUP];
    let mut m: [&[u8]; GROUP] = [&[]; GROUP];
    let mut nm = 0;
    for (j, c) in all.iter().enumerate() {
        let Node::Cohort(i) = c else { return None };
        match leaf(*i)? {
            None => return Some(0),
            Some(Container::Bitmap(b)) => a[j] = &b.bytes()[span.clone()],
            Some(_) => return None,
        }
    }
    for c in minus {
        let Node::Cohort(i) = c else { return None };
        match leaf(*i)? {
            None => {}
            Some(Container::Bitmap(b)) => {
                m[nm] = &b.bytes()[span.clone()];
                nm += 1;
            }
            Some(_) => return None,
        }
    }
    Some(u64::from(ctx.k.bitmaps_count(&a[..all.len()], &m[..nm])))
}
