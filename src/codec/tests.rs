//! Codec round trips, every frame split at every byte, truncations, oversized frames, bad
//! magic, version and kind, and hostile element counts; `samples` is shared with the frame
//! decoder's tests.
use super::*;

/// One message of every kind (also used by the frame decoder's tests).
pub(crate) fn samples() -> Vec<Message> {
    let c = ChunkId {
        file: FileId(3),
        index: 77,
    };
    vec![
        Message::Hello {
            version: VERSION,
            token: true,
            listen: "127.0.0.1:4000".into(),
            name: "client1".into(),
            files: vec![FileDecl {
                name: "a.bin".into(),
                size: 5 << 32,
            }],
        },
        Message::Progress {
            bytes_received: 1,
            bytes_sent: 2,
            have: vec![(FileId(0), 9), (FileId(2), 0)],
        },
        Message::FileComplete { file: FileId(1) },
        Message::Done {
            bytes_received: 10,
            bytes_sent: 20,
        },
        Message::Welcome {
            id: PeerId(2),
            name: "client2".into(),
            clock_us: 123_456,
            chunk_size: 262_144,
            clients: 4,
            files: vec![FileId(1)],
        },
        Message::Refuse {
            reason: "run is full".into(),
        },
        Message::Start {
            peers: vec![PeerInfo {
                id: PeerId(1),
                name: "client1".into(),
                addr: "10.0.0.1:5".into(),
            }],
            files: vec![FileInfo {
                id: FileId(0),
                owner: PeerId(1),
                name: "f".into(),
                size: 0,
            }],
        },
        Message::Shutdown,
        Message::Ping { client_us: 42 },
        Message::Pong {
            client_us: 42,
            server_us: u64::MAX,
        },
        Message::ClockReport {
            offset_us: -3_600_000_000,
            error_us: 55,
            max_error_us: 20_000,
        },
        Message::ChunkDigests {
            file: FileId(0),
            first: 5,
            digests: vec![[7; 16], [9; 16]],
        },
        Message::FileDigest {
            file: FileId(0),
            md5: [1; 16],
        },
        Message::PeerHello {
            version: VERSION,
            id: PeerId(4),
            nonce: [0xa5; 16],
        },
        Message::PeerAuth { mac: [3; 32] },
        Message::Challenge { nonce: [4; 16] },
        Message::Auth {
            nonce: [5; 16],
            mac: [6; 32],
        },
        Message::Member {
            proof: [7; 32],
            keys: vec![[0; 32], [8; 32], [9; 32]],
        },
        Message::Bitfield {
            file: FileId(0),
            bits: vec![0xff, 0x01],
        },
        Message::Have { chunk: c },
        Message::Request { chunk: c },
        Message::Cancel { chunk: c },
        Message::RequestFresh {
            file: FileId(2),
            below: 800,
        },
        Message::NoFresh { file: FileId(5) },
        Message::Load {
            own_eta_ms: 1234,
            upload_kib_s: 122_070,
        },
        Message::Stuck { chunks: 17 },
        Message::Rejoined {
            peer: PeerInfo {
                id: PeerId(3),
                name: "client3".into(),
                addr: "10.0.0.3:4000".into(),
            },
        },
    ]
}

#[test]
fn every_truncation_of_every_body_is_rejected() {
    for m in samples() {
        let f = encode(&m);
        let body = &f[FRAME_HEADER_LEN..];
        for cut in 0..body.len() {
            let r = decode_body(f[4], &body[..cut]);
            assert!(r.is_err(), "{} cut at {cut} decoded as {r:?}", m.name());
        }
        let mut long = body.to_vec();
        long.push(0);
        assert_eq!(
            decode_body(f[4], &long),
            Err(DecodeError::Trailing),
            "{}",
            m.name()
        );
    }
}

#[test]
fn bad_magic_version_kind() {
    let mut f = encode(&Message::PeerHello {
        version: VERSION,
        id: PeerId(1),
        nonce: [0; 16],
    });
    f[5] = b'X';
    assert_eq!(decode_body(f[4], &f[5..]), Err(DecodeError::BadMagic));
    let f = encode(&Message::PeerHello {
        version: 9,
        id: PeerId(1),
        nonce: [0; 16],
    });
    assert_eq!(decode_body(f[4], &f[5..]), Err(DecodeError::BadVersion(9)));
    assert_eq!(decode_body(200, &[]), Err(DecodeError::UnknownKind(200)));
}

#[test]
fn hostile_count_does_not_allocate() {
    // A Progress frame claiming 2^32-1 entries in a 20-byte body.
    let mut body = vec![0u8; 16];
    body.extend(u32::MAX.to_be_bytes());
    assert_eq!(
        decode_body(kind::PROGRESS, &body),
        Err(DecodeError::BadCount)
    );
}

#[test]
fn hello_token_flag_is_strict() {
    let hello = |token| Message::Hello {
        version: VERSION,
        token,
        listen: "127.0.0.1:1".into(),
        name: String::new(),
        files: vec![],
    };
    let f = encode(&hello(false));
    // magic (4) and version (2), then the flag.
    let at = FRAME_HEADER_LEN + 6;
    assert_eq!(f[at], 0);
    assert_eq!(encode(&hello(true))[at], 1);
    let mut bad = f.clone();
    bad[at] = 2;
    assert_eq!(decode_body(bad[4], &bad[5..]), Err(DecodeError::BadFlag(2)));
}

#[test]
fn hostile_member_key_count_does_not_allocate() {
    let mut body = vec![0u8; 32];
    body.extend(u32::MAX.to_be_bytes());
    body.extend([0u8; 64]);
    assert_eq!(decode_body(kind::MEMBER, &body), Err(DecodeError::BadCount));
}
