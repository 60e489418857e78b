//! The client reactor's peer links: accepting and dialling them, reading and handing their
//! frames to the core (after the membership handshake), queueing pieces as slices of the
//! memory maps and flushing every socket, and dropping a link with its reason.

use super::*;

impl Client {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    let pending = self.peers.iter().filter(|(_, p)| !p.established).count();
                    if pending >= MAX_PENDING_HANDSHAKES {
                        warn!("peer_refused event=handshake_cap from={from}");
                        continue;
                    }
                    self.add_conn(stream, None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accept_error event=accept_error error={e}");
                    return;
                }
            }
        }
    }

    pub(super) fn peer_io(&mut self, key: usize, writable: bool) {
        let Some(pc) = self.peers.get_mut(key) else {
            return;
        };
        if pc.connecting {
            if !writable {
                return;
            }
            let err = match pc.conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => pc.conn.stream.peer_addr().err(),
            };
            if let Some(e) = err {
                if e.kind() == std::io::ErrorKind::NotConnected {
                    return; // not connected yet (mio: wait for the next writable event)
                }
                return self.drop_peer(key, &format!("connect failed: {e}"));
            }
            pc.connecting = false;
        }
        if pc.peer.is_none() && !self.core.is_started() {
            // A peer that got the client list before us dialled in: leave its hello in the
            // socket until our own client list arrives (see `server_io`).
            pc.deferred = true;
            return;
        }
        let mut inbound = Vec::new();
        let r = pc.conn.read(&mut self.bufs, &mut inbound);
        for x in inbound {
            if let Err(reason) = self.peer_inbound(key, x) {
                return self.drop_peer(key, &reason);
            }
        }
        if let Err(e) = r {
            self.drop_peer(key, &e.to_string());
        }
    }

    fn peer_inbound(&mut self, key: usize, x: Inbound) -> Result<(), String> {
        let now = now_us();
        let pc = self.peers.get_mut(key).ok_or("gone")?;
        match (pc.established, pc.peer, x) {
            (false, dialled, Inbound::Msg(m)) => {
                let core = &self.core;
                // An incoming link: the core says whether that id may dial in at all.
                let key_for = |id| {
                    if dialled.is_none() {
                        core.may_dial_in(id)?;
                    }
                    core.peer_key(id)
                };
                let (reply, open) = match pc.hs.on_message(core.id(), m, key_for)? {
                    HsStep::Wait(r) => (r, None),
                    HsStep::Established(id, r) => (r, Some(id)),
                };
                for m in &reply {
                    pc.conn.queue(m);
                }
                let Some(id) = open else { return Ok(()) };
                if dialled.is_none() {
                    if let Some(old) = self.by_peer.get(&id).copied().filter(|&k| k != key) {
                        // A member that proved who it is dials in while its old link still
                        // looks alive: it was restarted, and the old link is dead.
                        self.drop_peer(old, "the peer connected again");
                    }
                    // Checked again: another link for that id may have opened meanwhile.
                    self.core.accept_peer(id)?;
                }
                let pc = self.peers.get_mut(key).ok_or("gone")?;
                pc.peer = Some(id);
                pc.established = true;
                // Accepted before the welcome, the connection could not know the chunk size.
                pc.conn.decoder.set_max_piece(self.core.chunk_size());
                self.by_peer.insert(id, key);
                self.core.on_peer_connected(id, now);
                Ok(())
            }
            (false, _, _) => Err("piece before the peer handshake was complete".into()),
            (true, Some(p), Inbound::Msg(m)) => self.core.on_peer_message(p, m, now),
            (true, Some(p), Inbound::Piece { chunk, data }) => {
                // Checked before the core books the piece, so an error here leaks no slot.
                let Some(out) = self.files.get(&chunk.file).and_then(|f| f.output.as_ref()) else {
                    self.bufs.put(data);
                    return Err(format!(
                        "piece {chunk} for a file this node does not download"
                    ));
                };
                let out = Arc::clone(&out.file);
                match self.core.on_piece(p, chunk, data.len(), now) {
                    PieceVerdict::Verify {
                        prev,
                        expect,
                        last,
                        offset,
                        requested_at,
                    } => {
                        self.pool.submit(Job::Verify {
                            peer: p,
                            chunk,
                            data,
                            prev,
                            expect,
                            last,
                            out,
                            offset,
                            requested_at,
                        });
                        Ok(())
                    }
                    PieceVerdict::Discard => {
                        self.bufs.put(data);
                        Ok(())
                    }
                    PieceVerdict::Violation(r) => {
                        self.bufs.put(data);
                        Err(r)
                    }
                }
            }
            (true, None, _) => Err("no peer id".into()),
        }
    }

    /// Drops connections that did not complete their handshake in time: a dial that hangs, or
    /// a stranger that connects and says nothing, must not hold a slot.
    pub(super) fn expire_handshakes(&mut self) {
        let stale: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.established && !p.deferred && p.since.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.drop_peer(k, &format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
        }
    }

    pub(super) fn drop_peer(&mut self, key: usize, reason: &str) {
        let Some(mut pc) = self.peers.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut pc.conn.stream);
        if let Some(p) = pc.peer {
            if self.by_peer.get(&p) == Some(&key) {
                self.by_peer.remove(&p);
            }
            if pc.established {
                self.core.on_peer_lost(p, reason, now_us());
            } else {
                self.core.on_dial_failed(p, reason, now_us());
            }
        } else {
            warn!("peer_error event=handshake_failed reason={reason:?}");
        }
    }

    pub(super) fn connect(&mut self, peer: PeerId, addr: &str) {
        let Ok(sa) = addr.parse::<SocketAddr>() else {
            warn!(
                "peer_error event=bad_peer_address peer={} addr={addr:?}",
                self.core.peer_name(peer)
            );
            return;
        };
        let stream = match TcpStream::connect(sa) {
            Ok(s) => s,
            Err(e) => return self.core.on_dial_failed(peer, &e.to_string(), now_us()),
        };
        if let Some(key) = self.add_conn(stream, Some(peer)) {
            self.by_peer.insert(peer, key);
        }
    }

    /// Registers a new peer connection: accepted (`peer` unknown until its hello) or dialled
    /// (`peer` known; its connect is in progress and our hello is queued first).
    fn add_conn(&mut self, mut stream: TcpStream, peer: Option<PeerId>) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let entry = self.peers.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut stream, Token(key + FIRST_PEER), interest)
            .ok()?;
        let mut conn = Conn::new(stream, self.core.chunk_size());
        let nonce = self.core.peer_nonce();
        let hs = match peer {
            Some(p) => {
                let (hs, hello) = PeerHandshake::dial(self.core.id(), p, nonce);
                conn.queue(&hello);
                hs
            }
            None => PeerHandshake::accept(nonce),
        };
        entry.insert(PeerConn {
            conn,
            hs,
            peer,
            connecting: peer.is_some(),
            established: false,
            deferred: false,
            since: Instant::now(),
        });
        Some(key)
    }

    /// Tops up each peer's queue of outgoing pieces and writes what each socket takes.
    pub(super) fn serve_and_flush(&mut self) {
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for key in keys {
            while let Some(pc) = self.peers.get_mut(key) {
                if pc.connecting {
                    break;
                }
                if let Some(p) = pc.peer.filter(|_| pc.established) {
                    while pc.conn.pieces_queued() < PIECES_QUEUED {
                        let Some((c, offset, len)) = self.core.next_piece(p) else {
                            break;
                        };
                        let Some(f) = self.files.get_mut(&c.file) else {
                            break;
                        };
                        let Some(m) = f.map.clone() else {
                            break;
                        };
                        f.sent += u64::from(len);
                        pc.conn.queue_piece(c, m, offset as usize, len as usize);
                    }
                }
                match pc.conn.flush() {
                    Ok(true) => {
                        let more = pc.peer.is_some_and(|p| self.core.has_pieces_for(p));
                        if !more {
                            break;
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.drop_peer(key, &e.to_string());
                        break;
                    }
                }
            }
        }
        if let Some(s) = self.server.as_mut()
            && let Err(e) = s.flush()
        {
            warn!("server_error event=server_connection_error error={e}");
            self.server = None;
            self.core.on_server_lost();
            self.actions();
        }
    }
}
