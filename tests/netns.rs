//! End-to-end test on emulated hosts: the net-slow-up scenario of ../shared/SCENARIOS.md with
//! small files. `scripts/netem.sh up` puts the server and each client in a network namespace of
//! its own, joined through a bridge, with client 1's uplink shaped to 250 Mbit/s and every other
//! link to 1 Gbit/s. The test checks that every file arrives intact (outputs, summary, logs, as
//! tests/e2e.rs does), that the traffic really crossed the shaped links, and that client 1 sent
//! each byte of its own file less than 1.3 times. It needs root and iproute2; without them it
//! fails and says so (CI runs as root, and .ci/run installs iproute2 if it is missing).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// The whole swarm run; it takes about a second when the machine is idle.
const RUN_TIMEOUT_NETNS: Duration = Duration::from_secs(30);
/// Making or removing the hosts (a few dozen `ip` and `tc` commands).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

const NETEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netem.sh");

/// The hosts made by `scripts/netem.sh up`. Dropping it runs `netem.sh down`, which stops what
/// still runs in them and deletes them, also when the test fails half-way. It must be declared
/// before the nodes' `Group`, so that the nodes are killed first.
struct Netem {
    prefix: String,
    dir: std::path::PathBuf,
    /// (namespace, IP address) of host 0 (the server) and of host K (client K).
    hosts: Vec<(String, String)>,
    /// `netem.sh up` succeeded (if not, `down` is still run, quietly, in case it was cut short).
    made: bool,
}

impl Netem {
    fn up(dir: &TestDir, clients: usize, up: &str, down: &str) -> Netem {
        let mut n = Netem {
            prefix: format!("p2pnt{}", std::process::id()),
            dir: dir.path.clone(),
            hosts: Vec::new(),
            made: false,
        };
        let count = clients.to_string();
        let a = args(&[
            "up",
            &n.prefix,
            "--clients",
            &count,
            "--up",
            up,
            "--down",
            down,
        ]);
        let o = run_program(&dir.path, "netem-up", NETEM, &a, SETUP_TIMEOUT);
        assert!(
            o.status.success(),
            "cannot create the emulated hosts (network namespaces): this test needs root and \
             iproute2 (ip, tc), and CI runs it as root. scripts/netem.sh up said: {}",
            o.stderr.trim()
        );
        n.made = true;
        for line in o.stdout.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let ["host", k, ns, ip, ..] = w[..] {
                assert_eq!(
                    k,
                    n.hosts.len().to_string(),
                    "host lines in order: {line:?}"
                );
                n.hosts.push((ns.to_string(), ip.to_string()));
            }
        }
        assert_eq!(n.hosts.len(), clients + 1, "netem.sh up: {}", o.stdout);
        n
    }

    /// The bytes a tbf qdisc has sent, from `tc -s qdisc show` in namespace `ns`.
    fn qdisc_sent(&self, ns: &str, dev: &str) -> u64 {
        let o = Command::new("tc")
            .args(["-n", ns, "-s", "qdisc", "show", "dev", dev])
            .output()
            .expect("run tc");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("qdisc tbf"), "no tbf on {ns} {dev}: {text}");
        text.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no Sent count for {ns} {dev}: {text}"))
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let a = args(&["down", &self.prefix]);
        let o = run_program(&self.dir, "netem-down", NETEM, &a, SETUP_TIMEOUT);
        if self.made && !o.status.success() {
            eprintln!(
                "netns: scripts/netem.sh down {} failed: {}",
                self.prefix, o.stderr
            );
        }
    }
}

#[test]
fn slow_uplink_owner_sends_its_file_about_once() {
    let dir = TestDir::new("netns_slow_up");
    let net = Netem::up(&dir, 4, "250,1000,1000,1000", "1000");
    let sizes = [
        Some(24 * MIB + 12_345),
        Some(24 * MIB - 54_321),
        Some(24 * MIB + 100_003),
        Some(24 * MIB + 7),
    ];
    for s in sizes.iter().flatten() {
        assert_ne!(s % CHUNK, 0);
    }
    let hosts = Hosts::Netns(net.hosts.clone());
    let run = run_swarm_on(&dir, &sizes, 400, &hosts, RUN_TIMEOUT_NETNS);
    check_run(&dir, &run);

    // Client 1's pieces left through its shaped uplink, and its downloads came in through its
    // shaped downlink: nothing took a short cut around the emulated links.
    let c1 = &run.clients[0];
    let own = c1.owns.as_ref().expect("client 1 shares a file");
    let delivered = delivered(&run);
    let from_c1: u64 = delivered
        .iter()
        .filter(|((from, _), _)| *from == c1.name)
        .map(|(_, b)| b)
        .sum();
    let (ns1, _) = &net.hosts[1];
    let bridge = format!("{}br", net.prefix);
    let wire_up = net.qdisc_sent(ns1, "eth0");
    let wire_down = net.qdisc_sent(&bridge, "vh1");
    assert!(
        wire_up >= from_c1,
        "client 1's uplink qdisc sent {wire_up} bytes, less than the {from_c1} its peers got from it"
    );
    let received: u64 = run.wanted_by(c1).map(|f| f.size).sum();
    assert!(
        wire_down >= received,
        "client 1's downlink qdisc sent {wire_down} bytes, less than the {received} it downloaded"
    );

    // The bound of net-slow-up is client 1 sending each byte of its file once.
    let up = uploaded_by_file(&run, &c1.name);
    let own_sent = up[&own.name];
    eprintln!(
        "netns slow-up: {:?}; client 1 sent its own file {:.3} times ({own_sent} of {} bytes; \
         other files: {:?})",
        run.elapsed,
        own_sent as f64 / own.size as f64,
        own.size,
        up
    );
    assert!(
        own_sent * 10 < own.size * 13,
        "client 1 (uplink 250 Mbit/s) sent {own_sent} bytes of its {}-byte file, {:.3} times \
         (must be under 1.3)",
        own.size,
        own_sent as f64 / own.size as f64
    );
}
