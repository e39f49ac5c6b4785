//! A fixed-size log-linear histogram: recording is an index computation and an add.

/// Sub-buckets per power of two: values are kept within 1/16 (reported within 1/32).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Inter-token latencies (in nanoseconds): count, sum, max exactly; quantiles within 1/32.
#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    counts: [u32; BUCKETS],
    count: u64,
    sum: u64,
    max: u64,
    /// The range of buckets ever touched, so quantiles scan tens of buckets, not hundreds.
    lowest: usize,
    highest: usize,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: [0; BUCKETS], count: 0, sum: 0, max: 0, lowest: BUCKETS, highest: 0 }
    }
}

fn bucket(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = (value >> shift) as usize; // in [SUB, 2 * SUB)
    (shift as usize + 1) * SUB + (mantissa - SUB)
}

/// The middle of a bucket's range.
fn representative(index: usize) -> f64 {
    if index < SUB {
        return index as f64;
    }
    let shift = (index / SUB - 1) as u32;
    let mantissa = (index % SUB + SUB) as u64;
    let low = (mantissa << shift) as f64;
    let width = (1u64 << shift) as f64;
    low + (width - 1.0) / 2.0
}

impl Histogram {
    /// Records `n` samples of `value`.
    #[inline]
    pub(crate) fn record_n(&mut self, value: u64, n: u32) {
        let index = bucket(value);
        let slot = &mut self.counts[index];
        *slot = slot.saturating_add(n);
        self.lowest = self.lowest.min(index);
        self.highest = self.highest.max(index);
        self.count += u64::from(n);
        self.sum = self.sum.saturating_add(value.saturating_mul(u64::from(n)));
        self.max = self.max.max(value);
    }

    /// The non-empty buckets as `(representative value, count)`, lowest first.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // the metrics' only reader
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (f64, u32)> + '_ {
        let range = self.lowest..(self.highest + 1).max(self.lowest);
        self.counts[range.clone()]
            .iter()
            .zip(range)
            .filter(|(&count, _)| count > 0)
            .map(|(&count, index)| (representative(index).min(self.max as f64), count))
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0..=1): the sample of rank ceil(q * count).
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (index, &count) in self.counts.iter().enumerate().take(self.highest + 1).skip(self.lowest) {
            seen += u64::from(count);
            if seen >= rank {
                // Never report past the exact maximum.
                return Some(representative(index).min(self.max as f64));
            }
        }
        Some(self.max as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for value in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let index = bucket(value);
            assert!(index >= last && index < BUCKETS);
            last = index;
            let mid = representative(index);
            assert!((mid - value as f64).abs() <= value as f64 / 32.0 + 0.5, "{value} -> {mid}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=100u64 {
            h.record_n(v * 1000, 1);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.mean(), Some(50_500.0));
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 50_000.0).abs() <= 50_000.0 / 32.0, "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 99_000.0).abs() <= 99_000.0 / 32.0, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
