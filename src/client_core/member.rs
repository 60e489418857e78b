//! The client session's side of membership (see `auth`): answering the server's challenge,
//! checking its proof and keeping the pair keys, and what the shell's peer handshakes need
//! from them (a key per peer, fresh nonces).

use super::*;
use crate::crypto::{Key, Mac, Nonce};

impl ClientCore {
    pub(super) fn on_challenge(&mut self, nonce: Nonce) {
        match self.member.on_challenge(nonce) {
            Ok(auth) => self.actions.push_back(Action::ToServer(auth)),
            Err((code, reason)) => self.exit(code, reason),
        }
    }

    pub(super) fn on_member(&mut self, proof: Mac, keys: Vec<Key>) {
        if let Err((code, reason)) = self.member.on_member(proof, keys) {
            info!("membership event=server_not_proven reason={reason:?}");
            self.exit(code, reason);
        }
    }

    /// The pair key with peer `p`, which its handshake must prove.
    pub fn peer_key(&self, p: PeerId) -> Result<Key, String> {
        self.member
            .peer_key(p)
            .filter(|_| p != self.id)
            .ok_or_else(|| format!("no pair key for peer id {}", p.0))
    }

    /// A fresh nonce for a peer handshake.
    pub fn peer_nonce(&mut self) -> Nonce {
        self.member.nonce()
    }
}
