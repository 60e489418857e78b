//! Live progress on the terminal: one bar per client (its share of the bytes it needs, its
//! current rate, its ETA) and a total line, drawn with indicatif when stderr is a terminal; a
//! plain progress line every few seconds when it is not.
//!
//! The reactor drives it: it asks [`Progress::due`] on every turn and, when a redraw is due,
//! passes the current [`Row`]s to [`Progress::update`]. Nothing here starts a thread or a
//! timer (no steady tick), so drawing happens only on the reactor's own schedule, a few times
//! a second, and never holds up its sockets for longer than one small write to stderr.

use crate::logging;
use crate::summary::Summary;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::fmt::Write;
use std::io::IsTerminal;

/// Redraws per second on a terminal.
const BARS_HZ: u64 = 4;
/// Interval between plain progress lines (µs).
const PLAIN_EVERY_US: u64 = 5_000_000;
/// The rate is measured over this much time (µs).
const RATE_WINDOW_US: u64 = 3_000_000;
const MIB: f64 = 1048576.0;

/// One client's state, as the display sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    /// Verified bytes it has downloaded.
    pub held: u64,
    /// Bytes it has to download in all.
    pub need: u64,
    pub done: bool,
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars on stderr (a terminal).
    Bars,
    /// A plain line on stderr every few seconds.
    Plain,
    Off,
}

impl Mode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

/// Bytes per second over a sliding window of (time, bytes) observations.
#[derive(Debug, Default)]
struct Rate(VecDeque<(u64, u64)>);

impl Rate {
    fn push(&mut self, now: u64, bytes: u64) {
        self.0.push_back((now, bytes));
        while self.0.len() > 2 && now.saturating_sub(self.0[1].0) >= RATE_WINDOW_US {
            self.0.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until two observations span some time (a
    /// client's line first drawn after it joined: "0.0 MiB/s" there would be a guess).
    fn per_sec(&self) -> Option<f64> {
        match (self.0.front(), self.0.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                Some(b.1.saturating_sub(a.1) as f64 * 1e6 / (b.0 - a.0) as f64)
            }
            _ => None,
        }
    }
}

/// "1m05s", "3.2 s", or "-" when it cannot be known.
pub fn fmt_eta(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            if s < 60.0 {
                format!("{s:.1} s")
            } else if s < 360_000.0 {
                let s = s.round() as u64;
                if s >= 3600 {
                    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
                } else {
                    format!("{}m{:02}s", s / 60, s % 60)
                }
            } else {
                "-".into()
            }
        }
        _ => "-".into(),
    }
}

/// What one line says after the bar: "123.4/500.0 MiB  110.2 MiB/s  ETA 3.4 s".
pub fn describe(held: u64, need: u64, rate: Option<f64>, done: bool) -> String {
    let eta = match rate {
        _ if done || held >= need => Some(0.0),
        Some(r) if r > 0.0 => Some((need - held) as f64 / r),
        _ => None,
    };
    format!(
        "{:.1}/{:.1} MiB  {} MiB/s  ETA {}{}",
        held as f64 / MIB,
        need as f64 / MIB,
        fmt_rate(rate),
        fmt_eta(eta),
        if done { "  done" } else { "" }
    )
}

/// MiB/s with one decimal, or "-" while it cannot be known.
fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.1}", r / MIB))
}

fn percent(held: u64, need: u64) -> f64 {
    if need == 0 {
        100.0
    } else {
        held.min(need) as f64 * 100.0 / need as f64
    }
}

/// The rows of the server's display: each client's verified downloads against all the bytes
/// of the files it does not own.
pub fn rows(s: &Summary) -> Vec<Row> {
    let total: u64 = s.files.iter().map(|f| f.size).sum();
    s.owned_bytes()
        .into_iter()
        .zip(&s.clients)
        .map(|((name, own), c)| Row {
            name,
            held: c.bytes_received,
            need: total.saturating_sub(own),
            done: c.complete,
        })
        .collect()
}

struct Line {
    name: String,
    bar: Option<ProgressBar>,
    rate: Rate,
}

/// The live display of one node.
pub struct Progress {
    mode: Mode,
    multi: Option<MultiProgress>,
    lines: Vec<Line>,
    /// The total line (None on a client, which shows only itself).
    total: Option<Line>,
    next: u64,
    finished: bool,
}

impl Progress {
    /// `with_total`: add a total line below the clients' bars.
    pub fn new(mode: Mode, with_total: bool) -> Self {
        let multi = (mode == Mode::Bars).then(|| {
            // Every change to a bar asks for a redraw, and indicatif's rate limit would drop
            // the later ones of an update, leaving stale figures on the screen. So those are
            // kept rare (1 a second) and each update ends with one forced draw of it all.
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(1));
            // Warnings printed while bars are drawn go above them, not through them.
            let m2 = m.clone();
            logging::set_stderr_hook(Some(Box::new(move |line: &str| {
                m2.suspend(|| eprintln!("{line}"))
            })));
            m
        });
        let mut p = Progress {
            mode,
            multi,
            lines: Vec::new(),
            total: None,
            next: 0,
            finished: false,
        };
        if with_total {
            p.total = Some(p.line("total"));
        }
        p
    }

    fn line(&self, name: &str) -> Line {
        let bar = self.multi.as_ref().map(|m| {
            let style = ProgressStyle::with_template(
                "{prefix:<12} [{bar:32.cyan/blue}] {percent:>3}%  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let b = ProgressBar::new(0)
                .with_style(style)
                .with_prefix(name.to_string());
            // The total line stays at the bottom.
            match self.total.as_ref().and_then(|t| t.bar.as_ref()) {
                Some(t) => m.insert_before(t, b),
                None => m.add(b),
            }
        });
        Line {
            name: name.to_string(),
            bar,
            rate: Rate::default(),
        }
    }

    /// Whether a redraw is due at `now` (µs); the caller gathers the rows only then.
    pub fn due(&self, now: u64) -> bool {
        self.mode != Mode::Off && !self.finished && now >= self.next
    }

    /// Redraws with the clients' current state. `note` replaces the total's figures (e.g.
    /// "waiting for clients: 2 of 4 joined").
    pub fn update(&mut self, now: u64, rows: &[Row], note: Option<&str>) {
        if !self.due(now) {
            return;
        }
        self.next = now
            + if self.mode == Mode::Bars {
                1_000_000 / BARS_HZ
            } else {
                PLAIN_EVERY_US
            };
        for r in rows {
            if !self.lines.iter().any(|l| l.name == r.name) {
                let l = self.line(&r.name);
                self.lines.push(l);
            }
        }
        let mut plain = String::new();
        let (mut held, mut need, mut done) = (0u64, 0u64, !rows.is_empty());
        for r in rows {
            let Some(l) = self.lines.iter_mut().find(|l| l.name == r.name) else {
                continue;
            };
            l.rate.push(now, r.held);
            let rate = l.rate.per_sec();
            held += r.held.min(r.need);
            need += r.need;
            done &= r.done;
            let text = describe(r.held.min(r.need), r.need, rate, r.done);
            if let Some(b) = &l.bar {
                // The message last: it renders the bar's line with everything current.
                b.set_length(r.need.max(1));
                b.set_position(if r.need == 0 { 1 } else { r.held.min(r.need) });
                b.set_message(text);
            } else {
                let _ = write!(
                    plain,
                    "  {} {:.0}% {} MiB/s;",
                    r.name,
                    percent(r.held, r.need),
                    fmt_rate(rate)
                );
            }
        }
        if let Some(t) = &mut self.total {
            t.rate.push(now, held);
            let text = match note {
                Some(n) => n.to_string(),
                None => describe(held, need, t.rate.per_sec(), done),
            };
            if let Some(b) = &t.bar {
                b.set_length(need.max(1));
                b.set_position(if need == 0 { 0 } else { held });
                b.set_message(text);
            } else if note.is_some() {
                let _ = write!(plain, "  {text}");
            } else {
                let _ = write!(plain, "  total {:.0}%: {text}", percent(held, need));
            }
        }
        let last = self.total.as_ref().or(self.lines.last());
        if let Some(b) = last.and_then(|l| l.bar.as_ref()) {
            b.force_draw();
        }
        if self.mode == Mode::Plain {
            let secs = now as f64 / 1e6;
            eprintln!("progress {secs:.1} s:{}", plain.trim_end_matches(';'));
        }
    }

    /// Makes the next [`Progress::update`] draw whatever the time (the final state).
    pub fn redraw_now(&mut self) {
        self.next = 0;
    }

    /// Leaves the bars as they are (the final state stays on the screen) and gives stderr back
    /// to plain writes.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        for l in self.lines.iter().chain(self.total.iter()) {
            if let Some(b) = &l.bar {
                b.abandon();
            }
        }
        if self.multi.is_some() {
            logging::set_stderr_hook(None);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_window() {
        let mut r = Rate::default();
        assert_eq!(r.per_sec(), None);
        r.push(0, 0);
        assert_eq!(r.per_sec(), None, "one observation is no rate");
        r.push(1_000_000, 10 * 1048576);
        assert_eq!(r.per_sec(), Some(10.0 * MIB));
        // Old observations leave the window: after a stall the rate drops to the recent one.
        r.push(4_000_000, 10 * 1048576);
        r.push(5_000_000, 10 * 1048576);
        assert_eq!(r.per_sec(), Some(0.0));
    }

    #[test]
    fn lines_say_share_rate_and_eta() {
        assert_eq!(
            describe(100 * 1048576, 500 * 1048576, Some(40.0 * MIB), false),
            "100.0/500.0 MiB  40.0 MiB/s  ETA 10.0 s"
        );
        assert_eq!(
            describe(0, 500 * 1048576, Some(0.0), false),
            "0.0/500.0 MiB  0.0 MiB/s  ETA -"
        );
        assert_eq!(
            describe(0, 500 * 1048576, None, false),
            "0.0/500.0 MiB  - MiB/s  ETA -"
        );
        assert_eq!(
            describe(5, 5, None, true),
            "0.0/0.0 MiB  - MiB/s  ETA 0.0 s  done"
        );
        assert_eq!(fmt_eta(Some(65.0)), "1m05s");
        assert_eq!(fmt_eta(Some(7322.0)), "2h02m");
        assert_eq!(fmt_eta(Some(f64::INFINITY)), "-");
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(0, 0), 100.0);
    }

    #[test]
    fn plain_mode_is_due_every_few_seconds_and_off_never() {
        let mut p = Progress::new(Mode::Plain, true);
        let rows = [Row {
            name: "c1".into(),
            held: 1,
            need: 2,
            done: false,
        }];
        assert!(p.due(0));
        p.update(0, &rows, None);
        assert!(!p.due(PLAIN_EVERY_US - 1));
        assert!(p.due(PLAIN_EVERY_US));
        p.finish();
        assert!(!p.due(10 * PLAIN_EVERY_US));
        assert!(!Progress::new(Mode::Off, false).due(0));
    }
}
