//! Multi-buffer MD5: this module owns the MD5 compression used for chunk and whole-file hashes.
//!
//! MD5 is over half of the program's CPU time (every 256 KiB chunk sent or received is hashed, and
//! whole files are hashed too), and one MD5 stream is a serial dependency chain that a single core
//! runs at well under 1 GB/s. Independent messages have no such dependency, so [`update_many`] and
//! [`digest_many`] compress the whole 64-byte blocks of up to 8 messages at once, one message per
//! 32-bit lane of AVX2 registers, when the CPU has AVX2 (detected once at run time). Without AVX2,
//! or on other architectures, the same functions fall back to the portable scalar compression in
//! this file. [`Md5State`] is a resumable streaming state, so a message can be fed in pieces across
//! many calls, alone ([`Md5State::update`]) or alongside other states ([`update_many`]).
//!
//! The `md-5` crate is not used here except as the oracle in the tests.

/// An MD5 digest, in the usual byte order.
pub type Digest = [u8; 16];

/// Size of one MD5 block in bytes.
const BLOCK: usize = 64;

/// The initial chaining value (A, B, C, D).
const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The 64 additive constants, `floor(abs(sin(i + 1)) * 2^32)`.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// The 64 MD5 steps, shared by the scalar and the AVX2 compressions. Each line is
/// `step!(round function, message words, a, b, c, d, message index, constant index, rotation)`;
/// the step macro updates its `a` argument. The operands are token trees so that the two-group
/// AVX2 step can take pairs such as `(a0, a1)`.
macro_rules! md5_schedule {
    ($step:ident, $m:tt, $a:tt, $b:tt, $c:tt, $d:tt) => {
        $step!(F, $m, $a, $b, $c, $d, 0, 0, 7);
        $step!(F, $m, $d, $a, $b, $c, 1, 1, 12);
        $step!(F, $m, $c, $d, $a, $b, 2, 2, 17);
        $step!(F, $m, $b, $c, $d, $a, 3, 3, 22);
        $step!(F, $m, $a, $b, $c, $d, 4, 4, 7);
        $step!(F, $m, $d, $a, $b, $c, 5, 5, 12);
        $step!(F, $m, $c, $d, $a, $b, 6, 6, 17);
        $step!(F, $m, $b, $c, $d, $a, 7, 7, 22);
        $step!(F, $m, $a, $b, $c, $d, 8, 8, 7);
        $step!(F, $m, $d, $a, $b, $c, 9, 9, 12);
        $step!(F, $m, $c, $d, $a, $b, 10, 10, 17);
        $step!(F, $m, $b, $c, $d, $a, 11, 11, 22);
        $step!(F, $m, $a, $b, $c, $d, 12, 12, 7);
        $step!(F, $m, $d, $a, $b, $c, 13, 13, 12);
        $step!(F, $m, $c, $d, $a, $b, 14, 14, 17);
        $step!(F, $m, $b, $c, $d, $a, 15, 15, 22);
        $step!(G, $m, $a, $b, $c, $d, 1, 16, 5);
        $step!(G, $m, $d, $a, $b, $c, 6, 17, 9);
        $step!(G, $m, $c, $d, $a, $b, 11, 18, 14);
        $step!(G, $m, $b, $c, $d, $a, 0, 19, 20);
        $step!(G, $m, $a, $b, $c, $d, 5, 20, 5);
        $step!(G, $m, $d, $a, $b, $c, 10, 21, 9);
        $step!(G, $m, $c, $d, $a, $b, 15, 22, 14);
        $step!(G, $m, $b, $c, $d, $a, 4, 23, 20);
        $step!(G, $m, $a, $b, $c, $d, 9, 24, 5);
        $step!(G, $m, $d, $a, $b, $c, 14, 25, 9);
        $step!(G, $m, $c, $d, $a, $b, 3, 26, 14);
        $step!(G, $m, $b, $c, $d, $a, 8, 27, 20);
        $step!(G, $m, $a, $b, $c, $d, 13, 28, 5);
        $step!(G, $m, $d, $a, $b, $c, 2, 29, 9);
        $step!(G, $m, $c, $d, $a, $b, 7, 30, 14);
        $step!(G, $m, $b, $c, $d, $a, 12, 31, 20);
        $step!(H, $m, $a, $b, $c, $d, 5, 32, 4);
        $step!(H, $m, $d, $a, $b, $c, 8, 33, 11);
        $step!(H, $m, $c, $d, $a, $b, 11, 34, 16);
        $step!(H, $m, $b, $c, $d, $a, 14, 35, 23);
        $step!(H, $m, $a, $b, $c, $d, 1, 36, 4);
        $step!(H, $m, $d, $a, $b, $c, 4, 37, 11);
        $step!(H, $m, $c, $d, $a, $b, 7, 38, 16);
        $step!(H, $m, $b, $c, $d, $a, 10, 39, 23);
        $step!(H, $m, $a, $b, $c, $d, 13, 40, 4);
        $step!(H, $m, $d, $a, $b, $c, 0, 41, 11);
        $step!(H, $m, $c, $d, $a, $b, 3, 42, 16);
        $step!(H, $m, $b, $c, $d, $a, 6, 43, 23);
        $step!(H, $m, $a, $b, $c, $d, 9, 44, 4);
        $step!(H, $m, $d, $a, $b, $c, 12, 45, 11);
        $step!(H, $m, $c, $d, $a, $b, 15, 46, 16);
        $step!(H, $m, $b, $c, $d, $a, 2, 47, 23);
        $step!(I, $m, $a, $b, $c, $d, 0, 48, 6);
        $step!(I, $m, $d, $a, $b, $c, 7, 49, 10);
        $step!(I, $m, $c, $d, $a, $b, 14, 50, 15);
        $step!(I, $m, $b, $c, $d, $a, 5, 51, 21);
        $step!(I, $m, $a, $b, $c, $d, 12, 52, 6);
        $step!(I, $m, $d, $a, $b, $c, 3, 53, 10);
        $step!(I, $m, $c, $d, $a, $b, 10, 54, 15);
        $step!(I, $m, $b, $c, $d, $a, 1, 55, 21);
        $step!(I, $m, $a, $b, $c, $d, 8, 56, 6);
        $step!(I, $m, $d, $a, $b, $c, 15, 57, 10);
        $step!(I, $m, $c, $d, $a, $b, 6, 58, 15);
        $step!(I, $m, $b, $c, $d, $a, 13, 59, 21);
        $step!(I, $m, $a, $b, $c, $d, 4, 60, 6);
        $step!(I, $m, $d, $a, $b, $c, 11, 61, 10);
        $step!(I, $m, $c, $d, $a, $b, 2, 62, 15);
        $step!(I, $m, $b, $c, $d, $a, 9, 63, 21);
    };
}

/// One scalar MD5 step: `a = b + rotl(a + f(b, c, d) + K[k] + m[i], s)`.
macro_rules! scalar_step {
    // G = (b & d) | (c & !d), whose two terms never share a bit: so it is also their sum, and
    // `c & !d` (no `b`) is added while `b`, the previous step's result, is still being computed.
    (G, $m:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {
        $a = $b.wrapping_add(
            $a.wrapping_add(K[$ki])
                .wrapping_add($m[$mi])
                .wrapping_add($c & !$d)
                .wrapping_add($b & $d)
                .rotate_left($s),
        );
    };
    ($f:ident, $m:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {
        $a = $b.wrapping_add(
            $a.wrapping_add(K[$ki])
                .wrapping_add($m[$mi])
                .wrapping_add(scalar_fun!($f, $b, $c, $d))
                .rotate_left($s),
        );
    };
}

/// The four MD5 round functions on `u32`.
macro_rules! scalar_fun {
    (F, $b:ident, $c:ident, $d:ident) => {
        $d ^ ($b & ($c ^ $d))
    };
    (G, $b:ident, $c:ident, $d:ident) => {
        $c ^ ($d & ($b ^ $c))
    };
    // `c ^ d` first: it does not wait for `b`.
    (H, $b:ident, $c:ident, $d:ident) => {
        $b ^ ($c ^ $d)
    };
    (I, $b:ident, $c:ident, $d:ident) => {
        $c ^ ($b | !$d)
    };
}

/// Compresses every whole 64-byte block of `data` into `state`; a trailing partial block is ignored.
fn compress_scalar(state: &mut [u32; 4], data: &[u8]) {
    let [mut a, mut b, mut c, mut d] = *state;
    for block in data.chunks_exact(BLOCK) {
        let mut m = [0u32; 16];
        for (w, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
            *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let (aa, bb, cc, dd) = (a, b, c, d);
        md5_schedule!(scalar_step, m, a, b, c, d);
        a = a.wrapping_add(aa);
        b = b.wrapping_add(bb);
        c = c.wrapping_add(cc);
        d = d.wrapping_add(dd);
    }
    *state = [a, b, c, d];
}

/// The final one or two blocks of a message: `tail` (the bytes after the last whole block, fewer
/// than 64), the 0x80 marker, zeros, and the bit length. Returns the buffer and how many of its
/// bytes (64 or 128) are used.
fn pad_tail(tail: &[u8], total_len: u64) -> ([u8; 2 * BLOCK], usize) {
    let mut out = [0u8; 2 * BLOCK];
    let n = tail.len().min(BLOCK - 1);
    out[..n].copy_from_slice(&tail[..n]);
    out[n] = 0x80;
    let end = if n < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
    out[end - 8..end].copy_from_slice(&total_len.wrapping_mul(8).to_le_bytes());
    (out, end)
}

fn to_digest(state: &[u32; 4]) -> Digest {
    let mut out = [0u8; 16];
    for (dst, word) in out.chunks_exact_mut(4).zip(state) {
        dst.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// A streaming MD5 state (the 4 state words, the total length, and a partial-block buffer) that can be
/// advanced alone or in lanes alongside other states.
#[derive(Clone, Debug)]
pub struct Md5State {
    state: [u32; 4],
    /// Total bytes absorbed so far (wrapping, as MD5 specifies the length modulo 2^64 bits).
    len: u64,
    /// Bytes not yet compressed; `buf[..buf_len]` is valid and `buf_len < 64`.
    buf: [u8; BLOCK],
    buf_len: usize,
}

impl Default for Md5State {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5State {
    pub fn new() -> Self {
        Md5State {
            state: INIT,
            len: 0,
            buf: [0; BLOCK],
            buf_len: 0,
        }
    }

    /// The state after a file's first `offset` bytes, whose chain value there is `at` (`None`:
    /// the start, MD5's initial value); see [`link`]. `offset` must be a multiple of 64.
    pub fn resume(at: Option<&Digest>, offset: u64) -> Self {
        let mut s = Self::new();
        if let Some(d) = at {
            for (w, bytes) in s.state.iter_mut().zip(d.chunks_exact(4)) {
                *w = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        s.len = offset;
        s
    }

    /// The chain value here: the state words in digest byte order (bytes buffered since the
    /// last whole block are not in it; between chunks there are none).
    pub fn chain_value(&self) -> Digest {
        to_digest(&self.state)
    }

    /// Absorbs `data` with the scalar compression.
    pub fn update(&mut self, data: &[u8]) {
        let (body, tail) = self.absorb(data);
        compress_scalar(&mut self.state, body);
        self.stash(tail);
    }

    /// Pads, compresses the last block(s) and returns the digest.
    pub fn finalize(mut self) -> Digest {
        let (padded, n) = pad_tail(&self.buf[..self.buf_len], self.len);
        compress_scalar(&mut self.state, &padded[..n]);
        to_digest(&self.state)
    }

    /// Counts `data`, completes the partial buffer from its head (compressing it if it fills) and
    /// splits the rest into the whole-block body and the tail. The caller must compress the body
    /// into `self.state` before anything else touches it, and hand the tail to `stash` (which may
    /// happen first: when the tail is non-empty the buffer is empty).
    fn absorb<'d>(&mut self, data: &'d [u8]) -> (&'d [u8], &'d [u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        let mut rest = data;
        if self.buf_len > 0 {
            let take = (BLOCK - self.buf_len).min(rest.len());
            let (head, after) = rest.split_at(take);
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(head);
            self.buf_len += take;
            rest = after;
            if self.buf_len == BLOCK {
                compress_scalar(&mut self.state, &self.buf);
                self.buf_len = 0;
            }
        }
        rest.split_at(rest.len() / BLOCK * BLOCK)
    }

    /// Appends fewer than 64 bytes to the buffer (only called when they fit).
    fn stash(&mut self, tail: &[u8]) {
        let n = tail.len().min(BLOCK - 1 - self.buf_len);
        self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&tail[..n]);
        self.buf_len += n;
    }
}

/// The chain value of one chunk of a file (chained chunk digests): the MD5 state after the
/// file's first `offset` bytes and `data`, started from `prev`, the chain value of the chunk
/// before (`None` for the first chunk, which starts from MD5's initial value). The last chunk's
/// chain value (`last`) is the file's MD5. `offset` must be a multiple of 64, and so must the
/// length of every chunk but the last, so that no partial block is left between chunks.
///
/// Why chained: a file's chain values are what its owner computes anyway while it takes the MD5
/// of the whole file, and with them every chunk can be checked on its own, in any order and in
/// any lane, and the checks of all chunks together are the MD5 of the whole file. A receiver
/// hashes each byte once (instead of once per chunk digest and once more for the file's MD5,
/// which is one serial stream that can only follow the held prefix of the file).
pub fn link(prev: Option<&Digest>, offset: u64, data: &[u8], last: bool) -> Digest {
    let mut s = Md5State::resume(prev, offset);
    s.update(data);
    if last { s.finalize() } else { s.chain_value() }
}

/// Every chain value of `data` cut into chunks of `chunk` bytes (a multiple of 64); the last
/// one is the MD5 of `data`. An empty `data` has no chunks.
pub fn chain(data: &[u8], chunk: usize) -> Vec<Digest> {
    let mut s = Md5State::new();
    let n = data.len().div_ceil(chunk.max(BLOCK));
    data.chunks(chunk.max(BLOCK))
        .enumerate()
        .map(|(i, c)| {
            s.update(c);
            if i + 1 == n {
                s.clone().finalize()
            } else {
                s.chain_value()
            }
        })
        .collect()
}

/// Messages hashed at once by the multi-buffer path.
pub const LANES: usize = 8;

/// Whether the AVX2 path is in use.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::{AtomicU8, Ordering};
        // 0 = not yet checked, 1 = no, 2 = yes.
        static CACHE: AtomicU8 = AtomicU8::new(0);
        match CACHE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = std::arch::is_x86_feature_detected!("avx2");
                CACHE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Advances several independent states, each by its own input of any length. Same result as calling
/// `update` on each, but the whole 64-byte blocks are compressed 8 lanes at a time with AVX2 when the CPU has it
/// (checked once at run time with is_x86_feature_detected!, cached), scalar otherwise or on other arches.
pub fn update_many(items: &mut [(&mut Md5State, &[u8])]) {
    update_many_impl(items, Path::Lanes16);
}

/// `update_many` in at most 8 lanes at once (one group, `compress8`): for a batch whose longest
/// jobs set its number of rounds anyway, so that the short jobs fill the lanes beside them in
/// every round instead of crowding into the first few rounds of 16.
pub fn update_many_narrow(items: &mut [(&mut Md5State, &[u8])]) {
    update_many_impl(items, Path::Lanes8);
}

/// MD5 of each input (any lengths, need not be equal), using lanes where possible.
pub fn digest_many(inputs: &[&[u8]]) -> Vec<Digest> {
    digest_many_impl(inputs, Path::Lanes16)
}

/// Which compression `compress_jobs` may use (tests and benchmarks force the narrower ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// One job at a time, scalar.
    Scalar,
    /// AVX2 lanes, at most one group of 8 per round.
    Lanes8,
    /// AVX2 lanes, two interleaved groups of 8 per round when more than 8 jobs are in flight.
    Lanes16,
}

/// `update_many`, with `path` choosing the compression (for tests and comparisons).
fn update_many_impl(items: &mut [(&mut Md5State, &[u8])], path: Path) {
    let mut jobs: Vec<(&mut [u32; 4], &[u8])> = Vec::with_capacity(items.len());
    for (st, data) in items.iter_mut() {
        let st: &mut Md5State = st;
        let (body, tail) = st.absorb(data);
        st.stash(tail);
        jobs.push((&mut st.state, body));
    }
    compress_jobs(&mut jobs, path);
}

/// `digest_many`, with `path` choosing the compression (for tests and comparisons).
fn digest_many_impl(inputs: &[&[u8]], path: Path) -> Vec<Digest> {
    let mut states = vec![INIT; inputs.len()];
    let mut jobs: Vec<(&mut [u32; 4], &[u8])> = states
        .iter_mut()
        .zip(inputs)
        .map(|(s, d)| (s, &d[..d.len() / BLOCK * BLOCK]))
        .collect();
    compress_jobs(&mut jobs, path);
    drop(jobs);
    let finals: Vec<([u8; 2 * BLOCK], usize)> = inputs
        .iter()
        .map(|d| pad_tail(&d[d.len() / BLOCK * BLOCK..], d.len() as u64))
        .collect();
    let mut jobs: Vec<(&mut [u32; 4], &[u8])> = states
        .iter_mut()
        .zip(&finals)
        .map(|(s, (padded, n))| (s, &padded[..*n]))
        .collect();
    compress_jobs(&mut jobs, path);
    drop(jobs);
    states.iter().map(to_digest).collect()
}

/// Compresses each job's whole blocks into its state words: in AVX2 lanes when `path` allows it
/// and the CPU has AVX2, else one job at a time.
fn compress_jobs(jobs: &mut [(&mut [u32; 4], &[u8])], path: Path) {
    #[cfg(target_arch = "x86_64")]
    if path != Path::Scalar && jobs.len() > 1 && has_avx2() {
        compress_jobs_lanes(jobs, path == Path::Lanes16);
        return;
    }
    for (state, data) in jobs.iter_mut() {
        scalar(state, data);
    }
}

thread_local! {
    /// Bytes the rounds run on this thread could have hashed (see `take_slot_bytes`).
    static SLOT_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts a pass of `bytes` per lane over `lanes` lanes.
fn count_slots(bytes: usize, lanes: usize) {
    SLOT_BYTES.with(|c| c.set(c.get() + (bytes * lanes) as u64));
}

/// The bytes the block compressions of `update_many` and `digest_many` run on this thread
/// since the last call could have hashed (a final block's padding is left out): 8
/// lanes a round of one group, 16 of two interleaved groups, and a scalar pass counted as 8
/// lanes of its length (it takes about as long as a round of one group). Set against the bytes
/// actually hashed, it says how full the lanes were.
pub fn take_slot_bytes() -> u64 {
    SLOT_BYTES.with(|c| c.replace(0))
}

/// `compress_scalar`, counted (`take_slot_bytes`).
fn scalar(state: &mut [u32; 4], data: &[u8]) {
    count_slots(data.len() / BLOCK * BLOCK, LANES);
    compress_scalar(state, data);
}

/// The lane scheduler. Up to 16 slots (8 unless `wide`) each hold a job that still has blocks;
/// empty slots are refilled from the queue in order. Each round compresses, in every occupied
/// slot, the smallest number of blocks any occupied slot has left, so at least one job finishes
/// per round. A round with more than 8 occupied slots runs two interleaved groups of 8 lanes
/// (`compress16`: MD5 is one serial dependency chain per group, so a second independent chain
/// fills the CPU's idle issue slots and costs far less than a second pass); otherwise it runs one
/// group (`compress8`). Lanes without a job repeat an occupied lane's input and their result is
/// discarded. When a single job is left it runs scalar, which is as fast as one lane and wastes
/// nothing.
#[cfg(target_arch = "x86_64")]
fn compress_jobs_lanes(jobs: &mut [(&mut [u32; 4], &[u8])], wide: bool) {
    const LANES: usize = avx2::LANES;
    let cap = if wide { 2 * LANES } else { LANES };
    // Job indices of the occupied slots, kept compacted: `slots[..active]`.
    let mut slots = [0usize; 2 * LANES];
    let mut active = 0;
    let mut next = 0;
    loop {
        while active < cap {
            while next < jobs.len() && jobs[next].1.len() < BLOCK {
                next += 1;
            }
            if next >= jobs.len() {
                break;
            }
            slots[active] = next;
            active += 1;
            next += 1;
        }
        let live = &slots[..active];
        let Some(&first) = live.first() else {
            return;
        };
        if active < MIN_SIMD_LANES && next >= jobs.len() {
            for &j in live {
                let (state, data) = &mut jobs[j];
                scalar(state, data);
            }
            return;
        }
        let blocks = live
            .iter()
            .map(|&j| jobs[j].1.len() / BLOCK)
            .min()
            .unwrap_or(0);
        let take = blocks * BLOCK;
        let filler: &[u8] = &jobs[first].1[..take];
        // Lane `i` is lane `i % 8` of group `i / 8`.
        let mut states = [[INIT; LANES]; 2];
        let mut data: [[&[u8]; LANES]; 2] = [[filler; LANES]; 2];
        for (i, &j) in live.iter().enumerate() {
            let input: &[u8] = jobs[j].1;
            states[i / LANES][i % LANES] = *jobs[j].0;
            data[i / LANES][i % LANES] = &input[..take];
        }
        #[cfg(test)]
        tests::count_round(active > LANES);
        count_slots(take, if active > LANES { 2 * LANES } else { LANES });
        if active > LANES {
            // SAFETY: `compress_jobs` only calls this after `has_avx2()` confirmed at run time
            // that the CPU supports AVX2, the only target feature `compress16` enables.
            unsafe { avx2::compress16(&mut states, data) };
        } else {
            // SAFETY: as above; `compress8` enables only AVX2.
            unsafe { avx2::compress8(&mut states[0], data[0]) };
        }
        let mut kept = 0;
        for (i, j) in slots.into_iter().take(active).enumerate() {
            let input: &[u8] = jobs[j].1;
            *jobs[j].0 = states[i / LANES][i % LANES];
            jobs[j].1 = &input[take..];
            if jobs[j].1.len() >= BLOCK {
                slots[kept] = j;
                kept += 1;
            }
        }
        active = kept;
    }
}

/// Below this many occupied lanes, with nothing queued, the scheduler finishes the jobs scalar.
#[cfg(target_arch = "x86_64")]
const MIN_SIMD_LANES: usize = 2;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests;
