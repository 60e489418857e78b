//! Clients lost and found, on the server's side: a client's connection that ends before it is
//! done, a lost client that comes back (restarted with the same arguments) to its old slot,
//! clients that report they cannot progress, and the decision that the run is over, complete,
//! or failed once nobody can progress and no lost client came back within the rejoin wait.

use super::*;

impl ServerCore {
    /// A client that was lost before it completed and that `name` and `files` describe: the
    /// same files (names and sizes, in order) and, if a name is given, the same name.
    pub(super) fn lost_member(
        &self,
        name: &str,
        files: &[crate::codec::FileDecl],
    ) -> Option<PeerId> {
        let same_files = |c: &ClientRec| {
            c.files.len() == files.len()
                && c.files.iter().zip(files).all(|(id, d)| {
                    let f = &self.files[id.0 as usize].info;
                    f.name == d.name && f.size == d.size
                })
        };
        self.clients
            .iter()
            .find(|(_, c)| {
                c.conn.is_none()
                    && c.done_at.is_none()
                    && (name.is_empty() || c.info.name == name)
                    && same_files(c)
            })
            .map(|(id, _)| *id)
    }

    /// A lost client came back (restarted with the same arguments): it gets its old slot (id,
    /// name, file ids, connect time), the client list and every digest known, and the other
    /// clients learn its new address.
    pub(super) fn rejoin(&mut self, conn: ConnId, id: PeerId, listen: String, now: u64) {
        if listen.parse::<SocketAddr>().is_err() {
            return self.refuse(conn, format!("bad listen address {listen:?}"));
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        c.conn = Some(conn);
        c.lost_at = None;
        c.stuck = 0;
        c.info.addr = listen;
        c.prev_sent += std::mem::take(&mut c.bytes_sent);
        c.prev_received += std::mem::take(&mut c.bytes_received);
        // It checks its outputs again and reports every file it completes anew.
        c.completed.clear();
        c.files_done = 0;
        let (info, files) = (c.info.clone(), c.files.clone());
        info!(
            "client_rejoined event=client_rejoined client={} id={} addr={}",
            info.name, id.0, info.addr
        );
        self.conns.insert(conn, Some(id));
        self.settled_since = None;
        self.actions.push_back(ServerAction::Send(
            conn,
            Message::Welcome {
                id,
                name: info.name.clone(),
                clock_us: now,
                chunk_size: self.chunk_size,
                clients: self.expected,
                files,
            },
        ));
        if !self.started {
            return;
        }
        let peers: Vec<PeerInfo> = self.clients.values().map(|c| c.info.clone()).collect();
        let files: Vec<FileInfo> = self.files.iter().map(|f| f.info.clone()).collect();
        self.actions
            .push_back(ServerAction::Send(conn, Message::Start { peers, files }));
        for fi in 0..self.files.len() {
            if self.files[fi].info.owner != id {
                for m in self.digest_msgs(fi) {
                    self.actions.push_back(ServerAction::Send(conn, m));
                }
            }
        }
        self.relay(id, Message::Rejoined { peer: info });
    }

    pub fn on_disconnect(&mut self, conn: ConnId, now: u64) {
        let Some(who) = self.conns.remove(&conn) else {
            return;
        };
        let Some(id) = who else { return };
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        c.conn = None;
        if c.done_at.is_none() && !self.finished {
            c.lost_at = Some(now);
            warn!(
                "client_lost event=client_lost client={} id={}",
                c.info.name, id.0
            );
            self.check_finish(now);
        }
    }

    pub(super) fn check_finish(&mut self, now: u64) {
        if self.finished || !self.started {
            return;
        }
        if !self.clients.values().all(|c| c.done_at.is_some()) {
            // Nobody can progress: every client is done, lost, or stuck for want of a lost
            // one's chunks. The lost get `rejoin_wait` to come back before the run ends.
            let settled = self
                .clients
                .values()
                .all(|c| c.done_at.is_some() || c.lost_at.is_some() || c.stuck > 0);
            if !settled {
                self.settled_since = None;
                return;
            }
            let since = *self.settled_since.get_or_insert(now);
            if now < since.saturating_add(self.rejoin_wait) {
                return;
            }
        }
        self.finished = true;
        let lost = self
            .clients
            .values()
            .filter(|c| c.done_at.is_none())
            .count();
        let s = self.summary(now);
        if lost > 0 {
            let who: Vec<String> = self
                .clients
                .values()
                .filter(|c| c.done_at.is_none())
                .map(|c| {
                    let why = if c.lost_at.is_some() { "lost" } else { "stuck" };
                    format!("{}({why})", c.info.name)
                })
                .collect();
            warn!(
                "run_failed event=run_failed incomplete={} reason=\"no client can progress and no lost client came back in time\"",
                who.join(",")
            );
        }
        info!(
            "all_complete event=run_finished clients={} lost={lost} total_ms={:.3}",
            self.clients.len(),
            s.total_ms
        );
        for (_, conn) in self.live_conns() {
            self.actions
                .push_back(ServerAction::Send(conn, Message::Shutdown));
        }
        self.actions.push_back(ServerAction::Finished {
            code: if lost == 0 { 0 } else { 1 },
        });
    }

    /// A client says how many chunks it can get from nobody it reaches (0: it can progress).
    pub(super) fn on_stuck(&mut self, id: PeerId, chunks: u32, now: u64) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if chunks > 0 {
            warn!(
                "stuck event=client_stuck client={} missing_chunks={chunks}",
                c.info.name
            );
        } else if c.stuck > 0 {
            info!("stuck event=client_unstuck client={}", c.info.name);
        }
        c.stuck = chunks;
        self.check_finish(now);
    }
}
