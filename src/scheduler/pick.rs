//! What the scheduler asks of one peer next (`Scheduler::pick`): an owner's stuck chunks, then
//! fresh ones, then relaying (rarest first among usable holders), then endgame duplicates.
//! Split from `scheduler.rs` for length; the policy is in its module doc and Readme section 7.

use super::*;

impl Scheduler {
    /// Chunks where this node's prefix of another's file ends; at an owner: chunks of its file
    /// stuck elsewhere, then fresh ones; then relaying; then endgame duplicates.
    pub(super) fn pick(&mut self, p: PeerId, now: u64) -> Option<Ask> {
        if let Some(c) = self
            .pick_prefix(p)
            .or_else(|| self.pick_cached(p, now, true))
        {
            return Some(Ask::Chunk(c));
        }
        if let Some(f) = self.pick_fresh(p) {
            return Some(Ask::Fresh(f));
        }
        self.pick_cached(p, now, false)
            .or_else(|| self.pick_endgame(p))
            .map(Ask::Chunk)
    }

    /// `pick_chunk`, skipped while nothing changed since it last found nothing (it runs for
    /// every free slot of every peer, and a scan is linear in the missing chunks).
    fn pick_cached(&mut self, p: PeerId, now: u64, own_files: bool) -> Option<ChunkId> {
        let k = own_files as usize;
        if self.peers.get(&p)?.idle[k] == self.epoch {
            return None;
        }
        let c = self.pick_chunk(p, now, own_files);
        if c.is_none()
            && let Some(s) = self.peers.get_mut(&p)
        {
            s.idle[k] = self.epoch;
        }
        c
    }

    /// A file `p` owns that it may still have fresh chunks of. A bottleneck node takes none.
    fn pick_fresh(&self, p: PeerId) -> Option<FileId> {
        if self.am_precious() {
            return None;
        }
        let s = self.peers.get(&p)?;
        self.files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.owner == p && f.wanted && !f.have.is_full() && f.known.count() > 0)
            .map(|(i, _)| FileId(i as u32))
            .find(
                |file| match s.fresh.get(file).copied().unwrap_or(Fresh::Open) {
                    Fresh::Open => true,
                    Fresh::Below(b) => self.known_prefix(*file) > b,
                    Fresh::Probing { .. } => !s.inflight.iter().any(|r| r.ask == Ask::Fresh(*file)),
                    Fresh::Drained { .. } => false,
                },
            )
    }

    /// The best chunk to ask of `p` by name. From a relay: the fewest other usable holders
    /// first (0 ends the scan), then the lowest index; rarity is judged among the `SCAN_LIMIT` lowest
    /// candidates of each file (a scan of every missing chunk for every request costs more
    /// than it brings). From the owner: only chunks that left it but cannot be
    /// had elsewhere. Files are scanned from one that depends on the peer, so that different
    /// peers serve different files.
    fn pick_chunk(&self, p: PeerId, now: u64, own_files: bool) -> Option<ChunkId> {
        let s = self.peers.get(&p)?;
        let p_precious = self.precious.contains(&p);
        let nf = self.files.len();
        let mut best: Option<(u32, ChunkId)> = None;
        for k in 0..nf {
            let fi = (k + p.0 as usize) % nf;
            let f = &self.files[fi];
            let file = FileId(fi as u32);
            let from_owner = f.owner == p;
            // A bottleneck relays nothing, except chunks of another bottleneck's file that only
            // bottlenecks hold (see below).
            let owner_precious = self.precious.contains(&f.owner);
            if !f.wanted
                || f.have.is_full()
                || from_owner != own_files
                || (p_precious && !from_owner && !owner_precious)
            {
                continue;
            }
            let Some(bits) = s.has.get(&file) else {
                continue;
            };
            // Holders that must not be asked to relay: bottleneck peers other than the owner.
            let spared: Vec<&BitSet> = self
                .precious
                .iter()
                .filter(|q| **q != f.owner && **q != self.me)
                .filter_map(|q| self.peers.get(q).and_then(|qs| qs.has.get(&file)))
                .collect();
            let drained_since = match s.fresh.get(&file) {
                Some(Fresh::Drained { since, .. } | Fresh::Probing { since }) if from_owner => {
                    Some(*since)
                }
                _ => None,
            };
            let lost = drained_since.is_some_and(|t| now.saturating_sub(t) >= LOST_AFTER_US);
            let any_bad = !f.bad_from.is_empty();
            for i in f.open.iter_both(bits).take(SCAN_LIMIT) {
                let bad = if any_bad { f.bad_from.get(&i) } else { None };
                if bad == Some(&p) {
                    continue;
                }
                let all = f.avail[i as usize] as u32;
                let usable = if spared.is_empty() {
                    all
                } else {
                    all - spared.iter().filter(|b| b.get(i)).count() as u32
                };
                let score = if from_owner {
                    // Held by bottleneck relays only: asked of the owner again, unless the owner
                    // is a bottleneck too; then of one of them (its uplink is no scarcer than the
                    // owner's, and a relay taken for a bottleneck on a noisy rate is a fast one).
                    let only_spared = usable == 0 && all > 0 && !owner_precious;
                    if bad.is_some() || only_spared || (all == 0 && lost) {
                        0 // left the owner, but cannot be had elsewhere
                    } else if drained_since.is_some() && all > 0 {
                        usable // its fresh chunks are out: a relay like any other
                    } else {
                        continue; // spare the owner: a relay has it, or will (in flight)
                    }
                } else if p_precious {
                    if usable > 0 {
                        continue; // a relay that is no bottleneck has it
                    }
                    0 // only bottlenecks hold it, and its owner is one
                } else {
                    usable.saturating_sub(1)
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

    /// From a peer that is no bottleneck: a chunk of another's file among the first
    /// `PREFIX_WINDOW` from where this node's held prefix of it ends, before any chunk of the
    /// peer's own file and before any rarer one (a few requests per file: each is asked once).
    /// It was made for the whole-file MD5 stream of before the chained digests, which waited
    /// at a file's first missing chunk: rarest-first alone left such a chunk (held by two
    /// relays, so never the rarest) missing until the end. Chunks are checked in any order
    /// now; the rule stays until it is measured without it.
    fn pick_prefix(&self, p: PeerId) -> Option<ChunkId> {
        if self.precious.contains(&p) || self.owner_uplink_scarce(p) {
            return None;
        }
        let s = self.peers.get(&p)?;
        let nf = self.files.len();
        for k in 0..nf {
            let fi = (k + p.0 as usize) % nf;
            let f = &self.files[fi];
            let file = FileId(fi as u32);
            if !f.wanted || f.have.is_full() || f.owner == p {
                continue;
            }
            let Some(bits) = s.has.get(&file) else {
                continue;
            };
            let end = f.head.saturating_add(PREFIX_WINDOW);
            let found = f
                .open
                .iter_both(bits)
                .take_while(|i| *i < end)
                .find(|i| f.bad_from.get(i) != Some(&p));
            if let Some(index) = found {
                return Some(ChunkId { file, index });
            }
        }
        None
    }

    /// Whether `p` still has fresh chunks of a file this node wants and its uplink is needed
    /// for them more than the other owners' are: its own-file time is not known yet, or more
    /// than `PREFIX_OWNER_SLACK` times the least of the owners of files this node wants (0 for
    /// one whose fresh chunks are out). Such an owner is not asked to relay prefix chunks: each
    /// would delay its own file, which only it can send (a slow owner of 64 chunks, too short
    /// a file to make it a bottleneck, sent its file 1.2 times and the run took 1.21 x T_lb in
    /// the simulator).
    fn owner_uplink_scarce(&self, p: PeerId) -> bool {
        // The own-file time of an owner of a wanted file: 0 once drained, None while unknown.
        let own_us = |q: &PeerId| -> Option<Option<u64>> {
            let qs = self.peers.get(q)?;
            let mut owns = false;
            for (i, f) in self.files.iter().enumerate() {
                if f.owner != *q || !f.wanted || f.have.is_full() {
                    continue;
                }
                owns = true;
                if !matches!(qs.fresh.get(&FileId(i as u32)), Some(Fresh::Drained { .. })) {
                    return Some(qs.load.map(|(us, _)| us));
                }
            }
            owns.then_some(Some(0))
        };
        let mine = match own_us(&p) {
            None | Some(Some(0)) => return false,
            Some(None) => return true,
            Some(Some(us)) => us,
        };
        let least = self
            .peers
            .keys()
            .filter_map(|q| own_us(q).flatten())
            .min()
            .unwrap_or(mine);
        mine as f64 > PREFIX_OWNER_SLACK * least as f64
    }

    /// Endgame: when every missing chunk is asked for, a chunk asked once elsewhere that `p`
    /// holds and would deliver sooner (by the measured rates and queues) than where it waits.
    fn pick_endgame(&self, p: PeerId) -> Option<ChunkId> {
        if self
            .files
            .iter()
            .any(|f| f.wanted && f.have.count() + f.pending < f.len())
        {
            return None; // not endgame yet: some chunk is simply unasked, unknown or unavailable
        }
        let s = self.peers.get(&p)?;
        let p_precious = self.precious.contains(&p);
        let here = s.pacing.eta(self.chunk, s.inflight.len() + 1);
        let mut best: Option<(f64, ChunkId)> = None;
        for (q, qs) in &self.peers {
            if *q == p {
                continue;
            }
            for (k, r) in qs.inflight.iter().enumerate() {
                let Ask::Chunk(c) = r.ask else {
                    continue;
                };
                let f = &self.files[c.file.0 as usize];
                if f.req[c.index as usize] != 1
                    || f.verifying.get(c.index)
                    || (p_precious && f.owner != p)
                    || f.bad_from.get(&c.index) == Some(&p)
                    || !s.has.get(&c.file).is_some_and(|b| b.get(c.index))
                    || s.inflight.iter().any(|x| x.ask == r.ask)
                {
                    continue;
                }
                let gain = qs.pacing.drain_time(self.chunk, k + 1) - here;
                if gain > 0.0 && best.is_none_or(|(g, _)| gain > g) {
                    best = Some((gain, c));
                }
            }
        }
        best.map(|(_, c)| c)
    }
}
