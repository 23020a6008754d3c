//! A tenant's supervisor: starts its device sessions on demand, restarts a session that
//! fails (that session only), and hands out no session that is stopping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::device::{DeviceArgs, DeviceMsg, DeviceSession, SessionGauge};
use crate::stats::Stats;
use crate::store::DeviceRecord;
use crate::Env;

/// The tenant supervisor actor.
pub struct TenantSupervisor;

/// Arguments of a tenant supervisor.
pub struct TenantArgs {
    /// Shared context.
    pub env: Arc<Env>,
    /// The tenant.
    pub tenant_id: String,
}

struct Slot {
    actor: ActorRef<DeviceMsg>,
    device: DeviceRecord,
    stopping: bool,
    restarts: u32,
    started: Instant,
    gauge: Arc<SessionGauge>,
    /// An operator asked for a restart: start it again once it has stopped.
    restart_requested: bool,
}

/// One supervised device session, as the admin tree shows it.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// Device id.
    pub device_id: String,
    /// Device address.
    pub address: String,
    /// Times the session was restarted after a failure.
    pub restarts: u32,
    /// Seconds since this incarnation started.
    pub uptime_secs: u64,
    /// The session.
    pub actor: ActorRef<DeviceMsg>,
    /// The session's live counters.
    pub gauge: Arc<SessionGauge>,
    /// Whether the session is draining (idle stop or requested restart).
    pub stopping: bool,
}

/// State of a tenant supervisor.
pub struct TenantState {
    env: Arc<Env>,
    tenant_id: String,
    slots: HashMap<String, Slot>,
    by_actor: HashMap<ActorId, String>,
    waiting: HashMap<String, Vec<(DeviceRecord, EnsureReply)>>,
}

type EnsureReply = RpcReplyPort<Result<ActorRef<DeviceMsg>, String>>;

/// Messages of a tenant supervisor.
pub enum TenantMsg {
    /// The running session of this device, started if needed.
    Ensure(DeviceRecord, EnsureReply),
    /// The session is idle and draining; hand it out no more.
    Stopping(String),
    /// The supervised sessions.
    Children(RpcReplyPort<Vec<ChildInfo>>),
    /// Operator action: stop the device's running session (its clients see 1012) and
    /// start it again, counting a restart. Answers false when no session is running.
    Restart(String, RpcReplyPort<bool>),
}

impl TenantState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        device: DeviceRecord,
        restarts: u32,
    ) -> Result<ActorRef<DeviceMsg>, String> {
        let gauge = Arc::new(SessionGauge::default());
        let args = DeviceArgs {
            env: self.env.clone(),
            device: device.clone(),
            tenant: myself.clone(),
            gauge: gauge.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, DeviceSession, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.env.directory.register(&device.id, actor.clone());
        self.by_actor.insert(actor.get_id(), device.id.clone());
        self.slots.insert(
            device.id.clone(),
            Slot {
                actor: actor.clone(),
                device,
                stopping: false,
                restarts,
                started: Instant::now(),
                gauge,
                restart_requested: false,
            },
        );
        Ok(actor)
    }
}

#[ractor::async_trait]
impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        Ok(TenantState {
            env: args.env,
            tenant_id: args.tenant_id,
            slots: HashMap::new(),
            by_actor: HashMap::new(),
            waiting: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Ensure(device, reply) => {
                if device.tenant_id != state.tenant_id {
                    let _ = reply.send(Err("device of another tenant".into()));
                    return Ok(());
                }
                match state.slots.get(&device.id) {
                    Some(slot) if !slot.stopping => {
                        let _ = reply.send(Ok(slot.actor.clone()));
                    }
                    Some(_) => {
                        // Started again once the draining one has stopped (seq safety).
                        state
                            .waiting
                            .entry(device.id.clone())
                            .or_default()
                            .push((device, reply));
                    }
                    None => {
                        let started = state.spawn(&myself, device, 0).await;
                        let _ = reply.send(started);
                    }
                }
            }
            TenantMsg::Stopping(device_id) => {
                if let Some(slot) = state.slots.get_mut(&device_id) {
                    slot.stopping = true;
                }
            }
            TenantMsg::Children(reply) => {
                let mut out: Vec<ChildInfo> = state
                    .slots
                    .iter()
                    .map(|(id, s)| ChildInfo {
                        device_id: id.clone(),
                        address: s.device.address.clone(),
                        restarts: s.restarts,
                        uptime_secs: s.started.elapsed().as_secs(),
                        actor: s.actor.clone(),
                        gauge: s.gauge.clone(),
                        stopping: s.stopping,
                    })
                    .collect();
                out.sort_by(|a, b| a.address.cmp(&b.address));
                let _ = reply.send(out);
            }
            TenantMsg::Restart(device_id, reply) => {
                let Some(slot) = state.slots.get_mut(&device_id) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                if !slot.restart_requested {
                    slot.restart_requested = true;
                    slot.stopping = true;
                    state
                        .env
                        .directory
                        .unregister(&device_id, &slot.actor.get_cell());
                    slot.actor
                        .stop(Some("restart requested by an operator".into()));
                }
                let _ = reply.send(true);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        evt: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(device_id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.env.directory.unregister(&device_id, &cell);
        let Some(slot) = state.slots.remove(&device_id) else {
            return Ok(());
        };
        let waiters = state.waiting.remove(&device_id).unwrap_or_default();
        if let Some(reason) = failure {
            tracing::error!(%device_id, tenant_id = %state.tenant_id, %reason, "device session failed; restarting it");
            Stats::inc(&state.env.stats.session_restarts);
            state.env.stats.metrics.restarts_session.increment(1);
            let restarted = state.spawn(&myself, slot.device, slot.restarts + 1).await;
            for (_, reply) in waiters {
                let _ = reply.send(restarted.clone());
            }
        } else if slot.restart_requested {
            tracing::info!(%device_id, tenant_id = %state.tenant_id, "device session restarted by an operator");
            let restarted = state.spawn(&myself, slot.device, slot.restarts + 1).await;
            for (_, reply) in waiters {
                let _ = reply.send(restarted.clone());
            }
        } else if let Some((device, _)) = waiters.first() {
            let restarted = state.spawn(&myself, device.clone(), slot.restarts).await;
            for (_, reply) in waiters {
                let _ = reply.send(restarted.clone());
            }
        }
        Ok(())
    }
}
