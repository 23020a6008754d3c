//! Queue operations: `GET /admin/queues/stats`, `POST /admin/queues/restart`,
//! `POST /admin/queues/lanes/{lane}/pause|resume`, and the dispatcher node that both
//! the stats and the `/admin/tree` snapshot show (one builder, so they agree).

use std::collections::BTreeMap;

use actix_web::{get, post, web, HttpResponse};
use actors::jobs::JobState;
use actors::root::RootMsg;
use protocol::Priority;
use serde::Serialize;

use super::openapi as doc;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

/// Job counts by state.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    /// Due, waiting for a worker.
    pub waiting: u64,
    /// Being sent.
    pub active: u64,
    /// Waiting for a budget, a backoff or `send_at`.
    pub delayed: u64,
    /// Sent.
    pub completed: u64,
    /// Gave up.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// completed / (completed + failed); null before any job finished.
    pub success_rate: Option<f64>,
}

impl StateCounts {
    fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Waiting => &mut self.waiting,
            JobState::Active => &mut self.active,
            JobState::Delayed => &mut self.delayed,
            JobState::Completed => &mut self.completed,
            JobState::Failed => &mut self.failed,
            JobState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    fn finish(&mut self) {
        let done = self.completed + self.failed;
        self.success_rate = (done > 0).then(|| self.completed as f64 / done as f64);
    }
}

/// `GET /admin/queues/stats` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Totals over every lane and tenant.
    #[serde(flatten)]
    pub total: StateCounts,
    /// By lane (`critical`, `high`, `normal`, `low`).
    pub lanes: BTreeMap<String, StateCounts>,
    /// By tenant id.
    pub tenants: BTreeMap<String, StateCounts>,
    /// Whether a dispatcher is running now.
    pub dispatcher_running: bool,
    /// Times the dispatcher was restarted since start.
    pub dispatcher_restarts: u32,
    /// Sends in flight at most (`QUEUE_MESSAGE_CONCURRENCY`).
    pub concurrency: usize,
    /// The dispatcher and its lanes, as `/admin/tree` shows them.
    pub dispatcher: DispatcherNode,
}

/// The queue dispatcher as a supervised actor (child of root), with its lanes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DispatcherNode {
    /// Name as the root's restart counts use it.
    pub name: &'static str,
    /// ractor actor id of the running incarnation.
    pub actor_id: Option<String>,
    /// Whether a dispatcher is running now.
    pub running: bool,
    /// Times root restarted it (failures and `POST /admin/queues/restart`).
    pub restarts: u32,
    /// Jobs in flight at most.
    pub concurrency: usize,
    /// Every lane, critical first.
    pub lanes: Vec<LaneNode>,
}

/// One lane of the dispatcher.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LaneNode {
    /// `critical`, `high`, `normal` or `low`.
    pub lane: &'static str,
    /// Jobs queued in the lane: `waiting` plus `delayed`.
    pub depth: u64,
    /// Jobs of the lane in flight.
    pub active: u64,
    /// Jobs of the lane completed per second, averaged over the last few seconds.
    pub rate: f64,
    /// Whether the dispatcher skips the lane (`POST /admin/queues/lanes/{lane}/pause`).
    pub paused: bool,
}

/// Builds the dispatcher node: lane depths from one grouped COUNT over a partial
/// index, the rest from counters the dispatcher keeps. `restarts` is root's count.
pub async fn dispatcher_node(state: &AppState, restarts: u32) -> Result<DispatcherNode, ApiError> {
    let depths = state.env.store.lane_depths().await?;
    let handle = &state.env.dispatcher;
    let current = handle.current();
    let lanes = handle
        .lanes()
        .into_iter()
        .map(|l| LaneNode {
            lane: lane_name(l.lane),
            depth: depths[l.lane.index()],
            active: l.active,
            rate: (l.rate * 100.0).round() / 100.0,
            paused: l.paused,
        })
        .collect();
    Ok(DispatcherNode {
        name: "dispatcher",
        actor_id: current.as_ref().map(|d| d.get_id().to_string()),
        running: current.is_some(),
        restarts,
        concurrency: state.env.settings.queue_concurrency,
        lanes,
    })
}

/// The wire name of a lane.
pub fn lane_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// `GET /admin/queues/stats`: job counts by state, per lane and per tenant.
#[utoipa::path(get, path = "/admin/queues/stats", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = QueueStats, description = "job counts by state, lane and tenant"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/admin/queues/stats")]
pub async fn queue_stats(
    _: AdminAuth,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let counts = state.env.store.queue_counts().await?;
    let mut total = StateCounts::default();
    let mut lanes: BTreeMap<String, StateCounts> = Priority::ALL
        .iter()
        .map(|p| (lane_name(*p).to_owned(), StateCounts::default()))
        .collect();
    let mut tenants: BTreeMap<String, StateCounts> = BTreeMap::new();
    for c in counts {
        total.add(c.state, c.count);
        lanes
            .entry(lane_name(c.lane).to_owned())
            .or_default()
            .add(c.state, c.count);
        tenants
            .entry(c.tenant_id)
            .or_default()
            .add(c.state, c.count);
    }
    total.finish();
    lanes.values_mut().for_each(StateCounts::finish);
    tenants.values_mut().for_each(StateCounts::finish);
    let restarts = ractor::call!(state.root, RootMsg::Restarts)
        .ok()
        .and_then(|r| r.get("dispatcher").copied())
        .unwrap_or(0);
    let dispatcher = dispatcher_node(&state, restarts).await?;
    Ok(HttpResponse::Ok().json(QueueStats {
        total,
        lanes,
        tenants,
        dispatcher_running: dispatcher.running,
        dispatcher_restarts: restarts,
        concurrency: state.env.settings.queue_concurrency,
        dispatcher,
    }))
}

/// `POST /admin/queues/restart`: restarts the dispatcher. Jobs it was sending go back
/// to the queue; their resends are idempotent (job id = request id).
#[utoipa::path(post, path = "/admin/queues/restart", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = doc::DispatcherRestarted, description = "the dispatcher was restarted"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN)))]
#[post("/admin/queues/restart")]
pub async fn restart_queues(
    _: AdminAuth,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let restarted = state.env.dispatcher.restart();
    // Wait (briefly) for the supervisor to start the new one.
    for _ in 0..100 {
        if state.env.dispatcher.current().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "restarted": restarted,
        "running": state.env.dispatcher.current().is_some(),
    })))
}

fn parse_lane(name: &str) -> Result<Priority, ApiError> {
    Priority::parse(name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown lane {name:?}: expected critical, high, normal or low"
        ))
    })
}

/// `POST /admin/queues/lanes/{lane}/pause`: the dispatcher stops claiming the lane's
/// jobs; they stay waiting (none fails), jobs already in flight finish. The pause is
/// stored (`Store::set_lane_paused`), for every node's dispatcher, and outlives a
/// restart; this node's dispatcher stops at once.
#[utoipa::path(post, path = "/admin/queues/lanes/{lane}/pause", tag = "admin",
    security(("admin_token" = [])),
    params(("lane" = String, Path, pattern = "^(critical|high|normal|low)$", description = "critical, high, normal or low")),
    responses(
        (status = 200, body = doc::LaneChange, description = "the lane is paused"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not a lane"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/admin/queues/lanes/{lane}/pause")]
pub async fn pause_lane(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let lane = parse_lane(&path)?;
    // Stored first: a pause that could not be stored is not answered as done.
    state.env.store.set_lane_paused(lane, true).await?;
    let changed = state.env.dispatcher.pause(lane);
    settle_on_every_node(&state).await;
    tracing::info!(
        action = "pause",
        lane = lane_name(lane),
        changed,
        "admin action: queue lane paused"
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "lane": lane_name(lane),
        "paused": true,
        "changed": changed,
    })))
}

/// In a cluster, waits until every node's dispatcher claims under the stored paused
/// lanes (each reads them at most `LANES_FRESH` before a claim), so a pause holds
/// everywhere once it is answered.
async fn settle_on_every_node(state: &AppState) {
    if state.env.cluster.is_some() {
        tokio::time::sleep(actors::dispatcher::LANES_FRESH * 2).await;
    }
}

/// `POST /admin/queues/lanes/{lane}/resume`: the dispatcher claims the lane's jobs
/// again (stored, as a pause is).
#[utoipa::path(post, path = "/admin/queues/lanes/{lane}/resume", tag = "admin",
    security(("admin_token" = [])),
    params(("lane" = String, Path, pattern = "^(critical|high|normal|low)$", description = "critical, high, normal or low")),
    responses(
        (status = 200, body = doc::LaneChange, description = "the lane is claimed again"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not a lane"),
        (status = 401, body = ErrorBody, description = doc::NO_ADMIN),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/admin/queues/lanes/{lane}/resume")]
pub async fn resume_lane(
    _: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let lane = parse_lane(&path)?;
    state.env.store.set_lane_paused(lane, false).await?;
    let changed = state.env.dispatcher.resume(lane);
    settle_on_every_node(&state).await;
    tracing::info!(
        action = "resume",
        lane = lane_name(lane),
        changed,
        "admin action: queue lane resumed"
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "lane": lane_name(lane),
        "paused": false,
        "changed": changed,
    })))
}
