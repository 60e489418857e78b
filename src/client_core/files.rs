//! A file's hashing results, on the client's side: its own files' chunk digests (sent to the
//! server in order), the whole-file MD5 streams (an own file's goes to the server and the
//! peers; a download's is checked against its owner's), the rename of a verified download,
//! and when this node holds every file.

use super::*;

impl ClientCore {
    /// Digests of chunks `first..` of a file are ready (an [`Action::Hash`] is done).
    pub fn on_hashed(&mut self, file: FileId, first: u32, digests: Vec<Digest>, now: u64) {
        match self.files.get(&file) {
            Some(f) if f.owned => self.on_own_digests(file, first, digests),
            Some(_) => self.on_checked(file, first, digests, now),
            None => {}
        }
    }

    /// Digests of own-file chunks `first..` are ready. Jobs finish out of order on the pool;
    /// digests go to the server in order, as soon as the prefix before them is complete.
    pub(super) fn on_own_digests(&mut self, file: FileId, first: u32, digests: Vec<Digest>) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let count = f.geo.chunk_count();
        let pending = self.own_pending.entry(file).or_default();
        pending.insert(first, digests);
        let sent = self.own_hashed.entry(file).or_insert(0);
        while let Some(batch) = pending.remove(sent) {
            for (k, d) in batch.chunks(MAX_DIGESTS_PER_FRAME).enumerate() {
                let at = *sent + (k * MAX_DIGESTS_PER_FRAME) as u32;
                self.actions
                    .push_back(Action::ToServer(Message::ChunkDigests {
                        file,
                        first: at,
                        digests: d.to_vec(),
                    }));
            }
            *sent += batch.len() as u32;
            if *sent == count {
                info!(
                    "md5_sent event=chunk_md5_sent file={} chunks={count}",
                    f.info.name
                );
            }
        }
    }

    /// A whole-file hashing job ended at chunk `upto`; `md5` is set when the file is finished.
    pub fn on_stream(&mut self, file: FileId, upto: u32, md5: Option<Digest>) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        f.stream_busy = false;
        f.stream_pos = upto;
        let held = self.sched.have_set(file).map_or(0, |b| b.count());
        debug!(
            "stream_progress event=stream_progress file={} upto={upto} held={held} chunks={}",
            f.info.name,
            f.geo.chunk_count()
        );
        if let Some(d) = md5 {
            f.computed = Some(d);
            if f.owned {
                info!(
                    "md5_sent event=file_md5_sent file={} md5={}",
                    f.info.name,
                    hex(&d)
                );
                self.actions
                    .push_back(Action::ToServer(Message::FileDigest { file, md5: d }));
                for (q, slot) in &self.peers {
                    if slot.connected {
                        self.actions
                            .push_back(Action::ToPeer(*q, Message::FileDigest { file, md5: d }));
                    }
                }
            } else {
                self.maybe_finish(file);
            }
        }
        self.maybe_stream(file);
    }

    pub(super) fn maybe_stream(&mut self, file: FileId) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let count = f.geo.chunk_count();
        if f.stream_busy || f.computed.is_some() || (self.phase == Phase::Hello) {
            return;
        }
        let held = |i: u32| f.owned || self.sched.have(ChunkId { file, index: i });
        let mut to = f.stream_pos;
        // An own file in one job: the pool keeps a stream riding in its batches until the job
        // is done (see hashpool), and every peer waits for this MD5 at the end.
        while to < count && (f.owned || to - f.stream_pos < STREAM_BATCH) && held(to) {
            to += 1;
        }
        if to > f.stream_pos || count == 0 {
            f.stream_busy = true;
            self.actions.push_back(Action::Stream {
                file,
                from: f.stream_pos,
                to,
            });
        }
    }

    pub(super) fn maybe_finish(&mut self, file: FileId) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let (Some(w), Some(c)) = (f.whole, f.computed) else {
            return;
        };
        if f.finalizing || f.owned {
            return;
        }
        if w == c {
            f.finalizing = true;
            self.actions.push_back(Action::Finalize { file });
        } else {
            let reason = format!(
                "{}: every chunk matched its digest but the whole file's MD5 is {} instead of {}",
                f.info.name,
                hex(&c),
                hex(&w)
            );
            warn!(
                "file_failed event=file_md5_mismatch file={} reason={reason:?}",
                f.info.name
            );
            self.exit(1, reason);
        }
    }

    /// The shell renamed the verified file to its final name.
    pub fn on_finalized(&mut self, file: FileId, now: u64) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        f.done = true;
        let ms = now.saturating_sub(self.joined_at) as f64 / 1000.0;
        info!(
            "file_complete event=file_complete file={} bytes={} md5={} elapsed_ms={ms:.3}",
            f.info.name,
            f.info.size,
            hex(&f.computed.unwrap_or_default())
        );
        self.actions
            .push_back(Action::ToServer(Message::FileComplete { file }));
        self.check_all_done(now);
    }

    pub(super) fn check_all_done(&mut self, now: u64) {
        if self.phase != Phase::Started || !self.files.values().all(|f| f.owned || f.done) {
            return;
        }
        self.phase = Phase::Complete;
        self.completed_at = Some(now);
        let ms = now.saturating_sub(self.joined_at) as f64 / 1000.0;
        info!(
            "all_complete event=all_complete files={} bytes_received={} bytes_sent={} elapsed_ms={ms:.3}",
            self.files.len(),
            self.bytes_received,
            self.bytes_sent
        );
        self.send_progress(now);
        self.actions.push_back(Action::ToServer(Message::Done {
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
        }));
        self.check_peers_done();
    }
}
