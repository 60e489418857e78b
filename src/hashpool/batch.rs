//! One batch of the MD5 pool as one multi-buffer pass: how far each whole-file stream may
//! go beside the batch's chunk work (`pace_streams`), the pass itself, and what becomes of each
//! job: digests, a verified chunk written to its output (its range handed on for writeback),
//! a stream's new state, or the rest of a stream cut short, to ride in the next batch.

use super::stats::Cost;
use super::{Done, Flush, Job};
use crate::geometry::Geometry;
use crate::ids::Digest;
use crate::md5x::{self, Md5State};
use crate::storage::timed;
use md5::{Digest as _, Md5};
use memmap2::Mmap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The MD5 of one buffer (md-5's assembly: the fastest way to hash a lone buffer).
pub(super) fn md5(data: &[u8]) -> Digest {
    Md5::digest(data).into()
}

/// The bytes of chunks `from..to` of a mapped file (empty for an empty file).
fn chunk_range<'a>(map: &'a Option<Arc<Mmap>>, geo: &Geometry, from: u32, to: u32) -> &'a [u8] {
    match map {
        Some(m) => {
            let end = (geo.offset(to) as usize).min(m.len());
            &m[(geo.offset(from) as usize).min(end)..end]
        }
        None => &[],
    }
}

/// Runs a batch as one multi-buffer MD5 pass, then turns the states into results; also says
/// what the pass cost (`Cost`).
pub(super) fn run_batch(mut jobs: Vec<Job>, flush: &Flush) -> (Vec<Done>, Vec<Job>, Cost) {
    if let [Job::Verify { data, .. }] = jobs.as_slice() {
        let got = md5(data);
        // md-5's scalar pass: about the price of 8 lanes of its length (`md5x::take_slot_bytes`).
        let len = data.len() as u64;
        let done = jobs
            .into_iter()
            .filter_map(|j| finish_verify(j, got, flush))
            .collect();
        let spent = Cost {
            lanes: len,
            slots: len * md5x::LANES as u64,
        };
        return (done, Vec::new(), spent);
    }
    // Each stream's asked-for end, and whether to finish its MD5 there.
    let ends: Vec<Option<(u32, bool)>> = jobs
        .iter()
        .map(|j| match j {
            Job::Stream { to, finish, .. } => Some((*to, *finish)),
            _ => None,
        })
        .collect();
    let narrow = pace_streams(&mut jobs);
    let spent;
    let mut states: Vec<Md5State> = Vec::new();
    for j in jobs.iter_mut() {
        match j {
            Job::HashChunks { count, .. } => states.extend((0..*count).map(|_| Md5State::new())),
            Job::Verify { .. } => states.push(Md5State::new()),
            Job::Stream { ctx, .. } => states.push(std::mem::take(&mut **ctx)),
        }
    }
    {
        let mut slices: Vec<&[u8]> = Vec::with_capacity(states.len());
        for j in &jobs {
            match j {
                Job::HashChunks {
                    map,
                    geo,
                    first,
                    count,
                    ..
                } => {
                    for i in *first..*first + *count {
                        let off = geo.offset(i) as usize;
                        slices.push(&map[off..off + geo.chunk_len(i) as usize]);
                    }
                }
                Job::Verify { data, .. } => slices.push(data),
                Job::Stream {
                    map, geo, from, to, ..
                } => slices.push(chunk_range(map, geo, *from, *to)),
            }
        }
        let lanes: u64 = slices.iter().map(|s| s.len() as u64).sum();
        let mut items: Vec<(&mut Md5State, &[u8])> = states.iter_mut().zip(slices).collect();
        let _ = md5x::take_slot_bytes();
        if narrow {
            md5x::update_many_narrow(&mut items);
        } else {
            md5x::update_many(&mut items);
        }
        spent = Cost {
            lanes,
            slots: md5x::take_slot_bytes(),
        };
    }
    let mut states = states.into_iter();
    let mut out = Vec::with_capacity(jobs.len());
    let mut again = Vec::new();
    for (j, end) in jobs.into_iter().zip(ends) {
        if let (
            Job::Stream {
                file,
                map,
                geo,
                to,
                own,
                ..
            },
            Some((end, finish)),
        ) = (&j, end)
            && *to < end
        {
            let st = states.next().unwrap_or_default();
            again.push(Job::Stream {
                file: *file,
                map: map.clone(),
                geo: *geo,
                from: *to,
                to: end,
                ctx: Box::new(st),
                finish,
                own: *own,
            });
            continue;
        }
        match j {
            Job::HashChunks {
                file, first, count, ..
            } => {
                let digests = states
                    .by_ref()
                    .take(count as usize)
                    .map(Md5State::finalize)
                    .collect();
                out.push(Done::Hashed {
                    file,
                    first,
                    digests,
                });
            }
            Job::Verify { .. } => {
                let got = states.next().map(Md5State::finalize).unwrap_or_default();
                out.extend(finish_verify(j, got, flush));
            }
            Job::Stream {
                file, to, finish, ..
            } => {
                let st = states.next().unwrap_or_default();
                out.push(if finish {
                    Done::Streamed {
                        file,
                        upto: to,
                        ctx: None,
                        md5: Some(st.finalize()),
                    }
                } else {
                    Done::Streamed {
                        file,
                        upto: to,
                        ctx: Some(Box::new(st)),
                        md5: None,
                    }
                });
            }
        }
    }
    (out, again, spent)
}

/// Chunks a stream advances per batch at least, so that streams keep up with verification.
const STREAM_FLOOR: usize = 2;
/// Chunks an own file's stream advances per batch at least: every peer waits for that MD5 to
/// finish the file. (scripts/ab.sh, 6 alternating loaded rounds of the reference run: median
/// total 15.27 s at `STREAM_FLOOR`, 14.67 s at 4; at 8, 16.7, 14.3 and 14.9 s in 3. In these
/// runs the last own MD5 still came 1.0 to 1.4 s after the last chunk.)
const OWN_STREAM_FLOOR: u32 = 4;
/// Chunks a stream advances in a batch without chunk work (about 20 ms of one lane).
const STREAM_SOLO: u32 = 32;

/// Paces whole-file jobs to the batch's chunk work, and says whether to run the batch in one
/// group of 8 lanes (`md5x::update_many_narrow`).
///
/// A stream is serial: it advances one chunk per round, however many lanes run beside it, and
/// every chunk verified must later pass through its file's stream. With up to 7 streams, each
/// is cut to `k` chunks, the fewest rounds in which the batch's chunk work fills the 8 lanes
/// beside the streams (chunks + the streams' chunks <= 8 k), and the batch runs in 8 lanes, so
/// the chunk work is spread over all `k` rounds. With 4 or more streams they then keep pace
/// with the chunks verified; with fewer, or with chunks arriving one or two a batch (net-sym),
/// they do not: a stream advanced about 64 chunks/s against 160 arriving, and streams given
/// more did not end runs sooner (Readme section 7, where net-sym still loses). Cut to the
/// length of the chunk work in 16 lanes, as before, they advanced 3 chunks a batch against 30
/// verified, fell behind by thousands of chunks, and ran alone, 4 lanes of
/// 8, for the last 2.8 s of a 4 x 500 MiB run on loopback (a log line per batch: 1258 stream
/// chunks in 284 batches with chunk work, 6742 in 62 without).
///
/// Without chunk work, streams advance `STREAM_SOLO` chunks, so that work queued meanwhile
/// waits little. The rest of a shortened job goes to the front of the queue with its state
/// (`run_batch`), so it rides along in every batch until it is done instead of waiting behind
/// every chunk queued meanwhile: a node's own whole-file MD5, which every peer waits for at the
/// end, trailed the last chunk by about 4 s that way.
fn pace_streams(jobs: &mut [Job]) -> bool {
    let chunks: usize = jobs
        .iter()
        .filter(|j| !matches!(j, Job::Stream { .. }))
        .map(Job::weight)
        .sum();
    let lens: Vec<u32> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Stream { from, to, .. } => Some(to - from),
            _ => None,
        })
        .collect();
    if lens.is_empty() {
        return false;
    }
    // Narrow only where the streams would set the number of rounds in 16 lanes too (a stream's
    // last chunk beside a full batch takes no more rounds than the batch).
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    let wide_rounds = (chunks + lens.len()).div_ceil(2 * md5x::LANES);
    let narrow = lens.len() < md5x::LANES && longest > wide_rounds;
    let cap = if chunks == 0 {
        STREAM_SOLO
    } else if narrow {
        let fits = |k: u32| {
            let streamed: u64 = lens.iter().map(|&l| u64::from(l.min(k))).sum();
            chunks as u64 + streamed <= md5x::LANES as u64 * u64::from(k)
        };
        // Terminates: with fewer streams than lanes, each round adds a free lane at least.
        let mut k = 1;
        while !fits(k) {
            k += 1;
        }
        k
    } else {
        // 16 lanes (as many streams as lanes, or short ones): each stream as long as the
        // chunk work.
        let free = (2 * md5x::LANES).saturating_sub(lens.len()).max(1);
        chunks.div_ceil(free).max(STREAM_FLOOR) as u32
    };
    for j in jobs.iter_mut() {
        if let Job::Stream {
            from,
            to,
            finish,
            own,
            ..
        } = j
        {
            let cap = if *own { cap.max(OWN_STREAM_FLOOR) } else { cap };
            if *to - *from > cap {
                *to = *from + cap;
                *finish = false;
            }
        }
    }
    narrow
}

/// Compares a received chunk's MD5 with the expected one and, if they match, writes it and
/// hands the range to `flush` (`None` for any other kind of job).
fn finish_verify(j: Job, got: Digest, flush: &Flush) -> Option<Done> {
    let Job::Verify {
        peer,
        chunk,
        data,
        digest,
        out,
        offset,
        requested_at,
    } = j
    else {
        return None;
    };
    let ok = got == digest;
    let write_error = if ok {
        let r = timed("write", offset, || out.write_all_at(&data, offset));
        if r.is_ok() {
            flush(&out, offset, data.len());
        }
        r.err().map(|e| e.to_string())
    } else {
        None
    };
    Some(Done::Verified {
        peer,
        chunk,
        ok,
        data,
        requested_at,
        write_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashpool::tests::{CHUNK, mapped, verify};
    use crate::ids::FileId;

    #[test]
    fn a_stream_cut_short_comes_back_for_the_rest_with_its_state() {
        let (path, out, map) = mapped("cut", 100 * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let chunk = |i: u32| map[geo.offset(i) as usize..][..CHUNK as usize].to_vec();
        let stream = |from, to, ctx| Job::Stream {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from,
            to,
            ctx,
            finish: true,
            own: false,
        };
        let mut jobs = vec![stream(0, 100, Box::default())];
        jobs.extend((0..14).map(|i| verify(&out, i, chunk(i), md5(&chunk(i)))));
        let (done, again, _) = run_batch(jobs, &|_, _, _| {});
        // The verifications are done; they fill the 7 lanes beside the stream for 2 rounds, so
        // the stream advanced 2 chunks and comes back for the rest, not as a result.
        assert_eq!(done.len(), 14);
        assert!(
            done.iter()
                .all(|d| matches!(d, Done::Verified { ok: true, .. }))
        );
        let [Job::Stream { from, to, .. }] = again.as_slice() else {
            panic!("one stream comes back");
        };
        assert_eq!((*from, *to), (2, 100));
        // Alone, it runs STREAM_SOLO chunks a batch, and its MD5 is the whole file's at the end.
        let mut job = again.into_iter().next().expect("the stream");
        let md5_of_all = loop {
            let (mut done, again, _) = run_batch(vec![job], &|_, _, _| {});
            match again.into_iter().next() {
                Some(j) => job = j,
                None => match done.pop() {
                    Some(Done::Streamed {
                        upto: 100,
                        md5: Some(d),
                        ..
                    }) => break d,
                    _ => panic!("the stream ends with its MD5"),
                },
            }
        };
        assert_eq!(md5_of_all, md5(&map));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_batch_reports_the_bytes_it_hashed_and_the_lane_bytes_its_rounds_took() {
        let (path, out, map) = mapped("cost", 16 * CHUNK as usize);
        let chunk = |i: usize| map[i * CHUNK as usize..][..CHUNK as usize].to_vec();
        let len = u64::from(CHUNK);
        // A lone verification is md-5's scalar pass: counted as 8 lanes of its length.
        let (done, again, spent) = run_batch(
            vec![verify(&out, 0, chunk(0), md5(&chunk(0)))],
            &|_, _, _| {},
        );
        assert!(matches!(done.as_slice(), [Done::Verified { ok: true, .. }]) && again.is_empty());
        assert_eq!(
            spent,
            Cost {
                lanes: len,
                slots: 8 * len
            }
        );
        // Ten: one round of two interleaved groups (16 lanes), or ten scalar passes.
        let jobs = (0..10)
            .map(|i| verify(&out, i as u32, chunk(i), md5(&chunk(i))))
            .collect();
        let (done, _, spent) = run_batch(jobs, &|_, _, _| {});
        assert_eq!(done.len(), 10);
        let slots = if md5x::has_avx2() { 16 * len } else { 80 * len };
        assert_eq!(
            spent,
            Cost {
                lanes: 10 * len,
                slots
            }
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn streams_are_cut_to_the_rounds_their_chunk_work_fills_in_8_lanes() {
        let (path, out, map) = mapped("pace", 100 * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let stream = |from: u32, to: u32, own: bool| Job::Stream {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from,
            to,
            ctx: Box::default(),
            finish: true,
            own,
        };
        let spans = |jobs: &[Job]| -> Vec<u32> {
            jobs.iter()
                .filter_map(|j| match j {
                    Job::Stream { from, to, .. } => Some(to - from),
                    _ => None,
                })
                .collect()
        };
        let verifies = |n: u32| -> Vec<Job> {
            (0..n)
                .map(|i| verify(&out, i, vec![0; CHUNK as usize], [0; 16]))
                .collect()
        };
        // 30 verifications beside 4 long streams: 8 rounds of 4 + 4 lanes.
        let mut jobs = verifies(30);
        jobs.extend([
            stream(0, 100, true),
            stream(0, 50, false),
            stream(10, 60, false),
            stream(0, 90, false),
        ]);
        assert!(pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [8, 8, 8, 8]);
        // A short stream leaves its lane to the chunk work: 30 + 2 in 5 lanes of 8 over 7 rounds.
        let mut jobs = verifies(30);
        jobs.extend([
            stream(0, 2, false),
            stream(0, 100, false),
            stream(0, 100, false),
            stream(0, 100, false),
        ]);
        assert!(pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [2, 7, 7, 7]);
        // The own file's stream goes at least OWN_STREAM_FLOOR chunks beside a little work.
        let mut jobs = verifies(3);
        jobs.extend([stream(0, 100, true), stream(0, 100, false)]);
        assert!(pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [OWN_STREAM_FLOOR, 1]);
        // A stream's last chunk beside a full batch: 16 lanes, as the batch alone would run.
        let mut jobs = verifies(32);
        jobs.push(stream(0, 1, false));
        assert!(!pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [1]);
        // Streams alone: STREAM_SOLO each.
        let mut jobs = vec![stream(0, 100, false), stream(0, 20, false)];
        pace_streams(&mut jobs);
        assert_eq!(spans(&jobs), [STREAM_SOLO, 20]);
        // As many streams as lanes: 16 lanes, each as long as the chunk work (at least
        // STREAM_FLOOR).
        let mut jobs = verifies(16);
        jobs.extend((0..8).map(|_| stream(0, 100, false)));
        assert!(!pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [STREAM_FLOOR as u32; 8]);
        let _ = std::fs::remove_file(path);
    }
}
