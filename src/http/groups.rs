//! Groups: a named set of addresses in one tenant.

use actix_web::{delete, get, post, web, HttpResponse};
use actors::clock::now_ms;
use actors::store::GroupRecord;
use protocol::rest::{CreateGroup, Group, GroupMembers, MAX_GROUP_MEMBERS};
use protocol::ErrorCode;

use super::check_address;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;

fn view(g: GroupRecord) -> Group {
    Group {
        group_id: g.id,
        name: g.name,
        members: g.members,
        created_at: g.created_at,
    }
}

fn normalize(members: Vec<String>) -> Result<Vec<String>, ApiError> {
    for (i, m) in members.iter().enumerate() {
        check_address(&format!("members[{i}]"), m)?;
    }
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
        .store
        .get_group(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group {id}")))?;
    if g.tenant_id != tenant.0 {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this group belongs to another tenant",
        ));
    }
    Ok(g)
}

/// `POST /v1/groups`: creates a group.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = Group)))]
#[post("/v1/groups")]
pub async fn create_group(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    body: web::Json<CreateGroup>,
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
    };
    state.env.store.create_group(group.clone()).await?;
    Ok(HttpResponse::Created().json(view(group)))
}

/// `GET /v1/groups/{id}`: a group with its members.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "group id")),
    responses((status = 200, body = Group), (status = 404, body = protocol::error::ErrorBody)))]
#[get("/v1/groups/{id}")]
pub async fn get_group(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(view(owned_group(&state, &tenant, &id).await?)))
}

/// `POST /v1/groups/{id}/members`: adds members.
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups",
    params(("id" = String, Path, description = "group id")),
    request_body = GroupMembers, responses((status = 200, body = Group)))]
#[post("/v1/groups/{id}/members")]
pub async fn add_members(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<GroupMembers>,
) -> Result<HttpResponse, ApiError> {
    let mut group = owned_group(&state, &tenant, &id).await?;
    let mut members = group.members.clone();
    members.extend(body.into_inner().members);
    group.members = normalize(members)?;
    state
        .env
        .store
        .set_group_members(&group.id, &group.members)
        .await?;
    state.env.directory.forget_group(&group.id);
    Ok(HttpResponse::Ok().json(view(group)))
}

/// `DELETE /v1/groups/{id}/members/{address}`: removes a member.
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{address}", tag = "groups",
    params(("id" = String, Path, description = "group id"),
           ("address" = String, Path, description = "member address")),
    responses((status = 200, body = Group)))]
#[delete("/v1/groups/{id}/members/{address}")]
pub async fn remove_member(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, address) = path.into_inner();
    let mut group = owned_group(&state, &tenant, &id).await?;
    let before = group.members.len();
    group.members.retain(|m| *m != address);
    if group.members.len() == before {
        return Err(ApiError::not_found(format!("{address} is not a member")));
    }
    state
        .env
        .store
        .set_group_members(&group.id, &group.members)
        .await?;
    state.env.directory.forget_group(&group.id);
    Ok(HttpResponse::Ok().json(view(group)))
}
