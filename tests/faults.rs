//! Faults on loopback with the real binary (issue 4): what happens when the machine under a node
//! misbehaves. Each test is bounded in time and cleans up after itself.
//!
//! The harness (deadlines, child processes, temporary directories) is in `tests/common/mod.rs`.

mod common;

use common::{CHUNK, Group, TestDir, args, client_cmd, gen_file, path_arg, start_server};
use std::fs;
use std::time::{Duration, Instant};

/// A client whose out-dir is on a file system too small for its downloads reports it before any
/// transfer, in one line, with exit code 2, and leaves no output behind.
///
/// The small file system is a 1 MiB tmpfs mounted in a private mount namespace (`unshare -m`)
/// that only the client process sees, so nothing on the machine changes and nothing is left
/// mounted when it exits. Needs root, as CI has.
#[test]
fn full_disk_is_reported_before_any_transfer() {
    let dir = TestDir::new("full-disk");
    let log_dir = dir.join("logs");
    let (f1, f2) = (dir.join("c1.bin"), dir.join("c2.bin"));
    gen_file(&dir.path, &f1, 8 * CHUNK + 5, 1);
    gen_file(&dir.path, &f2, 8 * CHUNK + 7, 2);
    let small = dir.join("small");
    fs::create_dir_all(&small).expect("mount point");

    let mut g = Group::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (_, addr) = start_server(
        &mut g,
        &dir,
        2,
        &log_dir,
        &dir.join("summary.json"),
        deadline,
    );
    let client = |name: &str, file: &std::path::Path, out: &std::path::Path| {
        client_cmd(&addr, name, Some(file), out, &log_dir)
    };
    let c1 = g.spawn(
        "client1",
        &dir.path,
        &client("client1", &f1, &dir.join("out1")),
    );
    let mut wrapped = args(&[
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o size=1m p2pshare-test \"$0\" || exit 99; exec \"$@\"",
        &path_arg(&small),
        common::bin(),
    ]);
    wrapped.extend(client("client2", &f2, &small.join("out")));
    let c2 = g.spawn_program("client2", &dir.path, "unshare", &wrapped);

    let status = loop {
        if let Some(st) = g.poll(c2) {
            break st;
        }
        if Instant::now() >= deadline {
            g.fail("client2 did not exit on a full disk");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = fs::read_to_string(&g.procs[c2].stderr).unwrap_or_default();
    assert_ne!(
        status.code(),
        Some(99),
        "cannot mount a tmpfs in a private namespace (this test needs root): {err}"
    );
    assert_eq!(
        status.code(),
        Some(2),
        "client2's exit status; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err:?}");
    assert!(
        lines[0].contains("not enough space") && lines[0].contains(&path_arg(&small)),
        "the line names the problem and the directory: {err:?}"
    );
    let log = fs::read_to_string(log_dir.join("client2.log")).expect("client2.log");
    assert!(
        !log.contains("event=chunk_received"),
        "client2 received chunks before it noticed the full disk:\n{log}"
    );
    // The tmpfs went away with client2's namespace: the directory underneath holds nothing.
    assert_eq!(fs::read_dir(&small).expect("read").count(), 0);
    assert!(g.poll(c1).is_none(), "client1 is unaffected");
    g.kill_all();
}
