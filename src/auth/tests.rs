//! The membership handshakes driven alone: joins with and without a token, every mismatch,
//! replays, a forged server, and peer links between members of one run, of two runs, and with
//! strangers.
use super::*;

fn hello(token: bool) -> Message {
    Message::Hello {
        version: VERSION,
        token,
        listen: "127.0.0.1:7".into(),
        name: "c".into(),
        files: vec![],
    }
}

fn tok(s: &str) -> Option<Token> {
    Some(Token::new(s).unwrap())
}

/// A client whose hello is `hello(token.is_some())`.
fn client(token: Option<Token>, seed: u8) -> (ClientMembership, Message) {
    let mut c = ClientMembership::new(token, [seed; 32]);
    let h = hello(c.has_token());
    c.set_hello(&h);
    (c, h)
}

/// Runs a join on connection `conn`; returns the server's last step and the client's result
/// of taking the member message (if it got that far).
fn join(
    s: &mut ServerMembership,
    conn: usize,
    c: &mut ClientMembership,
    h: Message,
) -> (JoinStep, Option<Result<(), Fail>>) {
    let mut step = s.on_hello(conn, h);
    if let JoinStep::Send(Message::Challenge { nonce }) = step {
        let Ok(Message::Auth { nonce, mac }) = c.on_challenge(nonce) else {
            panic!("no auth")
        };
        step = s.on_auth(conn, nonce, mac);
    }
    let took = match &step {
        JoinStep::Admit { proof, .. } => Some(c.on_member(*proof, vec![[0; 32]; 2])),
        _ => None,
    };
    (step, took)
}

#[test]
fn join_with_the_right_token_is_admitted_and_the_server_proven() {
    let mut s = ServerMembership::new(tok("sesame"), [1; 32]);
    let (mut c, h) = client(tok("sesame"), 2);
    let (step, took) = join(&mut s, 0, &mut c, h.clone());
    assert!(matches!(step, JoinStep::Admit { hello, .. } if hello == h));
    assert_eq!(took, Some(Ok(())));
    assert_eq!(c.check_welcome(PeerId(1), 2), Ok(()));
    assert!(!s.is_pending(0));
}

#[test]
fn join_without_token_on_both_sides_is_admitted() {
    let mut s = ServerMembership::new(None, [1; 32]);
    let (mut c, h) = client(None, 2);
    let (step, took) = join(&mut s, 0, &mut c, h);
    assert!(matches!(step, JoinStep::Admit { proof, .. } if proof == [0; 32]));
    assert_eq!(took, Some(Ok(())));
}

#[test]
fn token_mismatches_are_refused_with_the_reason() {
    let cases = [
        (tok("a"), tok("b"), BAD_TOKEN),
        (tok("a"), None, MISSING_TOKEN),
        (None, tok("a"), UNEXPECTED_TOKEN),
    ];
    for (server, cl, why) in cases {
        let mut s = ServerMembership::new(server, [1; 32]);
        let (mut c, h) = client(cl, 2);
        let (step, took) = join(&mut s, 0, &mut c, h);
        assert_eq!(step, JoinStep::Refuse(why.into()));
        assert_eq!(took, None);
        assert!(!s.is_pending(0));
    }
}

#[test]
fn an_auth_replayed_on_another_connection_is_refused() {
    let mut s = ServerMembership::new(tok("t"), [1; 32]);
    let (mut c, h) = client(tok("t"), 2);
    let JoinStep::Send(Message::Challenge { nonce }) = s.on_hello(0, h.clone()) else {
        panic!()
    };
    let Ok(Message::Auth { nonce: nc, mac }) = c.on_challenge(nonce) else {
        panic!()
    };
    assert!(matches!(s.on_auth(0, nc, mac), JoinStep::Admit { .. }));
    // A stranger who recorded that auth sends it on its own connection.
    let JoinStep::Send(Message::Challenge { nonce: other }) = s.on_hello(1, h) else {
        panic!()
    };
    assert_ne!(other, nonce, "each connection gets a fresh challenge");
    assert_eq!(s.on_auth(1, nc, mac), JoinStep::Refuse(BAD_TOKEN.into()));
    // And again on the first connection, which is no longer waiting.
    assert!(matches!(s.on_auth(0, nc, mac), JoinStep::Close(_)));
}

#[test]
fn the_proof_covers_the_hello() {
    let mut s = ServerMembership::new(tok("t"), [1; 32]);
    let (mut c, _) = client(tok("t"), 2);
    // The server sees another hello than the one the client signed (another address).
    let mut forged = hello(true);
    if let Message::Hello { listen, .. } = &mut forged {
        *listen = "10.0.0.66:7".into();
    }
    let JoinStep::Send(Message::Challenge { nonce }) = s.on_hello(0, forged) else {
        panic!()
    };
    let Ok(Message::Auth { nonce, mac }) = c.on_challenge(nonce) else {
        panic!()
    };
    assert_eq!(s.on_auth(0, nonce, mac), JoinStep::Refuse(BAD_TOKEN.into()));
}

#[test]
fn a_server_without_the_token_cannot_fool_the_client() {
    let (mut c, _) = client(tok("t"), 2);
    // A look-alike that skips the challenge.
    assert_eq!(c.on_member([0; 32], vec![[0; 32]]).map_err(|e| e.0), Err(2));
    assert_eq!(c.check_welcome(PeerId(1), 1).map_err(|e| e.0), Err(2));
    // One that challenges but cannot make the server's proof.
    let (mut c, _) = client(tok("t"), 2);
    c.on_challenge([9; 16]).expect("auth");
    let r = c.on_member([0x42; 32], vec![[0; 32]]);
    assert_eq!(r.map_err(|e| e.0), Err(2));
    assert_eq!(c.peer_key(PeerId(1)), None, "no keys from a false server");
}

#[test]
fn protocol_breaks_at_join_are_errors() {
    let mut s = ServerMembership::new(tok("t"), [1; 32]);
    assert!(matches!(s.on_auth(0, [0; 16], [0; 32]), JoinStep::Close(_)));
    assert!(matches!(s.on_hello(0, hello(true)), JoinStep::Send(_)));
    assert!(matches!(s.on_hello(0, hello(true)), JoinStep::Close(_)));
    s.forget(0);
    assert!(!s.is_pending(0));
    let (mut c, _) = client(None, 2);
    assert!(
        c.on_challenge([0; 16]).is_err(),
        "a challenge to a tokenless client"
    );
    let (mut c, _) = client(tok("t"), 2);
    c.on_challenge([0; 16]).expect("first");
    assert!(c.on_challenge([0; 16]).is_err(), "a second challenge");
    let (mut c, _) = client(None, 2);
    assert_eq!(c.check_welcome(PeerId(1), 1).map_err(|e| e.0), Err(1));
    c.on_member([0; 32], vec![[0; 32]; 3]).expect("member");
    assert!(
        c.check_welcome(PeerId(1), 2).is_err(),
        "3 keys for 2 clients"
    );
    assert!(c.check_welcome(PeerId(4), 3).is_err(), "id out of the run");
    assert!(c.on_member([0; 32], vec![]).is_err(), "a second member");
}

#[test]
fn the_token_is_not_empty_and_not_printed() {
    assert!(Token::new("").is_err());
    assert_eq!(format!("{:?}", Token::new("secret").unwrap()), "Token(..)");
}

/// The keys that members 1..=n of a run get from `s`.
fn members(s: &ServerMembership, n: u32) -> Vec<ClientMembership> {
    (1..=n)
        .map(|i| {
            let mut c = ClientMembership::new(None, [i as u8; 32]);
            let Message::Member { proof, keys } = s.member(PeerId(i), n, [0; 32]) else {
                panic!()
            };
            c.on_member(proof, keys).expect("member");
            c
        })
        .collect()
}

/// Runs a peer handshake between dialler `d` and acceptor `a`, each with its own key lookup;
/// returns what each end ended with.
fn link(
    d: (PeerId, &mut ClientMembership),
    a: (PeerId, &mut ClientMembership),
) -> (Result<HsStep, String>, Result<HsStep, String>) {
    let (mut dh, hello) = PeerHandshake::dial(d.0, a.0, d.1.nonce());
    let mut ah = PeerHandshake::accept(a.1.nonce());
    let (ka, kd) = (&*a.1, &*d.1);
    let key = |m: &ClientMembership, id: PeerId| m.peer_key(id).ok_or("no key".to_string());
    let HsStep::Wait(back) = ah
        .on_message(a.0, hello, |id| key(ka, id))
        .expect("acceptor")
    else {
        panic!("the acceptor answers")
    };
    let mut dialer = Err("no answer".to_string());
    for m in back {
        dialer = dh.on_message(d.0, m, |id| key(kd, id));
        if dialer.is_err() {
            return (dialer, Err("not reached".into()));
        }
    }
    let Ok(HsStep::Established(_, ref reply)) = dialer else {
        return (dialer, Err("not reached".into()));
    };
    let mut acceptor = Err("no auth".to_string());
    for m in reply.clone() {
        acceptor = ah.on_message(a.0, m, |id| key(ka, id));
    }
    (dialer, acceptor)
}

#[test]
fn members_of_one_run_open_links_both_ways() {
    let s = ServerMembership::new(None, [1; 32]);
    let mut m = members(&s, 3);
    let (m1, rest) = m.split_at_mut(1);
    let (d, a) = link((PeerId(3), &mut rest[1]), (PeerId(1), &mut m1[0]));
    assert!(matches!(d, Ok(HsStep::Established(PeerId(1), ref r)) if r.len() == 1));
    assert_eq!(a, Ok(HsStep::Established(PeerId(3), vec![])));
}

#[test]
fn a_member_of_another_run_is_turned_away() {
    let s1 = ServerMembership::new(None, [1; 32]);
    let s2 = ServerMembership::new(None, [2; 32]);
    let mut ours = members(&s1, 2);
    let mut theirs = members(&s2, 2);
    // The other run's client 2 dials our client 1: our client 1 proves itself first, which the
    // stranger cannot check, and the stranger's own proof fails.
    let (d, a) = link((PeerId(2), &mut theirs[1]), (PeerId(1), &mut ours[0]));
    assert!(d.is_err() && a.is_err(), "{d:?} {a:?}");
    // Our client 2 dials the other run's client 1: it finds out before sending its own proof.
    let (d, _) = link((PeerId(2), &mut ours[1]), (PeerId(1), &mut theirs[0]));
    assert!(d.unwrap_err().contains("bad peer credential"));
}

#[test]
fn forged_and_replayed_peer_credentials_fail() {
    let s = ServerMembership::new(None, [1; 32]);
    let m = members(&s, 2);
    let key = m[1].peer_key(PeerId(1)).unwrap();
    let ok = |_: PeerId| Ok(key);
    // A recorded, valid handshake of client 2 dialling client 1 ...
    let (nd, na) = ([1; 16], [2; 16]);
    let hello = Message::PeerHello {
        version: VERSION,
        id: PeerId(2),
        nonce: nd,
    };
    let good = peer_mac(&key, true, PeerId(2), PeerId(1), &nd, &na);
    let mut first = PeerHandshake::accept(na);
    first.on_message(PeerId(1), hello.clone(), ok).unwrap();
    assert!(matches!(
        first.on_message(PeerId(1), Message::PeerAuth { mac: good }, ok),
        Ok(HsStep::Established(PeerId(2), _))
    ));
    // ... replayed to a new connection (a fresh nonce at the acceptor) fails.
    let mut again = PeerHandshake::accept([3; 16]);
    again.on_message(PeerId(1), hello.clone(), ok).unwrap();
    assert!(
        again
            .on_message(PeerId(1), Message::PeerAuth { mac: good }, ok)
            .is_err()
    );
    // A made-up MAC fails; so does anything but peer_auth before the link is open.
    let mut forged = PeerHandshake::accept([4; 16]);
    forged.on_message(PeerId(1), hello.clone(), ok).unwrap();
    assert!(
        forged
            .on_message(PeerId(1), Message::PeerAuth { mac: [7; 32] }, ok)
            .is_err()
    );
    let mut early = PeerHandshake::accept([5; 16]);
    early.on_message(PeerId(1), hello.clone(), ok).unwrap();
    let req = Message::Request {
        chunk: crate::ids::ChunkId {
            file: crate::ids::FileId(0),
            index: 0,
        },
    };
    assert!(early.on_message(PeerId(1), req.clone(), ok).is_err());
    assert!(
        PeerHandshake::accept([6; 16])
            .on_message(PeerId(1), req, ok)
            .is_err()
    );
    // The acceptor's own proof (its label) is no dialler proof.
    let mut mirror = PeerHandshake::accept(na);
    mirror.on_message(PeerId(1), hello, ok).unwrap();
    let theirs = peer_mac(&key, false, PeerId(2), PeerId(1), &nd, &na);
    assert!(
        mirror
            .on_message(PeerId(1), Message::PeerAuth { mac: theirs }, ok)
            .is_err()
    );
}

#[test]
fn a_dialler_checks_who_answers_and_the_acceptor_who_may_dial() {
    let (mut d, _) = PeerHandshake::dial(PeerId(3), PeerId(1), [1; 16]);
    let wrong = Message::PeerHello {
        version: VERSION,
        id: PeerId(2),
        nonce: [0; 16],
    };
    assert!(d.on_message(PeerId(3), wrong, |_| Ok([0; 32])).is_err());
    let mut a = PeerHandshake::accept([1; 16]);
    let hello = Message::PeerHello {
        version: VERSION,
        id: PeerId(9),
        nonce: [0; 16],
    };
    let r = a.on_message(PeerId(1), hello, |id| {
        Err(format!("unknown peer id {}", id.0))
    });
    assert_eq!(r, Err("unknown peer id 9".into()));
}

#[test]
fn pair_keys_are_symmetric_and_distinct() {
    let k = [5; 32];
    assert_eq!(
        pair_key(&k, PeerId(1), PeerId(2)),
        pair_key(&k, PeerId(2), PeerId(1))
    );
    assert_ne!(
        pair_key(&k, PeerId(1), PeerId(2)),
        pair_key(&k, PeerId(1), PeerId(3))
    );
    assert_ne!(
        pair_key(&k, PeerId(1), PeerId(2)),
        pair_key(&[6; 32], PeerId(1), PeerId(2))
    );
}
