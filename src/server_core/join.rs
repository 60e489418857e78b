//! The server's side of joining a run (see `auth`): a hello is admitted at once, refused, or
//! challenged when the run has a token; an auth admits or refuses the client it answers for.
//! An admitted client's member message (the server's proof and its pair keys) goes out just
//! before its welcome.

use super::{ConnId, ServerAction, ServerCore};
use crate::auth::JoinStep;
use crate::codec::Message;
use crate::crypto::{Mac, Nonce};

impl ServerCore {
    pub(super) fn join(&mut self, conn: ConnId, hello: Message, now: u64) {
        let step = self.member.on_hello(conn, hello);
        self.join_step(conn, step, now);
    }

    pub(super) fn on_auth(&mut self, conn: ConnId, nonce: Nonce, mac: Mac, now: u64) {
        let step = self.member.on_auth(conn, nonce, mac);
        self.join_step(conn, step, now);
    }

    /// What a connection that has not joined must send next (for the log of a violation).
    pub(super) fn awaited(&self, conn: ConnId) -> &'static str {
        if self.member.is_pending(conn) {
            "auth"
        } else {
            "hello"
        }
    }

    fn join_step(&mut self, conn: ConnId, step: JoinStep, now: u64) {
        match step {
            JoinStep::Send(m) => self.actions.push_back(ServerAction::Send(conn, m)),
            JoinStep::Refuse(reason) => self.refuse(conn, reason),
            JoinStep::Close(reason) => self.close(conn, reason),
            JoinStep::Admit { hello, proof } => self.admit(conn, hello, proof, now),
        }
    }

    /// Admits (or refuses, for the usual reasons) the client of `hello`. The member message is
    /// put ahead of the welcome that `on_hello` queued, so the client checks the server's
    /// proof before it takes the welcome.
    fn admit(&mut self, conn: ConnId, hello: Message, proof: Mac, now: u64) {
        let Message::Hello {
            listen,
            name,
            files,
            ..
        } = hello
        else {
            return;
        };
        let mark = self.actions.len();
        self.on_hello(conn, listen, name, files, now);
        if let Some(Some(id)) = self.conns.get(&conn) {
            let m = self.member.member(*id, self.expected, proof);
            self.actions.insert(mark, ServerAction::Send(conn, m));
        }
    }
}
