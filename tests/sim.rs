//! A simulated swarm on the sans-IO core: the real `ServerCore` and `ClientCore`s, wired through
//! a discrete-event network with per-host uplink and downlink rates, a one-way latency and a
//! virtual clock. No sockets, no threads, no hashing (digests are labels, and a chunk "verifies"
//! when its label matches): a whole run takes milliseconds and is deterministic.
//!
//! It checks what the reactor tests cannot see quickly: that every client ends with every file,
//! the exact bytes each one received, how often an owner uploads its own file, and the total
//! time against the lower bound T_lb of ../shared/SCENARIOS.md.

mod simnet;

use simnet::{CHUNK, Host, MBIT, MIB, Sim, t_lb};

#[test]
fn symmetric_swarm_completes_near_the_bound() {
    let hosts = vec![
        Host {
            up: 1000.0 * MBIT,
            down: 1000.0 * MBIT,
            file: 40 * CHUNK as u64 + 12_345
        };
        4
    ];
    let mut sim = Sim::new(hosts.clone(), 500);
    let total = sim.run(600_000_000);
    sim.check_complete();
    let bound = t_lb(&hosts);
    eprintln!(
        "symmetric: total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 1.12 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn slow_uplink_owner_sends_its_file_about_once() {
    let mut hosts = vec![
        Host {
            up: 1000.0 * MBIT,
            down: 1000.0 * MBIT,
            file: 64 * CHUNK as u64
        };
        4
    ];
    hosts[0].up = 250.0 * MBIT;
    let mut sim = Sim::new(hosts.clone(), 500);
    let total = sim.run(600_000_000);
    sim.check_complete();
    let ratio = sim.own_uploaded[0] as f64 / hosts[0].file as f64;
    assert!(
        ratio < 1.01,
        "the slow owner uploaded its file {ratio:.2} times"
    );
    let bound = t_lb(&hosts);
    eprintln!(
        "slow uplink: total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 1.15 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn eight_clients_one_without_files() {
    let mut hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 10 * CHUNK as u64 + 7
        };
        8
    ];
    hosts[3].file = 0;
    hosts[5].file = 1000;
    let mut sim = Sim::new(hosts, 2_000);
    sim.run(600_000_000);
    sim.check_complete();
}

#[test]
fn forty_ms_round_trips_still_complete() {
    let hosts = vec![
        Host {
            up: 200.0 * MBIT,
            down: 200.0 * MBIT,
            file: 32 * CHUNK as u64
        };
        4
    ];
    let mut sim = Sim::new(hosts.clone(), 20_000);
    let total = sim.run(600_000_000);
    sim.check_complete();
    // 8 MiB files: the start (hello, welcome, start, digests, connect: about five one-way
    // latencies) and the last relay weigh on a 1 s run.
    let bound = t_lb(&hosts);
    eprintln!(
        "40 ms RTT: total {total:.3} s, T_lb {bound:.3} s, ratio {:.2}",
        total / bound
    );
    assert!(
        total < 1.3 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}

#[test]
fn clients_finish_without_the_server_after_the_manifest() {
    let hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 48 * CHUNK as u64 + 99
        };
        4
    ];
    let mut sim = Sim::new(hosts, 500);
    // Run until every client knows the whole manifest, then kill the server.
    while !sim
        .clients
        .iter()
        .all(|c| c.manifest_complete() && c.is_started())
    {
        assert!(sim.step(), "the manifest never completed");
    }
    assert!(
        sim.clients.iter().all(|c| !c.is_complete()),
        "killed too late to mean anything"
    );
    sim.kill_server();
    while sim.exits.iter().any(Option::is_none) && sim.now < 600_000_000 {
        assert!(sim.step(), "the swarm stalled without its server");
    }
    assert_eq!(sim.exits, vec![Some(0); 4], "every client exits 0");
    sim.check_complete();
    assert!(
        sim.finished.is_none(),
        "the dead server never finished the run"
    );
}

#[test]
fn a_relay_lost_with_fresh_chunks_does_not_stall_the_run() {
    // A slow owner: half a second in, its fresh chunks are spread over the others; client 2
    // loses every connection (and is dialled again later). The chunks only it held go out
    // again, fresh, and every client completes with exactly what it lacked.
    let mut hosts = vec![Host::mbit(1000.0, 1000.0, 24 * MIB); 4];
    hosts[0].up = 100.0 * MBIT;
    let mut sim = Sim::new(hosts, 500);
    while sim.now < 500_000 {
        assert!(sim.step());
    }
    for j in [0, 2, 3] {
        sim.cut(1, j, "test");
    }
    let total = sim.run(600_000_000);
    sim.check_complete();
    eprintln!(
        "relay lost: total {total:.3} s, the slow owner sent its file x{:.2}",
        sim.own_uploaded[0] as f64 / (24 * MIB) as f64
    );
}

#[test]
fn server_lost_before_the_manifest_is_an_error() {
    let hosts = vec![
        Host {
            up: 500.0 * MBIT,
            down: 500.0 * MBIT,
            file: 8 * CHUNK as u64
        };
        3
    ];
    let mut sim = Sim::new(hosts, 500);
    sim.kill_server();
    assert_eq!(sim.exits, vec![Some(1); 3]);
}

/// The scenarios: 4 clients x 200 MiB; uplink and downlink of each host in Mbit/s.
fn scenario(name: &str) -> Vec<Host> {
    let f = 200 * MIB;
    let mut h = vec![Host::mbit(1000.0, 1000.0, f); 4];
    match name {
        "net-sym" => {}
        "net-slow-up" => h[0].up = 250.0 * MBIT,
        "net-slow-down" => h[1].down = 250.0 * MBIT,
        "net-mixed" => {
            for (x, up) in h.iter_mut().zip([1000.0, 500.0, 250.0, 100.0]) {
                x.up = up * MBIT;
            }
        }
        _ => unreachable!("unknown scenario {name}"),
    }
    h
}

/// With SIM_DEBUG set: per client, when it was done, what it uploaded, and its download rate
/// over time.
fn report(sim: &Sim) {
    if std::env::var("SIM_DEBUG").is_err() {
        return;
    }
    for (i, h) in sim.hosts.iter().enumerate() {
        let rates: Vec<String> = sim.timeline[i]
            .iter()
            .map(|b| format!("{}", b * 4 / MIB))
            .collect();
        eprintln!(
            "  client{}: up {:.0} down {:.0} Mbit/s, file {:.1} MiB; done {:.3} s, uploaded {:.1} MiB (own file x{:.2}), duplicates {:.1} MiB; MiB/s in per 250 ms: {}",
            i + 1,
            h.up / MBIT,
            h.down / MBIT,
            h.file as f64 / MIB as f64,
            sim.done_at[i].unwrap_or(0) as f64 / 1e6,
            sim.uploaded[i] as f64 / MIB as f64,
            sim.own_uploaded[i] as f64 / h.file.max(1) as f64,
            sim.wasted[i] as f64 / MIB as f64,
            rates.join(" ")
        );
    }
}

/// Runs one scenario; returns total / T_lb. The owner whose uplink sets T_lb must send its file
/// once (1 % slack: at the very end a duplicate no longer delays anything).
fn ratio_of(name: &str, latency_us: u64, hash_us_per_chunk: u64) -> f64 {
    ratio_with(name, latency_us, hash_us_per_chunk, simnet::IN_KERNEL)
}

/// `ratio_of`, with `in_kernel` pieces unsent in the kernel per connection.
fn ratio_with(name: &str, latency_us: u64, hash_us_per_chunk: u64, in_kernel: usize) -> f64 {
    let hosts = scenario(name);
    let mut sim = Sim::new(hosts.clone(), latency_us);
    sim.hash_us_per_chunk = hash_us_per_chunk;
    sim.in_kernel = in_kernel;
    let total = sim.run(600_000_000);
    sim.check_complete();
    let bound = t_lb(&hosts);
    let own: Vec<String> = hosts
        .iter()
        .zip(&sim.own_uploaded)
        .map(|(h, u)| format!("{:.2}", *u as f64 / h.file as f64))
        .collect();
    let dup: u64 = sim.wasted.iter().sum();
    // Share of each client's downloaded chunks it dropped from its page cache by the end.
    let chunks = |h: &simnet::Host| h.file.div_ceil(CHUNK as u64);
    let all: u64 = hosts.iter().map(chunks).sum();
    let uncached: Vec<f64> = (0..hosts.len())
        .map(|i| sim.uncached[i] as f64 / (all - chunks(&hosts[i])) as f64)
        .collect();
    eprintln!(
        "{name} rtt {} ms, hashing {hash_us_per_chunk} us/chunk, {in_kernel} unsent: total {total:.3} s, T_lb {bound:.3} s, ratio {:.3}; own file sent x [{}], duplicates {:.1} MiB, uncached {:.2?}",
        2 * latency_us / 1000,
        total / bound,
        own.join(" "),
        dup as f64 / MIB as f64,
        uncached
    );
    report(&sim);
    // Almost every downloaded chunk is spent before the run ends (the rest: the last ones).
    assert!(
        uncached.iter().all(|&u| u >= 0.9),
        "{name}: shares of the downloads dropped from the page cache {uncached:.2?}"
    );
    let owner_time = |i: usize| hosts[i].file as f64 / hosts[i].up;
    let slowest = (0..hosts.len())
        .max_by(|&a, &b| owner_time(a).total_cmp(&owner_time(b)))
        .expect("four hosts");
    if owner_time(slowest) >= 0.999 * bound {
        let sent = sim.own_uploaded[slowest] as f64 / hosts[slowest].file as f64;
        assert!(
            sent <= 1.01,
            "{name}: the bottleneck owner sent its file {sent:.3} times"
        );
    }
    total / bound
}

/// The target for a scenario: total / T_lb.
fn target(name: &str) -> f64 {
    if name == "net-sym" { 1.12 } else { 1.15 }
}

fn check_scenario(name: &str, latency_us: u64) {
    let r = ratio_of(name, latency_us, 0);
    assert!(
        r <= target(name),
        "{name} with {} ms round trips: total / T_lb = {r:.3}, target {}",
        2 * latency_us / 1000,
        target(name)
    );
}

#[test]
fn net_sym() {
    check_scenario("net-sym", 250);
}

#[test]
fn net_sym_40ms() {
    check_scenario("net-sym", 20_000);
}

#[test]
fn net_slow_up() {
    check_scenario("net-slow-up", 250);
}

#[test]
fn net_slow_up_40ms() {
    check_scenario("net-slow-up", 20_000);
}

#[test]
fn net_slow_down() {
    check_scenario("net-slow-down", 250);
}

#[test]
fn net_slow_down_40ms() {
    check_scenario("net-slow-down", 20_000);
}

#[test]
fn net_mixed() {
    check_scenario("net-mixed", 250);
}

#[test]
fn net_mixed_40ms() {
    check_scenario("net-mixed", 20_000);
}

#[test]
fn net_slow_up_with_digests_arriving_over_time() {
    // On real hosts an owner hashes its file in jobs after the welcome, and peers start asking
    // for fresh chunks while they know the first few digests only: the owner refuses requests
    // bounded below a chunk it has already sent (no_fresh). Here 800 chunks take 160 ms to
    // hash, as measured in net-slow-up runs. Such an answer must not make a peer take the owner
    // for drained: it would leave the owner idle, then ask it to relay its own file and take
    // its chunks on their way to others for lost (the slow owner sent its file 1.5 to 2.8
    // times on emulated hosts; here 1.041 x T_lb before the fix, 1.001 after).
    let r = ratio_of("net-slow-up", 250, 200);
    assert!(r <= 1.02, "total / T_lb = {r:.3}");
}

#[test]
fn net_slow_up_with_four_pieces_unsent_per_connection() {
    // A request of the slow host waits behind its own pieces, on every connection: the windows
    // must cover that wait, which the least latency (measured while its uplink was idle) does
    // not. 1.30 x T_lb with windows from the least latency alone, 1.001 with the wait.
    let r = ratio_with("net-slow-up", 250, 0, 4);
    assert!(r <= 1.02, "total / T_lb = {r:.3}");
}

/// A deterministic generator (splitmix64) for the random swarm.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn sixteen_clients_with_random_rates() {
    let mut seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_251_126);
    let mut pick = |lo: u64, hi: u64| lo + splitmix(&mut seed) % (hi - lo + 1);
    let hosts: Vec<Host> = (0..16)
        .map(|_| {
            Host::mbit(
                pick(50, 1000) as f64,
                pick(100, 1000) as f64,
                pick(2, 12) * MIB + pick(0, CHUNK as u64),
            )
        })
        .collect();
    let mut sim = Sim::new(hosts.clone(), pick(250, 20_000));
    let total = sim.run(600_000_000);
    sim.check_complete();
    let bound = t_lb(&hosts);
    report(&sim);
    eprintln!(
        "16 random clients: total {total:.3} s, T_lb {bound:.3} s, ratio {:.3}",
        total / bound
    );
    assert!(
        total < 1.3 * bound,
        "total {total:.3} s vs T_lb {bound:.3} s"
    );
}
