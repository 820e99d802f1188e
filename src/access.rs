//! Workspace API keys and their scopes.
//!
//! A workspace API key belongs to one workspace and carries a set of
//! [`Scope`]s; it is sent as `Authorization: Bearer <key>`, like the
//! server admin token. Only its SHA-256 digest is stored (logged with
//! `Change::ApiKeyCreated`, kept in snapshots); the key itself is shown
//! once, when it is created. Which scope each route needs is the table
//! of `server::auth::ACCESS`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
