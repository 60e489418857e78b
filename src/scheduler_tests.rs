//! Unit tests of the scheduler's choices (kept beside `scheduler.rs`, in their own file for
//! length).

use super::*;
use crate::pacing::{MIN_WINDOW, SPAN_US, WINDOW_MARGIN};

const CHUNK: u32 = 1000;

fn c(file: u32, index: u32) -> ChunkId {
    ChunkId {
        file: FileId(file),
        index,
    }
}

/// Me = 2; file 0 owned by 1 (8 chunks, digests known), file 1 owned by me.
fn setup() -> Scheduler {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 8);
    s.add_file(FileId(1), PeerId(2), 4);
    s.set_known(FileId(0), 0, 8);
    s.set_known(FileId(1), 0, 4);
    s
}

/// Me = 2; file 0 (`chunks` chunks, digests known) is owned by peer 1; peer 3, connected too,
/// downloads it as well (and may relay it).
fn owner_and_relay(chunks: u32) -> Scheduler {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), chunks);
    s.set_known(FileId(0), 0, chunks);
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    s
}

/// Drains `p`'s window.
fn fill(s: &mut Scheduler, p: PeerId, now: u64) -> Vec<Ask> {
    std::iter::from_fn(|| s.next_request(p, now)).collect()
}

#[test]
fn owner_is_asked_for_fresh_chunks_and_any_answer_is_booked() {
    let mut s = setup();
    s.peer_connected(PeerId(1));
    let asks = fill(&mut s, PeerId(1), 0);
    assert_eq!(asks.len(), INITIAL_WINDOW);
    assert!(asks.iter().all(|a| *a == Ask::Fresh(FileId(0))));
    assert_eq!(s.known_prefix(FileId(0)), 8);
    // The owner picks: chunk 5 answers one fresh request.
    assert_eq!(
        s.on_piece(PeerId(1), c(0, 5), 100),
        PieceOutcome::Verify { requested_at: 0 }
    );
    assert!(s.on_verified(c(0, 5), PeerId(1), true).is_empty());
    assert!(s.have(c(0, 5)));
    assert_eq!(s.outstanding(), INITIAL_WINDOW - 1);
}

#[test]
fn no_fresh_stops_fresh_requests_until_a_chunk_has_no_holder() {
    let mut s = setup();
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    fill(&mut s, PeerId(1), 0);
    assert!(s.no_fresh(PeerId(1), FileId(0), 10));
    assert!(!s.no_fresh(PeerId(9), FileId(0), 10), "unknown peer");
    // Every chunk is at relay 3 (and asked of it): no fresh request to the drained owner.
    for i in 0..8 {
        s.peer_has(PeerId(3), c(0, i));
    }
    while s.outstanding() > 0 {
        let n = s.inflight(PeerId(1));
        assert!(s.no_fresh(PeerId(1), FileId(0), 10));
        assert_eq!(s.inflight(PeerId(1)), n - 1);
    }
    assert_eq!(fill(&mut s, PeerId(3), 20).len(), 8);
    s.max_outstanding = 8; // (no endgame duplicates at the owner here)
    assert_eq!(s.next_request(PeerId(1), 20), None);
    s.on_tick(10 + PROBE_EVERY_US);
    assert_eq!(
        s.next_request(PeerId(1), 20),
        None,
        "nothing lacks a holder"
    );
    s.max_outstanding = 1024;
    // Relay 3 leaves: its chunks have no holder, so the owner is probed with one request.
    s.peer_disconnected(PeerId(3));
    s.on_tick(10 + 2 * PROBE_EVERY_US);
    assert_eq!(s.next_request(PeerId(1), 30), Some(Ask::Fresh(FileId(0))));
    assert_eq!(s.next_request(PeerId(1), 30), None, "one probe at a time");
    // It had one: fresh requests flow again.
    assert!(matches!(
        s.on_piece(PeerId(1), c(0, 2), 40),
        PieceOutcome::Verify { .. }
    ));
    assert_eq!(s.next_request(PeerId(1), 50), Some(Ask::Fresh(FileId(0))));
    assert_eq!(s.next_request(PeerId(1), 50), Some(Ask::Fresh(FileId(0))));
}

#[test]
fn no_fresh_below_a_bound_short_of_the_file_is_not_drained() {
    // The owner is still hashing: I know 2 digests of its 8. It sends chunks 0 and 1 to others
    // and answers my fresh requests (bounded below 2) with no_fresh.
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 8);
    s.set_known(FileId(0), 0, 2);
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    let asks = fill(&mut s, PeerId(1), 0);
    assert!(asks.iter().all(|a| *a == Ask::Fresh(FileId(0))));
    for _ in &asks {
        assert!(s.no_fresh(PeerId(1), FileId(0), 10));
    }
    s.peer_has(PeerId(3), c(0, 0));
    s.peer_has(PeerId(3), c(0, 1));
    assert_eq!(
        s.next_request(PeerId(1), 20),
        None,
        "no fresh chunk below 2, and chunks 0 and 1 are had from the relay"
    );
    // More digests: fresh requests again, never the owner's chunks by name, even long after.
    s.set_known(FileId(0), 2, 6);
    s.on_tick(LOST_AFTER_US + 10);
    let asks = fill(&mut s, PeerId(1), LOST_AFTER_US + 20);
    assert_eq!(asks.len(), INITIAL_WINDOW);
    assert!(
        asks.iter().all(|a| *a == Ask::Fresh(FileId(0))),
        "the owner is not drained, so no relay and nothing lost: {asks:?}"
    );
    // Refused up to the file's end: now it is drained.
    for _ in &asks {
        assert!(s.no_fresh(PeerId(1), FileId(0), LOST_AFTER_US + 30));
    }
    assert_eq!(
        s.next_request(PeerId(1), LOST_AFTER_US + 40),
        Some(Ask::Chunk(c(0, 0)))
    );
}

#[test]
fn a_chunk_lost_after_the_owner_drained_is_asked_of_the_owner_by_name() {
    let mut s = setup();
    s.peer_connected(PeerId(1));
    s.next_request(PeerId(1), 0);
    assert!(s.no_fresh(PeerId(1), FileId(0), 0));
    assert_eq!(
        s.next_request(PeerId(1), 1),
        None,
        "it may still be in flight"
    );
    s.on_tick(LOST_AFTER_US);
    assert_eq!(
        s.next_request(PeerId(1), LOST_AFTER_US),
        Some(Ask::Chunk(c(0, 0)))
    );
}

#[test]
fn owner_spared_while_a_relay_holds_the_chunk() {
    let mut s = setup();
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    for i in 0..8 {
        s.peer_has(PeerId(3), c(0, i));
    }
    s.no_fresh(PeerId(1), FileId(0), 0); // (no fresh request out: ignored)
    assert!(
        fill(&mut s, PeerId(3), 0)
            .iter()
            .all(|a| matches!(a, Ask::Chunk(_)))
    );
    assert!(
        fill(&mut s, PeerId(1), 0)
            .iter()
            .all(|a| *a == Ask::Fresh(FileId(0))),
        "only fresh chunks from the owner"
    );
}

#[test]
fn rarest_first_among_relays() {
    // Past the prefix window (the relays hold nothing in it), rarity decides.
    let (w, n) = (PREFIX_WINDOW, PREFIX_WINDOW + 4);
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), n);
    s.set_known(FileId(0), 0, n);
    s.peer_connected(PeerId(3));
    s.peer_connected(PeerId(4));
    for i in w..n {
        s.peer_has(PeerId(3), c(0, i));
    }
    for i in w..n - 1 {
        s.peer_has(PeerId(4), c(0, i));
    }
    // The last chunk is held by peer 3 alone: it goes first, then the lowest index.
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, n - 1))));
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, w))));
}

#[test]
fn where_the_held_prefix_ends_comes_before_rarer_chunks_and_the_peers_own_file() {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 64);
    s.add_file(FileId(1), PeerId(3), 8);
    s.add_file(FileId(2), PeerId(5), 8);
    for f in 0..3 {
        s.set_known(FileId(f), 0, if f == 0 { 64 } else { 8 });
    }
    s.peer_connected(PeerId(3));
    s.peer_connected(PeerId(4));
    for i in [1, 2, 40] {
        s.peer_has(PeerId(3), c(0, i));
    }
    for i in [1, 2] {
        s.peer_has(PeerId(4), c(0, i));
    }
    // Chunk 0 is held, so the prefix ends at 1. Chunks 1 and 2 are held by two relays and
    // chunk 40 by peer 3 alone; peer 3 also has fresh chunks of its own file. While its load
    // is unknown, its uplink may be the scarce one: it is asked for its own file only.
    s.mark_have(c(0, 0));
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Fresh(FileId(1))));
    s.peer_load(PeerId(3), 900_000, 100.0);
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 1))));
    // Another owner needs a third of peer 3's time for its file: peer 3's uplink is the
    // scarcer one again.
    s.peer_connected(PeerId(5));
    s.peer_load(PeerId(5), 300_000, 100.0);
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Fresh(FileId(1))));
    // A relay that owns nothing this node wants is asked for the prefix first.
    assert_eq!(s.next_request(PeerId(4), 0), Some(Ask::Chunk(c(0, 2))));
    // A bottleneck is asked for nothing but its own file, prefix or not.
    s.peer_has(PeerId(4), c(0, 3));
    s.precious.insert(PeerId(4));
    assert_eq!(s.next_request(PeerId(4), 0), None);
}

#[test]
fn unknown_digest_never_requested() {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 4);
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    s.peer_has(PeerId(3), c(0, 1));
    assert_eq!(
        s.next_request(PeerId(1), 0),
        None,
        "no fresh without digests"
    );
    assert_eq!(s.next_request(PeerId(3), 0), None);
    s.set_known(FileId(0), 0, 2);
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 1))));
    assert_eq!(s.known_prefix(FileId(0)), 2);
}

#[test]
fn window_follows_rate_times_round_trip_and_the_global_cap_holds() {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 100);
    s.set_known(FileId(0), 0, 100);
    s.peer_connected(PeerId(1));
    assert_eq!(fill(&mut s, PeerId(1), 0).len(), INITIAL_WINDOW);
    // A piece of 1000 B per 1000 µs, the first 100 ms after its request: 1 B/µs x 100 ms =
    // 100 chunks in flight. The rate counts once SPAN_US of pieces arrived.
    let base = 100_000;
    for k in 0..INITIAL_WINDOW as u32 {
        if u64::from(k) * 1000 <= SPAN_US {
            assert_eq!(s.window_of(PeerId(1)), INITIAL_WINDOW, "piece {k}");
        }
        s.on_piece(PeerId(1), c(0, k), base + 1000 * k as u64);
    }
    assert_eq!(s.window_of(PeerId(1)), MAX_WINDOW);
    // Then a piece per 1000 µs again, the first 1000 µs after the fill that asked for it (the
    // least latency falls to 1000 µs): 1 in flight plus the margin, plus the 2 requests a full
    // window adds when it runs dry (the first 16 all arrived before the next fill).
    for k in 16..60u32 {
        fill(&mut s, PeerId(1), base + 1000 * k as u64);
        s.on_piece(PeerId(1), c(0, k), base + 1000 + 1000 * k as u64);
    }
    assert_eq!(s.window_of(PeerId(1)), 1 + WINDOW_MARGIN as usize + 2);
    let mut s = setup();
    s.max_outstanding = 5;
    s.peer_connected(PeerId(1));
    assert_eq!(fill(&mut s, PeerId(1), 0).len(), 5);
    assert_eq!(s.outstanding(), 5);
}

#[test]
fn a_node_far_ahead_of_the_slowest_downloader_drops_its_window_margin() {
    let mut s = owner_and_relay(100);
    let p1 = s.peers.get_mut(&PeerId(1)).unwrap();
    p1.pacing.rate = 2.0; // B/µs: 2 chunks of 1000 B per 1000 µs of least latency
    p1.pacing.min_lat = 1000;
    let with_margin = (2.0 + WINDOW_MARGIN).ceil() as usize;
    assert_eq!(s.window_of(PeerId(1)), with_margin);
    // Ahead of peer 3 by exactly YIELD_LEAD chunks: the margin stays.
    for i in 0..YIELD_LEAD as u32 {
        s.mark_have(c(0, i));
    }
    assert_eq!(s.window_of(PeerId(1)), with_margin);
    // One more: the window is the bandwidth-delay product alone (at least MIN_WINDOW).
    s.mark_have(c(0, YIELD_LEAD as u32));
    assert_eq!(s.window_of(PeerId(1)), MIN_WINDOW.max(2));
    // A bare window that runs dry is no sign of a longer round trip: it grows no margin.
    assert_eq!(fill(&mut s, PeerId(1), 0).len(), MIN_WINDOW);
    assert!(!s.peers[&PeerId(1)].pacing.full);
    // Peer 3 catches up (its haves): the margin is back, and a full window counts again.
    for i in 0..=YIELD_LEAD as u32 {
        s.peer_has(PeerId(3), c(0, i));
    }
    assert_eq!(s.window_of(PeerId(1)), with_margin);
    assert_eq!(fill(&mut s, PeerId(1), 0).len(), with_margin - MIN_WINDOW);
    assert!(s.peers[&PeerId(1)].pacing.full);
    // A file added later counts for everyone but its owner: peer 3 owns these 40 chunks, so
    // I am now 40 behind it (peer 1 lacks them too, but has 83 fewer of file 0 to fetch).
    s.add_file(FileId(1), PeerId(3), 40);
    assert_eq!(s.lead(), -40);
}

#[test]
fn endgame_duplicates_at_a_faster_peer_and_cancels_the_loser() {
    let mut s2 = Scheduler::new(PeerId(2), CHUNK);
    s2.add_file(FileId(0), PeerId(1), 2);
    s2.set_known(FileId(0), 0, 2);
    s2.peer_connected(PeerId(3));
    s2.peer_connected(PeerId(4));
    for i in 0..2 {
        s2.peer_has(PeerId(3), c(0, i));
        s2.peer_has(PeerId(4), c(0, i));
    }
    assert_eq!(s2.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 0))));
    assert_eq!(s2.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 1))));
    s2.peers.get_mut(&PeerId(3)).unwrap().pacing.rate = 0.01;
    s2.peers.get_mut(&PeerId(4)).unwrap().pacing.rate = 10.0;
    // The request that waits longest at the slow peer goes first.
    assert_eq!(s2.next_request(PeerId(4), 1), Some(Ask::Chunk(c(0, 1))));
    assert_eq!(s2.next_request(PeerId(4), 1), Some(Ask::Chunk(c(0, 0))));
    assert_eq!(s2.next_request(PeerId(4), 1), None, "at most one per peer");
    assert_eq!(
        s2.on_piece(PeerId(4), c(0, 1), 5),
        PieceOutcome::Verify { requested_at: 1 }
    );
    assert_eq!(s2.on_verified(c(0, 1), PeerId(4), true), vec![PeerId(3)]);
    // The cancelled copy may still arrive: it is discarded, not a violation.
    assert_eq!(s2.on_piece(PeerId(3), c(0, 1), 6), PieceOutcome::Discard);
    assert_eq!(
        s2.on_piece(PeerId(3), c(0, 1), 7),
        PieceOutcome::Unrequested
    );
    assert_eq!(s2.outstanding(), 2);
}

#[test]
fn failed_chunk_goes_elsewhere() {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 1);
    s.set_known(FileId(0), 0, 1);
    s.peer_connected(PeerId(3));
    s.peer_has(PeerId(3), c(0, 0));
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 0))));
    assert!(matches!(
        s.on_piece(PeerId(3), c(0, 0), 1),
        PieceOutcome::Verify { .. }
    ));
    assert!(s.on_verified(c(0, 0), PeerId(3), false).is_empty());
    assert_eq!(
        s.next_request(PeerId(3), 2),
        None,
        "not from the peer that sent it bad"
    );
    s.peer_connected(PeerId(1));
    // The owner: the bad chunk by name first, then fresh ones.
    assert_eq!(s.next_request(PeerId(1), 3), Some(Ask::Chunk(c(0, 0))));
    assert_eq!(s.next_request(PeerId(1), 3), Some(Ask::Fresh(FileId(0))));
}

#[test]
fn disconnect_and_timeout_release_requests() {
    let mut s = setup();
    s.peer_connected(PeerId(3));
    for i in 0..8 {
        s.peer_has(PeerId(3), c(0, i));
    }
    s.next_request(PeerId(3), 0).unwrap();
    s.next_request(PeerId(3), 0).unwrap();
    s.peer_disconnected(PeerId(3));
    assert_eq!(s.outstanding(), 0);
    s.peer_connected(PeerId(1));
    let fresh = s.next_request(PeerId(1), 0).unwrap();
    assert_eq!(fresh, Ask::Fresh(FileId(0)));
    assert!(s.on_tick(REQUEST_TIMEOUT_US).is_empty());
    assert!(
        s.on_tick(REQUEST_TIMEOUT_US + 1).is_empty(),
        "nothing to cancel"
    );
    assert_eq!(s.outstanding(), 0);
    // A fresh piece after its timeout is still welcome.
    assert!(matches!(
        s.on_piece(PeerId(1), c(0, 4), REQUEST_TIMEOUT_US + 2),
        PieceOutcome::Verify { .. }
    ));
    assert_eq!(s.outstanding(), 1);
}

#[test]
fn silent_relay_does_not_stall_the_run() {
    let mut s = owner_and_relay(2);
    s.peer_has(PeerId(3), c(0, 0));
    s.max_outstanding = 2;
    assert_eq!(s.next_request(PeerId(3), 0), Some(Ask::Chunk(c(0, 0))));
    assert_eq!(
        s.next_request(PeerId(1), 0),
        Some(Ask::Fresh(FileId(0))),
        "from the owner, not chunk 0 by name: a relay holds it"
    );
    assert_eq!(
        s.on_tick(REQUEST_TIMEOUT_US + 1),
        vec![(PeerId(3), c(0, 0))]
    );
    assert_eq!(
        s.next_request(PeerId(3), 0),
        None,
        "not the silent peer again"
    );
    assert_eq!(
        s.next_request(PeerId(1), 0),
        Some(Ask::Chunk(c(0, 0))),
        "the owner now, by name"
    );
}

#[test]
fn a_drained_owner_relays_what_others_hold_but_not_what_is_in_flight() {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 2);
    s.set_known(FileId(0), 0, 2);
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    s.peer_has(PeerId(3), c(0, 1));
    assert_eq!(s.next_request(PeerId(1), 0), Some(Ask::Fresh(FileId(0))));
    assert!(s.no_fresh(PeerId(1), FileId(0), 0));
    // Chunk 0 has no holder yet (the owner's last fresh chunks are still on their way).
    assert_eq!(s.next_request(PeerId(1), 1), Some(Ask::Chunk(c(0, 1))));
    assert_eq!(s.next_request(PeerId(1), 1), None);
}

/// Me = 2. Files of 4 chunks, digests known: 0 owned by 1, 1 owned by 3, 2 owned by me. Peers
/// 1 and 3 connected.
fn three_owners() -> Scheduler {
    let mut s = Scheduler::new(PeerId(2), CHUNK);
    s.add_file(FileId(0), PeerId(1), 4);
    s.add_file(FileId(1), PeerId(3), 4);
    s.add_file(FileId(2), PeerId(2), 4);
    for f in 0..3 {
        s.set_known(FileId(f), 0, 4);
    }
    s.peer_connected(PeerId(1));
    s.peer_connected(PeerId(3));
    s
}

#[test]
fn a_bottleneck_owner_relays_nothing_and_takes_no_fresh_chunks() {
    // Me = 2 (fast); 1 has the slow uplink.
    let mut s = three_owners();
    s.peer_has(PeerId(1), c(1, 0)); // peer 1 holds a chunk of file 1 (from before)
    s.set_my_load(Some(1_000_000), 100.0);
    s.peer_load(PeerId(3), 900_000, 100.0);
    s.peer_load(PeerId(1), 4_000_000, 25.0);
    assert!(s.is_precious(PeerId(1)) && !s.am_precious());
    let from1 = fill(&mut s, PeerId(1), 0);
    assert!(
        from1.iter().all(|a| *a == Ask::Fresh(FileId(0))),
        "{from1:?}"
    );
    // Equal loads: nobody is spared.
    s.peer_load(PeerId(1), 1_000_000, 100.0);
    assert!(!s.is_precious(PeerId(1)));
    // Seen from the bottleneck itself: no fresh chunks of other files.
    let mut b = Scheduler::new(PeerId(1), CHUNK);
    b.add_file(FileId(0), PeerId(1), 4);
    b.add_file(FileId(1), PeerId(3), 4);
    b.set_known(FileId(1), 0, 4);
    b.peer_connected(PeerId(3));
    b.peer_load(PeerId(3), 1_000_000, 300.0);
    b.set_my_load(Some(4_000_000), 25.0);
    assert!(b.am_precious());
    assert_eq!(b.next_request(PeerId(3), 0), None);
    b.set_my_load(Some(0), 25.0);
    assert_eq!(b.next_request(PeerId(3), 0), Some(Ask::Fresh(FileId(1))));
}

#[test]
fn a_chunk_only_bottlenecks_hold_is_not_asked_again_of_a_bottleneck_owner() {
    // Me = 2. File 0 is owned by 1, the slow owner; relay 3, whose upload rate was measured
    // low (demand-limited, or starved of CPU), is taken for a bottleneck too. It holds chunk 0,
    // which left owner 1 once already: asking owner 1 again would cost the scarcest uplink.
    let mut s = three_owners();
    s.peer_connected(PeerId(4));
    s.peer_has(PeerId(3), c(0, 0));
    for i in 0..4 {
        s.mark_have(c(1, i)); // (nothing fresh wanted from 3)
    }
    s.set_my_load(Some(1_000_000), 100.0);
    s.peer_load(PeerId(4), 1_000_000, 100.0);
    s.peer_load(PeerId(1), 4_000_000, 25.0);
    s.peer_load(PeerId(3), 3_000_000, 30.0);
    assert!(s.is_precious(PeerId(1)) && s.is_precious(PeerId(3)));
    assert_eq!(
        s.next_request(PeerId(1), 0),
        Some(Ask::Fresh(FileId(0))),
        "the owner is asked for fresh chunks only"
    );
    assert_eq!(
        fill(&mut s, PeerId(3), 0),
        vec![Ask::Chunk(c(0, 0))],
        "the bottleneck relay: that chunk, and nothing else"
    );
    // Once a relay that is no bottleneck holds a chunk, it goes there.
    s.peer_has(PeerId(3), c(0, 1));
    s.peer_has(PeerId(4), c(0, 1));
    assert_eq!(fill(&mut s, PeerId(3), 1), vec![]);
    assert_eq!(s.next_request(PeerId(4), 1), Some(Ask::Chunk(c(0, 1))));
    // An owner that is no bottleneck is still asked for a chunk only bottlenecks hold.
    s.peer_has(PeerId(3), c(0, 2));
    s.peer_load(PeerId(1), 1_500_000, 100.0);
    assert!(!s.is_precious(PeerId(1)) && s.is_precious(PeerId(3)));
    assert_eq!(s.next_request(PeerId(1), 2), Some(Ask::Chunk(c(0, 2))));
}

#[test]
fn unexpected_piece_is_a_violation() {
    let mut s = setup();
    s.peer_connected(PeerId(1));
    assert_eq!(s.on_piece(PeerId(1), c(0, 3), 0), PieceOutcome::Unrequested);
    assert!(!s.peer_has(PeerId(1), c(0, 8)), "index out of range");
    assert!(
        !s.peer_bitfield(PeerId(1), FileId(0), &[0xff, 0xff]),
        "bitfield too long"
    );
}
