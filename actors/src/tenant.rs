//! A tenant's supervisor: starts its device sessions on demand, restarts a session that
//! fails (that session only) after a backoff, escalates when one fails too often (see
//! [`crate::supervision`]), hands out no session that is stopping, stops a deleted
//! device's session for good, and asks its sessions without clients whether they are
//! idle (one timer per tenant, so a session needs no timer task of its own).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::device::{DeviceArgs, DeviceMsg, DeviceSession, SessionGauge};
use crate::stats::Stats;
use crate::store::DeviceRecord;
use crate::supervision::{Decision, RestartHistory};
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
    /// The running incarnation; `None` while a restart waits out its backoff.
    actor: Option<ActorRef<DeviceMsg>>,
    device: DeviceRecord,
    stopping: bool,
    restarts: u32,
    history: RestartHistory,
    started: Instant,
    gauge: Arc<SessionGauge>,
    /// An operator asked for a restart: start it again once it has stopped.
    restart_requested: bool,
    /// The device was deleted: answer these once the session has stopped.
    removing: Vec<RpcReplyPort<()>>,
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

/// Why no session could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnsureError {
    /// The device was deleted (or is not this tenant's).
    #[error("no such device")]
    Gone,
    /// The session could not be started now.
    #[error("device session unavailable")]
    Unavailable,
}

type EnsureReply = RpcReplyPort<Result<ActorRef<DeviceMsg>, EnsureError>>;

/// State of a tenant supervisor.
pub struct TenantState {
    env: Arc<Env>,
    tenant_id: String,
    slots: HashMap<String, Slot>,
    by_actor: HashMap<ActorId, String>,
    waiting: HashMap<String, Vec<EnsureReply>>,
    /// Deleted devices: no session of theirs starts again in this process.
    removed: HashSet<String>,
}

/// Messages of a tenant supervisor.
pub enum TenantMsg {
    /// The running session of this device, started if needed.
    Ensure(DeviceRecord, EnsureReply),
    /// The session is idle and stopping; hand it out no more.
    Stopping(String),
    /// The supervised sessions.
    Children(RpcReplyPort<Vec<ChildInfo>>),
    /// Operator action: stop the device's running session (its clients see 1012) and
    /// start it again, counting a restart. Answers false when no session is running.
    Restart(String, RpcReplyPort<bool>),
    /// The device is being deleted: stop its session for good (its clients are closed
    /// with 4410) and answer once it has stopped.
    Remove(String, RpcReplyPort<()>),
    /// A failed session's backoff is over: start it again.
    RestartDue(String),
    /// Periodic: asks each running session without clients whether it is idle.
    IdleSweep,
}

impl TenantState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        device: DeviceRecord,
        restarts: u32,
        history: RestartHistory,
    ) -> Result<ActorRef<DeviceMsg>, EnsureError> {
        let gauge = Arc::new(SessionGauge::default());
        let args = DeviceArgs {
            env: self.env.clone(),
            device: device.clone(),
            tenant: myself.clone(),
            gauge: gauge.clone(),
        };
        let spawned = Actor::spawn_linked(None, DeviceSession, args, myself.get_cell()).await;
        let actor = match spawned {
            Ok((actor, _)) => actor,
            Err(e) => {
                tracing::error!(device_id = %device.id, error = %e, "device session failed to start");
                self.slots.remove(&device.id);
                return Err(EnsureError::Unavailable);
            }
        };
        self.env.directory.register(&device.id, actor.clone());
        self.by_actor.insert(actor.get_id(), device.id.clone());
        self.slots.insert(
            device.id.clone(),
            Slot {
                actor: Some(actor.clone()),
                device,
                stopping: false,
                restarts,
                history,
                started: Instant::now(),
                gauge,
                restart_requested: false,
                removing: Vec::new(),
            },
        );
        Ok(actor)
    }

    /// Starts a session again and answers everyone waiting for it.
    async fn respawn(&mut self, myself: &ActorRef<TenantMsg>, device_id: &str) {
        let Some(slot) = self.slots.remove(device_id) else {
            return;
        };
        let started = self
            .spawn(myself, slot.device, slot.restarts, slot.history)
            .await;
        for reply in self.waiting.remove(device_id).unwrap_or_default() {
            let _ = reply.send(started.clone());
        }
    }

    fn answer_waiters(
        &mut self,
        device_id: &str,
        answer: Result<ActorRef<DeviceMsg>, EnsureError>,
    ) {
        for reply in self.waiting.remove(device_id).unwrap_or_default() {
            let _ = reply.send(answer.clone());
        }
    }
}

#[ractor::async_trait]
impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        let period = crate::device::idle_check_period(&args.env.settings);
        myself.send_interval(period, || TenantMsg::IdleSweep);
        Ok(TenantState {
            env: args.env,
            tenant_id: args.tenant_id,
            slots: HashMap::new(),
            by_actor: HashMap::new(),
            waiting: HashMap::new(),
            removed: HashSet::new(),
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
                if device.tenant_id != state.tenant_id || state.removed.contains(&device.id) {
                    let _ = reply.send(Err(EnsureError::Gone));
                    return Ok(());
                }
                match state.slots.get(&device.id) {
                    Some(Slot {
                        actor: Some(actor),
                        stopping: false,
                        ..
                    }) => {
                        let _ = reply.send(Ok(actor.clone()));
                    }
                    // Stopping, or waiting out a restart backoff: started (again) once
                    // the old one has stopped (one session per device at a time).
                    Some(_) => state.waiting.entry(device.id).or_default().push(reply),
                    None => {
                        let started = state
                            .spawn(&myself, device, 0, RestartHistory::default())
                            .await;
                        let _ = reply.send(started);
                    }
                }
            }
            TenantMsg::IdleSweep => {
                for slot in state.slots.values() {
                    let Some(actor) = &slot.actor else { continue };
                    // A session with clients is never idle; it hears nothing.
                    if !slot.stopping && slot.gauge.connections.load(Ordering::Relaxed) == 0 {
                        let _ = actor.cast(DeviceMsg::IdleCheck);
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
                    .filter_map(|(id, s)| {
                        Some(ChildInfo {
                            device_id: id.clone(),
                            address: s.device.address.clone(),
                            restarts: s.restarts,
                            uptime_secs: s.started.elapsed().as_secs(),
                            actor: s.actor.clone()?,
                            gauge: s.gauge.clone(),
                            stopping: s.stopping,
                        })
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
                let Some(actor) = slot.actor.clone() else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                if !slot.restart_requested {
                    slot.restart_requested = true;
                    slot.stopping = true;
                    state
                        .env
                        .directory
                        .unregister(&device_id, &actor.get_cell());
                    actor.stop(Some("restart requested by an operator".into()));
                }
                let _ = reply.send(true);
            }
            TenantMsg::Remove(device_id, reply) => {
                state.removed.insert(device_id.clone());
                state.answer_waiters(&device_id, Err(EnsureError::Gone));
                match state.slots.get_mut(&device_id) {
                    Some(slot) => match slot.actor.clone() {
                        Some(actor) => {
                            slot.removing.push(reply);
                            slot.stopping = true;
                            state
                                .env
                                .directory
                                .unregister(&device_id, &actor.get_cell());
                            // The kick is handled before the stop takes effect.
                            let _ =
                                actor.cast(DeviceMsg::Kick(protocol::error::close::DEVICE_DELETED));
                            let _ = actor.drain();
                        }
                        None => {
                            state.slots.remove(&device_id);
                            let _ = reply.send(());
                        }
                    },
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            TenantMsg::RestartDue(device_id) => {
                let due = state
                    .slots
                    .get(&device_id)
                    .is_some_and(|s| s.actor.is_none());
                if due && !state.removed.contains(&device_id) {
                    state.respawn(&myself, &device_id).await;
                }
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
        let Some(slot) = state.slots.get_mut(&device_id) else {
            return Ok(());
        };
        if slot.actor.as_ref().map(|a| a.get_id()) != Some(cell.get_id()) {
            return Ok(());
        }
        slot.actor = None;
        if !slot.removing.is_empty() || state.removed.contains(&device_id) {
            if let Some(slot) = state.slots.remove(&device_id) {
                for reply in slot.removing {
                    let _ = reply.send(());
                }
            }
            state.answer_waiters(&device_id, Err(EnsureError::Gone));
            return Ok(());
        }
        if let Some(reason) = failure {
            Stats::inc(&state.env.stats.session_restarts);
            state.env.stats.metrics.restarts_session.increment(1);
            let policy = state.env.settings.restart_policy;
            match slot.history.record(&policy) {
                Decision::Escalate => {
                    tracing::error!(%device_id, tenant_id = %state.tenant_id, %reason, failures = slot.history.recent(), "device session keeps failing; escalating");
                    state.slots.remove(&device_id);
                    state.answer_waiters(&device_id, Err(EnsureError::Unavailable));
                    return Err(format!(
                        "device session {device_id} failed more than {} times in {:?}",
                        policy.max_restarts, policy.period
                    )
                    .into());
                }
                Decision::RestartAfter(delay) => {
                    tracing::error!(%device_id, tenant_id = %state.tenant_id, %reason, delay_ms = delay.as_millis() as u64, "device session failed; restarting it");
                    slot.restarts += 1;
                    let id = device_id.clone();
                    myself.send_after(delay, move || TenantMsg::RestartDue(id));
                }
            }
        } else if slot.restart_requested {
            tracing::info!(%device_id, tenant_id = %state.tenant_id, "device session restarted by an operator");
            slot.restarts += 1;
            state.respawn(&myself, &device_id).await;
        } else if state.waiting.contains_key(&device_id) {
            state.respawn(&myself, &device_id).await;
        } else {
            state.slots.remove(&device_id);
        }
        Ok(())
    }
}
