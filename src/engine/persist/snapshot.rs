//! A workspace written as a snapshot's contents, and the workspace a
//! mapped snapshot holds.

use std::sync::Arc;

use chrono::DateTime;

use super::{day_number, day_of, from_persisted, to_persisted};
use crate::access::{ApiKeyRecord, AuditEntry, AuditLog, Scope};
use crate::attributes::codec::Part;
use crate::cohorts::{BaseBitmap, Cohort, Members, SyncStats};
use crate::error::{Error, Result};
use crate::ids::CohortKey;
use crate::snapshot::format::SectionKind;
use crate::snapshot::meta::{
    ApiKeyMeta, ApiKeysExt, AuditExt, AuditMeta, CohortHistoryMeta, CohortMeta, HistoryExt,
    KeyMeta, Meta, MetaExt, SegmentMeta,
};
use crate::snapshot::writer::{dictionary_layout, Contents, SharedBytes};
use crate::snapshot::Snapshot;
use crate::users::UserRegistry;
use crate::workspace::{KeyRecord, SavedSegment, Workspace};

/// The snapshot of `ws` holding the log up to `seq`, as bytes (a file of
/// the newest format version).
pub fn write_snapshot(ws: &Workspace, seq: u64) -> Result<Vec<u8>> {
    write_snapshot_at(ws, seq, crate::snapshot::format::VERSION)
}

/// [`write_snapshot`] at format `version`: the newest, or 4 (the compact
/// dictionaries' first layout), for a build that reads no newer file.
pub fn write_snapshot_at(ws: &Workspace, seq: u64, version: u32) -> Result<Vec<u8>> {
    snapshot_contents(ws, seq, version)?.finish()
}

/// What [`write_snapshot_at`] writes, before it is laid out as a file
/// ([`Contents::write_to`] streams it to a writer).
pub fn snapshot_contents(ws: &Workspace, seq: u64, version: u32) -> Result<Contents> {
    let meta = Meta {
        workspace: ws.name().to_string(),
        seed: ws.users.seed(),
        seq,
        users: ws.users.len(),
        cohorts: Vec::new(),
        keys: ws
            .keys
            .values()
            .map(|k| KeyMeta {
                id: k.id.clone(),
                partner: k.partner,
                digest: k.digest,
                prefix: k.prefix.clone(),
                created_ms: k.created_at.timestamp_millis(),
                invalidated_ms: k.invalidated_at.map(|t| t.timestamp_millis()),
            })
            .collect(),
        enabled_partners: ws.enabled_partners.iter().copied().collect(),
        data_points: ws
            .data_points_by_day()
            .map(|(p, d, x)| (p, day_number(d), x))
            .collect(),
        segments: ws
            .segments
            .values()
            .map(|s| SegmentMeta {
                id: s.id.clone(),
                name: s.name.clone(),
                filter: to_persisted(&s.filter),
                created_ms: s.created_at.timestamp_millis(),
                updated_ms: s.updated_at.timestamp_millis(),
            })
            .collect(),
        ext: MetaExt {
            key_last_used: ws
                .keys
                .values()
                .filter_map(|k| Some((k.id.clone(), k.last_used?.timestamp_millis())))
                .collect(),
        },
        api_keys: ApiKeysExt {
            keys: ws
                .api_keys
                .values()
                .map(|k| ApiKeyMeta {
                    id: k.id.clone(),
                    name: k.name.clone(),
                    scopes: k.scopes.iter().map(|s| s.tag()).collect(),
                    digest: k.digest,
                    created_ms: k.created_at.timestamp_millis(),
                    revoked_ms: k.revoked_at.map(|t| t.timestamp_millis()),
                })
                .collect(),
        },
        audit: AuditExt {
            next_seq: if ws.audit.next_seq() > 1 {
                ws.audit.next_seq()
            } else {
                0
            },
            entries: ws
                .audit
                .iter()
                .map(|a| AuditMeta {
                    seq: a.seq,
                    at_ms: a.at_ms,
                    actor: a.actor.clone(),
                    action: a.action.clone(),
                    target: a.target.clone(),
                    detail: a.detail.clone(),
                    address: a.address.clone(),
                    request_id: a.request_id.clone(),
                })
                .collect(),
        },
        history: HistoryExt {
            cohorts: ws
                .cohorts
                .iter_sorted()
                .into_iter()
                .filter(|c| !c.size_history.is_empty())
                .map(|c| CohortHistoryMeta {
                    partner: c.key.partner,
                    cohort_id: c.key.cohort_id.clone(),
                    sizes: c.size_history.iter().copied().collect(),
                })
                .collect(),
        },
    };
    let mut out = Contents::new(meta);
    out.version = version;
    // An attribute unchanged since the snapshot it is read from is
    // written from that snapshot's mapped section, not copied first.
    for part in
        crate::attributes::codec::encode_in_parts(&ws.attributes).map_err(Error::Internal)?
    {
        match part {
            Part::Encoded(bytes) => out.attributes.push_owned(bytes),
            unchanged => out.attributes.push_shared(Box::new(Unchanged(unchanged))),
        }
    }
    out.reserve_buckets(ws.users.len() as usize);
    for b in ws.users.buckets() {
        out.push_bucket(b);
    }
    // Deleted users keep their ids (and a bucket no plan reads); the
    // dictionaries below hold none of their identifiers.
    let deleted = ws.users.deleted();
    if !deleted.is_empty() {
        deleted
            .serialize_into(&mut out.deleted)
            .map_err(|e| Error::Internal(format!("serializing the deleted users: {e}")))?;
    }
    // Users unchanged since the snapshot they are read from, in this
    // version's layout: its dictionaries are copied, not built again (at
    // 10M users that is most of a compaction's work).
    // Copied only where the file holds them as this version writes them
    // (a version 5 file may hold older dictionary sections).
    let (_, slot) = dictionary_layout(version)?;
    let copyable = |snap: &Snapshot| {
        snap.version() == version
            && SectionKind::DICTIONARIES
                .iter()
                .all(|kinds| snap.section_bytes(kinds[slot]).is_some())
    };
    match ws.users.unchanged_snapshot() {
        Some(snap) if copyable(snap) => out.dictionaries_from = Some(snap.clone()),
        _ => ws.users.for_each_identifier(|kind, id, key| match kind {
            0 => out.external_ids.push(id, key),
            1 => out.devices.push(id, key),
            _ => out.aliases.push(id, key),
        }),
    }
    for c in ws.cohorts.iter_sorted() {
        let entry = CohortMeta {
            partner: c.key.partner,
            cohort_id: c.key.cohort_id.clone(),
            name: c.name.clone(),
            created_at: c.created_at.as_ref().map(crate::import::format_created_at),
            cardinality: c.members.len(),
            offset: 0,
            len: 0,
            last_sync_ms: c.sync.last_sync.map(|t| t.timestamp_millis()),
            last_added: c.sync.last_added,
            last_removed: c.sync.last_removed,
            matched_total: c.sync.matched_total,
            unmatched_total: c.sync.unmatched_total,
            refused_total: c.sync.refused_total,
            recent_unmatched: c.sync.recent_unmatched.iter().cloned().collect(),
        };
        out.push_cohort(entry, |bytes| {
            c.members
                .serialize_into(bytes)
                .map_err(|e| Error::Internal(format!("serializing {}: {e}", c.key)))
        })?;
    }
    Ok(out)
}

/// An unchanged attribute's bytes in its mapped section, written as they
/// are.
struct Unchanged(Part);

impl SharedBytes for Unchanged {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Reads every custom attribute's index of `snap` whole, as a workspace
/// loaded from it reads each on first use, and fails naming the damage:
/// restoring a snapshot and `segq snapshot verify` check it so.
pub fn verify_attributes(snap: &Snapshot) -> Result<()> {
    if let Some(bytes) = snap.attributes_bytes() {
        crate::attributes::codec::decode(bytes, snap.meta()?.users).map_err(|e| snap.corrupt(e))?;
    }
    Ok(())
}

/// The workspace this snapshot holds, served from it in place: users,
/// identifiers, buckets and cohort bitmaps stay in the map and only
/// the meta section (catalog, keys, partners, billing, saved segments)
/// is decoded; a cohort bitmap's header is parsed now and its
/// containers checked on its first read ([`BaseBitmap::open`]), and each
/// custom attribute's index is read from the map when first needed (the
/// start-up check has found every section's checksum right before).
/// Changes made to the workspace afterwards are kept in memory on top of
/// the snapshot.
pub fn load_workspace(snap: Arc<Snapshot>) -> Result<Workspace> {
    let meta = snap.meta()?;
    let mut ws = Workspace::on_snapshot(
        meta.workspace.clone(),
        UserRegistry::on_snapshot(snap.clone())?,
    );
    let mut histories: std::collections::HashMap<(crate::ids::Partner, &str), &[(i64, u64)]> = meta
        .history
        .cohorts
        .iter()
        .map(|h| ((h.partner, h.cohort_id.as_str()), h.sizes.as_slice()))
        .collect();
    for (i, c) in meta.cohorts.iter().enumerate() {
        let created_at = match &c.created_at {
            Some(t) => Some(crate::import::parse_created_at(t).ok_or_else(|| {
                snap.corrupt(format!(
                    "cohort {} created_at {t:?} is not a valid time",
                    c.cohort_id
                ))
            })?),
            None => None,
        };
        let mut cohort = Cohort::new(CohortKey::new(c.partner, c.cohort_id.clone()));
        cohort.name = c.name.clone();
        cohort.created_at = created_at;
        cohort.members = Members::on_snapshot(BaseBitmap::open(snap.clone(), i)?);
        if cohort.members.len() != c.cardinality {
            return Err(snap.corrupt(format!(
                "cohort {}: catalog says {} members, bitmap holds {}",
                c.cohort_id,
                c.cardinality,
                cohort.members.len()
            )));
        }
        cohort.sync = SyncStats {
            last_sync: c.last_sync_ms.and_then(DateTime::from_timestamp_millis),
            last_added: c.last_added,
            last_removed: c.last_removed,
            matched_total: c.matched_total,
            unmatched_total: c.unmatched_total,
            refused_total: c.refused_total,
            recent_unmatched: c.recent_unmatched.iter().cloned().collect(),
        };
        if let Some(sizes) = histories.remove(&(c.partner, c.cohort_id.as_str())) {
            cohort.size_history = sizes.iter().copied().collect();
        }
        ws.cohorts.insert(cohort)?;
    }
    for k in &meta.keys {
        ws.keys.insert(
            k.id.clone(),
            KeyRecord {
                id: k.id.clone(),
                partner: k.partner,
                digest: k.digest,
                prefix: k.prefix.clone(),
                created_at: DateTime::from_timestamp_millis(k.created_ms).unwrap_or_default(),
                invalidated_at: k.invalidated_ms.and_then(DateTime::from_timestamp_millis),
                last_used: None,
            },
        );
    }
    if let Some(((p, id), _)) = histories.into_iter().next() {
        return Err(snap.corrupt(format!(
            "a size history of cohort {p}/{id}, which it does not hold"
        )));
    }
    for (id, ms) in &meta.ext.key_last_used {
        let k = ws.keys.get_mut(id).ok_or_else(|| {
            snap.corrupt(format!("a last use of key {id}, which it does not hold"))
        })?;
        k.last_used = DateTime::from_timestamp_millis(*ms);
    }
    for k in &meta.api_keys.keys {
        let scopes = k
            .scopes
            .iter()
            .map(|&t| {
                Scope::from_tag(t).ok_or_else(|| {
                    snap.corrupt(format!("API key {} has an unknown scope tag {t}", k.id))
                })
            })
            .collect::<Result<Vec<Scope>>>()?;
        ws.api_keys.insert(
            k.id.clone(),
            ApiKeyRecord {
                id: k.id.clone(),
                name: k.name.clone(),
                scopes,
                digest: k.digest,
                created_at: DateTime::from_timestamp_millis(k.created_ms).unwrap_or_default(),
                revoked_at: k.revoked_ms.and_then(DateTime::from_timestamp_millis),
            },
        );
    }
    let entries = meta
        .audit
        .entries
        .iter()
        .map(|a| AuditEntry {
            seq: a.seq,
            at_ms: a.at_ms,
            actor: a.actor.clone(),
            action: a.action.clone(),
            target: a.target.clone(),
            detail: a.detail.clone(),
            address: a.address.clone(),
            request_id: a.request_id.clone(),
        })
        .collect();
    ws.audit = AuditLog::restore(meta.audit.next_seq, entries).map_err(|e| snap.corrupt(e))?;
    ws.enabled_partners
        .extend(meta.enabled_partners.iter().copied());
    for &(p, day, n) in &meta.data_points {
        ws.add_data_points(p, day_of(day), n);
    }
    if snap.attributes_bytes().is_some() {
        // Listed from the mapped section on first use, each index read
        // when first needed: the open reads nothing of it.
        let bytes = crate::workspace::AttributesSection::of(snap.clone());
        ws.attributes = crate::attributes::Attributes::on_section(bytes, meta.users);
    }
    for s in &meta.segments {
        ws.segments.insert(
            s.id.clone(),
            SavedSegment {
                id: s.id.clone(),
                name: s.name.clone(),
                filter: from_persisted(&s.filter),
                created_at: DateTime::from_timestamp_millis(s.created_ms).unwrap_or_default(),
                updated_at: DateTime::from_timestamp_millis(s.updated_ms).unwrap_or_default(),
            },
        );
    }
    Ok(ws)
}
