//! What a sync sends: the users who entered and left since the last
//! successful sync, cut into batches.

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
        let entered = if full {
            target.iter().cloned().collect()
        } else {
            target.difference(synced).cloned().collect()
        };
        Plan {
            entered,
            left: synced.difference(target).cloned().collect(),
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
