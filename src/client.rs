//! The client node: the reactor shell around [`ClientCore`]. It owns the mio `Poll`, the
//! listener, the server connection, the peer connections (in a `Slab`, slab key + 3 = token),
//! the memory maps, the output files and the hash pool, and carries out the core's actions.

use crate::auth::{ClientMembership, HsStep, PeerHandshake};
use crate::client_core::{Action, ClientCore, PieceVerdict};
use crate::client_obs::ClientObs;
use crate::codec::{FileDecl, Message};
use crate::conn::{Conn, ConnEnd};
use crate::error::Error;
use crate::frame::{BufPool, Inbound};
use crate::geometry::Geometry;
use crate::hashpool::{Done, HashPool, Job};
use crate::ids::{FileId, PeerId};
use crate::logging::{self, LogSink, now_us};
use crate::storage::{Output, Source, Writeback};
use log::{debug, info, warn};
use memmap2::Mmap;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

mod peers;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SERVER: Token = Token(2);
const FIRST_PEER: usize = 3;
/// Pieces queued per peer connection at once: enough to keep the socket busy, few enough that
/// a cancel still finds most requests unsent.
const PIECES_QUEUED: usize = 2;
/// How often the core's timers run.
const TICK: Duration = Duration::from_millis(20);
/// Time a peer connection has to complete its handshake (connect plus hello).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most incoming connections still waiting for their hello.
const MAX_PENDING_HANDSHAKES: usize = 64;

pub struct ClientConfig {
    pub server: String,
    pub files: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub out_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub log_dir: PathBuf,
    pub hash_threads: usize,
    /// How long to keep trying to reach the server at start.
    pub connect_for: Duration,
    /// Draw this client's progress bar on stderr.
    pub progress: bool,
    /// The run's token (--token or P2PSHARE_TOKEN), if it has one.
    pub token: Option<crate::auth::Token>,
    /// Make each download durable (fdatasync) before its rename (`--no-fsync` turns it off).
    pub durable: bool,
}

/// An output opened off the reactor: the file; the output and whether an earlier life of this
/// node left it, or why it could not be opened; when its thread was spawned; how long
/// `Output::open` took (the last two for the debug event `output_ready`).
type Opened = (FileId, Result<(Output, bool), String>, Instant, Duration);

struct PeerConn {
    conn: Conn,
    peer: Option<PeerId>,
    /// Outgoing and waiting for the connect to finish.
    connecting: bool,
    /// The peer proved its membership (see `auth`) and the core was told.
    established: bool,
    hs: PeerHandshake,
    /// Readable before this node started: to be read once it has.
    deferred: bool,
    /// When the connection was accepted or dialled (for the handshake timeout).
    since: Instant,
}

/// Where a file's bytes are read from when serving and hashing.
struct FileIo {
    map: Option<Arc<Mmap>>,
    geo: Geometry,
    output: Option<Output>,
    /// Payload bytes of this file's pieces queued for peers (logged at exit as file_uploaded:
    /// the per-file split of bytes_sent, e.g. how often an owner sent its own file).
    sent: u64,
}

struct Client {
    poll: Poll,
    core: ClientCore,
    server: Option<Conn>,
    listener: TcpListener,
    peers: Slab<PeerConn>,
    by_peer: BTreeMap<PeerId, usize>,
    pool: HashPool,
    /// The writeback thread (`storage::writeback_thread`), which the pool's workers also feed.
    writeback: Sender<Writeback>,
    bufs: BufPool,
    files: BTreeMap<FileId, FileIo>,
    sources: Vec<Source>,
    out_dir: Option<PathBuf>,
    /// Whether the out-dir's free space was checked against all downloads (once, at start).
    space_checked: bool,
    log_dir: PathBuf,
    sink: LogSink,
    /// The clock exchanges with the server and the progress bar.
    obs: ClientObs,
    exit: Option<(i32, String)>,
    waker: Arc<Waker>,
    /// Results of finalizations (fsync and rename), which run on their own threads.
    finals_tx: Sender<(FileId, Result<(), String>)>,
    /// `ClientConfig::durable`.
    durable: bool,
    finals_rx: Receiver<(FileId, Result<(), String>)>,
    /// Outputs created or opened (`Output::open`), which run on their own threads.
    opened_tx: Sender<Opened>,
    opened_rx: Receiver<Opened>,
}

fn connect_server(addr: &str, give_up: Duration) -> Result<std::net::TcpStream, Error> {
    let deadline = Instant::now() + give_up;
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = addr
            .to_socket_addrs()
            .map_err(|e| Error::Usage(format!("cannot resolve server address {addr:?}: {e}")))?
            .next()
            .ok_or_else(|| Error::Usage(format!("server address {addr:?} resolves to nothing")))
            .and_then(|sa| {
                std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(3))
                    .map_err(|e| Error::Usage(e.to_string()))
            });
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + backoff >= deadline => {
                return Err(Error::Usage(format!(
                    "cannot reach the server at {addr} after {give_up:?}: {e}"
                )));
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

pub fn run(cfg: ClientConfig) -> Result<i32, Error> {
    let sink = logging::init(cfg.name.as_deref().unwrap_or("client"));
    crate::conn::raise_fd_limit(4096);
    if let Some(n) = &cfg.name {
        crate::ids::check_file_name(n)
            .map_err(|e| Error::Usage(format!("bad --name {n:?}: {e}")))?;
        sink.open(&cfg.log_dir, n).map_err(|e| {
            Error::Usage(format!(
                "cannot write logs in {}: {e}",
                cfg.log_dir.display()
            ))
        })?;
    }
    let mut sources = Vec::new();
    for p in &cfg.files {
        sources.push(Source::open(p)?);
    }
    let mut names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Usage(
            "two --file arguments have the same file name".into(),
        ));
    }
    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Usage(e.to_string()))?
        .port();
    let std_stream = connect_server(&cfg.server, cfg.connect_for)?;
    let local_ip = std_stream
        .local_addr()
        .map_err(|e| Error::Usage(e.to_string()))?
        .ip();
    std_stream
        .set_nonblocking(true)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let _ = std_stream.set_nodelay(true);
    let advertise = match &cfg.advertise {
        Some(h) if h.parse::<SocketAddr>().is_ok() => h.clone(),
        Some(h) => {
            let ip: std::net::IpAddr = h
                .parse()
                .map_err(|_| Error::Usage(format!("--advertise {h:?} is not an IP address")))?;
            SocketAddr::new(ip, port).to_string()
        }
        None => SocketAddr::new(local_ip, port).to_string(),
    };
    let decls = sources
        .iter()
        .map(|s| FileDecl {
            name: s.name.clone(),
            size: s.size,
        })
        .collect();
    let seed = crate::crypto::os_seed()
        .map_err(|e| Error::Usage(format!("cannot read /dev/urandom: {e}")))?;
    let core = ClientCore::with_membership(
        cfg.name.clone().unwrap_or_default(),
        advertise.clone(),
        decls,
        ClientMembership::new(cfg.token.clone(), seed),
    );

    let poll = Poll::new().map_err(|e| Error::Usage(format!("cannot create poll: {e}")))?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| Error::Usage(e.to_string()))?);
    let pool_waker = Arc::clone(&waker);
    let (finals_tx, finals_rx) = channel();
    let (opened_tx, opened_rx) = channel();
    let writeback = crate::storage::writeback_thread(cfg.durable)
        .map_err(|e| Error::Usage(format!("cannot start the writeback thread: {e}")))?;
    let pool = HashPool::new(
        cfg.hash_threads,
        Arc::new(move || {
            let _ = pool_waker.wake();
        }),
        writeback.clone(),
    )
    .map_err(|e| Error::Usage(format!("cannot start hash threads: {e}")))?;
    let mut server = Conn::new(TcpStream::from_std(std_stream), 0);
    let mut listener = listener;
    poll.registry()
        .register(
            &mut server.stream,
            SERVER,
            Interest::READABLE | Interest::WRITABLE,
        )
        .and_then(|_| {
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
        })
        .map_err(|e| Error::Usage(format!("cannot register sockets: {e}")))?;
    info!(
        "start event=client_start server={} listen={} advertise={advertise} files={}",
        cfg.server,
        cfg.listen,
        sources.len()
    );
    let mut c = Client {
        poll,
        core,
        server: Some(server),
        listener,
        peers: Slab::new(),
        by_peer: BTreeMap::new(),
        pool,
        writeback,
        bufs: BufPool::default(),
        files: BTreeMap::new(),
        sources,
        out_dir: cfg.out_dir,
        space_checked: false,
        log_dir: cfg.log_dir,
        sink,
        obs: ClientObs::new(cfg.progress, now_us()),
        exit: None,
        waker,
        finals_tx,
        durable: cfg.durable,
        finals_rx,
        opened_tx,
        opened_rx,
    };
    c.run_loop()
}

impl Client {
    /// Without a server there is nobody to write the run's summary: each client writes what it
    /// measured itself to `LOG_DIR/NAME.summary.json`, in the server's format.
    fn write_own_summary(&mut self) {
        let path = self
            .log_dir
            .join(format!("{}.summary.json", self.core.name()));
        let mut summary = self.core.own_summary(now_us(), logging::offset_us());
        self.obs.fill_clock(&mut summary, now_us());
        match summary.write_json(&path) {
            Ok(()) => info!("summary event=own_summary_written path={}", path.display()),
            Err(e) => warn!(
                "summary event=own_summary_failed path={} error={e}",
                path.display()
            ),
        }
    }

    fn run_loop(&mut self) -> Result<i32, Error> {
        let mut events = Events::with_capacity(256);
        let mut last_tick = Instant::now();
        self.actions();
        loop {
            if let Some((code, reason)) = self.exit.take() {
                self.obs.finish();
                if let Some(s) = self.server.as_mut() {
                    let _ = s.flush();
                }
                // Every file gets its line, also one this node never touched (an empty one).
                let ids: Vec<FileId> = self.core.file_ids().collect();
                for id in ids {
                    let _ = self.file_io(id);
                }
                for (id, f) in &self.files {
                    if let Some(slot) = self.core.file(*id) {
                        info!(
                            "uploaded event=file_uploaded file={} bytes={}",
                            slot.info.name, f.sent
                        );
                        if !slot.owned {
                            info!(
                                "uncached event=file_uncached file={} bytes={}",
                                slot.info.name,
                                slot.uncached_bytes()
                            );
                        }
                    }
                }
                if code == 0 {
                    // Quiet on success unless asked: a script's terminal belongs to the server.
                    if self.obs.shows_progress() {
                        eprintln!("{}: {reason}", self.core.name());
                    }
                }
                // Into the log file only: on a failure, main prints the one line stderr gets.
                info!("exit event=exit code={code} reason={reason:?}");
                if self.core.server_gone() {
                    self.write_own_summary();
                }
                log::logger().flush();
                return if code == 0 {
                    Ok(0)
                } else if code == 2 {
                    Err(Error::Usage(reason))
                } else {
                    Err(Error::Failed(reason))
                };
            }
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(Error::Failed(format!("poll failed: {e}")));
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    SERVER => self.server_io(),
                    Token(t) => self.peer_io(t - FIRST_PEER, ev.is_writable()),
                }
            }
            self.results();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.expire_handshakes();
                self.core.on_tick(now_us());
                self.obs.on_tick(now_us());
                // A node killed mid-run loses at most one tick of its log.
                log::logger().flush();
            }
            self.actions();
            self.serve_and_flush();
        }
    }

    fn server_io(&mut self) {
        let Some(s) = self.server.as_mut() else {
            return;
        };
        let mut inbound = Vec::new();
        let r = s.read(&mut self.bufs, &mut inbound);
        for x in inbound {
            match x {
                Inbound::Msg(m) => {
                    if self.obs.on_server_message(&m, now_us()) {
                        continue;
                    }
                    if let Message::Welcome { ref name, .. } = m
                        && crate::ids::check_file_name(name).is_ok()
                    {
                        // (A bad name is refused by the core below, before any use as a path.)
                        logging::set_node(name);
                        if let Err(e) = self.sink.open(&self.log_dir, name) {
                            self.exit = Some((
                                2,
                                format!("cannot write logs in {}: {e}", self.log_dir.display()),
                            ));
                        }
                        if self.out_dir.is_none() {
                            self.out_dir = Some(PathBuf::from("downloads").join(name));
                        }
                    }
                    self.core.on_server_message(m, now_us());
                }
                Inbound::Piece { data, .. } => self.bufs.put(data),
            }
        }
        let w = s.flush();
        if let Err(e) = r.and(w.map(|_| ())) {
            if !matches!(e, ConnEnd::Closed) {
                warn!("server_error event=server_connection_error error={e}");
            }
            if let Some(mut s) = self.server.take() {
                let _ = self.poll.registry().deregister(&mut s.stream);
            }
            self.core.on_server_lost();
        }
        if self.core.is_started() {
            let deferred: Vec<usize> = self
                .peers
                .iter()
                .filter(|(_, p)| p.deferred)
                .map(|(k, _)| k)
                .collect();
            for k in deferred {
                if let Some(p) = self.peers.get_mut(k) {
                    p.deferred = false;
                }
                self.peer_io(k, false);
            }
        }
    }

    fn results(&mut self) {
        while let Ok((file, r, spawned_at, took)) = self.opened_rx.try_recv() {
            debug!(
                "output event=output_ready file={} open_ms={:.1} ready_ms={:.1}",
                file.0,
                took.as_secs_f64() * 1e3,
                spawned_at.elapsed().as_secs_f64() * 1e3
            );
            match r {
                Ok((out, resumed)) => {
                    if let Some(f) = self.file_io(file) {
                        f.map = out.map.clone();
                        f.output = Some(out);
                    }
                    self.core.on_output_ready(file, resumed, now_us());
                }
                Err(e) => {
                    self.exit.get_or_insert((2, e));
                }
            }
        }
        while let Ok((file, r)) = self.finals_rx.try_recv() {
            match r {
                Ok(()) => self.core.on_finalized(file, now_us()),
                Err(e) => self.exit = Some((1, e)),
            }
        }
        while let Some(done) = self.pool.try_recv() {
            let now = now_us();
            match done {
                Done::Checked {
                    file,
                    first,
                    values,
                } => self.core.on_checked(file, first, values, now),
                Done::Chained {
                    file,
                    first,
                    values,
                } => self.core.on_chained(file, first, values),
                Done::Verified {
                    peer,
                    chunk,
                    ok,
                    data,
                    requested_at,
                    write_error,
                } => {
                    self.bufs.put(data);
                    if let Some(e) = write_error {
                        self.exit = Some((1, format!("cannot write chunk {chunk}: {e}")));
                        return;
                    }
                    self.core.on_verified(peer, chunk, ok, requested_at, now);
                }
            }
        }
    }

    fn file_io(&mut self, file: FileId) -> Option<&mut FileIo> {
        if !self.files.contains_key(&file) {
            let slot = self.core.file(file)?;
            let geo = slot.geo;
            let map = if slot.owned {
                let src = self.sources.iter().find(|s| s.name == slot.info.name)?;
                src.map.clone()
            } else {
                None
            };
            self.files.insert(
                file,
                FileIo {
                    map,
                    geo,
                    output: None,
                    sent: 0,
                },
            );
        }
        self.files.get_mut(&file)
    }

    fn actions(&mut self) {
        while let Some(m) = self.obs.poll_to_server() {
            if let Some(s) = self.server.as_mut() {
                s.queue(&m);
            }
        }
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::ToServer(m) => {
                    self.obs.on_to_server(&m, now_us());
                    if let Some(s) = self.server.as_mut() {
                        s.queue(&m);
                    }
                }
                Action::ToPeer(p, m) => {
                    if let Some(pc) = self.by_peer.get(&p).and_then(|k| self.peers.get_mut(*k)) {
                        pc.conn.queue(&m);
                    }
                }
                Action::Connect { peer, addr } => self.connect(peer, &addr),
                Action::Disconnect { peer, reason } => {
                    if let Some(k) = self.by_peer.get(&peer).copied() {
                        self.drop_peer(k, &reason);
                    }
                }
                Action::CreateOutput { file } => {
                    let Some(slot) = self.core.file(file) else {
                        continue;
                    };
                    let (name, size) = (slot.info.name.clone(), slot.info.size);
                    let dir = self
                        .out_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("downloads"));
                    if !self.space_checked {
                        self.space_checked = true;
                        // What an earlier life of this node left on disk is already allocated.
                        let held: u64 = self
                            .core
                            .downloads()
                            .map(|f| crate::storage::allocated(&dir, &f.name, f.size))
                            .sum();
                        let needed = self.core.download_bytes().saturating_sub(held);
                        if let Err(e) = crate::storage::check_space(&dir, needed) {
                            self.exit = Some((2, e.to_string()));
                            continue;
                        }
                    }
                    if self.exit.is_some() {
                        continue;
                    }
                    // Creating and reserving an output waits for the file system: 90 to 410 ms
                    // each in one net-sym run while the disk wrote back an earlier run's data,
                    // and on the reactor that held off every peer connection for half a
                    // second. So it runs on a thread of its own, like the fsync at the end.
                    let (tx, waker) = (self.opened_tx.clone(), Arc::clone(&self.waker));
                    let spawned_at = Instant::now();
                    let spawned = std::thread::Builder::new()
                        .name("open-output".into())
                        .spawn(move || {
                            let t = Instant::now();
                            let r = Output::open(&dir, &name, size).map_err(|e| e.to_string());
                            let _ = tx.send((file, r, spawned_at, t.elapsed()));
                            let _ = waker.wake();
                        });
                    if let Err(e) = spawned {
                        self.exit = Some((1, format!("cannot start a thread: {e}")));
                    }
                }
                Action::Check { file, first, prevs } => {
                    let Some(f) = self.file_io(file) else {
                        continue;
                    };
                    if let Some(map) = f.map.clone() {
                        let geo = f.geo;
                        self.pool.submit(Job::Check {
                            file,
                            map,
                            geo,
                            first,
                            prevs,
                        });
                    }
                }
                Action::Chain { file } => {
                    let Some(f) = self.file_io(file) else {
                        continue;
                    };
                    let (map, geo) = (f.map.clone(), f.geo);
                    self.pool.submit(Job::Chain {
                        file,
                        map,
                        geo,
                        from: 0,
                        to: geo.chunk_count(),
                        ctx: Box::default(),
                    });
                }
                Action::Uncache { file, from, to } => {
                    let Some(f) = self.files.get(&file) else {
                        continue;
                    };
                    let Some((out, map)) =
                        f.output.as_ref().and_then(|o| Some((o, o.map.as_ref()?)))
                    else {
                        continue;
                    };
                    let (start, end) = (f.geo.offset(from), f.geo.offset(to).min(map.len() as u64));
                    let Ok(len) = usize::try_from(end.saturating_sub(start)) else {
                        continue;
                    };
                    let _ = self.writeback.send(Writeback::Uncache(
                        Arc::clone(&out.file),
                        Arc::clone(map),
                        start,
                        len,
                    ));
                }
                Action::Finalize { file } => {
                    // fsync takes a disk's time (about a second for 500 MB): never on the reactor.
                    let Some(out) = self.files.get(&file).and_then(|f| f.output.as_ref()) else {
                        self.exit = Some((1, format!("no output for file {}", file.0)));
                        continue;
                    };
                    let (f, part, dest) =
                        (Arc::clone(&out.file), out.part.clone(), out.dest.clone());
                    let (tx, waker) = (self.finals_tx.clone(), Arc::clone(&self.waker));
                    let durable = self.durable;
                    let spawned =
                        std::thread::Builder::new()
                            .name("finalize".into())
                            .spawn(move || {
                                let r = crate::storage::finalize(&f, &part, &dest, durable)
                                    .map_err(|e| e.to_string());
                                let _ = tx.send((file, r));
                                let _ = waker.wake();
                            });
                    if let Err(e) = spawned {
                        self.exit = Some((1, format!("cannot start a thread: {e}")));
                    }
                }
                Action::Exit { code, reason } => {
                    self.exit = Some((code, reason));
                }
            }
        }
    }
}
