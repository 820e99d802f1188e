//! The user registry of one workspace, and the identity matching rules of the
//! partner cohort import protocol.
//!
//! Users get dense [`UserId`]s in creation order. Every identifier
//! (external_id, (alias_label, alias_name), device_id) is unique within the
//! workspace.
//!
//! The registry is layered: users `0..n` of the snapshot it was loaded from
//! are read in place from the mapped file (identifier dictionaries and
//! buckets), and only what came since lives in memory: users created since,
//! identifiers given since (to old or new users), and three hash indexes
//! over those. A look-up asks the in-memory index, then the snapshot's
//! dictionary, whose answer counts only while its holder still holds it:
//! a deleted user holds nothing ([`UserRegistry::delete`]: its id stays a
//! hole, never given again, and its identifiers are free at once), and a
//! snapshot user whose external_id was renamed since
//! ([`UserRegistry::rename_external_id`]) no longer holds the old one.
//! [`UserRegistry::rebase`] moves onto a newer snapshot after compaction.
//!
//! Two ways to find a user:
//! - [`UserRegistry::lookup`] finds whoever holds an identifier (targeting
//!   look-ups, the admin API);
//! - the `match_*` methods apply the import protocol's rules: a device_id
//!   matches only an anonymous user, so a user who was later identified is
//!   refused (see [`DeviceMatch`]).

mod alias;

use std::borrow::Cow;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use roaring::RoaringBitmap;

use crate::error::{Error, Result};
use crate::ids::{UserId, UserRef, BUCKETS};
use crate::snapshot::dict::{alias_key, split_alias_key, Ids};
use crate::snapshot::Snapshot;

use alias::{AliasKey, AliasQuery};

/// One user: its identifiers and its random bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRecord {
    /// Its external_id, if it is identified.
    pub external_id: Option<Box<str>>,
    /// Its device_ids.
    pub devices: Vec<Box<str>>,
    /// Its aliases, `(alias_label, alias_name)` pairs.
    pub aliases: Vec<(Box<str>, Box<str>)>,
    /// Uniform in `0..10_000`, fixed when the user is created.
    pub bucket: u16,
}

impl UserRecord {
    /// Whether the user has no external_id.
    pub fn is_anonymous(&self) -> bool {
        self.external_id.is_none()
    }
}

/// What to create: any identifiers, and optionally a bucket (the generator
/// and log replay set it; otherwise the registry draws one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewUser {
    /// An external_id, if any.
    pub external_id: Option<String>,
    /// Device_ids.
    pub devices: Vec<String>,
    /// `(alias_label, alias_name)` pairs.
    pub aliases: Vec<(String, String)>,
    /// The random bucket to give it (0..=9999); drawn by the registry when `None`.
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
    /// The user.
    pub user: UserId,
    /// Whether it was created (rather than found).
    pub created: bool,
}

/// What [`UserRegistry::upsert`] would do, from
/// [`UserRegistry::plan_upsert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpsertPlan {
    /// Create a user with these identifiers, as `user`, in `bucket`.
    Create {
        /// The new user's id.
        user: UserId,
        /// Its external_id, if any.
        external_id: Option<String>,
        /// Its device_ids.
        devices: Vec<String>,
        /// `(alias_label, alias_name)` pairs.
        aliases: Vec<(String, String)>,
        /// Its random bucket.
        bucket: u16,
    },
    /// Give an existing user the identifiers it does not hold yet (both
    /// lists may be empty).
    Extend {
        /// The user.
        user: UserId,
        /// The device_ids it does not hold yet.
        devices: Vec<String>,
        /// `(alias_label, alias_name)` pairs.
        aliases: Vec<(String, String)>,
    },
}

/// Identifiers held in memory: those of a user created since the snapshot,
/// or those a snapshot user was given since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Idents {
    external_id: Option<Box<str>>,
    devices: Vec<Box<str>>,
    aliases: Vec<(Box<str>, Box<str>)>,
}

impl Idents {
    fn is_empty(&self) -> bool {
        self.external_id.is_none() && self.devices.is_empty() && self.aliases.is_empty()
    }

    /// What `self` holds beyond `before`, an earlier state of the same
    /// live user (its device_ids and aliases are only ever appended; its
    /// external_id is the caller's to compare).
    fn since(mut self, before: Option<&Idents>) -> Idents {
        if let Some(b) = before {
            if b.external_id.is_some() {
                self.external_id = None;
            }
            self.devices
                .drain(..b.devices.len().min(self.devices.len()));
            self.aliases
                .drain(..b.aliases.len().min(self.aliases.len()));
        }
        self
    }
}

/// The snapshot the first `len` users are read from.
#[derive(Clone, Debug)]
struct Base {
    snap: Arc<Snapshot>,
    len: u32,
    /// How many users the snapshot holds as deleted.
    deleted: u64,
}

impl Base {
    // The dictionaries and buckets were parsed when the registry was built
    // on this snapshot (`UserRegistry::on_snapshot`); parsing the same
    // immutable bytes again gives the same answer, so `ok()` loses nothing.
    fn externals(&self) -> Option<Ids<'_>> {
        self.snap.external_ids().ok()
    }
    fn devices(&self) -> Option<Ids<'_>> {
        self.snap.devices().ok()
    }
    fn aliases(&self) -> Option<Ids<'_>> {
        self.snap.aliases().ok()
    }
    fn buckets(&self) -> &[u16] {
        self.snap.buckets().unwrap_or(&[])
    }
}

/// The import rules of [`UserRegistry`] with the snapshot's dictionaries
/// opened once ([`UserRegistry::matcher`]): a batch's identifiers are
/// matched without reading each dictionary's header again per
/// identifier. The answers are the registry's own.
pub struct Matcher<'r> {
    users: &'r UserRegistry,
    externals: Option<Ids<'r>>,
    devices: Option<Ids<'r>>,
    aliases: Option<Ids<'r>>,
}

impl Matcher<'_> {
    /// [`UserRegistry::match_external_id`].
    pub fn match_external_id(&self, external_id: &str) -> Option<UserId> {
        let u = self.users;
        u.holder_in(&u.by_external, external_id, true, |k| {
            self.externals.as_ref()?.get(k)
        })
    }

    /// [`UserRegistry::match_alias`].
    pub fn match_alias(&self, label: &str, name: &str) -> Option<UserId> {
        self.users
            .find_alias_with(label, name, |k| self.aliases.as_ref()?.get(k))
    }

    /// [`UserRegistry::match_device`].
    pub fn match_device(&self, device_id: &str) -> DeviceMatch {
        let u = self.users;
        let holder = u.holder_in(&u.by_device, device_id, false, |k| {
            self.devices.as_ref()?.get(k)
        });
        u.device_match(holder)
    }
}

fn borrowed(s: Option<&str>) -> Option<Cow<'_, str>> {
    s.map(Cow::Borrowed)
}

fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// Every user's random bucket, indexed by user id: the snapshot's users
/// (read in place) then the users created since.
#[derive(Copy, Clone, Debug)]
pub struct Buckets<'a> {
    /// The buckets of the snapshot's users.
    pub base: &'a [u16],
    /// The buckets of the users created since.
    pub tail: &'a [u16],
}

impl<'a> Buckets<'a> {
    /// All buckets from one slice.
    pub fn contiguous(b: &'a [u16]) -> Self {
        Buckets { base: b, tail: &[] }
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.base.len() + self.tail.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket of user `u` (`u < len()`).
    pub fn get(&self, u: usize) -> u16 {
        match self.base.get(u) {
            Some(&b) => b,
            None => self.tail[u - self.base.len()],
        }
    }

    /// Buckets `start..start + len`: borrowed, unless the range straddles
    /// the two parts (one chunk at most).
    pub fn range(&self, start: usize, len: usize) -> Cow<'a, [u16]> {
        let end = start + len;
        let n = self.base.len();
        if end <= n {
            Cow::Borrowed(&self.base[start..end])
        } else if start >= n {
            Cow::Borrowed(&self.tail[start - n..end - n])
        } else {
            let mut v = self.base[start..].to_vec();
            v.extend_from_slice(&self.tail[..end - n]);
            Cow::Owned(v)
        }
    }

    /// The buckets in user id order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.base.iter().chain(self.tail.iter()).copied()
    }
}

/// The users of one workspace and their identifier indexes.
#[derive(Clone, Debug)]
pub struct UserRegistry {
    base: Option<Base>,
    /// Users created since the snapshot: ids `base_len()..`.
    users: Vec<Idents>,
    /// Their buckets, contiguous for the evaluator.
    buckets: Vec<u16>,
    /// Identifiers snapshot users were given since the snapshot.
    extras: HashMap<u32, Idents>,
    /// Indexes over identifiers given since the snapshot.
    by_external: HashMap<Box<str>, UserId>,
    by_alias: HashMap<AliasKey, UserId>,
    by_device: HashMap<Box<str>, UserId>,
    seed: u64,
    /// Deleted users (of the snapshot and since): holes, shared with the
    /// plans and views that exclude them.
    deleted: Arc<RoaringBitmap>,
    /// Snapshot users whose external_id in the snapshot's dictionary was
    /// renamed since: their external_id is in `extras`.
    renamed: HashSet<u32>,
    /// See [`Self::stamp`].
    stamp: Stamp,
}

/// What a registry held at one moment, as far as identifier matching goes
/// ([`UserRegistry::stamp`]): two equal stamps mean the same users with
/// the same identifiers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

impl Stamp {
    /// A value no registry of this process held before.
    fn fresh() -> Stamp {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Stamp(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The random bucket a user gets when none is given: a hash of (seed, id),
/// uniform over `0..BUCKETS`, so it needs no state that a restart could
/// reset, and the same user always gets the same bucket.
pub(crate) fn default_bucket(seed: u64, user: UserId) -> u16 {
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
            base: None,
            users: Vec::new(),
            buckets: Vec::new(),
            extras: HashMap::new(),
            by_external: HashMap::new(),
            by_alias: HashMap::new(),
            by_device: HashMap::new(),
            seed,
            deleted: Arc::new(RoaringBitmap::new()),
            renamed: HashSet::new(),
            stamp: Stamp::fresh(),
        }
    }

    /// Changes with every change of a user or an identifier (and with a
    /// [`Self::rebase`]), and is never the same for two registries made
    /// apart: identifiers matched against a registry with this stamp match
    /// the same now ([`crate::cohorts::Resolving`] matches outside the
    /// workspace's write lock and checks this under it). A clone keeps it
    /// until one of the two changes.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Notes a change: a new [`Self::stamp`]. Every public method that
    /// may change a user or an identifier calls it first (the private
    /// helpers that change them are only reached through those).
    fn changed(&mut self) {
        self.stamp = Stamp::fresh();
    }

    /// The users of a snapshot, read in place: nothing is decoded. Checks
    /// that the dictionaries' headers parse and that every user has a
    /// bucket.
    pub fn on_snapshot(snap: Arc<Snapshot>) -> Result<Self> {
        let meta = snap.meta()?;
        let (len, seed) = (meta.users, meta.seed);
        snap.external_ids()?;
        snap.devices()?;
        snap.aliases()?;
        let b = snap.buckets()?.len();
        if b != len as usize {
            return Err(Error::Corrupt {
                path: snap.name().into(),
                reason: format!("{b} buckets for {len} users"),
            });
        }
        let mut reg = UserRegistry::new(seed);
        if let Some(bytes) = snap.deleted_bytes() {
            let deleted = RoaringBitmap::deserialize_from(bytes).map_err(|e| Error::Corrupt {
                path: snap.name().into(),
                reason: format!("deleted users section: {e}"),
            })?;
            if deleted.max().is_some_and(|m| m >= len) {
                return Err(Error::Corrupt {
                    path: snap.name().into(),
                    reason: format!("a deleted user past the last of {len} users"),
                });
            }
            reg.deleted = Arc::new(deleted);
        }
        let deleted = reg.deleted.len();
        reg.base = Some(Base { snap, len, deleted });
        Ok(reg)
    }

    /// The seed of the default random buckets.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The snapshot the first users are read from, if any.
    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.base.as_ref().map(|b| &b.snap)
    }

    /// The snapshot the users are read from, when no user and no
    /// identifier changed since (none created, given or taken an
    /// identifier, renamed, merged or deleted): its identifier
    /// dictionaries are then this registry's, byte for byte, and a
    /// snapshot writer may copy them instead of building them again.
    pub fn unchanged_snapshot(&self) -> Option<&Arc<Snapshot>> {
        let base = self.base.as_ref()?;
        let unchanged = self.users.is_empty()
            && self.extras.is_empty()
            && self.renamed.is_empty()
            && self.by_external.is_empty()
            && self.by_device.is_empty()
            && self.by_alias.is_empty()
            // Users are only ever added to the deleted ones.
            && self.deleted.len() == base.deleted;
        unchanged.then_some(&base.snap)
    }

    /// Users read from the snapshot: ids `0..base_len()`.
    pub fn base_len(&self) -> u32 {
        self.base.as_ref().map_or(0, |b| b.len)
    }

    /// Users and identifiers held in memory (created or given since the
    /// snapshot): `(users, identifiers)`.
    pub fn delta_size(&self) -> (usize, usize) {
        (
            self.users.len(),
            self.by_external.len() + self.by_alias.len() + self.by_device.len(),
        )
    }

    /// Reserves room for `n` more users and their identifiers.
    pub fn reserve(&mut self, users: usize, externals: usize, aliases: usize, devices: usize) {
        self.users.reserve(users);
        self.buckets.reserve(users);
        self.by_external.reserve(externals);
        self.by_alias.reserve(aliases);
        self.by_device.reserve(devices);
    }

    /// The number of user ids given; ids run `0..len()`, deleted users
    /// ([`Self::deleted`]) included.
    pub fn len(&self) -> u32 {
        self.base_len() + self.users.len() as u32
    }

    /// The users there are: ids given, less the deleted.
    pub fn live_len(&self) -> u64 {
        u64::from(self.len()) - self.deleted.len()
    }

    /// The deleted users: holes in the ids, in no cohort, attribute,
    /// count or list.
    pub fn deleted(&self) -> &Arc<RoaringBitmap> {
        &self.deleted
    }

    /// Whether user `u` was deleted.
    pub fn is_deleted(&self, user: UserId) -> bool {
        self.deleted.contains(user.0)
    }

    /// Whether the registry holds no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where user `u` lives: `Ok(base user)` or `Err(index into users)`.
    fn place(&self, user: UserId) -> Option<std::result::Result<&Base, usize>> {
        let n = self.base_len();
        if user.0 < n {
            self.base.as_ref().map(Ok)
        } else {
            let i = (user.0 - n) as usize;
            (i < self.users.len()).then_some(Err(i))
        }
    }

    /// The user with this id (assembled from the snapshot and what came
    /// since); `None` for a deleted user.
    pub fn get(&self, user: UserId) -> Option<UserRecord> {
        if self.is_deleted(user) {
            return None;
        }
        let (mut rec, mem) = match self.place(user)? {
            Err(i) => (
                UserRecord {
                    bucket: self.buckets[i],
                    ..UserRecord::default()
                },
                Some(&self.users[i]),
            ),
            Ok(base) => {
                let mut rec = UserRecord {
                    bucket: base.buckets().get(user.0 as usize).copied().unwrap_or(0),
                    ..UserRecord::default()
                };
                if let Some(d) = base.devices() {
                    rec.devices = d
                        .keys_of(user)
                        .filter_map(|k| text(&k).map(Into::into))
                        .collect();
                }
                if let Some(d) = base.aliases() {
                    rec.aliases = d
                        .keys_of(user)
                        .filter_map(|k| {
                            let (l, n) = split_alias_key(&k)?;
                            Some((text(l)?.into(), text(n)?.into()))
                        })
                        .collect();
                }
                (rec, self.extras.get(&user.0))
            }
        };
        rec.external_id = self.external_id(user).map(|e| e.into_owned().into());
        if let Some(m) = mem {
            rec.devices.extend(m.devices.iter().cloned());
            rec.aliases.extend(m.aliases.iter().cloned());
        }
        Some(rec)
    }

    fn record_exists(&self, user: UserId) -> Result<()> {
        if user.0 < self.len() && !self.is_deleted(user) {
            Ok(())
        } else {
            Err(Error::UnknownUser(format!("with id {user}")))
        }
    }

    /// A user's external_id, if identified (`None` for a deleted user):
    /// borrowed from memory, read out of the snapshot's dictionary into
    /// a string of its own.
    pub fn external_id(&self, user: UserId) -> Option<Cow<'_, str>> {
        if self.is_deleted(user) {
            return None;
        }
        match self.place(user)? {
            Err(i) => borrowed(self.users[i].external_id.as_deref()),
            Ok(_) if self.renamed.contains(&user.0) => {
                borrowed(self.extras.get(&user.0)?.external_id.as_deref())
            }
            Ok(base) => {
                // Decoded (or copied) into one buffer of the key's size.
                let from_base = base.externals().and_then(|d| {
                    let mut key = Vec::new();
                    d.key_into(user, &mut key).then_some(())?;
                    String::from_utf8(key).ok().map(Cow::Owned)
                });
                from_base.or_else(|| borrowed(self.extras.get(&user.0)?.external_id.as_deref()))
            }
        }
    }

    /// Whether a user has no external_id (`None`: no such user).
    pub fn is_anonymous(&self, user: UserId) -> Option<bool> {
        self.record_exists(user).ok()?;
        Some(self.external_id(user).is_none())
    }

    /// The random bucket of a user, if it exists.
    pub fn bucket(&self, user: UserId) -> Option<u16> {
        match self.place(user)? {
            Err(i) => Some(self.buckets[i]),
            Ok(base) => base.buckets().get(user.0 as usize).copied(),
        }
    }

    /// All users' buckets, in id order.
    pub fn buckets(&self) -> impl Iterator<Item = u16> + '_ {
        self.bucket_slices().iter()
    }

    /// All users' buckets, indexed by user id, for evaluators.
    pub fn bucket_slices(&self) -> Buckets<'_> {
        Buckets {
            base: self.base.as_ref().map_or(&[][..], |b| b.buckets()),
            tail: &self.buckets,
        }
    }

    /// Whether the snapshot's dictionary entry naming `user` still
    /// counts: its holder was not deleted (nor, for an external_id,
    /// renamed) since.
    fn base_holds(&self, user: UserId, external: bool) -> bool {
        let renamed = external && self.renamed.contains(&user.0);
        !self.is_deleted(user) && !renamed
    }

    fn external_holder(&self, id: &str) -> Option<UserId> {
        self.holder_in(&self.by_external, id, true, |k| {
            self.base.as_ref()?.externals()?.get(k)
        })
    }

    fn device_holder(&self, id: &str) -> Option<UserId> {
        self.holder_in(&self.by_device, id, false, |k| {
            self.base.as_ref()?.devices()?.get(k)
        })
    }

    /// Who holds `id` by the in-memory index `index` (of external ids
    /// when `external`, else of device ids), else by the snapshot's entry
    /// (found by `base`) while it counts.
    fn holder_in(
        &self,
        index: &HashMap<Box<str>, UserId>,
        id: &str,
        external: bool,
        base: impl FnOnce(&[u8]) -> Option<UserId>,
    ) -> Option<UserId> {
        index.get(id).copied().or_else(|| {
            let u = base(id.as_bytes())?;
            self.base_holds(u, external).then_some(u)
        })
    }

    fn find_alias(&self, label: &str, name: &str) -> Option<UserId> {
        self.find_alias_with(label, name, |k| self.base.as_ref()?.aliases()?.get(k))
    }

    fn find_alias_with(
        &self,
        label: &str,
        name: &str,
        base: impl FnOnce(&[u8]) -> Option<UserId>,
    ) -> Option<UserId> {
        self.by_alias
            .get(&AliasQuery(label, name))
            .copied()
            .or_else(|| {
                let u = base(&alias_key(label, name))?;
                self.base_holds(u, false).then_some(u)
            })
    }

    /// The import rules for many identifiers at once: the snapshot's
    /// dictionaries opened once, where each `match_*` call of the
    /// registry opens the one it reads again.
    pub fn matcher(&self) -> Matcher<'_> {
        let base = self.base.as_ref();
        Matcher {
            users: self,
            externals: base.and_then(Base::externals),
            devices: base.and_then(Base::devices),
            aliases: base.and_then(Base::aliases),
        }
    }

    /// Whoever holds this identifier, whatever the matching rules.
    pub fn lookup(&self, r: &UserRef) -> Option<UserId> {
        match r {
            UserRef::ExternalId(id) => self.external_holder(id),
            UserRef::Alias { label, name } => self.find_alias(label, name),
            UserRef::DeviceId(id) => self.device_holder(id),
        }
    }

    /// Import rule: a user_id matches the user whose external_id it is.
    pub fn match_external_id(&self, external_id: &str) -> Option<UserId> {
        self.external_holder(external_id)
    }

    /// Import rule: an alias matches the user holding exactly that
    /// (alias_label, alias_name), identified or not.
    pub fn match_alias(&self, label: &str, name: &str) -> Option<UserId> {
        self.find_alias(label, name)
    }

    /// Import rule: a device_id matches only an anonymous user holding it.
    pub fn match_device(&self, device_id: &str) -> DeviceMatch {
        self.device_match(self.device_holder(device_id))
    }

    /// The device rule, for the holder of a device_id.
    fn device_match(&self, holder: Option<UserId>) -> DeviceMatch {
        match holder {
            None => DeviceMatch::Unknown,
            Some(u) if self.external_id(u).is_none() => DeviceMatch::Matched(u),
            Some(u) => DeviceMatch::Refused(u),
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
            if let Some(holder) = self.external_holder(ext) {
                return Err(Error::DuplicateExternalId {
                    external_id: ext.clone(),
                    holder,
                });
            }
        }
        for (i, d) in new.devices.iter().enumerate() {
            check_identifier("device_id", d)?;
            if let Some(holder) = self.device_holder(d) {
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

    /// The in-memory identifiers of a user, created for a snapshot user on
    /// first use.
    fn idents_mut(&mut self, user: UserId) -> &mut Idents {
        let n = self.base_len();
        if user.0 < n {
            self.extras.entry(user.0).or_default()
        } else {
            &mut self.users[(user.0 - n) as usize]
        }
    }

    /// Where [`Self::create`] would put `new`: the id it gets and its
    /// bucket (the one given, or the one drawn for that id). Fails, as
    /// `create` would, if any identifier is empty, named twice, or already
    /// held by another user. Changes nothing.
    pub fn plan_create(&self, new: &NewUser) -> Result<(UserId, u16)> {
        self.check_new(new)?;
        if u64::from(self.len()) >= MAX_USERS {
            return Err(Error::TooManyUsers { max: MAX_USERS });
        }
        let id = UserId(self.len());
        let bucket = match new.bucket {
            Some(b) => b,
            None => default_bucket(self.seed, id),
        };
        Ok((id, bucket))
    }

    /// Creates a user. Fails, changing nothing, if any identifier is empty,
    /// named twice, or already held by another user.
    pub fn create(&mut self, new: NewUser) -> Result<UserId> {
        self.changed();
        let (id, bucket) = self.plan_create(&new)?;
        let mut rec = Idents {
            external_id: None,
            devices: Vec::with_capacity(new.devices.len()),
            aliases: Vec::with_capacity(new.aliases.len()),
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

    /// What [`Self::upsert`] would do with `new`, checked whole: create it
    /// (with its id and bucket), or, when `new.external_id` names an
    /// existing user, give that user the devices and aliases it does not
    /// hold yet. Fails, as `upsert` would, when an identifier is held by
    /// somebody else. Changes nothing.
    pub fn plan_upsert(&self, new: NewUser) -> Result<UpsertPlan> {
        let existing = new
            .external_id
            .as_deref()
            .and_then(|e| self.match_external_id(e));
        let Some(user) = existing else {
            let (user, bucket) = self.plan_create(&new)?;
            return Ok(UpsertPlan::Create {
                user,
                external_id: new.external_id,
                devices: new.devices,
                aliases: new.aliases,
                bucket,
            });
        };
        let devices: Vec<String> = new
            .devices
            .into_iter()
            .filter(|d| self.device_holder(d) != Some(user))
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
        Ok(UpsertPlan::Extend {
            user,
            devices: rest.devices,
            aliases: rest.aliases,
        })
    }

    /// Creates a user, or, when `new.external_id` names an existing user, adds
    /// the devices and aliases it does not hold yet to that user. Fails,
    /// changing nothing, when an identifier is held by somebody else.
    pub fn upsert(&mut self, new: NewUser) -> Result<Upserted> {
        self.changed();
        match self.plan_upsert(new)? {
            UpsertPlan::Create {
                external_id,
                devices,
                aliases,
                bucket,
                ..
            } => {
                let new = NewUser {
                    external_id,
                    devices,
                    aliases,
                    bucket: Some(bucket),
                };
                self.create(new).map(|user| Upserted {
                    user,
                    created: true,
                })
            }
            UpsertPlan::Extend {
                user,
                devices,
                aliases,
            } => {
                for d in devices {
                    self.insert_device(user, d);
                }
                for (l, n) in aliases {
                    self.insert_alias(user, l, n);
                }
                Ok(Upserted {
                    user,
                    created: false,
                })
            }
        }
    }

    fn insert_device(&mut self, user: UserId, device_id: String) {
        let d: Box<str> = device_id.into();
        self.by_device.insert(d.clone(), user);
        self.idents_mut(user).devices.push(d);
    }

    fn insert_alias(&mut self, user: UserId, label: String, name: String) {
        let key = AliasKey::new(label, name);
        self.idents_mut(user)
            .aliases
            .push((key.label().into(), key.name().into()));
        self.by_alias.insert(key, user);
    }

    /// Whether [`Self::add_alias`] would give `user` the alias (false: it
    /// holds it already). Fails, as `add_alias` would, for an unknown user,
    /// an empty or too long label or name, or an alias another user
    /// holds. Changes nothing.
    pub fn check_alias(&self, user: UserId, label: &str, name: &str) -> Result<bool> {
        self.record_exists(user)?;
        check_identifier("alias_label", label)?;
        check_identifier("alias_name", name)?;
        match self.find_alias(label, name) {
            Some(holder) if holder == user => Ok(false),
            Some(holder) => Err(Error::DuplicateAlias {
                label: label.into(),
                name: name.into(),
                holder,
            }),
            None => Ok(true),
        }
    }

    /// Gives a user an alias. Adding an alias the user already holds is a
    /// no-op; an alias held by another user is an error.
    pub fn add_alias(&mut self, user: UserId, label: &str, name: &str) -> Result<()> {
        self.changed();
        if self.check_alias(user, label, name)? {
            self.insert_alias(user, label.into(), name.into());
        }
        Ok(())
    }

    /// Whether [`Self::add_device`] would give `user` the device (false:
    /// it holds it already). Fails as `add_device` would. Changes nothing.
    pub fn check_device(&self, user: UserId, device_id: &str) -> Result<bool> {
        self.record_exists(user)?;
        check_identifier("device_id", device_id)?;
        match self.device_holder(device_id) {
            Some(holder) if holder == user => Ok(false),
            Some(holder) => Err(Error::DuplicateDevice {
                device_id: device_id.into(),
                holder,
            }),
            None => Ok(true),
        }
    }

    /// Gives a user a device. Adding a device the user already holds is a
    /// no-op; a device held by another user is an error.
    pub fn add_device(&mut self, user: UserId, device_id: &str) -> Result<()> {
        self.changed();
        if self.check_device(user, device_id)? {
            self.insert_device(user, device_id.into());
        }
        Ok(())
    }

    /// Whether [`Self::identify`] would give `user` the external_id (false:
    /// it has that one already). Fails as `identify` would. Changes
    /// nothing.
    pub fn check_identify(&self, user: UserId, external_id: &str) -> Result<bool> {
        self.record_exists(user)?;
        check_identifier("external_id", external_id)?;
        if let Some(current) = self.external_id(user) {
            if current == external_id {
                return Ok(false);
            }
            return Err(Error::AlreadyIdentified {
                user,
                current: current.to_string(),
                requested: external_id.into(),
            });
        }
        if let Some(holder) = self.external_holder(external_id) {
            return Err(Error::DuplicateExternalId {
                external_id: external_id.into(),
                holder,
            });
        }
        Ok(true)
    }

    /// Identifies an anonymous user: gives it an external_id. From then on
    /// its device_ids no longer match it in imports. Identifying a user again
    /// with the id it already has is a no-op.
    pub fn identify(&mut self, user: UserId, external_id: &str) -> Result<()> {
        self.changed();
        if self.check_identify(user, external_id)? {
            let ext: Box<str> = external_id.into();
            self.by_external.insert(ext.clone(), user);
            self.idents_mut(user).external_id = Some(ext);
        }
        Ok(())
    }

    /// Whether [`Self::delete`] may delete `user`: it exists and was not
    /// deleted. Changes nothing.
    pub fn check_delete(&self, user: UserId) -> Result<()> {
        self.record_exists(user)
    }

    /// Deletes a user: its id becomes a hole (never given again, counted
    /// nowhere), and every identifier it held is free from now on. Its
    /// cohort memberships and attribute values are the workspace's to
    /// remove. Fails, changing nothing, for an unknown or deleted user.
    pub fn delete(&mut self, user: UserId) -> Result<()> {
        self.changed();
        self.check_delete(user)?;
        let n = self.base_len();
        let held = if user.0 < n {
            self.renamed.remove(&user.0);
            self.extras.remove(&user.0)
        } else {
            Some(std::mem::take(&mut self.users[(user.0 - n) as usize]))
        };
        if let Some(m) = held {
            self.unindex(user, &m);
        }
        Arc::make_mut(&mut self.deleted).insert(user.0);
        Ok(())
    }

    /// Takes the in-memory identifiers `m` of `user` out of the indexes.
    fn unindex(&mut self, user: UserId, m: &Idents) {
        if let Some(e) = &m.external_id {
            if self.by_external.get(e) == Some(&user) {
                self.by_external.remove(e);
            }
        }
        for d in &m.devices {
            if self.by_device.get(d) == Some(&user) {
                self.by_device.remove(d);
            }
        }
        for (l, nm) in &m.aliases {
            if self.by_alias.get(&AliasQuery(l, nm)) == Some(&user) {
                self.by_alias.remove(&AliasQuery(l, nm));
            }
        }
    }

    /// Whether [`Self::rename_external_id`] would change anything (false:
    /// `user` has `new` already). Fails, as it would, for an unknown or
    /// anonymous user, or an external_id that is invalid or held by
    /// another user. Changes nothing.
    pub fn check_rename(&self, user: UserId, new: &str) -> Result<bool> {
        self.record_exists(user)?;
        check_identifier("external_id", new)?;
        let Some(current) = self.external_id(user) else {
            return Err(Error::InvalidArgument(format!(
                "user {user} is anonymous: it has no external_id to rename (identify it instead)"
            )));
        };
        if current == new {
            return Ok(false);
        }
        if let Some(holder) = self.external_holder(new) {
            return Err(Error::DuplicateExternalId {
                external_id: new.into(),
                holder,
            });
        }
        Ok(true)
    }

    /// Gives an identified user another external_id; the old one is free
    /// from then on. Renaming to the external_id it has is a no-op.
    pub fn rename_external_id(&mut self, user: UserId, new: &str) -> Result<()> {
        self.changed();
        if !self.check_rename(user, new)? {
            return Ok(());
        }
        let n = self.base_len();
        let in_memory = if user.0 < n {
            self.extras
                .get(&user.0)
                .is_some_and(|m| m.external_id.is_some())
        } else {
            true
        };
        if in_memory {
            if let Some(old) = self.idents_mut(user).external_id.take() {
                if self.by_external.get(&old) == Some(&user) {
                    self.by_external.remove(&old);
                }
            }
        } else {
            // The snapshot's dictionary names the old one: it no longer
            // counts for this user.
            self.renamed.insert(user.0);
        }
        let ext: Box<str> = new.into();
        self.by_external.insert(ext.clone(), user);
        self.idents_mut(user).external_id = Some(ext);
        Ok(())
    }

    /// Moves every device_id and alias of `source` to `target` (the
    /// platform's merge; the caller then deletes `source`). Returns how
    /// many device_ids and aliases moved. Fails, changing nothing, for an
    /// unknown or deleted user, or `source == target`.
    pub fn move_identifiers(&mut self, source: UserId, target: UserId) -> Result<(usize, usize)> {
        self.changed();
        self.record_exists(source)?;
        self.record_exists(target)?;
        if source == target {
            return Err(Error::InvalidArgument(format!(
                "user {source} cannot be merged into itself"
            )));
        }
        let from = self.get(source).unwrap_or_default();
        let n = self.base_len();
        // The source's in-memory identifiers leave the indexes (its
        // snapshot ones stop counting once it is deleted); its external_id
        // stays its own until then.
        let held = if source.0 < n {
            self.extras.get_mut(&source.0).map(|m| Idents {
                external_id: None,
                devices: std::mem::take(&mut m.devices),
                aliases: std::mem::take(&mut m.aliases),
            })
        } else {
            let m = &mut self.users[(source.0 - n) as usize];
            Some(Idents {
                external_id: None,
                devices: std::mem::take(&mut m.devices),
                aliases: std::mem::take(&mut m.aliases),
            })
        };
        if let Some(m) = held {
            self.unindex(source, &m);
        }
        let moved = (from.devices.len(), from.aliases.len());
        for d in from.devices {
            self.insert_device(target, d.into());
        }
        for (l, nm) in from.aliases {
            self.insert_alias(target, l.into(), nm.into());
        }
        Ok(moved)
    }

    /// How a member list names a user: its external_id, or, for an anonymous
    /// user, its internal id.
    pub fn display_id(&self, user: UserId) -> MemberId<'_> {
        match self.external_id(user) {
            Some(ext) => MemberId::External(ext),
            None => MemberId::Anonymous(user),
        }
    }

    /// Every identifier, for writing a snapshot: `visit(kind, user, key)`
    /// with kind 0 = external_id, 1 = device_id, 2 = alias (as
    /// [`alias_key`]), users ascending within each kind.
    pub fn for_each_identifier(&self, mut visit: impl FnMut(u8, UserId, &[u8])) {
        let mut extras: Vec<(&u32, &Idents)> = self.extras.iter().collect();
        extras.sort_unstable_by_key(|(u, _)| **u);
        let n = self.base_len();
        let base = self.base.as_ref();
        let dicts = [
            base.and_then(Base::externals),
            base.and_then(Base::devices),
            base.and_then(Base::aliases),
        ];
        for (kind, dict) in dicts.iter().enumerate() {
            let kind = kind as u8;
            let mine = |m: &Idents, visit: &mut dyn FnMut(UserId, &[u8]), u: UserId| match kind {
                0 => {
                    if let Some(e) = &m.external_id {
                        visit(u, e.as_bytes());
                    }
                }
                1 => m.devices.iter().for_each(|d| visit(u, d.as_bytes())),
                _ => m
                    .aliases
                    .iter()
                    .for_each(|(l, nm)| visit(u, &alias_key(l, nm))),
            };
            let mut out = |u: UserId, k: &[u8]| visit(kind, u, k);
            // Base entries and extras, merged in user order.
            let mut ex = extras.iter().peekable();
            if let Some(d) = dict {
                // The dictionary was checked whole (its checksum when it
                // was opened, or `verify`): an entry that does not decode
                // ends the walk as it would end a look-up.
                let _ = d.for_each(|u, k| {
                    while let Some((eu, m)) = ex.next_if(|(eu, _)| **eu < u.0) {
                        mine(m, &mut out, UserId(**eu));
                    }
                    if self.base_holds(u, kind == 0) {
                        out(u, k);
                    }
                });
            }
            for (eu, m) in ex {
                mine(m, &mut out, UserId(**eu));
            }
            for (i, m) in self.users.iter().enumerate() {
                mine(m, &mut out, UserId(n + i as u32));
            }
        }
    }

    /// Moves onto `snap`, a snapshot written from `frozen` (an earlier clone
    /// of this registry): users and identifiers `frozen` held are read from
    /// the snapshot from now on; only what came after stays in memory.
    pub fn rebase(&mut self, frozen: &UserRegistry, snap: Arc<Snapshot>) -> Result<()> {
        let same_base = match (&self.base, &frozen.base) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.snap, &b.snap),
            _ => false,
        };
        let (old, new) = (self.base_len(), frozen.len());
        if !same_base || new < old || new > self.len() || snap.users()? != new {
            return Err(Error::Internal(format!(
                "rebasing users onto {}: it holds {} users, the frozen state {new}, the live one {}",
                snap.name(),
                snap.users()?,
                self.len()
            )));
        }
        let mut rest = UserRegistry::on_snapshot(snap)?;
        rest.seed = self.seed;
        // What each user held in memory holds beyond what the snapshot
        // wrote for it. Deleted users hold nothing (the snapshot wrote
        // nothing for them, or their deletion came after and masks what it
        // wrote). Device_ids and aliases of a live user are only appended
        // (a merge appends to its target); an external_id may have been
        // given (identify) or renamed since the freeze.
        let moved = (new - old) as usize;
        let touched: Vec<u32> = self
            .extras
            .keys()
            .copied()
            .chain(old..new)
            .filter(|&u| !self.deleted.contains(u))
            .collect();
        let mut externals: HashMap<u32, (bool, Option<Box<str>>)> = HashMap::new();
        for &u in &touched {
            let (was, is) = (frozen.external_id(UserId(u)), self.external_id(UserId(u)));
            if was != is {
                externals.insert(u, (was.is_some(), is.map(Into::into)));
            }
        }
        let extras = std::mem::take(&mut self.extras);
        let users: Vec<Idents> = self.users.drain(..moved).collect();
        let befores = extras
            .into_iter()
            .map(|(u, now)| (u, now, frozen.extras.get(&u)))
            .chain(
                users
                    .into_iter()
                    .enumerate()
                    .map(|(i, now)| (old + i as u32, now, frozen.users.get(i))),
            );
        for (u, now, before) in befores {
            if self.deleted.contains(u) {
                continue;
            }
            let mut left = now.since(before);
            left.external_id = match externals.remove(&u) {
                None => None,
                Some((was, is)) => {
                    if was {
                        rest.renamed.insert(u);
                    }
                    is
                }
            };
            if !left.is_empty() {
                rest.extras.insert(u, left);
            }
        }
        self.buckets.drain(..moved);
        rest.users = std::mem::take(&mut self.users);
        rest.buckets = std::mem::take(&mut self.buckets);
        rest.deleted = self.deleted.clone();
        // An index entry the freeze held with the same holder is in the
        // snapshot now; one given since, or to another holder since (an
        // identifier freed and given again, or moved by a merge), stays.
        rest.by_external = std::mem::take(&mut self.by_external);
        rest.by_external
            .retain(|k, v| frozen.by_external.get(k) != Some(v));
        rest.by_device = std::mem::take(&mut self.by_device);
        rest.by_device
            .retain(|k, v| frozen.by_device.get(k) != Some(v));
        rest.by_alias = std::mem::take(&mut self.by_alias);
        rest.by_alias
            .retain(|k, v| frozen.by_alias.get(k) != Some(v));
        *self = rest;
        self.changed();
        Ok(())
    }
}

/// A member of a segment as a list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberId<'a> {
    /// An identified user, by its external_id.
    External(Cow<'a, str>),
    /// An anonymous user, by its id.
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
