//! Logs: tracing with `LOG_FORMAT=json|pretty` and `RUST_LOG` filters, and a request id
//! on every HTTP request (also returned as `x-request-id`). Query strings are never
//! logged: the WebSocket token travels in one.

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format.eq_ignore_ascii_case("json") {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Middleware giving each request a span with a request id.
pub struct RequestId;

impl<S, B> Transform<S, ServiceRequest> for RequestId
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestIdService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestIdService { service }))
    }
}

/// The service of [`RequestId`].
pub struct RequestIdService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for RequestIdService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let request_id = ulid::Ulid::new().to_string();
        let span = tracing::info_span!(
            "http",
            request_id = %request_id,
            method = %req.method(),
            path = %req.path(),
        );
        let fut = self.service.call(req);
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                let mut res = fut.await?;
                tracing::debug!(
                    status = res.status().as_u16(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "request"
                );
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    res.headers_mut()
                        .insert(HeaderName::from_static("x-request-id"), v);
                }
                Ok(res)
            }
            .instrument(span),
        )
    }
}
