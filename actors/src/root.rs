//! The root supervisor: owns the persistence writers, the queue dispatcher and one
//! supervisor per tenant, and restarts whichever of them fails.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::dispatcher::Dispatcher;
use crate::persistence::{Writer, WriterArgs, WriterMsg};
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
}

/// Starts the actor tree and connects the directory to it.
pub async fn start(env: Arc<Env>) -> Result<ActorRef<RootMsg>, ractor::SpawnErr> {
    let (root, _join) = Actor::spawn(None, Root, env.clone()).await?;
    env.directory.set_root(root.clone());
    Ok(root)
}

async fn spawn_writer(
    myself: &ActorRef<RootMsg>,
    state_env: &Arc<Env>,
    slot: usize,
) -> Result<ActorRef<WriterMsg>, ActorProcessingErr> {
    let args = WriterArgs {
        store: state_env.store.clone(),
        batch_max: state_env.settings.batch_max,
        linger: state_env.settings.linger,
        stats: state_env.persistence.stats[slot].clone(),
        global: state_env.clone(),
    };
    let (writer, _) = Actor::spawn_linked(None, Writer, args, myself.get_cell()).await?;
    state_env.persistence.set(slot, writer.clone());
    Ok(writer)
}

async fn spawn_tenant(
    myself: &ActorRef<RootMsg>,
    env: &Arc<Env>,
    tenant_id: &str,
) -> Result<ActorRef<TenantMsg>, ActorProcessingErr> {
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
                let started = spawn_tenant(&myself, &state.env, &tenant_id).await;
                match started {
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
        if state.dispatcher == Some(id) {
            // The queue must always drain: restart the dispatcher whether it failed or
            // was stopped (`POST /admin/queues/restart`). Jobs are in the store.
            *state.restarts.entry("dispatcher".into()).or_default() += 1;
            let (d, _) =
                Actor::spawn_linked(None, Dispatcher, state.env.clone(), myself.get_cell()).await?;
            state.dispatcher = Some(d.get_id());
            return Ok(());
        }
        if let Some(slot) = state.writer_slot.remove(&id) {
            // A writer must always exist: restart it whether it failed or stopped.
            *state
                .restarts
                .entry(format!("persistence:writer:{slot}"))
                .or_default() += 1;
            state.env.stats.metrics.restarts_writer.increment(1);
            let w = spawn_writer(&myself, &state.env, slot).await?;
            state.writer_slot.insert(w.get_id(), slot);
        } else if let Some(tenant_id) = state.tenant_of.remove(&id) {
            state.tenants.remove(&tenant_id);
            if failed {
                // Started again on the next demand; its sessions were stopped with it.
                *state
                    .restarts
                    .entry(format!("tenant:{tenant_id}"))
                    .or_default() += 1;
                state.env.stats.metrics.restarts_tenant.increment(1);
            }
        }
        Ok(())
    }
}
