//! Request heads of any method, target, version, header list and framing, through the
//! proxy's normalisation on the way upstream; `switchback_fuzz::head::check` states the
//! invariants.
//!
//! An input whose first byte is even is structured (known names and tokens, raw bytes,
//! duplicates, HTTP/1.0, 1.1 and 2); an odd first byte reads the rest as a raw HTTP/1.x head
//! (the seed corpus: published smuggling payloads), parsed as a server would.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use switchback_fuzz::head::{self, Head, Line, Text};

/// Mostly known pieces, sometimes raw bytes (up to 24 of them).
fn text(u: &mut Unstructured<'_>) -> Result<Text> {
    if u.ratio(7u8, 8u8)? {
        Ok(Text::Known(u.arbitrary::<u8>()? as usize))
    } else {
        let len = u.int_in_range(0..=24)?;
        Ok(Text::Raw(u.bytes(len)?.to_vec()))
    }
}

fn head(u: &mut Unstructured<'_>) -> Result<Head> {
    let method = text(u)?;
    let target = text(u)?;
    let version = u.arbitrary()?;
    let protocol = if u.arbitrary()? {
        Some(u.arbitrary::<u8>()? as usize)
    } else {
        None
    };
    let mut lines = Vec::new();
    for _ in 0..u.int_in_range(0..=14)? {
        let name = text(u)?;
        let mut value = Vec::new();
        for _ in 0..u.int_in_range(0..=4)? {
            value.push(text(u)?);
        }
        let separator = u.arbitrary::<u8>()? as usize;
        lines.push(Line {
            name,
            value,
            separator,
        });
    }
    Ok(Head {
        method,
        target,
        version,
        protocol,
        lines,
    })
}

/// A raw head, parsed as a server would hand it on (httparse trims values).
fn raw(bytes: &[u8]) -> Option<http::Request<()>> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    if !parsed.parse(bytes).ok()?.is_complete() {
        return None;
    }
    let mut req = http::Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        })
        .body(())
        .ok()?;
    for h in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let req = if mode & 1 == 1 {
        raw(rest)
    } else {
        let Ok(spec) = head(&mut Unstructured::new(rest)) else {
            return;
        };
        head::build(&spec)
    };
    if let Some(req) = req {
        head::check(&req);
    }
});
