//! The `meta` section: everything of a workspace that is not per-user or a
//! bitmap, as bincode 2 (standard configuration) of [`Meta`], written by
//! hand with explicit tags ([`super::codec`]). It is small (a few hundred
//! bytes per cohort) and decoded on first use. These types are the
//! snapshot's own: the engine converts a workspace to and from them.
//!
//! The section grows only by appending: after [`Meta`] may come a
//! [`MetaExt`] (bincode 2 as well), written only when it holds something.
//! A section that ends after `Meta` (every file written before `MetaExt`
//! existed) reads as an empty `MetaExt`. What is added later goes after
//! `MetaExt` the same way, never into it: the workspace API keys
//! ([`ApiKeysExt`]) follow `MetaExt` (written, empty or not, whenever
//! there are API keys), and a section that ends before them holds none.
//! The audit entries ([`AuditExt`]) follow the API keys the same way:
//! written (after a `MetaExt` and an `ApiKeysExt`, empty or not) whenever
//! an audit entry was ever recorded; a section that ends before them
//! holds none. The cohorts' size histories ([`HistoryExt`]) follow the
//! audit entries the same way: written (after a `MetaExt`, an
//! `ApiKeysExt` and an `AuditExt`, empty or not) whenever a cohort has
//! one; a section that ends before them holds none.

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use super::codec::{config, decode_partner, decode_seq, encode_partner, encode_seq};
pub use super::codec::{PBucketCmp, PFilter};
use crate::ids::Partner;

/// One cohort of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CohortMeta {
    /// Its partner.
    pub partner: Partner,
    /// Its cohort_id.
    pub cohort_id: String,
    /// Its name.
    pub name: String,
    /// RFC 3339, as the partner sent it.
    pub created_at: Option<String>,
    /// Members (the bitmap's cardinality).
    pub cardinality: u64,
    /// The bitmap's bytes within the bitmaps section (8-byte aligned).
    pub offset: u64,
    /// The bitmap's length in bytes.
    pub len: u64,
    /// When its last users request was applied (ms since the Unix epoch), if ever.
    pub last_sync_ms: Option<i64>,
    /// Members the last request added (actual changes).
    pub last_added: u64,
    /// Members the last request removed (actual changes).
    pub last_removed: u64,
    /// Identifiers that matched a user, over all requests.
    pub matched_total: u64,
    /// Identifiers that matched nobody, over all requests.
    pub unmatched_total: u64,
    /// Device ids refused because their user is identified, over all requests.
    pub refused_total: u64,
    /// The most recent unmatched identifiers, oldest first (a bounded sample).
    pub recent_unmatched: Vec<String>,
}

impl CohortMeta {
    /// A cohort no users request has reached, of `cardinality` members
    /// (its bitmap's place is set by the writer).
    pub fn unsynced(
        partner: Partner,
        cohort_id: String,
        name: String,
        created_at: Option<String>,
        cardinality: u64,
    ) -> CohortMeta {
        CohortMeta {
            partner,
            cohort_id,
            name,
            created_at,
            cardinality,
            offset: 0,
            len: 0,
            last_sync_ms: None,
            last_added: 0,
            last_removed: 0,
            matched_total: 0,
            unmatched_total: 0,
            refused_total: 0,
            recent_unmatched: Vec::new(),
        }
    }
}

/// A data import key (its digest only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Its id.
    pub id: String,
    /// The partner it is for.
    pub partner: Partner,
    /// The SHA-256 digest of its secret.
    pub digest: [u8; 32],
    /// The first characters of its secret, to recognise it by.
    pub prefix: String,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was invalidated (ms since the Unix epoch), if it was.
    pub invalidated_ms: Option<i64>,
}

/// A saved segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its filter, cohorts by cohort_id.
    pub filter: PFilter,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it last changed (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// The workspace-level contents of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The workspace's name.
    pub workspace: String,
    /// The workspace's seed (random buckets are a hash of it and the user id).
    pub seed: u64,
    /// The last log sequence number the snapshot holds.
    pub seq: u64,
    /// Users, ids `0..users`.
    pub users: u32,
    /// The cohorts, in the order of their bitmaps.
    pub cohorts: Vec<CohortMeta>,
    /// The data import keys.
    pub keys: Vec<KeyMeta>,
    /// The partners enabled for the workspace.
    pub enabled_partners: Vec<Partner>,
    /// (partner, days since 1970-01-01, data points).
    pub data_points: Vec<(Partner, i32, u64)>,
    /// The saved segments.
    pub segments: Vec<SegmentMeta>,
    /// Not part of `Meta`'s encoding: the [`MetaExt`] that follows it.
    pub ext: MetaExt,
    /// Not part of `Meta`'s encoding: the [`ApiKeysExt`] after `ext`.
    pub api_keys: ApiKeysExt,
    /// Not part of `Meta`'s encoding: the [`AuditExt`] after `api_keys`.
    pub audit: AuditExt,
    /// Not part of `Meta`'s encoding: the [`HistoryExt`] after `audit`.
    pub history: HistoryExt,
}

/// One cohort's sizes after its syncs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CohortHistoryMeta {
    /// The cohort's partner.
    pub partner: Partner,
    /// Its cohort_id.
    pub cohort_id: String,
    /// `(ms since the Unix epoch, members)`, oldest first.
    pub sizes: Vec<(i64, u64)>,
}

/// What follows [`AuditExt`] in the section, when a cohort has a size
/// history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryExt {
    /// The cohorts with a history, by (partner, cohort_id).
    pub cohorts: Vec<CohortHistoryMeta>,
}

/// One audit entry (see `access::AuditEntry`, whose fields these are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditMeta {
    /// Its number in the workspace.
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// A workspace API key's id, or `admin`.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// A small JSON object.
    pub detail: String,
    /// The client's address.
    pub address: String,
    /// The request's id.
    pub request_id: String,
}

/// What follows [`ApiKeysExt`] in the section, once an audit entry was
/// recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditExt {
    /// The seq the next entry takes (0 before any).
    pub next_seq: u64,
    /// The entries kept, oldest first.
    pub entries: Vec<AuditMeta>,
}

/// A workspace API key (its digest only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyMeta {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scopes' tags (`access::Scope::tag`, append-only).
    pub scopes: Vec<u8>,
    /// The SHA-256 digest of the key.
    pub digest: [u8; 32],
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was revoked (ms since the Unix epoch), if it was.
    pub revoked_ms: Option<i64>,
}

/// What follows [`MetaExt`] in the section, when there are API keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiKeysExt {
    /// The workspace API keys, revoked ones included.
    pub keys: Vec<ApiKeyMeta>,
}

/// What follows [`Meta`] in the section, when anything does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaExt {
    /// `(key id, milliseconds since the epoch)`: each data import key's
    /// last use as logged (keys never used are left out).
    pub key_last_used: Vec<(String, i64)>,
}

impl Meta {
    /// The section's bytes: `Meta`, then the `MetaExt` unless it is empty
    /// (so a snapshot without one is byte for byte what older segq wrote).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = bincode::encode_to_vec(self, config())
            .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        let history = self.history != HistoryExt::default();
        let audit = history || self.audit != AuditExt::default();
        let api_keys = audit || self.api_keys != ApiKeysExt::default();
        if api_keys || self.ext != MetaExt::default() {
            bincode::encode_into_std_write(&self.ext, &mut out, config())
                .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        }
        if api_keys {
            bincode::encode_into_std_write(&self.api_keys, &mut out, config())
                .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        }
        if audit {
            bincode::encode_into_std_write(&self.audit, &mut out, config())
                .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        }
        if history {
            bincode::encode_into_std_write(&self.history, &mut out, config())
                .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        }
        Ok(out)
    }

    /// Reads the section's bytes (see the module's documentation).
    pub fn decode(bytes: &[u8]) -> Result<Meta, String> {
        let (mut meta, used): (Meta, usize) = bincode::decode_from_slice(bytes, config())
            .map_err(|e| format!("meta section does not decode: {e}"))?;
        let rest = &bytes[used..];
        if rest.is_empty() {
            return Ok(meta);
        }
        let (ext, used): (MetaExt, usize) = bincode::decode_from_slice(rest, config())
            .map_err(|e| format!("meta section's extension does not decode: {e}"))?;
        meta.ext = ext;
        let rest = &rest[used..];
        if rest.is_empty() {
            return Ok(meta);
        }
        let (api_keys, used): (ApiKeysExt, usize) = bincode::decode_from_slice(rest, config())
            .map_err(|e| format!("meta section's API keys do not decode: {e}"))?;
        meta.api_keys = api_keys;
        let rest = &rest[used..];
        if rest.is_empty() {
            return Ok(meta);
        }
        let (audit, used): (AuditExt, usize) = bincode::decode_from_slice(rest, config())
            .map_err(|e| format!("meta section's audit entries do not decode: {e}"))?;
        meta.audit = audit;
        let rest = &rest[used..];
        if rest.is_empty() {
            return Ok(meta);
        }
        let (history, used): (HistoryExt, usize) = bincode::decode_from_slice(rest, config())
            .map_err(|e| format!("meta section's cohort size histories do not decode: {e}"))?;
        if used != rest.len() {
            return Err(format!(
                "meta section has {} trailing bytes",
                rest.len() - used
            ));
        }
        meta.history = history;
        Ok(meta)
    }
}

// The encodings: each struct's fields in declaration order (as bincode's
// serde form wrote them), partners as their tags.

impl Encode for CohortMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        encode_partner(self.partner, e)?;
        (
            &self.cohort_id,
            &self.name,
            &self.created_at,
            self.cardinality,
        )
            .encode(e)?;
        (self.offset, self.len, self.last_sync_ms, self.last_added).encode(e)?;
        (self.last_removed, self.matched_total, self.unmatched_total).encode(e)?;
        (self.refused_total, &self.recent_unmatched).encode(e)
    }
}

impl<C> Decode<C> for CohortMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(CohortMeta {
            partner: decode_partner(d)?,
            cohort_id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            created_at: Decode::decode(d)?,
            cardinality: Decode::decode(d)?,
            offset: Decode::decode(d)?,
            len: Decode::decode(d)?,
            last_sync_ms: Decode::decode(d)?,
            last_added: Decode::decode(d)?,
            last_removed: Decode::decode(d)?,
            matched_total: Decode::decode(d)?,
            unmatched_total: Decode::decode(d)?,
            refused_total: Decode::decode(d)?,
            recent_unmatched: decode_seq(d, String::decode)?,
        })
    }
}

impl Encode for KeyMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.id.encode(e)?;
        encode_partner(self.partner, e)?;
        (
            &self.digest,
            &self.prefix,
            self.created_ms,
            self.invalidated_ms,
        )
            .encode(e)
    }
}

impl<C> Decode<C> for KeyMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(KeyMeta {
            id: Decode::decode(d)?,
            partner: decode_partner(d)?,
            digest: Decode::decode(d)?,
            prefix: Decode::decode(d)?,
            created_ms: Decode::decode(d)?,
            invalidated_ms: Decode::decode(d)?,
        })
    }
}

impl Encode for SegmentMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (
            &self.id,
            &self.name,
            &self.filter,
            self.created_ms,
            self.updated_ms,
        )
            .encode(e)
    }
}

impl<C> Decode<C> for SegmentMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(SegmentMeta {
            id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            filter: Decode::decode(d)?,
            created_ms: Decode::decode(d)?,
            updated_ms: Decode::decode(d)?,
        })
    }
}

impl Encode for Meta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (&self.workspace, self.seed, self.seq, self.users).encode(e)?;
        (&self.cohorts, &self.keys).encode(e)?;
        encode_seq(&self.enabled_partners, e, |p, e| encode_partner(*p, e))?;
        encode_seq(&self.data_points, e, |(p, day, n), e| {
            encode_partner(*p, e)?;
            (day, n).encode(e)
        })?;
        self.segments.encode(e)
    }
}

impl<C> Decode<C> for Meta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(Meta {
            workspace: Decode::decode(d)?,
            seed: Decode::decode(d)?,
            seq: Decode::decode(d)?,
            users: Decode::decode(d)?,
            cohorts: decode_seq(d, CohortMeta::decode)?,
            keys: decode_seq(d, KeyMeta::decode)?,
            enabled_partners: decode_seq(d, decode_partner)?,
            data_points: decode_seq(d, |d| {
                Ok((decode_partner(d)?, i32::decode(d)?, u64::decode(d)?))
            })?,
            segments: decode_seq(d, SegmentMeta::decode)?,
            ext: MetaExt::default(),
            api_keys: ApiKeysExt::default(),
            audit: AuditExt::default(),
            history: HistoryExt::default(),
        })
    }
}

impl Encode for MetaExt {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.key_last_used.encode(e)
    }
}

impl<C> Decode<C> for MetaExt {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(MetaExt {
            key_last_used: decode_seq(d, |d| Ok((String::decode(d)?, i64::decode(d)?)))?,
        })
    }
}

impl Encode for ApiKeyMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (&self.id, &self.name, &self.scopes, &self.digest).encode(e)?;
        (self.created_ms, self.revoked_ms).encode(e)
    }
}

impl<C> Decode<C> for ApiKeyMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(ApiKeyMeta {
            id: Decode::decode(d)?,
            name: Decode::decode(d)?,
            scopes: decode_seq(d, u8::decode)?,
            digest: Decode::decode(d)?,
            created_ms: Decode::decode(d)?,
            revoked_ms: Decode::decode(d)?,
        })
    }
}

impl Encode for ApiKeysExt {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.keys.encode(e)
    }
}

impl<C> Decode<C> for ApiKeysExt {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(ApiKeysExt {
            keys: decode_seq(d, ApiKeyMeta::decode)?,
        })
    }
}

impl Encode for AuditMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (self.seq, self.at_ms, &self.actor, &self.action).encode(e)?;
        (&self.target, &self.detail, &self.address, &self.request_id).encode(e)
    }
}

impl<C> Decode<C> for AuditMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(AuditMeta {
            seq: Decode::decode(d)?,
            at_ms: Decode::decode(d)?,
            actor: Decode::decode(d)?,
            action: Decode::decode(d)?,
            target: Decode::decode(d)?,
            detail: Decode::decode(d)?,
            address: Decode::decode(d)?,
            request_id: Decode::decode(d)?,
        })
    }
}

impl Encode for AuditExt {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (self.next_seq, &self.entries).encode(e)
    }
}

impl<C> Decode<C> for AuditExt {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(AuditExt {
            next_seq: Decode::decode(d)?,
            entries: decode_seq(d, AuditMeta::decode)?,
        })
    }
}

impl Encode for CohortHistoryMeta {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        encode_partner(self.partner, e)?;
        (&self.cohort_id, &self.sizes).encode(e)
    }
}

impl<C> Decode<C> for CohortHistoryMeta {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(CohortHistoryMeta {
            partner: decode_partner(d)?,
            cohort_id: Decode::decode(d)?,
            sizes: decode_seq(d, |d| Ok((i64::decode(d)?, u64::decode(d)?)))?,
        })
    }
}

impl Encode for HistoryExt {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.cohorts.encode(e)
    }
}

impl<C> Decode<C> for HistoryExt {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(HistoryExt {
            cohorts: decode_seq(d, CohortHistoryMeta::decode)?,
        })
    }
}
