//! A log record's payload: [`Record`], the persisted form of a
//! [`Change`], as bincode 2 (standard configuration) written by hand with
//! an explicit tag per kind (see `snapshot::codec`). The tags are
//! append-only: a new kind of change takes the next unused tag (after
//! [`Record::EXTERNAL_ID_RENAMED`]), and no tag is ever reused or
//! renumbered.

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use super::{from_persisted, to_persisted};
use crate::access::{AuditEntry, Scope};
use crate::attributes::{AttrType, AttrValue};
use crate::cohorts::{MemberOp, ResolvedChanges};
use crate::engine::record::Change;
use crate::error::{Error, Result};
use crate::ids::{Partner, UserId};
use crate::snapshot::codec::{
    config, decode_partner, decode_seq, decode_tag, encode_partner, encode_tag, unknown_tag,
};
use crate::snapshot::meta::PFilter;

/// The outcome of matching a request, as persisted (mirrors
/// [`ResolvedChanges`]): each membership operation as `(user, remove)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PResolved {
    /// Each membership operation as `(user id, remove)`.
    pub ops: Vec<(u32, bool)>,
    /// Identifiers that matched a user.
    pub matched: u64,
    /// Identifiers that matched nobody.
    pub unmatched: u64,
    /// Device ids refused because their user is identified.
    pub refused_device_ids: u64,
    /// A bounded sample of the unmatched identifiers.
    pub unmatched_sample: Vec<String>,
}

/// A log record, as persisted (mirrors [`Change`]; the fields' meanings
/// are documented there).
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    WorkspaceCreated {
        seed: u64,
        at_ms: i64,
    },
    UserCreated {
        user: u32,
        external_id: Option<String>,
        devices: Vec<String>,
        aliases: Vec<(String, String)>,
        bucket: u16,
    },
    DeviceAdded {
        user: u32,
        device_id: String,
    },
    AliasAdded {
        user: u32,
        label: String,
        name: String,
    },
    UserIdentified {
        user: u32,
        external_id: String,
    },
    CohortUpserted {
        partner: Partner,
        cohort_id: String,
        name: String,
        created_at: String,
    },
    CohortChanged {
        partner: Partner,
        cohort_id: String,
        at_ms: i64,
        resolved: PResolved,
    },
    PartnerEnabled {
        partner: Partner,
    },
    KeyCreated {
        id: String,
        partner: Partner,
        digest: [u8; 32],
        prefix: String,
        at_ms: i64,
    },
    KeyInvalidated {
        id: String,
        at_ms: i64,
    },
    Batch(Vec<Record>),
    SegmentSaved {
        id: String,
        name: String,
        filter: PFilter,
        at_ms: i64,
    },
    SegmentDeleted {
        id: String,
    },
    SeqsAbandoned {
        first: u64,
        last: u64,
    },
    KeyUsed {
        id: String,
        at_ms: i64,
    },
    CohortDeleted {
        partner: Partner,
        cohort_id: String,
        at_ms: i64,
    },
    AttributesSet {
        user: u32,
        values: Vec<(String, Option<PValue>)>,
    },
    AttributeDeclared {
        name: String,
        ty: AttrType,
    },
    /// Scopes as their tags ([`Scope::tag`], append-only).
    ApiKeyCreated {
        id: String,
        name: String,
        scopes: Vec<Scope>,
        digest: [u8; 32],
        at_ms: i64,
    },
    ApiKeyRevoked {
        id: String,
        at_ms: i64,
    },
    /// Its fields in declaration order.
    Audited(AuditEntry),
    /// User ids in the order given.
    UsersDeleted {
        users: Vec<u32>,
        at_ms: i64,
    },
    UserMerged {
        source: u32,
        target: u32,
        at_ms: i64,
    },
    ExternalIdRenamed {
        user: u32,
        from: String,
        to: String,
    },
}

/// A custom attribute's value, as persisted: its type's tag
/// ([`AttrType`]'s, append-only) then the value (a string, an `i64` for
/// integers, decimal units and times, a `bool`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PValue(pub AttrValue);

impl Encode for PValue {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.0.ty().tag().encode(e)?;
        match &self.0 {
            AttrValue::String(s) => s.encode(e),
            AttrValue::Integer(v) | AttrValue::Decimal(v) | AttrValue::Time(v) => v.encode(e),
            AttrValue::Boolean(b) => b.encode(e),
        }
    }
}

impl<C> Decode<C> for PValue {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        let tag = u8::decode(d)?;
        let ty =
            AttrType::from_tag(tag).ok_or_else(|| unknown_tag("attribute type", u32::from(tag)))?;
        Ok(PValue(match ty {
            AttrType::String => AttrValue::String(String::decode(d)?),
            AttrType::Boolean => AttrValue::Boolean(bool::decode(d)?),
            AttrType::Integer | AttrType::Decimal | AttrType::Time => {
                let v = i64::decode(d)?;
                AttrValue::from_number(ty, v)
                    .ok_or_else(|| unknown_tag("attribute type", u32::from(tag)))?
            }
        }))
    }
}

impl Record {
    /// The tag of [`Record::WorkspaceCreated`].
    pub const WORKSPACE_CREATED: u32 = 0;
    /// The tag of [`Record::UserCreated`].
    pub const USER_CREATED: u32 = 1;
    /// The tag of [`Record::DeviceAdded`].
    pub const DEVICE_ADDED: u32 = 2;
    /// The tag of [`Record::AliasAdded`].
    pub const ALIAS_ADDED: u32 = 3;
    /// The tag of [`Record::UserIdentified`].
    pub const USER_IDENTIFIED: u32 = 4;
    /// The tag of [`Record::CohortUpserted`].
    pub const COHORT_UPSERTED: u32 = 5;
    /// The tag of [`Record::CohortChanged`].
    pub const COHORT_CHANGED: u32 = 6;
    /// The tag of [`Record::PartnerEnabled`].
    pub const PARTNER_ENABLED: u32 = 7;
    /// The tag of [`Record::KeyCreated`].
    pub const KEY_CREATED: u32 = 8;
    /// The tag of [`Record::KeyInvalidated`].
    pub const KEY_INVALIDATED: u32 = 9;
    /// The tag of [`Record::Batch`].
    pub const BATCH: u32 = 10;
    /// The tag of [`Record::SegmentSaved`].
    pub const SEGMENT_SAVED: u32 = 11;
    /// The tag of [`Record::SegmentDeleted`].
    pub const SEGMENT_DELETED: u32 = 12;
    /// The tag of [`Record::SeqsAbandoned`].
    pub const SEQS_ABANDONED: u32 = 13;
    /// The tag of [`Record::KeyUsed`].
    pub const KEY_USED: u32 = 14;
    /// The tag of [`Record::CohortDeleted`].
    pub const COHORT_DELETED: u32 = 15;
    /// The tag of [`Record::AttributesSet`].
    pub const ATTRIBUTES_SET: u32 = 16;
    /// The tag of [`Record::AttributeDeclared`].
    pub const ATTRIBUTE_DECLARED: u32 = 17;
    /// The tag of [`Record::ApiKeyCreated`].
    pub const API_KEY_CREATED: u32 = 18;
    /// The tag of [`Record::ApiKeyRevoked`].
    pub const API_KEY_REVOKED: u32 = 19;
    /// The tag of [`Record::Audited`].
    pub const AUDITED: u32 = 20;
    /// The tag of [`Record::UsersDeleted`].
    pub const USERS_DELETED: u32 = 21;
    /// The tag of [`Record::UserMerged`].
    pub const USER_MERGED: u32 = 22;
    /// The tag of [`Record::ExternalIdRenamed`].
    pub const EXTERNAL_ID_RENAMED: u32 = 23;

    /// How deeply batches may nest (a record of its own is level 1). segq
    /// writes at most two levels (a batch of upserts, some of them a batch
    /// of a user's added identifiers); decoding refuses deeper bytes.
    pub const MAX_BATCH_DEPTH: usize = 16;
}

fn strings<C, D: Decoder<Context = C>>(d: &mut D) -> Result<Vec<String>, DecodeError> {
    decode_seq(d, String::decode)
}

impl Encode for PResolved {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (
            &self.ops,
            self.matched,
            self.unmatched,
            self.refused_device_ids,
        )
            .encode(e)?;
        self.unmatched_sample.encode(e)
    }
}

impl<C> Decode<C> for PResolved {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(PResolved {
            ops: decode_seq(d, |d| Ok((u32::decode(d)?, bool::decode(d)?)))?,
            matched: Decode::decode(d)?,
            unmatched: Decode::decode(d)?,
            refused_device_ids: Decode::decode(d)?,
            unmatched_sample: strings(d)?,
        })
    }
}

impl Encode for Record {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        match self {
            Record::WorkspaceCreated { seed, at_ms } => {
                (Self::WORKSPACE_CREATED, seed, at_ms).encode(e)
            }
            Record::UserCreated {
                user,
                external_id,
                devices,
                aliases,
                bucket,
            } => (
                Self::USER_CREATED,
                user,
                external_id,
                devices,
                aliases,
                bucket,
            )
                .encode(e),
            Record::DeviceAdded { user, device_id } => {
                (Self::DEVICE_ADDED, user, device_id).encode(e)
            }
            Record::AliasAdded { user, label, name } => {
                (Self::ALIAS_ADDED, user, label, name).encode(e)
            }
            Record::UserIdentified { user, external_id } => {
                (Self::USER_IDENTIFIED, user, external_id).encode(e)
            }
            Record::CohortUpserted {
                partner,
                cohort_id,
                name,
                created_at,
            } => {
                encode_tag(Self::COHORT_UPSERTED, e)?;
                encode_partner(*partner, e)?;
                (cohort_id, name, created_at).encode(e)
            }
            Record::CohortChanged {
                partner,
                cohort_id,
                at_ms,
                resolved,
            } => {
                encode_tag(Self::COHORT_CHANGED, e)?;
                encode_partner(*partner, e)?;
                (cohort_id, at_ms, resolved).encode(e)
            }
            Record::PartnerEnabled { partner } => {
                encode_tag(Self::PARTNER_ENABLED, e)?;
                encode_partner(*partner, e)
            }
            Record::KeyCreated {
                id,
                partner,
                digest,
                prefix,
                at_ms,
            } => {
                (Self::KEY_CREATED, id).encode(e)?;
                encode_partner(*partner, e)?;
                (digest, prefix, at_ms).encode(e)
            }
            Record::KeyInvalidated { id, at_ms } => (Self::KEY_INVALIDATED, id, at_ms).encode(e),
            Record::Batch(records) => (Self::BATCH, records).encode(e),
            Record::SegmentSaved {
                id,
                name,
                filter,
                at_ms,
            } => (Self::SEGMENT_SAVED, id, name, filter, at_ms).encode(e),
            Record::SegmentDeleted { id } => (Self::SEGMENT_DELETED, id).encode(e),
            Record::SeqsAbandoned { first, last } => (Self::SEQS_ABANDONED, first, last).encode(e),
            Record::KeyUsed { id, at_ms } => (Self::KEY_USED, id, at_ms).encode(e),
            Record::CohortDeleted {
                partner,
                cohort_id,
                at_ms,
            } => {
                encode_tag(Self::COHORT_DELETED, e)?;
                encode_partner(*partner, e)?;
                (cohort_id, at_ms).encode(e)
            }
            Record::AttributesSet { user, values } => {
                (Self::ATTRIBUTES_SET, user, values).encode(e)
            }
            Record::AttributeDeclared { name, ty } => {
                (Self::ATTRIBUTE_DECLARED, name, ty.tag()).encode(e)
            }
            Record::ApiKeyCreated {
                id,
                name,
                scopes,
                digest,
                at_ms,
            } => {
                let tags: Vec<u8> = scopes.iter().map(|s| s.tag()).collect();
                (Self::API_KEY_CREATED, id, name, tags, digest, at_ms).encode(e)
            }
            Record::ApiKeyRevoked { id, at_ms } => (Self::API_KEY_REVOKED, id, at_ms).encode(e),
            Record::Audited(a) => {
                (Self::AUDITED, a.seq, a.at_ms, &a.actor, &a.action).encode(e)?;
                (&a.target, &a.detail, &a.address, &a.request_id).encode(e)
            }
            Record::UsersDeleted { users, at_ms } => (Self::USERS_DELETED, users, at_ms).encode(e),
            Record::UserMerged {
                source,
                target,
                at_ms,
            } => (Self::USER_MERGED, source, target, at_ms).encode(e),
            Record::ExternalIdRenamed { user, from, to } => {
                (Self::EXTERNAL_ID_RENAMED, user, from, to).encode(e)
            }
        }
    }
}

impl<C> Decode<C> for Record {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        decode_record(d, 1)
    }
}

/// A record at batch level `depth` (a record of its own is 1). The depth is
/// checked before going one level further, so batches nested without end (a
/// corrupt or crafted log) are an error instead of a stack overflow.
fn decode_record<C, D: Decoder<Context = C>>(
    d: &mut D,
    depth: usize,
) -> Result<Record, DecodeError> {
    if depth > Record::MAX_BATCH_DEPTH {
        return Err(DecodeError::OtherString(format!(
            "batches nested more than {} levels deep",
            Record::MAX_BATCH_DEPTH
        )));
    }
    Ok(match decode_tag(d)? {
        Record::WORKSPACE_CREATED => Record::WorkspaceCreated {
            seed: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::USER_CREATED => Record::UserCreated {
            user: Decode::decode(d)?,
            external_id: Decode::decode(d)?,
            devices: strings(d)?,
            aliases: decode_seq(d, |d| Ok((String::decode(d)?, String::decode(d)?)))?,
            bucket: Decode::decode(d)?,
        },
        Record::DEVICE_ADDED => Record::DeviceAdded {
            user: Decode::decode(d)?,
            device_id: Decode::decode(d)?,
        },
        Record::ALIAS_ADDED => Record::AliasAdded {
            user: Decode::decode(d)?,
            label: Decode::decode(d)?,
            name: Decode::decode(d)?,
        },
        Record::USER_IDENTIFIED => Record::UserIdentified {
            user: Decode::decode(d)?,
            external_id: Decode::decode(d)?,
        },
        Record::COHORT_UPSERTED => Record::CohortUpserted {
            partner: decode_partner(d)?,
            cohort_id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            created_at: Decode::decode(d)?,
        },
        Record::COHORT_CHANGED => Record::CohortChanged {
            partner: decode_partner(d)?,
            cohort_id: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
            resolved: PResolved::decode(d)?,
        },
        Record::PARTNER_ENABLED => Record::PartnerEnabled {
            partner: decode_partner(d)?,
        },
        Record::KEY_CREATED => Record::KeyCreated {
            id: Decode::decode(d)?,
            partner: decode_partner(d)?,
            digest: Decode::decode(d)?,
            prefix: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::KEY_INVALIDATED => Record::KeyInvalidated {
            id: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::BATCH => Record::Batch(decode_seq(d, |d| decode_record(d, depth + 1))?),
        Record::SEGMENT_SAVED => Record::SegmentSaved {
            id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            filter: PFilter::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::SEGMENT_DELETED => Record::SegmentDeleted {
            id: Decode::decode(d)?,
        },
        Record::SEQS_ABANDONED => Record::SeqsAbandoned {
            first: Decode::decode(d)?,
            last: Decode::decode(d)?,
        },
        Record::KEY_USED => Record::KeyUsed {
            id: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::COHORT_DELETED => Record::CohortDeleted {
            partner: decode_partner(d)?,
            cohort_id: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::ATTRIBUTES_SET => Record::AttributesSet {
            user: Decode::decode(d)?,
            values: decode_seq(d, |d| {
                Ok((String::decode(d)?, Option::<PValue>::decode(d)?))
            })?,
        },
        Record::ATTRIBUTE_DECLARED => Record::AttributeDeclared {
            name: Decode::decode(d)?,
            ty: {
                let tag = u8::decode(d)?;
                AttrType::from_tag(tag)
                    .ok_or_else(|| unknown_tag("attribute type", u32::from(tag)))?
            },
        },
        Record::API_KEY_CREATED => Record::ApiKeyCreated {
            id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            scopes: decode_seq(d, |d| {
                let tag = u8::decode(d)?;
                Scope::from_tag(tag).ok_or_else(|| unknown_tag("scope", u32::from(tag)))
            })?,
            digest: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::API_KEY_REVOKED => Record::ApiKeyRevoked {
            id: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::AUDITED => Record::Audited(AuditEntry {
            seq: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
            actor: Decode::decode(d)?,
            action: Decode::decode(d)?,
            target: Decode::decode(d)?,
            detail: Decode::decode(d)?,
            address: Decode::decode(d)?,
            request_id: Decode::decode(d)?,
        }),
        Record::USERS_DELETED => Record::UsersDeleted {
            users: decode_seq(d, |d| u32::decode(d))?,
            at_ms: Decode::decode(d)?,
        },
        Record::USER_MERGED => Record::UserMerged {
            source: Decode::decode(d)?,
            target: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
        },
        Record::EXTERNAL_ID_RENAMED => Record::ExternalIdRenamed {
            user: Decode::decode(d)?,
            from: Decode::decode(d)?,
            to: Decode::decode(d)?,
        },
        tag => return Err(unknown_tag("log record", tag)),
    })
}

/// A change's persisted form.
pub(crate) fn to_record(c: &Change) -> Record {
    match c {
        Change::WorkspaceCreated { seed, at_ms } => Record::WorkspaceCreated {
            seed: *seed,
            at_ms: *at_ms,
        },
        Change::UserCreated {
            user,
            external_id,
            devices,
            aliases,
            bucket,
        } => Record::UserCreated {
            user: user.0,
            external_id: external_id.clone(),
            devices: devices.clone(),
            aliases: aliases.clone(),
            bucket: *bucket,
        },
        Change::DeviceAdded { user, device_id } => Record::DeviceAdded {
            user: user.0,
            device_id: device_id.clone(),
        },
        Change::AliasAdded { user, label, name } => Record::AliasAdded {
            user: user.0,
            label: label.clone(),
            name: name.clone(),
        },
        Change::UserIdentified { user, external_id } => Record::UserIdentified {
            user: user.0,
            external_id: external_id.clone(),
        },
        Change::CohortUpserted {
            partner,
            cohort_id,
            name,
            created_at,
        } => Record::CohortUpserted {
            partner: *partner,
            cohort_id: cohort_id.clone(),
            name: name.clone(),
            created_at: created_at.clone(),
        },
        Change::CohortChanged {
            partner,
            cohort_id,
            at_ms,
            resolved,
        } => Record::CohortChanged {
            partner: *partner,
            cohort_id: cohort_id.clone(),
            at_ms: *at_ms,
            resolved: PResolved {
                ops: resolved.ops.iter().map(|o| (o.user.0, o.remove)).collect(),
                matched: resolved.matched,
                unmatched: resolved.unmatched,
                refused_device_ids: resolved.refused_device_ids,
                unmatched_sample: resolved.unmatched_sample.clone(),
            },
        },
        Change::PartnerEnabled { partner } => Record::PartnerEnabled { partner: *partner },
        Change::KeyCreated {
            id,
            partner,
            digest,
            prefix,
            at_ms,
        } => Record::KeyCreated {
            id: id.clone(),
            partner: *partner,
            digest: *digest,
            prefix: prefix.clone(),
            at_ms: *at_ms,
        },
        Change::KeyInvalidated { id, at_ms } => Record::KeyInvalidated {
            id: id.clone(),
            at_ms: *at_ms,
        },
        Change::Batch(changes) => Record::Batch(changes.iter().map(to_record).collect()),
        Change::SegmentSaved {
            id,
            name,
            filter,
            at_ms,
        } => Record::SegmentSaved {
            id: id.clone(),
            name: name.clone(),
            filter: to_persisted(filter),
            at_ms: *at_ms,
        },
        Change::SegmentDeleted { id } => Record::SegmentDeleted { id: id.clone() },
        Change::SeqsAbandoned { first, last } => Record::SeqsAbandoned {
            first: *first,
            last: *last,
        },
        Change::KeyUsed { id, at_ms } => Record::KeyUsed {
            id: id.clone(),
            at_ms: *at_ms,
        },
        Change::CohortDeleted {
            partner,
            cohort_id,
            at_ms,
        } => Record::CohortDeleted {
            partner: *partner,
            cohort_id: cohort_id.clone(),
            at_ms: *at_ms,
        },
        Change::AttributesSet { user, values } => Record::AttributesSet {
            user: user.0,
            values: values
                .iter()
                .map(|(n, v)| (n.clone(), v.clone().map(PValue)))
                .collect(),
        },
        Change::AttributeDeclared { name, ty } => Record::AttributeDeclared {
            name: name.clone(),
            ty: *ty,
        },
        Change::ApiKeyCreated {
            id,
            name,
            scopes,
            digest,
            at_ms,
        } => Record::ApiKeyCreated {
            id: id.clone(),
            name: name.clone(),
            scopes: scopes.clone(),
            digest: *digest,
            at_ms: *at_ms,
        },
        Change::ApiKeyRevoked { id, at_ms } => Record::ApiKeyRevoked {
            id: id.clone(),
            at_ms: *at_ms,
        },
        Change::Audited(entry) => Record::Audited(entry.clone()),
        Change::UsersDeleted { users, at_ms } => Record::UsersDeleted {
            users: users.iter().map(|u| u.0).collect(),
            at_ms: *at_ms,
        },
        Change::UserMerged {
            source,
            target,
            at_ms,
        } => Record::UserMerged {
            source: source.0,
            target: target.0,
            at_ms: *at_ms,
        },
        Change::ExternalIdRenamed { user, from, to } => Record::ExternalIdRenamed {
            user: user.0,
            from: from.clone(),
            to: to.clone(),
        },
    }
}

/// The change a record holds.
pub(crate) fn from_record(r: Record) -> Change {
    match r {
        Record::WorkspaceCreated { seed, at_ms } => Change::WorkspaceCreated { seed, at_ms },
        Record::UserCreated {
            user,
            external_id,
            devices,
            aliases,
            bucket,
        } => Change::UserCreated {
            user: UserId(user),
            external_id,
            devices,
            aliases,
            bucket,
        },
        Record::DeviceAdded { user, device_id } => Change::DeviceAdded {
            user: UserId(user),
            device_id,
        },
        Record::AliasAdded { user, label, name } => Change::AliasAdded {
            user: UserId(user),
            label,
            name,
        },
        Record::UserIdentified { user, external_id } => Change::UserIdentified {
            user: UserId(user),
            external_id,
        },
        Record::CohortUpserted {
            partner,
            cohort_id,
            name,
            created_at,
        } => Change::CohortUpserted {
            partner,
            cohort_id,
            name,
            created_at,
        },
        Record::CohortChanged {
            partner,
            cohort_id,
            at_ms,
            resolved,
        } => Change::CohortChanged {
            partner,
            cohort_id,
            at_ms,
            resolved: ResolvedChanges {
                ops: resolved
                    .ops
                    .into_iter()
                    .map(|(user, remove)| MemberOp {
                        user: UserId(user),
                        remove,
                    })
                    .collect(),
                matched: resolved.matched,
                unmatched: resolved.unmatched,
                refused_device_ids: resolved.refused_device_ids,
                unmatched_sample: resolved.unmatched_sample,
            },
        },
        Record::PartnerEnabled { partner } => Change::PartnerEnabled { partner },
        Record::KeyCreated {
            id,
            partner,
            digest,
            prefix,
            at_ms,
        } => Change::KeyCreated {
            id,
            partner,
            digest,
            prefix,
            at_ms,
        },
        Record::KeyInvalidated { id, at_ms } => Change::KeyInvalidated { id, at_ms },
        Record::Batch(records) => Change::Batch(records.into_iter().map(from_record).collect()),
        Record::SegmentSaved {
            id,
            name,
            filter,
            at_ms,
        } => Change::SegmentSaved {
            id,
            name,
            filter: from_persisted(&filter),
            at_ms,
        },
        Record::SegmentDeleted { id } => Change::SegmentDeleted { id },
        Record::SeqsAbandoned { first, last } => Change::SeqsAbandoned { first, last },
        Record::KeyUsed { id, at_ms } => Change::KeyUsed { id, at_ms },
        Record::CohortDeleted {
            partner,
            cohort_id,
            at_ms,
        } => Change::CohortDeleted {
            partner,
            cohort_id,
            at_ms,
        },
        Record::AttributesSet { user, values } => Change::AttributesSet {
            user: UserId(user),
            values: values
                .into_iter()
                .map(|(n, v)| (n, v.map(|v| v.0)))
                .collect(),
        },
        Record::AttributeDeclared { name, ty } => Change::AttributeDeclared { name, ty },
        Record::ApiKeyCreated {
            id,
            name,
            scopes,
            digest,
            at_ms,
        } => Change::ApiKeyCreated {
            id,
            name,
            scopes,
            digest,
            at_ms,
        },
        Record::ApiKeyRevoked { id, at_ms } => Change::ApiKeyRevoked { id, at_ms },
        Record::Audited(entry) => Change::Audited(entry),
        Record::UsersDeleted { users, at_ms } => Change::UsersDeleted {
            users: users.into_iter().map(UserId).collect(),
            at_ms,
        },
        Record::UserMerged {
            source,
            target,
            at_ms,
        } => Change::UserMerged {
            source: UserId(source),
            target: UserId(target),
            at_ms,
        },
        Record::ExternalIdRenamed { user, from, to } => Change::ExternalIdRenamed {
            user: UserId(user),
            from,
            to,
        },
    }
}

/// The log payload of a change.
pub fn encode(c: &Change) -> Result<Vec<u8>> {
    bincode::encode_to_vec(to_record(c), config()).map_err(|e| Error::Corrupt {
        path: "<log record>".into(),
        reason: format!("cannot encode a change: {e}"),
    })
}

/// Reads a log payload; `path` and `seq` name it in errors.
pub fn decode(bytes: &[u8], path: &str, seq: u64) -> Result<Change> {
    let (record, used): (Record, usize) =
        bincode::decode_from_slice(bytes, config()).map_err(|e| Error::Corrupt {
            path: path.into(),
            reason: format!("record {seq} does not decode: {e}"),
        })?;
    if used != bytes.len() {
        return Err(Error::Corrupt {
            path: path.into(),
            reason: format!(
                "record {seq} has {} trailing bytes after its change",
                bytes.len() - used
            ),
        });
    }
    Ok(from_record(record))
}
