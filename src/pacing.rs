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
/// Time (µs) over which one sample of a peer's delivery rate is measured. Pieces read in one
/// go, or delivered after a reactor waited for a CPU, arrive microseconds apart: taken one gap
/// at a time, a burst raised the estimate by a quarter a piece, to 1 to 100 GB/s in every
/// net-sym run, and held the window at that peer at the maximum for the first 0.3 to 0.6 s,
/// so the node hogged its peers' uplinks while another one starved.
pub const SPAN_US: u64 = 10_000;
/// Requests per peer beyond its bandwidth-delay product: the pieces the peer has already
/// committed to its socket (4 in the reactor: 2 in its queue, about 2 in the kernel's), plus
/// slack for jitter.
pub const WINDOW_MARGIN: f64 = 6.0;

/// One peer's delivery, as seen by the node that asks it.
#[derive(Debug)]
pub struct Pacing {
    /// Delivery rate (bytes/µs, smoothed; 0 until measured). A sample spans `SPAN_US` and
    /// counts for at most twice the estimate: pieces often arrive in bursts (read in one go, or
    /// after the reactor waited for the CPU), and a burst's gaps of a few µs are rates
    /// thousands of times the real one: one of them set a slow owner's window to the maximum
    /// (64 requests, 16 MiB queued on a 10 MB/s connection).
    pub rate: f64,
    /// The least time from a request to its piece (µs; `u64::MAX` until measured): the round
    /// trip plus one piece, measured when no other request was ahead.
    pub min_lat: u64,
    last_arrival: Option<u64>,
    /// The sample being gathered: the time between pieces that arrived queued (a piece's
    /// request was at the peer when the one before it arrived), and their bytes.
    span: (u64, f64),
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
            span: (0, 0.0),
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
        // The gap since the previous piece is service time when this one was surely queued at
        // the peer by then (asked at least one least-latency earlier). A sample is the bytes of
        // such pieces over their gaps, once these add up to `SPAN_US`.
        if let Some(t) = self.last_arrival
            && asked.saturating_add(self.min_lat) <= t
        {
            self.span.0 += now.saturating_sub(t);
            self.span.1 += chunk;
            if self.span.0 >= SPAN_US {
                let sample = self.span.1 / self.span.0 as f64;
                self.rate = if self.rate == 0.0 {
                    sample
                } else {
                    self.rate + (sample.min(2.0 * self.rate) - self.rate) / 4.0
                };
                self.span = (0, 0.0);
            }
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
        // Pieces of 100 kB every 1000 µs, the first 1000 µs after its request: 100 B/µs, and
        // 100 B/µs x 1000 µs = 1 chunk in flight plus the margin.
        for k in 0..12 {
            p.on_arrival(100_000.0, 0, 1000 * (k + 1), 8);
        }
        assert_eq!((p.rate, p.min_lat), (100.0, 1000));
        assert_eq!(p.window(100_000.0, 0.0, true), 1 + WINDOW_MARGIN as usize);
        // At 100 B/µs, chunks of 1000 bytes: 100 of them cover the trip.
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
        assert_eq!(p.rate, 10.0, "11 µs is no sample");
        // The next piece on time: two in 25 ms, 20 B/µs, and the estimate moves a quarter.
        p.on_arrival(250_000.0, 0, 50_000 + 25_000 * 8, 8);
        assert_eq!(p.rate, 12.5);
        assert!(
            p.window(250_000.0, 0.0, true) < 16,
            "window {}",
            p.window(250_000.0, 0.0, true)
        );
    }

    #[test]
    fn pieces_read_in_one_go_after_a_wait_keep_the_rate() {
        // 10 B/µs; then no piece for 425 ms (the reader waits for a CPU), and the 16 that
        // arrived meanwhile are read 1 µs apart (one gap at a time, the estimate grew 1.25
        // times a piece, to about 20 times the rate).
        let mut p = Pacing::default();
        let mut now = 50_000;
        for _ in 0..8 {
            p.on_arrival(250_000.0, 0, now, 8);
            now += 25_000;
        }
        now += 400_000;
        for _ in 0..16 {
            p.on_arrival(250_000.0, 0, now, 8);
            now += 1;
        }
        p.on_arrival(250_000.0, 0, now + 25_000, 8);
        assert!((5.0..15.0).contains(&p.rate), "rate {}", p.rate);
    }

    #[test]
    fn the_rate_is_measured_over_a_span_not_one_gap() {
        // 1000-byte pieces, all asked at 0: the first after 1000 µs, then two read in one go
        // (1 µs apart), then one every 100 µs (10 B/µs).
        let mut p = Pacing::default();
        p.on_arrival(1000.0, 0, 1000, 8);
        p.on_arrival(1000.0, 0, 1001, 8);
        assert_eq!(
            p.rate, 0.0,
            "one gap of 1 µs is no estimate (it was 1000 B/µs)"
        );
        assert_eq!(p.window(1000.0, 0.0, true), INITIAL_WINDOW);
        let mut now = 1001;
        while p.rate == 0.0 {
            now += 100;
            p.on_arrival(1000.0, 0, now, 8);
        }
        // The bytes after the first piece over the time since it: SPAN_US at least.
        assert!(now - 1000 >= SPAN_US);
        let expect = ((now - 1001) / 100 + 1) as f64 * 1000.0 / (now - 1000) as f64;
        assert_eq!(p.rate, expect);
        assert!((p.rate - 10.0).abs() < 0.2, "rate {}", p.rate);
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
