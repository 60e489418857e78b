//! Which received chunks the page cache may drop: those that are spent here. A chunk of a
//! download is spent when this node holds it (checked and written: nothing reads it here again)
//! and every other member but the file's owner is connected and holds it (so no peer will ask
//! this node for it). The shell then has the kernel write the
//! range back and drop its pages ([`Action::Uncache`]).
//!
//! While some member other than the owner is not connected (not yet, lost, or banned), no
//! chunk of that file is spent: it may ask this node for any of them.
//!
//! Why: on a VM that hands free memory back to its host, every page the page cache takes for
//! the first time costs a host fault, about 5x the cost of a page freed moments ago (Readme
//! section 11.4); a node that keeps every byte it downloads in the cache pays that for all of
//! them. Dropping spent chunks as the run goes lets the kernel reuse their pages for the next
//! chunks, and on a small VM leaves room for the chunks still in demand.

use super::*;

/// Least run of spent chunks released at once (1 MiB at 256 KiB chunks): a few syscalls each.
pub const UNCACHE_MIN_RUN: u32 = 4;

impl ClientCore {
    /// Emits an [`Action::Uncache`] for each new run of at least `UNCACHE_MIN_RUN` spent
    /// chunks in every download (shorter ones where they fill a gap, or once the file is
    /// complete).
    pub(super) fn uncache_spent(&mut self) {
        if self.phase == Phase::Hello {
            return;
        }
        let me = self.id;
        for (id, f) in self.files.iter_mut() {
            let end = f.geo.chunk_count();
            if f.owned || end <= f.uncached_low {
                continue;
            }
            let owner = f.info.owner;
            // Every member but this node and the owner, connected: the holders that count.
            let mut needed = 0u16;
            let mut all_here = true;
            for (p, s) in &self.peers {
                if *p != me && *p != owner {
                    needed = needed.saturating_add(1);
                    all_here &= s.connected;
                }
            }
            if !all_here {
                continue;
            }
            let spent = |i: u32| {
                let c = ChunkId {
                    file: *id,
                    index: i,
                };
                self.sched.have(c) && self.sched.avail(c) >= needed
            };
            let mut i = f.uncached_low;
            while i < end {
                if f.uncached.get(i) || !spent(i) {
                    i += 1;
                    continue;
                }
                let from = i;
                while i < end && !f.uncached.get(i) && spent(i) {
                    i += 1;
                }
                // A shorter run waits for its neighbours, unless it fills a gap before a run
                // already dropped or the file is complete (no more neighbours to wait for).
                let gap = i < end && f.uncached.get(i);
                if i - from >= UNCACHE_MIN_RUN || gap || f.computed.is_some() {
                    for k in from..i {
                        f.uncached.set(k);
                    }
                    self.actions.push_back(Action::Uncache {
                        file: *id,
                        from,
                        to: i,
                    });
                }
            }
            while f.uncached_low < end && f.uncached.get(f.uncached_low) {
                f.uncached_low += 1;
            }
        }
    }
}
