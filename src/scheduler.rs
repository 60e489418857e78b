//! The chunk scheduler: what this node asks of which peer, and when. Sans-IO: it sees peers,
//! their holdings, their load and the clock only through its arguments.
//!
//! Policy (why: Readme section 7):
//! - From a file's owner, ask for *fresh* chunks (`Ask::Fresh`: the owner picks one it has never
//!   sent), so each chunk leaves the owner once, to whichever peer drains its connection
//!   fastest; then the peers relay. A chunk is asked of its owner by name only when it left the
//!   owner but cannot be had elsewhere (a bad copy, a timeout, held only by a bottleneck peer,
//!   or lost with its holder).
//! - From a relay, the rarest chunk it holds (fewest usable holders), lowest index first.
//! - Bottleneck owners ("precious", see `bottleneck`) send nothing but their own file: no peer
//!   asks them to relay, and they take no fresh chunks of other files.
//! - Per peer, enough requests in flight to cover its measured delivery rate times its round
//!   trip, plus a margin; a generous fixed window until it is measured (no slow start).
//! - Endgame: when every missing chunk is asked for, a request is duplicated at a peer that
//!   would deliver it sooner than the one it waits on; the loser gets a cancel.
//!
//! Invariants (each kept by the methods named):
//! - `req[c]` = this node's outstanding requests for chunk c by name, plus 1 while c is being
//!   verified; `open` = known, not held, `req == 0`; `pending` = chunks with `req > 0`: `take`,
//!   `release`, `on_verified`.
//! - `avail[c]` = connected peers other than the file's owner that hold c: `peer_has`,
//!   `peer_disconnected`.
//! - `outstanding` = requests in flight (by name or fresh) + chunks being verified.

use crate::bits::BitSet;
use crate::bottleneck::{Load, bottlenecks};
use crate::ids::{ChunkId, FileId, PeerId};
use crate::pacing::Pacing;
pub use crate::pacing::{INITIAL_WINDOW, MAX_WINDOW};
pub use crate::serving::Ask;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// In-flight requests plus chunks awaiting verification, over all peers, in bytes: a bound on
/// the buffers that arriving pieces can take (192 chunks of 256 KiB), which keeps a client under
/// the 64 MiB of anonymous memory it may use. It must allow the sum of
/// the windows: a node whose uplink is slow and shared by many peers sees its requests wait
/// behind its own outgoing pieces, and needs that many in flight to keep its downlink busy.
pub const MAX_OUTSTANDING_BYTES: u64 = 48 << 20;
/// A request unanswered for this long (µs) is given up and asked elsewhere.
pub const REQUEST_TIMEOUT_US: u64 = 15_000_000;
/// After `NoFresh`, how often an owner is asked again while some missing chunk has no holder.
pub const PROBE_EVERY_US: u64 = 200_000;
/// A chunk nobody announced this long after its owner ran out of fresh chunks is asked of the
/// owner by name (its only copy was lost, or a fresh piece was dropped).
pub const LOST_AFTER_US: u64 = 2_000_000;
/// Pieces a request waits behind on its connection: the one being written, and about one in
/// the kernel (conn.rs keeps at most 256 KiB unsent).
const UNSENT_PIECES: f64 = 2.0;
/// The most `own_delay_us` counts, whatever the measured upload rate (a node that has sent
/// little has a low average rate but an idle uplink).
const MAX_OWN_DELAY_US: f64 = 200_000.0;
/// Candidates examined per file and request (see `pick_chunk`).
const SCAN_LIMIT: usize = 128;
/// Chunks from a file's first missing one that are asked for before any other (see
/// `pick_prefix`).
const PREFIX_WINDOW: u32 = 16;
/// An owner still sending its file is asked for prefix chunks only if its own-file time is at
/// most this many times the least of the owners of wanted files (see `owner_uplink_scarce`).
const PREFIX_OWNER_SLACK: f64 = 1.5;

/// A node more than this many chunks ahead of the connected peer with the most left to
/// download keeps no margin in its request windows (`window`), so its flows give way at the
/// senders' uplinks to the downloader that is behind, whose finish sets the total.
const YIELD_LEAD: i64 = 16;

struct SFile {
    owner: PeerId,
    wanted: bool,
    have: BitSet,
    known: BitSet,
    verifying: BitSet,
    open: BitSet,
    req: Vec<u8>,
    pending: u32,
    avail: Vec<u16>,
    /// A peer that served a bad copy of a chunk (or timed out on it) is not asked for it again.
    bad_from: BTreeMap<u32, PeerId>,
    /// The first chunk not held: where the file's whole-file MD5 stream waits.
    head: u32,
}

impl SFile {
    fn len(&self) -> u32 {
        self.have.len()
    }

    /// Marks chunk `i` held; true if it was not held (and is of a file I download).
    fn set_have(&mut self, i: u32) -> bool {
        let new = self.have.set(i) && self.wanted;
        while self.head < self.len() && self.have.get(self.head) {
            self.head += 1;
        }
        new
    }
}

/// Fresh chunks from an owner, as this node knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fresh {
    Open,
    /// The owner said `NoFresh` to a request bounded below this chunk (the digests this node
    /// knew then): every chunk below it has left the owner, but the owner may well have fresh
    /// chunks above it. Ask again once more digests are known. It is not drained: it must not
    /// be asked to relay its own file, nor its chunks taken for lost.
    Below(u32),
    /// The owner said `NoFresh` (first at `since`); ask again at `probe_at` if some missing
    /// chunk still has no holder.
    Drained {
        since: u64,
        probe_at: u64,
    },
    /// One fresh request is out to see whether a chunk became fresh again.
    Probing {
        since: u64,
    },
}

struct Req {
    ask: Ask,
    at: u64,
    /// For a fresh request: its bound, the digests known when it was sent.
    below: u32,
}

struct SPeer {
    has: BTreeMap<FileId, BitSet>,
    /// In the order sent: the peer serves them in this order.
    inflight: Vec<Req>,
    /// Chunks cancelled at this peer whose piece may still arrive.
    cancelled: VecDeque<ChunkId>,
    /// Fresh requests given up on (timeout) whose piece may still arrive.
    late_fresh: BTreeMap<FileId, u32>,
    fresh: BTreeMap<FileId, Fresh>,
    pacing: Pacing,
    /// Chunks of files it does not own that it has not announced (see `lead`).
    left: i64,
    /// Its last `Load`: own-file time (µs) and upload rate (bytes/µs).
    load: Option<(u64, f64)>,
    /// The scheduler's `epoch` when `pick_chunk` last found nothing here, for its own files and
    /// for relaying (`NEVER`: not known): the scan is skipped until something changes.
    idle: [u64; 2],
}

const NEVER: u64 = u64::MAX;

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
    chunk: f64,
    files: Vec<SFile>,
    peers: BTreeMap<PeerId, SPeer>,
    pub max_outstanding: usize,
    outstanding: usize,
    my_load: Option<(u64, f64)>,
    /// Bottleneck owners, perhaps this node.
    precious: BTreeSet<PeerId>,
    /// Bumped by every change that can give any peer a new candidate chunk (see `idle`).
    epoch: u64,
    /// Chunks of the files I download that I do not hold (see `lead`).
    my_left: i64,
}

impl Scheduler {
    pub fn new(me: PeerId, chunk_size: u32) -> Self {
        Scheduler {
            me,
            chunk: chunk_size.max(1) as f64,
            files: Vec::new(),
            peers: BTreeMap::new(),
            max_outstanding: (MAX_OUTSTANDING_BYTES / chunk_size.max(1) as u64).clamp(8, 1024)
                as usize,
            outstanding: 0,
            my_load: None,
            precious: BTreeSet::new(),
            epoch: 0,
            my_left: 0,
        }
    }

    /// Declares file `id` (ids must be added in order).
    pub fn add_file(&mut self, id: FileId, owner: PeerId, chunks: u32) {
        debug_assert_eq!(id.0 as usize, self.files.len());
        let mine = owner == self.me;
        if !mine {
            self.my_left += i64::from(chunks);
        }
        for (p, s) in self.peers.iter_mut() {
            if *p != owner {
                s.left += i64::from(chunks);
            }
        }
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
            open: BitSet::new(chunks),
            req: vec![0; chunks as usize],
            pending: 0,
            avail: vec![0; chunks as usize],
            bad_from: BTreeMap::new(),
            head: if mine { chunks } else { 0 },
        });
    }

    pub fn set_known(&mut self, file: FileId, first: u32, n: u32) {
        self.epoch += 1;
        if let Some(f) = self.files.get_mut(file.0 as usize) {
            for i in first..first.saturating_add(n).min(f.len()) {
                f.known.set(i);
                if !f.have.get(i) && f.req[i as usize] == 0 {
                    f.open.set(i);
                }
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

    /// How many of a file's chunk digests are known (they arrive in order): a fresh request
    /// asks for a chunk below this, so that its digest is known when it arrives.
    pub fn known_prefix(&self, file: FileId) -> u32 {
        self.files
            .get(file.0 as usize)
            .map_or(0, |f| f.known.count())
    }

    /// Connected peers other than the owner known to hold `c`.
    pub fn avail(&self, c: ChunkId) -> u16 {
        self.files
            .get(c.file.0 as usize)
            .and_then(|f| f.avail.get(c.index as usize).copied())
            .unwrap_or(0)
    }

    /// Marks a chunk held without verification through the network (resume, tests).
    pub fn mark_have(&mut self, c: ChunkId) {
        if let Some(f) = self.files.get_mut(c.file.0 as usize) {
            if f.set_have(c.index) {
                self.my_left -= 1;
            }
            f.open.clear(c.index);
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    pub fn inflight(&self, p: PeerId) -> usize {
        self.peers.get(&p).map_or(0, |s| s.inflight.len())
    }

    /// Whether this node is a bottleneck owner (it then takes no fresh chunks of other files).
    pub fn am_precious(&self) -> bool {
        self.precious.contains(&self.me)
    }

    /// The bottleneck owners, perhaps this node.
    pub fn precious(&self) -> &BTreeSet<PeerId> {
        &self.precious
    }

    pub fn is_precious(&self, p: PeerId) -> bool {
        self.precious.contains(&p)
    }

    pub fn peer_connected(&mut self, p: PeerId) {
        let mut has = BTreeMap::new();
        let mut left = 0;
        for (i, f) in self.files.iter().enumerate() {
            if f.owner == p {
                has.insert(FileId(i as u32), BitSet::full(f.len()));
            } else {
                left += i64::from(f.len());
            }
        }
        self.peers.insert(
            p,
            SPeer {
                has,
                inflight: Vec::new(),
                cancelled: VecDeque::new(),
                late_fresh: BTreeMap::new(),
                fresh: BTreeMap::new(),
                pacing: Pacing::default(),
                left,
                load: None,
                idle: [NEVER; 2],
            },
        );
    }

    /// Forgets a peer; its outstanding requests become requestable again.
    pub fn peer_disconnected(&mut self, p: PeerId) {
        let Some(s) = self.peers.remove(&p) else {
            return;
        };
        self.epoch += 1;
        for r in s.inflight {
            match r.ask {
                Ask::Chunk(c) => self.release(c),
                Ask::Fresh(_) => self.outstanding = self.outstanding.saturating_sub(1),
            }
        }
        for (file, bits) in s.has {
            let f = &mut self.files[file.0 as usize];
            if f.owner != p {
                for i in bits.iter_ones() {
                    f.avail[i as usize] = f.avail[i as usize].saturating_sub(1);
                }
            }
        }
        // (Its requests went with it: nothing else needs withdrawing.)
        self.update_precious();
    }

    /// One more request (or verification) for `c`.
    fn take(&mut self, c: ChunkId) {
        let f = &mut self.files[c.file.0 as usize];
        let r = &mut f.req[c.index as usize];
        if *r == 0 {
            f.pending += 1;
            f.open.clear(c.index);
        }
        *r = r.saturating_add(1);
    }

    fn release(&mut self, c: ChunkId) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let f = &mut self.files[c.file.0 as usize];
        let r = &mut f.req[c.index as usize];
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            f.pending -= 1;
            if !f.have.get(c.index) && f.known.get(c.index) {
                f.open.set(c.index);
                self.epoch += 1;
            }
        }
    }

    /// Records that peer `p` holds chunk `c`. Returns false if `c` is out of range.
    pub fn peer_has(&mut self, p: PeerId, c: ChunkId) -> bool {
        let Some(f) = self.files.get_mut(c.file.0 as usize) else {
            return false;
        };
        if c.index >= f.len() {
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
            s.left -= 1;
        }
        // New for `p`, and perhaps for the owner (a chunk it may now relay or must resend).
        s.idle = [NEVER; 2];
        let owner = f.owner;
        if let Some(o) = self.peers.get_mut(&owner) {
            o.idle = [NEVER; 2];
        }
        true
    }

    /// Records a peer's whole holding of one file. Returns false if the bitfield does not fit.
    pub fn peer_bitfield(&mut self, p: PeerId, file: FileId, bytes: &[u8]) -> bool {
        let Some(f) = self.files.get(file.0 as usize) else {
            return false;
        };
        let Some(bits) = BitSet::from_bytes(f.len(), bytes) else {
            return false;
        };
        for i in bits.iter_ones() {
            self.peer_has(p, ChunkId { file, index: i });
        }
        true
    }

    /// Requests to keep in flight at a peer: its bandwidth-delay product plus the margin.
    fn window(&self, s: &SPeer) -> usize {
        s.pacing
            .window(self.chunk, self.own_delay_us(), self.margin())
    }

    /// Whether windows get their margin: not while this node yields (`YIELD_LEAD`).
    fn margin(&self) -> bool {
        self.lead() <= YIELD_LEAD
    }

    /// How many chunks this node has left to download fewer than the connected peer with the
    /// most left (negative if this node is that far behind). A peer's count is what it
    /// announced (bitfield and haves) of every file it does not own.
    pub fn lead(&self) -> i64 {
        let most = self.peers.values().map(|s| s.left).max().unwrap_or(0);
        most - self.my_left
    }

    /// How long (µs) a request of this node waits behind its own pieces before it leaves: about
    /// `UNSENT_PIECES` per connection, at its share of this node's upload rate. On a slow,
    /// shared uplink that is most of the round trip (net-slow-up: 3 x 2 pieces at 31 MB/s,
    /// 50 ms, where the least latency, seen while the uplink was idle, is 1 ms): windows from
    /// the least latency alone kept 7 to 9 requests at each relay, and the slow host
    /// downloaded at half its downlink.
    fn own_delay_us(&self) -> f64 {
        match self.my_load {
            Some((_, rate)) if rate > 0.0 => {
                let ahead = UNSENT_PIECES * self.chunk * self.peers.len() as f64;
                (ahead / rate).min(MAX_OWN_DELAY_US)
            }
            _ => 0.0,
        }
    }

    /// The current window for `p` (for tests and logs).
    pub fn window_of(&self, p: PeerId) -> usize {
        self.peers.get(&p).map_or(0, |s| self.window(s))
    }

    /// What `p`'s window is made of: its delivery rate (bytes/µs), least latency (µs), and the
    /// requests in flight there.
    pub fn peer_stats(&self, p: PeerId) -> Option<(f64, u64, usize)> {
        self.peers
            .get(&p)
            .map(|s| (s.pacing.rate, s.pacing.min_lat, s.inflight.len()))
    }

    /// Picks what to ask of `p` next and records it, or `None` if the window is full, the
    /// global cap is reached, or `p` has nothing useful.
    pub fn next_request(&mut self, p: PeerId, now: u64) -> Option<Ask> {
        let s = self.peers.get(&p)?;
        let full = s.inflight.len() >= self.window(s);
        if full || self.outstanding >= self.max_outstanding {
            // A bare window (yielding) runs dry by design: that is no sign that the round trip
            // grew, so it does not grow the margin it will get back.
            let margin = self.margin();
            self.peers.get_mut(&p)?.pacing.full = full && margin;
            return None;
        }
        let ask = self.pick(p, now);
        self.peers.get_mut(&p)?.pacing.full = false;
        let ask = ask?;
        let below = match ask {
            Ask::Chunk(c) => {
                self.take(c);
                0
            }
            Ask::Fresh(file) => self.known_prefix(file),
        };
        self.outstanding += 1;
        self.peers.get_mut(&p)?.inflight.push(Req {
            ask,
            at: now,
            below,
        });
        Some(ask)
    }

    /// A piece for `c` arrived from `p` at `now`.
    pub fn on_piece(&mut self, p: PeerId, c: ChunkId, now: u64) -> PieceOutcome {
        let Some(f) = self.files.get(c.file.0 as usize) else {
            return PieceOutcome::Unrequested;
        };
        let from_owner = f.owner == p;
        let Some(s) = self.peers.get_mut(&p) else {
            return PieceOutcome::Unrequested;
        };
        // A piece is matched to a request by name, then to a cancelled one (an owner's answer
        // to a cancelled request must not be taken for the answer to a fresh one), then to a
        // fresh request, then to a fresh request given up on.
        let named = s.inflight.iter().position(|r| r.ask == Ask::Chunk(c));
        if named.is_none()
            && let Some(k) = s.cancelled.iter().position(|x| *x == c)
        {
            s.cancelled.remove(k);
            return PieceOutcome::Discard;
        }
        let fresh = || {
            from_owner
                .then(|| s.inflight.iter().position(|r| r.ask == Ask::Fresh(c.file)))
                .flatten()
        };
        let Some(k) = named.or_else(fresh) else {
            let late = s.late_fresh.entry(c.file).or_default();
            if from_owner && *late > 0 {
                // A fresh piece after its request timed out: still welcome if still missing.
                *late -= 1;
                self.outstanding += 1;
                return self.book(c, Ask::Fresh(c.file), now);
            }
            return PieceOutcome::Unrequested;
        };
        let r = s.inflight.remove(k);
        s.pacing.on_arrival(self.chunk, r.at, now, s.inflight.len());
        if let Ask::Fresh(file) = r.ask
            && matches!(s.fresh.get(&file), Some(Fresh::Probing { .. }))
        {
            s.fresh.insert(file, Fresh::Open); // the owner had a chunk again
        }
        self.book(c, r.ask, r.at)
    }

    /// The piece answers `ask` (whose slot is still counted in `outstanding`).
    fn book(&mut self, c: ChunkId, ask: Ask, at: u64) -> PieceOutcome {
        let f = &self.files[c.file.0 as usize];
        if f.have.get(c.index) || f.verifying.get(c.index) {
            match ask {
                Ask::Chunk(c) => self.release(c),
                Ask::Fresh(_) => self.outstanding = self.outstanding.saturating_sub(1),
            }
            return PieceOutcome::Discard;
        }
        if let Ask::Fresh(_) = ask {
            self.take(c);
        }
        // The request's slot in `req` and `outstanding` now stands for the verification.
        self.files[c.file.0 as usize].verifying.set(c.index);
        PieceOutcome::Verify { requested_at: at }
    }

    /// The verification of `c` (received from `from`) finished. On success returns the other
    /// peers with a request for `c` outstanding, which the caller cancels.
    pub fn on_verified(&mut self, c: ChunkId, from: PeerId, ok: bool) -> Vec<PeerId> {
        let Some(f) = self.files.get_mut(c.file.0 as usize) else {
            return Vec::new();
        };
        if !f.verifying.clear(c.index) {
            return Vec::new();
        }
        if ok && f.set_have(c.index) {
            self.my_left -= 1;
        }
        self.release(c);
        if !ok {
            self.files[c.file.0 as usize].bad_from.insert(c.index, from);
            self.epoch += 1;
            return Vec::new();
        }
        let mut cancel = Vec::new();
        for (q, s) in self.peers.iter_mut() {
            if let Some(k) = s.inflight.iter().position(|r| r.ask == Ask::Chunk(c)) {
                s.inflight.remove(k);
                push_cancelled(&mut s.cancelled, c);
                cancel.push(*q);
            }
        }
        for _ in &cancel {
            self.release(c);
        }
        cancel
    }

    /// The owner `p` has no fresh chunk of `file` for one of our fresh requests. Returns false
    /// if no fresh request for it was outstanding (or given up on) there.
    ///
    /// The owner serves fresh requests in the order sent, so this answers the oldest one, and
    /// means "no fresh chunk below its bound". Only a bound past the file's last chunk makes the
    /// owner drained: with a lower one (the digests arrive over time, while the owner hashes its
    /// file), it may well have fresh chunks above.
    pub fn no_fresh(&mut self, p: PeerId, file: FileId, now: u64) -> bool {
        let Some(len) = self.files.get(file.0 as usize).map(SFile::len) else {
            return false;
        };
        let Some(s) = self.peers.get_mut(&p) else {
            return false;
        };
        let below = match s.inflight.iter().position(|r| r.ask == Ask::Fresh(file)) {
            Some(k) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                s.inflight.remove(k).below
            }
            // The answer to a fresh request given up on (timeout): its bound is forgotten.
            None => match s.late_fresh.get_mut(&file) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    len
                }
                _ => return false,
            },
        };
        s.idle = [NEVER; 2];
        let since = match s.fresh.get(&file).copied() {
            Some(Fresh::Drained { since, .. } | Fresh::Probing { since }) => since,
            Some(Fresh::Open) | None if below < len => {
                s.fresh.insert(file, Fresh::Below(below));
                return true;
            }
            Some(Fresh::Below(b)) if below < len => {
                s.fresh.insert(file, Fresh::Below(b.max(below)));
                return true;
            }
            _ => now,
        };
        s.fresh.insert(
            file,
            Fresh::Drained {
                since,
                probe_at: now + PROBE_EVERY_US,
            },
        );
        true
    }

    /// Timers: gives up requests older than the timeout (returned, so the caller can cancel
    /// those asked by name), and lets drained owners be probed again.
    pub fn on_tick(&mut self, now: u64) -> Vec<(PeerId, ChunkId)> {
        self.epoch += 1; // time alone makes chunks lost
        let mut out = Vec::new();
        let mut fresh_expired = 0;
        for (p, s) in self.peers.iter_mut() {
            let mut k = 0;
            while k < s.inflight.len() {
                let r = &s.inflight[k];
                if now.saturating_sub(r.at) <= REQUEST_TIMEOUT_US {
                    k += 1;
                    continue;
                }
                match s.inflight.remove(k).ask {
                    Ask::Chunk(c) => {
                        // The piece may still come: then it is discarded, not a violation.
                        push_cancelled(&mut s.cancelled, c);
                        out.push((*p, c));
                    }
                    Ask::Fresh(f) => {
                        *s.late_fresh.entry(f).or_default() += 1;
                        fresh_expired += 1;
                    }
                }
            }
        }
        self.outstanding = self.outstanding.saturating_sub(fresh_expired);
        for &(p, c) in &out {
            self.release(c);
            // Ask someone else next time; and the owner may be asked even while this peer
            // still claims to hold the chunk (a peer that claims chunks and never sends them
            // must not stall the run).
            self.files[c.file.0 as usize].bad_from.insert(c.index, p);
        }
        let files = &self.files;
        for s in self.peers.values_mut() {
            for (file, st) in s.fresh.iter_mut() {
                if let Fresh::Drained { since, probe_at } = *st
                    && now >= probe_at
                {
                    let f = &files[file.0 as usize];
                    let orphan = f.open.iter_ones().any(|i| f.avail[i as usize] == 0);
                    *st = if orphan {
                        Fresh::Probing { since }
                    } else {
                        Fresh::Drained {
                            since,
                            probe_at: now + PROBE_EVERY_US,
                        }
                    };
                }
            }
        }
        out
    }

    /// This node's own-file time (µs; `None` while unmeasured) and upload rate (bytes/µs).
    /// Returns the requests to cancel (see `update_precious`).
    pub fn set_my_load(&mut self, eta_us: Option<u64>, rate: f64) -> Vec<(PeerId, ChunkId)> {
        self.my_load = eta_us.map(|e| (e, rate));
        self.update_precious()
    }

    /// A peer's `Load`. Returns the requests to cancel (see `update_precious`).
    pub fn peer_load(&mut self, p: PeerId, eta_us: u64, rate: f64) -> Vec<(PeerId, ChunkId)> {
        match self.peers.get_mut(&p) {
            Some(s) => {
                s.load = Some((eta_us, rate));
                self.update_precious()
            }
            None => Vec::new(),
        }
    }

    /// Updates the bottleneck owners (see `bottleneck`). Requests by name waiting at a peer that
    /// just became one are withdrawn (returned, to be cancelled): they were asked before its
    /// load was known, and would take its uplink from its own file.
    fn update_precious(&mut self) -> Vec<(PeerId, ChunkId)> {
        let before = std::mem::take(&mut self.precious);
        self.precious = bottlenecks(&self.loads(), &before);
        if self.precious != before {
            self.epoch += 1;
        }
        let mut out = Vec::new();
        for p in self.precious.difference(&before) {
            let Some(s) = self.peers.get_mut(p) else {
                continue;
            };
            let files = &self.files;
            let mut mine = Vec::new();
            s.inflight.retain(|r| match r.ask {
                Ask::Chunk(c)
                    if files[c.file.0 as usize].owner != *p
                        && !files[c.file.0 as usize].verifying.get(c.index) =>
                {
                    mine.push(c);
                    false
                }
                _ => true,
            });
            for c in mine {
                push_cancelled(&mut s.cancelled, c);
                out.push((*p, c));
            }
        }
        for &(_, c) in &out {
            self.release(c);
        }
        out
    }

    /// The loads known, this node's included: (peer, own-file time µs, upload bytes/µs).
    pub fn loads(&self) -> Vec<Load> {
        self.my_load
            .map(|(e, r)| (self.me, e, r))
            .into_iter()
            .chain(
                self.peers
                    .iter()
                    .filter_map(|(p, s)| s.load.map(|(e, r)| (*p, e, r))),
            )
            .collect()
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

fn push_cancelled(q: &mut VecDeque<ChunkId>, c: ChunkId) {
    q.push_back(c);
    if q.len() > 256 {
        q.pop_front();
    }
}

mod pick;

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
