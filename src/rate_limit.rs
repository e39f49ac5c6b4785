//! One warning per interval, for conditions a hostile or broken peer can trigger per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lets one warning through per second; the rest are counted.
pub(crate) struct RateLimitedWarning {
    /// Milliseconds since the process epoch at which the next warning may go, plus one (0 = never
    /// warned yet).
    next_allowed_ms: AtomicU64,
    suppressed: AtomicU64,
}

const INTERVAL_MS: u64 = 1_000;

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RateLimitedWarning {
    pub(crate) const fn new() -> Self {
        Self { next_allowed_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Whether the caller should emit its warning now.
    pub(crate) fn should_emit(&self) -> bool {
        let now = now_ms();
        let next = self.next_allowed_ms.load(Ordering::Relaxed);
        if now + 1 >= next
            && self
                .next_allowed_ms
                .compare_exchange(next, now + 1 + INTERVAL_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// How many warnings were held back so far.
    #[allow(dead_code)]
    pub(crate) fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval() {
        let warning = RateLimitedWarning::new();
        assert!(warning.should_emit());
        assert!(!warning.should_emit());
        assert!(!warning.should_emit());
        assert_eq!(warning.suppressed(), 2);
    }
}
