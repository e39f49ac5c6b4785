//! W3C Trace Context (Level 2) conformance, table-driven, in the categories of the W3C test
//! suite (`test/test.py` in w3c/trace-context): every case sends headers into the strict
//! extractor and states whether the trace continues, and with which ids, flags and state.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use tokentrace::propagation::{inject_trace, RemoteContext, TraceParent, TraceState};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn tp(version: &str, trace: &str, parent: &str, flags: &str) -> String {
    format!("{version}-{trace}-{parent}-{flags}")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_bytes(value.as_bytes()).expect("test header value"),
        );
    }
    map
}

/// What the extractor must make of a case.
#[derive(Debug)]
enum Expect {
    /// Start a new trace: nothing continued.
    NewTrace,
    /// Continue `TRACE`/`PARENT` with these flags and this normalised tracestate.
    Continue { flags: u8, state: &'static str },
}
use Expect::*;

fn check(category: &str, case: &str, pairs: &[(&str, &str)], expect: Expect) {
    let got = RemoteContext::extract(&headers(pairs));
    match (&expect, &got) {
        (NewTrace, None) => {}
        (Continue { flags, state }, Some(remote)) => {
            assert_eq!(remote.traceparent.trace_id(), TraceId::from_hex(TRACE).unwrap(), "{category}/{case}");
            assert_eq!(
                remote.traceparent.parent_id(),
                SpanId::from_hex(PARENT).unwrap(),
                "{category}/{case}"
            );
            assert_eq!(remote.traceparent.flags(), TraceFlags::new(*flags), "{category}/{case}");
            assert_eq!(remote.tracestate.header(), *state, "{category}/{case}");
        }
        _ => panic!("{category}/{case}: expected {expect:?}, got {got:?}"),
    }
}

#[test]
fn headers_missing_present_duplicated_and_casing() {
    let good = tp("00", TRACE, PARENT, "01");
    check("headers", "no headers", &[], NewTrace);
    check("headers", "tracestate alone", &[("tracestate", "foo=1")], NewTrace);
    check("headers", "traceparent alone", &[("traceparent", &good)], Continue { flags: 1, state: "" });
    check(
        "headers",
        "both",
        &[("traceparent", &good), ("tracestate", "foo=1")],
        Continue { flags: 1, state: "foo=1" },
    );
    check("headers", "two traceparent headers", &[("traceparent", &good), ("traceparent", &good)], NewTrace);
    check(
        "headers",
        "two traceparents ignore tracestate too",
        &[("traceparent", &good), ("traceparent", &good), ("tracestate", "foo=1")],
        NewTrace,
    );
    check("headers", "comma-joined traceparent", &[("traceparent", &format!("{good},{good}"))], NewTrace);
    check("headers", "name casing TraceParent", &[("TraceParent", &good)], Continue { flags: 1, state: "" });
    check(
        "headers",
        "name casing TRACESTATE",
        &[("TRACEPARENT", &good), ("TraceState", "foo=1")],
        Continue { flags: 1, state: "foo=1" },
    );
    check("headers", "empty traceparent", &[("traceparent", "")], NewTrace);
}

#[test]
fn version() {
    check(
        "version",
        "00",
        &[("traceparent", &tp("00", TRACE, PARENT, "01"))],
        Continue { flags: 1, state: "" },
    );
    check(
        "version",
        "cc",
        &[("traceparent", &tp("cc", TRACE, PARENT, "01"))],
        Continue { flags: 1, state: "" },
    );
    check(
        "version",
        "cc with extra fields",
        &[("traceparent", &format!("{}-what-the-future-will-be-like", tp("cc", TRACE, PARENT, "01")))],
        Continue { flags: 1, state: "" },
    );
    check(
        "version",
        "cc with '.' suffix",
        &[("traceparent", &format!("{}.what-the-future-will-be-like", tp("cc", TRACE, PARENT, "01")))],
        NewTrace,
    );
    check(
        "version",
        "cc with suffix but no dash",
        &[("traceparent", &format!("{}what", tp("cc", TRACE, PARENT, "01")))],
        NewTrace,
    );
    check(
        "version",
        "00 with extra fields",
        &[("traceparent", &format!("{}-what-the-future-will-be-like", tp("00", TRACE, PARENT, "01")))],
        NewTrace,
    );
    check("version", "ff", &[("traceparent", &tp("ff", TRACE, PARENT, "01"))], NewTrace);
    // Control characters cannot travel in HTTP headers, but can in RPC metadata.
    assert!(TraceParent::parse(tp("\u{1}0", TRACE, PARENT, "01").as_bytes()).is_err());
    assert!(TraceParent::parse(format!("{}-\u{7f}", tp("cc", TRACE, PARENT, "01")).as_bytes()).is_err());
    for bad in ["0", "000", "0x", "-0", "GG", "0A", "AA", "zz", "+1"] {
        check("version", bad, &[("traceparent", &tp(bad, TRACE, PARENT, "01"))], NewTrace);
    }
}

#[test]
fn trace_id_and_parent_id() {
    let zero_trace = "0".repeat(32);
    let zero_parent = "0".repeat(16);
    check("trace_id", "all zero", &[("traceparent", &tp("00", &zero_trace, PARENT, "01"))], NewTrace);
    check("parent_id", "all zero", &[("traceparent", &tp("00", TRACE, &zero_parent, "01"))], NewTrace);
    for bad in [
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "4bf92f3577b34da6a3ce929d0e0e473.",
        "4bf92f3577b34da6a3ce929d0e0e473g",
        "4bf92f3577b34da6a3ce929d0e0e47 6",
        "4bf92f3577b34da6a3ce929d0e0e47366",
        "4bf92f3577b34da6a3ce929d0e0e473",
        "",
    ] {
        check("trace_id", bad, &[("traceparent", &tp("00", bad, PARENT, "01"))], NewTrace);
    }
    for bad in [
        "00F067AA0BA902B7",
        "00f067aa0ba902b.",
        "00f067aa0ba902bz",
        "00f067aa0ba902b77",
        "00f067aa0ba902b",
        "",
    ] {
        check("parent_id", bad, &[("traceparent", &tp("00", TRACE, bad, "01"))], NewTrace);
    }
}

#[test]
fn flags() {
    for (flags, kept) in [("00", 0), ("01", 1), ("02", 2), ("03", 3), ("09", 1), ("ff", 3), ("fe", 2)] {
        check(
            "flags",
            flags,
            &[("traceparent", &tp("00", TRACE, PARENT, flags))],
            Continue { flags: kept, state: "" },
        );
    }
    for bad in ["0x", "zz", "-1", "0A", "AA", "010", "1", "", "0 "] {
        check("flags", bad, &[("traceparent", &tp("00", TRACE, PARENT, bad))], NewTrace);
    }
}

#[test]
fn random_flag_propagates() {
    let remote =
        RemoteContext::extract(&headers(&[("traceparent", &tp("00", TRACE, PARENT, "02"))])).unwrap();
    assert!(remote.traceparent.is_random());
    assert!(!remote.traceparent.is_sampled());
    let child = remote.traceparent.with_parent_id(SpanId::from(7u64));
    let mut out = HeaderMap::new();
    inject_trace(&mut out, &child, &remote.tracestate);
    assert_eq!(out["traceparent"], tp("00", TRACE, "0000000000000007", "02"));
}

#[test]
fn whitespace() {
    let good = tp("00", TRACE, PARENT, "01");
    for padded in [format!(" {good}"), format!("{good} "), format!("\t{good}\t"), format!(" \t {good} \t ")] {
        check("whitespace", &padded, &[("traceparent", &padded)], Continue { flags: 1, state: "" });
    }
    check(
        "whitespace",
        "inside the value",
        &[("traceparent", &format!("00 -{TRACE}-{PARENT}-01"))],
        NewTrace,
    );
    check(
        "whitespace",
        "tracestate members",
        &[("traceparent", &good), ("tracestate", " foo=1 ,\tbar=2\t, ")],
        Continue { flags: 1, state: "foo=1,bar=2" },
    );
}

#[test]
fn tracestate() {
    let good = tp("00", TRACE, PARENT, "01");
    let case = |name: &str, states: &[&str], expect: Expect| {
        let mut pairs: Vec<(&str, &str)> = vec![("traceparent", &good)];
        pairs.extend(states.iter().map(|s| ("tracestate", *s)));
        check("tracestate", name, &pairs, expect);
    };
    case("empty header", &[""], Continue { flags: 1, state: "" });
    case("empty members", &[",,foo=1,,"], Continue { flags: 1, state: "foo=1" });
    case(
        "several headers, in order",
        &["foo=1", "", "bar=2,baz=3"],
        Continue { flags: 1, state: "foo=1,bar=2,baz=3" },
    );
    // Level 2: a vendor may discard duplicated keys it did not generate, not the whole list.
    case("duplicated key and value", &["foo=1,foo=1"], Continue { flags: 1, state: "foo=1" });
    case("duplicated key, one header", &["foo=1,foo=2"], Continue { flags: 1, state: "foo=1" });
    case("duplicated key, two headers", &["foo=1", "foo=1"], Continue { flags: 1, state: "foo=1" });
    case(
        "duplicated key among others",
        &["foo=1,bar=2", "baz=3,foo=4,bar=5"],
        Continue { flags: 1, state: "foo=1,bar=2,baz=3" },
    );
    case("duplicated key, then a bad member", &["foo=1,foo=2,@bad=3"], Continue { flags: 1, state: "" });
    let thirty_two: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    // `Expect` holds a `&'static str`: this test's one computed state lives for the process.
    let kept: &'static str = Box::leak(thirty_two.join(",").into_boxed_str());
    let with_repeat = format!("{kept},k0=again");
    case("32 members and a repeated key", &[with_repeat.as_str()], Continue { flags: 1, state: kept });
    case(
        "all allowed key characters",
        &["abcdefghijklmnopqrstuvwxyz0123456789_-*/=1"],
        Continue { flags: 1, state: "abcdefghijklmnopqrstuvwxyz0123456789_-*/=1" },
    );
    case("key starting with digit", &["1foo=1"], Continue { flags: 1, state: "1foo=1" });
    // Vendor formats: Level 2 makes '@' an ordinary key character after the first.
    case("vendor foo@bar", &["foo@bar=1"], Continue { flags: 1, state: "foo@bar=1" });
    case("vendor foo@@bar", &["foo@@bar=1"], Continue { flags: 1, state: "foo@@bar=1" });
    case("vendor foo@", &["foo@=1"], Continue { flags: 1, state: "foo@=1" });
    for bad in
        ["@foo=1", "Foo=1", "foo.bar=1", "foo bar=1", "_foo=1", "*foo=1", "=1", "foo", "FOO@BAR=1", "föo=1"]
    {
        let pairs = [("traceparent", good.as_str()), ("tracestate", bad)];
        // Non-ASCII cannot be a `HeaderValue` built from &str in `headers`, so build bytes directly.
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, HeaderValue::from_bytes(value.as_bytes()).unwrap());
        }
        let remote = RemoteContext::extract(&map).expect("traceparent still valid");
        assert!(remote.tracestate.is_empty(), "illegal key {bad:?} must discard the tracestate");
    }
    case("invalid member discards all", &["foo=1,bad key=2,bar=3"], Continue { flags: 1, state: "" });

    // 32-member limit.
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(",");
    let thirty_two = members(32);
    case(
        "32 members",
        &[&thirty_two],
        Continue { flags: 1, state: Box::leak(thirty_two.clone().into_boxed_str()) },
    );
    case("33 members", &[&members(33)], Continue { flags: 1, state: "" });
    let split = [members(16), (16..33).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(",")];
    case("33 members over two headers", &[&split[0], &split[1]], Continue { flags: 1, state: "" });

    // 256-character key limit.
    let key256 = format!("a{}", "b".repeat(255));
    let key257 = format!("a{}", "b".repeat(256));
    let ok = format!("{key256}=1");
    case("256-char key", &[&ok], Continue { flags: 1, state: Box::leak(ok.clone().into_boxed_str()) });
    case("257-char key", &[&format!("{key257}=1")], Continue { flags: 1, state: "" });

    // Values.
    let printable: String = (0x20u8..=0x7e).map(char::from).filter(|c| *c != ',' && *c != '=').collect();
    let value_ok = format!("foo={printable}");
    case(
        "all value characters",
        &[&value_ok],
        Continue { flags: 1, state: Box::leak(value_ok.clone().into_boxed_str()) },
    );
    let value256 = format!("foo={}", "v".repeat(256));
    case(
        "256-char value",
        &[&value256],
        Continue { flags: 1, state: Box::leak(value256.clone().into_boxed_str()) },
    );
    case("257-char value", &[&format!("foo={}", "v".repeat(257))], Continue { flags: 1, state: "" });
    case("value ending in space inside", &["foo=a ,bar=1"], Continue { flags: 1, state: "foo=a,bar=1" });
    case("empty value", &["foo="], Continue { flags: 1, state: "" });
    case("value with =", &["foo=a=b"], Continue { flags: 1, state: "" });
    case("value with leading space", &["foo= a"], Continue { flags: 1, state: "foo= a" });
    // Control characters cannot travel in HTTP headers, but can in RPC metadata.
    assert!(TraceState::from_headers([&b"foo=a\x7fb"[..]]).is_err(), "DEL in a value");
    assert!(TraceState::from_headers([&b"foo=a\x01b"[..]]).is_err(), "control character in a value");

    // A bad tracestate never affects the traceparent.
    case("bad tracestate keeps trace", &["!!!"], Continue { flags: 1, state: "" });
}

#[test]
fn tracestate_values_ending_in_space_between_members_are_trimmed_as_ows() {
    // "foo=a " — the trailing space is OWS around the member, not part of the value.
    let state = TraceState::from_headers([&b"foo=a \t"[..]]).unwrap();
    assert_eq!(state.get("foo"), Some("a"));
}

#[test]
fn inject_replaces_inbound_headers_and_never_sends_empty_tracestate() {
    let mut out = headers(&[
        ("traceparent", &tp("00", TRACE, PARENT, "01")),
        ("traceparent", &tp("00", TRACE, PARENT, "00")),
        ("tracestate", "stale=1"),
    ]);
    let ours = TraceParent::new(TraceId::from(5u128), SpanId::from(6u64), TraceFlags::SAMPLED);
    inject_trace(&mut out, &ours, &TraceState::EMPTY);
    assert_eq!(out.get_all("traceparent").iter().count(), 1);
    assert_eq!(out["traceparent"], ours.to_string());
    assert!(out.get("tracestate").is_none());
}

#[test]
fn inject_adds_entries_first_and_keeps_limits() {
    let members: String = (0..32).map(|i| format!("k{i}={}", "v".repeat(20))).collect::<Vec<_>>().join(",");
    let state = TraceState::from_headers([members.as_bytes()]).unwrap();
    let state = state.with_entry("ours", "1").unwrap();
    assert_eq!(state.iter().next(), Some(("ours", "1")));
    assert!(state.len() <= 32);
    assert!(state.header().len() <= 512);
    // Dropped from the end.
    assert!(state.get("k31").is_none());
    assert_eq!(state.get("k0"), Some("vvvvvvvvvvvvvvvvvvvv"));
}

#[test]
fn span_context_round_trips() {
    for flags in ["00", "01", "02", "03"] {
        let text = tp("00", TRACE, PARENT, flags);
        let parent: TraceParent = text.parse().unwrap();
        let state = TraceState::from_headers([&b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"[..]]).unwrap();
        let sc = parent.to_span_context(&state);
        assert!(sc.is_remote());
        assert_eq!(sc.trace_flags().to_u8(), u8::from_str_radix(flags, 16).unwrap());
        assert_eq!(TraceParent::from_span_context(&sc), Some(parent));
        assert_eq!(TraceState::from_otel(sc.trace_state()).unwrap(), state);
        assert_eq!(TraceParent::from_span_context(&sc).unwrap().to_string(), text);
    }
}

#[test]
fn level2_keys_survive_through_the_context() {
    // OpenTelemetry's TraceState refuses `foo@@bar`; the context keeps ours and injects it.
    let map = headers(&[("traceparent", &tp("00", TRACE, PARENT, "01")), ("tracestate", "foo@@bar=1,a=2")]);
    let remote = RemoteContext::extract(&map).unwrap();
    let cx = remote.to_context();
    assert!(cx.span().span_context().trace_state().header().is_empty());
    let mut out = HeaderMap::new();
    tokentrace::propagation::inject_context(&mut out, &cx);
    assert_eq!(out["tracestate"], "foo@@bar=1,a=2");
}

#[test]
fn propagator_via_opentelemetry_traits() {
    use opentelemetry::propagation::TextMapPropagator;
    use std::collections::HashMap;
    let propagator = tokentrace::propagation::Propagators::TRACE_CONTEXT;
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), tp("00", "4BF92F3577B34DA6A3CE929D0E0E4736", PARENT, "01"));
    assert!(!propagator.extract(&carrier).span().span_context().is_valid(), "uppercase refused");
    carrier.insert("traceparent".to_owned(), tp("00", TRACE, PARENT, "03"));
    carrier.insert("tracestate".to_owned(), "a=1".to_owned());
    let cx = propagator.extract(&carrier);
    let mut out = HashMap::new();
    propagator.inject_context(&cx, &mut out);
    assert_eq!(out["traceparent"], carrier["traceparent"]);
    assert_eq!(out["tracestate"], "a=1");
    assert_eq!(propagator.fields().collect::<Vec<_>>(), ["traceparent", "tracestate"]);
}

#[test]
fn large_header_maps_follow_the_same_rules() {
    // Past 16 header names the HeaderMap carrier looks fields up by name instead of scanning;
    // the outcome must not change.
    let mut pairs: Vec<(String, String)> =
        (0..20).map(|i| (format!("x-filler-{i}"), "v".to_owned())).collect();
    let good = tp("00", TRACE, PARENT, "01");
    pairs.push(("traceparent".into(), good.clone()));
    pairs.push(("tracestate".into(), "foo=1".into()));
    fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
    check("large", "valid with tracestate", &as_refs(&pairs), Continue { flags: 1, state: "foo=1" });
    pairs.push(("traceparent".into(), good));
    check("large", "duplicated traceparent", &as_refs(&pairs), NewTrace);
}
