//! The wire examples of `../shared/PROTOCOL.md` (`fixtures/wire/*.json`)
//! and the users they name (`fixtures/demo/users.json`), compiled in, and
//! their replay onto a [`WorkspaceHandle`] through the server's partner
//! path ([`crate::server::partner::answer`]): what `segq demo` shows, and
//! a workspace with every kind of partner change for tests.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::cohorts::Alias;
use crate::engine::WorkspaceHandle;
use crate::error::{Error, Result};
use crate::ids::{Partner, UserRef};
use crate::import::{texts, Credentials, Endpoint, ProtocolError};
use crate::server::error::ApiError;
use crate::server::partner;
use crate::users::NewUser;

/// The demo users, compiled in.
pub const USERS: &str = include_str!("../fixtures/demo/users.json");

/// The wire examples, in replay order, compiled in.
pub const WIRE: [(&str, &str); 9] = [
    (
        "01-create-cohort.json",
        include_str!("../fixtures/wire/01-create-cohort.json"),
    ),
    (
        "02-credentials-check.json",
        include_str!("../fixtures/wire/02-credentials-check.json"),
    ),
    (
        "03-add-remove-users.json",
        include_str!("../fixtures/wire/03-add-remove-users.json"),
    ),
    (
        "04-unmatched-and-refused.json",
        include_str!("../fixtures/wire/04-unmatched-and-refused.json"),
    ),
    (
        "05-replay.json",
        include_str!("../fixtures/wire/05-replay.json"),
    ),
    (
        "06-rename-cohort.json",
        include_str!("../fixtures/wire/06-rename-cohort.json"),
    ),
    (
        "07-unknown-cohort-id.json",
        include_str!("../fixtures/wire/07-unknown-cohort-id.json"),
    ),
    (
        "08-bad-cohort-changes.json",
        include_str!("../fixtures/wire/08-bad-cohort-changes.json"),
    ),
    (
        "09-wrong-partner-key.json",
        include_str!("../fixtures/wire/09-wrong-partner-key.json"),
    ),
];

/// The examples' partner API keys and data import key (a server's
/// configuration and key store play this part).
pub const PARTNER_KEYS: [(Partner, &str); 2] = [
    (Partner::Amplitude, "123456-1234-1234-12345678"),
    (Partner::Mixpanel, "mixpanel-partner-key"),
];
/// The data import key the examples send.
pub const DATA_IMPORT_KEY: &str = "234567-2345-2345-23456789";

#[derive(Deserialize)]
struct DemoUser {
    external_id: Option<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    aliases: Vec<Alias>,
}

#[derive(Deserialize)]
struct Identify {
    device_id: String,
    external_id: String,
}

#[derive(Deserialize)]
struct DemoUsers {
    users: Vec<DemoUser>,
    identify: Vec<Identify>,
}

#[derive(Deserialize)]
struct WireExample {
    path: String,
    body: Value,
}

fn fixture_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("fixture {name}: {e}"))
}

/// Adds the users the examples name (creating them, then identifying the
/// one identified later) through the handle; returns how many were
/// created.
pub fn add_users(handle: &WorkspaceHandle) -> Result<usize> {
    let d: DemoUsers =
        serde_json::from_str(USERS).map_err(|e| fixture_error("demo/users.json", e))?;
    let n = d.users.len();
    for u in d.users {
        handle.upsert_user(NewUser {
            external_id: u.external_id,
            devices: u.devices,
            aliases: u
                .aliases
                .into_iter()
                .map(|a| (a.alias_label, a.alias_name))
                .collect(),
            bucket: None,
        })?;
    }
    for i in d.identify {
        handle.identify(&UserRef::DeviceId(i.device_id), &i.external_id)?;
    }
    Ok(n)
}

/// One example's request and what the server answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// `POST` to this path.
    pub path: String,
    /// The status the server answers.
    pub status: u16,
    /// The JSON body it answers.
    pub body: Value,
}

/// Replays one wire example onto `handle`, authorized by [`PARTNER_KEYS`]
/// and [`DATA_IMPORT_KEY`], through the server's partner path.
pub fn replay(
    handle: &Arc<WorkspaceHandle>,
    name: &str,
    text: &str,
    now: DateTime<Utc>,
) -> Result<Replayed> {
    let ex: WireExample = serde_json::from_str(text).map_err(|e| fixture_error(name, e))?;
    let (partner, endpoint) =
        Endpoint::route(&ex.path).ok_or_else(|| fixture_error(name, "unknown path"))?;
    let body = serde_json::to_vec(&ex.body).map_err(|e| fixture_error(name, e))?;
    let answered = match partner.parse::<Partner>() {
        Err(_) => Err(ApiError::from(ProtocolError::UnknownPartner(
            partner.to_string(),
        ))),
        Ok(partner) => partner::answer(partner, endpoint, &body, now, |c| {
            authorize(partner, c)?;
            Ok(handle.clone())
        }),
    };
    let (status, body) = match answered {
        Ok(a) => (a.status, a.body),
        Err(e) => (e.status, e.body),
    };
    Ok(Replayed {
        path: ex.path,
        status: status.as_u16(),
        body,
    })
}

fn authorize(partner: Partner, c: &Credentials) -> std::result::Result<(), ProtocolError> {
    let ok = PARTNER_KEYS
        .iter()
        .any(|&(p, k)| p == partner && k == c.partner_api_key);
    if !ok {
        return Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY));
    }
    if c.client_secret != DATA_IMPORT_KEY {
        return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
    }
    Ok(())
}

/// The fixed clock of the replays, so their billing lines are
/// reproducible.
pub fn demo_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .single()
        .unwrap_or_default()
}
