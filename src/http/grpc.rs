//! gRPC over the HTTP layers: spans named and attributed as the OpenTelemetry RPC conventions
//! say, and the gRPC status read from the response headers or trailers.

use std::borrow::Cow;

use http::HeaderMap;
use opentelemetry::{KeyValue, Value};

use crate::active_span::ActiveSpan;

const RPC_SYSTEM: &str = "rpc.system";
const RPC_SERVICE: &str = "rpc.service";
const RPC_METHOD: &str = "rpc.method";
const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

/// Which side of the call a span is: they judge errors differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Whether a request is gRPC: its `content-type` is `application/grpc` or a subtype.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The span name `{package.Service}/{Method}` and the `rpc.*` attributes of a gRPC `path`
/// (`/package.Service/Method`); `None` when the path is not of that shape.
pub(crate) fn span_name(path: &str) -> Option<(Cow<'static, str>, [KeyValue; 3])> {
    let full = path.strip_prefix('/')?;
    let (service, method) = full.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    let attributes = [
        KeyValue::new(RPC_SYSTEM, "grpc"),
        KeyValue::new(RPC_SERVICE, service.to_owned()),
        KeyValue::new(RPC_METHOD, method.to_owned()),
    ];
    Some((Cow::Owned(full.to_owned()), attributes))
}

/// The `grpc-status` of a response's headers (trailers-only) or trailers.
pub(crate) fn status(headers: &HeaderMap) -> Option<i32> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes()).ok()?.parse().ok()
}

/// Records `code` as `rpc.grpc.status_code`, and marks the span failed as the conventions
/// say: on the client any code but OK; on the server only UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS.
pub(crate) fn record_status(span: &ActiveSpan, side: Side, code: i32, headers: &HeaderMap) {
    span.set_attribute(KeyValue::new(RPC_GRPC_STATUS_CODE, Value::I64(i64::from(code))));
    let failed = match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if failed {
        let message = headers
            .get("grpc-message")
            .and_then(|value| value.to_str().ok())
            .map_or_else(|| format!("gRPC status {code}"), str::to_owned);
        span.set_error(code_name(code), message);
    }
}

/// The status code's name, as `error.type`.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|index| NAMES.get(index)).copied().unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_give_names_and_attributes_only_when_well_formed() {
        let (name, attributes) = span_name("/grpc.health.v1.Health/Check").unwrap();
        assert_eq!(name, "grpc.health.v1.Health/Check");
        assert_eq!(attributes[1].value.as_str(), "grpc.health.v1.Health");
        assert_eq!(attributes[2].value.as_str(), "Check");
        for bad in ["/", "/onlyservice", "//Method", "/svc/", "/a/b/c", "no-slash"] {
            assert!(span_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn statuses_parse_and_name() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", "13".parse().unwrap());
        assert_eq!(status(&headers), Some(13));
        assert_eq!(code_name(13), "INTERNAL");
        assert_eq!(code_name(99), "_OTHER");
        assert_eq!(code_name(-1), "_OTHER");
    }
}
