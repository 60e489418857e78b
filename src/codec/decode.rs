//! Decoding one frame's body into a [`Message`]: every field is bounds-checked, every count is
//! checked against the bytes left before anything is allocated, and a body must be consumed
//! exactly. No input makes it panic (see tests/fuzz.rs).

use super::*;

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn digest(&mut self) -> Result<Digest, DecodeError> {
        self.array()
    }
    /// A fixed-size field (digest, nonce, MAC, key).
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut d = [0u8; N];
        d.copy_from_slice(self.take(N)?);
        Ok(d)
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::BadFlag(b)),
        }
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }
    /// An element count, checked against what the rest of the frame could possibly hold, so a
    /// hostile count never makes us allocate more than the frame's own size.
    fn count(&mut self, min_elem: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_elem) > self.b.len() {
            return Err(DecodeError::BadCount);
        }
        Ok(n)
    }
    fn chunk(&mut self) -> Result<ChunkId, DecodeError> {
        Ok(ChunkId {
            file: FileId(self.u32()?),
            index: self.u32()?,
        })
    }
    fn magic_version(&mut self) -> Result<u16, DecodeError> {
        if self.take(4)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = self.u16()?;
        if v != VERSION {
            return Err(DecodeError::BadVersion(v));
        }
        Ok(v)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

/// Decodes the body of a control frame of the given kind.
pub fn decode_body(k: u8, body: &[u8]) -> Result<Message, DecodeError> {
    use kind::*;
    let mut r = Reader { b: body };
    let msg = match k {
        HELLO => {
            let version = r.magic_version()?;
            let token = r.flag()?;
            let listen = r.str()?;
            let name = r.str()?;
            let n = r.count(10)?;
            let mut files = Vec::with_capacity(n);
            for _ in 0..n {
                files.push(FileDecl {
                    name: r.str()?,
                    size: r.u64()?,
                });
            }
            Message::Hello {
                version,
                token,
                listen,
                name,
                files,
            }
        }
        PROGRESS => {
            let bytes_received = r.u64()?;
            let bytes_sent = r.u64()?;
            let n = r.count(8)?;
            let mut have = Vec::with_capacity(n);
            for _ in 0..n {
                have.push((FileId(r.u32()?), r.u32()?));
            }
            Message::Progress {
                bytes_received,
                bytes_sent,
                have,
            }
        }
        FILE_COMPLETE => Message::FileComplete {
            file: FileId(r.u32()?),
        },
        DONE => Message::Done {
            bytes_received: r.u64()?,
            bytes_sent: r.u64()?,
        },
        WELCOME => {
            let id = PeerId(r.u32()?);
            let name = r.str()?;
            let clock_us = r.u64()?;
            let chunk_size = r.u32()?;
            let clients = r.u32()?;
            let n = r.count(4)?;
            let mut files = Vec::with_capacity(n);
            for _ in 0..n {
                files.push(FileId(r.u32()?));
            }
            Message::Welcome {
                id,
                name,
                clock_us,
                chunk_size,
                clients,
                files,
            }
        }
        REFUSE => Message::Refuse { reason: r.str()? },
        START => {
            let n = r.count(8)?;
            let mut peers = Vec::with_capacity(n);
            for _ in 0..n {
                peers.push(PeerInfo {
                    id: PeerId(r.u32()?),
                    name: r.str()?,
                    addr: r.str()?,
                });
            }
            let n = r.count(18)?;
            let mut files = Vec::with_capacity(n);
            for _ in 0..n {
                files.push(FileInfo {
                    id: FileId(r.u32()?),
                    owner: PeerId(r.u32()?),
                    name: r.str()?,
                    size: r.u64()?,
                });
            }
            Message::Start { peers, files }
        }
        SHUTDOWN => Message::Shutdown,
        PING => Message::Ping {
            client_us: r.u64()?,
        },
        PONG => Message::Pong {
            client_us: r.u64()?,
            server_us: r.u64()?,
        },
        CLOCK_REPORT => Message::ClockReport {
            // Two's complement: an offset is negative when the client's clock is ahead.
            offset_us: r.u64()? as i64,
            error_us: r.u64()?,
            max_error_us: r.u64()?,
        },
        CHUNK_DIGESTS => {
            let file = FileId(r.u32()?);
            let first = r.u32()?;
            let n = r.count(16)?;
            if n > MAX_DIGESTS_PER_FRAME {
                return Err(DecodeError::BadCount);
            }
            let mut digests = Vec::with_capacity(n);
            for _ in 0..n {
                digests.push(r.digest()?);
            }
            Message::ChunkDigests {
                file,
                first,
                digests,
            }
        }
        FILE_DIGEST => Message::FileDigest {
            file: FileId(r.u32()?),
            md5: r.digest()?,
        },
        PEER_HELLO => {
            let version = r.magic_version()?;
            Message::PeerHello {
                version,
                id: PeerId(r.u32()?),
                nonce: r.array()?,
            }
        }
        PEER_AUTH => Message::PeerAuth { mac: r.array()? },
        CHALLENGE => Message::Challenge { nonce: r.array()? },
        AUTH => Message::Auth {
            nonce: r.array()?,
            mac: r.array()?,
        },
        MEMBER => {
            let proof = r.array()?;
            let n = r.count(32)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(r.array()?);
            }
            Message::Member { proof, keys }
        }
        BITFIELD => {
            let file = FileId(r.u32()?);
            let n = r.count(1)?;
            Message::Bitfield {
                file,
                bits: r.take(n)?.to_vec(),
            }
        }
        HAVE => Message::Have { chunk: r.chunk()? },
        REQUEST => Message::Request { chunk: r.chunk()? },
        CANCEL => Message::Cancel { chunk: r.chunk()? },
        REQUEST_FRESH => Message::RequestFresh {
            file: FileId(r.u32()?),
            below: r.u32()?,
        },
        STUCK => Message::Stuck { chunks: r.u32()? },
        REJOINED => Message::Rejoined {
            peer: PeerInfo {
                id: PeerId(r.u32()?),
                name: r.str()?,
                addr: r.str()?,
            },
        },
        NO_FRESH => Message::NoFresh {
            file: FileId(r.u32()?),
        },
        LOAD => Message::Load {
            own_eta_ms: r.u32()?,
            upload_kib_s: r.u32()?,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    r.end()?;
    Ok(msg)
}
