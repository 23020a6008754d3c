//! Queue operations: `GET /admin/queues/stats`, `POST /admin/queues/restart`.

use std::collections::BTreeMap;

use actix_web::{get, post, web, HttpResponse};
use actors::jobs::JobState;
use actors::root::RootMsg;
use protocol::Priority;
use serde::Serialize;

use crate::auth::AdminAuth;
use crate::error::ApiError;
use crate::state::AppState;

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
}

fn lane_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// `GET /admin/queues/stats`: job counts by state, per lane and per tenant.
#[utoipa::path(get, path = "/admin/queues/stats", tag = "admin",
    responses((status = 200, body = QueueStats), (status = 401, body = protocol::error::ErrorBody)))]
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
    Ok(HttpResponse::Ok().json(QueueStats {
        total,
        lanes,
        tenants,
        dispatcher_running: state.env.dispatcher.current().is_some(),
        dispatcher_restarts: restarts,
        concurrency: state.env.settings.queue_concurrency,
    }))
}

/// `POST /admin/queues/restart`: restarts the dispatcher. Jobs it was sending go back
/// to the queue; their resends are idempotent (job id = request id).
#[utoipa::path(post, path = "/admin/queues/restart", tag = "admin",
    responses((status = 200, description = "`{\"restarted\":bool}`"),
              (status = 401, body = protocol::error::ErrorBody)))]
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
