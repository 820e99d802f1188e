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
                return self
                    .keys
                    .iter()
                    .zip(self.size.chunks_exact(n))
                    .map(|(&key, size)| {
                        let len = f64::from(self.ctx.chunk_len(key)).max(1.0);
                        let per_user = 1.0 / len;
                        let share = |i: usize| (size[i] * per_user).clamp(0.0, 1.0);
                        let mut p = 1.0;
                        for &i in &all {
                            p *= share(i);
                        }
                        for &i in &minus {
                            p *= 1.0 - share(i);
                        }
                        p * len
                    })
                    .collect();
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
                if lcs_of != Some(j) {
                    self.leaves_in(j, &mut lcs);
                    lcs_of = Some(j);
                }
                let at = window::At {
                    ctx: self.ctx,
                    key: self.keys[j],
                    lcs: &lcs,
                    first: part as usize * width,
                };
                at.count(self.node, &mut pool)
            })
            .collect()
    }
}
