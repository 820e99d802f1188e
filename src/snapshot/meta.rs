//! The `meta` section: everything of a workspace that is not per-user or a
//! bitmap, as bincode 2 (standard configuration) of [`Meta`]. It is small
//! (a few hundred bytes per cohort) and decoded on first use.

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
}
