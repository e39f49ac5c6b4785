//! The clock read once per token: the CPU's time-stamp counter where there is one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A monotonic clock for token timing. Readings are in ticks; a stream converts ticks to
/// nanoseconds once, at its end, from two anchors (one at its start, one at its end).
///
/// ```
/// use tokentrace::inference::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.anchor();
/// clock.advance_ns(1_500);
/// assert_eq!(clock.ticks() - start.ticks, 1_500);
/// assert_eq!(clock.nanos_per_tick(&start), 1.0);
/// ```
pub trait Clock {
    /// The current reading, in ticks. Called once per stream item: it must be cheap.
    ///
    /// A clock of your own, here counting microseconds since it was made:
    ///
    /// ```
    /// use std::time::Instant;
    /// use tokentrace::inference::{Anchor, Clock};
    ///
    /// struct Micros(Instant);
    /// impl Clock for Micros {
    ///     fn ticks(&self) -> u64 { self.0.elapsed().as_micros() as u64 }
    ///     fn nanos_per_tick(&self, _start: &Anchor) -> f64 { 1_000.0 }
    /// }
    /// let clock = Micros(Instant::now());
    /// let before = clock.ticks();
    /// std::thread::sleep(std::time::Duration::from_millis(2));
    /// assert!(clock.ticks() - before >= 2_000);
    /// ```
    fn ticks(&self) -> u64;

    /// A reading paired with the wall clock, taken at the start of a stream.
    ///
    /// ```
    /// use tokentrace::inference::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// clock.advance_ns(7);
    /// let anchor = clock.anchor();
    /// assert_eq!(anchor.ticks, 7);
    /// assert!(anchor.instant.elapsed().as_secs() < 1);
    /// ```
    fn anchor(&self) -> Anchor {
        Anchor { ticks: self.ticks(), instant: Instant::now() }
    }

    /// Nanoseconds per tick, measured from `start` to now. Called once per stream.
    ///
    /// ```
    /// use tokentrace::inference::{Clock, CpuClock};
    ///
    /// let clock = CpuClock::default();
    /// let start = clock.anchor();
    /// std::thread::sleep(std::time::Duration::from_millis(5));
    /// let rate = clock.nanos_per_tick(&start);
    /// assert!(rate > 0.0 && rate.is_finite());
    /// ```
    fn nanos_per_tick(&self, start: &Anchor) -> f64;
}

/// A clock reading together with the `Instant` it was taken at.
///
/// ```
/// use tokentrace::inference::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.anchor();
/// clock.advance_ns(2_000);
/// let elapsed_ns = (clock.ticks() - start.ticks) as f64 * clock.nanos_per_tick(&start);
/// assert_eq!(elapsed_ns, 2_000.0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Anchor {
    /// The clock's reading.
    pub ticks: u64,
    /// The wall-clock time of that reading.
    pub instant: Instant,
}

/// The default clock: the time-stamp counter on x86-64, `Instant` elsewhere. The counter is
/// read because the per-token budget (`BENCHMARKS.md`, `per_token`) needs a read cheaper than
/// `Instant::now`.
///
/// The tick rate is measured per stream, from its start and end, so no start-up calibration
/// is needed. It assumes an invariant TSC (every x86-64 CPU of the last fifteen years; Linux
/// says so by choosing `tsc` as its clocksource).
///
/// ```
/// use tokentrace::inference::{Clock, CpuClock};
///
/// let clock = CpuClock::default();
/// let start = clock.anchor();
/// std::thread::sleep(std::time::Duration::from_millis(2));
/// let elapsed_ms = (clock.ticks() - start.ticks) as f64 * clock.nanos_per_tick(&start) / 1e6;
/// assert!(elapsed_ms >= 1.5 && elapsed_ms < 1000.0);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuClock {
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
///
/// ```
/// use tokentrace::inference::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// clock.advance_ns(10);
/// assert_eq!(clock.ticks(), 10);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at tick 0.
    ///
    /// ```
    /// use tokentrace::inference::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new().ticks(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    ///
    /// Clones share one time, so a test can keep one and hand the other to a stream:
    ///
    /// ```
    /// use tokentrace::inference::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let given_away = clock.clone();
    /// clock.advance_ns(1_500_000);
    /// assert_eq!(given_away.ticks(), 1_500_000);
    /// ```
    pub fn advance_ns(&self, nanos: u64) {
        self.now.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn ticks(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn nanos_per_tick(&self, _start: &Anchor) -> f64 {
        1.0
    }
}
