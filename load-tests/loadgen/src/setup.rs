//! REST setup calls: tenant, devices and device tokens.

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
