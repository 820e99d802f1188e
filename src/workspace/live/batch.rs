//! The touched users of a write checked against a plan in one batch, on
//! the cohorts' structures as they are: each cohort's snapshot bitmap read
//! in place, and its members added and removed since either as the
//! evaluator's serialized copy, when one is at hand at the cohort's
//! version, or else as the in-memory bitmaps (nothing is serialized: a
//! write leaves that to the first query that needs it).
//!
//! The users, ascending, are cut into groups of at most 64 of one 2^16-user
//! chunk; a group's users are one `u64` mask, bit `i` the group's `i`-th
//! user. A plan is evaluated group by group over such masks, each node
//! asked only about the users whose answer can still change the result
//! (an AND stops asking about a user once a child excludes it, an OR once
//! a child includes it, as a one-user check would), and a cohort leaf
//! finds its containers once per group rather than once per user.

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::bitmap_view::BitmapView;
use crate::cohorts::Cohort;
use crate::error::{Error, Result};
use crate::ids::CohortKey;
use crate::segment::chunk::Serialized;
use crate::segment::plan::{Leaf, Plan};
use crate::users::Buckets;
use crate::workspace::source::BitmapSource;
use crate::workspace::Workspace;

/// Users of one chunk checked together.
#[derive(Clone, Copy, Debug)]
struct Group {
    /// The chunk (the users' high 16 bits).
    key: u16,
    /// Index of the group's first user in [`Batch::users`].
    start: usize,
    /// Users in the group (1..=64).
    len: usize,
}

/// Touched users, ascending, cut into groups.
#[derive(Debug, Default)]
pub(super) struct Batch {
    users: Vec<u32>,
    groups: Vec<Group>,
}

impl Batch {
    /// A batch of `users`, which must ascend.
    pub(super) fn new(users: Vec<u32>) -> Batch {
        let mut groups: Vec<Group> = Vec::new();
        for (i, &u) in users.iter().enumerate() {
            let key = (u >> 16) as u16;
            match groups.last_mut() {
                Some(g) if g.key == key && g.len < 64 => g.len += 1,
                _ => groups.push(Group {
                    key,
                    start: i,
                    len: 1,
                }),
            }
        }
        Batch { users, groups }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The plan over the cohorts' structures.
#[derive(Debug)]
enum Node {
    All,
    Nothing,
    Cohort(usize),
    Bucket(u16, u16),
    Not(Box<Node>),
    And(Vec<Node>, Vec<Node>),
    Or(Vec<Node>),
}

/// A cohort's members added and removed since its snapshot bitmap.
enum Delta<'a> {
    /// Nothing changed.
    None,
    /// Serialized already (for the evaluator, by an earlier query or
    /// write): a container per group.
    Views {
        added: Option<BitmapView<'a>>,
        removed: Option<BitmapView<'a>>,
    },
    /// Not serialized at this version: the bitmaps as kept, user by user.
    InMemory {
        added: &'a RoaringBitmap,
        removed: &'a RoaringBitmap,
    },
}

/// A cohort leaf.
struct CohortLeaf<'a> {
    base: Option<BitmapView<'a>>,
    delta: Delta<'a>,
}

/// A plan compiled for one batch.
struct Evaluator<'a> {
    node: Node,
    cohorts: Vec<CohortLeaf<'a>>,
    buckets: Buckets<'a>,
    batch: &'a Batch,
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path: "<cohort bitmap>".into(),
        reason: e.to_string(),
    }
}

fn view(bytes: Option<&[u8]>) -> Result<Option<BitmapView<'_>>> {
    bytes
        .map(|b| BitmapView::parse(b).map_err(corrupt))
        .transpose()
}

/// Per group of `batch` (whose users all exist), the mask of its users
/// `plan` (made by [`crate::segment::plan::plan`] on `ws`) holds. A
/// cohort's changes since the snapshot are read from `src` when it holds
/// them serialized at the cohort's version, else from the cohort itself:
/// this serializes nothing.
pub(super) fn evaluate(
    ws: &Workspace,
    plan: &Plan,
    batch: &Batch,
    src: &dyn BitmapSource,
) -> Result<Vec<u64>> {
    let mut found = Vec::new();
    let node = compile(ws, plan, &mut found)?;
    let held: Vec<Option<Arc<Serialized>>> = found
        .iter()
        .map(|c| {
            let m = &c.members;
            if m.added().is_empty() && m.removed().is_empty() {
                None
            } else {
                src.cached(c)
            }
        })
        .collect();
    let mut cohorts = Vec::with_capacity(found.len());
    for (c, held) in found.iter().zip(&held) {
        let m = &c.members;
        let delta = match held {
            _ if m.added().is_empty() && m.removed().is_empty() => Delta::None,
            Some(s) => Delta::Views {
                added: view(s.added.as_deref())?,
                removed: view(s.removed.as_deref())?,
            },
            None => Delta::InMemory {
                added: m.added(),
                removed: m.removed(),
            },
        };
        cohorts.push(CohortLeaf {
            base: m.base()?,
            delta,
        });
    }
    let ev = Evaluator {
        node,
        cohorts,
        buckets: ws.users.bucket_slices(),
        batch,
    };
    Ok((0..batch.groups.len())
        .map(|g| {
            let len = batch.groups[g].len;
            let all = if len == 64 { u64::MAX } else { (1 << len) - 1 };
            ev.node_mask(&ev.node, g, all)
        })
        .collect())
}

impl Evaluator<'_> {
    /// Of the users of group `g` in `care`, those `node` holds.
    fn node_mask(&self, node: &Node, g: usize, care: u64) -> u64 {
        if care == 0 {
            return 0;
        }
        match node {
            Node::All => care,
            Node::Nothing => 0,
            Node::Cohort(i) => self.cohort_mask(&self.cohorts[*i], g, care),
            Node::Bucket(lo, hi) => {
                let mut out = 0;
                for_each_user(self.batch, g, care, |b, u| {
                    if (*lo..=*hi).contains(&self.buckets.get(u as usize)) {
                        out |= 1 << b;
                    }
                });
                out
            }
            Node::Not(c) => care & !self.node_mask(c, g, care),
            Node::And(all, minus) => {
                let mut c = care;
                for child in all {
                    c &= self.node_mask(child, g, c);
                }
                for child in minus {
                    c &= !self.node_mask(child, g, c);
                }
                c
            }
            Node::Or(any) => {
                let (mut rest, mut out) = (care, 0);
                for child in any {
                    let m = self.node_mask(child, g, rest);
                    out |= m;
                    rest &= !m;
                }
                out
            }
        }
    }

    /// `(base | added) & !removed` for the users of group `g` in `care`
    /// (`added` is disjoint from `base`).
    fn cohort_mask(&self, c: &CohortLeaf, g: usize, care: u64) -> u64 {
        let key = self.batch.groups[g].key;
        let base = c.base.and_then(|v| v.container_for_key(key));
        let mut out = 0;
        match &c.delta {
            Delta::None => {
                if let Some(b) = base {
                    for_each_user(self.batch, g, care, |i, u| {
                        if b.contains(u as u16) {
                            out |= 1 << i;
                        }
                    });
                }
            }
            Delta::Views { added, removed } => {
                let a = added.and_then(|v| v.container_for_key(key));
                let r = removed.and_then(|v| v.container_for_key(key));
                if base.is_none() && a.is_none() {
                    return 0;
                }
                for_each_user(self.batch, g, care, |i, u| {
                    let low = u as u16;
                    if a.is_some_and(|a| a.contains(low))
                        || (base.is_some_and(|b| b.contains(low))
                            && !r.is_some_and(|r| r.contains(low)))
                    {
                        out |= 1 << i;
                    }
                });
            }
            Delta::InMemory { added, removed } => {
                for_each_user(self.batch, g, care, |i, u| {
                    if added.contains(u)
                        || (base.is_some_and(|b| b.contains(u as u16)) && !removed.contains(u))
                    {
                        out |= 1 << i;
                    }
                });
            }
        }
        out
    }
}

/// Calls `f(bit, user)` for the users of group `g` whose bit is in `m`.
fn for_each_user(batch: &Batch, g: usize, mut m: u64, mut f: impl FnMut(usize, u32)) {
    let start = batch.groups[g].start;
    while m != 0 {
        let b = m.trailing_zeros() as usize;
        f(b, batch.users[start + b]);
        m &= m - 1;
    }
}

/// Compiles `p`, noting each cohort leaf's cohort in `found`.
fn compile<'w>(ws: &'w Workspace, p: &Plan, found: &mut Vec<&'w Cohort>) -> Result<Node> {
    Ok(match p {
        Plan::All => Node::All,
        Plan::Nothing => Node::Nothing,
        Plan::Leaf(Leaf::Cohort {
            partner, cohort_id, ..
        }) => {
            let key = CohortKey::new(*partner, cohort_id.as_str());
            let c = ws
                .cohorts
                .get(&key)
                .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
            found.push(c);
            Node::Cohort(found.len() - 1)
        }
        Plan::Leaf(Leaf::Bucket { lo, hi, .. }) => Node::Bucket(*lo, *hi),
        // The users of a batch are never deleted ones (`live::update`
        // takes those out of the segment instead).
        Plan::Leaf(Leaf::Deleted { .. }) => Node::Nothing,
        // A segment that tests attributes is evaluated whole (see `live`).
        Plan::Leaf(Leaf::Attribute { .. }) | Plan::Leaf(Leaf::AttributeRange { .. }) => {
            return Err(Error::Internal(
                "attribute tests are not checked in batches".into(),
            ))
        }
        Plan::Not { child } => Node::Not(Box::new(compile(ws, child, found)?)),
        Plan::And { all, minus } => Node::And(
            all.iter()
                .map(|c| compile(ws, c, found))
                .collect::<Result<_>>()?,
            minus
                .iter()
                .map(|c| compile(ws, c, found))
                .collect::<Result<_>>()?,
        ),
        Plan::Or { any } => Node::Or(
            any.iter()
                .map(|c| compile(ws, c, found))
                .collect::<Result<_>>()?,
        ),
    })
}

/// Sets each group's users in `members` to what `masks` says (bit set:
/// member), changing only those whose membership changed (most do not:
/// a bulk union and difference would rewrite every array container they
/// meet).
pub(super) fn apply(batch: &Batch, masks: &[u64], members: &mut RoaringBitmap) {
    for (group, &m) in batch.groups.iter().zip(masks) {
        for (b, &u) in batch.users[group.start..group.start + group.len]
            .iter()
            .enumerate()
        {
            let want = m >> b & 1 == 1;
            if members.contains(u) != want {
                if want {
                    members.insert(u);
                } else {
                    members.remove(u);
                }
            }
        }
    }
}
