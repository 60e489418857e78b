//! The peer side of the client's session state machine: the peer handshake check, peer
//! connections coming and going, redials, the messages peers send, pieces in and out, and what
//! to request of whom (through the scheduler) on every change and tick. The run-level side
//! (server messages, the file table, digests, completion) is in the parent module.

use super::*;
use std::collections::BTreeSet;

impl ClientCore {
    /// Checks the hello of an incoming peer connection.
    pub fn accept_peer(&self, id: PeerId) -> Result<(), String> {
        self.may_dial_in(id)?;
        match self.peers.get(&id) {
            Some(p) if p.connected => Err(format!("peer {} is already connected", id.0)),
            _ => Ok(()),
        }
    }

    /// Whether peer `id` may open a link to this node at all (it may be connected already: a
    /// peer that restarted dials in again before this node noticed its old link die).
    pub fn may_dial_in(&self, id: PeerId) -> Result<(), String> {
        if !matches!(self.phase, Phase::Started | Phase::Complete) {
            return Err("not started yet".into());
        }
        if id <= self.id {
            // Each pair has one connection, dialled by the higher id (see on_start).
            return Err(format!(
                "peer {} must be dialled by this node, not dial it",
                id.0
            ));
        }
        match self.peers.get(&id) {
            None => Err(format!("unknown peer id {}", id.0)),
            Some(p) if p.redial.banned => Err(format!("peer {} sent bad chunks", id.0)),
            Some(_) => Ok(()),
        }
    }

    pub fn peer_name(&self, id: PeerId) -> String {
        self.peers
            .get(&id)
            .map_or_else(|| format!("peer{}", id.0), |p| p.info.name.clone())
    }

    /// A peer connection is established (either direction) and its hello checked.
    pub fn on_peer_connected(&mut self, p: PeerId, now: u64) {
        let Some(slot) = self.peers.get_mut(&p) else {
            return;
        };
        slot.connected = true;
        slot.seen = true;
        slot.redial.connected();
        info!(
            "peer_connected event=peer_connected peer={} addr={}",
            slot.info.name, slot.info.addr
        );
        self.sched.peer_connected(p);
        self.serving.add_peer(p);
        for (id, f) in &self.files {
            if f.owned {
                // The owner's whole-file MD5 goes to its peers too: if the server dies after
                // the chunk digests, the peers can still verify the file.
                if let Some(md5) = f.computed {
                    self.actions
                        .push_back(Action::ToPeer(p, Message::FileDigest { file: *id, md5 }));
                }
                continue;
            }
            if let Some(h) = self.sched.have_set(*id)
                && h.count() > 0
            {
                self.actions.push_back(Action::ToPeer(
                    p,
                    Message::Bitfield {
                        file: *id,
                        bits: h.to_bytes(),
                    },
                ));
            }
        }
        self.fill(p, now);
    }

    pub fn on_peer_lost(&mut self, p: PeerId, reason: &str, now: u64) {
        let Some(slot) = self.peers.get_mut(&p) else {
            return;
        };
        if !slot.connected {
            return;
        }
        slot.connected = false;
        info!(
            "peer_disconnected event=peer_disconnected peer={} reason={reason:?}",
            slot.info.name
        );
        self.sched.peer_disconnected(p);
        let sched = &self.sched;
        self.serving.peer_lost(p, |c| sched.avail(c) > 0);
        self.schedule_redial(p, now);
        self.fill_all(now);
        self.check_peers_done();
    }

    /// An outgoing connection to `p` could not be established.
    pub fn on_dial_failed(&mut self, p: PeerId, reason: &str, now: u64) {
        warn!(
            "peer_error event=peer_connect_failed peer={} reason={reason:?}",
            self.peer_name(p)
        );
        self.schedule_redial(p, now);
    }

    /// Peers this node dials are dialled again after a failure or a loss (see `redial`).
    fn schedule_redial(&mut self, p: PeerId, now: u64) {
        let me = self.id;
        let Some(slot) = self.peers.get_mut(&p) else {
            return;
        };
        if p >= me || self.phase == Phase::Exited {
            return;
        }
        if let AfterFailure::GiveUp(n) = slot.redial.failed(now) {
            warn!(
                "peer_given_up event=peer_given_up peer={} failures={n}",
                slot.info.name
            );
        }
    }

    /// A control message from a connected peer. An error closes that connection.
    pub fn on_peer_message(&mut self, p: PeerId, msg: Message, now: u64) -> Result<(), String> {
        match msg {
            Message::Bitfield { file, bits } => {
                if !self.sched.peer_bitfield(p, file, &bits) {
                    return Err(format!("bad bitfield for file {}", file.0));
                }
            }
            Message::Have { chunk } => {
                if !self.sched.peer_has(p, chunk) {
                    return Err(format!("have for out-of-range chunk {chunk}"));
                }
            }
            Message::Request { chunk } => {
                if !self.holds(chunk) {
                    return Err(format!(
                        "request for chunk {chunk}, which this node does not hold"
                    ));
                }
                return self.serving.on_request(p, chunk);
            }
            Message::Cancel { chunk } => {
                self.serving.cancel(p, chunk);
                return Ok(());
            }
            Message::RequestFresh { file, below } => {
                if self.serving.on_request_fresh(p, file, below)? == FreshReply::NoFresh {
                    self.actions
                        .push_back(Action::ToPeer(p, Message::NoFresh { file }));
                }
                return Ok(());
            }
            Message::FileDigest { file, md5 } => {
                let f = self
                    .files
                    .get(&file)
                    .ok_or_else(|| format!("file digest for unknown file {}", file.0))?;
                if f.info.owner != p || f.owned {
                    return Err(format!(
                        "file digest for {} from a peer that does not own it",
                        f.info.name
                    ));
                }
                self.learn_whole_digest(file, md5)?;
                return Ok(());
            }
            Message::NoFresh { file } => {
                if !self.sched.no_fresh(p, file, now) {
                    return Err(format!("no_fresh for file {} without a request", file.0));
                }
            }
            Message::Load {
                own_eta_ms,
                upload_kib_s,
            } => {
                let rate = upload_kib_s as f64 * 1024.0 / 1e6;
                let before = self.sched.precious().clone();
                let withdrawn = self.sched.peer_load(p, own_eta_ms as u64 * 1000, rate);
                self.after_loads(&before, withdrawn);
                // Who is a bottleneck may have changed what every peer should be asked.
                self.fill_all(now);
                return Ok(());
            }
            other => return Err(format!("unexpected {} from a peer", other.name())),
        }
        self.fill(p, now);
        self.check_peers_done();
        Ok(())
    }

    /// The next chunk to send to `p`, if it asked for one.
    pub fn next_piece(&mut self, p: PeerId) -> Option<(ChunkId, u64, u32)> {
        let c = self.serving.next(p);
        for (q, file) in self.serving.take_refused() {
            self.actions
                .push_back(Action::ToPeer(q, Message::NoFresh { file }));
        }
        let c = c?;
        let f = self.files.get(&c.file)?;
        let len = f.geo.chunk_len(c.index);
        self.serving.count_sent(len as u64);
        self.bytes_sent += len as u64;
        self.progress_dirty = true;
        Some((c, f.geo.offset(c.index), len))
    }

    /// Whether `p` has requests waiting to be served.
    pub fn has_pieces_for(&self, p: PeerId) -> bool {
        self.serving.has_pending(p)
    }

    /// The header of a piece arrived from `p` with a payload of `len` bytes.
    pub fn on_piece(&mut self, p: PeerId, c: ChunkId, len: usize, now: u64) -> PieceVerdict {
        let Some(f) = self.files.get(&c.file) else {
            return PieceVerdict::Violation(format!("piece for unknown file {}", c.file.0));
        };
        if f.owned || c.index >= f.geo.chunk_count() {
            return PieceVerdict::Violation(format!("piece {c} out of range"));
        }
        if len != f.geo.chunk_len(c.index) as usize {
            return PieceVerdict::Violation(format!(
                "piece {c} has {len} bytes, expected {}",
                f.geo.chunk_len(c.index)
            ));
        }
        // A digest not yet known means the chunk was never requested: a violation, not a panic.
        // Digests arrive in order, so the one before it is known too.
        let Some(&expect) = f.digests.get(c.index as usize) else {
            return PieceVerdict::Violation(format!("piece {c} whose digest is not known yet"));
        };
        let prev = c
            .index
            .checked_sub(1)
            .and_then(|k| f.digests.get(k as usize).copied());
        let last = c.index + 1 == f.geo.chunk_count();
        let offset = f.geo.offset(c.index);
        debug!("piece event=piece_arrived peer={} chunk={c}", p.0);
        match self.sched.on_piece(p, c, now) {
            PieceOutcome::Verify { requested_at } => PieceVerdict::Verify {
                prev,
                expect,
                last,
                offset,
                requested_at,
            },
            PieceOutcome::Discard => PieceVerdict::Discard,
            PieceOutcome::Unrequested => PieceVerdict::Violation(format!("unrequested piece {c}")),
        }
    }

    /// The verification of a piece from `p` finished (and, if `ok`, it is written).
    pub fn on_verified(&mut self, p: PeerId, c: ChunkId, ok: bool, requested_at: u64, now: u64) {
        let cancel = self.sched.on_verified(c, p, ok);
        for q in cancel {
            self.actions
                .push_back(Action::ToPeer(q, Message::Cancel { chunk: c }));
        }
        let Some(f) = self.files.get(&c.file) else {
            return;
        };
        let len = f.geo.chunk_len(c.index);
        let from = self.peer_name(p);
        let ms = now.saturating_sub(requested_at) as f64 / 1000.0;
        if ok {
            self.bytes_received += len as u64;
            self.progress_dirty = true;
            info!(
                "chunk event=chunk_received file={} index={} from={from} bytes={len} download_ms={ms:.3}",
                f.info.name, c.index
            );
            // Every peer hears of it, the sender and the owner too: without a server, a node
            // decides that the run is over from what its peers are known to hold.
            for (q, s) in &self.peers {
                if s.connected {
                    self.actions
                        .push_back(Action::ToPeer(*q, Message::Have { chunk: c }));
                }
            }
            self.maybe_complete(c.file);
        } else {
            warn!(
                "chunk_failed event=chunk_md5_failed file={} index={} from={from} bytes={len}",
                f.info.name, c.index
            );
            if let Some(s) = self.peers.get_mut(&p) {
                s.bad_chunks += 1;
                if s.bad_chunks >= MAX_BAD_CHUNKS && s.connected {
                    s.redial.banned = true;
                    let reason = format!("{} chunks failed their MD5", s.bad_chunks);
                    self.actions
                        .push_back(Action::Disconnect { peer: p, reason });
                }
            }
        }
        self.fill_all(now);
    }

    // ------------------------------------------------------------ time

    pub fn on_tick(&mut self, now: u64) {
        for (p, slot) in self.peers.iter_mut() {
            if slot.connected {
                continue;
            }
            if let Some(attempt) = slot.redial.due(now) {
                info!(
                    "peer_redial event=peer_redial peer={} attempt={attempt}",
                    slot.info.name
                );
                self.actions.push_back(Action::Connect {
                    peer: *p,
                    addr: slot.info.addr.clone(),
                });
            }
        }
        self.serving.on_tick(now);
        self.uncache_spent();
        let before = self.sched.precious().clone();
        let withdrawn = self
            .sched
            .set_my_load(self.serving.own_eta_us(), self.serving.rate());
        self.after_loads(&before, withdrawn);
        // The first as soon as the upload rate is measured: peers must learn early which
        // uplink to spare.
        if self.last_load == 0 || now.saturating_sub(self.last_load) >= LOAD_EVERY_US {
            self.send_load(now);
        }
        if log::log_enabled!(log::Level::Debug)
            && now.saturating_sub(self.last_windows) >= LOAD_EVERY_US
        {
            self.last_windows = now;
            self.log_windows();
        }
        for (p, c) in self.sched.on_tick(now) {
            warn!(
                "request_timeout event=request_timeout peer={} chunk={c}",
                self.peer_name(p)
            );
            self.actions
                .push_back(Action::ToPeer(p, Message::Cancel { chunk: c }));
        }
        self.check_peers_done();
        self.report_stuck(now);
        if self.progress_dirty && now.saturating_sub(self.last_progress) >= PROGRESS_EVERY_US {
            self.send_progress(now);
        }
        self.fill_all(now);
    }

    pub(super) fn send_progress(&mut self, now: u64) {
        if !matches!(self.phase, Phase::Started | Phase::Complete) {
            return;
        }
        self.progress_dirty = false;
        self.last_progress = now;
        let have = self
            .files
            .iter()
            .filter(|(_, f)| !f.owned)
            .map(|(id, _)| (*id, self.sched.have_set(*id).map_or(0, |h| h.count())))
            .collect();
        self.actions.push_back(Action::ToServer(Message::Progress {
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            have,
        }));
    }

    /// After a load changed: logs a change of the bottleneck owners, with the loads that made
    /// it, and cancels the requests withdrawn from new ones.
    fn after_loads(&mut self, before: &BTreeSet<PeerId>, withdrawn: Vec<(PeerId, ChunkId)>) {
        if self.sched.precious() != before {
            let names: Vec<String> = self
                .sched
                .precious()
                .iter()
                .map(|p| self.peer_name(*p))
                .collect();
            let loads: Vec<String> = self
                .sched
                .loads()
                .iter()
                .map(|(p, eta, rate)| {
                    format!("{}:{}ms@{:.1}MB/s", self.peer_name(*p), eta / 1000, rate)
                })
                .collect();
            info!(
                "bottlenecks event=bottlenecks_changed owners={} loads={}",
                names.join(","),
                loads.join(",")
            );
        }
        self.cancel_all(withdrawn);
    }

    fn cancel_all(&mut self, requests: Vec<(PeerId, ChunkId)>) {
        for (p, chunk) in requests {
            self.actions
                .push_back(Action::ToPeer(p, Message::Cancel { chunk }));
        }
    }

    /// Logs what each connected peer's request window is made of (debug): the window, the
    /// requests in flight there, the delivery rate and the least latency it is sized from.
    /// A window that stays full while the rate falls is a flow slower than its window (a
    /// TCP flow whose slow start ended early); one held at its margin while the peer's uplink
    /// has room is a window sized from a round trip far below the one its requests see.
    fn log_windows(&self) {
        let mut peers = String::new();
        for (p, slot) in &self.peers {
            if let (true, Some((rate, min_lat, inflight))) =
                (slot.connected, self.sched.peer_stats(*p))
            {
                let lat = if min_lat == u64::MAX {
                    "-".to_string()
                } else {
                    format!("{:.1}", min_lat as f64 / 1000.0)
                };
                peers += &format!(
                    "{}{}:{}/{}/{:.1}/{lat}",
                    if peers.is_empty() { "" } else { "," },
                    slot.info.name,
                    self.sched.window_of(*p),
                    inflight,
                    rate,
                );
            }
        }
        debug!(
            "peer_windows event=peer_windows outstanding={} lead={} peers={peers}",
            self.sched.outstanding(),
            self.sched.lead()
        );
    }

    /// Tells every connected peer this node's `Load` (once its upload rate is measured).
    fn send_load(&mut self, now: u64) {
        let Some(eta) = self.serving.own_eta_us() else {
            return;
        };
        self.last_load = now;
        let msg = Message::Load {
            own_eta_ms: (eta / 1000).min(u32::MAX as u64) as u32,
            upload_kib_s: (self.serving.rate() * 1e6 / 1024.0).min(u32::MAX as f64) as u32,
        };
        for (q, s) in &self.peers {
            if s.connected {
                self.actions.push_back(Action::ToPeer(*q, msg.clone()));
            }
        }
    }

    fn fill(&mut self, p: PeerId, now: u64) {
        if !self.peers.get(&p).is_some_and(|s| s.connected) {
            return;
        }
        while let Some(ask) = self.sched.next_request(p, now) {
            let (window, inflight) = (self.sched.window_of(p), self.sched.inflight(p));
            let msg = match ask {
                Ask::Chunk(chunk) => {
                    debug!(
                        "request event=request_sent peer={} chunk={chunk} window={window} inflight={inflight}",
                        p.0
                    );
                    Message::Request { chunk }
                }
                Ask::Fresh(file) => {
                    let below = self.sched.known_prefix(file);
                    debug!(
                        "request event=request_fresh_sent peer={} file={} below={below} window={window} inflight={inflight}",
                        p.0, file.0
                    );
                    Message::RequestFresh { file, below }
                }
            };
            self.actions.push_back(Action::ToPeer(p, msg));
        }
    }

    pub(super) fn fill_all(&mut self, now: u64) {
        if !matches!(self.phase, Phase::Started) {
            return;
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in ids {
            self.fill(p, now);
        }
    }
}
