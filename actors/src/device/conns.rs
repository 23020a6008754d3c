//! Frames to the session's attached connections: live pushes, answers, and the
//! slow-reader policy (see `crate::conn`).

use std::time::{Duration, Instant};

use protocol::rest::MessageAccepted;
use protocol::{MessageRef, ServerFrame};

use super::{DeviceMsg, DeviceState, Responder, SendError};
use crate::conn::{Frame, Push};
use crate::stats::Stats;
use crate::store::MessageRecord;

/// The `message` frame of `message` at `seq` of the receiving inbox.
pub fn message_frame(message: &MessageRecord, seq: u64) -> Frame {
    MessageRef {
        message_id: &message.id,
        seq,
        ts: message.ts,
        from: &message.from,
        to: message.to.as_deref(),
        group: message.group.as_deref(),
        body: &message.body,
    }
    .encode()
    .into()
}

impl DeviceState {
    /// Queues a frame on every connection but `exclude`. Returns how many took it.
    pub(super) fn push_all(&mut self, frame: Frame, exclude: Option<u64>) -> usize {
        let mut pushed = 0;
        for conn in &mut self.conns {
            if Some(conn.id) != exclude && conn.push(frame.clone()) == Push::Queued {
                pushed += 1;
            }
        }
        self.check_conns();
        pushed
    }

    /// Drains overflow queues, cuts off stalled readers (4408), and schedules another
    /// pass while frames still wait.
    pub(super) fn check_conns(&mut self) {
        let stall = self.env.settings.slow_consumer;
        let hard_cap = self.env.settings.outbound_buffer.saturating_mul(8);
        let stats = &self.env.stats;
        let mut waiting = false;
        let before = self.conns.len();
        self.conns.retain_mut(|conn| {
            if conn.waiting() == 0 || !conn.flush() {
                return true;
            }
            if conn.is_stuck(stall, hard_cap) {
                conn.close.close(protocol::error::close::TOO_SLOW);
                Stats::inc(&stats.slow_consumers);
                return false;
            }
            waiting = true;
            true
        });
        if before > 0 && self.conns.is_empty() {
            self.idle_since = Instant::now();
        }
        if waiting && !self.flush_scheduled {
            self.flush_scheduled = true;
            self.me
                .send_after(Duration::from_millis(5), || DeviceMsg::FlushOutbound);
        }
    }

    /// Closes every connection with `code`.
    pub(super) fn kick(&mut self, code: u16) {
        for conn in self.conns.drain(..) {
            conn.close.close(code);
        }
        self.idle_since = Instant::now();
        self.touch_last_seen();
    }

    /// Answers a send: an `ack` / `error` frame to its connection, or the REST waiter.
    pub(super) fn respond(
        &mut self,
        responder: Responder,
        client_id: Option<&str>,
        result: Result<MessageAccepted, SendError>,
    ) {
        match responder {
            Responder::Rest(tx) => {
                let _ = tx.send(result);
            }
            Responder::Conn(conn_id) => {
                let frame = match &result {
                    Ok(a) => ServerFrame::Ack {
                        id: client_id,
                        message_id: &a.message_id,
                        seq: a.seq,
                        ts: a.ts,
                    }
                    .encode(),
                    Err(e) => ServerFrame::Error {
                        id: client_id,
                        code: e.code,
                        message: &e.message,
                        retry_after_ms: e.retry_after_ms,
                    }
                    .encode(),
                };
                if let Some(conn) = self.conns.iter_mut().find(|c| c.id == conn_id) {
                    conn.push(frame.into());
                    self.check_conns();
                }
            }
        }
    }
}
