//! The cryptographic pieces that membership (`auth`) is built from: HMAC-SHA256 (RFC 2104 over
//! the sha2 crate's SHA-256; checked against RFC 4231's vectors), a constant-time comparison for
//! MACs, a nonce and key generator, and the operating system's entropy that seeds it.
//!
//! The session machines never read entropy themselves: each is handed a [`Drbg`] seeded by its
//! shell from [`os_seed`] (the only I/O here), so a test can seed one and replay a handshake.

use sha2::{Digest, Sha256};

/// An HMAC-SHA256 output.
pub type Mac = [u8; 32];
/// A 256-bit secret: the run key, a pair key, a generator seed.
pub type Key = [u8; 32];
/// A fresh random value per connection and side: 128 bits never repeat by chance.
pub type Nonce = [u8; 16];

/// SHA-256's block size: the HMAC key is padded (or first hashed) to it.
const BLOCK: usize = 64;

/// HMAC-SHA256 of the concatenation of `parts` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Mac {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Whether `a == b`, in a time that depends only on the lengths: a byte-by-byte comparison
/// that stops at the first difference would tell a forger, through timing, how many leading
/// bytes of a MAC it already has right.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Keys and nonces from a secret seed: output n is HMAC(seed, label || n). HMAC is a
/// pseudo-random function, so without the seed no output can be told from random or predicted
/// from the others; one read of the OS entropy per process is enough for the whole run.
pub struct Drbg {
    seed: Key,
    n: u64,
}

impl Drbg {
    pub fn new(seed: Key) -> Self {
        Drbg { seed, n: 0 }
    }

    pub fn key(&mut self) -> Key {
        self.n += 1;
        hmac_sha256(&self.seed, &[b"p2pshare drbg\0", &self.n.to_be_bytes()])
    }

    pub fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; 16];
        n.copy_from_slice(&self.key()[..16]);
        n
    }
}

/// 32 bytes from /dev/urandom, read by hand (no crate needed for one read; the kernel's pool
/// is initialised long before any user process runs on a booted machine).
pub fn os_seed() -> std::io::Result<Key> {
    use std::io::Read;
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// RFC 4231, test cases 1-4, 6 and 7 (case 5 is a truncated output, which is not used).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let aa131 = vec![0xaa; 131];
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                aa131.clone(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                aa131,
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, want)) in cases.iter().enumerate() {
            assert_eq!(hex(&hmac_sha256(key, &[data])), *want, "RFC 4231 case {i}");
            // Split input: the same MAC as one piece.
            let (a, b) = data.split_at(data.len() / 3);
            assert_eq!(hex(&hmac_sha256(key, &[a, &[], b])), *want, "split {i}");
        }
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"xbc"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn drbg_outputs_differ_and_depend_on_the_seed() {
        let mut a = Drbg::new([1; 32]);
        let mut b = Drbg::new([1; 32]);
        let mut c = Drbg::new([2; 32]);
        let (a1, a2) = (a.key(), a.key());
        assert_ne!(a1, a2);
        assert_eq!(a1, b.key(), "the same seed gives the same stream");
        assert_ne!(a1, c.key(), "another seed gives another stream");
        assert_ne!(a.nonce(), a.nonce());
    }

    #[test]
    fn os_seed_is_not_constant() {
        let (a, b) = (os_seed().unwrap(), os_seed().unwrap());
        assert_ne!(a, b);
    }
}
