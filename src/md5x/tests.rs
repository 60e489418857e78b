//! md5x against the md-5 crate on every path (scalar, 8 and 16 lanes, ragged lengths, streams
//! split anywhere), and the throughput benchmark (`cargo test --release --lib md5x -- --ignored
//! --nocapture`).
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

#[test]
fn the_slot_count_is_the_rounds_times_their_lanes() {
    let data = vec![7u8; 2 * BLOCK];
    let mut states: Vec<Md5State> = (0..10).map(|_| Md5State::new()).collect();
    let mut items: Vec<(&mut Md5State, &[u8])> =
        states.iter_mut().map(|s| (s, data.as_slice())).collect();
    let _ = take_slot_bytes();
    update_many_narrow(&mut items);
    let expect = if has_avx2() {
        // 8 jobs in one group for 2 blocks, then the other 2 in another round of 8 lanes.
        2 * (2 * BLOCK * LANES)
    } else {
        10 * 2 * BLOCK * LANES
    };
    assert_eq!(take_slot_bytes(), expect as u64);
    assert_eq!(take_slot_bytes(), 0, "taken");
}

/// The last chain value is the file's MD5; each chunk checks on its own, in any order, from the
/// value before it, in lanes too; a changed byte changes its chunk's value and no other.
#[test]
fn chained_chunk_digests_check_each_chunk_and_end_in_the_files_md5() {
    for (len, chunk) in [
        (10 * 1024 + 17, 1024),
        (8 * 1024, 1024),
        (1000, 1024),
        (64, 64),
    ] {
        let data = fill(len as u64, len);
        let values = chain(&data, chunk);
        assert_eq!(values.len(), len.div_ceil(chunk), "len {len}");
        assert_eq!(values.last().copied(), Some(oracle(&data)), "len {len}");
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        // Backwards, each from the value before it.
        for (i, piece) in pieces.iter().enumerate().rev() {
            let prev = i.checked_sub(1).map(|k| &values[k]);
            let last = i + 1 == pieces.len();
            assert_eq!(
                link(prev, (i * chunk) as u64, piece, last),
                values[i],
                "chunk {i}"
            );
        }
        // All at once, in lanes.
        let mut states: Vec<Md5State> = (0..pieces.len())
            .map(|i| Md5State::resume(i.checked_sub(1).map(|k| &values[k]), (i * chunk) as u64))
            .collect();
        let mut items: Vec<(&mut Md5State, &[u8])> =
            states.iter_mut().zip(pieces.iter().copied()).collect();
        update_many(&mut items);
        for (i, s) in states.into_iter().enumerate() {
            let got = if i + 1 == pieces.len() {
                s.finalize()
            } else {
                s.chain_value()
            };
            assert_eq!(got, values[i], "lane {i}");
        }
    }
    let mut bad = fill(5, 4096);
    let good = chain(&bad, 1024);
    bad[2048 + 100] ^= 1;
    let after = chain(&bad, 1024);
    assert_eq!(good[..2], after[..2]);
    assert_ne!(link(Some(&good[1]), 2048, &bad[2048..3072], false), good[2]);
    assert!(chain(&[], 1024).is_empty());
}
