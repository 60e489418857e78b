//! End-to-end tests of the `p2pshare` binary: whole runs of a server and several clients on
//! 127.0.0.1 (outputs, summary JSON and logs checked), and the command-line errors that must
//! end in exit code 2 with one line on stderr. The harness is in `tests/common/mod.rs`.

mod common;

use common::*;
use p2pshare::timeline::{Entry, parse_line};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

const MIB: u64 = 1 << 20;

#[test]
fn four_clients_share_everything() {
    let dir = TestDir::new("four_clients_share_everything");
    let sizes = [
        Some(3 * MIB + 12_345),
        Some(2 * MIB + 777),
        Some(MIB + 262_143),
        Some(100_000),
    ];
    let run = run_swarm(&dir, &sizes, 100);
    check_run(&dir, &run);
    eprintln!("four clients: {:?}", run.elapsed);
}

/// `--no-fsync`: the same files, byte-identical, renamed without waiting for the disk.
#[test]
fn clients_that_do_not_wait_for_the_disk_share_everything() {
    let dir = TestDir::new("no_fsync");
    let sizes = [Some(2 * MIB + 4_321), Some(MIB + 65), Some(262_144)];
    let run = run_swarm_args(&dir, &sizes, 400, &["--no-fsync".to_string()]);
    check_run(&dir, &run);
}

#[test]
fn eight_clients() {
    let dir = TestDir::new("eight_clients");
    let sizes: Vec<Option<u64>> = (0..8u64)
        .map(|k| Some(MIB + 1 + k * 131_071 + (k % 3) * 4_099))
        .collect();
    for s in sizes.iter().flatten() {
        assert_ne!(s % CHUNK, 0);
    }
    let run = run_swarm(&dir, &sizes, 200);
    check_run(&dir, &run);
    eprintln!("eight clients: {:?}", run.elapsed);
}

/// An empty file is complete as soon as its output exists (created off the reactor): it is
/// renamed to its final name, empty, at every other client.
#[test]
fn an_empty_file_arrives_too() {
    let dir = TestDir::new("an_empty_file");
    let sizes = [Some(MIB + 5), Some(0), Some(300_001)];
    let run = run_swarm(&dir, &sizes, 500);
    check_run(&dir, &run);
}

#[test]
fn client_without_files() {
    let dir = TestDir::new("client_without_files");
    let sizes = [Some(MIB + 54_321), None, Some(2 * MIB + 99), Some(300_001)];
    let run = run_swarm(&dir, &sizes, 300);
    check_run(&dir, &run);
    let empty = &run.clients[1];
    assert!(empty.owns.is_none());
    assert_eq!(run.wanted_by(empty).count(), 3);
    eprintln!("client without files: {:?}", run.elapsed);
}

/// Runs a command line that must be refused: exit code 2, exactly one line on stderr that
/// contains every one of `needles`, no panic.
fn expect_usage_error(dir: &TestDir, a: &[String], needles: &[&str]) -> Outcome {
    expect_usage_error_of(dir, common::bin(), a, needles)
}

/// As `expect_usage_error`, for `program` run with `a` (a wrapper that runs the binary).
fn expect_usage_error_of(dir: &TestDir, program: &str, a: &[String], needles: &[&str]) -> Outcome {
    let o = common::run_program(&dir.path, "cmd", program, a, CMD_TIMEOUT);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        o.status.code(),
        Some(2),
        "exit status of {a:?}; stderr: {}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked") && !o.stderr.contains("RUST_BACKTRACE"),
        "panic text on stderr of {a:?}: {}",
        o.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "stderr of {a:?} should be one line: {:?}",
        o.stderr
    );
    assert_eq!(o.stdout, "", "stdout of {a:?}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "stderr of {a:?} should name {n:?}: {:?}",
            lines[0]
        );
    }
    o
}

/// A loopback port where nothing listens (bound once to get a free port, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A client command line with everything on loopback and inside `dir`.
fn client_args(dir: &TestDir, server: &str, file: &str) -> Vec<String> {
    args(&[
        "client",
        "--server",
        server,
        "--listen",
        "127.0.0.1:0",
        "--name",
        "client1",
        "--out-dir",
        &path_arg(&dir.join("out")),
        "--log-dir",
        &path_arg(&dir.join("logs")),
        "--connect-timeout",
        "1",
        "--file",
        file,
    ])
}

fn server_args(dir: &TestDir, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["server", "--log-dir", &path_arg(&dir.join("logs"))]);
    a.extend(args(extra));
    a
}

#[test]
fn cli_client_missing_file() {
    let dir = TestDir::new("cli_client_missing_file");
    let missing = path_arg(&dir.join("no-such-file.bin"));
    let server = format!("127.0.0.1:{}", closed_port());
    expect_usage_error(&dir, &client_args(&dir, &server, &missing), &[&missing]);
}

#[test]
fn cli_client_directory_as_file() {
    let dir = TestDir::new("cli_client_directory_as_file");
    let d = dir.join("a-directory");
    std::fs::create_dir_all(&d).unwrap();
    let d = path_arg(&d);
    let server = format!("127.0.0.1:{}", closed_port());
    expect_usage_error(
        &dir,
        &client_args(&dir, &server, &d),
        &[&d, "not a regular file"],
    );
}

/// A source file the client may not read: one line naming it, exit 2. Root reads every file, so
/// as root the client runs as user nobody (setpriv), from a copy of the binary that nobody may
/// run, with its out-dir and log dir in a directory that nobody may write.
#[test]
fn cli_client_unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("cli_client_unreadable_file");
    let secret = dir.join("secret.bin");
    std::fs::write(&secret, b"not for you").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let open = dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = open.join("p2pshare");
    std::fs::copy(common::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = path_arg(&secret);
    let server = format!("127.0.0.1:{}", closed_port());
    let client = args(&[
        &path_arg(&bin),
        "client",
        "--server",
        &server,
        "--listen",
        "127.0.0.1:0",
        "--name",
        "client1",
        "--out-dir",
        &path_arg(&open.join("out")),
        "--log-dir",
        &path_arg(&open.join("logs")),
        "--connect-timeout",
        "1",
        "--file",
        &secret,
    ]);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let o = if root {
        let mut a = args(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
        a.extend(client);
        expect_usage_error_of(&dir, "setpriv", &a, &[&secret, "ermission denied"])
    } else {
        expect_usage_error_of(
            &dir,
            &path_arg(&bin),
            &client[1..],
            &[&secret, "ermission denied"],
        )
    };
    assert!(
        !open.join("out").join("secret.bin.part").exists(),
        "{}",
        o.stderr
    );
}

#[test]
fn cli_server_zero_clients() {
    let dir = TestDir::new("cli_server_zero_clients");
    let a = server_args(&dir, &["--listen", "127.0.0.1:0", "--clients", "0"]);
    expect_usage_error(&dir, &a, &["--clients"]);
}

#[test]
fn cli_server_zero_chunk_size() {
    let dir = TestDir::new("cli_server_zero_chunk_size");
    let a = server_args(&dir, &["--listen", "127.0.0.1:0", "--chunk-size", "0"]);
    expect_usage_error(&dir, &a, &["--chunk-size"]);
}

#[test]
fn cli_server_absurd_chunk_size() {
    let dir = TestDir::new("cli_server_absurd_chunk_size");
    let a = server_args(
        &dir,
        &["--listen", "127.0.0.1:0", "--chunk-size", "4294967295"],
    );
    expect_usage_error(&dir, &a, &["--chunk-size"]);
    // Chained digests carry MD5 states from chunk to chunk: whole 64-byte blocks only.
    let a = server_args(&dir, &["--listen", "127.0.0.1:0", "--chunk-size", "262145"]);
    expect_usage_error(&dir, &a, &["--chunk-size", "multiple of 64"]);
}

#[test]
fn cli_client_out_dir_under_a_file() {
    let dir = TestDir::new("cli_client_out_dir_under_a_file");
    let src = dir.join("src.bin");
    std::fs::write(&src, b"data").unwrap();
    let mut a = client_args(
        &dir,
        &format!("127.0.0.1:{}", closed_port()),
        &path_arg(&src),
    );
    let bad = path_arg(&src.join("out"));
    let at = a.iter().position(|x| x == "--out-dir").unwrap();
    a[at + 1] = bad.clone();
    expect_usage_error(&dir, &a, &["--out-dir", &bad, "cannot create"]);
    assert!(!src.join("out").exists());
}

#[test]
fn cli_server_bad_listen_address() {
    let dir = TestDir::new("cli_server_bad_listen_address");
    let a = server_args(&dir, &["--listen", "not-an-address"]);
    expect_usage_error(&dir, &a, &["--listen", "not-an-address"]);
}

#[test]
fn cli_server_address_in_use() {
    let dir = TestDir::new("cli_server_address_in_use");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = busy.local_addr().unwrap().to_string();
    let a = server_args(&dir, &["--listen", &addr, "--clients", "1"]);
    expect_usage_error(&dir, &a, &[&addr, "in use"]);
    drop(busy);
}

#[test]
fn cli_client_server_unreachable() {
    let dir = TestDir::new("cli_client_server_unreachable");
    let src = dir.join("f.bin");
    gen_file(&dir.path, &src, 1000, 1);
    let server = format!("127.0.0.1:{}", closed_port());
    let o = expect_usage_error(
        &dir,
        &client_args(&dir, &server, &path_arg(&src)),
        &[&server],
    );
    assert!(
        o.elapsed < Duration::from_secs(6),
        "--connect-timeout 1 took {:?}",
        o.elapsed
    );
}

#[test]
fn cli_gen_bad_size() {
    let dir = TestDir::new("cli_gen_bad_size");
    let out = dir.join("out.bin");
    let a = args(&["gen", "--size", "5XB", &path_arg(&out)]);
    expect_usage_error(&dir, &a, &["5XB"]);
    assert!(!out.exists(), "gen wrote a file despite a bad size");
}

/// The log lines of `node` on the System Clock: a client's lines before its welcome (on its own
/// clock) are left out.
fn clock_events(run: &SwarmRun, node: &str) -> Vec<Entry> {
    let text = std::fs::read_to_string(run.log_dir.join(format!("{node}.log"))).unwrap();
    let mut welcomed = node == "server";
    let mut out = Vec::new();
    for line in text.lines() {
        if let Ok(Some(e)) = parse_line(line) {
            welcomed |= e.event == "connected";
            if welcomed {
                out.push(e);
            }
        }
    }
    out
}

fn at(evs: &[Entry], event: &str, pred: &dyn Fn(&Entry) -> bool) -> f64 {
    evs.iter()
        .find(|e| e.event == event && pred(e))
        .unwrap_or_else(|| panic!("no {event} line"))
        .t_ms
}

/// T_lb by the formula of ../shared/SCENARIOS.md, in ms: (bytes it owns, up, down) per client.
fn t_lb_ms(c: &[(f64, f64, f64)]) -> f64 {
    let total: f64 = c.iter().map(|x| x.0).sum();
    let down = c.iter().map(|x| (total - x.0) / x.2).fold(0.0, f64::max);
    let up = c.iter().map(|x| x.0 / x.1).fold(0.0, f64::max);
    let all = c.iter().map(|x| total - x.0).sum::<f64>() / c.iter().map(|x| x.1).sum::<f64>();
    down.max(up).max(all) * 1000.0
}

/// One clock: client2's clock runs an hour ahead (the test-only skew). Every line after a
/// client's welcome is stamped with the server's clock, so each cause and its effect on two
/// nodes keep their order within the clients' reported errors (welcome, start, file and run
/// completion, shutdown, and every chunk relayed from one client to another). The summary
/// states each error and, with --links, T_lb and the ratio; the report reads the same logs.
#[test]
fn skewed_client_clock_merges_within_its_error() {
    let dir = TestDir::new("skewed_client_clock");
    let links = dir.join("links.txt");
    std::fs::write(
        &links,
        "client1 1gbit 1gbit\nclient2 1gbit 1gbit\nclient3 250mbit 1gbit\nclient4 1gbit 1gbit\n",
    )
    .unwrap();
    let sizes = [
        Some(3 * MIB + 4_321),
        Some(2 * MIB + 17),
        Some(3 * MIB / 2),
        Some(2 * MIB),
    ];
    let skew_ms = 3_600_000.0;
    let run = run_swarm_with(
        &dir,
        &sizes,
        400,
        &args(&["--links", &path_arg(&links)]),
        &|k| {
            if k == 2 {
                vec![("P2PSHARE_TEST_CLOCK_SKEW_MS".into(), "3600000".into())]
            } else {
                Vec::new()
            }
        },
    );
    check_run(&dir, &run);

    let s: Value = serde_json::from_str(&std::fs::read_to_string(&run.summary).unwrap()).unwrap();
    let mut err = BTreeMap::new();
    for c in s["clients"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let (e, max, off) = (
            c["clock_error_ms"].as_f64().expect("clock_error_ms"),
            c["clock_max_error_ms"]
                .as_f64()
                .expect("clock_max_error_ms"),
            c["clock_offset_ms"].as_f64().expect("clock_offset_ms"),
        );
        assert!(0.0 <= e && e <= max, "{name}: error {e}, largest {max}");
        // Far below the skew: a merge that ignored the offset would be off by an hour.
        assert!(max < 1_000.0, "{name}: error {max} ms");
        // The client started after the server (its own clock at 0, plus the skew).
        let base = if name == "client2" { -skew_ms } else { 0.0 };
        assert!(
            off > base && off < base + 60_000.0,
            "{name}: offset {off} ms"
        );
        err.insert(name, max);
    }
    let (up, down) = (125e6, 125e6);
    let want = t_lb_ms(&[
        (sizes[0].unwrap() as f64, up, down),
        (sizes[1].unwrap() as f64, up, down),
        (sizes[2].unwrap() as f64, 31.25e6, down),
        (sizes[3].unwrap() as f64, up, down),
    ]);
    let lb = s["t_lb_ms"].as_f64().expect("t_lb_ms");
    assert!((lb - want).abs() < 0.001, "T_lb {lb} ms, want {want}");
    assert!(s["t_lb_binding"].is_string());
    let ratio = s["t_lb_ratio"].as_f64().expect("t_lb_ratio");
    let total = s["total_ms"].as_f64().unwrap();
    assert!((ratio - total / lb).abs() < 0.002, "ratio {ratio}");

    // Stamps have 1 µs steps, and an estimate ages 100 ppm after its last report.
    let slack = 0.01;
    let server = clock_events(&run, "server");
    let logs: BTreeMap<String, Vec<Entry>> = run
        .clients
        .iter()
        .map(|c| (c.name.clone(), clock_events(&run, &c.name)))
        .collect();
    let before = |a: f64, b: f64, e: f64, what: &str| {
        assert!(
            a <= b + e + slack,
            "{what}: {a} ms is after {b} ms + {e} ms"
        );
    };
    for (c, ev) in &logs {
        let e = err[c];
        let is_c = |x: &Entry| x.get("client") == Some(c);
        let welcome = at(&server, "client_connected", &is_c);
        let connected = at(ev, "connected", &|_| true);
        before(welcome, connected, e, &format!("{c} welcome"));
        assert!(
            connected - welcome < 1_000.0,
            "{c}: welcome took {} ms",
            connected - welcome
        );
        let start = at(&server, "client_list_broadcast", &|_| true);
        before(
            start,
            at(ev, "client_list_received", &|_| true),
            e,
            &format!("{c} start"),
        );
        let end = at(&server, "run_finished", &|_| true);
        before(
            end,
            at(ev, "shutdown_received", &|_| true),
            e,
            &format!("{c} shutdown"),
        );
        for fc in ev.iter().filter(|x| x.event == "file_complete") {
            let f = fc.get("file");
            let got = at(&server, "file_complete_received", &|x| {
                is_c(x) && x.get("file") == f
            });
            before(fc.t_ms, got, e, &format!("{c} {f:?} complete"));
        }
        let done = at(&server, "client_complete", &is_c);
        before(
            at(ev, "all_complete", &|_| true),
            done,
            e,
            &format!("{c} done"),
        );
    }
    let owner = |file: &str| {
        run.files()
            .find(|f| f.name == file)
            .map(|f| f.owner.clone())
    };
    let mut relayed = 0;
    for (c, ev) in &logs {
        for ch in ev.iter().filter(|x| x.event == "chunk_received") {
            let (file, index, from) = (ch.get("file"), ch.get("index"), ch.get("from").unwrap());
            if owner(file.unwrap()).as_deref() == Some(from) {
                continue;
            }
            let had = at(&logs[from], "chunk_received", &|x| {
                x.get("file") == file && x.get("index") == index
            });
            before(
                had,
                ch.t_ms,
                err[c] + err[from],
                &format!("{from} -> {c} {file:?}#{index:?}"),
            );
            relayed += 1;
        }
    }
    // (How many chunks went through a relay depends on timing; on a slow machine the owners
    // may serve every chunk.)
    eprintln!("skewed clock: {relayed} relayed chunks checked");

    let o = run_cmd(
        &dir.path,
        "report",
        &args(&["report", &path_arg(&run.log_dir)]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(0), "report: {}", o.stderr);
    assert!(
        o.stdout.contains("0 malformed lines skipped"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("T_lb: ") && o.stdout.contains("(set by "),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("critical path\n  last chunk: "),
        "{}",
        o.stdout
    );
    let svg = std::fs::read_to_string(run.log_dir.join("report.svg")).unwrap();
    let all: u64 = sizes.iter().flatten().sum();
    assert_eq!(
        svg.matches(&format!("data-final-bytes=\"{all}\"")).count(),
        4,
        "every client ends holding every byte"
    );
}
