//! The System Clock as each node sees it, and the log set-up: one file per node in the log
//! directory, every line stamped with the System Clock in ms and the node's name, and warnings
//! also on stderr.
//!
//! A client learns its name and its offset to the server's clock only from the server's
//! welcome, so its log lines are held in memory until [`LogSink::open`] names the file. The
//! offset is then refined during the run (see `clock`).
//!
//! Test only: `P2PSHARE_TEST_CLOCK_SKEW_MS=N` (N >= 0) puts this process's own clock N ms
//! ahead, as if it ran on a machine whose clock is off; the tests use it to check that the
//! merged times still agree.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
static SKEW_US: OnceLock<u64> = OnceLock::new();
static OFFSET_US: AtomicI64 = AtomicI64::new(0);
static NODE: Mutex<String> = Mutex::new(String::new());

/// Where warnings go instead of straight to stderr while progress bars are drawn there.
type StderrHook = Box<dyn Fn(&str) + Send + Sync>;
static STDERR_HOOK: Mutex<Option<StderrHook>> = Mutex::new(None);

/// The test-only skew of this process's clock (µs), read once.
fn skew_us() -> u64 {
    *SKEW_US.get_or_init(|| {
        std::env::var("P2PSHARE_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |ms| ms.saturating_mul(1000))
    })
}

/// µs on this node's monotonic clock since the process started (plus the test-only skew).
pub fn now_us() -> u64 {
    let skew = skew_us();
    (START.get_or_init(Instant::now).elapsed().as_micros() as u64).saturating_add(skew)
}

/// Sends the warnings echoed on stderr through `hook` (None: straight to stderr again).
pub fn set_stderr_hook(hook: Option<StderrHook>) {
    *STDERR_HOOK.lock().unwrap_or_else(|e| e.into_inner()) = hook;
}

fn to_stderr(record: &log::Record) {
    let line = record.args().to_string();
    match &*STDERR_HOOK.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(h) => h(&line),
        None => eprintln!("{line}"),
    }
}

/// Sets the offset so that `system_ms` gives the server's System Clock.
pub fn set_offset_us(offset: i64) {
    OFFSET_US.store(offset, Ordering::Relaxed);
}

/// The offset from this node's clock to the server's System Clock, in µs.
pub fn offset_us() -> i64 {
    OFFSET_US.load(Ordering::Relaxed)
}

/// The System Clock in ms (0.0 when the server started).
pub fn system_ms() -> f64 {
    (now_us() as i64).saturating_add(OFFSET_US.load(Ordering::Relaxed)) as f64 / 1000.0
}

pub fn set_node(name: &str) {
    *NODE.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
}

enum SinkState {
    Buffer(Vec<u8>),
    File(BufWriter<File>),
}

/// Where the node's log lines go: memory until a file is opened, then that file.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<SinkState>>);

impl LogSink {
    fn new() -> Self {
        LogSink(Arc::new(Mutex::new(SinkState::Buffer(Vec::new()))))
    }

    /// Opens `dir/NAME.log` and moves the lines held so far into it (once: later calls keep
    /// the file already open). A log already there (an earlier run, or this node's life before
    /// a crash) is kept as `NAME.log.1`.
    pub fn open(&self, dir: &Path, name: &str) -> io::Result<()> {
        if matches!(
            &*self.0.lock().unwrap_or_else(|e| e.into_inner()),
            SinkState::File(_)
        ) {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        if path.is_file() {
            let _ = std::fs::rename(&path, dir.join(format!("{name}.log.1")));
        }
        let mut w = BufWriter::new(File::create(path)?);
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let SinkState::Buffer(b) = &*st {
            w.write_all(b)?;
        }
        w.flush()?;
        *st = SinkState::File(w);
        Ok(())
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            SinkState::Buffer(b) => {
                // Bounded: a node that never learns its name keeps only the first 4 MiB.
                if b.len() < 4 << 20 {
                    b.extend_from_slice(buf);
                }
                Ok(buf.len())
            }
            SinkState::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            SinkState::Buffer(_) => Ok(()),
            SinkState::File(f) => f.flush(),
        }
    }
}

/// Installs the logger for this process; returns the sink for the node's log file.
pub fn init(node: &str) -> LogSink {
    now_us();
    set_node(node);
    let sink = LogSink::new();
    let level = match std::env::var("P2PSHARE_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let file = fern::Dispatch::new()
        .format(|out, message, record| {
            let node = NODE.lock().map(|n| n.clone()).unwrap_or_default();
            let lvl = match record.level() {
                log::Level::Error => "ERROR ",
                log::Level::Warn => "WARN ",
                _ => "",
            };
            out.finish(format_args!(
                "[{:>10.3} ms] {node} {lvl}{message}",
                system_ms()
            ))
        })
        .level(level)
        .chain(Box::new(sink.clone()) as Box<dyn Write + Send>);
    let stderr = fern::Dispatch::new()
        .format(|out, message, _| {
            let node = NODE.lock().map(|n| n.clone()).unwrap_or_default();
            out.finish(format_args!("{node}: {message}"))
        })
        .level(log::LevelFilter::Warn)
        .chain(fern::Output::call(to_stderr));
    // A second init in one process (tests) keeps the first logger.
    let _ = fern::Dispatch::new().chain(file).chain(stderr).apply();
    sink
}
