//! Keep decisions across an HTTP or gRPC hop between two processes with keep rules
//! (`crate::decisions` holds the rest):
//!
//! - **up**: a server that kept the request's trace says so in a response trailer,
//!   `tokentrace-kept-by: <rule>`, and the client keeps its part too. HTTP/1.1 carries
//!   trailers only in a chunked response to a request that says `te: trailers` (the client
//!   layer says so when keep rules are installed) and whose head announces them
//!   (`trailer: tokentrace-kept-by`, which the server layer adds); gRPC always has them.
//! - **down**: a client whose process keeps the trace afterwards sends the server a notice, a
//!   `POST /.well-known/tokentrace/kept` with `tokentrace-kept: <trace id> <rule>`, through the
//!   same inner service; the server layer answers it (204) without calling the application,
//!   and keeps its part if it still holds it. A public endpoint ignores notices (they reach the
//!   application, which answers 404 as for any unknown path), so a caller on the internet
//!   cannot make it keep anything.
//!
//! A hop to a process without tokentrace's keep rules gets neither: that process follows the
//! head sampler's `sampled` flag, which keep rules never change.

use std::future::poll_fn;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use opentelemetry::trace::TraceId;
use tower_service::Service;

use crate::decisions::{self, Callee};

/// The response trailer naming the rule that kept the trace at the server.
pub(crate) const KEPT_BY_NAME: &str = "tokentrace-kept-by";
const KEPT_BY: HeaderName = HeaderName::from_static(KEPT_BY_NAME);
/// The request header of a notice: the trace id (32 hex digits), a space, the rule.
const KEPT: HeaderName = HeaderName::from_static("tokentrace-kept");
/// The path a notice is sent to.
pub(crate) const NOTICE_PATH: &str = "/.well-known/tokentrace/kept";

/// The trace and rule of a notice, if `request` is one.
pub(crate) fn notice<B>(request: &Request<B>) -> Option<(TraceId, String)> {
    if request.method() != Method::POST || request.uri().path() != NOTICE_PATH {
        return None;
    }
    let value = request.headers().get(KEPT)?.to_str().ok()?;
    let (trace_id, rule) = value.split_once(' ')?;
    let trace_id = TraceId::from_hex(trace_id).ok().filter(|id| *id != TraceId::INVALID)?;
    let rule = rule.trim();
    (!rule.is_empty()).then(|| (trace_id, rule.to_owned()))
}

/// The answer to a notice.
pub(crate) fn noticed<B: Default>() -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// The trailers that say `rule` kept the trace here, if the rule is a valid header value.
pub(crate) fn kept_trailers(rule: &str) -> Option<HeaderMap> {
    let mut trailers = HeaderMap::new();
    trailers.insert(KEPT_BY, HeaderValue::from_str(rule).ok()?);
    Some(trailers)
}

/// The rule a response's trailers say kept the trace at the server.
pub(crate) fn kept_by(trailers: &HeaderMap) -> Option<&str> {
    trailers.get(KEPT_BY)?.to_str().ok()
}

/// A callee that sends notices to the server `uri` names through `inner`, on the runtime of
/// the call (none: no notice).
pub(crate) fn callee<S, B>(inner: &S, uri: &Uri) -> Option<Callee>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Default + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(NOTICE_PATH));
    let target = Uri::from_parts(parts).ok()?;
    // Behind a lock: a service need not be `Sync`, a callee must be.
    let inner = std::sync::Mutex::new(inner.clone());
    Some(Callee::new(move |trace_id: TraceId, rule: &str| {
        let Ok(value) = HeaderValue::from_str(&format!("{trace_id} {rule}")) else { return };
        let Ok(request) = Request::post(target.clone()).header(KEPT, value).body(B::default()) else {
            return;
        };
        let mut inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        runtime.spawn(async move {
            if poll_fn(|cx| inner.poll_ready(cx)).await.is_ok() {
                // Best effort, as every notice: the answer says nothing the caller needs.
                let _ = inner.call(request).await;
            }
        });
    }))
}

/// Tells the installed keep rules, if any, that the server kept `trace_id`.
pub(crate) fn heard(trace_id: TraceId, trailers: &HeaderMap) {
    if let Some(rule) = kept_by(trailers) {
        decisions::kept_by_peer(Some(trace_id), rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_strictly() {
        let request = |method: &str, path: &str, value: &str| {
            Request::builder().method(method).uri(path).header(KEPT, value).body(()).unwrap()
        };
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            notice(&request("POST", NOTICE_PATH, &format!("{trace} duration>30000ms"))),
            Some((TraceId::from_hex(trace).unwrap(), "duration>30000ms".to_owned()))
        );
        for (method, path, value) in [
            ("GET", NOTICE_PATH, format!("{trace} error")),
            ("POST", "/v1/completions", format!("{trace} error")),
            ("POST", NOTICE_PATH, format!("{trace} ")),
            ("POST", NOTICE_PATH, "00000000000000000000000000000000 error".to_owned()),
            ("POST", NOTICE_PATH, "not-a-trace error".to_owned()),
        ] {
            assert_eq!(notice(&request(method, path, &value)), None, "{method} {path} {value}");
        }
    }

    #[test]
    fn trailers_carry_the_rule() {
        let trailers = kept_trailers("ttft>500ms").unwrap();
        assert_eq!(kept_by(&trailers), Some("ttft>500ms"));
        assert!(kept_trailers("bad\nrule").is_none());
    }
}
