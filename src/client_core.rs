//! The client's session state machine, sans-IO: it takes messages from the server and from
//! peers, hash results and the time (`now`, µs on the node's monotonic clock) and returns
//! [`Action`]s for the reactor shell to carry out. It owns the run's file table, the chunk
//! digests, the scheduler, and the decision of when a file is complete.

use crate::auth::ClientMembership;
use crate::bits::BitSet;
use crate::codec::{FileDecl, FileInfo, MAX_DIGESTS_PER_FRAME, Message, PeerInfo, VERSION};
use crate::geometry::{Geometry, chunk_size_ok};
use crate::ids::{ChunkId, Digest, FileId, PeerId, check_file_name, hex};
use crate::md5x;
use crate::redial::{AfterFailure, Redial};
use crate::scheduler::{Ask, PieceOutcome, Scheduler};
pub use crate::serving::MAX_SERVE_QUEUE;
use crate::serving::{FreshReply, Serving};
use crate::summary::{ClientSummary, FileSummary, Summary};
use log::{debug, info, warn};
use std::collections::{BTreeMap, VecDeque};

mod cache;
mod files;
mod member;
mod peers;
mod resume;

/// Least time between two progress reports to the server (µs).
pub const PROGRESS_EVERY_US: u64 = 250_000;
/// How often this node tells its peers its `Load` (µs).
pub const LOAD_EVERY_US: u64 = 100_000;
/// Bad chunks after which a peer is disconnected (and not dialled again).
pub const MAX_BAD_CHUNKS: u32 = 3;
pub use crate::redial::{MAX_DIAL_FAILURES, REDIAL_BASE_US};

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    ToServer(Message),
    ToPeer(PeerId, Message),
    Connect {
        peer: PeerId,
        addr: String,
    },
    Disconnect {
        peer: PeerId,
        reason: String,
    },
    /// Create and pre-size the `.part` output file of a file this node downloads, or open the
    /// one an earlier run of this node left; then call [`ClientCore::on_output_ready`].
    CreateOutput {
        file: FileId,
    },
    /// Compute the chain values (`md5x::link`) of chunks `first..first + prevs.len()` of a
    /// `.part` an earlier run left, chunk `first + k` from `prevs[k]` (its owner's chain value of
    /// the chunk before), to find the chunks it already holds; then call
    /// [`ClientCore::on_checked`].
    Check {
        file: FileId,
        first: u32,
        prevs: Vec<Option<Digest>>,
    },
    /// Compute the chain of an own file, chunk after chunk, and call
    /// [`ClientCore::on_chained`] as its values come (the last one is the file's MD5).
    Chain {
        file: FileId,
    },
    /// Chunks `from..to` of a download are spent here (see `cache`): have the kernel write
    /// them back and drop them from the page cache.
    Uncache {
        file: FileId,
        from: u32,
        to: u32,
    },
    /// The file verified whole: rename `.part` to its final name.
    Finalize {
        file: FileId,
    },
    /// Stop the node with this exit code.
    Exit {
        code: i32,
        reason: String,
    },
}

/// What the shell must do with an arriving piece.
#[derive(Debug, PartialEq, Eq)]
pub enum PieceVerdict {
    /// Check it on the pool: its chain value from `prev` (the owner's chain value of the chunk
    /// before it; `None` for chunk 0) must be `expect` (the file's MD5 for its `last` chunk);
    /// write it at `offset` if it is.
    Verify {
        prev: Option<Digest>,
        expect: Digest,
        last: bool,
        offset: u64,
        requested_at: u64,
    },
    /// Drop it (a duplicate or a cancelled request).
    Discard,
    /// Close the connection: the peer broke the protocol.
    Violation(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Hello,
    Joined,
    Started,
    Complete,
    Exited,
}

/// One file of the run, as this node sees it.
pub struct FileSlot {
    pub info: FileInfo,
    pub geo: Geometry,
    pub owned: bool,
    digests: Vec<Digest>,
    whole: Option<Digest>,
    /// The file's MD5 as computed here: an own file's chain ended, or every chunk of a
    /// download held (`files`).
    computed: Option<Digest>,
    /// Chunks handed to the shell to drop from the page cache, and the first one not (see
    /// `cache`).
    uncached: BitSet,
    uncached_low: u32,
    /// The file's MD5 (its chain's end) matched the announced one and the rename was asked for.
    finalizing: bool,
    /// Renamed to its final name: complete.
    done: bool,
    /// Whether its output file is ready for chunks (see `resume`).
    out: resume::OutState,
}

struct PeerSlot {
    info: PeerInfo,
    connected: bool,
    /// Connected at least once in this life of this node.
    seen: bool,
    bad_chunks: u32,
    /// Used only for peers this node dials (the lower ids).
    redial: Redial,
}

pub struct ClientCore {
    name: String,
    listen: String,
    decls: Vec<FileDecl>,
    id: PeerId,
    chunk_size: u32,
    joined_at: u64,
    phase: Phase,
    files: BTreeMap<FileId, FileSlot>,
    peers: BTreeMap<PeerId, PeerSlot>,
    sched: Scheduler,
    serving: Serving,
    last_load: u64,
    /// When `peer_windows` was last logged (debug only).
    last_windows: u64,
    actions: VecDeque<Action>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    progress_dirty: bool,
    last_progress: u64,
    /// Own-file digests sent to the server so far (a prefix), and batches waiting for it.
    own_hashed: BTreeMap<FileId, u32>,
    own_pending: BTreeMap<FileId, BTreeMap<u32, Vec<Digest>>>,
    /// The server is gone after the manifest was complete: finish among the peers.
    server_gone: bool,
    /// When this node came to hold every file (server clock, µs).
    completed_at: Option<u64>,
    /// The last `Stuck` count told to the server.
    stuck_told: u32,
    /// The token, the join's proofs, and the pair keys for peer links (see `auth`).
    member: ClientMembership,
}

impl ClientCore {
    /// `listen` is the address peers should dial; `name` may be empty (the server picks one).
    /// Without a token, with a fixed seed: for tests and the simulator.
    pub fn new(name: String, listen: String, decls: Vec<FileDecl>) -> Self {
        Self::with_membership(name, listen, decls, ClientMembership::new(None, [0; 32]))
    }

    /// As `new`, with the token (if any) and the random seed of this client (see `auth`).
    pub fn with_membership(
        name: String,
        listen: String,
        decls: Vec<FileDecl>,
        member: ClientMembership,
    ) -> Self {
        let mut c = ClientCore {
            name,
            listen,
            decls,
            id: PeerId(0),
            chunk_size: 0,
            joined_at: 0,
            phase: Phase::Hello,
            files: BTreeMap::new(),
            peers: BTreeMap::new(),
            sched: Scheduler::new(PeerId(0), 0),
            serving: Serving::default(),
            last_load: 0,
            last_windows: 0,
            actions: VecDeque::new(),
            bytes_received: 0,
            bytes_sent: 0,
            progress_dirty: false,
            last_progress: 0,
            own_hashed: BTreeMap::new(),
            own_pending: BTreeMap::new(),
            server_gone: false,
            completed_at: None,
            stuck_told: 0,
            member,
        };
        let hello = Message::Hello {
            version: VERSION,
            token: c.member.has_token(),
            listen: c.listen.clone(),
            name: c.name.clone(),
            files: c.decls.clone(),
        };
        c.member.set_hello(&hello);
        c.actions.push_back(Action::ToServer(hello));
        c
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The chunk scheduler (read-only: for tests and the simulated swarm's reports).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub fn file(&self, f: FileId) -> Option<&FileSlot> {
        self.files.get(&f)
    }

    /// Whether the client list arrived (peer connections may be accepted).
    pub fn is_started(&self) -> bool {
        matches!(self.phase, Phase::Started | Phase::Complete)
    }

    /// Bytes of all the files this node downloads (known once the start message came).
    pub fn download_bytes(&self) -> u64 {
        self.downloads().map(|f| f.size).sum()
    }

    /// Every file of the run this node knows of, its own and its downloads.
    pub fn file_ids(&self) -> impl Iterator<Item = FileId> + '_ {
        self.files.keys().copied()
    }

    /// The files this node downloads (the run's files it does not own).
    pub fn downloads(&self) -> impl Iterator<Item = &FileInfo> {
        self.files.values().filter(|f| !f.owned).map(|f| &f.info)
    }

    /// Whether every file of the run is held, verified and renamed (also after the exit).
    pub fn holds_all(&self) -> bool {
        self.phase != Phase::Hello && self.files.values().all(|f| f.owned || f.done)
    }

    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Complete
    }

    /// Whether `c` is held, verified, and so may be served.
    pub fn holds(&self, c: ChunkId) -> bool {
        match self.files.get(&c.file) {
            Some(f) if f.owned => c.index < f.geo.chunk_count(),
            Some(_) => self.sched.have(c),
            None => false,
        }
    }

    fn exit(&mut self, code: i32, reason: String) {
        if self.phase != Phase::Exited {
            self.phase = Phase::Exited;
            self.actions.push_back(Action::Exit { code, reason });
        }
    }

    // ------------------------------------------------------------ server side

    pub fn on_server_message(&mut self, msg: Message, now: u64) {
        match (self.phase, msg) {
            (
                Phase::Hello,
                Message::Welcome {
                    id,
                    name,
                    chunk_size,
                    files,
                    clients,
                    ..
                },
            ) => self.on_welcome(id, name, chunk_size, files, clients, now),
            (Phase::Hello, Message::Challenge { nonce }) => self.on_challenge(nonce),
            (Phase::Hello, Message::Member { proof, keys }) => self.on_member(proof, keys),
            (_, Message::Refuse { reason }) => {
                // Info, not warn: main prints the one line stderr gets (the exit reason).
                info!("refused event=refused reason={reason:?}");
                self.exit(2, format!("the server refused this client: {reason}"));
            }
            (Phase::Joined, Message::Start { peers, files }) => self.on_start(peers, files, now),
            (
                Phase::Started | Phase::Complete,
                Message::ChunkDigests {
                    file,
                    first,
                    digests,
                },
            ) => self.on_digests(file, first, digests, now),
            (Phase::Started | Phase::Complete, Message::FileDigest { file, md5 }) => {
                self.on_whole_digest(file, md5)
            }
            (Phase::Started | Phase::Complete, Message::Rejoined { peer }) => {
                self.on_rejoined(peer, now)
            }
            (_, Message::Shutdown) => {
                info!("shutdown event=shutdown_received");
                if self.phase == Phase::Complete {
                    self.exit(0, "every client holds every file".into());
                } else {
                    let lacking = self.log_incomplete();
                    self.exit(
                        1,
                        format!("the run ended before this client held every file: {lacking}"),
                    );
                }
            }
            (phase, m) => {
                let reason = format!("unexpected {} from the server in phase {phase:?}", m.name());
                warn!("protocol_error event=server_protocol_error reason={reason:?}");
                self.exit(1, reason);
            }
        }
    }

    fn on_welcome(
        &mut self,
        id: PeerId,
        name: String,
        chunk_size: u32,
        files: Vec<FileId>,
        clients: u32,
        now: u64,
    ) {
        if let Err((code, e)) = self.member.check_welcome(id, clients) {
            return self.exit(code, e);
        }
        if let Err(e) = check_file_name(&name) {
            // The name becomes a log file's and an output directory's name.
            self.exit(
                1,
                format!("the server gave this client a bad name {name:?}: {e}"),
            );
            return;
        }
        if !chunk_size_ok(chunk_size) || files.len() != self.decls.len() {
            self.exit(
                1,
                format!(
                    "the server sent a bad welcome (chunk size {chunk_size}, {} file ids)",
                    files.len()
                ),
            );
            return;
        }
        self.id = id;
        self.name = name;
        self.chunk_size = chunk_size;
        self.joined_at = now;
        self.phase = Phase::Joined;
        self.sched = Scheduler::new(id, chunk_size);
        info!(
            "connected event=connected id={} name={} clients={clients} chunk_size={chunk_size}",
            id.0, self.name
        );
        for (fid, d) in files.iter().zip(self.decls.clone()) {
            let geo = Geometry::new(d.size, chunk_size);
            let count = geo.chunk_count();
            let info = FileInfo {
                id: *fid,
                owner: id,
                name: d.name,
                size: d.size,
            };
            self.files.insert(*fid, FileSlot::new(info, geo, true));
            self.serving.add_own(*fid, count, chunk_size);
            self.own_hashed.insert(*fid, 0);
            if count == 0 {
                self.own_md5_done(*fid, md5x::link(None, 0, &[], true));
            } else {
                self.actions.push_back(Action::Chain { file: *fid });
            }
        }
    }

    fn on_start(&mut self, peers: Vec<PeerInfo>, files: Vec<FileInfo>, now: u64) {
        if let Err(e) = self.check_start(&peers, &files) {
            self.exit(1, format!("the server sent a bad start message: {e}"));
            return;
        }
        self.phase = Phase::Started;
        let names: Vec<String> = peers
            .iter()
            .map(|p| format!("{}={}@{}", p.id.0, p.name, p.addr))
            .collect();
        info!(
            "client_list event=client_list_received clients={} files={} list={}",
            peers.len(),
            files.len(),
            names.join(",")
        );
        for f in &files {
            let geo = Geometry::new(f.size, self.chunk_size);
            self.sched.add_file(f.id, f.owner, geo.chunk_count());
            if f.owner == self.id {
                continue;
            }
            self.files
                .insert(f.id, FileSlot::new(f.clone(), geo, false));
            self.actions.push_back(Action::CreateOutput { file: f.id });
            self.maybe_complete(f.id);
        }
        for p in peers {
            if p.id == self.id {
                continue;
            }
            if p.id < self.id {
                self.actions.push_back(Action::Connect {
                    peer: p.id,
                    addr: p.addr.clone(),
                });
            }
            self.peers.insert(
                p.id,
                PeerSlot {
                    info: p,
                    connected: false,
                    seen: false,
                    bad_chunks: 0,
                    redial: Redial::default(),
                },
            );
        }
        self.check_all_done(now);
    }

    fn check_start(&self, peers: &[PeerInfo], files: &[FileInfo]) -> Result<(), String> {
        if !peers.iter().any(|p| p.id == self.id) {
            return Err("this client is not in the client list".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, f) in files.iter().enumerate() {
            if f.id.0 as usize != i {
                return Err(format!("file ids out of order at {i}"));
            }
            check_file_name(&f.name).map_err(|e| format!("file name {:?}: {e}", f.name))?;
            if !names.insert(f.name.as_str()) {
                return Err(format!("file name {:?} appears twice", f.name));
            }
            if !peers.iter().any(|p| p.id == f.owner) {
                return Err(format!("file {:?} has an unknown owner", f.name));
            }
            if Geometry::new(f.size, self.chunk_size)
                .checked_chunk_count()
                .is_none()
            {
                return Err(format!("file {:?} has too many chunks", f.name));
            }
            let mine = self.files.get(&f.id).map(|s| s.owned).unwrap_or(false);
            if mine != (f.owner == self.id) {
                return Err(format!("file {:?} has the wrong owner", f.name));
            }
        }
        Ok(())
    }

    fn on_digests(&mut self, file: FileId, first: u32, digests: Vec<Digest>, now: u64) {
        let Some(f) = self.files.get_mut(&file) else {
            self.exit(1, format!("digests for unknown file {}", file.0));
            return;
        };
        let count = f.geo.chunk_count();
        let n = digests.len() as u32;
        if f.owned
            || first as usize != f.digests.len()
            || first.checked_add(n).is_none_or(|e| e > count)
        {
            let reason = format!(
                "digests for {} out of order or range ({first}+{n})",
                f.info.name
            );
            self.exit(1, reason);
            return;
        }
        debug!(
            "digests event=chunk_digests_received file={} first={first} n={n}",
            f.info.name
        );
        f.digests.extend(digests);
        // Chunks become requestable once the output can take them (a resumed one: once checked).
        let out = f.out;
        if out == resume::OutState::Ready {
            self.sched.set_known(file, first, n);
        }
        if f.digests.len() as u32 == count {
            debug!(
                "digests event=chunk_digests_complete file={} chunks={count}",
                f.info.name
            );
            if self.digests_complete() {
                info!(
                    "digests event=all_chunk_digests_received files={}",
                    self.files.len()
                );
            }
        }
        self.check_chain_end(file);
        if self.phase == Phase::Exited {
            return;
        }
        self.manifest_check();
        if matches!(out, resume::OutState::Scanning { .. }) {
            self.scan(file);
        }
        self.fill_all(now);
    }

    fn on_whole_digest(&mut self, file: FileId, md5: Digest) {
        let Some(f) = self.files.get_mut(&file) else {
            self.exit(1, format!("file digest for unknown file {}", file.0));
            return;
        };
        if f.owned {
            let reason = format!("unexpected file digest for {}", f.info.name);
            self.exit(1, reason);
            return;
        }
        if let Err(e) = self.learn_whole_digest(file, md5) {
            self.exit(1, e);
        }
    }

    /// A file's whole-file MD5, from the server or from the file's owner (whichever comes
    /// first); a second copy must agree with the first.
    fn learn_whole_digest(&mut self, file: FileId, md5: Digest) -> Result<(), String> {
        let Some(f) = self.files.get_mut(&file) else {
            return Err(format!("file digest for unknown file {}", file.0));
        };
        match f.whole {
            Some(w) if w == md5 => return Ok(()),
            Some(_) => {
                return Err(format!(
                    "two different whole-file MD5s for {} (server and owner disagree)",
                    f.info.name
                ));
            }
            None => f.whole = Some(md5),
        }
        self.check_chain_end(file);
        self.manifest_check();
        self.maybe_finish(file);
        Ok(())
    }

    fn manifest_check(&self) {
        if self.phase == Phase::Started && self.manifest_complete() {
            info!(
                "manifest event=manifest_received files={}",
                self.files.len()
            );
        }
    }

    /// The server connection is gone.
    /// The server connection is gone. Once the manifest is complete the clients need the
    /// server no more: they finish the exchange among themselves, and each exits when every
    /// peer it can reach holds every file.
    pub fn on_server_lost(&mut self) {
        if self.phase == Phase::Exited || self.server_gone {
            return;
        }
        warn!("server_lost event=server_lost phase={:?}", self.phase);
        if matches!(self.phase, Phase::Started | Phase::Complete) && self.digests_complete() {
            self.server_gone = true;
            info!("server_lost event=continue_without_server");
            self.check_peers_done();
        } else {
            self.exit(
                1,
                "lost the server before every chunk digest was known".into(),
            );
        }
    }

    /// Whether the server was lost after the manifest and this node finished without it.
    pub fn server_gone(&self) -> bool {
        self.server_gone
    }

    /// What this node measured, in the server's summary format, for a run that ended without
    /// the server (which would otherwise write the summary): this client alone in `clients`,
    /// every file of the run in `files`. `now` is this node's clock (µs, as every `now` given
    /// to the core), `offset_us` what turns it into the server's System Clock.
    pub fn own_summary(&self, now: u64, offset_us: i64) -> Summary {
        let ms = |t: u64| (t as i64).saturating_add(offset_us) as f64 / 1000.0;
        let span = |t: u64| t.saturating_sub(self.joined_at) as f64 / 1000.0;
        let owner_name = |p: PeerId| {
            if p == self.id {
                self.name.clone()
            } else {
                self.peer_name(p)
            }
        };
        let me = ClientSummary {
            id: self.id.0,
            name: self.name.clone(),
            addr: self.listen.clone(),
            connect_ms: ms(self.joined_at),
            done_ms: self.completed_at.map(ms),
            elapsed_ms: self.completed_at.map(span),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            files: self
                .files
                .values()
                .filter(|f| f.owned)
                .map(|f| f.info.name.clone())
                .collect(),
            files_completed: self.files.values().filter(|f| !f.owned && f.done).count() as u32,
            complete: self.completed_at.is_some(),
            // The error bounds are the shell's to fill in (client_obs knows them).
            clock_offset_ms: Some(offset_us as f64 / 1000.0),
            clock_error_ms: None,
            clock_max_error_ms: None,
        };
        let files = self
            .files
            .values()
            .map(|f| FileSummary {
                name: f.info.name.clone(),
                owner: owner_name(f.info.owner),
                size: f.info.size,
                chunks: f.geo.chunk_count(),
                md5: f.whole.or(f.computed).map(|d| hex(&d)).unwrap_or_default(),
            })
            .collect();
        Summary {
            clients: vec![me],
            files,
            chunk_size: self.chunk_size,
            total_ms: self.completed_at.map_or(0.0, span),
            end_ms: ms(now),
            lower_bound: None,
        }
    }

    /// Whether every chunk digest of every file is known: from then on the server is not needed
    /// (the whole-file MD5s also come from each file's owner).
    pub fn digests_complete(&self) -> bool {
        self.files
            .values()
            .all(|f| f.owned || f.digests.len() as u32 == f.geo.chunk_count())
    }

    /// Whether every chunk digest and whole-file MD5 of every file is known.
    pub fn manifest_complete(&self) -> bool {
        self.files.values().all(|f| {
            f.owned || (f.digests.len() as u32 == f.geo.chunk_count() && f.whole.is_some())
        })
    }

    /// Without a server, nobody says the run is over: this node stops when it holds every
    /// file and every connected peer is known (from its bitfield and haves) to hold every file
    /// too, with no peer waiting to be dialled again.
    fn check_peers_done(&mut self) {
        if !self.server_gone || self.phase != Phase::Complete {
            return;
        }
        let all = self.peers.iter().all(|(p, s)| {
            if s.connected {
                self.sched.peer_complete(*p)
            } else {
                !s.redial.pending()
            }
        });
        if all {
            info!(
                "all_peers_complete event=all_peers_complete peers={}",
                self.peers.len()
            );
            self.exit(
                0,
                "the server is gone; every reachable peer holds every file".into(),
            );
        }
    }
}

impl FileSlot {
    /// Bytes of its chunks handed to the shell to drop from the page cache (`Action::Uncache`).
    pub fn uncached_bytes(&self) -> u64 {
        self.uncached
            .iter_ones()
            .map(|i| u64::from(self.geo.chunk_len(i)))
            .sum()
    }

    fn new(info: FileInfo, geo: Geometry, owned: bool) -> Self {
        FileSlot {
            info,
            geo,
            owned,
            digests: Vec::new(),
            whole: None,
            computed: None,
            uncached: BitSet::new(geo.chunk_count()),
            uncached_low: 0,
            finalizing: false,
            done: false,
            out: if owned {
                resume::OutState::Ready
            } else {
                resume::OutState::Waiting
            },
        }
    }
}
