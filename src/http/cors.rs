//! CORS for the REST API: off unless `cors_allowed_origins` lists origins. Browsers
//! then may call the API from those origins (and from the server's own, so the
//! `/admin` page keeps working); requests from other origins are refused.

use actix_cors::Cors;
use actix_web::middleware::Condition;

/// The CORS middleware for `origins` (a no-op when empty).
pub fn layer(origins: &[String]) -> Condition<Cors> {
    let allowed: Vec<String> = origins
        .iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    let enabled = !allowed.is_empty();
    let cors = Cors::default()
        .allowed_origin_fn(move |origin, head| {
            let Ok(origin) = origin.to_str() else {
                return false;
            };
            let origin = origin.to_ascii_lowercase();
            let own = head
                .headers()
                .get(actix_web::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|host| {
                    origin == format!("http://{host}") || origin == format!("https://{host}")
                });
            own || allowed.contains(&origin)
        })
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
        ])
        .expose_headers(["x-request-id", "retry-after"])
        .max_age(3600);
    Condition::new(enabled, cors)
}
