//! What this node sends, sans-IO: the requests each peer is waiting on (served in arrival order,
//! one queue per connection, as the reactor writes them), and for this node's own files which
//! chunks have ever left it.
//!
//! A `RequestFresh` asks an owner for "a chunk of your file that you have never sent": the owner
//! picks the lowest such chunk when the piece is about to be written (late, so a connection that
//! drains faster takes more), and so sends each chunk of its file once while peers keep asking;
//! the peers then relay it among themselves. A fresh request is answered `NoFresh` at once if
//! every chunk has left, or when its turn comes if every chunk has left by then (fresh requests
//! are not promised chunks on arrival: a requester that asked first would hold promises others
//! could use sooner, and the others, told `NoFresh`, would ask this busy owner to relay).
//!
//! It also measures this node's upload rate, from which it derives the time it needs to send the
//! rest of its own files once: the `Load` its peers use to spare an owner whose uplink is the
//! bottleneck of the run.

use crate::bits::BitSet;
use crate::ids::{ChunkId, FileId, PeerId};
use std::collections::{BTreeMap, VecDeque};

/// Most requests a peer may have queued at this node.
pub const MAX_SERVE_QUEUE: usize = 1024;
/// The least time (µs) over which the upload rate is measured.
pub const RATE_SPAN_US: u64 = 200_000;

/// One request as the requester remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Chunk(ChunkId),
    Fresh(FileId),
}

/// One request as it waits in a serve queue: a request by name counts the fresh requests
/// queued ahead of it since it came; a fresh one carries the requester's bound (it knows the
/// digests of the chunks below it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    Chunk(ChunkId, u8),
    Fresh(FileId, u32),
}

/// Fresh requests that may go ahead of one request by name. Unbounded, a requester that keeps
/// asking an owner for fresh chunks starved its own request by name there until the owner's
/// file was all out: a chunk at the start of a file's missing range waited seconds (and, with
/// the whole-file MD5 stream of before the chained digests, that file's MD5 with it).
const MAX_OVERTAKEN: u8 = 2;

/// An own file: which chunks have left this node at least once.
struct Seed {
    sent: BitSet,
    unsent: u32,
    /// No chunk below this index is unsent (a lower bound, advanced lazily).
    cursor: u32,
    chunk_len: u64,
}

/// What the caller must answer to a fresh request.
#[derive(Debug, PartialEq, Eq)]
pub enum FreshReply {
    Queued,
    NoFresh,
}

#[derive(Default)]
pub struct Serving {
    queues: BTreeMap<PeerId, VecDeque<Queued>>,
    /// Fresh requests found unanswerable when their turn came, to be answered `NoFresh`.
    refused: Vec<(PeerId, FileId)>,
    own: BTreeMap<FileId, Seed>,
    /// The upload rate: payload handed out since `since`, the first tick that saw any (the
    /// pieces handed out before it fill the socket buffers at once, far above the link's rate,
    /// and are not counted), and the time of the last tick.
    sent_bytes: u64,
    since: Option<u64>,
    now: u64,
}

impl Serving {
    pub fn add_own(&mut self, file: FileId, chunks: u32, chunk_len: u32) {
        self.own.insert(
            file,
            Seed {
                sent: BitSet::new(chunks),
                unsent: chunks,
                cursor: 0,
                chunk_len: chunk_len as u64,
            },
        );
    }

    pub fn add_peer(&mut self, p: PeerId) {
        self.queues.insert(p, VecDeque::new());
    }

    /// Forgets `p`'s queue. Chunks of own files that left only towards `p`, as far as this node
    /// knows (`held` says whether a connected peer holds a chunk), count as never sent again.
    pub fn peer_lost(&mut self, p: PeerId, held: impl Fn(ChunkId) -> bool) {
        self.queues.remove(&p);
        for (file, s) in self.own.iter_mut() {
            let lost: Vec<u32> = s
                .sent
                .iter_ones()
                .filter(|&index| !held(ChunkId { file: *file, index }))
                .collect();
            for i in lost {
                s.sent.clear(i);
                s.unsent += 1;
                s.cursor = s.cursor.min(i);
            }
        }
    }

    fn queue(&mut self, p: PeerId) -> Result<&mut VecDeque<Queued>, String> {
        let q = self.queues.get_mut(&p).ok_or("unknown peer")?;
        if q.len() >= MAX_SERVE_QUEUE {
            return Err(format!("more than {MAX_SERVE_QUEUE} requests queued"));
        }
        Ok(q)
    }

    /// A request for a chunk this node holds (the caller checked).
    pub fn on_request(&mut self, p: PeerId, c: ChunkId) -> Result<(), String> {
        self.queue(p)?.push_back(Queued::Chunk(c, 0));
        Ok(())
    }

    /// A fresh request for a chunk below `below`: queued while some chunk of `file` has never
    /// left this node.
    pub fn on_request_fresh(
        &mut self,
        p: PeerId,
        file: FileId,
        below: u32,
    ) -> Result<FreshReply, String> {
        let Some(s) = self.own.get(&file) else {
            return Err(format!("fresh request for file {}, not ours", file.0));
        };
        if s.unsent == 0 {
            return Ok(FreshReply::NoFresh);
        }
        // Ahead of the requests by name (a chunk that has never left this node is the scarcest
        // thing it can send; the others may be had elsewhere), but behind any that fresh
        // requests went ahead of `MAX_OVERTAKEN` times already, and behind every fresh request
        // queued before it: the requester matches each piece and each no_fresh to its oldest
        // fresh request, and their bounds may differ.
        let q = self.queue(p)?;
        let first = q
            .iter()
            .position(|a| matches!(a, Queued::Chunk(..)))
            .unwrap_or(q.len());
        let after_full = q
            .iter()
            .rposition(|a| matches!(a, Queued::Chunk(_, n) if *n >= MAX_OVERTAKEN))
            .map_or(0, |i| i + 1);
        let after_fresh = q
            .iter()
            .rposition(|a| matches!(a, Queued::Fresh(..)))
            .map_or(0, |i| i + 1);
        let at = first.max(after_full).max(after_fresh);
        for a in q.iter_mut().skip(at) {
            if let Queued::Chunk(_, n) = a {
                *n += 1;
            }
        }
        q.insert(at, Queued::Fresh(file, below));
        Ok(FreshReply::Queued)
    }

    pub fn cancel(&mut self, p: PeerId, c: ChunkId) {
        if let Some(q) = self.queues.get_mut(&p) {
            q.retain(|a| !matches!(a, Queued::Chunk(x, _) if *x == c));
        }
    }

    /// The next chunk to send to `p`; a fresh request gets the lowest chunk never sent (one
    /// with none below its bound is set aside for `take_refused`).
    pub fn next(&mut self, p: PeerId) -> Option<ChunkId> {
        loop {
            let c = match self.queues.get_mut(&p)?.pop_front()? {
                Queued::Chunk(c, _) => c,
                Queued::Fresh(file, below) => {
                    let Some(s) = self.own.get_mut(&file) else {
                        continue;
                    };
                    let n = s.sent.len();
                    while s.cursor < n && s.sent.get(s.cursor) {
                        s.cursor += 1;
                    }
                    if s.cursor >= n.min(below) {
                        self.refused.push((p, file));
                        continue;
                    }
                    ChunkId {
                        file,
                        index: s.cursor,
                    }
                }
            };
            if let Some(s) = self.own.get_mut(&c.file)
                && s.sent.set(c.index)
            {
                s.unsent -= 1;
            }
            return Some(c);
        }
    }

    /// Fresh requests that `next` could not answer with a chunk.
    pub fn take_refused(&mut self) -> Vec<(PeerId, FileId)> {
        std::mem::take(&mut self.refused)
    }

    /// Counts payload handed to the connections, for the upload rate.
    pub fn count_sent(&mut self, bytes: u64) {
        self.sent_bytes += bytes;
    }

    pub fn has_pending(&self, p: PeerId) -> bool {
        self.queues.get(&p).is_some_and(|q| !q.is_empty())
    }

    /// Keeps time for the upload rate. It is an average since the first send, idle time
    /// included: connections sharing an uplink finish their pieces in bursts, so no short window
    /// measures it, and a node whose own file is the bottleneck never idles, so for it the
    /// average is its capacity (at first somewhat less, while the socket buffers drain).
    pub fn on_tick(&mut self, now: u64) {
        self.now = now;
        if self.since.is_none() && self.sent_bytes > 0 {
            self.since = Some(now);
            self.sent_bytes = 0;
        }
    }

    /// Upload rate in bytes per µs (0 until measured).
    pub fn rate(&self) -> f64 {
        match self.since {
            Some(t) if self.now >= t + RATE_SPAN_US => {
                self.sent_bytes as f64 / (self.now - t) as f64
            }
            _ => 0.0,
        }
    }

    /// The time (µs) to send every never-sent own chunk once at the measured rate: 0 when none
    /// is left, `None` while the rate is unknown.
    pub fn own_eta_us(&self) -> Option<u64> {
        let left: u64 = self
            .own
            .values()
            .map(|s| s.unsent as u64 * s.chunk_len)
            .sum();
        if left == 0 {
            return Some(0);
        }
        let rate = self.rate();
        (rate > 0.0).then(|| (left as f64 / rate) as u64)
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

    #[test]
    fn each_fresh_chunk_leaves_once_then_no_fresh() {
        let mut s = Serving::default();
        s.add_own(FileId(0), 3, 10);
        s.add_peer(PeerId(2));
        s.add_peer(PeerId(3));
        for p in [2, 3, 3, 2] {
            assert_eq!(
                s.on_request_fresh(PeerId(p), FileId(0), 100),
                Ok(FreshReply::Queued),
                "no promises: all wait while a chunk has never left"
            );
        }
        s.on_request(PeerId(3), c(0, 0)).unwrap();
        // Chosen when sent, in the order the connections drain; fresh ones before those by name.
        assert_eq!(s.next(PeerId(3)), Some(c(0, 0)));
        assert_eq!(s.next(PeerId(3)), Some(c(0, 1)));
        assert_eq!(s.next(PeerId(2)), Some(c(0, 2)));
        assert!(s.take_refused().is_empty());
        assert_eq!(s.next(PeerId(2)), None, "every chunk has left: refused");
        assert_eq!(s.take_refused(), vec![(PeerId(2), FileId(0))]);
        assert_eq!(s.next(PeerId(3)), Some(c(0, 0)), "the request by name");
        assert_eq!(s.next(PeerId(3)), None);
        assert_eq!(s.own_eta_us(), Some(0));
        assert_eq!(
            s.on_request_fresh(PeerId(2), FileId(0), 100),
            Ok(FreshReply::NoFresh)
        );
        assert!(s.on_request_fresh(PeerId(2), FileId(1), 100).is_err());
    }

    #[test]
    fn a_request_by_name_waits_behind_at_most_max_overtaken_fresh_ones() {
        let mut s = Serving::default();
        s.add_own(FileId(0), 10, 10);
        s.add_peer(PeerId(2));
        s.on_request(PeerId(2), c(1, 7)).unwrap();
        let fresh = MAX_OVERTAKEN as u32 + 2;
        for _ in 0..fresh {
            s.on_request_fresh(PeerId(2), FileId(0), 100).unwrap();
        }
        s.on_request(PeerId(2), c(1, 8)).unwrap();
        let mut want: Vec<ChunkId> = (0..MAX_OVERTAKEN as u32).map(|i| c(0, i)).collect();
        want.push(c(1, 7));
        want.extend((MAX_OVERTAKEN as u32..fresh).map(|i| c(0, i)));
        want.push(c(1, 8));
        let got: Vec<ChunkId> = std::iter::from_fn(|| s.next(PeerId(2))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn fresh_requests_stay_in_the_order_sent_past_a_request_by_name() {
        // Chunks 0 and 1 have left: a fresh request bounded below 2 gets nothing.
        let mut s = Serving::default();
        s.add_own(FileId(0), 6, 10);
        s.add_peer(PeerId(2));
        s.add_peer(PeerId(3));
        for _ in 0..2 {
            s.on_request_fresh(PeerId(3), FileId(0), 6).unwrap();
            s.next(PeerId(3));
        }
        s.on_request(PeerId(2), c(1, 5)).unwrap();
        for _ in 0..MAX_OVERTAKEN {
            s.on_request_fresh(PeerId(2), FileId(0), 6).unwrap();
        }
        // The request by name is overtaken in full: the next two queue behind it, in order.
        s.on_request_fresh(PeerId(2), FileId(0), 2).unwrap();
        s.on_request_fresh(PeerId(2), FileId(0), 6).unwrap();
        let got: Vec<ChunkId> = (0..3).filter_map(|_| s.next(PeerId(2))).collect();
        assert_eq!(got, [c(0, 2), c(0, 3), c(1, 5)]);
        assert!(s.take_refused().is_empty());
        // The one bounded below 2 is refused before the last one gets chunk 4: the requester
        // matches the no_fresh and the piece to its fresh requests in the order it sent them.
        assert_eq!(s.next(PeerId(2)), Some(c(0, 4)));
        assert_eq!(s.take_refused(), vec![(PeerId(2), FileId(0))]);
        assert_eq!(s.next(PeerId(2)), None);
    }

    #[test]
    fn chunks_lost_with_their_only_holder_are_fresh_again() {
        let mut s = Serving::default();
        s.add_own(FileId(0), 2, 10);
        s.add_peer(PeerId(2));
        s.add_peer(PeerId(3));
        s.on_request_fresh(PeerId(2), FileId(0), 100).unwrap();
        s.on_request_fresh(PeerId(2), FileId(0), 100).unwrap();
        assert_eq!(s.next(PeerId(2)), Some(c(0, 0)));
        assert_eq!(s.next(PeerId(2)), Some(c(0, 1)));
        // Peer 3 got chunk 1 from peer 2 before peer 2 left.
        s.peer_lost(PeerId(2), |c| c.index == 1);
        assert_eq!(
            s.on_request_fresh(PeerId(3), FileId(0), 100),
            Ok(FreshReply::Queued)
        );
        assert_eq!(s.next(PeerId(3)), Some(c(0, 0)));
    }

    #[test]
    fn fresh_chunk_only_below_the_requesters_bound() {
        let mut s = Serving::default();
        s.add_own(FileId(0), 4, 10);
        s.add_peer(PeerId(2));
        s.on_request_fresh(PeerId(2), FileId(0), 1).unwrap();
        s.on_request_fresh(PeerId(2), FileId(0), 1).unwrap();
        s.on_request_fresh(PeerId(2), FileId(0), 4).unwrap();
        assert_eq!(s.next(PeerId(2)), Some(c(0, 0)));
        assert_eq!(s.next(PeerId(2)), Some(c(0, 1)), "the second is skipped");
        assert_eq!(s.take_refused(), vec![(PeerId(2), FileId(0))]);
        assert_eq!(s.next(PeerId(2)), None);
    }

    #[test]
    fn upload_rate_and_eta() {
        let mut s = Serving::default();
        s.add_own(FileId(0), 100, 1000);
        s.add_peer(PeerId(2));
        assert_eq!(s.own_eta_us(), None);
        s.on_tick(0);
        s.on_request_fresh(PeerId(2), FileId(0), 100).unwrap();
        s.next(PeerId(2));
        // A burst while the socket buffers fill: ignored.
        s.count_sent(50_000);
        s.on_tick(10);
        s.count_sent(1000);
        s.on_tick(10 + RATE_SPAN_US / 2);
        assert_eq!(s.rate(), 0.0, "not measured yet");
        s.count_sent(1000);
        s.on_tick(10 + RATE_SPAN_US);
        assert_eq!(s.rate(), 0.01);
        assert_eq!(s.own_eta_us(), Some(99 * 1000 * 100));
    }
}
