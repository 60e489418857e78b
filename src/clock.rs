//! One clock for every node, sans-IO: a client's estimate of its offset to the server's System
//! Clock, from request and reply exchanges (ping/pong), refreshed during the run.
//!
//! One exchange: the client sends `Ping(t0)` at local time t0, the server answers
//! `Pong(t0, T)` with its clock T when it handled the ping, and the pong arrives at local t1.
//! The server's clock read T somewhere between t0 and t1, so the true offset (server - local)
//! lies in `[T - t1, T - t0]`. The midpoint `T - (t0 + t1) / 2` is off by at most half the
//! round trip `(t1 - t0) / 2`: a sample with a smaller round trip is a tighter bound.
//!
//! Two clocks also drift apart (their rates differ by tens of ppm), so a sample ages: its bound
//! grows by [`DRIFT_PPM`] of its age. The estimate in use is the kept sample with the smallest
//! bound now, which is the smallest round trip among recent samples. A burst of [`BURST`]
//! exchanges at the welcome gives a good first estimate; one exchange every [`REFRESH_US`] keeps
//! it fresh. Only one ping is in flight at a time, so a pong always answers the last ping.

use std::collections::VecDeque;

/// Exchanges right after the welcome, one after another.
pub const BURST: u32 = 8;
/// One exchange this often during the run (µs).
pub const REFRESH_US: u64 = 2_000_000;
/// Drift allowed between two unsynchronised monotonic clocks, in parts per million. Crystal
/// oscillators are specified within ±50 ppm; NTP-disciplined clocks do better.
pub const DRIFT_PPM: u64 = 100;
/// A ping unanswered this long (µs) is forgotten, so a lost pong cannot stop the refreshes.
pub const PING_TIMEOUT_US: u64 = 5_000_000;
/// Samples kept.
const KEEP: usize = 16;

/// One exchange, all times in µs: t0 and t1 on the local clock, `server` on the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub sent: u64,
    pub server: u64,
    pub received: u64,
}

impl Sample {
    pub fn rtt(&self) -> u64 {
        self.received.saturating_sub(self.sent)
    }

    /// server - local, at the midpoint of the exchange.
    pub fn offset(&self) -> i64 {
        let mid = (self.sent as i128 + self.received as i128) / 2;
        (self.server as i128 - mid).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// The bound on the offset's error at local time `now`: half the round trip, plus drift.
    pub fn error_at(&self, now: u64) -> u64 {
        self.rtt().div_ceil(2) + now.saturating_sub(self.received) * DRIFT_PPM / 1_000_000
    }
}

/// The offset in use and how far off it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Add to the local clock to get the server's System Clock (µs).
    pub offset_us: i64,
    /// Bound on the error of `offset_us` when it was chosen (µs).
    pub error_us: u64,
    /// Round trip of the sample it comes from (µs).
    pub rtt_us: u64,
    /// The largest bound of any estimate used so far, each taken at its worst: just before it
    /// was replaced (µs). Every log line stamped so far is off by at most this much.
    pub max_error_us: u64,
}

/// What the client knows about the server's clock.
#[derive(Debug, Default)]
pub struct ClockSync {
    samples: VecDeque<Sample>,
    /// The sample in use.
    current: Option<Sample>,
    max_error_us: u64,
    /// Local time of the ping in flight.
    in_flight: Option<u64>,
    burst_left: u32,
    next_ping: u64,
}

impl ClockSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// The welcome is the first exchange (hello sent at `sent`, welcome with the server's clock
    /// `server` received at `received`); the burst of pings starts now.
    pub fn on_welcome(&mut self, sent: u64, server: u64, received: u64) -> Estimate {
        self.burst_left = BURST;
        self.next_ping = received;
        self.add(Sample {
            sent,
            server,
            received,
        })
    }

    /// The ping to send now, if one is due: the local time to put in it.
    pub fn poll_ping(&mut self, now: u64) -> Option<u64> {
        self.current?;
        if let Some(t) = self.in_flight {
            if now.saturating_sub(t) < PING_TIMEOUT_US {
                return None;
            }
            self.in_flight = None;
        }
        if self.burst_left == 0 && now < self.next_ping {
            return None;
        }
        self.in_flight = Some(now);
        Some(now)
    }

    /// A pong answering the ping sent at local `sent`. Returns the estimate now in use, or
    /// `None` if the pong answers no ping in flight (late after a timeout, or bogus).
    pub fn on_pong(&mut self, sent: u64, server: u64, now: u64) -> Option<Estimate> {
        if self.in_flight != Some(sent) || now < sent {
            return None;
        }
        self.in_flight = None;
        if self.burst_left > 0 {
            self.burst_left -= 1;
        }
        if self.burst_left == 0 {
            self.next_ping = now + REFRESH_US;
        }
        Some(self.add(Sample {
            sent,
            server,
            received: now,
        }))
    }

    /// The estimate in use, with its bound at local time `now` (it grows with the sample's
    /// age), and that bound counted in the largest so far.
    pub fn estimate(&mut self, now: u64) -> Option<Estimate> {
        let s = self.current?;
        self.max_error_us = self.max_error_us.max(s.error_at(now));
        Some(Estimate {
            offset_us: s.offset(),
            error_us: s.error_at(now),
            rtt_us: s.rtt(),
            max_error_us: self.max_error_us,
        })
    }

    /// Still in the first burst of exchanges.
    pub fn in_burst(&self) -> bool {
        self.burst_left > 0
    }

    fn add(&mut self, s: Sample) -> Estimate {
        let now = s.received;
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        let best = self
            .samples
            .iter()
            .copied()
            .min_by_key(|x| x.error_at(now))
            .unwrap_or(s);
        if let Some(old) = self.current
            && old != best
        {
            self.max_error_us = self.max_error_us.max(old.error_at(now));
        }
        self.current = Some(best);
        self.max_error_us = self.max_error_us.max(best.error_at(now));
        Estimate {
            offset_us: best.offset(),
            error_us: best.error_at(now),
            rtt_us: best.rtt(),
            max_error_us: self.max_error_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client clock that reads `skew + elapsed * (1 + ppm / 1e6)` when the server's reads
    /// `elapsed`, and a network whose delays are given per exchange.
    struct World {
        skew: i64,
        ppm: i64,
    }

    impl World {
        fn local(&self, server: u64) -> u64 {
            (self.skew + server as i64 + server as i64 * self.ppm / 1_000_000) as u64
        }
        /// One exchange starting at server time `at`, with one-way delays `up` and `down` (µs).
        fn exchange(&self, c: &mut ClockSync, at: u64, up: u64, down: u64) -> Option<Estimate> {
            let t0 = c.poll_ping(self.local(at))?;
            c.on_pong(t0, at + up, self.local(at + up + down))
        }
        fn true_offset(&self, server: u64) -> i64 {
            server as i64 - self.local(server) as i64
        }
    }

    #[test]
    fn smallest_round_trip_wins_and_the_bound_holds() {
        let w = World {
            skew: 3_600_000_000,
            ppm: 0,
        };
        let mut c = ClockSync::new();
        // The welcome took 40 ms, all of it on the way back: the worst case for the midpoint.
        let e = c.on_welcome(w.local(1_000), 1_000, w.local(41_000));
        assert_eq!(e.error_us, 20_000);
        assert!((e.offset_us - w.true_offset(0)).unsigned_abs() <= e.error_us);
        let delays = [
            (900, 100),
            (5_000, 5_000),
            (30, 70),
            (2_000, 10),
            (400, 400),
        ];
        let mut at = 50_000;
        let mut last = e;
        for (up, down) in delays {
            last = w
                .exchange(&mut c, at, up, down)
                .expect("a ping is due in the burst");
            at += 10_000;
        }
        // The 100 µs exchange (30 up, 70 down) is the one in use.
        assert_eq!(last.rtt_us, 100);
        assert_eq!(
            last.error_us, 52,
            "50 µs, plus 2 µs for its 20 ms of age at 100 ppm"
        );
        assert_eq!(
            (last.offset_us - w.true_offset(0)).unsigned_abs(),
            20,
            "midpoint error is (down - up) / 2"
        );
        // The welcome's estimate was used first, for 10 ms (1 µs of aging).
        assert_eq!(last.max_error_us, 20_001);
    }

    #[test]
    fn one_ping_in_flight_and_refresh_after_the_burst() {
        let mut c = ClockSync::new();
        assert_eq!(c.poll_ping(0), None, "nothing before the welcome");
        c.on_welcome(0, 500, 1_000);
        let t = c.poll_ping(1_000).unwrap();
        assert_eq!(c.poll_ping(1_001), None, "one ping in flight");
        assert_eq!(c.on_pong(t + 1, 7, 1_100), None, "a pong for another ping");
        assert!(c.on_pong(t, 1_050, 1_100).is_some());
        assert_eq!(c.on_pong(t, 1_050, 1_200), None, "answered already");
        let mut now = 1_100;
        for _ in 1..BURST {
            let t = c.poll_ping(now).unwrap();
            now += 100;
            c.on_pong(t, now - 50, now).unwrap();
        }
        assert!(!c.in_burst());
        assert_eq!(
            c.poll_ping(now + 1),
            None,
            "next one only after the refresh period"
        );
        // Between exchanges the bound grows with the sample's age (100 µs a second); the
        // largest is still the welcome's (1000 µs round trip).
        let e = c.estimate(now + 1_000_000).unwrap();
        assert_eq!((e.rtt_us, e.error_us, e.max_error_us), (100, 150, 500));
        let e = c.estimate(now + 10_000_000).unwrap();
        assert_eq!((e.error_us, e.max_error_us), (1_050, 1_050));
        let t = c.poll_ping(now + REFRESH_US).unwrap();
        // Its pong never comes: after the timeout a new ping goes out.
        assert_eq!(c.poll_ping(t + PING_TIMEOUT_US - 1), None);
        assert!(c.poll_ping(t + PING_TIMEOUT_US).is_some());
    }

    #[test]
    fn drift_within_the_allowance_stays_within_the_bound() {
        // The client's clock runs 80 ppm fast and starts an hour ahead; the network's delays
        // vary. At every refresh for 10 minutes, the estimate is within its stated bound.
        let w = World {
            skew: 3_600_000_000,
            ppm: 80,
        };
        let mut c = ClockSync::new();
        c.on_welcome(w.local(0), 2_000, w.local(4_000));
        let mut at = 10_000u64;
        let mut k = 0u64;
        while at < 600_000_000 {
            let (up, down) = (100 + (k * 7919) % 3_000, 100 + (k * 104_729) % 5_000);
            if let Some(e) = w.exchange(&mut c, at, up, down) {
                let err = (e.offset_us - w.true_offset(at + up + down)).unsigned_abs();
                assert!(
                    err <= e.error_us,
                    "at {at}: off by {err}, bound {}",
                    e.error_us
                );
                assert!(e.error_us <= e.max_error_us);
            }
            at += if c.in_burst() { 10_000 } else { REFRESH_US };
            k += 1;
        }
    }

    #[test]
    fn an_old_sample_gives_way_as_it_ages() {
        let mut c = ClockSync::new();
        c.on_welcome(0, 100, 200);
        let mut now = 200;
        // One excellent exchange (10 µs), then ordinary ones (600 µs) every 2 s.
        let t = c.poll_ping(now).unwrap();
        c.on_pong(t, now + 5, now + 10).unwrap();
        let mut used = Vec::new();
        for _ in 0..3 {
            now += REFRESH_US;
            let t = c.poll_ping(now).unwrap();
            used.push(c.on_pong(t, now + 300, now + 600).unwrap().rtt_us);
        }
        // The 10 µs sample's bound, 5 µs plus 100 µs per second of age, beats the 300 µs of a
        // fresh ordinary sample until it is 2.95 s old.
        assert_eq!(used, [10, 600, 600]);
    }
}
