//! The `meta` section: everything of a workspace that is not per-user or a
//! bitmap, as bincode 2 (standard configuration) of [`Meta`]. It is small
//! (a few hundred bytes per cohort) and decoded on first use.
//!
//! The section grows only by appending: after [`Meta`] may come a
//! [`MetaExt`] (bincode 2 as well), written only when it holds something.
//! A section that ends after `Meta` (every file written before `MetaExt`
//! existed) reads as an empty `MetaExt`. What is added later goes after
//! `MetaExt` the same way, never into it.

use serde::{Deserialize, Serialize};

use crate::ids::Partner;
use crate::segment::Filter;

/// One cohort of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortMeta {
    pub partner: Partner,
    pub cohort_id: String,
    pub name: String,
    /// RFC 3339, as the partner sent it.
    pub created_at: Option<String>,
    /// Members (the bitmap's cardinality).
    pub cardinality: u64,
    /// The bitmap's bytes within the bitmaps section (8-byte aligned).
    pub offset: u64,
    pub len: u64,
    pub last_sync_ms: Option<i64>,
    pub last_added: u64,
    pub last_removed: u64,
    pub matched_total: u64,
    pub unmatched_total: u64,
    pub refused_total: u64,
    pub recent_unmatched: Vec<String>,
}

/// A data import key (its digest only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    pub id: String,
    pub partner: Partner,
    pub digest: [u8; 32],
    pub prefix: String,
    pub created_ms: i64,
    pub invalidated_ms: Option<i64>,
}

/// A saved segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: String,
    pub name: String,
    pub filter: Filter,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The workspace-level contents of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub workspace: String,
    pub seed: u64,
    /// The last log sequence number the snapshot holds.
    pub seq: u64,
    pub users: u32,
    pub cohorts: Vec<CohortMeta>,
    pub keys: Vec<KeyMeta>,
    pub enabled_partners: Vec<Partner>,
    /// (partner, days since 1970-01-01, data points).
    pub data_points: Vec<(Partner, i32, u64)>,
    pub segments: Vec<SegmentMeta>,
    /// Not part of `Meta`'s encoding: the [`MetaExt`] that follows it.
    #[serde(skip)]
    pub ext: MetaExt,
}

/// What follows [`Meta`] in the section, when anything does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaExt {
    /// `(key id, milliseconds since the epoch)`: each data import key's
    /// last use as logged (keys never used are left out).
    pub key_last_used: Vec<(String, i64)>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl Meta {
    /// The section's bytes: `Meta`, then the `MetaExt` unless it is empty
    /// (so a snapshot without one is byte for byte what older segq wrote).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = bincode::serde::encode_to_vec(self, config())
            .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        if self.ext != MetaExt::default() {
            bincode::serde::encode_into_std_write(&self.ext, &mut out, config())
                .map_err(|e| format!("encoding the snapshot meta: {e}"))?;
        }
        Ok(out)
    }

    /// Reads the section's bytes (see the module's documentation).
    pub fn decode(bytes: &[u8]) -> Result<Meta, String> {
        let (mut meta, used): (Meta, usize) = bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| format!("meta section does not decode: {e}"))?;
        let rest = &bytes[used..];
        if rest.is_empty() {
            return Ok(meta);
        }
        let (ext, used): (MetaExt, usize) = bincode::serde::decode_from_slice(rest, config())
            .map_err(|e| format!("meta section's extension does not decode: {e}"))?;
        if used != rest.len() {
            return Err(format!(
                "meta section has {} trailing bytes",
                rest.len() - used
            ));
        }
        meta.ext = ext;
        Ok(meta)
    }
}
