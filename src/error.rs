//! The library's error type. Every variant carries what was expected and what
//! was found, so that a caller (the CLI, the HTTP layer) can say it clearly.

use std::fmt;
use std::path::PathBuf;

use crate::ids::{CohortKey, Partner, UserId};

/// How many characters of an offending value an error message repeats.
pub(crate) const ECHO_CHARS: usize = 64;

/// How many characters of a free-text message (one that may have been
/// composed with an input in it) an error repeats.
pub(crate) const MESSAGE_CHARS: usize = 1024;

/// The first `max` characters of `s` when it is longer (cut on a char
/// boundary), `None` when it is not.
pub fn prefix(s: &str, max: usize) -> Option<&str> {
    s.char_indices().nth(max).map(|(i, _)| &s[..i])
}

/// An input value as an error message repeats it: quoted and escaped like
/// `{:?}`, and, past [`ECHO_CHARS`] characters, cut to them, followed by
/// `…` and its whole length: `"aaaa"… (900000 bytes)`. Every message that
/// repeats what a caller sent goes through this (or [`Bare`], [`Clip`]), so
/// a response or a CLI message never carries a whole large input.
pub(crate) struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0, ECHO_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some(p) => write!(f, "{p:?}… ({} bytes)", self.0.len()),
        }
    }
}

/// [`Echo`] without the quotes and escapes, for values shown as they are
/// (a cohort_id after its partner, a path).
pub(crate) struct Bare<'a>(pub &'a str);

impl fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0, ECHO_CHARS) {
            None => f.write_str(self.0),
            Some(p) => write!(f, "{p}… ({} bytes)", self.0.len()),
        }
    }
}

/// A free-text message cut to [`MESSAGE_CHARS`] characters (with `…` and
/// its whole length past them).
pub(crate) struct Clip<'a>(pub &'a str);

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0, MESSAGE_CHARS) {
            None => f.write_str(self.0),
            Some(p) => write!(f, "{p}… ({} bytes)", self.0.len()),
        }
    }
}

/// At most ten values, each as [`Echo`] shows it, then how many more.
pub(crate) struct EchoList<'a>(pub &'a [String]);

impl fmt::Display for EchoList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        f.write_str("[")?;
        for (i, v) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Echo(v))?;
        }
        if self.0.len() > SHOWN {
            write!(f, ", and {} more", self.0.len() - SHOWN)?;
        }
        f.write_str("]")
    }
}

/// Where a segment filter failed to parse, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: expected {}, found {}",
    Clip(location),
    Clip(expected),
    Bare(found)
)]
pub struct FilterParseError {
    /// `line L, column C` for the text form and for JSON syntax errors, a
    /// path such as `$.and[1].comparison` for JSON structure errors.
    pub location: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// What the parser expected there.
    pub expected: String,
    /// What it found there instead.
    pub found: String,
}

/// The library's error: every fallible operation of segq returns it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A partner name that is none of the known partners.
    #[error("unknown partner {}: expected one of amplitude, mixpanel, heap, census, hightouch, segment, kubit, tinyclues", Echo(found))]
    UnknownPartner {
        /// The name given.
        found: String,
    },

    /// An external_id that another user already holds.
    #[error("external_id {} is already held by user {holder}", Echo(external_id))]
    DuplicateExternalId {
        /// The external_id given.
        external_id: String,
        /// The user that holds it.
        holder: UserId,
    },

    /// An alias `(label, name)` that another user already holds.
    #[error(
        "alias ({}, {}) is already held by user {holder}",
        Echo(label),
        Echo(name)
    )]
    DuplicateAlias {
        /// The alias label.
        label: String,
        /// The alias name.
        name: String,
        /// The user that holds it.
        holder: UserId,
    },

    /// A device_id that another user already holds.
    #[error("device_id {} is already held by user {holder}", Echo(device_id))]
    DuplicateDevice {
        /// The device_id given.
        device_id: String,
        /// The user that holds it.
        holder: UserId,
    },

    /// Identifying a user that already has another external_id.
    #[error(
        "user {user} is already identified as {}; cannot identify it as {}",
        Echo(current),
        Echo(requested)
    )]
    AlreadyIdentified {
        /// The user.
        user: UserId,
        /// The external_id it has.
        current: String,
        /// The external_id asked for.
        requested: String,
    },

    /// No user has the identifier given (its description: `external_id:…`, `with id …`).
    #[error("no user {}", Bare(.0))]
    UnknownUser(String),

    /// An identifier (external_id, device_id, alias) that is empty, too long or otherwise invalid.
    #[error("invalid {kind}: {}", Clip(reason))]
    InvalidIdentifier {
        /// Which identifier (`external_id`, `device_id`, …).
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The workspace holds the most users its dense ids allow.
    #[error("the workspace is full: at most {max} users")]
    TooManyUsers {
        /// That many users.
        max: u64,
    },

    /// No cohort has this key.
    #[error("unknown cohort {}/{}", key.partner, Bare(&key.cohort_id))]
    UnknownCohort {
        /// The partner and cohort_id given.
        key: CohortKey,
    },

    /// A filter's cohort value names no cohort of its partner (by id or name).
    #[error("{partner}_cohorts has no cohort with id or name {}", Echo(value))]
    NoSuchCohort {
        /// The filter's partner.
        partner: Partner,
        /// The cohort value as written.
        value: String,
    },

    /// A filter's cohort value is the name of several cohorts of its partner.
    #[error(
        "{partner}_cohorts: the name {} is shared by cohorts {}; name one by its cohort_id",
        Echo(name),
        EchoList(ids)
    )]
    AmbiguousCohortName {
        /// The filter's partner.
        partner: Partner,
        /// The name.
        name: String,
        /// The cohort_ids of the cohorts with that name.
        ids: Vec<String>,
    },

    /// A partner may create no more cohorts in the workspace (`max_cohorts_per_partner`).
    #[error("{partner} has {max} cohorts in this workspace, the most it may create (max_cohorts_per_partner); delete one first")]
    TooManyCohorts {
        /// The partner.
        partner: Partner,
        /// Its cohort limit.
        max: usize,
    },

    /// Deleting a cohort that saved segments name.
    #[error("cohort {}/{} is used by saved segments {}; delete or change them first", key.partner, Bare(&key.cohort_id), EchoList(segments))]
    CohortInUse {
        /// The cohort.
        key: CohortKey,
        /// The ids of the saved segments that name it.
        segments: Vec<String>,
    },

    /// Deleting a saved segment that other saved segments refer to.
    #[error(
        "segment {} is used by saved segments {}; delete or change them first",
        Bare(id),
        EchoList(segments)
    )]
    SegmentInUse {
        /// The segment.
        id: String,
        /// The ids of the saved segments that refer to it.
        segments: Vec<String>,
    },

    /// A cohort's fields are invalid (e.g. an empty or too long cohort_id or name).
    #[error("invalid cohort: {}", Clip(.0))]
    InvalidCohort(String),

    /// A segment filter that does not parse, in either form.
    #[error("filter parse error at {0}")]
    FilterParse(#[from] FilterParseError),

    /// An argument of a call is invalid; answered 400 (never used for a failure of segq itself: see [`Error::Internal`]).
    #[error("invalid argument: {}", Clip(.0))]
    InvalidArgument(String),

    /// A filter of more nodes than `max_filter_nodes` allows.
    #[error("the filter has {nodes} nodes (tests of cohorts, buckets, attributes and segments, and, or, not); at most {limit} are allowed (max_filter_nodes)")]
    FilterTooLarge {
        /// The filter's nodes ([`crate::segment::Filter::nodes`]).
        nodes: usize,
        /// The limit (`max_filter_nodes`).
        limit: usize,
    },

    /// No workspace of this name.
    #[error("no workspace {}", Echo(name))]
    UnknownWorkspace {
        /// The name given.
        name: String,
    },

    /// A workspace name that is not 1 to 64 letters, digits, `_` or `-`.
    #[error(
        "invalid workspace name {}: expected 1 to 64 letters, digits, '_' or '-'",
        Echo(name)
    )]
    InvalidWorkspaceName {
        /// The name given.
        name: String,
    },

    /// A workspace name that Windows reserves for a device (`con`, `nul`, …).
    #[error("invalid workspace name {}: a device name Windows reserves (con, prn, aux, nul, com0-com9, lpt0-lpt9, in any case) cannot name a folder", Echo(name))]
    ReservedWorkspaceName {
        /// The name given.
        name: String,
    },

    /// A workspace name equal, ignoring case, to an existing one's.
    #[error("workspace name {} differs only in case from workspace {}; on a case-insensitive file system both would be one folder", Echo(name), Echo(existing))]
    WorkspaceNameClash {
        /// The name given.
        name: String,
        /// The existing workspace's name.
        existing: String,
    },

    /// No data import key with this id in the workspace.
    #[error("no data import key {} in this workspace", Echo(id))]
    UnknownKey {
        /// The key id given.
        id: String,
    },

    /// No workspace API key with this id in the workspace.
    #[error("no API key {} in this workspace", Echo(id))]
    UnknownApiKey {
        /// The key id given.
        id: String,
    },

    /// No saved segment with this id in the workspace.
    #[error("no saved segment {} in this workspace", Echo(id))]
    UnknownSegment {
        /// The segment id given.
        id: String,
    },

    /// A member-page cursor that does not decode or belongs to another workspace or segment.
    #[error("invalid cursor: {}", Clip(.0))]
    InvalidCursor(String),

    /// A workspace that refuses writes after a failure it could not undo, until segq restarts.
    #[error("workspace {name:?} refuses writes until segq restarts: {reason}")]
    WorkspaceFailed {
        /// The workspace.
        name: String,
        /// The failure.
        reason: String,
    },

    /// A change whose log record did not become durable (the disk refused
    /// a write or fsync, or the log has not taken appends again since): it
    /// was not applied, or was undone. The workspace takes writes again
    /// once the disk does.
    #[error("workspace {name:?} could not make the change durable, so it was not applied: {reason}; try again later")]
    NotDurable {
        /// The workspace.
        name: String,
        /// Why the record is not durable.
        reason: String,
    },

    /// The change log failed (I/O, corruption found on reading).
    #[error("change log: {0}")]
    Log(#[from] crate::log::LogError),

    /// A file segq wrote does not read back as it should (checksum, format, a record that does not apply).
    #[error("{}: corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The object store (`--store`) failed, or holds objects that do not
    /// read back as they should (checksums, sizes, a workspace whose
    /// pieces do not fit together).
    #[error("object store {location}: {reason}")]
    Store {
        /// The store's URL, or the object's key under it.
        location: String,
        /// What went wrong.
        reason: String,
    },

    /// With `durability = "object-store"`: a change applied and durable
    /// on this node whose log record did not reach the object store within
    /// `store_ack_timeout_ms`. It stays applied and is shipped once the
    /// store takes puts again; retrying the request is safe.
    #[error("workspace {name:?} applied the change, but it was not in the object store {store} within {waited_ms} ms (durability \"object-store\"); it stays applied and is shipped once the store takes puts; retrying is safe")]
    NotShipped {
        /// The workspace.
        name: String,
        /// The store's URL.
        store: String,
        /// How long the change waited.
        waited_ms: u64,
    },

    /// This node is not the object store's primary: another node took the
    /// store's lease (or it could not be renewed), so writes are refused.
    #[error("this node does not hold the object store's lease and takes no writes: {reason}")]
    NotPrimary {
        /// Who holds the lease now, or why it lapsed.
        reason: String,
    },

    /// The data directory is held by another segq process.
    #[error("{} is locked by another segq process; one data directory serves one process", path.display())]
    Locked {
        /// Its `LOCK` file.
        path: PathBuf,
    },

    /// The configuration file `segq.json` is invalid.
    #[error("configuration {}: {reason}", path.display())]
    Config {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An environment variable that sets a configuration field (`SEGQ_*`)
    /// is invalid.
    #[error("environment variable {var}: {reason}")]
    ConfigEnv {
        /// The variable.
        var: String,
        /// What is wrong with its value.
        reason: String,
    },

    /// Built with [`Error::io`].
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A custom attribute's value does not fit the attribute (its type, its
    /// size), or its name is not a valid name.
    #[error("attribute {}: {reason}", Bare(attribute))]
    AttributeType {
        /// The attribute.
        attribute: String,
        /// What is wrong, with the attribute's type and the value's.
        reason: String,
    },

    /// A filter names an attribute no user of the workspace was ever given.
    #[error("no custom attribute named {}", Echo(attribute))]
    UnknownAttribute {
        /// The attribute as written.
        attribute: String,
    },

    /// A failure of segq itself, not of its input (a value that does not
    /// serialise, a state that should not occur).
    #[error("internal error: {0}")]
    Internal(String),

    /// A partner server refused a sync's request with a status that is
    /// not retried (a 4xx other than 429): its message, as sent.
    #[error("the server answered {status} to {}: {}", Bare(what), Clip(message))]
    SyncRefused {
        /// The request: `create cohort` or `batch N`.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The response's `message` (or its text).
        message: String,
    },

    /// A sync's request kept failing with retryable errors (timeouts,
    /// connection errors, 429, 5xx) until its attempts ran out.
    #[error(
        "{} failed after {attempts} attempts; last: {}",
        Bare(what),
        Clip(last)
    )]
    SyncGaveUp {
        /// The request: `create cohort` or `batch N`.
        what: String,
        /// How many times it was sent.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// A result whose error is, by default, segq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O failure on `path` (a file, a folder, or a stand-in such as
    /// `<stdout>` for a stream that has no path).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A checksum that does not match the bytes it covers: `what` names
    /// them (a snapshot's footer, section table or one section, a
    /// manifest). Every checksum check above the log builds its error here;
    /// the log reports its own ([`crate::log::LogError::HeaderChecksum`],
    /// [`crate::log::Damage::BadChecksum`]).
    pub fn checksum_mismatch(
        path: impl Into<PathBuf>,
        what: impl fmt::Display,
        stored: u32,
        computed: u32,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: format!("{what} checksum: stored {stored:#010x}, computed {computed:#010x}"),
        }
    }

    /// [`Error::io`] as a function to hand to `map_err`:
    /// `File::open(p).map_err(Error::io_at(p))`.
    pub fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::io(path, source)
    }
}

impl From<crate::ids::UnknownPartner> for Error {
    fn from(e: crate::ids::UnknownPartner) -> Self {
        Error::UnknownPartner { found: e.found }
    }
}

impl From<crate::ids::CohortNameError> for Error {
    fn from(e: crate::ids::CohortNameError) -> Self {
        match e {
            crate::ids::CohortNameError::NoSuch { partner, value } => {
                Error::NoSuchCohort { partner, value }
            }
            crate::ids::CohortNameError::Ambiguous { partner, name, ids } => {
                Error::AmbiguousCohortName { partner, name, ids }
            }
        }
    }
}

impl From<crate::ids::BadUserRef> for Error {
    fn from(e: crate::ids::BadUserRef) -> Self {
        Error::InvalidIdentifier {
            kind: e.kind,
            reason: e.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn io_keeps_the_path_and_shows_it_as_before() {
        let e = Error::io(Path::new("/data/ws/log-1"), std::io::Error::other("full"));
        match &e {
            Error::Io { path, .. } => assert_eq!(path, Path::new("/data/ws/log-1")),
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert_eq!(e.to_string(), "I/O error on /data/ws/log-1: full");
        let mapped: Result<()> =
            Err(std::io::Error::other("gone")).map_err(Error::io_at("<stdout>"));
        assert_eq!(
            mapped.unwrap_err().to_string(),
            "I/O error on <stdout>: gone"
        );
    }

    #[test]
    fn paths_in_errors_are_paths() {
        let path = PathBuf::from("/data/ws/snapshot-3.segq");
        let e = Error::Corrupt {
            path: path.clone(),
            reason: "bad tail".into(),
        };
        assert_eq!(e.to_string(), "/data/ws/snapshot-3.segq: corrupt: bad tail");
        let e = Error::Locked { path: path.clone() };
        assert!(e
            .to_string()
            .starts_with("/data/ws/snapshot-3.segq is locked"));
        let e = Error::Config {
            path,
            reason: "x".into(),
        };
        assert_eq!(e.to_string(), "configuration /data/ws/snapshot-3.segq: x");
    }
}
