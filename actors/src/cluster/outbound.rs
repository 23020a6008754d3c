//! A message for a session on another node: turned into an envelope, its guards and
//! reply ports kept here until the answer comes (see `docs/cluster.md`).

use std::sync::Arc;

use protocol::error::close;
use protocol::{ErrorCode, ServerFrame};

use super::envelope::{Cast, Request, Response, WireInfo, WireNote, WireSend};
use super::Cluster;
use crate::device::{
    Attached, DeviceMsg, Responder, RowOutcome, SendError, SendRequest, SessionInfo,
};
use crate::limits::ControlBudgets;
use crate::Env;

/// After `node` did not answer: waits while its lease may still run (at most lease
/// plus twice the skew), answering whether it is gone by then.
async fn owner_gone(cluster: &Arc<Cluster>, node: &str) -> bool {
    let s = &cluster.settings;
    let deadline = tokio::time::Instant::now() + s.lease + s.skew * 2;
    loop {
        if !cluster.membership.alive_fresh(node).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(s.heartbeat).await;
    }
}

/// The answer when another node could not be asked.
fn unreachable() -> SendError {
    SendError::new(
        ErrorCode::Unavailable,
        "the device's node did not answer; retry",
    )
}

/// A send request as it travels.
fn wire_send(req: &SendRequest) -> WireSend {
    let (to, group) = match &req.target {
        protocol::Target::To(a) => (Some(a.clone()), None),
        protocol::Target::Group(g) => (None, Some(g.clone())),
    };
    WireSend {
        client_id: req.client_id.clone(),
        to,
        group,
        body: req.body.to_string(),
        priority: req.priority,
        resume: req.resume.clone().map(Into::into),
    }
}

/// A session's live view from its wire form.
pub fn info_from(w: WireInfo) -> SessionInfo {
    SessionInfo {
        connections: w.connections,
        last_seen: w.last_seen,
        last_seq: w.last_seq,
        messages_out: w.messages_out,
        messages_in: w.messages_in,
        node: w.node,
    }
}

/// Hands `msg` for `device` to its owner `node`. Answers come back asynchronously,
/// to the guard, reply port or connection the message carried.
pub fn forward(env: &Arc<Env>, cluster: &Arc<Cluster>, node: &str, device: &str, msg: DeviceMsg) {
    let bus = cluster.bus.clone();
    let node = node.to_owned();
    let device = device.to_owned();
    match msg {
        DeviceMsg::Deliver(d) => {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let req = Request::Deliver {
                    device: device.clone(),
                    from_device: d.from_device.to_string(),
                    order: d.order.into(),
                    attempt: d.guard.attempt(),
                    message: (&*d.message).into(),
                };
                let outcome = match bus.call(&node, req).await {
                    Ok(Response::Row(o)) => o.into(),
                    Ok(Response::NotOwner) => {
                        cluster.ownership.forget(&device);
                        RowOutcome::Deferred
                    }
                    Ok(_) => RowOutcome::Dropped,
                    // Gone, or not answering: delivered again once the device has an
                    // owner that answers (not counted as a try).
                    Err(_) => RowOutcome::Deferred,
                };
                d.guard.complete(outcome);
            });
        }
        DeviceMsg::Receipts(batch) => {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let notes = batch
                    .notes
                    .iter()
                    .map(|n| WireNote {
                        message_id: n.message_id.to_string(),
                        status: n.status,
                        by: n.by.to_string(),
                        ts: n.ts,
                    })
                    .collect();
                match bus
                    .call(
                        &node,
                        Request::Receipts {
                            device: device.clone(),
                            notes,
                        },
                    )
                    .await
                {
                    Ok(Response::Stored(true)) => batch.guard.settle(),
                    Ok(Response::NotOwner) => cluster.ownership.forget(&device),
                    // Dropped unsettled: the guard delivers the batch again.
                    _ => {}
                }
            });
        }
        DeviceMsg::Send(req, responder) => {
            let env = env.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                send(&env, &cluster, &node, &device, req, responder).await;
            });
        }
        DeviceMsg::Attach(handle, reply) => {
            let conn = handle.id;
            cluster.conns.attach(handle, &device, &node);
            let env = env.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let answer = bus
                    .call(
                        &node,
                        Request::Attach {
                            device: device.clone(),
                            conn,
                        },
                    )
                    .await;
                let result = match answer {
                    Ok(Response::Attached(Ok(last_seq))) => Ok(Attached {
                        last_seq,
                        budgets: Arc::new(ControlBudgets::new(
                            &env.settings.control_rate_per_minute,
                        )),
                    }),
                    Ok(Response::Attached(Err(e))) => Err(e.into()),
                    Ok(Response::NotOwner) => {
                        cluster.ownership.forget(&device);
                        Err(unreachable())
                    }
                    _ => Err(unreachable()),
                };
                if result.is_err() {
                    cluster.conns.detach(conn);
                }
                let _ = reply.send(result);
            });
        }
        DeviceMsg::Detach(conn) => {
            cluster.conns.detach(conn);
            bus.cast(&node, Cast::Detach { device, conn });
        }
        DeviceMsg::Push(frame) => bus.cast(&node, Cast::Push { device, frame }),
        DeviceMsg::Kick(code) => bus.cast(&node, Cast::Kick { device, code }),
        DeviceMsg::InjectPanic => bus.cast(&node, Cast::Panic { device }),
        DeviceMsg::Info(reply) => {
            tokio::spawn(async move {
                if let Ok(Response::Info(Some(info))) =
                    bus.call(&node, Request::Info { device }).await
                {
                    let _ = reply.send(info_from(info));
                }
            });
        }
        // Internal to a session: never routed to another node.
        DeviceMsg::RowDone(_)
        | DeviceMsg::Committed(_)
        | DeviceMsg::Resend(_)
        | DeviceMsg::IdleCheck
        | DeviceMsg::Resync
        | DeviceMsg::FlushOutbound
        | DeviceMsg::MailboxProbe(..) => {
            tracing::debug!(%device, "a session-internal message was not forwarded");
        }
    }
}

/// A send by `device`, on `node`: the answer goes to the REST waiter, or (for a
/// connection here) comes as an ack frame; a node that does not answer is an error
/// the client may retry under the same request id.
async fn send(
    env: &Arc<Env>,
    cluster: &Arc<Cluster>,
    node: &str,
    device: &str,
    req: SendRequest,
    responder: Responder,
) {
    let wire = wire_send(&req);
    let conn = match &responder {
        Responder::Conn(id) => Some(*id),
        Responder::Rest(_) => None,
    };
    let answer = cluster
        .bus
        .call(
            node,
            Request::Send {
                device: device.to_owned(),
                send: wire,
                conn,
            },
        )
        .await;
    match (answer, responder) {
        (Ok(Response::Sent(result)), Responder::Rest(tx)) => {
            let _ = tx.send(result.map_err(Into::into));
        }
        (Ok(Response::Done), Responder::Conn(_)) => {}
        (Ok(Response::NotOwner), responder) => {
            cluster.ownership.forget(device);
            match responder {
                // Routed again: the next owner answers.
                Responder::Rest(tx) => {
                    let again = DeviceMsg::Send(req, Responder::Rest(tx));
                    if let Err(e) = env.directory.deliver(device, again).await {
                        tracing::debug!(device_id = device, error = %e, "send not routed");
                    }
                }
                // The connection reattaches to the next owner and resends.
                Responder::Conn(id) => cluster.conns.close(id, close::RESTARTING),
            }
        }
        (_, Responder::Rest(tx)) => {
            // A node that does not answer may be dead with its lease still running:
            // wait for the lease to run out (bounded), then route again (the next
            // owner takes the device over). One that renews its lease and still does
            // not answer is reported.
            if owner_gone(cluster, node).await {
                cluster.ownership.forget(device);
                let again = DeviceMsg::Send(req, Responder::Rest(tx));
                if let Err(e) = env.directory.deliver(device, again).await {
                    tracing::debug!(device_id = device, error = %e, "send not routed");
                }
            } else {
                let _ = tx.send(Err(unreachable()));
            }
        }
        (_, Responder::Conn(id)) => {
            let e = unreachable();
            let frame = ServerFrame::Error {
                id: req.client_id.as_deref(),
                code: e.code,
                message: &e.message,
                retry_after_ms: None,
            }
            .encode();
            if let Some((device, node)) = cluster.conns.frames(id, vec![frame.into()]) {
                cluster.bus.cast(&node, Cast::Detach { device, conn: id });
            }
        }
    }
}
