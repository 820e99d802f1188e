//! The reference evaluator: plain `roaring` set algebra over whole bitmaps.
//!
//! It is the simplest correct reading of a filter, kept as the model that
//! faster evaluators are tested against. NOT (and `does_not_include_value`)
//! means "users of the workspace not in X": the complement is taken within
//! the user ids `0..users.len()`.

use roaring::RoaringBitmap;

use super::ast::Filter;
use crate::error::Result;
use crate::ids::{UserId, UserRef};
use crate::workspace::Workspace;

/// Whether one user is in a segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    Member(UserId),
    NotMember(UserId),
    /// No user holds the identifier.
    UnknownUser,
}

impl Membership {
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Member(_))
    }
}

/// Every user of the workspace.
pub fn universe(ws: &Workspace) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..ws.users.len());
    all
}

/// The segment's members as a bitmap.
pub fn evaluate(ws: &Workspace, filter: &Filter) -> Result<RoaringBitmap> {
    let all = universe(ws);
    eval(ws, filter, &all)
}

fn eval(ws: &Workspace, filter: &Filter, all: &RoaringBitmap) -> Result<RoaringBitmap> {
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => {
            let members = ws.cohorts.resolve(*partner, cohort)?.members.bitmap()?;
            if *includes {
                &*members & all
            } else {
                all - &*members
            }
        }
        Filter::Bucket(cmp) => ws
            .users
            .buckets()
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
    })
}

/// The exact number of users in the segment.
pub fn count(ws: &Workspace, filter: &Filter) -> Result<u64> {
    Ok(evaluate(ws, filter)?.len())
}

/// The segment's members in user id order.
pub fn members(ws: &Workspace, filter: &Filter) -> Result<Vec<UserId>> {
    Ok(evaluate(ws, filter)?.iter().map(UserId).collect())
}

/// Whether one user satisfies the filter, reading one membership bit per
/// leaf.
pub fn contains_user(ws: &Workspace, filter: &Filter, user: UserId) -> Result<bool> {
    if user.0 >= ws.users.len() {
        return Ok(false);
    }
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => {
            ws.cohorts
                .resolve(*partner, cohort)?
                .members
                .contains(user.0)?
                == *includes
        }
        Filter::Bucket(cmp) => ws.users.bucket(user).is_some_and(|b| cmp.accepts(b)),
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
    })
}

/// Whether the user holding an identifier is in the segment. Looks the user
/// up by whoever holds the identifier (a device id finds its user even if
/// identified); an unknown identifier is [`Membership::UnknownUser`].
pub fn contains(ws: &Workspace, filter: &Filter, user: &UserRef) -> Result<Membership> {
    // Resolve every cohort first, so an unknown cohort is an error even when
    // the user is unknown or short-circuiting would skip the leaf.
    super::check_cohorts(ws, filter)?;
    let Some(id) = ws.users.lookup(user) else {
        return Ok(Membership::UnknownUser);
    };
    Ok(if contains_user(ws, filter, id)? {
        Membership::Member(id)
    } else {
        Membership::NotMember(id)
    })
}
