//! A simulated swarm on the sans-IO core: the real `ServerCore` and `ClientCore`s, wired through
//! a discrete-event network with per-host uplink and downlink rates, a one-way latency and a
//! virtual clock. No sockets, no threads, no hashing (digests are labels, and a chunk "verifies"
//! when its label matches): a whole run takes milliseconds and is deterministic.
//!
//! It checks what the reactor tests cannot see quickly: that every client ends with every file,
//! the exact bytes each one received, how often an owner uploads its own file, and the total
//! time against the lower bound T_lb of ../shared/SCENARIOS.md.

use p2pshare::client_core::{Action, ClientCore, PieceVerdict};
use p2pshare::codec::{FileDecl, Message};
use p2pshare::ids::{ChunkId, Digest, FileId, PeerId};
use p2pshare::server_core::{ServerAction, ServerCore};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

const CHUNK: u32 = 262_144;
const TICK_US: u64 = 20_000;

/// One emulated host: rates in bytes per second, and the size of the file it shares (0: none).
#[derive(Clone, Copy)]
struct Host {
    up: f64,
    down: f64,
    file: u64,
}

enum Ev {
    ToServer {
        from: usize,
        msg: Message,
    },
    ToClient {
        to: usize,
        msg: Message,
    },
    ToPeer {
        from: usize,
        to: usize,
        msg: Message,
    },
    Connected {
        dialer: usize,
        target: usize,
    },
    Piece {
        from: usize,
        to: usize,
        chunk: ChunkId,
        len: u32,
    },
    UplinkFree {
        host: usize,
    },
    Tick,
}

struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    hosts: Vec<Host>,
    latency_us: u64,
    server: ServerCore,
    clients: Vec<ClientCore>,
    /// Client index of each peer id (learned from the welcomes).
    idx_of: BTreeMap<PeerId, usize>,
    up_busy: Vec<bool>,
    down_free: Vec<u64>,
    rr: Vec<usize>,
    exits: Vec<Option<i32>>,
    finished: Option<(i32, u64)>,
    /// Bytes each host uploaded of the file it owns.
    own_uploaded: Vec<u64>,
    file_owner: BTreeMap<FileId, usize>,
    received: Vec<u64>,
    /// The server is gone: messages to and from it are lost.
    server_dead: bool,
}

fn label(c: ChunkId) -> Digest {
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&c.file.0.to_be_bytes());
    d[4..8].copy_from_slice(&c.index.to_be_bytes());
    d
}

fn whole_label(f: FileId) -> Digest {
    let mut d = [0xAAu8; 16];
    d[..4].copy_from_slice(&f.0.to_be_bytes());
    d
}

impl Sim {
    fn new(hosts: Vec<Host>, latency_us: u64) -> Sim {
        let n = hosts.len();
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            hosts,
            latency_us,
            server: ServerCore::new(n as u32, CHUNK),
            clients: Vec::new(),
            idx_of: BTreeMap::new(),
            up_busy: vec![false; n],
            down_free: vec![0; n],
            rr: vec![0; n],
            exits: vec![None; n],
            finished: None,
            own_uploaded: vec![0; n],
            file_owner: BTreeMap::new(),
            received: vec![0; n],
            server_dead: false,
        };
        for i in 0..n {
            let decls = if sim.hosts[i].file > 0 {
                vec![FileDecl {
                    name: format!("file{}", i + 1),
                    size: sim.hosts[i].file,
                }]
            } else {
                vec![]
            };
            sim.clients.push(ClientCore::new(
                format!("client{}", i + 1),
                format!("10.0.0.{}:7000", i + 1),
                decls,
            ));
            sim.server.on_connect(i, "sim");
        }
        for i in 0..n {
            // Hellos reach the server in index order, so client i gets id i + 1.
            sim.now = i as u64;
            sim.client_actions(i);
        }
        sim.at(TICK_US, Ev::Tick);
        sim
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn id(&self, i: usize) -> PeerId {
        self.clients[i].id()
    }

    fn client_actions(&mut self, i: usize) {
        while let Some(a) = self.clients[i].poll_action() {
            let (now, lat) = (self.now, self.latency_us);
            match a {
                Action::ToServer(msg) => self.at(now + lat, Ev::ToServer { from: i, msg }),
                Action::ToPeer(p, msg) => {
                    if let Some(&to) = self.idx_of.get(&p) {
                        self.at(now + lat, Ev::ToPeer { from: i, to, msg });
                    }
                }
                Action::Connect { peer, .. } => {
                    if let Some(&target) = self.idx_of.get(&peer) {
                        self.at(now + 2 * lat, Ev::Connected { dialer: i, target });
                    }
                }
                Action::Disconnect { peer, reason } => {
                    if let Some(&j) = self.idx_of.get(&peer) {
                        let me = self.id(i);
                        self.clients[i].on_peer_lost(peer, &reason, now);
                        self.clients[j].on_peer_lost(me, &reason, now);
                        self.client_actions(j);
                    }
                }
                Action::CreateOutput { .. } => {}
                Action::HashOwn { file, first, count } => {
                    let d = (first..first + count)
                        .map(|index| label(ChunkId { file, index }))
                        .collect();
                    self.clients[i].on_own_digests(file, first, d);
                }
                Action::Stream { file, to, .. } => {
                    let count = self.clients[i]
                        .file(file)
                        .map_or(0, |f| f.geo.chunk_count());
                    let md5 = (to == count).then(|| whole_label(file));
                    self.clients[i].on_stream(file, to, md5);
                }
                Action::Finalize { file } => self.clients[i].on_finalized(file, now),
                Action::Exit { code, .. } => self.exits[i] = Some(code),
            }
        }
        self.try_send(i);
    }

    fn server_actions(&mut self) {
        while let Some(a) = self.server.poll_action() {
            match a {
                ServerAction::Send(to, msg) => {
                    if let Message::Welcome { id, .. } = &msg {
                        self.idx_of.insert(*id, to);
                    }
                    if let Message::Start { files, .. } = &msg {
                        for f in files {
                            self.file_owner.insert(f.id, f.owner.0 as usize - 1);
                        }
                    }
                    let t = self.now + self.latency_us;
                    self.at(t, Ev::ToClient { to, msg });
                }
                ServerAction::Close(conn, reason) => {
                    panic!("server closed client {conn}: {reason}")
                }
                ServerAction::Finished { code } => self.finished = Some((code, self.now)),
            }
        }
    }

    /// Starts the next piece on host `i`'s uplink if it is idle: peers are served in turn.
    fn try_send(&mut self, i: usize) {
        if self.up_busy[i] {
            return;
        }
        let peers: Vec<PeerId> = self
            .idx_of
            .keys()
            .copied()
            .filter(|p| *p != self.id(i))
            .collect();
        for k in 0..peers.len() {
            let p = peers[(self.rr[i] + k) % peers.len()];
            if let Some((chunk, _, len)) = self.clients[i].next_piece(p) {
                self.rr[i] = (self.rr[i] + k + 1) % peers.len();
                let to = self.idx_of[&p];
                let tx = (len as f64 / self.hosts[i].up * 1e6) as u64;
                let rx = (len as f64 / self.hosts[to].down * 1e6) as u64;
                let done_up = self.now + tx;
                let arrive = done_up.max(self.down_free[to] + rx);
                self.down_free[to] = arrive;
                if self.file_owner.get(&chunk.file) == Some(&i) {
                    self.own_uploaded[i] += len as u64;
                }
                self.up_busy[i] = true;
                self.at(done_up, Ev::UplinkFree { host: i });
                self.at(
                    arrive + self.latency_us,
                    Ev::Piece {
                        from: i,
                        to,
                        chunk,
                        len,
                    },
                );
                return;
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((t, seq))) = self.queue.pop() else {
            return false;
        };
        self.now = t;
        let ev = self
            .events
            .remove(&seq)
            .expect("every queued event is stored");
        match ev {
            Ev::ToServer { .. } | Ev::ToClient { .. } if self.server_dead => {}
            Ev::ToServer { from, msg } => {
                self.server.on_message(from, msg, t);
                self.server_actions();
            }
            Ev::ToClient { to, msg } => {
                self.clients[to].on_server_message(msg, t);
                self.client_actions(to);
            }
            Ev::ToPeer { from, to, msg } => {
                let p = self.id(from);
                if let Err(e) = self.clients[to].on_peer_message(p, msg, t) {
                    panic!("client {to} closed peer {from}: {e}");
                }
                self.client_actions(to);
            }
            Ev::Connected { dialer, target } => {
                let (a, b) = (self.id(dialer), self.id(target));
                self.clients[target]
                    .accept_peer(a)
                    .expect("the target accepts its dialer");
                self.clients[dialer].on_peer_connected(b, t);
                self.clients[target].on_peer_connected(a, t);
                self.client_actions(dialer);
                self.client_actions(target);
            }
            Ev::Piece {
                from,
                to,
                chunk,
                len,
            } => {
                let p = self.id(from);
                match self.clients[to].on_piece(p, chunk, len as usize) {
                    PieceVerdict::Verify {
                        digest,
                        requested_at,
                        ..
                    } => {
                        let ok = digest == label(chunk);
                        if ok {
                            self.received[to] += len as u64;
                        }
                        self.clients[to].on_verified(p, chunk, ok, requested_at, t);
                    }
                    PieceVerdict::Discard => {}
                    PieceVerdict::Violation(v) => panic!("client {to}: {v}"),
                }
                self.client_actions(to);
            }
            Ev::UplinkFree { host } => {
                self.up_busy[host] = false;
                self.try_send(host);
            }
            Ev::Tick => {
                for i in 0..self.clients.len() {
                    self.clients[i].on_tick(t);
                    self.client_actions(i);
                }
                if self.finished.is_none() && self.exits.iter().any(Option::is_none) {
                    self.at(t + TICK_US, Ev::Tick);
                }
            }
        }
        true
    }

    /// Runs until the server finishes (or `limit_us` of virtual time); returns the total time
    /// in seconds, from the first hello to the last completion.
    fn run(&mut self, limit_us: u64) -> f64 {
        while self.finished.is_none() && self.now < limit_us && self.step() {}
        let (code, _) = self
            .finished
            .unwrap_or_else(|| panic!("run did not finish by {} s", limit_us / 1_000_000));
        assert_eq!(code, 0, "the server reports a failed run");
        self.server.summary(self.now).total_ms / 1000.0
    }
}

impl Sim {
    /// The server dies: every client loses its connection.
    fn kill_server(&mut self) {
        self.server_dead = true;
        for i in 0..self.clients.len() {
            self.clients[i].on_server_lost();
            self.client_actions(i);
        }
    }
}

/// The lower bound of ../shared/SCENARIOS.md for these hosts (without the round trip).
fn t_lb(hosts: &[Host]) -> f64 {
    let total: f64 = hosts.iter().map(|h| h.file as f64).sum();
    let down = hosts
        .iter()
        .map(|h| (total - h.file as f64) / h.down)
        .fold(0.0, f64::max);
    let up = hosts
        .iter()
        .map(|h| h.file as f64 / h.up)
        .fold(0.0, f64::max);
    let all = hosts.iter().map(|h| total - h.file as f64).sum::<f64>()
        / hosts.iter().map(|h| h.up).sum::<f64>();
    down.max(up).max(all)
}

fn check_complete(sim: &Sim) {
    let total: u64 = sim.hosts.iter().map(|h| h.file).sum();
    for (i, h) in sim.hosts.iter().enumerate() {
        assert!(
            sim.clients[i].holds_all(),
            "client {} is not complete",
            i + 1
        );
        assert_eq!(
            sim.received[i],
            total - h.file,
            "client {} received the wrong number of bytes",
            i + 1
        );
        assert_eq!(sim.clients[i].bytes_received, total - h.file);
    }
}

const MBIT: f64 = 1e6 / 8.0;

#[test]
fn symmetric_swarm_completes_near_the_bound() {
    let hosts = vec![
        Host {
            up: 1000.0 * MBIT,
            down: 1000.0 * MBIT,
            file: 40 * CHUNK as u64 + 12_345
        };
        4
    ];
    let mut sim = Sim::new(hosts.clone(), 500);
    let total = sim.run(600_000_000);
    check_complete(&sim);
    let bound = t_lb(&hosts);
    eprintln!(
        "symmetric: total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 1.6 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn slow_uplink_owner_sends_its_file_about_once() {
    let mut hosts = vec![
        Host {
            up: 1000.0 * MBIT,
            down: 1000.0 * MBIT,
            file: 64 * CHUNK as u64
        };
        4
    ];
    hosts[0].up = 250.0 * MBIT;
    let mut sim = Sim::new(hosts.clone(), 500);
    let total = sim.run(600_000_000);
    check_complete(&sim);
    let ratio = sim.own_uploaded[0] as f64 / hosts[0].file as f64;
    assert!(
        ratio < 1.5,
        "the slow owner uploaded its file {ratio:.2} times"
    );
    let bound = t_lb(&hosts);
    eprintln!(
        "slow uplink (issue 3 brings this to 1.15; today's scheduler must not get worse): total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 2.5 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn eight_clients_one_without_files() {
    let mut hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 10 * CHUNK as u64 + 7
        };
        8
    ];
    hosts[3].file = 0;
    hosts[5].file = 1000;
    let mut sim = Sim::new(hosts, 2_000);
    sim.run(600_000_000);
    check_complete(&sim);
}

#[test]
fn forty_ms_round_trips_still_complete() {
    let hosts = vec![
        Host {
            up: 200.0 * MBIT,
            down: 200.0 * MBIT,
            file: 32 * CHUNK as u64
        };
        4
    ];
    let mut sim = Sim::new(hosts.clone(), 20_000);
    let total = sim.run(600_000_000);
    check_complete(&sim);
    // A window of 12 chunks per peer covers 200 Mbit/s x 40 ms (1 MB) three times over.
    let bound = t_lb(&hosts);
    eprintln!(
        "40 ms RTT: total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 2.0 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn clients_finish_without_the_server_after_the_manifest() {
    let hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 48 * CHUNK as u64 + 99
        };
        4
    ];
    let mut sim = Sim::new(hosts, 500);
    // Run until every client knows the whole manifest, then kill the server.
    while !sim
        .clients
        .iter()
        .all(|c| c.manifest_complete() && c.is_started())
    {
        assert!(sim.step(), "the manifest never completed");
    }
    assert!(
        sim.clients.iter().all(|c| !c.is_complete()),
        "killed too late to mean anything"
    );
    sim.kill_server();
    while sim.exits.iter().any(Option::is_none) && sim.now < 600_000_000 {
        assert!(sim.step(), "the swarm stalled without its server");
    }
    assert_eq!(sim.exits, vec![Some(0); 4], "every client exits 0");
    check_complete(&sim);
    assert!(
        sim.finished.is_none(),
        "the dead server never finished the run"
    );
}

#[test]
fn server_lost_before_the_manifest_is_an_error() {
    let hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 8 * CHUNK as u64
        };
        3
    ];
    let mut sim = Sim::new(hosts, 500);
    sim.kill_server();
    assert_eq!(sim.exits, vec![Some(1); 3]);
}
