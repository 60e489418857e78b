//! The receiving side of the wire protocol: a sans-IO frame decoder that turns a byte stream
//! into messages and chunk pieces, and the pool of chunk buffers it fills. While a piece is being
//! received the decoder hands out the piece's own buffer as the read target, so payload bytes go
//! from the socket straight into the buffer that is later hashed, with no intermediate copy.

use crate::codec::{
    DecodeError, FRAME_HEADER_LEN, MAX_CONTROL_FRAME, Message, PIECE_HEADER_LEN, decode_body, kind,
};
use crate::ids::{ChunkId, FileId};

/// What the decoder yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Msg(Message),
    /// A whole chunk payload, in a buffer from the pool (give it back with [`BufPool::put`]).
    Piece {
        chunk: ChunkId,
        data: Vec<u8>,
    },
}

/// Recycled chunk buffers, so receiving a chunk costs no allocation in the steady state.
#[derive(Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// Keeps at most this many idle buffers.
    const KEEP: usize = 64;

    pub fn get(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    pub fn put(&mut self, b: Vec<u8>) {
        if self.free.len() < Self::KEEP {
            self.free.push(b);
        }
    }
}

struct PendingPiece {
    chunk: ChunkId,
    data: Vec<u8>,
    filled: usize,
}

/// Sans-IO frame decoder. Feed it bytes (or let it name where the next read should land, with
/// [`FrameDecoder::read_target`]) and take frames out with [`FrameDecoder::next`].
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_piece: u32,
    piece: Option<PendingPiece>,
    /// Whether the last `read_target` handed out the piece buffer rather than scratch space.
    target_is_piece: bool,
}

/// Size of the scratch buffer for control traffic and piece headers.
const SCRATCH: usize = 64 * 1024;

impl FrameDecoder {
    /// `max_piece` is the largest chunk payload this connection may carry (0: no pieces at all).
    pub fn new(max_piece: u32) -> Self {
        FrameDecoder {
            buf: vec![0; SCRATCH],
            start: 0,
            end: 0,
            max_piece,
            piece: None,
            target_is_piece: false,
        }
    }

    /// Sets the largest chunk payload this connection may carry.
    pub fn set_max_piece(&mut self, max_piece: u32) {
        self.max_piece = max_piece;
    }

    /// Bytes received but not yet decoded (excluding a piece payload being filled).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Where the next read should write. While a piece payload is being received and no other
    /// bytes are pending, this is the piece's own buffer (zero-copy); otherwise scratch space.
    pub fn read_target(&mut self) -> &mut [u8] {
        self.target_is_piece = false;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if let Some(p) = &mut self.piece
                && p.filled < p.data.len()
            {
                self.target_is_piece = true;
                return &mut p.data[p.filled..];
            }
        }
        if self.end == self.buf.len() {
            // Compact; grow only if a single frame needs more room (bounded by the control cap).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                let grow = (self.buf.len() * 2).min(MAX_CONTROL_FRAME as usize + FRAME_HEADER_LEN);
                self.buf.resize(grow.max(self.buf.len() + 1), 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the slice returned by the last `read_target`.
    pub fn advance(&mut self, n: usize) {
        match &mut self.piece {
            Some(p) if self.target_is_piece => p.filled += n,
            _ => self.end += n,
        }
        self.target_is_piece = false;
    }

    /// Appends bytes (the generic path, used by tests and simulations).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let t = self.read_target();
            let n = t.len().min(bytes.len());
            t[..n].copy_from_slice(&bytes[..n]);
            self.advance(n);
            bytes = &bytes[n..];
        }
    }

    /// The next complete frame, if one is buffered. After an error the connection must be closed.
    pub fn next(&mut self, pool: &mut BufPool) -> Result<Option<Inbound>, DecodeError> {
        if let Some(p) = &mut self.piece {
            let n = (self.end - self.start).min(p.data.len() - p.filled);
            p.data[p.filled..p.filled + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            p.filled += n;
            self.start += n;
            if p.filled < p.data.len() {
                return Ok(None);
            }
        }
        if let Some(p) = self.piece.take() {
            return Ok(Some(Inbound::Piece {
                chunk: p.chunk,
                data: p.data,
            }));
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        let k = avail[4];
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if k == kind::PIECE {
            let max = self.max_piece as u64 + 9;
            if len as u64 > max || self.max_piece == 0 {
                return Err(DecodeError::TooLong {
                    len: len as u64,
                    max,
                });
            }
            if len < 9 {
                return Err(DecodeError::Truncated);
            }
            if avail.len() < PIECE_HEADER_LEN {
                return Ok(None);
            }
            let word = |at: usize| {
                u32::from_be_bytes([avail[at], avail[at + 1], avail[at + 2], avail[at + 3]])
            };
            let chunk = ChunkId {
                file: FileId(word(5)),
                index: word(9),
            };
            self.start += PIECE_HEADER_LEN;
            let data = pool.get((len - 9) as usize);
            self.piece = Some(PendingPiece {
                chunk,
                data,
                filled: 0,
            });
            return self.next(pool);
        }
        if len > MAX_CONTROL_FRAME {
            return Err(DecodeError::TooLong {
                len: len as u64,
                max: MAX_CONTROL_FRAME as u64,
            });
        }
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let msg = decode_body(k, &avail[FRAME_HEADER_LEN..total])?;
        self.start += total;
        Ok(Some(Inbound::Msg(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::samples;
    use crate::codec::{encode, piece_header};

    fn stream() -> (Vec<u8>, Vec<Inbound>) {
        let mut bytes = Vec::new();
        let mut expect = Vec::new();
        for (i, m) in samples().into_iter().enumerate() {
            bytes.extend(encode(&m));
            expect.push(Inbound::Msg(m));
            let chunk = ChunkId {
                file: FileId(i as u32),
                index: i as u32,
            };
            let data: Vec<u8> = (0..(i * 37 % 300)).map(|x| x as u8).collect();
            bytes.extend(piece_header(chunk, data.len() as u32));
            bytes.extend(&data);
            expect.push(Inbound::Piece { chunk, data });
        }
        (bytes, expect)
    }
    fn decode_all(d: &mut FrameDecoder, pool: &mut BufPool, out: &mut Vec<Inbound>) {
        while let Some(x) = d.next(pool).expect("valid stream") {
            out.push(x);
        }
    }

    #[test]
    fn round_trip_whole_stream() {
        let (bytes, expect) = stream();
        let mut d = FrameDecoder::new(1024);
        let mut pool = BufPool::default();
        d.feed(&bytes);
        let mut got = Vec::new();
        decode_all(&mut d, &mut pool, &mut got);
        assert_eq!(got, expect);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn split_at_every_byte() {
        let (bytes, expect) = stream();
        let mut pool = BufPool::default();
        for cut in 0..=bytes.len() {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            d.feed(&bytes[..cut]);
            decode_all(&mut d, &mut pool, &mut got);
            d.feed(&bytes[cut..]);
            decode_all(&mut d, &mut pool, &mut got);
            assert_eq!(got, expect, "split at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time_through_read_target() {
        let (bytes, expect) = stream();
        let mut d = FrameDecoder::new(1024);
        let mut pool = BufPool::default();
        let mut got = Vec::new();
        for b in &bytes {
            let t = d.read_target();
            t[0] = *b;
            d.advance(1);
            decode_all(&mut d, &mut pool, &mut got);
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn oversized_control_frame_rejected_from_header_alone() {
        let mut d = FrameDecoder::new(1024);
        let mut pool = BufPool::default();
        d.feed(&(MAX_CONTROL_FRAME + 1).to_be_bytes());
        d.feed(&[kind::HELLO]);
        assert!(matches!(
            d.next(&mut pool),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn oversized_piece_rejected() {
        let mut d = FrameDecoder::new(1024);
        let mut pool = BufPool::default();
        d.feed(&piece_header(
            ChunkId {
                file: FileId(0),
                index: 0,
            },
            1025,
        ));
        assert_eq!(
            d.next(&mut pool),
            Err(DecodeError::TooLong {
                len: 1034,
                max: 1033
            })
        );
        let mut d = FrameDecoder::new(0);
        d.feed(&piece_header(
            ChunkId {
                file: FileId(0),
                index: 0,
            },
            1,
        ));
        assert!(
            d.next(&mut pool).is_err(),
            "a control connection carries no pieces"
        );
    }

    #[test]
    fn empty_frame_rejected() {
        let mut d = FrameDecoder::new(16);
        d.feed(&[0, 0, 0, 0, 1]);
        assert_eq!(d.next(&mut BufPool::default()), Err(DecodeError::Empty));
    }
}
