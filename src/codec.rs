//! The wire protocol: message types, their binary encoding, and the decoding of one frame's
//! body (the byte-stream decoder is in `frame`).
//!
//! Every frame is `u32 length (big endian) | u8 kind | body`, where `length` counts the kind byte
//! and the body. The first frame on any connection is a hello (`Hello` to the server, `PeerHello`
//! between clients) whose body starts with the magic `P2PS` and the protocol version. Control
//! frames are capped at [`MAX_CONTROL_FRAME`]; a `Piece` frame may carry at most the run's chunk
//! size. A `Piece` is never built as one buffer on the sending side: [`piece_header`] gives the
//! 13 header bytes and the payload goes out as a slice of the memory-mapped file.

use crate::crypto::{Key, Mac, Nonce};
use crate::ids::{ChunkId, Digest, FileId, PeerId};
use std::fmt;

pub const MAGIC: [u8; 4] = *b"P2PS";
/// 2: ping, pong and clock_report (client and server), request_fresh, no_fresh and load (between
/// peers) were added. A version-1 node would drop the connection at the first of them, mid-run;
/// the version check at hello ends it at once, and the log says why.
/// 3: stuck and rejoined (crash and restart).
/// 4: membership (see `auth`): hello's token flag, challenge, auth, member, peer_hello's nonce
/// and peer_auth. An older node cannot prove membership, so it is stopped at the hello.
/// 5: chained chunk digests (`md5x::link`): chunk_digests carries each chunk's chain value,
/// not its own MD5. An older node would fail every chunk check, so it is stopped at the hello.
pub const VERSION: u16 = 5;
/// Largest control frame (everything but `Piece`), kind byte included.
pub const MAX_CONTROL_FRAME: u32 = 1 << 20;
/// Length prefix plus kind byte.
pub const FRAME_HEADER_LEN: usize = 5;
/// Frame header plus file id and chunk index.
pub const PIECE_HEADER_LEN: usize = 13;
/// Most digests in one `ChunkDigests` frame (64 KiB of digests), well under the control cap.
pub const MAX_DIGESTS_PER_FRAME: usize = 4096;

/// A file as a client declares it in its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDecl {
    pub name: String,
    pub size: u64,
}

/// A client as the server announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub name: String,
    pub addr: String,
}

/// A file as the server announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub id: FileId,
    pub owner: PeerId,
    pub name: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // client -> server
    Hello {
        version: u16,
        /// The client was given a token: the server must challenge it (and refuses it if it
        /// has none), or admit a client without one (and refuse one that has one).
        token: bool,
        listen: String,
        name: String,
        files: Vec<FileDecl>,
    },
    Progress {
        bytes_received: u64,
        bytes_sent: u64,
        have: Vec<(FileId, u32)>,
    },
    FileComplete {
        file: FileId,
    },
    Done {
        bytes_received: u64,
        bytes_sent: u64,
    },
    /// A clock exchange: `client_us` is the client's clock when it sent the ping.
    Ping {
        client_us: u64,
    },
    /// The client's current estimate of its offset to the server's clock (see `clock`).
    ClockReport {
        offset_us: i64,
        error_us: u64,
        max_error_us: u64,
    },
    /// This client lacks `chunks` chunks that no peer it can reach holds, and has nothing in
    /// flight: it cannot progress until a lost member comes back (0: it can progress again).
    Stuck {
        chunks: u32,
    },
    /// The answer to a challenge: the client's nonce and its proof that it knows the token.
    Auth {
        nonce: Nonce,
        mac: Mac,
    },
    // server -> client
    Welcome {
        id: PeerId,
        name: String,
        clock_us: u64,
        chunk_size: u32,
        clients: u32,
        files: Vec<FileId>,
    },
    Refuse {
        reason: String,
    },
    /// To a client that has a token: prove you know it, over this fresh nonce.
    Challenge {
        nonce: Nonce,
    },
    /// Right before the welcome: the server's proof that it knows the token (zeros in a run
    /// without one) and this member's pair keys, one per client id 1..=N (its own is zeros).
    Member {
        proof: Mac,
        keys: Vec<Key>,
    },
    Start {
        peers: Vec<PeerInfo>,
        files: Vec<FileInfo>,
    },
    Shutdown,
    /// A member that was lost came back (same id, name and files), listening at `peer.addr`.
    Rejoined {
        peer: PeerInfo,
    },
    /// The answer to a ping: its `client_us` echoed, and the server's clock when it handled it.
    Pong {
        client_us: u64,
        server_us: u64,
    },
    // both directions between client and server
    ChunkDigests {
        file: FileId,
        first: u32,
        digests: Vec<Digest>,
    },
    FileDigest {
        file: FileId,
        md5: Digest,
    },
    // client <-> client
    PeerHello {
        version: u16,
        id: PeerId,
        nonce: Nonce,
    },
    /// Proof that the sender holds the pair key of this link, over both hellos' nonces.
    PeerAuth {
        mac: Mac,
    },
    Bitfield {
        file: FileId,
        bits: Vec<u8>,
    },
    Have {
        chunk: ChunkId,
    },
    Request {
        chunk: ChunkId,
    },
    Cancel {
        chunk: ChunkId,
    },
    /// To a file's owner: send one chunk of `file` of your choice that you have never sent to
    /// anyone (answered by a `Piece`, or by `NoFresh`).
    RequestFresh {
        file: FileId,
        /// The chunk must be below this index: the requester knows those chunks' digests.
        below: u32,
    },
    /// From a file's owner: every chunk of `file` has been sent or promised once; this answers
    /// one `RequestFresh`.
    NoFresh {
        file: FileId,
    },
    /// The sender's load, for its peers' source choice: the time it needs to send every chunk of
    /// its own files that has never left it, at its measured upload rate (0: nothing left), and
    /// that rate.
    Load {
        own_eta_ms: u32,
        upload_kib_s: u32,
    },
}

pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSE: u8 = 3;
    pub const START: u8 = 4;
    pub const CHUNK_DIGESTS: u8 = 5;
    pub const FILE_DIGEST: u8 = 6;
    pub const PROGRESS: u8 = 7;
    pub const FILE_COMPLETE: u8 = 8;
    pub const DONE: u8 = 9;
    pub const SHUTDOWN: u8 = 10;
    pub const PING: u8 = 11;
    pub const PONG: u8 = 12;
    pub const CLOCK_REPORT: u8 = 13;
    pub const STUCK: u8 = 14;
    pub const REJOINED: u8 = 15;
    pub const PEER_HELLO: u8 = 20;
    pub const BITFIELD: u8 = 21;
    pub const HAVE: u8 = 22;
    pub const REQUEST: u8 = 23;
    pub const CANCEL: u8 = 24;
    pub const PIECE: u8 = 25;
    pub const REQUEST_FRESH: u8 = 26;
    pub const NO_FRESH: u8 = 27;
    pub const LOAD: u8 = 28;
    // Membership, in a range of its own.
    pub const CHALLENGE: u8 = 40;
    pub const AUTH: u8 = 41;
    pub const MEMBER: u8 = 42;
    pub const PEER_AUTH: u8 = 43;
}

impl Message {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Progress { .. } => "progress",
            Message::FileComplete { .. } => "file_complete",
            Message::Done { .. } => "done",
            Message::Welcome { .. } => "welcome",
            Message::Refuse { .. } => "refuse",
            Message::Start { .. } => "start",
            Message::Shutdown => "shutdown",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::ClockReport { .. } => "clock_report",
            Message::Stuck { .. } => "stuck",
            Message::Rejoined { .. } => "rejoined",
            Message::ChunkDigests { .. } => "chunk_digests",
            Message::FileDigest { .. } => "file_digest",
            Message::PeerHello { .. } => "peer_hello",
            Message::Bitfield { .. } => "bitfield",
            Message::Have { .. } => "have",
            Message::Request { .. } => "request",
            Message::Cancel { .. } => "cancel",
            Message::RequestFresh { .. } => "request_fresh",
            Message::NoFresh { .. } => "no_fresh",
            Message::Load { .. } => "load",
            Message::Challenge { .. } => "challenge",
            Message::Auth { .. } => "auth",
            Message::Member { .. } => "member",
            Message::PeerAuth { .. } => "peer_auth",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix exceeds the cap for that kind of frame.
    TooLong {
        len: u64,
        max: u64,
    },
    /// A field runs past the end of its frame.
    Truncated,
    /// Bytes are left over after the last field of a frame.
    Trailing,
    UnknownKind(u8),
    BadMagic,
    BadVersion(u16),
    /// A flag byte other than 0 or 1.
    BadFlag(u8),
    /// A string field is not UTF-8.
    BadUtf8,
    /// A count that cannot fit in the frame it claims to be in.
    BadCount,
    /// A zero length prefix (a frame must at least hold its kind).
    Empty,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the cap of {max}")
            }
            DecodeError::Truncated => f.write_str("truncated frame"),
            DecodeError::Trailing => f.write_str("trailing bytes in frame"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::BadMagic => f.write_str("bad magic (not a p2pshare peer)"),
            DecodeError::BadVersion(v) => {
                write!(f, "unsupported protocol version {v} (we speak {VERSION})")
            }
            DecodeError::BadFlag(b) => write!(f, "flag byte {b} is neither 0 nor 1"),
            DecodeError::BadUtf8 => f.write_str("string is not UTF-8"),
            DecodeError::BadCount => f.write_str("element count larger than the frame"),
            DecodeError::Empty => f.write_str("empty frame"),
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------- encoding

struct Writer(Vec<u8>);

impl Writer {
    fn frame(kind: u8) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0, 0, 0, 0, kind]);
        Writer(v)
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Strings longer than u16::MAX are cut; every caller checks names are short long before.
    fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.u16(b.len() as u16);
        self.bytes(b);
    }
    fn chunk(&mut self, c: ChunkId) {
        self.u32(c.file.0);
        self.u32(c.index);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// Encodes one control message as a complete frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    use kind::*;
    let w = match msg {
        Message::Hello {
            version,
            token,
            listen,
            name,
            files,
        } => {
            let mut w = Writer::frame(HELLO);
            w.bytes(&MAGIC);
            w.u16(*version);
            w.bytes(&[u8::from(*token)]);
            w.str(listen);
            w.str(name);
            w.u32(files.len() as u32);
            for f in files {
                w.str(&f.name);
                w.u64(f.size);
            }
            w
        }
        Message::Progress {
            bytes_received,
            bytes_sent,
            have,
        } => {
            let mut w = Writer::frame(PROGRESS);
            w.u64(*bytes_received);
            w.u64(*bytes_sent);
            w.u32(have.len() as u32);
            for (f, n) in have {
                w.u32(f.0);
                w.u32(*n);
            }
            w
        }
        Message::FileComplete { file } => {
            let mut w = Writer::frame(FILE_COMPLETE);
            w.u32(file.0);
            w
        }
        Message::Done {
            bytes_received,
            bytes_sent,
        } => {
            let mut w = Writer::frame(DONE);
            w.u64(*bytes_received);
            w.u64(*bytes_sent);
            w
        }
        Message::Welcome {
            id,
            name,
            clock_us,
            chunk_size,
            clients,
            files,
        } => {
            let mut w = Writer::frame(WELCOME);
            w.u32(id.0);
            w.str(name);
            w.u64(*clock_us);
            w.u32(*chunk_size);
            w.u32(*clients);
            w.u32(files.len() as u32);
            for f in files {
                w.u32(f.0);
            }
            w
        }
        Message::Refuse { reason } => {
            let mut w = Writer::frame(REFUSE);
            w.str(reason);
            w
        }
        Message::Start { peers, files } => {
            let mut w = Writer::frame(START);
            w.u32(peers.len() as u32);
            for p in peers {
                w.u32(p.id.0);
                w.str(&p.name);
                w.str(&p.addr);
            }
            w.u32(files.len() as u32);
            for f in files {
                w.u32(f.id.0);
                w.u32(f.owner.0);
                w.str(&f.name);
                w.u64(f.size);
            }
            w
        }
        Message::Shutdown => Writer::frame(SHUTDOWN),
        Message::Ping { client_us } => {
            let mut w = Writer::frame(PING);
            w.u64(*client_us);
            w
        }
        Message::Pong {
            client_us,
            server_us,
        } => {
            let mut w = Writer::frame(PONG);
            w.u64(*client_us);
            w.u64(*server_us);
            w
        }
        Message::ClockReport {
            offset_us,
            error_us,
            max_error_us,
        } => {
            let mut w = Writer::frame(CLOCK_REPORT);
            w.u64(*offset_us as u64);
            w.u64(*error_us);
            w.u64(*max_error_us);
            w
        }
        Message::ChunkDigests {
            file,
            first,
            digests,
        } => {
            let mut w = Writer::frame(CHUNK_DIGESTS);
            w.u32(file.0);
            w.u32(*first);
            w.u32(digests.len() as u32);
            for d in digests {
                w.bytes(d);
            }
            w
        }
        Message::FileDigest { file, md5 } => {
            let mut w = Writer::frame(FILE_DIGEST);
            w.u32(file.0);
            w.bytes(md5);
            w
        }
        Message::PeerHello { version, id, nonce } => {
            let mut w = Writer::frame(PEER_HELLO);
            w.bytes(&MAGIC);
            w.u16(*version);
            w.u32(id.0);
            w.bytes(nonce);
            w
        }
        Message::PeerAuth { mac } => {
            let mut w = Writer::frame(PEER_AUTH);
            w.bytes(mac);
            w
        }
        Message::Challenge { nonce } => {
            let mut w = Writer::frame(CHALLENGE);
            w.bytes(nonce);
            w
        }
        Message::Auth { nonce, mac } => {
            let mut w = Writer::frame(AUTH);
            w.bytes(nonce);
            w.bytes(mac);
            w
        }
        Message::Member { proof, keys } => {
            let mut w = Writer::frame(MEMBER);
            w.bytes(proof);
            w.u32(keys.len() as u32);
            for k in keys {
                w.bytes(k);
            }
            w
        }
        Message::Bitfield { file, bits } => {
            let mut w = Writer::frame(BITFIELD);
            w.u32(file.0);
            w.u32(bits.len() as u32);
            w.bytes(bits);
            w
        }
        Message::Have { chunk } => {
            let mut w = Writer::frame(HAVE);
            w.chunk(*chunk);
            w
        }
        Message::Request { chunk } => {
            let mut w = Writer::frame(REQUEST);
            w.chunk(*chunk);
            w
        }
        Message::Cancel { chunk } => {
            let mut w = Writer::frame(CANCEL);
            w.chunk(*chunk);
            w
        }
        Message::RequestFresh { file, below } => {
            let mut w = Writer::frame(REQUEST_FRESH);
            w.u32(file.0);
            w.u32(*below);
            w
        }
        Message::Stuck { chunks } => {
            let mut w = Writer::frame(STUCK);
            w.u32(*chunks);
            w
        }
        Message::Rejoined { peer } => {
            let mut w = Writer::frame(REJOINED);
            w.u32(peer.id.0);
            w.str(&peer.name);
            w.str(&peer.addr);
            w
        }
        Message::NoFresh { file } => {
            let mut w = Writer::frame(NO_FRESH);
            w.u32(file.0);
            w
        }
        Message::Load {
            own_eta_ms,
            upload_kib_s,
        } => {
            let mut w = Writer::frame(LOAD);
            w.u32(*own_eta_ms);
            w.u32(*upload_kib_s);
            w
        }
    };
    w.finish()
}

/// The 13 bytes that precede a chunk's payload on the wire.
pub fn piece_header(chunk: ChunkId, payload_len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    h[..4].copy_from_slice(&(payload_len + 9).to_be_bytes());
    h[4] = kind::PIECE;
    h[5..9].copy_from_slice(&chunk.file.0.to_be_bytes());
    h[9..13].copy_from_slice(&chunk.index.to_be_bytes());
    h
}

mod decode;
pub use decode::decode_body;

#[cfg(test)]
pub(crate) mod tests;
