//! The simulated swarm's harness: the real `ServerCore` and `ClientCore`s wired through a
//! discrete-event network with a virtual clock. No sockets, no threads, no hashing (digests are
//! labels, and a chunk "verifies" when its label matches): a run takes milliseconds and is
//! deterministic.
//!
//! The network is a fluid model of TCP between hosts with a rate-limited uplink and downlink
//! each (like `tc tbf` on each side of a host's link):
//! - each ordered pair of clients is one connection with a FIFO of frames, as in the reactor;
//! - the connections that have bytes to send share the links max-min fairly (what competing
//!   TCP flows converge to): a connection is limited by its share of the sender's uplink or of
//!   the receiver's downlink, whichever is scarcer, and the rest goes to the other connections;
//! - a frame arrives one latency after its last byte left;
//! - the sender commits pieces to a connection as the reactor does: it takes the next piece from
//!   the core while fewer than [`COMMITTED`] are queued on that connection (two in the
//!   reactor's queue plus what the kernel's send buffer holds), so a piece is chosen late, and a
//!   cancel cannot reach a committed one;
//! - a control frame (request, have, cancel, ...) goes ahead of the pieces in the reactor's queue
//!   but behind those already in the kernel's send buffer ([`IN_KERNEL`]), as in the reactor:
//!   its bytes are negligible, but it waits for them.
//!   Server messages only take the latency.

#![allow(dead_code)] // each test binary uses a different part of the harness

use p2pshare::client_core::{Action, ClientCore, PieceVerdict};
use p2pshare::codec::{FileDecl, Message};
use p2pshare::ids::{ChunkId, Digest, FileId, PeerId};
use p2pshare::server_core::{ServerAction, ServerCore};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

pub const CHUNK: u32 = 262_144;
pub const TICK_US: u64 = 20_000;
pub const MBIT: f64 = 1e6 / 8.0;
pub const MIB: u64 = 1 << 20;
/// Pieces committed to one connection at a time: the reactor keeps 2 in its own queue, and the
/// kernel's send buffer holds about 2 more (512 KiB) unsent.
pub const COMMITTED: usize = 4;
/// Of those, the pieces a control frame must wait for: the reactor queues control frames ahead
/// of its own pieces (conn.rs), but not of what the kernel already holds.
pub const IN_KERNEL: usize = 2;
/// Chain values an owner's hash pool reports at once (`hash_us_per_chunk` > 0).
const CHAIN_BATCH: u32 = 8;

/// One emulated host: rates in bytes per second, and the size of the file it shares (0: none).
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub up: f64,
    pub down: f64,
    pub file: u64,
}

impl Host {
    pub fn mbit(up: f64, down: f64, file: u64) -> Host {
        Host {
            up: up * MBIT,
            down: down * MBIT,
            file,
        }
    }
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
        epoch: u32,
    },
    Accepted {
        dialer: usize,
        target: usize,
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
        epoch: u32,
    },
    FrameDone {
        link: usize,
        ver: u64,
    },
    /// A batch of an owner's chain is done: the chain values of `count` chunks from `first`.
    Hashed {
        i: usize,
        file: FileId,
        first: u32,
        count: u32,
    },
    Tick,
}

/// A piece on a connection, and the control frames queued right behind it.
struct Frame {
    chunk: ChunkId,
    len: u32,
    then: Vec<Message>,
}

/// One direction of a peer connection.
#[derive(Default)]
struct Link {
    q: VecDeque<Frame>,
    /// Bytes of the head frame still to send.
    left: f64,
    /// Current share, bytes per µs (0 while idle).
    rate: f64,
    ver: u64,
}

pub struct Sim {
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    pub hosts: Vec<Host>,
    pub latency_us: u64,
    pub server: ServerCore,
    pub clients: Vec<ClientCore>,
    /// Client index of each peer id (learned from the welcomes).
    idx_of: BTreeMap<PeerId, usize>,
    links: Vec<Link>,
    /// Per pair of clients, bumped when their connection is cut: what was on its way is lost.
    epochs: Vec<u32>,
    /// When the links' `left` were last brought up to date.
    flowed_at: u64,
    pub exits: Vec<Option<i32>>,
    pub finished: Option<(i32, u64)>,
    /// Bytes each host uploaded of the file it owns.
    pub own_uploaded: Vec<u64>,
    /// Bytes each host uploaded in all.
    pub uploaded: Vec<u64>,
    /// Bytes of other files each host uploaded (relayed), per 250 ms of virtual time.
    pub relayed: Vec<Vec<u64>>,
    /// Piece bytes each host received and dropped (duplicates, cancelled requests).
    pub wasted: Vec<u64>,
    file_owner: BTreeMap<FileId, usize>,
    pub received: Vec<u64>,
    /// Verified bytes each client received per 250 ms of virtual time.
    pub timeline: Vec<Vec<u64>>,
    /// When each client held every file (µs).
    pub done_at: Vec<Option<u64>>,
    /// Chunks each client dropped from its (unsimulated) page cache: `Action::Uncache`.
    pub uncached: Vec<u64>,
    /// The server is gone: messages to and from it are lost.
    server_dead: bool,
    /// Time (µs) an owner's hash pool spends on one chunk of its own file's chain: a peer
    /// learns the chain values (and may ask for the chunks) in order, in batches of
    /// `CHAIN_BATCH`, over file chunks x this. 0: all at once.
    pub hash_us_per_chunk: u64,
    /// Per client, when its hash pool is free again.
    hash_free_at: Vec<u64>,
    /// Pieces the kernel's send buffer of one connection holds unsent ([`IN_KERNEL`]; the
    /// reactor's queue adds 2, see [`COMMITTED`]). Linux grows a busy connection's buffer up to
    /// 4 MiB (net.ipv4.tcp_wmem): 16 pieces.
    pub in_kernel: usize,
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
    pub fn new(hosts: Vec<Host>, latency_us: u64) -> Sim {
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
            links: (0..n * n).map(|_| Link::default()).collect(),
            epochs: vec![0; n * n],
            flowed_at: 0,
            exits: vec![None; n],
            finished: None,
            own_uploaded: vec![0; n],
            uploaded: vec![0; n],
            relayed: vec![Vec::new(); n],
            wasted: vec![0; n],
            file_owner: BTreeMap::new(),
            received: vec![0; n],
            timeline: vec![Vec::new(); n],
            done_at: vec![None; n],
            uncached: vec![0; n],
            server_dead: false,
            hash_us_per_chunk: 0,
            hash_free_at: vec![0; n],
            in_kernel: IN_KERNEL,
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

    fn n(&self) -> usize {
        self.hosts.len()
    }

    fn client_actions(&mut self, i: usize) {
        while let Some(a) = self.clients[i].poll_action() {
            let (now, lat) = (self.now, self.latency_us);
            match a {
                Action::ToServer(msg) => self.at(now + lat, Ev::ToServer { from: i, msg }),
                Action::ToPeer(p, msg) => {
                    if let Some(&to) = self.idx_of.get(&p) {
                        self.send_control(i, to, msg);
                    }
                }
                Action::Connect { peer, .. } => {
                    if let Some(&target) = self.idx_of.get(&peer) {
                        // SYN, SYN-ACK and the dialler's hello: the target knows after 1.5
                        // round trips, the dialler when the target's hello is back.
                        self.at(now + 3 * lat, Ev::Accepted { dialer: i, target });
                        self.at(now + 4 * lat, Ev::Connected { dialer: i, target });
                    }
                }
                Action::Disconnect { peer, reason } => {
                    if let Some(&j) = self.idx_of.get(&peer) {
                        self.cut(i, j, &reason);
                    }
                }
                Action::CreateOutput { file } => self.clients[i].on_output_ready(file, false, now),
                Action::Chain { file } => {
                    let count = self.clients[i]
                        .file(file)
                        .map_or(0, |f| f.geo.chunk_count());
                    if self.hash_us_per_chunk == 0 {
                        self.hashed(i, file, 0, count);
                    } else {
                        let mut first = 0;
                        while first < count {
                            let n = CHAIN_BATCH.min(count - first);
                            let t =
                                self.hash_free_at[i].max(now) + n as u64 * self.hash_us_per_chunk;
                            self.hash_free_at[i] = t;
                            self.at(
                                t,
                                Ev::Hashed {
                                    i,
                                    file,
                                    first,
                                    count: n,
                                },
                            );
                            first += n;
                        }
                    }
                }
                // No resumed outputs here (`on_output_ready(file, false)`).
                Action::Check { .. } => panic!("client {i}: a resume check in the simulator"),
                Action::Uncache { file, from, to } => {
                    // No page cache here, but the rule: what a node drops, no other needs.
                    for j in (0..self.n()).filter(|&j| j != i) {
                        for index in from..to {
                            assert!(
                                self.clients[j].holds(ChunkId { file, index }),
                                "client {i} dropped {file:?}#{index}, which client {j} lacks"
                            );
                        }
                    }
                    self.uncached[i] += (to - from) as u64;
                }
                Action::Finalize { file } => self.clients[i].on_finalized(file, now),
                Action::Exit { code, .. } => self.exits[i] = Some(code),
            }
        }
        if self.done_at[i].is_none() && self.clients[i].is_started() && self.clients[i].holds_all()
        {
            self.done_at[i] = Some(self.now);
        }
        self.top_up(i);
    }

    fn hashed(&mut self, i: usize, file: FileId, first: u32, count: u32) {
        let d = (first..first + count)
            .map(|index| self.chain_label(ChunkId { file, index }))
            .collect();
        self.clients[i].on_chained(file, first, d);
    }

    /// A chunk's chain value here: a label, and the file's for its last chunk.
    fn chain_label(&self, c: ChunkId) -> Digest {
        let count = self
            .clients
            .iter()
            .find_map(|cl| cl.file(c.file))
            .map_or(0, |f| f.geo.chunk_count());
        if c.index + 1 == count {
            whole_label(c.file)
        } else {
            label(c)
        }
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

    fn epoch(&self, a: usize, b: usize) -> u32 {
        self.epochs[a.min(b) * self.n() + a.max(b)]
    }

    /// The connection between clients `i` and `j` ends: both are told, and what was queued on
    /// it or on its way is lost.
    pub fn cut(&mut self, i: usize, j: usize, reason: &str) {
        let n = self.n();
        self.epochs[i.min(j) * n + i.max(j)] += 1;
        for l in [i * n + j, j * n + i] {
            self.links[l].q.clear();
            self.links[l].rate = 0.0;
        }
        self.reflow();
        let (a, b, now) = (self.id(i), self.id(j), self.now);
        self.clients[i].on_peer_lost(b, reason, now);
        self.clients[j].on_peer_lost(a, reason, now);
        self.client_actions(j);
        self.client_actions(i);
    }

    /// A control frame from `from` to `to`: straight out if the connection is idle, otherwise
    /// behind the pieces committed to it.
    fn send_control(&mut self, from: usize, to: usize, msg: Message) {
        let l = from * self.n() + to;
        let q = &mut self.links[l].q;
        let behind = q.len().min(self.in_kernel);
        match behind.checked_sub(1).and_then(|k| q.get_mut(k)) {
            Some(f) => f.then.push(msg),
            None => {
                let epoch = self.epoch(from, to);
                self.at(
                    self.now + self.latency_us,
                    Ev::ToPeer {
                        from,
                        to,
                        msg,
                        epoch,
                    },
                )
            }
        }
    }

    /// Commits pieces from client `i`'s serve queues to its connections, as the reactor does.
    fn top_up(&mut self, i: usize) {
        let n = self.n();
        let mut started = false;
        for to in 0..n {
            if to == i || !self.idx_of.contains_key(&self.id(to)) {
                continue;
            }
            let p = self.id(to);
            let l = i * n + to;
            while self.links[l].q.len() < 2 + self.in_kernel {
                let Some((chunk, _, len)) = self.clients[i].next_piece(p) else {
                    break;
                };
                if self.file_owner.get(&chunk.file) == Some(&i) {
                    self.own_uploaded[i] += len as u64;
                } else {
                    let b = (self.now / 250_000) as usize;
                    let r = &mut self.relayed[i];
                    if r.len() <= b {
                        r.resize(b + 1, 0);
                    }
                    r[b] += len as u64;
                }
                self.uploaded[i] += len as u64;
                let link = &mut self.links[l];
                if link.q.is_empty() {
                    link.left = len as f64;
                    started = true;
                }
                link.q.push_back(Frame {
                    chunk,
                    len,
                    then: Vec::new(),
                });
            }
        }
        if started {
            self.reflow();
        }
    }

    /// Brings every busy link's remaining bytes up to `now`.
    fn flow(&mut self) {
        let dt = (self.now - self.flowed_at) as f64;
        self.flowed_at = self.now;
        if dt > 0.0 {
            for l in self.links.iter_mut().filter(|l| l.rate > 0.0) {
                l.left = (l.left - l.rate * dt).max(0.0);
            }
        }
    }

    /// Max-min fair shares of the busy links (progressive filling), and their completion times.
    fn reflow(&mut self) {
        self.flow();
        let n = self.n();
        let mut cap: Vec<f64> = self.hosts.iter().map(|h| h.up / 1e6).collect();
        cap.extend(self.hosts.iter().map(|h| h.down / 1e6));
        let mut open: Vec<usize> = (0..n * n)
            .filter(|&l| !self.links[l].q.is_empty())
            .collect();
        let mut rate = vec![0.0; n * n];
        while !open.is_empty() {
            let mut users = vec![0u32; 2 * n];
            for &l in &open {
                users[l / n] += 1;
                users[n + l % n] += 1;
            }
            let (r, share) = (0..2 * n)
                .filter(|&r| users[r] > 0)
                .map(|r| (r, cap[r] / users[r] as f64))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("an open link uses two resources");
            open.retain(|&l| {
                let (u, d) = (l / n, n + l % n);
                if u != r && d != r {
                    return true;
                }
                rate[l] = share;
                cap[u] -= share;
                cap[d] -= share;
                false
            });
        }
        for (l, &r) in rate.iter().enumerate() {
            let link = &mut self.links[l];
            if link.q.is_empty() {
                link.rate = 0.0;
                continue;
            }
            if link.rate > 0.0 && (link.rate - r).abs() <= 1e-12 {
                continue; // its completion event still stands
            }
            link.rate = r;
            link.ver += 1;
            let (ver, dt) = (link.ver, (link.left / r).ceil() as u64);
            self.at(self.now + dt, Ev::FrameDone { link: l, ver });
        }
    }

    fn frame_done(&mut self, l: usize, ver: u64) {
        if self.links[l].ver != ver || self.links[l].q.is_empty() {
            return; // superseded by a later share
        }
        self.flow();
        let n = self.n();
        let (from, to) = (l / n, l % n);
        let f = self.links[l].q.pop_front().expect("checked above");
        let t = self.now + self.latency_us;
        let epoch = self.epoch(from, to);
        self.at(
            t,
            Ev::Piece {
                from,
                to,
                chunk: f.chunk,
                len: f.len,
                epoch,
            },
        );
        for msg in f.then {
            self.at(
                t,
                Ev::ToPeer {
                    from,
                    to,
                    msg,
                    epoch,
                },
            );
        }
        let link = &mut self.links[l];
        match link.q.front() {
            Some(next) => {
                link.left = next.len as f64;
                link.ver += 1;
                let (ver, dt) = (link.ver, (link.left / link.rate).ceil() as u64);
                self.at(self.now + dt, Ev::FrameDone { link: l, ver });
            }
            None => link.rate = 0.0,
        }
        // Room for the next piece: the sender's reactor takes it from its core now.
        self.top_up(from);
        if self.links[l].q.is_empty() {
            self.reflow(); // the link went idle: the others' shares grow
        }
    }

    pub fn step(&mut self) -> bool {
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
            Ev::ToPeer {
                from, to, epoch, ..
            }
            | Ev::Piece {
                from, to, epoch, ..
            } if epoch != self.epoch(from, to) => {}
            Ev::ToPeer { from, to, msg, .. } => {
                let p = self.id(from);
                if let Err(e) = self.clients[to].on_peer_message(p, msg, t) {
                    panic!("client {to} closed peer {from}: {e}");
                }
                self.client_actions(to);
            }
            Ev::Accepted { dialer, target } => {
                let a = self.id(dialer);
                self.clients[target]
                    .accept_peer(a)
                    .expect("the target accepts its dialer");
                self.clients[target].on_peer_connected(a, t);
                self.client_actions(target);
            }
            Ev::Connected { dialer, target } => {
                let b = self.id(target);
                self.clients[dialer].on_peer_connected(b, t);
                self.client_actions(dialer);
            }
            Ev::Piece {
                from,
                to,
                chunk,
                len,
                ..
            } => {
                let p = self.id(from);
                match self.clients[to].on_piece(p, chunk, len as usize, t) {
                    PieceVerdict::Verify {
                        expect,
                        requested_at,
                        ..
                    } => {
                        let ok = expect == self.chain_label(chunk);
                        if ok {
                            self.received[to] += len as u64;
                            let b = (t / 250_000) as usize;
                            let tl = &mut self.timeline[to];
                            if tl.len() <= b {
                                tl.resize(b + 1, 0);
                            }
                            tl[b] += len as u64;
                        }
                        self.clients[to].on_verified(p, chunk, ok, requested_at, t);
                    }
                    PieceVerdict::Discard => self.wasted[to] += len as u64,
                    PieceVerdict::Violation(v) => panic!("client {to}: {v}"),
                }
                self.client_actions(to);
            }
            Ev::FrameDone { link, ver } => self.frame_done(link, ver),
            Ev::Hashed {
                i,
                file,
                first,
                count,
            } => {
                self.hashed(i, file, first, count);
                self.client_actions(i);
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
    pub fn run(&mut self, limit_us: u64) -> f64 {
        while self.finished.is_none() && self.now < limit_us && self.step() {}
        let (code, _) = self
            .finished
            .unwrap_or_else(|| panic!("run did not finish by {} s", limit_us / 1_000_000));
        assert_eq!(code, 0, "the server reports a failed run");
        self.server.summary(self.now).total_ms / 1000.0
    }

    /// The server dies: every client loses its connection.
    pub fn kill_server(&mut self) {
        self.server_dead = true;
        for i in 0..self.clients.len() {
            self.clients[i].on_server_lost();
            self.client_actions(i);
        }
    }

    /// Every client holds every file and received exactly what it lacked.
    pub fn check_complete(&self) {
        let total: u64 = self.hosts.iter().map(|h| h.file).sum();
        for (i, h) in self.hosts.iter().enumerate() {
            assert!(
                self.clients[i].holds_all(),
                "client {} is not complete",
                i + 1
            );
            assert_eq!(
                self.received[i],
                total - h.file,
                "client {} received the wrong number of bytes",
                i + 1
            );
            assert_eq!(self.clients[i].bytes_received, total - h.file);
        }
    }
}

/// The lower bound of ../shared/SCENARIOS.md for these hosts (without the round trip).
pub fn t_lb(hosts: &[Host]) -> f64 {
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
