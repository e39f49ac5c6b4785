//! Property-based smoke versions of the `fuzz/` targets (the properties themselves live in
//! `tokentrace::fuzzing`), plus round trips from generated
//! valid values.

use proptest::prelude::*;
use tokentrace::fuzzing;
use tokentrace::propagation::{RequestId, TraceParent, TraceState};

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn rpc_frame_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::rpc_frame(&data);
    }

    #[test]
    fn rpc_frame_valid_frames(stream in any::<u64>(), endpoint in "[a-z_]{0,12}",
                              metadata in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..8),
                              payload in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..400) {
        use tokentrace::rpc::tcp::{Frame, FrameCodec};
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
