//! The audit trail: who changed what through the admin API.
//!
//! A request handler that changes a workspace runs the engine call inside
//! [`audited`], naming the caller ([`AuditContext`]: a key id or `admin`,
//! the client's address, the request id) and the action. Every write the
//! call makes on that thread ([`super::WorkspaceHandle`]'s write path)
//! then logs one `Change::Audited` record after its changes, in the same
//! group commit: the entry is durable exactly when the change is, and a
//! refused request (nothing applied) records nothing. Writes made outside
//! [`audited`] (partner imports, key uses, compaction) record nothing.
//!
//! The entry's target and detail are read from the changes themselves
//! ([`entry`]): ids, names, partners, counts, a data import key's prefix.
//! Records hold digests, never secrets, so no entry can hold one.

use std::cell::RefCell;
use std::collections::BTreeSet;

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::record::{to_ms, Change};
use crate::access::AuditEntry;

/// Who makes a request's changes, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditContext {
    /// A workspace API key's id, or `admin` (the server admin token).
    pub actor: String,
    /// The client's address.
    pub address: String,
    /// The request's id.
    pub request_id: String,
}

/// The actor of the server admin token.
pub const ADMIN_ACTOR: &str = "admin";

/// The longest string an entry's target or detail holds, in characters;
/// longer ones are cut (with `…`).
pub const MAX_FIELD_CHARS: usize = 256;

thread_local! {
    static CURRENT: RefCell<Option<(AuditContext, &'static str)>> = const { RefCell::new(None) };
}

/// Runs `f` with its writes (on this thread) audited as `action` by
/// `ctx`. Nested calls take the innermost context; the previous one is
/// back when `f` returns or panics.
pub fn audited<T>(ctx: &AuditContext, action: &'static str, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<(AuditContext, &'static str)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| c.borrow_mut().replace((ctx.clone(), action)));
    let _reset = Reset(previous);
    f()
}

/// The context [`audited`] set on this thread, if any.
pub(crate) fn current() -> Option<(AuditContext, &'static str)> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `s`, cut to [`MAX_FIELD_CHARS`] characters.
pub(crate) fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// An entry numbered `seq`, now, with `target` and a `detail` object.
pub fn new_entry(
    ctx: &AuditContext,
    action: &str,
    seq: u64,
    target: &str,
    detail: Map<String, Value>,
) -> AuditEntry {
    AuditEntry {
        seq,
        at_ms: to_ms(Utc::now()),
        actor: bounded(&ctx.actor),
        action: bounded(action),
        target: bounded(target),
        detail: Value::Object(detail).to_string(),
        address: bounded(&ctx.address),
        request_id: bounded(&ctx.request_id),
    }
}

/// What the changes of one write did, as an entry's target and detail.
#[derive(Default)]
struct Summary {
    targets: Vec<String>,
    users: BTreeSet<u32>,
    counts: Vec<(&'static str, u64)>,
    detail: Map<String, Value>,
}

impl Summary {
    fn target(&mut self, t: String) {
        if !self.targets.contains(&t) {
            self.targets.push(t);
        }
    }

    fn count(&mut self, what: &'static str, n: u64) {
        match self.counts.iter_mut().find(|(w, _)| *w == what) {
            Some((_, c)) => *c += n,
            None => self.counts.push((what, n)),
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        self.detail.insert(key.to_string(), value);
    }

    fn add(&mut self, c: &Change) {
        match c {
            Change::Batch(changes) => changes.iter().for_each(|c| self.add(c)),
            Change::UserCreated { user, .. } => {
                self.users.insert(user.0);
                self.count("users_created", 1);
            }
            Change::DeviceAdded { user, .. } => {
                self.users.insert(user.0);
                self.count("devices_added", 1);
            }
            Change::AliasAdded { user, .. } => {
                self.users.insert(user.0);
                self.count("aliases_added", 1);
            }
            Change::UserIdentified { user, .. } => {
                self.users.insert(user.0);
                self.count("users_identified", 1);
            }
            Change::AttributesSet { user, values } => {
                self.users.insert(user.0);
                self.count("attribute_values_set", values.len() as u64);
            }
            Change::CohortUpserted { .. } | Change::CohortChanged { .. } => {
                self.count("cohort_changes", 1);
            }
            Change::PartnerEnabled { partner } => {
                self.target(partner.as_str().to_string());
                self.set("partner", json!(partner.as_str()));
            }
            Change::KeyCreated {
                id,
                partner,
                prefix,
                ..
            } => {
                self.target(id.clone());
                self.set("partner", json!(partner.as_str()));
                self.set("prefix", json!(prefix));
            }
            Change::KeyInvalidated { id, .. }
            | Change::ApiKeyRevoked { id, .. }
            | Change::SegmentDeleted { id } => self.target(id.clone()),
            Change::SegmentSaved { id, name, .. } => {
                self.target(id.clone());
                self.set("name", json!(bounded(name)));
            }
            Change::CohortDeleted {
                partner, cohort_id, ..
            } => {
                self.target(format!("{}/{}", partner.as_str(), bounded(cohort_id)));
                self.set("partner", json!(partner.as_str()));
                self.set("cohort_id", json!(bounded(cohort_id)));
            }
            Change::AttributeDeclared { name, ty } => {
                self.target(bounded(name));
                self.set("type", json!(ty.name()));
            }
            Change::ApiKeyCreated {
                id, name, scopes, ..
            } => {
                self.target(id.clone());
                self.set("name", json!(bounded(name)));
                let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
                self.set("scopes", json!(scopes));
            }
            Change::UsersDeleted { users, .. } => {
                self.users.extend(users.iter().map(|u| u.0));
                self.count("users_deleted", users.len() as u64);
            }
            Change::UserMerged { source, target, .. } => {
                self.users.insert(target.0);
                self.set("merged_from", json!(format!("user:{}", source.0)));
                self.count("users_merged", 1);
            }
            // The user's id only: identifiers are personal data the
            // audit log does not copy.
            Change::ExternalIdRenamed { user, .. } => {
                self.users.insert(user.0);
                self.count("external_ids_renamed", 1);
            }
            // Not changes made by the request.
            Change::WorkspaceCreated { .. }
            | Change::KeyUsed { .. }
            | Change::SeqsAbandoned { .. }
            | Change::Audited(_) => {}
        }
    }
}

/// The entry numbered `seq` for the changes of one write made by `ctx`
/// as `action`, or `None` if they hold nothing an audit records (only key
/// uses, or an entry already).
pub(crate) fn entry<'a>(
    ctx: &AuditContext,
    action: &str,
    seq: u64,
    changes: impl IntoIterator<Item = &'a Change>,
) -> Option<AuditEntry> {
    let mut s = Summary::default();
    for c in changes {
        if matches!(c, Change::Audited(_)) {
            return None;
        }
        s.add(c);
    }
    match s.users.len() {
        0 => {}
        1 => {
            let user = s.users.iter().next().copied().unwrap_or_default();
            s.target(format!("user:{user}"));
        }
        n => s.target(format!("{n} users")),
    }
    if s.targets.is_empty() && s.counts.is_empty() {
        return None;
    }
    let mut detail = std::mem::take(&mut s.detail);
    for (what, n) in &s.counts {
        detail.insert((*what).to_string(), json!(n));
    }
    Some(new_entry(ctx, action, seq, &s.targets.join(", "), detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Partner, UserId};

    fn ctx() -> AuditContext {
        AuditContext {
            actor: "ak_1".into(),
            address: "127.0.0.1:9".into(),
            request_id: "r1".into(),
        }
    }

    #[test]
    fn the_context_is_scoped_and_restored() {
        assert!(current().is_none());
        audited(&ctx(), "outer", || {
            assert_eq!(current().map(|c| c.1), Some("outer"));
            audited(&ctx(), "inner", || {
                assert_eq!(current().map(|c| c.1), Some("inner"));
            });
            assert_eq!(current().map(|c| c.1), Some("outer"));
        });
        assert!(current().is_none());
        let caught = std::panic::catch_unwind(|| audited(&ctx(), "x", || panic!("boom")));
        assert!(caught.is_err());
        assert!(current().is_none());
    }

    #[test]
    fn entries_name_targets_and_count_user_changes() {
        let key = Change::KeyCreated {
            id: "key_1".into(),
            partner: Partner::Amplitude,
            digest: [7; 32],
            prefix: "sk_live_abcd".into(),
            at_ms: 0,
        };
        let e = entry(&ctx(), "import_key.created", 4, [&key]).expect("an entry");
        assert_eq!((e.seq, e.target.as_str()), (4, "key_1"));
        let detail: Value = serde_json::from_str(&e.detail).unwrap();
        assert_eq!(
            detail,
            json!({"partner": Partner::Amplitude.as_str(), "prefix": "sk_live_abcd"})
        );
        let users = Change::Batch(vec![
            Change::DeviceAdded {
                user: UserId(3),
                device_id: "d".into(),
            },
            Change::DeviceAdded {
                user: UserId(3),
                device_id: "e".into(),
            },
        ]);
        let e = entry(&ctx(), "user.upserted", 1, [&users]).expect("an entry");
        assert_eq!(e.target, "user:3");
        assert_eq!(e.detail, r#"{"devices_added":2}"#);
        let used = Change::KeyUsed {
            id: "key_1".into(),
            at_ms: 0,
        };
        assert!(entry(&ctx(), "x", 1, [&used]).is_none());
        let long = "x".repeat(1000);
        assert_eq!(bounded(&long).chars().count(), MAX_FIELD_CHARS + 1);
    }
}
