//! A property-test fuzzer that runs inside `cargo test` with a fixed budget (issue 4, item 6):
//! the frame decoder gets random and mutated byte streams in random splits, and the server's
//! and the client's session state machines get random sequences of well-formed but hostile
//! messages (wrong ids, wrong order, out-of-range indexes, absurd sizes). Nothing may panic, and
//! no single allocation may exceed what the caps allow: a counting global allocator records the
//! largest one, so a decoder that trusted a length or a count from the wire would be caught.
//!
//! Deterministic: a fixed-seed generator, so a failure reproduces. The number of executions is
//! printed (`cargo test --test fuzz -- --nocapture`).

use p2pshare::auth::{ClientMembership, HsStep, PeerHandshake, ServerMembership, Token, peer_mac};
use p2pshare::client_core::ClientCore;
use p2pshare::codec::{
    FileDecl, FileInfo, MAX_CONTROL_FRAME, Message, PeerInfo, VERSION, decode_body, encode,
    piece_header,
};
use p2pshare::frame::{BufPool, FrameDecoder, Inbound};
use p2pshare::ids::{ChunkId, FileId, PeerId};
use p2pshare::server_core::{ServerAction, ServerCore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest single request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The chunk size the fuzzed nodes use (the default, 256 KiB).
const CHUNK: u32 = 262_144;

/// No allocation while fuzzing may be larger than a control frame or a piece, with room for the
/// decoder's own buffers (the test harness's allocations are made before this is checked).
const ALLOC_CAP: usize = MAX_CONTROL_FRAME as usize + 128 * 1024;

/// xorshift64*: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// Mostly small numbers, sometimes edge values: what finds off-by-ones and overflows.
    fn num(&mut self) -> u64 {
        match self.below(10) {
            0 => u64::MAX - self.below(3),
            1 => u32::MAX as u64 - self.below(3),
            2 => self.next(),
            3 => CHUNK as u64 + self.below(3),
            _ => self.below(6),
        }
    }
    fn num32(&mut self) -> u32 {
        self.num() as u32
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max as u64 + 1))
            .map(|_| self.next() as u8)
            .collect()
    }
    fn name(&mut self) -> String {
        const NAMES: [&str; 9] = [
            "a.bin",
            "client1",
            "",
            "..",
            "../../etc/passwd",
            "/abs",
            "a\0b",
            "x/y",
            "ok-name.dat",
        ];
        NAMES[self.below(NAMES.len() as u64) as usize].to_string()
    }
    fn chunk(&mut self) -> ChunkId {
        ChunkId {
            file: FileId(self.num32()),
            index: self.num32(),
        }
    }
    fn digest(&mut self) -> [u8; 16] {
        self.array()
    }
    fn nonce(&mut self) -> [u8; 16] {
        self.array()
    }
    fn mac(&mut self) -> [u8; 32] {
        self.array()
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut d = [0u8; N];
        d.iter_mut().for_each(|b| *b = self.next() as u8);
        d
    }
}

/// A random message of any kind, with random (often hostile) fields.
fn message(r: &mut Rng) -> Message {
    let n = r.below(4) as usize;
    match r.below(27) {
        0 => Message::Hello {
            version: if r.chance(80) {
                VERSION
            } else {
                r.num() as u16
            },
            token: r.chance(30),
            listen: "127.0.0.1:1".into(),
            name: r.name(),
            files: (0..n)
                .map(|_| FileDecl {
                    name: r.name(),
                    size: r.num(),
                })
                .collect(),
        },
        1 => Message::Progress {
            bytes_received: r.num(),
            bytes_sent: r.num(),
            have: (0..n).map(|_| (FileId(r.num32()), r.num32())).collect(),
        },
        2 => Message::FileComplete {
            file: FileId(r.num32()),
        },
        3 => Message::Done {
            bytes_received: r.num(),
            bytes_sent: r.num(),
        },
        4 => Message::Welcome {
            id: PeerId(r.num32()),
            name: r.name(),
            clock_us: r.num(),
            chunk_size: if r.chance(70) { CHUNK } else { r.num32() },
            clients: r.num32(),
            files: (0..n).map(|_| FileId(r.num32())).collect(),
        },
        5 => Message::Refuse { reason: r.name() },
        6 => Message::Start {
            peers: (0..n)
                .map(|_| PeerInfo {
                    id: PeerId(r.num32()),
                    name: r.name(),
                    addr: "127.0.0.1:1".into(),
                })
                .collect(),
            files: (0..n)
                .map(|_| FileInfo {
                    id: FileId(r.num32()),
                    owner: PeerId(r.num32()),
                    name: r.name(),
                    size: r.num(),
                })
                .collect(),
        },
        7 => Message::Shutdown,
        8 => Message::ChunkDigests {
            file: FileId(r.num32()),
            first: r.num32(),
            digests: (0..r.below(20)).map(|_| r.digest()).collect(),
        },
        9 => Message::FileDigest {
            file: FileId(r.num32()),
            md5: r.digest(),
        },
        10 => Message::PeerHello {
            version: VERSION,
            id: PeerId(r.num32()),
            nonce: r.nonce(),
        },
        11 => Message::Bitfield {
            file: FileId(r.num32()),
            bits: r.bytes(8),
        },
        12 => Message::Have { chunk: r.chunk() },
        13 => Message::Request { chunk: r.chunk() },
        14 => Message::Ping { client_us: r.num() },
        15 => Message::Pong {
            client_us: r.num(),
            server_us: r.num(),
        },
        16 => Message::ClockReport {
            offset_us: r.num() as i64,
            error_us: r.num(),
            max_error_us: r.num(),
        },
        17 => Message::RequestFresh {
            file: FileId(r.num32()),
            below: r.num32(),
        },
        18 => Message::NoFresh {
            file: FileId(r.num32()),
        },
        19 => Message::Load {
            own_eta_ms: r.num32(),
            upload_kib_s: r.num32(),
        },
        20 => Message::Challenge { nonce: r.nonce() },
        21 => Message::Auth {
            nonce: r.nonce(),
            mac: r.mac(),
        },
        22 => Message::Member {
            proof: r.mac(),
            keys: (0..n).map(|_| r.mac()).collect(),
        },
        23 => Message::PeerAuth { mac: r.mac() },
        24 => Message::Stuck { chunks: r.num32() },
        25 => Message::Rejoined {
            peer: PeerInfo {
                id: PeerId(r.num32()),
                name: r.name(),
                addr: if r.chance(50) {
                    "127.0.0.1:1".into()
                } else {
                    r.name()
                },
            },
        },
        _ => Message::Cancel { chunk: r.chunk() },
    }
}

/// A byte stream for the decoder: valid frames, mutated frames, piece headers and noise.
fn stream(r: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + r.below(6) {
        let mut f = match r.below(4) {
            0 => r.bytes(64),
            1 => {
                let len = r.below(CHUNK as u64 * 2) as u32;
                let mut h = piece_header(r.chunk(), len).to_vec();
                h.extend(r.bytes(32));
                h
            }
            _ => encode(&message(r)),
        };
        if !f.is_empty() && r.chance(50) {
            for _ in 0..1 + r.below(3) {
                let i = r.below(f.len() as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
        }
        if r.chance(15) {
            f.truncate(r.below(f.len() as u64 + 1) as usize);
        }
        out.extend(f);
    }
    out
}

/// Feeds `bytes` to a decoder in random splits, through both of its input paths, and drains
/// it until it wants more or reports an error. Returns how many items it produced.
fn decode_all(r: &mut Rng, bytes: &[u8], max_piece: u32) -> usize {
    let mut d = FrameDecoder::new(max_piece);
    let mut pool = BufPool::default();
    let mut got = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1 + r.below(rest.len() as u64)) as usize;
        let (now, later) = rest.split_at(n);
        rest = later;
        if r.chance(50) {
            d.feed(now);
        } else {
            let mut src = now;
            while !src.is_empty() {
                let t = d.read_target();
                let k = t.len().min(src.len());
                assert!(k > 0, "the decoder offered no room to read into");
                t[..k].copy_from_slice(&src[..k]);
                d.advance(k);
                src = &src[k..];
            }
        }
        loop {
            match d.next(&mut pool) {
                Ok(Some(Inbound::Piece { chunk: _, data })) => {
                    assert!(data.len() <= max_piece as usize, "piece over its cap");
                    pool.put(data);
                    got += 1;
                }
                Ok(Some(Inbound::Msg(_))) => got += 1,
                Ok(None) => break,
                Err(_) => return got,
            }
        }
    }
    got
}

#[test]
fn frame_decoder_survives_random_and_mutated_streams() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (runs, mut items) = (30_000, 0);
    LARGEST.store(0, Ordering::Relaxed);
    for _ in 0..runs {
        let bytes = stream(&mut r);
        let max_piece = if r.chance(50) { CHUNK } else { 0 };
        items += decode_all(&mut r, &bytes, max_piece);
        // The body decoder alone, on raw noise.
        let body = r.bytes(48);
        let _ = decode_body(r.below(30) as u8, &body);
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    eprintln!(
        "fuzz: frame decoder, {runs} streams, {items} items decoded, largest allocation {largest} bytes"
    );
    // A stream ends at its first bad frame, so many yield nothing; valid frames must still be
    // common, or the fuzzer only ever tests the first few bytes of the header.
    assert!(
        items > runs / 4,
        "the fuzzer should produce valid frames too"
    );
    assert!(
        largest <= ALLOC_CAP,
        "an allocation of {largest} bytes, over the cap of {ALLOC_CAP}"
    );
}

#[test]
fn server_session_survives_random_message_sequences() {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    let (runs, mut steps) = (3_000, 0);
    for _ in 0..runs {
        let mut s = ServerCore::new(1 + r.below(4) as u32, CHUNK);
        // A third of the runs have a token: joins go through the challenge.
        let token = r.chance(33).then(|| Token::new("fuzz").expect("token"));
        s.set_membership(ServerMembership::new(token.clone(), r.mac()));
        let mut now = 0;
        for _ in 0..60 {
            now += r.below(1_000_000);
            let conn = r.below(6) as usize;
            let mut challenged = None;
            match r.below(10) {
                0 => s.on_connect(conn, "127.0.0.1:9"),
                1 => s.on_disconnect(conn, now),
                // Mostly hellos early on, so runs get past the handshake and into the rest.
                2 | 3 => {
                    // Mostly the token the server expects, answered right.
                    let tok = if r.chance(80) {
                        token.clone()
                    } else {
                        Token::new("other").ok()
                    };
                    let mut cm = ClientMembership::new(tok, r.mac());
                    let hello = Message::Hello {
                        version: VERSION,
                        token: cm.has_token(),
                        listen: "127.0.0.1:1".into(),
                        name: String::new(),
                        files: vec![FileDecl {
                            name: format!("f{conn}.bin"),
                            size: r.below(3 * CHUNK as u64),
                        }],
                    };
                    cm.set_hello(&hello);
                    s.on_message(conn, hello, now);
                    challenged = Some(cm);
                }
                _ => s.on_message(conn, message(&mut r), now),
            }
            while let Some(a) = s.poll_action() {
                if let (Some(cm), ServerAction::Send(k, Message::Challenge { nonce })) =
                    (challenged.as_mut(), &a)
                    && *k == conn
                    && let Ok(auth) = cm.on_challenge(*nonce)
                {
                    s.on_message(conn, auth, now);
                }
            }
            steps += 1;
        }
        let _ = s.summary(now);
    }
    eprintln!("fuzz: server session, {runs} runs, {steps} events");
}

#[test]
fn client_session_survives_random_message_sequences() {
    let mut r = Rng(0x0123_4567_89ab_cdef);
    let (runs, mut steps) = (3_000, 0);
    for _ in 0..runs {
        let decls = vec![FileDecl {
            name: "mine.bin".into(),
            size: r.below(3 * CHUNK as u64),
        }];
        // A fifth of the clients have a token: their joins need the server's proof.
        let token = r.chance(20).then(|| Token::new("fuzz").expect("token"));
        let member = ClientMembership::new(token, r.mac());
        let mut c =
            ClientCore::with_membership("client1".into(), "127.0.0.1:1".into(), decls, member);
        let mut now = 0;
        for _ in 0..60 {
            now += r.below(1_000_000);
            let p = PeerId(r.below(5) as u32);
            match r.below(12) {
                0 => {
                    // A member message (mostly with a key per client) and the welcome.
                    let clients = 1 + r.below(3) as u32;
                    let keys = clients as u64 + u64::from(r.chance(10));
                    let keys = (0..keys).map(|_| r.mac()).collect();
                    c.on_server_message(
                        Message::Member {
                            proof: r.mac(),
                            keys,
                        },
                        now,
                    );
                    c.on_server_message(
                        Message::Welcome {
                            id: PeerId(r.below(3) as u32),
                            name: "client1".into(),
                            clock_us: now,
                            chunk_size: CHUNK,
                            clients,
                            files: vec![FileId(r.below(3) as u32)],
                        },
                        now,
                    )
                }
                1 | 2 => c.on_server_message(message(&mut r), now),
                3 => c.on_peer_connected(p, now),
                4 => c.on_peer_lost(p, "fuzz", now),
                5 => {
                    let _ = c.on_piece(p, r.chunk(), r.below(2 * CHUNK as u64) as usize, now);
                }
                6 => c.on_verified(p, r.chunk(), r.chance(70), now.saturating_sub(5), now),
                7 => c.on_tick(now),
                8 => c.on_dial_failed(p, "fuzz", now),
                9 => {
                    let _ = c.next_piece(p);
                }
                _ => {
                    let _ = c.on_peer_message(p, message(&mut r), now);
                }
            }
            while c.poll_action().is_some() {}
            steps += 1;
        }
    }
    eprintln!("fuzz: client session, {runs} runs, {steps} events");
}

/// Peer handshakes, from either end, fed random messages (and, at random, the right proof):
/// nothing panics, and a link opens only when the other end's MAC is the right one.
#[test]
fn peer_handshakes_open_only_on_a_valid_proof() {
    let mut r = Rng(0x5eed_0fa1_11ed);
    let (runs, mut opened) = (20_000, 0);
    let key = r.mac();
    for _ in 0..runs {
        let (me, peer) = (PeerId(1 + r.below(3) as u32), PeerId(1 + r.below(3) as u32));
        let (mine, theirs) = (r.nonce(), r.nonce());
        let dialled = r.chance(50);
        let mut hs = if dialled {
            PeerHandshake::dial(me, peer, mine).0
        } else {
            PeerHandshake::accept(mine)
        };
        let mut right = false;
        for step in 0..1 + r.below(4) {
            let m = match (step, r.below(4)) {
                (0, 0..=2) => Message::PeerHello {
                    version: VERSION,
                    id: peer,
                    nonce: theirs,
                },
                (_, 0) => {
                    // The proof the other end would make.
                    right = true;
                    let mac = if dialled {
                        peer_mac(&key, false, me, peer, &mine, &theirs)
                    } else {
                        peer_mac(&key, true, peer, me, &theirs, &mine)
                    };
                    Message::PeerAuth { mac }
                }
                _ => {
                    right = false;
                    message(&mut r)
                }
            };
            match hs.on_message(me, m, |_| Ok(key)) {
                Ok(HsStep::Wait(_)) => {}
                Ok(HsStep::Established(p, _)) => {
                    assert!(right, "a link opened without the right proof");
                    assert_eq!(p, peer);
                    opened += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    eprintln!("fuzz: peer handshakes, {runs} runs, {opened} opened");
    assert!(opened > runs / 20, "the fuzzer should open links too");
}
