//! The client's session state machine driven alone, through its public sans-IO interface:
//! messages and `now` in, actions out. No sockets, no threads.

use p2pshare::auth::{ClientMembership, ServerMembership, Token};
use p2pshare::client_core::*;
use p2pshare::codec::{FileDecl, FileInfo, Message, PeerInfo};
use p2pshare::ids::{ChunkId, FileId, PeerId};

/// A client (id 2) that owns f2 in a run with client 1 (owns f1) and client 3 (owns f3), its
/// outputs created empty.
fn started() -> ClientCore {
    let mut c = joined();
    for f in [0, 2] {
        c.on_output_ready(FileId(f), false, 1);
    }
    c
}

/// As `started`, before the shell reports its outputs ready.
fn joined() -> ClientCore {
    joined_with(|_| 600_000)
}

/// As `joined`, file fI of `size(I)` bytes.
fn joined_with(size: impl Fn(u32) -> u64) -> ClientCore {
    let mut c = ClientCore::new(
        String::new(),
        "127.0.0.1:2".into(),
        vec![FileDecl {
            name: "f2".into(),
            size: size(2),
        }],
    );
    c.on_server_message(member(3), 0);
    c.on_server_message(
        Message::Welcome {
            id: PeerId(2),
            name: "client2".into(),
            clock_us: 0,
            chunk_size: 262_144,
            clients: 3,
            files: vec![FileId(1)],
        },
        0,
    );
    let peers = (1..=3)
        .map(|i| PeerInfo {
            id: PeerId(i),
            name: format!("client{i}"),
            addr: format!("127.0.0.1:{i}"),
        })
        .collect();
    let files = (1..=3)
        .map(|i| FileInfo {
            id: FileId(i - 1),
            owner: PeerId(i),
            name: format!("f{i}"),
            size: size(i),
        })
        .collect();
    c.on_server_message(Message::Start { peers, files }, 1);
    c
}

/// The member message of a run of `clients` without a token (the server's is made the same
/// way; the keys' values do not matter to the session).
fn member(clients: u32) -> Message {
    Message::Member {
        proof: [0; 32],
        keys: (0..clients).map(|i| [i as u8; 32]).collect(),
    }
}

fn drain(c: &mut ClientCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

#[test]
fn start_dials_lower_ids_and_creates_outputs() {
    let mut c = started();
    let a = drain(&mut c);
    assert!(a.contains(&Action::Connect {
        peer: PeerId(1),
        addr: "127.0.0.1:1".into()
    }));
    assert!(!a.iter().any(|x| matches!(
        x,
        Action::Connect {
            peer: PeerId(3),
            ..
        }
    )));
    assert!(a.contains(&Action::CreateOutput { file: FileId(0) }));
    assert!(a.contains(&Action::CreateOutput { file: FileId(2) }));
    assert!(
        !a.contains(&Action::CreateOutput { file: FileId(1) }),
        "no output for the own file"
    );
    assert_eq!(
        c.accept_peer(PeerId(1)),
        Err("peer 1 must be dialled by this node, not dial it".into())
    );
    assert!(c.accept_peer(PeerId(3)).is_ok());
}

#[test]
fn piece_before_its_digest_is_a_violation_not_a_panic() {
    let mut c = started();
    c.on_peer_connected(PeerId(3), 2);
    let chunk = ChunkId {
        file: FileId(2),
        index: 0,
    };
    assert!(matches!(
        c.on_piece(PeerId(3), chunk, 262_144, 5),
        PieceVerdict::Violation(_)
    ));
}

#[test]
fn requested_piece_is_verified_then_announced() {
    let mut c = started();
    c.on_peer_connected(PeerId(3), 2);
    c.on_server_message(
        Message::ChunkDigests {
            file: FileId(2),
            first: 0,
            digests: vec![[1; 16], [2; 16], [3; 16]],
        },
        3,
    );
    let a = drain(&mut c);
    let chunk = ChunkId {
        file: FileId(2),
        index: 0,
    };
    // Peer 3 owns the file: it is asked for chunks it never sent, below the digests known.
    assert!(
        a.contains(&Action::ToPeer(
            PeerId(3),
            Message::RequestFresh {
                file: FileId(2),
                below: 3
            }
        )),
        "{a:?}"
    );
    assert_eq!(
        c.on_piece(PeerId(3), chunk, 100, 5),
        PieceVerdict::Violation("piece file2#0 has 100 bytes, expected 262144".into())
    );
    assert_eq!(
        c.on_piece(PeerId(3), chunk, 262_144, 5),
        PieceVerdict::Verify {
            prev: None,
            expect: [1; 16],
            last: false,
            offset: 0,
            requested_at: 3
        }
    );
    c.on_verified(PeerId(3), chunk, true, 3, 10);
    assert!(c.holds(chunk));
    assert_eq!(c.bytes_received, 262_144);
    // A chunk that fails verification is neither held nor counted.
    let bad = ChunkId {
        file: FileId(2),
        index: 1,
    };
    assert!(matches!(
        c.on_piece(PeerId(3), bad, 262_144, 5),
        PieceVerdict::Verify { .. }
    ));
    c.on_verified(PeerId(3), bad, false, 3, 11);
    assert!(!c.holds(bad));
    assert_eq!(c.bytes_received, 262_144);
}

#[test]
fn request_for_a_chunk_not_held_closes_the_peer() {
    let mut c = started();
    c.on_peer_connected(PeerId(3), 2);
    let r = c.on_peer_message(
        PeerId(3),
        Message::Request {
            chunk: ChunkId {
                file: FileId(0),
                index: 0,
            },
        },
        3,
    );
    assert!(r.is_err());
    let own = ChunkId {
        file: FileId(1),
        index: 2,
    };
    assert!(
        c.on_peer_message(PeerId(3), Message::Request { chunk: own }, 3)
            .is_ok()
    );
    assert_eq!(
        c.next_piece(PeerId(3)),
        Some((own, 524_288, 600_000 - 524_288))
    );
}

#[test]
fn lost_peer_is_redialled_with_backoff_then_given_up() {
    let mut c = started();
    drain(&mut c);
    c.on_peer_connected(PeerId(1), 2);
    c.on_peer_lost(PeerId(1), "reset", 1_000);
    let connects = |a: &[Action]| {
        a.iter()
            .filter(|x| {
                matches!(
                    x,
                    Action::Connect {
                        peer: PeerId(1),
                        ..
                    }
                )
            })
            .count()
    };
    c.on_tick(1_000 + REDIAL_BASE_US - 1);
    assert_eq!(connects(&drain(&mut c)), 0, "not before the backoff");
    c.on_tick(1_000 + REDIAL_BASE_US);
    assert_eq!(connects(&drain(&mut c)), 1);
    // Every further failure doubles the delay; after MAX_DIAL_FAILURES it stops.
    let mut now = 1_000 + REDIAL_BASE_US;
    let mut dials = 1;
    for _ in 0..20 {
        c.on_dial_failed(PeerId(1), "refused", now);
        now += 100 * REDIAL_BASE_US;
        c.on_tick(now);
        dials += connects(&drain(&mut c));
    }
    assert_eq!(dials, MAX_DIAL_FAILURES as usize);
    // Peers that dial this node (higher ids) are not dialled by it.
    c.on_peer_connected(PeerId(3), now);
    c.on_peer_lost(PeerId(3), "reset", now);
    c.on_tick(now + 100 * REDIAL_BASE_US);
    assert!(!drain(&mut c).iter().any(|x| matches!(
        x,
        Action::Connect {
            peer: PeerId(3),
            ..
        }
    )));
}

#[test]
fn bad_name_from_server_exits() {
    let mut c = ClientCore::new(String::new(), "127.0.0.1:2".into(), vec![]);
    c.on_server_message(member(3), 0);
    c.on_server_message(
        Message::Welcome {
            id: PeerId(2),
            name: "../x".into(),
            clock_us: 0,
            chunk_size: 262_144,
            clients: 3,
            files: vec![],
        },
        0,
    );
    assert!(matches!(
        drain(&mut c).last(),
        Some(Action::Exit { code: 1, .. })
    ));
}

#[test]
fn whole_file_digest_comes_from_the_owner_only_and_must_agree_with_the_server() {
    let mut c = started();
    c.on_peer_connected(PeerId(1), 2);
    c.on_peer_connected(PeerId(3), 2);
    drain(&mut c);
    let md5 = [7u8; 16];
    // f1 (FileId 0) belongs to client 1: client 3 may not vouch for it.
    assert_eq!(
        c.on_peer_message(
            PeerId(3),
            Message::FileDigest {
                file: FileId(0),
                md5
            },
            3
        ),
        Err("file digest for f1 from a peer that does not own it".into())
    );
    // Nor may anyone send the digest of this node's own file, or of a file not in the run.
    assert!(
        c.on_peer_message(
            PeerId(1),
            Message::FileDigest {
                file: FileId(1),
                md5
            },
            3
        )
        .is_err()
    );
    assert!(
        c.on_peer_message(
            PeerId(1),
            Message::FileDigest {
                file: FileId(9),
                md5
            },
            3
        )
        .is_err()
    );
    // The owner may; the server's copy later must be the same one.
    assert_eq!(
        c.on_peer_message(
            PeerId(1),
            Message::FileDigest {
                file: FileId(0),
                md5
            },
            3
        ),
        Ok(())
    );
    c.on_server_message(
        Message::FileDigest {
            file: FileId(0),
            md5,
        },
        4,
    );
    assert!(
        !drain(&mut c)
            .iter()
            .any(|a| matches!(a, Action::Exit { .. }))
    );
    c.on_server_message(
        Message::FileDigest {
            file: FileId(0),
            md5: [8u8; 16],
        },
        5,
    );
    assert!(
        drain(&mut c)
            .iter()
            .any(|a| matches!(a, Action::Exit { code: 1, reason } if reason.contains("disagree"))),
        "a second, different whole-file MD5 ends the run"
    );
}

#[test]
fn a_resumed_output_is_checked_and_only_what_it_lacks_is_requested() {
    let mut c = joined();
    c.on_output_ready(FileId(0), false, 1);
    // f3 (3 chunks) was left by an earlier life of this node.
    c.on_output_ready(FileId(2), true, 1);
    c.on_peer_connected(PeerId(3), 2);
    let digests = vec![[1; 16], [2; 16], [3; 16]];
    c.on_server_message(
        Message::ChunkDigests {
            file: FileId(2),
            first: 0,
            digests: digests.clone(),
        },
        3,
    );
    let a = drain(&mut c);
    assert!(
        a.contains(&Action::Check {
            file: FileId(2),
            first: 0,
            prevs: vec![None, Some([1; 16]), Some([2; 16])]
        }),
        "{a:?}"
    );
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::ToPeer(_, Message::RequestFresh { .. }))),
        "nothing of f3 is requested before the check: {a:?}"
    );
    // On disk: chunks 0 and 2 intact, chunk 1 not.
    c.on_checked(FileId(2), 0, vec![[1; 16], [9; 16], [3; 16]], 4);
    let chunk = |index| ChunkId {
        file: FileId(2),
        index,
    };
    assert!(c.holds(chunk(0)) && !c.holds(chunk(1)) && c.holds(chunk(2)));
    assert_eq!(c.bytes_received, 0, "held from disk, not received");
    let a = drain(&mut c);
    for i in [0, 2] {
        assert!(a.contains(&Action::ToPeer(
            PeerId(3),
            Message::Have { chunk: chunk(i) }
        )));
    }
    assert!(
        a.contains(&Action::ToPeer(
            PeerId(3),
            Message::RequestFresh {
                file: FileId(2),
                below: 3
            }
        )),
        "the chunk that failed its check is fetched: {a:?}"
    );
}

#[test]
fn a_peer_that_rejoins_elsewhere_is_dialled_there_now() {
    let mut c = started();
    c.on_peer_connected(PeerId(1), 2);
    drain(&mut c);
    let moved = PeerInfo {
        id: PeerId(1),
        name: "client1".into(),
        addr: "127.0.0.1:7777".into(),
    };
    c.on_server_message(Message::Rejoined { peer: moved }, 3);
    let a = drain(&mut c);
    assert!(a.contains(&Action::Disconnect {
        peer: PeerId(1),
        reason: "the peer restarted".into()
    }));
    assert!(a.contains(&Action::Connect {
        peer: PeerId(1),
        addr: "127.0.0.1:7777".into()
    }));
}

fn welcome(id: u32, clients: u32) -> Message {
    Message::Welcome {
        id: PeerId(id),
        name: format!("client{id}"),
        clock_us: 0,
        chunk_size: 262_144,
        clients,
        files: vec![],
    }
}

fn exit_of(c: &mut ClientCore) -> Option<(i32, String)> {
    drain(c).into_iter().find_map(|a| match a {
        Action::Exit { code, reason } => Some((code, reason)),
        _ => None,
    })
}

#[test]
fn a_welcome_needs_the_member_message_first() {
    let mut c = ClientCore::new(String::new(), "127.0.0.1:2".into(), vec![]);
    c.on_server_message(welcome(1, 2), 0);
    let (code, _) = exit_of(&mut c).expect("an exit");
    assert_eq!(code, 1);
    // With it, the client joins and holds a key for each other member, none for itself.
    let mut c = ClientCore::new(String::new(), "127.0.0.1:2".into(), vec![]);
    c.on_server_message(member(2), 0);
    c.on_server_message(welcome(1, 2), 0);
    assert_eq!(exit_of(&mut c), None);
    assert_eq!(c.peer_key(PeerId(2)), Ok([1; 32]));
    assert!(c.peer_key(PeerId(1)).is_err());
    assert!(c.peer_key(PeerId(3)).is_err());
}

fn tokened(token: &str) -> ClientCore {
    let m = ClientMembership::new(Some(Token::new(token).unwrap()), [4; 32]);
    ClientCore::with_membership(String::new(), "127.0.0.1:2".into(), vec![], m)
}

#[test]
fn a_client_with_a_token_answers_the_challenge_without_sending_the_token() {
    let mut c = tokened("open sesame");
    let a = drain(&mut c);
    assert!(matches!(
        &a[..],
        [Action::ToServer(Message::Hello { token: true, .. })]
    ));
    c.on_server_message(Message::Challenge { nonce: [1; 16] }, 0);
    let a = drain(&mut c);
    let [Action::ToServer(auth @ Message::Auth { .. })] = &a[..] else {
        panic!("an auth: {a:?}")
    };
    let bytes = p2pshare::codec::encode(auth);
    assert!(!bytes.windows(11).any(|w| w == b"open sesame"));
}

#[test]
fn a_client_with_a_token_exits_2_on_a_refusal_or_an_unproven_server() {
    let mut c = tokened("t");
    c.on_server_message(
        Message::Refuse {
            reason: "bad token".into(),
        },
        0,
    );
    assert_eq!(
        exit_of(&mut c),
        Some((2, "the server refused this client: bad token".into()))
    );
    // A server that does not know the token cannot make its proof.
    let mut c = tokened("t");
    c.on_server_message(Message::Challenge { nonce: [1; 16] }, 0);
    c.on_server_message(member(2), 0);
    let (code, reason) = exit_of(&mut c).expect("an exit");
    assert_eq!(code, 2);
    assert!(
        reason.contains("could not prove it knows the token"),
        "{reason}"
    );
    // One that skips the challenge is no better.
    let mut c = tokened("t");
    c.on_server_message(member(2), 0);
    assert_eq!(exit_of(&mut c).map(|e| e.0), Some(2));
    // The real server's member message passes.
    let mut s = ServerMembership::new(Some(Token::new("t").unwrap()), [2; 32]);
    let mut c = tokened("t");
    let Some(Action::ToServer(hello)) = c.poll_action() else {
        panic!("a hello")
    };
    let p2pshare::auth::JoinStep::Send(Message::Challenge { nonce }) = s.on_hello(0, hello) else {
        panic!("a challenge")
    };
    c.on_server_message(Message::Challenge { nonce }, 0);
    let Some(Action::ToServer(Message::Auth { nonce, mac })) = c.poll_action() else {
        panic!("an auth")
    };
    let p2pshare::auth::JoinStep::Admit { proof, .. } = s.on_auth(0, nonce, mac) else {
        panic!("admitted")
    };
    c.on_server_message(
        Message::Member {
            proof,
            keys: vec![[0; 32]; 2],
        },
        0,
    );
    c.on_server_message(welcome(1, 2), 0);
    assert_eq!(exit_of(&mut c), None);
}

/// The `Uncache` actions among `a`, as (file, from, to).
fn uncached(a: &[Action]) -> Vec<(u32, u32, u32)> {
    a.iter()
        .filter_map(|x| match x {
            Action::Uncache { file, from, to } => Some((file.0, *from, *to)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_chunk_leaves_the_page_cache_once_held_here_and_by_every_other_member() {
    // Client 2 downloads f1 (owner 1, 10 chunks) and f3 (owner 3) in a run of three; for f1
    // the one other member that needs it is client 3.
    let mut c = joined_with(|i| if i == 1 { 10 * 262_144 - 1000 } else { 600_000 });
    let f1 = FileId(0);
    let digests: Vec<[u8; 16]> = (0..10).map(|i| [i as u8; 16]).collect();
    c.on_server_message(
        Message::ChunkDigests {
            file: f1,
            first: 0,
            digests: digests.clone(),
        },
        1,
    );
    // A resumed output: chunks 0..8 are found intact first, 8 and 9 later.
    c.on_output_ready(f1, true, 2);
    c.on_checked(f1, 0, digests[..8].to_vec(), 3);
    for p in [1, 3] {
        c.on_peer_connected(PeerId(p), 4);
    }
    let have = |c: &mut ClientCore, index| {
        let m = Message::Have {
            chunk: ChunkId { file: f1, index },
        };
        c.on_peer_message(PeerId(3), m, 5).expect("a have is fine");
    };
    for i in [0, 1, 2, 3, 4, 7, 8] {
        have(&mut c, i);
    }
    c.on_tick(6);
    assert_eq!(
        uncached(&drain(&mut c)),
        vec![(0, 0, 5)],
        "0..5: held here and by client 3; 5 and 6 are not at client 3, 7 is alone, 8 not here"
    );
    have(&mut c, 5);
    c.on_tick(8);
    assert_eq!(
        uncached(&drain(&mut c)),
        vec![],
        "5 alone is a run too short to drop while the file is incomplete"
    );
    // Client 3 disconnects: a chunk it lacks may be asked of this node when it is back.
    c.on_peer_lost(PeerId(3), "test", 9);
    c.on_checked(f1, 8, digests[8..].to_vec(), 9);
    c.on_tick(10);
    assert_eq!(uncached(&drain(&mut c)), vec![]);
    c.on_peer_connected(PeerId(3), 11);
    for i in (0..10).filter(|&i| i != 5) {
        have(&mut c, i);
    }
    c.on_tick(12);
    assert_eq!(
        uncached(&drain(&mut c)),
        vec![(0, 6, 10)],
        "6..10 (chunk 5 is still needed by client 3)"
    );
    have(&mut c, 5);
    c.on_tick(13);
    assert_eq!(
        uncached(&drain(&mut c)),
        vec![(0, 5, 6)],
        "a short run that fills a gap goes at once; nothing twice, never the own file"
    );
    c.on_tick(14);
    assert_eq!(uncached(&drain(&mut c)), vec![]);
    // A short run at the end once the file is complete: f3 (3 chunks) in one go.
    let f3 = FileId(2);
    let d3: Vec<[u8; 16]> = (0..3).map(|i| [100 + i as u8; 16]).collect();
    c.on_server_message(
        Message::ChunkDigests {
            file: f3,
            first: 0,
            digests: d3.clone(),
        },
        15,
    );
    c.on_output_ready(f3, true, 15);
    c.on_checked(f3, 0, d3[..2].to_vec(), 16);
    for index in 0..3 {
        let m = Message::Have {
            chunk: ChunkId { file: f3, index },
        };
        c.on_peer_message(PeerId(1), m, 16).expect("a have is fine");
    }
    c.on_tick(17);
    assert_eq!(uncached(&drain(&mut c)), vec![], "2 chunks: too short");
    c.on_checked(f3, 2, d3[2..].to_vec(), 18);
    c.on_tick(18);
    assert_eq!(uncached(&drain(&mut c)), vec![(2, 0, 3)]);
}

/// A chain of chunk digests that does not end in the file's announced MD5 can never pass: the
/// client stops as soon as it knows both, whichever comes first, before fetching the file.
#[test]
fn a_chain_that_does_not_end_in_the_announced_md5_stops_the_client_at_once() {
    let digests = || Message::ChunkDigests {
        file: FileId(2),
        first: 0,
        digests: vec![[1; 16], [2; 16], [3; 16]],
    };
    let whole = |b: u8| Message::FileDigest {
        file: FileId(2),
        md5: [b; 16],
    };
    for digests_first in [true, false] {
        let mut c = started();
        let (a, b) = if digests_first {
            (digests(), whole(9))
        } else {
            (whole(9), digests())
        };
        c.on_server_message(a, 3);
        c.on_server_message(b, 4);
        let (code, reason) = exit_of(&mut c).expect("the client stops");
        assert_eq!(code, 1);
        assert!(
            reason.contains(&format!("ends in the MD5 {}", "03".repeat(16)))
                && reason.contains(&"09".repeat(16)),
            "{reason}"
        );
    }
    let mut c = started();
    c.on_server_message(digests(), 3);
    c.on_server_message(whole(3), 4);
    assert_eq!(
        exit_of(&mut c),
        None,
        "a chain that ends in the MD5 goes on"
    );
}
