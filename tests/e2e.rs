//! End-to-end tests of the `p2pshare` binary: whole runs of a server and several clients on
//! 127.0.0.1 (outputs, summary JSON and logs checked), and the command-line errors that must
//! end in exit code 2 with one line on stderr. The harness is in `tests/common/mod.rs`.

mod common;

use common::*;
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
    let o = run_cmd(&dir.path, "cmd", a, CMD_TIMEOUT);
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
