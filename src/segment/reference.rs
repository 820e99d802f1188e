//! The reference evaluator: plain `roaring` set algebra over whole bitmaps.
//!
//! It is the simplest correct reading of a filter, kept as the model that
//! faster evaluators are tested against. NOT (and `does_not_include_value`)
//! means "users of the workspace not in X": the complement is taken within
//! the user ids `0..users.len()`.

use std::borrow::Cow;

use roaring::RoaringBitmap;

use super::ast::{AttrCmp, Filter, Number};
use super::plan::Catalog;
use crate::attributes::AttrValue;
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
    /// Every user's value of a custom attribute, as `(user, value)`.
    fn attribute_values(&self, name: &str) -> Result<Vec<(u32, AttrValue)>>;
    /// One user's value of a custom attribute.
    fn attribute_value(&self, name: &str, user: u32) -> Option<AttrValue>;
}

/// Whether a value (`None`: the user has none) satisfies a comparison,
/// read the plainest way: values compared one by one.
pub fn attr_holds(cmp: &AttrCmp, v: Option<&AttrValue>, now: i64) -> bool {
    use AttrCmp as C;
    let string = || match v {
        Some(AttrValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let number = || match v {
        Some(AttrValue::Integer(i)) => Some(Number::int(*i)),
        Some(AttrValue::Decimal(d)) => Number::new(*d, 4),
        _ => None,
    };
    let time = || match v {
        Some(AttrValue::Time(t)) => Some(*t),
        _ => None,
    };
    let day = 86_400i64;
    match cmp {
        C::Exists => v.is_some(),
        C::DoesNotExist => v.is_none(),
        C::Equals(x) => string() == Some(x.as_str()),
        C::DoesNotEqual(x) => string() != Some(x.as_str()),
        C::IsAnyOf(xs) => string().is_some_and(|s| xs.iter().any(|x| x == s)),
        C::MatchesRegex(r) => {
            string().is_some_and(|s| regex::Regex::new(r).is_ok_and(|re| re.is_match(s)))
        }
        C::StartsWith(p) => string().is_some_and(|s| s.starts_with(p.as_str())),
        C::Eq(n) => number() == Some(*n),
        C::Ne(n) => number() != Some(*n),
        C::Lt(n) => number().is_some_and(|x| x < *n),
        C::Le(n) => number().is_some_and(|x| x <= *n),
        C::Gt(n) => number().is_some_and(|x| x > *n),
        C::Ge(n) => number().is_some_and(|x| x >= *n),
        C::Between(lo, hi) => number().is_some_and(|x| *lo <= x && x <= *hi),
        C::IsTrue => v == Some(&AttrValue::Boolean(true)),
        C::IsFalse => v == Some(&AttrValue::Boolean(false)),
        C::Before(t) => time().is_some_and(|x| x < t.unix()),
        C::After(t) => time().is_some_and(|x| x > t.unix()),
        C::WithinLastDays(n) => {
            time().is_some_and(|x| now.saturating_sub(i64::from(*n) * day) <= x && x <= now)
        }
        C::WithinLastHours(n) => {
            time().is_some_and(|x| now.saturating_sub(i64::from(*n) * 3_600) <= x && x <= now)
        }
        C::MoreThanDaysAgo(n) => {
            time().is_some_and(|x| x < now.saturating_sub(i64::from(*n) * day))
        }
    }
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

/// Every user of the workspace (deleted users are none of them).
pub fn universe<D: Data + ?Sized>(ws: &D) -> RoaringBitmap {
    let mut all = RoaringBitmap::new();
    all.insert_range(0..user_count(ws));
    if let Some(d) = ws.deleted() {
        all -= d.0.bits();
    }
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
        Filter::Bucket(cmp) => {
            let with: RoaringBitmap = ws
                .all_buckets()
                .enumerate()
                .filter(|&(_, b)| cmp.accepts(b))
                .map(|(u, _)| u as u32)
                .collect();
            with & all
        }
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
        Filter::Attribute { attribute, cmp } => {
            // The same refusals as the planner (an unknown attribute, a
            // comparison that does not fit its type).
            let ty = ws.attribute_type(attribute)?;
            super::attr::lower(attribute, cmp, ty, 0)?;
            let now = ws.now();
            let mut with = RoaringBitmap::new();
            let mut out = RoaringBitmap::new();
            for (u, v) in ws.attribute_values(attribute)? {
                with.insert(u);
                if attr_holds(cmp, Some(&v), now) {
                    out.insert(u);
                }
            }
            if attr_holds(cmp, None, now) {
                out |= all - &with;
            }
            out & all
        }
        Filter::Segment { id, included } => {
            let inner = eval(ws, &ws.saved_filter(id)?, all)?;
            if *included {
                inner
            } else {
                all - inner
            }
        }
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
    if user.0 >= user_count(ws) || ws.deleted().is_some_and(|d| d.0.contains(user.0)) {
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
        Filter::Attribute { attribute, cmp } => {
            let ty = ws.attribute_type(attribute)?;
            super::attr::lower(attribute, cmp, ty, 0)?;
            attr_holds(
                cmp,
                ws.attribute_value(attribute, user.0).as_ref(),
                ws.now(),
            )
        }
        Filter::Segment { id, included } => {
            contains_user(ws, &ws.saved_filter(id)?, user)? == *included
        }
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
