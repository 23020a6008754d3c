//! The supervision-tree snapshot behind `GET /admin/tree` and `GET /admin/events`.
//!
//! One builder serves both routes, so the live page and the JSON never disagree.
//! Built for 10,000 devices:
//!
//! - tenants are always summarized (registered devices, running sessions, online
//!   devices, connections, messages), from one `Children` call per running tenant
//!   supervisor; each child's counters come from its [`SessionGauge`], so no session is
//!   asked anything through its mailbox for the summary;
//! - device rows come as one page (`tenant`, `q`, `offset`, `limit`) of the running
//!   sessions; only the sessions on that page get a mailbox probe;
//! - devices with no running session are not listed: each tenant reports how many are
//!   registered, so the offline count is `devices - online`.
//!
//! Mailbox depth: ractor 0.16 keeps an actor's mailbox in a private unbounded channel
//! and exposes no length. What we show instead is measured: how long a probe message
//! waited in the session's mailbox (`mailbox_wait_us`), and how many messages the
//! session has handled (`handled`).
//!
//! [`SessionGauge`]: actors::device::SessionGauge

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actors::device::DeviceMsg;
use actors::root::RootMsg;
use actors::tenant::{ChildInfo, TenantMsg};
use futures_util::future::join_all;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::http::queues::{dispatcher_node, DispatcherNode};
use crate::state::AppState;

/// Rows per device page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest device page.
pub const MAX_LIMIT: usize = 500;
/// How long a tree builder waits for one actor to answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a mailbox probe may wait before the session is reported busy.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Filters and paging of the device rows (`?tenant=&q=&offset=&limit=`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TreeQuery {
    /// Only this tenant's sessions.
    pub tenant: Option<String>,
    /// Case-insensitive substring of the device id or address.
    pub q: Option<String>,
    /// Rows to skip.
    pub offset: Option<usize>,
    /// Rows to return (at most [`MAX_LIMIT`]; 0 for the count only).
    pub limit: Option<usize>,
}

/// The whole snapshot.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Tree {
    /// When it was taken (Unix ms).
    pub generated_at: i64,
    /// The root supervisor.
    pub root: RootNode,
    /// Totals over every tenant.
    pub totals: Totals,
    /// The persistence writers (children of root).
    pub writers: Vec<WriterNode>,
    /// Every tenant, summarized.
    pub tenants: Vec<TenantNode>,
    /// One page of running device sessions.
    pub devices: DevicePage,
    /// The queue dispatcher (a child of root) and its lanes: depth, in flight, rate,
    /// paused. Built by [`crate::http::queues::dispatcher_node`], as in
    /// `/admin/queues/stats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatcher: Option<DispatcherNode>,
    /// The nodes (one on the embedded store), as `GET /admin/cluster` shows them.
    pub cluster: crate::http::admin_cluster::ClusterView,
}

/// The root supervisor.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RootNode {
    /// Actor name.
    pub name: &'static str,
    /// ractor actor id.
    pub actor_id: String,
    /// ractor status (`Running`, …).
    pub status: String,
    /// Seconds since the admin surface started (process uptime).
    pub uptime_secs: u64,
    /// Time the root took to answer (mailbox wait + handling), µs.
    pub reply_us: Option<u64>,
    /// Restart counts of its children, by name (`persistence:writer:N`, `tenant:<id>`).
    pub restarts: BTreeMap<String, u32>,
}

/// Totals.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
#[schema(as = TreeTotals)]
pub struct Totals {
    /// Tenants registered.
    pub tenants: usize,
    /// Tenant supervisors running.
    pub tenant_supervisors: usize,
    /// Devices registered.
    pub devices: u64,
    /// Device sessions running.
    pub sessions: usize,
    /// Devices with at least one client connected.
    pub online: usize,
    /// Client connections.
    pub connections: u64,
    /// Rows waiting in the writers.
    pub writer_backlog: u64,
}

/// One persistence writer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriterNode {
    /// Slot in the pool.
    pub slot: usize,
    /// Name as the root's restart counts use it.
    pub name: String,
    /// Batches committed.
    pub batches: u64,
    /// Rows committed.
    pub rows: u64,
    /// Size of the last batch.
    pub last_batch: u64,
    /// Commit latency of the last batch, µs.
    pub last_commit_us: u64,
    /// Rows waiting for the next commit.
    pub backlog: u64,
    /// Times root restarted this writer.
    pub restarts: u32,
}

/// One tenant, summarized.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantNode {
    /// Tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether its supervisor runs (started on first use).
    pub running: bool,
    /// The supervisor's actor id.
    pub actor_id: Option<String>,
    /// Time the supervisor took to list its children, µs.
    pub reply_us: Option<u64>,
    /// Times the supervisor failed and was started again.
    pub restarts: u32,
    /// Devices registered.
    pub devices: u64,
    /// Device sessions running.
    pub sessions: usize,
    /// Devices with at least one client connected.
    pub online: usize,
    /// Client connections.
    pub connections: u64,
    /// Session restarts (failures and operator restarts) of running sessions.
    pub session_restarts: u64,
    /// Messages delivered into inboxes, by running sessions.
    pub messages_in: u64,
    /// Messages sent, by running sessions.
    pub messages_out: u64,
}

/// A page of device sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DevicePage {
    /// The tenant filter.
    pub tenant: Option<String>,
    /// The search filter.
    pub q: Option<String>,
    /// Rows skipped.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
    /// Matching sessions in all.
    pub total: usize,
    /// This page.
    pub items: Vec<DeviceNode>,
}

/// One running device session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceNode {
    /// Device id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// E.164 address.
    pub address: String,
    /// Actor name (`device:<id>`).
    pub actor: String,
    /// ractor actor id.
    pub actor_id: String,
    /// `running`, or `stopping` (idle drain or restart under way).
    pub state: &'static str,
    /// At least one client connected.
    pub online: bool,
    /// Connected clients.
    pub connections: u64,
    /// Messages delivered into its inbox (this incarnation).
    pub messages_in: u64,
    /// Messages it sent (this incarnation).
    pub messages_out: u64,
    /// Mailbox messages handled (this incarnation).
    pub handled: u64,
    /// How long a probe waited in its mailbox, µs; None when it did not answer in time.
    pub mailbox_wait_us: Option<u64>,
    /// Restarts by its tenant supervisor.
    pub restarts: u32,
    /// Seconds since this incarnation started.
    pub uptime_secs: u64,
    /// Last time a client was connected (Unix ms).
    pub last_seen: Option<i64>,
}

fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// Marks the start of the uptime clock (called when the routes are configured).
pub fn mark_start() {
    let _ = started();
}

fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        protocol::ErrorCode::Unavailable,
        format!("{what} did not answer"),
    )
}

struct TenantChildren {
    id: String,
    actor: ActorRef<TenantMsg>,
    reply_us: Option<u64>,
    children: Vec<ChildInfo>,
}

fn matches(child: &ChildInfo, q: &str) -> bool {
    q.is_empty()
        || child.address.to_lowercase().contains(q)
        || child.device_id.to_lowercase().contains(q)
}

/// Builds a snapshot of the live tree.
pub async fn build(state: &AppState, query: &TreeQuery) -> Result<Tree, ApiError> {
    let root = &state.root;
    let t0 = Instant::now();
    let restarts = ractor::call_t!(root, RootMsg::Restarts, CALL_TIMEOUT.as_millis() as u64)
        .map_err(|_| unavailable("root"))?;
    let root_reply_us = t0.elapsed().as_micros() as u64;
    let running = ractor::call_t!(root, RootMsg::Tenants, CALL_TIMEOUT.as_millis() as u64)
        .map_err(|_| unavailable("root"))?;
    let (registered, counts) = tokio::join!(
        state.env.store.list_tenants(),
        state.env.store.device_counts()
    );
    let registered = registered?;
    let counts = counts?;

    // One `Children` call per running tenant supervisor, all at once.
    let children = join_all(running.into_iter().map(|(id, actor)| async move {
        let t = Instant::now();
        let got = ractor::call_t!(actor, TenantMsg::Children, CALL_TIMEOUT.as_millis() as u64);
        let reply_us = got.is_ok().then(|| t.elapsed().as_micros() as u64);
        TenantChildren {
            id,
            actor,
            reply_us,
            children: got.unwrap_or_default(),
        }
    }))
    .await;
    let by_tenant: HashMap<&str, &TenantChildren> =
        children.iter().map(|c| (c.id.as_str(), c)).collect();

    let mut totals = Totals {
        tenants: registered.len(),
        tenant_supervisors: children.len(),
        ..Totals::default()
    };
    let mut tenants = Vec::with_capacity(registered.len());
    for record in &registered {
        let live = by_tenant.get(record.id.as_str());
        let mut node = TenantNode {
            id: record.id.clone(),
            name: record.name.clone(),
            running: live.is_some(),
            actor_id: live.map(|l| l.actor.get_id().to_string()),
            reply_us: live.and_then(|l| l.reply_us),
            restarts: restarts
                .get(&format!("tenant:{}", record.id))
                .copied()
                .unwrap_or(0),
            devices: counts.get(&record.id).copied().unwrap_or(0),
            sessions: 0,
            online: 0,
            connections: 0,
            session_restarts: 0,
            messages_in: 0,
            messages_out: 0,
        };
        for child in live.map(|l| l.children.as_slice()).unwrap_or_default() {
            let g = child.gauge.read();
            node.sessions += 1;
            node.online += usize::from(g.connections > 0);
            node.connections += g.connections;
            node.session_restarts += u64::from(child.restarts);
            node.messages_in += g.messages_in;
            node.messages_out += g.messages_out;
        }
        totals.devices += node.devices;
        totals.sessions += node.sessions;
        totals.online += node.online;
        totals.connections += node.connections;
        tenants.push(node);
    }

    let writers: Vec<WriterNode> = state
        .env
        .persistence
        .stats
        .iter()
        .enumerate()
        .map(|(slot, s)| {
            let name = format!("persistence:writer:{slot}");
            WriterNode {
                slot,
                restarts: restarts.get(&name).copied().unwrap_or(0),
                name,
                batches: s.batches.load(Ordering::Relaxed),
                rows: s.rows.load(Ordering::Relaxed),
                last_batch: s.last_batch.load(Ordering::Relaxed),
                last_commit_us: s.last_commit_us.load(Ordering::Relaxed),
                backlog: s.backlog.load(Ordering::Relaxed),
            }
        })
        .collect();
    totals.writer_backlog = writers.iter().map(|w| w.backlog).sum();

    let (devices, dispatcher) = tokio::join!(
        device_page(&children, query),
        dispatcher_node(state, restarts.get("dispatcher").copied().unwrap_or(0)),
    );

    Ok(Tree {
        generated_at: actors::clock::now_ms(),
        root: RootNode {
            name: "root",
            actor_id: root.get_id().to_string(),
            status: format!("{:?}", root.get_status()),
            uptime_secs: started().elapsed().as_secs(),
            reply_us: Some(root_reply_us),
            restarts: restarts.into_iter().collect(),
        },
        totals,
        writers,
        tenants,
        devices,
        dispatcher: Some(dispatcher?),
        cluster: crate::http::admin_cluster::snapshot(state),
    })
}

async fn device_page(children: &[TenantChildren], query: &TreeQuery) -> DevicePage {
    let tenant = query.tenant.as_deref().filter(|t| !t.is_empty());
    let q = query
        .q
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_lowercase();
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let mut matching: Vec<(&str, &ChildInfo)> = children
        .iter()
        .filter(|t| tenant.is_none_or(|want| want == t.id))
        .flat_map(|t| t.children.iter().map(move |c| (t.id.as_str(), c)))
        .filter(|(_, c)| matches(c, &q))
        .collect();
    // Children come sorted by address within a tenant; keep tenants in id order.
    matching.sort_by(|a, b| (a.0, &a.1.address).cmp(&(b.0, &b.1.address)));
    let total = matching.len();
    let page = matching.into_iter().skip(offset).take(limit);
    let items = join_all(page.map(|(tenant_id, child)| async move {
        let g = child.gauge.read();
        DeviceNode {
            id: child.device_id.clone(),
            tenant_id: tenant_id.to_owned(),
            address: child.address.clone(),
            actor: format!("device:{}", child.device_id),
            actor_id: child.actor.get_id().to_string(),
            state: if child.stopping {
                "stopping"
            } else {
                "running"
            },
            online: g.connections > 0,
            connections: g.connections,
            messages_in: g.messages_in,
            messages_out: g.messages_out,
            handled: g.handled,
            mailbox_wait_us: probe(&child.actor).await,
            restarts: child.restarts,
            uptime_secs: child.uptime_secs,
            last_seen: g.last_seen,
        }
    }))
    .await;
    DevicePage {
        tenant: tenant.map(str::to_owned),
        q: (!q.is_empty()).then_some(q),
        offset,
        limit,
        total,
        items,
    }
}

/// How long a message waits in the session's mailbox right now, µs.
async fn probe(actor: &ActorRef<DeviceMsg>) -> Option<u64> {
    let sent = Instant::now();
    let (tx, rx) = ractor::concurrency::oneshot();
    actor.cast(DeviceMsg::MailboxProbe(sent, tx.into())).ok()?;
    tokio::time::timeout(PROBE_TIMEOUT, rx).await.ok()?.ok()
}
