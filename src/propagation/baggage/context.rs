//! Baggage in the OpenTelemetry `Context`: extracted as `Baggage` for user code, forwarded byte
//! for byte while nobody replaced it.

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::Context;

use super::list::{format_baggage, BaggageList};
use crate::propagation::carrier::Carrier;
use crate::propagation::names::BAGGAGE;

/// The header a context's baggage arrived in, with the context that holds that `Baggage`, so
/// it can be told whether user code has replaced it since (holding the context keeps the
/// received `Baggage` alive, so its address identifies it).
#[derive(Debug)]
struct ReceivedBaggage {
    header: String,
    holder: Context,
}

/// `cx` with the baggage `carrier` holds: as OpenTelemetry `Baggage` for user code, and as
/// received for forwarding. `cx` itself when no member is kept.
///
/// ```
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::{Context, StringValue};
/// use tokentrace::propagation::extract_baggage;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("baggage", "tenant=acme".parse().unwrap());
/// let cx = extract_baggage(&headers, &Context::new());
/// assert_eq!(cx.baggage().get("tenant"), Some(&StringValue::from("acme")));
/// ```
pub fn extract_baggage<C: Carrier + ?Sized>(carrier: &C, cx: &Context) -> Context {
    let mut baggage = Baggage::new();
    let list = BaggageList::parse_with(carrier.get_all(BAGGAGE), |member| member.insert_into(&mut baggage));
    if list.is_empty() {
        return cx.clone();
    }
    let holder = cx.with_baggage(baggage);
    holder.with_value(ReceivedBaggage { header: list.into_header(), holder: holder.clone() })
}

/// Writes the baggage of `cx` as the one `baggage` header, replacing any: the header as
/// received while nobody replaced the context's `Baggage`, else the `Baggage` written anew
/// ([`format_baggage`]); no header when it is empty.
///
/// ```
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::{Context, KeyValue};
/// use tokentrace::propagation::{extract_baggage, inject_baggage};
///
/// let mut inbound = http::HeaderMap::new();
/// inbound.insert("baggage", "b=2 , a=1;p".parse().unwrap());
/// let cx = extract_baggage(&inbound, &Context::new());
///
/// let mut outbound = http::HeaderMap::new();
/// inject_baggage(&mut outbound, &cx);
/// assert_eq!(outbound["baggage"], "b=2 , a=1;p"); // unchanged: byte for byte
///
/// let cx = cx.with_baggage([KeyValue::new("tier", "gold")]);
/// inject_baggage(&mut outbound, &cx);
/// assert_eq!(outbound["baggage"], "tier=gold"); // replaced: written anew
/// ```
pub fn inject_baggage<C: Carrier + ?Sized>(carrier: &mut C, cx: &Context) {
    let baggage = cx.baggage();
    if let Some(received) = cx.get::<ReceivedBaggage>() {
        if std::ptr::eq(received.holder.baggage(), baggage) {
            carrier.set(BAGGAGE, &received.header);
            return;
        }
    }
    let header = format_baggage(baggage);
    if header.is_empty() {
        carrier.remove_all(BAGGAGE);
    } else {
        carrier.set(BAGGAGE, &header);
    }
}
