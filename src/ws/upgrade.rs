//! The upgrade service: actix-http hands every request with `Connection: Upgrade` here,
//! with its connection (`Framed<TcpStream, h1::Codec>`), before actix-web's routing.
//! `GET /v1/ws` is checked like any request (`super::admit`), answered `101` and served
//! on the raw socket; anything else gets the JSON error it would get from the app.

use std::io;
use std::sync::Arc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{self, BodySize, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::{ws, HttpMessage, Request, Response};
use actix_service::{fn_service, ServiceFactory};
use actix_web::http::header::{HeaderName, HeaderValue, ORIGIN};
use actix_web::ResponseError;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::connection::Connection;
use super::socket::Socket;
use crate::error::ApiError;
use crate::state::AppState;

/// The connection as actix-http hands it over.
type HttpConn = Framed<TcpStream, h1::Codec>;

/// The upgrade service factory for `HttpServiceBuilder::upgrade`.
pub fn factory(
    state: Arc<AppState>,
) -> impl ServiceFactory<
    (Request, HttpConn),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
> + Clone {
    fn_service(move |(req, conn): (Request, HttpConn)| {
        let state = state.clone();
        // Boxed, so the dispatcher's own future (every HTTP connection's) stays small.
        let serving: LocalBoxFuture<'static, Result<(), actix_web::Error>> = Box::pin(async move {
            serve(state, req, conn)
                .await
                .map_err(actix_web::Error::from)
        });
        serving
    })
}

/// Answers one upgrade request; an `Err` only means the client's socket failed.
async fn serve(state: Arc<AppState>, req: Request, conn: HttpConn) -> io::Result<()> {
    let request_id = ulid::Ulid::new().to_string();
    let span = tracing::info_span!(
        "http",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
    );
    async move {
        // The handshake's futures are boxed: they are short-lived, and inline they would
        // size the state the connection keeps for its whole life.
        let checked = if req.path() != "/v1/ws" {
            Err(ApiError::not_found("no such route"))
        } else if let Err(e) = ws::verify_handshake(req.head()) {
            Err(ApiError::bad_request(format!(
                "WebSocket upgrade failed: {e}"
            )))
        } else {
            let origin = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
            let ip = req.peer_addr().map(|a| a.ip());
            Box::pin(super::admit(&state, ip, origin, req.uri().query())).await
        };
        let admitted = match checked {
            Ok(a) => a,
            Err(e) => return Box::pin(refuse(conn, &request_id, e)).await,
        };
        let mut accept = ws::handshake_response(req.head());
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            accept.insert_header((HeaderName::from_static("x-request-id"), v));
        }
        let accept = accept.finish().drop_body();
        // The request's headers share the HTTP read buffer (8 KiB): let both go now.
        drop(req);
        let mut conn = conn;
        Box::pin(conn.send((accept, BodySize::None).into())).await?;
        tracing::debug!(status = 101, "request");
        let FramedParts { io, read_buf, .. } = conn.into_parts();
        // Off this HTTP worker's reactor: the session runs on the actors' runtime,
        // where its frames and its device actor's replies wake no other thread.
        let io = io.into_std()?;
        let max = state.config.max_frame_bytes;
        let read_ahead = read_buf.freeze();
        let runtime = state.runtime.clone();
        let connection =
            Connection::new(state, admitted.device, admitted.token_exp_s, admitted.slot);
        let span = tracing::info_span!(
            "ws",
            conn_id = connection.id(),
            device_id = %connection.device_id(),
            tenant_id = %connection.tenant_id(),
        );
        // A task of its own, so the HTTP dispatcher's task and this handshake's state
        // end here; the connection keeps only its serving loop.
        runtime.spawn(
            async move {
                let io = match TcpStream::from_std(io) {
                    Ok(io) => io,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not register the WebSocket's socket");
                        return;
                    }
                };
                let socket = Socket::new(io, &read_ahead, max, max);
                drop(read_ahead);
                connection.run(socket).await
            }
            .instrument(span),
        );
        Ok(())
    }
    .instrument(span)
    .await
}

/// Answers with `error`'s JSON body and status, then the connection ends.
async fn refuse(mut conn: HttpConn, request_id: &str, error: ApiError) -> io::Result<()> {
    tracing::debug!(status = error.status_code().as_u16(), "request");
    let mut res: Response<body::BoxBody> = error.error_response().into();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    let (head, body) = res.into_parts();
    let bytes = match body.size() {
        BodySize::None => Bytes::new(),
        _ => body::to_bytes(body).await.unwrap_or_default(),
    };
    let size = BodySize::Sized(bytes.len() as u64);
    // Head and body in one write, so a client reads them together.
    conn.feed((head, size).into()).await?;
    conn.feed(Message::Chunk(Some(bytes))).await?;
    conn.send(Message::Chunk(None)).await?;
    Ok(())
}
