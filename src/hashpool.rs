//! The MD5 helper pool: a few threads that compute an own file's chained chunk digests,
//! verify received chunks (and write the good ones to their output file, starting their
//! writeback on a thread of its own), and check the chunks of a `.part` an earlier run left, so
//! the reactor never hashes. Each result is sent back on a channel and the reactor is woken
//! through its mio `Waker`.
//!
//! All three kinds of work are MD5 over chunks (`md5x::link`: a chunk's chain value, from the
//! one before it), so a worker takes a mixed batch from one FIFO queue and runs it as one
//! multi-buffer pass (`batch`, through md5x). Checks of received chunks are independent of each
//! other and fill the lanes; an own file's chain is one serial stream, which rides in a lane
//! beside them, one chunk a round.

use crate::geometry::Geometry;
use crate::ids::{ChunkId, Digest, FileId, PeerId};
use crate::md5x::Md5State;
use crate::storage::Writeback;
use memmap2::Mmap;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod batch;
mod stats;
use batch::run_batch;
use stats::Stats;

pub enum Job {
    /// Chain values of chunks `first..first + prevs.len()` of a mapped file, chunk `first + k`
    /// started from `prevs[k]`, its owner's chain value of the chunk before it (`None` for
    /// chunk 0): a `.part` an earlier run of this node left, checked chunk by chunk.
    Check {
        file: FileId,
        map: Arc<Mmap>,
        geo: Geometry,
        first: u32,
        prevs: Vec<Option<Digest>>,
    },
    /// Check a received chunk: its chain value, started from `prev` (the chain value of the
    /// chunk before it; `None` for chunk 0), must be `expect` (for the file's `last` chunk, the
    /// file's MD5); if it is, write it at `offset`.
    Verify {
        peer: PeerId,
        chunk: ChunkId,
        data: Vec<u8>,
        prev: Option<Digest>,
        expect: Digest,
        last: bool,
        out: Arc<File>,
        offset: u64,
        requested_at: u64,
    },
    /// An own file's chain: chunks `from..to` fed into `ctx` one after another (`None` map: an
    /// empty file), each chunk's chain value reported in order (`Done::Chained`).
    Chain {
        file: FileId,
        map: Option<Arc<Mmap>>,
        geo: Geometry,
        from: u32,
        to: u32,
        ctx: Box<Md5State>,
    },
}

impl Job {
    /// Work in chunks, for sizing batches.
    fn weight(&self) -> usize {
        match self {
            Job::Check { prevs, .. } => prevs.len(),
            Job::Verify { .. } => 1,
            // A chain occupies one lane; its length hardly adds to the batch's time as long as
            // other lanes have work beside it.
            Job::Chain { .. } => 1,
        }
    }
}

pub enum Done {
    /// The chain values of chunks `first..` of a `.part` as found on disk (a `Job::Check`).
    Checked {
        file: FileId,
        first: u32,
        values: Vec<Digest>,
    },
    Verified {
        peer: PeerId,
        chunk: ChunkId,
        ok: bool,
        data: Vec<u8>,
        requested_at: u64,
        write_error: Option<String>,
    },
    /// The chain values of own-file chunks `first..`; the file's last one is its MD5.
    Chained {
        file: FileId,
        first: u32,
        values: Vec<Digest>,
    },
}

/// The first worker waits for this much work before it runs a smaller batch, up to
/// `GATHER_CHAIN` or `GATHER` after the oldest job queued: a lone 256 KiB verification costs a
/// whole scalar pass, eight of them one pass of the lanes.
const MIN_BATCH: usize = 8;
/// The wait while an own file's chain is queued: every peer waits for its values, and a batch
/// with a chain costs its chain's rounds anyway, in whose lanes the checks ride for free.
const GATHER_CHAIN: Duration = Duration::from_millis(2);
/// The wait for received chunks alone (8 of them arrive in about 17 ms at 1 Gbit/s). It adds
/// at most this to a chunk's time before it is held and served on. In net-sym the clients took
/// 7.64 s of CPU with 20 ms and 8.12 s with 10 ms against 8.19 s before (medians of 6
/// alternating runs; Readme.txt section 7).
const GATHER: Duration = Duration::from_millis(20);

/// Work a worker takes at once, in chunks: 8 MiB at 256 KiB chunks, four rounds of eight lanes.
const BATCH_CHUNKS: usize = 32;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// When the queue last turned from empty to not: no job waiting arrived before it.
    since: Option<Instant>,
}

/// What a worker does next (`Queue::next`).
enum Next {
    Take(Vec<Job>),
    /// Wait for a wake-up, or this long at most.
    Wait(Option<Duration>),
}

impl Queue {
    fn weight(&self) -> usize {
        self.jobs.iter().map(Job::weight).sum()
    }

    /// How long the first worker gathers jobs before it runs fewer than `MIN_BATCH`.
    fn gather(&self) -> Duration {
        if self.jobs.iter().any(|j| matches!(j, Job::Chain { .. })) {
            GATHER_CHAIN
        } else {
            GATHER
        }
    }

    /// How long the first worker may still wait at `now` before it runs what is queued.
    fn gather_left(&self, now: Instant) -> Duration {
        let waited = self
            .since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.gather().saturating_sub(waited)
    }

    fn push(&mut self, job: Job, now: Instant) {
        if self.jobs.is_empty() {
            self.since = Some(now);
        }
        self.jobs.push_back(job);
    }

    /// Puts the chains a batch cut short back at the front, in their order: they ride along in
    /// the next batch, not behind the queue.
    fn put_back(&mut self, jobs: Vec<Job>, now: Instant) {
        if self.jobs.is_empty() && !jobs.is_empty() {
            self.since = Some(now);
        }
        for j in jobs.into_iter().rev() {
            self.jobs.push_front(j);
        }
    }

    /// Queues `job` at `now`; says whether to wake the workers: when the queue was empty (the
    /// first worker starts its gathering), for a chain, and when the weight reaches
    /// `MIN_BATCH` (the first worker) or `BATCH_CHUNKS` (the others). Not for every chunk.
    fn add(&mut self, job: Job, now: Instant) -> bool {
        let before = self.weight();
        let chain = matches!(job, Job::Chain { .. });
        self.push(job, now);
        let after = self.weight();
        let crossed = |n: usize| before < n && after >= n;
        before == 0 || chain || crossed(MIN_BATCH) || crossed(BATCH_CHUNKS)
    }

    /// What worker `index` does at `now`: the first takes a batch once `MIN_BATCH` wait or
    /// its gathering is over, the others only a full batch (`BATCH_CHUNKS`).
    fn next(&mut self, index: usize, now: Instant) -> Next {
        let w = self.weight();
        let left = self.gather_left(now);
        let first = index == 0 && w > 0;
        if (first && (left.is_zero() || w >= MIN_BATCH)) || w >= BATCH_CHUNKS {
            return Next::Take(self.pop());
        }
        Next::Wait(first.then_some(left))
    }

    /// The next batch, up to the batch size (always at least one job): received chunks and own
    /// files' chains first, in FIFO order, then the checks of a resumed `.part`. A received
    /// chunk waits for its check before it counts, is written or is served, and every peer
    /// waits for an own file's chain values before it may ask for its chunks.
    fn pop(&mut self) -> Vec<Job> {
        let mut out = Vec::new();
        let mut w = 0;
        for own in [false, true] {
            let mut i = 0;
            while i < self.jobs.len() {
                let j = &self.jobs[i];
                if matches!(j, Job::Check { .. }) != own {
                    i += 1;
                    continue;
                }
                if !out.is_empty() && w + j.weight() > BATCH_CHUNKS {
                    // What is left keeps `since`: it waited that long already.
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

    /// Queues `job`, and wakes the workers only when it matters (`Queue::add`).
    pub fn submit(&self, job: Job) {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        if q.add(job, Instant::now()) {
            cv.notify_all();
        }
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
    let mut stats = Stats::new(index);
    loop {
        let jobs = {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.closed {
                    return;
                }
                q = match q.next(index, Instant::now()) {
                    Next::Take(jobs) if !jobs.is_empty() => break jobs,
                    Next::Take(_) => cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                    Next::Wait(Some(left)) => {
                        cv.wait_timeout(q, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    Next::Wait(None) => cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                };
            }
        };
        let counted = stats
            .as_ref()
            .map(|_| (Stats::start(), verifies(&jobs), chained(&jobs)));
        let (done, again, cost) = run_batch(jobs, flush);
        if let (Some(st), Some((started, verified, asked))) = (stats.as_mut(), counted) {
            st.batch(started, verified, asked - chained(&again), cost);
        }
        if !again.is_empty() {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            q.put_back(again, Instant::now());
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

/// Received chunks a batch verifies.
fn verifies(jobs: &[Job]) -> u32 {
    jobs.iter()
        .filter(|j| matches!(j, Job::Verify { .. }))
        .count() as u32
}

/// Own-file chunks the chains among `jobs` ask for.
fn chained(jobs: &[Job]) -> u32 {
    jobs.iter()
        .map(|j| match j {
            Job::Chain { from, to, .. } => to - from,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md5x;
    use std::io::Write;

    pub(super) const CHUNK: u32 = 1024;

    /// A file of `len` bytes (byte i = i mod 251) in the temp directory, mapped; the file is
    /// removed when the map and file are dropped by the caller's end of the test.
    pub(super) fn mapped(tag: &str, len: usize) -> (std::path::PathBuf, Arc<File>, Arc<Mmap>) {
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

    /// The check of chunk `index` (of `CHUNK` bytes but the file's last) with `data`, against
    /// the chain `chain` of the file.
    pub(super) fn verify(out: &Arc<File>, index: u32, data: Vec<u8>, chain: &[Digest]) -> Job {
        Job::Verify {
            peer: PeerId(1),
            chunk: ChunkId {
                file: FileId(0),
                index,
            },
            data,
            prev: index.checked_sub(1).map(|k| chain[k as usize]),
            expect: chain[index as usize],
            last: index as usize + 1 == chain.len(),
            out: Arc::clone(out),
            offset: u64::from(index * CHUNK),
            requested_at: 0,
        }
    }

    /// A mapped file of `chunks` chunks, its geometry and its chain (for queue tests).
    #[allow(clippy::type_complexity)]
    fn queue_file(
        tag: &str,
        chunks: usize,
    ) -> (
        std::path::PathBuf,
        Arc<File>,
        Arc<Mmap>,
        Geometry,
        Vec<Digest>,
    ) {
        let (path, out, map) = mapped(tag, chunks * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let chain = md5x::chain(&map, CHUNK as usize);
        (path, out, map, geo, chain)
    }

    /// The chain job of chunks `0..to` of `map`.
    fn own_chain(map: &Arc<Mmap>, geo: Geometry, to: u32) -> Job {
        Job::Chain {
            file: FileId(0),
            map: Some(Arc::clone(map)),
            geo,
            from: 0,
            to,
            ctx: Box::default(),
        }
    }

    #[test]
    fn received_chunks_gather_from_the_oldest_and_a_chain_cuts_the_wait_short() {
        let (path, out, map, geo, chain) = queue_file("gather", 8);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Queue::default();
        q.push(verify(&out, 0, vec![0; 4], &chain), t0);
        // A later chunk does not restart the wait: it counts from the oldest.
        q.push(verify(&out, 1, vec![0; 4], &chain), ms(4));
        assert_eq!(q.gather_left(ms(4)), GATHER - Duration::from_millis(4));
        assert_eq!(q.gather_left(t0 + GATHER), Duration::ZERO);
        q.push(own_chain(&map, geo, 8), ms(5));
        assert_eq!(
            q.gather_left(ms(1)),
            GATHER_CHAIN - Duration::from_millis(1)
        );
        assert_eq!(q.gather_left(ms(5)), Duration::ZERO);
        // Emptied and filled again: the wait starts at the new oldest job.
        assert_eq!(q.pop().len(), 3);
        q.push(verify(&out, 2, vec![0; 4], &chain), ms(50));
        assert_eq!(q.gather_left(ms(52)), GATHER - Duration::from_millis(2));
        let _ = std::fs::remove_file(path);
    }

    fn taken(n: Next) -> Option<usize> {
        match n {
            Next::Take(jobs) => Some(jobs.len()),
            Next::Wait(_) => None,
        }
    }

    #[test]
    fn workers_are_woken_for_a_new_gathering_a_chain_and_a_batch_not_for_every_chunk() {
        let (path, out, map, geo, chain) = queue_file("wake", 64);
        let t0 = Instant::now();
        let mut q = Queue::default();
        let wakes: Vec<bool> = (0..33)
            .map(|i| q.add(verify(&out, i, vec![0; 4], &chain), t0))
            .collect();
        // The jobs (counted from 1) whose arrival woke the workers.
        let woke: Vec<usize> = (1..=wakes.len()).filter(|n| wakes[n - 1]).collect();
        assert_eq!(woke, [1, MIN_BATCH, BATCH_CHUNKS]);
        let mut q = Queue::default();
        assert!(q.add(verify(&out, 0, vec![0; 4], &chain), t0));
        assert!(!q.add(verify(&out, 1, vec![0; 4], &chain), t0));
        assert!(q.add(own_chain(&map, geo, 8), t0));
        // A resume check that jumps over a threshold wakes too.
        let check = Job::Check {
            file: FileId(0),
            map: Arc::clone(&map),
            geo,
            first: 0,
            prevs: vec![None; 8],
        };
        assert!(q.add(check, t0));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_first_worker_takes_a_batch_when_its_gathering_ends_and_the_others_only_a_full_one() {
        let (path, out, _map, _, chain) = queue_file("next", 64);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Queue::default();
        assert!(matches!(q.next(0, t0), Next::Wait(None)));
        q.add(verify(&out, 0, vec![0; 4], &chain), t0);
        let left = |n: Next| match n {
            Next::Wait(d) => d,
            Next::Take(_) => panic!("took a batch"),
        };
        assert_eq!(left(q.next(0, ms(19))), Some(Duration::from_millis(1)));
        assert_eq!(left(q.next(1, ms(19))), None);
        assert_eq!(taken(q.next(0, t0 + GATHER)), Some(1));
        // 7 wait, the 8th makes a batch at once.
        for i in 1..MIN_BATCH as u32 {
            q.add(verify(&out, i, vec![0; 4], &chain), ms(30));
        }
        assert!(matches!(q.next(0, ms(31)), Next::Wait(Some(_))));
        q.add(verify(&out, 8, vec![0; 4], &chain), ms(31));
        assert_eq!(taken(q.next(0, ms(31))), Some(MIN_BATCH));
        // A helper takes only a full batch; what is left keeps the wait it already had.
        for i in 0..BATCH_CHUNKS as u32 + 3 {
            q.add(verify(&out, i, vec![0; 4], &chain), ms(40));
        }
        assert_eq!(taken(q.next(1, ms(41))), Some(BATCH_CHUNKS));
        assert_eq!(left(q.next(1, ms(41))), None);
        assert_eq!(taken(q.next(0, ms(40) + GATHER)), Some(3));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn received_chunks_and_chains_go_before_resume_checks() {
        let (path, out, map) = mapped("order", 64 * CHUNK as usize);
        let geo = Geometry::new(map.len() as u64, CHUNK);
        let chain = md5x::chain(&map, CHUNK as usize);
        let check = |first| Job::Check {
            file: FileId(0),
            map: Arc::clone(&map),
            geo,
            first,
            prevs: vec![None; 8],
        };
        let mut q = Queue::default();
        q.jobs.push_back(check(0));
        q.jobs.push_back(verify(&out, 1, vec![0; 4], &chain));
        q.jobs.push_back(check(8));
        q.jobs.push_back(Job::Chain {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from: 0,
            to: 4,
            ctx: Box::default(),
        });
        q.jobs.push_back(verify(&out, 2, vec![0; 4], &chain));
        for first in [16, 24, 32] {
            q.jobs.push_back(check(first));
        }
        let kinds = |jobs: &[Job]| -> Vec<String> {
            jobs.iter()
                .map(|j| match j {
                    Job::Check { first, .. } => format!("check{first}"),
                    Job::Verify { chunk, .. } => format!("verify{}", chunk.index),
                    Job::Chain { .. } => "chain".into(),
                })
                .collect()
        };
        // 3 chunks of received and chain work, then resume checks up to 32 chunks in all.
        assert_eq!(
            kinds(&q.pop()),
            ["verify1", "chain", "verify2", "check0", "check8", "check16"]
        );
        assert_eq!(kinds(&q.pop()), ["check24", "check32"]);
        assert!(q.pop().is_empty());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_pool_chains_verifies_writes_and_checks() {
        let len = 20 * CHUNK as usize + 77;
        let (path, _, map) = mapped("src", len);
        let (out_path, out, _) = mapped("out", len);
        // The output starts as zeros.
        out.set_len(0).expect("truncate");
        out.set_len(len as u64).expect("size");
        let geo = Geometry::new(len as u64, CHUNK);
        let want = md5x::chain(&map, CHUNK as usize);
        let chunk = |i: u32| map[geo.offset(i) as usize..][..geo.chunk_len(i) as usize].to_vec();
        let wake: Wake = Arc::new(|| {});
        let pool = HashPool::new(
            2,
            wake,
            crate::storage::writeback_thread(true).expect("writeback"),
        )
        .expect("pool");
        pool.submit(Job::Chain {
            file: FileId(0),
            map: Some(Arc::clone(&map)),
            geo,
            from: 0,
            to: geo.chunk_count(),
            ctx: Box::default(),
        });
        pool.submit(Job::Check {
            file: FileId(0),
            map: Arc::clone(&map),
            geo,
            first: 18,
            prevs: vec![Some(want[17]), Some(want[18]), None],
        });
        pool.submit(verify(&out, 3, chunk(3), &want));
        pool.submit(verify(&out, 4, chunk(5), &want));
        let (mut chained, mut checked, mut verified) = (Vec::new(), None, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while chained.len() < want.len() || checked.is_none() || verified.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool did not finish"
            );
            match pool
                .results
                .recv_timeout(std::time::Duration::from_secs(20))
            {
                Ok(Done::Chained { first, values, .. }) => {
                    assert_eq!(first as usize, chained.len(), "chain values in order");
                    chained.extend(values);
                }
                Ok(Done::Checked { first, values, .. }) => checked = Some((first, values)),
                Ok(Done::Verified { chunk, ok, .. }) => verified.push((chunk.index, ok)),
                Err(e) => panic!("no result: {e}"),
            }
        }
        assert_eq!(chained, want);
        // The last chunk checked from a wrong value (None) does not give the file's MD5.
        let (first, values) = checked.expect("checked");
        assert_eq!(first, 18);
        assert_eq!(values[..2], want[18..20]);
        assert_ne!(values[2], want[20]);
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
