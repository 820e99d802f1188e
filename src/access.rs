//! Workspace API keys and their scopes.
//!
//! A workspace API key belongs to one workspace and carries a set of
//! [`Scope`]s; it is sent as `Authorization: Bearer <key>`, like the
//! server admin token. Only its SHA-256 digest is stored (logged with
//! `Change::ApiKeyCreated`, kept in snapshots); the key itself is shown
//! once, when it is created. Which scope each route needs is the table
//! of `server::auth::ACCESS`.
//!
//! The audit log ([`AuditLog`]) records who changed what through the
//! admin API: each [`AuditEntry`] names the caller by its key id (or
//! `admin`, the server admin token), never by a secret.

use chrono::{DateTime, Utc};

/// What a workspace API key may do. The persisted tags are append-only:
/// a new scope takes the next unused tag, none is ever renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Saved segment changes, data import keys, partners, cohort deletion,
    /// the operator's listings, and the workspace's API keys.
    WorkspaceAdmin,
    /// Counts, estimates, breakdowns, members, checks, and listing saved
    /// segments, cohorts and attributes.
    SegmentsRead,
    /// Creating and changing users, bulk imports, attribute values and
    /// declarations.
    UsersWrite,
}

impl Scope {
    /// Every scope, in the order listings show them.
    pub const ALL: [Scope; 3] = [
        Scope::WorkspaceAdmin,
        Scope::SegmentsRead,
        Scope::UsersWrite,
    ];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Scope::WorkspaceAdmin => "workspace:admin",
            Scope::SegmentsRead => "segments:read",
            Scope::UsersWrite => "users:write",
        }
    }

    /// The scope of a wire name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its persisted tag.
    pub fn tag(self) -> u8 {
        match self {
            Scope::WorkspaceAdmin => 0,
            Scope::SegmentsRead => 1,
            Scope::UsersWrite => 2,
        }
    }

    /// The scope of a persisted tag.
    pub fn from_tag(tag: u8) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.tag() == tag)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The longest API key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks an API key's name: 1 to [`MAX_NAME_CHARS`] characters, not
/// only spaces, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("name must be a non-empty string".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not hold control characters".into());
    }
    Ok(())
}

/// Parses a list of scope names: at least one, each known; duplicates
/// are folded and the result is in [`Scope::ALL`]'s order.
pub fn parse_scopes<S: AsRef<str>>(names: &[S]) -> Result<Vec<Scope>, String> {
    let expected = || {
        Scope::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        return Err(format!(
            "scopes must name at least one scope: {}",
            expected()
        ));
    }
    let mut out = Vec::new();
    for n in names {
        let n = n.as_ref();
        let s = Scope::parse(n).ok_or_else(|| {
            format!(
                "unknown scope {}: expected {}",
                crate::error::Echo(n),
                expected()
            )
        })?;
        out.push(s);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A workspace API key, as stored: only its SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The key's id (public).
    pub id: String,
    /// Its name, for people.
    pub name: String,
    /// What it may do, in [`Scope::ALL`]'s order.
    pub scopes: Vec<Scope>,
    /// The SHA-256 digest of the key.
    pub digest: [u8; 32],
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The most audit entries a workspace keeps: when one more is recorded,
/// the oldest is dropped (from memory at once, from storage at the next
/// compaction). About 200 bytes each: some 20 MB at most per workspace.
pub const AUDIT_RETENTION: usize = 100_000;

/// One change made through the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its number in the workspace: 1, 2, ... in the order recorded.
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// Who: a workspace API key's id (`ak_...`), or `admin` for the
    /// server admin token. Never a secret.
    pub actor: String,
    /// What was done, e.g. `api_key.created`, `segment.updated`.
    pub action: String,
    /// What it was done to: a key id, a segment id, a user id, ...
    pub target: String,
    /// A small JSON object with the particulars (never a secret).
    pub detail: String,
    /// The client's address (the connection's peer).
    pub address: String,
    /// The request's id (`X-Request-Id`).
    pub request_id: String,
}

/// A workspace's audit entries, oldest first: the last
/// [`AUDIT_RETENTION`] recorded, and the number the next one takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditLog {
    entries: std::collections::VecDeque<AuditEntry>,
    /// The seq of the next entry; 0 (as 1) before any.
    next_seq: u64,
}

impl AuditLog {
    /// The seq the next entry takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.max(1)
    }

    /// The entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries kept, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &AuditEntry> {
        self.entries.iter()
    }

    /// Records an entry; its seq must be at least [`Self::next_seq`]
    /// (seqs only grow). Drops the oldest beyond [`AUDIT_RETENTION`].
    pub fn push(&mut self, entry: AuditEntry) -> Result<(), String> {
        if entry.seq < self.next_seq() {
            return Err(format!(
                "audit entry {} recorded after entry {}",
                entry.seq,
                self.next_seq() - 1
            ));
        }
        self.next_seq = entry.seq + 1;
        self.entries.push_back(entry);
        while self.entries.len() > AUDIT_RETENTION {
            self.entries.pop_front();
        }
        Ok(())
    }

    /// A log of `entries` (oldest first, seqs growing) whose next entry
    /// takes `next_seq`, as a snapshot holds it.
    pub fn restore(next_seq: u64, entries: Vec<AuditEntry>) -> Result<AuditLog, String> {
        let mut log = AuditLog::default();
        for e in entries {
            log.push(e)?;
        }
        if next_seq.max(1) < log.next_seq() {
            return Err(format!(
                "audit log's next seq {next_seq} is not after its last entry {}",
                log.next_seq() - 1
            ));
        }
        log.next_seq = next_seq;
        Ok(log)
    }

    /// Up to `limit` entries with `after < seq < before` (a bound `None`
    /// is open), newest first or oldest first, and whether more such
    /// entries follow the page.
    pub fn page(
        &self,
        after: Option<u64>,
        before: Option<u64>,
        newest_first: bool,
        limit: usize,
    ) -> (Vec<&AuditEntry>, bool) {
        let lo = after.map_or(0, |a| a.saturating_add(1));
        let hi = before.unwrap_or(u64::MAX);
        // Entries are sorted by seq: find the range by binary search.
        let start = self.entries.partition_point(|e| e.seq < lo);
        let end = self.entries.partition_point(|e| e.seq < hi).max(start);
        let range = self.entries.range(start..end);
        let total = end - start;
        let page: Vec<&AuditEntry> = if newest_first {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        };
        let more = total > page.len();
        (page, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> AuditEntry {
        AuditEntry {
            seq,
            at_ms: 0,
            actor: "admin".into(),
            action: "x".into(),
            target: String::new(),
            detail: "{}".into(),
            address: "-".into(),
            request_id: String::new(),
        }
    }

    #[test]
    fn audit_pages_both_ways_and_keeps_the_last_entries() {
        let mut log = AuditLog::default();
        assert_eq!(log.next_seq(), 1);
        for seq in 1..=5 {
            log.push(entry(seq)).unwrap();
        }
        assert!(log.push(entry(5)).is_err(), "seqs only grow");
        let seqs = |(page, more): (Vec<&AuditEntry>, bool)| {
            (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more)
        };
        assert_eq!(seqs(log.page(None, None, true, 2)), (vec![5, 4], true));
        assert_eq!(seqs(log.page(None, Some(4), true, 2)), (vec![3, 2], true));
        assert_eq!(seqs(log.page(None, Some(2), true, 2)), (vec![1], false));
        assert_eq!(seqs(log.page(Some(3), None, false, 5)), (vec![4, 5], false));
        assert_eq!(
            seqs(log.page(Some(1), Some(5), false, 2)),
            (vec![2, 3], true)
        );
        assert_eq!(seqs(log.page(Some(9), None, false, 2)), (vec![], false));
        assert_eq!(seqs(log.page(Some(4), Some(2), true, 2)), (vec![], false));
        // Restored as a snapshot holds it; a seq that goes back is refused.
        let again = AuditLog::restore(6, log.iter().cloned().collect()).unwrap();
        assert_eq!(again, log);
        assert!(AuditLog::restore(3, log.iter().cloned().collect()).is_err());
        assert_eq!(
            AuditLog::restore(0, Vec::new()).unwrap(),
            AuditLog::default()
        );
        // Retention: the oldest go first.
        let mut big = AuditLog::default();
        for seq in 1..=(AUDIT_RETENTION as u64 + 3) {
            big.push(entry(seq)).unwrap();
        }
        assert_eq!(big.len(), AUDIT_RETENTION);
        assert_eq!(big.iter().next().map(|e| e.seq), Some(4));
        assert_eq!(big.next_seq(), AUDIT_RETENTION as u64 + 4);
    }

    #[test]
    fn scopes_parse_fold_and_name_the_unknown() {
        assert_eq!(
            parse_scopes(&["users:write", "segments:read", "users:write"]),
            Ok(vec![Scope::SegmentsRead, Scope::UsersWrite])
        );
        let e = parse_scopes(&["segments:read", "segments:write"]).unwrap_err();
        assert!(e.contains("segments:write"), "{e}");
        assert!(parse_scopes::<&str>(&[]).is_err());
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.name()), Some(s));
            assert_eq!(Scope::from_tag(s.tag()), Some(s));
        }
        assert_eq!(Scope::from_tag(3), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("ci reader").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("   ").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
