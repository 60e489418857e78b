//! The command line: clap definitions, validation of raw flags into node configs (in one place),
//! and the mapping of errors to exit codes (0 ok, 1 run failed, 2 bad usage or input).

use crate::auth::Token;
use crate::client::{self, ClientConfig};
use crate::error::Error;
use crate::geometry::{
    CHUNK_ALIGN, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, chunk_size_ok,
};
use crate::server::{self, ServerConfig};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "p2pshare",
    version,
    about = "Peer-to-peer chunk distribution: a coordinator server and clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator server.
    Server {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8888")]
        listen: String,
        /// Number of clients in the run.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Directory for server.log (and the summary, by default).
        #[arg(long, default_value = "logs")]
        log_dir: PathBuf,
        /// Where to write the JSON summary [default: LOG_DIR/summary.json].
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Link rates, one line per client: NAME UP DOWN (e.g. client1 1gbit 1gbit); the
        /// summary then states T_lb and the run's ratio to it.
        #[arg(long)]
        links: Option<PathBuf>,
        /// Seconds to wait for a lost client to come back (restarted with the same
        /// arguments) before the run ends without it, as failed.
        #[arg(long, default_value_t = 30.0)]
        rejoin_wait: f64,
        /// The run's shared secret: clients must prove they know it to join [default: the
        /// environment variable P2PSHARE_TOKEN]. Prefer the variable: any user can read a
        /// command line with ps.
        #[arg(long)]
        token: Option<String>,
    },
    /// Run a client.
    Client {
        /// The server's HOST:PORT.
        #[arg(long)]
        server: String,
        /// A file this client shares (repeat for several; none is allowed).
        #[arg(long)]
        file: Vec<PathBuf>,
        /// Address to listen on for peers.
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: String,
        /// Address peers should dial (IP or IP:PORT) [default: this host's address on its
        /// connection to the server].
        #[arg(long)]
        advertise: Option<String>,
        /// Where downloaded files go [default: downloads/NAME].
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// This client's name [default: given by the server, client1..N].
        #[arg(long)]
        name: Option<String>,
        /// Directory for NAME.log.
        #[arg(long, default_value = "logs")]
        log_dir: PathBuf,
        /// MD5 helper threads (one hashes ~3.7 GB/s in 8 lanes, many times a 1 Gbit/s link;
        /// more only contend on a shared machine, see Readme section 11.4).
        #[arg(long, default_value_t = 1)]
        hash_threads: usize,
        /// Seconds to keep retrying the server at start.
        #[arg(long, default_value_t = 20)]
        connect_timeout: u64,
        /// Rename a verified download without waiting for the disk (no fdatasync before the
        /// rename, none while it downloads). Faster where the disk is slower than the network,
        /// but after a power loss or a kernel crash (not a crash of this program) a file may
        /// read as zeros in parts under its final name.
        #[arg(long)]
        no_fsync: bool,
        /// Show this client's progress on stderr (a bar on a terminal, a line every few
        /// seconds otherwise).
        #[arg(long)]
        progress: bool,
        /// The run's shared secret, as given to the server [default: the environment variable
        /// P2PSHARE_TOKEN]. Prefer the variable: any user can read a command line with ps.
        #[arg(long)]
        token: Option<String>,
    },
    /// Read the logs of a run as one timeline: per-client figures, the critical path, and
    /// LOG_DIR/report.svg.
    Report {
        /// The directory with server.log and the clients' logs.
        #[arg(default_value = "logs")]
        log_dir: PathBuf,
        /// Link rates (as for the server), to state T_lb and the run's ratio to it.
        #[arg(long)]
        links: Option<PathBuf>,
        /// Where to write the charts [default: LOG_DIR/report.svg].
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Write a deterministic pseudo-random file.
    Gen {
        /// Size: bytes, or with a unit (K, M, G = KiB, MiB, GiB; KB, MB, GB = powers of 1000).
        #[arg(long)]
        size: String,
        /// Seed: the same size and seed give the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file.
        out: PathBuf,
    },
}

fn parse_addr(flag: &str, s: &str) -> Result<SocketAddr, Error> {
    s.parse()
        .map_err(|_| Error::Usage(format!("{flag} {s:?} is not an IP:PORT address")))
}

/// The token from `--token`, else from P2PSHARE_TOKEN. Read by hand rather than through clap's
/// `env`, which takes an empty variable for an absent one: a token that was meant to be set
/// and is empty must stop the node, not start an open run.
fn token(flag: Option<String>) -> Result<Option<Token>, Error> {
    let raw = match flag {
        Some(t) => Some(t),
        None => match std::env::var("P2PSHARE_TOKEN") {
            Ok(t) => Some(t),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Usage("P2PSHARE_TOKEN is not UTF-8".into()));
            }
        },
    };
    raw.map(|t| Token::new(&t))
        .transpose()
        .map_err(|e| Error::Usage(format!("bad --token or P2PSHARE_TOKEN: {e}")))
}

fn dispatch(cmd: Cmd) -> Result<i32, Error> {
    match cmd {
        Cmd::Server {
            listen,
            clients,
            chunk_size,
            log_dir,
            summary,
            links,
            rejoin_wait,
            token: tok,
        } => {
            if !(0.0..=86_400.0).contains(&rejoin_wait) {
                return Err(Error::Usage(format!(
                    "--rejoin-wait must be between 0 and 86400 seconds, not {rejoin_wait}"
                )));
            }
            if clients == 0 || clients > 1000 {
                return Err(Error::Usage(format!(
                    "--clients must be between 1 and 1000, not {clients}"
                )));
            }
            if !chunk_size_ok(chunk_size) {
                return Err(Error::Usage(format!(
                    "--chunk-size must be a multiple of {CHUNK_ALIGN} between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes, not {chunk_size}"
                )));
            }
            let listen = parse_addr("--listen", &listen)?;
            let token = token(tok)?;
            let summary = summary.unwrap_or_else(|| log_dir.join("summary.json"));
            let links = links
                .map(|p| crate::links::read_links(&p))
                .transpose()
                .map_err(Error::Usage)?;
            server::run(ServerConfig {
                listen,
                clients,
                chunk_size,
                log_dir,
                summary,
                links,
                rejoin_wait: Duration::from_secs_f64(rejoin_wait),
                token,
            })
        }
        Cmd::Client {
            server,
            file,
            listen,
            advertise,
            out_dir,
            name,
            log_dir,
            hash_threads,
            connect_timeout,
            no_fsync,
            progress,
            token: tok,
        } => {
            if !server.contains(':') {
                return Err(Error::Usage(format!(
                    "--server {server:?} must be HOST:PORT"
                )));
            }
            let listen = parse_addr("--listen", &listen)?;
            let token = token(tok)?;
            if let Some(d) = &out_dir {
                check_out_dir(d)?;
            }
            if connect_timeout > 86_400 {
                return Err(Error::Usage(
                    "--connect-timeout must be at most 86400 seconds".into(),
                ));
            }
            if !(1..=64).contains(&hash_threads) {
                return Err(Error::Usage(
                    "--hash-threads must be between 1 and 64".into(),
                ));
            }
            client::run(ClientConfig {
                server,
                files: file,
                listen,
                advertise,
                out_dir,
                name,
                log_dir,
                hash_threads,
                connect_for: Duration::from_secs(connect_timeout),
                durable: !no_fsync,
                progress,
                token,
            })
        }
        Cmd::Report {
            log_dir,
            links,
            svg,
        } => {
            let links = links
                .map(|p| crate::links::read_links(&p))
                .transpose()
                .map_err(Error::Usage)?;
            let svg = svg.unwrap_or_else(|| log_dir.join("report.svg"));
            crate::report::run(&log_dir, links.as_ref(), &svg)
        }
        Cmd::Gen { size, seed, out } => {
            let size = crate::datagen::parse_size(&size).map_err(Error::Usage)?;
            crate::datagen::run(size, seed, &out)?;
            Ok(0)
        }
    }
}

/// An out-dir must exist or be creatable, and be a writable directory: found at start, in one
/// line, rather than after the client has joined a run that then waits for it.
fn check_out_dir(d: &std::path::Path) -> Result<(), Error> {
    let bad = |why: String| Error::Usage(format!("--out-dir {}: {why}", d.display()));
    std::fs::create_dir_all(d).map_err(|e| bad(format!("cannot create it: {e}")))?;
    let probe = d.join(format!(".p2pshare-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| bad(format!("cannot write into it: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pshare: {e}");
            e.exit_code()
        }
    }
}
