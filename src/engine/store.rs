//! The object-store tier (`segq serve --store URL`): a copy of the data
//! directory in a bucket, from which a node with an empty (or an older)
//! data directory starts.
//!
//! ```text
//! URL prefix/
//!   server/LEASE                  the primary's lease (format
//!                                 "segq-store-lease", version 1)
//!   server/STATE                  segq.json and the admin token's digest
//!                                 (format "segq-store-server", version 1)
//!   workspaces/NAME/MANIFEST      what makes up the workspace in the bucket
//!                                 (format "segq-store-manifest", version 1)
//!   workspaces/NAME/snap-G-H.segqsnap          a committed snapshot
//!   workspaces/NAME/LOG.S-E-H.part              bytes S..E of the log LOG
//! ```
//!
//! `H` is the first 16 hex digits of the object's SHA-256: an object's key
//! names its contents, so an object is never overwritten, and a manifest
//! never names an object that another upload could change. A log is
//! shipped in pieces (the durable bytes added since the last shipment);
//! once the live log is shipped in `MAX_PIECES - 1` pieces, the shipper
//! seals it (`WorkspaceHandle::seal_log`: writers go on in a fresh
//! `log-N`), so its rest is its last piece and no byte is uploaded twice.
//! Should a log still reach [`MAX_PIECES`] pieces (sealing failed), its
//! whole durable prefix is uploaded as one piece in their place.
//!
//! # Order
//!
//! One shipment ([`Shipper::ship_once`]) uploads, in this order: the
//! server's state (when it changed); then for each workspace, the
//! snapshot its local manifest names (once), the durable bytes of each log
//! after it not shipped yet, and **last** the workspace's `MANIFEST`,
//! naming only objects already uploaded. (The shipping thread uploads a
//! compaction's new snapshot on a thread of its own; until it is in the
//! bucket, the manifests name the previous snapshot and every log since
//! it: see [`Shipper::ship_once`].) A crash (or a failed put) at any
//! point leaves the previous `MANIFEST` in force with every object it
//! names, so the bucket always restores to a state the node acknowledged
//! (the durable prefix of its log at some shipment). What is lost with
//! the machine: the changes acknowledged since the last shipment, at most
//! `ship_interval_ms` of them while the bucket takes puts; none with
//! `durability = "object-store"`, where a write is answered only once a
//! shipment started after its record was durable published a manifest
//! naming it ([`ShipAcks`], held in the engine's [`Fence`]).
//!
//! # Restore
//!
//! [`restore`] runs before a data directory is loaded: for each workspace
//! in the bucket whose `MANIFEST` ends past the local files (no local
//! workspace, or one that is behind), it downloads the snapshot and logs
//! into `DATA/store-restore/`, checks every size and SHA-256, the
//! snapshot's checksums and the logs' records (each log read whole, the
//! seqs running on from the snapshot to the manifest's last seq), and
//! only once every workspace checks out moves them into place. A bucket
//! that does not check out is refused with nothing changed.
//!
//! # Only one writer: the lease
//!
//! A server's primary ([`Engine::open_primary`]) takes `server/LEASE`
//! ([`Lease::take`]) before it restores anything: a conditional put
//! ([`Bucket::put_if`]: `PutMode::Create` when there is none, epoch 1;
//! `PutMode::Update` on the version read when it lapsed or is this node's
//! own, epoch + 1), refused while another node's lease is live (the error
//! names it). The shipper renews it (`Update` on the version it last
//! wrote, the same epoch) at each shipment, publishes only within the
//! lease less a fifth of it ([`Lease::check`]; uploads that outlasted
//! that, a large snapshot, are followed by a renewal before the
//! publication), and writes the epoch into
//! every `MANIFEST` and `STATE` (an appended field; absent, read as 0, in
//! objects written without a lease). A renewal that finds another node's
//! lease, or a `MANIFEST` of a later epoch, loses the lease for good: the
//! engine's [`Fence`] refuses every write (`Error::NotPrimary`, naming the
//! holder) and shipping stops. A store without conditional puts is
//! refused for a primary; a `file://` store makes them under a lock file.
//!
//! Restore rule: the node keeps the epoch it last took in
//! `DATA/store-epoch`. A `MANIFEST` of a later epoch was published by
//! another primary after this node's tenure, so the local files may hold
//! records under the same seqs that the bucket's history does not have:
//! the bucket's workspace replaces the local one whatever the seqs say.
//! Otherwise the seq rule holds (restore what is missing or behind). A
//! `MANIFEST` of an epoch below the live lease is not refused: it is the
//! last state a previous primary published, which the holder republishes
//! with its epoch at its first shipment.
//!
//! # Garbage collection
//!
//! [`Shipper::collect_garbage`] deletes a workspace's objects that neither
//! the `MANIFEST` in the bucket nor the shipment being prepared names, once
//! they are older than `store_retention_secs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::compact::{self, Fs as _, Manifest};
use super::job::Job;
use super::{keys, Config, Engine, LOG_FILE};
use crate::error::{Error, Result};
use crate::log::{FsFile, LogWriter};

/// The manifest object's format name.
pub const MANIFEST_FORMAT: &str = "segq-store-manifest";
/// The server state object's format name.
pub const SERVER_FORMAT: &str = "segq-store-server";
/// The format versions this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The key of the server's state.
pub const SERVER_STATE: &str = "server/STATE";
/// A log's pieces, at most, before its durable prefix is uploaded whole.
pub const MAX_PIECES: usize = 16;
/// Objects larger than this are uploaded in parts.
const MULTIPART_ABOVE: usize = 32 << 20;
/// The size of a part of a multipart upload.
const PART_BYTES: usize = 16 << 20;
/// The folder of the data directory a restore downloads into.
pub const RESTORE_DIR: &str = "store-restore";

/// One object, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the store's prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
}

/// The operations the tier needs of a bucket, relative to a prefix. Every
/// upload goes through [`Bucket::put`], so a test can fail any of them.
pub trait Bucket: Send + Sync {
    /// What to call the store in messages (its URL).
    fn describe(&self) -> String;
    /// Writes the object `key` (whole or not at all).
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    /// Writes the object `key` from bytes `start..end` of `file` (a
    /// snapshot, a log's bytes): by default read whole and
    /// [`Bucket::put`]; a store may upload them in parts instead, never
    /// holding them all in memory.
    fn put_file(&self, key: &str, file: &mut fs::File, start: u64, end: u64) -> Result<()> {
        self.put(key, read_range(file, start, end, key)?)
    }
    /// Reads the object `key`; `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Appends the object `key` to `out`; its size and SHA-256 (hex), or
    /// `None` if there is none. By default [`Bucket::get`] then a write;
    /// a store may stream it instead.
    fn get_into(&self, key: &str, out: &mut fs::File) -> Result<Option<(u64, String)>> {
        use std::io::Write;
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        out.write_all(&bytes).map_err(Error::io_at(key))?;
        Ok(Some((bytes.len() as u64, sha256_hex(&bytes))))
    }
    /// Every object whose key starts with `prefix` (a folder: `a/b`).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes the object `key` (no error if it is gone).
    fn delete(&self, key: &str) -> Result<()>;
    /// Reads the object `key` with its version; `None` if there is none.
    /// By default, refused: the store cannot do conditional puts.
    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>> {
        Err(no_conditional_puts(&self.describe(), key))
    }
    /// Writes the object `key` only if it is as `cond` says (absent, or at
    /// a version), atomically: of two puts with the same condition, one
    /// is [`Conditional::Conflict`]. By default, refused.
    fn put_if(&self, key: &str, bytes: Vec<u8>, cond: &PutIf) -> Result<Conditional> {
        let _ = (bytes, cond);
        Err(no_conditional_puts(&self.describe(), key))
    }
}

fn no_conditional_puts(url: &str, key: &str) -> Error {
    Error::Store {
        location: format!("{url}/{key}"),
        reason: "this store does not do conditional puts, which the primary's lease needs \
                 (so that two primaries never write to one store); for S3-compatible stores \
                 set AWS_CONDITIONAL_PUT=etag and use a store that honours If-Match and If-None-Match"
            .into(),
    }
}

/// The version of an object, as a conditional put checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectVersion {
    /// Its entity tag.
    pub e_tag: Option<String>,
    /// Its version, on stores that version objects.
    pub version: Option<String>,
}

/// What a conditional put requires of the object already there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutIf {
    /// There is none.
    Absent,
    /// It is at this version.
    Matches(ObjectVersion),
}

/// What a conditional put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conditional {
    /// The object was written; its new version.
    Written(ObjectVersion),
    /// The object was not as required: nothing was written.
    Conflict,
}

/// A [`Bucket`] over an `object_store` store, run on a runtime of its own
/// (one worker), so it is called from any thread, in or out of a runtime.
pub struct ObjectBucket {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: object_store::path::Path,
    url: String,
    /// The folder of a `file://` store: its conditional puts are made
    /// under a lock on a file there (the backend has no `PutMode::Update`).
    local: Option<PathBuf>,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ObjectBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBucket")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for ObjectBucket {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn store_err(location: impl Into<String>) -> impl FnOnce(object_store::Error) -> Error {
    let location = location.into();
    move |e| Error::Store {
        location,
        reason: e.to_string(),
    }
}

impl ObjectBucket {
    /// A bucket over `store`, every key under `prefix`.
    pub fn new(
        store: Arc<dyn object_store::ObjectStore>,
        prefix: &str,
        url: &str,
    ) -> Result<ObjectBucket> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("segq-store")
            .enable_all()
            .build()
            .map_err(Error::io_at("<object store runtime>"))?;
        let prefix = object_store::path::Path::parse(prefix).map_err(|e| Error::Store {
            location: url.to_string(),
            reason: format!("the prefix: {e}"),
        })?;
        Ok(ObjectBucket {
            store,
            prefix,
            url: url.to_string(),
            local: None,
            rt: Some(rt),
        })
    }

    /// An empty bucket in memory (`object_store`'s `InMemory`), for tests.
    pub fn in_memory() -> Result<ObjectBucket> {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "memory:///",
        )
    }

    /// The bucket a `--store` URL names: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (also the other forms
    /// `object_store` parses for these), credentials and region from the
    /// usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), or
    /// `file:///absolute/folder` (created if missing).
    pub fn from_url(url: &str) -> Result<ObjectBucket> {
        Self::from_url_with(url, &[])
    }

    /// [`ObjectBucket::from_url`] with options of the store's builder set
    /// over the environment's (`object_store`'s names: `aws_endpoint`,
    /// `aws_allow_http`, `aws_conditional_put`, …; for `s3://`, `gs://`
    /// and `az://` stores only).
    pub fn from_url_with(url: &str, options: &[(&str, &str)]) -> Result<ObjectBucket> {
        use object_store::ObjectStoreScheme as S;
        let bad = |reason: String| Error::Store {
            location: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        let (scheme, path) = S::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn object_store::ObjectStore> = match scheme {
            S::AmazonS3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(store_err(url))?, *v);
                }
                Arc::new(b.build().map_err(store_err(url))?)
            }
            S::GoogleCloudStorage => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(store_err(url))?, *v);
                }
                Arc::new(b.build().map_err(store_err(url))?)
            }
            S::MicrosoftAzure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(store_err(url))?, *v);
                }
                Arc::new(b.build().map_err(store_err(url))?)
            }
            _ if !options.is_empty() => {
                return Err(bad("options are for s3://, gs:// and az:// stores".into()))
            }
            S::Local => {
                let folder = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path".into()))?;
                fs::create_dir_all(&folder).map_err(Error::io_at(&folder))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&folder)
                    .map_err(store_err(url))?;
                let mut b = Self::new(Arc::new(local), "", url)?;
                b.local = Some(folder);
                return Ok(b);
            }
            S::Memory => Arc::new(object_store::memory::InMemory::new()),
            other => return Err(bad(format!("{other:?} stores are not supported"))),
        };
        Self::new(store, path.as_ref(), url)
    }

    /// A conditional put on the local filesystem: the backend creates
    /// atomically but cannot replace on a version, so both are done under
    /// an exclusive lock on `.segq-conditional.lock` in the store's
    /// folder, which every segq process on that folder takes for them.
    fn put_if_local(
        &self,
        folder: &Path,
        key: &str,
        bytes: Vec<u8>,
        cond: &PutIf,
    ) -> Result<Conditional> {
        use object_store::ObjectStoreExt;
        let lock_path = folder.join(".segq-conditional.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io_at(&lock_path))?;
        lock.lock().map_err(Error::io_at(&lock_path))?;
        let store = self.store.clone();
        let path = self.path(key);
        let cond = cond.clone();
        let r = self.run(async move {
            let current = match store.head(&path).await {
                Ok(m) => Some(ObjectVersion {
                    e_tag: m.e_tag,
                    version: m.version,
                }),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let holds = match (&cond, &current) {
                (PutIf::Absent, None) => true,
                (PutIf::Matches(want), Some(have)) => {
                    want.e_tag.is_some() && want.e_tag == have.e_tag
                }
                _ => false,
            };
            if !holds {
                return Ok(Conditional::Conflict);
            }
            let r = store.put(&path, bytes.into()).await?;
            Ok(Conditional::Written(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            }))
        });
        let _ = lock.unlock();
        r?.map_err(store_err(format!("{}/{key}", self.url)))
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Runs `f` on the bucket's runtime and waits for it.
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Internal("the object store's runtime is gone".into()))?;
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| Error::Internal("the object store's runtime stopped".into()))
    }
}

impl Bucket for ObjectBucket {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.path(key);
        let r = self.run(async move {
            if bytes.len() <= MULTIPART_ABOVE {
                return store.put(&path, bytes.into()).await.map(|_| ());
            }
            let mut upload = store.put_multipart(&path).await?;
            for part in bytes.chunks(PART_BYTES) {
                if let Err(e) = upload.put_part(part.to_vec().into()).await {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            }
            match upload.complete().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(e)
                }
            }
        })?;
        r.map_err(store_err(format!("{}/{key}", self.url)))
    }

    fn put_file(&self, key: &str, file: &mut fs::File, mut start: u64, len: u64) -> Result<()> {
        use object_store::ObjectStoreExt;
        if len - start <= MULTIPART_ABOVE as u64 {
            return self.put(key, read_range(file, start, len, key)?);
        }
        let store = self.store.clone();
        let path = self.path(key);
        let at = format!("{}/{key}", self.url);
        let mut upload = self
            .run(async move { store.put_multipart(&path).await })?
            .map_err(store_err(at.clone()))?;
        let mut failed = None;
        while start < len && failed.is_none() {
            let end = (start + PART_BYTES as u64).min(len);
            let part = match read_range(file, start, end, key) {
                Ok(p) => p,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let fut = upload.put_part(part.into());
            if let Err(e) = self.run(fut)? {
                failed = Some(store_err(at.clone())(e));
            }
            start = end;
        }
        if failed.is_none() {
            match self.run(async move {
                let r = upload.complete().await;
                if r.is_err() {
                    let _ = upload.abort().await;
                }
                r
            })? {
                Ok(_) => return Ok(()),
                Err(e) => return Err(store_err(at)(e)),
            }
        }
        let _ = self.run(async move { upload.abort().await });
        Err(failed.unwrap_or_else(|| Error::Internal("a multipart upload failed".into())))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.path(key);
        let r = self.run(async move {
            match store.get(&path).await {
                Ok(g) => g.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        r.map_err(store_err(format!("{}/{key}", self.url)))
    }

    fn get_into(&self, key: &str, out: &mut fs::File) -> Result<Option<(u64, String)>> {
        use futures_util::StreamExt;
        use object_store::ObjectStoreExt;
        use std::io::Write;
        let store = self.store.clone();
        let path = self.path(key);
        let at = format!("{}/{key}", self.url);
        let got = self.run(async move {
            match store.get(&path).await {
                Ok(g) => Ok(Some(g.into_stream())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(mut stream) = got.map_err(store_err(at.clone()))? else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        let mut size = 0u64;
        loop {
            let (chunk, rest) = self.run(async move {
                let c = stream.next().await;
                (c, stream)
            })?;
            stream = rest;
            match chunk {
                None => break,
                Some(Err(e)) => return Err(store_err(at)(e)),
                Some(Ok(bytes)) => {
                    h.update(&bytes);
                    size += bytes.len() as u64;
                    out.write_all(&bytes).map_err(Error::io_at(key))?;
                }
            }
        }
        Ok(Some((size, keys::hex(&h.finalize()))))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        use futures_util::TryStreamExt;
        let store = self.store.clone();
        let path = self.path(prefix);
        let base = self.prefix.clone();
        let r = self.run(async move {
            let metas: Vec<object_store::ObjectMeta> =
                store.list(Some(&path)).try_collect().await?;
            Ok::<_, object_store::Error>(
                metas
                    .into_iter()
                    .map(|m| {
                        let key = match m.location.prefix_match(&base) {
                            Some(parts) => parts
                                .map(|p| p.as_ref().to_string())
                                .collect::<Vec<_>>()
                                .join("/"),
                            None => m.location.to_string(),
                        };
                        ObjectInfo {
                            key,
                            size: m.size,
                            last_modified: m.last_modified,
                        }
                    })
                    .collect(),
            )
        })?;
        r.map_err(store_err(format!("{}/{prefix}", self.url)))
    }

    fn delete(&self, key: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.path(key);
        let r = self.run(async move {
            match store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                r => r,
            }
        })?;
        r.map_err(store_err(format!("{}/{key}", self.url)))
    }

    fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>> {
        use object_store::ObjectStoreExt;
        let store = self.store.clone();
        let path = self.path(key);
        let r = self.run(async move {
            match store.get(&path).await {
                Ok(g) => {
                    let v = ObjectVersion {
                        e_tag: g.meta.e_tag.clone(),
                        version: g.meta.version.clone(),
                    };
                    g.bytes().await.map(|b| Some((b.to_vec(), v)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        r.map_err(store_err(format!("{}/{key}", self.url)))
    }

    fn put_if(&self, key: &str, bytes: Vec<u8>, cond: &PutIf) -> Result<Conditional> {
        if let Some(folder) = &self.local {
            return self.put_if_local(folder, key, bytes, cond);
        }
        let store = self.store.clone();
        let path = self.path(key);
        let mode = match cond {
            PutIf::Absent => object_store::PutMode::Create,
            PutIf::Matches(v) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: v.e_tag.clone(),
                version: v.version.clone(),
            }),
        };
        let r = self.run(async move {
            store
                .put_opts(&path, bytes.into(), object_store::PutOptions::from(mode))
                .await
        })?;
        match r {
            Ok(r) => Ok(Conditional::Written(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Conditional::Conflict),
            Err(object_store::Error::NotImplemented { .. }) => {
                Err(no_conditional_puts(&self.url, key))
            }
            Err(e) => Err(store_err(format!("{}/{key}", self.url))(e)),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    keys::hex(&Sha256::digest(bytes))
}

/// The SHA-256 of bytes `at..len` of `f`, read a MiB at a time.
pub(crate) fn sha256_file(f: &mut fs::File, mut at: u64, len: u64, shown: &str) -> Result<String> {
    let mut h = Sha256::new();
    while at < len {
        let end = (at + (1 << 20)).min(len);
        h.update(read_range(f, at, end, shown)?);
        at = end;
    }
    Ok(keys::hex(&h.finalize()))
}

/// One object a manifest names, with its size and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Its key, relative to the store's prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 of its bytes, in hex.
    pub sha256: String,
}

/// Bytes `start..end` of a log, in one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// The first byte's offset in the log file.
    pub start: u64,
    /// The offset after the last byte.
    pub end: u64,
    /// The object.
    pub object: ObjectRef,
}

/// One log of a workspace, in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLog {
    /// The log file's name in the workspace's folder.
    pub name: String,
    /// Its durable bytes, from offset 0, in order.
    pub pieces: Vec<Piece>,
}

impl StoredLog {
    pub(crate) fn len(&self) -> u64 {
        self.pieces.last().map_or(0, |p| p.end)
    }
}

/// A workspace in the bucket: `workspaces/NAME/MANIFEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The format's version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The workspace's name.
    pub workspace: String,
    /// Grows by one with each manifest published for the workspace.
    pub serial: u64,
    /// The local manifest the snapshot comes with (None before the first
    /// compaction).
    pub manifest: Option<Manifest>,
    /// The snapshot that manifest names.
    pub snapshot: Option<ObjectRef>,
    /// The logs after the snapshot (or from the workspace's creation),
    /// oldest first.
    pub logs: Vec<StoredLog>,
    /// The last seq the logs hold.
    pub end_seq: u64,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// The epoch of the lease its publisher held (0, and absent from the
    /// object: published without a lease, or before leases existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed<T> {
    #[serde(flatten)]
    body: T,
    sha256: String,
}

fn seal<T: Serialize + Clone>(body: &T) -> Result<Vec<u8>> {
    let inner = serde_json::to_vec(body)
        .map_err(|e| Error::Internal(format!("encoding a store object: {e}")))?;
    serde_json::to_vec_pretty(&Sealed {
        body: body.clone(),
        sha256: sha256_hex(&inner),
    })
    .map_err(|e| Error::Internal(format!("encoding a store object: {e}")))
}

fn unseal<T: Serialize + for<'de> Deserialize<'de>>(
    location: &str,
    bytes: &[u8],
    format: &str,
    read: impl Fn(&T) -> (&str, u32),
) -> Result<T> {
    let corrupt = |reason: String| Error::Store {
        location: location.to_string(),
        reason,
    };
    // The format and version first, so a newer object says so.
    let head: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    match (head.get("format"), head.get("version")) {
        (Some(f), Some(v)) if f == format => {
            if v.as_u64() != Some(u64::from(FORMAT_VERSION)) {
                return Err(corrupt(format!(
                    "{format} version {v} is not supported (this build reads version {FORMAT_VERSION})"
                )));
            }
        }
        _ => return Err(corrupt(format!("not a {format} object"))),
    }
    let sealed: Sealed<T> =
        serde_json::from_value(head).map_err(|e| corrupt(format!("not a {format}: {e}")))?;
    let inner = serde_json::to_vec(&sealed.body)
        .map_err(|e| Error::Internal(format!("encoding a store object: {e}")))?;
    let computed = sha256_hex(&inner);
    if computed != sealed.sha256 {
        return Err(corrupt(format!(
            "checksum mismatch: the object says sha256 {}, its contents hash to {computed}",
            sealed.sha256
        )));
    }
    let (f, v) = read(&sealed.body);
    debug_assert!(f == format && v == FORMAT_VERSION);
    Ok(sealed.body)
}

impl StoreManifest {
    /// Encodes the object (JSON, with the SHA-256 of its contents).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(self)
    }

    /// Decodes and checks the object read at `location`: format, version,
    /// checksum, and that every key and file name stays in the workspace.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<StoreManifest> {
        let m: StoreManifest = unseal(location, bytes, MANIFEST_FORMAT, |m: &StoreManifest| {
            (&m.format, m.version)
        })?;
        m.check(location)?;
        Ok(m)
    }

    fn check(&self, location: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Store {
                location: location.to_string(),
                reason,
            })
        };
        if !super::valid_workspace_name(&self.workspace) {
            return bad(format!("{:?} is not a workspace name", self.workspace));
        }
        let folder = workspace_prefix(&self.workspace);
        let key_ok = |k: &str| {
            k.strip_prefix(&folder)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/') && !rest.contains(".."))
        };
        match (&self.manifest, &self.snapshot) {
            (Some(m), Some(s)) => {
                if compact::log_first_seq(&m.log).is_none()
                    || !m.snapshot.starts_with("snap-")
                    || m.snapshot.contains('/')
                {
                    return bad("the manifest names files outside the workspace".into());
                }
                if !key_ok(&s.key) {
                    return bad(format!("the key {:?} leaves the workspace", s.key));
                }
                if self.logs.first().map(|l| l.name.as_str()) != Some(m.log.as_str()) {
                    return bad(format!("the logs do not start at {}", m.log));
                }
            }
            (None, None) => {
                if self.logs.first().map(|l| l.name.as_str()) != Some(LOG_FILE) {
                    return bad(format!(
                        "without a snapshot, the logs must start at {LOG_FILE}"
                    ));
                }
            }
            _ => return bad("a snapshot without its manifest, or the reverse".into()),
        }
        for log in &self.logs {
            if log.name != LOG_FILE && compact::log_first_seq(&log.name).is_none() {
                return bad(format!("{:?} is not a log's name", log.name));
            }
            let mut at = 0;
            for p in &log.pieces {
                if p.start != at || p.end <= p.start || p.object.size != p.end - p.start {
                    return bad(format!(
                        "the pieces of {} do not follow each other",
                        log.name
                    ));
                }
                if !key_ok(&p.object.key) {
                    return bad(format!("the key {:?} leaves the workspace", p.object.key));
                }
                at = p.end;
            }
            if at == 0 {
                return bad(format!("{} has no bytes", log.name));
            }
        }
        Ok(())
    }
}

/// The server's own state in the bucket: `server/STATE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerState {
    /// Always [`SERVER_FORMAT`].
    pub format: String,
    /// The format's version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// `segq.json` as it is on disk (partner_api_keys, limits).
    pub config: String,
    /// `admin-token.sha256`: the hex SHA-256 of the admin token.
    pub admin_token_sha256: String,
    /// The epoch of the lease its writer held (0, and absent from the
    /// object: written without a lease, or before leases existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

impl ServerState {
    /// Encodes the object.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(self)
    }

    /// Decodes and checks the object: format, version, checksum, a
    /// configuration that loads, a digest of 64 hex digits.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<ServerState> {
        let s: ServerState = unseal(location, bytes, SERVER_FORMAT, |s: &ServerState| {
            (&s.format, s.version)
        })?;
        let bad = |reason: String| Error::Store {
            location: location.to_string(),
            reason,
        };
        let c: Config =
            serde_json::from_str(&s.config).map_err(|e| bad(format!("segq.json: {e}")))?;
        c.check(Path::new("segq.json"))
            .map_err(|e| bad(format!("segq.json: {e}")))?;
        if keys::unhex32(&s.admin_token_sha256).is_none() {
            return Err(bad("the admin token's digest is not 64 hex digits".into()));
        }
        Ok(s)
    }
}

fn workspace_prefix(name: &str) -> String {
    format!("workspaces/{name}/")
}

pub(crate) fn manifest_key(name: &str) -> String {
    format!("workspaces/{name}/MANIFEST")
}

/// What [`WorkspaceHandle::ship_view`](super::WorkspaceHandle) hands the
/// shipper: the files of a workspace, open.
pub(crate) struct LocalFiles {
    pub(crate) manifest: Option<Manifest>,
    pub(crate) snapshot: Option<(String, fs::File)>,
    /// Name, open file, durable length.
    pub(crate) logs: Vec<(String, fs::File, u64)>,
    pub(crate) end_seq: u64,
}

fn read_range(f: &mut fs::File, start: u64, end: u64, shown: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.take(end - start).read_to_end(&mut buf))
        .map_err(Error::io_at(shown))?;
    if buf.len() as u64 != end - start {
        return Err(Error::Internal(format!(
            "{shown}: {} bytes where {} were durable",
            buf.len(),
            end - start
        )));
    }
    Ok(buf)
}

/// Counters and gauges of the tier, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct StoreStatus {
    url: String,
    ship_interval_ms: u64,
    /// Objects uploaded.
    pub uploads: AtomicU64,
    /// Uploads (and other bucket operations of a shipment) that failed.
    pub failures: AtomicU64,
    /// Bytes uploaded.
    pub bytes: AtomicU64,
    /// Manifests published.
    pub manifests: AtomicU64,
    /// Objects deleted by garbage collection.
    pub deleted: AtomicU64,
    /// When the last shipment that shipped everything ended (ms since the
    /// epoch; 0: never).
    pub last_success_ms: AtomicI64,
    /// Shipments failed since the last that succeeded.
    pub failing: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// By workspace: the last seq in the bucket, and the last durable one.
    shipped: Mutex<BTreeMap<String, (u64, u64)>>,
    /// The epoch of the lease this node holds (0: shipped without one).
    pub lease_epoch: AtomicU64,
    /// Why the lease was lost, once it was: the node no longer ships or
    /// takes writes.
    lease_lost: Mutex<Option<String>>,
    /// With object-store durability: writes that waited for a shipment.
    pub ack_waits: AtomicU64,
    /// ... of which the shipment did not come in `store_ack_timeout_ms`.
    pub ack_timeouts: AtomicU64,
    /// ... and the milliseconds they waited, all together.
    pub ack_wait_ms: AtomicU64,
}

impl StoreStatus {
    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The last error of a shipment, while shipments fail.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// By workspace: the last seq in the bucket and the last durable seq.
    pub fn shipped(&self) -> BTreeMap<String, (u64, u64)> {
        self.shipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the lease was lost, once this node lost it.
    pub fn lease_lost(&self) -> Option<String> {
        self.lease_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the tier is degraded, if it is: the lease lost, shipments
    /// failing, or none succeeded for ten intervals (at least ten seconds).
    pub fn degraded(&self, now_ms: i64) -> Option<String> {
        if let Some(why) = self.lease_lost() {
            return Some(format!(
                "this node lost the lease of {} and neither ships nor takes writes: {why}",
                self.url
            ));
        }
        if self.failing.load(Ordering::SeqCst) > 0 {
            return Some(format!(
                "shipping to {} fails: {}",
                self.url,
                self.last_error().unwrap_or_default()
            ));
        }
        let last = self.last_success_ms.load(Ordering::SeqCst);
        let limit = (self.ship_interval_ms.saturating_mul(10)).max(10_000) as i64;
        if last > 0 && now_ms - last > limit {
            return Some(format!(
                "nothing shipped to {} for {} s",
                self.url,
                (now_ms - last) / 1000
            ));
        }
        None
    }
}

/// What one shipment did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shipment {
    /// Objects uploaded (the manifests included).
    pub uploads: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Manifests published.
    pub manifests: u64,
}

/// What the shipper knows is in the bucket for one workspace.
#[derive(Default)]
struct Shipped {
    /// Read from the bucket (once) when the workspace is first shipped.
    adopted: bool,
    published: Option<StoreManifest>,
    snapshot: Option<(String, ObjectRef)>,
    logs: BTreeMap<String, Vec<Piece>>,
    /// A compaction's snapshot being uploaded off the shipping thread.
    upload: Option<Upload>,
}

/// A snapshot upload running on a thread of its own: until it is in the
/// bucket, manifests name the previous snapshot and the logs since it.
struct Upload {
    /// The local snapshot's file name.
    local: String,
    /// The start of its object's key (the digest follows, once read):
    /// garbage collection leaves such objects alone meanwhile.
    prefix: String,
    /// The upload; its result is set before the shipping thread is woken.
    job: Job<ObjectRef>,
}

/// Uploads a data directory's files to a bucket, in the order the module
/// documents; see [`Shipper::start`] for the background thread.
pub struct Shipper {
    engine: Arc<Engine>,
    bucket: Arc<dyn Bucket>,
    status: Arc<StoreStatus>,
    retention: Duration,
    server: Mutex<Option<ServerState>>,
    workspaces: Mutex<BTreeMap<String, Shipped>>,
    /// The primary's lease ([`Shipper::with_lease`]): renewed with the
    /// shipments, its epoch written into every manifest and server state.
    lease: Option<Arc<Lease>>,
    /// The least time between two renewals.
    renew_every: Duration,
    /// The shipping thread's signal ([`Shipper::start`]): a finished
    /// snapshot upload wakes it, to publish the manifest naming it.
    wake: std::sync::OnceLock<std::sync::Weak<(Mutex<Signal>, Condvar)>>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("bucket", &self.bucket.describe())
            .finish_non_exhaustive()
    }
}

impl Shipper {
    /// A shipper of `engine`'s data directory to `bucket`, with the
    /// engine's `ship_interval_ms` and `store_retention_secs`. Its status
    /// is attached to the engine (for `/metrics` and `/readyz`).
    ///
    /// Without a lease: for a bucket that no other node writes (tools,
    /// tests). A server's primary uses [`Shipper::with_lease`].
    pub fn new(engine: Arc<Engine>, bucket: Arc<dyn Bucket>) -> Arc<Shipper> {
        Self::build(engine, bucket, None)
    }

    /// A shipper for the primary holding `lease` on `bucket` (taken by
    /// [`Engine::open_primary`]): each shipment renews the lease first
    /// (at most every `store_lease_renew_ms`), nothing is published while
    /// it is not held, and once another node holds it the engine refuses
    /// writes ([`Fence`]) and shipping stops.
    pub fn with_lease(
        engine: Arc<Engine>,
        bucket: Arc<dyn Bucket>,
        lease: Arc<Lease>,
    ) -> Arc<Shipper> {
        lease.set_duration(Duration::from_secs(engine.config().store_lease_secs));
        Self::build(engine, bucket, Some(lease))
    }

    fn build(
        engine: Arc<Engine>,
        bucket: Arc<dyn Bucket>,
        lease: Option<Arc<Lease>>,
    ) -> Arc<Shipper> {
        let status = Arc::new(StoreStatus {
            url: bucket.describe(),
            ship_interval_ms: engine.config().ship_interval_ms,
            lease_epoch: AtomicU64::new(lease.as_ref().map_or(0, |l| l.epoch())),
            ..StoreStatus::default()
        });
        engine.attach_store(status.clone());
        if engine.config().durability == super::Durability::ObjectStore {
            let timeout = Duration::from_millis(engine.config().store_ack_timeout_ms);
            engine
                .fence()
                .hold_acks(Arc::new(ShipAcks::new(timeout, status.clone())));
        }
        Arc::new(Shipper {
            retention: Duration::from_secs(engine.config().store_retention_secs),
            renew_every: Duration::from_millis(renew_every(engine.config())),
            engine,
            bucket,
            status,
            server: Mutex::new(None),
            workspaces: Mutex::new(BTreeMap::new()),
            lease,
            wake: std::sync::OnceLock::new(),
        })
    }

    /// The epoch of the lease written into uploads (0 without a lease).
    pub fn epoch(&self) -> u64 {
        self.lease.as_ref().map_or(0, |l| l.epoch())
    }

    /// Notes that this node lost its lease: it stops shipping and the
    /// engine refuses writes. Returns the error to answer.
    fn lose(&self, why: String) -> Error {
        if let Some(l) = &self.lease {
            l.lose(why.clone());
        }
        self.engine.fence().lose(why.clone());
        let mut lost = self
            .status
            .lease_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if lost.is_none() {
            tracing::error!(store = %self.bucket.describe(), "lost the store's lease: {why}; writes are refused from now on");
            *lost = Some(why.clone());
        }
        Error::NotPrimary { reason: why }
    }

    /// Whether this node may publish now: it holds its lease, renewed
    /// recently enough (or it has none).
    ///
    /// A shipment's uploads may outlast the lease's margin (a large
    /// snapshot on a slow store): the lease is then renewed before
    /// anything is published, by a put conditional on the version this
    /// node last wrote, which fails if another node took it meanwhile.
    fn check_lease(&self) -> Result<()> {
        let Some(l) = &self.lease else {
            return Ok(());
        };
        match l.check() {
            Err(Error::Store { .. }) => {
                match l.renew() {
                    Err(Error::NotPrimary { reason }) => return Err(self.lose(reason)),
                    r => r?,
                }
                l.check()
            }
            r => r,
        }
    }

    /// Renews the lease when it is due; a lease another node took is lost.
    fn renew_lease(&self) -> Result<()> {
        let Some(l) = &self.lease else {
            return Ok(());
        };
        if let Some(why) = l.lost() {
            return Err(Error::NotPrimary { reason: why });
        }
        if !l.due(self.renew_every) {
            return Ok(());
        }
        match l.renew() {
            Err(Error::NotPrimary { reason }) => Err(self.lose(reason)),
            r => r,
        }
    }

    /// The counters and gauges.
    pub fn status(&self) -> &Arc<StoreStatus> {
        &self.status
    }

    fn put(&self, key: &str, bytes: Vec<u8>, done: &mut Shipment) -> Result<()> {
        let n = bytes.len() as u64;
        self.bucket.put(key, bytes)?;
        self.uploaded(n, done);
        Ok(())
    }

    fn uploaded(&self, n: u64, done: &mut Shipment) {
        done.uploads += 1;
        done.bytes += n;
        self.status.uploads.fetch_add(1, Ordering::Relaxed);
        self.status.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Ships everything durable now: the server's state, then each
    /// workspace's new objects and last its manifest. Stops at the first
    /// failure (what was uploaded stays known, so the next shipment goes
    /// on from there). A new snapshot is in the bucket when it returns;
    /// the background thread ([`Shipper::start`]) does not wait for one:
    /// until it is uploaded, its manifests name the previous snapshot and
    /// every log since it (the sealed logs and the fresh one).
    pub fn ship_once(&self) -> Result<Shipment> {
        self.ship(true)
    }

    /// [`Self::ship_once`]; unless `wait`, a compaction's new snapshot is
    /// uploaded on a thread of its own, and until it is in the bucket the
    /// manifests name the previous snapshot and every log since it (the
    /// sealed logs and the fresh one), so that the records shipped meanwhile
    /// are published at once.
    fn ship(&self, wait: bool) -> Result<Shipment> {
        let mut done = Shipment::default();
        let r = self.ship_all(&mut done, wait);
        match &r {
            Ok(()) => {
                self.status.failing.store(0, Ordering::SeqCst);
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                self.status
                    .last_success_ms
                    .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
            }
            Err(e) => {
                self.status.failures.fetch_add(1, Ordering::Relaxed);
                self.status.failing.fetch_add(1, Ordering::SeqCst);
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        r.map(|()| done)
    }

    fn ship_all(&self, done: &mut Shipment, wait: bool) -> Result<()> {
        let acks = self.engine.fence().acks();
        let n = acks.map_or(0, |a| a.begin());
        self.renew_lease()?;
        self.ship_server(done)?;
        for h in self.engine.handles() {
            let Some(mut files) = h.ship_view()? else {
                continue;
            };
            if self.live_log_full(h.name(), &files) {
                // Sealed, its rest goes up as its last piece and the
                // records after it start a fresh log: nothing is uploaded
                // twice. Should it fail, the log is merged as before.
                match h.seal_log() {
                    Ok(Some(_)) => match h.ship_view()? {
                        Some(f) => files = f,
                        None => continue,
                    },
                    Ok(None) => {}
                    Err(e) => tracing::warn!(workspace = h.name(), "sealing the live log: {e}"),
                }
            }
            let end = self.ship_workspace(h.name(), files, done, wait)?;
            if let Some(a) = acks {
                a.publish(n, h.name(), end);
            }
        }
        Ok(())
    }

    /// Whether the log in use has durable bytes not shipped and is in
    /// `MAX_PIECES - 1` pieces already: one more would make it merge.
    fn live_log_full(&self, name: &str, files: &LocalFiles) -> bool {
        let Some((log, _, len)) = files.logs.last() else {
            return false;
        };
        let all = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        all.get(name)
            .and_then(|s| s.logs.get(log.as_str()))
            .is_some_and(|pieces| {
                pieces.len() + 1 >= MAX_PIECES && pieces.last().map_or(0, |p| p.end) < *len
            })
    }

    fn ship_server(&self, done: &mut Shipment) -> Result<()> {
        let dir = self.engine.dir();
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(Error::io_at(&p))
        };
        let state = ServerState {
            format: SERVER_FORMAT.into(),
            version: FORMAT_VERSION,
            config: read("segq.json")?,
            admin_token_sha256: read("admin-token.sha256")?.trim().to_string(),
            epoch: self.epoch(),
        };
        let mut shipped = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if shipped.is_none() {
            if let Some(bytes) = self.bucket.get(SERVER_STATE)? {
                *shipped = ServerState::from_bytes(SERVER_STATE, &bytes).ok();
            }
        }
        if shipped.as_ref() != Some(&state) {
            self.check_lease()?;
            self.put(SERVER_STATE, state.to_bytes()?, done)?;
            *shipped = Some(state);
        }
        Ok(())
    }

    /// Reads what the bucket holds of a workspace the first time it is
    /// shipped: the objects whose bytes equal the local files' are not
    /// uploaded again.
    fn adopt(&self, name: &str, files: &mut LocalFiles, s: &mut Shipped) -> Result<()> {
        let key = manifest_key(name);
        let Some(bytes) = self.bucket.get(&key)? else {
            return Ok(());
        };
        let Ok(m) = StoreManifest::from_bytes(&key, &bytes) else {
            // Damaged: published over by this shipment.
            return Ok(());
        };
        if self.lease.is_some() && m.epoch > self.epoch() {
            // A later primary published it: this one lost the lease.
            return Err(self.lose(format!(
                "workspace {name}'s manifest in the bucket was published under lease epoch {}, \
                 after this node's epoch {}",
                m.epoch,
                self.epoch()
            )));
        }
        if let (Some(obj), Some((local, f))) = (&m.snapshot, files.snapshot.as_mut()) {
            if m.manifest.as_ref().map(|x| &x.snapshot) == Some(local) {
                let len = f.metadata().map_err(Error::io_at(local.as_str()))?.len();
                if len == obj.size && sha256_file(f, 0, len, local)? == obj.sha256 {
                    s.snapshot = Some((local.clone(), obj.clone()));
                }
            }
        }
        for log in &m.logs {
            let Some((_, f, len)) = files.logs.iter_mut().find(|(n, _, _)| *n == log.name) else {
                continue;
            };
            let mut kept = Vec::new();
            for p in &log.pieces {
                if p.end > *len || sha256_file(f, p.start, p.end, &log.name)? != p.object.sha256 {
                    break;
                }
                kept.push(p.clone());
            }
            if !kept.is_empty() {
                s.logs.insert(log.name.clone(), kept);
            }
        }
        s.published = Some(m);
        Ok(())
    }

    /// Ships one workspace; returns the last seq the bucket's manifest
    /// names.
    fn ship_workspace(
        &self,
        name: &str,
        mut files: LocalFiles,
        done: &mut Shipment,
        wait: bool,
    ) -> Result<u64> {
        let mut all = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry(name.to_string()).or_default();
        if !s.adopted {
            self.adopt(name, &mut files, s)?;
            s.adopted = true;
        }
        let folder = workspace_prefix(name);
        // 1. The snapshot, once (see `Self::ship` for a new one).
        let mut uploading = false;
        let snapshot = match (&files.manifest, files.snapshot.take()) {
            (Some(m), Some((local, f))) => {
                if s.snapshot.as_ref().map(|(n, _)| n) != Some(&local) {
                    let prefix = format!("{folder}snap-{:020}-", m.generation);
                    match self.upload_snapshot(s, prefix, &local, f, wait, done)? {
                        Some(obj) => s.snapshot = Some((local, obj)),
                        None => uploading = true,
                    }
                }
                match uploading {
                    true => None,
                    false => s.snapshot.as_ref().map(|(_, o)| o.clone()),
                }
            }
            _ => None,
        };
        // 2. The logs' durable bytes not shipped yet.
        let mut logs = Vec::with_capacity(files.logs.len());
        for (log, f, len) in files.logs.iter_mut() {
            let mut pieces = s.logs.get(log.as_str()).cloned().unwrap_or_default();
            let mut covered = pieces.last().map_or(0, |p| p.end);
            if covered > *len {
                // Never for a durable prefix; ship the log afresh.
                pieces.clear();
                covered = 0;
            }
            if covered < *len {
                let start = if pieces.len() >= MAX_PIECES {
                    0
                } else {
                    covered
                };
                let sha = sha256_file(f, start, *len, log)?;
                let piece = Piece {
                    start,
                    end: *len,
                    object: ObjectRef {
                        key: format!("{folder}{log}.{start:020}-{len:020}-{}.part", &sha[..16]),
                        size: *len - start,
                        sha256: sha,
                    },
                };
                self.bucket.put_file(&piece.object.key, f, start, *len)?;
                self.uploaded(*len - start, done);
                if start == 0 {
                    pieces.clear();
                }
                pieces.push(piece);
                s.logs.insert(log.clone(), pieces.clone());
            }
            if !pieces.is_empty() {
                logs.push(StoredLog {
                    name: log.clone(),
                    pieces,
                });
            }
        }
        let names: BTreeSet<&str> = files.logs.iter().map(|(n, _, _)| n.as_str()).collect();
        s.logs.retain(|n, _| names.contains(n.as_str()));
        if logs.len() != files.logs.len() {
            // A log with no durable byte yet (cannot be: every log has
            // its header, durable when created).
            return Err(Error::Internal(format!(
                "workspace {name}: a log has no durable bytes"
            )));
        }
        // 3. Last, the manifest: while the snapshot uploads, the previous
        //    one's, with the logs that reach from it to the local ones.
        let chain = match uploading {
            false => Some((files.manifest.clone(), snapshot, logs)),
            // None: the sealed logs' rest never reached the bucket, so the
            // records are published with the snapshot.
            true => s.published.as_ref().and_then(|p| interim(p, &files, logs)),
        };
        if let Some((manifest, snapshot, logs)) = chain {
            let m = StoreManifest {
                format: MANIFEST_FORMAT.into(),
                version: FORMAT_VERSION,
                workspace: name.to_string(),
                serial: s.published.as_ref().map_or(1, |p| p.serial + 1),
                manifest,
                snapshot,
                logs,
                end_seq: files.end_seq,
                published_at: Utc::now(),
                epoch: self.epoch(),
            };
            let same = s.published.as_ref().is_some_and(|p| {
                p.manifest == m.manifest
                    && p.snapshot == m.snapshot
                    && p.logs == m.logs
                    && p.end_seq == m.end_seq
                    && p.epoch == m.epoch
            });
            if !same {
                let key = manifest_key(name);
                self.check_lease()?;
                let bytes = m.to_bytes()?;
                self.put(&key, bytes, done)?;
                done.manifests += 1;
                self.status.manifests.fetch_add(1, Ordering::Relaxed);
                s.published = Some(m);
            }
        }
        let in_bucket = s.published.as_ref().map_or(0, |p| p.end_seq);
        self.status
            .shipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (in_bucket, files.end_seq));
        Ok(in_bucket)
    }

    /// The object of a compaction's new snapshot (`local`, open as `file`,
    /// its key starting with `prefix`), once uploaded: `None` while its
    /// upload runs (started here if none does). An upload of an older
    /// snapshot still running is let finish first, and its object is left
    /// to garbage collection. With `wait`, waits for the upload.
    fn upload_snapshot(
        &self,
        s: &mut Shipped,
        prefix: String,
        local: &str,
        file: fs::File,
        wait: bool,
        done: &mut Shipment,
    ) -> Result<Option<ObjectRef>> {
        let mut file = Some(file);
        loop {
            match s.upload.take() {
                Some(u) => {
                    let mine = u.local == local;
                    match u.job.result(wait) {
                        Ok(r) if mine => {
                            let obj = r?;
                            self.uploaded(obj.size, done);
                            return Ok(Some(obj));
                        }
                        Ok(_) => {}
                        Err(job) => {
                            s.upload = Some(Upload { job, ..u });
                            return Ok(None);
                        }
                    }
                }
                None => {
                    let Some(mut f) = file.take() else {
                        return Err(Error::Internal("a snapshot uploaded twice".into()));
                    };
                    let bucket = self.bucket.clone();
                    let wake = self.wake.get().cloned();
                    let (key, shown) = (prefix.clone(), local.to_string());
                    let job = Job::spawn(
                        "segq-ship-snapshot",
                        move || upload_file(&*bucket, &key, &mut f, &shown),
                        move || {
                            if let Some(sig) = wake.and_then(|w| w.upgrade()) {
                                ship_soon(&sig);
                            }
                        },
                    )?;
                    s.upload = Some(Upload {
                        local: local.to_string(),
                        prefix: prefix.clone(),
                        job,
                    });
                    if !wait {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Deletes every object of a shipped workspace that neither its
    /// `MANIFEST` in the bucket nor this shipper's next shipment names,
    /// once it was written more than the retention period before `now`.
    /// Returns how many were deleted.
    pub fn collect_garbage(&self, now: DateTime<Utc>) -> Result<u64> {
        self.check_lease()?;
        let names: Vec<String> = self
            .workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let retention = chrono::Duration::from_std(self.retention)
            .unwrap_or_else(|_| chrono::Duration::days(36_500));
        let mut deleted = 0;
        for name in names {
            let mut needed: BTreeSet<String> = BTreeSet::new();
            let key = manifest_key(&name);
            needed.insert(key.clone());
            // What the bucket's manifest names, read now: a damaged one
            // stops the collection (nothing is deleted on a guess).
            if let Some(bytes) = self.bucket.get(&key)? {
                let m = StoreManifest::from_bytes(&key, &bytes)?;
                needed.extend(referenced(&m));
            }
            let listed = self.bucket.list(&workspace_prefix(&name))?;
            // Under the lock: an upload about to be named is in `s`.
            let all = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = all.get(&name) {
                if let Some(p) = &s.published {
                    needed.extend(referenced(p));
                }
                if let Some((_, o)) = &s.snapshot {
                    needed.insert(o.key.clone());
                }
                for pieces in s.logs.values() {
                    needed.extend(pieces.iter().map(|p| p.object.key.clone()));
                }
            }
            let uploading = all
                .get(&name)
                .and_then(|s| s.upload.as_ref())
                .map(|u| u.prefix.clone());
            drop(all);
            for o in listed {
                let in_flight = uploading.as_ref().is_some_and(|p| o.key.starts_with(p));
                if !needed.contains(&o.key) && !in_flight && o.last_modified + retention <= now {
                    self.bucket.delete(&o.key)?;
                    deleted += 1;
                    self.status.deleted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(deleted)
    }

    /// Ships every `ship_interval_ms` (sooner after [`ShipperThread::ship_now`]),
    /// on a thread of its own; after a failure, waits twice as long each
    /// time (at most a minute) before trying again; collects garbage
    /// every minute. [`ShipperThread::stop`] ships a last time.
    pub fn start(self: &Arc<Self>) -> ShipperThread {
        let signal = Arc::new((Mutex::new(Signal::default()), Condvar::new()));
        let _ = self.wake.set(Arc::downgrade(&signal));
        if let Some(acks) = self.engine.fence().acks() {
            let sig = Arc::downgrade(&signal);
            let _ = acks.wake.set(Box::new(move || {
                if let Some(sig) = sig.upgrade() {
                    ship_soon(&sig);
                }
            }));
        }
        let me = self.clone();
        let sig = signal.clone();
        let interval = Duration::from_millis(self.engine.config().ship_interval_ms.max(1));
        let thread = std::thread::Builder::new()
            .name("segq-ship".into())
            .spawn(move || me.run(interval, &sig))
            .expect("spawning the shipping thread");
        ShipperThread {
            shipper: self.clone(),
            signal,
            thread: Some(thread),
        }
    }

    fn run(&self, interval: Duration, signal: &(Mutex<Signal>, Condvar)) {
        let mut wait = interval;
        let mut last_gc = std::time::Instant::now();
        loop {
            {
                let (lock, cv) = signal;
                let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
                let deadline = std::time::Instant::now() + wait;
                // Writes waiting for a shipment wake it, but not while the
                // store fails (the backoff stands: they time out).
                let backing_off = wait > interval;
                while !(s.stop || (s.now && !backing_off)) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    s = cv
                        .wait_timeout(s, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if s.stop {
                    return;
                }
                s.now = false;
            }
            match self.ship(false) {
                Ok(_) => wait = interval,
                Err(e) => {
                    tracing::warn!(store = %self.bucket.describe(), "shipping failed: {e}");
                    wait = (wait * 2).min(Duration::from_secs(60)).max(interval);
                }
            }
            if last_gc.elapsed() >= Duration::from_secs(60) {
                last_gc = std::time::Instant::now();
                if let Err(e) = self.collect_garbage(Utc::now()) {
                    tracing::warn!(store = %self.bucket.describe(), "garbage collection: {e}");
                }
            }
        }
    }
}

/// The least time between two lease renewals: `store_lease_renew_ms`;
/// 0 renews at every shipment, but with object-store durability (where
/// writes wake shipments, many a second) at most every `ship_interval_ms`,
/// so that a write does not wait for a renewal too.
fn renew_every(c: &Config) -> u64 {
    match (c.store_lease_renew_ms, c.durability) {
        (0, super::Durability::ObjectStore) => c.ship_interval_ms,
        (ms, _) => ms,
    }
}

/// Uploads a whole file as the object `prefix` + the first 16 hex digits
/// of its SHA-256 + `.segqsnap`.
fn upload_file(
    bucket: &dyn Bucket,
    prefix: &str,
    f: &mut fs::File,
    shown: &str,
) -> Result<ObjectRef> {
    let len = f.metadata().map_err(Error::io_at(shown))?.len();
    let sha = sha256_file(f, 0, len, shown)?;
    let obj = ObjectRef {
        key: format!("{prefix}{}.segqsnap", &sha[..16]),
        size: len,
        sha256: sha,
    };
    bucket.put_file(&obj.key, f, 0, len)?;
    Ok(obj)
}

/// The manifest to publish while a compaction's snapshot uploads: the
/// previous snapshot (with its local manifest) from `published`, its logs
/// up to the oldest local one, then `logs` (the local logs as shipped).
/// `None` unless `published` names the oldest local log, after the logs
/// sealed before it: those were shipped whole, as a log is shipped to
/// its end once another follows it. (A shipment that saw a log switched
/// may have come only after the compaction removed the sealed logs.)
fn interim(
    published: &StoreManifest,
    files: &LocalFiles,
    logs: Vec<StoredLog>,
) -> Option<(Option<Manifest>, Option<ObjectRef>, Vec<StoredLog>)> {
    if published.manifest == files.manifest {
        return None;
    }
    let oldest = &files.logs.first()?.0;
    Some((
        published.manifest.clone(),
        published.snapshot.clone(),
        continued(&published.logs, oldest, logs)?,
    ))
}

/// A chain of logs that goes on from `older` (a snapshot generation's)
/// into a newer generation's `logs`, whose first is `first`: the logs of
/// `older` before the one named `first`, then `logs`. `None` when `older`
/// does not name `first`.
pub(crate) fn continued(
    older: &[StoredLog],
    first: &str,
    logs: impl IntoIterator<Item = StoredLog>,
) -> Option<Vec<StoredLog>> {
    let k = older.iter().position(|l| l.name == first)?;
    let mut chain = older[..k].to_vec();
    chain.extend(logs);
    Some(chain)
}

fn referenced(m: &StoreManifest) -> impl Iterator<Item = String> + '_ {
    m.snapshot.iter().map(|o| o.key.clone()).chain(
        m.logs
            .iter()
            .flat_map(|l| l.pieces.iter().map(|p| p.object.key.clone())),
    )
}

#[derive(Default)]
struct Signal {
    stop: bool,
    now: bool,
}

/// Wakes the shipping thread to ship once its wait allows (at once, but
/// during a failure's backoff).
fn ship_soon(signal: &(Mutex<Signal>, Condvar)) {
    let (lock, cv) = signal;
    lock.lock().unwrap_or_else(|p| p.into_inner()).now = true;
    cv.notify_all();
}

/// The background shipping thread of [`Shipper::start`].
pub struct ShipperThread {
    shipper: Arc<Shipper>,
    signal: Arc<(Mutex<Signal>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ShipperThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperThread").finish_non_exhaustive()
    }
}

impl ShipperThread {
    /// Wakes the thread to ship now (once the backoff is over, while
    /// shipments fail).
    pub fn ship_now(&self) {
        ship_soon(&self.signal);
    }

    /// Stops the thread and ships a last time (at shutdown, once the
    /// logs are synced), trying a few times; once that shipment went
    /// through, gives up the lease ([`Lease::release`]) so that another
    /// node may take over at once (if it did not, the lease lapses).
    pub fn stop(mut self) -> Result<Shipment> {
        {
            let (lock, cv) = &*self.signal;
            lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut last = None;
        for attempt in 0..3 {
            match self.shipper.ship_once() {
                Ok(s) => {
                    if let Some(l) = &self.shipper.lease {
                        // Everything is shipped: the next primary may
                        // start at once.
                        if let Err(e) = l.release() {
                            tracing::warn!("giving up the store's lease: {e}");
                        }
                    }
                    return Ok(s);
                }
                Err(e @ Error::NotPrimary { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        Err(last.unwrap_or_else(|| Error::Internal("no shipment".into())))
    }
}

impl Drop for ShipperThread {
    fn drop(&mut self) {
        let (lock, cv) = &*self.signal;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lease object's format name.
pub const LEASE_FORMAT: &str = "segq-store-lease";
/// The key of the primary's lease.
pub const LEASE: &str = "server/LEASE";
/// The file of the data directory holding the epoch of the lease this
/// node last took.
pub const EPOCH_FILE: &str = "store-epoch";
/// The file of the data directory holding the node's id.
pub const NODE_FILE: &str = "node-id";

/// The primary's lease: `server/LEASE`, written only by conditional puts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// Always [`LEASE_FORMAT`].
    pub format: String,
    /// The format's version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The holder's node id (its data directory's `node-id`).
    pub node: String,
    /// Grows by one with each take (a start-up or a takeover), never with
    /// a renewal.
    pub epoch: u64,
    /// When this holder took it.
    pub taken_at: DateTime<Utc>,
    /// When it was last renewed.
    pub renewed_at: DateTime<Utc>,
    /// When it lapses unless renewed before.
    pub expires_at: DateTime<Utc>,
}

impl LeaseRecord {
    /// Encodes the object.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(self)
    }

    /// Decodes and checks the object: format, version, checksum, a node
    /// id and an epoch of at least 1.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<LeaseRecord> {
        let l: LeaseRecord = unseal(location, bytes, LEASE_FORMAT, |l: &LeaseRecord| {
            (&l.format, l.version)
        })?;
        if l.node.is_empty() || l.epoch == 0 {
            return Err(Error::Store {
                location: location.to_string(),
                reason: "a lease without a node or an epoch".into(),
            });
        }
        Ok(l)
    }

    fn holder(&self) -> String {
        format!(
            "node {} holds it (epoch {}, renewed {}, expires {})",
            self.node,
            self.epoch,
            self.renewed_at.to_rfc3339(),
            self.expires_at.to_rfc3339()
        )
    }
}

/// Refuses writes once this node is no longer the store's primary. Every
/// write of the engine checks it ([`Engine::fence`]); with object-store
/// durability, every write also waits behind it for its shipment
/// (`Fence::shipped`).
#[derive(Debug, Default)]
pub struct Fence {
    lost: Mutex<Option<String>>,
    acks: std::sync::OnceLock<Arc<ShipAcks>>,
}

impl Fence {
    /// `NotPrimary` once the lease was lost.
    pub fn check(&self) -> Result<()> {
        match self.lost() {
            None => Ok(()),
            Some(reason) => Err(Error::NotPrimary { reason }),
        }
    }

    /// Why the lease was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refuses every write from now on, saying `why` in place of any
    /// reason before (a read replica names the primary it last saw).
    pub(crate) fn refuse_with(&self, why: String) {
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Refuses every write from now on (the first reason stays). Writes
    /// waiting for a shipment that will not come are told at once.
    pub fn lose(&self, why: String) {
        {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            if lost.is_none() {
                *lost = Some(why);
            }
        }
        if let Some(acks) = self.acks.get() {
            acks.notify();
        }
    }

    /// Holds acknowledgments until shipped (`durability = "object-store"`)
    /// from now on: set once, by the primary's shipper.
    pub(crate) fn hold_acks(&self, acks: Arc<ShipAcks>) {
        let _ = self.acks.set(acks);
    }

    /// The acknowledgments held until shipped, with object-store
    /// durability.
    pub fn acks(&self) -> Option<&Arc<ShipAcks>> {
        self.acks.get()
    }

    /// Returns once workspace `name`'s durable record `seq` is in the
    /// object store, with object-store durability (at once without it).
    /// Fails with `NotShipped` past `store_ack_timeout_ms`, and with
    /// `NotPrimary` once the lease is lost (the record will never be
    /// shipped from this node).
    pub(crate) fn shipped(&self, name: &str, seq: u64) -> Result<()> {
        match self.acks.get() {
            None => Ok(()),
            Some(acks) => acks.wait(name, seq, self),
        }
    }
}

/// Acknowledgments held until shipped (`durability = "object-store"`): a
/// write whose record is durable on this node waits until a shipment that
/// started after it published a manifest naming it; the write wakes the
/// shipper, so it waits for one shipment (group commit: every write that
/// came during a shipment rides the next), not for `ship_interval_ms`.
pub struct ShipAcks {
    timeout: Duration,
    status: Arc<StoreStatus>,
    state: Mutex<AckState>,
    published: Condvar,
    wake: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct AckState {
    /// The shipments started.
    started: u64,
    /// By workspace: the shipment that last published it, and the last
    /// seq it named.
    published: std::collections::HashMap<String, (u64, u64)>,
}

impl std::fmt::Debug for ShipAcks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipAcks")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ShipAcks {
    fn new(timeout: Duration, status: Arc<StoreStatus>) -> ShipAcks {
        ShipAcks {
            timeout,
            status,
            state: Mutex::new(AckState::default()),
            published: Condvar::new(),
            wake: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        let _held = self.lock();
        self.published.notify_all();
    }

    /// A shipment starts: its number. What is durable now is in it.
    fn begin(&self) -> u64 {
        let mut st = self.lock();
        st.started += 1;
        st.started
    }

    /// Shipment `n` published workspace `name` up to `end_seq`.
    fn publish(&self, n: u64, name: &str, end_seq: u64) {
        let mut st = self.lock();
        st.published.insert(name.to_string(), (n, end_seq));
        self.published.notify_all();
    }

    fn wait(&self, name: &str, seq: u64, fence: &Fence) -> Result<()> {
        let started = std::time::Instant::now();
        let deadline = started + self.timeout;
        let mut st = self.lock();
        // A shipment already running may have read the logs before this
        // record was durable: only one started after now is sure to hold it.
        let after = st.started;
        self.status.ack_waits.fetch_add(1, Ordering::Relaxed);
        if let Some(wake) = self.wake.get() {
            wake();
        }
        let r = loop {
            if st
                .published
                .get(name)
                .is_some_and(|&(n, end)| n > after && end >= seq)
            {
                break Ok(());
            }
            if let Some(reason) = fence.lost() {
                break Err(Error::NotPrimary { reason });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.status.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                break Err(Error::NotShipped {
                    name: name.to_string(),
                    store: self.status.url.clone(),
                    waited_ms: self.timeout.as_millis() as u64,
                });
            }
            st = self
                .published
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(st);
        self.status
            .ack_wait_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        r
    }
}

struct LeaseState {
    version: ObjectVersion,
    taken_at: DateTime<Utc>,
    /// When the holder last renewed it (by this process's clock).
    renewed: std::time::Instant,
    /// Until when this node publishes: the written expiry less a fifth of
    /// the lease (the margin for clocks that disagree).
    valid_until: std::time::Instant,
    lost: Option<String>,
}

/// The lease this node holds on a bucket: taken at start-up
/// ([`Lease::take`]), renewed by the shipper.
pub struct Lease {
    bucket: Arc<dyn Bucket>,
    node: String,
    epoch: u64,
    duration: Mutex<Duration>,
    state: Mutex<LeaseState>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn lease_record(node: &str, epoch: u64, taken_at: DateTime<Utc>, d: Duration) -> LeaseRecord {
    let now = Utc::now();
    LeaseRecord {
        format: LEASE_FORMAT.into(),
        version: FORMAT_VERSION,
        node: node.to_string(),
        epoch,
        taken_at,
        renewed_at: now,
        expires_at: now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
    }
}

fn valid_until(from: std::time::Instant, d: Duration) -> std::time::Instant {
    from + d - d / 5
}

impl Lease {
    /// Takes the lease of `bucket` for `node`, for `duration`: when there
    /// is none (epoch 1), when it lapsed, or when it is `node`'s own (its
    /// previous process: the data directory's lock says it is gone), with
    /// the epoch one more than the last. Refuses, naming the holder, while
    /// another node holds it; refuses a store without conditional puts.
    pub fn take(bucket: Arc<dyn Bucket>, node: &str, duration: Duration) -> Result<Lease> {
        let at = format!("{}/{LEASE}", bucket.describe());
        let current = bucket.get_versioned(LEASE)?;
        let now = Utc::now();
        let (cond, epoch) = match current {
            None => (PutIf::Absent, 1),
            Some((bytes, version)) => {
                let held = LeaseRecord::from_bytes(&at, &bytes)?;
                if held.node != node && held.expires_at > now {
                    return Err(Error::Store {
                        location: at,
                        reason: format!(
                            "another primary writes to this store: {}; a node takes it over \
                             only once it lapses",
                            held.holder()
                        ),
                    });
                }
                (PutIf::Matches(version), held.epoch + 1)
            }
        };
        let started = std::time::Instant::now();
        let record = lease_record(node, epoch, now, duration);
        match bucket.put_if(LEASE, record.to_bytes()?, &cond)? {
            Conditional::Written(version) => Ok(Lease {
                bucket,
                node: node.to_string(),
                epoch,
                duration: Mutex::new(duration),
                state: Mutex::new(LeaseState {
                    version,
                    taken_at: now,
                    renewed: started,
                    valid_until: valid_until(started, duration),
                    lost: None,
                }),
            }),
            Conditional::Conflict => {
                let holder = match bucket.get(LEASE)? {
                    Some(b) => LeaseRecord::from_bytes(&at, &b)?.holder(),
                    None => "it was deleted".into(),
                };
                Err(Error::Store {
                    location: at,
                    reason: format!("another node took the lease at the same time: {holder}"),
                })
            }
        }
    }

    /// The node holding it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sets how long each renewal holds it for.
    pub fn set_duration(&self, d: Duration) {
        *self.duration.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why it was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.state().lost.clone()
    }

    fn lose(&self, why: String) {
        let mut st = self.state();
        if st.lost.is_none() {
            st.lost = Some(why);
        }
    }

    /// Whether a renewal is due: `every` passed since the last one (or
    /// half of the validity left is gone, whichever is sooner).
    pub fn due(&self, every: Duration) -> bool {
        let st = self.state();
        let d = *self.duration.lock().unwrap_or_else(|p| p.into_inner());
        st.renewed.elapsed() >= every.min(d / 4)
    }

    /// Renews it, conditionally on the version this node last wrote. Another
    /// node's lease in its place is `NotPrimary` naming it (and the lease
    /// is lost for good); a failed put is an error to try again.
    pub fn renew(&self) -> Result<()> {
        let at = format!("{}/{LEASE}", self.bucket.describe());
        let d = *self.duration.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.state();
        if let Some(reason) = &st.lost {
            return Err(Error::NotPrimary {
                reason: reason.clone(),
            });
        }
        let started = std::time::Instant::now();
        let record = lease_record(&self.node, self.epoch, st.taken_at, d);
        let cond = PutIf::Matches(st.version.clone());
        match self.bucket.put_if(LEASE, record.to_bytes()?, &cond)? {
            Conditional::Written(v) => {
                st.version = v;
                st.renewed = started;
                st.valid_until = valid_until(started, d);
                Ok(())
            }
            Conditional::Conflict => {
                let (now, version) = match self.bucket.get_versioned(LEASE)? {
                    None => (None, None),
                    Some((b, v)) => (Some(LeaseRecord::from_bytes(&at, &b)?), Some(v)),
                };
                match (now, version) {
                    // Its own record (a put retried after it went through).
                    (Some(l), Some(v)) if l.node == self.node && l.epoch == self.epoch => {
                        st.version = v;
                        st.renewed = started;
                        st.valid_until = valid_until(started, d);
                        Ok(())
                    }
                    (held, _) => {
                        let why = match held {
                            Some(l) => format!(
                                "the lease of {} was taken over: {}",
                                self.bucket.describe(),
                                l.holder()
                            ),
                            None => format!("the lease of {} was deleted", self.bucket.describe()),
                        };
                        st.lost = Some(why.clone());
                        Err(Error::NotPrimary { reason: why })
                    }
                }
            }
        }
    }

    /// Gives it up (at a clean shutdown, after the last shipment): the
    /// record stays, with this epoch, expiring now, so that another node
    /// takes it over at once. Nothing is published under it afterwards.
    pub fn release(&self) -> Result<()> {
        let mut st = self.state();
        if st.lost.is_some() {
            return Ok(());
        }
        let mut record = lease_record(&self.node, self.epoch, st.taken_at, Duration::ZERO);
        record.expires_at = record.renewed_at;
        let cond = PutIf::Matches(st.version.clone());
        st.lost = Some(format!(
            "this node gave up the lease of {}",
            self.bucket.describe()
        ));
        st.valid_until = std::time::Instant::now();
        match self.bucket.put_if(LEASE, record.to_bytes()?, &cond)? {
            Conditional::Written(v) => {
                st.version = v;
                Ok(())
            }
            // Taken over already: nothing to give up.
            Conditional::Conflict => Ok(()),
        }
    }

    /// Whether this node may publish now: not lost, and renewed within
    /// the lease less its margin.
    pub fn check(&self) -> Result<()> {
        let st = self.state();
        if let Some(reason) = &st.lost {
            return Err(Error::NotPrimary {
                reason: reason.clone(),
            });
        }
        if std::time::Instant::now() >= st.valid_until {
            return Err(Error::Store {
                location: format!("{}/{LEASE}", self.bucket.describe()),
                reason: format!(
                    "the lease was not renewed for {} s: nothing is published until it is",
                    st.renewed.elapsed().as_secs()
                ),
            });
        }
        Ok(())
    }
}

/// The node id of the data directory `data` (its `node-id` file, made
/// with a random id the first time). The caller holds its `LOCK`.
pub fn node_id(data: &Path) -> Result<String> {
    let p = data.join(NODE_FILE);
    match fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io_at(&p)(e)),
    }
    let id = format!("node-{}", keys::random_hex(8));
    super::write_atomically(&p, id.as_bytes())?;
    Ok(id)
}

/// The epoch of the lease this data directory's node last took (0: none).
pub fn local_epoch(data: &Path) -> Result<u64> {
    let p = data.join(EPOCH_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => s.trim().parse().map_err(|_| Error::Corrupt {
            path: p.clone(),
            reason: format!("not an epoch: \"{}\"", crate::error::Clip(s.trim())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io_at(&p)(e)),
    }
}

/// Notes (durably) the epoch of the lease this node took.
pub fn write_local_epoch(data: &Path, epoch: u64) -> Result<()> {
    super::write_atomically(&data.join(EPOCH_FILE), epoch.to_string().as_bytes())
}

/// What [`restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Whether `segq.json` and the admin token's digest came from the
    /// bucket (the data directory had none).
    pub server: bool,
    /// The workspaces restored (none locally) or caught up (behind the
    /// bucket), with the last seq they now hold.
    pub workspaces: Vec<(String, u64)>,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// The last seq the local files of a workspace hold (its manifest's seq,
/// then each log of the chain read); `None` without a workspace.
fn local_end(dir: &Path) -> Result<Option<u64>> {
    let (mut end, first) = match Manifest::read(dir)? {
        Some(m) => (Some(m.seq), m.log),
        None => (None, LOG_FILE.to_string()),
    };
    let mut path = dir.join(first);
    while path.exists() {
        let mut f = FsFile::open(&path).map_err(Error::io_at(&path))?;
        let replay = LogWriter::scan(&mut f)?;
        let next = replay.recovery.next_seq();
        if let Some(last) = replay.recovery.last_seq {
            end = Some(last);
        }
        path = dir.join(compact::log_name(next));
    }
    Ok(end)
}

/// Appends the object `o` to `out`, checking its size and SHA-256.
pub(crate) fn fetch(
    bucket: &dyn Bucket,
    o: &ObjectRef,
    out: &mut fs::File,
    bytes: &mut u64,
) -> Result<()> {
    let at = format!("{}/{}", bucket.describe(), o.key);
    let (size, sha) = bucket.get_into(&o.key, out)?.ok_or_else(|| Error::Store {
        location: at.clone(),
        reason: "missing: the manifest names it".into(),
    })?;
    if size != o.size {
        return Err(Error::Store {
            location: at,
            reason: format!("{size} bytes, the manifest says {}", o.size),
        });
    }
    if sha != o.sha256 {
        return Err(Error::Store {
            location: at,
            reason: format!(
                "checksum mismatch: sha256 {sha}, the manifest says {}",
                o.sha256
            ),
        });
    }
    *bytes += o.size;
    Ok(())
}

/// Appends `pieces` of a log to `f` (at `path`), each checked to start
/// where the file ends and, by [`fetch`], its size and SHA-256.
pub(crate) fn fetch_pieces(
    bucket: &dyn Bucket,
    pieces: &[Piece],
    f: &mut fs::File,
    path: &Path,
    bytes: &mut u64,
) -> Result<()> {
    for piece in pieces {
        let at = f.seek(SeekFrom::End(0)).map_err(Error::io_at(path))?;
        if piece.start != at {
            return Err(Error::Store {
                location: format!("{}/{}", bucket.describe(), piece.object.key),
                reason: format!("starts at byte {}, the log ends at {at}", piece.start),
            });
        }
        fetch(bucket, &piece.object, f, bytes)?;
    }
    Ok(())
}

/// Downloads a workspace into `dir` (empty) and checks it whole.
pub(crate) fn download(
    bucket: &dyn Bucket,
    m: &StoreManifest,
    dir: &Path,
    bytes: &mut u64,
) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io_at(dir))?;
    let at = format!("{}/{}", bucket.describe(), manifest_key(&m.workspace));
    let bad = |reason: String| Error::Store {
        location: at.clone(),
        reason,
    };
    let mut next = 1;
    if let (Some(lm), Some(o)) = (&m.manifest, &m.snapshot) {
        let p = dir.join(&lm.snapshot);
        let mut f = fs::File::create(&p).map_err(Error::io_at(&p))?;
        fetch(bucket, o, &mut f, bytes)?;
        drop(f);
        compact::open_snapshot(dir, lm).map_err(|e| bad(format!("the snapshot: {e}")))?;
        compact::write_manifest(dir, lm)?;
        next = lm.seq + 1;
    }
    let mut end = next.saturating_sub(1);
    for log in &m.logs {
        let p = dir.join(&log.name);
        let mut out = fs::File::create(&p).map_err(Error::io_at(&p))?;
        fetch_pieces(bucket, &log.pieces, &mut out, &p, bytes)?;
        drop(out);
        let mut f = FsFile::open(&p).map_err(Error::io_at(&p))?;
        let replay = LogWriter::scan(&mut f).map_err(|e| bad(format!("{}: {e}", log.name)))?;
        let r = &replay.recovery;
        if !r.is_clean() || r.valid_len != log.len() {
            return Err(bad(format!("{} does not read back whole: {r}", log.name)));
        }
        if r.first_seq != next {
            return Err(bad(format!(
                "{} starts at seq {}, the seq before it is {}",
                log.name,
                r.first_seq,
                next.saturating_sub(1)
            )));
        }
        if log.name != LOG_FILE && compact::log_first_seq(&log.name) != Some(r.first_seq) {
            return Err(bad(format!("{} starts at seq {}", log.name, r.first_seq)));
        }
        next = r.next_seq();
        end = next.saturating_sub(1);
    }
    if end != m.end_seq {
        return Err(bad(format!(
            "the logs end at seq {end}, the manifest says {}",
            m.end_seq
        )));
    }
    if m.manifest.is_none() && end == 0 {
        return Err(bad("the workspace's log holds no record".into()));
    }
    for entry in fs::read_dir(dir).map_err(Error::io_at(dir))?.flatten() {
        super::RealFs.fsync(&entry.path())?;
    }
    super::sync_dir(dir)
}

/// Restores `data` from `bucket` before it is opened: the server's state
/// when the directory has none, and every workspace the bucket holds past
/// the local files. Downloads and checks everything first; changes
/// nothing when anything fails. The caller holds the directory's `LOCK`.
pub fn restore(data: &Path, bucket: &dyn Bucket) -> Result<Restored> {
    let staging = data.join(RESTORE_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(Error::io_at(&staging))?;
    }
    let r = prepare(data, bucket, &staging);
    let out = match r {
        Ok((out, server)) => install(data, &staging, out, server),
        Err(e) => Err(e),
    };
    if staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    out
}

type Prepared = (Restored, Option<ServerState>);

fn prepare(data: &Path, bucket: &dyn Bucket, staging: &Path) -> Result<Prepared> {
    let mut out = Restored::default();
    let seen = local_epoch(data)?;
    let server = match bucket.get(SERVER_STATE)? {
        Some(bytes) if !data.join("segq.json").exists() => Some(ServerState::from_bytes(
            &format!("{}/{SERVER_STATE}", bucket.describe()),
            &bytes,
        )?),
        _ => None,
    };
    for m in bucket_manifests(bucket)? {
        let name = m.workspace.clone();
        let local = data.join("workspaces").join(&name);
        // A manifest of a later lease than this node last held was
        // published by another primary: the local files may hold records
        // that primary never had (acknowledged here after the takeover,
        // or never shipped), at the same seqs as its own. The bucket is
        // the workspace's history from then on: it replaces them.
        let behind = match local_end(&local)? {
            None => true,
            Some(end) => end < m.end_seq || m.epoch > seen,
        };
        if behind {
            download(bucket, &m, &staging.join(&name), &mut out.bytes)?;
            out.workspaces.push((name, m.end_seq));
        }
    }
    out.server = server.is_some();
    Ok((out, server))
}

/// Every workspace's `MANIFEST` in the bucket, checked, by name.
pub(crate) fn bucket_manifests(bucket: &dyn Bucket) -> Result<Vec<StoreManifest>> {
    let mut names = BTreeSet::new();
    for o in bucket.list("workspaces")? {
        if let Some(name) = o
            .key
            .strip_prefix("workspaces/")
            .and_then(|k| k.strip_suffix("/MANIFEST"))
        {
            names.insert(name.to_string());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // Listed, then gone: the workspace was deleted meanwhile.
        if let Some(m) = bucket_manifest(bucket, &name)? {
            out.push(m);
        }
    }
    Ok(out)
}

/// The bucket's manifest of workspace `name`, if it has one; checked to
/// name that workspace.
pub(crate) fn bucket_manifest(bucket: &dyn Bucket, name: &str) -> Result<Option<StoreManifest>> {
    let key = manifest_key(name);
    let Some(bytes) = bucket.get(&key)? else {
        return Ok(None);
    };
    let at = format!("{}/{key}", bucket.describe());
    let m = StoreManifest::from_bytes(&at, &bytes)?;
    if m.workspace != name {
        return Err(Error::Store {
            location: at,
            reason: format!("names workspace {:?}", m.workspace),
        });
    }
    Ok(Some(m))
}

/// The server's state in the bucket, checked; `None` if there is none.
pub(crate) fn bucket_server_state(bucket: &dyn Bucket) -> Result<Option<ServerState>> {
    match bucket.get(SERVER_STATE)? {
        Some(bytes) => Ok(Some(ServerState::from_bytes(
            &format!("{}/{SERVER_STATE}", bucket.describe()),
            &bytes,
        )?)),
        None => Ok(None),
    }
}

/// Makes `data` (locked by the caller) a copy of the bucket for a read
/// replica: the server's state (required: a store no primary shipped to
/// yet is refused) and every workspace, downloaded and checked whole
/// whatever the local files hold; local workspaces the bucket does not
/// hold are removed. Changes nothing when a download fails. Returns the
/// manifests the copy is of.
pub(crate) fn mirror(data: &Path, bucket: &dyn Bucket) -> Result<(Restored, Vec<StoreManifest>)> {
    let staging = data.join(RESTORE_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(Error::io_at(&staging))?;
    }
    let prepared = (|| {
        let server = bucket_server_state(bucket)?.ok_or_else(|| Error::Store {
            location: format!("{}/{SERVER_STATE}", bucket.describe()),
            reason: "missing: no primary has shipped to this store yet".into(),
        })?;
        let manifests = bucket_manifests(bucket)?;
        let mut out = Restored {
            server: true,
            ..Restored::default()
        };
        for m in &manifests {
            download(bucket, m, &staging.join(&m.workspace), &mut out.bytes)?;
            out.workspaces.push((m.workspace.clone(), m.end_seq));
        }
        Ok((out, server, manifests))
    })();
    let out = prepared.and_then(|(out, server, manifests)| {
        let keep: BTreeSet<&str> = manifests.iter().map(|m| m.workspace.as_str()).collect();
        let ws = data.join("workspaces");
        if ws.is_dir() {
            for entry in fs::read_dir(&ws).map_err(Error::io_at(&ws))?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !keep.contains(name.as_str()) && entry.path().is_dir() {
                    fs::remove_dir_all(entry.path()).map_err(Error::io_at(entry.path()))?;
                }
            }
        }
        let out = install(data, &staging, out, Some(server))?;
        Ok((out, manifests))
    });
    if staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    out
}

fn install(
    data: &Path,
    staging: &Path,
    out: Restored,
    server: Option<ServerState>,
) -> Result<Restored> {
    if let Some(s) = server {
        super::write_atomically(&data.join("segq.json"), s.config.as_bytes())?;
        super::write_atomically(
            &data.join("admin-token.sha256"),
            s.admin_token_sha256.as_bytes(),
        )?;
    }
    let ws = data.join("workspaces");
    fs::create_dir_all(&ws).map_err(Error::io_at(&ws))?;
    for (name, _) in &out.workspaces {
        let target = ws.join(name);
        let old: PathBuf = staging.join(format!("{name}.replaced"));
        if target.exists() {
            fs::rename(&target, &old).map_err(Error::io_at(&target))?;
        }
        let from = staging.join(name);
        fs::rename(&from, &target).map_err(Error::io_at(&target))?;
        super::sync_dir(&ws)?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(Error::io_at(&old))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_object_goes_up_in_parts_and_reads_back_whole() {
        let b = ObjectBucket::in_memory().unwrap();
        let bytes: Vec<u8> = (0..MULTIPART_ABOVE + PART_BYTES + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        b.put("workspaces/w/big", bytes.clone()).unwrap();
        assert_eq!(b.get("workspaces/w/big").unwrap().unwrap(), bytes);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap");
        fs::write(&p, &bytes).unwrap();
        let mut f = fs::File::open(&p).unwrap();
        let len = bytes.len() as u64 - 3;
        b.put_file("workspaces/w/file", &mut f, 2, len).unwrap();
        let back = b.get("workspaces/w/file").unwrap().unwrap();
        assert_eq!(back, bytes[2..len as usize]);
        assert_eq!(
            sha256_file(&mut f, 2, len, "snap").unwrap(),
            sha256_hex(&back)
        );
        let streamed = dir.path().join("streamed");
        let mut out = fs::File::create(&streamed).unwrap();
        let (size, sha) = b.get_into("workspaces/w/file", &mut out).unwrap().unwrap();
        assert_eq!((size, sha), (back.len() as u64, sha256_hex(&back)));
        assert_eq!(fs::read(&streamed).unwrap(), back);
        assert!(b.get_into("workspaces/w/none", &mut out).unwrap().is_none());
        b.delete("workspaces/w/file").unwrap();
        let listed = b.list("workspaces").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "workspaces/w/big");
        assert_eq!(listed[0].size, bytes.len() as u64);
        b.delete("workspaces/w/big").unwrap();
        assert!(b.get("workspaces/w/big").unwrap().is_none());
        b.delete("workspaces/w/big").unwrap();
    }

    fn conditional_puts(b: &dyn Bucket) {
        let Conditional::Written(v1) = b.put_if("server/L", b"1".to_vec(), &PutIf::Absent).unwrap()
        else {
            panic!("the first create is written")
        };
        assert_eq!(
            b.put_if("server/L", b"2".to_vec(), &PutIf::Absent).unwrap(),
            Conditional::Conflict
        );
        let Conditional::Written(v2) = b
            .put_if("server/L", b"3".to_vec(), &PutIf::Matches(v1.clone()))
            .unwrap()
        else {
            panic!("an update at the current version is written")
        };
        assert_ne!(v1, v2);
        assert_eq!(
            b.put_if("server/L", b"4".to_vec(), &PutIf::Matches(v1))
                .unwrap(),
            Conditional::Conflict
        );
        let (bytes, v) = b.get_versioned("server/L").unwrap().unwrap();
        assert_eq!((bytes, v.e_tag), (b"3".to_vec(), v2.e_tag));
        assert!(b.get_versioned("server/none").unwrap().is_none());
    }

    #[test]
    fn conditional_puts_create_once_and_update_only_the_version_read() {
        conditional_puts(&ObjectBucket::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/b", dir.path().display());
        conditional_puts(&ObjectBucket::from_url(&url).unwrap());
    }

    #[test]
    fn keys_under_a_prefix_are_listed_relative_to_it() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let a = ObjectBucket::new(store.clone(), "team/segq", "memory:///team/segq").unwrap();
        let other = ObjectBucket::new(store, "team/other", "memory:///team/other").unwrap();
        a.put("workspaces/w/MANIFEST", b"x".to_vec()).unwrap();
        other.put("workspaces/w/MANIFEST", b"y".to_vec()).unwrap();
        let listed = a.list("workspaces").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "workspaces/w/MANIFEST");
        assert_eq!(a.get("workspaces/w/MANIFEST").unwrap().unwrap(), b"x");
    }
}
