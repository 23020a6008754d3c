//! Envelopes from other nodes: turned back into messages for the sessions here, with
//! proxies that answer over the bus (see `docs/cluster.md`).
//!
//! A node handles an envelope for a device only if the device's session is here or may
//! start here; otherwise it answers [`Response::NotOwner`] and the caller routes again.
//! It never forwards an envelope to a third node. The envelopes of one batch are handed
//! to the sessions in order (rows and sends of one sender keep their order); waiting
//! for their outcomes runs beside.

use std::sync::Arc;

use protocol::ErrorCode;
use tokio::sync::oneshot;

use super::envelope::{Batch, Cast, Envelope, Request, Response, WireInfo, WireOutcome};
use super::{Cluster, Locate};
use crate::device::{
    Delivery, DeviceMsg, ReceiptBatch, ReceiptNote, Responder, RowGuard, RowOutcome, SendError,
    SendRequest,
};
use crate::directory::RouteError;
use crate::Env;

/// Why a node did not take an envelope.
enum Refused {
    /// Another node owns the device.
    NotHere,
    /// No such device.
    Gone,
    /// The session could not be had now.
    Unavailable,
}

/// Handles one batch from another node.
pub async fn handle_batch(env: &Arc<Env>, text: &str) {
    let Some(cluster) = env.cluster.clone() else {
        return;
    };
    let batch: Batch = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable bus batch dropped");
            return;
        }
    };
    let from = batch.from;
    for item in batch.items {
        match item {
            Envelope::Reply { call, resp } => cluster.bus.complete(call, resp),
            Envelope::Call { call, req } => request(env, &cluster, &from, call, req).await,
            Envelope::Cast(c) => cast(env, &cluster, &from, c).await,
        }
    }
}

/// Hands `msg` to `device`'s session here: the running one, or one started here if
/// this node may own the device.
async fn here(
    env: &Arc<Env>,
    cluster: &Cluster,
    device: &str,
    msg: DeviceMsg,
) -> Result<(), Refused> {
    let msg = match env.directory.running(device) {
        Some(session) => match session.cast(msg) {
            Ok(()) => return Ok(()),
            Err(ractor::MessagingErr::SendErr(back)) => back,
            Err(_) => return Err(Refused::Unavailable),
        },
        None => msg,
    };
    if env
        .stats
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        // A draining node starts no session: its devices go to the next node.
        return Err(Refused::NotHere);
    }
    match cluster.ownership.locate(device).await {
        Ok(Locate::Here) => match env.directory.deliver_local(device, msg).await {
            Ok(()) => Ok(()),
            Err(RouteError::NoDevice) => Err(Refused::Gone),
            Err(_) => Err(Refused::Unavailable),
        },
        Ok(Locate::There(_)) => Err(Refused::NotHere),
        Err(_) => Err(Refused::Unavailable),
    }
}

/// Answers the caller once `rx` gives the outcome.
fn reply_later<T: Send + 'static>(
    cluster: &Arc<Cluster>,
    from: &str,
    call: u64,
    rx: oneshot::Receiver<T>,
    answer: impl FnOnce(Option<T>) -> Response + Send + 'static,
) {
    let bus = cluster.bus.clone();
    let from = from.to_owned();
    tokio::spawn(async move {
        let got = rx.await.ok();
        bus.reply(&from, call, answer(got));
    });
}

fn refused(r: Refused, gone: Response) -> Response {
    match r {
        Refused::NotHere | Refused::Unavailable => Response::NotOwner,
        Refused::Gone => gone,
    }
}

async fn request(env: &Arc<Env>, cluster: &Arc<Cluster>, from: &str, call: u64, req: Request) {
    let bus = &cluster.bus;
    match req {
        Request::Deliver {
            device,
            from_device,
            order,
            attempt,
            message,
        } => {
            let (guard, rx) = RowGuard::remote(device.as_str().into(), order.n, attempt);
            let msg = DeviceMsg::Deliver(Delivery {
                from_device: from_device.into(),
                order: order.into(),
                message: Arc::new(message.into()),
                guard,
            });
            match here(env, cluster, &device, msg).await {
                Ok(()) => reply_later(cluster, from, call, rx, |o| {
                    Response::Row(o.unwrap_or(RowOutcome::Dropped).into())
                }),
                Err(r) => bus.reply(from, call, refused(r, Response::Row(WireOutcome::Gone))),
            }
        }
        Request::Receipts { device, notes } => {
            let notes = notes
                .into_iter()
                .map(|n| ReceiptNote {
                    message_id: n.message_id.into(),
                    status: n.status,
                    by: n.by.into(),
                    ts: n.ts,
                })
                .collect();
            let (batch, rx) = ReceiptBatch::answering(notes);
            match here(env, cluster, &device, DeviceMsg::Receipts(batch)).await {
                Ok(()) => reply_later(cluster, from, call, rx, |ok| {
                    Response::Stored(ok.unwrap_or(false))
                }),
                // A deleted sender has nothing to store: done.
                Err(r) => bus.reply(from, call, refused(r, Response::Stored(true))),
            }
        }
        Request::Send { device, send, conn } => {
            let req = SendRequest {
                client_id: send.client_id.clone(),
                target: send.target(),
                body: send.body.as_str().into(),
                priority: send.priority,
                resume: send.resume.map(Into::into),
            };
            let gone = || {
                Response::Sent(Err(
                    SendError::new(ErrorCode::NotFound, "no such device").into()
                ))
            };
            match conn {
                Some(id) => {
                    let msg = DeviceMsg::Send(req, Responder::Conn(id));
                    let resp = match here(env, cluster, &device, msg).await {
                        Ok(()) => Response::Done,
                        Err(r) => refused(r, gone()),
                    };
                    bus.reply(from, call, resp);
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    let msg = DeviceMsg::Send(req, Responder::Rest(tx));
                    match here(env, cluster, &device, msg).await {
                        Ok(()) => reply_later(cluster, from, call, rx, |r| {
                            Response::Sent(match r {
                                Some(r) => r.map_err(Into::into),
                                None => Err(SendError::new(
                                    ErrorCode::Unavailable,
                                    "device session restarting; retry",
                                )
                                .into()),
                            })
                        }),
                        Err(r) => bus.reply(from, call, refused(r, gone())),
                    }
                }
            }
        }
        Request::Attach { device, conn } => {
            let handle = cluster.conns.forward(
                cluster.bus.clone(),
                from,
                conn,
                env.settings.outbound_buffer,
            );
            let (tx, rx) = oneshot::channel();
            let msg = DeviceMsg::Attach(handle, tx.into());
            match here(env, cluster, &device, msg).await {
                Ok(()) => reply_later(cluster, from, call, rx, |r| {
                    Response::Attached(match r {
                        Some(Ok(a)) => Ok(a.last_seq),
                        Some(Err(e)) => Err(e.into()),
                        None => Err(SendError::new(
                            ErrorCode::Unavailable,
                            "device session restarting; retry",
                        )
                        .into()),
                    })
                }),
                Err(r) => bus.reply(
                    from,
                    call,
                    refused(
                        r,
                        Response::Attached(Err(SendError::new(
                            ErrorCode::NotFound,
                            "no such device",
                        )
                        .into())),
                    ),
                ),
            }
        }
        Request::Info { device } => {
            let env = env.clone();
            let bus = bus.clone();
            let from = from.to_owned();
            tokio::spawn(async move {
                let info = match env.directory.running(&device) {
                    Some(s) => ractor::call!(s, DeviceMsg::Info).ok().map(|i| WireInfo {
                        connections: i.connections,
                        last_seen: i.last_seen,
                        last_seq: i.last_seq,
                        messages_out: i.messages_out,
                        messages_in: i.messages_in,
                        node: i.node,
                    }),
                    None => None,
                };
                bus.reply(&from, call, Response::Info(info));
            });
        }
        Request::Remove { device, tenant_id } => {
            let env = env.clone();
            let bus = bus.clone();
            let from = from.to_owned();
            tokio::spawn(async move {
                if let Err(e) = env.directory.remove_here(&device, &tenant_id).await {
                    tracing::warn!(device_id = %device, error = %e, "remove on this node failed");
                }
                bus.reply(&from, call, Response::Done);
            });
        }
    }
}

async fn cast(env: &Arc<Env>, cluster: &Arc<Cluster>, _from: &str, c: Cast) {
    let running = |device: &str| env.directory.running(device);
    match c {
        Cast::Detach { device, conn } => {
            if let Some(s) = running(&device) {
                let _ = s.cast(DeviceMsg::Detach(conn));
            }
        }
        Cast::Frames { conn, frames } => {
            if let Some((device, node)) = cluster.conns.frames(conn, frames) {
                cluster.bus.cast(&node, Cast::Detach { device, conn });
            }
        }
        Cast::Close { conn, code } => cluster.conns.close(conn, code),
        Cast::Push { device, frame } => {
            if let Some(s) = running(&device) {
                let _ = s.cast(DeviceMsg::Push(frame));
            }
        }
        Cast::Kick { device, code } => {
            if let Some(s) = running(&device) {
                let _ = s.cast(DeviceMsg::Kick(code));
            }
        }
        Cast::Restart { device, tenant_id } => {
            let Some(root) = cluster.root.get().cloned() else {
                return;
            };
            tokio::spawn(async move {
                let tenant = ractor::call!(root, crate::root::RootMsg::Tenant, tenant_id);
                if let Ok(Some(tenant)) = tenant {
                    let done =
                        ractor::call!(tenant, crate::tenant::TenantMsg::Restart, device.clone());
                    tracing::info!(device_id = %device, restarted = ?done.ok(), "admin restart asked through another node");
                }
            });
        }
        Cast::Panic { device } => {
            if let Some(s) = running(&device) {
                let _ = s.cast(DeviceMsg::InjectPanic);
            }
        }
    }
}
