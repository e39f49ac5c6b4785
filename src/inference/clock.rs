//! The clock read once per token.

use std::time::Instant;

/// A monotonic clock for token timing, read in nanoseconds from an arbitrary origin.
pub(crate) trait Clock {
    /// The current reading, in nanoseconds. Called once per stream item: it must be cheap.
    fn now_ns(&self) -> u64;

    /// A reading paired with the wall clock, taken at the start of a stream.
    fn anchor(&self) -> Anchor {
        Anchor { ns: self.now_ns(), instant: Instant::now() }
    }
}

/// A clock reading together with the `Instant` it was taken at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Anchor {
    /// The clock's reading.
    pub(crate) ns: u64,
    /// The wall-clock time of that reading.
    pub(crate) instant: Instant,
}

/// The default clock: `fastant`, which reads the CPU's time-stamp counter where it is
/// invariant (else the OS clock). The per-token budget (`BENCHMARKS.md`, `per_token`) needs a
/// read cheaper than `Instant::now`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuClock {
    _private: (),
}

impl Clock for CpuClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        fastant::Instant::now().duration_since(fastant::Instant::ZERO).as_nanos() as u64
    }
}

/// A clock moved by hand: for tests with scripted timings.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct ManualClock {
    now: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(test)]
impl ManualClock {
    /// A clock at tick 0.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    ///
    /// Clones share one time, so a test can keep one and hand the other to a stream:
    pub(crate) fn advance_ns(&self, nanos: u64) {
        self.now.fetch_add(nanos, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The clock a [`TokenStream`](super::TokenStream) reads: the CPU's, or in tests one moved by
/// hand. With one variant outside tests, the match costs nothing per token.
#[derive(Clone, Debug)]
pub(crate) enum StreamClock {
    Cpu(CpuClock),
    #[cfg(test)]
    Manual(ManualClock),
}

impl Clock for StreamClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        match self {
            Self::Cpu(clock) => clock.now_ns(),
            #[cfg(test)]
            Self::Manual(clock) => clock.now_ns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_clock_reads_nanoseconds() {
        let clock = CpuClock::default();
        let start = clock.anchor();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let elapsed_ns = (clock.now_ns() - start.ns) as f64;
        assert!((1.5e6..1e9).contains(&elapsed_ns), "{elapsed_ns} ns for a 2 ms sleep");
    }

    #[test]
    fn a_manual_clock_moves_by_hand_and_its_clones_share_its_time() {
        let clock = ManualClock::new();
        let given_away = StreamClock::Manual(clock.clone());
        let start = given_away.anchor();
        clock.advance_ns(1_500);
        assert_eq!(given_away.now_ns() - start.ns, 1_500);
    }
}
