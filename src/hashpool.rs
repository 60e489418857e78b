//! The MD5 helper pool: a few threads that hash own-file chunks, verify received chunks (and
//! write the good ones to their output file, starting their writeback on a thread of its own),
//! and advance whole-file MD5s, so the reactor never hashes. Each result is sent back on a
//! channel and the reactor is woken through its mio `Waker`.
//!
//! All three kinds of work are MD5 over some bytes, so a worker takes a mixed batch from one
//! FIFO queue and runs it as one multi-buffer pass (`md5x::update_many`): chunk digests start
//! from a fresh state, whole-file MD5s continue from their saved state, and all of them share
//! the eight lanes. A whole-file MD5 is inherently one sequential stream; riding in a lane
//! beside chunk work is what makes it nearly free, instead of a scalar pass at the end.

use crate::geometry::Geometry;
use crate::ids::{ChunkId, Digest, FileId, PeerId};
use crate::md5x::{self, Md5State};
use crate::storage::Writeback;
use md5::{Digest as _, Md5};
use memmap2::Mmap;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

pub enum Job {
    /// Digests of chunks `first..first+count` of a mapped file.
    HashChunks {
        file: FileId,
        map: Arc<Mmap>,
        geo: Geometry,
        first: u32,
        count: u32,
    },
    /// Check a received chunk against its digest and, if it matches, write it at `offset`.
    Verify {
        peer: PeerId,
        chunk: ChunkId,
        data: Vec<u8>,
        digest: Digest,
        out: Arc<File>,
        offset: u64,
        requested_at: u64,
    },
    /// Feed chunks `from..to` of a mapped file into `ctx`; finish it if `finish`.
    Stream {
        file: FileId,
        map: Option<Arc<Mmap>>,
        geo: Geometry,
        from: u32,
        to: u32,
        ctx: Box<Md5State>,
        finish: bool,
        /// A node's own file, whose MD5 every peer waits for (see `OWN_STREAM_FLOOR`).
        own: bool,
    },
}

impl Job {
    /// Work in chunks, for sizing batches.
    fn weight(&self) -> usize {
        match self {
            Job::HashChunks { count, .. } => *count as usize,
            Job::Verify { .. } => 1,
            // A stream occupies one lane; its length hardly adds to the batch's time as long as
            // other lanes have work beside it.
            Job::Stream { .. } => 1,
        }
    }
}

pub enum Done {
    Hashed {
        file: FileId,
        first: u32,
        digests: Vec<Digest>,
    },
    Verified {
        peer: PeerId,
        chunk: ChunkId,
        ok: bool,
        data: Vec<u8>,
        requested_at: u64,
        write_error: Option<String>,
    },
    Streamed {
        file: FileId,
        upto: u32,
        ctx: Option<Box<Md5State>>,
        md5: Option<Digest>,
    },
}

/// The first worker waits up to `GATHER` for this much work before it runs a smaller batch: a
/// lone 256 KiB verification costs a whole scalar pass, eight of them one pass of the lanes.
const MIN_BATCH: usize = 8;
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// Work a worker takes at once, in chunks: 8 MiB at 256 KiB chunks, four rounds of eight lanes.
const BATCH_CHUNKS: usize = 32;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    fn weight(&self) -> usize {
        self.jobs.iter().map(Job::weight).sum()
    }

    /// The next batch, up to the batch size (always at least one job): received chunks and
    /// whole-file streams first, in FIFO order, then the node's own chunk digests. A received
    /// chunk waits for its check before it counts, is written or is served; behind a node's
    /// whole own file (seconds of hashing at start) nothing it received would count, and its
    /// downloads would stall at the in-flight cap while its disk sat idle.
    fn pop(&mut self) -> Vec<Job> {
        let mut out = Vec::new();
        let mut w = 0;
        for own in [false, true] {
            let mut i = 0;
            while i < self.jobs.len() {
                let j = &self.jobs[i];
                if matches!(j, Job::HashChunks { .. }) != own {
                    i += 1;
                    continue;
                }
                if !out.is_empty() && w + j.weight() > BATCH_CHUNKS {
                    return out;
                }
                w += j.weight();
                out.extend(self.jobs.remove(i));
            }
        }
        out
    }
}

pub struct HashPool {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    results: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

/// How a worker tells the reactor that a result is waiting.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

impl HashPool {
    /// `written` takes each range written (a `Writeback::Written`), to start its writeback.
    pub fn new(threads: usize, wake: Wake, written: Sender<Writeback>) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let (tx, results) = channel();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let tx: Sender<Done> = tx.clone();
            let wake = Arc::clone(&wake);
            let written = written.clone();
            let flush = move |out: &Arc<File>, offset, len| {
                let _ = written.send(Writeback::Written(Arc::clone(out), offset, len));
            };
            let h = std::thread::Builder::new()
                .name(format!("md5-{i}"))
                .spawn(move || worker(i, &shared, &tx, &wake, &flush))?;
            handles.push(h);
        }
        Ok(HashPool {
            shared,
            results,
            threads: handles,
        })
    }

    pub fn submit(&self, job: Job) {
        let (m, cv) = &*self.shared;
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .jobs
            .push_back(job);
        cv.notify_all();
    }

    /// A finished job, if any.
    pub fn try_recv(&self) -> Option<Done> {
        self.results.try_recv().ok()
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        cv.notify_all();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Where a worker hands each written range, to start its writeback elsewhere.
type Flush = dyn Fn(&Arc<File>, u64, usize);

/// Worker `index` > 0 takes work only when a full batch is waiting: helpers split a trickle of
/// chunks into batches too small to fill the lanes, and on a machine shared by several nodes
/// the extra threads only contend; under a real backlog (a node's own file at start, a fast
/// network) they add a core.
fn worker(
    index: usize,
    shared: &(Mutex<Queue>, Condvar),
    tx: &Sender<Done>,
    wake: &Wake,
    flush: &Flush,
) {
    let (m, cv) = shared;
    loop {
        let jobs = {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            let mut waited = false;
            loop {
                if q.closed {
                    return;
                }
                let w = q.weight();
                if (index == 0 && (waited || w >= MIN_BATCH)) || w >= BATCH_CHUNKS {
                    let jobs = q.pop();
                    if !jobs.is_empty() {
                        break jobs;
                    }
                }
                if index == 0 && w > 0 {
                    let (g, t) = cv
                        .wait_timeout(q, GATHER)
                        .unwrap_or_else(|e| e.into_inner());
                    q = g;
                    waited = t.timed_out();
                } else {
                    q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            }
        };
        let (done, again) = run_batch(jobs, flush);
        if !again.is_empty() {
            // Streams cut short ride along in the next batch, not behind the queue.
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            for j in again.into_iter().rev() {
                q.jobs.push_front(j);
            }
            cv.notify_all();
        }
        for d in done {
            if tx.send(d).is_err() {
                return;
            }
        }
        wake();
    }
}

/// The MD5 of one buffer (md-5's assembly: the fastest way to hash a lone buffer).
pub fn md5(data: &[u8]) -> Digest {
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

/// Runs a batch as one multi-buffer MD5 pass, then turns the states into results.
fn run_batch(mut jobs: Vec<Job>, flush: &Flush) -> (Vec<Done>, Vec<Job>) {
    if let [Job::Verify { data, .. }] = jobs.as_slice() {
        let got = md5(data);
        let done = jobs
            .into_iter()
            .filter_map(|j| finish_verify(j, got, flush))
            .collect();
        return (done, Vec::new());
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
        let mut items: Vec<(&mut Md5State, &[u8])> = states.iter_mut().zip(slices).collect();
        if narrow {
            md5x::update_many_narrow(&mut items);
        } else {
            md5x::update_many(&mut items);
        }
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
    (out, again)
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
/// the chunk work is spread over all `k` rounds. The streams then keep pace with the chunks
/// verified. Cut to the length of the chunk work in 16 lanes, as before, they advanced 3 chunks
/// a batch against 30 verified, fell behind by thousands of chunks, and ran alone, 4 lanes of
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
        let r = out.write_all_at(&data, offset);
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
    use std::io::Write;

    const CHUNK: u32 = 1024;

    /// A file of `len` bytes (byte i = i mod 251) in the temp directory, mapped; the file is
    /// removed when the map and file are dropped by the caller's end of the test.
    fn mapped(tag: &str, len: usize) -> (std::path::PathBuf, Arc<File>, Arc<Mmap>) {
        let path =
            std::env::temp_dir().join(format!("p2pshare-hashpool-{}-{tag}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        // SAFETY: the file is this test's own and is not truncated while mapped.
        let map = unsafe { Mmap::map(&f) }.expect("map");
        (path, Arc::new(f), Arc::new(map))
    }

    fn verify(out: &Arc<File>, index: u32, data: Vec<u8>, digest: Digest) -> Job {
        Job::Verify {
            peer: PeerId(1),
            chunk: ChunkId {
                file: FileId(0),
                index,
            },
            data,
            digest,
            out: Arc::clone(out),
            offset: u64::from(index * CHUNK),
            requested_at: 0,
        }
    }

    #[test]
    fn received_chunks_and_streams_go_before_own_digests() {
        let (path, out, map) = mapped("order", 64 * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let hash = |first| Job::HashChunks {
            file: FileId(0),
            map: Arc::clone(&map),
            geo,
            first,
            count: 8,
        };
        let mut q = Queue::default();
        q.jobs.push_back(hash(0));
        q.jobs.push_back(verify(&out, 1, vec![0; 4], [0; 16]));
        q.jobs.push_back(hash(8));
        q.jobs.push_back(Job::Stream {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from: 0,
            to: 4,
            ctx: Box::default(),
            finish: false,
            own: false,
        });
        q.jobs.push_back(verify(&out, 2, vec![0; 4], [0; 16]));
        for first in [16, 24, 32] {
            q.jobs.push_back(hash(first));
        }
        let kinds = |jobs: &[Job]| -> Vec<String> {
            jobs.iter()
                .map(|j| match j {
                    Job::HashChunks { first, .. } => format!("hash{first}"),
                    Job::Verify { chunk, .. } => format!("verify{}", chunk.index),
                    Job::Stream { .. } => "stream".into(),
                })
                .collect()
        };
        // 3 chunks of received and stream work, then own digests up to 32 chunks in all.
        assert_eq!(
            kinds(&q.pop()),
            ["verify1", "stream", "verify2", "hash0", "hash8", "hash16"]
        );
        assert_eq!(kinds(&q.pop()), ["hash24", "hash32"]);
        assert!(q.pop().is_empty());
        let _ = std::fs::remove_file(path);
    }

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
        let (done, again) = run_batch(jobs, &|_, _, _| {});
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
            let (mut done, again) = run_batch(vec![job], &|_, _, _| {});
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
        ]);
        jobs.push(stream(0, 90, false));
        assert!(pace_streams(&mut jobs));
        assert_eq!(spans(&jobs), [8, 8, 8, 8]);
        // A short stream leaves its lane to the chunk work: 30 + 2 in 5 lanes of 8 over 7 rounds.
        let mut jobs = verifies(30);
        jobs.extend([
            stream(0, 2, false),
            stream(0, 100, false),
            stream(0, 100, false),
        ]);
        jobs.push(stream(0, 100, false));
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

    #[test]
    fn the_pool_hashes_verifies_writes_and_streams() {
        let len = 20 * CHUNK as usize + 77;
        let (path, _, map) = mapped("src", len);
        let (out_path, out, _) = mapped("out", len);
        // The output starts as zeros.
        out.set_len(0).expect("truncate");
        out.set_len(len as u64).expect("size");
        let geo = Geometry::new(len as u64, CHUNK);
        let chunk = |i: u32| map[geo.offset(i) as usize..][..geo.chunk_len(i) as usize].to_vec();
        let wake: Wake = Arc::new(|| {});
        let pool = HashPool::new(
            2,
            wake,
            crate::storage::writeback_thread().expect("writeback"),
        )
        .expect("pool");
        pool.submit(Job::HashChunks {
            file: FileId(0),
            map: Arc::clone(&map),
            geo,
            first: 0,
            count: geo.chunk_count(),
        });
        pool.submit(Job::Stream {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from: 0,
            to: geo.chunk_count(),
            ctx: Box::default(),
            finish: true,
            own: true,
        });
        pool.submit(verify(&out, 3, chunk(3), md5(&chunk(3))));
        pool.submit(verify(&out, 4, chunk(4), md5(&chunk(5))));
        let (mut hashed, mut streamed, mut verified) = (None, None, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while hashed.is_none() || streamed.is_none() || verified.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool did not finish"
            );
            match pool
                .results
                .recv_timeout(std::time::Duration::from_secs(20))
            {
                Ok(Done::Hashed { digests, .. }) => hashed = Some(digests),
                Ok(Done::Streamed { md5: Some(d), .. }) => streamed = Some(d),
                // Shortened beside the chunk work: ask for the rest, as the client does.
                Ok(Done::Streamed {
                    upto,
                    ctx: Some(ctx),
                    ..
                }) => pool.submit(Job::Stream {
                    file: FileId(0),
                    map: Some(Arc::clone(&map)),
                    geo,
                    from: upto,
                    to: geo.chunk_count(),
                    ctx,
                    finish: true,
                    own: true,
                }),
                Ok(Done::Streamed { .. }) => panic!("a stream ended without its state"),
                Ok(Done::Verified { chunk, ok, .. }) => verified.push((chunk.index, ok)),
                Err(e) => panic!("no result: {e}"),
            }
        }
        let want: Vec<Digest> = (0..geo.chunk_count()).map(|i| md5(&chunk(i))).collect();
        assert_eq!(hashed, Some(want));
        assert_eq!(streamed, Some(md5(&map)));
        verified.sort_unstable();
        assert_eq!(verified, [(3, true), (4, false)]);
        // The good chunk was written at its offset, the bad one not at all.
        let written = std::fs::read(&out_path).expect("read output");
        assert_eq!(
            written[geo.offset(3) as usize..][..CHUNK as usize],
            chunk(3)[..]
        );
        assert!(
            written[geo.offset(4) as usize..][..CHUNK as usize]
                .iter()
                .all(|&b| b == 0)
        );
        drop(pool);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(out_path);
    }
}
