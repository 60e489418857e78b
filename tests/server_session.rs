//! The server's session state machine driven alone, through its public sans-IO interface:
//! messages and `now` in, actions out. No sockets, no threads.

use p2pshare::auth::{ClientMembership, ServerMembership, Token};
use p2pshare::codec::{FileDecl, Message, VERSION};
use p2pshare::ids::{FileId, PeerId};
use p2pshare::server_core::*;

fn hello(name: &str, file: &str) -> Message {
    Message::Hello {
        version: VERSION,
        token: false,
        listen: "127.0.0.1:9".into(),
        name: name.into(),
        files: vec![FileDecl {
            name: file.into(),
            size: 10,
        }],
    }
}

fn drain(s: &mut ServerCore) -> Vec<ServerAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

#[test]
fn welcome_start_and_refusal_when_full() {
    let mut s = ServerCore::new(2, 262_144);
    for k in 0..3 {
        s.on_connect(k, "127.0.0.1:1");
    }
    s.on_message(0, hello("", "a"), 5);
    s.on_message(1, hello("", "b"), 6);
    let a = drain(&mut s);
    // The member message (a pair key per client of the run) goes just before the welcome.
    assert!(
        matches!(&a[0], ServerAction::Send(0, Message::Member { proof, keys }) if keys.len() == 2 && *proof == [0; 32])
    );
    assert!(
        matches!(&a[1], ServerAction::Send(0, Message::Welcome { id: PeerId(1), name, .. }) if name == "client1")
    );
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, ServerAction::Send(_, Message::Start { .. })))
            .count(),
        2
    );
    s.on_message(2, hello("", "c"), 7);
    let a = drain(&mut s);
    assert!(matches!(
        &a[0],
        ServerAction::Send(2, Message::Refuse { .. })
    ));
    assert!(matches!(&a[1], ServerAction::Close(2, _)));
}

#[test]
fn violations_close_the_connection() {
    let mut s = ServerCore::new(2, 262_144);
    s.on_connect(0, "x");
    s.on_message(
        0,
        Message::Done {
            bytes_received: 0,
            bytes_sent: 0,
        },
        1,
    );
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(0, r)] if r.contains("before hello"))
    );
    s.on_connect(1, "x");
    s.on_message(1, hello("", "../../etc/passwd"), 1);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [
            ServerAction::Send(1, Message::Refuse { .. }),
            ServerAction::Close(1, _)
        ]
    ));
    s.on_connect(2, "x");
    s.on_message(2, hello("", "a"), 1);
    s.on_message(2, hello("", "a2"), 1);
    assert!(matches!(drain(&mut s).last(), Some(ServerAction::Close(2, r)) if r == "second hello"));
}

#[test]
fn oversized_hellos_are_refused() {
    let mut s = ServerCore::new(2, 262_144);
    s.on_connect(0, "x");
    let files = (0..=MAX_FILES_PER_CLIENT)
        .map(|i| FileDecl {
            name: format!("f{i}"),
            size: 1,
        })
        .collect();
    s.on_message(
        0,
        Message::Hello {
            version: VERSION,
            token: false,
            listen: "127.0.0.1:9".into(),
            name: String::new(),
            files,
        },
        1,
    );
    assert!(matches!(
        drain(&mut s).as_slice(),
        [
            ServerAction::Send(0, Message::Refuse { .. }),
            ServerAction::Close(0, _)
        ]
    ));
    s.on_connect(1, "x");
    let huge = vec![FileDecl {
        name: "big".into(),
        size: 1 << 50,
    }];
    s.on_message(
        1,
        Message::Hello {
            version: VERSION,
            token: false,
            listen: "127.0.0.1:9".into(),
            name: String::new(),
            files: huge,
        },
        1,
    );
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Send(1, Message::Refuse { reason }), _] if reason.contains("too large"))
    );
}

#[test]
fn done_before_every_file_is_refused() {
    let mut s = ServerCore::new(2, 262_144);
    s.on_connect(0, "x");
    s.on_connect(1, "x");
    s.on_message(0, hello("", "a"), 1);
    s.on_message(1, hello("", "b"), 1);
    drain(&mut s);
    s.on_message(
        0,
        Message::Done {
            bytes_received: 0,
            bytes_sent: 0,
        },
        2,
    );
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(0, r)] if r.contains("done after completing 0 of 1"))
    );
    // Completing its own file is not a completion.
    s.on_message(1, Message::FileComplete { file: FileId(1) }, 2);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [ServerAction::Close(1, _)]
    ));
}

#[test]
fn run_finishes_when_every_client_is_done() {
    let mut s = ServerCore::new(2, 262_144);
    s.on_connect(0, "x");
    s.on_connect(1, "x");
    s.on_message(0, hello("", "a"), 1_000);
    s.on_message(1, hello("", "b"), 2_000);
    drain(&mut s);
    s.on_message(0, Message::FileComplete { file: FileId(1) }, 5_000);
    s.on_message(
        0,
        Message::Done {
            bytes_received: 10,
            bytes_sent: 10,
        },
        5_000,
    );
    s.on_message(1, Message::FileComplete { file: FileId(0) }, 9_000);
    s.on_message(
        1,
        Message::Done {
            bytes_received: 10,
            bytes_sent: 10,
        },
        9_000,
    );
    let a = drain(&mut s);
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, ServerAction::Send(_, Message::Shutdown)))
            .count(),
        2
    );
    assert!(matches!(a.last(), Some(ServerAction::Finished { code: 0 })));
    let sum = s.summary(10_000);
    assert_eq!(
        sum.total_ms, 8.0,
        "first connection at 1 ms, last completion at 9 ms"
    );
    assert_eq!(sum.clients[0].elapsed_ms, Some(4.0));
    assert_eq!(sum.clients[1].elapsed_ms, Some(7.0));
}

#[test]
fn ping_is_answered_with_the_server_clock_and_clock_reports_reach_the_summary() {
    let mut s = ServerCore::new(2, 262_144);
    s.on_connect(0, "x");
    s.on_message(0, Message::Ping { client_us: 7 }, 1);
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(0, r)] if r.contains("ping before hello"))
    );
    s.on_connect(1, "x");
    s.on_message(1, hello("", "a"), 1_000);
    drain(&mut s);
    s.on_message(1, Message::Ping { client_us: 99 }, 12_345);
    assert_eq!(
        drain(&mut s),
        [ServerAction::Send(
            1,
            Message::Pong {
                client_us: 99,
                server_us: 12_345
            }
        )]
    );
    let before = s.summary(20_000);
    assert_eq!(before.clients[0].clock_error_ms, None);
    s.on_message(
        1,
        Message::ClockReport {
            offset_us: -3_600_000_250,
            error_us: 40,
            max_error_us: 1_500,
        },
        13_000,
    );
    assert!(drain(&mut s).is_empty());
    let c = &s.summary(20_000).clients[0];
    assert_eq!(c.clock_offset_ms, Some(-3_600_000.25));
    assert_eq!(c.clock_error_ms, Some(0.04));
    assert_eq!(c.clock_max_error_ms, Some(1.5));
}

/// Two clients, started; client 1's file has two chunk digests known.
fn two_started() -> ServerCore {
    let mut s = ServerCore::new(2, 262_144);
    s.set_rejoin_wait(5_000_000);
    s.on_connect(0, "x");
    s.on_connect(1, "x");
    s.on_message(0, hello("", "a"), 1);
    s.on_message(1, hello("", "b"), 2);
    s.on_message(
        0,
        Message::ChunkDigests {
            file: FileId(0),
            first: 0,
            digests: vec![[1; 16]],
        },
        3,
    );
    drain(&mut s);
    s
}

#[test]
fn a_lost_client_rejoins_its_slot_and_the_others_learn_its_new_address() {
    let mut s = two_started();
    s.on_disconnect(0, 10);
    // A stranger with other files is no lost client: the run stays full.
    s.on_connect(5, "x");
    s.on_message(5, hello("", "zzz"), 11);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [
            ServerAction::Send(5, Message::Refuse { .. }),
            ServerAction::Close(5, _)
        ]
    ));
    // The same files again: the same id, the client list, the digests it does not own.
    s.on_connect(6, "x");
    let mut again = hello("", "a");
    if let Message::Hello { listen, .. } = &mut again {
        *listen = "127.0.0.1:4444".into();
    }
    s.on_message(6, again, 12);
    let a = drain(&mut s);
    let to_it: Vec<&Message> = a
        .iter()
        .filter_map(|x| match x {
            ServerAction::Send(6, m) => Some(m),
            _ => None,
        })
        .collect();
    // Its member keys, then the welcome, then the client list.
    assert!(matches!(to_it[0], Message::Member { .. }), "{a:?}");
    assert!(
        matches!(to_it[1], Message::Welcome { id: PeerId(1), name, files, .. } if name == "client1" && files == &[FileId(0)]),
        "{a:?}"
    );
    assert!(matches!(to_it[2], Message::Start { peers, .. } if peers[0].addr == "127.0.0.1:4444"));
    assert!(a.contains(&ServerAction::Send(
        1,
        Message::Rejoined {
            peer: p2pshare::codec::PeerInfo {
                id: PeerId(1),
                name: "client1".into(),
                addr: "127.0.0.1:4444".into()
            }
        }
    )));
    // Its digests again: the same are taken in silence, others close the connection.
    s.on_message(
        6,
        Message::ChunkDigests {
            file: FileId(0),
            first: 0,
            digests: vec![[1; 16]],
        },
        13,
    );
    assert!(drain(&mut s).is_empty());
    s.on_message(
        6,
        Message::ChunkDigests {
            file: FileId(0),
            first: 0,
            digests: vec![[2; 16]],
        },
        14,
    );
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(6, r)] if r.contains("changed"))
    );
}

/// A rejoined owner computes its chain again, in batches cut where its first life's were not:
/// what overlaps must match, and what goes beyond is taken and relayed.
#[test]
fn a_rejoined_owners_digests_may_straddle_what_the_server_holds() {
    let mut s = ServerCore::new(2, 1024);
    s.on_connect(0, "x");
    s.on_connect(1, "x");
    let big = |name: &str| {
        let mut h = hello("", name);
        if let Message::Hello { files, .. } = &mut h {
            files[0].size = 10 * 1024;
        }
        h
    };
    s.on_message(0, big("a"), 1);
    s.on_message(1, big("b"), 2);
    let digests =
        |first: u8, n: u8| -> Vec<[u8; 16]> { (first..first + n).map(|i| [i; 16]).collect() };
    let send_these = |s: &mut ServerCore, conn, first: u8, digests: Vec<[u8; 16]>, now| {
        s.on_message(
            conn,
            Message::ChunkDigests {
                file: FileId(0),
                first: u32::from(first),
                digests,
            },
            now,
        );
    };
    let send = |s: &mut ServerCore, conn, first: u8, n: u8, now| {
        send_these(s, conn, first, digests(first, n), now);
    };
    send(&mut s, 0, 0, 3, 3);
    drain(&mut s);
    s.on_disconnect(0, 10);
    s.on_connect(6, "x");
    s.on_message(6, big("a"), 12);
    drain(&mut s);
    // 0..4 again: 0..3 as before, chunk 3 new; then 4..10.
    send(&mut s, 6, 0, 4, 13);
    let a = drain(&mut s);
    assert!(
        a.contains(&ServerAction::Send(
            1,
            Message::ChunkDigests {
                file: FileId(0),
                first: 3,
                digests: digests(3, 1)
            }
        )),
        "{a:?}"
    );
    send(&mut s, 6, 4, 6, 14);
    let a = drain(&mut s);
    assert!(
        !a.iter().any(|x| matches!(x, ServerAction::Close(..))),
        "{a:?}"
    );
    assert!(
        a.contains(&ServerAction::Send(
            1,
            Message::ChunkDigests {
                file: FileId(0),
                first: 4,
                digests: digests(4, 6)
            }
        )),
        "{a:?}"
    );
    // A straddling batch whose old part differs is still refused.
    send(&mut s, 6, 8, 2, 15);
    assert!(
        drain(&mut s).is_empty(),
        "known and equal: taken in silence"
    );
    send_these(&mut s, 6, 9, vec![[0; 16]], 16);
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(6, r)] if r.contains("changed"))
    );
}

#[test]
fn a_run_nobody_can_progress_ends_after_the_rejoin_wait() {
    let mut s = two_started();
    s.on_disconnect(0, 1_000_000);
    s.on_tick(2_000_000);
    assert!(drain(&mut s).is_empty(), "client 2 can still progress");
    s.on_message(1, Message::Stuck { chunks: 3 }, 2_000_000);
    s.on_tick(6_999_999);
    assert!(
        drain(&mut s).is_empty(),
        "the lost client may still come back"
    );
    // Unstuck (say a chunk came from elsewhere) and stuck again: the wait starts over.
    s.on_message(1, Message::Stuck { chunks: 0 }, 3_000_000);
    s.on_message(1, Message::Stuck { chunks: 2 }, 4_000_000);
    s.on_tick(8_999_999);
    assert!(drain(&mut s).is_empty());
    s.on_tick(9_000_000);
    assert_eq!(
        drain(&mut s),
        vec![
            ServerAction::Send(1, Message::Shutdown),
            ServerAction::Finished { code: 1 }
        ]
    );
    let sum = s.summary(9_000_000);
    assert!(sum.clients.iter().all(|c| !c.complete));
}
fn tokened(name: &str) -> (Message, ClientMembership) {
    let mut m = ClientMembership::new(Some(Token::new("s3cret").unwrap()), [9; 32]);
    let h = Message::Hello {
        version: VERSION,
        token: true,
        listen: "127.0.0.1:9".into(),
        name: name.into(),
        files: vec![],
    };
    m.set_hello(&h);
    (h, m)
}

#[test]
fn a_run_with_a_token_challenges_and_admits_only_the_right_proof() {
    let mut s = ServerCore::new(2, 262_144);
    s.set_membership(ServerMembership::new(
        Some(Token::new("s3cret").unwrap()),
        [1; 32],
    ));
    for k in 0..4 {
        s.on_connect(k, "127.0.0.1:1");
    }
    // Right token: challenge, auth, then member (with the server's proof) and welcome.
    let (h, mut m) = tokened("good");
    s.on_message(0, h, 1);
    let [ServerAction::Send(0, Message::Challenge { nonce })] = drain(&mut s)[..] else {
        panic!("a challenge")
    };
    s.on_message(0, m.on_challenge(nonce).unwrap(), 2);
    let a = drain(&mut s);
    let ServerAction::Send(0, Message::Member { proof, keys }) = &a[0] else {
        panic!("member first: {a:?}")
    };
    assert_eq!(
        m.on_member(*proof, keys.clone()),
        Ok(()),
        "the proof checks"
    );
    assert!(matches!(
        &a[1],
        ServerAction::Send(0, Message::Welcome { .. })
    ));
    // Wrong token: refused as "bad token", and closed.
    let mut bad = ClientMembership::new(Some(Token::new("guess").unwrap()), [3; 32]);
    let (h, _) = tokened("bad");
    bad.set_hello(&h);
    s.on_message(1, h, 3);
    let [ServerAction::Send(1, Message::Challenge { nonce })] = drain(&mut s)[..] else {
        panic!("a challenge")
    };
    s.on_message(1, bad.on_challenge(nonce).unwrap(), 4);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [ServerAction::Send(1, Message::Refuse { reason }), ServerAction::Close(1, _)] if reason == "bad token"
    ));
    // No token: refused at the hello. Anything but an auth after a challenge: closed.
    s.on_message(2, hello("none", "n"), 5);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [ServerAction::Send(2, Message::Refuse { reason }), _] if reason.starts_with("missing token")
    ));
    let (h, _) = tokened("rude");
    s.on_message(3, h, 6);
    drain(&mut s);
    s.on_message(3, Message::Ping { client_us: 1 }, 7);
    assert!(
        matches!(drain(&mut s).as_slice(), [ServerAction::Close(3, r)] if r == "ping before auth")
    );
}
