//! The bus between nodes: envelopes queued per destination node, sent as one
//! [`Batch`] per node and round, and calls matched with their replies.
//!
//! The transport (Redis pub/sub in the server) delivers at most once. A call that gets
//! no reply within its timeout, or whose batch reached no subscriber, fails with
//! [`CallError`]; what the caller does then (deliver again, give up) is its business.
//! Envelopes to one node leave in the order they were queued: one sender task, one
//! publish per node per round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::envelope::{Batch, Cast, Envelope, Request, Response};

/// Most envelopes sent in one round (the rest wait for the next).
const ROUND_MAX: usize = 4096;

/// A transport failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bus transport: {0}")]
pub struct TransportError(pub String);

/// Carries batches between nodes (Redis pub/sub in the server).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes one encoded batch to `node`; answers whether any node listened.
    async fn publish(&self, node: &str, payload: String) -> Result<bool, TransportError>;
}

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nobody listens on the node's channel (it is gone, or the bus is down).
    #[error("node unreachable")]
    Unreachable,
    /// No reply in time.
    #[error("no reply in time")]
    Timeout,
}

/// Told when a batch to a node reached no subscriber.
pub type UnreachableHook = Box<dyn Fn(&str) + Send + Sync>;

/// This node's end of the bus.
pub struct Bus {
    node: String,
    tx: mpsc::UnboundedSender<(String, Envelope)>,
    pending: DashMap<u64, oneshot::Sender<Result<Response, CallError>>>,
    next_call: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("node", &self.node)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Bus {
    /// A bus for `node` over `transport`; calls time out after `timeout`. Starts the
    /// sender task (on the current runtime); `unreachable` hears of every node a batch
    /// could not reach.
    pub fn start(
        node: &str,
        transport: Arc<dyn Transport>,
        timeout: Duration,
        unreachable: UnreachableHook,
    ) -> Arc<Bus> {
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Arc::new(Bus {
            node: node.to_owned(),
            tx,
            pending: DashMap::new(),
            next_call: AtomicU64::new(1),
            timeout,
        });
        tokio::spawn(send_loop(
            Arc::downgrade(&bus),
            rx,
            transport,
            node.to_owned(),
            unreachable,
        ));
        bus
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Calls waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    /// Queues a one-way message to `node`.
    pub fn cast(&self, node: &str, cast: Cast) {
        let _ = self.tx.send((node.to_owned(), Envelope::Cast(cast)));
    }

    /// Queues a reply to a call from `node`.
    pub fn reply(&self, node: &str, call: u64, resp: Response) {
        let _ = self
            .tx
            .send((node.to_owned(), Envelope::Reply { call, resp }));
    }

    /// Asks `node` and waits for the answer (at most the call timeout).
    pub async fn call(&self, node: &str, req: Request) -> Result<Response, CallError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(call, tx);
        if self
            .tx
            .send((node.to_owned(), Envelope::Call { call, req }))
            .is_err()
        {
            self.pending.remove(&call);
            return Err(CallError::Unreachable);
        }
        let answer = tokio::time::timeout(self.timeout, rx).await;
        self.pending.remove(&call);
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Unreachable),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// A reply came: hands it to its waiting call (a late one is dropped).
    pub fn complete(&self, call: u64, resp: Response) {
        if let Some((_, tx)) = self.pending.remove(&call) {
            let _ = tx.send(Ok(resp));
        }
    }

    fn fail(&self, call: u64, e: CallError) {
        if let Some((_, tx)) = self.pending.remove(&call) {
            let _ = tx.send(Err(e));
        }
    }
}

/// Drains the queue: everything queued so far, grouped by node, one publish per node.
async fn send_loop(
    bus: std::sync::Weak<Bus>,
    mut rx: mpsc::UnboundedReceiver<(String, Envelope)>,
    transport: Arc<dyn Transport>,
    from: String,
    unreachable: UnreachableHook,
) {
    while let Some(first) = rx.recv().await {
        let mut per_node: HashMap<String, Vec<Envelope>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut add = |(node, env): (String, Envelope)| {
            let items = per_node.entry(node.clone()).or_insert_with(|| {
                order.push(node);
                Vec::new()
            });
            items.push(env);
        };
        add(first);
        let mut n = 1;
        while n < ROUND_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    add(item);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let sends = order.into_iter().map(|node| {
            let items = per_node.remove(&node).unwrap_or_default();
            let transport = transport.clone();
            let from = from.clone();
            async move {
                let calls: Vec<u64> = items
                    .iter()
                    .filter_map(|e| match e {
                        Envelope::Call { call, .. } => Some(*call),
                        _ => None,
                    })
                    .collect();
                let batch = Batch { from, items };
                let reached = match serde_json::to_string(&batch) {
                    Ok(text) => match transport.publish(&node, text).await {
                        Ok(reached) => reached,
                        Err(e) => {
                            tracing::warn!(%node, error = %e, "bus publish failed");
                            false
                        }
                    },
                    Err(e) => {
                        tracing::error!(%node, error = %e, "bus batch unencodable");
                        false
                    }
                };
                (node, reached, calls)
            }
        });
        let results = futures_util::future::join_all(sends).await;
        let Some(bus) = bus.upgrade() else {
            return;
        };
        for (node, reached, calls) in results {
            if !reached {
                for call in calls {
                    bus.fail(call, CallError::Unreachable);
                }
                unreachable(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::envelope::Response;
    use std::sync::Mutex;

    /// Delivers batches to an in-memory list; `reach` says whether anyone listens.
    struct Memory {
        sent: Mutex<Vec<(String, String)>>,
        reach: bool,
    }

    #[async_trait]
    impl Transport for Memory {
        async fn publish(&self, node: &str, payload: String) -> Result<bool, TransportError> {
            self.sent.lock().unwrap().push((node.to_owned(), payload));
            Ok(self.reach)
        }
    }

    #[tokio::test]
    async fn a_call_gets_its_reply_and_unreachable_nodes_fail_at_once() {
        let memory = Arc::new(Memory {
            sent: Mutex::new(Vec::new()),
            reach: true,
        });
        let bus = Bus::start(
            "n_a",
            memory.clone(),
            Duration::from_secs(5),
            Box::new(|_| {}),
        );
        let b = bus.clone();
        let call =
            tokio::spawn(async move { b.call("n_b", Request::Info { device: "d".into() }).await });
        // The call went out; answer it as node b would.
        let id = loop {
            let sent = memory.sent.lock().unwrap().clone();
            if let Some((_, text)) = sent.first() {
                let batch: Batch = serde_json::from_str(text).unwrap();
                match &batch.items[0] {
                    Envelope::Call { call, .. } => break *call,
                    other => panic!("{other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        bus.complete(id, Response::Info(None));
        assert!(matches!(call.await.unwrap(), Ok(Response::Info(None))));

        let nowhere = Arc::new(Memory {
            sent: Mutex::new(Vec::new()),
            reach: false,
        });
        let told = Arc::new(Mutex::new(Vec::new()));
        let t = told.clone();
        let bus = Bus::start(
            "n_a",
            nowhere,
            Duration::from_secs(60),
            Box::new(move |n| t.lock().unwrap().push(n.to_owned())),
        );
        let started = std::time::Instant::now();
        let r = bus
            .call("n_gone", Request::Info { device: "d".into() })
            .await;
        assert_eq!(r.unwrap_err(), CallError::Unreachable);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(told.lock().unwrap().as_slice(), ["n_gone"]);
    }

    #[tokio::test]
    async fn envelopes_to_one_node_go_in_order_in_few_batches() {
        let memory = Arc::new(Memory {
            sent: Mutex::new(Vec::new()),
            reach: true,
        });
        let bus = Bus::start(
            "n_a",
            memory.clone(),
            Duration::from_secs(5),
            Box::new(|_| {}),
        );
        for conn in 0..100u64 {
            bus.cast("n_b", Cast::Close { conn, code: 1000 });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let sent = memory.sent.lock().unwrap().clone();
            let conns: Vec<u64> = sent
                .iter()
                .flat_map(|(_, text)| serde_json::from_str::<Batch>(text).unwrap().items)
                .map(|e| match e {
                    Envelope::Cast(Cast::Close { conn, .. }) => conn,
                    other => panic!("{other:?}"),
                })
                .collect();
            if conns.len() == 100 || std::time::Instant::now() > deadline {
                break (conns, sent.len());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(seen.0, (0..100).collect::<Vec<_>>());
        assert!(seen.1 < 100, "batched: {} publishes", seen.1);
    }
}
