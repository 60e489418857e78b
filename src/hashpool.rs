//! The MD5 helper pool: a few threads that hash own-file chunks, verify received chunks (and
//! write the good ones to their output file, starting their writeback on a thread of its own),
//! and advance whole-file MD5s, so the reactor never hashes. Each result is sent back on a
//! channel and the reactor is woken through its mio `Waker`.
//!
//! All three kinds of work are MD5 over some bytes, so a worker takes a mixed batch from one
//! FIFO queue and runs it as one multi-buffer pass (`batch`, through md5x): chunk digests start
//! from a fresh state, whole-file MD5s continue from their saved state, and all of them share
//! the lanes. A whole-file MD5 is inherently one sequential stream; riding in a lane
//! beside chunk work is what makes it nearly free, instead of a scalar pass at the end.

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

mod batch;
mod stats;
use batch::run_batch;
use stats::Stats;

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
    let mut stats = Stats::new(index);
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
        let counted = stats
            .as_ref()
            .map(|_| (Stats::start(), verifies(&jobs), streams(&jobs)));
        let (done, again, cost) = run_batch(jobs, flush);
        if let (Some(st), Some((started, verified, asked))) = (stats.as_mut(), counted) {
            st.batch(started, verified, asked - streams(&again), cost);
        }
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

/// Received chunks a batch verifies.
fn verifies(jobs: &[Job]) -> u32 {
    jobs.iter()
        .filter(|j| matches!(j, Job::Verify { .. }))
        .count() as u32
}

/// Whole-file chunks the streams among `jobs` ask for.
fn streams(jobs: &[Job]) -> u32 {
    jobs.iter()
        .map(|j| match j {
            Job::Stream { from, to, .. } => to - from,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::batch::md5;
    use super::*;
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

    pub(super) fn verify(out: &Arc<File>, index: u32, data: Vec<u8>, digest: Digest) -> Job {
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
