//! Property-based smoke versions of the `fuzz/` targets (the properties are this module's
//! parent's), plus round trips from generated valid values.

use proptest::prelude::*;

use crate::fuzzing;
use crate::propagation::{RequestId, TraceParent, TraceState};

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn traceparent_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        fuzzing::traceparent(&data);
    }

    #[test]
    fn traceparent_near_valid(version in hex(2), trace in hex(32), parent in hex(16), flags in hex(2),
                              suffix in "(-[a-z0-9]{0,8})?") {
        let text = format!("{version}-{trace}-{parent}-{flags}{suffix}");
        fuzzing::traceparent(text.as_bytes());
        let parsed = TraceParent::parse(text.as_bytes());
        let expect_ok = version != "ff"
            && (version != "00" || suffix.is_empty())
            && trace.chars().any(|c| c != '0')
            && parent.chars().any(|c| c != '0');
        prop_assert_eq!(parsed.is_ok(), expect_ok, "{}", text);
    }

    #[test]
    fn tracestate_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::tracestate(&data);
    }

    #[test]
    fn tracestate_valid_members(members in proptest::collection::btree_map("[a-z][a-z0-9_*/@-]{0,12}", "[!-+--<>-~]{1,20}", 0..40)) {
        let header = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        fuzzing::tracestate(header.as_bytes());
        let parsed = TraceState::from_headers([header.as_bytes()]);
        prop_assert_eq!(parsed.is_ok(), members.len() <= 32);
    }

    #[test]
    fn baggage_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::baggage(&data);
    }

    #[test]
    fn baggage_plausible(members in proptest::collection::vec(
        "[ \t]{0,2}[a-z%!=]{0,6}[ \t]{0,2}=[ \t]{0,2}([A-Za-z0-9%=/]|%[0-9A-Fa-f]{2}){0,12}(;[ \t]?[a-z]{1,4}(=[a-z0-9%]{0,4})?){0,2}[ \t]{0,2}",
        0..40,
    )) {
        let header = members.join(",");
        fuzzing::baggage(header.as_bytes());
    }

    #[test]
    fn request_id_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::request_id(&data);
    }

    #[test]
    fn request_id_valid(id in "[A-Za-z0-9._:@/+=-]{1,128}") {
        fuzzing::request_id(id.as_bytes());
        let parsed = RequestId::parse(id.as_bytes()).unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
    }
}

/// Values a header of each propagated name plausibly carries, valid or not.
fn plausible_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        Just("00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned()),
        Just("vendor=1,other@tenant=x".to_owned()),
        Just("123e4567-e89b-42d3-a456-426614174000".to_owned()),
        Just("frontend:8000".to_owned()),
        "[A-Za-z0-9._:@/+=-]{1,20}",
        "[ -~]{0,40}",
    ]
}

proptest! {
    #[test]
    fn inbound_headers_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzzing::inbound_headers(&data);
    }

    #[test]
    fn inbound_headers_plausible(large in any::<bool>(),
                                 records in proptest::collection::vec((0u8..6, plausible_value()), 0..8)) {
        let mut data = vec![u8::from(large)];
        for (name, value) in &records {
            data.push(*name);
            data.push(value.len() as u8);
            data.extend_from_slice(value.as_bytes());
        }
        fuzzing::inbound_headers(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn rpc_frame_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::rpc_frame(&data);
    }

    #[test]
    fn rpc_flow_control_frames(stream in any::<u64>(), increment in any::<u32>(), version in any::<u16>(),
                               windows in (any::<u32>(), any::<u32>()), cut in 0usize..40) {
        use crate::rpc::tcp::{Frame, FrameCodec};
        let hello = Frame::Hello { version, stream_window: windows.0, connection_window: windows.1 };
        let end = Frame::End { stream, kept_by: Some(format!("ttft>{increment}ms")) };
        for frame in [Frame::Window { stream, increment }, hello, end] {
            let mut wire = bytes::BytesMut::new();
            FrameCodec::new(1 << 16).encode(&frame, &mut wire).unwrap();
            fuzzing::rpc_frame(&[&[(cut % 256) as u8][..], &wire, &wire].concat());
            let cut = cut.min(wire.len());
            let mut partial = bytes::BytesMut::from(&wire[..cut]);
            let decoded = FrameCodec::new(1 << 16).decode(&mut partial).unwrap();
            prop_assert_eq!(decoded, (cut == wire.len()).then_some(frame));
        }
    }

    #[test]
    fn rpc_frame_valid_frames(stream in any::<u64>(), endpoint in "[a-z_]{0,12}",
                              metadata in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..8),
                              payload in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..400) {
        use crate::rpc::tcp::{Frame, FrameCodec};
        let frame = Frame::Request {
            stream,
            endpoint,
            metadata: metadata.into_iter().collect(),
            payload: bytes::Bytes::from(payload),
        };
        let mut wire = bytes::BytesMut::new();
        FrameCodec::new(1 << 16).encode(&frame, &mut wire).unwrap();
        let mut input = vec![(cut % 256) as u8];
        input.extend_from_slice(&wire);
        input.extend_from_slice(&wire); // two frames, split anywhere
        fuzzing::rpc_frame(&input);
        // Any truncation is "not yet", never an error or a wrong frame.
        let cut = cut.min(wire.len());
        let mut partial = bytes::BytesMut::from(&wire[..cut]);
        let decoded = FrameCodec::new(1 << 16).decode(&mut partial).unwrap();
        prop_assert_eq!(decoded, (cut == wire.len()).then_some(frame));
    }
}
