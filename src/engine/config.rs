//! The server's configuration file, `DATA/segq.json`, created with
//! generated defaults on first start:
//!
//! ```json
//! {"partner_api_keys": {"amplitude": "pk_amplitude_…", …},
//!  "rate_limit_per_hour": 250000,
//!  "max_body_bytes": 16777216,
//!  "compact_after_records": 1000000,
//!  "compact_after_bytes": 1073741824,
//!  "compact_interval_secs": 3600,
//!  "max_filter_nodes": 1000,
//!  "header_read_timeout_secs": 10,
//!  "body_read_timeout_secs": 30,
//!  "min_body_bytes_per_sec": 16384,
//!  "idle_timeout_secs": 60,
//!  "max_connections": 4096,
//!  "max_buffered_body_bytes": 268435456,
//!  "max_cohorts_per_partner": 1000,
//!  "ship_interval_ms": 1000,
//!  "store_retention_secs": 3600,
//!  "store_lease_secs": 30,
//!  "store_lease_renew_ms": 0,
//!  "replica_poll_ms": 500,
//!  "replica_max_lag_ms": 10000,
//!  "durability": "local",
//!  "store_ack_timeout_ms": 10000}
//! ```
//!
//! The last six bound what clients can hold before they are authenticated
//! (see [`crate::server::conn`]).
//!
//! Every partner has one partner_api_key per deployment. Unknown fields are
//! refused, so a typo in the file is an error, not a silent default.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::random_hex;
use super::write_atomically;
use crate::error::{Error, Result};
use crate::ids::Partner;

/// The platform's rate limit: requests per hour per data import key.
pub const DEFAULT_RATE_LIMIT_PER_HOUR: u64 = 250_000;
/// The largest partner request body accepted: 16 MiB, so that every
/// request the protocol allows fits, written as compact JSON however its
/// strings are escaped. The largest such request carries 1,000 aliases,
/// each in its own `cohort_changes` object
/// (`{"aliases":[{"alias_name":"…","alias_label":"…"}],"should_remove":false},`:
/// 71 bytes of JSON) with a label and a name at the 1,024-byte limit,
/// each byte escaped at worst as 6 (`\u001f`): 71 + 2 × 6,144 = 12,359
/// bytes an alias, 12,359,000 for 1,000; the cohort_id (at most 6,144
/// bytes escaped), the credentials and the keys around them add a few KB:
/// about 12.4 MB, which leaves 16 MiB some 4 MB for white space.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

fn default_rate() -> u64 {
    DEFAULT_RATE_LIMIT_PER_HOUR
}

fn default_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// The configuration of a data directory: `segq.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One partner_api_key per partner.
    pub partner_api_keys: BTreeMap<Partner, String>,
    /// Partner requests per data import key per hour; 0 for no limit.
    #[serde(default = "default_rate")]
    pub rate_limit_per_hour: u64,
    /// The largest partner (and admin JSON) request body, in bytes; 413 above.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Compact a workspace once its log holds this many records...
    #[serde(default = "default_compact_records")]
    pub compact_after_records: u64,
    /// ...or this many bytes...
    #[serde(default = "default_compact_bytes")]
    pub compact_after_bytes: u64,
    /// ...or when it has any and the last compaction is this old (seconds).
    #[serde(default = "default_compact_interval")]
    pub compact_interval_secs: u64,
    /// The most nodes (cohort and bucket tests, and, or, not) a segment
    /// filter may have: queries and saved segments past it are refused
    /// (400).
    #[serde(default = "default_filter_nodes")]
    pub max_filter_nodes: usize,
    /// The longest a connection may take to send a request's headers,
    /// counted from its accept or from the first byte of a request that
    /// follows another (seconds).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// The longest wait for the next part of a request body (seconds);
    /// also the grace period before `min_body_bytes_per_sec` applies.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// The average rate a body must keep after its grace period; 0 for
    /// none.
    #[serde(default = "default_min_body_rate")]
    pub min_body_bytes_per_sec: u64,
    /// How long a kept-alive connection may wait, idle, for its next
    /// request (seconds).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Open connections at most; past it new ones wait, and the one that
    /// waits longest for a request (or reads an unauthenticated body) is
    /// closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request body bytes held in memory at once by the partner endpoints
    /// (bodies read before their credentials are checked), all requests
    /// together; at least `max_body_bytes`.
    #[serde(default = "default_max_buffered_body")]
    pub max_buffered_body_bytes: usize,
    /// The most cohorts one partner may create in one workspace (through
    /// the partner endpoints; 409 past it). Deleting one makes room.
    #[serde(default = "default_max_cohorts")]
    pub max_cohorts_per_partner: usize,
    /// Bytes each workspace's result cache (counts of filters that are not
    /// saved segments) may hold; 0 turns it off.
    #[serde(default = "default_result_cache_bytes")]
    pub result_cache_bytes: usize,
    /// Bytes each workspace's cache of bucket-range masks (per full chunk
    /// of users, those whose random bucket is in a range counted before)
    /// may hold; 0 turns it off.
    #[serde(default = "default_bucket_mask_cache_bytes")]
    pub bucket_mask_cache_bytes: usize,
    /// Seconds `/readyz` answers 503 after a shutdown signal before the
    /// server stops taking connections (so that load balancers stop
    /// sending first); 0 stops at once.
    #[serde(default)]
    pub shutdown_delay_secs: u64,
    /// With an object store (`segq serve --store`): the longest the live
    /// log's durable records wait before they are shipped to it
    /// (milliseconds); at most this much of what was acknowledged is lost
    /// with the machine.
    #[serde(default = "default_ship_interval_ms")]
    pub ship_interval_ms: u64,
    /// With an object store: how long an object no published manifest
    /// names any more (a previous generation's snapshot, log pieces
    /// merged into one) stays in the bucket before it is deleted
    /// (seconds).
    #[serde(default = "default_store_retention_secs")]
    pub store_retention_secs: u64,
    /// With an object store: how long the primary's lease on the bucket
    /// lasts from its last renewal (seconds). Another node takes over
    /// only once it expired; a primary that could not renew it for this
    /// long stops publishing.
    #[serde(default = "default_store_lease_secs")]
    pub store_lease_secs: u64,
    /// With an object store: the least time between two renewals of the
    /// lease (milliseconds); 0 renews it with every shipment. Renewals
    /// happen at shipments, so at most every `ship_interval_ms`.
    #[serde(default)]
    pub store_lease_renew_ms: u64,
    /// A read replica (`segq serve --replica-of`): how often it looks for
    /// new manifests and log data in the object store (milliseconds).
    #[serde(default = "default_replica_poll_ms")]
    pub replica_poll_ms: u64,
    /// A read replica: the lag past which `/readyz` calls it degraded
    /// (milliseconds since it last held everything the store held).
    #[serde(default = "default_replica_max_lag_ms")]
    pub replica_max_lag_ms: u64,
    /// When a change is acknowledged: `"local"` once its log record is
    /// fsynced on this node; `"object-store"` (a primary with `--store`
    /// only) once, in addition, a manifest naming it is published in the
    /// object store, so that losing the machine loses nothing
    /// acknowledged.
    #[serde(default)]
    pub durability: Durability,
    /// With `durability = "object-store"`: the longest a change waits for
    /// its shipment (milliseconds); past it the request fails with 503
    /// (the change stays applied and is shipped later; retrying is safe).
    #[serde(default = "default_store_ack_timeout_ms")]
    pub store_ack_timeout_ms: u64,
    /// The nice value (0 to 19) of the server's threads that apply partner
    /// imports and bulk user imports: above 0, they give way to queries
    /// when the cores are busy and still take every idle cycle. 0 runs
    /// them as queries run.
    #[serde(default = "default_import_nice")]
    pub import_nice: i32,
    /// The nice value (0 to 19) of the thread that compacts in the
    /// background.
    #[serde(default = "default_compaction_nice")]
    pub compaction_nice: i32,
}

fn default_import_nice() -> i32 {
    DEFAULT_IMPORT_NICE
}

fn default_compaction_nice() -> i32 {
    DEFAULT_COMPACTION_NICE
}

/// The import threads' nice value by default.
pub const DEFAULT_IMPORT_NICE: i32 = 5;
/// The compaction thread's nice value by default.
pub const DEFAULT_COMPACTION_NICE: i32 = 10;

/// When a change is acknowledged (the `durability` field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Once its log record is fsynced on this node.
    #[default]
    Local,
    /// Once its log record is, besides, in the object store (named by a
    /// published manifest).
    ObjectStore,
}

/// Milliseconds a change waits for its shipment with object-store
/// durability.
pub const DEFAULT_STORE_ACK_TIMEOUT_MS: u64 = 10_000;

fn default_store_ack_timeout_ms() -> u64 {
    DEFAULT_STORE_ACK_TIMEOUT_MS
}

/// Milliseconds between two looks of a read replica at the object store.
pub const DEFAULT_REPLICA_POLL_MS: u64 = 500;
/// A read replica's lag past which it is degraded (milliseconds).
pub const DEFAULT_REPLICA_MAX_LAG_MS: u64 = 10_000;

fn default_replica_poll_ms() -> u64 {
    DEFAULT_REPLICA_POLL_MS
}

fn default_replica_max_lag_ms() -> u64 {
    DEFAULT_REPLICA_MAX_LAG_MS
}

/// Milliseconds between two shipments of the live log to the object store.
pub const DEFAULT_SHIP_INTERVAL_MS: u64 = 1000;
/// Seconds an object no manifest names stays in the object store.
pub const DEFAULT_STORE_RETENTION_SECS: u64 = 3600;

fn default_ship_interval_ms() -> u64 {
    DEFAULT_SHIP_INTERVAL_MS
}

fn default_store_retention_secs() -> u64 {
    DEFAULT_STORE_RETENTION_SECS
}

/// Seconds the primary's lease on the object store lasts.
pub const DEFAULT_STORE_LEASE_SECS: u64 = 30;

fn default_store_lease_secs() -> u64 {
    DEFAULT_STORE_LEASE_SECS
}

/// Seconds to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Seconds to wait for the next part of a request body.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;
/// The slowest average body rate, after the grace period.
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u64 = 16 << 10;
/// Seconds a kept-alive connection may stay idle.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Open connections at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Partner request body bytes buffered at once, all requests together.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 256 << 20;

fn default_header_read_timeout() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_SECS
}

fn default_body_read_timeout() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_SECS
}

fn default_min_body_rate() -> u64 {
    DEFAULT_MIN_BODY_BYTES_PER_SEC
}

fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_max_buffered_body() -> usize {
    DEFAULT_MAX_BUFFERED_BODY_BYTES
}

fn default_filter_nodes() -> usize {
    crate::segment::DEFAULT_MAX_FILTER_NODES
}

fn default_result_cache_bytes() -> usize {
    crate::workspace::cache::DEFAULT_BYTES
}

fn default_bucket_mask_cache_bytes() -> usize {
    crate::segment::masks::DEFAULT_BYTES
}

fn default_max_cohorts() -> usize {
    DEFAULT_MAX_COHORTS_PER_PARTNER
}

/// The most cohorts a partner may create per workspace, by default. With
/// the per-cohort bounds on the unmatched sample, a partner's cohorts cost
/// a workspace at most about 4 MiB of samples.
pub const DEFAULT_MAX_COHORTS_PER_PARTNER: usize = 1_000;

fn default_compact_records() -> u64 {
    DEFAULT_COMPACT_AFTER_RECORDS
}

fn default_compact_bytes() -> u64 {
    DEFAULT_COMPACT_AFTER_BYTES
}

fn default_compact_interval() -> u64 {
    DEFAULT_COMPACT_INTERVAL_SECS
}

/// Log records that trigger a compaction.
pub const DEFAULT_COMPACT_AFTER_RECORDS: u64 = 1_000_000;
/// Log bytes that trigger a compaction.
pub const DEFAULT_COMPACT_AFTER_BYTES: u64 = 1 << 30;
/// The longest a non-empty log waits for a compaction, in seconds.
pub const DEFAULT_COMPACT_INTERVAL_SECS: u64 = 3600;

impl Config {
    /// A configuration with a fresh random partner_api_key per partner.
    pub fn generate() -> Config {
        Config {
            partner_api_keys: Partner::ALL
                .into_iter()
                .map(|p| (p, format!("pk_{}_{}", p.as_str(), random_hex(16))))
                .collect(),
            rate_limit_per_hour: DEFAULT_RATE_LIMIT_PER_HOUR,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            compact_after_records: DEFAULT_COMPACT_AFTER_RECORDS,
            compact_after_bytes: DEFAULT_COMPACT_AFTER_BYTES,
            compact_interval_secs: DEFAULT_COMPACT_INTERVAL_SECS,
            max_filter_nodes: crate::segment::DEFAULT_MAX_FILTER_NODES,
            result_cache_bytes: crate::workspace::cache::DEFAULT_BYTES,
            bucket_mask_cache_bytes: crate::segment::masks::DEFAULT_BYTES,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            body_read_timeout_secs: DEFAULT_BODY_READ_TIMEOUT_SECS,
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            max_cohorts_per_partner: DEFAULT_MAX_COHORTS_PER_PARTNER,
            shutdown_delay_secs: 0,
            ship_interval_ms: DEFAULT_SHIP_INTERVAL_MS,
            store_retention_secs: DEFAULT_STORE_RETENTION_SECS,
            store_lease_secs: DEFAULT_STORE_LEASE_SECS,
            store_lease_renew_ms: 0,
            replica_poll_ms: DEFAULT_REPLICA_POLL_MS,
            replica_max_lag_ms: DEFAULT_REPLICA_MAX_LAG_MS,
            durability: Durability::Local,
            store_ack_timeout_ms: DEFAULT_STORE_ACK_TIMEOUT_MS,
            import_nice: DEFAULT_IMPORT_NICE,
            compaction_nice: DEFAULT_COMPACTION_NICE,
        }
    }

    /// Loads `path`; `None` if the file does not exist. Creates nothing.
    pub fn load_existing(path: &Path) -> Result<Option<Config>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let c: Config = serde_json::from_slice(&bytes).map_err(|e| Error::Config {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                c.check(path)?;
                Ok(Some(c))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::io(path, source)),
        }
    }

    /// Loads `path`, or writes a generated configuration there if the file
    /// does not exist.
    pub fn load_or_create(path: &Path) -> Result<Config> {
        match Self::load_existing(path) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                let c = Config::generate();
                let text = serde_json::to_vec_pretty(&c).map_err(|e| Error::Config {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                write_atomically(path, &text)?;
                Ok(c)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some((_, reason)) => Err(Error::Config {
                path: path.into(),
                reason,
            }),
        }
    }

    /// What is wrong with the values, if anything: the fields it is about
    /// and why.
    fn problem(&self) -> Option<(Vec<&'static str>, String)> {
        let bad = |field: &'static str, reason: String| Some((vec![field], reason));
        if let Some((p, _)) = self.partner_api_keys.iter().find(|(_, k)| k.is_empty()) {
            return bad("partner_api_keys", format!("partner_api_keys.{p} is empty"));
        }
        if self.rate_limit_per_hour == 0 {
            return bad(
                "rate_limit_per_hour",
                "rate_limit_per_hour must be at least 1".into(),
            );
        }
        if self.max_body_bytes < 1024 {
            return bad(
                "max_body_bytes",
                "max_body_bytes must be at least 1024".into(),
            );
        }
        for (name, nice) in [
            ("import_nice", self.import_nice),
            ("compaction_nice", self.compaction_nice),
        ] {
            if !(0..=super::priority::MAX_NICE).contains(&nice) {
                return bad(name, format!("{name} must be 0 to 19, not {nice}"));
            }
        }
        if self.max_filter_nodes == 0 {
            return bad(
                "max_filter_nodes",
                "max_filter_nodes must be at least 1".into(),
            );
        }
        for (name, secs) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if secs == 0 {
                return bad(name, format!("{name} must be at least 1"));
            }
        }
        if self.ship_interval_ms == 0 {
            return bad(
                "ship_interval_ms",
                "ship_interval_ms must be at least 1".into(),
            );
        }
        for (name, ms) in [
            ("replica_poll_ms", self.replica_poll_ms),
            ("replica_max_lag_ms", self.replica_max_lag_ms),
            ("store_ack_timeout_ms", self.store_ack_timeout_ms),
        ] {
            if ms == 0 {
                return bad(name, format!("{name} must be at least 1"));
            }
        }
        if self.store_lease_secs == 0 {
            return bad(
                "store_lease_secs",
                "store_lease_secs must be at least 1".into(),
            );
        }
        let renew = self.ship_interval_ms.max(self.store_lease_renew_ms);
        if renew.saturating_mul(2) > self.store_lease_secs.saturating_mul(1000) {
            return Some((
                vec!["store_lease_secs", "ship_interval_ms", "store_lease_renew_ms"],
                format!(
                    "store_lease_secs ({} s) must be at least twice the time between lease renewals \
                     (ship_interval_ms {}, store_lease_renew_ms {}), or the lease lapses between them",
                    self.store_lease_secs, self.ship_interval_ms, self.store_lease_renew_ms
                ),
            ));
        }
        if self.max_connections == 0 {
            return bad(
                "max_connections",
                "max_connections must be at least 1".into(),
            );
        }
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return Some((
                vec!["max_buffered_body_bytes", "max_body_bytes"],
                format!(
                    "max_buffered_body_bytes ({}) must be at least max_body_bytes ({})",
                    self.max_buffered_body_bytes, self.max_body_bytes
                ),
            ));
        }
        if self.max_cohorts_per_partner == 0 {
            return bad(
                "max_cohorts_per_partner",
                "max_cohorts_per_partner must be at least 1".into(),
            );
        }
        None
    }

    /// The environment variable that sets `field`: `SEGQ_` and the
    /// field's name in capitals (`max_body_bytes`: `SEGQ_MAX_BODY_BYTES`).
    pub fn env_var(field: &str) -> String {
        format!("{ENV_PREFIX}{}", field.to_ascii_uppercase())
    }

    /// The fields of the file, in order.
    pub fn fields() -> Vec<String> {
        match serde_json::to_value(Config::generate()) {
            Ok(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Sets every field whose environment variable (see [`Self::env_var`])
    /// `var` gives, over the file's value. A number field takes digits; a
    /// map field (`partner_api_keys`) takes a JSON object, which replaces
    /// the file's whole map. Returns the variables used, in field order.
    /// A bad value is an [`Error::ConfigEnv`] naming its variable, and
    /// changes nothing; so is a rule the values break (such as
    /// `max_buffered_body_bytes` below `max_body_bytes`), naming the
    /// variables of the fields it is about.
    pub fn apply_env(&mut self, var: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>> {
        let internal = |e: serde_json::Error| Error::Internal(format!("configuration: {e}"));
        let file = serde_json::to_value(&*self).map_err(internal)?;
        let Value::Object(file) = file else {
            return Err(Error::Internal("configuration: not an object".into()));
        };
        let mut merged = file.clone();
        let mut used: Vec<(String, String)> = Vec::new();
        for (field, value) in &file {
            let name = Self::env_var(field);
            let Some(text) = var(&name) else { continue };
            let bad = |reason: String| Error::ConfigEnv {
                var: name.clone(),
                reason,
            };
            let clipped = crate::error::Clip(&text).to_string();
            let new = match value {
                Value::Number(_) => {
                    let t = text.trim();
                    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad(format!(
                            "expected a whole number of 0 or more, got {clipped:?}"
                        )));
                    }
                    let n: u64 = t
                        .parse()
                        .map_err(|_| bad(format!("{clipped} is too large")))?;
                    Value::from(n)
                }
                Value::Object(_) => match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(bad(format!(
                            "expected a JSON object such as {{\"amplitude\": \"...\"}}, got {clipped:?}"
                        )))
                    }
                },
                Value::String(_) => Value::String(text.clone()),
                _ => return Err(bad("this field cannot be set from the environment".into())),
            };
            // Read alone over the file's values, so that a value of the
            // wrong shape (a partner segq does not know, a number too
            // large) names its variable.
            let mut alone = file.clone();
            alone.insert(field.clone(), new.clone());
            serde_json::from_value::<Config>(Value::Object(alone))
                .map_err(|e| bad(format!("{e}")))?;
            merged.insert(field.clone(), new);
            used.push((field.clone(), name));
        }
        let config: Config = serde_json::from_value(Value::Object(merged)).map_err(internal)?;
        if let Some((fields, reason)) = config.problem() {
            let vars: Vec<&str> = used
                .iter()
                .filter(|(f, _)| fields.contains(&f.as_str()))
                .map(|(_, v)| v.as_str())
                .collect();
            if !vars.is_empty() {
                return Err(Error::ConfigEnv {
                    var: vars.join(", "),
                    reason,
                });
            }
        }
        *self = config;
        Ok(used.into_iter().map(|(_, v)| v).collect())
    }

    /// The configuration as JSON with every secret masked: the values of
    /// each field whose name speaks of a key, token, secret, password or
    /// digest (`partner_api_keys`), whatever their shape.
    pub fn masked(&self) -> Value {
        fn mask(v: &mut Value) {
            match v {
                Value::Object(map) => map.values_mut().for_each(mask),
                Value::Array(items) => items.iter_mut().for_each(mask),
                Value::Null => {}
                other => *other = Value::String(MASK.into()),
            }
        }
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            for (field, value) in map.iter_mut() {
                if is_secret(field) {
                    mask(value);
                }
            }
        }
        v
    }
}

/// What a masked secret shows.
pub const MASK: &str = "********";

/// The prefix of the variables that set configuration fields.
pub const ENV_PREFIX: &str = "SEGQ_";

/// Whether a field holds secrets, by its name.
fn is_secret(field: &str) -> bool {
    ["key", "token", "secret", "password", "digest"]
        .iter()
        .any(|w| field.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn every_field_has_a_variable_that_wins_over_the_file() {
        let fields = Config::fields();
        assert!(fields.len() >= 17, "{fields:?}");
        let file = Config::generate();
        for field in &fields {
            let var = Config::env_var(field);
            assert_eq!(var, format!("SEGQ_{}", field.to_uppercase()));
            let value = if field == "partner_api_keys" {
                r#"{"heap": "pk-env"}"#.to_string()
            } else if field == "durability" {
                "object-store".to_string()
            } else if field.ends_with("_nice") {
                "12".to_string()
            } else if field == "ship_interval_ms" || field == "store_lease_renew_ms" {
                // At most half the lease (30 s by default).
                "2000".to_string()
            } else {
                // Above every lower bound, and max_buffered_body_bytes
                // stays above max_body_bytes.
                "200000000".to_string()
            };
            let mut c = file.clone();
            let used = c.apply_env(&env(&[(&var, &value)])).unwrap();
            assert_eq!(used, vec![var.clone()]);
            let got = serde_json::to_value(&c).unwrap()[field].clone();
            let want: Value =
                serde_json::from_str(&value).unwrap_or_else(|_| Value::String(value.clone()));
            assert_eq!(got, want, "{var}");
            assert_ne!(c, file, "{var}");
        }
        let mut c = file.clone();
        assert!(c.apply_env(&|_| None).unwrap().is_empty());
        assert_eq!(c, file);
    }

    #[test]
    fn a_bad_value_names_its_variable_and_changes_nothing() {
        let file = Config::generate();
        for (pairs, var, says) in [
            (
                &[("SEGQ_MAX_BODY_BYTES", "1k")][..],
                "SEGQ_MAX_BODY_BYTES",
                "whole number",
            ),
            (
                &[("SEGQ_STORE_LEASE_SECS", "1")][..],
                "SEGQ_STORE_LEASE_SECS",
                "twice the time between lease renewals",
            ),
            (
                &[("SEGQ_STORE_LEASE_SECS", "0")][..],
                "SEGQ_STORE_LEASE_SECS",
                "at least 1",
            ),
            (
                &[("SEGQ_MAX_BODY_BYTES", "")][..],
                "SEGQ_MAX_BODY_BYTES",
                "whole number",
            ),
            (
                &[("SEGQ_COMPACT_AFTER_BYTES", "99999999999999999999")][..],
                "SEGQ_COMPACT_AFTER_BYTES",
                "too large",
            ),
            (
                &[("SEGQ_DURABILITY", "s3")][..],
                "SEGQ_DURABILITY",
                "unknown variant `s3`, expected `local` or `object-store`",
            ),
            (
                &[("SEGQ_STORE_ACK_TIMEOUT_MS", "0")][..],
                "SEGQ_STORE_ACK_TIMEOUT_MS",
                "at least 1",
            ),
            (
                &[("SEGQ_IMPORT_NICE", "20")][..],
                "SEGQ_IMPORT_NICE",
                "import_nice must be 0 to 19, not 20",
            ),
            (
                &[("SEGQ_COMPACTION_NICE", "99")][..],
                "SEGQ_COMPACTION_NICE",
                "compaction_nice must be 0 to 19, not 99",
            ),
            (
                &[("SEGQ_MAX_FILTER_NODES", "0")][..],
                "SEGQ_MAX_FILTER_NODES",
                "at least 1",
            ),
            (
                &[("SEGQ_PARTNER_API_KEYS", r#"{"heap": ""}"#)][..],
                "SEGQ_PARTNER_API_KEYS",
                "partner_api_keys.heap is empty",
            ),
            (
                &[("SEGQ_PARTNER_API_KEYS", r#"{"heap": 3}"#)][..],
                "SEGQ_PARTNER_API_KEYS",
                "invalid type",
            ),
            // Two values that together break a rule: both named.
            (
                &[
                    ("SEGQ_MAX_BODY_BYTES", "4096"),
                    ("SEGQ_MAX_BUFFERED_BODY_BYTES", "2048"),
                ][..],
                "SEGQ_MAX_BODY_BYTES, SEGQ_MAX_BUFFERED_BODY_BYTES",
                "must be at least max_body_bytes",
            ),
        ] {
            let mut c = file.clone();
            let e = c.apply_env(&env(pairs)).unwrap_err();
            let Error::ConfigEnv { var: got, reason } = &e else {
                panic!("{e}");
            };
            assert_eq!(got, var, "{e}");
            assert!(reason.contains(says), "{e}");
            assert!(e.to_string().starts_with("environment variable "), "{e}");
            assert_eq!(c, file);
        }
        // A rule broken by the file's value and fixed by a variable holds.
        let mut c = file.clone();
        c.max_buffered_body_bytes = 4096;
        c.apply_env(&env(&[("SEGQ_MAX_BUFFERED_BODY_BYTES", "99999999")]))
            .unwrap();
        assert_eq!(c.max_buffered_body_bytes, 99_999_999);
    }

    #[test]
    fn masked_hides_every_secret_and_nothing_else() {
        let c = Config::generate();
        let m = c.masked();
        let text = m.to_string();
        for key in c.partner_api_keys.values() {
            assert!(!text.contains(key.as_str()), "{text}");
        }
        assert_eq!(m["partner_api_keys"]["amplitude"], MASK);
        assert_eq!(m["max_body_bytes"], c.max_body_bytes);
        let plain = serde_json::to_value(&c).unwrap();
        for (field, value) in plain.as_object().unwrap() {
            if field != "partner_api_keys" {
                assert_eq!(&m[field], value, "{field}");
            }
        }
        assert!(is_secret("admin_token_digest") && is_secret("webhook_secret"));
        assert!(!is_secret("max_body_bytes"));
    }
}
