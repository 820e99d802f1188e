//! The library's error type. Every variant carries what was expected and what
//! was found, so that a caller (the CLI, the HTTP layer) can say it clearly.

use crate::ids::{CohortKey, Partner, UserId};

/// Where a segment filter failed to parse, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: expected {expected}, found {found}")]
pub struct FilterParseError {
    /// `line L, column C` for the text form and for JSON syntax errors, a
    /// path such as `$.and[1].comparison` for JSON structure errors.
    pub location: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown partner {found:?}: expected one of amplitude, mixpanel, heap, census, hightouch, segment, kubit, tinyclues")]
    UnknownPartner { found: String },

    #[error("external_id {external_id:?} is already held by user {holder}")]
    DuplicateExternalId { external_id: String, holder: UserId },

    #[error("alias ({label:?}, {name:?}) is already held by user {holder}")]
    DuplicateAlias {
        label: String,
        name: String,
        holder: UserId,
    },

    #[error("device_id {device_id:?} is already held by user {holder}")]
    DuplicateDevice { device_id: String, holder: UserId },

    #[error(
        "user {user} is already identified as {current:?}; cannot identify it as {requested:?}"
    )]
    AlreadyIdentified {
        user: UserId,
        current: String,
        requested: String,
    },

    #[error("no user {0}")]
    UnknownUser(String),

    #[error("invalid {kind}: {reason}")]
    InvalidIdentifier { kind: &'static str, reason: String },

    #[error("the workspace is full: at most {max} users")]
    TooManyUsers { max: u64 },

    #[error("unknown cohort {key}")]
    UnknownCohort { key: CohortKey },

    #[error("{partner}_cohorts has no cohort with id or name {value:?}")]
    NoSuchCohort { partner: Partner, value: String },

    #[error("{partner}_cohorts: the name {name:?} is shared by cohorts {ids:?}; name one by its cohort_id")]
    AmbiguousCohortName {
        partner: Partner,
        name: String,
        ids: Vec<String>,
    },

    #[error("invalid cohort: {0}")]
    InvalidCohort(String),

    #[error("filter parse error at {0}")]
    FilterParse(#[from] FilterParseError),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("the filter has {nodes} nodes (cohort and bucket tests, and, or, not); at most {limit} are allowed (max_filter_nodes)")]
    FilterTooLarge { nodes: usize, limit: usize },

    #[error("no workspace {name:?}")]
    UnknownWorkspace { name: String },

    #[error("invalid workspace name {name:?}: expected 1 to 64 letters, digits, '_' or '-'")]
    InvalidWorkspaceName { name: String },

    #[error("invalid workspace name {name:?}: a device name Windows reserves (con, prn, aux, nul, com0-com9, lpt0-lpt9, in any case) cannot name a folder")]
    ReservedWorkspaceName { name: String },

    #[error("workspace name {name:?} differs only in case from workspace {existing:?}; on a case-insensitive file system both would be one folder")]
    WorkspaceNameClash { name: String, existing: String },

    #[error("no data import key {id:?} in this workspace")]
    UnknownKey { id: String },

    #[error("no saved segment {id:?} in this workspace")]
    UnknownSegment { id: String },

    #[error("invalid cursor: {0}")]
    InvalidCursor(String),

    #[error("workspace {name:?} refuses writes until segq restarts: {reason}")]
    WorkspaceFailed { name: String, reason: String },

    /// A change whose log record did not become durable (the disk refused
    /// a write or fsync, or the log has not taken appends again since): it
    /// was not applied, or was undone. The workspace takes writes again
    /// once the disk does.
    #[error("workspace {name:?} could not make the change durable, so it was not applied: {reason}; try again later")]
    NotDurable { name: String, reason: String },

    #[error("change log: {0}")]
    Log(#[from] crate::log::LogError),

    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: String, reason: String },

    #[error("{path} is locked by another segq process; one data directory serves one process")]
    Locked { path: String },

    #[error("configuration {path}: {reason}")]
    Config { path: String, reason: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A failure of segq itself, not of its input (a value that does not
    /// serialise, a state that should not occur).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
