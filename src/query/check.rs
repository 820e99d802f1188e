//! One-user checks: is a user in each of some segments, or are some users
//! in one segment.

use serde::Serialize;

use super::BitmapSource;
use crate::error::Result;
use crate::ids::{UserId, UserRef};
use crate::segment::chunk::Prepared;
use crate::segment::plan;
use crate::segment::Filter;
use crate::workspace::Workspace;

/// A one-user answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Whether the user is in the segment.
    pub member: bool,
    /// The user found, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Why the answer is `false` when no user was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether the user holding `user` is in each of `filters` (one check per
/// filter; unknown users answer `false` with a reason).
pub fn check(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filters: &[&Filter],
    user: &UserRef,
) -> Result<Vec<Check>> {
    let prepared = filters
        .iter()
        .map(|f| plan::plan(ws, f).and_then(|p| Prepared::new(ws, &p, src)))
        .collect::<Result<Vec<_>>>()?;
    let Some(id) = ws.users.lookup(user) else {
        let reason = format!("no user holds {user}");
        return Ok(filters
            .iter()
            .map(|_| Check {
                member: false,
                user_id: None,
                reason: Some(reason.clone()),
            })
            .collect());
    };
    prepared
        .iter()
        .map(|p| {
            Ok(Check {
                member: p.contains(id)?,
                user_id: Some(id),
                reason: None,
            })
        })
        .collect()
}

/// Whether each of `users` is in the segment.
pub fn check_many(
    ws: &Workspace,
    src: &dyn BitmapSource,
    filter: &Filter,
    users: &[UserRef],
) -> Result<Vec<Check>> {
    let prepared = Prepared::new(ws, &plan::plan(ws, filter)?, src)?;
    let checker = prepared.checker()?;
    Ok(users
        .iter()
        .map(|u| match ws.users.lookup(u) {
            None => Check {
                member: false,
                user_id: None,
                reason: Some(format!("no user holds {u}")),
            },
            Some(id) => Check {
                member: checker.contains(id),
                user_id: Some(id),
                reason: None,
            },
        })
        .collect())
}
