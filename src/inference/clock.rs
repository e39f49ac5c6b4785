//! The clock read once per token: the CPU's time-stamp counter where there is one.

use std::time::Instant;

/// A monotonic clock for token timing. Readings are in ticks; a stream converts ticks to
/// nanoseconds once, at its end, from two anchors (one at its start, one at its end).
pub(crate) trait Clock {
    /// The current reading, in ticks. Called once per stream item: it must be cheap.
    ///
    /// A clock of your own, here counting microseconds since it was made:
    fn ticks(&self) -> u64;

    /// A reading paired with the wall clock, taken at the start of a stream.
    fn anchor(&self) -> Anchor {
        Anchor { ticks: self.ticks(), instant: Instant::now() }
    }

    /// Nanoseconds per tick, measured from `start` to now. Called once per stream.
    fn nanos_per_tick(&self, start: &Anchor) -> f64;
}

/// A clock reading together with the `Instant` it was taken at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Anchor {
    /// The clock's reading.
    pub(crate) ticks: u64,
    /// The wall-clock time of that reading.
    pub(crate) instant: Instant,
}

/// The default clock: the time-stamp counter on x86-64, `Instant` elsewhere. The counter is
/// read because the per-token budget (`BENCHMARKS.md`, `per_token`) needs a read cheaper than
/// `Instant::now`.
///
/// The tick rate is measured per stream, from its start and end, so no start-up calibration
/// is needed. It assumes an invariant TSC (every x86-64 CPU of the last fifteen years; Linux
/// says so by choosing `tsc` as its clocksource).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuClock {
    _private: (),
}

#[cfg(target_arch = "x86_64")]
impl Clock for CpuClock {
    #[inline]
    #[allow(unsafe_code)]
    fn ticks(&self) -> u64 {
        // SAFETY: `_rdtsc` reads the time-stamp counter; it has no preconditions (every x86-64
        // CPU has the instruction) and touches no memory. It is `unsafe` only because arch
        // intrinsics are.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    fn nanos_per_tick(&self, start: &Anchor) -> f64 {
        let ticks = self.ticks().saturating_sub(start.ticks);
        let nanos = start.instant.elapsed().as_nanos() as f64;
        if ticks == 0 {
            1.0
        } else {
            nanos / ticks as f64
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Clock for CpuClock {
    #[inline]
    fn ticks(&self) -> u64 {
        process_epoch().elapsed().as_nanos() as u64
    }

    fn nanos_per_tick(&self, _start: &Anchor) -> f64 {
        1.0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn process_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A clock moved by hand, one tick per nanosecond: for tests with scripted timings.
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
    fn ticks(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn nanos_per_tick(&self, _start: &Anchor) -> f64 {
        1.0
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
    fn ticks(&self) -> u64 {
        match self {
            Self::Cpu(clock) => clock.ticks(),
            #[cfg(test)]
            Self::Manual(clock) => clock.ticks(),
        }
    }

    fn nanos_per_tick(&self, start: &Anchor) -> f64 {
        match self {
            Self::Cpu(clock) => clock.nanos_per_tick(start),
            #[cfg(test)]
            Self::Manual(clock) => clock.nanos_per_tick(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_clock_converts_its_ticks_to_nanoseconds() {
        let clock = CpuClock::default();
        let start = clock.anchor();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let elapsed_ns = (clock.ticks() - start.ticks) as f64 * clock.nanos_per_tick(&start);
        assert!((1.5e6..1e9).contains(&elapsed_ns), "{elapsed_ns} ns for a 2 ms sleep");
    }

    #[test]
    fn a_manual_clock_moves_by_hand_and_its_clones_share_its_time() {
        let clock = ManualClock::new();
        let given_away = StreamClock::Manual(clock.clone());
        let start = given_away.anchor();
        clock.advance_ns(1_500);
        assert_eq!(given_away.ticks() - start.ticks, 1_500);
        assert_eq!(given_away.nanos_per_tick(&start), 1.0);
    }
}
