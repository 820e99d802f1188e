//! Newtypes for the identifiers that must never be mixed up: dense internal
//! user ids, partners, and the (partner, cohort_id) key of a cohort.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A dense internal user id, assigned in creation order within a workspace.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct UserId(pub u32);

impl UserId {
    /// The id as a bitmap position.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The analytics partners whose cohorts segq imports. Their names are lower
/// case on the wire (`/partners/{partner}/...`) and in filters
/// (`{partner}_cohorts`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partner {
    /// Amplitude (`amplitude`).
    Amplitude,
    /// Mixpanel (`mixpanel`).
    Mixpanel,
    /// Heap (`heap`).
    Heap,
    /// Census (`census`).
    Census,
    /// Hightouch (`hightouch`).
    Hightouch,
    /// Segment (`segment`).
    Segment,
    /// Kubit (`kubit`).
    Kubit,
    /// Tinyclues (`tinyclues`).
    Tinyclues,
}

impl Partner {
    /// Every partner, in a fixed order.
    pub const ALL: [Partner; 8] = [
        Partner::Amplitude,
        Partner::Mixpanel,
        Partner::Heap,
        Partner::Census,
        Partner::Hightouch,
        Partner::Segment,
        Partner::Kubit,
        Partner::Tinyclues,
    ];

    /// The lower-case wire name, e.g. `amplitude`.
    pub fn as_str(self) -> &'static str {
        match self {
            Partner::Amplitude => "amplitude",
            Partner::Mixpanel => "mixpanel",
            Partner::Heap => "heap",
            Partner::Census => "census",
            Partner::Hightouch => "hightouch",
            Partner::Segment => "segment",
            Partner::Kubit => "kubit",
            Partner::Tinyclues => "tinyclues",
        }
    }

    /// The segment filter that names this partner's cohorts, e.g.
    /// `amplitude_cohorts`.
    pub fn filter_name(self) -> String {
        format!("{}_cohorts", self.as_str())
    }

    /// Parses a filter name such as `amplitude_cohorts`.
    pub fn from_filter_name(name: &str) -> Option<Partner> {
        name.strip_suffix("_cohorts")
            .and_then(|p| p.parse::<Partner>().ok())
    }
}

impl fmt::Display for Partner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partner name that is none of [`Partner::ALL`] (converted into
/// [`crate::error::Error::UnknownPartner`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPartner {
    /// The name as given.
    pub found: String,
}

impl fmt::Display for UnknownPartner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown partner {:?}", self.found)
    }
}

impl std::error::Error for UnknownPartner {}

impl FromStr for Partner {
    type Err = UnknownPartner;

    /// Exact, lower-case match: the wire protocol's partner names are lower
    /// case, and `Amplitude` in a URL is a different (unknown) partner.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Partner::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPartner {
                found: s.to_string(),
            })
    }
}

/// Identifies one cohort of a workspace: the partner that owns it and the
/// partner's cohort_id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CohortKey {
    /// The partner that owns the cohort.
    pub partner: Partner,
    /// The partner's cohort_id.
    pub cohort_id: String,
}

impl CohortKey {
    /// The key of `partner`'s cohort `cohort_id`.
    pub fn new(partner: Partner, cohort_id: impl Into<String>) -> Self {
        CohortKey {
            partner,
            cohort_id: cohort_id.into(),
        }
    }
}

impl fmt::Display for CohortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partner, self.cohort_id)
    }
}

/// Why a segment filter's cohort value names no single cohort (the
/// library's `Error` has a variant for each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CohortNameError {
    /// No cohort of the partner has `value` as its cohort_id or its name.
    NoSuch {
        /// The filter's partner.
        partner: Partner,
        /// The cohort value as written.
        value: String,
    },
    /// No cohort has `name` as its cohort_id, and these (sorted) share it
    /// as their name.
    Ambiguous {
        /// The filter's partner.
        partner: Partner,
        /// The name.
        name: String,
        /// The cohort_ids of the cohorts with that name.
        ids: Vec<String>,
    },
}

/// The one rule by which a segment filter's cohort value names one of a
/// partner's cohorts, for every catalog (a live workspace, a snapshot):
/// the cohort whose cohort_id is `value` (`by_id` finds it); else the one
/// cohort named `value` among `cohorts` (the partner's cohorts, each as its
/// cohort_id, its name and what to return). A cohort_id wins over another
/// cohort's equal name; a name several cohorts share is ambiguous.
pub fn resolve_cohort<'a, T>(
    partner: Partner,
    value: &str,
    by_id: impl FnOnce(&str) -> Option<T>,
    cohorts: impl IntoIterator<Item = (&'a str, &'a str, T)>,
) -> Result<T, CohortNameError> {
    if let Some(c) = by_id(value) {
        return Ok(c);
    }
    let mut named: Vec<(&str, T)> = cohorts
        .into_iter()
        .filter(|(_, name, _)| *name == value)
        .map(|(id, _, c)| (id, c))
        .collect();
    match named.len() {
        0 => Err(CohortNameError::NoSuch {
            partner,
            value: value.to_string(),
        }),
        1 => Ok(named.swap_remove(0).1),
        _ => {
            let mut ids: Vec<String> = named.iter().map(|(id, _)| id.to_string()).collect();
            ids.sort();
            Err(CohortNameError::Ambiguous {
                partner,
                name: value.to_string(),
                ids,
            })
        }
    }
}

/// A user named by one of its identifiers, as a caller knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    /// By its external_id.
    ExternalId(String),
    /// By an alias.
    Alias {
        /// The alias label.
        label: String,
        /// The alias name.
        name: String,
    },
    /// By a device_id.
    DeviceId(String),
}

impl UserRef {
    /// Parses the command-line form: `external_id:u-1`, `device_id:d-1`,
    /// `alias:email:ann@example.com`, or a bare external id.
    pub fn parse_cli(s: &str) -> Result<UserRef, BadUserRef> {
        if let Some(rest) = s.strip_prefix("external_id:") {
            Ok(UserRef::ExternalId(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("device_id:") {
            Ok(UserRef::DeviceId(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("alias:") {
            match rest.split_once(':') {
                Some((label, name)) => Ok(UserRef::Alias {
                    label: label.to_string(),
                    name: name.to_string(),
                }),
                None => Err(BadUserRef {
                    kind: "alias",
                    reason: format!("expected alias:LABEL:NAME, found {s:?}"),
                }),
            }
        } else {
            Ok(UserRef::ExternalId(s.to_string()))
        }
    }
}

/// A command-line user reference that does not parse (converted into
/// [`crate::error::Error::InvalidIdentifier`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadUserRef {
    /// The identifier kind it names.
    pub kind: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BadUserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for BadUserRef {}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::ExternalId(id) => write!(f, "external_id:{id}"),
            UserRef::Alias { label, name } => write!(f, "alias:{label}:{name}"),
            UserRef::DeviceId(id) => write!(f, "device_id:{id}"),
        }
    }
}

/// The number of random buckets: every user holds one in `0..BUCKETS`.
pub const BUCKETS: u16 = 10_000;

#[cfg(test)]
mod cohort_name_tests {
    use super::*;

    const COHORTS: [(&str, &str); 4] = [
        ("z9", "Power"),
        ("a1", "Power"),
        ("c3", "c4"),
        ("c4", "Other"),
    ];

    fn resolve(value: &str) -> Result<&'static str, CohortNameError> {
        resolve_cohort(
            Partner::Amplitude,
            value,
            |v| COHORTS.iter().find(|(id, _)| *id == v).map(|(id, _)| *id),
            COHORTS.iter().map(|(id, name)| (*id, *name, *id)),
        )
    }

    #[test]
    fn an_id_wins_over_a_name_and_a_shared_name_lists_sorted_ids() {
        assert_eq!(resolve("c4"), Ok("c4"));
        assert_eq!(resolve("Other"), Ok("c4"));
        assert_eq!(
            resolve("Power"),
            Err(CohortNameError::Ambiguous {
                partner: Partner::Amplitude,
                name: "Power".into(),
                ids: vec!["a1".into(), "z9".into()],
            })
        );
        assert_eq!(
            resolve("none"),
            Err(CohortNameError::NoSuch {
                partner: Partner::Amplitude,
                value: "none".into(),
            })
        );
    }
}
