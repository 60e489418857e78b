//! One batch of the MD5 pool as one multi-buffer pass: every chunk check of the batch is an
//! independent message in a lane (`md5x::link`: from the chain value before it), and an own
//! file's chain, which is serial, rides one chunk a round beside them (`rounds`). Then what
//! becomes of each job: a verified chunk written to its output (its range handed on for
//! writeback), chain values, or the rest of a chain cut short, to ride in the next batch.

use super::stats::Cost;
use super::{Done, Flush, Job};
use crate::geometry::Geometry;
use crate::ids::Digest;
use crate::md5x::{self, Md5State};
use crate::storage::timed;
use memmap2::Mmap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The bytes of chunk `i` of a mapped file (no more than the map holds).
fn chunk_of<'a>(map: &'a [u8], geo: &Geometry, i: u32) -> &'a [u8] {
    let end = (geo.offset(i + 1) as usize).min(map.len());
    &map[(geo.offset(i) as usize).min(end)..end]
}

/// Chunks a chain advances per batch at least: every peer waits for its values.
const CHAIN_FLOOR: u32 = 4;
/// Chunks a chain advances at most in a batch without chunk checks beside it (16 to 20 ms of
/// one lane at 256 KiB chunks), so that work queued meanwhile waits little (`rounds`).
const CHAIN_SOLO: u32 = 32;

/// An own file's chain within a batch.
struct ChainRun {
    map: Option<Arc<Mmap>>,
    geo: Geometry,
    from: u32,
    to: u32,
    /// Chunks it advances in this batch.
    cut: u32,
    state: Md5State,
    values: Vec<Digest>,
}

/// How many rounds the chains of a batch run: the fewest in which the `checks` fill the lanes
/// beside the chains, at least `CHAIN_FLOOR`. Without checks, `CHAIN_SOLO`, but no more than
/// the least advanced chain has done (`done`, at least `CHAIN_FLOOR`): at the start every peer
/// waits for a chain's first values before it can ask for any chunk of its file, so they go out
/// after 4 chunks (about 2 ms of a core), not 32, and the batches double up to `CHAIN_SOLO`.
fn rounds(checks: usize, chains: usize, done: u32) -> u32 {
    if checks == 0 {
        return done.clamp(CHAIN_FLOOR, CHAIN_SOLO);
    }
    let free = md5x::LANES.saturating_sub(chains).max(1);
    (checks.div_ceil(free) as u32).max(CHAIN_FLOOR)
}

/// Runs a batch as one multi-buffer pass, then turns the states into results; also says what
/// the pass cost (`Cost`).
pub(super) fn run_batch(mut jobs: Vec<Job>, flush: &Flush) -> (Vec<Done>, Vec<Job>, Cost) {
    let _ = md5x::take_slot_bytes();
    let mut chains: Vec<ChainRun> = Vec::new();
    for j in jobs.iter_mut() {
        if let Job::Chain {
            map,
            geo,
            from,
            to,
            ctx,
            ..
        } = j
        {
            chains.push(ChainRun {
                map: map.clone(),
                geo: *geo,
                from: *from,
                to: *to,
                cut: 0,
                state: std::mem::take(&mut **ctx),
                values: Vec::new(),
            });
        }
    }
    // One independent check per chunk of the other jobs, in job order: its state, its bytes,
    // whether it is its file's last chunk.
    let mut states: Vec<Md5State> = Vec::new();
    let mut datas: Vec<&[u8]> = Vec::new();
    let mut lasts: Vec<bool> = Vec::new();
    for j in &jobs {
        match j {
            Job::Check {
                map,
                geo,
                first,
                prevs,
                ..
            } => {
                for (k, prev) in prevs.iter().enumerate() {
                    let i = *first + k as u32;
                    states.push(Md5State::resume(prev.as_ref(), geo.offset(i)));
                    datas.push(chunk_of(map, geo, i));
                    lasts.push(i + 1 == geo.chunk_count());
                }
            }
            Job::Verify {
                data,
                prev,
                last,
                offset,
                ..
            } => {
                states.push(Md5State::resume(prev.as_ref(), *offset));
                datas.push(data);
                lasts.push(*last);
            }
            Job::Chain { .. } => {}
        }
    }
    let mut lanes: u64 = datas.iter().map(|d| d.len() as u64).sum();
    let done = chains.iter().map(|c| c.from).min().unwrap_or(0);
    let k = rounds(datas.len(), chains.len(), done);
    for c in chains.iter_mut() {
        c.cut = k.min(c.to.saturating_sub(c.from));
    }
    let longest = chains.iter().map(|c| c.cut).max().unwrap_or(0);
    let free = md5x::LANES.saturating_sub(chains.len()).max(1);
    let mut next = 0;
    for r in 0..longest {
        let mut items: Vec<(&mut Md5State, &[u8])> = Vec::with_capacity(md5x::LANES);
        for c in chains.iter_mut().filter(|c| r < c.cut) {
            let ChainRun {
                map,
                geo,
                from,
                state,
                ..
            } = c;
            let bytes = chunk_of(map.as_deref().map_or(&[], |m| &m[..]), geo, *from + r);
            lanes += bytes.len() as u64;
            items.push((state, bytes));
        }
        let end = (next + free).min(datas.len());
        items.extend(
            states[next..end]
                .iter_mut()
                .zip(datas[next..end].iter().copied()),
        );
        next = end;
        md5x::update_many_narrow(&mut items);
        for c in chains.iter_mut().filter(|c| r < c.cut) {
            let value = if c.from + r + 1 == c.geo.chunk_count() {
                c.state.clone().finalize()
            } else {
                c.state.chain_value()
            };
            c.values.push(value);
        }
    }
    if next < datas.len() {
        let mut items: Vec<(&mut Md5State, &[u8])> = states[next..]
            .iter_mut()
            .zip(datas[next..].iter().copied())
            .collect();
        md5x::update_many(&mut items);
    }
    drop(datas);
    let spent = Cost {
        lanes,
        slots: md5x::take_slot_bytes(),
    };
    let mut got = states
        .into_iter()
        .zip(lasts)
        .map(|(s, last)| if last { s.finalize() } else { s.chain_value() });
    let mut chains = chains.into_iter();
    let mut out = Vec::with_capacity(jobs.len());
    let mut again = Vec::new();
    for j in jobs {
        match j {
            Job::Check {
                file, first, prevs, ..
            } => {
                let values = got.by_ref().take(prevs.len()).collect();
                out.push(Done::Checked {
                    file,
                    first,
                    values,
                });
            }
            Job::Verify { .. } => {
                let d = got.next().unwrap_or_default();
                out.extend(finish_verify(j, d, flush));
            }
            Job::Chain { file, map, geo, .. } => {
                let Some(c) = chains.next() else { continue };
                if c.from + c.cut < c.to {
                    again.push(Job::Chain {
                        file,
                        map,
                        geo,
                        from: c.from + c.cut,
                        to: c.to,
                        ctx: Box::new(c.state),
                    });
                }
                if !c.values.is_empty() || c.from == c.to {
                    out.push(Done::Chained {
                        file,
                        first: c.from,
                        values: c.values,
                    });
                }
            }
        }
    }
    (out, again, spent)
}

/// Compares a received chunk's chain value with the expected one and, if they match, writes it
/// and hands the range to `flush` (`None` for any other kind of job).
fn finish_verify(j: Job, got: Digest, flush: &Flush) -> Option<Done> {
    let Job::Verify {
        peer,
        chunk,
        data,
        expect,
        out,
        offset,
        requested_at,
        ..
    } = j
    else {
        return None;
    };
    let ok = got == expect;
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
    fn a_chain_cut_short_comes_back_for_the_rest_with_its_state() {
        let (path, out, map) = mapped("cut", 100 * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let want = md5x::chain(&map, CHUNK as usize);
        let chunk = |i: u32| map[geo.offset(i) as usize..][..CHUNK as usize].to_vec();
        let mut jobs = vec![Job::Chain {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from: 0,
            to: 100,
            ctx: Box::default(),
        }];
        jobs.extend((0..14).map(|i| verify(&out, i, chunk(i), &want)));
        let (done, again, _) = run_batch(jobs, &|_, _, _| {});
        // The 14 checks fill the 7 lanes beside the chain for 2 rounds; the chain goes on to
        // CHAIN_FLOOR, reports those values and comes back for the rest.
        let verified = done
            .iter()
            .filter(|d| matches!(d, Done::Verified { ok: true, .. }))
            .count();
        assert_eq!(verified, 14);
        let mut values: Vec<Digest> = Vec::new();
        for d in &done {
            if let Done::Chained {
                first, values: v, ..
            } = d
            {
                assert_eq!(*first, 0);
                values.extend(v);
            }
        }
        assert_eq!(values.len(), CHAIN_FLOOR as usize);
        let [Job::Chain { from, to, .. }] = again.as_slice() else {
            panic!("one chain comes back");
        };
        assert_eq!((*from, *to), (CHAIN_FLOOR, 100));
        // Alone, it runs as many chunks a batch as it has done (4, 8, 16), then CHAIN_SOLO, and
        // the rest; its values are the file's chain, and the last one the file's MD5.
        let mut sizes = Vec::new();
        let mut job = again.into_iter().next();
        while let Some(j) = job.take() {
            let (done, again, _) = run_batch(vec![j], &|_, _, _| {});
            for d in done {
                if let Done::Chained {
                    first, values: v, ..
                } = d
                {
                    assert_eq!(first as usize, values.len());
                    sizes.push(v.len());
                    values.extend(v);
                }
            }
            job = again.into_iter().next();
        }
        assert_eq!(sizes, [4, 8, 16, 32, 32, 4]);
        assert_eq!(values, want);
        assert_eq!(values.last().copied(), Some(md5(&map)));
        let _ = std::fs::remove_file(path);
    }

    pub(crate) fn md5(data: &[u8]) -> Digest {
        use md5::Digest as _;
        md5::Md5::digest(data).into()
    }

    #[test]
    fn a_chunk_passes_only_from_the_chain_value_before_it_and_a_file_ends_in_its_md5() {
        let len = 5 * CHUNK as usize + 100;
        let (path, out, map) = mapped("link", len);
        let geo = Geometry::new(len as u64, CHUNK);
        let want = md5x::chain(&map, CHUNK as usize);
        let chunk = |i: u32| map[geo.offset(i) as usize..][..geo.chunk_len(i) as usize].to_vec();
        let mut jobs: Vec<Job> = (0..geo.chunk_count())
            .map(|i| verify(&out, i, chunk(i), &want))
            .collect();
        // Chunk 2's bytes where chunk 3 belongs; chunk 1 from the wrong chain value.
        jobs.push(verify(&out, 3, chunk(2), &want));
        if let Job::Verify { prev, .. } = &mut jobs[1] {
            *prev = Some(want[1]);
        }
        let (done, _, _) = run_batch(jobs, &|_, _, _| {});
        let oks: Vec<(u32, bool)> = done
            .iter()
            .map(|d| match d {
                Done::Verified { chunk, ok, .. } => (chunk.index, *ok),
                _ => panic!("only verifications"),
            })
            .collect();
        assert_eq!(
            oks,
            [
                (0, true),
                (1, false),
                (2, true),
                (3, true),
                (4, true),
                (5, true),
                (3, false)
            ]
        );
        assert_eq!(want.last().copied(), Some(md5(&map)));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_batch_reports_the_bytes_it_hashed_and_the_lane_bytes_its_rounds_took() {
        let (path, out, map) = mapped("cost", 16 * CHUNK as usize);
        let want = md5x::chain(&map, CHUNK as usize);
        let chunk = |i: usize| map[i * CHUNK as usize..][..CHUNK as usize].to_vec();
        let len = u64::from(CHUNK);
        // A lone verification is a scalar pass: counted as 8 lanes of its length.
        let (done, again, spent) = run_batch(vec![verify(&out, 0, chunk(0), &want)], &|_, _, _| {});
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
            .map(|i| verify(&out, i as u32, chunk(i), &want))
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
    fn chains_run_the_rounds_their_chunk_checks_fill_in_8_lanes() {
        // 30 checks beside one chain: 7 lanes free, 5 rounds.
        assert_eq!(rounds(30, 1, 0), 5);
        // 30 beside 4 chains: 4 lanes free, 8 rounds.
        assert_eq!(rounds(30, 4, 64), 8);
        // A few checks: the chain still goes CHAIN_FLOOR chunks.
        assert_eq!(rounds(3, 1, 64), CHAIN_FLOOR);
        // None: CHAIN_SOLO once under way; at the start, batches of 4, 4, 8, 16, then 32.
        assert_eq!(rounds(0, 1, 64), CHAIN_SOLO);
        let mut done = 0;
        let ramp: Vec<u32> = (0..6)
            .map(|_| {
                let k = rounds(0, 1, done);
                done += k;
                k
            })
            .collect();
        assert_eq!(ramp, [4, 4, 8, 16, 32, 32]);
        // As many chains as lanes: one check a round beside them.
        assert_eq!(rounds(16, 8, 0), 16);
    }
}
