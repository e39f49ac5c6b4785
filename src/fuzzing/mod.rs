//! Property checks shared by the cargo-fuzz targets (`fuzz/`) and their proptest smoke
//! versions in `cargo test`: one definition of "correct" for both.
//!
//! Each function panics when a property fails, which is what both harnesses look for. Built
//! with the `fuzzing` feature (which the fuzz crate turns on) and in the crate's own tests.

use crate::propagation::{RequestId, RequestUuid, TraceParent, TraceState};

/// Never panics; every accepted value formats and re-parses to itself.
pub fn traceparent(data: &[u8]) {
    if let Ok(parsed) = TraceParent::parse(data) {
        let text = parsed.to_string();
        assert_eq!(text.len(), 55);
        let mut headers = http::HeaderMap::new();
        crate::propagation::Carrier::set_traceparent(&mut headers, &parsed);
        assert_eq!(headers["traceparent"].as_bytes(), text.as_bytes());
        assert_eq!(TraceParent::parse(text.as_bytes()), Ok(parsed));
        assert_eq!(
            TraceParent::from_span_context(&parsed.to_span_context(&TraceState::EMPTY)),
            Some(parsed.with_parent_id(parsed.parent_id()))
        );
    }
}

/// Splits `data` into header values at `\n`; never panics; every accepted state re-parses to
/// itself, stays within the limits, lists exactly its members, and converts to OpenTelemetry's
/// `TraceState` (where that accepts its keys) with the same header.
pub fn tracestate(data: &[u8]) {
    if let Ok(state) = TraceState::from_headers(data.split(|&b| b == b'\n')) {
        assert!(state.len() <= crate::propagation::MAX_MEMBERS);
        let members: Vec<String> = state.iter().map(|(key, value)| format!("{key}={value}")).collect();
        assert_eq!((members.len(), members.join(",")), (state.len(), state.header().to_owned()));
        if let Some(otel) = state.to_otel() {
            assert_eq!(otel.header(), state.header());
        }
        assert_eq!(TraceState::from_headers([state.header().as_bytes()]), Ok(state.clone()));
        let sent = state.within_limits();
        assert!(sent.header().len() <= crate::propagation::MAX_HEADER_LEN);
        assert_eq!(TraceState::from_headers([sent.header().as_bytes()]).as_ref(), Ok(&*sent));
    }
}

/// Splits `data` into `baggage` header values at `\n`; never panics; the kept list stays within
/// the limits, re-parses to itself with nothing dropped, and the `Baggage` it gives writes out
/// and parses back to the same keys and values.
pub fn baggage(data: &[u8]) {
    use crate::propagation::{format_baggage, BaggageList, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};

    let list = BaggageList::from_headers(data.split(|&b| b == b'\n'));
    assert!(list.len() <= MAX_BAGGAGE_MEMBERS);
    assert!(list.header().len() <= MAX_BAGGAGE_BYTES);
    assert_eq!(list.members().count(), list.len());
    let again = BaggageList::from_headers([list.header().as_bytes()]);
    assert_eq!((again.header(), again.len(), again.dropped()), (list.header(), list.len(), 0));

    let baggage = list.to_baggage();
    let written = format_baggage(&baggage);
    assert!(written.len() <= MAX_BAGGAGE_BYTES);
    let reread = BaggageList::from_headers([written.as_bytes()]);
    assert_eq!(reread.dropped(), 0, "{written}");
    for (key, (value, metadata)) in &reread.to_baggage() {
        assert_eq!(baggage.get_with_metadata(key.as_str()), Some(&(value.clone(), metadata.clone())));
    }
}

/// Never panics; accepted ids re-parse to themselves; inbound values always yield a safe id.
pub fn request_id(data: &[u8]) {
    if let Ok(id) = RequestId::parse(data) {
        assert_eq!(id.as_str().as_bytes(), data);
        assert_eq!(RequestId::parse(id.as_str().as_bytes()), Ok(id));
    }
    let safe = RequestId::from_inbound(Some(data));
    assert!(RequestId::parse(safe.as_str().as_bytes()).is_ok());
    if let Ok(uuid) = RequestUuid::parse(data) {
        assert_eq!(RequestUuid::parse(&uuid.to_bytes()), Ok(uuid));
    }
}

/// Builds a header map from `data` (first byte: pad the map with unrelated headers when odd;
/// then records of a name byte, a length byte and the value) and extracts from it as a server
/// layer does. Never panics; the ids are always safe, a single valid inbound id is kept, and a
/// remote context injected again extracts to itself.
pub fn inbound_headers(data: &[u8]) {
    use crate::propagation::{inject_trace, Carrier, RemoteContext, RequestIds};
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    const NAMES: [&str; 6] = ["traceparent", "tracestate", "x-request-id", "request-id", "host", "x-other"];
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut headers = HeaderMap::new();
    while let [name, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (value, tail) = tail.split_at(len);
        rest = tail;
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]), value);
        }
    }
    if flags & 1 == 1 {
        for i in 0..20 {
            headers.insert(
                HeaderName::try_from(format!("x-pad-{i}")).expect("valid name"),
                HeaderValue::from_static("1"),
            );
        }
    }

    let ids = RequestIds::extract(&headers);
    assert!(RequestId::parse(ids.x_request_id.as_str().as_bytes()).is_ok(), "always a safe id");
    if let Some(inbound) = headers.get_single("x-request-id").and_then(|v| RequestId::parse(v).ok()) {
        assert_eq!(ids.x_request_id, inbound);
    }
    if let Some(uuid) = headers.get_single("request-id").and_then(|v| RequestUuid::parse(v).ok()) {
        assert_eq!(ids.request_id, uuid);
    }
    if let Some(remote) = RemoteContext::extract(&headers) {
        let mut again = HeaderMap::new();
        inject_trace(&mut again, &remote.traceparent, &remote.tracestate);
        let resent = RemoteContext::extract(&again).expect("what was injected extracts");
        assert_eq!(resent.traceparent, remote.traceparent.with_parent_id(remote.traceparent.parent_id()));
        assert_eq!(resent.tracestate, *remote.tracestate.within_limits());
    }
}

/// Splits `data` (after its first byte) into frames with a 64 KiB limit: never panics, never
/// buffers past the limit, decodes the same frames when the bytes arrive in two pieces (the
/// first byte picks the split), and every decoded frame re-encodes to itself.
pub fn rpc_frame(data: &[u8]) {
    use crate::rpc::tcp::FrameCodec;
    const LIMIT: usize = 64 * 1024;
    let Some((&split, data)) = data.split_first() else { return };
    let decode_all = |pieces: &[&[u8]]| {
        let mut codec = FrameCodec::new(LIMIT);
        let mut buffer = bytes::BytesMut::new();
        let mut frames = Vec::new();
        for piece in pieces {
            buffer.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buffer) {
                    Ok(Some(frame)) => frames.push(Ok(frame)),
                    Ok(None) => break,
                    Err(error) => {
                        frames.push(Err(error));
                        return frames;
                    }
                }
            }
            // The codec reserves room for an announced frame only within the limit.
            assert!(buffer.capacity() <= 2 * data.len().max(LIMIT + 4));
        }
        frames
    };
    let whole = decode_all(&[data]);
    let (first, second) = data.split_at(usize::from(split).min(data.len()));
    assert_eq!(decode_all(&[first, second]), whole);

    let codec = FrameCodec::new(LIMIT);
    for frame in whole.into_iter().flatten() {
        let mut wire = bytes::BytesMut::new();
        if codec.encode(&frame, &mut wire).is_ok() {
            assert_eq!(FrameCodec::new(LIMIT).decode(&mut wire), Ok(Some(frame)));
            assert!(wire.is_empty());
        }
    }
}

#[cfg(test)]
mod tests;
