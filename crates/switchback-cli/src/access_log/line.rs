//! One access-log line, written as JSON by hand.
//!
//! Every tunnel writes two lines, so this is on the path of every new tunnel. A derived
//! serializer went through serde's map machinery and `fmt` for every key, address and
//! timestamp: about a tenth of the proxy's instructions per tunnel. The line's shape is fixed
//! (the same keys, in the same order, always), so it is written straight into one buffer. The
//! output is the JSON serde_json would write for the same values; the tests parse it back.

use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;

use jiff::Timestamp;
use switchback::trace::TraceId;

/// One line. Every key is always present (`null` when unknown).
pub(super) struct Line<'a> {
    pub(super) time: Timestamp,
    pub(super) event: &'static str,
    pub(super) request_id: Option<&'a str>,
    pub(super) trace_id: Option<TraceId>,
    pub(super) client: Option<SocketAddr>,
    pub(super) protocol: &'static str,
    pub(super) tls: bool,
    pub(super) sni: Option<&'a str>,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) route: Option<&'a str>,
    pub(super) upgrade: Option<&'a str>,
    pub(super) mode: Option<&'static str>,
    pub(super) status: u16,
    pub(super) upstream: Option<&'a str>,
    pub(super) upstream_protocol: Option<&'static str>,
    pub(super) bytes_received: u64,
    pub(super) bytes_sent: u64,
    pub(super) duration_ms: u64,
    pub(super) end: Option<&'a str>,
    pub(super) messages_received: Option<u64>,
    pub(super) messages_sent: Option<u64>,
    pub(super) close_code: Option<u16>,
}

impl Line<'_> {
    /// Appends the line and its newline to `out`.
    pub(super) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        push_time(out, self.time);
        out.extend_from_slice(b"\",\"event\":");
        push_str(out, self.event);
        out.extend_from_slice(b",\"request_id\":");
        push_opt_str(out, self.request_id);
        out.extend_from_slice(b",\"trace_id\":");
        match self.trace_id {
            // 32 hex digits: nothing to escape.
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(&id.to_hex());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"client\":");
        match self.client {
            Some(addr) => {
                out.push(b'"');
                push_addr(out, addr);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"protocol\":");
        push_str(out, self.protocol);
        out.extend_from_slice(if self.tls {
            b",\"tls\":true"
        } else {
            b",\"tls\":false"
        });
        out.extend_from_slice(b",\"sni\":");
        push_opt_str(out, self.sni);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        push_str(out, self.path);
        out.extend_from_slice(b",\"route\":");
        push_opt_str(out, self.route);
        out.extend_from_slice(b",\"upgrade\":");
        push_opt_str(out, self.upgrade);
        out.extend_from_slice(b",\"mode\":");
        push_opt_str(out, self.mode);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, self.status.into());
        out.extend_from_slice(b",\"upstream\":");
        push_opt_str(out, self.upstream);
        out.extend_from_slice(b",\"upstream_protocol\":");
        push_opt_str(out, self.upstream_protocol);
        out.extend_from_slice(b",\"bytes_received\":");
        push_u64(out, self.bytes_received);
        out.extend_from_slice(b",\"bytes_sent\":");
        push_u64(out, self.bytes_sent);
        out.extend_from_slice(b",\"duration_ms\":");
        push_u64(out, self.duration_ms);
        out.extend_from_slice(b",\"end\":");
        push_opt_str(out, self.end);
        out.extend_from_slice(b",\"messages_received\":");
        push_opt_u64(out, self.messages_received);
        out.extend_from_slice(b",\"messages_sent\":");
        push_opt_u64(out, self.messages_sent);
        out.extend_from_slice(b",\"close_code\":");
        push_opt_u64(out, self.close_code.map(u64::from));
        out.extend_from_slice(b"}\n");
    }
}

/// A number, or `null`.
fn push_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped as serde_json does.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every value needs no escape: one branch-free pass tells, then one copy.
    let plain = bytes
        .iter()
        .fold(true, |plain, &b| plain & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display`; IPv4 without `fmt`.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, octet.into());
            }
            out.push(b':');
            push_u64(out, v4.port().into());
        }
        SocketAddr::V6(_) => {
            // Writing to a Vec can't fail.
            let _ = write!(out, "{addr}");
        }
    }
}

thread_local! {
    /// The last second formatted on this thread (`2026-01-02T03:04:05`) and which second it
    /// is: lines come many to a second, so the date is formatted about once a second.
    static SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// `time` in RFC 3339, UTC, always with milliseconds (`2026-01-02T03:04:05.678Z`): one width
/// for every line, so the log sorts and lines up.
pub(super) fn push_time(out: &mut Vec<u8>, time: Timestamp) {
    let millis = time.as_millisecond();
    let (second, milli) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (cached, mut text) = SECOND.get();
    if cached != second {
        let whole = Timestamp::from_second(second).unwrap_or(time);
        let formatted = whole.strftime("%Y-%m-%dT%H:%M:%S").to_string();
        match formatted.as_bytes().try_into() {
            Ok(fixed) => {
                text = fixed;
                SECOND.set((second, text));
            }
            // Years past 9999 don't fit the cache; jiff refuses them anyway.
            Err(_) => {
                let _ = write!(out, "{time:.3}");
                return;
            }
        }
    }
    out.extend_from_slice(&text);
    let milli = u16::try_from(milli).unwrap_or(0);
    out.extend_from_slice(&[
        b'.',
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            time: Timestamp::from_millisecond(1_709_251_199_999).unwrap(),
            event: "tunnel_close",
            request_id: Some("id-1"),
            trace_id: Some(TraceId([0x4b; 16])),
            client: Some("127.0.0.1:50514".parse().unwrap()),
            protocol: "HTTP/1.1",
            tls: true,
            sni: None,
            method: "GET",
            path: "/ws",
            route: Some("routes[0]"),
            upgrade: Some("websocket"),
            mode: Some("joined"),
            status: 101,
            upstream: Some("[::1]:9001"),
            upstream_protocol: Some("HTTP/2"),
            bytes_received: 12,
            bytes_sent: u64::MAX,
            duration_ms: 0,
            end: None,
            messages_received: Some(3),
            messages_sent: None,
            close_code: Some(1000),
        }
    }

    fn written(line: &Line<'_>) -> String {
        let mut out = Vec::new();
        line.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_key_in_order_and_one_newline() {
        let text = written(&line());
        assert_eq!(
            text,
            concat!(
                r#"{"time":"2024-02-29T23:59:59.999Z","event":"tunnel_close","request_id":"id-1","#,
                r#""trace_id":"4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b","#,
                r#""client":"127.0.0.1:50514","protocol":"HTTP/1.1","tls":true,"sni":null,"#,
                r#""method":"GET","path":"/ws","route":"routes[0]","upgrade":"websocket","#,
                r#""mode":"joined","status":101,"upstream":"[::1]:9001","upstream_protocol":"HTTP/2","#,
                r#""bytes_received":12,"#,
                r#""bytes_sent":18446744073709551615,"duration_ms":0,"end":null,"#,
                r#""messages_received":3,"messages_sent":null,"close_code":1000}"#,
                "\n"
            )
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "qu\"ote\\d",
            "ctl\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}",
            "ünï✓",
            "",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn addresses_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.30.4:80",
            "[::ffff:1.2.3.4]:9",
            "[fe80::1]:443",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn a_line_parses_as_json_with_its_values() {
        let mut l = line();
        l.path = "/a\"b\\c\u{1}";
        l.client = Some("[2001:db8::1]:1".parse().unwrap());
        let v: serde_json::Value = serde_json::from_str(&written(&l)).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["client"], "[2001:db8::1]:1");
        assert_eq!(v["bytes_sent"], u64::MAX);
        assert!(v["end"].is_null());
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        let at = |millis: i64| {
            let mut out = Vec::new();
            push_time(&mut out, Timestamp::from_millisecond(millis).unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_005), "2000-02-29T00:00:00.005Z"); // leap day of a /400 year
        assert_eq!(at(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(1_709_251_199_000), "2024-02-29T23:59:59.000Z"); // same second, cached
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z"); // 2100 has no leap day
        assert_eq!(at(-1), "1969-12-31T23:59:59.999Z");
    }
}
