//! The AVX2 kernels of the multi-buffer MD5: 8 messages in the 8 u32 lanes of one set of
//! registers (`compress8`), or 16 in two interleaved sets whose independent dependency chains
//! hide each other's latency (`compress16`). Only called after `has_avx2()` said yes.

use super::{BLOCK, K};
use core::arch::x86_64::*;

pub(super) const LANES: usize = 8;

/// Adds round function `f(b, c, d)` to `t`, arranged so that as little as possible waits on
/// `b`, the value produced by the previous step.
macro_rules! simd_add_fun {
    (F, $t:ident, $b:ident, $c:ident, $d:ident) => {
        _mm256_add_epi32(
            $t,
            _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d))),
        )
    };
    // G = (b & d) | (c & !d); the two terms share no bits, so | is +.
    (G, $t:ident, $b:ident, $c:ident, $d:ident) => {
        _mm256_add_epi32(
            _mm256_add_epi32($t, _mm256_andnot_si256($d, $c)),
            _mm256_and_si256($b, $d),
        )
    };
    (H, $t:ident, $b:ident, $c:ident, $d:ident) => {
        _mm256_add_epi32($t, _mm256_xor_si256($b, _mm256_xor_si256($c, $d)))
    };
    // I = c ^ (b | !d) = !(c ^ (!b & d)), and t + !x = (t - 1) - x: `simd_k` has already
    // taken the 1 off the constant, which saves the NOT of d (AVX2 has no NOT).
    (I, $t:ident, $b:ident, $c:ident, $d:ident) => {
        _mm256_sub_epi32($t, _mm256_xor_si256($c, _mm256_andnot_si256($b, $d)))
    };
}

/// The constant step `k` adds, as an `i32`: `K[k]`, less 1 in the I round (see `simd_add_fun`).
macro_rules! simd_k {
    (I, $ki:literal) => {
        K[$ki].wrapping_sub(1) as i32
    };
    ($f:ident, $ki:literal) => {
        K[$ki] as i32
    };
}

/// One MD5 step on 8 lanes: `a = b + rotl(a + K[k] + m[i] + f(b, c, d), s)`.
macro_rules! simd_step {
    ($f:ident, $m:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {{
        let t = _mm256_add_epi32(
            $a,
            _mm256_add_epi32(_mm256_set1_epi32(simd_k!($f, $ki)), $m[$mi]),
        );
        let t = simd_add_fun!($f, t, $b, $c, $d);
        let t = _mm256_or_si256(
            _mm256_slli_epi32::<$s>(t),
            _mm256_srli_epi32::<{ 32 - $s }>(t),
        );
        $a = _mm256_add_epi32($b, t);
    }};
}

/// The same step on two independent groups of 8 lanes; each operand is a `(group 0, group 1)`
/// pair. The two chains share no data, so the CPU overlaps their latencies.
macro_rules! simd_step2 {
    ($f:ident, ($m0:ident, $m1:ident), ($a0:ident, $a1:ident), ($b0:ident, $b1:ident), ($c0:ident, $c1:ident), ($d0:ident, $d1:ident), $mi:literal, $ki:literal, $s:literal) => {{
        simd_step!($f, $m0, $a0, $b0, $c0, $d0, $mi, $ki, $s);
        simd_step!($f, $m1, $a1, $b1, $c1, $d1, $mi, $ki, $s);
    }};
}

/// Loads state word `w` of every lane into one vector.
#[target_feature(enable = "avx2")]
#[inline]
fn load_word(states: &[[u32; 4]; LANES], w: usize) -> __m256i {
    let v: [u32; LANES] = core::array::from_fn(|lane| states[lane][w]);
    // SAFETY: `v` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Stores vector `x` as state word `w` of every lane.
#[target_feature(enable = "avx2")]
#[inline]
fn store_word(states: &mut [[u32; 4]; LANES], w: usize, x: __m256i) {
    let mut v = [0u32; LANES];
    // SAFETY: `v` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), x) };
    for (state, word) in states.iter_mut().zip(v) {
        state[w] = word;
    }
}

/// The 16 message words of the block at byte offset `off` of every lane: vector `i` holds
/// word `i` of lane `l` in element `l`.
///
/// Each quarter of the block (words `4q..4q + 4`) is four rows that hold lane `r`'s 16 bytes
/// in the low half and lane `r + 4`'s in the high half, then a 4x4 transpose within each
/// half. This needs no shuffle across the halves, which costs several micro-ops on some
/// AVX2 CPUs (vperm2i128 is 8 on AMD Zen 1).
///
/// # Safety
///
/// Each `ptrs[lane]` must be valid for reads of `off + 64` bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_block(ptrs: &[*const u8; LANES], off: usize) -> [__m256i; 16] {
    let mut m = [_mm256_setzero_si256(); 16];
    for q in 0..4 {
        let rows: [__m256i; 4] = core::array::from_fn(|r| {
            // SAFETY: the caller guarantees `off + 64` readable bytes at every `ptrs[lane]`,
            // and `off + 16 * q + 16 <= off + 64`; loadu has no alignment requirement.
            unsafe {
                let lo = _mm_loadu_si128(ptrs[r].add(off + 16 * q).cast());
                let hi = _mm_loadu_si128(ptrs[r + 4].add(off + 16 * q).cast());
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi)
            }
        });
        let t0 = _mm256_unpacklo_epi32(rows[0], rows[1]);
        let t1 = _mm256_unpackhi_epi32(rows[0], rows[1]);
        let t2 = _mm256_unpacklo_epi32(rows[2], rows[3]);
        let t3 = _mm256_unpackhi_epi32(rows[2], rows[3]);
        m[4 * q] = _mm256_unpacklo_epi64(t0, t2);
        m[4 * q + 1] = _mm256_unpackhi_epi64(t0, t2);
        m[4 * q + 2] = _mm256_unpacklo_epi64(t1, t3);
        m[4 * q + 3] = _mm256_unpackhi_epi64(t1, t3);
    }
    m
}

/// Compresses `n` blocks in each of 8 lanes, where `n` is the smallest `data[lane].len() / 64`;
/// lane `l` hashes `data[l]` into `states[l]`.
#[target_feature(enable = "avx2")]
pub(super) fn compress8(states: &mut [[u32; 4]; LANES], data: [&[u8]; LANES]) {
    let blocks = data.iter().map(|d| d.len() / BLOCK).min().unwrap_or(0);
    let ptrs = data.map(|d| d.as_ptr());
    let mut a = load_word(states, 0);
    let mut b = load_word(states, 1);
    let mut c = load_word(states, 2);
    let mut d = load_word(states, 3);
    for block in 0..blocks {
        // SAFETY: `block * 64 + 64 <= blocks * 64 <= data[lane].len()` for every lane.
        let m = unsafe { load_block(&ptrs, block * BLOCK) };
        let (aa, bb, cc, dd) = (a, b, c, d);
        md5_schedule!(simd_step, m, a, b, c, d);
        a = _mm256_add_epi32(a, aa);
        b = _mm256_add_epi32(b, bb);
        c = _mm256_add_epi32(c, cc);
        d = _mm256_add_epi32(d, dd);
    }
    store_word(states, 0, a);
    store_word(states, 1, b);
    store_word(states, 2, c);
    store_word(states, 3, d);
}

/// Compresses `n` blocks in each of 16 lanes, two groups of 8 whose steps are interleaved,
/// where `n` is the smallest `data[g][lane].len() / 64`; lane `l` of group `g` hashes
/// `data[g][l]` into `states[g][l]`.
#[target_feature(enable = "avx2")]
pub(super) fn compress16(states: &mut [[[u32; 4]; LANES]; 2], data: [[&[u8]; LANES]; 2]) {
    let blocks = data
        .iter()
        .flatten()
        .map(|d| d.len() / BLOCK)
        .min()
        .unwrap_or(0);
    let [ptrs0, ptrs1] = data.map(|group| group.map(|d| d.as_ptr()));
    let mut a0 = load_word(&states[0], 0);
    let mut b0 = load_word(&states[0], 1);
    let mut c0 = load_word(&states[0], 2);
    let mut d0 = load_word(&states[0], 3);
    let mut a1 = load_word(&states[1], 0);
    let mut b1 = load_word(&states[1], 1);
    let mut c1 = load_word(&states[1], 2);
    let mut d1 = load_word(&states[1], 3);
    for block in 0..blocks {
        let off = block * BLOCK;
        // SAFETY: `off + 64 <= blocks * 64 <= data[g][lane].len()` for every group and lane.
        let m0 = unsafe { load_block(&ptrs0, off) };
        // SAFETY: as above.
        let m1 = unsafe { load_block(&ptrs1, off) };
        let (aa0, bb0, cc0, dd0) = (a0, b0, c0, d0);
        let (aa1, bb1, cc1, dd1) = (a1, b1, c1, d1);
        md5_schedule!(simd_step2, (m0, m1), (a0, a1), (b0, b1), (c0, c1), (d0, d1));
        a0 = _mm256_add_epi32(a0, aa0);
        b0 = _mm256_add_epi32(b0, bb0);
        c0 = _mm256_add_epi32(c0, cc0);
        d0 = _mm256_add_epi32(d0, dd0);
        a1 = _mm256_add_epi32(a1, aa1);
        b1 = _mm256_add_epi32(b1, bb1);
        c1 = _mm256_add_epi32(c1, cc1);
        d1 = _mm256_add_epi32(d1, dd1);
    }
    store_word(&mut states[0], 0, a0);
    store_word(&mut states[0], 1, b0);
    store_word(&mut states[0], 2, c0);
    store_word(&mut states[0], 3, d0);
    store_word(&mut states[1], 0, a1);
    store_word(&mut states[1], 1, b1);
    store_word(&mut states[1], 2, c1);
    store_word(&mut states[1], 3, d1);
}
