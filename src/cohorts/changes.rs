//! Applying a partner's `cohort_changes` to a cohort, in two steps:
//! [`resolve`] maps identifiers to users under the protocol's matching rules
//! (reading the registry only), then [`Cohort::apply`] changes membership.
//! Splitting them lets the import path log the resolved operations before
//! anything changes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::collections::VecDeque;

use super::{push_sample, Cohort};
use crate::error::Bare;
use crate::ids::UserId;
use crate::users::{DeviceMatch, UserRegistry, MAX_IDENTIFIER_BYTES};

/// An alias as the protocol sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The alias name.
    pub alias_name: String,
    /// The alias label.
    pub alias_label: String,
}

/// One object of a request's `cohort_changes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortChange {
    /// External ids (`user_ids` on the wire) to add or remove.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Device ids to add or remove.
    #[serde(default)]
    pub device_ids: Vec<String>,
    /// Aliases to add or remove.
    #[serde(default)]
    pub aliases: Vec<Alias>,
    /// Remove instead of add.
    #[serde(default)]
    pub should_remove: bool,
}

impl CohortChange {
    /// How many identifiers this object carries.
    pub fn identifiers(&self) -> usize {
        self.user_ids.len() + self.device_ids.len() + self.aliases.len()
    }
}

/// One membership change, in request order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberOp {
    /// The user.
    pub user: UserId,
    /// Removed (true) or added.
    pub remove: bool,
}

/// The outcome of matching a request's identifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedChanges {
    /// The membership operations, in request order.
    pub ops: Vec<MemberOp>,
    /// Identifiers that matched a user.
    pub matched: u64,
    /// Identifiers that matched nobody.
    pub unmatched: u64,
    /// Device ids whose user is identified: neither added nor removed.
    pub refused_device_ids: u64,
    /// The last unmatched identifiers, within the bounds of
    /// [`SyncStats::recent_unmatched`](super::SyncStats::recent_unmatched).
    pub unmatched_sample: Vec<String>,
}

/// What applying a request did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// Identifiers that matched a user.
    pub matched: u64,
    /// Identifiers that matched nobody.
    pub unmatched: u64,
    /// Device ids whose user is identified: neither added nor removed.
    pub refused_device_ids: u64,
    /// Members actually added and removed (no-ops not counted).
    pub added: u64,
    /// Members actually removed.
    pub removed: u64,
    /// Billable data points: one per matched add or remove identifier.
    pub data_points: u64,
    /// Whether the request created the cohort.
    pub cohort_created: bool,
}

/// Whether no user could hold this identifier (it is too long).
fn too_long(id: &str) -> bool {
    id.len() > MAX_IDENTIFIER_BYTES
}

/// An identifier as the unmatched sample shows it: whole when a user could
/// hold it, otherwise its beginning and its length.
fn sampled(id: &str) -> String {
    if too_long(id) {
        Bare(id).to_string()
    } else {
        id.to_string()
    }
}

/// Matches every identifier of `changes` against the registry, in order.
/// An identifier longer than any user may hold matches nobody.
pub fn resolve(users: &UserRegistry, changes: &[CohortChange]) -> ResolvedChanges {
    let mut r = Resolving::new(changes);
    r.step(users, usize::MAX);
    r.finish()
}

/// [`resolve`] a few identifiers at a time: each [`Self::step`] matches
/// the next ones against the registry it is given, so a caller can hold
/// the workspace's read lock for one step at a time. The steps' registry
/// must be the same ([`UserRegistry::stamp`] equal) for the outcome to be
/// [`resolve`]'s.
#[derive(Debug)]
pub struct Resolving<'c> {
    changes: &'c [CohortChange],
    /// The object of `changes` being matched, its part (external ids,
    /// aliases, device ids) and the next identifier in that part.
    change: usize,
    part: u8,
    at: usize,
    out: ResolvedChanges,
    sample: VecDeque<String>,
    sample_bytes: usize,
}

impl<'c> Resolving<'c> {
    /// Nothing matched yet.
    pub fn new(changes: &'c [CohortChange]) -> Self {
        Resolving {
            changes,
            change: 0,
            part: 0,
            at: 0,
            out: ResolvedChanges::default(),
            sample: VecDeque::new(),
            sample_bytes: 0,
        }
    }

    /// Matches up to `n` more identifiers; returns whether every one is.
    pub fn step(&mut self, users: &UserRegistry, n: usize) -> bool {
        let users = users.matcher();
        let mut left = n;
        while let Some(change) = self.changes.get(self.change) {
            if left == 0 {
                return false;
            }
            let remove = change.should_remove;
            let len = match self.part {
                0 => change.user_ids.len(),
                1 => change.aliases.len(),
                _ => change.device_ids.len(),
            };
            if self.at >= len {
                (self.part, self.at) = if self.part < 2 {
                    (self.part + 1, 0)
                } else {
                    self.change += 1;
                    (0, 0)
                };
                continue;
            }
            let take = left.min(len - self.at);
            let range = self.at..self.at + take;
            match self.part {
                0 => {
                    for ext in &change.user_ids[range] {
                        let found = (!too_long(ext))
                            .then(|| users.match_external_id(ext))
                            .flatten();
                        match found {
                            Some(user) => self.matched(user, remove),
                            None => self.unmatched(format!("user_id:{}", sampled(ext))),
                        }
                    }
                }
                1 => {
                    for a in &change.aliases[range] {
                        let (label, name) = (&a.alias_label, &a.alias_name);
                        let found = (!too_long(label) && !too_long(name))
                            .then(|| users.match_alias(label, name))
                            .flatten();
                        match found {
                            Some(user) => self.matched(user, remove),
                            None => self.unmatched(format!(
                                "alias:{}:{}",
                                sampled(label),
                                sampled(name)
                            )),
                        }
                    }
                }
                _ => {
                    for dev in &change.device_ids[range] {
                        let found = if too_long(dev) {
                            DeviceMatch::Unknown
                        } else {
                            users.match_device(dev)
                        };
                        match found {
                            DeviceMatch::Matched(user) => self.matched(user, remove),
                            DeviceMatch::Refused(_) => self.out.refused_device_ids += 1,
                            DeviceMatch::Unknown => {
                                self.unmatched(format!("device_id:{}", sampled(dev)))
                            }
                        }
                    }
                }
            }
            self.at += take;
            left -= take;
        }
        true
    }

    fn matched(&mut self, user: UserId, remove: bool) {
        self.out.matched += 1;
        self.out.ops.push(MemberOp { user, remove });
    }

    fn unmatched(&mut self, what: String) {
        self.out.unmatched += 1;
        push_sample(&mut self.sample, &mut self.sample_bytes, what);
    }

    /// What the steps matched.
    pub fn finish(mut self) -> ResolvedChanges {
        self.out.unmatched_sample = self.sample.into();
        self.out
    }
}

impl Cohort {
    /// Applies resolved changes in order and records the sync statistics.
    /// Fails, changing nothing, if the snapshot's bitmap cannot be read.
    pub fn apply(
        &mut self,
        resolved: &ResolvedChanges,
        now: DateTime<Utc>,
    ) -> crate::error::Result<ChangeReport> {
        let mut report = ChangeReport {
            matched: resolved.matched,
            unmatched: resolved.unmatched,
            refused_device_ids: resolved.refused_device_ids,
            data_points: resolved.matched,
            ..ChangeReport::default()
        };
        (report.added, report.removed) = self
            .members
            .apply(resolved.ops.iter().map(|op| (op.user.0, op.remove)))?;
        if report.added + report.removed > 0 {
            self.touch();
        }
        let s = &mut self.sync;
        s.last_sync = Some(now);
        s.last_added = report.added;
        s.last_removed = report.removed;
        s.matched_total += resolved.matched;
        s.unmatched_total += resolved.unmatched;
        s.refused_total += resolved.refused_device_ids;
        // Records logged before the byte bound may carry bigger samples:
        // the bound applies here too, so replay keeps memory bounded.
        let mut bytes = s.recent_unmatched.iter().map(String::len).sum();
        for u in &resolved.unmatched_sample {
            push_sample(&mut s.recent_unmatched, &mut bytes, u.clone());
        }
        let size = self.members.len();
        self.record_size(now.timestamp_millis(), size);
        Ok(report)
    }
}
