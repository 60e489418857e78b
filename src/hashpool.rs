//! The MD5 helper pool: a few threads that hash chunks, verify received chunks (and write the
//! good ones to their output file), and advance whole-file MD5s, so the reactor never hashes.
//! Each result is sent back on a channel and the reactor is woken through its mio `Waker`.
//!
//! Three queues take turns: own-file chunk digests, verifications of received chunks, and
//! whole-file hashing.

use crate::geometry::Geometry;
use crate::ids::{ChunkId, Digest, FileId, PeerId};
use crate::md5x::{self, Md5State};
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
    },
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

#[derive(Default)]
struct Queues {
    hash: VecDeque<Job>,
    verify: VecDeque<Job>,
    stream: VecDeque<Job>,
    closed: bool,
    /// Which queue goes first next time: the three take turns, so that own-file digests (which
    /// peers wait for), verifications (which free request slots) and whole-file hashing (which
    /// must keep up with the verified prefix, or it all lands at the end) all advance.
    turn: usize,
}

/// Most verifications or whole-file jobs taken in one turn: a turn of each queue is then
/// about the same work (4 to 8 MiB), and a batch fills the lanes of a multi-buffer hash.
const BATCH: usize = 16;

impl Queues {
    /// The next batch of jobs of one kind.
    fn pop(&mut self) -> Vec<Job> {
        for k in 0..3 {
            let (q, max) = match (self.turn + k) % 3 {
                0 => (&mut self.hash, 1),
                1 => (&mut self.verify, BATCH),
                _ => (&mut self.stream, BATCH),
            };
            if !q.is_empty() {
                self.turn = (self.turn + k + 1) % 3;
                let n = q.len().min(max);
                return q.drain(..n).collect();
            }
        }
        Vec::new()
    }
}

pub struct HashPool {
    shared: Arc<(Mutex<Queues>, Condvar)>,
    results: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

/// How a worker tells the reactor that a result is waiting.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

impl HashPool {
    pub fn new(threads: usize, wake: Wake) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Queues::default()), Condvar::new()));
        let (tx, results) = channel();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let tx: Sender<Done> = tx.clone();
            let wake = Arc::clone(&wake);
            let h = std::thread::Builder::new()
                .name(format!("md5-{i}"))
                .spawn(move || worker(&shared, &tx, &wake))?;
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
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        match job {
            Job::HashChunks { .. } => q.hash.push_back(job),
            Job::Verify { .. } => q.verify.push_back(job),
            Job::Stream { .. } => q.stream.push_back(job),
        }
        cv.notify_one();
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

fn worker(shared: &(Mutex<Queues>, Condvar), tx: &Sender<Done>, wake: &Wake) {
    let (m, cv) = shared;
    loop {
        let jobs = {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.closed {
                    return;
                }
                let jobs = q.pop();
                if !jobs.is_empty() {
                    break jobs;
                }
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        for done in run_batch(jobs) {
            if tx.send(done).is_err() {
                return;
            }
        }
        wake();
    }
}

/// The MD5 of one buffer.
pub fn md5(data: &[u8]) -> Digest {
    Md5::digest(data).into()
}

/// Runs a batch of jobs of one kind. Chunks of a batch are hashed together in the lanes of the
/// multi-buffer MD5 (`md5x`), and the whole-file states of a batch advance together likewise.
fn run_batch(jobs: Vec<Job>) -> Vec<Done> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut verifies = Vec::new();
    let mut streams = Vec::new();
    for job in jobs {
        match job {
            Job::HashChunks {
                file,
                map,
                geo,
                first,
                count,
            } => {
                let slices: Vec<&[u8]> = (first..first + count)
                    .map(|i| {
                        let off = geo.offset(i) as usize;
                        &map[off..off + geo.chunk_len(i) as usize]
                    })
                    .collect();
                let digests = md5x::digest_many(&slices);
                out.push(Done::Hashed {
                    file,
                    first,
                    digests,
                });
            }
            Job::Verify {
                peer,
                chunk,
                data,
                digest,
                out: file,
                offset,
                requested_at,
            } => {
                verifies.push((peer, chunk, data, digest, file, offset, requested_at));
            }
            Job::Stream {
                file,
                map,
                geo,
                from,
                to,
                ctx,
                finish,
            } => {
                streams.push((file, map, geo, from, to, ctx, finish));
            }
        }
    }
    if !verifies.is_empty() {
        let bufs: Vec<&[u8]> = verifies.iter().map(|v| v.2.as_slice()).collect();
        // One buffer alone is faster through md-5's assembly than through one lane of eight.
        let digests = if bufs.len() == 1 {
            vec![md5(bufs[0])]
        } else {
            md5x::digest_many(&bufs)
        };
        for ((peer, chunk, data, digest, file, offset, requested_at), got) in
            verifies.into_iter().zip(digests)
        {
            let ok = got == digest;
            let write_error = if ok {
                file.write_all_at(&data, offset)
                    .err()
                    .map(|e| e.to_string())
            } else {
                None
            };
            out.push(Done::Verified {
                peer,
                chunk,
                ok,
                data,
                requested_at,
                write_error,
            });
        }
    }
    if !streams.is_empty() {
        {
            let mut items: Vec<(&mut Md5State, &[u8])> = streams
                .iter_mut()
                .map(|(_, map, geo, from, to, ctx, _)| {
                    let data: &[u8] = match map {
                        Some(m) => {
                            let start = (geo.offset(*from) as usize).min(m.len());
                            let end = (geo.offset(*to) as usize).min(m.len());
                            &m[start..end]
                        }
                        None => &[],
                    };
                    (&mut **ctx, data)
                })
                .collect();
            md5x::update_many(&mut items);
        }
        for (file, _, _, _, to, ctx, finish) in streams {
            out.push(if finish {
                Done::Streamed {
                    file,
                    upto: to,
                    ctx: None,
                    md5: Some(ctx.finalize()),
                }
            } else {
                Done::Streamed {
                    file,
                    upto: to,
                    ctx: Some(ctx),
                    md5: None,
                }
            });
        }
    }
    out
}
