//! A file's hashing results, on the client's side: its own files' chained chunk digests
//! (`md5x::link`; sent to the server in order, and the last of them, the file's MD5, to the
//! server and the peers), the end of a download (every chunk held, each checked against its
//! owner's chain: the file's MD5 is then the chain's last value, and it must agree with the one
//! the server or the owner sent), the rename of a verified download, and when this node holds
//! every file.

use super::*;

impl ClientCore {
    /// Chain values of own-file chunks `first..` are ready (an [`Action::Chain`] went that
    /// far). They go to the server in order, as soon as the prefix before them is complete; the
    /// file's last one is its MD5.
    pub fn on_chained(&mut self, file: FileId, first: u32, values: Vec<Digest>) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        if !f.owned {
            return;
        }
        let count = f.geo.chunk_count();
        let pending = self.own_pending.entry(file).or_default();
        pending.insert(first, values);
        let sent = self.own_hashed.entry(file).or_insert(0);
        let mut md5 = None;
        while let Some(batch) = pending.remove(sent) {
            if batch.is_empty() {
                continue;
            }
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
                md5 = batch.last().copied();
            }
        }
        if let Some(d) = md5 {
            self.own_md5_done(file, d);
        }
    }

    /// An own file's MD5 is known: it goes to the server and to every connected peer.
    pub(super) fn own_md5_done(&mut self, file: FileId, d: Digest) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        f.computed = Some(d);
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
    }

    /// A download is verified whole once every chunk is held (each checked against its
    /// owner's chain) and its chain is known to its end: the chain's last value is then the MD5
    /// of the file this node holds (an empty file's is the MD5 of nothing).
    pub(super) fn maybe_complete(&mut self, file: FileId) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let count = f.geo.chunk_count();
        if f.owned || f.computed.is_some() || f.digests.len() as u32 != count {
            return;
        }
        let held = self.sched.have_set(file).map_or(0, |b| b.count());
        if held < count {
            return;
        }
        f.computed = Some(match f.digests.last() {
            Some(d) => *d,
            None => md5x::link(None, 0, &[], true),
        });
        self.maybe_finish(file);
    }

    pub(super) fn maybe_finish(&mut self, file: FileId) {
        let Some(f) = self.files.get_mut(&file) else {
            return;
        };
        let (Some(w), Some(c)) = (f.whole, f.computed) else {
            return;
        };
        // An output still being created (on a thread of its own) cannot be renamed yet: an
        // empty download is complete at once.
        if f.finalizing || f.owned || f.out != resume::OutState::Ready {
            return;
        }
        if w == c {
            f.finalizing = true;
            self.actions.push_back(Action::Finalize { file });
        } else {
            self.md5_mismatch(file, c, w);
        }
    }

    /// A download's chain is known to its end and its MD5 announced: if the chain does not end
    /// in that MD5, no copy of the file can ever pass, so the run fails now rather than after
    /// the whole file is fetched.
    pub(super) fn check_chain_end(&mut self, file: FileId) {
        let Some(f) = self.files.get(&file) else {
            return;
        };
        if f.owned || f.digests.len() as u32 != f.geo.chunk_count() {
            return;
        }
        if let (Some(&end), Some(w)) = (f.digests.last(), f.whole)
            && end != w
        {
            self.md5_mismatch(file, end, w);
        }
    }

    /// The owner's chain ends in `end`, but the file's announced MD5 is `announced`.
    fn md5_mismatch(&mut self, file: FileId, end: Digest, announced: Digest) {
        let Some(f) = self.files.get(&file) else {
            return;
        };
        let reason = format!(
            "{}: the owner's chain of chunk digests ends in the MD5 {}, but the file's announced MD5 is {}",
            f.info.name,
            hex(&end),
            hex(&announced)
        );
        warn!(
            "file_failed event=file_md5_mismatch file={} reason={reason:?}",
            f.info.name
        );
        self.exit(1, reason);
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
