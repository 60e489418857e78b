//! One non-blocking TCP connection as the reactor sees it: the socket, a frame decoder, and an
//! output queue of encoded control frames and chunk pieces. A piece is queued as its 13-byte
//! header plus a reference to the memory map it comes from, and is written with vectored writes
//! straight from the map: the payload is never copied into a user-space buffer.

use crate::codec::{self, DecodeError, Message};
use crate::frame::{BufPool, FrameDecoder, Inbound};
use crate::ids::ChunkId;
use memmap2::Mmap;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Unsent bytes the kernel may hold on a peer connection (TCP_NOTSENT_LOWAT). Linux grows a busy
/// connection's send buffer to 4 MiB, 16 pieces: on a slow uplink shared by 3 peers, a request or
/// have written behind them waited 0.4 s, so the node's own downloads crawled (net-slow-up: the
/// slow host downloaded at half its downlink; the simulated swarm, with 3 or more pieces unsent
/// per connection instead of 2, goes from 1.00 to 1.15-1.5 x T_lb). Bytes on the wire do not
/// count; 256 KiB still covers 2 ms at 1 Gbit/s, and this node chooses each piece later (an
/// owner's fresh chunk goes to the peer that drains fastest).
const UNSENT_LOW_WATER: libc::c_int = 256 << 10;

enum Out {
    Bytes {
        buf: Vec<u8>,
        pos: usize,
    },
    Piece {
        header: [u8; codec::PIECE_HEADER_LEN],
        map: Arc<Mmap>,
        start: usize,
        len: usize,
        pos: usize,
    },
}

impl Out {
    fn remaining(&self) -> usize {
        match self {
            Out::Bytes { buf, pos } => buf.len() - pos,
            Out::Piece {
                header, len, pos, ..
            } => header.len() + len - pos,
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum ConnEnd {
    /// The peer closed or reset it: an ordinary end.
    Closed,
    /// The peer broke the protocol.
    Protocol(DecodeError),
    /// Any other socket error.
    Io(io::Error),
}

impl std::fmt::Display for ConnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnEnd::Closed => f.write_str("closed by peer"),
            ConnEnd::Protocol(e) => write!(f, "protocol error: {e}"),
            ConnEnd::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// The congestion control of connections that carry pieces. BBR, the default on this machine,
/// bounds a flow's window by twice its bandwidth times its *least* round trip; a relay sending
/// to a host whose own uplink is full has its acks wait in that uplink's queue, a round trip
/// many times the least, and the window capped each such flow at about 12 MB/s: the slow host
/// of net-slow-up downloaded at 40 to 55 MiB/s until its own file was out. Loss-based CUBIC
/// (the usual default of Linux servers) has no such cap. scripts/bench_net.sh, 2 runs each:
/// net-slow-up 1.28 and 1.29 x T_lb with BBR, 1.08 and 1.07 with CUBIC; net-mixed 1.12 -> 1.05.
const CONGESTION: &[u8] = b"cubic";

/// Sets `UNSENT_LOW_WATER` and `CONGESTION` on a socket; best effort (a kernel without one
/// keeps its default). Returns whether `CONGESTION` was set: an unprivileged process may only
/// choose those in net.ipv4.tcp_allowed_congestion_control, and the first refusal is logged
/// (congestion_default).
fn tune_for_pieces(stream: &TcpStream) -> bool {
    let fd = stream.as_raw_fd();
    let v = UNSENT_LOW_WATER;
    // SAFETY: the fd is a socket owned by `stream` for the whole call; each option value is
    // read from a valid pointer with its size.
    let set = unsafe {
        let _ = libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of_val(&v) as libc::socklen_t,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            CONGESTION.as_ptr().cast(),
            CONGESTION.len() as libc::socklen_t,
        ) == 0
    };
    if !set {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let e = io::Error::last_os_error();
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "congestion_default event=congestion_default want=cubic error={e:?} \
                 (peer connections keep the system's congestion control; see Readme section 4)"
            );
        }
    }
    set
}

/// Sorts socket errors at the edge: resets are ordinary closes.
fn classify(e: io::Error) -> ConnEnd {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => ConnEnd::Closed,
        _ => ConnEnd::Io(e),
    }
}

pub struct Conn {
    pub stream: TcpStream,
    pub decoder: FrameDecoder,
    out: VecDeque<Out>,
    out_bytes: usize,
    pieces_queued: usize,
    /// Bytes of chunk payload fully written so far.
    pub payload_sent: u64,
}

impl Conn {
    /// A connection that carries pieces (`max_piece` > 0) keeps little unsent in the kernel,
    /// and uses `CONGESTION`.
    pub fn new(stream: TcpStream, max_piece: u32) -> Self {
        if max_piece > 0 {
            tune_for_pieces(&stream);
        }
        Conn {
            stream,
            decoder: FrameDecoder::new(max_piece),
            out: VecDeque::new(),
            out_bytes: 0,
            pieces_queued: 0,
            payload_sent: 0,
        }
    }

    /// Queues a control frame ahead of the pieces not yet started: a request or a have must
    /// not wait for up to `PIECES_QUEUED` chunks going the same way (the requester's window
    /// would have to cover that too). Control frames keep their order among themselves.
    pub fn queue(&mut self, m: &Message) {
        let buf = codec::encode(m);
        self.out_bytes += buf.len();
        let at = self
            .out
            .iter()
            .position(|o| matches!(o, Out::Piece { pos: 0, .. }))
            .unwrap_or(self.out.len());
        self.out.insert(at, Out::Bytes { buf, pos: 0 });
    }

    /// Queues chunk `c`: `len` bytes at `start` in `map`.
    pub fn queue_piece(&mut self, c: ChunkId, map: Arc<Mmap>, start: usize, len: usize) {
        let header = codec::piece_header(c, len as u32);
        self.out_bytes += header.len() + len;
        self.pieces_queued += 1;
        self.out.push_back(Out::Piece {
            header,
            map,
            start,
            len,
            pos: 0,
        });
    }

    pub fn pieces_queued(&self) -> usize {
        self.pieces_queued
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes until the queue is empty (Ok(true)) or the socket would block (Ok(false)).
    pub fn flush(&mut self) -> Result<bool, ConnEnd> {
        while !self.out.is_empty() {
            let mut iov: [IoSlice<'_>; 32] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut n = 0;
            for item in self.out.iter() {
                if n + 2 > iov.len() {
                    break;
                }
                match item {
                    Out::Bytes { buf, pos } => {
                        iov[n] = IoSlice::new(&buf[*pos..]);
                        n += 1;
                    }
                    Out::Piece {
                        header,
                        map,
                        start,
                        len,
                        pos,
                    } => {
                        let payload = &map[*start..*start + *len];
                        if *pos < header.len() {
                            iov[n] = IoSlice::new(&header[*pos..]);
                            iov[n + 1] = IoSlice::new(payload);
                            n += 2;
                        } else {
                            iov[n] = IoSlice::new(&payload[*pos - header.len()..]);
                            n += 1;
                        }
                    }
                }
            }
            match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(ConnEnd::Closed),
                Ok(mut written) => {
                    self.out_bytes -= written;
                    while written > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        let rem = front.remaining();
                        if written >= rem {
                            written -= rem;
                            if let Out::Piece { len, .. } = front {
                                self.payload_sent += *len as u64;
                                self.pieces_queued -= 1;
                            }
                            self.out.pop_front();
                        } else {
                            match front {
                                Out::Bytes { pos, .. } | Out::Piece { pos, .. } => *pos += written,
                            }
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(true)
    }

    /// Reads until the socket would block, decoding as it goes. Frames decoded before an error
    /// are returned with it, so nothing already received is lost.
    pub fn read(&mut self, pool: &mut BufPool, into: &mut Vec<Inbound>) -> Result<(), ConnEnd> {
        loop {
            let target = self.decoder.read_target();
            match self.stream.read(target) {
                Ok(0) => {
                    self.drain(pool, into)?;
                    return Err(ConnEnd::Closed);
                }
                Ok(n) => {
                    self.decoder.advance(n);
                    self.drain(pool, into)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e)),
            }
        }
    }

    fn drain(&mut self, pool: &mut BufPool, into: &mut Vec<Inbound>) -> Result<(), ConnEnd> {
        while let Some(x) = self.decoder.next(pool).map_err(ConnEnd::Protocol)? {
            into.push(x);
        }
        Ok(())
    }
}

/// Raises this process's soft limit on open files to the hard limit (at most `want`): a node
/// holds up to its connection caps (1024 at the server) plus its files, beyond the common soft
/// default of 1024. Best effort: on failure the node runs with the limit it has, and an accept
/// past it fails with a logged accept_error.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let target = want.min(lim.rlim_max);
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads one valid rlimit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The congestion control and unsent limit a socket reports.
    fn tuning(stream: &TcpStream) -> (String, libc::c_int) {
        let fd = stream.as_raw_fd();
        let mut name = [0u8; 16];
        let mut len = name.len() as libc::socklen_t;
        let mut lowat: libc::c_int = 0;
        let mut lowat_len = std::mem::size_of_val(&lowat) as libc::socklen_t;
        // SAFETY: each getsockopt writes at most `len` bytes through a valid pointer.
        unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_mut_ptr().cast(),
                &mut len,
            );
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut lowat as *mut libc::c_int).cast(),
                &mut lowat_len,
            );
        }
        let n = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        (String::from_utf8_lossy(&name[..n]).into_owned(), lowat)
    }

    #[test]
    fn peer_connections_use_cubic_where_permitted_and_keep_little_unsent() {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .expect("the kernel lists its congestion controls");
        assert!(
            available
                .split_whitespace()
                .any(|c| c.as_bytes() == CONGESTION),
            "this kernel has no {}: {available}",
            String::from_utf8_lossy(CONGESTION)
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dial = || TcpStream::from_std(std::net::TcpStream::connect(addr).expect("connect"));
        let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .expect("the default congestion control");
        let allowed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
            .expect("the congestion controls anyone may choose");
        // SAFETY: geteuid has no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let may = root
            || allowed
                .split_whitespace()
                .any(|c| c.as_bytes() == CONGESTION);
        let peer = TcpStream::from_std(std::net::TcpStream::connect(addr).expect("connect"));
        assert_eq!(tune_for_pieces(&peer), may, "allowed: {allowed}");
        let want = if may { "cubic" } else { default.trim() };
        assert_eq!(tuning(&peer), (want.to_string(), UNSENT_LOW_WATER));
        let peer = Conn::new(dial(), 1 << 18);
        assert_eq!(tuning(&peer.stream), (want.to_string(), UNSENT_LOW_WATER));
        // A control connection (to the server) keeps the machine's defaults.
        let control = Conn::new(dial(), 0);
        assert_eq!(tuning(&control.stream).0, default.trim());
    }
}
