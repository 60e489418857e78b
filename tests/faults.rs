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

    let status = g.wait_exit(c2, deadline, "client2 did not exit on a full disk");
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

/// Polls until every one of `paths` has a line containing `needle`, or fails at `deadline`.
fn wait_all_logs(g: &mut Group, paths: &[std::path::PathBuf], needle: &str, deadline: Instant) {
    while !paths
        .iter()
        .all(|p| fs::read_to_string(p).is_ok_and(|l| l.contains(needle)))
    {
        if Instant::now() >= deadline {
            g.fail(&format!("not every log has {needle:?} in time"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The server is killed (SIGKILL) once every client knows every chunk digest, while chunks are
/// still moving: the clients log that the server is gone, finish the exchange among themselves,
/// write their own summaries, and exit 0 with every file byte-identical.
#[test]
fn clients_finish_when_the_server_dies_after_the_manifest() {
    let dir = TestDir::new("server-killed");
    let log_dir = dir.join("logs");
    let names = ["client1", "client2", "client3"];
    let size = |i: usize| 48 * CHUNK + 1000 * i as u64 + 3;
    let srcs: Vec<_> = (0..3)
        .map(|i| dir.join(&format!("c{}.bin", i + 1)))
        .collect();
    for (i, p) in srcs.iter().enumerate() {
        gen_file(&dir.path, p, size(i), 40 + i as u64);
    }
    let mut g = Group::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (server, addr) = start_server(
        &mut g,
        &dir,
        3,
        &log_dir,
        &dir.join("summary.json"),
        deadline,
    );
    let outs: Vec<_> = names
        .iter()
        .map(|n| dir.join(&format!("out-{n}")))
        .collect();
    let clients: Vec<usize> = (0..3)
        .map(|i| {
            let a = client_cmd(&addr, names[i], Some(&srcs[i]), &outs[i], &log_dir);
            g.spawn(names[i], &dir.path, &a)
        })
        .collect();
    let logs: Vec<_> = names
        .iter()
        .map(|n| log_dir.join(format!("{n}.log")))
        .collect();
    wait_all_logs(&mut g, &logs, "event=all_chunk_digests_received", deadline);
    g.procs[server].child.kill().expect("kill the server");
    for &c in &clients {
        let st = g.wait_exit(c, deadline, "the clients did not finish without the server");
        let err = fs::read_to_string(&g.procs[c].stderr).unwrap_or_default();
        assert!(st.success(), "{} exited {st}: {err}", g.procs[c].label);
    }

    let mut after_kill = 0;
    for (i, name) in names.iter().enumerate() {
        let log = fs::read_to_string(&logs[i]).expect("client log");
        let lost = log
            .find("event=continue_without_server")
            .unwrap_or_else(|| panic!("{name} did not go on without the server:\n{log}"));
        after_kill += log[lost..].matches("event=chunk_received").count();
        // Every other client's file, byte for byte.
        for (j, src) in srcs.iter().enumerate().filter(|(j, _)| *j != i) {
            let want = fs::read(src).expect("source");
            let fname = src.file_name().expect("name");
            let got = fs::read(outs[i].join(fname))
                .unwrap_or_else(|e| panic!("{name} lacks file {}: {e}", j + 1));
            assert!(got == want, "{name}'s copy of file {} differs", j + 1);
        }
        let summary = fs::read_to_string(log_dir.join(format!("{name}.summary.json")))
            .unwrap_or_else(|e| panic!("{name} wrote no summary of its own: {e}"));
        let v: serde_json::Value = serde_json::from_str(&summary).expect("summary JSON");
        assert_eq!(v["clients"][0]["name"], *name);
        assert_eq!(v["clients"][0]["complete"], true, "{summary}");
        assert_eq!(v["files"].as_array().map(Vec::len), Some(3), "{summary}");
        for f in v["files"].as_array().expect("files") {
            let src = srcs
                .iter()
                .find(|p| p.file_name().and_then(|n| n.to_str()) == f["name"].as_str())
                .expect("a file of the run");
            let md5 = common::md5_hex(&fs::read(src).expect("source"));
            assert_eq!(f["md5"].as_str(), Some(md5.as_str()), "{summary}");
        }
    }
    assert!(
        after_kill > 0,
        "no chunk moved after the server was killed: the test did not test the exchange without it"
    );
}
