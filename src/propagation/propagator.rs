//! Which propagators run (`OTEL_PROPAGATORS`), and the set as an OpenTelemetry
//! `TextMapPropagator`.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, TraceContextExt};
use opentelemetry::Context;

use super::baggage::{extract_baggage, inject_baggage};
use super::carrier::Carrier;
use super::context::{inject_span_context, RemoteContext};
use super::names;

/// The propagators in use: W3C Trace Context (strictly, see
/// [`TraceParent`](super::TraceParent) and [`TraceState`](super::TraceState)) and W3C Baggage
/// (see [`BaggageList`](super::BaggageList)), as `OTEL_PROPAGATORS` names them. The request
/// ids always travel.
///
/// `telemetry::init` installs the set `OTEL_PROPAGATORS` names (default
/// `tracecontext,baggage`) with [`Propagators::install`]; tokentrace's layers use the installed
/// set. It is also an OpenTelemetry `TextMapPropagator`, for other instrumentation:
///
/// ```
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
/// use std::collections::HashMap;
/// use tokentrace::propagation::Propagators;
///
/// let mut carrier = HashMap::new();
/// carrier.insert("traceparent".to_string(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string());
/// carrier.insert("baggage".to_string(), "tenant=acme".to_string());
/// let cx = Propagators::default().extract(&carrier);
/// assert!(cx.span().span_context().is_remote());
/// assert_eq!(cx.baggage().get("tenant").unwrap().as_str(), "acme");
///
/// let mut out = HashMap::new();
/// Propagators::default().inject_context(&cx, &mut out);
/// assert_eq!(out, carrier);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Propagators {
    trace_context: bool,
    baggage: bool,
}

/// The installed set, as `trace_context | baggage << 1`: global because `OTEL_PROPAGATORS` is
/// process-wide and layers are built independently of `telemetry::init` (one relaxed load per
/// request).
static INSTALLED: AtomicU8 = AtomicU8::new(Propagators::DEFAULT.bits());

impl Propagators {
    /// `tracecontext,baggage`: OpenTelemetry's default.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert_eq!(Propagators::default(), Propagators::DEFAULT);
    /// assert!(Propagators::DEFAULT.trace_context() && Propagators::DEFAULT.baggage());
    /// ```
    pub const DEFAULT: Self = Self { trace_context: true, baggage: true };

    /// `tracecontext` alone.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert!(!Propagators::TRACE_CONTEXT.baggage());
    /// ```
    pub const TRACE_CONTEXT: Self = Self { trace_context: true, baggage: false };

    /// `baggage` alone.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert!(!Propagators::BAGGAGE.trace_context());
    /// ```
    pub const BAGGAGE: Self = Self { trace_context: false, baggage: true };

    /// `none`: every request starts a new trace with no baggage, and nothing is injected.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert_eq!(Propagators::parse("none"), Ok(Propagators::NONE));
    /// ```
    pub const NONE: Self = Self { trace_context: false, baggage: false };

    /// Parses an `OTEL_PROPAGATORS` list: `tracecontext`, `baggage` and `none`,
    /// comma-separated, whitespace allowed; an empty list is the default.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    ///
    /// assert_eq!(Propagators::parse(" baggage , tracecontext"), Ok(Propagators::DEFAULT));
    /// assert_eq!(Propagators::parse(""), Ok(Propagators::DEFAULT));
    /// let error = Propagators::parse("tracecontext,b3").unwrap_err();
    /// assert_eq!(error.to_string(), "unknown propagator `b3` (known: tracecontext, baggage, none)");
    /// ```
    pub fn parse(list: &str) -> Result<Self, UnknownPropagator> {
        if list.trim().is_empty() {
            return Ok(Self::DEFAULT);
        }
        let mut set = Self::NONE;
        for name in list.split(',').map(str::trim) {
            match name {
                "tracecontext" => set.trace_context = true,
                "baggage" => set.baggage = true,
                "none" => {}
                other => return Err(UnknownPropagator(other.to_owned())),
            }
        }
        Ok(set)
    }

    /// Whether W3C Trace Context is extracted and injected.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert!(Propagators::TRACE_CONTEXT.trace_context());
    /// ```
    pub const fn trace_context(self) -> bool {
        self.trace_context
    }

    /// Whether W3C Baggage is extracted and injected.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert!(Propagators::BAGGAGE.baggage());
    /// ```
    pub const fn baggage(self) -> bool {
        self.baggage
    }

    const fn bits(self) -> u8 {
        self.trace_context as u8 | (self.baggage as u8) << 1
    }

    /// Makes this the set tokentrace's layers use, and OpenTelemetry's global propagator.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    ///
    /// Propagators::TRACE_CONTEXT.install();
    /// assert_eq!(Propagators::installed(), Propagators::TRACE_CONTEXT);
    /// Propagators::DEFAULT.install();
    /// ```
    pub fn install(self) {
        INSTALLED.store(self.bits(), Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(self);
    }

    /// The installed set ([`Propagators::DEFAULT`] until one is installed).
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert!(Propagators::installed().trace_context());
    /// ```
    pub fn installed() -> Self {
        let bits = INSTALLED.load(Ordering::Relaxed);
        Self { trace_context: bits & 1 != 0, baggage: bits & 2 != 0 }
    }

    /// `cx` with what `carrier` holds for this set: the caller's span as remote parent, its
    /// baggage. Fields of the other propagators are ignored.
    ///
    /// ```
    /// use opentelemetry::baggage::BaggageExt;
    /// use opentelemetry::trace::TraceContextExt;
    /// use opentelemetry::Context;
    /// use tokentrace::propagation::Propagators;
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    /// headers.insert("baggage", "tenant=acme".parse().unwrap());
    /// let cx = Propagators::BAGGAGE.extract_from(&headers, &Context::new());
    /// assert!(!cx.has_active_span());
    /// assert_eq!(cx.baggage().len(), 1);
    /// ```
    pub fn extract_from<C: Carrier + ?Sized>(self, carrier: &C, cx: &Context) -> Context {
        let cx = match self.trace_context.then(|| RemoteContext::extract(carrier)).flatten() {
            Some(remote) => remote.attach_to(cx),
            None => cx.clone(),
        };
        if self.baggage {
            extract_baggage(carrier, &cx)
        } else {
            cx
        }
    }

    /// Writes the fields of this set for `cx` into `carrier`, replacing what was there:
    /// exactly one `traceparent` (with `tracestate` when non-empty), exactly one `baggage`
    /// when the context holds any. Fields of the other propagators are left alone.
    ///
    /// ```
    /// use opentelemetry::baggage::BaggageExt;
    /// use opentelemetry::{Context, KeyValue};
    /// use tokentrace::propagation::Propagators;
    ///
    /// let cx = Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("traceparent", "stale".parse().unwrap());
    /// Propagators::DEFAULT.inject_into(&mut headers, &cx);
    /// assert!(headers.get("traceparent").is_none()); // no span in `cx`: nothing stale travels
    /// assert_eq!(headers["baggage"], "tenant=acme");
    /// ```
    pub fn inject_into<C: Carrier + ?Sized>(self, carrier: &mut C, cx: &Context) {
        if self.trace_context {
            inject_span_context(carrier, cx);
        }
        if self.baggage {
            inject_baggage(carrier, cx);
        }
    }
}

impl Default for Propagators {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Injects what the [installed](Propagators::installed) propagators carry for `cx`: its span
/// (with its trace state) as exactly one `traceparent`, and its baggage as exactly one
/// `baggage`. When `cx` has no valid span, any trace headers are removed so nothing stale
/// travels on. This is what the client layers call.
///
/// ```
/// use http::HeaderMap;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry::Context;
/// use tokentrace::propagation::inject_context;
///
/// let sc = SpanContext::new(TraceId::from(1u128), SpanId::from(2u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// let mut headers = HeaderMap::new();
/// inject_context(&mut headers, &Context::new().with_remote_span_context(sc));
/// assert_eq!(headers["traceparent"], "00-00000000000000000000000000000001-0000000000000002-01");
/// ```
pub fn inject_context<C: Carrier + ?Sized>(carrier: &mut C, cx: &Context) {
    Propagators::installed().inject_into(carrier, cx);
}

/// What a server layer continues from: the caller's context as parent (trace and baggage, as
/// the installed propagators say), or a new root.
pub(crate) struct Inbound {
    pub(crate) parent: Context,
    /// The caller's span, for a public endpoint that starts its own trace.
    pub(crate) link: Option<Link>,
    /// Whether the server span starts a new trace.
    pub(crate) root: bool,
}

impl Inbound {
    /// Reads `carrier`. A `public_endpoint` trusts nothing it received: the caller's span
    /// becomes a link of a new trace, and its baggage is dropped.
    pub(crate) fn extract<C: Carrier + ?Sized>(carrier: &C, public_endpoint: bool) -> Self {
        let propagators = Propagators::installed();
        if public_endpoint {
            let link = propagators
                .trace_context()
                .then(|| RemoteContext::extract(carrier))
                .flatten()
                .map(|remote| Link::with_context(remote.traceparent.to_span_context(&remote.tracestate)));
            return Self { parent: Context::new(), link, root: true };
        }
        let parent = propagators.extract_from(carrier, &Context::new());
        let root = !parent.has_active_span();
        Self { parent, link: None, root }
    }
}

/// A name in `OTEL_PROPAGATORS` that tokentrace does not know.
///
/// ```
/// use tokentrace::propagation::Propagators;
/// assert_eq!(Propagators::parse("xray").unwrap_err().name(), "xray");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPropagator(String);

impl UnknownPropagator {
    /// The unknown name.
    ///
    /// ```
    /// use tokentrace::propagation::Propagators;
    /// assert_eq!(Propagators::parse("b3multi").unwrap_err().name(), "b3multi");
    /// ```
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnknownPropagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown propagator `{}` (known: tracecontext, baggage, none)", self.0)
    }
}

impl std::error::Error for UnknownPropagator {}

/// Reads through an OpenTelemetry `Extractor`.
struct ExtractorCarrier<'a>(&'a dyn Extractor);

impl Carrier for ExtractorCarrier<'_> {
    fn get_all(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(name).into_iter().flatten().map(str::as_bytes)
    }

    fn set(&mut self, _name: &'static str, _value: &str) {}

    fn remove_all(&mut self, _name: &'static str) {}
}

/// Writes through an OpenTelemetry `Injector`.
struct InjectorCarrier<'a>(&'a mut dyn Injector);

impl Carrier for InjectorCarrier<'_> {
    fn get_all(&self, _name: &'static str) -> impl Iterator<Item = &[u8]> {
        std::iter::empty()
    }

    fn set(&mut self, name: &'static str, value: &str) {
        self.0.set(name, value.to_owned());
    }

    // An `Injector` cannot remove; `set` replaces the value in every injector OpenTelemetry
    // ships, and an absent field is simply not written.
    fn remove_all(&mut self, _name: &'static str) {}
}

impl TextMapPropagator for Propagators {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        self.inject_into(&mut InjectorCarrier(injector), cx);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.extract_from(&ExtractorCarrier(extractor), cx)
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 3]> = OnceLock::new();
        let all =
            FIELDS.get_or_init(|| [names::TRACEPARENT, names::TRACESTATE, names::BAGGAGE].map(str::to_owned));
        FieldIter::new(match (self.trace_context, self.baggage) {
            (true, true) => &all[..],
            (true, false) => &all[..2],
            (false, true) => &all[2..],
            (false, false) => &[],
        })
    }
}
