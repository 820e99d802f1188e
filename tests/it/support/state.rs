//! The one fingerprint of what a caller can observe: of a workspace
//! ([`fingerprint`]), of an engine with all its workspaces
//! ([`engine_fingerprint`]), and of the bytes of a folder
//! ([`files_fingerprint`]). Tests compare fingerprints taken before and
//! after a restart, a replay, a compaction or a refused request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use segq::cohorts::SyncStats;
use segq::engine::{Config, Engine, KeyInfo, WorkspaceHandle};
use segq::users::UserRecord;
use segq::workspace::{KeyRecord, SavedSegment};
use segq::{CohortKey, Partner, UserId, UserRef, Workspace};

/// A cohort as a caller sees it.
#[derive(Debug, PartialEq)]
pub struct CohortState {
    pub key: CohortKey,
    pub name: String,
    /// RFC 3339 with the offset the partner sent (DateTime<FixedOffset>
    /// equality ignores the offset).
    pub created_at: Option<String>,
    pub members: Vec<u32>,
    pub sync: SyncStats,
    /// What the segment builder's name resolution finds for the name.
    pub by_name: Result<String, String>,
}

/// Everything a workspace lets a caller observe: users and every lookup of
/// their identifiers, cohorts with members and statistics, data points,
/// keys, enabled partners and saved segments.
#[derive(Debug, PartialEq)]
pub struct State {
    pub name: String,
    pub seed: u64,
    pub users: Vec<UserRecord>,
    /// Every identifier of every user, looked up and matched.
    pub lookups: Vec<String>,
    pub cohorts: Vec<CohortState>,
    pub data_points: Vec<(Partner, NaiveDate, u64)>,
    pub keys: Vec<KeyRecord>,
    pub enabled_partners: Vec<Partner>,
    pub segments: Vec<SavedSegment>,
}

/// What a fingerprint can be taken of: a workspace, or a handle (read
/// under its lock).
pub trait Observed {
    fn fingerprint(&self) -> State;
}

impl Observed for Workspace {
    fn fingerprint(&self) -> State {
        workspace_fingerprint(self)
    }
}

impl Observed for WorkspaceHandle {
    fn fingerprint(&self) -> State {
        workspace_fingerprint(&self.read())
    }
}

impl<T: Observed + ?Sized> Observed for Arc<T> {
    fn fingerprint(&self) -> State {
        (**self).fingerprint()
    }
}

/// The fingerprint of a workspace or a workspace handle.
pub fn fingerprint(of: &(impl Observed + ?Sized)) -> State {
    of.fingerprint()
}

fn workspace_fingerprint(ws: &Workspace) -> State {
    let users: Vec<UserRecord> = (0..ws.users.len())
        .map(|u| ws.users.get(UserId(u)).expect("ids are dense").clone())
        .collect();
    let mut lookups = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let id = UserId(i as u32);
        lookups.push(format!("{id} shown as {}", ws.users.display_id(id)));
        let mut look = |r: UserRef, matched: String| {
            lookups.push(format!(
                "{r}: lookup {:?}, match {matched}",
                ws.users.lookup(&r)
            ));
        };
        if let Some(e) = &u.external_id {
            let m = format!("{:?}", ws.users.match_external_id(e));
            look(UserRef::ExternalId(e.to_string()), m);
        }
        for d in &u.devices {
            let m = format!("{:?}", ws.users.match_device(d));
            look(UserRef::DeviceId(d.to_string()), m);
        }
        for (l, n) in &u.aliases {
            let r = UserRef::Alias {
                label: l.to_string(),
                name: n.to_string(),
            };
            look(r, format!("{:?}", ws.users.match_alias(l, n)));
        }
    }
    let cohorts = ws
        .cohorts
        .iter_sorted()
        .into_iter()
        .map(|c| CohortState {
            key: c.key.clone(),
            name: c.name.clone(),
            created_at: c.created_at.map(|t| t.to_rfc3339()),
            members: c
                .members
                .iter()
                .expect("the cohort's bitmap reads")
                .collect(),
            sync: c.sync.clone(),
            by_name: ws
                .cohorts
                .resolve(c.key.partner, &c.name)
                .map(|c| c.key.cohort_id.clone())
                .map_err(|e| e.to_string()),
        })
        .collect();
    State {
        name: ws.name().to_string(),
        seed: ws.users.seed(),
        users,
        lookups,
        cohorts,
        data_points: ws.data_points_by_day().collect(),
        keys: ws.keys.values().cloned().collect(),
        enabled_partners: ws.enabled_partners.iter().copied().collect(),
        segments: ws.segments.values().cloned().collect(),
    }
}

/// A workspace of an engine: its fingerprint and its key listing.
#[derive(Debug, PartialEq)]
pub struct EngineWorkspace {
    pub state: State,
    /// `list_keys` without `last_used` (exact in memory, durable only to
    /// the minute).
    pub listed_keys: Vec<KeyInfo>,
}

impl std::ops::Deref for EngineWorkspace {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

/// Everything an engine lets a caller observe.
#[derive(Debug, PartialEq)]
pub struct EngineState {
    pub config: Config,
    pub workspaces: Vec<EngineWorkspace>,
}

/// The fingerprint of an engine: its configuration and every workspace.
pub fn engine_fingerprint(engine: &Engine) -> EngineState {
    let workspaces = engine
        .workspace_names()
        .iter()
        .map(|name| {
            let listed_keys = engine
                .list_keys(name, None)
                .expect("the workspace lists its keys")
                .into_iter()
                .map(|mut k| {
                    k.last_used = None;
                    k
                })
                .collect();
            let state = fingerprint(&engine.workspace(name).expect("a listed workspace opens"));
            EngineWorkspace { state, listed_keys }
        })
        .collect();
    EngineState {
        config: engine.config().clone(),
        workspaces,
    }
}

/// An entry under a folder: path, length, modification time, permissions
/// and bytes (folders: no bytes).
pub type FileEntry = (PathBuf, u64, std::time::SystemTime, String, Vec<u8>);

/// Every entry under `dir`, sorted: what "changes nothing on disk" means.
pub fn files_fingerprint(dir: &Path) -> Vec<FileEntry> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("the folder reads") {
            let p = e.expect("a folder entry").path();
            let m = std::fs::metadata(&p).expect("metadata");
            let bytes = if m.is_dir() {
                todo.push(p.clone());
                Vec::new()
            } else {
                std::fs::read(&p).expect("the file reads")
            };
            let perms = format!("{:?}", m.permissions());
            let modified = m.modified().expect("a modification time");
            out.push((p, m.len(), modified, perms, bytes));
        }
    }
    out.sort();
    out
}
