//! What a client adds so its run can be watched and its logs merged: the clock exchanges with
//! the server (estimator in `clock`), the offset that stamps its log lines with the server's
//! System Clock, its clock reports to the server, and its own progress bar (`--progress`).
//!
//! The reactor shell (`client`) shows it every message from the server before the core sees
//! it, every message the core sends to the server, and every tick; it sends what
//! [`ClientObs::poll_to_server`] gives. Pongs never reach the core.

use crate::clock::{ClockSync, Estimate};
use crate::codec::Message;
use crate::ids::PeerId;
use crate::logging;
use crate::progress::{Mode, Progress, Row};
use crate::summary::Summary;
use log::info;
use std::collections::VecDeque;

pub struct ClientObs {
    clock: ClockSync,
    /// Local time the hello was queued: the first exchange starts there.
    hello_sent: u64,
    out: VecDeque<Message>,
    progress: Option<Progress>,
    id: Option<PeerId>,
    name: String,
    /// Bytes to download (known at the start) and downloaded so far.
    need: Option<u64>,
    held: u64,
    done: bool,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl ClientObs {
    /// `progress`: draw this client's own bar on stderr.
    pub fn new(progress: bool, hello_sent: u64) -> Self {
        ClientObs {
            clock: ClockSync::new(),
            hello_sent,
            out: VecDeque::new(),
            progress: progress.then(|| Progress::new(Mode::auto(), false)),
            id: None,
            name: String::new(),
            need: None,
            held: 0,
            done: false,
        }
    }

    /// A message from the server, before the core sees it. Returns true if it was for this
    /// module alone (a pong) and the core must not see it.
    pub fn on_server_message(&mut self, m: &Message, now: u64) -> bool {
        match m {
            Message::Welcome {
                id, name, clock_us, ..
            } => {
                self.id = Some(*id);
                self.name = name.clone();
                let e = self.clock.on_welcome(self.hello_sent, *clock_us, now);
                logging::set_offset_us(e.offset_us);
                false
            }
            Message::Start { files, .. } => {
                let me = self.id;
                let need = files.iter().filter(|f| Some(f.owner) != me).map(|f| f.size);
                self.need = Some(need.sum());
                false
            }
            Message::Pong {
                client_us,
                server_us,
            } => {
                if let Some(e) = self.clock.on_pong(*client_us, *server_us, now) {
                    logging::set_offset_us(e.offset_us);
                    if !self.clock.in_burst() {
                        self.report(e);
                    }
                }
                self.ping(now);
                true
            }
            _ => false,
        }
    }

    /// The estimate in use is logged and reported to the server (for its summary).
    fn report(&mut self, e: Estimate) {
        info!(
            "clock event=clock_sync offset_ms={:.3} error_ms={:.3} rtt_ms={:.3} max_error_ms={:.3}",
            e.offset_us as f64 / 1000.0,
            ms(e.error_us),
            ms(e.rtt_us),
            ms(e.max_error_us)
        );
        self.out.push_back(Message::ClockReport {
            offset_us: e.offset_us,
            error_us: e.error_us,
            max_error_us: e.max_error_us,
        });
    }

    fn ping(&mut self, now: u64) {
        if let Some(t) = self.clock.poll_ping(now) {
            self.out.push_back(Message::Ping { client_us: t });
        }
    }

    /// A message the core sends to the server: progress and done carry the bytes downloaded.
    pub fn on_to_server(&mut self, m: &Message, now: u64) {
        match m {
            Message::Progress { bytes_received, .. } => self.held = *bytes_received,
            Message::Done { bytes_received, .. } => {
                self.held = *bytes_received;
                self.done = true;
                // The server's summary then bounds every line this client stamped until now.
                if let Some(e) = self.clock.estimate(now) {
                    self.report(e);
                }
            }
            _ => {}
        }
    }

    /// Every tick: a ping if one is due, and a redraw if one is due.
    pub fn on_tick(&mut self, now: u64) {
        self.ping(now);
        if let (Some(p), Some(need)) = (self.progress.as_mut(), self.need)
            && p.due(now)
        {
            let row = Row {
                name: self.name.clone(),
                held: self.held,
                need,
                done: self.done,
            };
            p.update(now, &[row], None);
        }
    }

    /// The next message for the server.
    pub fn poll_to_server(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// Puts this client's clock error bounds into its own summary (written when the run ended
    /// without the server).
    pub fn fill_clock(&mut self, s: &mut Summary, now: u64) {
        if let (Some(e), Some(c)) = (self.clock.estimate(now), s.clients.first_mut()) {
            c.clock_error_ms = Some(ms(e.error_us));
            c.clock_max_error_ms = Some(ms(e.max_error_us));
        }
    }

    /// Whether this client was asked to show its progress (`--progress`).
    pub fn shows_progress(&self) -> bool {
        self.progress.is_some()
    }

    /// The run is over for this client: leave the bar as it is.
    pub fn finish(&mut self) {
        if let Some(p) = self.progress.as_mut() {
            p.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FileInfo;
    use crate::ids::FileId;

    fn welcome(clock_us: u64) -> Message {
        Message::Welcome {
            id: PeerId(2),
            name: "client2".into(),
            clock_us,
            chunk_size: 1024,
            clients: 2,
            files: vec![],
        }
    }

    #[test]
    fn burst_then_one_report_and_pongs_stay_here() {
        let mut o = ClientObs::new(false, 1_000);
        assert!(!o.on_server_message(&welcome(50_000), 1_200));
        o.on_tick(1_300);
        let mut now = 1_300;
        let mut reports = 0;
        for _ in 0..crate::clock::BURST {
            let Some(Message::Ping { client_us }) = o.poll_to_server() else {
                panic!("a ping is due during the burst");
            };
            now += 100;
            let pong = Message::Pong {
                client_us,
                server_us: 50_000 + now - 1_200,
            };
            assert!(
                o.on_server_message(&pong, now),
                "pongs are not for the core"
            );
            while let Some(m) = o.poll_to_server() {
                match m {
                    Message::ClockReport { error_us, .. } => {
                        reports += 1;
                        assert_eq!(error_us, 50);
                    }
                    Message::Ping { client_us } => {
                        // The next ping of the burst went out at once; answer it next turn.
                        o.out.push_front(Message::Ping { client_us });
                        break;
                    }
                    m => panic!("unexpected {m:?}"),
                }
            }
        }
        assert_eq!(reports, 1, "one report, at the end of the burst");
    }

    #[test]
    fn need_is_what_others_own() {
        let mut o = ClientObs::new(false, 0);
        o.on_server_message(&welcome(0), 10);
        let f = |id, owner, size| FileInfo {
            id: FileId(id),
            owner: PeerId(owner),
            name: format!("f{id}"),
            size,
        };
        o.on_server_message(
            &Message::Start {
                peers: vec![],
                files: vec![f(0, 1, 100), f(1, 2, 7), f(2, 3, 50)],
            },
            20,
        );
        assert_eq!(o.need, Some(150));
        o.on_to_server(
            &Message::Done {
                bytes_received: 150,
                bytes_sent: 0,
            },
            30,
        );
        assert!(o.done && o.held == 150);
        assert!(
            matches!(o.poll_to_server(), Some(Message::ClockReport { .. })),
            "a last clock report goes with done"
        );
    }
}
