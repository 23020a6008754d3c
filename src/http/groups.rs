//! Groups: a named set of addresses in one tenant.

use std::sync::Arc;

use actix_web::{delete, get, post, web, HttpResponse};
use actors::clock::now_ms;
use actors::store::{GroupRecord, StoreError};
use protocol::rest::{CreateGroup, Group, GroupMembers, MAX_GROUP_MEMBERS};
use protocol::ErrorCode;

use super::body::ApiJson;
use super::check_address;
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

fn view(g: GroupRecord) -> Group {
    Group {
        group_id: g.id,
        name: g.name,
        members: g.members,
        created_at: g.created_at,
    }
}

fn check_members(members: &[String]) -> Result<(), ApiError> {
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("a group has at most {MAX_GROUP_MEMBERS} members"),
        ));
    }
    for (i, m) in members.iter().enumerate() {
        check_address(&format!("members[{i}]"), m)?;
    }
    Ok(())
}

fn normalize(members: Vec<String>) -> Result<Vec<String>, ApiError> {
    check_members(&members)?;
    let mut members = members;
    members.sort();
    members.dedup();
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("a group has at most {MAX_GROUP_MEMBERS} members"),
        ));
    }
    Ok(members)
}

async fn owned_group(
    state: &AppState,
    tenant: &TenantAuth,
    id: &str,
) -> Result<GroupRecord, ApiError> {
    let g = state
        .env
        .directory
        .group(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group {id}")))?;
    let g = (*g).clone();
    if g.tenant_id != tenant.0 {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this group belongs to another tenant",
        ));
    }
    Ok(g)
}

/// `POST /v1/groups`: creates a group.
#[utoipa::path(post, path = "/v1/groups", tag = "groups",
    security(("tenant_key" = [])),
    request_body(content = CreateGroup, description = "at most `max_request_bytes` (64 KiB by default) and 1024 members"),
    responses(
        (status = 201, body = Group, description = "the group",
         links(
            ("GetGroup" = (operation_id = "get_group", parameters(("id" = "$response.body#/group_id")))),
            ("AddMembers" = (operation_id = "add_members", parameters(("id" = "$response.body#/group_id")))),
            ("RemoveMember" = (operation_id = "remove_member", parameters(("id" = "$response.body#/group_id")))),
            ("SendToGroup" = (operation_id = "send_message",
                description = "send to the group: `group` = `group_id` in the body")))),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, `name` not 1 to 200 characters, or a member not E.164"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 413, body = ErrorBody, description = "`too_large`: over 1024 members, or the body over `max_request_bytes` (64 KiB by default)"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/groups")]
pub async fn create_group(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: ApiJson<CreateGroup>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("`name` must be 1 to 200 characters"));
    }
    let group = GroupRecord {
        id: format!("g_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant_id: tenant.0.clone(),
        name,
        members: normalize(body.members)?,
        created_at: now_ms(),
        version: 0,
    };
    state.env.store.create_group(group.clone()).await?;
    Ok(HttpResponse::Created().json(view(group)))
}

/// `GET /v1/groups/{id}`: a group with its members.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "group id")),
    responses(
        (status = 200, body = Group, description = "the group"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_GROUP),
        (status = 404, body = ErrorBody, description = doc::NO_GROUP),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/groups/{id}")]
pub async fn get_group(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(view(owned_group(&state, &tenant, &id).await?)))
}

/// `POST /v1/groups/{id}/members`: adds members, atomically (concurrent adds are all
/// kept); the change is visible to the next send at once.
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups",
    security(("tenant_key" = [])),
    params(("id" = String, Path, description = "group id")),
    request_body(content = GroupMembers, description = "at most `max_request_bytes` (64 KiB by default); the group at most 1024 members after it"),
    responses(
        (status = 200, body = Group, description = "the group after the change"),
        (status = 400, body = ErrorBody, description = "`bad_request`: not JSON of this shape, or a member not E.164"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_GROUP),
        (status = 404, body = ErrorBody, description = doc::NO_GROUP),
        (status = 413, body = ErrorBody, description = "`too_large`: the group would have over 1024 members, or the body is over `max_request_bytes` (64 KiB by default)"),
        (status = 415, body = ErrorBody, description = doc::NOT_JSON),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[post("/v1/groups/{id}/members")]
pub async fn add_members(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: ApiJson<GroupMembers>,
) -> Result<HttpResponse, ApiError> {
    let group = owned_group(&state, &tenant, &id).await?;
    let added = body.into_inner().members;
    check_members(&added)?;
    let updated = state
        .env
        .store
        .add_group_members(&group.id, &added, MAX_GROUP_MEMBERS)
        .await
        .map_err(|e| match e {
            StoreError::Limit(m) => ApiError::new(ErrorCode::TooLarge, m),
            other => other.into(),
        })?
        .ok_or_else(|| ApiError::not_found(format!("no group {id}")))?;
    state
        .env
        .directory
        .group_changed(Arc::new(updated.clone()))
        .await;
    Ok(HttpResponse::Ok().json(view(updated)))
}

/// `DELETE /v1/groups/{id}/members/{address}`: removes a member, atomically; it gets
/// nothing sent to the group after this answer.
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{address}", tag = "groups",
    params(("id" = String, Path, description = "group id"),
           ("address" = String, Path, description = "member address")),
    security(("tenant_key" = [])),
    responses(
        (status = 200, body = Group, description = "the group after the change"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = doc::OTHER_TENANTS_GROUP),
        (status = 404, body = ErrorBody, description = "`not_found`: no group with this id, or the address is not a member"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[delete("/v1/groups/{id}/members/{address}")]
pub async fn remove_member(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, address) = path.into_inner();
    let group = owned_group(&state, &tenant, &id).await?;
    let (updated, removed) = state
        .env
        .store
        .remove_group_member(&group.id, &address)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group {id}")))?;
    if !removed {
        return Err(ApiError::not_found(format!("{address} is not a member")));
    }
    state
        .env
        .directory
        .group_changed(Arc::new(updated.clone()))
        .await;
    Ok(HttpResponse::Ok().json(view(updated)))
}
