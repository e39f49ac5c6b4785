//! Consistent probability sampling, as OpenTelemetry's TraceState probability sampling
//! specifies it: a 56-bit rejection threshold `th` derived from the ratio, compared with 56 bits
//! of randomness (an `rv` in the `ot` tracestate entry, else the trace id's low 56 bits, random
//! under W3C Trace Context Level 2). A root keeps its trace when `randomness >= threshold` and
//! writes `ot=th:…` into the trace's tracestate, so every process (and a collector) knows the
//! probability it was kept with; a parent-based child keeps the parent's decision and state.
//!
//! Consistency: a trace kept at one ratio is kept at every higher ratio, whichever process
//! decides, since all compare the same randomness.

use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

/// 2^56: one more than the largest threshold and randomness.
const MAX_THRESHOLD: u64 = 1 << 56;

/// Hex digits of threshold precision, as OpenTelemetry recommends SDKs use by default.
const PRECISION: i32 = 4;

/// A rejection threshold: a trace is kept when its randomness is at least this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Threshold(u64);

impl Threshold {
    /// Keeps every trace (`th:0`).
    pub(crate) const ALWAYS: Self = Self(0);

    /// The threshold of `probability`, rounded to [`PRECISION`] significant hex digits as the
    /// specification's algorithm does; `None` outside [2^-56, 1] (a zero ratio is "never",
    /// which is not probability sampling).
    pub(crate) fn from_probability(probability: f64) -> Option<Self> {
        if !(probability >= 1.0 / MAX_THRESHOLD as f64 && probability <= 1.0) {
            return None;
        }
        if probability == 1.0 {
            return Some(Self::ALWAYS);
        }
        // More digits for probabilities near zero, one per four binary orders of magnitude.
        let exponent = ((probability.to_bits() >> 52) & 0x7ff) as i32 - 1022; // as frexp's
        let precision = (PRECISION + (-exponent).max(0) / 4).clamp(1, 12);
        // 1 + the rejection probability, in [1, 2), rounded at the last digit kept.
        let rejection = 2.0 - probability + 0.5 * 2f64.powi(-4 * precision);
        let digits = if rejection >= 2.0 {
            0xf_ffff_ffff_ffff // 13 digits of f
        } else {
            rejection.to_bits() & ((1 << 52) - 1)
        };
        // The 13 hex digits of the fraction, cut to `precision`: the threshold's top digits.
        let kept = digits >> (4 * (13 - precision));
        Some(Self(kept << (4 * (14 - precision))))
    }

    /// Parses a `th` value: 1 to 14 lowercase hex digits, trailing zeros implied.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > 14 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let value = u64::from_str_radix(text, 16).ok()?;
        Some(Self(value << (4 * (14 - text.len()))))
    }

    /// The `th` value: hex with trailing zeros removed, `0` for [`Threshold::ALWAYS`].
    pub(crate) fn encode(self) -> String {
        if self.0 == 0 {
            return "0".to_owned();
        }
        let text = format!("{:014x}", self.0);
        text.trim_end_matches('0').to_owned()
    }

    /// The probability a trace is kept with.
    #[cfg(test)]
    fn probability(self) -> f64 {
        (MAX_THRESHOLD - self.0) as f64 / MAX_THRESHOLD as f64
    }

    /// Whether a trace with this randomness is kept.
    pub(crate) fn keeps(self, randomness: u64) -> bool {
        randomness >= self.0
    }
}

/// The `ot` tracestate entry's sub-key `key`, if present.
fn ot_value<'a>(state: &'a TraceState, key: &str) -> Option<&'a str> {
    let ot = state.get("ot")?;
    ot.split(';').find_map(|member| member.strip_prefix(key)?.strip_prefix(':'))
}

/// The trace's randomness: a valid `rv` (14 hex digits) in the `ot` entry, else the trace id's
/// low 56 bits.
pub(crate) fn randomness(trace_id: TraceId, state: &TraceState) -> u64 {
    let explicit = ot_value(state, "rv")
        .filter(|rv| rv.len() == 14 && rv.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|rv| u64::from_str_radix(rv, 16).ok());
    explicit.unwrap_or_else(|| {
        u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default()) & (MAX_THRESHOLD - 1)
    })
}

/// The threshold the trace was sampled with, if its tracestate says.
pub(crate) fn threshold_of(state: &TraceState) -> Option<Threshold> {
    ot_value(state, "th").and_then(Threshold::parse)
}

/// `state` with `th` set to `threshold` (or removed, when `None`) in its `ot` entry, the entry's
/// other sub-keys kept in order and the entry moved first, as a modified entry goes.
pub(crate) fn with_threshold(state: &TraceState, threshold: Option<Threshold>) -> TraceState {
    let others = state.get("ot").into_iter().flat_map(|ot| ot.split(';')).filter(|m| !m.starts_with("th:"));
    let th = threshold.map(|threshold| format!("th:{}", threshold.encode()));
    let members: Vec<String> =
        th.into_iter().chain(others.filter(|m| !m.is_empty()).map(str::to_owned)).collect();
    let updated = if members.is_empty() { state.delete("ot") } else { state.insert("ot", members.join(";")) };
    // A value the state refuses (an `ot` entry over its limits) leaves the state as it was.
    updated.unwrap_or_else(|_| state.clone())
}

/// The root sampler of `traceidratio` / `parentbased_traceidratio`: keeps a trace when its
/// randomness reaches the ratio's threshold, and records the threshold in the tracestate.
#[derive(Clone, Debug)]
pub(crate) struct ConsistentRatio {
    /// `None`: a ratio of zero, which keeps nothing.
    threshold: Option<Threshold>,
}

impl ConsistentRatio {
    pub(crate) fn new(ratio: f64) -> Self {
        Self { threshold: Threshold::from_probability(ratio.clamp(0.0, 1.0)) }
    }
}

impl ShouldSample for ConsistentRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().trace_state().clone())
            .unwrap_or_default();
        let keep = self.threshold.filter(|threshold| threshold.keeps(randomness(trace_id, &parent)));
        SamplingResult {
            decision: if keep.is_some() { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
            attributes: Vec::new(),
            // Dropped: no threshold, as what was not kept carries no probability.
            trace_state: with_threshold(&parent, keep),
        }
    }
}

/// `parentbased_*`: a child follows its parent's decision and keeps its tracestate; a root
/// asks `root`. A sampled parent whose threshold its own randomness contradicts (`rv < th`) is
/// still followed, but its threshold is erased: the probability it claims is not the one the
/// trace was kept with.
#[derive(Clone, Debug)]
pub(crate) struct ParentBased {
    root: Box<dyn ShouldSample>,
}

impl ParentBased {
    pub(crate) fn new(root: Box<dyn ShouldSample>) -> Self {
        Self { root }
    }
}

impl ShouldSample for ParentBased {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let parent =
            parent_context.filter(|cx| cx.has_active_span()).map(|cx| cx.span().span_context().clone());
        let Some(parent) = parent.filter(|parent| parent.is_valid()) else {
            return self.root.should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        };
        let state = parent.trace_state();
        let inconsistent = threshold_of(state)
            .is_some_and(|threshold| parent.is_sampled() && !threshold.keeps(randomness(trace_id, state)));
        SamplingResult {
            decision: if parent.is_sampled() {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: if inconsistent { with_threshold(state, None) } else { state.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

    use super::*;

    /// The specification's table (precision 4) for 1-in-N sampling.
    #[test]
    fn thresholds_match_the_specification() {
        let table = [
            (1.0, "0"),
            (0.5, "8"),
            (1.0 / 3.0, "aaab"),
            (0.25, "c"),
            (0.2, "cccd"),
            (0.125, "e"),
            (0.1, "e666"),
            (0.0625, "f"),
            (0.01, "fd70a"),
            (0.001, "ffbe77"),
            (0.0001, "fff9724"),
            (0.00001, "ffff583a"),
            (0.000001, "ffffef39"),
        ];
        for (probability, th) in table {
            let threshold = Threshold::from_probability(probability).unwrap();
            assert_eq!(threshold.encode(), th, "p = {probability}");
            assert_eq!(Threshold::parse(th), Some(threshold));
        }
        assert_eq!(Threshold::parse("fd70a4").unwrap().0, 0xfd70a400000000);
        assert!((Threshold::parse("e666").unwrap().probability() - 0.100006103515625).abs() < 1e-15);
        for refused in [0.0, -0.5, 1.5, f64::NAN] {
            assert_eq!(Threshold::from_probability(refused), None, "{refused}");
        }
        for bad in ["", "123456789abcdef", "G", "A", "-1"] {
            assert_eq!(Threshold::parse(bad), None, "{bad:?}");
        }
    }

    /// A trace kept at a lower ratio is kept at every higher one: the sample at a ratio is a
    /// subset of the sample at any higher ratio.
    #[test]
    fn lower_ratios_keep_subsets_of_higher_ratios() {
        let ratios = [0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0];
        let thresholds: Vec<Threshold> =
            ratios.iter().map(|&r| Threshold::from_probability(r).unwrap()).collect();
        let mut kept = vec![0usize; ratios.len()];
        for _ in 0..100_000 {
            let trace_id = TraceId::from(fastrand::u128(..));
            let r = randomness(trace_id, &TraceState::NONE);
            let decisions: Vec<bool> = thresholds.iter().map(|t| t.keeps(r)).collect();
            for pair in decisions.windows(2) {
                assert!(!pair[0] || pair[1], "kept at a lower ratio, dropped at a higher one");
            }
            for (count, keep) in kept.iter_mut().zip(decisions) {
                *count += usize::from(keep);
            }
        }
        // And each keeps about its ratio (within five standard deviations).
        for (ratio, count) in ratios.iter().zip(kept) {
            let expected = ratio * 100_000.0;
            let sigma = (100_000.0 * ratio * (1.0 - ratio)).sqrt().max(1.0);
            assert!((count as f64 - expected).abs() < 5.0 * sigma, "ratio {ratio}: {count} kept");
        }
    }

    #[test]
    fn randomness_comes_from_rv_or_the_trace_ids_low_56_bits() {
        let trace_id = TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(randomness(trace_id, &TraceState::NONE), 0xce_929d_0e0e_4736);
        let state = TraceState::from_key_value([("ot", "rv:00000000000001;th:8")]).unwrap();
        assert_eq!(randomness(trace_id, &state), 1);
        let malformed = TraceState::from_key_value([("ot", "rv:1")]).unwrap();
        assert_eq!(randomness(trace_id, &malformed), 0xce_929d_0e0e_4736);
    }

    #[test]
    fn the_ot_entry_gets_th_and_keeps_its_other_keys_and_the_other_entries() {
        let state =
            TraceState::from_key_value([("congo", "t61rcWkgMzE"), ("ot", "rv:00000000000001;x:y")]).unwrap();
        let sampled = with_threshold(&state, Threshold::from_probability(0.25));
        assert_eq!(sampled.header(), "ot=th:c;rv:00000000000001;x:y,congo=t61rcWkgMzE");
        assert_eq!(threshold_of(&sampled), Threshold::from_probability(0.25));
        let cleared = with_threshold(&sampled, None);
        assert_eq!(cleared.header(), "ot=rv:00000000000001;x:y,congo=t61rcWkgMzE");
        assert_eq!(with_threshold(&TraceState::NONE, None).header(), "");
        let only_th = with_threshold(&TraceState::NONE, Some(Threshold::ALWAYS));
        assert_eq!(with_threshold(&only_th, None).header(), "");
    }

    #[test]
    fn a_root_writes_its_threshold_only_into_traces_it_keeps() {
        let sampler = ConsistentRatio::new(0.5);
        let decide =
            |low: u128| sampler.should_sample(None, TraceId::from(low), "s", &SpanKind::Server, &[], &[]);
        let kept = decide(0x80_0000_0000_0000);
        assert_eq!(kept.decision, SamplingDecision::RecordAndSample);
        assert_eq!(kept.trace_state.header(), "ot=th:8");
        let dropped = decide(0x7f_ffff_ffff_ffff);
        assert_eq!(dropped.decision, SamplingDecision::Drop);
        assert_eq!(dropped.trace_state.header(), "");
        // A child follows its parent and keeps its state; a contradicted threshold is erased.
        let parent_based = ParentBased::new(Box::new(ConsistentRatio::new(0.5)));
        let child = |low: u128, sampled: bool, state: &str| {
            let state = TraceState::from_key_value([("ot", state)]).unwrap();
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let parent = SpanContext::new(TraceId::from(low), SpanId::from(1u64), flags, true, state);
            let cx = Context::new().with_remote_span_context(parent);
            parent_based.should_sample(Some(&cx), TraceId::from(low), "s", &SpanKind::Server, &[], &[])
        };
        let followed = child(0x90_0000_0000_0000, true, "th:8;x:y");
        assert_eq!(followed.decision, SamplingDecision::RecordAndSample);
        assert_eq!(followed.trace_state.header(), "ot=th:8;x:y");
        let contradicted = child(0x10_0000_0000_0000, true, "th:8;x:y");
        assert_eq!(contradicted.decision, SamplingDecision::RecordAndSample, "still followed");
        assert_eq!(contradicted.trace_state.header(), "ot=x:y");
        assert_eq!(child(0x90_0000_0000_0000, false, "x:y").decision, SamplingDecision::Drop);
        let root = parent_based.should_sample(
            None,
            TraceId::from(0x80_0000_0000_0000),
            "s",
            &SpanKind::Server,
            &[],
            &[],
        );
        assert_eq!(root.trace_state.header(), "ot=th:8");
        let never = ConsistentRatio::new(0.0);
        let result = never.should_sample(None, TraceId::from(u128::MAX), "s", &SpanKind::Server, &[], &[]);
        assert_eq!(result.decision, SamplingDecision::Drop);
    }
}
