//! `POST /v1/groups/sync`: bulk create-or-replace of a tenant's groups and their
//! members, as one background job with progress (`GET /v1/jobs/{id}`).
//!
//! A group is named by the caller's `key` or by an existing `group_id`. A key's group
//! id is derived from the tenant and the key, so syncing the same key again (or the
//! job running again after a crash) updates the same group instead of creating a
//! second. The call is validated whole before the job is stored (errors name the
//! offending index); `group_id`s must be the tenant's own groups.

use actix_web::{post, web, HttpResponse};
use protocol::background::{check_group_sync, parse_lane, GroupSync, GroupSyncAccepted};
use protocol::rest::MAX_GROUP_MEMBERS;
use protocol::ErrorCode;

use protocol::error::ErrorBody;

use super::body::{ApiJson, BulkLimit};
use super::jobs::{encode, enqueue_background, Background};
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use actors::jobs::JobKind;

/// The group id a tenant's `key` stands for: `gk_` and 32 hex digits of SHA-256 over
/// the tenant id and the key (never another tenant's, never a random `g_` id).
pub fn keyed_group_id(tenant_id: &str, key: &str) -> String {
    let digest = credentials::hash_key(&format!("group-key\0{tenant_id}\0{key}"));
    format!("gk_{}", &digest[..32])
}

/// `POST /v1/groups/sync`: queues a group sync (202 `{"job_id","total","group_ids"}`).
#[utoipa::path(post, path = "/v1/groups/sync", tag = "groups",
    security(("tenant_key" = [])),
    request_body(content = GroupSync, description = "at most `max_bulk_bytes` (16 MiB by default) and 10,000 groups of at most 1,024 members; each group by `key` or `group_id`"),
    responses(
        (status = 202, body = GroupSyncAccepted, description = "the job is durable and queued",
         links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")),
                description = "the sync's state and progress")),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/job_id")),
                description = "cancel the sync while it waits")),
            ("GetGroup" = (operation_id = "get_group", parameters(("id" = "$response.body#/group_ids/0")),
                description = "the first group (each id of `group_ids` the same way)")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, or an entry is invalid (the message names its index)"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_GROUP),
        (status = 404, body = ErrorBody, description = doc::NO_GROUP),
        (status = 413, body = ErrorBody, description = "`too_large`: over `max_bulk_bytes` (16 MiB by default), 10,000 groups or 1,024 members in a group"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/groups/sync")]
pub async fn sync_groups(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<GroupSync, BulkLimit>,
) -> Result<HttpResponse, ApiError> {
    let mut sync = body.into_inner();
    check_group_sync(&sync, MAX_GROUP_MEMBERS).map_err(|e| ApiError::new(e.code, e.message))?;
    let lane =
        parse_lane(sync.priority.as_deref()).map_err(|e| ApiError::new(e.code, e.message))?;
    for (i, g) in sync.groups.iter_mut().enumerate() {
        match g.key.take() {
            Some(key) => g.group_id = Some(keyed_group_id(&tenant.0, &key)),
            None => {
                let id = g.group_id.as_deref().unwrap_or_default();
                let found = state.env.directory.group(id).await?;
                match found {
                    None => {
                        return Err(ApiError::not_found(format!(
                            "`groups[{i}].group_id`: no group {id}"
                        )))
                    }
                    Some(found) if found.tenant_id != tenant.0 => {
                        return Err(ApiError::new(
                            ErrorCode::Forbidden,
                            format!("`groups[{i}].group_id`: the group belongs to another tenant"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let total = sync.groups.len() as u64;
    let job = Background {
        kind: JobKind::Groups,
        tenant_id: &tenant.0,
        device_id: "",
        lane,
    };
    let job_id = enqueue_background(&state, job, encode(&sync.groups, "groups")?, total).await?;
    let group_ids = sync.groups.into_iter().filter_map(|g| g.group_id).collect();
    Ok(HttpResponse::Accepted().json(GroupSyncAccepted {
        job_id,
        total,
        group_ids,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::keyed_group_id;

    #[test]
    fn a_key_names_one_group_per_tenant() {
        let a = keyed_group_id("t_1", "crm-7");
        assert_eq!(a, keyed_group_id("t_1", "crm-7"));
        assert_ne!(a, keyed_group_id("t_2", "crm-7"));
        assert_ne!(a, keyed_group_id("t_1", "crm-8"));
        assert!(a.starts_with("gk_") && a.len() == 35);
    }
}
