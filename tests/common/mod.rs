//! Harness for the end-to-end tests in `tests/e2e.rs` and the others: per-test temporary
//! directories, running the real `p2pshare` binary with a deadline (children are killed and the
//! test fails when it passes), starting a server plus N clients on 127.0.0.1 or each in a network
//! namespace of its own (`tests/netns.rs`), and checking what a finished run left behind: the
//! downloaded files, the summary JSON and the per-node logs.
//!
//! Every child's stdout and stderr go to files in the test's directory, so no pipe can fill up;
//! a failed test keeps its directory (the path is in the panic message) for a post-mortem.
//!
//! Each test crate uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use md5::{Digest, Md5};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The chunk size the server uses by default (256 KiB).
pub const CHUNK: u64 = 262_144;
/// How long one whole swarm run (server plus all clients) may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a single short command (`gen`, a rejected command line) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// How often running children are polled.
const POLL: Duration = Duration::from_millis(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2pshare")
}

/// A fresh directory under the system temp dir, unique per process and test. It is removed on
/// drop unless the test is panicking, so a failing test leaves its logs to look at.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("p2pshare-e2e-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the test directory");
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: test failed; its files are kept in {}",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One child process, its label, and the files its stdout and stderr go to.
pub struct Proc {
    pub label: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub status: Option<ExitStatus>,
}

/// Children that belong to one test. Whatever is still running when the group is dropped (a
/// test that failed half-way) is killed and reaped.
#[derive(Default)]
pub struct Group {
    pub procs: Vec<Proc>,
}

impl Group {
    /// Spawns the binary with `args`, working directory `cwd`, output into `cwd/LABEL.stdout`
    /// and `cwd/LABEL.stderr`. Returns the index of the new process.
    pub fn spawn(&mut self, label: &str, cwd: &Path, args: &[String]) -> usize {
        self.spawn_program(label, cwd, bin(), args)
    }

    /// Like `spawn`, inside network namespace `netns` if given (`ip netns exec` execs the
    /// binary, so the child is the node itself), with extra environment variables.
    pub fn spawn_in(
        &mut self,
        netns: Option<&str>,
        label: &str,
        cwd: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> usize {
        match netns {
            None => self.spawn_with(label, cwd, bin(), args, env),
            Some(ns) => {
                let mut a = vec!["netns".to_string(), "exec".into(), ns.into(), bin().into()];
                a.extend_from_slice(args);
                self.spawn_with(label, cwd, "ip", &a, env)
            }
        }
    }

    /// [`Group::spawn`] with extra environment variables.
    pub fn spawn_env(
        &mut self,
        label: &str,
        cwd: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> usize {
        self.spawn_with(label, cwd, bin(), args, env)
    }

    /// Like `spawn`, for another program (a wrapper such as `unshare` that runs the binary).
    pub fn spawn_program(
        &mut self,
        label: &str,
        cwd: &Path,
        program: &str,
        args: &[String],
    ) -> usize {
        self.spawn_with(label, cwd, program, args, &[])
    }

    fn spawn_with(
        &mut self,
        label: &str,
        cwd: &Path,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> usize {
        let stdout = cwd.join(format!("{label}.stdout"));
        let stderr = cwd.join(format!("{label}.stderr"));
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env_remove("P2PSHARE_LOG")
            .env_remove("RUST_BACKTRACE")
            .env_remove("P2PSHARE_TEST_CLOCK_SKEW_MS")
            .env_remove("P2PSHARE_TOKEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        self.procs.push(Proc {
            label: label.to_string(),
            child,
            stdout,
            stderr,
            status: None,
        });
        self.procs.len() - 1
    }

    /// Waits for process `i` to exit; fails the test (killing the group) with `what` if it is
    /// still running at `deadline`.
    pub fn wait_exit(&mut self, i: usize, deadline: Instant, what: &str) -> ExitStatus {
        loop {
            if let Some(st) = self.poll(i) {
                return st;
            }
            if Instant::now() >= deadline {
                self.fail(what);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls process `i`; `Some(status)` once it has exited.
    pub fn poll(&mut self, i: usize) -> Option<ExitStatus> {
        let p = &mut self.procs[i];
        if p.status.is_none() {
            p.status = p.child.try_wait().expect("try_wait");
        }
        p.status
    }

    /// Kills every child still running and reaps them all.
    pub fn kill_all(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                let _ = p.child.kill();
                p.status = p.child.wait().ok();
            }
        }
    }

    /// Kills everything and fails the test with `why` and every child's stderr.
    pub fn fail(&mut self, why: &str) -> ! {
        self.kill_all();
        let mut msg = format!("{why}\n");
        for p in &self.procs {
            let err = fs::read_to_string(&p.stderr).unwrap_or_default();
            msg.push_str(&format!(
                "--- {} (status {:?}) stderr:\n{}\n",
                p.label,
                p.status,
                tail(&err, 2000)
            ));
        }
        panic!("{msg}");
    }

    /// Waits for every child to exit; kills them all and fails the test if `deadline` passes.
    pub fn wait_all(&mut self, deadline: Instant, what: &str) {
        loop {
            let mut running = Vec::new();
            for i in 0..self.procs.len() {
                if self.poll(i).is_none() {
                    running.push(self.procs[i].label.clone());
                }
            }
            if running.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "{what}: still running at the deadline: {}",
                    running.join(", ")
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What a finished short command did.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs the binary once with `args` in `cwd` (output files named after `label`), bounded by
/// `timeout`.
pub fn run_cmd(cwd: &Path, label: &str, args: &[String], timeout: Duration) -> Outcome {
    run_program(cwd, label, bin(), args, timeout)
}

/// Runs any program once, as `run_cmd` runs the binary.
pub fn run_program(
    cwd: &Path,
    label: &str,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut g = Group::default();
    let i = g.spawn_program(label, cwd, program, args);
    g.wait_all(start + timeout, label);
    let status = g.poll(i).expect("exited");
    let p = &g.procs[i];
    Outcome {
        status,
        stdout: fs::read_to_string(&p.stdout).unwrap_or_default(),
        stderr: fs::read_to_string(&p.stderr).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub fn path_arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

/// `p2pshare gen --size SIZE --seed SEED OUT`; checks it succeeded and wrote `size` bytes.
pub fn gen_file(dir: &Path, out: &Path, size: u64, seed: u64) {
    let label = format!(
        "gen-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    );
    let o = run_cmd(
        dir,
        &label,
        &[
            "gen".into(),
            "--size".into(),
            size.to_string(),
            "--seed".into(),
            seed.to_string(),
            path_arg(out),
        ],
        CMD_TIMEOUT,
    );
    assert!(
        o.status.success(),
        "gen failed: {:?} {}",
        o.status,
        o.stderr
    );
    let len = fs::metadata(out).expect("gen output exists").len();
    assert_eq!(len, size, "gen wrote {len} bytes, not {size}");
}

pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn chunks_of(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// A source file that one client shares.
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub owner: String,
}

/// One client of a run.
pub struct ClientRun {
    pub name: String,
    /// The IP address it listens on and advertises.
    pub ip: String,
    pub out_dir: PathBuf,
    /// The file it shares, if any.
    pub owns: Option<SourceFile>,
}

/// A finished run: everything exited 0 within the deadline.
pub struct SwarmRun {
    pub clients: Vec<ClientRun>,
    pub log_dir: PathBuf,
    pub summary: PathBuf,
    pub elapsed: Duration,
}

impl SwarmRun {
    pub fn files(&self) -> impl Iterator<Item = &SourceFile> {
        self.clients.iter().filter_map(|c| c.owns.as_ref())
    }

    /// The files client `c` has to download (all but its own).
    pub fn wanted_by<'a>(&'a self, c: &'a ClientRun) -> impl Iterator<Item = &'a SourceFile> {
        self.files().filter(move |f| f.owner != c.name)
    }
}

/// Where the nodes of a run live.
pub enum Hosts {
    /// Every node on 127.0.0.1.
    Loopback,
    /// Each node in a network namespace of its own: entry 0 (namespace, IP address) runs the
    /// server, entry K client K.
    Netns(Vec<(String, String)>),
}

impl Hosts {
    /// The namespace and IP address of host `k` (0: the server, K: client K).
    fn host(&self, k: usize) -> (Option<&str>, &str) {
        match self {
            Hosts::Loopback => (None, "127.0.0.1"),
            Hosts::Netns(h) => (Some(h[k].0.as_str()), h[k].1.as_str()),
        }
    }
}

/// Parses `server: listening on IP:PORT, waiting for N clients` out of the server's stderr so
/// far, and checks that IP is `ip`.
fn listening_addr(stderr: &str, clients: usize, ip: &str) -> Option<String> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("server: listening on "))?;
    let rest = line.strip_prefix("server: listening on ")?;
    let (addr, tail) = rest.split_once(", ")?;
    assert_eq!(
        tail,
        format!("waiting for {clients} clients"),
        "server's listening line: {line:?}"
    );
    assert!(
        addr.starts_with(&format!("{ip}:")),
        "server listens on {addr}, not on {ip}"
    );
    Some(addr.to_string())
}

/// Starts a server for `clients` clients on 127.0.0.1 with port 0, logging to `log_dir`, and
/// waits for it to report its listening address. Returns the process index and the address.
pub fn start_server(
    g: &mut Group,
    dir: &TestDir,
    clients: usize,
    log_dir: &Path,
    summary: &Path,
    deadline: Instant,
) -> (usize, String) {
    start_server_on(
        g,
        dir,
        clients,
        log_dir,
        summary,
        deadline,
        &Hosts::Loopback,
        &[],
    )
}

/// As `start_server`, on host 0 of `hosts`, with extra server arguments.
#[allow(clippy::too_many_arguments)]
pub fn start_server_on(
    g: &mut Group,
    dir: &TestDir,
    clients: usize,
    log_dir: &Path,
    summary: &Path,
    deadline: Instant,
    hosts: &Hosts,
    extra: &[String],
) -> (usize, String) {
    let (netns, ip) = hosts.host(0);
    let mut a: Vec<String> = vec![
        "server".into(),
        "--listen".into(),
        format!("{ip}:0"),
        "--clients".into(),
        clients.to_string(),
        "--log-dir".into(),
        path_arg(log_dir),
        "--summary".into(),
        path_arg(summary),
    ];
    a.extend_from_slice(extra);
    let server = g.spawn_in(netns, "server", &dir.path, &a, &[]);
    loop {
        let err = fs::read_to_string(&g.procs[server].stderr).unwrap_or_default();
        if let Some(a) = listening_addr(&err, clients, ip) {
            return (server, a);
        }
        if let Some(st) = g.poll(server) {
            g.fail(&format!("the server exited ({st}) before listening"));
        }
        if Instant::now() >= deadline {
            g.fail("the server did not report its listening address in time");
        }
        std::thread::sleep(POLL);
    }
}

/// The command line of a client named `name` of the server at `addr`, listening on 127.0.0.1,
/// sharing `file` if given, downloading into `out` and logging into `log_dir`.
pub fn client_cmd(
    addr: &str,
    name: &str,
    file: Option<&Path>,
    out: &Path,
    log_dir: &Path,
) -> Vec<String> {
    let mut a = args(&[
        "client",
        "--server",
        addr,
        "--listen",
        "127.0.0.1:0",
        "--name",
        name,
        "--out-dir",
        &path_arg(out),
        "--log-dir",
        &path_arg(log_dir),
    ]);
    if let Some(f) = file {
        a.push("--file".into());
        a.push(path_arg(f));
    }
    a
}

/// Starts a server and one client per entry of `sizes` (`Some(size)`: it shares a generated
/// file of that many bytes; `None`: it shares nothing), all on 127.0.0.1 with port 0, and waits
/// until every process has exited 0. Client K (from 1) is named `clientK`, its file is
/// `cK-data.bin` generated with seed `seed_base + K`.
pub fn run_swarm(dir: &TestDir, sizes: &[Option<u64>], seed_base: u64) -> SwarmRun {
    run_swarm_args(dir, sizes, seed_base, &[])
}

/// As `run_swarm`, with `client_extra` added to every client's arguments.
pub fn run_swarm_args(
    dir: &TestDir,
    sizes: &[Option<u64>],
    seed_base: u64,
    client_extra: &[String],
) -> SwarmRun {
    run_swarm_full(
        dir,
        sizes,
        seed_base,
        &Hosts::Loopback,
        RUN_TIMEOUT,
        &[],
        &|_| Vec::new(),
        client_extra,
    )
}

/// As `run_swarm`, with the nodes on `hosts` (in a namespace, a client listens on its host's
/// address and advertises it) and the whole run bounded by `timeout`.
pub fn run_swarm_on(
    dir: &TestDir,
    sizes: &[Option<u64>],
    seed_base: u64,
    hosts: &Hosts,
    timeout: Duration,
) -> SwarmRun {
    run_swarm_full(
        dir,
        sizes,
        seed_base,
        hosts,
        timeout,
        &[],
        &|_| Vec::new(),
        &[],
    )
}

/// [`run_swarm`] with extra server arguments, and extra environment variables for client K
/// (from 1) given by `client_env(K)`.
pub fn run_swarm_with(
    dir: &TestDir,
    sizes: &[Option<u64>],
    seed_base: u64,
    server_extra: &[String],
    client_env: &dyn Fn(usize) -> Vec<(String, String)>,
) -> SwarmRun {
    run_swarm_full(
        dir,
        sizes,
        seed_base,
        &Hosts::Loopback,
        RUN_TIMEOUT,
        server_extra,
        client_env,
        &[],
    )
}

/// The swarm runs above, with every option.
#[allow(clippy::too_many_arguments)]
fn run_swarm_full(
    dir: &TestDir,
    sizes: &[Option<u64>],
    seed_base: u64,
    hosts: &Hosts,
    timeout: Duration,
    server_extra: &[String],
    client_env: &dyn Fn(usize) -> Vec<(String, String)>,
    client_extra: &[String],
) -> SwarmRun {
    let start = Instant::now();
    let deadline = start + timeout;
    let src = dir.join("src");
    let log_dir = dir.join("logs");
    let summary = dir.join("summary.json");
    fs::create_dir_all(&src).expect("create src dir");

    let mut clients = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("client{}", i + 1);
        let owns = size.map(|size| {
            let fname = format!("c{}-data.bin", i + 1);
            let path = src.join(&fname);
            gen_file(&dir.path, &path, size, seed_base + i as u64 + 1);
            SourceFile {
                name: fname,
                path,
                size,
                owner: name.clone(),
            }
        });
        clients.push(ClientRun {
            out_dir: dir.join(&format!("out/{name}")),
            ip: hosts.host(i + 1).1.to_string(),
            name,
            owns,
        });
    }

    let mut g = Group::default();
    let (_, addr) = start_server_on(
        &mut g,
        dir,
        sizes.len(),
        &log_dir,
        &summary,
        deadline,
        hosts,
        server_extra,
    );

    for (k, c) in clients.iter().enumerate() {
        let file = c.owns.as_ref().map(|f| f.path.as_path());
        let mut a = client_cmd(&addr, &c.name, file, &c.out_dir, &log_dir);
        a.extend_from_slice(client_extra);
        let (netns, _) = hosts.host(k + 1);
        if netns.is_some() {
            let listen = a.iter().position(|x| x == "--listen").expect("--listen") + 1;
            a[listen] = format!("{}:0", c.ip);
            a.push("--advertise".into());
            a.push(c.ip.clone());
        }
        g.spawn_in(netns, &c.name, &dir.path, &a, &client_env(k + 1));
    }
    g.wait_all(deadline, "swarm run");
    let bad: Vec<String> = g
        .procs
        .iter()
        .filter(|p| !p.status.is_some_and(|s| s.success()))
        .map(|p| format!("{} {:?}", p.label, p.status))
        .collect();
    if !bad.is_empty() {
        g.fail(&format!("processes did not exit 0: {}", bad.join(", ")));
    }
    SwarmRun {
        clients,
        log_dir,
        summary,
        elapsed: start.elapsed(),
    }
}

/// Every client's out dir holds exactly the files it did not own, byte-identical to their
/// sources, and no `.part` file is left anywhere in the test directory.
pub fn check_outputs(dir: &TestDir, run: &SwarmRun) {
    let sources: BTreeMap<&str, Vec<u8>> = run
        .files()
        .map(|f| (f.name.as_str(), fs::read(&f.path).expect("read source")))
        .collect();
    for c in &run.clients {
        let want: BTreeSet<String> = run.wanted_by(c).map(|f| f.name.clone()).collect();
        let have: BTreeSet<String> = match fs::read_dir(&c.out_dir) {
            Ok(rd) => rd
                .map(|e| e.expect("dir entry").file_name().into_string().unwrap())
                .collect(),
            Err(e) if want.is_empty() => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                BTreeSet::new()
            }
            Err(e) => panic!("{}: cannot list {}: {e}", c.name, c.out_dir.display()),
        };
        assert_eq!(have, want, "{}: files in {}", c.name, c.out_dir.display());
        for f in run.wanted_by(c) {
            let got = fs::read(c.out_dir.join(&f.name)).expect("read output");
            let src = &sources[f.name.as_str()];
            assert_eq!(got.len(), src.len(), "{}: size of {}", c.name, f.name);
            if let Some(at) = got.iter().zip(src.iter()).position(|(a, b)| a != b) {
                panic!(
                    "{}: {} differs from its source at byte {at}",
                    c.name, f.name
                );
            }
        }
    }
    let mut stack = vec![dir.path.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    p.extension().is_none_or(|x| x != "part"),
                    "left over: {}",
                    p.display()
                );
            }
        }
    }
}

fn num(v: &Value, key: &str, ctx: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{ctx}: {key} is not a number: {}", v[key]))
}

fn uint(v: &Value, key: &str, ctx: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{ctx}: {key} is not an unsigned integer: {}", v[key]))
}

fn string<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: {key} is not a string: {}", v[key]))
}

/// The server's summary JSON describes the run: every client complete with its numbers, every
/// file with its owner, size, chunk count and MD5.
pub fn check_summary(run: &SwarmRun) {
    let text = fs::read_to_string(&run.summary).expect("the summary file exists");
    let s: Value = serde_json::from_str(&text).expect("the summary is valid JSON");
    assert_eq!(uint(&s, "chunk_size", "summary"), CHUNK);
    assert!(num(&s, "total_ms", "summary") >= 0.0);
    assert!(num(&s, "end_ms", "summary") >= 0.0);

    let clients = s["clients"].as_array().expect("clients is an array");
    assert_eq!(clients.len(), run.clients.len(), "number of clients");
    let mut seen = BTreeSet::new();
    for js in clients {
        let name = string(js, "name", "client");
        let ctx = format!("summary client {name}");
        let c = run
            .clients
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{ctx}: no such client in the run"));
        assert!(seen.insert(name.to_string()), "{ctx}: listed twice");
        assert_eq!(js["complete"], Value::Bool(true), "{ctx}: complete");
        assert!(num(js, "elapsed_ms", &ctx) >= 0.0, "{ctx}: elapsed_ms");
        assert!(num(js, "done_ms", &ctx) >= num(js, "connect_ms", &ctx));
        let addr = string(js, "addr", &ctx);
        assert!(
            addr.starts_with(&format!("{}:", c.ip)),
            "{ctx}: addr {addr}"
        );
        let want_recv: u64 = run.wanted_by(c).map(|f| f.size).sum();
        assert_eq!(
            uint(js, "bytes_received", &ctx),
            want_recv,
            "{ctx}: bytes_received"
        );
        uint(js, "bytes_sent", &ctx);
        let files: Vec<&str> = js["files"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: files is not an array"))
            .iter()
            .map(|f| f.as_str().expect("file name string"))
            .collect();
        let owned: Vec<&str> = c.owns.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, owned, "{ctx}: files");
        assert_eq!(
            uint(js, "files_completed", &ctx),
            run.wanted_by(c).count() as u64,
            "{ctx}: files_completed"
        );
    }

    let files = s["files"].as_array().expect("files is an array");
    assert_eq!(files.len(), run.files().count(), "number of files");
    for f in run.files() {
        let ctx = format!("summary file {}", f.name);
        let js = files
            .iter()
            .find(|j| j["name"] == Value::String(f.name.clone()))
            .unwrap_or_else(|| panic!("{ctx}: missing"));
        assert_eq!(string(js, "owner", &ctx), f.owner, "{ctx}: owner");
        assert_eq!(uint(js, "size", &ctx), f.size, "{ctx}: size");
        assert_eq!(uint(js, "chunks", &ctx), chunks_of(f.size), "{ctx}: chunks");
        let md5 = md5_hex(&fs::read(&f.path).expect("read source"));
        assert_eq!(string(js, "md5", &ctx), md5, "{ctx}: md5");
    }
}

/// Whether `line` starts with the System Clock stamp, e.g. `[  1523.417 ms] NODE `.
pub fn has_clock_stamp(line: &str, node: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((num, after)) = rest.split_once(" ms] ") else {
        return false;
    };
    let Some((int, frac)) = num.trim_start_matches(' ').split_once('.') else {
        return false;
    };
    num.len() >= 10
        && !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() == 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && after.starts_with(&format!("{node} "))
}

/// The value of `key=` on a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn read_log(run: &SwarmRun, node: &str) -> String {
    let p = run.log_dir.join(format!("{node}.log"));
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(!text.is_empty(), "{} is empty", p.display());
    for line in text.lines() {
        assert!(
            has_clock_stamp(line, node),
            "{node}.log line without the clock stamp: {line:?}"
        );
    }
    text
}

fn bytes_field(line: &str, what: &str) -> u64 {
    field(line, "bytes")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{what} has no bytes=N: {line:?}"))
}

/// What client `node` says it queued for its peers, per file: its `file_uploaded` lines, each
/// file at most once.
pub fn uploaded_by_file(run: &SwarmRun, node: &str) -> BTreeMap<String, u64> {
    let mut up = BTreeMap::new();
    for line in read_log(run, node).lines() {
        if line.contains(" event=file_uploaded ") {
            let file = field(line, "file").expect("file_uploaded has file=");
            let bytes = bytes_field(line, "file_uploaded");
            let again = up.insert(file.to_string(), bytes);
            assert!(
                again.is_none(),
                "{node}: two file_uploaded lines for {file}"
            );
        }
    }
    up
}

/// Verified bytes each (sender, file) delivered, summed over the `chunk_received` lines of
/// every client.
pub fn delivered(run: &SwarmRun) -> BTreeMap<(String, String), u64> {
    let mut d = BTreeMap::new();
    for c in &run.clients {
        for line in read_log(run, &c.name).lines() {
            if line.contains(" event=chunk_received ") {
                let from = field(line, "from").expect("chunk_received has from=");
                let file = field(line, "file").expect("chunk_received has file=");
                *d.entry((from.to_string(), file.to_string())).or_default() +=
                    bytes_field(line, "chunk_received");
            }
        }
    }
    d
}

/// The logs exist and are stamped; each client logged exactly one `chunk_received` per chunk
/// it needed, one `file_complete` per file it downloaded, and one `file_uploaded` per file of
/// the run, with at least the bytes of that file its peers received from it.
pub fn check_logs(run: &SwarmRun) {
    let server = read_log(run, "server");
    assert!(
        server.lines().any(|l| l.contains("event=server_start")),
        "server.log has no server_start"
    );
    assert!(
        server.lines().any(|l| l.contains("event=run_finished")),
        "server.log has no run_finished"
    );
    for c in &run.clients {
        let log = read_log(run, &c.name);
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut complete: BTreeMap<String, usize> = BTreeMap::new();
        for line in log.lines() {
            if line.contains(" event=chunk_received ") {
                let file = field(line, "file").expect("chunk_received has file=");
                let index: u64 = field(line, "index")
                    .and_then(|i| i.parse().ok())
                    .expect("chunk_received has index=N");
                got.entry(file.to_string()).or_default().push(index);
            } else if line.contains(" event=file_complete ") {
                let file = field(line, "file").expect("file_complete has file=");
                *complete.entry(file.to_string()).or_default() += 1;
            }
        }
        // An empty file has no chunk to receive (and no line).
        let want: BTreeMap<String, Vec<u64>> = run
            .wanted_by(c)
            .filter(|f| chunks_of(f.size) > 0)
            .map(|f| (f.name.clone(), (0..chunks_of(f.size)).collect()))
            .collect();
        for idx in got.values_mut() {
            idx.sort_unstable();
        }
        assert_eq!(
            got, want,
            "{}: chunk_received lines (file -> chunk indexes)",
            c.name
        );
        let want_complete: BTreeMap<String, usize> =
            run.wanted_by(c).map(|f| (f.name.clone(), 1)).collect();
        assert_eq!(complete, want_complete, "{}: file_complete lines", c.name);
    }
    let delivered = delivered(run);
    for c in &run.clients {
        let up = uploaded_by_file(run, &c.name);
        let files: BTreeSet<&str> = run.files().map(|f| f.name.as_str()).collect();
        let logged: BTreeSet<&str> = up.keys().map(|f| f.as_str()).collect();
        assert_eq!(logged, files, "{}: files in file_uploaded lines", c.name);
        for (file, bytes) in &up {
            let got = delivered
                .get(&(c.name.clone(), file.clone()))
                .copied()
                .unwrap_or(0);
            assert!(
                *bytes >= got,
                "{}: file_uploaded says {bytes} bytes of {file}, but peers received {got} from it",
                c.name
            );
        }
    }
}

/// All the checks on a finished run.
pub fn check_run(dir: &TestDir, run: &SwarmRun) {
    check_outputs(dir, run);
    check_summary(run);
    check_logs(run);
}

/// Reads one frame (`u32` length of kind and body, kind, body) and decodes it.
pub fn read_message(s: &mut std::net::TcpStream) -> p2pshare::codec::Message {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("a frame header");
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    assert!(
        (1..=p2pshare::codec::MAX_CONTROL_FRAME as usize).contains(&len),
        "frame of {len} bytes"
    );
    let mut body = vec![0u8; len - 1];
    s.read_exact(&mut body).expect("a frame body");
    p2pshare::codec::decode_body(head[4], &body).expect("a frame the codec accepts")
}

/// Polls `path` until a line contains `needle`, or fails the test at `deadline`.
pub fn wait_for_line(g: &mut Group, path: &std::path::Path, needle: &str, deadline: Instant) {
    while !fs::read_to_string(path).is_ok_and(|l| l.contains(needle)) {
        if Instant::now() >= deadline {
            g.fail(&format!("no line with {needle:?} in {}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A member of a run played by the test itself: it joined through the server with the real
/// join handshake (with `token`, if the run has one) and holds its pair keys, so it can open
/// peer links to the real clients. Its server connection stays open (dropping it would make
/// the server count the member as lost).
pub struct FakeMember {
    pub id: p2pshare::ids::PeerId,
    pub member: p2pshare::auth::ClientMembership,
    pub server: std::net::TcpStream,
    pub peers: Vec<p2pshare::codec::PeerInfo>,
    pub files: Vec<p2pshare::codec::FileInfo>,
}

impl FakeMember {
    /// The pair key with peer `p`.
    pub fn key(&self, p: p2pshare::ids::PeerId) -> p2pshare::crypto::Key {
        self.member.peer_key(p).expect("a pair key for that peer")
    }

    /// The id of the (first) file that peer `p` shares.
    pub fn file_of(&self, p: p2pshare::ids::PeerId) -> p2pshare::ids::FileId {
        let f = self.files.iter().find(|f| f.owner == p);
        f.expect("a file of that peer").id
    }

    /// The peer id and address of the client named `name`.
    pub fn peer(&self, name: &str) -> (p2pshare::ids::PeerId, String) {
        let p = self
            .peers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the start message"));
        (p.id, p.addr.clone())
    }
}

/// Joins the run at `addr` as `name` (sharing no file) and reads until the start message.
pub fn join_run(addr: &str, name: &str, token: Option<&str>) -> FakeMember {
    let mut m = join(addr, name, token);
    m.wait_start();
    m
}

impl FakeMember {
    /// Reads the server's messages until the start message (the run's clients and files).
    pub fn wait_start(&mut self) {
        loop {
            if let p2pshare::codec::Message::Start { peers, files } = read_message(&mut self.server)
            {
                self.peers = peers;
                self.files = files;
                return;
            }
        }
    }
}

/// Joins the run at `addr` as `name` (sharing no file) and reads until the welcome.
pub fn join(addr: &str, name: &str, token: Option<&str>) -> FakeMember {
    use p2pshare::auth::{ClientMembership, Token};
    use p2pshare::codec::{Message, VERSION, encode};
    use std::io::Write;
    let token = token.map(|t| Token::new(t).expect("a token"));
    let seed = p2pshare::crypto::os_seed().expect("entropy");
    let mut member = ClientMembership::new(token, seed);
    let hello = Message::Hello {
        version: VERSION,
        token: member.has_token(),
        listen: "127.0.0.1:1".into(),
        name: name.into(),
        files: vec![],
    };
    member.set_hello(&hello);
    let mut server = std::net::TcpStream::connect(addr).expect("connect to the server");
    server
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    server.write_all(&encode(&hello)).expect("hello");
    loop {
        match read_message(&mut server) {
            Message::Challenge { nonce } => {
                let auth = member.on_challenge(nonce).expect("an auth");
                server.write_all(&encode(&auth)).expect("auth");
            }
            Message::Member { proof, keys } => member.on_member(proof, keys).expect("member"),
            Message::Welcome { id, .. } => {
                return FakeMember {
                    id,
                    member,
                    server,
                    peers: Vec::new(),
                    files: Vec::new(),
                };
            }
            Message::Refuse { reason } => panic!("{name} was refused: {reason}"),
            _ => {}
        }
    }
}

/// Dials `addr` as member `me` (holding `key`, the pair key with `peer`) and completes the peer
/// handshake; fails the test if the other end does not prove its membership.
pub fn peer_dial(
    addr: &str,
    me: p2pshare::ids::PeerId,
    peer: p2pshare::ids::PeerId,
    key: p2pshare::crypto::Key,
) -> std::net::TcpStream {
    use p2pshare::auth::{HsStep, PeerHandshake};
    use p2pshare::codec::encode;
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("dial a real client");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let nonce = p2pshare::crypto::os_seed().expect("entropy")[..16]
        .try_into()
        .expect("16 bytes");
    let (mut hs, hello) = PeerHandshake::dial(me, peer, nonce);
    s.write_all(&encode(&hello)).expect("peer hello");
    loop {
        let m = read_message(&mut s);
        match hs
            .on_message(me, m, |_| Ok(key))
            .expect("the peer proves itself")
        {
            HsStep::Wait(_) => {}
            HsStep::Established(_, reply) => {
                for m in reply {
                    s.write_all(&encode(&m)).expect("peer auth");
                }
                return s;
            }
        }
    }
}

/// Polls `path` until `needle` occurs at least `n` times (bounded: fails after 20 s).
pub fn wait_for_count(path: &std::path::Path, needle: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while fs::read_to_string(path).map_or(0, |l| l.matches(needle).count()) < n {
        assert!(
            Instant::now() < until,
            "fewer than {n} lines with {needle:?} in {}",
            path.display()
        );
        std::thread::sleep(POLL);
    }
}
