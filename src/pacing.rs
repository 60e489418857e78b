//! How many requests to keep in flight at one peer, sans-IO: its measured delivery rate times
//! its round trip (the bandwidth-delay product), plus a margin for the pieces the peer has
//! already committed to its socket. Before the first measurements the window is a generous fixed
//! one (no slow start: a fresh connection to a fast peer is used at once), and it grows whenever
//! it runs dry while it was the limit (the round trip grew, e.g. behind the node's own busy
//! uplink, which delays its requests).

/// Requests in flight per peer before its rate and round trip are measured.
pub const INITIAL_WINDOW: usize = 16;
pub const MIN_WINDOW: usize = 4;
pub const MAX_WINDOW: usize = 64;
/// Requests per peer beyond its bandwidth-delay product: the pieces the peer has already
/// committed to its socket (4 in the reactor: 2 in its queue, about 2 in the kernel's), plus
/// slack for jitter.
pub const WINDOW_MARGIN: f64 = 6.0;

/// One peer's delivery, as seen by the node that asks it.
#[derive(Debug)]
pub struct Pacing {
    /// Delivery rate (bytes/µs, smoothed; 0 until measured). A sample counts for at most twice
    /// the estimate: pieces often arrive in bursts (read in one go, or after the reactor waited
    /// for the CPU), and a burst's gaps of a few µs are rates thousands of times the real one:
    /// one of them set a slow owner's window to the maximum (64 requests, 16 MiB queued on a
    /// 10 MB/s connection).
    pub rate: f64,
    /// The least time from a request to its piece (µs; `u64::MAX` until measured): the round
    /// trip plus one piece, measured when no other request was ahead.
    pub min_lat: u64,
    last_arrival: Option<u64>,
    /// Requests added because the window ran dry while full.
    extra: f64,
    /// The window was the limit at the last fill.
    pub full: bool,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            rate: 0.0,
            min_lat: u64::MAX,
            last_arrival: None,
            extra: 0.0,
            full: false,
        }
    }
}

impl Pacing {
    /// Requests to keep in flight, for chunks of `chunk` bytes, when this node's requests wait
    /// `own_delay` µs behind its own outgoing pieces (not in the least latency, which is
    /// measured before the uplink is busy). Without `margin` (a node far ahead of the slowest
    /// downloader: `Scheduler::window`), only the bandwidth-delay product, at least `MIN_WINDOW`.
    pub fn window(&self, chunk: f64, own_delay: f64, margin: bool) -> usize {
        if self.rate <= 0.0 || self.min_lat == u64::MAX {
            return INITIAL_WINDOW;
        }
        let bdp = self.rate * (self.min_lat as f64 + own_delay) / chunk;
        let margin = if margin {
            WINDOW_MARGIN + self.extra
        } else {
            0.0
        };
        ((bdp + margin).ceil() as usize).clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// A piece of `chunk` bytes asked at `asked` arrived at `now`; `left` requests remain in
    /// flight there.
    pub fn on_arrival(&mut self, chunk: f64, asked: u64, now: u64, left: usize) {
        if self.full && left == 0 {
            self.extra = (self.extra + 2.0).min(MAX_WINDOW as f64);
        }
        self.min_lat = self.min_lat.min(now.saturating_sub(asked));
        // The gap since the previous piece is a rate sample when this one was surely queued at
        // the peer by then (asked at least one least-latency earlier).
        if let Some(t) = self.last_arrival
            && now > t
            && asked.saturating_add(self.min_lat) <= t
        {
            let sample = chunk / (now - t) as f64;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                self.rate + (sample.min(2.0 * self.rate) - self.rate) / 4.0
            };
        }
        self.last_arrival = Some(now);
    }

    /// Time (µs) for `n` pieces of `chunk` bytes already asked for to arrive from here.
    pub fn drain_time(&self, chunk: f64, n: usize) -> f64 {
        n as f64 * chunk / self.rate.max(1.0)
    }

    /// Expected time (µs) for a new request to arrive behind `n - 1` already asked for.
    pub fn eta(&self, chunk: f64, n: usize) -> f64 {
        let lat = if self.min_lat == u64::MAX {
            0.0
        } else {
            self.min_lat as f64
        };
        self.drain_time(chunk, n) + lat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_rate_times_round_trip_plus_margin() {
        let mut p = Pacing::default();
        assert_eq!(p.window(1000.0, 0.0, true), INITIAL_WINDOW);
        // Pieces every 10 µs, 1000 µs after their request: 100 B/µs x 1000 µs = 100 chunks.
        for k in 0..4 {
            p.on_arrival(1000.0, 0, 1000 + 10 * k, 8);
        }
        assert_eq!((p.rate, p.min_lat), (100.0, 1000));
        assert_eq!(p.window(1000.0, 0.0, true), MAX_WINDOW);
        // A piece per 1000 µs, the first 1000 µs after the requests: 1 chunk covers the trip.
        let mut slow = Pacing::default();
        for k in 0..20 {
            slow.on_arrival(1000.0, 0, 1000 * (k + 1), 3);
        }
        assert_eq!(
            slow.window(1000.0, 0.0, true),
            MIN_WINDOW.max(1 + WINDOW_MARGIN as usize)
        );
    }

    #[test]
    fn a_burst_of_pieces_does_not_make_a_slow_peer_fast() {
        // A piece every 25 ms (10 B/µs), then two read in one go, 11 µs apart.
        let mut p = Pacing::default();
        for k in 0..8 {
            p.on_arrival(250_000.0, 0, 50_000 + 25_000 * k, 8);
        }
        assert_eq!(p.rate, 10.0);
        p.on_arrival(250_000.0, 0, 50_000 + 25_000 * 7 + 11, 8);
        assert_eq!(p.rate, 12.5, "a quarter of twice the rate more");
        assert!(
            p.window(250_000.0, 0.0, true) < 16,
            "window {}",
            p.window(250_000.0, 0.0, true)
        );
    }

    #[test]
    fn a_full_window_that_runs_dry_grows() {
        let mut p = Pacing::default();
        for k in 0..20 {
            p.on_arrival(1000.0, 0, 1000 * (k + 1), 3);
        }
        let w = p.window(1000.0, 0.0, true);
        p.full = true;
        p.on_arrival(1000.0, 20_000, 21_000, 0);
        assert_eq!(p.window(1000.0, 0.0, true), w + 2);
        p.full = false;
        p.on_arrival(1000.0, 21_000, 22_000, 0);
        assert_eq!(
            p.window(1000.0, 0.0, true),
            w + 2,
            "not the limit: no growth"
        );
    }
}
