//! The reference evaluator: plain `roaring` set algebra over whole bitmaps.
//!
//! It is the simplest correct reading of a filter, kept as the model that
//! faster evaluators are tested against. NOT (and `does_not_include_value`)
//! means "users of the workspace not in X": the complement is taken within
//! the user ids `0..users.len()`.

use std::borrow::Cow;

use roaring::RoaringBitmap;

use super::ast::Filter;
use super::plan::Catalog;
use crate::error::Result;
use crate::ids::{Partner, UserId, UserRef};

/// What the reference evaluator reads: the users, their buckets, and each
/// cohort's members whole. The workspace implements it
/// ([`crate::workspace`]).
pub trait Data: Catalog {
    /// The members of the cohort a filter value names (a cohort_id, or the
    /// unique name of one of the partner's cohorts).
    fn cohort_members(&self, partner: Partner, value: &str) -> Result<Cow<'_, RoaringBitmap>>;
    /// Whether `user` is a member of the cohort `value` names.
    fn cohort_contains(&self, partner: Partner, value: &str, user: u32) -> Result<bool>;
    /// Every user's bucket, in user id order.
    fn all_buckets(&self) -> Box<dyn Iterator<Item = u16> + '_>;
    /// One user's bucket.
    fn bucket(&self, user: UserId) -> Option<u16>;
    /// The user holding an identifier.
    fn lookup(&self, user: &UserRef) -> Option<UserId>;
}

/// The number of users, as user ids count them.
fn user_count<D: Data + ?Sized>(ws: &D) -> u32 {
    u32::try_from(ws.users()).unwrap_or(u32::MAX)
}

/// Whether one user is in a segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// The user is in the segment.
    Member(UserId),
    /// The user exists but is not in the segment.
    NotMember(UserId),
    /// No user holds the identifier.
    UnknownUser,
}

impl Membership {
    /// Whether the answer is [`Membership::Member`].
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Member(_))
    }
}

/// Every user of the workspace.
pub fn universe<D: Data + ?Sized>(ws: &D) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..user_count(ws));
    all
}

/// The segment's members as a bitmap.
pub fn evaluate<D: Data + ?Sized>(ws: &D, filter: &Filter) -> Result<RoaringBitmap> {
    let all = universe(ws);
    eval(ws, filter, &all)
}

fn eval<D: Data + ?Sized>(ws: &D, filter: &Filter, all: &RoaringBitmap) -> Result<RoaringBitmap> {
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => {
            let members = ws.cohort_members(*partner, cohort)?;
            if *includes {
                &*members & all
            } else {
                all - &*members
            }
        }
        Filter::Bucket(cmp) => ws
            .all_buckets()
            .enumerate()
            .filter(|&(_, b)| cmp.accepts(b))
            .map(|(u, _)| u as u32)
            .collect(),
        Filter::And(children) => {
            let mut acc = all.clone();
            for c in children {
                acc &= eval(ws, c, all)?;
            }
            acc
        }
        Filter::Or(children) => {
            let mut acc = RoaringBitmap::new();
            for c in children {
                acc |= eval(ws, c, all)?;
            }
            acc
        }
        Filter::Not(c) => all - eval(ws, c, all)?,
        Filter::Attribute { .. } | Filter::Segment { .. } => return Err(filter.unsupported()),
    })
}

/// The exact number of users in the segment.
pub fn count<D: Data + ?Sized>(ws: &D, filter: &Filter) -> Result<u64> {
    Ok(evaluate(ws, filter)?.len())
}

/// The segment's members in user id order.
pub fn members<D: Data + ?Sized>(ws: &D, filter: &Filter) -> Result<Vec<UserId>> {
    Ok(evaluate(ws, filter)?.iter().map(UserId).collect())
}

/// Whether one user satisfies the filter, reading one membership bit per
/// leaf.
pub fn contains_user<D: Data + ?Sized>(ws: &D, filter: &Filter, user: UserId) -> Result<bool> {
    if user.0 >= user_count(ws) {
        return Ok(false);
    }
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => ws.cohort_contains(*partner, cohort, user.0)? == *includes,
        Filter::Bucket(cmp) => ws.bucket(user).is_some_and(|b| cmp.accepts(b)),
        Filter::And(children) => {
            for c in children {
                if !contains_user(ws, c, user)? {
                    return Ok(false);
                }
            }
            true
        }
        Filter::Or(children) => {
            for c in children {
                if contains_user(ws, c, user)? {
                    return Ok(true);
                }
            }
            false
        }
        Filter::Not(c) => !contains_user(ws, c, user)?,
        Filter::Attribute { .. } | Filter::Segment { .. } => return Err(filter.unsupported()),
    })
}

/// Whether the user holding an identifier is in the segment. Looks the user
/// up by whoever holds the identifier (a device id finds its user even if
/// identified); an unknown identifier is [`Membership::UnknownUser`].
pub fn contains<D: Data + ?Sized>(ws: &D, filter: &Filter, user: &UserRef) -> Result<Membership> {
    // Resolve every cohort first, so an unknown cohort is an error even when
    // the user is unknown or short-circuiting would skip the leaf.
    super::check_cohorts(ws, filter)?;
    let Some(id) = ws.lookup(user) else {
        return Ok(Membership::UnknownUser);
    };
    Ok(if contains_user(ws, filter, id)? {
        Membership::Member(id)
    } else {
        Membership::NotMember(id)
    })
}
