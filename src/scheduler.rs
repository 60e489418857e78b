//! The chunk scheduler: which chunk to request from which peer, and when.
//!
//! Sans-IO: it sees peers, their holdings and the clock only through its arguments. Invariants
//! (each kept by the one method named):
//! - `req[c]` counts this node's outstanding requests for chunk c plus 1 while c is being
//!   verified; kept by `next_request`, `on_piece`, `on_verified`, `peer_disconnected`, `expire`.
//! - `avail[c]` counts connected peers other than the file's owner that hold c; kept by
//!   `peer_has`, `peer_bitfield`, `peer_disconnected`.
//! - `outstanding` = total in-flight requests + chunks being verified; kept with `req`.
//!
//! Policy: keep `window` requests in flight per peer; from a non-owner take the rarest chunk it
//! holds; from the owner take only chunks no other connected peer holds, this node's share
//! first (the owner's file is split among its downloaders by index), so the owner's uplink sends
//! each chunk about once and the downloaders relay among themselves; when every missing chunk is
//! already requested, request the oldest outstanding ones from a second peer (endgame) and
//! cancel the loser when the first copy verifies.

use crate::bits::BitSet;
use crate::ids::{ChunkId, FileId, PeerId};
use std::collections::{BTreeMap, VecDeque};

/// Requests in flight per peer.
pub const DEFAULT_WINDOW: usize = 12;
/// In-flight requests plus chunks awaiting verification, over all peers (bounds buffer memory).
pub const DEFAULT_MAX_OUTSTANDING: usize = 48;
/// A request unanswered for this long (µs) is given up and asked elsewhere.
pub const REQUEST_TIMEOUT_US: u64 = 15_000_000;

struct SFile {
    owner: PeerId,
    wanted: bool,
    have: BitSet,
    known: BitSet,
    verifying: BitSet,
    req: Vec<u8>,
    avail: Vec<u16>,
    /// This node's rank among the file's downloaders, and their number.
    rank: u32,
    downloaders: u32,
    /// A peer that served a bad copy of a chunk is not asked for it again.
    bad_from: BTreeMap<u32, PeerId>,
    /// No chunk below this index is missing (a lower bound, advanced lazily).
    first_missing: u32,
}

struct SPeer {
    has: BTreeMap<FileId, BitSet>,
    inflight: Vec<(ChunkId, u64)>,
    /// Chunks cancelled at this peer whose piece may still arrive.
    cancelled: VecDeque<ChunkId>,
}

/// What the scheduler says of an arriving piece.
#[derive(Debug, PartialEq, Eq)]
pub enum PieceOutcome {
    /// Requested, and should be verified; carries the time it was requested.
    Verify { requested_at: u64 },
    /// Expected but no longer needed (cancelled, or another copy is verified or being verified).
    Discard,
    /// Never requested from this peer: a protocol violation.
    Unrequested,
}

pub struct Scheduler {
    me: PeerId,
    files: Vec<SFile>,
    peers: BTreeMap<PeerId, SPeer>,
    pub window: usize,
    pub max_outstanding: usize,
    outstanding: usize,
}

impl Scheduler {
    pub fn new(me: PeerId) -> Self {
        Scheduler {
            me,
            files: Vec::new(),
            peers: BTreeMap::new(),
            window: DEFAULT_WINDOW,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            outstanding: 0,
        }
    }

    /// Declares file `id` (ids must be added in order). `all_peers` lists every client of the run.
    pub fn add_file(&mut self, id: FileId, owner: PeerId, chunks: u32, all_peers: &[PeerId]) {
        debug_assert_eq!(id.0 as usize, self.files.len());
        let mine = owner == self.me;
        let mut downloaders: Vec<PeerId> =
            all_peers.iter().copied().filter(|p| *p != owner).collect();
        downloaders.sort();
        let rank = downloaders.iter().position(|p| *p == self.me).unwrap_or(0) as u32;
        self.files.push(SFile {
            owner,
            wanted: !mine,
            have: if mine {
                BitSet::full(chunks)
            } else {
                BitSet::new(chunks)
            },
            known: BitSet::new(chunks),
            verifying: BitSet::new(chunks),
            req: vec![0; chunks as usize],
            avail: vec![0; chunks as usize],
            rank,
            downloaders: downloaders.len().max(1) as u32,
            bad_from: BTreeMap::new(),
            first_missing: 0,
        });
    }

    pub fn set_known(&mut self, file: FileId, first: u32, n: u32) {
        if let Some(f) = self.files.get_mut(file.0 as usize) {
            for i in first..first.saturating_add(n) {
                f.known.set(i);
            }
        }
    }

    pub fn have(&self, c: ChunkId) -> bool {
        self.files
            .get(c.file.0 as usize)
            .is_some_and(|f| f.have.get(c.index))
    }

    pub fn have_set(&self, file: FileId) -> Option<&BitSet> {
        self.files.get(file.0 as usize).map(|f| &f.have)
    }

    /// Marks a chunk held without verification through the network (resume, tests).
    pub fn mark_have(&mut self, c: ChunkId) {
        if let Some(f) = self.files.get_mut(c.file.0 as usize) {
            f.have.set(c.index);
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    pub fn inflight(&self, p: PeerId) -> usize {
        self.peers.get(&p).map_or(0, |s| s.inflight.len())
    }

    pub fn peer_connected(&mut self, p: PeerId) {
        let mut has = BTreeMap::new();
        for (i, f) in self.files.iter().enumerate() {
            if f.owner == p {
                has.insert(FileId(i as u32), BitSet::full(f.have.len()));
            }
        }
        self.peers.insert(
            p,
            SPeer {
                has,
                inflight: Vec::new(),
                cancelled: VecDeque::new(),
            },
        );
    }

    /// Forgets a peer; its outstanding requests become requestable again.
    pub fn peer_disconnected(&mut self, p: PeerId) {
        let Some(s) = self.peers.remove(&p) else {
            return;
        };
        for (c, _) in s.inflight {
            self.release(c);
        }
        for (file, bits) in s.has {
            let f = &mut self.files[file.0 as usize];
            if f.owner != p {
                for i in bits.iter_ones() {
                    f.avail[i as usize] = f.avail[i as usize].saturating_sub(1);
                }
            }
        }
    }

    fn release(&mut self, c: ChunkId) {
        let f = &mut self.files[c.file.0 as usize];
        let r = &mut f.req[c.index as usize];
        *r = r.saturating_sub(1);
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// Records that peer `p` holds chunk `c`. Returns false if `c` is out of range.
    pub fn peer_has(&mut self, p: PeerId, c: ChunkId) -> bool {
        let Some(f) = self.files.get_mut(c.file.0 as usize) else {
            return false;
        };
        if c.index >= f.have.len() {
            return false;
        }
        let Some(s) = self.peers.get_mut(&p) else {
            return true;
        };
        let bits = s
            .has
            .entry(c.file)
            .or_insert_with(|| BitSet::new(f.have.len()));
        if bits.set(c.index) && f.owner != p {
            f.avail[c.index as usize] += 1;
        }
        true
    }

    /// Records a peer's whole holding of one file. Returns false if the bitfield does not fit.
    pub fn peer_bitfield(&mut self, p: PeerId, file: FileId, bytes: &[u8]) -> bool {
        let Some(f) = self.files.get(file.0 as usize) else {
            return false;
        };
        let Some(bits) = BitSet::from_bytes(f.have.len(), bytes) else {
            return false;
        };
        for i in bits.iter_ones() {
            self.peer_has(p, ChunkId { file, index: i });
        }
        true
    }

    /// Picks the next chunk to request from `p` and records the request, or `None` if the
    /// window is full, the global cap is reached, or `p` holds nothing useful.
    pub fn next_request(&mut self, p: PeerId, now: u64) -> Option<ChunkId> {
        let s = self.peers.get(&p)?;
        if s.inflight.len() >= self.window || self.outstanding >= self.max_outstanding {
            return None;
        }
        let c = self.pick_fresh(p).or_else(|| self.pick_endgame(p))?;
        self.files[c.file.0 as usize].req[c.index as usize] += 1;
        self.outstanding += 1;
        self.peers.get_mut(&p)?.inflight.push((c, now));
        Some(c)
    }

    /// Best chunk nobody has been asked for. Lower score is better; a score of 0 ends the scan.
    /// Within a score, the lowest index wins: the verified prefix of each file then grows
    /// steadily, so its whole-file MD5 can be computed as the data arrives instead of at the end.
    /// Files are scanned starting at one that depends on the peer, so that different peers
    /// serve different files and every file advances.
    fn pick_fresh(&mut self, p: PeerId) -> Option<ChunkId> {
        let s = self.peers.get(&p)?;
        let nf = self.files.len();
        let mut best: Option<(u32, ChunkId)> = None;
        for k in 0..nf {
            let fi = (k + p.0 as usize) % nf;
            let f = &mut self.files[fi];
            if !f.wanted || f.have.is_full() {
                continue;
            }
            let file = FileId(fi as u32);
            let Some(bits) = s.has.get(&file) else {
                continue;
            };
            let n = f.have.len();
            while f.first_missing < n && f.have.get(f.first_missing) {
                f.first_missing += 1;
            }
            let from_owner = f.owner == p;
            for i in f.first_missing..n {
                let iu = i as usize;
                if f.req[iu] > 0 || f.have.get(i) || !f.known.get(i) || !bits.get(i) {
                    continue;
                }
                if f.bad_from.get(&i) == Some(&p) {
                    continue;
                }
                let score = if from_owner {
                    if f.avail[iu] > 0 && !f.bad_from.contains_key(&i) {
                        continue; // someone else holds it: spare the owner's uplink
                    }
                    if i % f.downloaders == f.rank { 0 } else { 1 }
                } else {
                    // avail >= 1 here since p holds it; 1 means p is its only relay.
                    f.avail[iu] as u32 - 1
                };
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, ChunkId { file, index: i }));
                    if score == 0 {
                        return best.map(|(_, c)| c);
                    }
                }
            }
        }
        best.map(|(_, c)| c)
    }

    /// Endgame: when no missing chunk is unrequested, the oldest single request `p` could also
    /// serve.
    fn pick_endgame(&self, p: PeerId) -> Option<ChunkId> {
        for f in &self.files {
            if !f.wanted {
                continue;
            }
            for i in f.first_missing..f.have.len() {
                if !f.have.get(i) && f.req[i as usize] == 0 {
                    return None; // not endgame yet: some chunk is simply unavailable or unknown
                }
            }
        }
        let s = self.peers.get(&p)?;
        let mut best: Option<(u64, ChunkId)> = None;
        for (q, qs) in &self.peers {
            if *q == p {
                continue;
            }
            for &(c, at) in &qs.inflight {
                let f = &self.files[c.file.0 as usize];
                if f.req[c.index as usize] != 1 || f.verifying.get(c.index) {
                    continue;
                }
                if !s.has.get(&c.file).is_some_and(|b| b.get(c.index)) {
                    continue;
                }
                if s.inflight.iter().any(|(x, _)| *x == c) {
                    continue;
                }
                if best.is_none_or(|(t, _)| at < t) {
                    best = Some((at, c));
                }
            }
        }
        best.map(|(_, c)| c)
    }

    /// A piece for `c` arrived from `p`.
    pub fn on_piece(&mut self, p: PeerId, c: ChunkId) -> PieceOutcome {
        let Some(s) = self.peers.get_mut(&p) else {
            return PieceOutcome::Unrequested;
        };
        if let Some(k) = s.inflight.iter().position(|(x, _)| *x == c) {
            let (_, at) = s.inflight.swap_remove(k);
            let f = &mut self.files[c.file.0 as usize];
            if f.have.get(c.index) || f.verifying.get(c.index) {
                self.release(c);
                return PieceOutcome::Discard;
            }
            // The request's slot in `req` and `outstanding` now stands for the verification.
            f.verifying.set(c.index);
            return PieceOutcome::Verify { requested_at: at };
        }
        if let Some(k) = s.cancelled.iter().position(|x| *x == c) {
            s.cancelled.remove(k);
            return PieceOutcome::Discard;
        }
        PieceOutcome::Unrequested
    }

    /// The verification of `c` (received from `from`) finished. On success returns the other
    /// peers with a request for `c` outstanding, which the caller cancels.
    pub fn on_verified(&mut self, c: ChunkId, from: PeerId, ok: bool) -> Vec<PeerId> {
        let Some(f) = self.files.get_mut(c.file.0 as usize) else {
            return Vec::new();
        };
        f.verifying.clear(c.index);
        self.release(c);
        if !ok {
            self.files[c.file.0 as usize].bad_from.insert(c.index, from);
            return Vec::new();
        }
        self.files[c.file.0 as usize].have.set(c.index);
        let mut cancel = Vec::new();
        let mut released = 0;
        for (q, s) in self.peers.iter_mut() {
            if let Some(k) = s.inflight.iter().position(|(x, _)| *x == c) {
                s.inflight.swap_remove(k);
                s.cancelled.push_back(c);
                if s.cancelled.len() > 256 {
                    s.cancelled.pop_front();
                }
                cancel.push(*q);
                released += 1;
            }
        }
        for _ in 0..released {
            self.release(c);
        }
        cancel
    }

    /// Gives up requests older than the timeout; returns them so the caller can cancel them.
    pub fn expire(&mut self, now: u64) -> Vec<(PeerId, ChunkId)> {
        let mut out = Vec::new();
        for (p, s) in self.peers.iter_mut() {
            let mut mine = Vec::new();
            s.inflight.retain(|&(c, at)| {
                let old = now.saturating_sub(at) > REQUEST_TIMEOUT_US;
                if old {
                    mine.push(c);
                }
                !old
            });
            for c in mine {
                // The piece may still come: then it is discarded, not a violation.
                s.cancelled.push_back(c);
                if s.cancelled.len() > 256 {
                    s.cancelled.pop_front();
                }
                out.push((*p, c));
            }
        }
        for &(p, c) in &out {
            self.release(c);
            // Ask someone else next time; and the owner may be asked even while this peer
            // still claims to hold the chunk (a peer that claims chunks and never sends them
            // must not stall the run).
            if let Some(f) = self.files.get_mut(c.file.0 as usize) {
                f.bad_from.insert(c.index, p);
            }
        }
        out
    }

    /// Whether every wanted file is held in full.
    pub fn all_held(&self) -> bool {
        self.files.iter().all(|f| f.have.is_full())
    }

    /// Whether peer `p` is known to hold every chunk of every file.
    pub fn peer_complete(&self, p: PeerId) -> bool {
        let Some(s) = self.peers.get(&p) else {
            return false;
        };
        self.files.iter().enumerate().all(|(i, f)| {
            f.have.is_empty() || s.has.get(&FileId(i as u32)).is_some_and(BitSet::is_full)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(file: u32, index: u32) -> ChunkId {
        ChunkId {
            file: FileId(file),
            index,
        }
    }

    /// Me = 2; file 0 owned by 1 (8 chunks), file 1 owned by me; peers 1 and 3.
    fn setup() -> Scheduler {
        let all = [PeerId(1), PeerId(2), PeerId(3)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 8, &all);
        s.add_file(FileId(1), PeerId(2), 4, &all);
        s.set_known(FileId(0), 0, 8);
        s.set_known(FileId(1), 0, 4);
        s
    }

    #[test]
    fn from_owner_takes_own_share_first() {
        let mut s = setup();
        s.peer_connected(PeerId(1));
        // Downloaders of file 0 are [2, 3]; I am rank 0: even indexes are my share.
        let picks: Vec<u32> = (0..4)
            .map(|_| s.next_request(PeerId(1), 0).unwrap().index)
            .collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 2, 4, 6], "got {picks:?}");
        // Then the rest, since no relay holds them.
        assert_eq!(s.next_request(PeerId(1), 0).map(|c| c.index % 2), Some(1));
    }

    #[test]
    fn spares_owner_when_a_relay_holds_the_chunk() {
        let mut s = setup();
        s.peer_connected(PeerId(1));
        s.peer_connected(PeerId(3));
        for i in 0..8 {
            s.peer_has(PeerId(3), c(0, i));
        }
        assert_eq!(
            s.next_request(PeerId(1), 0),
            None,
            "owner must not be asked for relayed chunks"
        );
        assert!(s.next_request(PeerId(3), 0).is_some());
    }

    #[test]
    fn rarest_first_among_relays() {
        let all = [PeerId(1), PeerId(2), PeerId(3), PeerId(4)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 4, &all);
        s.set_known(FileId(0), 0, 4);
        s.peer_connected(PeerId(3));
        s.peer_connected(PeerId(4));
        for i in 0..4 {
            s.peer_has(PeerId(3), c(0, i));
        }
        s.peer_has(PeerId(4), c(0, 0));
        s.peer_has(PeerId(4), c(0, 1));
        s.peer_has(PeerId(4), c(0, 2));
        // Chunk 3 is held by peer 3 alone: it goes first.
        assert_eq!(s.next_request(PeerId(3), 0), Some(c(0, 3)));
    }

    #[test]
    fn unknown_digest_never_requested() {
        let all = [PeerId(1), PeerId(2)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 4, &all);
        s.peer_connected(PeerId(1));
        assert_eq!(s.next_request(PeerId(1), 0), None);
        s.set_known(FileId(0), 2, 1);
        assert_eq!(s.next_request(PeerId(1), 0), Some(c(0, 2)));
        assert_eq!(s.next_request(PeerId(1), 0), None);
    }

    #[test]
    fn window_and_global_cap() {
        let mut s = setup();
        s.window = 3;
        s.peer_connected(PeerId(1));
        assert_eq!(
            (0..10).filter_map(|_| s.next_request(PeerId(1), 0)).count(),
            3
        );
        s.window = 10;
        s.max_outstanding = 5;
        assert_eq!(
            (0..10).filter_map(|_| s.next_request(PeerId(1), 0)).count(),
            2
        );
        assert_eq!(s.outstanding(), 5);
    }

    #[test]
    fn piece_lifecycle_and_endgame_cancel() {
        let all = [PeerId(1), PeerId(2), PeerId(3)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 1, &all);
        s.set_known(FileId(0), 0, 1);
        s.peer_connected(PeerId(1));
        s.peer_connected(PeerId(3));
        assert_eq!(s.next_request(PeerId(1), 5), Some(c(0, 0)));
        s.peer_has(PeerId(3), c(0, 0));
        // Every missing chunk is requested: endgame duplicates it at peer 3.
        assert_eq!(s.next_request(PeerId(3), 6), Some(c(0, 0)));
        assert_eq!(
            s.next_request(PeerId(3), 6),
            None,
            "at most one duplicate per peer"
        );
        assert_eq!(
            s.on_piece(PeerId(3), c(0, 0)),
            PieceOutcome::Verify { requested_at: 6 }
        );
        assert_eq!(s.on_verified(c(0, 0), PeerId(3), true), vec![PeerId(1)]);
        assert_eq!(s.outstanding(), 0);
        // The cancelled copy may still arrive: it is discarded, not a violation.
        assert_eq!(s.on_piece(PeerId(1), c(0, 0)), PieceOutcome::Discard);
        assert_eq!(s.on_piece(PeerId(1), c(0, 0)), PieceOutcome::Unrequested);
        assert!(s.all_held());
    }

    #[test]
    fn failed_chunk_goes_elsewhere() {
        let all = [PeerId(1), PeerId(2), PeerId(3)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 1, &all);
        s.set_known(FileId(0), 0, 1);
        s.peer_connected(PeerId(3));
        s.peer_has(PeerId(3), c(0, 0));
        assert_eq!(s.next_request(PeerId(3), 0), Some(c(0, 0)));
        assert!(matches!(
            s.on_piece(PeerId(3), c(0, 0)),
            PieceOutcome::Verify { .. }
        ));
        assert!(s.on_verified(c(0, 0), PeerId(3), false).is_empty());
        assert_eq!(
            s.next_request(PeerId(3), 0),
            None,
            "not from the peer that sent it bad"
        );
        s.peer_connected(PeerId(1));
        assert_eq!(s.next_request(PeerId(1), 0), Some(c(0, 0)));
    }

    #[test]
    fn disconnect_and_timeout_release_requests() {
        let mut s = setup();
        s.peer_connected(PeerId(1));
        s.next_request(PeerId(1), 0).unwrap();
        s.next_request(PeerId(1), 0).unwrap();
        s.peer_disconnected(PeerId(1));
        assert_eq!(s.outstanding(), 0);
        s.peer_connected(PeerId(1));
        let x = s.next_request(PeerId(1), 0).unwrap();
        assert!(s.expire(REQUEST_TIMEOUT_US).is_empty());
        assert_eq!(s.expire(REQUEST_TIMEOUT_US + 1), vec![(PeerId(1), x)]);
        assert_eq!(s.outstanding(), 0);
        assert_eq!(
            s.on_piece(PeerId(1), x),
            PieceOutcome::Discard,
            "late piece after timeout"
        );
    }

    #[test]
    fn silent_relay_does_not_stall_the_run() {
        let all = [PeerId(1), PeerId(2), PeerId(3)];
        let mut s = Scheduler::new(PeerId(2));
        s.add_file(FileId(0), PeerId(1), 1, &all);
        s.set_known(FileId(0), 0, 1);
        s.peer_connected(PeerId(1));
        s.peer_connected(PeerId(3));
        s.peer_has(PeerId(3), c(0, 0));
        assert_eq!(
            s.next_request(PeerId(1), 0),
            None,
            "owner spared while a relay holds it"
        );
        assert_eq!(s.next_request(PeerId(3), 0), Some(c(0, 0)));
        assert_eq!(s.expire(REQUEST_TIMEOUT_US + 1), vec![(PeerId(3), c(0, 0))]);
        assert_eq!(
            s.next_request(PeerId(3), 0),
            None,
            "not the silent peer again"
        );
        assert_eq!(s.next_request(PeerId(1), 0), Some(c(0, 0)), "the owner now");
    }

    #[test]
    fn unexpected_piece_is_a_violation() {
        let mut s = setup();
        s.peer_connected(PeerId(1));
        assert_eq!(s.on_piece(PeerId(1), c(0, 3)), PieceOutcome::Unrequested);
        assert!(!s.peer_has(PeerId(1), c(0, 8)), "index out of range");
        assert!(
            !s.peer_bitfield(PeerId(1), FileId(0), &[0xff, 0xff]),
            "bitfield too long"
        );
    }
}
