//! The report on a small fixed log set (tests/fixtures/report: a server and three clients,
//! written by hand so that every figure is known): the timeline, the per-client figures, T_lb,
//! the critical path and the SVG (series, axis labels, final values).
//!
//! The set has one line that is not a log line, one chunk_received with a bad index, and one
//! line per client before its welcome (on a clock an hour ahead): all three kinds are skipped.

use p2pshare::links::read_links;
use p2pshare::report::{Report, critical_path, svg};
use p2pshare::timeline::Timeline;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn load() -> (Timeline, Report) {
    let tl = Timeline::read_dir(&fixtures()).expect("the fixtures read");
    let links = read_links(&fixtures().join("links.txt")).expect("the links parse");
    let r = Report::build(&tl, Some(&links));
    (tl, r)
}

#[test]
fn timeline_skips_bad_and_local_clock_lines() {
    let (tl, _) = load();
    assert_eq!(tl.logs, 4);
    assert_eq!(tl.malformed, 2);
    assert_eq!(
        tl.malformed_examples,
        [
            "client3.log:7: no clock stamp",
            "client3.log:11: chunk_received has a bad index=zz"
        ]
    );
    assert_eq!(tl.local_clock_lines, 3);
    assert_eq!(tl.start_ms, Some(14.1));
    assert_eq!(tl.files.len(), 3);
    assert_eq!(tl.owned_bytes("client3"), 1500);
    let chunks: Vec<usize> = tl.clients.values().map(|c| c.chunks.len()).collect();
    assert_eq!(chunks, [4, 5, 5]);
}

#[test]
fn per_client_figures() {
    let (_, r) = load();
    let names: Vec<&str> = r.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["client1", "client2", "client3"]);
    let c1 = &r.clients[0];
    // Started at 14.3 (its client list), first chunk at 24.1, file2 at 35.0, file3 at 55.0.
    assert!(close(c1.first_chunk_ms.unwrap(), 9.8));
    assert_eq!(c1.files.len(), 2);
    assert_eq!(c1.files[0].0, "file2.bin");
    assert!(close(c1.files[0].1, 20.7) && close(c1.files[1].1, 40.7));
    assert!(close(c1.done_ms.unwrap(), 40.8));
    assert_eq!(c1.received, 3548);
    assert_eq!(c1.from_peer["client2"], 1500);
    assert_eq!(c1.from_peer["client3"], 2048);
    assert_eq!(c1.to_peer["client2"], 3072);
    assert_eq!(c1.to_peer["client3"], 3072);
    // 3548 bytes in 40.8 ms; its four chunks land in four different 10 ms bins.
    assert!(close(c1.mean_rate.unwrap(), 3548.0 * 1000.0 / 40.8));
    assert_eq!(r.bin_ms, 10.0);
    assert!(close(c1.peak_rate.unwrap(), 1024.0 * 100.0));
    let c3 = &r.clients[2];
    assert_eq!(c3.timeouts, 1);
    assert_eq!(c3.clock.as_ref().unwrap().max_error_ms, 0.25);
    let sent: u64 = r.clients.iter().flat_map(|c| c.to_peer.values()).sum();
    let received: u64 = r.clients.iter().map(|c| c.received).sum();
    assert_eq!(sent, received);
    assert_eq!(received, 13_240);
}

#[test]
fn lower_bound_and_ratio() {
    let (tl, r) = load();
    // 1 MB/s everywhere: client3 lacks 5120 bytes, the most: 5.12 ms.
    let (lb, why) = r.t_lb.clone().unwrap();
    assert!(close(lb, 5.12));
    assert_eq!(why, "download of client3");
    assert_eq!(r.total_ms, Some(61.4));
    let text = r.text(&tl, &fixtures());
    assert!(text.contains("T_lb: 5.1 ms (set by download of client3); total / T_lb = 11.99"));
    assert!(text.contains("2 malformed lines skipped"));
    // Without links and without a lower_bound line in server.log, the report says why.
    let r = Report::build(&tl, None);
    assert!(
        r.text(&tl, &fixtures())
            .contains("T_lb: not known: no link rates")
    );
}

#[test]
fn critical_path_names_the_last_chunk_its_sources_and_the_wait() {
    let (tl, _) = load();
    let cp = critical_path(&tl).unwrap().join("\n");
    assert!(
        cp.contains("last chunk: file1.bin#0 at client3, verified at +0.056 s, from client2"),
        "{cp}"
    );
    assert!(cp.contains("requested at +0.036 s; 20.0 ms"), "{cp}");
    assert!(
        cp.contains("path: client1 (owner) -> client2 at +0.006 s -> client3 at +0.056 s"),
        "{cp}"
    );
    assert!(
        cp.contains("client2 held it from +0.006 s; client3 asked 30.0 ms later"),
        "{cp}"
    );
    assert!(
        cp.contains("client3 completed file1.bin at +0.057 s"),
        "{cp}"
    );
}

#[test]
fn svg_has_every_series_its_labels_and_final_values() {
    let (tl, r) = load();
    let s = svg(&tl, &r);
    assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(s.trim_end().ends_with("</svg>"));
    assert_eq!(s.matches("<polyline class=\"held\"").count(), 3);
    assert_eq!(s.matches("<polyline class=\"upload\"").count(), 3);
    assert_eq!(s.matches(">time since start (s)</text>").count(), 2);
    assert_eq!(s.matches(">bytes held (MiB)</text>").count(), 1);
    assert_eq!(s.matches(">upload rate (MiB/s)</text>").count(), 1);
    for name in ["client1", "client2", "client3"] {
        assert!(
            s.contains(&format!(
                "<polyline class=\"held\" data-series=\"{name}\" data-final-bytes=\"6620\""
            )),
            "{name} ends holding all 6620 bytes"
        );
        assert!(s.contains(&format!(">{name}</text>")));
    }
    assert_eq!(s.matches("class=\"legend-entry\"").count(), 3);
    for (name, sent, peak) in [
        ("client1", 6144, 204_800),
        ("client2", 3548, 102_400),
        ("client3", 3548, 102_400),
    ] {
        let want = format!(
            "<polyline class=\"upload\" data-series=\"{name}\" data-total-bytes=\"{sent}\" \
             data-peak-bytes-per-s=\"{peak}\""
        );
        assert!(s.contains(&want), "missing {want}");
    }
    // The held line of client3 starts at its own 1500 bytes at time 0 (x = 80 px).
    let c3 = s
        .lines()
        .find(|l| l.contains("class=\"held\" data-series=\"client3\""))
        .unwrap();
    let first = c3
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let (x, y) = first.split_once(',').unwrap();
    assert_eq!(x, "80.0");
    // y axis to 0.008 MiB over 250 px from y=310: 1500 B = 0.00143 MiB -> 310 - 44.7.
    let y: f64 = y.parse().unwrap();
    assert!(
        (y - (310.0 - 1500.0 / 1048576.0 / 0.008 * 250.0)).abs() < 0.06,
        "{y}"
    );
}
