//! The root supervisor: owns the persistence writers, the queue dispatcher and one
//! supervisor per tenant, and restarts whichever of them fails.
//!
//! Restarts follow [`crate::supervision`]: a failed writer or dispatcher is started
//! again after a backoff, by a message to the root (never inside the supervision
//! handler, where a failing restart would stop the root); a failed tenant supervisor is
//! started again on the next demand. A child that fails more often than the policy
//! allows escalates: the root fails, `/health` turns 503, and the binary exits (its
//! orchestrator restarts the process).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use tokio::task::JoinHandle;

use crate::dispatcher::Dispatcher;
use crate::persistence::{Writer, WriterArgs, WriterMsg};
use crate::supervision::{Decision, RestartHistory};
use crate::tenant::{TenantArgs, TenantMsg, TenantSupervisor};
use crate::Env;

/// The root actor.
pub struct Root;

/// What the root supervises.
pub struct RootState {
    env: Arc<Env>,
    tenants: HashMap<String, ActorRef<TenantMsg>>,
    tenant_of: HashMap<ActorId, String>,
    writer_slot: HashMap<ActorId, usize>,
    restarts: HashMap<String, u32>,
    histories: HashMap<String, RestartHistory>,
    dispatcher: Option<ActorId>,
}

/// Messages of the root.
pub enum RootMsg {
    /// The supervisor of a tenant, started on demand.
    Tenant(String, RpcReplyPort<Option<ActorRef<TenantMsg>>>),
    /// Every tenant supervisor running.
    Tenants(RpcReplyPort<Vec<(String, ActorRef<TenantMsg>)>>),
    /// Restart counts of the root's direct children, by name.
    Restarts(RpcReplyPort<HashMap<String, u32>>),
    /// Start the writer of this slot again.
    RestartWriter(usize),
    /// Start the dispatcher again.
    RestartDispatcher,
}

/// A running actor tree.
pub struct Tree {
    /// The root supervisor.
    pub root: ActorRef<RootMsg>,
    /// Ends when the root has stopped (shutdown, or an escalated failure).
    pub join: JoinHandle<()>,
}

/// Starts the actor tree and connects the directory to it.
pub async fn start(env: Arc<Env>) -> Result<Tree, ractor::SpawnErr> {
    let (root, join) = Actor::spawn(None, Root, env.clone()).await?;
    env.directory.set_root(root.clone());
    Ok(Tree { root, join })
}

/// Whether an actor is running (not starting, stopping or stopped).
pub fn alive<M: ractor::Message>(actor: &ActorRef<M>) -> bool {
    actor.get_status() == ActorStatus::Running
}

async fn spawn_writer(
    myself: &ActorRef<RootMsg>,
    env: &Arc<Env>,
    slot: usize,
) -> Result<ActorRef<WriterMsg>, ractor::SpawnErr> {
    let args = WriterArgs {
        store: env.store.clone(),
        batch_max: env.settings.batch_max,
        linger: env.settings.linger,
        stats: env.persistence.stats[slot].clone(),
        global: env.clone(),
    };
    let (writer, _) = Actor::spawn_linked(None, Writer, args, myself.get_cell()).await?;
    env.persistence.set(slot, writer.clone());
    Ok(writer)
}

async fn spawn_tenant(
    myself: &ActorRef<RootMsg>,
    env: &Arc<Env>,
    tenant_id: &str,
) -> Result<ActorRef<TenantMsg>, ractor::SpawnErr> {
    let (tenant, _) = Actor::spawn_linked(
        None,
        TenantSupervisor,
        TenantArgs {
            env: env.clone(),
            tenant_id: tenant_id.to_owned(),
        },
        myself.get_cell(),
    )
    .await?;
    Ok(tenant)
}

impl RootState {
    /// Records a failure of child `name`: the delay before restarting it, or an error
    /// that fails the root (escalation).
    fn failed(&mut self, name: &str) -> Result<Duration, ActorProcessingErr> {
        *self.restarts.entry(name.to_owned()).or_default() += 1;
        let policy = self.env.settings.restart_policy;
        match self
            .histories
            .entry(name.to_owned())
            .or_default()
            .record(&policy)
        {
            Decision::RestartAfter(delay) => Ok(delay),
            Decision::Escalate => {
                tracing::error!(child = name, "child of root keeps failing; escalating");
                Err(format!(
                    "{name} failed more than {} times in {:?}",
                    policy.max_restarts, policy.period
                )
                .into())
            }
        }
    }
}

#[ractor::async_trait]
impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<Env>;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        env: Arc<Env>,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut writer_slot = HashMap::new();
        for slot in 0..env.persistence.len() {
            let w = spawn_writer(&myself, &env, slot).await?;
            writer_slot.insert(w.get_id(), slot);
        }
        let (dispatcher, _) =
            Actor::spawn_linked(None, Dispatcher, env.clone(), myself.get_cell()).await?;
        Ok(RootState {
            dispatcher: Some(dispatcher.get_id()),
            env,
            tenants: HashMap::new(),
            tenant_of: HashMap::new(),
            writer_slot,
            restarts: HashMap::new(),
            histories: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Tenant(tenant_id, reply) => {
                if let Some(t) = state.tenants.get(&tenant_id) {
                    let _ = reply.send(Some(t.clone()));
                    return Ok(());
                }
                match spawn_tenant(&myself, &state.env, &tenant_id).await {
                    Ok(t) => {
                        state.tenant_of.insert(t.get_id(), tenant_id.clone());
                        state.tenants.insert(tenant_id, t.clone());
                        let _ = reply.send(Some(t));
                    }
                    Err(e) => {
                        tracing::error!(%tenant_id, error = %e, "tenant supervisor failed to start");
                        let _ = reply.send(None);
                    }
                }
            }
            RootMsg::Tenants(reply) => {
                let mut all: Vec<_> = state
                    .tenants
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                let _ = reply.send(all);
            }
            RootMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts.clone());
            }
            RootMsg::RestartWriter(slot) => match spawn_writer(&myself, &state.env, slot).await {
                Ok(w) => {
                    state.writer_slot.insert(w.get_id(), slot);
                }
                Err(e) => {
                    tracing::error!(slot, error = %e, "persistence writer failed to start");
                    let delay = state.failed(&format!("persistence:writer:{slot}"))?;
                    myself.send_after(delay, move || RootMsg::RestartWriter(slot));
                }
            },
            RootMsg::RestartDispatcher => {
                match Actor::spawn_linked(None, Dispatcher, state.env.clone(), myself.get_cell())
                    .await
                {
                    Ok((d, _)) => state.dispatcher = Some(d.get_id()),
                    Err(e) => {
                        tracing::error!(error = %e, "dispatcher failed to start");
                        let delay = state.failed("dispatcher")?;
                        myself.send_after(delay, || RootMsg::RestartDispatcher);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), error = %err, "child of root failed");
                (cell, true)
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, false),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let min = state.env.settings.restart_policy.backoff_min;
        if state.dispatcher == Some(id) {
            // The queue must always drain: restart the dispatcher whether it failed or
            // was stopped (`POST /admin/queues/restart`). Jobs are in the store.
            state.dispatcher = None;
            let delay = if failed {
                state.failed("dispatcher")?
            } else {
                *state.restarts.entry("dispatcher".into()).or_default() += 1;
                min
            };
            myself.send_after(delay, || RootMsg::RestartDispatcher);
            return Ok(());
        }
        if let Some(slot) = state.writer_slot.remove(&id) {
            // A writer must always exist: restart it whether it failed or stopped.
            state.env.stats.metrics.restarts_writer.increment(1);
            let name = format!("persistence:writer:{slot}");
            let delay = if failed {
                state.failed(&name)?
            } else {
                *state.restarts.entry(name).or_default() += 1;
                min
            };
            myself.send_after(delay, move || RootMsg::RestartWriter(slot));
        } else if let Some(tenant_id) = state.tenant_of.remove(&id) {
            state.tenants.remove(&tenant_id);
            if failed {
                // Started again on the next demand; its sessions were stopped with it.
                state.env.stats.metrics.restarts_tenant.increment(1);
                state.failed(&format!("tenant:{tenant_id}"))?;
            }
        }
        Ok(())
    }
}
