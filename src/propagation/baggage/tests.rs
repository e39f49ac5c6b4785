//! The parser, the writer and the context round trip together.

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::Context;

use super::*;

fn list(headers: &[&str]) -> BaggageList {
    BaggageList::from_headers(headers.iter().map(|h| h.as_bytes()))
}

#[test]
fn members_drop_alone_and_the_rest_is_kept_in_order() {
    let cases: [(&[&str], &str, usize); 10] = [
        (&["key1=value1,key2=value2"], "key1=value1,key2=value2", 0),
        (&["key1 = value1 ,\tkey2=value2"], "key1 = value1 ,\tkey2=value2", 0),
        (&["a=1,,b=2"], "a=1,b=2", 0),
        (&["a=1,=2,b=2"], "a=1,b=2", 1),
        (&["a=1,b=x y,c=3"], "a=1,c=3", 1),
        (&["a=1,b=%4,c=%41"], "a=1,c=%41", 1),
        (&["a=1;p;q=2", "b=2;=x"], "a=1;p;q=2", 1),
        (&["a=1", "a=2"], "a=1,a=2", 0),
        (&["k\u{e9}=1,b=\"q\""], "", 2),
        (&["a=1;", "b=2"], "b=2", 1),
    ];
    for (headers, forwarded, dropped) in cases {
        let list = list(headers);
        assert_eq!(list.header(), forwarded, "{headers:?}");
        assert_eq!(list.dropped(), dropped, "{headers:?}");
        assert_eq!(list.members().count(), list.len(), "{headers:?}");
    }
}

#[test]
fn limits_keep_64_members_and_8192_bytes_and_drop_whole_members() {
    let members: Vec<String> = (0..64).map(|i| format!("key{i:02}={}", "v".repeat(120))).collect();
    let header = members.join(",");
    assert!(header.len() <= MAX_BAGGAGE_BYTES);
    let kept = list(&[&header]);
    assert_eq!((kept.header(), kept.len(), kept.dropped()), (header.as_str(), 64, 0));

    let over = list(&[&header, "extra=1"]);
    assert_eq!((over.header(), over.dropped()), (header.as_str(), 1));

    let exact = format!("k={}", "v".repeat(MAX_BAGGAGE_BYTES - 2));
    assert_eq!(list(&[&exact]).header(), exact);
    let too_long = format!("k={}", "v".repeat(MAX_BAGGAGE_BYTES - 1));
    assert!(list(&[&too_long, "a=1"]).header() == "a=1");
}

#[test]
fn formatted_baggage_parses_back_to_the_same_baggage() {
    let mut baggage = Baggage::new();
    for (key, value) in [("plain", "abc"), ("spaces", "a b"), ("symbols", "%;,\"\\="), ("utf8", "ü€")] {
        baggage.insert(key, value);
    }
    baggage.insert_with_metadata("props", "1", "ttl=60;sensitive");
    baggage.insert_with_metadata("badprops", "2", "a,b");
    let parsed = list(&[&format_baggage(&baggage)]);
    assert_eq!(parsed.dropped(), 0);
    let again = parsed.to_baggage();
    assert_eq!(again.len(), baggage.len());
    for (key, (value, metadata)) in &baggage {
        let (parsed_value, parsed_metadata) = again.get_with_metadata(key.as_str()).unwrap();
        assert_eq!(parsed_value, value);
        let expected = if key.as_str() == "badprops" { "" } else { metadata.as_str() };
        assert_eq!(parsed_metadata.as_str(), expected);
    }
}

#[test]
fn an_untouched_context_forwards_the_header_and_a_replaced_one_writes_anew() {
    let mut inbound = http::HeaderMap::new();
    inbound.append("baggage", "a=1 ,a=2".parse().unwrap());
    inbound.append("baggage", "b=%41".parse().unwrap());
    let cx = extract_baggage(&inbound, &Context::new());
    // Other values added on top keep the received baggage.
    let cx = cx.with_value(7u32);
    let mut outbound = http::HeaderMap::new();
    outbound.append("baggage", "stale=1".parse().unwrap());
    outbound.append("baggage", "stale=2".parse().unwrap());
    inject_baggage(&mut outbound, &cx);
    assert_eq!(outbound.get_all("baggage").iter().collect::<Vec<_>>(), ["a=1 ,a=2,b=%41"]);

    inject_baggage(&mut outbound, &cx.with_cleared_baggage());
    assert!(outbound.get("baggage").is_none());
}
