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
    (H, $b:ident, $c:ident, $d:ident) => {
        $b ^ $c ^ $d
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

/// MD5 of each input (any lengths, need not be equal), using lanes where possible.
pub fn digest_many(inputs: &[&[u8]]) -> Vec<Digest> {
    digest_many_impl(inputs, Path::Lanes16)
}

/// Which compression `compress_jobs` may use (tests and benchmarks force the narrower ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// One job at a time, scalar.
    Scalar,
    /// AVX2 lanes, at most one group of 8 per round (only tests and the benchmark force this).
    #[cfg_attr(not(test), allow(dead_code))]
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
        compress_scalar(state, data);
    }
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
                compress_scalar(state, data);
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
mod tests {
    use super::*;
    use md5::{Digest as _, Md5};
    use std::cell::Cell;

    thread_local! {
        /// Lane rounds the scheduler ran on this thread: `[one group of 8, two groups]`.
        static ROUNDS: Cell<[usize; 2]> = const { Cell::new([0; 2]) };
    }

    /// Called by the scheduler before each lane round.
    pub(super) fn count_round(wide: bool) {
        ROUNDS.with(|r| {
            let mut v = r.get();
            v[usize::from(wide)] += 1;
            r.set(v);
        });
    }

    /// Two-group (16-lane) rounds run on this thread so far.
    fn wide_rounds() -> usize {
        ROUNDS.with(|r| r.get()[1])
    }

    /// Asserts that `f` ran at least one 16-lane round when the CPU has AVX2.
    fn assert_wide<R>(what: &str, f: impl FnOnce() -> R) -> R {
        let before = wide_rounds();
        let out = f();
        if has_avx2() {
            assert!(wide_rounds() > before, "{what}: no 16-lane round ran");
        }
        out
    }

    fn oracle(data: &[u8]) -> Digest {
        Md5::digest(data).into()
    }

    /// Deterministic pseudo-random generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn fill(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        (0..len).map(|_| (rng.next() >> 56) as u8).collect()
    }

    const LENGTHS: [usize; 12] = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 262_144, 262_161];

    #[test]
    fn single_lengths_match_md5() {
        for (i, &len) in LENGTHS.iter().enumerate() {
            let data = fill(i as u64, len);
            let want = oracle(&data);
            let mut st = Md5State::new();
            st.update(&data);
            assert_eq!(st.finalize(), want, "update, len {len}");
            assert_eq!(digest_many(&[&data]), vec![want], "digest_many, len {len}");
            assert_eq!(
                digest_many_impl(&[&data], Path::Scalar),
                vec![want],
                "scalar, len {len}"
            );
        }
    }

    #[test]
    fn all_lengths_in_lanes_match_md5() {
        let inputs: Vec<Vec<u8>> = LENGTHS
            .iter()
            .enumerate()
            .map(|(i, &len)| fill(100 + i as u64, len))
            .collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let want: Vec<Digest> = refs.iter().map(|d| oracle(d)).collect();
        assert_eq!(digest_many(&refs), want);
        assert_eq!(digest_many_impl(&refs, Path::Scalar), want);
    }

    #[test]
    fn known_vectors() {
        let hex = |d: Digest| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(digest_many(&[b""])[0]),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let mut st = Md5State::default();
        st.update(b"The quick brown fox jumps over the lazy dog");
        assert_eq!(hex(st.finalize()), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn digest_many_mixed_and_equal_lengths() {
        let mut rng = Rng(7);
        for count in 1..=20usize {
            for mode in 0..3 {
                let lens: Vec<usize> = (0..count)
                    .map(|i| match mode {
                        0 => rng.below(5000),
                        1 => 4096,
                        // Mostly equal, with a few stragglers that leave lanes idle.
                        _ => {
                            if i % 5 == 0 {
                                rng.below(20_000)
                            } else {
                                1000 + 64 * (i % 3)
                            }
                        }
                    })
                    .collect();
                let inputs: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| fill((count * 100 + mode * 30 + i) as u64, len))
                    .collect();
                let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
                let want: Vec<Digest> = refs.iter().map(|d| oracle(d)).collect();
                assert_eq!(digest_many(&refs), want, "count {count} mode {mode}");
                assert_eq!(
                    digest_many_impl(&refs, Path::Scalar),
                    want,
                    "scalar, count {count} mode {mode}"
                );
            }
        }
        assert!(digest_many(&[]).is_empty());
    }

    /// Feeds `n` states random pieces of `n` sources (3000 bytes plus up to `spread`) in 400
    /// `update_many` calls that each include a random subset of the states, then checks them.
    fn pieces_round(path: Path, seed: u64, n: usize, spread: usize) {
        let mut rng = Rng(seed);
        let sources: Vec<Vec<u8>> = (0..n)
            .map(|i| fill(seed * 1000 + i as u64, 3000 + rng.below(spread)))
            .collect();
        let mut fed = vec![0usize; n];
        let mut states: Vec<Md5State> = (0..n).map(|_| Md5State::new()).collect();
        for call in 0..400 {
            let mut pieces: Vec<(usize, usize)> = Vec::new();
            for i in 0..n {
                if rng.below(4) == 0 {
                    continue;
                }
                let left = sources[i].len() - fed[i];
                let want = match rng.below(6) {
                    0 => 0,
                    1 => rng.below(64),
                    2 => 64 * (1 + rng.below(4)),
                    3 => rng.below(200),
                    _ => rng.below(2000),
                };
                let len = want.min(left);
                pieces.push((i, len));
            }
            if call % 7 == 0 {
                // Mix in the scalar single-state path on the same states.
                if let Some(&(i, len)) = pieces.first() {
                    states[i].update(&sources[i][fed[i]..fed[i] + len]);
                    fed[i] += len;
                    pieces.remove(0);
                }
            }
            let mut items: Vec<(&mut Md5State, &[u8])> = Vec::new();
            let mut rest: &mut [Md5State] = &mut states;
            let mut base = 0;
            for &(i, len) in &pieces {
                let (_, tail) = rest.split_at_mut(i - base);
                let (st, after) = tail.split_first_mut().unwrap();
                items.push((st, &sources[i][fed[i]..fed[i] + len]));
                rest = after;
                base = i + 1;
            }
            update_many_impl(&mut items, path);
            for &(i, len) in &pieces {
                fed[i] += len;
            }
        }
        // Feed whatever is left in one call, then compare.
        {
            let mut items: Vec<(&mut Md5State, &[u8])> = states
                .iter_mut()
                .zip(&sources)
                .zip(&fed)
                .map(|((st, src), &f)| (st, &src[f..]))
                .collect();
            update_many_impl(&mut items, path);
        }
        for (i, st) in states.into_iter().enumerate() {
            assert_eq!(
                st.finalize(),
                oracle(&sources[i]),
                "state {i} of {n}, {path:?}, seed {seed}"
            );
        }
    }

    #[test]
    fn update_many_random_pieces_match_md5() {
        for seed in 1..=4 {
            pieces_round(Path::Lanes16, seed, 13, 40_000);
            pieces_round(Path::Lanes8, seed, 13, 40_000);
            pieces_round(Path::Scalar, seed, 13, 40_000);
        }
    }

    #[test]
    fn update_many_random_pieces_16_lanes_match_md5() {
        // Longer sources, so that most states still have data to take throughout the calls.
        for (seed, n) in [(11, 9), (12, 12), (13, 16), (14, 17), (15, 24), (16, 40)] {
            let wide = || pieces_round(Path::Lanes16, seed, n, 150_000);
            if n >= 12 {
                // With 9 states, all of them rarely get a whole block in the same call.
                assert_wide(&format!("{n} states"), wide);
            } else {
                wide();
            }
            pieces_round(Path::Lanes8, seed, n, 150_000);
        }
    }

    /// Lengths for `count` inputs in one of several patterns: equal (whole blocks, or not),
    /// random, mostly equal with long stragglers, and runs of empty and short inputs.
    fn lengths(rng: &mut Rng, count: usize, mode: usize) -> Vec<usize> {
        (0..count)
            .map(|i| match mode {
                0 => 4096,
                1 => 1000,
                2 => rng.below(5000),
                3 => {
                    if i % 5 == 0 {
                        rng.below(20_000)
                    } else {
                        1000 + 64 * (i % 3)
                    }
                }
                _ => {
                    if i % 4 == 1 {
                        rng.below(64)
                    } else {
                        64 * rng.below(40) + rng.below(64)
                    }
                }
            })
            .collect()
    }

    const MODES: usize = 5;

    #[test]
    fn digest_many_9_to_40_inputs_match_md5() {
        let mut rng = Rng(31);
        for count in 9..=40usize {
            for mode in 0..MODES {
                let inputs: Vec<Vec<u8>> = lengths(&mut rng, count, mode)
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| fill((count * 1000 + mode * 50 + i) as u64, len))
                    .collect();
                let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
                let want: Vec<Digest> = refs.iter().map(|d| oracle(d)).collect();
                let got = assert_wide(&format!("count {count} mode {mode}"), || digest_many(&refs));
                assert_eq!(got, want, "count {count} mode {mode}");
                assert_eq!(
                    digest_many_impl(&refs, Path::Lanes8),
                    want,
                    "8 lanes, count {count} mode {mode}"
                );
            }
        }
    }

    #[test]
    fn update_many_9_to_40_inputs_match_md5() {
        let mut rng = Rng(47);
        for count in 9..=40usize {
            for mode in 0..MODES {
                let inputs: Vec<Vec<u8>> = lengths(&mut rng, count, mode)
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| fill((count * 2000 + mode * 50 + i) as u64, len))
                    .collect();
                let mut states: Vec<Md5State> = (0..count).map(|_| Md5State::new()).collect();
                // Feed each input in two pieces split at a per-input point, in two calls.
                let cuts: Vec<usize> = inputs.iter().map(|d| rng.below(d.len() + 1)).collect();
                for half in 0..2 {
                    let mut items: Vec<(&mut Md5State, &[u8])> = states
                        .iter_mut()
                        .zip(&inputs)
                        .zip(&cuts)
                        .map(|((st, d), &cut)| {
                            let piece: &[u8] = if half == 0 { &d[..cut] } else { &d[cut..] };
                            (st, piece)
                        })
                        .collect();
                    update_many(&mut items);
                }
                for (i, st) in states.into_iter().enumerate() {
                    assert_eq!(
                        st.finalize(),
                        oracle(&inputs[i]),
                        "input {i}, count {count} mode {mode}"
                    );
                }
            }
        }
        // Equal whole-block lengths in one call take the 16-lane path.
        let inputs: Vec<Vec<u8>> = (0..16).map(|i| fill(7000 + i, 64 * 50)).collect();
        let mut states: Vec<Md5State> = (0..16).map(|_| Md5State::new()).collect();
        let mut items: Vec<(&mut Md5State, &[u8])> = states
            .iter_mut()
            .zip(&inputs)
            .map(|(st, d)| (st, d.as_slice()))
            .collect();
        assert_wide("16 equal", || update_many(&mut items));
        for (st, d) in states.into_iter().zip(&inputs) {
            assert_eq!(st.finalize(), oracle(d));
        }
    }

    #[test]
    fn compress16_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut rng = Rng(99);
            for round in 0..20u64 {
                let init: [[[u32; 4]; avx2::LANES]; 2] = core::array::from_fn(|_| {
                    core::array::from_fn(|_| core::array::from_fn(|_| rng.next() as u32))
                });
                let inputs: Vec<Vec<u8>> = (0..2 * avx2::LANES as u64)
                    .map(|i| fill(round * 100 + i, 64 * (round as usize % 5) + rng.below(300)))
                    .collect();
                let data: [[&[u8]; avx2::LANES]; 2] = core::array::from_fn(|g| {
                    core::array::from_fn(|l| inputs[g * avx2::LANES + l].as_slice())
                });
                let blocks = inputs.iter().map(|d| d.len() / BLOCK).min().unwrap_or(0);
                let mut states = init;
                // SAFETY: `has_avx2()` confirmed at run time that the CPU supports AVX2, the only
                // target feature `compress16` enables.
                unsafe { avx2::compress16(&mut states, data) };
                for g in 0..2 {
                    for l in 0..avx2::LANES {
                        let mut want = init[g][l];
                        compress_scalar(&mut want, &data[g][l][..blocks * BLOCK]);
                        assert_eq!(states[g][l], want, "round {round} group {g} lane {l}");
                    }
                }
            }
        }
    }

    #[test]
    fn update_many_equals_update() {
        let data: Vec<Vec<u8>> = (0..10)
            .map(|i| fill(500 + i, 1000 + 333 * i as usize))
            .collect();
        let mut a: Vec<Md5State> = (0..10).map(|_| Md5State::new()).collect();
        let mut b = a.clone();
        for (st, d) in a.iter_mut().zip(&data) {
            st.update(&d[..17]);
            st.update(&d[17..]);
        }
        let mut items: Vec<(&mut Md5State, &[u8])> = b
            .iter_mut()
            .zip(&data)
            .map(|(s, d)| (s, &d[..17]))
            .collect();
        update_many(&mut items);
        let mut items: Vec<(&mut Md5State, &[u8])> = b
            .iter_mut()
            .zip(&data)
            .map(|(s, d)| (s, &d[17..]))
            .collect();
        update_many(&mut items);
        for (x, y) in a.into_iter().zip(b) {
            assert_eq!(x.finalize(), y.finalize());
        }
        update_many(&mut []);
    }

    #[test]
    fn avx2_detection_is_consistent() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(has_avx2(), std::arch::is_x86_feature_detected!("avx2"));
        assert_eq!(has_avx2(), has_avx2());
    }

    #[test]
    #[ignore = "benchmark; run with --release --ignored --nocapture"]
    fn throughput() {
        use std::hint::black_box;
        use std::time::Instant;
        const CHUNK: usize = 256 * 1024;
        const BYTES: usize = 256 << 20; // per measurement
        let bufs: Vec<Vec<u8>> = (0..16).map(|i| fill(900 + i, CHUNK)).collect();
        let all: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let want: Vec<Digest> = all.iter().map(|d| oracle(d)).collect();
        assert_eq!(digest_many(&all), want);
        assert_eq!(digest_many_impl(&all, Path::Lanes8), want);

        // The machine may be shared, so each figure is the best of `TRIALS` timings, and the
        // trials of the different cases are interleaved so that a busy spell hits all of them.
        const TRIALS: usize = 5;
        let time = |n: usize, f: &dyn Fn()| {
            let reps = BYTES / (CHUNK * n);
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            (reps * CHUNK * n) as f64 / t.elapsed().as_secs_f64() / 1e6
        };
        let refs8 = &all[..8];
        let cases: [(usize, &dyn Fn()); 5] = [
            (8, &|| {
                black_box(digest_many(black_box(refs8)));
            }),
            (16, &|| {
                black_box(digest_many(black_box(&all)));
            }),
            (16, &|| {
                black_box(digest_many_impl(black_box(&all), Path::Lanes8));
            }),
            (8, &|| {
                black_box(digest_many_impl(black_box(refs8), Path::Scalar));
            }),
            (8, &|| {
                for d in refs8 {
                    black_box(Md5::digest(black_box(d)));
                }
            }),
        ];
        for (_, f) in &cases {
            f(); // warm up
        }
        let mut best = [0f64; 5];
        for _ in 0..TRIALS {
            for (b, (n, f)) in best.iter_mut().zip(&cases) {
                *b = b.max(time(*n, *f));
            }
        }
        let [many8, many16, narrow16, scalar, oracle_rate] = best;
        println!(
            "md5x throughput, 256 KiB buffers, best of {TRIALS} x {} MiB (AVX2 in use: {}):",
            BYTES >> 20,
            has_avx2()
        );
        println!("  digest_many, 8 buffers (8 lanes)          {many8:8.0} MB/s");
        println!("  digest_many, 16 buffers (16 lanes)        {many16:8.0} MB/s");
        println!("  16 buffers, 8-lane path only              {narrow16:8.0} MB/s");
        println!("  digest_many, 8 buffers (forced scalar)    {scalar:8.0} MB/s");
        println!("  md-5 one at a time                        {oracle_rate:8.0} MB/s");
        println!(
            "  16 lanes over 8-lane path, 16 buffers     {:8.2}x",
            many16 / narrow16
        );
        println!(
            "  speedup over md-5 (8 / 16 buffers)        {:8.2}x / {:.2}x",
            many8 / oracle_rate,
            many16 / oracle_rate
        );
    }
}
