//! The partner sync client, the other side of the wire of
//! `../shared/PROTOCOL.md`: it keeps a cohort on a server equal to a file
//! of identifiers, as analytics partners do (`segq sync`).
//!
//! A sync reads the members ([`members`]), creates or renames the cohort
//! (`POST /partners/{partner}/cohorts`), compares the members with those
//! of the last successful sync kept in a local state file ([`state`]),
//! and sends only who entered and who left ([`plan`]) in batches of at
//! most 1,000 identifiers (`POST /partners/{partner}/cohorts/users`), a
//! few requests in flight ([`run`]). Failed requests are retried by
//! [`retry`]'s policy. Each acknowledged batch is journaled as its answer
//! arrives, so a sync interrupted part-way (client killed, server
//! restarted, Ctrl-C) resumes without resending what was acknowledged.
//!
//! The HTTP itself is not here: a [`Transport`] sends the requests (the
//! command line's uses an HTTP client; tests script their own), so all of
//! this runs without a server.

pub mod members;
pub mod plan;
pub mod retry;
pub mod run;
pub mod state;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::Partner;

pub use members::{parse_members, read_members, Layout};
pub use plan::{Batch, Plan};
pub use retry::{next_start, parse_period, RetryPolicy};
pub use run::{sync_once, NoReply, Observer, Quiet, Reply, Summary, Syncer, Transport};
pub use state::{Journal, Ledger, State};

/// Requests in flight by default.
pub const IN_FLIGHT: usize = 4;

/// The kind of identifiers a members file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// External ids (`user_ids`).
    ExternalId,
    /// Device ids (`device_ids`).
    DeviceId,
    /// Alias names, all with one alias label (`aliases`).
    Alias {
        /// The alias label.
        label: String,
    },
}

impl IdKind {
    /// From `--id-type` (`external_id`, `device_id` or `alias`) and, for
    /// `alias`, the label.
    pub fn parse(kind: &str, alias_label: Option<&str>) -> Result<IdKind> {
        match (kind, alias_label) {
            ("external_id", None) => Ok(IdKind::ExternalId),
            ("device_id", None) => Ok(IdKind::DeviceId),
            ("alias", Some(l)) if !l.is_empty() => Ok(IdKind::Alias {
                label: l.to_string(),
            }),
            ("alias", _) => Err(Error::InvalidArgument(
                "--id-type alias needs --alias-label LABEL (the aliases' label, e.g. email)".into(),
            )),
            ("external_id" | "device_id", Some(_)) => Err(Error::InvalidArgument(
                "--alias-label goes with --id-type alias only".into(),
            )),
            (other, _) => Err(Error::InvalidArgument(format!(
                "--id-type {other:?}: expected external_id, device_id or alias"
            ))),
        }
    }

    /// As the state file names it: `external_id`, `device_id` or
    /// `alias:LABEL`.
    pub fn tag(&self) -> String {
        match self {
            IdKind::ExternalId => "external_id".into(),
            IdKind::DeviceId => "device_id".into(),
            IdKind::Alias { label } => format!("alias:{label}"),
        }
    }
}

/// One cohort's sync: where it goes, with which keys, and how.
#[derive(Clone, Debug)]
pub struct Job {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The partner.
    pub partner: Partner,
    /// The partner_api_key.
    pub partner_api_key: String,
    /// The data import key (`client_secret`).
    pub data_import_key: String,
    /// The cohort.
    pub cohort_id: String,
    /// Its name.
    pub name: String,
    /// What the identifiers are.
    pub kind: IdKind,
    /// The state file.
    pub state: PathBuf,
    /// Send everyone, not only who entered (as a first sync does).
    pub full: bool,
    /// Identifiers per batch (1 to 1,000).
    pub batch_size: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// The retry policy.
    pub retry: RetryPolicy,
}

/// The default state file of a cohort's sync under `dir`:
/// `PARTNER-COHORT-HASH.json`, the cohort_id cut to its first 64 safe
/// characters (others become `_`) and HASH the first 16 hex digits of a
/// SHA-256 of the server, partner, cohort_id and identifier kind, so that
/// two cohorts never share a file.
pub fn default_state_path(
    dir: &Path,
    server: &str,
    partner: Partner,
    cohort_id: &str,
    kind: &IdKind,
) -> PathBuf {
    let safe: String = cohort_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut h = Sha256::new();
    for part in [
        server.trim_end_matches('/'),
        partner.as_str(),
        cohort_id,
        &kind.tag(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{partner}-{safe}-{hex}.json"))
}
