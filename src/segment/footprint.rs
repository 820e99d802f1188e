//! What a count reads: the bytes of the containers the chunk evaluator
//! ([`super::chunk`]) reads for a plan, so that a benchmark can set its
//! time beside the memory bandwidth of the machine.
//!
//! It walks the plan chunk by chunk as the evaluator does, without
//! evaluating anything: a cohort leaf with a container for the chunk reads
//! it whole (an array container 2 bytes a value, a bitmap 8 KiB, a run
//! container 2 bytes plus 4 a run: its payload in the portable format;
//! the key and offset headers are left out); an AND stops at its first
//! child with nothing in the chunk (a cohort leaf with no container there,
//! or a child made only of such leaves), so the children after it are not
//! read; an OR stops at a child that is every user of the chunk. A random
//! bucket leaf that the evaluator reaches reads at most the chunk's
//! buckets, 2 bytes a user (it may read fewer: an AND with a sparse set
//! looks only at its members' buckets); these are counted apart, as that
//! upper bound. A plan counted without evaluation (a single cohort, from
//! its cardinality; all; nothing) reads nothing.

use serde::Serialize;

use super::plan::{Leaf, Plan};
use crate::bitmap_view::{BitmapView, Container};
use crate::error::{Error, Result};
use crate::ids::CohortKey;
use crate::snapshot::Snapshot;

/// The bytes one count of a plan reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Containers read (one per leaf and chunk reached).
    pub containers: u64,
    /// Their payload bytes.
    pub container_bytes: u64,
    /// Bucket bytes of the chunks where a random bucket leaf is reached:
    /// an upper bound (2 bytes per user of the chunk).
    pub bucket_bytes: u64,
}

impl Footprint {
    /// Containers and buckets together.
    pub fn total(&self) -> u64 {
        self.container_bytes + self.bucket_bytes
    }
}

/// The payload bytes of a container in the portable format.
pub fn container_bytes(c: &Container) -> u64 {
    match c {
        Container::Array(a) => 2 * a.len() as u64,
        Container::Bitmap(_) => 8192,
        Container::Run(r) => 2 + 4 * r.run_count() as u64,
    }
}

enum Node<'a> {
    All,
    Nothing,
    Cohort(BitmapView<'a>),
    /// An attribute test's users: their bitmap, counted as the portable
    /// format would hold each chunk's container.
    Selected(std::sync::Arc<crate::bitmap_view::SharedBitmap>),
    Bucket,
    Not(Box<Node<'a>>),
    And(Vec<Node<'a>>, Vec<Node<'a>>),
    Or(Vec<Node<'a>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Nobody of the chunk, known without reading.
    Empty,
    /// Some users (or possibly none, known only from the data).
    Some,
    /// Every user of the chunk.
    Full,
}

fn compile<'a>(
    p: &Plan,
    leaf: &mut dyn FnMut(&CohortKey) -> Result<BitmapView<'a>>,
) -> Result<Node<'a>> {
    let mut all =
        |ps: &[Plan]| -> Result<Vec<Node<'a>>> { ps.iter().map(|c| compile(c, leaf)).collect() };
    Ok(match p {
        Plan::All => Node::All,
        Plan::Nothing => Node::Nothing,
        Plan::Leaf(Leaf::Cohort {
            partner, cohort_id, ..
        }) => Node::Cohort(leaf(&CohortKey::new(*partner, cohort_id.clone()))?),
        Plan::Leaf(Leaf::Bucket { .. }) => Node::Bucket,
        Plan::Leaf(Leaf::Attribute { members, .. }) | Plan::Leaf(Leaf::Deleted { members, .. }) => {
            Node::Selected(members.0.clone())
        }
        // Counted as the users it selects (the evaluator compares the
        // slices instead, among the users an AND holds).
        Plan::Leaf(Leaf::AttributeRange { scan, .. }) => Node::Selected(std::sync::Arc::new(
            crate::bitmap_view::SharedBitmap::new(scan.0.users().clone()),
        )),
        Plan::Not { child } => Node::Not(Box::new(compile(child, leaf)?)),
        Plan::And { all: a, minus } => {
            let a = all(a)?;
            Node::And(a, all(minus)?)
        }
        Plan::Or { any } => Node::Or(all(any)?),
    })
}

/// One chunk: `len` users, key `key`.
fn walk(node: &Node, key: u16, len: u64, f: &mut Footprint) -> Reach {
    match node {
        Node::All => Reach::Full,
        Node::Nothing => Reach::Empty,
        Node::Cohort(v) => match v.container_for_key(key) {
            None => Reach::Empty,
            Some(c) => {
                f.containers += 1;
                f.container_bytes += container_bytes(&c);
                Reach::Some
            }
        },
        Node::Selected(b) => {
            let lo = u32::from(key) << 16;
            match b.range_cardinality(lo..=lo | 0xFFFF) {
                0 => Reach::Empty,
                n => {
                    f.containers += 1;
                    f.container_bytes += (2 * n).min(8192);
                    Reach::Some
                }
            }
        }
        Node::Bucket => {
            f.bucket_bytes += 2 * len;
            Reach::Some
        }
        Node::Not(c) => match walk(c, key, len, f) {
            Reach::Empty => Reach::Full,
            Reach::Full => Reach::Empty,
            Reach::Some => Reach::Some,
        },
        Node::Or(any) => {
            let mut state = Reach::Empty;
            for c in any {
                if state == Reach::Full {
                    break;
                }
                match (state, walk(c, key, len, f)) {
                    (_, Reach::Full) => return Reach::Full,
                    (Reach::Empty, r) => state = r,
                    _ => {}
                }
            }
            state
        }
        Node::And(all, minus) => {
            let mut state = Reach::Full;
            // Bucket children come last, as in the evaluator.
            for c in all.iter().filter(|c| !matches!(c, Node::Bucket)) {
                match walk(c, key, len, f) {
                    Reach::Empty => return Reach::Empty,
                    Reach::Some => state = Reach::Some,
                    Reach::Full => {}
                }
            }
            for c in minus.iter().filter(|c| !matches!(c, Node::Bucket)) {
                if walk(c, key, len, f) == Reach::Full {
                    return Reach::Empty;
                }
                state = Reach::Some;
            }
            for _ in all
                .iter()
                .chain(minus)
                .filter(|c| matches!(c, Node::Bucket))
            {
                f.bucket_bytes += 2 * len;
                state = Reach::Some;
            }
            state
        }
    }
}

/// What counting `plan` over `users` users reads, each cohort leaf's
/// bitmap given by `leaf`.
pub fn footprint<'a>(
    plan: &Plan,
    users: u32,
    mut leaf: impl FnMut(&CohortKey) -> Result<BitmapView<'a>>,
) -> Result<Footprint> {
    let mut f = Footprint::default();
    if matches!(
        plan,
        Plan::All | Plan::Nothing | Plan::Leaf(Leaf::Cohort { .. })
    ) {
        return Ok(f);
    }
    let node = compile(plan, &mut leaf)?;
    for key in 0..users.div_ceil(1 << 16) {
        let len = u64::from((users - (key << 16)).min(1 << 16));
        walk(&node, key as u16, len, &mut f);
    }
    Ok(f)
}

/// [`footprint`] over a snapshot's bitmaps (what
/// [`super::chunk::Prepared::for_snapshot`] counts).
pub fn for_snapshot(snap: &Snapshot, plan: &Plan) -> Result<Footprint> {
    footprint(plan, snap.users()?, |key| {
        let i = snap
            .cohort_index(key)?
            .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
        snap.bitmap(i)
    })
}

#[cfg(test)]
mod tests {
    use roaring::RoaringBitmap;

    use super::*;
    use crate::ids::Partner;

    fn bytes(values: impl IntoIterator<Item = u32>, runs: bool) -> Vec<u8> {
        let mut b: RoaringBitmap = values.into_iter().collect();
        if runs {
            b.optimize();
        } else {
            b.remove_run_compression();
        }
        let mut out = Vec::new();
        b.serialize_into(&mut out).unwrap();
        out
    }

    fn leaf(id: &str) -> Plan {
        Plan::Leaf(Leaf::Cohort {
            partner: Partner::Amplitude,
            cohort_id: id.into(),
            cardinality: 1,
        })
    }

    /// Three cohorts over 3 chunks (the last partial):
    /// - `a`: chunk 0 only, 100 values (an array: 200 bytes);
    /// - `b`: chunks 0 and 1, 5,000 values each (bitmaps: 8 KiB each);
    /// - `c`: chunk 2, one run of 1,000 values (6 bytes).
    fn run(plan: &Plan) -> Footprint {
        let a = bytes(0..100, false);
        let b = bytes((0..5_000).chain(65_536..70_536), false);
        let c = bytes(131_072..132_072, true);
        footprint(plan, 140_000, |k| {
            let bytes = match k.cohort_id.as_str() {
                "a" => &a,
                "b" => &b,
                _ => &c,
            };
            Ok(BitmapView::parse(bytes).unwrap())
        })
        .unwrap()
    }

    #[test]
    fn an_and_reads_nothing_after_a_leaf_with_no_container() {
        // Chunk 0: a and b; chunks 1, 2: a has none, b is not read.
        let f = run(&Plan::And {
            all: vec![leaf("a"), leaf("b")],
            minus: vec![],
        });
        assert_eq!(
            f,
            Footprint {
                containers: 2,
                container_bytes: 200 + 8192,
                bucket_bytes: 0
            }
        );
        // The other order reads b's two containers, and a's one.
        let f = run(&Plan::And {
            all: vec![leaf("b"), leaf("a")],
            minus: vec![],
        });
        assert_eq!((f.containers, f.container_bytes), (3, 2 * 8192 + 200));
    }

    #[test]
    fn an_or_reads_every_container_and_runs_count_their_runs() {
        let f = run(&Plan::Or {
            any: vec![leaf("a"), leaf("b"), leaf("c")],
        });
        assert_eq!((f.containers, f.container_bytes), (4, 200 + 2 * 8192 + 6));
        // A single cohort is counted from its cardinality.
        assert_eq!(run(&leaf("b")), Footprint::default());
    }

    #[test]
    fn buckets_count_the_chunks_an_and_reaches_and_minus_is_read() {
        let bucket = Plan::Leaf(Leaf::Bucket {
            lo: 0,
            hi: 10,
            estimate: 1,
        });
        // b reaches chunks 0 and 1; c (minus) is read where b has a
        // container, and has none there.
        let f = run(&Plan::And {
            all: vec![leaf("b"), bucket.clone()],
            minus: vec![leaf("c")],
        });
        assert_eq!(
            f,
            Footprint {
                containers: 2,
                container_bytes: 2 * 8192,
                bucket_bytes: 2 * 2 * 65_536
            }
        );
        // A NOT alone reaches every chunk; the last has 140,000 - 131,072
        // users.
        let f = run(&Plan::And {
            all: vec![bucket],
            minus: vec![leaf("c")],
        });
        assert_eq!(f.container_bytes, 6);
        assert_eq!(f.bucket_bytes, 2 * 140_000);
    }
}
