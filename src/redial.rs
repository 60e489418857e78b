//! The dial-again policy for one peer link: after a failed dial or a lost connection the link is
//! dialled again with exponential backoff, a bounded number of times, and never after the peer
//! was banned for bad data. A transient fault must not cut a pair off for the rest of the run,
//! and a peer that is gone for good must not be dialled forever. Sans-IO: times are arguments.

/// Failed or lost connections to one peer after which it is not dialled again.
pub const MAX_DIAL_FAILURES: u32 = 6;
/// First redial delay (µs); doubled after each further failure.
pub const REDIAL_BASE_US: u64 = 250_000;

#[derive(Debug, Default)]
pub(crate) struct Redial {
    /// Failed or lost connections since the last success.
    failures: u32,
    /// When to dial again.
    at: Option<u64>,
    /// Dropped for bad data: never dialled (or accepted) again.
    pub banned: bool,
}

/// What a failure leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Dial again at this time.
    RetryAt(u64),
    /// Too many failures (this many): give the peer up.
    GiveUp(u32),
    /// Banned: nothing to do.
    Banned,
}

impl Redial {
    pub fn connected(&mut self) {
        self.failures = 0;
        self.at = None;
    }

    pub fn failed(&mut self, now: u64) -> AfterFailure {
        if self.banned {
            return AfterFailure::Banned;
        }
        self.failures += 1;
        if self.failures > MAX_DIAL_FAILURES {
            self.at = None;
            return AfterFailure::GiveUp(self.failures - 1);
        }
        let at = now + (REDIAL_BASE_US << (self.failures - 1).min(6));
        self.at = Some(at);
        AfterFailure::RetryAt(at)
    }

    /// Whether a dial is due now; if so it is consumed and its attempt number returned.
    pub fn due(&mut self, now: u64) -> Option<u32> {
        if self.at.is_some_and(|t| t <= now) {
            self.at = None;
            return Some(self.failures + 1);
        }
        None
    }

    /// Whether a dial is still to come.
    pub fn pending(&self) -> bool {
        self.at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up() {
        let mut r = Redial::default();
        assert_eq!(r.failed(0), AfterFailure::RetryAt(REDIAL_BASE_US));
        assert_eq!(r.due(REDIAL_BASE_US - 1), None);
        assert_eq!(r.due(REDIAL_BASE_US), Some(2));
        assert_eq!(r.failed(10), AfterFailure::RetryAt(10 + 2 * REDIAL_BASE_US));
        for _ in 2..MAX_DIAL_FAILURES {
            assert!(matches!(r.failed(0), AfterFailure::RetryAt(_)));
        }
        assert_eq!(r.failed(0), AfterFailure::GiveUp(MAX_DIAL_FAILURES));
        assert!(!r.pending());
        r.connected();
        assert_eq!(
            r.failed(0),
            AfterFailure::RetryAt(REDIAL_BASE_US),
            "a success resets the count"
        );
        r.banned = true;
        assert_eq!(r.failed(0), AfterFailure::Banned);
    }
}
