//! `GET /v1/stats/messages`: message statistics per device and UTC day (the replaced
//! system's 24-hour statistics cache). Computed from the store; each finished day's
//! figures are cached (`stats` kind, 24 h), today's are always computed afresh, so the
//! answer follows new traffic.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::{get, web, HttpResponse};
use actors::cache::CacheKind;
use actors::clock::now_ms;
use actors::store::DayStats;
use serde::{Deserialize, Serialize};

use super::devices::owned_device;
use super::openapi as doc;
use crate::auth::TenantAuth;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::error::ErrorBody;

const DAY_MS: i64 = 86_400_000;
/// The longest range one call may ask for.
const MAX_DAYS: i64 = 92;

/// Query of `GET /v1/stats/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// From (Unix ms, inclusive; default: 7 days before `to`).
    pub from: Option<i64>,
    /// To (Unix ms, exclusive; default: now).
    pub to: Option<i64>,
    /// Only this device of the tenant.
    pub device: Option<String>,
}

/// One device's figures on one day.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DayFigures {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Start of the day (Unix ms).
    pub day: i64,
    /// The device.
    pub device_id: String,
    /// Messages it sent.
    pub sent: u64,
    /// `delivered` statuses it got for its messages.
    pub delivered: u64,
    /// `read` statuses it got for its messages.
    pub read: u64,
    /// Its jobs created that day that failed.
    pub failed: u64,
    /// Its jobs created that day.
    pub queued: u64,
}

/// Sums over the range.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Messages sent.
    pub sent: u64,
    /// `delivered` statuses.
    pub delivered: u64,
    /// `read` statuses.
    pub read: u64,
    /// Failed jobs.
    pub failed: u64,
    /// Jobs created.
    pub queued: u64,
}

/// `GET /v1/stats/messages` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageStats {
    /// The range asked for (Unix ms, `[from, to)`).
    pub from: i64,
    /// End of the range (exclusive).
    pub to: i64,
    /// Per day and device; days with nothing are left out.
    pub days: Vec<DayFigures>,
    /// Over every listed day and device.
    pub totals: Totals,
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (proleptic Gregorian).
fn date(day: i64) -> String {
    // Howard Hinnant's days-from-civil, inverted.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", if m <= 2 { y + 1 } else { y })
}

/// `GET /v1/stats/messages?from=&to=&device=`: per device of the tenant (or one) and
/// UTC day: messages sent, statuses delivered / read got for them, jobs queued and
/// failed.
#[utoipa::path(get, path = "/v1/stats/messages", tag = "stats", params(StatsQuery),
    security(("tenant_key" = [])),
    responses(
        (status = 200, body = MessageStats, description = "figures per device and UTC day"),
        (status = 400, body = ErrorBody, description = "`bad_request`: `from` / `to` not integers, `from` negative or not before `to`, or a range over 92 days"),
        (status = 401, body = ErrorBody, description = doc::NO_KEY),
        (status = 403, body = ErrorBody, description = "`forbidden`: `device` belongs to another tenant"),
        (status = 404, body = ErrorBody, description = "`not_found`: no device `device`"),
        (status = 500, body = ErrorBody, description = doc::INTERNAL),
        (status = 503, body = ErrorBody, description = doc::UNAVAILABLE)))]
#[get("/v1/stats/messages")]
pub async fn message_stats(
    tenant: TenantAuth,
    state: web::Data<AppState>,
    q: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = now_ms();
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - 7 * DAY_MS);
    if from < 0 || to <= from {
        return Err(ApiError::bad_request(
            "`from` must be before `to` (Unix ms)",
        ));
    }
    if to - from > MAX_DAYS * DAY_MS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_DAYS} days per call"
        )));
    }
    if let Some(d) = &q.device {
        owned_device(&state, &tenant, d).await?;
    }
    let scope = q.device.as_deref().unwrap_or("*");
    let today = now.div_euclid(DAY_MS);
    let (first, last) = (from.div_euclid(DAY_MS), (to - 1).div_euclid(DAY_MS));
    let cache = &state.env.cache;
    // Finished days come from the cache; the rest from the store in one call.
    let mut per_day: BTreeMap<i64, Arc<Vec<DayStats>>> = BTreeMap::new();
    let mut missing = Vec::new();
    for day in first..=last {
        let whole = day * DAY_MS >= from && (day + 1) * DAY_MS <= to;
        let key = format!("{}/{scope}/{day}", tenant.0);
        match (whole && day < today).then_some(()) {
            Some(()) => match cache.get::<Vec<DayStats>>(CacheKind::Stats, &key).await {
                Some(v) => {
                    per_day.insert(day, v);
                }
                None => missing.push(day),
            },
            None => missing.push(day),
        }
    }
    if let (Some(lo), Some(hi)) = (missing.first(), missing.last()) {
        let (lo_ms, hi_ms) = ((lo * DAY_MS).max(from), ((hi + 1) * DAY_MS).min(to));
        let rows = state
            .env
            .store
            .message_stats(&tenant.0, q.device.as_deref(), lo_ms, hi_ms)
            .await?;
        let mut grouped: BTreeMap<i64, Vec<DayStats>> =
            missing.iter().map(|d| (*d, Vec::new())).collect();
        for r in rows {
            grouped.entry(r.day.div_euclid(DAY_MS)).or_default().push(r);
        }
        for (day, rows) in grouped {
            let rows = Arc::new(rows);
            let whole = day * DAY_MS >= from && (day + 1) * DAY_MS <= to;
            if whole && day < today {
                let key = format!("{}/{scope}/{day}", tenant.0);
                cache.set(CacheKind::Stats, &key, rows.clone()).await;
            }
            per_day.insert(day, rows);
        }
    }
    let mut totals = Totals::default();
    let mut days = Vec::new();
    for (day, rows) in per_day {
        for r in rows.iter() {
            totals.sent += r.sent;
            totals.delivered += r.delivered;
            totals.read += r.read;
            totals.failed += r.failed;
            totals.queued += r.queued;
            days.push(DayFigures {
                date: date(day),
                day: day * DAY_MS,
                device_id: r.device_id.clone(),
                sent: r.sent,
                delivered: r.delivered,
                read: r.read,
                failed: r.failed,
                queued: r.queued,
            });
        }
    }
    Ok(HttpResponse::Ok().json(MessageStats {
        from,
        to,
        days,
        totals,
    }))
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn dates_of_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_454), "2026-01-01");
        assert_eq!(date(20_788), "2026-12-01");
        assert_eq!(date(11_016), "2000-02-29");
    }
}
