//! Membership of a run (issue 4, item 8): who may join the server's run, and who may talk to a
//! member on its peer port. Sans-IO: the session machines (`server_core`, `client_core`) and the
//! client's shell feed messages in and send what comes out; randomness comes in as a seeded
//! [`Drbg`]. The cryptographic pieces are in `crypto`.
//!
//! Joining, with a token T (`--token` or P2PSHARE_TOKEN) on the server and the client:
//!
//! ```text
//!   C->S hello {token: true, ...}
//!   S->C challenge {ns}                                  ns fresh per connection
//!   C->S auth {nc, HMAC(T, "join client" | ns | nc | hello)}
//!   S->C member {HMAC(T, "join server" | ns | nc | hello), pair keys}, then welcome
//! ```
//!
//! The token never crosses the wire. A recorded auth is useless on another connection (the
//! server's nonce differs). The client's proof covers its whole hello, so an attacker on the
//! path cannot swap the name or advertised address under a valid proof. The server's proof has
//! its own label and covers the client's fresh nonce: the client knows it reached a server that
//! holds the token, not a look-alike that collects proofs. A token on one side only is refused
//! by the server with the reason, never left to hang. Without a token: hello {token: false},
//! then member {zeros, pair keys} and welcome.
//!
//! Peer links. The server draws a run key R at start (random, never sent). Members i and j
//! share the pair key K_ij = HMAC(R, "pair" | min(i,j) | max(i,j)); the member message gives
//! member i the key K_ij for every id j of the run. Dialler d, acceptor a:
//!
//! ```text
//!   d->a peer_hello {d, nd}
//!   a->d peer_hello {a, na}, peer_auth {HMAC(K_da, "acceptor" | d | a | nd | na)}
//!   d->a peer_auth {HMAC(K_da, "dialer" | d | a | nd | na)}
//! ```
//!
//! Each side checks the other's MAC before it takes anything else from the link. A stranger
//! who never joined has no pair key; a member of another run (another server start) has keys
//! from another R; a recorded handshake fails against the other side's fresh nonce. A member
//! cannot pose as another member to a third, as it lacks their pair key (why pair keys and not
//! one run-wide key). The pair keys are what a run requires with or without a token; without
//! one, the member message crosses in clear, so whoever can read the traffic between the server
//! and a client can learn that client's keys (and anyone at all can join the run).
//!
//! What this does not do: encrypt. A run's chunks, digests and names cross in clear, and an
//! attacker on the path (not merely able to reach the ports) can still alter a link after the
//! handshake. Labels end in a NUL byte so that no label is a prefix of another.

use crate::codec::{Message, VERSION, encode};
use crate::crypto::{Drbg, Key, Mac, Nonce, ct_eq, hmac_sha256};
use crate::ids::PeerId;
use std::collections::BTreeMap;
use std::fmt;

const JOIN_CLIENT: &[u8] = b"p2pshare-3 join client\0";
const JOIN_SERVER: &[u8] = b"p2pshare-3 join server\0";
const PAIR: &[u8] = b"p2pshare-3 pair key\0";
const PEER_DIALER: &[u8] = b"p2pshare-3 peer dialer\0";
const PEER_ACCEPTOR: &[u8] = b"p2pshare-3 peer acceptor\0";

/// The refusal of a client that answered the challenge with a wrong proof.
pub const BAD_TOKEN: &str = "bad token";
/// The refusal of a client without a token by a server that has one.
pub const MISSING_TOKEN: &str =
    "missing token (this run requires --token or the environment variable P2PSHARE_TOKEN)";
/// The refusal of a client with a token by a server that has none.
pub const UNEXPECTED_TOKEN: &str = "this client was given a token, but the server runs without one";

/// The run's shared secret, as the user gave it. Never encoded, never logged.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(s: &str) -> Result<Token, String> {
        if s.is_empty() {
            return Err("the token must not be empty".into());
        }
        Ok(Token(s.as_bytes().to_vec()))
    }

    /// For tests that must check the token never appears on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

fn join_mac(t: &Token, label: &[u8], ns: &Nonce, nc: &Nonce, hello: &[u8]) -> Mac {
    hmac_sha256(&t.0, &[label, ns, nc, hello])
}

/// The key that members `a` and `b` of the run with key `run_key` share.
pub fn pair_key(run_key: &Key, a: PeerId, b: PeerId) -> Key {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    hmac_sha256(run_key, &[PAIR, &lo.0.to_be_bytes(), &hi.0.to_be_bytes()])
}

/// A peer link's proof: `label` says which side made it.
pub fn peer_mac(
    key: &Key,
    label_dialer: bool,
    dialer: PeerId,
    acceptor: PeerId,
    nd: &Nonce,
    na: &Nonce,
) -> Mac {
    let label = if label_dialer {
        PEER_DIALER
    } else {
        PEER_ACCEPTOR
    };
    let (d, a) = (dialer.0.to_be_bytes(), acceptor.0.to_be_bytes());
    hmac_sha256(key, &[label, &d, &a, nd, na])
}

// ---------------------------------------------------------------- the server's side

/// What the server does with a hello or an auth.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinStep {
    /// Admit the client of this hello; its member message carries `proof`.
    Admit { hello: Message, proof: Mac },
    /// Send this (the challenge) and wait for the auth.
    Send(Message),
    /// Refuse the client with this reason (it learns why).
    Refuse(String),
    /// Close the connection: a protocol violation.
    Close(String),
}

pub struct ServerMembership {
    token: Option<Token>,
    run_key: Key,
    drbg: Drbg,
    /// Connections challenged and not yet answered: the nonce sent and the hello to admit.
    pending: BTreeMap<usize, (Nonce, Message)>,
}

impl ServerMembership {
    /// `seed` must be secret and fresh for a real run (`crypto::os_seed`): the run key, which
    /// every pair key derives from, is drawn from it.
    pub fn new(token: Option<Token>, seed: Key) -> Self {
        let mut drbg = Drbg::new(seed);
        let run_key = drbg.key();
        ServerMembership {
            token,
            run_key,
            drbg,
            pending: BTreeMap::new(),
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `conn` was challenged and has not answered yet.
    pub fn is_pending(&self, conn: usize) -> bool {
        self.pending.contains_key(&conn)
    }

    /// A connection id is new (or reused): nothing pending on it.
    pub fn forget(&mut self, conn: usize) {
        self.pending.remove(&conn);
    }

    pub fn on_hello(&mut self, conn: usize, hello: Message) -> JoinStep {
        let Message::Hello { token: flag, .. } = &hello else {
            return JoinStep::Close(format!("{} is not a hello", hello.name()));
        };
        if self.pending.contains_key(&conn) {
            return JoinStep::Close("second hello".into());
        }
        match (&self.token, *flag) {
            (None, false) => JoinStep::Admit {
                hello,
                proof: [0; 32],
            },
            (None, true) => JoinStep::Refuse(UNEXPECTED_TOKEN.into()),
            (Some(_), false) => JoinStep::Refuse(MISSING_TOKEN.into()),
            (Some(_), true) => {
                let nonce = self.drbg.nonce();
                self.pending.insert(conn, (nonce, hello));
                JoinStep::Send(Message::Challenge { nonce })
            }
        }
    }

    pub fn on_auth(&mut self, conn: usize, nc: Nonce, mac: Mac) -> JoinStep {
        let (Some(t), Some((ns, hello))) = (&self.token, self.pending.remove(&conn)) else {
            return JoinStep::Close("auth without a challenge".into());
        };
        let transcript = encode(&hello);
        if !ct_eq(&join_mac(t, JOIN_CLIENT, &ns, &nc, &transcript), &mac) {
            return JoinStep::Refuse(BAD_TOKEN.into());
        }
        let proof = join_mac(t, JOIN_SERVER, &ns, &nc, &transcript);
        JoinStep::Admit { hello, proof }
    }

    /// The member message for client `id` of a run of `clients`: its pair key with every id.
    pub fn member(&self, id: PeerId, clients: u32, proof: Mac) -> Message {
        let keys = (1..=clients)
            .map(|j| {
                if j == id.0 {
                    [0; 32]
                } else {
                    pair_key(&self.run_key, id, PeerId(j))
                }
            })
            .collect();
        Message::Member { proof, keys }
    }
}

// ---------------------------------------------------------------- the client's side

/// A failure that ends the client: exit code and the one line it prints.
pub type Fail = (i32, String);

pub struct ClientMembership {
    token: Option<Token>,
    drbg: Drbg,
    /// The encoded hello: both join proofs cover it.
    hello: Vec<u8>,
    /// The server's and this client's nonces, once the challenge was answered.
    nonces: Option<(Nonce, Nonce)>,
    keys: Option<Vec<Key>>,
}

impl ClientMembership {
    /// `seed` must be secret and fresh for a real run (`crypto::os_seed`).
    pub fn new(token: Option<Token>, seed: Key) -> Self {
        ClientMembership {
            token,
            drbg: Drbg::new(seed),
            hello: Vec::new(),
            nonces: None,
            keys: None,
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The hello this client sent (the core builds it).
    pub fn set_hello(&mut self, hello: &Message) {
        self.hello = encode(hello);
    }

    /// The answer to the server's challenge.
    pub fn on_challenge(&mut self, ns: Nonce) -> Result<Message, Fail> {
        let Some(t) = &self.token else {
            return Err((
                1,
                "the server sent a challenge to a client without a token".into(),
            ));
        };
        if self.nonces.is_some() {
            return Err((1, "the server sent a second challenge".into()));
        }
        let nc = self.drbg.nonce();
        self.nonces = Some((ns, nc));
        let mac = join_mac(t, JOIN_CLIENT, &ns, &nc, &self.hello);
        Ok(Message::Auth { nonce: nc, mac })
    }

    /// The member message: with a token, the server's proof is checked first.
    pub fn on_member(&mut self, proof: Mac, keys: Vec<Key>) -> Result<(), Fail> {
        if self.keys.is_some() {
            return Err((1, "the server sent a second member message".into()));
        }
        if let Some(t) = &self.token {
            let Some((ns, nc)) = self.nonces else {
                return Err((2, "the server admitted this client without checking its token (it is not a server of this run)".into()));
            };
            if !ct_eq(&join_mac(t, JOIN_SERVER, &ns, &nc, &self.hello), &proof) {
                return Err((2, "the server could not prove it knows the token (a different token, or not the real server)".into()));
            }
        }
        self.keys = Some(keys);
        Ok(())
    }

    /// The welcome may be taken only after a (checked) member message with a key per client.
    pub fn check_welcome(&self, id: PeerId, clients: u32) -> Result<(), Fail> {
        let Some(keys) = &self.keys else {
            if self.has_token() {
                return Err((2, "the server did not prove it knows the token".into()));
            }
            return Err((
                1,
                "the server sent its welcome without a member message".into(),
            ));
        };
        if keys.len() != clients as usize || id.0 == 0 || id.0 > clients {
            return Err((
                1,
                format!(
                    "the server sent {} pair keys to client {} of a run of {clients}",
                    keys.len(),
                    id.0
                ),
            ));
        }
        Ok(())
    }

    /// The key this client shares with peer `p`.
    pub fn peer_key(&self, p: PeerId) -> Option<Key> {
        let i = (p.0 as usize).checked_sub(1)?;
        self.keys.as_ref()?.get(i).copied()
    }

    /// A fresh nonce for a peer handshake.
    pub fn nonce(&mut self) -> Nonce {
        self.drbg.nonce()
    }
}

// ---------------------------------------------------------------- a peer link

/// One peer connection's handshake, from either end.
pub struct PeerHandshake {
    mine: Nonce,
    state: Hs,
}

enum Hs {
    Dialled(PeerId),
    Accepting,
    AwaitAuth {
        peer: PeerId,
        theirs: Nonce,
        key: Key,
        i_dialled: bool,
    },
    Done,
}

/// What a handshake message leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum HsStep {
    /// Send these and wait for more.
    Wait(Vec<Message>),
    /// The peer proved its membership: send these, then the link is open.
    Established(PeerId, Vec<Message>),
}

impl PeerHandshake {
    /// This node (`me`) dials `peer`: the returned peer_hello goes first.
    pub fn dial(me: PeerId, peer: PeerId, nonce: Nonce) -> (Self, Message) {
        let hello = Message::PeerHello {
            version: VERSION,
            id: me,
            nonce,
        };
        let hs = PeerHandshake {
            mine: nonce,
            state: Hs::Dialled(peer),
        };
        (hs, hello)
    }

    /// A connection came in: the dialler speaks first. (It may come in before this node knows
    /// its own id, hence `me` in `on_message`.)
    pub fn accept(nonce: Nonce) -> Self {
        PeerHandshake {
            mine: nonce,
            state: Hs::Accepting,
        }
    }

    /// A message before the link is open, at node `me`. `key_for(id)` is the pair key with the peer that
    /// says it is `id`, or why that peer may not connect. An error closes the connection.
    pub fn on_message(
        &mut self,
        me: PeerId,
        m: Message,
        key_for: impl FnOnce(PeerId) -> Result<Key, String>,
    ) -> Result<HsStep, String> {
        match (std::mem::replace(&mut self.state, Hs::Done), m) {
            (Hs::Accepting, Message::PeerHello { id, nonce, .. }) => {
                let key = key_for(id)?;
                let mac = peer_mac(&key, false, id, me, &nonce, &self.mine);
                self.state = Hs::AwaitAuth {
                    peer: id,
                    theirs: nonce,
                    key,
                    i_dialled: false,
                };
                let hello = Message::PeerHello {
                    version: VERSION,
                    id: me,
                    nonce: self.mine,
                };
                Ok(HsStep::Wait(vec![hello, Message::PeerAuth { mac }]))
            }
            (Hs::Dialled(want), Message::PeerHello { id, nonce, .. }) => {
                if id != want {
                    return Err(format!(
                        "dialled peer {} but it says it is {}",
                        want.0, id.0
                    ));
                }
                self.state = Hs::AwaitAuth {
                    peer: id,
                    theirs: nonce,
                    key: key_for(id)?,
                    i_dialled: true,
                };
                Ok(HsStep::Wait(Vec::new()))
            }
            (
                Hs::AwaitAuth {
                    peer,
                    theirs,
                    key,
                    i_dialled,
                },
                Message::PeerAuth { mac },
            ) => {
                let (d, a, nd, na) = if i_dialled {
                    (me, peer, &self.mine, &theirs)
                } else {
                    (peer, me, &theirs, &self.mine)
                };
                // The proof made by the other end: the acceptor's if this node dialled.
                if !ct_eq(&peer_mac(&key, !i_dialled, d, a, nd, na), &mac) {
                    return Err(format!(
                        "bad peer credential from a connection that says it is peer {}: not a member of this run",
                        peer.0
                    ));
                }
                let reply = if i_dialled {
                    let mac = peer_mac(&key, true, d, a, nd, na);
                    vec![Message::PeerAuth { mac }]
                } else {
                    Vec::new()
                };
                Ok(HsStep::Established(peer, reply))
            }
            (Hs::Done, m) => Err(format!("{} after a failed handshake", m.name())),
            (_, m) => Err(format!(
                "{} before the peer handshake was complete",
                m.name()
            )),
        }
    }
}

#[cfg(test)]
mod tests;
