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
    pub fn between<'a>(
        synced: impl IntoIterator<Item = &'a String>,
        target: impl IntoIterator<Item = &'a String>,
        full: bool,
        batch_size: usize,
    ) -> Plan {
        let (mut entered, mut left) = (Vec::new(), Vec::new());
        let (mut a, mut b) = (synced.into_iter().peekable(), target.into_iter().peekable());
        loop {
            let step = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.cmp(y),
            };
            match step {
                // Only in `synced`: left.
                Ordering::Less => left.extend(a.next().cloned()),
                // Only in `target`: entered.
                Ordering::Greater => entered.extend(b.next().cloned()),
                Ordering::Equal => {
                    a.next();
                    let stays = b.next();
                    if full {
                        entered.extend(stays.cloned());
                    }
                }
            }
        }
        Plan {
            entered,
            left,
            batch_size: batch_size.clamp(1, MAX_IDENTIFIERS),
        }
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
        let size = self.batch_size.clamp(1, MAX_IDENTIFIERS);
        let adds = self.entered.chunks(size).map(|ids| (false, ids));
        let removes = self.left.chunks(size).map(|ids| (true, ids));
        adds.chain(removes)
            .enumerate()
            .map(|(index, (remove, ids))| Batch { index, remove, ids })
            .collect()
    }
}
