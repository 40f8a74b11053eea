//! The request-head invariants of the `head_normalise` fuzz target, as property tests that run
//! with the others: no panic, a second pass changes nothing, no hop-by-hop header, `h2c` token
//! or `Connection` nomination survives, exactly one `Host`, `Upgrade` and `Connection` agree,
//! and the head written as HTTP/1.1 re-parses to the same header set. The model and the checks
//! live in `fuzz/src/head.rs`, shared with the fuzz target.
#![allow(clippy::unwrap_used)] // tests: a panic is a failed assertion

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/head.rs"]
mod head;

use head::{Head, Line, Text};
use proptest::collection::vec;
use proptest::prelude::*;

/// Mostly known pieces; sometimes printable, sometimes any bytes.
fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        8 => any::<usize>().prop_map(Text::Known),
        1 => vec(0x20u8..0x7f, 0..16).prop_map(Text::Raw),
        1 => vec(any::<u8>(), 0..16).prop_map(Text::Raw),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    (text(), vec(text(), 0..4), any::<usize>()).prop_map(|(name, value, separator)| Line {
        name,
        value,
        separator,
    })
}

fn head() -> impl Strategy<Value = Head> {
    (
        text(),
        text(),
        any::<u8>(),
        proptest::option::of(any::<usize>()),
        vec(line(), 0..12),
    )
        .prop_map(|(method, target, version, protocol, lines)| Head {
            method,
            target,
            version,
            protocol,
            lines,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_normalised_head_keeps_every_invariant(spec in head()) {
        if let Some(req) = head::build(&spec) {
            head::check(&req);
        }
    }
}

/// A few heads the properties must see forwarded (not just refused), so that a change that
/// refuses everything can't pass them.
#[test]
fn ordinary_heads_are_forwarded_and_keep_the_invariants() {
    let websocket = http::Request::get("/chat")
        .header("host", "a.example")
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let h2c = http::Request::get("/")
        .header("host", "a.example")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(())
        .unwrap();
    let absolute = http::Request::post("http://b.example:81/x?y")
        .header("host", "a.example")
        .header("transfer-encoding", "chunked")
        .header("te", "gzip, trailers")
        .body(())
        .unwrap();
    let h2 = http::Request::get("https://a.example/x")
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    for req in [websocket, h2c, absolute, h2] {
        assert!(head::check(&req), "refused: {req:?}");
    }
}
