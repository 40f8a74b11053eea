//! The 8 key bytes of a WebSocket draft-76 (hixie-76) handshake, declared so hyper reads them.
//!
//! A draft-76 client sends `Sec-WebSocket-Key1`, `Sec-WebSocket-Key2` and then, right after
//! the head and without declaring them, 8 bytes of key material; its server reads all three
//! before it answers `101`. hyper only reads a body a head declares, so those bytes would wait
//! in its buffer for a `101` that never comes. [`KeyBytes`] follows an HTTP/1 head as it is read
//! and, once it knows the request is such a handshake (a `GET` with both keys and `Upgrade`,
//! and no framing of its own so far), adds `content-length: 8` after the line that told it:
//! hyper then reads exactly those 8 bytes as the request body, the legacy mode sends them
//! upstream with the head, and anything the client sends after them still waits for the `101`.
//! HAProxy reads such a request the same way.
//!
//! A head this does not recognise passes untouched; the scan costs a look at each head line's
//! first bytes and stops at the head's end.

/// The header line that declares the key bytes.
pub(super) const DECLARATION: &[u8] = b"content-length: 8\r\n";

/// The longest line start that matters: `sec-websocket-key1:`.
const CAPTURE: usize = 20;

/// Where an HTTP/1 head's scan stands.
#[derive(Debug, Default)]
pub(super) struct KeyBytes {
    scanning: bool,
    /// The first bytes of a line that began in an earlier read.
    carried: [u8; CAPTURE],
    carried_len: usize,
    /// The request line has gone by.
    request_line: bool,
    get: bool,
    key1: bool,
    key2: bool,
    upgrade: bool,
    /// The head has framing of its own, or has been given ours.
    framed: bool,
}

impl KeyBytes {
    /// A head begins with the next byte, unless one is being scanned already (its bytes
    /// come in several reads while the connection is idle).
    pub(super) fn head_started(&mut self) {
        if self.scanning {
            return;
        }
        *self = Self {
            scanning: true,
            ..Self::default()
        };
    }

    /// Follows `bytes` of a head; returns where in them to insert [`DECLARATION`] (the scan
    /// stopped there: the bytes after it are to be scanned again when they come back).
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while self.scanning && at < bytes.len() {
            let rest = &bytes[at..];
            let Some(eol) = memchr::memchr(b'\n', rest) else {
                self.carry(rest);
                return None;
            };
            at += eol + 1;
            let declare = if self.carried_len == 0 {
                self.line_ended(&rest[..eol])
            } else {
                self.carry(&rest[..eol]);
                let carried = self.carried;
                let len = std::mem::take(&mut self.carried_len);
                self.line_ended(&carried[..len])
            };
            if declare {
                return Some(at);
            }
        }
        None
    }

    /// Keeps what the line's start needs of `part` for when the line ends.
    fn carry(&mut self, part: &[u8]) {
        let n = part.len().min(CAPTURE - self.carried_len);
        self.carried[self.carried_len..self.carried_len + n].copy_from_slice(&part[..n]);
        self.carried_len += n;
    }

    /// A line (its first bytes at least, without the `\n`) has ended; whether to declare the
    /// key bytes after it.
    fn line_ended(&mut self, line: &[u8]) -> bool {
        let empty = line.is_empty() || line == b"\r";
        if !self.request_line {
            // Empty lines before the request line are allowed (RFC 9112 §2.2).
            if !empty {
                self.request_line = true;
                self.get = line.starts_with(b"GET ");
            }
            return false;
        }
        if empty {
            self.scanning = false;
            return false;
        }
        let named = |name: &[u8]| {
            line.len() > name.len()
                && line[name.len()] == b':'
                && line[..name.len()].eq_ignore_ascii_case(name)
        };
        // Most lines are none of these: their first letter tells.
        match line[0].to_ascii_lowercase() {
            b'c' if named(b"content-length") => self.framed = true,
            b't' if named(b"transfer-encoding") => self.framed = true,
            b's' if named(b"sec-websocket-key1") => self.key1 = true,
            b's' if named(b"sec-websocket-key2") => self.key2 = true,
            b'u' if named(b"upgrade") => self.upgrade = true,
            _ => return false,
        }
        if self.get && self.key1 && self.key2 && self.upgrade && !self.framed {
            self.framed = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIXIE: &[u8] = b"GET /demo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\nSec-WebSocket-Protocol: sample\r\nUpgrade: WebSocket\r\n\
Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\nOrigin: http://example.com\r\n\r\n^n:ds[4U";

    /// Runs `head` through a scan in chunks of `size`, inserting as `ClientIo` does.
    fn rewrite(head: &[u8], size: usize) -> Vec<u8> {
        let mut scan = KeyBytes::default();
        scan.head_started();
        let mut out = Vec::new();
        let mut pending: Vec<u8> = head.to_vec();
        while !pending.is_empty() {
            let chunk: Vec<u8> = pending.drain(..size.min(pending.len())).collect();
            match scan.scan(&chunk) {
                Some(at) => {
                    out.extend_from_slice(&chunk[..at]);
                    out.extend_from_slice(DECLARATION);
                    pending.splice(0..0, chunk[at..].iter().copied());
                }
                None => out.extend_from_slice(&chunk),
            }
        }
        out
    }

    #[test]
    fn a_draft_76_head_declares_its_key_bytes_whatever_the_reads() {
        let expected = {
            let at = HIXIE
                .windows(30)
                .position(|w| w.starts_with(b"Sec-WebSocket-Key1"))
                .unwrap();
            let eol = at + HIXIE[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
            [&HIXIE[..eol], DECLARATION, &HIXIE[eol..]].concat()
        };
        for size in [1, 2, 3, 7, 19, 20, 21, 64, HIXIE.len()] {
            assert_eq!(rewrite(HIXIE, size), expected, "reads of {size} bytes");
        }
        let mut req = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut req);
        let httparse::Status::Complete(end) = parsed.parse(&expected).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(&expected[end..], b"^n:ds[4U", "the key bytes are the body");
    }

    #[test]
    fn other_heads_pass_untouched() {
        let untouched = |head: &[u8]| assert_eq!(rewrite(head, 5), head, "{}", String::from_utf8_lossy(head));
        // RFC 6455: one key, no key bytes.
        untouched(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        // Declared framing of its own, before or after the keys.
        untouched(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nUpgrade: x\r\nSec-WebSocket-Key1: 1\r\nSec-WebSocket-Key2: 2\r\n\r\nabc");
        // Not a GET.
        untouched(b"POST / HTTP/1.1\r\nUpgrade: x\r\nSec-WebSocket-Key1: 1\r\nSec-WebSocket-Key2: 2\r\n\r\n");
        // No Upgrade: a plain request that happens to carry the keys.
        untouched(b"GET / HTTP/1.1\r\nSec-WebSocket-Key1: 1\r\nSec-WebSocket-Key2: 2\r\n\r\n");
        // A name that only begins like a key's.
        untouched(b"GET / HTTP/1.1\r\nUpgrade: x\r\nSec-WebSocket-Key1x: 1\r\nSec-WebSocket-Key2: 2\r\n\r\n");
        // Key lines after the head's end are body bytes.
        untouched(
            b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\nSec-WebSocket-Key1: 1\r\nSec-WebSocket-Key2: 2\r\n\r\n",
        );
    }

    #[test]
    fn lf_line_ends_and_leading_empty_lines() {
        let head = b"\r\nGET / HTTP/1.1\nUpgrade: WebSocket\nSec-WebSocket-Key1: 1\nSec-WebSocket-Key2: 2\n\nkeybytes";
        let out = rewrite(head, 4);
        assert!(
            out.ends_with(b"Sec-WebSocket-Key2: 2\ncontent-length: 8\r\n\nkeybytes"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
