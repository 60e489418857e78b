//! Membership of a run (issue 4, item 8), end to end on 127.0.0.1 with the real binary: a run
//! with a token completes; a wrong, missing or unexpected token stops the client with exit 2
//! and one clear line while the server logs the refusal; the token never crosses the wire
//! (checked on a fake server's socket, which also cannot pass for the real one); strangers with
//! a forged, replayed or other-run credential get no chunk from a member; and a server open to
//! the network without a token warns at start.
//!
//! The harness (deadlines, child processes, temporary directories, the test playing a member)
//! is in `tests/common/mod.rs`.

mod common;

use common::{
    CMD_TIMEOUT, Group, Hosts, TestDir, args, client_cmd, path_arg, run_cmd, start_server_on,
    wait_for_count, wait_for_line,
};
use p2pshare::auth::{PeerHandshake, peer_mac};
use p2pshare::codec::{Message, VERSION, encode};
use p2pshare::ids::{ChunkId, PeerId};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const TOKEN: &str = "correct horse battery staple 4b1d";
/// The kind byte of a piece frame.
const PIECE_KIND: u8 = 25;

fn token_env(t: &str) -> Vec<(String, String)> {
    vec![("P2PSHARE_TOKEN".into(), t.into())]
}

/// The server takes its token on the command line here and the clients from the environment,
/// so both ways of giving it are exercised.
#[test]
fn a_run_with_the_right_token_completes_with_every_file_verified() {
    let dir = TestDir::new("member-right-token");
    let sizes = [Some(700_000), Some(300_000), None];
    let run = common::run_swarm_with(&dir, &sizes, 40, &args(&["--token", TOKEN]), &|_| {
        token_env(TOKEN)
    });
    common::check_run(&dir, &run);
    let log = fs::read_to_string(run.log_dir.join("server.log")).expect("server.log");
    assert!(
        log.contains("event=server_start") && log.contains("token=true"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token is in the server's log");
    for c in &run.clients {
        let l = fs::read_to_string(run.log_dir.join(format!("{}.log", c.name))).expect("log");
        assert_eq!(
            l.matches("event=peer_connected").count(),
            2,
            "{}: {l}",
            c.name
        );
        assert!(!l.contains(TOKEN), "the token is in {}'s log", c.name);
    }
}

/// Starts a server for one client with `server_args` and runs one client against it with
/// `env`; returns the client's outcome and the server's log so far.
fn one_join(
    dir: &TestDir,
    label: &str,
    server_args: &[String],
    env: &[(String, String)],
) -> (common::Outcome, String) {
    let log_dir = dir.join(&format!("{label}-logs"));
    let deadline = Instant::now() + CMD_TIMEOUT;
    let mut g = Group::default();
    let summary = dir.join(&format!("{label}-summary.json"));
    let (_, addr) = start_server_on(
        &mut g,
        dir,
        1,
        &log_dir,
        &summary,
        deadline,
        &Hosts::Loopback,
        server_args,
    );
    let start = Instant::now();
    let a = client_cmd(
        &addr,
        "c",
        None,
        &dir.join(&format!("{label}-out")),
        &log_dir,
    );
    let i = g.spawn_env(label, &dir.path, &a, env);
    let status = g.wait_exit(i, deadline, &format!("{label}: the client did not exit"));
    let p = &g.procs[i];
    let out = common::Outcome {
        status,
        stdout: fs::read_to_string(&p.stdout).unwrap_or_default(),
        stderr: fs::read_to_string(&p.stderr).unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    // The refusal is logged before the refuse message is sent.
    let log = fs::read_to_string(log_dir.join("server.log")).expect("server.log");
    g.kill_all();
    (out, log)
}

#[test]
fn a_wrong_missing_or_unexpected_token_stops_the_client_with_one_clear_line() {
    let dir = TestDir::new("member-bad-token");
    let with_token = args(&["--token", TOKEN]);
    type Case<'a> = (&'a str, &'a [String], Vec<(String, String)>, &'a str);
    let cases: [Case; 3] = [
        ("wrong", &with_token, token_env("guess"), "bad token"),
        ("missing", &with_token, vec![], "missing token"),
        (
            "unexpected",
            &[],
            token_env(TOKEN),
            "the server runs without one",
        ),
    ];
    for (label, server_args, env, why) in cases {
        let (out, log) = one_join(&dir, label, server_args, &env);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{label}: one line on stderr: {:?}",
            out.stderr
        );
        assert!(
            lines[0].starts_with("p2pshare: the server refused this client: ")
                && lines[0].contains(why),
            "{label}: {:?}",
            lines[0]
        );
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("event=client_refused"))
            .collect();
        assert_eq!(
            refused.len(),
            1,
            "{label}: the server logs the refusal: {log}"
        );
        assert!(refused[0].contains(why), "{label}: {}", refused[0]);
        assert!(
            !log.contains("event=client_connected"),
            "{label}: admitted: {log}"
        );
    }
}

#[test]
fn an_empty_token_is_a_usage_error() {
    let dir = TestDir::new("member-empty-token");
    for (label, a) in [
        (
            "server",
            args(&["server", "--listen", "127.0.0.1:0", "--token", ""]),
        ),
        (
            "client",
            args(&["client", "--server", "127.0.0.1:1", "--token", ""]),
        ),
    ] {
        let o = run_cmd(&dir.path, label, &a, CMD_TIMEOUT);
        assert_eq!(o.status.code(), Some(2), "{label}: {}", o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "{label}: {:?}", o.stderr);
        assert!(
            o.stderr.contains("token must not be empty"),
            "{label}: {}",
            o.stderr
        );
    }
    // From the environment too: an empty variable does not mean "no token".
    let mut g = Group::default();
    let a = args(&["server", "--listen", "127.0.0.1:0", "--log-dir", "logs"]);
    let i = g.spawn_env("server-env", &dir.path, &a, &token_env(""));
    let st = g.wait_exit(
        i,
        Instant::now() + CMD_TIMEOUT,
        "server with an empty token",
    );
    assert_eq!(st.code(), Some(2));
}

/// Reads one frame's kind and body off `s`.
fn frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("a frame header");
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; len - 1];
    s.read_exact(&mut body).expect("a frame body");
    (head[4], body)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A fake server captures what a client with a token sends: neither its hello nor its auth
/// carries the token. The fake cannot make the server's proof, and the client, which has then
/// learnt nothing of the run, exits 2.
#[test]
fn the_token_never_crosses_the_wire_and_a_fake_server_is_caught() {
    let dir = TestDir::new("member-wire");
    let fake = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
    let addr = fake.local_addr().expect("addr").to_string();
    let mut g = Group::default();
    let log_dir = dir.join("logs");
    let a = client_cmd(&addr, "c", None, &dir.join("out"), &log_dir);
    let i = g.spawn_env("client", &dir.path, &a, &token_env(TOKEN));
    let (mut s, _) = fake.accept().expect("the client connects");
    s.set_read_timeout(Some(CMD_TIMEOUT)).expect("timeout");
    let (kind, hello) = frame(&mut s);
    assert_eq!(kind, 1, "a hello first");
    assert!(
        !contains(&hello, TOKEN.as_bytes()),
        "the hello carries the token"
    );
    let Ok(Message::Hello { token: true, .. }) = p2pshare::codec::decode_body(kind, &hello) else {
        panic!("a hello that says the client has a token")
    };
    s.write_all(&encode(&Message::Challenge { nonce: [7; 16] }))
        .expect("challenge");
    let (kind, auth) = frame(&mut s);
    assert_eq!(kind, 41, "an auth in answer");
    assert!(
        !contains(&auth, TOKEN.as_bytes()),
        "the auth carries the token"
    );
    // A server that does not know the token makes up its proof, and sends a welcome.
    s.write_all(&encode(&Message::Member {
        proof: [0x42; 32],
        keys: vec![[0; 32]],
    }))
    .expect("member");
    s.write_all(&encode(&Message::Welcome {
        id: PeerId(1),
        name: "c".into(),
        clock_us: 0,
        chunk_size: 262_144,
        clients: 1,
        files: vec![],
    }))
    .expect("welcome");
    let st = g.wait_exit(i, Instant::now() + CMD_TIMEOUT, "the client did not exit");
    assert_eq!(st.code(), Some(2));
    let err = fs::read_to_string(&g.procs[i].stderr).expect("stderr");
    assert!(
        err.trim_end().lines().count() == 1 && err.contains("could not prove it knows the token"),
        "{err:?}"
    );
}

/// Sends `bytes` on `s` and reads until the other end closes; returns the kinds of the frames
/// received (a piece is skipped by its length).
fn kinds_until_close(mut s: TcpStream, bytes: &[u8], case: &str) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{case}: the connection was not closed: {e}"),
        }
    }
    let mut at = 0;
    while buf.len() >= at + 5 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        got.push(buf[at + 4]);
        at += 4 + len;
    }
    got
}

fn hello_bytes(id: PeerId, nonce: [u8; 16]) -> Vec<u8> {
    encode(&Message::PeerHello {
        version: VERSION,
        id,
        nonce,
    })
}

/// Strangers dial a real client's peer port and ask for its chunk 0: one that forges the
/// credential, one that replays a member's valid handshake, and a member of another run. Each
/// is dropped with a logged reason before it gets a chunk, while a member of the run gets it.
#[test]
fn strangers_get_no_chunk_from_a_member() {
    let dir = TestDir::new("member-strangers");
    let log_dir = dir.join("logs");
    let src = dir.join("c1.bin");
    common::gen_file(&dir.path, &src, 2 * common::CHUNK + 10, 5);
    let mut g = Group::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = dir.join("summary.json");
    let extra = args(&["--token", TOKEN]);
    let (_, addr) = start_server_on(
        &mut g,
        &dir,
        2,
        &log_dir,
        &summary,
        deadline,
        &Hosts::Loopback,
        &extra,
    );
    let a = client_cmd(&addr, "client1", Some(&src), &dir.join("out1"), &log_dir);
    let client = g.spawn_env("client1", &dir.path, &a, &token_env(TOKEN));
    wait_for_line(
        &mut g,
        &log_dir.join("server.log"),
        "client=client1",
        deadline,
    );
    let me = common::join_run(&addr, "member", Some(TOKEN));
    let (peer, peer_addr) = me.peer("client1");
    let file = me.file_of(peer);
    let request = encode(&Message::Request {
        chunk: ChunkId { file, index: 0 },
    });
    let log1 = log_dir.join("client1.log");
    // A stranger's bytes: client1 closes the link without a piece and logs why (the n-th time).
    let stranger = |case: &str, bytes: &[u8], n: usize| {
        let s = TcpStream::connect(&peer_addr).expect("dial client1");
        let kinds = kinds_until_close(s, bytes, case);
        assert!(!kinds.contains(&PIECE_KIND), "{case}: got a piece");
        wait_for_count(&log1, "bad peer credential", n);
    };

    // Forged: the member's id, a made-up proof.
    let forged = [
        hello_bytes(me.id, [1; 16]),
        encode(&Message::PeerAuth { mac: [9; 32] }),
        request.clone(),
    ]
    .concat();
    stranger("forged", &forged, 1);

    // A member of the run, by hand, so its bytes can be replayed: it gets chunk 0.
    let nonce = [2; 16];
    let (mut hs, hello) = PeerHandshake::dial(me.id, peer, nonce);
    let mut s = TcpStream::connect(&peer_addr).expect("dial client1");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&encode(&hello)).expect("hello");
    let mut sent = encode(&hello);
    let reply = loop {
        let m = common::read_message(&mut s);
        if let p2pshare::auth::HsStep::Established(_, r) = hs
            .on_message(me.id, m, |_| Ok(me.key(peer)))
            .expect("client1 proves itself")
        {
            break r;
        }
    };
    for m in &reply {
        sent.extend(encode(m));
    }
    s.write_all(&[&sent[hello_bytes(me.id, nonce).len()..], &request[..]].concat())
        .expect("auth and request");
    loop {
        let (k, body) = frame(&mut s);
        if k == PIECE_KIND {
            let want = &fs::read(&src).expect("source")[..common::CHUNK as usize];
            assert_eq!(&body[8..], want, "the member gets chunk 0");
            break;
        }
    }
    drop(s);
    wait_for_count(&log1, "event=peer_disconnected peer=member", 1);

    // Replayed: the same bytes on a new connection (client1's nonce is fresh).
    stranger("replayed", &[&sent[..], &request[..]].concat(), 2);

    // A member of another run (another server start, the same token): its pair keys come
    // from another run key.
    let other_dir = dir.join("other");
    fs::create_dir_all(&other_dir).expect("mkdir");
    let (_, other) = start_server_on(
        &mut g,
        &dir,
        2,
        &other_dir,
        &other_dir.join("s.json"),
        deadline,
        &Hosts::Loopback,
        &extra,
    );
    let _o1 = common::join(&other, "o1", Some(TOKEN));
    let o2 = common::join(&other, "o2", Some(TOKEN));
    assert_eq!(o2.id, me.id, "the same id in the other run");
    let na = [3; 16];
    let mac = peer_mac(&o2.key(peer), true, o2.id, peer, &na, &[0; 16]);
    let bytes = [
        hello_bytes(o2.id, na),
        encode(&Message::PeerAuth { mac }),
        request.clone(),
    ]
    .concat();
    stranger("other run", &bytes, 3);

    assert!(g.poll(client).is_none(), "client1 is still running");
    g.kill_all();
    let log = fs::read_to_string(&log1).expect("client1.log");
    for l in log.lines().filter(|l| l.contains("bad peer credential")) {
        assert!(l.contains("event=handshake_failed reason="), "{l}");
    }
    assert_eq!(log.matches("event=peer_connected").count(), 1, "{log}");
}

/// Waits for the server's "listening" line, then returns its stderr and log (the server waits
/// for clients that never come, so it is killed).
fn server_start_output(
    dir: &TestDir,
    label: &str,
    listen: &str,
    token: Option<&str>,
) -> (String, String) {
    let log_dir = dir.join(&format!("{label}-logs"));
    let mut a = args(&["server", "--listen", listen, "--clients", "1", "--log-dir"]);
    a.push(path_arg(&log_dir));
    let env = token.map(token_env).unwrap_or_default();
    let mut g = Group::default();
    let i = g.spawn_env(label, &dir.path, &a, &env);
    let stderr = g.procs[i].stderr.clone();
    wait_for_line(
        &mut g,
        &stderr,
        "server: listening on",
        Instant::now() + CMD_TIMEOUT,
    );
    g.kill_all();
    let log = fs::read_to_string(log_dir.join("server.log")).expect("server.log");
    (fs::read_to_string(&stderr).expect("stderr"), log)
}

/// Binding 0.0.0.0 opens the port to every network the machine is on; no traffic is sent.
#[test]
fn a_server_open_to_the_network_without_a_token_warns() {
    let dir = TestDir::new("member-warning");
    let warns = |(err, log): (String, String)| {
        let e = err.contains("anyone who can reach this port can join the run");
        let l = log.contains("event=no_token");
        assert_eq!(e, l, "stderr and log agree:\n{err}\n{log}");
        e
    };
    assert!(warns(server_start_output(&dir, "open", "0.0.0.0:0", None)));
    assert!(!warns(server_start_output(
        &dir,
        "open-token",
        "0.0.0.0:0",
        Some(TOKEN)
    )));
    assert!(!warns(server_start_output(
        &dir,
        "loopback",
        "127.0.0.1:0",
        None
    )));
}
