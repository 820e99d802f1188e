//! Writes a workspace as a snapshot file.

use chrono::{DateTime, NaiveDate};

use super::dict::DictWriter;
use super::format::{SectionKind, SnapshotWriter};
use super::meta::{CohortMeta, KeyMeta, Meta, MetaExt, SegmentMeta};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

fn epoch() -> NaiveDate {
    DateTime::UNIX_EPOCH.date_naive()
}

/// Days since 1970-01-01.
pub(crate) fn day_number(d: NaiveDate) -> i32 {
    (d - epoch()).num_days() as i32
}

/// The day a day number names.
pub(crate) fn day_of(n: i32) -> NaiveDate {
    epoch() + chrono::Days::new(n.max(0) as u64)
}

/// The snapshot of `ws` holding the log up to `seq`, as bytes.
pub fn write(ws: &Workspace, seq: u64) -> Result<Vec<u8>> {
    let n = ws.users.len();
    let mut buckets = Vec::with_capacity(n as usize * 2);
    for b in ws.users.buckets() {
        buckets.extend_from_slice(&b.to_le_bytes());
    }
    let mut dicts = [DictWriter::new(), DictWriter::new(), DictWriter::new()];
    ws.users
        .for_each_identifier(|kind, id, key| dicts[usize::from(kind)].push(id, key));
    let [ext, dev, ali] = dicts;

    let mut bitmaps = Vec::new();
    let mut cohorts = Vec::new();
    for c in ws.cohorts.iter_sorted() {
        while bitmaps.len() % 8 != 0 {
            bitmaps.push(0);
        }
        let offset = bitmaps.len() as u64;
        c.members
            .serialize_into(&mut bitmaps)
            .map_err(|e| Error::Internal(format!("serializing {}: {e}", c.key)))?;
        cohorts.push(CohortMeta {
            partner: c.key.partner,
            cohort_id: c.key.cohort_id.clone(),
            name: c.name.clone(),
            created_at: c.created_at.as_ref().map(crate::import::format_created_at),
            cardinality: c.members.len(),
            offset,
            len: bitmaps.len() as u64 - offset,
            last_sync_ms: c.sync.last_sync.map(|t| t.timestamp_millis()),
            last_added: c.sync.last_added,
            last_removed: c.sync.last_removed,
            matched_total: c.sync.matched_total,
            unmatched_total: c.sync.unmatched_total,
            refused_total: c.sync.refused_total,
            recent_unmatched: c.sync.recent_unmatched.iter().cloned().collect(),
        });
    }

    let meta = Meta {
        workspace: ws.name().to_string(),
        seed: ws.users.seed(),
        seq,
        users: n,
        cohorts,
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
                filter: s.filter.clone(),
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
    };
    let meta = meta.encode().map_err(Error::Internal)?;

    let mut w = SnapshotWriter::new();
    w.section(SectionKind::Meta, &meta)?;
    w.section(SectionKind::Buckets, &buckets)?;
    w.section(SectionKind::ExternalIds, &ext.finish()?)?;
    w.section(SectionKind::Devices, &dev.finish()?)?;
    w.section(SectionKind::Aliases, &ali.finish()?)?;
    w.section(SectionKind::Bitmaps, &bitmaps)?;
    w.finish()
}
