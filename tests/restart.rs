//! Crash and restart on loopback with the real binary (issue 4, items 1 and 2): a client killed
//! with SIGKILL in the middle of the run, started again with the same arguments, resumes from
//! its `.part` files, finds a chunk corrupted while it was down, and fetches only what it lacks;
//! an owner killed for good leaves a file nobody can complete, which is reported as such and
//! never presented as complete. The runs have a token, so a restarted client proves membership
//! again. Each test is bounded in time and cleans up after itself.

mod common;

use common::{CHUNK, Group, Hosts, TestDir, client_cmd, gen_file, start_server_on};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sends `sig` (e.g. "-STOP") to process `i` of the group.
fn signal(g: &mut Group, i: usize, sig: &str) {
    let pid = g.procs[i].child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        g.fail(&format!("kill {sig} {pid} failed"));
    }
}

/// Waits until one of `parts` holds the first bytes of one of its chunks, as in `srcs` (a
/// chunk has landed there), polling every millisecond: the earliest sign that chunks of that
/// file move. (The outputs' blocks are allocated at creation, so their size on disk says
/// nothing.)
fn wait_first_chunk(g: &mut Group, parts: &[PathBuf], srcs: &[PathBuf], deadline: Instant) {
    use std::os::unix::fs::FileExt;
    const HEAD: usize = 16;
    // Only the heads are read (a whole source takes long enough for most chunks to move).
    let heads: Vec<Vec<[u8; HEAD]>> = srcs
        .iter()
        .map(|s| {
            let f = fs::File::open(s).expect("source");
            let len = f.metadata().expect("source size").len();
            (0..len.div_ceil(CHUNK))
                .map(|i| {
                    let mut h = [0u8; HEAD];
                    // A chunk shorter than HEAD gets zeros, which never count as landed.
                    match f.read_exact_at(&mut h, i * CHUNK) {
                        Ok(()) => h,
                        Err(_) => [0u8; HEAD],
                    }
                })
                .collect()
        })
        .collect();
    let landed = |part: &PathBuf, heads: &[[u8; HEAD]]| {
        let Ok(f) = fs::File::open(part) else {
            return false;
        };
        heads.iter().enumerate().any(|(i, want)| {
            let mut got = [0u8; HEAD];
            *want != [0u8; HEAD]
                && f.read_exact_at(&mut got, i as u64 * CHUNK).is_ok()
                && got == *want
        })
    };
    while !parts.iter().zip(&heads).any(|(p, h)| landed(p, h)) {
        if Instant::now() >= deadline {
            g.fail("no chunk was written in time");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Indexes of the chunks of `part` that equal the same chunk of `src`.
fn good_chunks(part: &Path, src: &Path) -> Vec<u64> {
    let (got, want) = (
        fs::read(part).expect("part"),
        fs::read(src).expect("source"),
    );
    assert_eq!(got.len(), want.len(), "a .part has its file's full size");
    let c = CHUNK as usize;
    (0..want.len().div_ceil(c))
        .filter(|&i| {
            let end = ((i + 1) * c).min(want.len());
            got[i * c..end] == want[i * c..end]
        })
        .map(|i| i as u64)
        .collect()
}

/// `key=value` of the first line of `log` that contains `event` and `file=name`.
fn field(log: &str, event: &str, name: &str, key: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains(event) && l.contains(&format!("file={name} ")))?;
    let v = line.split(&format!(" {key}=")).nth(1)?;
    v.split(' ').next()?.parse().ok()
}

/// Chunks of file `name` received according to `log`, by index.
fn received(log: &str, name: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("event=chunk_received") && l.contains(&format!("file={name} ")))
        .filter_map(|l| l.split(" index=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

struct Run {
    dir: TestDir,
    g: Group,
    server: usize,
    addr: String,
    srcs: Vec<PathBuf>,
    outs: Vec<PathBuf>,
    log_dir: PathBuf,
    deadline: Instant,
}

/// The run's token: a restarted client must prove membership again, and its peers must let it
/// back in on its pair key.
const TOKEN: &str = "restart-test-token";

/// A server and clients client1..N (client K shares `cK.bin` of `sizes[K-1]` bytes), with
/// `extra` server arguments, all with the token.
fn start(test: &str, sizes: &[u64], extra: &[&str]) -> (Run, Vec<usize>) {
    let dir = TestDir::new(test);
    let log_dir = dir.join("logs");
    let srcs: Vec<PathBuf> = (1..=sizes.len())
        .map(|k| dir.join(&format!("c{k}.bin")))
        .collect();
    for (k, (p, &size)) in srcs.iter().zip(sizes).enumerate() {
        gen_file(&dir.path, p, size, 70 + k as u64);
    }
    let outs: Vec<PathBuf> = (1..=sizes.len())
        .map(|k| dir.join(&format!("out{k}")))
        .collect();
    let mut g = Group::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let extra: Vec<String> = ["--token", TOKEN]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let (server, addr) = start_server_on(
        &mut g,
        &dir,
        sizes.len(),
        &log_dir,
        &dir.join("summary.json"),
        deadline,
        &Hosts::Loopback,
        &extra,
    );
    let mut run = Run {
        dir,
        g,
        server,
        addr,
        srcs,
        outs,
        log_dir,
        deadline,
    };
    let clients = (1..=sizes.len()).map(|k| run.spawn_client(k)).collect();
    (run, clients)
}

impl Run {
    /// Starts client K (from 1), with the same arguments every time.
    fn spawn_client(&mut self, k: usize) -> usize {
        let name = format!("client{k}");
        let mut a = client_cmd(
            &self.addr,
            &name,
            Some(&self.srcs[k - 1]),
            &self.outs[k - 1],
            &self.log_dir,
        );
        a.extend(["--token".to_string(), TOKEN.to_string()]);
        self.g.spawn(&name, &self.dir.path, &a)
    }

    fn name(&self, k: usize) -> String {
        self.srcs[k - 1]
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string()
    }

    /// Client `k`'s output of client `owner`'s file: its final name and its `.part`.
    fn out(&self, k: usize, owner: usize) -> (PathBuf, PathBuf) {
        let name = self.name(owner);
        let dir = &self.outs[k - 1];
        (dir.join(&name), dir.join(format!("{name}.part")))
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn stderr(&self, i: usize) -> String {
        fs::read_to_string(&self.g.procs[i].stderr).unwrap_or_default()
    }
}

/// Client 3 is killed (SIGKILL) while it downloads, its peers frozen (SIGSTOP) at that moment
/// so that it dies with part of each file. While it is down, one chunk it held is corrupted in
/// its `.part`. Started again with the same arguments, it takes its old place in the run,
/// checks its `.part` files on the hash pool, holds exactly the chunks that are intact, fetches
/// exactly the others (the corrupted one among them), and the run completes with every file
/// byte-identical everywhere.
#[test]
fn killed_client_resumes_and_refetches_a_chunk_corrupted_while_it_was_down() {
    let size = |k: u64| 128 * CHUNK + 1000 * k + 7;
    let chunks = common::chunks_of(size(1));
    assert_eq!(chunks, common::chunks_of(size(2)));
    let (mut r, c) = start("resume", &[size(1), size(2), 8 * CHUNK], &[]);
    let parts: Vec<PathBuf> = (1..=2).map(|o| r.out(3, o).1).collect();
    let deadline = r.deadline;
    let srcs: Vec<PathBuf> = r.srcs[..2].to_vec();
    wait_first_chunk(&mut r.g, &parts, &srcs, deadline);
    signal(&mut r.g, c[0], "-STOP");
    signal(&mut r.g, c[1], "-STOP");
    signal(&mut r.g, c[2], "-KILL");
    r.g.wait_exit(c[2], deadline, "client3 did not die");

    // What the killed client left, chunk by chunk; one intact chunk is then corrupted.
    let mut good: Vec<Vec<u64>> = (1..=2)
        .map(|o| good_chunks(&r.out(3, o).1, &r.srcs[o - 1]))
        .collect();
    let (victim_file, victim) = if good[0].is_empty() { (2, 1) } else { (1, 0) };
    let Some(bad) = good[victim].first().copied() else {
        r.g.fail("client3 died before it held any chunk");
    };
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(r.out(3, victim_file).1)
            .expect("open the .part");
        f.write_all_at(b"corrupted while the client was down", bad * CHUNK + 100)
            .expect("corrupt a chunk");
        good[victim].remove(0);
    }
    let total = 2 * chunks as usize;
    let held: usize = good.iter().map(Vec::len).sum();
    assert!(
        held + 1 < total,
        "client3 held {held} of {total} chunks when killed: it must die halfway"
    );

    signal(&mut r.g, c[0], "-CONT");
    signal(&mut r.g, c[1], "-CONT");
    let again = r.spawn_client(3);
    for (i, what) in [
        (c[0], "client1"),
        (c[1], "client2"),
        (again, "client3 again"),
    ] {
        let st =
            r.g.wait_exit(i, deadline, "the run did not complete after the restart");
        assert!(st.success(), "{what} exited {st}: {}", r.stderr(i));
    }
    let st =
        r.g.wait_exit(r.server, deadline, "the server did not finish");
    assert!(st.success(), "server exited {st}: {}", r.stderr(r.server));

    // The second life of client3: it held what was intact, fetched exactly the rest.
    let log = r.log("client3");
    for o in 1..=2 {
        let name = r.name(o);
        let had = good[o - 1].len() as u64;
        assert_eq!(
            field(&log, "event=resume_checked", &name, "held"),
            Some(had),
            "client3's check of {name} found the intact chunks, no more, no fewer:\n{log}"
        );
        let mut got = received(&log, &name);
        got.sort_unstable();
        let want: Vec<u64> = (0..chunks).filter(|i| !good[o - 1].contains(i)).collect();
        assert_eq!(
            got, want,
            "client3 fetched exactly the chunks of {name} it lacked"
        );
    }
    assert!(
        received(&log, &r.name(victim_file)).contains(&bad),
        "the corrupted chunk {bad} was fetched again"
    );
    let server_log = r.log("server");
    assert!(server_log.contains("event=client_rejoined client=client3"));
    for name in ["client1", "client2"] {
        assert!(
            r.log(name).contains("event=peer_rejoined peer=client3"),
            "{name} heard that client3 came back"
        );
    }
    // Every file, byte for byte, at every client.
    for k in 1..=3 {
        for o in (1..=3).filter(|&o| o != k) {
            let got = fs::read(r.out(k, o).0).expect("output");
            assert!(got == fs::read(&r.srcs[o - 1]).expect("source"));
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(r.dir.join("summary.json")).expect("summary"))
            .expect("JSON");
    assert_eq!(v["clients"][2]["complete"], true, "{v}");
    r.g.kill_all();
}

/// The owner of a large file is killed as the run starts (its peers frozen with SIGSTOP at that
/// moment, so that little of its file can have left it) and never comes back. The others
/// complete every file that still exists among them, and, after the server's rejoin wait, the
/// run ends: the server exits 1 naming the lost client, and each other client exits
/// 1 with a last line naming the file it cannot complete and how many chunks it lacks (exactly
/// those its log never received). That file stays a `.part`, never under its final name.
#[test]
fn a_file_nobody_can_complete_is_reported_and_never_presented_as_complete() {
    let (mut r, c) = start(
        "owner-lost",
        &[4 * CHUNK + 3, 4 * CHUNK + 5, 256 * CHUNK],
        &["--rejoin-wait", "1"],
    );
    let deadline = r.deadline;
    for name in ["client1", "client2"] {
        while !r.log(name).contains("event=client_list_received") {
            if Instant::now() >= deadline {
                r.g.fail("the run did not start");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    signal(&mut r.g, c[0], "-STOP");
    signal(&mut r.g, c[1], "-STOP");
    signal(&mut r.g, c[2], "-KILL");
    r.g.wait_exit(c[2], deadline, "client3 did not die");
    signal(&mut r.g, c[0], "-CONT");
    signal(&mut r.g, c[1], "-CONT");

    let st =
        r.g.wait_exit(r.server, deadline, "the server did not end the run");
    assert_eq!(st.code(), Some(1), "server: {}", r.stderr(r.server));
    assert!(
        r.log("server")
            .lines()
            .any(|l| l.contains("event=run_failed") && l.contains("client3(lost)")),
        "the server names the lost client:\n{}",
        r.log("server")
    );
    let lost = r.name(3);
    for k in 1..=2 {
        let name = format!("client{k}");
        let st = r.g.wait_exit(c[k - 1], deadline, "a client did not exit");
        let err = r.stderr(c[k - 1]);
        assert_eq!(st.code(), Some(1), "{name}: {err}");
        // Warnings about the lost peer come first; the reason for the exit is the last line.
        let last = err.lines().last().unwrap_or_default();
        let got = received(&r.log(&name), &lost).len();
        let want = format!("{lost} lacks {} of 256 chunks (", 256 - got);
        assert!(
            last.starts_with("p2pshare: the run ended before") && last.contains(&want),
            "{name}: {last:?} lacks {want:?}"
        );
        let (done, part) = r.out(k, 3);
        assert!(!done.exists(), "{name} presents {lost} as complete");
        assert!(part.exists(), "{name} keeps what it has of {lost}");
        // The file that still existed among the living arrived intact.
        let other = 3 - k;
        let copy = fs::read(r.out(k, other).0).expect("the other living client's file");
        assert!(copy == fs::read(&r.srcs[other - 1]).expect("source"));
    }
    r.g.kill_all();
}
