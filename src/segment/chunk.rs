//! The chunk-wise evaluator: runs a [`Plan`] one 2^16-user chunk at a time
//! over cohort bitmaps in the portable roaring format, read in place
//! through [`BitmapView`], combining containers word by word and spreading
//! chunks over the rayon pool.
//!
//! Per chunk, every node yields `Empty`, `Full` (every user of the chunk)
//! or a 1024-word bitset. An AND stops at its first empty child, and a
//! cohort leaf whose bitmap has no container for the chunk is empty without
//! reading anything, so chunks that cannot match are skipped cheaply.
//! Counting allocates no result bitmap; listing members collects ids per
//! chunk. A plan that is a single cohort is counted from its cardinality.
//!
//! A cohort leaf is layered like the workspace: the bitmap of the snapshot
//! the workspace was loaded from, read in place from the map, plus the
//! members added and removed since, serialized once per cohort version by
//! the layer that holds the cohort ([`Prepared::assemble`] takes them as
//! [`LeafBytes`]; the workspace's glue is in [`crate::query`]). Per chunk, a leaf whose delta has no container
//! there is read straight from the snapshot's container; otherwise its
//! words are `(base | added) & !removed`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use roaring::RoaringBitmap;
use serde::Serialize;

use super::buckets;
#[allow(unsafe_code)] // helpers that may wake late: see the module's contract
mod helpers;
mod survey;
mod window;

use super::masks::{Mask, MaskSource, RangeMasks};
use super::plan::{Leaf, Plan};
use crate::attributes::bsi::{Mode, RangeScan, ScanState, ScanViews};
use crate::bitmap_view::{BitmapView, Container, Kernels, Words, CHUNK_WORDS};
use crate::error::{Error, Result};
use crate::ids::{CohortKey, UserId};
use crate::snapshot::Snapshot;
use crate::users::Buckets;
pub use survey::Survey;

/// A cohort's in-memory members in the portable roaring format: all of
/// them when the cohort has no snapshot bitmap, else what changed since.
pub use crate::bitmap_view::Serialized;

/// The compiled plan: leaves replaced by indexes into the views.
#[derive(Debug)]
enum Node {
    All,
    Nothing,
    Cohort(usize),
    Bucket(u16, u16),
    /// An attribute range, by its index among the plan's scans.
    Range(usize),
    Not(Box<Node>),
    And(Vec<Node>, Vec<Node>),
    Or(Vec<Node>),
}

/// What evaluating a plan met, for `explain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChunkStats {
    /// Chunks of the workspace (2^16 users each).
    pub chunks: u64,
    /// Chunks evaluated to the end.
    pub touched: u64,
    /// Chunks an AND found empty early (a child had nothing there).
    pub skipped: u64,
}

enum Out {
    Empty,
    Full,
    Words,
    /// Only when the caller asked for a count (`fuse`): the chunk's count,
    /// computed with the last combine, nothing written.
    Count(u32),
}

/// A cohort leaf's bitmaps, parsed.
#[derive(Clone, Copy)]
enum LeafView<'a> {
    /// Nothing changed since the snapshot (or there is no snapshot).
    Simple(BitmapView<'a>),
    Layered {
        base: Option<BitmapView<'a>>,
        added: Option<BitmapView<'a>>,
        removed: Option<BitmapView<'a>>,
    },
}

/// A leaf's members in one chunk.
#[derive(Clone, Copy)]
enum Lc<'a> {
    Empty,
    One(Container<'a>),
    /// `(base | added) & !removed`.
    Merge(
        Option<Container<'a>>,
        Option<Container<'a>>,
        Option<Container<'a>>,
    ),
}

impl<'a> Lc<'a> {
    /// A layered leaf's members in a chunk, from its base, added and
    /// removed containers there.
    fn layered(
        b: Option<Container<'a>>,
        a: Option<Container<'a>>,
        r: Option<Container<'a>>,
    ) -> Lc<'a> {
        match (b, a, r) {
            (None, None, _) => Lc::Empty,
            (Some(x), None, None) | (None, Some(x), _) => Lc::One(x),
            (b, a, r) => Lc::Merge(b, a, r),
        }
    }
}

impl<'a> LeafView<'a> {
    fn chunk(&self, key: u16) -> Lc<'a> {
        match self {
            LeafView::Simple(v) => v.container_for_key(key).map_or(Lc::Empty, Lc::One),
            LeafView::Layered {
                base,
                added,
                removed,
            } => Lc::layered(
                base.and_then(|v| v.container_for_key(key)),
                added.and_then(|v| v.container_for_key(key)),
                removed.and_then(|v| v.container_for_key(key)),
            ),
        }
    }

    fn contains(&self, u: u32) -> bool {
        match self {
            LeafView::Simple(v) => v.contains(u),
            LeafView::Layered {
                base,
                added,
                removed,
            } => {
                added.is_some_and(|v| v.contains(u))
                    || (base.is_some_and(|v| v.contains(u))
                        && !removed.is_some_and(|v| v.contains(u)))
            }
        }
    }
}

impl Lc<'_> {
    /// Writes the chunk's members into `out`.
    fn write_into(&self, k: Kernels, out: &mut Words) {
        match self {
            Lc::Empty => out.fill(0),
            Lc::One(c) => c.write_into_with(k, out),
            Lc::Merge(b, a, r) => {
                match b {
                    Some(b) => b.write_into_with(k, out),
                    None => out.fill(0),
                }
                if let Some(a) = a {
                    a.or_into_with(k, out);
                }
                if let Some(r) = r {
                    r.andnot_into_with(k, out);
                }
            }
        }
    }

    /// One step of an AND or AND NOT: with `fuse` (the step is a count's
    /// last), the count of `out (op) members` when it is cheap to get,
    /// leaving `out` as it was; else `out (op)= members` and `None`.
    fn step(
        &self,
        k: Kernels,
        op: Op,
        out: &mut Words,
        s: &mut Scratch,
        fuse: bool,
    ) -> Option<u32> {
        if fuse {
            if let Some(n) = self.count(k, op, out) {
                return Some(n);
            }
        }
        self.combine(k, op, out, s);
        None
    }

    /// The count of `out (op) members` when it is cheap to get without
    /// writing `out` (one container of array or bitmap kind, or none).
    fn count(&self, k: Kernels, op: Op, out: &Words) -> Option<u32> {
        Some(match (self, op) {
            (Lc::Empty, Op::And) => 0,
            (Lc::Empty, Op::Or | Op::AndNot) => k.popcount(out),
            (Lc::One(Container::Bitmap(b)), Op::And) => k.bitmap_and_count(out, b.bytes()),
            (Lc::One(Container::Bitmap(b)), Op::Or) => k.bitmap_or_count(out, b.bytes()),
            (Lc::One(Container::Bitmap(b)), Op::AndNot) => k.bitmap_andnot_count(out, b.bytes()),
            (Lc::One(Container::Array(a)), Op::And) => k.array_count_in(out, a.bytes()),
            (Lc::One(Container::Array(a)), Op::AndNot) => {
                k.popcount(out) - k.array_count_in(out, a.bytes())
            }
            _ => return None,
        })
    }

    /// `out (op) members`. A merged leaf whose added or removed part is
    /// sparse (the usual delta) combines in place: the few bits of `out`
    /// that the sparse part decides are noted first and put back after;
    /// otherwise the leaf is written to a scratch buffer.
    fn combine(&self, k: Kernels, op: Op, out: &mut Words, s: &mut Scratch) {
        match self {
            Lc::Empty => match op {
                Op::And => out.fill(0),
                Op::Or | Op::AndNot => {}
            },
            Lc::One(c) => match op {
                Op::And => c.and_into_with(k, out),
                Op::Or => c.or_into_with(k, out),
                Op::AndNot => c.andnot_into_with(k, out),
            },
            Lc::Merge(b, a, r) => {
                let sparse = |c: &Option<Container>| c.is_none_or(|c| c.cardinality() <= SPARSE);
                match op {
                    // out ∩ ((b ∪ a) \ r) = ((out ∩ b) ∪ (out ∩ a)) \ r
                    Op::And if sparse(a) => {
                        note(a.as_ref(), out, |_| true, &mut s.kept);
                        match b {
                            Some(b) => b.and_into_with(k, out),
                            None => out.fill(0),
                        }
                        set_again(&s.kept, out);
                        if let Some(r) = r {
                            r.andnot_into_with(k, out);
                        }
                    }
                    // out ∪ ((b ∪ a) \ r) = ((out ∪ b ∪ a) \ r) ∪ (out ∩ r)
                    Op::Or if sparse(r) => {
                        note(r.as_ref(), out, |_| true, &mut s.kept);
                        for c in [b, a].into_iter().flatten() {
                            c.or_into_with(k, out);
                        }
                        if let Some(r) = r {
                            r.andnot_into_with(k, out);
                        }
                        set_again(&s.kept, out);
                    }
                    // out \ ((b ∪ a) \ r) = (out \ (b ∪ a)) ∪ (out ∩ r ∩ (b ∪ a))
                    Op::AndNot if sparse(r) => {
                        let in_leaf = |v: u16| {
                            b.is_some_and(|c| c.contains(v)) || a.is_some_and(|c| c.contains(v))
                        };
                        note(r.as_ref(), out, in_leaf, &mut s.kept);
                        for c in [b, a].into_iter().flatten() {
                            c.andnot_into_with(k, out);
                        }
                        set_again(&s.kept, out);
                    }
                    _ => {
                        let mut t = s.take();
                        self.write_into(k, &mut t);
                        match op {
                            Op::And => k.words_and(out, &t),
                            Op::Or => k.words_or(out, &t),
                            Op::AndNot => k.words_andnot(out, &t),
                        }
                        s.give(t);
                    }
                }
            }
        }
    }
}

/// A node read like one container in a chunk: a cohort leaf's members,
/// or a bucket range's kept mask (held here while it is read).
enum Held<'a> {
    Leaf(Lc<'a>),
    Mask(Arc<Mask>),
}

impl<'a> Held<'a> {
    /// `c`'s members in chunk `key`, when `c` is a cohort leaf or a bucket
    /// range with a mask for the chunk (`None`: another node).
    fn of(c: &Node, key: u32, ctx: &'a Ctx, s: &mut Scratch) -> Option<Self> {
        match c {
            Node::Cohort(i) => Some(Held::Leaf(ctx.leaves[*i].chunk(key as u16))),
            Node::Bucket(lo, hi) => ctx.bucket_mask(key, *lo, *hi, s).map(Held::Mask),
            _ => None,
        }
    }

    fn lc(&self) -> Lc<'_> {
        match self {
            Held::Leaf(lc) => *lc,
            Held::Mask(m) => m.container().map_or(Lc::Empty, Lc::One),
        }
    }
}

/// A delta container at most this large combines in place.
const SPARSE: u32 = 4096;

/// Notes (in `kept`) the values of a sparse container whose bits are set
/// in `out` and that pass `keep`, to set again after `out` changes.
fn note(c: Option<&Container>, out: &Words, keep: impl Fn(u16) -> bool, kept: &mut Vec<u16>) {
    kept.clear();
    if let Some(c) = c {
        kept.extend(
            c.iter()
                .filter(|&v| out[usize::from(v >> 6)] >> (v & 63) & 1 == 1 && keep(v)),
        );
    }
}

fn set_again(kept: &[u16], out: &mut Words) {
    for &v in kept {
        out[usize::from(v >> 6)] |= 1 << (v & 63);
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Op {
    And,
    Or,
    AndNot,
}

struct Ctx<'a> {
    leaves: Vec<LeafView<'a>>,
    /// The attribute ranges' slices.
    scans: Vec<ScanViews<'a>>,
    buckets: Buckets<'a>,
    users: u32,
    k: Kernels,
    /// The bucket-range masks, and the plan's ranges looked up in them
    /// (none for one-user checks).
    masks: Option<&'a MaskSource>,
    ranges: Vec<Arc<RangeMasks>>,
}

impl Ctx<'_> {
    /// Users of chunk `key`: `0..n` low values.
    fn chunk_len(&self, key: u32) -> u32 {
        let start = key << 16;
        (self.users - start).min(1 << 16)
    }

    fn universe(&self, key: u32, w: &mut Words) {
        let n = self.chunk_len(key) as usize;
        let full = n / 64;
        w[..full].fill(u64::MAX);
        if full < CHUNK_WORDS {
            w[full] = if n.is_multiple_of(64) {
                0
            } else {
                (1u64 << (n % 64)) - 1
            };
            w[full + 1..].fill(0);
        }
    }

    /// The buckets of chunk `key`'s users (copied only for the one chunk
    /// that straddles the snapshot's users and those created since).
    fn chunk_buckets(&self, key: u32) -> std::borrow::Cow<'_, [u16]> {
        let start = (key << 16) as usize;
        self.buckets.range(start, self.chunk_len(key) as usize)
    }

    /// Writes the users of chunk `key` whose bucket is in `lo..=hi`; how
    /// many there are.
    fn bucket_words(&self, key: u32, lo: u16, hi: u16, w: &mut Words) -> u32 {
        buckets::write(self.k, &self.chunk_buckets(key), lo, hi, w)
    }

    /// Keeps in `w` the members whose bucket is in `lo..=hi` (`outside`:
    /// is not), without a scratch buffer. How many remain.
    fn bucket_and(&self, key: u32, lo: u16, hi: u16, outside: bool, w: &mut Words) -> u32 {
        buckets::and(self.k, &self.chunk_buckets(key), lo, hi, outside, w)
    }

    /// The range `lo..=hi` of the mask cache, when chunk `key` is read
    /// through it (a full chunk that has a slot there).
    fn masked(&self, key: u32, lo: u16, hi: u16) -> Option<&RangeMasks> {
        self.masks?;
        self.ranges
            .iter()
            .find(|r| r.lo() == lo && r.hi() == hi && r.slots() > key as usize)
            .map(|r| &**r)
    }

    /// The mask of chunk `key` for `range` (see [`Self::masked`]): kept,
    /// or built from the buckets now.
    fn mask(&self, range: &RangeMasks, key: u32, s: &mut Scratch) -> Option<Arc<Mask>> {
        let cache = self.masks?.cache();
        if let Some(m) = cache.get(range, key) {
            return Some(m);
        }
        let mut t = s.take();
        let m = cache.build(range, key, self.k, &self.chunk_buckets(key), &mut t);
        s.give(t);
        Some(m)
    }

    /// The users of chunk `key` in `lo..=hi` as a mask, when the chunk is
    /// read through the cache.
    fn bucket_mask(&self, key: u32, lo: u16, hi: u16, s: &mut Scratch) -> Option<Arc<Mask>> {
        self.mask(self.masked(key, lo, hi)?, key, s)
    }

    /// Whether chunk `key` holds every user a chunk can (no partial last
    /// chunk): only then may a count skip cutting the result to the users.
    fn full_chunk(&self, key: u32) -> bool {
        self.chunk_len(key) == 1 << 16
    }
}

/// A scratch stack of chunk buffers, one per nesting level.
/// Also the values a sparse delta container keeps (see [`Lc::combine`]).
#[derive(Default)]
struct Scratch {
    words: Vec<Box<Words>>,
    kept: Vec<u16>,
    /// An attribute range's buffers (made on its first chunk).
    scan: Option<ScanState>,
}

impl Scratch {
    /// The users of chunk `key` in range `i`, as `mode` says (written
    /// into `words`, or kept or dropped from them); how many `words` then
    /// hold.
    fn range(&mut self, ctx: &Ctx, i: usize, key: u32, words: &mut Words, mode: Mode) -> u32 {
        let st = self.scan.get_or_insert_with(ScanState::default);
        ctx.scans[i].chunk(key as u16, words, mode, st)
    }

    fn take(&mut self) -> Box<Words> {
        self.words
            .pop()
            .unwrap_or_else(|| Box::new([0u64; CHUNK_WORDS]))
    }
    fn give(&mut self, w: Box<Words>) {
        self.words.push(w);
    }
}

/// A count whose estimated work is at most this many units (a cohort
/// leaf's container in one chunk is one unit, a bucket leaf eight: it reads
/// 128 KiB of buckets) runs on the calling thread: waking the pool costs
/// more than it saves. Measured on the medium workload (2 cores): five
/// large ANDed (about 100 units) took 14 µs on the calling thread against
/// 30 µs spread over the pool; two large ANDed (about 300 units) gains from
/// the second core on an idle machine.
const SERIAL_UNITS: usize = 256;

/// The elements of array containers that cost about one unit of
/// [`SERIAL_UNITS`]: measured on the medium workload, a chunk of twenty
/// medium cohorts ORed (arrays of about 1,300 elements) took about 1.2 µs
/// a leaf, a chunk's two large bitmaps ANDed about 0.15 µs each.
const ARRAY_ELEMENTS_PER_UNIT: f64 = 150.0;

/// A plan's estimated work per chunk, in [`SERIAL_UNITS`] units.
fn units(node: &Node) -> usize {
    match node {
        Node::All | Node::Nothing => 0,
        Node::Cohort(_) => 1,
        Node::Bucket(..) => 8,
        // Reads up to every slice's container in the chunk.
        Node::Range(_) => 8,
        Node::Not(c) => units(c),
        Node::And(all, minus) => all.iter().chain(minus).map(units).sum(),
        Node::Or(any) => any.iter().map(units).sum(),
    }
}

/// A count's chunks are cut into about this many pieces per thread: small
/// enough that a skewed plan (its chunks clustered in a band) still spreads
/// over every thread, and that a helper which wakes late finds work left.
const PIECES_PER_THREAD: usize = 8;

/// The sum of `f` over `keys`, computed by the calling thread together with
/// up to `threads - 1` pool threads that join as they wake, each taking the
/// next piece of keys until none is left.
///
/// Handing the whole job to the pool (`par_iter` from outside it) makes the
/// caller sleep until a worker wakes, does the work and wakes it again: two
/// wake-ups, tens of microseconds on a virtual machine, for counts that
/// take about as long. Here the caller starts at once, and once no piece
/// is left it waits only for the helpers still working on one: a helper
/// that wakes later returns without touching anything
/// ([`helpers::with_helpers`]; a scope would wait for it to wake).
///
/// Each thread's state goes to `done` once, when it runs out of work:
/// tallies kept there cost nothing per key, where a shared atomic updated
/// per key bounces its cache line between the cores.
fn spread_sum<S>(
    keys: &[u32],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, u32) -> u64 + Sync,
    done: impl Fn(S) + Sync,
) -> u64 {
    let piece = (keys.len() / (threads * PIECES_PER_THREAD)).max(1);
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    let run = || {
        let mut state = None;
        let mut n = 0;
        loop {
            let at = next.fetch_add(piece, Ordering::Relaxed);
            let Some(these) = keys.get(at..(at + piece).min(keys.len())) else {
                break;
            };
            if these.is_empty() {
                break;
            }
            let s = state.get_or_insert_with(&init);
            n += these.iter().map(|&key| f(s, key)).sum::<u64>();
        }
        total.fetch_add(n, Ordering::Relaxed);
        if let Some(s) = state {
            done(s);
        }
    };
    helpers::with_helpers(threads.saturating_sub(1), &run);
    total.into_inner()
}

/// The chunks a count evaluates, in order: for an AND with a cohort leaf
/// among its `all` children, the chunks where the first such leaf (the
/// smallest: the planner orders them) has a container; else all of them.
fn candidates(node: &Node, ctx: &Ctx, chunks: u32) -> Vec<u32> {
    let first = match node {
        Node::And(all, _) => all.iter().find_map(|c| match c {
            Node::Cohort(i) => Some(*i),
            _ => None,
        }),
        _ => None,
    };
    // Read off the bitmaps' headers (rising keys), those below `chunks`.
    fn keys<'a>(v: &BitmapView<'a>, chunks: u32) -> impl Iterator<Item = u32> + 'a {
        v.keys_and_cardinalities()
            .map(|(k, _)| u32::from(k))
            .take_while(move |&k| k < chunks)
    }
    match first.map(|i| &ctx.leaves[i]) {
        None => (0..chunks).collect(),
        Some(LeafView::Simple(v)) => {
            let mut k = Vec::with_capacity(v.containers());
            k.extend(keys(v, chunks));
            k
        }
        Some(LeafView::Layered { base, added, .. }) => {
            let mut k: Vec<u32> = base
                .iter()
                .chain(added)
                .flat_map(|v| keys(v, chunks))
                .collect();
            k.sort_unstable();
            k.dedup();
            k
        }
    }
}

/// At most this many inputs go through one multi-input kernel call.
pub(super) const GROUP: usize = 8;

/// Evaluates `node` on chunk `key` into `out`. With `fuse` (the root of a
/// count, on a full chunk) the node may return [`Out::Count`] instead of
/// writing its last combine.
fn eval(
    node: &Node,
    key: u32,
    ctx: &Ctx,
    out: &mut Words,
    s: &mut Scratch,
    early: &mut bool,
    fuse: bool,
) -> Out {
    let k = ctx.k;
    match node {
        Node::All => Out::Full,
        Node::Nothing => Out::Empty,
        Node::Cohort(i) => match ctx.leaves[*i].chunk(key as u16) {
            Lc::Empty => Out::Empty,
            lc => {
                lc.write_into(k, out);
                Out::Words
            }
        },
        Node::Bucket(lo, hi) => {
            if let Some(m) = ctx.bucket_mask(key, *lo, *hi, s) {
                return match m.container() {
                    None => Out::Empty,
                    Some(c) => {
                        c.write_into_with(k, out);
                        Out::Words
                    }
                };
            }
            if ctx.bucket_words(key, *lo, *hi, out) != 0 {
                Out::Words
            } else {
                Out::Empty
            }
        }
        Node::Range(i) => {
            if s.range(ctx, *i, key, out, Mode::Write) != 0 {
                Out::Words
            } else {
                Out::Empty
            }
        }
        Node::Not(child) => match eval(child, key, ctx, out, s, early, false) {
            Out::Empty => Out::Full,
            Out::Full => Out::Empty,
            Out::Words | Out::Count(_) => {
                let mut u = s.take();
                ctx.universe(key, &mut u);
                k.words_not_within(out, &u);
                s.give(u);
                Out::Words
            }
        },
        Node::And(all, minus) => {
            if fuse {
                if let Some(r) = and_of_bitmaps(all, minus, key, ctx, early) {
                    return r;
                }
            }
            // A bucket child read through the mask cache is a leaf like a
            // cohort's; the others are left to the end.
            let masked = |c: &Node| match c {
                Node::Bucket(lo, hi) => ctx.masked(key, *lo, *hi).is_some(),
                _ => false,
            };
            // Bucket children not read through the mask cache, and
            // attribute ranges, come last (`deferred`).
            let deferred = |c: &Node| match c {
                Node::Bucket(..) => !masked(c),
                Node::Range(_) => true,
                _ => false,
            };
            let buckets = all.iter().chain(minus).any(deferred);
            // The step a count may fuse: the last `minus` leaf, else the
            // last `all` one (buckets, when there are any, come after both
            // and count as they go).
            let fuse_all = fuse && !buckets && minus.is_empty();
            let fuse_minus = fuse && !buckets && !minus.is_empty();
            let mut state = Out::Full;
            // Bucket children come last, when the other children have made
            // the set as small as they can: they read a bucket per user.
            // So do attribute ranges: a range reads a block's slices only
            // while the block holds users to compare.
            for (j, c) in all.iter().enumerate() {
                if deferred(c) {
                    continue;
                }
                // A cohort leaf or a masked bucket range combines straight
                // from its container.
                if let Out::Words = state {
                    if let Some(held) = Held::of(c, key, ctx, s) {
                        let lc = held.lc();
                        if let Lc::Empty = lc {
                            *early = true;
                            return Out::Empty;
                        }
                        let fuse = fuse_all && j + 1 == all.len();
                        if let Some(n) = lc.step(k, Op::And, out, s, fuse) {
                            return Out::Count(n);
                        }
                        continue;
                    }
                }
                match state {
                    Out::Full => match eval(c, key, ctx, out, s, early, false) {
                        Out::Empty => {
                            *early = true;
                            return Out::Empty;
                        }
                        other => state = other,
                    },
                    Out::Words => {
                        let mut t = s.take();
                        let r = eval(c, key, ctx, &mut t, s, early, false);
                        match r {
                            Out::Empty => {
                                s.give(t);
                                *early = true;
                                return Out::Empty;
                            }
                            Out::Full => {}
                            Out::Words | Out::Count(_) => k.words_and(out, &t),
                        }
                        s.give(t);
                    }
                    Out::Empty | Out::Count(_) => unreachable!("an empty AND returns at once"),
                }
            }
            for (j, c) in minus.iter().enumerate() {
                if deferred(c) {
                    continue;
                }
                if let Out::Full = state {
                    ctx.universe(key, out);
                    state = Out::Words;
                }
                if let Some(held) = Held::of(c, key, ctx, s) {
                    let fuse = fuse_minus && j + 1 == minus.len();
                    if let Some(n) = held.lc().step(k, Op::AndNot, out, s, fuse) {
                        return Out::Count(n);
                    }
                    continue;
                }
                let mut t = s.take();
                let r = eval(c, key, ctx, &mut t, s, early, false);
                match r {
                    Out::Empty => {}
                    Out::Full => {
                        s.give(t);
                        return Out::Empty;
                    }
                    Out::Words | Out::Count(_) => k.words_andnot(out, &t),
                }
                s.give(t);
            }
            let all_buckets = all.iter().map(|c| (c, false));
            let mut counted = None;
            for (c, outside) in all_buckets.chain(minus.iter().map(|c| (c, true))) {
                if let Node::Range(i) = *c {
                    let n = if let (Out::Full, false) = (&state, outside) {
                        let n = s.range(ctx, i, key, out, Mode::Write);
                        if n == 0 {
                            *early = true;
                            return Out::Empty;
                        }
                        n
                    } else {
                        if let Out::Full = state {
                            ctx.universe(key, out);
                        }
                        // Compares only the users held, in place.
                        let mode = if outside { Mode::Drop } else { Mode::Keep };
                        let n = s.range(ctx, i, key, out, mode);
                        if n == 0 {
                            return Out::Empty;
                        }
                        n
                    };
                    // Exact on a full chunk (the only one a count fuses).
                    state = Out::Words;
                    counted = Some(n);
                    continue;
                }
                let Node::Bucket(lo, hi) = *c else {
                    continue;
                };
                if masked(c) {
                    continue;
                }
                let n = if let (Out::Full, false) = (&state, outside) {
                    let n = ctx.bucket_words(key, lo, hi, out);
                    if n == 0 {
                        *early = true;
                        return Out::Empty;
                    }
                    n
                } else {
                    if let Out::Full = state {
                        ctx.universe(key, out);
                    }
                    // Tests only the members, in place.
                    let n = ctx.bucket_and(key, lo, hi, outside, out);
                    if n == 0 {
                        return Out::Empty;
                    }
                    n
                };
                // Exact for a partial chunk too: users past the chunk's
                // are dropped.
                counted = Some(n);
                state = Out::Words;
            }
            match counted {
                Some(n) if fuse => Out::Count(n),
                _ => state,
            }
        }
        Node::Or(any) => {
            let mut state = Out::Empty;
            // The children's bitmap containers go several per pass over
            // `out` (in groups, as they come); the other containers set
            // bits.
            let mut group: [&[u8]; GROUP] = [&[]; GROUP];
            let mut g = 0;
            let flush = |group: &[&[u8]], state: &mut Out, out: &mut Words| {
                let rest = match (&*state, group.split_first()) {
                    (_, None) => return,
                    (Out::Empty, Some((first, rest))) => {
                        k.bitmap_copy(out, first);
                        *state = Out::Words;
                        rest
                    }
                    _ => group,
                };
                if !rest.is_empty() {
                    k.bitmaps_or(out, rest);
                }
            };
            for c in any {
                if let Node::Cohort(i) = c {
                    match (ctx.leaves[*i].chunk(key as u16), &state) {
                        (Lc::Empty, _) => {}
                        (Lc::One(Container::Bitmap(b)), _) => {
                            group[g] = b.bytes();
                            g += 1;
                            if g == GROUP {
                                flush(&group, &mut state, out);
                                g = 0;
                            }
                        }
                        (lc, Out::Empty) => {
                            lc.write_into(k, out);
                            state = Out::Words;
                        }
                        (lc, _) => lc.combine(k, Op::Or, out, s),
                    }
                    continue;
                }
                match state {
                    Out::Empty => {
                        state = eval(c, key, ctx, out, s, early, false);
                        if let Out::Full = state {
                            return Out::Full;
                        }
                    }
                    Out::Words | Out::Count(_) => {
                        let mut t = s.take();
                        let r = eval(c, key, ctx, &mut t, s, early, false);
                        match r {
                            Out::Empty => {}
                            Out::Full => {
                                s.give(t);
                                return Out::Full;
                            }
                            Out::Words | Out::Count(_) => k.words_or(out, &t),
                        }
                        s.give(t);
                    }
                    Out::Full => return Out::Full,
                }
            }
            flush(&group[..g], &mut state, out);
            state
        }
    }
}

/// An AND of cohort leaves whose containers in this chunk are all bitmaps
/// (the `minus` ones may be missing), counted in one pass that reads each
/// container once and writes nothing. `None` when the AND has another
/// shape here.
fn and_of_bitmaps(
    all: &[Node],
    minus: &[Node],
    key: u32,
    ctx: &Ctx,
    early: &mut bool,
) -> Option<Out> {
    if all.is_empty() || all.len() > GROUP || minus.len() > GROUP {
        return None;
    }
    let mut a: [&[u8]; GROUP] = [&[]; GROUP];
    let mut m: [&[u8]; GROUP] = [&[]; GROUP];
    let mut nm = 0;
    for (j, c) in all.iter().enumerate() {
        let Node::Cohort(i) = c else { return None };
        match ctx.leaves[*i].chunk(key as u16) {
            Lc::Empty => {
                *early = true;
                return Some(Out::Empty);
            }
            Lc::One(Container::Bitmap(b)) => a[j] = b.bytes(),
            _ => return None,
        }
    }
    for c in minus {
        let Node::Cohort(i) = c else { return None };
        match ctx.leaves[*i].chunk(key as u16) {
            Lc::Empty => {}
            Lc::One(Container::Bitmap(b)) => {
                m[nm] = b.bytes();
                nm += 1;
            }
            _ => return None,
        }
    }
    Some(Out::Count(ctx.k.bitmaps_count(&a[..all.len()], &m[..nm])))
}

/// Evaluates the whole plan for one chunk. Cohort bitmaps may hold ids
/// past the last user (a bitmap is only trusted to be a set of u32), so the
/// last, partial chunk is cut to the users that exist. With `fuse`, the
/// result may be a count.
fn eval_root(
    node: &Node,
    key: u32,
    ctx: &Ctx,
    out: &mut Words,
    s: &mut Scratch,
    early: &mut bool,
    fuse: bool,
) -> Out {
    let full = ctx.full_chunk(key);
    let r = eval(node, key, ctx, out, s, early, fuse && full);
    if let Out::Words = r {
        if !full {
            let mut u = s.take();
            ctx.universe(key, &mut u);
            ctx.k.words_and(out, &u);
            s.give(u);
        }
    }
    r
}

/// A cohort leaf's bytes, as the layer that holds the cohort gives them
/// to [`Prepared::assemble`]: its snapshot bitmap, borrowed from the map,
/// and its in-memory members.
pub struct LeafBytes<'w> {
    /// The snapshot's bitmap, read in place (`None`: no snapshot bitmap).
    pub base: Option<BitmapView<'w>>,
    /// The members added and removed since (`None`: nothing changed).
    pub delta: Option<Arc<Serialized>>,
    /// The largest member, when it may lie past the users' count: a
    /// single-cohort plan is counted from the cohort's cardinality only
    /// when this is `None` or below the users' count.
    pub max: Option<u32>,
}

/// A plan ready to run: its leaves' bitmaps fetched, the buckets at hand.
pub struct Prepared<'w> {
    node: Node,
    bytes: Vec<LeafBytes<'w>>,
    /// The attribute ranges the plan compares.
    scans: Vec<Arc<RangeScan>>,
    buckets: Buckets<'w>,
    users: u32,
    single: Option<u64>,
    masks: Option<MaskSource>,
}

type FetchLeaf<'a, 'w> = dyn FnMut(&CohortKey) -> Result<LeafBytes<'w>> + 'a;

/// What [`compile`] gathers: the cohort leaves' bytes and the attribute
/// ranges, in the order the nodes name them.
#[derive(Default)]
struct Gathered<'w> {
    bytes: Vec<LeafBytes<'w>>,
    scans: Vec<Arc<RangeScan>>,
}

fn compile<'w>(p: &Plan, leaf: &mut FetchLeaf<'_, 'w>, got: &mut Gathered<'w>) -> Result<Node> {
    let bytes = &mut got.bytes;
    Ok(match p {
        Plan::All => Node::All,
        Plan::Nothing => Node::Nothing,
        Plan::Leaf(Leaf::Cohort {
            partner, cohort_id, ..
        }) => {
            bytes.push(leaf(&CohortKey::new(*partner, cohort_id.clone()))?);
            Node::Cohort(bytes.len() - 1)
        }
        Plan::Leaf(Leaf::Bucket { lo, hi, .. }) => Node::Bucket(*lo, *hi),
        Plan::Leaf(Leaf::AttributeRange { scan, .. }) => {
            got.scans.push(scan.0.clone());
            Node::Range(got.scans.len() - 1)
        }
        // Read like a cohort with no snapshot bitmap: all its users are
        // the serialized delta.
        // (serialized once per selection: an index's value bitmap keeps
        // its serialization while it is unchanged).
        Plan::Leaf(Leaf::Attribute { members, .. }) | Plan::Leaf(Leaf::Deleted { members, .. }) => {
            bytes.push(LeafBytes {
                base: None,
                delta: Some(members.0.serialized()),
                max: members.0.max(),
            });
            Node::Cohort(bytes.len() - 1)
        }
        Plan::Not { child } => Node::Not(Box::new(compile(child, leaf, got)?)),
        Plan::And { all, minus } => Node::And(
            all.iter()
                .map(|c| compile(c, leaf, got))
                .collect::<Result<_>>()?,
            minus
                .iter()
                .map(|c| compile(c, leaf, got))
                .collect::<Result<_>>()?,
        ),
        Plan::Or { any } => Node::Or(
            any.iter()
                .map(|c| compile(c, leaf, got))
                .collect::<Result<_>>()?,
        ),
    })
}

/// A plan's count when it needs no evaluation.
fn trivial(plan: &Plan, users: u32, trusted_leaf: bool) -> Option<u64> {
    match plan {
        Plan::Leaf(Leaf::Cohort { cardinality, .. })
        | Plan::Leaf(Leaf::Attribute { cardinality, .. })
            if trusted_leaf =>
        {
            Some(*cardinality)
        }
        Plan::All => Some(u64::from(users)),
        Plan::Nothing => Some(0),
        _ => None,
    }
}

impl<'w> Prepared<'w> {
    /// Compiles `plan` (made by [`super::plan::plan`] on the same view)
    /// over `users` users with these buckets, fetching each cohort leaf's
    /// bytes with `leaf`. The layers that hold cohorts (a workspace, a
    /// frozen view of one) build their plans with this.
    pub fn assemble(
        plan: &Plan,
        users: u32,
        buckets: Buckets<'w>,
        mut leaf: impl FnMut(&CohortKey) -> Result<LeafBytes<'w>>,
    ) -> Result<Self> {
        let mut got = Gathered::default();
        let node = compile(plan, &mut leaf, &mut got)?;
        let Gathered { bytes, scans } = got;
        // A bitmap is only trusted to hold users that exist if its largest
        // member says so.
        let trusted = matches!(
            plan,
            Plan::Leaf(Leaf::Cohort { .. }) | Plan::Leaf(Leaf::Attribute { .. })
        ) && bytes
            .first()
            .is_some_and(|b| b.max.is_none_or(|m| m < users));
        Ok(Prepared {
            node,
            bytes,
            scans,
            buckets,
            users,
            single: trivial(plan, users, trusted),
            masks: None,
        })
    }

    /// Runs `plan` (made by [`super::plan::plan`] on the snapshot) over a
    /// snapshot's mapped bitmaps and buckets, without copying them.
    pub fn for_snapshot(snap: &'w Snapshot, plan: &Plan) -> Result<Self> {
        let meta = snap.meta()?;
        let mut got = Gathered::default();
        let mut leaf = |key: &CohortKey| -> Result<LeafBytes<'w>> {
            let i = snap
                .cohort_index(key)?
                .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
            Ok(LeafBytes {
                base: Some(snap.bitmap(i)?),
                delta: None,
                max: None,
            })
        };
        let node = compile(plan, &mut leaf, &mut got)?;
        // `verify` checks that snapshot bitmaps hold only existing users.
        Ok(Prepared {
            node,
            bytes: got.bytes,
            scans: got.scans,
            buckets: Buckets::contiguous(snap.buckets()?),
            users: meta.users,
            single: trivial(plan, meta.users, true),
            masks: None,
        })
    }

    /// Reads the plan's bucket ranges through `masks` (the cache of the
    /// workspace or snapshot the plan runs on; `None`: from the buckets).
    pub fn with_bucket_masks(mut self, masks: Option<MaskSource>) -> Self {
        self.masks = masks;
        self
    }

    /// A context for evaluating chunks: the checker's, with the plan's
    /// bucket ranges looked up in the mask cache.
    fn chunk_ctx(&self) -> Result<Checker<'_>> {
        let mut checker = self.checker()?;
        if let Some(m) = &self.masks {
            let full = self.users >> 16;
            let mut ranges = Vec::new();
            bucket_ranges(&self.node, &mut ranges);
            checker.ctx.ranges = ranges
                .into_iter()
                .filter_map(|(lo, hi)| m.range(lo, hi, full))
                .collect();
            checker.ctx.masks = Some(m);
        }
        Ok(checker)
    }

    fn with_ctx<T>(&self, k: Kernels, f: impl FnOnce(&Ctx) -> T) -> Result<T> {
        let mut checker = self.chunk_ctx()?;
        checker.ctx.k = k;
        Ok(f(&checker.ctx))
    }

    fn chunks(&self) -> u32 {
        self.users.div_ceil(1 << 16)
    }

    /// The exact count, and what the chunks did.
    pub fn count_with_stats(&self) -> Result<(u64, ChunkStats)> {
        self.count_with_stats_using(Kernels::active())
    }

    /// The exact count with these kernels (the same answer whichever the
    /// CPU has: a test compares them).
    pub fn count_with(&self, k: Kernels) -> Result<u64> {
        self.count_with_stats_using(k).map(|(n, _)| n)
    }

    fn count_with_stats_using(&self, k: Kernels) -> Result<(u64, ChunkStats)> {
        if let Some(n) = self.single {
            return Ok((
                n,
                ChunkStats {
                    chunks: u64::from(self.chunks()),
                    ..ChunkStats::default()
                },
            ));
        }
        self.with_ctx(k, |ctx| self.count_in(ctx))
    }

    /// The exact count with this context (not a stored one).
    fn count_in(&self, ctx: &Ctx) -> (u64, ChunkStats) {
        let chunks = self.chunks();
        let keys = candidates(&self.node, ctx, chunks);
        // Chunks an AND found empty early, added up per thread.
        let early_total = AtomicU64::new(0);
        let one = |(w, s, early_n): &mut (Box<Words>, Scratch, u64), key: u32| {
            let mut early = false;
            let n = self.count_chunk(ctx, key, (w, s), &mut early);
            *early_n += u64::from(early);
            n
        };
        let buffers = || (Box::new([0u64; CHUNK_WORDS]), Scratch::default(), 0u64);
        let threads = rayon::current_num_threads();
        let n = if keys.len() * units(&self.node) <= SERIAL_UNITS || threads == 1 {
            let mut b = buffers();
            let n = keys.iter().map(|&key| one(&mut b, key)).sum::<u64>();
            early_total.fetch_add(b.2, Ordering::Relaxed);
            n
        } else {
            spread_sum(&keys, threads, buffers, one, |(_, _, e)| {
                early_total.fetch_add(e, Ordering::Relaxed);
            })
        };
        let early = early_total.into_inner();
        (
            n,
            ChunkStats {
                chunks: u64::from(chunks),
                touched: keys.len() as u64 - early,
                // Chunks no candidate (an AND child has nothing there), and
                // those an AND found empty early.
                skipped: u64::from(chunks) - keys.len() as u64 + early,
            },
        )
    }

    /// The count of chunk `key` (`early`: an AND found it empty early).
    fn count_chunk(
        &self,
        ctx: &Ctx,
        key: u32,
        (w, s): (&mut Box<Words>, &mut Scratch),
        early: &mut bool,
    ) -> u64 {
        let r = eval_root(&self.node, key, ctx, w, s, early, true);
        chunk_count(ctx.k, &r, w, ctx.chunk_len(key))
    }

    /// The exact count.
    pub fn count(&self) -> Result<u64> {
        self.count_with_stats().map(|(n, _)| n)
    }

    /// The workspace's chunks (2^16 users each, the last one partial).
    pub fn chunk_count(&self) -> u32 {
        self.chunks()
    }

    /// The count when it needs no evaluation (a single trusted cohort
    /// leaf, every user, nobody).
    pub fn stored_count(&self) -> Option<u64> {
        self.single
    }

    /// The users of chunk `key`.
    pub fn chunk_users(&self, key: u32) -> u32 {
        let start = u64::from(key) << 16;
        (u64::from(self.users).saturating_sub(start)).min(1 << 16) as u32
    }

    /// The plan's work per chunk in the units of [`SERIAL_UNITS`] (a cohort
    /// container in one chunk is one, a bucket range eight).
    pub fn units(&self) -> u64 {
        units(&self.node) as u64
    }

    /// A prediction of every chunk's count from its leaves' container
    /// sizes alone ([`Sampler::predict`] of every chunk).
    pub fn predict_chunks(&self) -> Result<Vec<f64>> {
        let keys: Vec<u32> = (0..self.chunks()).collect();
        Ok(self.sampler()?.predict(&keys))
    }

    /// The plan's leaves parsed once for a sampled estimate's several
    /// questions (see [`Sampler`]).
    pub fn sampler(&self) -> Result<Sampler<'_, 'w>> {
        Ok(Sampler {
            prepared: self,
            checker: self.chunk_ctx()?,
        })
    }

    /// The members of chunks `from..to` (chunk keys), in id order.
    pub fn members_in(&self, from: u32, to: u32) -> Result<RoaringBitmap> {
        let to = to.min(self.chunks());
        self.with_ctx(Kernels::active(), |ctx| {
            let parts: Vec<Vec<u32>> = (from..to)
                .into_par_iter()
                .with_max_len(4)
                .map_init(
                    || (Box::new([0u64; CHUNK_WORDS]), Scratch::default()),
                    |(w, s), key| {
                        let mut early = false;
                        let base = key << 16;
                        match eval_root(&self.node, key, ctx, w, s, &mut early, false) {
                            Out::Empty | Out::Count(_) => Vec::new(),
                            Out::Full => (base..base + ctx.chunk_len(key)).collect(),
                            Out::Words => {
                                let mut ids = Vec::with_capacity(ctx.k.popcount(w) as usize);
                                for (i, &word) in w.iter().enumerate() {
                                    let mut x = word;
                                    while x != 0 {
                                        let b = x.trailing_zeros();
                                        ids.push(base + (i as u32) * 64 + b);
                                        x &= x - 1;
                                    }
                                }
                                ids
                            }
                        }
                    },
                )
                .collect();
            let mut bm = RoaringBitmap::new();
            for p in parts {
                // Chunks come in order, ids ascending within each.
                let _ = bm.append(p);
            }
            bm
        })
    }

    /// All members, in id order.
    pub fn members(&self) -> Result<RoaringBitmap> {
        self.members_in(0, self.chunks())
    }

    /// Whether one user is in the segment: one container per leaf.
    pub fn contains(&self, user: UserId) -> Result<bool> {
        Ok(self.checker()?.contains(user))
    }

    /// The leaves' bitmaps parsed once, for many one-user checks.
    pub fn checker(&self) -> Result<Checker<'_>> {
        fn opt(b: Option<&[u8]>) -> Result<Option<BitmapView<'_>>> {
            b.map(|b| {
                BitmapView::parse(b).map_err(|e| Error::Corrupt {
                    path: "<cohort bitmap>".into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
        }
        let mut leaves = Vec::with_capacity(self.bytes.len());
        for b in &self.bytes {
            let added = opt(b.delta.as_ref().and_then(|d| d.added.as_deref()))?;
            let removed = opt(b.delta.as_ref().and_then(|d| d.removed.as_deref()))?;
            let base = b.base;
            leaves.push(match (base, added, removed) {
                (Some(v), None, None) | (None, Some(v), None) => LeafView::Simple(v),
                (None, None, None) => LeafView::Simple(BitmapView::empty()),
                (base, added, removed) => LeafView::Layered {
                    base,
                    added,
                    removed,
                },
            });
        }
        Ok(Checker {
            node: &self.node,
            ctx: Ctx {
                leaves,
                scans: self.scans.iter().map(|s| s.views()).collect(),
                buckets: self.buckets,
                users: self.users,
                k: Kernels::active(),
                masks: None,
                ranges: Vec::new(),
            },
        })
    }
}

/// One-user checks against a prepared plan: a binary search of the chunk
/// key and one container read per leaf, no allocation.
pub struct Checker<'p> {
    node: &'p Node,
    ctx: Ctx<'p>,
}

impl Checker<'_> {
    /// Whether `user` is in the segment.
    pub fn contains(&self, user: UserId) -> bool {
        user.0 < self.ctx.users && contains(self.node, user.0, &self.ctx)
    }
}

/// A sampled estimate's hold on a prepared plan: the leaves parsed once
/// for every question the estimate asks (the chunks the exact count would
/// visit, their predicted counts, and the counts of the chunks drawn, or of
/// all of them where the exact count is no dearer).
pub struct Sampler<'p, 'w> {
    prepared: &'p Prepared<'w>,
    checker: Checker<'p>,
}

impl Sampler<'_, '_> {
    /// The chunks the exact count evaluates (see [`candidates`]): every
    /// other chunk holds no match.
    pub fn candidates(&self) -> Vec<u32> {
        candidates(
            &self.prepared.node,
            &self.checker.ctx,
            self.prepared.chunks(),
        )
    }

    /// The plan's leaves looked up in each chunk of `keys` (rising), for
    /// a sampled estimate's questions about those chunks (see [`Survey`]).
    /// Keys past the last chunk are left out.
    ///
    /// # Panics
    /// If `keys` do not rise.
    pub fn survey(&self, keys: &[u32]) -> Survey<'_> {
        Survey::new(&self.checker, keys, self.prepared.chunks())
    }

    /// A prediction of the count of each chunk of `keys` (rising) from its
    /// leaves' container sizes alone (see [`Survey::predict`]).
    pub fn predict(&self, keys: &[u32]) -> Vec<f64> {
        let survey = self.survey(keys);
        let mut p = survey.predict();
        p.resize(keys.len(), 0.0);
        p
    }

    /// Leaf `leaf`'s members in chunk `key`, from its containers' headers
    /// (no container is read).
    fn leaf_size(&self, leaf: usize, key: u32) -> f64 {
        let Ok(key) = u16::try_from(key) else {
            return 0.0;
        };
        let card = |v: Option<&BitmapView>| {
            v.and_then(|v| v.find(key).map(|i| f64::from(v.cardinality(i))))
                .unwrap_or(0.0)
        };
        match &self.checker.ctx.leaves[leaf] {
            LeafView::Simple(v) => card(Some(v)),
            LeafView::Layered {
                base,
                added,
                removed,
            } => card(base.as_ref()) + card(added.as_ref()) - card(removed.as_ref()),
        }
    }

    /// The work of evaluating chunk `key`, in [`SERIAL_UNITS`] units: the
    /// plan's units, and an array container's elements on top (an array
    /// is scattered element by element, a bitmap is read word by word).
    fn chunk_work(&self, key: u32) -> usize {
        let arrays: f64 = (0..self.checker.ctx.leaves.len())
            .map(|i| {
                let c = self.leaf_size(i, key);
                if c <= 4_096.0 {
                    c / ARRAY_ELEMENTS_PER_UNIT
                } else {
                    0.0
                }
            })
            .sum();
        units(self.checker.node) + arrays as usize
    }

    /// The count of each chunk of `keys` (in that order), evaluated as the
    /// exact count evaluates them: the work is that of these chunks only,
    /// spread over the pool when it is worth a wake-up. Keys past the last
    /// chunk count 0.
    pub fn count(&self, keys: &[u32]) -> Vec<u64> {
        let chunks = self.prepared.chunks();
        let ctx = &self.checker.ctx;
        let one = |b: &mut (Box<Words>, Scratch), key: u32| {
            if key >= chunks {
                return 0;
            }
            let mut early = false;
            self.prepared
                .count_chunk(ctx, key, (&mut b.0, &mut b.1), &mut early)
        };
        let buffers = || (Box::new([0u64; CHUNK_WORDS]), Scratch::default());
        let threads = rayon::current_num_threads();
        let work: usize = keys.iter().map(|&k| self.chunk_work(k)).sum();
        if threads == 1 || keys.len() < 2 || work <= SERIAL_UNITS {
            let mut b = buffers();
            return keys.iter().map(|&key| one(&mut b, key)).collect();
        }
        let out: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
        let at: Vec<u32> = (0..keys.len() as u32).collect();
        spread_sum(
            &at,
            threads,
            buffers,
            |b, i| {
                out[i as usize].store(one(b, keys[i as usize]), Ordering::Relaxed);
                0
            },
            drop,
        );
        out.into_iter().map(AtomicU64::into_inner).collect()
    }
}

impl Sampler<'_, '_> {
    /// The count of each window of `windows`, `(chunk key, part)` with the
    /// chunk cut into `parts` windows (see [`Survey::count_windows`]), in
    /// that order. Keys past the last chunk count 0.
    ///
    /// # Panics
    /// If `parts` is not a power of two in `1..=1024`, or a part is not
    /// below it.
    pub fn count_windows(&self, windows: &[(u32, u32)], parts: u32) -> Vec<u64> {
        assert!(windows.iter().all(|&(_, p)| p < parts), "a part of {parts}");
        let mut keys: Vec<u32> = windows.iter().map(|&(k, _)| k).collect();
        keys.sort_unstable();
        keys.dedup();
        let survey = self.survey(&keys);
        // Each window's chunk among those surveyed (none: past the last).
        let found: Vec<Option<usize>> = windows
            .iter()
            .map(|&(key, _)| survey.keys().binary_search(&key).ok())
            .collect();
        let at: Vec<(usize, u32)> = found
            .iter()
            .zip(windows)
            .filter_map(|(j, &(_, part))| j.map(|j| (j, part)))
            .collect();
        let mut counts = survey.count_windows(&at, parts).into_iter();
        found
            .iter()
            .map(|j| j.map_or(0, |_| counts.next().expect("one count a window")))
            .collect()
    }
}

fn contains(node: &Node, u: u32, ctx: &Ctx) -> bool {
    match node {
        Node::All => true,
        Node::Nothing => false,
        Node::Cohort(i) => ctx.leaves[*i].contains(u),
        Node::Bucket(lo, hi) => (*lo..=*hi).contains(&ctx.buckets.get(u as usize)),
        Node::Range(i) => ctx.scans[*i].contains(u),
        Node::Not(c) => !contains(c, u, ctx),
        Node::And(all, minus) => {
            all.iter().all(|c| contains(c, u, ctx)) && !minus.iter().any(|c| contains(c, u, ctx))
        }
        Node::Or(any) => any.iter().any(|c| contains(c, u, ctx)),
    }
}

/// The share of a chunk's users that `node` is expected to hold, given
/// each cohort leaf's share there (`share[leaf]`), the leaves taken as
/// independent (see [`Prepared::predict_chunks`]).
fn predict(node: &Node, share: &[f64], ranges: &[f64]) -> f64 {
    // A cohort child is read in place, without a call: most children are.
    let child = |c: &Node| match c {
        Node::Cohort(i) => share[*i],
        c => predict(c, share, ranges),
    };
    match node {
        Node::All => 1.0,
        Node::Nothing => 0.0,
        Node::Cohort(i) => share[*i],
        Node::Bucket(lo, hi) => (f64::from(*hi) - f64::from(*lo) + 1.0) / 10_000.0,
        Node::Range(i) => ranges[*i],
        Node::Not(c) => 1.0 - child(c),
        Node::And(all, minus) => {
            let mut p = 1.0;
            for c in all {
                p *= child(c);
            }
            for c in minus {
                p *= 1.0 - child(c);
            }
            p
        }
        Node::Or(any) => {
            let mut none = 1.0;
            for c in any {
                none *= 1.0 - child(c);
            }
            1.0 - none
        }
    }
}

/// The distinct bucket ranges of a plan.
fn bucket_ranges(node: &Node, out: &mut Vec<(u16, u16)>) {
    match node {
        Node::All | Node::Nothing | Node::Cohort(_) | Node::Range(_) => {}
        Node::Bucket(lo, hi) => {
            if !out.contains(&(*lo, *hi)) {
                out.push((*lo, *hi));
            }
        }
        Node::Not(c) => bucket_ranges(c, out),
        Node::And(all, minus) => all.iter().chain(minus).for_each(|c| bucket_ranges(c, out)),
        Node::Or(any) => any.iter().for_each(|c| bucket_ranges(c, out)),
    }
}

/// A chunk's count of an evaluation's result.
fn chunk_count(k: Kernels, r: &Out, w: &Words, len: u32) -> u64 {
    u64::from(match r {
        Out::Empty => 0,
        Out::Full => len,
        Out::Words => k.popcount(w),
        Out::Count(n) => *n,
    })
}

/// `run (and|or)= child` on one chunk, `state` and `r` saying what each
/// holds (`Words`: the buffer).
fn extend_running(
    k: Kernels,
    state: Out,
    r: Out,
    run: &mut Words,
    child: &Words,
    and: bool,
) -> Out {
    match (state, r, and) {
        (Out::Count(_), _, _) | (_, Out::Count(_), _) => {
            unreachable!("a breakdown evaluates without counting")
        }
        (Out::Empty, _, true) | (_, Out::Empty, true) => Out::Empty,
        (Out::Full, _, false) | (_, Out::Full, false) => Out::Full,
        (Out::Full, Out::Full, true) => Out::Full,
        (Out::Empty, Out::Empty, false) => Out::Empty,
        (Out::Full, Out::Words, true) | (Out::Empty, Out::Words, false) => {
            run.copy_from_slice(child);
            Out::Words
        }
        (Out::Words, Out::Full, true) | (Out::Words, Out::Empty, false) => Out::Words,
        (Out::Words, Out::Words, true) => {
            k.words_and(run, child);
            Out::Words
        }
        (Out::Words, Out::Words, false) => {
            k.words_or(run, child);
            Out::Words
        }
    }
}

/// The builder's breakdown of `parts` (plans of one view, in order) as
/// they are combined by AND (`and`) or OR: each part's own count and the
/// running count of the parts so far, as `(own, running)`. One pass over
/// the chunks: per chunk, the running set is kept and extended by each part
/// in turn, so the work is that of evaluating every part once.
pub fn breakdown_counts(parts: &[Prepared], and: bool) -> Result<Vec<(u64, u64)>> {
    let n = parts.len();
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let chunks = first.chunks();
    let checkers = parts
        .iter()
        .map(Prepared::chunk_ctx)
        .collect::<Result<Vec<_>>>()?;
    struct Acc {
        own: Vec<u64>,
        running: Vec<u64>,
        run: Box<Words>,
        child: Box<Words>,
        scratch: Scratch,
    }
    let new_acc = || Acc {
        own: vec![0; n],
        running: vec![0; n],
        run: Box::new([0u64; CHUNK_WORDS]),
        child: Box::new([0u64; CHUNK_WORDS]),
        scratch: Scratch::default(),
    };
    let sums = (0..chunks)
        .into_par_iter()
        .fold(new_acc, |mut a, key| {
            breakdown_chunk(
                &checkers,
                key,
                and,
                &mut a.run,
                &mut a.child,
                &mut a.scratch,
            )
            .into_iter()
            .enumerate()
            .for_each(|(i, (own, running))| {
                a.own[i] += own;
                a.running[i] += running;
            });
            a
        })
        .map(|a| (a.own, a.running))
        .reduce(
            || (vec![0; n], vec![0; n]),
            |(mut o, mut r), (o2, r2)| {
                o.iter_mut().zip(o2).for_each(|(x, y)| *x += y);
                r.iter_mut().zip(r2).for_each(|(x, y)| *x += y);
                (o, r)
            },
        );
    Ok(sums.0.into_iter().zip(sums.1).collect())
}

/// One chunk of a breakdown: each part's own count there and the running
/// count of the parts so far.
fn breakdown_chunk(
    checkers: &[Checker],
    key: u32,
    and: bool,
    run: &mut Words,
    child: &mut Words,
    scratch: &mut Scratch,
) -> Vec<(u64, u64)> {
    let mut state = if and { Out::Full } else { Out::Empty };
    checkers
        .iter()
        .map(|c| {
            let mut early = false;
            let r = eval_root(c.node, key, &c.ctx, child, scratch, &mut early, false);
            let len = c.ctx.chunk_len(key);
            let k = c.ctx.k;
            let own = chunk_count(k, &r, child, len);
            state = extend_running(
                k,
                std::mem::replace(&mut state, Out::Empty),
                r,
                run,
                child,
                and,
            );
            (own, chunk_count(k, &state, run, len))
        })
        .collect()
}

/// [`breakdown_counts`] on the chunks `keys` only, chunk by chunk: per key
/// (in that order), each part's own count and the running count there.
/// The work is that of these chunks (a sampled breakdown).
pub fn breakdown_chunks(
    parts: &[Prepared],
    and: bool,
    keys: &[u32],
) -> Result<Vec<Vec<(u64, u64)>>> {
    let Some(first) = parts.first() else {
        return Ok(keys.iter().map(|_| Vec::new()).collect());
    };
    let chunks = first.chunks();
    let checkers = parts
        .iter()
        .map(Prepared::chunk_ctx)
        .collect::<Result<Vec<_>>>()?;
    let buffers = || {
        (
            Box::new([0u64; CHUNK_WORDS]),
            Box::new([0u64; CHUNK_WORDS]),
            Scratch::default(),
        )
    };
    Ok(keys
        .par_iter()
        .with_max_len(1)
        .map_init(buffers, |(run, child, scratch), &key| {
            if key >= chunks {
                return vec![(0, 0); parts.len()];
            }
            breakdown_chunk(&checkers, key, and, run, child, scratch)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::spread_sum;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn spread_sum_visits_every_key_once_from_outside_and_inside_the_pool() {
        for len in [0usize, 1, 7, 64, 1000] {
            let keys: Vec<u32> = (0..len as u32).collect();
            let want: u64 = keys.iter().map(|&k| u64::from(k) * 3 + 1).sum();
            for threads in [1, 2, 3, 8] {
                let seen = AtomicU64::new(0);
                let got = spread_sum(
                    &keys,
                    threads,
                    || 0u32,
                    |n, k| {
                        *n += 1;
                        u64::from(k) * 3 + 1
                    },
                    |n| {
                        seen.fetch_add(u64::from(n), Ordering::Relaxed);
                    },
                );
                assert_eq!(
                    seen.into_inner(),
                    len as u64,
                    "each thread's state handed back once"
                );
                assert_eq!(got, want, "len {len}, threads {threads}");
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                let inside = pool.install(|| {
                    spread_sum(&keys, threads, || (), |_, k| u64::from(k) * 3 + 1, drop)
                });
                assert_eq!(
                    inside, want,
                    "inside the pool: len {len}, threads {threads}"
                );
            }
        }
    }
}
