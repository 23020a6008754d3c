//! Live counters of one session incarnation, shared with its tenant supervisor.
//!
//! The admin tree shows every running session's connections and message counts; with
//! 10,000 sessions, asking each one through its mailbox every second would cost more
//! than the page is worth. The session stores its counters here after each message it
//! handles (relaxed atomics), and the supervisor hands the gauge out with the child list.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::DeviceState;

/// Counters of one running session (reset when the session restarts).
#[derive(Debug, Default)]
pub struct SessionGauge {
    /// Connected clients.
    pub connections: AtomicU64,
    /// Messages delivered into the inbox.
    pub messages_in: AtomicU64,
    /// Messages this device sent.
    pub messages_out: AtomicU64,
    /// Mailbox messages handled by this incarnation.
    pub handled: AtomicU64,
    /// Last time a client was connected (Unix ms), 0 when never.
    pub last_seen: AtomicI64,
}

/// A plain copy of a [`SessionGauge`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GaugeReading {
    /// Connected clients.
    pub connections: u64,
    /// Messages delivered into the inbox.
    pub messages_in: u64,
    /// Messages this device sent.
    pub messages_out: u64,
    /// Mailbox messages handled.
    pub handled: u64,
    /// Last time a client was connected (Unix ms).
    pub last_seen: Option<i64>,
}

impl SessionGauge {
    /// Reads every counter.
    pub fn read(&self) -> GaugeReading {
        let last_seen = self.last_seen.load(Ordering::Relaxed);
        GaugeReading {
            connections: self.connections.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            last_seen: (last_seen != 0).then_some(last_seen),
        }
    }

    /// Publishes the session's current values; called after each handled message.
    pub(super) fn publish(&self, state: &DeviceState) {
        self.connections
            .store(state.conns.len() as u64, Ordering::Relaxed);
        self.messages_in.store(state.messages_in, Ordering::Relaxed);
        self.messages_out
            .store(state.messages_out, Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.last_seen
            .store(state.last_seen.unwrap_or(0), Ordering::Relaxed);
    }
}
