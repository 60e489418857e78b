//! Which owners are the bottleneck of the run, from the loads the clients tell each other: the
//! time each needs to send every chunk of its own files once, at its measured upload rate.
//!
//! Such an owner ("precious") must spend its uplink on its own file alone: nobody asks it to
//! relay, and it takes no fresh chunks of other files (it would hold copies nobody should ask it
//! for). Deciding it needs a clear case, or equal links would make everybody one:
//! - its time is at least `SHARE` of the largest and `GAP` times every other peer's;
//! - the others have at least as much upload capacity, to relay with;
//! - it becomes one only with at least `MIN_US` left (owners that finish at nearly the same time
//!   do not), and then stays one until its files are out (no flapping at the end, where its
//!   last chunks matter most).
//!
//! Sans-IO and pure: a function of the loads and of the previous answer.

use crate::ids::PeerId;
use std::collections::BTreeSet;

/// One client's load: its id, own-file time (µs; 0 when all out) and upload rate (bytes/µs).
pub type Load = (PeerId, u64, f64);

const SHARE: f64 = 0.6;
const GAP: f64 = 2.0;
const MIN_US: u64 = 1_000_000;

/// The bottleneck owners among `loads`; `before` is the previous answer.
pub fn bottlenecks(loads: &[Load], before: &BTreeSet<PeerId>) -> BTreeSet<PeerId> {
    let max = loads.iter().map(|l| l.1).max().unwrap_or(0);
    if loads.len() < 2 || max == 0 {
        return BTreeSet::new();
    }
    let slow = |e: u64| e as f64 >= SHARE * max as f64;
    let (mut cap_slow, mut cap_rest, mut least_slow, mut most_rest) = (0.0, 0.0, max, 0);
    for &(_, e, r) in loads {
        if slow(e) {
            cap_slow += r;
            least_slow = least_slow.min(e);
        } else {
            cap_rest += r;
            most_rest = most_rest.max(e);
        }
    }
    if cap_rest < cap_slow || cap_rest <= 0.0 || (least_slow as f64) < GAP * most_rest as f64 {
        return BTreeSet::new();
    }
    loads
        .iter()
        .filter(|l| slow(l.1) && (l.1 >= MIN_US || (l.1 > 0 && before.contains(&l.0))))
        .map(|l| l.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> BTreeSet<PeerId> {
        v.iter().map(|&i| PeerId(i)).collect()
    }

    const S: u64 = 1_000_000;

    #[test]
    fn the_slow_owner_of_net_slow_up_and_net_mixed() {
        // net-slow-up: 200 MiB at 31 MB/s against 125 MB/s.
        let up = [(PeerId(1), 6 * S, 31.0), (PeerId(2), 2 * S, 125.0)];
        let loads = [
            up[0],
            up[1],
            (PeerId(3), 2 * S, 125.0),
            (PeerId(4), 0, 125.0),
        ];
        assert_eq!(bottlenecks(&loads, &ids(&[])), ids(&[1]));
        // net-mixed: 16.8, 6.7, 3.4 and 1.7 s.
        let mixed = [
            (PeerId(1), 1_700_000, 125.0),
            (PeerId(2), 3_400_000, 62.0),
            (PeerId(3), 6_700_000, 31.0),
            (PeerId(4), 16_800_000, 12.5),
        ];
        assert_eq!(bottlenecks(&mixed, &ids(&[])), ids(&[4]));
    }

    #[test]
    fn nobody_with_equal_links_or_without_the_capacity_to_relay() {
        let equal: Vec<Load> = (1..=4)
            .map(|i| (PeerId(i), 2 * S + i as u64, 125.0))
            .collect();
        assert!(bottlenecks(&equal, &ids(&[])).is_empty());
        // Noise: 3.0 s against 1.7 s is no clear gap.
        let noisy = [(PeerId(1), 3 * S, 125.0), (PeerId(2), 1_700_000, 125.0)];
        assert!(bottlenecks(&noisy, &ids(&[])).is_empty());
        // Four equal owners and one node without files: it alone could not relay everything.
        let mut five = equal.clone();
        five.push((PeerId(5), 0, 125.0));
        assert!(bottlenecks(&five, &ids(&[])).is_empty());
        assert!(bottlenecks(&equal[..1], &ids(&[])).is_empty(), "alone");
    }

    #[test]
    fn becomes_one_with_a_second_left_and_stays_until_done() {
        let late = [(PeerId(1), 900_000, 31.0), (PeerId(2), 0, 125.0)];
        assert!(bottlenecks(&late, &ids(&[])).is_empty());
        assert_eq!(bottlenecks(&late, &ids(&[1])), ids(&[1]));
        let done = [(PeerId(1), 0, 31.0), (PeerId(2), 0, 125.0)];
        assert!(bottlenecks(&done, &ids(&[1])).is_empty());
    }
}
