//! What outlives one dispatcher incarnation: where the running one is (to wake or
//! restart it), the paused lanes, and the per-lane live counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use protocol::Priority;
use ractor::ActorRef;

use super::{DispatcherMsg, RATE_WINDOW_SECS};
use crate::clock::now_ms;

/// Where the running dispatcher is, for waking it and restarting it, plus what outlives
/// one dispatcher incarnation: the paused lanes and the per-lane live counters.
#[derive(Default)]
pub struct DispatcherHandle {
    slot: Mutex<Option<ActorRef<DispatcherMsg>>>,
    paused: [AtomicBool; 4],
    active: [AtomicU64; 4],
    /// Completions per whole second (Unix seconds, per lane), newest last.
    completions: Mutex<VecDeque<(i64, [u64; 4])>>,
}

/// What the dispatcher knows of one lane right now (depth comes from the store).
#[derive(Debug, Clone, Copy)]
pub struct LaneLive {
    /// The lane.
    pub lane: Priority,
    /// Whether the dispatcher skips it when claiming.
    pub paused: bool,
    /// Jobs of the lane in flight.
    pub active: u64,
    /// Jobs of the lane completed per second, over the last [`RATE_WINDOW_SECS`]
    /// whole seconds.
    pub rate: f64,
}

impl DispatcherHandle {
    pub(super) fn slot(&self) -> std::sync::MutexGuard<'_, Option<ActorRef<DispatcherMsg>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running dispatcher, if any.
    pub fn current(&self) -> Option<ActorRef<DispatcherMsg>> {
        self.slot().clone()
    }

    /// Tells the dispatcher new jobs are due.
    pub fn wake(&self) {
        if let Some(d) = self.current() {
            let _ = d.cast(DispatcherMsg::Wake);
        }
    }

    /// Stops the running dispatcher; the root supervisor starts a fresh one, which puts
    /// in-flight jobs back in the queue. Returns whether one was running.
    pub fn restart(&self) -> bool {
        match self.slot().take() {
            Some(d) => {
                d.stop(Some("restart requested".into()));
                true
            }
            None => false,
        }
    }

    /// Stops claiming jobs of `lane` (they stay waiting; jobs in flight finish).
    /// Returns whether it was running before.
    pub fn pause(&self, lane: Priority) -> bool {
        !self.paused[lane.index()].swap(true, Ordering::SeqCst)
    }

    /// Claims jobs of `lane` again. Returns whether it was paused before.
    pub fn resume(&self, lane: Priority) -> bool {
        let was = self.paused[lane.index()].swap(false, Ordering::SeqCst);
        self.wake();
        was
    }

    /// Takes the paused lanes as the store has them (another node, or a restart).
    pub fn set_paused(&self, paused: &[Priority]) {
        let mut resumed = false;
        for lane in Priority::ALL {
            let now = paused.contains(&lane);
            let was = self.paused[lane.index()].swap(now, Ordering::SeqCst);
            resumed |= was && !now;
        }
        if resumed {
            self.wake();
        }
    }

    /// Whether the dispatcher is running.
    pub fn alive(&self) -> bool {
        self.current().is_some_and(|d| crate::root::alive(&d))
    }

    /// Whether `lane` is paused.
    pub fn is_paused(&self, lane: Priority) -> bool {
        self.paused[lane.index()].load(Ordering::SeqCst)
    }

    pub(super) fn paused_lanes(&self) -> Vec<Priority> {
        Priority::ALL
            .into_iter()
            .filter(|p| self.is_paused(*p))
            .collect()
    }

    /// Paused flag, in-flight count and completion rate of every lane, critical first.
    pub fn lanes(&self) -> [LaneLive; 4] {
        let now = now_ms().div_euclid(1000);
        let mut done = [0u64; 4];
        {
            let ring = self.completions.lock().unwrap_or_else(|p| p.into_inner());
            let from = now - RATE_WINDOW_SECS as i64;
            for (_, counts) in ring.iter().filter(|(s, _)| *s >= from && *s < now) {
                for (d, c) in done.iter_mut().zip(counts) {
                    *d += c;
                }
            }
        }
        Priority::ALL.map(|lane| LaneLive {
            lane,
            paused: self.is_paused(lane),
            active: self.active[lane.index()].load(Ordering::Relaxed),
            rate: done[lane.index()] as f64 / RATE_WINDOW_SECS as f64,
        })
    }

    pub(super) fn claimed(&self, lane: Priority) {
        self.active[lane.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn finished(&self, lane: Priority, completed: bool) {
        let _ = self.active[lane.index()].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
        if !completed {
            return;
        }
        let now = now_ms().div_euclid(1000);
        let mut ring = self.completions.lock().unwrap_or_else(|p| p.into_inner());
        match ring.back_mut() {
            Some((sec, counts)) if *sec == now => counts[lane.index()] += 1,
            _ => {
                let mut counts = [0u64; 4];
                counts[lane.index()] = 1;
                ring.push_back((now, counts));
            }
        }
        while ring
            .front()
            .is_some_and(|(sec, _)| *sec < now - RATE_WINDOW_SECS as i64)
        {
            ring.pop_front();
        }
    }

    /// A new incarnation starts with nothing in flight (the old one's jobs were
    /// requeued).
    pub(super) fn reset_active(&self) {
        for a in &self.active {
            a.store(0, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for DispatcherHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherHandle")
            .field("running", &self.current().is_some())
            .finish()
    }
}
