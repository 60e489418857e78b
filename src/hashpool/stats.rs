//! What one MD5 worker did with its time, logged as `hash_load` after a batch once `EVERY` has
//! passed since its last line, when debug logging is on (and not measured otherwise): batches
//! run, their wall and CPU time (hashing and writing the verified chunks), how long the thread
//! waited for a CPU while it was runnable over the whole span, chunks verified, own-file chunks
//! chained, and how full the lanes were (`md5x::take_slot_bytes`). An idle worker logs nothing,
//! and the last span before exit is not logged.
//!
//! It answers where the hashing time goes: on a busy machine a worker spends most of a batch
//! runnable but not running (net-sym on 2 cores, with the whole-file MD5 streams of before the
//! chained digests: 110 to 200 ms of each 250 ms waiting for a CPU, 40 to 100 ms on one).

use std::time::{Duration, Instant};

/// How often a worker logs its accounting.
const EVERY: Duration = Duration::from_millis(250);

/// Bytes a batch hashed, and the bytes its rounds could have hashed (`md5x::take_slot_bytes`:
/// 8 lanes a round of one group, 16 of two interleaved groups, a scalar pass as 8 lanes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub lanes: u64,
    pub slots: u64,
}

/// One worker's accounting since its last `hash_load` line.
pub(super) struct Stats {
    index: usize,
    since: Instant,
    batches: u32,
    wall: Duration,
    cpu_ns: u64,
    verifies: u32,
    chained: u32,
    cost: Cost,
    runq_ns: Option<u64>,
}

/// A running batch: its start, on the wall clock and on the thread's CPU clock.
pub(super) struct Started(Instant, u64);

impl Stats {
    /// `None` unless debug logging is on.
    pub(super) fn new(index: usize) -> Option<Self> {
        log::log_enabled!(log::Level::Debug).then(|| Self::fresh(index, runq_ns()))
    }

    /// Nothing counted yet, from now on.
    fn fresh(index: usize, runq_ns: Option<u64>) -> Self {
        Stats {
            index,
            since: Instant::now(),
            batches: 0,
            wall: Duration::ZERO,
            cpu_ns: 0,
            verifies: 0,
            chained: 0,
            cost: Cost::default(),
            runq_ns,
        }
    }

    pub(super) fn start() -> Started {
        Started(Instant::now(), thread_cpu_ns())
    }

    /// Counts one batch and logs the accounting once `EVERY` has passed.
    pub(super) fn batch(&mut self, started: Started, verifies: u32, chained: u32, cost: Cost) {
        self.batches += 1;
        self.wall += started.0.elapsed();
        self.cpu_ns += thread_cpu_ns().saturating_sub(started.1);
        self.verifies += verifies;
        self.chained += chained;
        self.cost.lanes += cost.lanes;
        self.cost.slots += cost.slots;
        if self.since.elapsed() < EVERY {
            return;
        }
        let now = runq_ns();
        let waited = match (self.runq_ns, now) {
            (Some(a), Some(b)) => format!("{:.1}", b.saturating_sub(a) as f64 / 1e6),
            _ => "-".into(),
        };
        let fill = if self.cost.slots == 0 {
            0.0
        } else {
            self.cost.lanes as f64 / self.cost.slots as f64
        };
        log::debug!(
            "hash_load event=hash_load worker={} span_ms={:.0} batches={} wall_ms={:.1} cpu_ms={:.1} runq_ms={waited} verified={} chained={} lane_fill={fill:.2}",
            self.index,
            self.since.elapsed().as_secs_f64() * 1e3,
            self.batches,
            self.wall.as_secs_f64() * 1e3,
            self.cpu_ns as f64 / 1e6,
            self.verifies,
            self.chained,
        );
        *self = Self::fresh(self.index, now);
    }
}

/// CPU time this thread has used, in ns (0 where the clock is missing).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given, which lives on this stack.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Time this thread has spent runnable but waiting for a CPU, in ns: the second field of
/// /proc/thread-self/schedstat (Linux with schedstats; `None` elsewhere).
fn runq_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_cpu_clock_advances_with_work() {
        // Spin until this thread has used 5 ms of CPU; on a busy machine that takes longer on
        // the wall clock, but with a working clock never 5 s.
        let before = thread_cpu_ns();
        let mut x = 0u64;
        let t = Instant::now();
        while thread_cpu_ns() < before + 5_000_000 && t.elapsed() < Duration::from_secs(5) {
            for _ in 0..1000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        assert!(
            thread_cpu_ns() >= before + 5_000_000,
            "the thread's CPU clock did not advance in {:?}",
            t.elapsed()
        );
    }
}
