//! The server's session state machine, sans-IO: admits clients, numbers them and their files,
//! relays the manifest (file table, chunk digests, whole-file digests), records progress and
//! completion, and builds the summary. Joining is in `join`; lost clients, their return and
//! the end of the run are in `loss`. `now` is the System Clock in µs (0 at start).

use crate::auth::ServerMembership;
use crate::codec::{FileInfo, MAX_CONTROL_FRAME, MAX_DIGESTS_PER_FRAME, Message, PeerInfo};
use crate::geometry::Geometry;
use crate::ids::{Digest, FileId, PeerId, check_file_name, hex};
use crate::summary::{ClientSummary, FileSummary, Summary};
use log::{debug, info, warn};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

mod join;
mod loss;

/// Most files one client may share.
pub const MAX_FILES_PER_CLIENT: usize = 1000;

/// How long the server waits, by default, for a lost client to come back (and for clients that
/// cannot progress without it) before it ends the run as failed (µs).
pub const DEFAULT_REJOIN_WAIT_US: u64 = 30_000_000;

/// The shell's handle for one connection.
pub type ConnId = usize;

#[derive(Debug, PartialEq, Eq)]
pub enum ServerAction {
    Send(ConnId, Message),
    /// Close after flushing what was queued for it.
    Close(ConnId, String),
    /// The run is over: every client completed or was lost.
    Finished {
        code: i32,
    },
}

struct ClientRec {
    info: PeerInfo,
    conn: Option<ConnId>,
    files: Vec<FileId>,
    connected_at: u64,
    done_at: Option<u64>,
    lost_at: Option<u64>,
    bytes_sent: u64,
    bytes_received: u64,
    /// What earlier lives of this client sent and received (it was lost and came back).
    prev_sent: u64,
    prev_received: u64,
    /// Chunks it lacks and cannot get from anyone it reaches (0: it can progress).
    stuck: u32,
    files_done: u32,
    completed: BTreeSet<FileId>,
    /// The client's last clock report: offset, error, largest error so far (µs).
    clock: Option<(i64, u64, u64)>,
}

struct FileRec {
    info: FileInfo,
    chunks: u32,
    digests: Vec<Digest>,
    whole: Option<Digest>,
}

pub struct ServerCore {
    expected: u32,
    chunk_size: u32,
    conns: BTreeMap<ConnId, Option<PeerId>>,
    clients: BTreeMap<PeerId, ClientRec>,
    files: Vec<FileRec>,
    started: bool,
    finished: bool,
    manifest_logged: bool,
    /// Size the start message would have now (bounded by the control frame cap).
    start_bytes: usize,
    /// How long to wait for a lost client to come back (µs).
    rejoin_wait: u64,
    /// Since when no client can progress (each is done, lost or stuck), if so.
    settled_since: Option<u64>,
    actions: VecDeque<ServerAction>,
    /// Who may join, and the run key the members' pair keys come from (see `auth`).
    member: ServerMembership,
}

impl ServerCore {
    pub fn new(expected: u32, chunk_size: u32) -> Self {
        ServerCore {
            expected,
            chunk_size,
            conns: BTreeMap::new(),
            clients: BTreeMap::new(),
            files: Vec::new(),
            started: false,
            finished: false,
            manifest_logged: false,
            start_bytes: 16,
            rejoin_wait: DEFAULT_REJOIN_WAIT_US,
            settled_since: None,
            actions: VecDeque::new(),
            // A fixed seed, for tests and the simulator; the server sets a random one.
            member: ServerMembership::new(None, [0; 32]),
        }
    }

    /// How long a lost client may take to come back before the run ends without it (µs).
    pub fn set_rejoin_wait(&mut self, us: u64) {
        self.rejoin_wait = us;
    }

    /// Time passes: a run that nobody can progress ends once the rejoin wait is over.
    pub fn on_tick(&mut self, now: u64) {
        self.check_finish(now);
    }

    /// The token (if any) and the random seed of this run's membership (see `auth`).
    pub fn set_membership(&mut self, m: ServerMembership) {
        self.member = m;
    }

    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether `conn` has said hello (and so is a client of the run).
    pub fn is_identified(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(Option::is_some)
    }

    pub fn on_connect(&mut self, conn: ConnId, from: &str) {
        debug!("accepted event=connection_accepted conn={conn} from={from}");
        self.conns.insert(conn, None);
        self.member.forget(conn);
    }

    fn close(&mut self, conn: ConnId, reason: String) {
        warn!("protocol_error event=connection_closed conn={conn} reason={reason:?}");
        self.actions.push_back(ServerAction::Close(conn, reason));
    }

    fn refuse(&mut self, conn: ConnId, reason: String) {
        warn!("refused event=client_refused conn={conn} reason={reason:?}");
        self.actions.push_back(ServerAction::Send(
            conn,
            Message::Refuse {
                reason: reason.clone(),
            },
        ));
        self.actions.push_back(ServerAction::Close(conn, reason));
    }

    pub fn on_message(&mut self, conn: ConnId, msg: Message, now: u64) {
        let Some(&who) = self.conns.get(&conn) else {
            return;
        };
        match (who, msg) {
            (None, hello @ Message::Hello { .. }) => self.join(conn, hello, now),
            (None, Message::Auth { nonce, mac }) => self.on_auth(conn, nonce, mac, now),
            (None, m) => self.close(conn, format!("{} before {}", m.name(), self.awaited(conn))),
            (Some(_), Message::Hello { .. }) => self.close(conn, "second hello".into()),
            (
                Some(id),
                Message::ChunkDigests {
                    file,
                    first,
                    digests,
                },
            ) => self.on_digests(conn, id, file, first, digests),
            (Some(id), Message::FileDigest { file, md5 }) => self.on_whole(conn, id, file, md5),
            (Some(_), Message::Ping { client_us }) => {
                let pong = Message::Pong {
                    client_us,
                    server_us: now,
                };
                self.actions.push_back(ServerAction::Send(conn, pong));
            }
            (
                Some(id),
                Message::ClockReport {
                    offset_us,
                    error_us,
                    max_error_us,
                },
            ) => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.clock = Some((offset_us, error_us, max_error_us));
                    debug!(
                        "clock event=clock_report client={} offset_ms={:.3} error_ms={:.3} max_error_ms={:.3}",
                        c.info.name,
                        offset_us as f64 / 1000.0,
                        error_us as f64 / 1000.0,
                        max_error_us as f64 / 1000.0
                    );
                }
            }
            (
                Some(id),
                Message::Progress {
                    bytes_received,
                    bytes_sent,
                    have,
                },
            ) => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.bytes_received = bytes_received;
                    c.bytes_sent = bytes_sent;
                    let have: Vec<String> =
                        have.iter().map(|(f, n)| format!("{}:{n}", f.0)).collect();
                    debug!(
                        "progress event=progress_received client={} have={} bytes_received={bytes_received} bytes_sent={bytes_sent}",
                        c.info.name,
                        have.join(",")
                    );
                }
            }
            (Some(id), Message::FileComplete { file }) => {
                let Some(c) = self.clients.get_mut(&id) else {
                    return;
                };
                let Some(f) = self.files.get(file.0 as usize) else {
                    return self.close(conn, format!("completion of unknown file {}", file.0));
                };
                if f.info.owner == id || !c.completed.insert(file) {
                    return self.close(conn, format!("bad completion of file {}", f.info.name));
                }
                c.files_done += 1;
                let ms = now.saturating_sub(c.connected_at) as f64 / 1000.0;
                info!(
                    "file_complete event=file_complete_received client={} file={} elapsed_ms={ms:.3}",
                    c.info.name, f.info.name
                );
            }
            (
                Some(id),
                Message::Done {
                    bytes_received,
                    bytes_sent,
                },
            ) => self.on_done(conn, id, bytes_received, bytes_sent, now),
            (Some(id), Message::Stuck { chunks }) => self.on_stuck(id, chunks, now),
            (Some(_), m) => self.close(conn, format!("unexpected {} from a client", m.name())),
        }
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        listen: String,
        name: String,
        files: Vec<crate::codec::FileDecl>,
        now: u64,
    ) {
        if let Some(id) = self.lost_member(&name, &files) {
            return self.rejoin(conn, id, listen, now);
        }
        if self.started || self.clients.len() as u32 >= self.expected {
            return self.refuse(conn, format!("the run is full ({} clients)", self.expected));
        }
        // The start message lists every client and file of the run in one control frame.
        let grow: usize =
            10 + name.len() + listen.len() + files.iter().map(|f| 18 + f.name.len()).sum::<usize>();
        if files.len() > MAX_FILES_PER_CLIENT
            || self.start_bytes + grow > MAX_CONTROL_FRAME as usize - 64
        {
            return self.refuse(
                conn,
                format!("too many files ({}) for one run", files.len()),
            );
        }
        if listen.parse::<SocketAddr>().is_err() {
            return self.refuse(conn, format!("bad listen address {listen:?}"));
        }
        let id = PeerId(self.clients.len() as u32 + 1);
        let name = if name.is_empty() {
            format!("client{}", id.0)
        } else {
            name
        };
        if let Err(e) = check_file_name(&name) {
            return self.refuse(conn, format!("bad client name {name:?}: {e}"));
        }
        if self.clients.values().any(|c| c.info.name == name) {
            return self.refuse(conn, format!("client name {name:?} is taken"));
        }
        let mut seen: BTreeSet<&str> = self.files.iter().map(|f| f.info.name.as_str()).collect();
        for f in &files {
            if let Err(e) = check_file_name(&f.name) {
                return self.refuse(conn, format!("bad file name {:?}: {e}", f.name));
            }
            if !seen.insert(&f.name) {
                return self.refuse(
                    conn,
                    format!("file name {:?} is already in the run", f.name),
                );
            }
            if Geometry::new(f.size, self.chunk_size)
                .checked_chunk_count()
                .is_none()
            {
                return self.refuse(conn, format!("file {:?} is too large", f.name));
            }
        }
        let mut ids = Vec::new();
        for f in files {
            let fid = FileId(self.files.len() as u32);
            ids.push(fid);
            let chunks = Geometry::new(f.size, self.chunk_size).chunk_count();
            let info = FileInfo {
                id: fid,
                owner: id,
                name: f.name,
                size: f.size,
            };
            self.files.push(FileRec {
                info,
                chunks,
                digests: Vec::new(),
                whole: None,
            });
        }
        let info = PeerInfo {
            id,
            name: name.clone(),
            addr: listen,
        };
        info!(
            "client_connected event=client_connected client={name} id={} addr={} files={}",
            id.0,
            info.addr,
            ids.len()
        );
        self.clients.insert(
            id,
            ClientRec {
                info,
                conn: Some(conn),
                files: ids.clone(),
                connected_at: now,
                done_at: None,
                lost_at: None,
                bytes_sent: 0,
                bytes_received: 0,
                prev_sent: 0,
                prev_received: 0,
                stuck: 0,
                files_done: 0,
                completed: BTreeSet::new(),
                clock: None,
            },
        );
        self.conns.insert(conn, Some(id));
        self.start_bytes += grow;
        self.actions.push_back(ServerAction::Send(
            conn,
            Message::Welcome {
                id,
                name,
                clock_us: now,
                chunk_size: self.chunk_size,
                clients: self.expected,
                files: ids,
            },
        ));
        if self.clients.len() as u32 == self.expected {
            self.start();
        }
    }

    /// The chunk digests of file `fi` known so far, and its whole-file MD5 if known.
    fn digest_msgs(&self, fi: usize) -> Vec<Message> {
        let f = &self.files[fi];
        let file = f.info.id;
        let mut out: Vec<Message> = f
            .digests
            .chunks(MAX_DIGESTS_PER_FRAME)
            .enumerate()
            .map(|(k, d)| Message::ChunkDigests {
                file,
                first: (k * MAX_DIGESTS_PER_FRAME) as u32,
                digests: d.to_vec(),
            })
            .collect();
        if let Some(md5) = f.whole {
            out.push(Message::FileDigest { file, md5 });
        }
        out
    }

    fn live_conns(&self) -> Vec<(PeerId, ConnId)> {
        self.clients
            .iter()
            .filter_map(|(id, c)| c.conn.map(|k| (*id, k)))
            .collect()
    }

    fn start(&mut self) {
        self.started = true;
        let peers: Vec<PeerInfo> = self.clients.values().map(|c| c.info.clone()).collect();
        let files: Vec<FileInfo> = self.files.iter().map(|f| f.info.clone()).collect();
        info!(
            "client_list event=client_list_broadcast clients={} files={}",
            peers.len(),
            files.len()
        );
        // The report needs every file's owner and size to know what each client holds.
        for f in &self.files {
            let owner = self
                .clients
                .get(&f.info.owner)
                .map(|c| c.info.name.as_str());
            info!(
                "file event=file_listed file={} id={} owner={} size={} chunks={}",
                f.info.name,
                f.info.id.0,
                owner.unwrap_or("?"),
                f.info.size,
                f.chunks
            );
        }
        for (_, conn) in self.live_conns() {
            self.actions.push_back(ServerAction::Send(
                conn,
                Message::Start {
                    peers: peers.clone(),
                    files: files.clone(),
                },
            ));
        }
        // Digests that arrived before the start go out now.
        for fi in 0..self.files.len() {
            let owner = self.files[fi].info.owner;
            for m in self.digest_msgs(fi) {
                self.relay(owner, m);
            }
        }
        self.manifest_check();
    }

    /// Sends to every live client but `except` (the file's owner, which has the data).
    fn relay(&mut self, except: PeerId, msg: Message) {
        for (id, conn) in self.live_conns() {
            if id != except {
                self.actions
                    .push_back(ServerAction::Send(conn, msg.clone()));
            }
        }
    }

    fn owned_file(&self, id: PeerId, file: FileId) -> Option<usize> {
        let f = self.files.get(file.0 as usize)?;
        (f.info.owner == id).then_some(file.0 as usize)
    }

    fn on_digests(
        &mut self,
        conn: ConnId,
        id: PeerId,
        file: FileId,
        first: u32,
        digests: Vec<Digest>,
    ) {
        let Some(fi) = self.owned_file(id, file) else {
            return self.close(conn, format!("digests for file {} it does not own", file.0));
        };
        let f = &mut self.files[fi];
        let known = f.digests.len();
        let (first, digests) = if (first as usize) < known {
            // A rejoined owner hashes its file again: what it sends must be what it sent before.
            // Its batches need not end where the first life's did: the rest is new.
            let end = (first as usize + digests.len()).min(known);
            if f.digests[first as usize..end] != digests[..end - first as usize] {
                let reason = format!("the digests of {} changed since it joined", f.info.name);
                return self.close(conn, reason);
            }
            if end == first as usize + digests.len() {
                return;
            }
            (known as u32, digests[end - first as usize..].to_vec())
        } else {
            (first, digests)
        };
        let n = digests.len() as u32;
        if first as usize != known || first.checked_add(n).is_none_or(|e| e > f.chunks) {
            return self.close(conn, format!("digests {first}+{n} out of order or range"));
        }
        f.digests.extend_from_slice(&digests);
        if f.digests.len() as u32 == f.chunks {
            info!(
                "md5_received event=chunk_md5_received file={} chunks={}",
                f.info.name, f.chunks
            );
        }
        if self.started {
            self.relay(
                id,
                Message::ChunkDigests {
                    file,
                    first,
                    digests,
                },
            );
        }
        self.manifest_check();
    }

    fn on_whole(&mut self, conn: ConnId, id: PeerId, file: FileId, md5: Digest) {
        let Some(fi) = self.owned_file(id, file) else {
            return self.close(
                conn,
                format!("file digest for file {} it does not own", file.0),
            );
        };
        let f = &mut self.files[fi];
        match f.whole {
            Some(w) if w == md5 => return,
            Some(_) => {
                let reason = format!("the MD5 of {} changed", f.info.name);
                return self.close(conn, reason);
            }
            None => {}
        }
        f.whole = Some(md5);
        info!(
            "md5_received event=file_md5_received file={} md5={}",
            f.info.name,
            hex(&md5)
        );
        if self.started {
            self.relay(id, Message::FileDigest { file, md5 });
        }
        self.manifest_check();
    }

    /// Logs once, when every file's chunk digests and whole-file MD5 are known and relayed.
    fn manifest_check(&mut self) {
        if self.manifest_logged || !self.started {
            return;
        }
        if self
            .files
            .iter()
            .all(|f| f.whole.is_some() && f.digests.len() as u32 == f.chunks)
        {
            self.manifest_logged = true;
            info!(
                "manifest event=manifest_complete files={}",
                self.files.len()
            );
        }
    }

    fn on_done(
        &mut self,
        conn: ConnId,
        id: PeerId,
        bytes_received: u64,
        bytes_sent: u64,
        now: u64,
    ) {
        let total = self.files.len();
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.done_at.is_some() {
            return;
        }
        if !self.started || c.completed.len() + c.files.len() != total {
            let reason = format!(
                "done after completing {} of {} files",
                c.completed.len(),
                total - c.files.len()
            );
            return self.close(conn, reason);
        }
        c.done_at = Some(now);
        c.bytes_received = bytes_received;
        c.bytes_sent = bytes_sent;
        c.stuck = 0;
        let ms = now.saturating_sub(c.connected_at) as f64 / 1000.0;
        info!(
            "client_done event=client_complete client={} elapsed_ms={ms:.3} bytes_received={bytes_received} bytes_sent={bytes_sent}",
            c.info.name
        );
        self.check_finish(now);
    }

    pub fn summary(&self, now: u64) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        let ms_signed = |us: i64| us as f64 / 1000.0;
        let clients: Vec<ClientSummary> = self
            .clients
            .values()
            .map(|c| ClientSummary {
                id: c.info.id.0,
                name: c.info.name.clone(),
                addr: c.info.addr.clone(),
                connect_ms: ms(c.connected_at),
                done_ms: c.done_at.map(ms),
                elapsed_ms: c.done_at.map(|d| ms(d.saturating_sub(c.connected_at))),
                bytes_sent: c.prev_sent + c.bytes_sent,
                bytes_received: c.prev_received + c.bytes_received,
                files: c
                    .files
                    .iter()
                    .map(|f| self.files[f.0 as usize].info.name.clone())
                    .collect(),
                files_completed: c.files_done,
                complete: c.done_at.is_some(),
                clock_offset_ms: c.clock.map(|x| ms_signed(x.0)),
                clock_error_ms: c.clock.map(|x| ms(x.1)),
                clock_max_error_ms: c.clock.map(|x| ms(x.2)),
            })
            .collect();
        let first = self
            .clients
            .values()
            .map(|c| c.connected_at)
            .min()
            .unwrap_or(0);
        let last = self
            .clients
            .values()
            .filter_map(|c| c.done_at)
            .max()
            .unwrap_or(now);
        Summary {
            clients,
            files: self
                .files
                .iter()
                .map(|f| FileSummary {
                    name: f.info.name.clone(),
                    owner: self
                        .clients
                        .get(&f.info.owner)
                        .map(|c| c.info.name.clone())
                        .unwrap_or_default(),
                    size: f.info.size,
                    chunks: f.chunks,
                    md5: f.whole.map(|d| hex(&d)).unwrap_or_default(),
                })
                .collect(),
            chunk_size: self.chunk_size,
            total_ms: ms(last.saturating_sub(first)),
            end_ms: ms(now),
            lower_bound: None,
        }
    }
}
