//! The user registry of one workspace, and the identity matching rules of the
//! partner cohort import protocol.
//!
//! Users get dense [`UserId`]s in creation order. Three indexes map
//! identifiers to users: external_id, (alias_label, alias_name) and
//! device_id. Every identifier is unique within the workspace.
//!
//! Two ways to find a user:
//! - [`UserRegistry::lookup`] finds whoever holds an identifier (targeting
//!   look-ups, the admin API);
//! - the `match_*` methods apply the import protocol's rules: a device_id
//!   matches only an anonymous user, so a user who was later identified is
//!   refused (see [`DeviceMatch`]).

mod alias;

use hashbrown::HashMap;

use crate::error::{Error, Result};
use crate::ids::{UserId, UserRef, BUCKETS};

use alias::{AliasKey, AliasQuery};

/// One user: its identifiers and its random bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub external_id: Option<Box<str>>,
    pub devices: Vec<Box<str>>,
    pub aliases: Vec<(Box<str>, Box<str>)>,
    /// Uniform in `0..10_000`, fixed when the user is created.
    pub bucket: u16,
}

impl UserRecord {
    pub fn is_anonymous(&self) -> bool {
        self.external_id.is_none()
    }
}

/// What to create: any identifiers, and optionally a bucket (the generator
/// and log replay set it; otherwise the registry draws one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewUser {
    pub external_id: Option<String>,
    pub devices: Vec<String>,
    /// `(alias_label, alias_name)` pairs.
    pub aliases: Vec<(String, String)>,
    pub bucket: Option<u16>,
}

/// How a device_id matched under the import protocol's rules.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeviceMatch {
    /// Held by an anonymous user.
    Matched(UserId),
    /// Held by an identified user: the import must neither add nor remove it.
    Refused(UserId),
    /// Nobody holds it.
    Unknown,
}

/// The result of [`UserRegistry::upsert`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    pub user: UserId,
    pub created: bool,
}

/// The users of one workspace and their identifier indexes.
#[derive(Clone, Debug)]
pub struct UserRegistry {
    users: Vec<UserRecord>,
    /// Every user's bucket again, contiguous, for evaluators that scan them.
    buckets: Vec<u16>,
    by_external: HashMap<Box<str>, UserId>,
    by_alias: HashMap<AliasKey, UserId>,
    by_device: HashMap<Box<str>, UserId>,
    seed: u64,
}

/// The random bucket a user gets when none is given: a hash of (seed, id),
/// uniform over `0..BUCKETS`, so it needs no state that a restart could
/// reset, and the same user always gets the same bucket.
pub fn default_bucket(seed: u64, user: UserId) -> u16 {
    // splitmix64 of the pair, then Lemire's multiply-shift onto 0..BUCKETS.
    let mut z = seed ^ u64::from(user.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((u128::from(z) * u128::from(BUCKETS)) >> 64) as u16
}

/// Users are numbered by `u32`.
pub const MAX_USERS: u64 = u32::MAX as u64;

/// The longest identifier accepted, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 1024;
/// The most device ids plus aliases one user may be given in one call.
pub const MAX_IDENTIFIERS_PER_CALL: usize = 1000;

fn check_identifier(kind: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidIdentifier {
            kind,
            reason: "must be a non-empty string".into(),
        });
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::InvalidIdentifier {
            kind,
            reason: format!(
                "is {} bytes long; at most {MAX_IDENTIFIER_BYTES} are allowed",
                value.len()
            ),
        });
    }
    Ok(())
}

impl UserRegistry {
    /// An empty registry whose random buckets are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        UserRegistry {
            users: Vec::new(),
            buckets: Vec::new(),
            by_external: HashMap::new(),
            by_alias: HashMap::new(),
            by_device: HashMap::new(),
            seed,
        }
    }

    /// The seed of the default random buckets.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Reserves room for `n` more users and their identifiers.
    pub fn reserve(&mut self, users: usize, externals: usize, aliases: usize, devices: usize) {
        self.users.reserve(users);
        self.buckets.reserve(users);
        self.by_external.reserve(externals);
        self.by_alias.reserve(aliases);
        self.by_device.reserve(devices);
    }

    /// The number of users; ids run `0..len()`.
    pub fn len(&self) -> u32 {
        self.users.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user with this id.
    pub fn get(&self, user: UserId) -> Option<&UserRecord> {
        self.users.get(user.0 as usize)
    }

    fn record(&self, user: UserId) -> Result<&UserRecord> {
        self.get(user)
            .ok_or_else(|| Error::UnknownUser(format!("with id {user}")))
    }

    /// The random bucket of a user, if it exists.
    pub fn bucket(&self, user: UserId) -> Option<u16> {
        self.get(user).map(|u| u.bucket)
    }

    /// All users' buckets, indexed by user id.
    pub fn buckets(&self) -> impl ExactSizeIterator<Item = u16> + '_ {
        self.buckets.iter().copied()
    }

    /// All users' buckets as a slice, indexed by user id.
    pub fn bucket_slice(&self) -> &[u16] {
        &self.buckets
    }

    /// Whoever holds this identifier, whatever the matching rules.
    pub fn lookup(&self, r: &UserRef) -> Option<UserId> {
        match r {
            UserRef::ExternalId(id) => self.by_external.get(id.as_str()).copied(),
            UserRef::Alias { label, name } => self.find_alias(label, name),
            UserRef::DeviceId(id) => self.by_device.get(id.as_str()).copied(),
        }
    }

    fn find_alias(&self, label: &str, name: &str) -> Option<UserId> {
        self.by_alias.get(&AliasQuery(label, name)).copied()
    }

    /// Import rule: a user_id matches the user whose external_id it is.
    pub fn match_external_id(&self, external_id: &str) -> Option<UserId> {
        self.by_external.get(external_id).copied()
    }

    /// Import rule: an alias matches the user holding exactly that
    /// (alias_label, alias_name), identified or not.
    pub fn match_alias(&self, label: &str, name: &str) -> Option<UserId> {
        self.find_alias(label, name)
    }

    /// Import rule: a device_id matches only an anonymous user holding it.
    pub fn match_device(&self, device_id: &str) -> DeviceMatch {
        match self.by_device.get(device_id) {
            None => DeviceMatch::Unknown,
            Some(&u) if self.users[u.0 as usize].is_anonymous() => DeviceMatch::Matched(u),
            Some(&u) => DeviceMatch::Refused(u),
        }
    }

    /// Checks that every identifier of `new` is valid and free, and that the
    /// request does not name one twice. Changes nothing.
    fn check_new(&self, new: &NewUser) -> Result<()> {
        let n = new.devices.len() + new.aliases.len();
        if n > MAX_IDENTIFIERS_PER_CALL {
            return Err(Error::InvalidIdentifier {
                kind: "user",
                reason: format!(
                    "{n} device ids and aliases at once; at most {MAX_IDENTIFIERS_PER_CALL}"
                ),
            });
        }
        if let Some(ext) = &new.external_id {
            check_identifier("external_id", ext)?;
            if let Some(&holder) = self.by_external.get(ext.as_str()) {
                return Err(Error::DuplicateExternalId {
                    external_id: ext.clone(),
                    holder,
                });
            }
        }
        for (i, d) in new.devices.iter().enumerate() {
            check_identifier("device_id", d)?;
            if let Some(&holder) = self.by_device.get(d.as_str()) {
                return Err(Error::DuplicateDevice {
                    device_id: d.clone(),
                    holder,
                });
            }
            if new.devices[..i].contains(d) {
                return Err(Error::InvalidIdentifier {
                    kind: "device_id",
                    reason: format!("{d:?} is named twice"),
                });
            }
        }
        for (i, (label, name)) in new.aliases.iter().enumerate() {
            check_identifier("alias_label", label)?;
            check_identifier("alias_name", name)?;
            if let Some(holder) = self.find_alias(label, name) {
                return Err(Error::DuplicateAlias {
                    label: label.clone(),
                    name: name.clone(),
                    holder,
                });
            }
            if new.aliases[..i].contains(&(label.clone(), name.clone())) {
                return Err(Error::InvalidIdentifier {
                    kind: "alias",
                    reason: format!("({label:?}, {name:?}) is named twice"),
                });
            }
        }
        if let Some(b) = new.bucket {
            if b >= BUCKETS {
                return Err(Error::InvalidArgument(format!(
                    "random bucket must be 0..{BUCKETS}, found {b}"
                )));
            }
        }
        Ok(())
    }

    /// Creates a user. Fails, changing nothing, if any identifier is empty,
    /// named twice, or already held by another user.
    pub fn create(&mut self, new: NewUser) -> Result<UserId> {
        self.check_new(&new)?;
        if self.users.len() as u64 >= MAX_USERS {
            return Err(Error::TooManyUsers { max: MAX_USERS });
        }
        let id = UserId(self.users.len() as u32);
        let bucket = match new.bucket {
            Some(b) => b,
            None => default_bucket(self.seed, id),
        };
        let mut rec = UserRecord {
            external_id: None,
            devices: Vec::with_capacity(new.devices.len()),
            aliases: Vec::with_capacity(new.aliases.len()),
            bucket,
        };
        if let Some(ext) = new.external_id {
            let ext: Box<str> = ext.into();
            self.by_external.insert(ext.clone(), id);
            rec.external_id = Some(ext);
        }
        for d in new.devices {
            let d: Box<str> = d.into();
            self.by_device.insert(d.clone(), id);
            rec.devices.push(d);
        }
        for (label, name) in new.aliases {
            let key = AliasKey::new(label, name);
            rec.aliases.push((key.label().into(), key.name().into()));
            self.by_alias.insert(key, id);
        }
        self.users.push(rec);
        self.buckets.push(bucket);
        Ok(id)
    }

    /// Creates a user, or, when `new.external_id` names an existing user,
    /// adds the devices and aliases it does not hold yet to that user. Fails,
    /// changing nothing, when an identifier is held by somebody else.
    pub fn upsert(&mut self, new: NewUser) -> Result<Upserted> {
        let existing = new
            .external_id
            .as_deref()
            .and_then(|e| self.match_external_id(e));
        let Some(user) = existing else {
            return self.create(new).map(|user| Upserted {
                user,
                created: true,
            });
        };
        // Check everything before changing anything.
        let devices: Vec<String> = new
            .devices
            .into_iter()
            .filter(|d| self.by_device.get(d.as_str()) != Some(&user))
            .collect();
        let aliases: Vec<(String, String)> = new
            .aliases
            .into_iter()
            .filter(|(l, n)| self.find_alias(l, n) != Some(user))
            .collect();
        let rest = NewUser {
            external_id: None,
            devices,
            aliases,
            bucket: None,
        };
        self.check_new(&rest)?;
        for d in rest.devices {
            self.insert_device(user, d);
        }
        for (l, n) in rest.aliases {
            self.insert_alias(user, l, n);
        }
        Ok(Upserted {
            user,
            created: false,
        })
    }

    fn insert_device(&mut self, user: UserId, device_id: String) {
        let d: Box<str> = device_id.into();
        self.by_device.insert(d.clone(), user);
        self.users[user.0 as usize].devices.push(d);
    }

    fn insert_alias(&mut self, user: UserId, label: String, name: String) {
        let key = AliasKey::new(label, name);
        self.users[user.0 as usize]
            .aliases
            .push((key.label().into(), key.name().into()));
        self.by_alias.insert(key, user);
    }

    /// Gives a user an alias. Adding an alias the user already holds is a
    /// no-op; an alias held by another user is an error.
    pub fn add_alias(&mut self, user: UserId, label: &str, name: &str) -> Result<()> {
        self.record(user)?;
        check_identifier("alias_label", label)?;
        check_identifier("alias_name", name)?;
        match self.find_alias(label, name) {
            Some(holder) if holder == user => Ok(()),
            Some(holder) => Err(Error::DuplicateAlias {
                label: label.into(),
                name: name.into(),
                holder,
            }),
            None => {
                self.insert_alias(user, label.into(), name.into());
                Ok(())
            }
        }
    }

    /// Gives a user a device. Adding a device the user already holds is a
    /// no-op; a device held by another user is an error.
    pub fn add_device(&mut self, user: UserId, device_id: &str) -> Result<()> {
        self.record(user)?;
        check_identifier("device_id", device_id)?;
        match self.by_device.get(device_id) {
            Some(&holder) if holder == user => Ok(()),
            Some(&holder) => Err(Error::DuplicateDevice {
                device_id: device_id.into(),
                holder,
            }),
            None => {
                self.insert_device(user, device_id.into());
                Ok(())
            }
        }
    }

    /// Identifies an anonymous user: gives it an external_id. From then on
    /// its device_ids no longer match it in imports. Identifying a user again
    /// with the id it already has is a no-op.
    pub fn identify(&mut self, user: UserId, external_id: &str) -> Result<()> {
        let rec = self.record(user)?;
        check_identifier("external_id", external_id)?;
        if let Some(current) = &rec.external_id {
            if &**current == external_id {
                return Ok(());
            }
            return Err(Error::AlreadyIdentified {
                user,
                current: current.to_string(),
                requested: external_id.into(),
            });
        }
        if let Some(&holder) = self.by_external.get(external_id) {
            return Err(Error::DuplicateExternalId {
                external_id: external_id.into(),
                holder,
            });
        }
        let ext: Box<str> = external_id.into();
        self.by_external.insert(ext.clone(), user);
        self.users[user.0 as usize].external_id = Some(ext);
        Ok(())
    }

    /// How a member list names a user: its external_id, or, for an anonymous
    /// user, its internal id.
    pub fn display_id(&self, user: UserId) -> MemberId<'_> {
        match self.get(user).and_then(|r| r.external_id.as_deref()) {
            Some(ext) => MemberId::External(ext),
            None => MemberId::Anonymous(user),
        }
    }
}

/// A member of a segment as a list shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MemberId<'a> {
    External(&'a str),
    Anonymous(UserId),
}

impl std::fmt::Display for MemberId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberId::External(e) => f.write_str(e),
            MemberId::Anonymous(u) => write!(f, "user_id:{u}"),
        }
    }
}
