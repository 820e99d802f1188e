//! The change records of a workspace log, and how each one is applied.
//!
//! Records describe effects, not requests: a users request is logged as the
//! membership operations it resolved to (user ids), a user upsert as the
//! user it created or the identifiers it added. Replaying a record therefore
//! never depends on matching rules or on identities that changed later, and
//! cannot fail on a log that segq wrote; a record that does not apply is
//! reported as corruption.
//!
//! Payloads are [`super::persist::record`]'s persisted form of [`Change`]
//! (explicit, append-only tags); times are milliseconds since the Unix
//! epoch.

use chrono::{DateTime, Utc};

use crate::access::{ApiKeyRecord, AuditEntry, Scope};
use crate::attributes::{AttrType, AttrValue};
use crate::cohorts::{ChangeReport, ResolvedChanges};
use crate::error::{Error, Result};
use crate::ids::{Partner, UserId};
use crate::segment::Filter;
use crate::users::NewUser;
use crate::workspace::live::Touched;
use crate::workspace::{KeyRecord, SavedSegment, Workspace};

/// One logged change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The first record of every workspace log.
    WorkspaceCreated {
        /// The workspace's seed (random buckets are a hash of it and the user id).
        seed: u64,
        /// When it was created (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A user created, with the identifiers it was created with.
    UserCreated {
        /// Its id.
        user: UserId,
        /// Its external_id, if it has one.
        external_id: Option<String>,
        /// Its device_ids.
        devices: Vec<String>,
        /// `(alias_label, alias_name)`.
        aliases: Vec<(String, String)>,
        /// Its random bucket (0..=9999).
        bucket: u16,
    },
    /// A device_id given to a user.
    DeviceAdded {
        /// The user.
        user: UserId,
        /// The device_id.
        device_id: String,
    },
    /// An alias given to a user.
    AliasAdded {
        /// The user.
        user: UserId,
        /// The alias label.
        label: String,
        /// The alias name.
        name: String,
    },
    /// A user identified: given its external_id.
    UserIdentified {
        /// The user.
        user: UserId,
        /// The external_id.
        external_id: String,
    },
    /// A partner cohort created or renamed.
    CohortUpserted {
        /// Its partner.
        partner: Partner,
        /// Its cohort_id.
        cohort_id: String,
        /// Its name.
        name: String,
        /// RFC 3339, as the partner sent it (offset kept): written by
        /// [`crate::import::format_created_at`], read by
        /// [`crate::import::parse_created_at`].
        created_at: String,
    },
    /// A partner cohort's members changed (a users request, resolved to user ids).
    CohortChanged {
        /// The cohort's partner.
        partner: Partner,
        /// Its cohort_id.
        cohort_id: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
        /// The membership operations and the request's counts.
        resolved: ResolvedChanges,
    },
    /// A partner enabled for the workspace.
    PartnerEnabled {
        /// The partner.
        partner: Partner,
    },
    /// A data import key created.
    KeyCreated {
        /// Its id.
        id: String,
        /// The partner it is for.
        partner: Partner,
        /// The SHA-256 digest of its secret.
        digest: [u8; 32],
        /// The first characters of its secret, to recognise it by.
        prefix: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A data import key invalidated.
    KeyInvalidated {
        /// Its id.
        id: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// Several changes acknowledged together (bulk user loads).
    Batch(Vec<Change>),
    /// A saved segment created or changed; its filter names cohort_ids.
    SegmentSaved {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
        /// Its filter, cohorts by cohort_id.
        filter: Filter,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A saved segment deleted.
    SegmentDeleted {
        /// Its id.
        id: String,
    },
    /// Fills a seq given up after a failed log write or fsync: the records
    /// `first..=last` were not made durable and their changes were undone
    /// (`last` is the seq burned for the undo itself). Applies nothing;
    /// every seq of the range carries one.
    SeqsAbandoned {
        /// The first seq not made durable.
        first: u64,
        /// The seq burned for the undo.
        last: u64,
    },
    /// A data import key was used (at most one record per key per
    /// minute): its `last_used`, kept to the minute.
    KeyUsed {
        /// The key's id.
        id: String,
        /// When it was used, to the minute (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A partner cohort deleted (by its partner or an admin); refused
    /// while a saved segment names it.
    CohortDeleted {
        /// The cohort's partner.
        partner: Partner,
        /// Its cohort_id.
        cohort_id: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A user's custom attributes set (`None`: unset), checked against
    /// the attributes' types before it was logged.
    AttributesSet {
        /// The user.
        user: UserId,
        /// `(attribute, value)` in the order given.
        values: Vec<(String, Option<AttrValue>)>,
    },
    /// A custom attribute's type declared before any user has it.
    AttributeDeclared {
        /// The attribute.
        name: String,
        /// Its type.
        ty: AttrType,
    },
    /// A workspace API key created.
    ApiKeyCreated {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
        /// What it may do (checked, folded, in `Scope::ALL`'s order).
        scopes: Vec<Scope>,
        /// The SHA-256 digest of the key.
        digest: [u8; 32],
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A workspace API key revoked.
    ApiKeyRevoked {
        /// Its id.
        id: String,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// An audit entry: who made the changes logged before it in the same
    /// write, through the admin API (see [`super::audit`]).
    Audited(AuditEntry),
    /// Users deleted: out of every cohort and attribute, their
    /// identifiers freed, their ids holes (checked before it was logged:
    /// each existed, once).
    UsersDeleted {
        /// The users, in the order the request named them.
        users: Vec<UserId>,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// A user merged into another (the platform's merge): the target
    /// gains the source's device_ids, aliases, cohorts and the attribute
    /// values it lacks; the source is deleted.
    UserMerged {
        /// The user merged away (deleted).
        source: UserId,
        /// The user that stays.
        target: UserId,
        /// When (ms since the Unix epoch).
        at_ms: i64,
    },
    /// An identified user's external_id renamed; the old one is free.
    ExternalIdRenamed {
        /// The user.
        user: UserId,
        /// Its external_id before (checked on replay).
        from: String,
        /// Its external_id from now on.
        to: String,
    },
}

impl Change {
    /// The log payload (its persisted form: [`super::persist::record`]).
    pub fn encode(&self) -> Result<Vec<u8>> {
        super::persist::record::encode(self)
    }

    /// Reads a log payload; `path` and `seq` name it in errors.
    pub fn decode(bytes: &[u8], path: &str, seq: u64) -> Result<Change> {
        super::persist::record::decode(bytes, path, seq)
    }
}

impl Change {
    /// About how many bytes the change encodes to (at least that many).
    pub fn size_hint(&self) -> usize {
        match self {
            Change::UserCreated {
                external_id,
                devices,
                aliases,
                ..
            } => {
                16 + external_id.as_ref().map_or(0, String::len)
                    + devices.iter().map(|d| d.len() + 2).sum::<usize>()
                    + aliases
                        .iter()
                        .map(|(l, n)| l.len() + n.len() + 4)
                        .sum::<usize>()
            }
            Change::DeviceAdded { device_id, .. } => 8 + device_id.len(),
            Change::AliasAdded { label, name, .. } => 8 + label.len() + name.len(),
            Change::UserIdentified { external_id, .. } => 8 + external_id.len(),
            Change::Batch(c) => 4 + c.iter().map(Change::size_hint).sum::<usize>(),
            Change::Audited(e) => {
                24 + e.actor.len()
                    + e.action.len()
                    + e.target.len()
                    + e.detail.len()
                    + e.address.len()
                    + e.request_id.len()
            }
            Change::UsersDeleted { users, .. } => 16 + 5 * users.len(),
            Change::ExternalIdRenamed { from, to, .. } => 8 + from.len() + to.len(),
            Change::AttributesSet { values, .. } => {
                8 + values
                    .iter()
                    .map(|(n, v)| {
                        n.len()
                            + 12
                            + match v {
                                Some(AttrValue::String(s)) => s.len(),
                                _ => 0,
                            }
                    })
                    .sum::<usize>()
            }
            _ => 64,
        }
    }
}

/// Milliseconds since the epoch, for records.
pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The time a record stores, back as a `DateTime`.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn mismatch(what: String) -> Error {
    Error::Corrupt {
        path: "<replay>".into(),
        reason: what,
    }
}

/// What applying a change did, beyond the change itself: what a live
/// write answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// For `CohortChanged`: the members actually added and removed, the
    /// counts, and whether the cohort was created.
    pub report: Option<ChangeReport>,
    /// For `UsersDeleted` and `UserMerged`: what else changed.
    pub lifecycle: Option<crate::workspace::LifecycleReport>,
}

/// Applies a change to a workspace: the one way every record kind takes
/// effect, for live writes (which compute the change from the state first,
/// see [`super::handle`]) and log replay alike. `WorkspaceCreated` is
/// handled by whoever creates the [`Workspace`].
///
/// A refused change changes nothing, except a `Batch` refused part way
/// (its earlier parts stay applied): a live write undoes that by
/// rebuilding the workspace, and replay stops on it as corruption.
pub fn apply(ws: &mut Workspace, change: &Change) -> Result<Applied> {
    let mut applied = Applied::default();
    match change {
        Change::WorkspaceCreated { .. } => {
            return Err(mismatch(
                "a second WorkspaceCreated record in one log".into(),
            ))
        }
        Change::UserCreated {
            user,
            external_id,
            devices,
            aliases,
            bucket,
        } => {
            let got = ws.users.create(NewUser {
                external_id: external_id.clone(),
                devices: devices.clone(),
                aliases: aliases.clone(),
                bucket: Some(*bucket),
            })?;
            if got != *user {
                return Err(mismatch(format!("user created as {got}, logged as {user}")));
            }
        }
        Change::DeviceAdded { user, device_id } => ws.users.add_device(*user, device_id)?,
        Change::AliasAdded { user, label, name } => ws.users.add_alias(*user, label, name)?,
        Change::UserIdentified { user, external_id } => ws.users.identify(*user, external_id)?,
        Change::CohortUpserted {
            partner,
            cohort_id,
            name,
            created_at,
        } => {
            let created_at = crate::import::parse_created_at(created_at).ok_or_else(|| {
                mismatch(format!("created_at {created_at:?} is not a valid time"))
            })?;
            ws.upsert_cohort(*partner, cohort_id, name, Some(created_at))?;
        }
        Change::CohortChanged {
            partner,
            cohort_id,
            at_ms,
            resolved,
        } => {
            let report = ws.apply_resolved(*partner, cohort_id, resolved, from_ms(*at_ms))?;
            applied.report = Some(report);
        }
        Change::PartnerEnabled { partner } => {
            ws.enabled_partners.insert(*partner);
        }
        Change::KeyCreated {
            id,
            partner,
            digest,
            prefix,
            at_ms,
        } => {
            ws.enabled_partners.insert(*partner);
            ws.keys.insert(
                id.clone(),
                KeyRecord {
                    id: id.clone(),
                    partner: *partner,
                    digest: *digest,
                    prefix: prefix.clone(),
                    created_at: from_ms(*at_ms),
                    invalidated_at: None,
                    last_used: None,
                },
            );
        }
        Change::KeyInvalidated { id, at_ms } => {
            let key = ws
                .keys
                .get_mut(id)
                .ok_or_else(|| Error::UnknownKey { id: id.clone() })?;
            key.invalidated_at.get_or_insert(from_ms(*at_ms));
        }
        Change::Batch(changes) => {
            for c in changes {
                apply(ws, c)?;
            }
        }
        Change::SegmentSaved {
            id,
            name,
            filter,
            at_ms,
        } => {
            let at = from_ms(*at_ms);
            let created_at = ws.segments.get(id).map_or(at, |s| s.created_at);
            ws.segments.insert(
                id.clone(),
                SavedSegment {
                    id: id.clone(),
                    name: name.clone(),
                    filter: filter.clone(),
                    created_at,
                    updated_at: at,
                },
            );
        }
        Change::SegmentDeleted { id } => {
            ws.segments.remove(id);
        }
        Change::SeqsAbandoned { .. } => {}
        Change::KeyUsed { id, at_ms } => {
            let key = ws
                .keys
                .get_mut(id)
                .ok_or_else(|| Error::UnknownKey { id: id.clone() })?;
            let at = from_ms(*at_ms);
            key.last_used = Some(key.last_used.map_or(at, |t| t.max(at)));
        }
        Change::CohortDeleted {
            partner, cohort_id, ..
        } => ws.delete_cohort(*partner, cohort_id)?,
        Change::AttributesSet { user, values } => {
            if user.0 >= ws.users.len() {
                return Err(Error::UnknownUser(user.to_string()));
            }
            ws.attributes.set(user.0, values)?
        }
        Change::AttributeDeclared { name, ty } => ws.attributes.declare(name, *ty)?,
        Change::ApiKeyCreated {
            id,
            name,
            scopes,
            digest,
            at_ms,
        } => {
            if ws.api_keys.contains_key(id) {
                return Err(mismatch(format!("API key {id} created twice")));
            }
            ws.api_keys.insert(
                id.clone(),
                ApiKeyRecord {
                    id: id.clone(),
                    name: name.clone(),
                    scopes: scopes.clone(),
                    digest: *digest,
                    created_at: from_ms(*at_ms),
                    revoked_at: None,
                },
            );
        }
        Change::ApiKeyRevoked { id, at_ms } => {
            let key = ws
                .api_keys
                .get_mut(id)
                .ok_or_else(|| Error::UnknownApiKey { id: id.clone() })?;
            key.revoked_at.get_or_insert(from_ms(*at_ms));
        }
        Change::Audited(entry) => ws.audit.push(entry.clone()).map_err(mismatch)?,
        Change::UsersDeleted { users, .. } => {
            applied.lifecycle = Some(ws.delete_users(users)?);
        }
        Change::UserMerged { source, target, .. } => {
            applied.lifecycle = Some(ws.merge_users(*source, *target)?);
        }
        Change::ExternalIdRenamed { user, from, to } => {
            let current = ws.users.external_id(*user);
            if current.as_deref() != Some(from.as_str()) {
                return Err(mismatch(format!(
                    "external_id of user {user} renamed from {from:?}, but it is {current:?}"
                )));
            }
            ws.users.rename_external_id(*user, to)?;
        }
    }
    Ok(applied)
}

/// Notes what an applied change touched, for the live segments kept
/// beside the workspace ([`crate::workspace::live`]): the users of a
/// cohort change, a user created, a segment saved or deleted. Identifiers,
/// names, keys and partners select no user, and a cohort deleted is one no
/// saved segment names.
pub fn touched(change: &Change, t: &mut Touched) {
    match change {
        Change::UserCreated { user, .. } => t.user_created(*user),
        Change::CohortChanged {
            partner,
            cohort_id,
            resolved,
            ..
        } => t.cohort(
            crate::ids::CohortKey::new(*partner, cohort_id.as_str()),
            resolved.ops.iter().map(|op| op.user),
        ),
        Change::Batch(changes) => changes.iter().for_each(|c| touched(c, t)),
        Change::AttributesSet { user, values } => {
            for (name, _) in values {
                t.attribute(name, *user);
            }
        }
        Change::SegmentSaved { id, .. } | Change::SegmentDeleted { id } => t.segment(id),
        Change::UsersDeleted { users, .. } => users.iter().for_each(|&u| t.user_deleted(u)),
        Change::UserMerged { source, target, .. } => {
            t.user_deleted(*source);
            t.user_changed(*target);
        }
        Change::WorkspaceCreated { .. }
        | Change::DeviceAdded { .. }
        | Change::AliasAdded { .. }
        | Change::UserIdentified { .. }
        | Change::CohortUpserted { .. }
        | Change::PartnerEnabled { .. }
        | Change::KeyCreated { .. }
        | Change::KeyInvalidated { .. }
        | Change::SeqsAbandoned { .. }
        | Change::KeyUsed { .. }
        | Change::CohortDeleted { .. }
        | Change::AttributeDeclared { .. }
        | Change::ApiKeyCreated { .. }
        | Change::ApiKeyRevoked { .. }
        | Change::Audited(_)
        | Change::ExternalIdRenamed { .. } => {}
    }
}
