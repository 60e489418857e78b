//! The server node: the reactor shell around [`ServerCore`]. It owns the listener and the client
//! connections (slab key + 1 = token), runs the System Clock (0.0 ms at start), and writes the
//! summary when the run is over.

use crate::conn::{Conn, ConnEnd};
use crate::error::Error;
use crate::frame::Inbound;
use crate::links::{Links, lower_bound};
use crate::logging::{self, now_us};
use crate::progress::{Mode, Progress};
use crate::server_core::{ServerAction, ServerCore};
use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const FIRST_CONN: usize = 1;
/// Connections at once (clients plus handshakes in progress).
const MAX_CONNS: usize = 1024;
/// Connections that have not said hello yet: a stranger who opens many and stays silent holds
/// at most this many places (each for the handshake timeout), never all of them, so clients of
/// the run can still get in.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Time a new connection has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the run, how long to wait for the shutdown messages to leave.
const LINGER: Duration = Duration::from_secs(2);

pub struct ServerConfig {
    pub listen: SocketAddr,
    pub clients: u32,
    pub chunk_size: u32,
    pub log_dir: PathBuf,
    pub summary: PathBuf,
    /// Link rates by client name (--links), for T_lb in the summary.
    pub links: Option<Links>,
    /// How long to wait for a lost client to come back (--rejoin-wait).
    pub rejoin_wait: Duration,
    /// The run's token (--token or P2PSHARE_TOKEN), if it has one.
    pub token: Option<crate::auth::Token>,
}

pub fn run(cfg: ServerConfig) -> Result<i32, Error> {
    let sink = logging::init("server");
    crate::conn::raise_fd_limit(4096);
    sink.open(&cfg.log_dir, "server").map_err(|e| {
        Error::Usage(format!(
            "cannot write logs in {}: {e}",
            cfg.log_dir.display()
        ))
    })?;
    let mut listener = TcpListener::bind(cfg.listen)
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let poll = Poll::new().map_err(|e| Error::Usage(format!("cannot create poll: {e}")))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let seed = crate::crypto::os_seed()
        .map_err(|e| Error::Usage(format!("cannot read /dev/urandom: {e}")))?;
    info!(
        "start event=server_start listen={local} clients={} chunk_size={} token={}",
        cfg.clients,
        cfg.chunk_size,
        cfg.token.is_some()
    );
    if cfg.token.is_none() && !local.ip().is_loopback() {
        // Meant for a cloud VM that strangers can reach: say so where the operator looks.
        warn!(
            "open_run event=no_token listen={local} reason=\"no token: anyone who can reach this port can join the run (give --token or set P2PSHARE_TOKEN)\""
        );
    }
    let mut core = ServerCore::new(cfg.clients, cfg.chunk_size);
    core.set_membership(crate::auth::ServerMembership::new(cfg.token, seed));
    core.set_rejoin_wait(u64::try_from(cfg.rejoin_wait.as_micros()).unwrap_or(u64::MAX));
    eprintln!(
        "server: listening on {local}, waiting for {} clients",
        cfg.clients
    );
    let mut s = Server {
        poll,
        listener,
        conns: Slab::new(),
        closing: BTreeSet::new(),
        core,
        finished: None,
        pending: BTreeMap::new(),
        progress: Progress::new(Mode::auto(), true),
        expected: cfg.clients,
    };
    let code = s.run_loop()?;
    s.progress.redraw_now();
    s.draw_progress();
    s.progress.finish();
    let mut summary = s.core.summary(now_us());
    if let Some(links) = &cfg.links {
        match lower_bound(&summary.owned_bytes(), links) {
            Ok(b) => summary.lower_bound = Some(b),
            Err(e) => warn!("lower_bound event=lower_bound_unknown reason={e:?}"),
        }
    }
    if let (Some(b), Some(r)) = (&summary.lower_bound, summary.t_lb_ratio()) {
        info!(
            "lower_bound event=lower_bound t_lb_ms={:.3} ratio={r:.3} binding={:?}",
            b.t_lb_ms, b.binding
        );
    }
    summary.write_json(&cfg.summary).map_err(|e| {
        Error::Failed(format!(
            "cannot write the summary to {}: {e}",
            cfg.summary.display()
        ))
    })?;
    for line in summary.to_text().lines() {
        info!("summary {line}");
    }
    eprint!("{}", summary.to_text());
    eprintln!("summary written to {}", cfg.summary.display());
    log::logger().flush();
    Ok(code)
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    closing: BTreeSet<usize>,
    core: ServerCore,
    /// The run is over (exit code, when): linger until the shutdown messages are out.
    finished: Option<(i32, Instant)>,
    /// When each connection was accepted, until it says hello.
    pending: BTreeMap<usize, Instant>,
    progress: Progress,
    expected: u32,
}

impl Server {
    fn run_loop(&mut self) -> Result<i32, Error> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Some((code, at)) = self.finished
                && (self.conns.iter().all(|(_, c)| !c.has_output()) || at.elapsed() > LINGER)
            {
                return Ok(code);
            }
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(Error::Failed(format!("poll failed: {e}")));
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(t) => self.conn_io(t - FIRST_CONN),
                }
                // Applied after every event, before a later accept can reuse a slab key: an
                // action is always for the connection it was made for.
                self.apply_actions();
            }
            self.core.on_tick(now_us());
            self.apply_actions();
            self.expire_handshakes();
            // A server killed mid-run loses at most one poll interval of its log.
            log::logger().flush();
            self.draw_progress();
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for k in keys {
                let r = self.conns.get_mut(k).map(Conn::flush);
                match r {
                    Some(Ok(true)) if self.closing.contains(&k) => self.drop_conn(k, None),
                    Some(Err(e)) => self.drop_conn(k, Some(e)),
                    _ => {}
                }
            }
        }
    }

    /// Redraws the progress display when due (a few times a second at most: the poll timeout
    /// bounds how late a redraw can be).
    fn draw_progress(&mut self) {
        let now = now_us();
        if !self.progress.due(now) {
            return;
        }
        let s = self.core.summary(now);
        if s.clients.is_empty() {
            return;
        }
        let joined = s.clients.len() as u32;
        if joined < self.expected {
            // What each client needs is known only when all have joined.
            let note = format!("waiting for clients: {joined} of {} joined", self.expected);
            self.progress.update(now, &[], Some(&note));
        } else {
            self.progress.update(now, &crate::progress::rows(&s), None);
        }
    }

    /// Closes connections that said no hello in time: a stranger that connects and stays
    /// silent must not hold a slot.
    fn expire_handshakes(&mut self) {
        let core = &self.core;
        self.pending.retain(|k, _| !core.is_identified(*k));
        let stale: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, t)| t.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            warn!("handshake_timeout event=handshake_timeout conn={k}");
            self.drop_conn(k, None);
        }
    }

    fn apply_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                ServerAction::Send(k, m) => {
                    if let Some(c) = self.conns.get_mut(k) {
                        c.queue(&m);
                    }
                }
                ServerAction::Close(k, _) => {
                    self.closing.insert(k);
                }
                ServerAction::Finished { code } => self.finished = Some((code, Instant::now())),
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, from)) => {
                    if self.conns.len() >= MAX_CONNS {
                        warn!("refused event=connection_cap from={from}");
                        continue;
                    }
                    let core = &self.core;
                    let handshaking = self
                        .pending
                        .keys()
                        .filter(|k| !core.is_identified(**k))
                        .count();
                    if handshaking >= MAX_PENDING_HANDSHAKES {
                        warn!("refused event=handshake_cap from={from}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(key + FIRST_CONN),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(Conn::new(stream, 0));
                    self.pending.insert(key, Instant::now());
                    self.core.on_connect(key, &from.to_string());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accept_error event=accept_error error={e}");
                    return;
                }
            }
        }
    }

    fn conn_io(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut inbound = Vec::new();
        let mut pool = crate::frame::BufPool::default();
        let r = c.read(&mut pool, &mut inbound);
        for x in inbound {
            if let Inbound::Msg(m) = x
                && !self.closing.contains(&key)
            {
                self.core.on_message(key, m, now_us());
                // A close decided on this message stops the ones after it.
                self.apply_actions();
            }
        }
        if let Err(e) = r {
            self.drop_conn(key, Some(e));
        }
    }

    fn drop_conn(&mut self, key: usize, why: Option<ConnEnd>) {
        let Some(mut c) = self.conns.try_remove(key) else {
            return;
        };
        self.closing.remove(&key);
        self.pending.remove(&key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if let Some(e) = why
            && !matches!(e, ConnEnd::Closed)
        {
            warn!("conn_error event=connection_error conn={key} error={e}");
        }
        self.core.on_disconnect(key, now_us());
    }
}
