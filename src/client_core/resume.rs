//! Crash and restart, on the client's side: resuming from the `.part` files an earlier life of
//! this node left (each chunk is checked against its digest before it counts as held), telling
//! the server when this node cannot progress for want of a lost member's chunks, following a
//! member that came back at a new address, and naming what is missing when the run ends first.

use super::{Action, ClientCore, Phase};
use crate::codec::{Message, PeerInfo};
use crate::ids::{ChunkId, Digest, FileId};
use crate::redial::Redial;
use log::{debug, info, warn};

/// After this long (µs) without having met a peer, this node stops waiting for it before it
/// calls itself stuck: a member lost before it ever connected must not keep the run open.
pub const STARTUP_GRACE_US: u64 = 10_000_000;
/// Chunks per resume-check job (one round of the hash pool's eight lanes).
const CHECK_BATCH: u32 = 8;

/// Whether a download's output file can take chunks yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutState {
    /// The shell is creating or opening it: no chunk is requested yet.
    Waiting,
    /// It was left by an earlier life of this node: chunks below `next` are being checked
    /// (`done` of them are), and only checked chunks may be requested.
    Scanning { next: u32, done: u32, held: u32 },
    /// Created empty, or fully checked.
    Ready,
}

impl ClientCore {
    /// The shell created the output of `file` (`resumed`: it opened one left by an earlier life
    /// of this node, whose chunks must be checked before they count).
    pub fn on_output_ready(&mut self, file: FileId, resumed: bool, now: u64) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        if f.owned || f.out != OutState::Waiting {
            return;
        }
        if resumed {
            info!(
                "resume event=resume_started file={} chunks={}",
                f.info.name,
                f.geo.chunk_count()
            );
            f.out = OutState::Scanning {
                next: 0,
                done: 0,
                held: 0,
            };
            self.scan(file);
        } else {
            f.out = OutState::Ready;
            let known = f.digests.len() as u32;
            self.sched.set_known(file, 0, known);
            self.maybe_complete(file);
            self.maybe_finish(file);
            self.fill_all(now);
        }
    }

    /// Asks the hash pool to check every chunk of a resumed file whose digest is known and that
    /// is not being checked yet.
    pub(super) fn scan(&mut self, file: FileId) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let OutState::Scanning { next, .. } = &mut f.out else {
            return;
        };
        let known = f.digests.len() as u32;
        while *next < known {
            let count = CHECK_BATCH.min(known - *next);
            let prevs = (*next..*next + count)
                .map(|i| {
                    i.checked_sub(1)
                        .and_then(|k| f.digests.get(k as usize).copied())
                })
                .collect();
            self.actions.push_back(Action::Check {
                file,
                first: *next,
                prevs,
            });
            *next += count;
        }
    }

    /// The chain values of chunks `first..` of a resumed `.part` as found on disk (each from
    /// its owner's value of the chunk before): those that match the owner's are held (and
    /// announced); the others are fetched like any missing chunk.
    pub fn on_checked(&mut self, file: FileId, first: u32, found: Vec<Digest>, now: u64) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let OutState::Scanning { done, held, .. } = &mut f.out else {
            return;
        };
        let n = found.len() as u32;
        let mut good = Vec::new();
        for (k, d) in found.iter().enumerate() {
            let i = first + k as u32;
            if f.digests.get(i as usize) == Some(d) {
                good.push(i);
            } else {
                debug!(
                    "resume event=resume_chunk_missing file={} index={i}",
                    f.info.name
                );
            }
        }
        *done += n;
        *held += good.len() as u32;
        let (done, held) = (*done, *held);
        let count = f.geo.chunk_count();
        if done >= count {
            f.out = OutState::Ready;
            info!(
                "resume event=resume_checked file={} chunks={count} held={held} missing={}",
                f.info.name,
                count - held
            );
        }
        for &i in &good {
            let chunk = ChunkId { file, index: i };
            self.sched.mark_have(chunk);
            for (q, s) in &self.peers {
                if s.connected {
                    self.actions
                        .push_back(Action::ToPeer(*q, Message::Have { chunk }));
                }
            }
        }
        self.sched.set_known(file, first, n);
        self.progress_dirty |= !good.is_empty();
        self.maybe_complete(file);
        self.fill_all(now);
    }

    /// A lost member came back at a new address. A connection to its former life is dead; if
    /// this node is the one that dials it, it dials the new address now (also after giving up).
    pub(super) fn on_rejoined(&mut self, peer: PeerInfo, now: u64) {
        let p = peer.id;
        if p == self.id || !self.peers.contains_key(&p) {
            warn!(
                "protocol_error event=bad_rejoin peer={} id={}",
                peer.name, p.0
            );
            return;
        }
        info!(
            "peer_rejoined event=peer_rejoined peer={} addr={}",
            peer.name, peer.addr
        );
        if p < self.id && self.peers.get(&p).is_some_and(|s| s.connected) {
            self.on_peer_lost(p, "the peer restarted", now);
            self.actions.push_back(Action::Disconnect {
                peer: p,
                reason: "the peer restarted".into(),
            });
        }
        let Some(slot) = self.peers.get_mut(&p) else {
            return;
        };
        slot.info.addr = peer.addr;
        if p < self.id && !slot.redial.banned {
            slot.redial = Redial::default();
            self.actions.push_back(Action::Connect {
                peer: p,
                addr: slot.info.addr.clone(),
            });
        }
    }

    /// Tells the server whenever this node's count of chunks it cannot get changes.
    pub(super) fn report_stuck(&mut self, now: u64) {
        let n = self.stuck_chunks(now);
        if n != self.stuck_told {
            self.stuck_told = n;
            if n > 0 {
                info!("stuck event=stuck missing_chunks={n}");
            } else {
                info!("stuck event=unstuck");
            }
            self.actions
                .push_back(Action::ToServer(Message::Stuck { chunks: n }));
        }
    }

    /// The chunks this node lacks when none of them can come from anyone: nothing in flight,
    /// no file being checked, every peer met (or waited for long enough), and no connected peer
    /// holding any of them. 0 while it can progress.
    fn stuck_chunks(&self, now: u64) -> u32 {
        if self.phase != Phase::Started || self.server_gone || self.sched.outstanding() > 0 {
            return 0;
        }
        let waited = now.saturating_sub(self.joined_at) >= STARTUP_GRACE_US;
        if self
            .peers
            .values()
            .any(|s| !s.connected && !s.seen && !waited)
        {
            return 0;
        }
        let mut missing = 0u32;
        for (&file, f) in &self.files {
            if f.owned || f.done {
                continue;
            }
            if f.out != OutState::Ready {
                return 0;
            }
            let owner_here = self.peers.get(&f.info.owner).is_some_and(|s| s.connected);
            for index in 0..f.geo.chunk_count() {
                let c = ChunkId { file, index };
                if self.sched.have(c) {
                    continue;
                }
                if owner_here || self.sched.avail(c) > 0 {
                    return 0;
                }
                missing += 1;
            }
        }
        missing
    }

    /// Logs each file this node does not hold, and says which chunks it lacks, in one line.
    pub(super) fn log_incomplete(&self) -> String {
        let mut parts = Vec::new();
        for (&file, f) in &self.files {
            if f.owned || f.done {
                continue;
            }
            let count = f.geo.chunk_count();
            let lacking: Vec<u32> = (0..count)
                .filter(|&index| !self.sched.have(ChunkId { file, index }))
                .collect();
            let ranges = ranges(&lacking);
            info!(
                "file_failed event=file_incomplete file={} missing={} of={count} chunks={ranges}",
                f.info.name,
                lacking.len()
            );
            let what = if lacking.is_empty() {
                "every chunk is held but the file was not verified yet".to_string()
            } else {
                format!("lacks {} of {count} chunks ({ranges})", lacking.len())
            };
            parts.push(format!("{} {what}", f.info.name));
        }
        parts.join("; ")
    }
}

/// `[1, 2, 3, 7, 9, 10]` as `1-3,7,9-10`; at most 8 ranges, then `,...`.
pub(crate) fn ranges(sorted: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        i += 1;
        if out.len() == 8 {
            out.push("...".into());
            break;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_are_compact_and_bounded() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        let every_other: Vec<u32> = (0..40).step_by(2).collect();
        assert_eq!(ranges(&every_other), "0,2,4,6,8,10,12,14,...");
    }
}
