//! REST calls: tenant, devices, device tokens, groups, bulk sends, jobs and the queue
//! statistics.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

/// Answer of `POST /admin/tenants`.
#[derive(Debug, Deserialize)]
pub struct Tenant {
    /// The new tenant's id.
    pub tenant_id: String,
    /// Its API key (shown once).
    pub api_key: String,
}

/// The part of the `POST /v1/devices` answer loadgen needs.
#[derive(Debug, Deserialize)]
struct DeviceCreated {
    device_id: String,
}

/// The part of the `POST /v1/devices/{id}/tokens` answer loadgen needs.
#[derive(Debug, Deserialize)]
struct TokenCreated {
    token: String,
}

/// The part of the `POST /v1/groups` answer loadgen needs.
#[derive(Debug, Deserialize)]
struct GroupCreated {
    group_id: String,
}

/// The answer of `POST /v1/messages/bulk`.
#[derive(Debug, Deserialize)]
struct BulkQueued {
    job_ids: Vec<String>,
}

/// The part of a `GET /v1/jobs/{id}` answer loadgen looks at.
#[derive(Debug, Deserialize)]
pub struct Job {
    /// `waiting`, `delayed`, `active`, `completed`, `failed` or `cancelled`.
    pub state: String,
    /// The message sent, once completed.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Job counts by state (one tenant's, from `GET /admin/queues/stats`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct JobCounts {
    /// Due, not yet claimed.
    #[serde(default)]
    pub waiting: u64,
    /// Being sent.
    #[serde(default)]
    pub active: u64,
    /// Waiting for a budget, a backoff or `send_at`.
    #[serde(default)]
    pub delayed: u64,
    /// Sent.
    #[serde(default)]
    pub completed: u64,
    /// Failed for good.
    #[serde(default)]
    pub failed: u64,
}

/// The part of `GET /admin/queues/stats` loadgen reads.
#[derive(Debug, Deserialize)]
struct QueueStats {
    #[serde(default)]
    tenants: std::collections::BTreeMap<String, JobCounts>,
}

/// A small client for the server's REST API.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// The HTTP client (for `/metrics`).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The same client for another node at `base` (no trailing slash).
    pub fn with_base(&self, base: &str) -> Api {
        Api {
            client: self.client.clone(),
            base: base.to_owned(),
        }
    }

    /// A client for base URL `base` (no trailing slash) keeping up to `pool` idle
    /// connections.
    pub fn new(base: &str, pool: usize) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            client,
            base: base.to_owned(),
        })
    }

    /// `POST /admin/tenants {"name"}` with the admin token.
    pub async fn create_tenant(&self, admin_token: &str, name: &str) -> Result<Tenant> {
        let resp = self
            .client
            .post(format!("{}/admin/tenants", self.base))
            .bearer_auth(admin_token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .with_context(|| format!("POST {}/admin/tenants", self.base))?;
        read_json(resp, "POST /admin/tenants").await
    }

    /// `POST /v1/devices {"address","name"}`; returns the device id.
    pub async fn create_device(&self, api_key: &str, address: &str, name: &str) -> Result<String> {
        let resp = self
            .client
            .post(format!("{}/v1/devices", self.base))
            .bearer_auth(api_key)
            .json(&json!({ "address": address, "name": name }))
            .send()
            .await
            .context("POST /v1/devices")?;
        let d: DeviceCreated = read_json(resp, "POST /v1/devices").await?;
        Ok(d.device_id)
    }

    /// `POST /v1/devices/{id}/tokens`; returns the device token.
    pub async fn create_token(&self, api_key: &str, device_id: &str) -> Result<String> {
        let resp = self
            .client
            .post(format!("{}/v1/devices/{device_id}/tokens", self.base))
            .bearer_auth(api_key)
            .json(&json!({}))
            .send()
            .await
            .context("POST /v1/devices/{id}/tokens")?;
        let t: TokenCreated = read_json(resp, "POST /v1/devices/{id}/tokens").await?;
        Ok(t.token)
    }
}

impl Api {
    /// `POST /v1/groups {"name","members"}`; returns the group id.
    pub async fn create_group(
        &self,
        api_key: &str,
        name: &str,
        members: &[String],
    ) -> Result<String> {
        let resp = self
            .client
            .post(format!("{}/v1/groups", self.base))
            .bearer_auth(api_key)
            .json(&json!({ "name": name, "members": members }))
            .send()
            .await
            .context("POST /v1/groups")?;
        let g: GroupCreated = read_json(resp, "POST /v1/groups").await?;
        Ok(g.group_id)
    }

    /// `POST /v1/messages/bulk` with a prepared JSON body; returns the job ids.
    pub async fn bulk_send(&self, api_key: &str, body: Vec<u8>) -> Result<Vec<String>> {
        let resp = self
            .client
            .post(format!("{}/v1/messages/bulk", self.base))
            .bearer_auth(api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(Duration::from_secs(300))
            .body(body)
            .send()
            .await
            .context("POST /v1/messages/bulk")?;
        let q: BulkQueued = read_json(resp, "POST /v1/messages/bulk").await?;
        Ok(q.job_ids)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, api_key: &str, id: &str) -> Result<Job> {
        let resp = self
            .client
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(api_key)
            .send()
            .await
            .context("GET /v1/jobs/{id}")?;
        read_json(resp, "GET /v1/jobs/{id}").await
    }

    /// Tenant `tenant_id`'s job counts from `GET /admin/queues/stats` (admin token).
    pub async fn tenant_jobs(&self, admin_token: &str, tenant_id: &str) -> Result<JobCounts> {
        let resp = self
            .client
            .get(format!("{}/admin/queues/stats", self.base))
            .bearer_auth(admin_token)
            .send()
            .await
            .context("GET /admin/queues/stats")?;
        let q: QueueStats = read_json(resp, "GET /admin/queues/stats").await?;
        Ok(q.tenants.get(tenant_id).copied().unwrap_or_default())
    }
}

/// Decodes a 2xx JSON answer, or fails with the status and (the start of) the body.
async fn read_json<T: DeserializeOwned>(resp: reqwest::Response, what: &str) -> Result<T> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: reading the answer"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        bail!("{what}: HTTP {status}: {text}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected answer"))
}
