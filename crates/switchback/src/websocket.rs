//! The little WebSocket (RFC 6455) knowledge a byte-level proxy needs.
//!
//! Switchback never decodes WebSocket payload. It checks the handshake's
//! `Sec-WebSocket-Accept`, and, to close a tunnel politely on drain, it follows frame
//! boundaries in the bytes it relays so that a `1001 Going Away` close frame is only ever
//! written between two frames.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The client's handshake key (RFC 6455 §11.3.1).
pub(crate) const SEC_WEBSOCKET_KEY: http::HeaderName = http::HeaderName::from_static("sec-websocket-key");

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64. Switchback makes one when it turns an
/// HTTP/2 WebSocket (RFC 8441, which has no key) into an HTTP/1.1 handshake.
pub(crate) fn new_key() -> http::HeaderValue {
    let bytes: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    http::HeaderValue::from_str(&key).expect("base64 text is a valid header value")
}

/// Close status 1001, "going away": the endpoint is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// Close code `1008 Policy Violation`: what a client past its limits gets.
pub const POLICY_VIOLATION: u16 = 1008;
/// Close code `1009 Message Too Big`: what the sender of a message past its limit gets.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// The opcode of a close frame.
const OPCODE_CLOSE: u8 = 0x8;

/// A close frame with `code` as a server sends it (unmasked).
pub fn server_close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

/// A close frame with `code` as a client sends it (masked, as RFC 6455 §5.3 requires).
pub fn client_close_frame(code: u16, mask: [u8; 4]) -> [u8; 8] {
    let [hi, lo] = code.to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        hi ^ mask[0],
        lo ^ mask[1],
    ]
}

/// Follows frame boundaries in one direction of a WebSocket byte stream.
///
/// Feed it every byte written, in order; [`FrameTracker::at_boundary`] then says whether the
/// next byte would start a frame. It reads headers only (at most 14 bytes a frame), so it costs
/// next to nothing on large frames.
#[derive(Debug, Clone, Default)]
pub(crate) struct FrameTracker {
    /// Header bytes of the current frame seen so far (a header is 2 to 14 bytes).
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// A close frame's header has gone by.
    close_seen: bool,
    /// Data messages whose final frame's header has gone by.
    messages: u64,
    /// Frames whose header has gone by.
    frames: u64,
    /// The first close frame's code, as its payload goes by.
    close: CloseCode,
}

/// The status code of the first close frame in a stream: its first two payload bytes,
/// unmasked.
#[derive(Debug, Clone, Copy, Default)]
enum CloseCode {
    /// No close frame yet.
    #[default]
    None,
    /// Reading its first payload bytes (`got` of them, in `code`), unmasking with `mask`.
    Reading { code: [u8; 2], got: u8, mask: [u8; 4] },
    /// Read: the code, or none (a close frame without a payload has no code).
    Read(Option<u16>),
}

impl FrameTracker {
    /// A tracker at the start of a stream.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether the stream, as fed so far, ends exactly between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Payload bytes of the current frame still to come, once its header has been seen: they
    /// can be relayed without looking at them (see [`FrameTracker::skip`]).
    pub(crate) fn payload_left(&self) -> u64 {
        if self.header_len == 0 { self.remaining } else { 0 }
    }

    /// Whether a close frame has begun in the stream fed so far.
    pub(crate) fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Frames (data and control) whose header has gone by.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// Data messages (text or binary) whose last frame has begun so far; control frames are
    /// not messages.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// The first close frame's status code: `None` before one has gone by (and while its
    /// code is arriving), `Some(None)` for one that carried none.
    pub(crate) fn close_code(&self) -> Option<Option<u16>> {
        match self.close {
            CloseCode::Read(code) => Some(code),
            CloseCode::None | CloseCode::Reading { .. } => None,
        }
    }

    /// How many more bytes can be relayed without passing the end of the current frame: the
    /// rest of its payload, or of its header while that is incomplete. 0 at a boundary. A
    /// relay that must stop at the next boundary (to put a close frame there) reads at most
    /// this much at a time.
    pub(crate) fn to_boundary(&self) -> u64 {
        let have = usize::from(self.header_len);
        match have {
            0 => self.remaining,
            // The second byte says how long the header is.
            1 => 1,
            _ => {
                let b1 = self.header[1];
                let ext = match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
                (2 + ext + mask - have) as u64
            }
        }
    }

    /// Accounts for `n` payload bytes relayed unseen; `n` is at most
    /// [`FrameTracker::payload_left`].
    pub(crate) fn skip(&mut self, n: u64) {
        self.remaining = self.remaining.saturating_sub(n);
    }

    /// Accounts for `bytes`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                if let CloseCode::Reading { .. } = self.close {
                    self.read_close_code(&bytes[..skip]);
                }
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let have = usize::from(self.header_len);
            let take = (14 - have).min(bytes.len());
            self.header[have..have + take].copy_from_slice(&bytes[..take]);
            let filled = have + take;
            match header_len(&self.header[..filled]) {
                Some((len, payload)) => {
                    self.frame_began(len, payload);
                    // `len > have`: this frame's header ends inside the bytes just copied.
                    let used = len - have;
                    bytes = &bytes[used..];
                    self.header_len = 0;
                    self.remaining = payload;
                }
                None => {
                    self.header_len = filled as u8;
                    bytes = &[];
                }
            }
        }
    }
}

impl FrameTracker {
    /// A frame's whole header (`len` bytes, in `header`) has gone by: count a message's end,
    /// and start reading the first close frame's code.
    fn frame_began(&mut self, len: usize, payload: u64) {
        let [b0, b1, ..] = self.header;
        let opcode = b0 & 0x0f;
        self.frames += 1;
        // A data frame (text, binary or a continuation) with FIN ends a message.
        if b0 & 0x80 != 0 && matches!(opcode, 0x0..=0x2) {
            self.messages += 1;
        }
        if opcode == OPCODE_CLOSE {
            self.close_seen = true;
            if let CloseCode::None = self.close {
                let mask = if b1 & 0x80 != 0 {
                    let mut m = [0u8; 4];
                    m.copy_from_slice(&self.header[len - 4..len]);
                    m
                } else {
                    [0; 4]
                };
                self.close = match payload {
                    0 | 1 => CloseCode::Read(None),
                    _ => CloseCode::Reading {
                        code: [0; 2],
                        got: 0,
                        mask,
                    },
                };
            }
        }
    }

    /// The first payload bytes of the first close frame.
    fn read_close_code(&mut self, payload: &[u8]) {
        if let CloseCode::Reading {
            mut code,
            mut got,
            mask,
        } = self.close
        {
            for &b in payload.iter().take(2 - usize::from(got)) {
                code[usize::from(got)] = b ^ mask[usize::from(got)];
                got += 1;
            }
            self.close = if got == 2 {
                CloseCode::Read(Some(u16::from_be_bytes(code)))
            } else {
                CloseCode::Reading { code, got, mask }
            };
        }
    }
}

/// The header length and payload length of the frame starting `buf`, once `buf` holds the
/// whole header.
pub(crate) fn header_len(buf: &[u8]) -> Option<(usize, u64)> {
    let [_, b1, ..] = *buf else { return None };
    let masked = b1 & 0x80 != 0;
    let mask_len = if masked { 4 } else { 0 };
    let (ext, payload) = match b1 & 0x7f {
        126 => (2, u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?))),
        127 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let len = 2 + ext + mask_len;
    (buf.len() >= len).then_some((len, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_the_first_close_code_are_counted_in_any_split() {
        let masked = |opcode: u8, fin: bool, payload: &[u8]| {
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            let mut f = vec![opcode | if fin { 0x80 } else { 0 }, 0x80 | payload.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let stream = [
            masked(0x1, true, b"one"),
            masked(0x2, false, b"two, "),
            masked(0x9, true, b"ping"), // a control frame inside a fragmented message
            masked(0x0, false, b"in "),
            masked(0x0, true, b"three"),
            masked(0x8, true, &[0x0f, 0xa1, b'b', b'y', b'e']), // 4001
            masked(0x8, true, &[0x03, 0xe8]),                   // a second close: not the first
        ]
        .concat();
        for size in [1, 2, 3, 5, 7, stream.len()] {
            let mut t = FrameTracker::new();
            for chunk in stream.chunks(size) {
                t.feed(chunk);
            }
            assert_eq!(t.messages(), 2, "reads of {size}");
            assert_eq!(t.close_code(), Some(Some(4001)), "reads of {size}");
        }
        let mut t = FrameTracker::new();
        t.feed(&[0x88, 0x00]); // unmasked, no code
        assert_eq!(t.close_code(), Some(None));
        let mut t = FrameTracker::new();
        t.feed(&[0x88, 0x02, 0x03]);
        assert_eq!(t.close_code(), None, "the code is still arriving");
        t.feed(&[0xe8]);
        assert_eq!(t.close_code(), Some(Some(1000)));
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn frame(masked: bool, payload_len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(m | payload_len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn tracker_follows_frames_fed_in_any_split() {
        let mut stream = Vec::new();
        for (masked, len) in [
            (false, 0),
            (true, 5),
            (false, 126),
            (true, 300),
            (false, 70_000),
            (true, 1),
        ] {
            stream.extend(frame(masked, len));
        }
        for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
            let mut t = FrameTracker::new();
            for piece in stream.chunks(chunk) {
                t.feed(piece);
            }
            assert!(t.at_boundary(), "chunk size {chunk}");
            assert!(!t.close_seen());
            t.feed(&server_close_frame(GOING_AWAY)[..2]);
            assert!(t.close_seen() && !t.at_boundary());
            let mut t = FrameTracker::new();
            t.feed(&stream[..3]);
            assert!(!t.at_boundary());
        }
    }

    /// Reading `to_boundary()` bytes at a time stops on every frame boundary and never
    /// crosses one.
    #[test]
    fn to_boundary_never_crosses_a_frame_end() {
        let frames: Vec<Vec<u8>> = [(true, 0), (false, 5), (true, 126), (false, 300), (true, 70_000)]
            .into_iter()
            .map(|(masked, len)| frame(masked, len))
            .collect();
        let stream = frames.concat();
        let mut t = FrameTracker::new();
        let mut at = 0;
        let mut ends = Vec::new();
        while at < stream.len() {
            let step = match t.to_boundary() {
                0 => 1, // at a boundary: any read may start the next frame
                n => usize::try_from(n).unwrap(),
            };
            t.feed(&stream[at..at + step]);
            at += step;
            if t.at_boundary() {
                ends.push(at);
            }
        }
        let expected: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += f.len();
                Some(*end)
            })
            .collect();
        assert_eq!(ends, expected);
    }

    #[test]
    fn close_frames() {
        assert_eq!(server_close_frame(GOING_AWAY), [0x88, 0x02, 0x03, 0xe9]);
        let c = client_close_frame(GOING_AWAY, [0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(c[6] ^ 0xaa, 0x03);
        assert_eq!(c[7] ^ 0xbb, 0xe9);
    }
}
