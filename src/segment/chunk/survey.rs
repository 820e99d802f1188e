//! A sampled estimate's look at the chunks it may draw: the plan's leaves
//! looked up once in each of them ([`Survey`]), then asked for the chunks'
//! predicted counts and for the counts of the windows drawn, without
//! looking any container up again.

use super::{predict, window, Checker, Ctx, Lc, LeafView, Node, CHUNK_WORDS};
use crate::bitmap_view::BitmapView;

/// No container: the bitmap has none in the chunk.
const NONE: u32 = u32::MAX;

/// The plan's leaves looked up in each of some chunks (rising keys), by
/// one walk over each leaf's containers.
pub struct Survey<'s> {
    node: &'s Node,
    ctx: &'s Ctx<'s>,
    keys: Vec<u32>,
    /// Where leaf `l`'s containers for chunk `keys[j]` are in its bitmaps
    /// (base, added, removed; a simple leaf's in the first; [`NONE`]):
    /// `at[j * leaves + l]`.
    at: Vec<[u32; 3]>,
    /// Leaf `l`'s members in chunk `keys[j]`, from its containers'
    /// headers (read on the walk): `size[j * leaves + l]`.
    size: Vec<f64>,
}

/// Index `i` of `v` if it is a container (`i` not [`NONE`]).
fn container_at<'a>(
    v: Option<&BitmapView<'a>>,
    i: u32,
) -> Option<crate::bitmap_view::Container<'a>> {
    v.filter(|_| i != NONE).map(|v| v.container(i as usize))
}

/// The index of `v`'s container for chunk `first` when it has one for
/// every chunk `first..=last`: its keys rise strictly, so it does when it
/// has `first` at `i` and `last` at `i + last - first`.
fn aligned(v: &BitmapView, first: u16, last: u16) -> Option<usize> {
    let i = v.seek(first, 0).ok()?;
    let j = i + usize::from(last - first);
    (v.key_and_cardinality(j)?.0 == last).then_some(i)
}

/// Bitmap `b` of leaf `l` (of `leaves`) in every surveyed chunk, from its
/// container `first` on, one container a chunk ([`aligned`]): a loop of
/// its own, with nothing else to keep in registers.
#[inline(never)]
fn fill_aligned(
    v: &BitmapView,
    first: usize,
    (l, b, sign): (usize, usize, f64),
    leaves: usize,
    at: &mut [[u32; 3]],
    size: &mut [f64],
) {
    let cards = v.keys_and_cardinalities().skip(first);
    let rows = at
        .chunks_exact_mut(leaves)
        .zip(size.chunks_exact_mut(leaves));
    for (i, ((at, size), (_, card))) in (first as u32..).zip(rows.zip(cards)) {
        at[l][b] = i;
        size[l] += sign * f64::from(card);
    }
}

/// [`Survey::predict`] of an AND of cohorts (AND NOT cohorts): per chunk
/// of `keys`, the product of the leaves' shares (of the `all` leaves, and
/// one minus those of the `minus` ones) times its users, the leaves'
/// sizes read from `size` (a row of them per chunk). Leaf by leaf over
/// every chunk: the chunks' products are independent, where a chunk's
/// leaves make one chain of multiplications.
#[inline(never)]
fn predict_and(
    keys: &[u32],
    size: &[f64],
    (all, minus): (&[usize], &[usize]),
    chunk_len: impl Fn(u32) -> u32,
) -> Vec<f64> {
    let n = size.len() / keys.len().max(1);
    let len: Vec<f64> = keys
        .iter()
        .map(|&k| f64::from(chunk_len(k)).max(1.0))
        .collect();
    let per_user: Vec<f64> = len.iter().map(|&l| 1.0 / l).collect();
    let mut p = vec![1.0; keys.len()];
    let leaves = all.iter().map(|&i| (i, false));
    for (i, negated) in leaves.chain(minus.iter().map(|&i| (i, true))) {
        let rows = p.iter_mut().zip(size.chunks_exact(n)).zip(&per_user);
        for ((p, row), u) in rows {
            let share = (row[i] * u).clamp(0.0, 1.0);
            *p *= if negated { 1.0 - share } else { share };
        }
    }
    p.iter_mut().zip(&len).for_each(|(p, l)| *p *= l);
    p
}

impl<'s> Survey<'s> {
    /// # Panics
    /// If `keys` do not rise.
    pub(super) fn new(checker: &'s Checker<'s>, keys: &[u32], chunks: u32) -> Survey<'s> {
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "a survey's keys rise");
        let ctx = &checker.ctx;
        let keys = keys[..keys.partition_point(|&k| k < chunks)].to_vec();
        let leaves = ctx.leaves.len();
        let mut at = vec![[NONE; 3]; keys.len() * leaves];
        let mut size = vec![0.0; keys.len() * leaves];
        // Consecutive chunks (an AND led by a dense cohort, or every
        // chunk): a bitmap holding the first and the last of them at
        // indexes as far apart holds every one in between, in order.
        let run = match (keys.first(), keys.last()) {
            (Some(&a), Some(&b)) if (b - a) as usize + 1 == keys.len() => {
                Some((a as u16, b as u16))
            }
            _ => None,
        };
        for (l, leaf) in ctx.leaves.iter().enumerate() {
            let bitmaps: [Option<&BitmapView>; 3] = match leaf {
                LeafView::Simple(v) => [Some(v), None, None],
                LeafView::Layered {
                    base,
                    added,
                    removed,
                } => [base.as_ref(), added.as_ref(), removed.as_ref()],
            };
            for (b, v) in bitmaps.into_iter().enumerate() {
                let Some(v) = v else { continue };
                // The removed members count against the leaf.
                let sign = if b == 2 { -1.0 } else { 1.0 };
                if let Some(first) = run.and_then(|(a, z)| aligned(v, a, z)) {
                    fill_aligned(v, first, (l, b, sign), leaves, &mut at, &mut size);
                    continue;
                }
                let mut from = 0;
                for (j, &key) in keys.iter().enumerate() {
                    // `chunks` is at most 65,536: every key fits a u16.
                    let key = key as u16;
                    // Most often the next container (a walk over the
                    // bitmap's own keys); else a search from it.
                    let card = match v.key_and_cardinality(from) {
                        Some((k, card)) if k == key => card,
                        _ => match v.seek(key, from) {
                            Ok(i) => {
                                from = i;
                                v.cardinality(i)
                            }
                            Err(i) => {
                                from = i;
                                continue;
                            }
                        },
                    };
                    at[j * leaves + l][b] = from as u32;
                    size[j * leaves + l] += sign * f64::from(card);
                    from += 1;
                }
            }
        }
        Survey {
            node: checker.node,
            ctx,
            keys,
            at,
            size,
        }
    }

    /// The chunks surveyed (those asked for, up to the last chunk).
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// The leaves' members in chunk `keys[j]`, into `out`.
    fn leaves_in(&self, j: usize, out: &mut Vec<Lc<'s>>) {
        out.clear();
        let n = self.ctx.leaves.len();
        out.extend(
            self.ctx
                .leaves
                .iter()
                .zip(&self.at[j * n..(j + 1) * n])
                .map(|(leaf, &[b, a, r])| match leaf {
                    LeafView::Simple(v) => container_at(Some(v), b).map_or(Lc::Empty, Lc::One),
                    LeafView::Layered {
                        base,
                        added,
                        removed,
                    } => Lc::layered(
                        container_at(base.as_ref(), b),
                        container_at(added.as_ref(), a),
                        container_at(removed.as_ref(), r),
                    ),
                }),
        );
    }

    /// A prediction of each surveyed chunk's count from its leaves'
    /// container sizes alone (no container is read): the leaves taken as
    /// independent within a chunk, a bucket range as its share of the
    /// buckets. A sampled estimate then samples only what the prediction
    /// misses.
    pub fn predict(&self) -> Vec<f64> {
        let n = self.ctx.leaves.len();
        // An AND of cohorts (AND NOT cohorts), the commonest root, in one
        // tight loop: the same products `predict` forms, in its order.
        if let Node::And(all, minus) = self.node {
            let leaf = |c: &Node| match c {
                Node::Cohort(i) => Some(*i),
                _ => None,
            };
            let all: Option<Vec<usize>> = all.iter().map(leaf).collect();
            let minus: Option<Vec<usize>> = minus.iter().map(leaf).collect();
            if let (Some(all), Some(minus), true) = (all, minus, n > 0) {
                return predict_and(&self.keys, &self.size, (&all, &minus), |key| {
                    self.ctx.chunk_len(key)
                });
            }
        }
        self.predict_by_tree()
    }

    /// [`Survey::predict`] through the plan's tree, for any root.
    pub(crate) fn predict_by_tree(&self) -> Vec<f64> {
        let n = self.ctx.leaves.len();
        let mut share = vec![0.0; n];
        let mut ranges = vec![0.0; self.ctx.scans.len()];
        self.keys
            .iter()
            .enumerate()
            .map(|(j, &key)| {
                let len = f64::from(self.ctx.chunk_len(key)).max(1.0);
                let per_user = 1.0 / len;
                for (s, &size) in share.iter_mut().zip(&self.size[j * n..(j + 1) * n]) {
                    *s = (size * per_user).clamp(0.0, 1.0);
                }
                // An attribute range's users in the chunk (the range is
                // computed whole once, on the first prediction).
                for (s, r) in ranges.iter_mut().zip(&self.ctx.scans) {
                    let first = key << 16;
                    let n = r.users().range_cardinality(first..=first | 0xFFFF);
                    *s = (n as f64 * per_user).clamp(0.0, 1.0);
                }
                predict(self.node, &share, &ranges) * len
            })
            .collect()
    }

    /// The count of each chunk `keys()[j]` of `js` where the plan is an
    /// AND of cohorts whose containers there are all bitmaps (the `minus`
    /// ones may be missing), counted as the exact count counts it, from
    /// the containers the survey found (no look-up); `None` for the
    /// others, and for every chunk when the plan is no such AND.
    ///
    /// # Panics
    /// If a `j` is past the surveyed chunks.
    pub fn count_bitmap_ands(&self, js: &[usize]) -> Vec<Option<u64>> {
        js.iter()
            .map(|&j| self.and_of_bitmaps(j, 0, CHUNK_WORDS))
            .collect()
    }

    /// The count of an AND of cohorts on the window `(first, width)` of
    /// chunk `keys()[j]` when the window holds only users and every leaf
    /// is one bitmap container there (or none), read from the containers
    /// the survey found ([`window::and_of_bitmaps`]): nothing looked up,
    /// nothing built. `None` otherwise.
    fn and_of_bitmaps(&self, j: usize, first: usize, width: usize) -> Option<u64> {
        let n = self.ctx.leaves.len();
        let at = &self.at[j * n..(j + 1) * n];
        window::and_of_bitmaps(
            self.ctx,
            self.node,
            self.keys[j],
            (first, width),
            |i| match &self.ctx.leaves[i] {
                LeafView::Simple(v) => Some(container_at(Some(v), at[i][0])),
                LeafView::Layered { .. } => None,
            },
        )
    }

    /// The count of each window of `windows`, `(j, part)`: window `part`
    /// of chunk `keys()[j]` cut into `parts` windows of `1024 / parts`
    /// words (users `part * 65536 / parts..` of the chunk), in that order.
    /// Only the windows' words of each container are read.
    ///
    /// # Panics
    /// If `parts` is not a power of two in `1..=1024`, a part is not below
    /// it, or `j` is past the surveyed chunks.
    pub fn count_windows(&self, windows: &[(usize, u32)], parts: u32) -> Vec<u64> {
        assert!(
            parts.is_power_of_two() && parts as usize <= CHUNK_WORDS,
            "{parts} parts"
        );
        let width = CHUNK_WORDS / parts as usize;
        let mut pool = window::Pool::new(width);
        let mut lcs = Vec::with_capacity(self.ctx.leaves.len());
        let mut lcs_of = None;
        windows
            .iter()
            .map(|&(j, part)| {
                assert!(part < parts, "part {part} of {parts}");
                let first = part as usize * width;
                if let Some(n) = self.and_of_bitmaps(j, first, width) {
                    return n;
                }
                if lcs_of != Some(j) {
                    self.leaves_in(j, &mut lcs);
                    lcs_of = Some(j);
                }
                let at = window::At {
                    ctx: self.ctx,
                    key: self.keys[j],
                    lcs: &lcs,
                    first,
                };
                at.count(self.node, &mut pool)
            })
            .collect()
    }
}
