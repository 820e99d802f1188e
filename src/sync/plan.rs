//! What a sync sends: the users who entered and left since the last
//! successful sync, cut into batches.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::import::MAX_IDENTIFIERS;

/// The difference between the members last synced and the members to
/// sync now, each side sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Identifiers to add.
    pub entered: Vec<String>,
    /// Identifiers to remove.
    pub left: Vec<String>,
    /// Identifiers per batch (1 to [`MAX_IDENTIFIERS`]).
    pub batch_size: usize,
}

/// Where a plan's changes fall in the members it was made from, so the
/// members after it are made by moving them, without comparing any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Places {
    /// For each identifier that left: its index among the members.
    pub left_at: Vec<usize>,
    /// For each that entered: how many members sort before it.
    pub entered_at: Vec<usize>,
    /// Whether members who stay were sent as entered too (a full plan's
    /// `entered` is not placed).
    pub full: bool,
}

impl Places {
    /// Whether these places can be those of a plan of `entered` and
    /// `left` identifiers made from `members` members (never for a full
    /// plan).
    pub fn fit(&self, members: usize, entered: usize, left: usize) -> bool {
        !self.full
            && entered == self.entered_at.len()
            && left == self.left_at.len()
            && self.left_at.last().is_none_or(|&l| l < members)
            && self.entered_at.last().is_none_or(|&e| e <= members)
    }

    /// `members` (those the plan was made from, as [`Places::fit`]
    /// checks) after the plan: without who left and with who `entered`
    /// (the plan's own list).
    pub fn apply(&self, members: Vec<String>, entered: Vec<String>) -> Vec<String> {
        let old = members;
        let mut out = Vec::with_capacity(old.len() + entered.len() - self.left_at.len());
        let mut left = self.left_at.iter().copied().peekable();
        let mut new = entered
            .into_iter()
            .zip(self.entered_at.iter().copied())
            .peekable();
        for (i, m) in old.into_iter().enumerate() {
            while let Some((e, _)) = new.next_if(|(_, at)| *at <= i) {
                out.push(e);
            }
            if left.next_if_eq(&i).is_none() {
                out.push(m);
            }
        }
        out.extend(new.map(|(e, _)| e));
        out
    }
}

/// One request's worth of a [`Plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Its place in the plan: the entered batches first, then the left.
    pub index: usize,
    /// Whether it removes (`should_remove`) rather than adds.
    pub remove: bool,
    /// Its identifiers.
    pub ids: &'a [String],
}

impl Plan {
    /// The plan from `synced` (the members of the last successful sync)
    /// to `target`: who entered (in `target` only) and who left (in
    /// `synced` only). With `full`, everyone in `target` is sent as
    /// entered, as on a first sync. `batch_size` is clamped to
    /// 1..=[`MAX_IDENTIFIERS`].
    pub fn new(
        synced: &BTreeSet<String>,
        target: &BTreeSet<String>,
        full: bool,
        batch_size: usize,
    ) -> Plan {
        Plan::between(synced.iter(), target.iter(), full, batch_size)
    }

    /// [`Plan::new`] from two ascending sequences without repeats (a
    /// state file's sorted lists, a set's iterator): one merge, with no
    /// set built and only the identifiers that changed copied.
    pub fn between<'a, 'b>(
        synced: impl IntoIterator<Item = &'a String>,
        target: impl IntoIterator<Item = &'b String>,
        full: bool,
        batch_size: usize,
    ) -> Plan {
        Plan::placed(synced, target, full, batch_size).0
    }

    /// [`Plan::between`], and where its changes fall in `synced`.
    pub fn placed<'a, 'b>(
        synced: impl IntoIterator<Item = &'a String>,
        target: impl IntoIterator<Item = &'b String>,
        full: bool,
        batch_size: usize,
    ) -> (Plan, Places) {
        let (mut entered, mut left) = (Vec::new(), Vec::new());
        let mut places = Places::default();
        let (mut a, mut b) = (synced.into_iter().peekable(), target.into_iter().peekable());
        // How many of `synced` were passed.
        let mut at = 0;
        loop {
            let step = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.cmp(y),
            };
            match step {
                // Only in `synced`: left.
                Ordering::Less => {
                    left.extend(a.next().cloned());
                    places.left_at.push(at);
                    at += 1;
                }
                // Only in `target`: entered.
                Ordering::Greater => {
                    entered.extend(b.next().cloned());
                    places.entered_at.push(at);
                }
                Ordering::Equal => {
                    a.next();
                    at += 1;
                    let stays = b.next();
                    if full {
                        entered.extend(stays.cloned());
                        places.full = true;
                    }
                }
            }
        }
        let plan = Plan {
            entered,
            left,
            batch_size: batch_size.clamp(1, MAX_IDENTIFIERS),
        };
        (plan, places)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.left.is_empty()
    }

    /// The batches, numbered from 0: the entered identifiers in chunks of
    /// `batch_size`, then the left ones. Always the same for the same
    /// plan, so that a resumed sync names its batches as the interrupted
    /// one did.
    pub fn batches(&self) -> Vec<Batch<'_>> {
        Plan::batches_of(&self.entered, &self.left, self.batch_size)
    }

    /// [`Plan::batches`] of a plan's lists, not copied.
    pub fn batches_of<'a>(
        entered: &'a [String],
        left: &'a [String],
        batch_size: usize,
    ) -> Vec<Batch<'a>> {
        let size = batch_size.clamp(1, MAX_IDENTIFIERS);
        let adds = entered.chunks(size).map(|ids| (false, ids));
        let removes = left.chunks(size).map(|ids| (true, ids));
        adds.chain(removes)
            .enumerate()
            .map(|(index, (remove, ids))| Batch { index, remove, ids })
            .collect()
    }
}
