//! MongoDB store: the scale-out backend of the actor crate's [`Store`] trait.
//!
//! It owns the connection settings ([`MongoSettings`]), the client and its pool, and
//! the mapping of driver errors onto [`StoreError`]; the queries live by concern in
//! `directory.rs` (tenants, devices, contacts, groups), `inbox.rs` (messages and
//! inboxes), `fence.rs` (fencing an inbox for a new owner), `jobs.rs` (the queue and
//! its lanes), `cluster.rs` (node leases and device ownership), `webhooks.rs` (webhook
//! endpoints and their outbox), `indexes.rs` (every
//! index, ensured at start) and `stats.rs` (`/admin/db/stats`). The SQLite store is
//! the reference behaviour.
//!
//! Design:
//! - **No transactions.** Every change that must be atomic is one single-document
//!   update (group membership, job state moves guarded by their `state`), and every
//!   multi-document change is ordered so that a failure part way leaves the store in a
//!   state the next call repairs or tolerates (see each method). Transactions would
//!   need a replica set, and the test server has none.
//! - **Group commit** is two `insert_many(ordered = false)` calls: the messages, then
//!   the inbox rows; per-row outcomes come from the bulk error's write errors.
//! - **Batched updates** (job outcomes, contact upserts) are one `update` command with
//!   many statements, which every server version accepts (the driver's collection-level
//!   bulk API needs server 8.0).
//! - Every integer is an Int64 in BSON; reads decode through serde structs with `i64`
//!   fields, which also accept the Int32 some servers answer with.
//! - The URI is never logged nor put in an error: [`redacted_uri`] is what logs see.
//! - **The node registry has a pool of its own** ([`CONTROL_POOL`] connections): a
//!   node's lease renewal must not wait for a connection behind hundreds of queued
//!   commits and claims when the store is loaded, or a live node would lapse and drop
//!   every connection it holds.
//!
//! Where the trait's contract says "one transaction", this store gets as close as
//! single-document atomicity allows, and no closer:
//! - `commit_rows`: a call's rows become visible one by one, not at once; rows the
//!   unordered insert wrote past a failed row of their inbox are visible until they
//!   are deleted again (before the call answers). If that delete cannot be done the
//!   call answers `Unavailable`, and the rows stay until a retry answers them. Rows
//!   written into fences go first, each on its own; a fence replaced is never put
//!   back, so such a row stays written (and answered `Ok`) even when a row of its
//!   inbox earlier in the call fails in the insert after it (callers put an inbox's
//!   rows into fences before its other rows, so this does not arise).
//! - `fence_inbox`: the fences go in, then the stale rows become fences; a call cut
//!   off in between is completed by calling it again.
//! - `insert_jobs`: jobs of a batch that fails part way exist until they are deleted
//!   again (a claim in that moment may take one); a crash in between leaves them.
//! - `finish_jobs`, `upsert_contacts`, `delete_device`: applied statement by
//!   statement; a failure part way leaves the earlier ones applied (each is guarded or
//!   idempotent, so calling again completes the call).
//! - `prune_jobs`: the jobs go, then their totals; a failure in between loses those
//!   jobs' counts (it never counts one twice).
//! - `claim_jobs` may answer fewer jobs than are waiting when a concurrent claim took
//!   some of those it picked; it never answers a job another claim holds. Equal ranks
//!   are claimed in no particular order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::jobs::{JobRecord, JobUpdate, QueueCount, SharedBody};
use actors::store::{
    AcceptedSend, DayStats, DeviceRecord, GroupRecord, InboxRow, JobClaim, MessageCopy, NodeLoad,
    NodeRecord, OwnerRecord, RowResult, StatusEntry, Store, StoreError, StoreResult, TenantRecord,
};
use actors::webhooks::{DeliveryOutcome, DeliveryRecord, DeliveryState, EndpointRecord};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::event::{command::CommandEvent, EventHandler};
use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database};
use protocol::rest::Contact;
use protocol::Priority;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

mod cluster;
mod directory;
mod fence;
mod inbox;
pub mod indexes;
mod jobs;
mod media;
mod reports;
mod stats;
mod webhooks;

pub use indexes::{IndexDef, Partial, INDEXES};
pub use media::MongoMedia;
pub use stats::{
    known_queries, CollectionStat, IndexStat, KnownQuery, MongoStats, PlanSummary, QueryStat,
};

/// Collection names.
pub(crate) mod coll {
    /// Tenants.
    pub const TENANTS: &str = "tenants";
    /// Devices.
    pub const DEVICES: &str = "devices";
    /// Contacts, one document per (device, address).
    pub const CONTACTS: &str = "contacts";
    /// Groups with their members.
    pub const GROUPS: &str = "groups";
    /// Messages, stored once.
    pub const MESSAGES: &str = "messages";
    /// Inbox rows.
    pub const INBOX: &str = "inbox";
    /// Durable jobs.
    pub const JOBS: &str = "jobs";
    /// Bodies shared by many jobs.
    pub const JOB_BODIES: &str = "job_bodies";
    /// Counts of pruned jobs.
    pub const JOB_TOTALS: &str = "job_totals";
    /// Paused lanes of the queue, one document per lane.
    pub const LANES: &str = "lanes";
    /// A cluster's nodes and their leases.
    pub const NODES: &str = "nodes";
    /// Which node owns each device's session, with the fencing epoch.
    pub const OWNERS: &str = "owners";
    /// Secrets every node of a deployment must share (the device-token signing
    /// secret, a generated admin token), by name. Not in the statistics.
    pub const SECRETS: &str = "secrets";
    /// Webhook endpoints.
    pub const WEBHOOKS: &str = "webhooks";
    /// The webhook outbox: one document per event and endpoint.
    pub const WEBHOOK_DELIVERIES: &str = "webhook_deliveries";
    /// Every collection, for the statistics.
    pub const ALL: [&str; 14] = [
        TENANTS,
        DEVICES,
        CONTACTS,
        GROUPS,
        MESSAGES,
        INBOX,
        JOBS,
        JOB_BODIES,
        JOB_TOTALS,
        LANES,
        NODES,
        OWNERS,
        WEBHOOKS,
        WEBHOOK_DELIVERIES,
    ];
}

/// The server's code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;

/// Most statements (or ids in one `$in`) sent in one command: well under the server's
/// 100,000 write batch and 16 MiB document limits for the documents we write.
const CHUNK: usize = 10_000;

/// Connection settings of the MongoDB store (the replaced system's `DB_*` variables).
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// Connection string (`mongodb://…` or `mongodb+srv://…`). Never logged as is.
    pub uri: String,
    /// Database; `None`: the URI's default database, else `switchboard`.
    pub database: Option<String>,
    /// Most connections in the pool (`DB_MAX_POOL_SIZE`).
    pub max_pool_size: Option<u32>,
    /// Connections kept open when idle (`DB_MIN_POOL_SIZE`).
    pub min_pool_size: Option<u32>,
    /// How long an idle pooled connection is kept (`DB_MAX_IDLE_TIME`).
    pub max_idle_time: Option<Duration>,
    /// How long a call waits for a usable server before it fails
    /// (`DB_SERVER_SELECTION_TIMEOUT`); short, so calls fail fast during an outage.
    pub server_selection_timeout: Duration,
    /// The longest one store call may take (`DB_SOCKET_TIMEOUT`). The Rust driver has
    /// no socket timeout, so the store bounds each call as a whole; a call cut off is
    /// `Unavailable` (a write may still have been applied: every write is idempotent
    /// or guarded, so retrying is safe).
    pub socket_timeout: Option<Duration>,
    /// How long opening one connection may take (`DB_CONNECT_TIMEOUT`).
    pub connect_timeout: Option<Duration>,
    /// Write concern `w`: `majority`, a number of nodes (`1`, `2`, …) or a tag set name.
    pub write_concern: String,
    /// Whether writes wait for the journal (`j`).
    pub journal: bool,
    /// Read concern level: `majority`, `local`, `available`, `linearizable`, `snapshot`.
    pub read_concern: String,
    /// Whether [`MongoStore::connect`] ensures the indexes (`DB_AUTO_INDEX`).
    pub auto_index: bool,
    /// Whether every command sent is counted in `switchboard_mongodb_commands_total`
    /// (`DB_COMMAND_METRICS`; costs a copy of each command).
    pub command_metrics: bool,
}

impl Default for MongoSettings {
    fn default() -> Self {
        MongoSettings {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: None,
            max_pool_size: Some(10),
            min_pool_size: Some(0),
            max_idle_time: None,
            server_selection_timeout: Duration::from_secs(5),
            socket_timeout: None,
            connect_timeout: Some(Duration::from_secs(10)),
            write_concern: "majority".into(),
            journal: true,
            read_concern: "majority".into(),
            auto_index: true,
            command_metrics: false,
        }
    }
}

/// The database used when neither the settings nor the URI name one.
pub const DEFAULT_DATABASE: &str = "switchboard";
/// Connections of the node registry's own client: one call at a time per node, and
/// one spare.
pub const CONTROL_POOL: u32 = 2;

/// `uri` with its password replaced by `***`, for logs.
pub fn redacted_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    // User info ends at the last '@' before the options ('?'), so an unescaped '/' or
    // '@' in a password is hidden too (at worst more than the password is hidden).
    let options_start = rest.find('?').unwrap_or(rest.len());
    let Some(at) = rest[..options_start].rfind('@') else {
        return uri.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        None => return uri.to_owned(),
    };
    format!("{}{}:***{}", &uri[..scheme_end + 3], user, &rest[at..])
}

/// MongoDB implementation of [`Store`]. Cheap to clone (one client, one pool).
#[derive(Clone)]
pub struct MongoStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: Database,
    /// The same database through a client of its own (the node registry's calls).
    control: Database,
    /// The write concern as a command field, for commands sent with `run_command`
    /// (which applies none by itself).
    write_concern: Document,
    socket_timeout: Option<Duration>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.inner.db.name())
            .finish_non_exhaustive()
    }
}

fn parse_write_concern(w: &str, journal: bool) -> StoreResult<WriteConcern> {
    let w = w.trim();
    let ack = if w.eq_ignore_ascii_case("majority") {
        Acknowledgment::Majority
    } else if let Ok(n) = w.parse::<u32>() {
        Acknowledgment::Nodes(n)
    } else if !w.is_empty() {
        Acknowledgment::Custom(w.to_owned())
    } else {
        return Err(StoreError::Unavailable(
            "MongoDB write concern is empty (use majority, a number or a tag set)".into(),
        ));
    };
    Ok(WriteConcern::builder().w(ack).journal(journal).build())
}

fn parse_read_concern(level: &str) -> StoreResult<ReadConcern> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "majority" => ReadConcern::majority(),
        "local" => ReadConcern::local(),
        "available" => ReadConcern::available(),
        "linearizable" => ReadConcern::linearizable(),
        "snapshot" => ReadConcern::snapshot(),
        other => {
            return Err(StoreError::Unavailable(format!(
                "unknown MongoDB read concern {other:?} (majority, local, available, linearizable, snapshot)"
            )))
        }
    })
}

impl MongoStore {
    /// Connects: builds the client from the URI and the settings, pings the server and,
    /// unless `auto_index` is off, ensures every index of [`INDEXES`].
    pub async fn connect(settings: MongoSettings) -> Result<MongoStore, StoreError> {
        let shown = redacted_uri(&settings.uri);
        // The driver's parse errors may quote the string: say which URI (redacted) only.
        let mut options = ClientOptions::parse(&settings.uri).await.map_err(|e| {
            let why = match *e.kind {
                ErrorKind::DnsResolve { .. } => "its DNS records could not be resolved",
                _ => "it is not a valid connection string",
            };
            StoreError::Unavailable(format!("MongoDB URI {shown}: {why}"))
        })?;
        if settings.max_pool_size.is_some() {
            options.max_pool_size = settings.max_pool_size;
        }
        if settings.min_pool_size.is_some() {
            options.min_pool_size = settings.min_pool_size;
        }
        if settings.max_idle_time.is_some() {
            options.max_idle_time = settings.max_idle_time;
        }
        if settings.connect_timeout.is_some() {
            options.connect_timeout = settings.connect_timeout;
        }
        options.server_selection_timeout = Some(settings.server_selection_timeout);
        options.retry_writes = Some(true);
        options.retry_reads = Some(true);
        let write_concern = parse_write_concern(&settings.write_concern, settings.journal)?;
        options.write_concern = Some(write_concern.clone());
        options.read_concern = Some(parse_read_concern(&settings.read_concern)?);
        if settings.command_metrics {
            options.command_event_handler = Some(EventHandler::callback(|event| {
                if let CommandEvent::Started(e) = event {
                    metrics::counter!(crate::metrics::names::MONGODB_COMMANDS, "command" => e.command_name)
                        .increment(1);
                }
            }));
        }
        if options.app_name.is_none() {
            options.app_name = Some("switchboard".into());
        }
        let database = settings
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());

        let mut control_options = options.clone();
        control_options.max_pool_size = Some(CONTROL_POOL);
        control_options.min_pool_size = Some(0);
        let control = Client::with_options(control_options)
            .map_err(map_err)?
            .database(&database);
        let client = Client::with_options(options).map_err(map_err)?;
        let db = client.database(&database);
        db.run_command(doc! { "ping": 1 }).await.map_err(|e| {
            StoreError::Unavailable(format!("MongoDB {shown}: ping: {}", describe(&e)))
        })?;
        let write_concern = mongodb::bson::to_document(&write_concern)
            .map_err(|e| StoreError::Unavailable(format!("encoding the write concern: {e}")))?;
        let store = MongoStore {
            inner: Arc::new(Inner {
                db,
                control,
                write_concern,
                socket_timeout: settings.socket_timeout,
            }),
        };
        if settings.auto_index {
            indexes::ensure(&store.inner.db).await?;
        }
        tracing::info!(uri = %shown, database, auto_index = settings.auto_index, "MongoDB store connected");
        Ok(store)
    }

    /// The secret `name` every node on this database shares: the stored one, or
    /// `make()` stored now if there is none (the first node to start wins a race; the
    /// others read its value). Answers it and whether this call created it.
    pub async fn shared_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> StoreResult<(String, bool)> {
        let secrets = self.inner.db.collection::<Document>(coll::SECRETS);
        let read = || async {
            let found = secrets
                .find_one(doc! { "_id": name })
                .await
                .map_err(map_err)?;
            Ok::<_, StoreError>(found.and_then(|d| d.get_str("value").ok().map(str::to_owned)))
        };
        if let Some(value) = read().await? {
            return Ok((value, false));
        }
        let value = make();
        match secrets
            .insert_one(doc! { "_id": name, "value": &value })
            .await
        {
            Ok(_) => Ok((value, true)),
            Err(e) if is_duplicate(&e) => read().await?.map(|v| (v, false)).ok_or_else(|| {
                StoreError::Unavailable(format!("secret {name} vanished while it was read"))
            }),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The database this store uses.
    pub fn database_name(&self) -> &str {
        self.inner.db.name()
    }

    /// Ensures every index of [`INDEXES`] (what `connect` does unless `auto_index` is
    /// off); idempotent.
    pub async fn ensure_indexes(&self) -> StoreResult<()> {
        indexes::ensure(&self.inner.db).await
    }

    /// Runs one store call within the socket timeout, if one is set.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match self.inner.socket_timeout {
            None => call.await,
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "MongoDB: {op} took longer than {} ms",
                    limit.as_millis()
                )))
            }),
        }
    }
}

impl Inner {
    pub(crate) fn coll<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    /// A collection through the node registry's own client (see [`CONTROL_POOL`]).
    pub(crate) fn control_coll<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.control.collection(name)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Runs an `update` command holding `statements` (`{q, u, upsert?, multi?}`), in
    /// chunks of [`CHUNK`]; answers how many documents matched (or were upserted). A
    /// statement's write error fails the call (a duplicate key is `Conflict`).
    pub(crate) async fn update_statements(
        &self,
        collection: &str,
        statements: Vec<Document>,
        ordered: bool,
    ) -> StoreResult<u64> {
        let mut matched = 0u64;
        let mut statements = statements.into_iter().peekable();
        while statements.peek().is_some() {
            let chunk: Vec<Document> = statements.by_ref().take(CHUNK).collect();
            let reply = self
                .db
                .run_command(doc! {
                    "update": collection,
                    "updates": chunk,
                    "ordered": ordered,
                    "writeConcern": self.write_concern.clone(),
                })
                .await
                .map_err(map_err)?;
            check_write_reply(&reply)?;
            matched += reply
                .get("n")
                .and_then(bson_i64)
                .map_or(0, |n| n.max(0) as u64);
        }
        Ok(matched)
    }
}

/// Fails on the write errors and write concern error of a write command's reply.
fn check_write_reply(reply: &Document) -> StoreResult<()> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            let code = first.get("code").and_then(bson_i64).unwrap_or(0);
            let message = first.get_str("errmsg").unwrap_or("write error");
            return Err(if code == i64::from(DUPLICATE_KEY) {
                StoreError::Conflict(format!("MongoDB duplicate key: {message}"))
            } else {
                StoreError::Unavailable(format!("MongoDB write error {code}: {message}"))
            });
        }
    }
    if let Ok(wc) = reply.get_document("writeConcernError") {
        let message = wc
            .get_str("errmsg")
            .unwrap_or("write concern not satisfied");
        return Err(StoreError::Unavailable(format!(
            "MongoDB write concern: {message}"
        )));
    }
    Ok(())
}

/// A stored flag: a boolean, or a number (nx-27017 stores a boolean `$set` as 0 / 1).
pub(crate) fn de_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Bson::deserialize(d)? {
        Bson::Boolean(b) => Ok(b),
        other => match bson_i64(&other) {
            Some(n) => Ok(n != 0),
            None => Err(serde::de::Error::custom(format!("not a flag: {other:?}"))),
        },
    }
}

/// Any BSON number as an i64 (servers answer small Int64 values as Int32).
pub(crate) fn bson_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// A short description of a driver error without anything from the URI.
fn describe(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => {
            format!("command error {} ({}): {}", c.code, c.code_name, c.message)
        }
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            format!("write error {}: {}", w.code, w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern error {}: {}", w.code, w.message)
        }
        ErrorKind::InsertMany(f) => {
            let first = f
                .write_errors
                .as_ref()
                .and_then(|w| w.first())
                .map(|w| format!("write error {}: {}", w.code, w.message));
            first.unwrap_or_else(|| "insert failed".into())
        }
        ErrorKind::Io(io) => format!("network: {io}"),
        ErrorKind::ServerSelection { message, .. } => format!("no server available: {message}"),
        ErrorKind::Authentication { .. } => "authentication failed".into(),
        ErrorKind::BsonDeserialization(d) => format!("undecodable document: {d}"),
        ErrorKind::BsonSerialization(s) => format!("unencodable document: {s}"),
        other => format!("{other}"),
    }
}

/// Whether `e` is a duplicate key error.
pub(crate) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(f) => f
            .write_errors
            .as_ref()
            .is_some_and(|w| w.iter().any(|w| w.code == DUPLICATE_KEY)),
        _ => false,
    }
}

/// Maps a driver error: a duplicate key is `Conflict`, an undecodable document
/// `Corrupt`, everything else (network, server selection, timeouts, server errors)
/// `Unavailable`.
pub(crate) fn map_err(e: mongodb::error::Error) -> StoreError {
    let what = describe(&e);
    if is_duplicate(&e) {
        return StoreError::Conflict(format!("MongoDB {what}"));
    }
    match &*e.kind {
        ErrorKind::BsonDeserialization(_) => StoreError::Corrupt(format!("MongoDB {what}")),
        _ => StoreError::Unavailable(format!("MongoDB {what}")),
    }
}

/// Runs a find and collects every document.
pub(crate) async fn find_all<T>(
    coll: &Collection<T>,
    filter: Document,
    sort: Option<Document>,
    limit: Option<i64>,
    projection: Option<Document>,
) -> StoreResult<Vec<T>>
where
    T: DeserializeOwned + Send + Sync + Unpin,
{
    let cursor = coll
        .find(filter)
        .optional(sort, |f, s| f.sort(s))
        .optional(limit, |f, l| f.limit(l))
        .optional(projection, |f, p| f.projection(p))
        .await
        .map_err(map_err)?;
    cursor.try_collect().await.map_err(map_err)
}

/// Runs an aggregation and collects every document.
pub(crate) async fn aggregate_all(
    coll: &Collection<Document>,
    pipeline: Vec<Document>,
) -> StoreResult<Vec<Document>> {
    let cursor = coll.aggregate(pipeline).await.map_err(map_err)?;
    cursor.try_collect().await.map_err(map_err)
}

/// Chained optional builder calls.
trait Optional: Sized {
    fn optional<V>(self, value: Option<V>, set: impl FnOnce(Self, V) -> Self) -> Self {
        match value {
            Some(v) => set(self, v),
            None => self,
        }
    }
}

impl<T> Optional for T {}

/// `u64` → `i64` for BSON, or `Unavailable` when out of range (as the SQLite store).
pub(crate) fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Unavailable(format!("{what} out of range: {v}")))
}

/// A stored count or seq as `u64` (negative values are corrupt).
pub(crate) fn to_u64(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {v}")))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()> {
        self.run(
            "create_tenant",
            directory::create_tenant(&self.inner, &tenant),
        )
        .await
    }

    async fn tenant_by_key_hash(&self, hash: &str) -> StoreResult<Option<TenantRecord>> {
        self.run(
            "tenant_by_key_hash",
            directory::tenant_by_key(&self.inner, hash),
        )
        .await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        self.run("list_tenants", directory::list_tenants(&self.inner))
            .await
    }

    async fn create_device(&self, device: DeviceRecord) -> StoreResult<()> {
        self.run(
            "create_device",
            directory::create_device(&self.inner, &device),
        )
        .await
    }

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        self.run("get_device", directory::get_device(&self.inner, id))
            .await
    }

    async fn device_by_address(
        &self,
        tenant_id: &str,
        address: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        self.run(
            "device_by_address",
            directory::device_by_address(&self.inner, tenant_id, address),
        )
        .await
    }

    async fn list_devices(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>> {
        self.run(
            "list_devices",
            directory::list_devices(&self.inner, tenant_id, after.unwrap_or(""), limit),
        )
        .await
    }

    async fn device_counts(&self) -> StoreResult<HashMap<String, u64>> {
        self.run("device_counts", directory::device_counts(&self.inner))
            .await
    }

    async fn delete_device(&self, id: &str, now: i64) -> StoreResult<bool> {
        self.run("delete_device", async {
            // Everything the device owns goes first and the device document last, so a
            // call cut off part way is finished by calling it again (no transaction).
            jobs::cancel_device_jobs(&self.inner, id, now).await?;
            directory::delete_contacts(&self.inner, id).await?;
            inbox::delete_inbox(&self.inner, id).await?;
            cluster::delete_owner(&self.inner, id).await?;
            directory::delete_device(&self.inner, id).await
        })
        .await
    }

    async fn set_last_seen(&self, id: &str, ts: i64) -> StoreResult<()> {
        self.run(
            "set_last_seen",
            directory::set_last_seen(&self.inner, id, ts),
        )
        .await
    }

    async fn upsert_contacts(&self, device_id: &str, contacts: &[Contact]) -> StoreResult<usize> {
        if contacts.is_empty() {
            return Ok(0);
        }
        self.run(
            "upsert_contacts",
            directory::upsert_contacts(&self.inner, device_id, contacts),
        )
        .await
    }

    async fn list_contacts(&self, device_id: &str) -> StoreResult<Vec<Contact>> {
        self.run(
            "list_contacts",
            directory::list_contacts(&self.inner, device_id),
        )
        .await
    }

    async fn create_group(&self, group: GroupRecord) -> StoreResult<()> {
        self.run("create_group", directory::create_group(&self.inner, &group))
            .await
    }

    async fn get_group(&self, id: &str) -> StoreResult<Option<GroupRecord>> {
        self.run("get_group", directory::get_group(&self.inner, id))
            .await
    }

    async fn add_group_members(
        &self,
        id: &str,
        members: &[String],
        max_members: usize,
    ) -> StoreResult<Option<GroupRecord>> {
        self.run(
            "add_group_members",
            directory::add_group_members(&self.inner, id, members, max_members),
        )
        .await
    }

    async fn remove_group_member(
        &self,
        id: &str,
        address: &str,
    ) -> StoreResult<Option<(GroupRecord, bool)>> {
        self.run(
            "remove_group_member",
            directory::remove_group_member(&self.inner, id, address),
        )
        .await
    }

    async fn upsert_groups(&self, groups: Vec<GroupRecord>) -> StoreResult<Vec<GroupRecord>> {
        self.run(
            "upsert_groups",
            directory::upsert_groups(&self.inner, groups),
        )
        .await
    }

    async fn commit_rows(&self, rows: Arc<Vec<InboxRow>>) -> StoreResult<Vec<RowResult>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.run("commit_rows", inbox::commit_rows(&self.inner, &rows))
            .await
    }

    async fn last_seq(&self, device_id: &str) -> StoreResult<u64> {
        self.run("last_seq", inbox::last_seq(&self.inner, device_id))
            .await
    }

    async fn read_inbox(
        &self,
        device_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<InboxRow>> {
        self.run(
            "read_inbox",
            inbox::read_inbox(&self.inner, device_id, after_seq, limit),
        )
        .await
    }

    async fn inbox_messages(
        &self,
        device_id: &str,
        message_ids: &[String],
    ) -> StoreResult<Vec<InboxRow>> {
        self.run(
            "inbox_messages",
            inbox::inbox_messages(&self.inner, device_id, message_ids),
        )
        .await
    }

    async fn message_copies(&self, message_id: &str) -> StoreResult<Vec<MessageCopy>> {
        self.run(
            "message_copies",
            inbox::message_copies(&self.inner, message_id),
        )
        .await
    }

    async fn statuses(&self, device_id: &str, message_id: &str) -> StoreResult<Vec<StatusEntry>> {
        self.run(
            "statuses",
            inbox::statuses(&self.inner, device_id, message_id),
        )
        .await
    }

    async fn recent_client_ids(
        &self,
        device_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<AcceptedSend>> {
        self.run(
            "recent_client_ids",
            inbox::recent_client_ids(&self.inner, device_id, limit),
        )
        .await
    }

    async fn sends_by_client_id(
        &self,
        device_id: &str,
        client_id: &str,
    ) -> StoreResult<Vec<AcceptedSend>> {
        self.run(
            "sends_by_client_id",
            inbox::sends_by_client_id(&self.inner, device_id, client_id),
        )
        .await
    }

    async fn message_stats(
        &self,
        tenant_id: &str,
        device_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<DayStats>> {
        self.run(
            "message_stats",
            reports::message_stats(&self.inner, tenant_id, device_id, from, to),
        )
        .await
    }

    async fn insert_jobs(&self, bodies: Vec<SharedBody>, jobs: Vec<JobRecord>) -> StoreResult<()> {
        self.run(
            "insert_jobs",
            jobs::insert_jobs(&self.inner, &bodies, &jobs),
        )
        .await
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        self.run("get_job", jobs::get_job(&self.inner, id)).await
    }

    async fn job_body(&self, id: &str) -> StoreResult<Option<Arc<str>>> {
        self.run("job_body", jobs::job_body(&self.inner, id)).await
    }

    async fn queue_tail(&self, tenant_id: &str, lane: Priority) -> StoreResult<Option<i64>> {
        self.run("queue_tail", jobs::queue_tail(&self.inner, tenant_id, lane))
            .await
    }

    async fn requeue_active_jobs(&self) -> StoreResult<u64> {
        self.run("requeue_active_jobs", jobs::requeue_active(&self.inner))
            .await
    }

    async fn promote_due_jobs(&self, now: i64) -> StoreResult<u64> {
        self.run("promote_due_jobs", jobs::promote_due(&self.inner, now))
            .await
    }

    async fn claim_jobs(
        &self,
        now: i64,
        limit: usize,
        paused: &[Priority],
        claim: &JobClaim,
    ) -> StoreResult<Vec<JobRecord>> {
        self.run(
            "claim_jobs",
            jobs::claim(&self.inner, now, limit, paused, claim),
        )
        .await
    }

    async fn finish_jobs(&self, updates: Vec<JobUpdate>, now: i64, owner: &str) -> StoreResult<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.run(
            "finish_jobs",
            jobs::finish(&self.inner, &updates, now, owner),
        )
        .await
    }

    async fn renew_job_claims(&self, owner: &str, lease_until: i64) -> StoreResult<u64> {
        self.run(
            "renew_job_claims",
            jobs::renew_claims(&self.inner, owner, lease_until),
        )
        .await
    }

    async fn reclaim_jobs(&self, now: i64) -> StoreResult<u64> {
        self.run("reclaim_jobs", jobs::reclaim(&self.inner, now))
            .await
    }

    async fn release_job_claims(&self, owner: &str) -> StoreResult<u64> {
        self.run(
            "release_job_claims",
            jobs::release_claims(&self.inner, owner),
        )
        .await
    }

    async fn set_lane_paused(&self, lane: Priority, paused: bool) -> StoreResult<()> {
        self.run(
            "set_lane_paused",
            jobs::set_lane_paused(&self.inner, lane, paused),
        )
        .await
    }

    async fn paused_lanes(&self) -> StoreResult<Vec<Priority>> {
        self.run("paused_lanes", jobs::paused_lanes(&self.inner))
            .await
    }

    async fn set_job_progress(&self, id: &str, done: u64, now: i64) -> StoreResult<()> {
        self.run(
            "set_job_progress",
            jobs::set_progress(&self.inner, id, done, now),
        )
        .await
    }

    async fn cancel_job(&self, id: &str, now: i64) -> StoreResult<bool> {
        self.run("cancel_job", jobs::cancel(&self.inner, id, now))
            .await
    }

    async fn retry_job(&self, id: &str, now: i64, rank: i64) -> StoreResult<bool> {
        self.run("retry_job", jobs::retry(&self.inner, id, now, rank))
            .await
    }

    async fn prune_jobs(&self, before: i64, limit: usize) -> StoreResult<u64> {
        self.run("prune_jobs", jobs::prune(&self.inner, before, limit))
            .await
    }

    async fn queue_counts(&self) -> StoreResult<Vec<QueueCount>> {
        self.run("queue_counts", jobs::queue_counts(&self.inner))
            .await
    }

    async fn lane_depths(&self) -> StoreResult<[u64; 4]> {
        self.run("lane_depths", jobs::lane_depths(&self.inner))
            .await
    }

    async fn put_node(&self, node: NodeRecord) -> StoreResult<()> {
        self.run("put_node", cluster::put_node(&self.inner, &node))
            .await
    }

    async fn renew_node(&self, id: &str, lease_until: i64, load: NodeLoad) -> StoreResult<bool> {
        self.run(
            "renew_node",
            cluster::renew_node(&self.inner, id, lease_until, load),
        )
        .await
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.run("list_nodes", cluster::list_nodes(&self.inner))
            .await
    }

    async fn remove_node(&self, id: &str) -> StoreResult<()> {
        self.run("remove_node", cluster::remove_node(&self.inner, id))
            .await
    }

    async fn get_owner(&self, device_id: &str) -> StoreResult<Option<OwnerRecord>> {
        self.run("get_owner", cluster::get_owner(&self.inner, device_id))
            .await
    }

    async fn claim_owner(
        &self,
        device_id: &str,
        node: &str,
        seen: Option<u64>,
        now: i64,
    ) -> StoreResult<Option<OwnerRecord>> {
        self.run(
            "claim_owner",
            cluster::claim_owner(&self.inner, device_id, node, seen, now),
        )
        .await
    }

    async fn release_owner(
        &self,
        device_id: &str,
        node: &str,
        epoch: u64,
        now: i64,
    ) -> StoreResult<bool> {
        self.run(
            "release_owner",
            cluster::release_owner(&self.inner, device_id, node, epoch, now),
        )
        .await
    }

    async fn fence_inbox(
        &self,
        device_id: &str,
        from: u64,
        count: u64,
        epoch: u64,
    ) -> StoreResult<()> {
        self.run(
            "fence_inbox",
            fence::fence_inbox(&self.inner, device_id, from, count, epoch),
        )
        .await
    }

    async fn create_webhook(&self, endpoint: EndpointRecord) -> StoreResult<()> {
        self.run("create_webhook", webhooks::create(&self.inner, &endpoint))
            .await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<EndpointRecord>> {
        self.run("get_webhook", webhooks::get(&self.inner, id))
            .await
    }

    async fn list_webhooks(&self, tenant_id: &str) -> StoreResult<Vec<EndpointRecord>> {
        self.run("list_webhooks", webhooks::list(&self.inner, tenant_id))
            .await
    }

    async fn update_webhook(&self, endpoint: EndpointRecord) -> StoreResult<bool> {
        self.run("update_webhook", webhooks::update(&self.inner, &endpoint))
            .await
    }

    async fn delete_webhook(&self, id: &str) -> StoreResult<bool> {
        self.run("delete_webhook", webhooks::delete(&self.inner, id))
            .await
    }

    async fn enqueue_webhook_deliveries(&self, deliveries: Vec<DeliveryRecord>) -> StoreResult<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.run(
            "enqueue_webhook_deliveries",
            webhooks::enqueue(&self.inner, &deliveries),
        )
        .await
    }

    async fn claim_webhook_deliveries(
        &self,
        now: i64,
        limit: usize,
        skip: &[String],
        claim: &JobClaim,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(
            "claim_webhook_deliveries",
            webhooks::claim(&self.inner, now, limit, skip, claim),
        )
        .await
    }

    async fn finish_webhook_deliveries(
        &self,
        outcomes: Vec<DeliveryOutcome>,
        now: i64,
        owner: &str,
    ) -> StoreResult<u64> {
        self.run(
            "finish_webhook_deliveries",
            webhooks::finish(&self.inner, &outcomes, now, owner),
        )
        .await
    }

    async fn list_webhook_deliveries(
        &self,
        endpoint_id: &str,
        state: Option<DeliveryState>,
        before: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        self.run(
            "list_webhook_deliveries",
            webhooks::log(&self.inner, endpoint_id, state, before, limit),
        )
        .await
    }

    async fn replay_webhook_dead_letters(
        &self,
        endpoint_id: &str,
        ids: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<u64> {
        self.run(
            "replay_webhook_dead_letters",
            webhooks::replay(&self.inner, endpoint_id, ids, now),
        )
        .await
    }

    async fn webhook_outbox_depths(&self) -> StoreResult<Vec<(String, u64)>> {
        self.run("webhook_outbox_depths", webhooks::depths(&self.inner))
            .await
    }

    async fn prune_webhook_deliveries(&self, before: i64, limit: usize) -> StoreResult<u64> {
        self.run(
            "prune_webhook_deliveries",
            webhooks::prune(&self.inner, before, limit),
        )
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted_uri("mongodb://user:s3cr3t@db1:27017,db2:27017/app?authSource=admin"),
            "mongodb://user:***@db1:27017,db2:27017/app?authSource=admin"
        );
        assert_eq!(
            redacted_uri("mongodb+srv://svc:p%40ss@cluster0.example.net/?retryWrites=true"),
            "mongodb+srv://svc:***@cluster0.example.net/?retryWrites=true"
        );
        // A password holding '@' (unescaped): everything up to the last '@' goes.
        assert_eq!(
            redacted_uri("mongodb://u:a@b@host/db"),
            "mongodb://u:***@host/db"
        );
        // Nothing to hide.
        assert_eq!(
            redacted_uri("mongodb://127.0.0.1:27017/?directConnection=true"),
            "mongodb://127.0.0.1:27017/?directConnection=true"
        );
        assert_eq!(
            redacted_uri("mongodb://user@host/db"),
            "mongodb://user@host/db"
        );
        // Unescaped '/' in a password: still hidden.
        assert_eq!(
            redacted_uri("mongodb://u:pa/ss@host/db"),
            "mongodb://u:***@host/db"
        );
        // An '@' in the query string is not user info.
        assert_eq!(
            redacted_uri("mongodb://host/db?appName=a@b"),
            "mongodb://host/db?appName=a@b"
        );
        assert!(!redacted_uri("mongodb://admin:hunter2@h").contains("hunter2"));
    }

    #[test]
    fn concerns_parse() {
        let wc = parse_write_concern("majority", true).unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.journal, Some(true));
        let wc = parse_write_concern("1", false).unwrap();
        assert_eq!(wc.w, Some(Acknowledgment::Nodes(1)));
        assert_eq!(
            parse_write_concern("dc-east", true).unwrap().w,
            Some(Acknowledgment::Custom("dc-east".into()))
        );
        assert!(parse_write_concern(" ", true).is_err());
        assert_eq!(parse_read_concern("local").unwrap(), ReadConcern::local());
        assert_eq!(
            parse_read_concern("Majority").unwrap(),
            ReadConcern::majority()
        );
        assert!(parse_read_concern("nope").is_err());
        let defaults = MongoSettings::default();
        assert_eq!(defaults.server_selection_timeout, Duration::from_secs(5));
        assert!(defaults.auto_index && defaults.journal);
    }
}
