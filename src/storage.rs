//! Files on disk: source files mapped read-only, and output files that are created as
//! `NAME.part` at their full size (after a check that the disk has room for all of them) or
//! kept from an earlier run of the node (to be checked chunk by chunk), their blocks allocated,
//! filled chunk by chunk, mapped read-only for serving and resume checks, and renamed to
//! `NAME` only once every chunk passed its check against its owner's chain, whose last value is
//! the file's MD5.
//!
//! # Safety of the maps
//! A memory map of a file that another process truncates turns reads past the new end into
//! SIGBUS. We map only files this node opened itself: sources the user named (which must not be
//! truncated during a run, as documented in Readme.txt) and `.part` files that we created in our
//! own output directory and never shrink.

use crate::ids::check_file_name;
use memmap2::Mmap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum StorageError {
    Open {
        path: PathBuf,
        err: io::Error,
    },
    NotAFile(PathBuf),
    BadName {
        path: PathBuf,
        why: String,
    },
    Map {
        path: PathBuf,
        err: io::Error,
    },
    Create {
        path: PathBuf,
        err: io::Error,
    },
    Rename {
        from: PathBuf,
        err: io::Error,
    },
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Open { path, err } => write!(f, "cannot open {}: {err}", path.display()),
            StorageError::NotAFile(p) => write!(f, "{} is not a regular file", p.display()),
            StorageError::BadName { path, why } => {
                write!(f, "{} has an unusable file name: {why}", path.display())
            }
            StorageError::Map { path, err } => write!(f, "cannot map {}: {err}", path.display()),
            StorageError::Create { path, err } => {
                write!(f, "cannot create {}: {err}", path.display())
            }
            StorageError::Rename { from, err } => {
                write!(f, "cannot rename {}: {err}", from.display())
            }
            StorageError::NoSpace {
                dir,
                needed,
                available,
            } => write!(
                f,
                "not enough space in {} for the downloads: {needed} bytes needed, {available} available",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// Maps a whole file read-only; `None` for an empty file (which cannot be mapped).
fn map_file(file: &File, len: u64, path: &Path) -> Result<Option<Arc<Mmap>>, StorageError> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the file is one this node owns for the run (see the module docs); nothing in this
    // process truncates it while the map lives.
    let map = unsafe { Mmap::map(file) }.map_err(|err| StorageError::Map {
        path: path.to_owned(),
        err,
    })?;
    Ok(Some(Arc::new(map)))
}

/// A file this node shares from the start.
pub struct Source {
    pub name: String,
    pub size: u64,
    pub map: Option<Arc<Mmap>>,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, StorageError> {
        let open_err = |err| StorageError::Open {
            path: path.to_owned(),
            err,
        };
        let meta = fs::metadata(path).map_err(open_err)?;
        if !meta.is_file() {
            return Err(StorageError::NotAFile(path.to_owned()));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StorageError::BadName {
                path: path.to_owned(),
                why: "not UTF-8".into(),
            })?
            .to_string();
        check_file_name(&name).map_err(|e| StorageError::BadName {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let file = File::open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        let map = map_file(&file, size, path)?;
        // The map is what gets served and hashed: its length is the size (the file may have
        // changed between the stat and the map).
        let size = map.as_ref().map_or(0, |m| m.len() as u64);
        if let Some(m) = &map {
            let _ = m.advise(memmap2::Advice::Sequential);
        }
        Ok(Source { name, size, map })
    }
}

/// A file being downloaded.
pub struct Output {
    pub part: PathBuf,
    pub dest: PathBuf,
    pub file: Arc<File>,
    pub map: Option<Arc<Mmap>>,
}

/// A regular file's length, if `path` is one.
fn file_len(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Bytes of disk that what an earlier run left for `name` in `dir` already takes (a `.part`, or
/// a finished copy, of the right `size`), which the downloads need not find free again.
pub fn allocated(dir: &Path, name: &str, size: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    [dir.join(format!("{name}.part")), dir.join(name)]
        .iter()
        .filter(|p| file_len(p) == Some(size))
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.blocks().saturating_mul(512).min(size))
        .max()
        .unwrap_or(0)
}

impl Output {
    /// Opens `dir/NAME.part` for a download of `size` bytes. What an earlier run of this node
    /// left is kept: a `.part` of the right size, or a finished `NAME` of the right size (moved
    /// back to `.part`, to be checked again before it is called complete). The flag says
    /// whether it was kept; otherwise the file is created empty at its full size. Either way its
    /// blocks are then allocated (`reserve`); a new file that cannot get them is removed again.
    /// `name` must have passed `check_file_name`.
    pub fn open(dir: &Path, name: &str, size: u64) -> Result<(Output, bool), StorageError> {
        let create_err = |path: &Path| {
            let path = path.to_owned();
            move |err| StorageError::Create { path, err }
        };
        fs::create_dir_all(dir).map_err(create_err(dir))?;
        let dest = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let mut kept = file_len(&part) == Some(size);
        if !kept && file_len(&dest) == Some(size) {
            fs::rename(&dest, &part).map_err(create_err(&dest))?;
            kept = true;
        }
        let resumed = size > 0 && kept;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resumed)
            .open(&part)
            .map_err(create_err(&part))?;
        if !resumed {
            file.set_len(size).map_err(create_err(&part))?;
        }
        if let Err(e) = reserve(&file, size) {
            // A new, empty .part would pass for an earlier run's progress next time.
            if !resumed {
                let _ = fs::remove_file(&part);
            }
            return Err(create_err(&part)(e));
        }
        let map = map_file(&file, size, &part)?;
        let out = Output {
            part,
            dest,
            file: Arc::new(file),
            map,
        };
        Ok((out, resumed))
    }
}

/// Allocates the blocks of an output of `size` bytes now (fallocate; the holes of a kept one,
/// whose data stays as it is): a disk that others fill meanwhile then fails the output at its
/// creation, not with a write error in the middle of the run, and writeback no longer
/// allocates an output's blocks chunk by chunk (ext4's delayed allocation). On net-sym the
/// runs came out a little shorter, and so did the time from the last chunk to the last file
/// complete (Readme section 7). A filesystem that cannot preallocate keeps the sparse file
/// (`set_len`). Runs on the output's open-output thread, off the reactor: on an idle disk it
/// takes milliseconds (extents, no zeroing), behind another run's writeback up to 400 ms; on a
/// tmpfs it takes the memory at once.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off64_t::try_from(size) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate64 only reads its integer arguments; the descriptor is open.
    if unsafe { libc::fallocate64(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Checks, before any transfer, that `dir` (created if missing) has room for `needed` bytes of
/// downloads, all outputs at once, before any is created (`reserve` then holds each one's
/// room).
pub fn check_space(dir: &Path, needed: u64) -> Result<(), StorageError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |err| StorageError::Create {
        path: dir.to_owned(),
        err,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let available = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    if available < needed {
        return Err(StorageError::NoSpace {
            dir: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Asks the kernel to start writing a range to disk now. Without it, gigabytes of received
/// chunks sit dirty in the page cache until the final fsync, which then waits seconds for the
/// disk while nothing else is left to do; started early, the disk works during the transfer.
/// Best effort: an error here only means the final fsync does the work.
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // A length of 0 would mean "to the end of the file".
    if len == 0 {
        return;
    }
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

/// A hash worker's write of a chunk, or the writeback thread's start of the writeback of an
/// output's gathered span or periodic fdatasync, that blocks this long or longer is logged
/// (`io_slow`, debug).
const SLOW_IO: Duration = Duration::from_millis(20);

/// Runs `f`, the call named `call` (at `offset`), and logs it as slow if it took `SLOW_IO` or
/// more (debug). A write held up in a hash worker holds up every verification after it; with
/// enough of them the node stops asking for chunks (the cap on requests plus chunks being
/// verified).
pub fn timed<T>(call: &str, offset: u64, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    let took = t0.elapsed();
    if took >= SLOW_IO {
        log::debug!(
            "io_slow event=io_slow call={call} offset={offset} ms={:.1}",
            took.as_secs_f64() * 1000.0
        );
    }
    r
}

/// What the writeback thread is asked to do with a range (offset, length) of an output file.
pub enum Writeback {
    /// The range was written: start its writeback.
    Written(Arc<File>, u64, usize),
    /// The range is spent (`client_core::cache`): write it back, wait for that, and drop its
    /// pages from the page cache and from `map`, the output's map.
    Uncache(Arc<File>, Arc<Mmap>, u64, usize),
}

/// How often the writeback thread makes what was written to an output durable (fdatasync).
const SYNC_EVERY: Duration = Duration::from_millis(250);

/// How long the writeback thread gathers the written ranges that reach it before it starts
/// their writeback (`Gather`), one `sync_file_range` per output over the span of its ranges.
/// Each call submits its I/O under a plug and notifies the disk a few times, not once per
/// chunk; on a virtual disk a notification is an exit to the hypervisor, and those cost about
/// 7 % of all the machine's CPU with one call per chunk (perf record -a, net-sym). Pages in
/// the span that are clean or already under writeback are skipped by the kernel.
const WRITEBACK_GATHER: Duration = Duration::from_millis(20);

/// Written ranges whose writeback is not started yet: per output (its index among the
/// writeback thread's outputs) the span from the lowest offset to the highest end, all due
/// `WRITEBACK_GATHER` after the first of them arrived. The clock is an argument.
#[derive(Default)]
struct Gather {
    spans: Vec<(usize, u64, u64)>,
    since: Option<Instant>,
}

impl Gather {
    /// Output `out` had `len` bytes written at `offset`; `now` is when the thread learnt it.
    fn add(&mut self, out: usize, offset: u64, len: usize, now: Instant) {
        let end = offset.saturating_add(len as u64);
        match self.spans.iter_mut().find(|s| s.0 == out) {
            Some(s) => *s = (out, s.1.min(offset), s.2.max(end)),
            None => self.spans.push((out, offset, end)),
        }
        self.since.get_or_insert(now);
    }

    /// How long the thread may wait for its next message at `now`: until the spans are due,
    /// or `idle` when there are none.
    fn wait(&self, now: Instant, idle: Duration) -> Duration {
        self.since.map_or(idle, |t| {
            WRITEBACK_GATHER.saturating_sub(now.saturating_duration_since(t))
        })
    }

    /// The spans (output, start, end), taken if they are due at `now` (or `all`, at the end).
    fn take(&mut self, now: Instant, all: bool) -> Vec<(usize, u64, u64)> {
        let due = self
            .since
            .is_some_and(|t| all || now.saturating_duration_since(t) >= WRITEBACK_GATHER);
        if !due {
            return Vec::new();
        }
        self.since = None;
        std::mem::take(&mut self.spans)
    }
}

/// An output as the writeback thread knows it.
struct Synced {
    file: Arc<File>,
    /// A description of it of our own to sync through (`reopen`).
    own: Option<File>,
    /// When it was first written since its last sync.
    since: Option<Instant>,
    /// A sync of it failed: nothing of it is dropped from the page cache any more (pages
    /// whose writeback failed are left clean in the cache, and dropped they would be gone).
    failed: bool,
}

/// Starts the writeback of written ranges (`start_writeback`, gathered for `WRITEBACK_GATHER`,
/// one call per output) on a thread of its own, every
/// `SYNC_EVERY` makes each output written meanwhile durable (if `durable`; not with
/// `--no-fsync`, where no rename waits for the disk), and drops spent ranges from the page
/// cache (`uncache`).
/// - Its own thread: `sync_file_range` blocks while the disk's request queue is full, for
///   seconds when a virtual disk flushes its cache, and in a hash worker that held up every
///   verification, and with them every transfer of the node (all four nodes stood still for
///   1.9 s on emulated hosts). Ranges queue up meanwhile.
/// - The periodic fdatasync: the fsync before a finished file's rename waits for the disk to
///   take everything written before it (a virtual disk's flush empties the host's cache),
///   which took 0.5 to 2.6 s after the last chunk; synced as it goes, little is left then.
///
/// The thread ends when every sender is gone.
pub fn writeback_thread(durable: bool) -> io::Result<Sender<Writeback>> {
    let (tx, rx) = channel::<Writeback>();
    std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || {
            let mut outs: Vec<Synced> = Vec::new();
            let slot = |outs: &mut Vec<Synced>, file: Arc<File>| match outs
                .iter()
                .position(|o| Arc::ptr_eq(&o.file, &file))
            {
                Some(i) => i,
                None => {
                    let own = reopen(&file);
                    outs.push(Synced {
                        file,
                        own,
                        since: None,
                        failed: false,
                    });
                    outs.len() - 1
                }
            };
            let mut gather = Gather::default();
            loop {
                let msg = rx.recv_timeout(gather.wait(Instant::now(), SYNC_EVERY / 2));
                let gone = matches!(msg, Err(RecvTimeoutError::Disconnected));
                match msg {
                    Ok(Writeback::Written(file, offset, len)) => {
                        let i = slot(&mut outs, file);
                        let now = Instant::now();
                        outs[i].since.get_or_insert(now);
                        gather.add(i, offset, len, now);
                    }
                    Ok(Writeback::Uncache(file, map, offset, len)) => {
                        let i = slot(&mut outs, file);
                        let o = &mut outs[i];
                        if let (Some(own), false) = (&o.own, o.failed) {
                            o.failed = !uncache(own, &map, offset, len);
                        }
                    }
                    Err(_) => {}
                }
                // At the end too: the final fsyncs do not need it, but the disk can start.
                for (i, lo, hi) in gather.take(Instant::now(), gone) {
                    let len = usize::try_from(hi - lo).unwrap_or(usize::MAX);
                    timed("sync_file_range", lo, || {
                        start_writeback(&outs[i].file, lo, len)
                    });
                }
                if gone {
                    return;
                }
                for o in outs.iter_mut().filter(|_| durable) {
                    if o.since.is_some_and(|t| t.elapsed() >= SYNC_EVERY) {
                        // A write error is reported to the output's own descriptor too, at
                        // the fsync before the rename (see `reopen`); here it only stops the
                        // drops from the page cache, which would throw away the only copy.
                        if let Some(f) = &o.own {
                            o.failed |= timed("fdatasync", 0, || f.sync_data()).is_err();
                        }
                        o.since = None;
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Writes a spent range back, waits for it, and drops its pages from the page cache (a page
/// still mapped by this process stays cached, so the range is first unmapped from `map`).
/// `own` is a description of the output of our own (`reopen`): the wait takes any write error
/// off the description it runs on, so the caller must not drop anything of this output again
/// once a sync through it failed. Returns false if the writeback failed (nothing is dropped;
/// the fsync before the rename reports the error). Best effort otherwise: at worst the pages
/// stay cached.
fn uncache(own: &File, map: &Mmap, offset: u64, len: usize) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return true;
    };
    let Ok(start) = usize::try_from(offset) else {
        return true;
    };
    // A length of 0 would mean "to the end of the file" to both calls below.
    if len == 0 || start.checked_add(len).is_none_or(|end| end > map.len()) {
        return true;
    }
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open.
    if unsafe { libc::sync_file_range(own.as_raw_fd(), off, n, flags) } != 0 {
        return false;
    }
    // SAFETY: `map` is a read-only shared map of the output and the range lies inside it.
    // MADV_DONTNEED on such a map only unmaps the pages: the next read faults them in again
    // from the file, whose bytes in a spent range never change again.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
    let _ = unsafe { libc::posix_fadvise(own.as_raw_fd(), off, n, libc::POSIX_FADV_DONTNEED) };
    true
}

/// A new open file description of `file` (through /proc/self/fd), for the periodic syncs.
/// Linux reports a writeback error once to each description that was open when it happened:
/// synced through the output's own descriptor, the error would be taken here and dropped, and
/// the fsync before the rename would succeed over data that never reached the disk. `None`
/// (no /proc): the output is not synced periodically, only at the end.
fn reopen(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Makes a verified `.part` durable (unless not `durable`: `--no-fsync`) and renames it to its
/// final name. Runs off the reactor.
pub fn finalize(file: &File, part: &Path, dest: &Path, durable: bool) -> Result<(), StorageError> {
    let err = |err| StorageError::Rename {
        from: part.to_owned(),
        err,
    };
    if durable {
        file.sync_data().map_err(err)?;
    }
    fs::rename(part, dest).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// Whether each page of `map` is in the page cache (mincore(2)).
    fn resident(map: &Mmap) -> Vec<bool> {
        // SAFETY: sysconf only reads its argument.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut v = vec![0u8; map.len().div_ceil(page)];
        // SAFETY: the map is page-aligned and `map.len()` bytes long; `v` has a byte per page.
        let r = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        v.iter().map(|b| b & 1 == 1).collect()
    }

    /// A directory of this test process under target/, on the disk (not a tmpfs).
    fn disk_dir(tag: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("storage-{tag}-{}", std::process::id()))
    }

    #[test]
    fn written_ranges_are_gathered_into_one_span_per_output_and_fall_due_together() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let idle = Duration::from_millis(125);
        let mut g = Gather::default();
        assert_eq!(g.wait(t0, idle), idle);
        g.add(0, 0, 1 << 18, t0);
        g.add(0, 1 << 20, 1 << 18, ms(5));
        g.add(1, 4096, 100, ms(7));
        assert_eq!(g.wait(ms(5), idle), Duration::from_millis(15));
        assert!(g.take(ms(19), false).is_empty());
        assert_eq!(
            g.take(ms(20), false),
            [(0, 0, (1 << 20) + (1 << 18)), (1, 4096, 4196)]
        );
        // Taken: nothing is due, and the thread waits its idle time again (no spin).
        assert!(g.take(ms(40), false).is_empty());
        assert_eq!(g.wait(ms(40), idle), idle);
        // At the end, what is gathered goes at once.
        g.add(2, 0, 10, ms(41));
        assert_eq!(g.take(ms(42), true), [(2, 0, 10)]);
    }

    #[test]
    fn a_steady_stream_of_ranges_still_falls_due_every_gather_period() {
        let t0 = Instant::now();
        let mut g = Gather::default();
        let mut due_at = Vec::new();
        for n in 0..100u64 {
            let now = t0 + Duration::from_millis(n);
            g.add(0, n << 18, 1 << 18, now);
            if !g.take(now, false).is_empty() {
                due_at.push(n);
            }
        }
        assert_eq!(due_at, [20, 41, 62, 83]);
    }

    #[test]
    fn a_new_output_has_its_blocks_allocated_and_reads_as_zeros() {
        use std::os::unix::fs::MetadataExt;
        let dir = disk_dir("reserve");
        const LEN: u64 = 3 << 20;
        // Whether this filesystem preallocates at all (tmpfs and ext4 do; some do not).
        fs::create_dir_all(&dir).expect("dir");
        let probe = File::create(dir.join("probe")).expect("probe");
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
        let can = unsafe { libc::fallocate(probe.as_raw_fd(), 0, 0, 4096) } == 0;
        let (out, resumed) = Output::open(&dir, "r.bin", LEN).expect("output");
        assert!(!resumed);
        let meta = out.file.metadata().expect("metadata");
        assert_eq!(meta.len(), LEN);
        if can {
            assert!(
                meta.blocks() * 512 >= LEN,
                "{} bytes allocated of {LEN}",
                meta.blocks() * 512
            );
        }
        let map = out.map.as_ref().expect("a map");
        assert!(map.iter().all(|&b| b == 0));
        drop(out);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reservation_the_filesystem_refuses_is_an_error() {
        let dir = disk_dir("refuse");
        fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("ro");
        fs::write(&p, b"x").expect("file");
        // Open for reading only: fallocate fails with EBADF, which is no "cannot preallocate".
        let ro = File::open(&p).expect("open");
        let e = reserve(&ro, 4096).expect_err("a read-only descriptor cannot be reserved");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert!(reserve(&ro, 0).is_ok(), "nothing to reserve");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn uncache_drops_a_spent_range_from_the_page_cache_and_keeps_the_rest() {
        // On the disk: tmpfs keeps its pages whatever one advises.
        let dir = disk_dir("test");
        const LEN: usize = 4 << 20;
        let (out, resumed) = Output::open(&dir, "f.bin", LEN as u64).expect("output");
        assert!(!resumed);
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        out.file.write_all_at(&data, 0).expect("write");
        let map = out.map.as_ref().expect("a map");
        assert_eq!(&map[..], &data[..]);
        assert!(
            resident(map).iter().all(|&r| r),
            "all cached after the write"
        );
        let own = reopen(&out.file).expect("/proc/self/fd");
        assert!(uncache(&own, map, 0, LEN / 2));
        // A length of 0 drops nothing (to the kernel it would mean "to the end").
        assert!(uncache(&own, map, LEN as u64 / 2, 0));
        let r = resident(map);
        let half = r.len() / 2;
        assert!(r[..half].iter().all(|&r| !r), "the spent half is dropped");
        assert!(r[half..].iter().all(|&r| r), "the rest stays cached");
        assert_eq!(&map[..], &data[..], "and reads back intact from the disk");
        drop(out);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
