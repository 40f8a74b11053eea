//! The message size gate of one WebSocket direction: frame headers are checked before a byte
//! of their frame is written, so that a message past its limit is never delivered whole.
//!
//! The gate walks the bytes a direction holds ahead of the writer, one frame header at a
//! time (payload is skipped unseen), and admits them up to the first frame that would make
//! its message too large. A header cut in two by a read is kept back (a few bytes, in
//! `carry`) until the rest arrives: nothing of a frame goes out before its header was
//! checked.

use crate::websocket::{FrameTracker, header_len};

/// Where the walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Everything held is admitted.
    Admitted,
    /// The frame at the admitted end is the client's pong to Switchback's ping
    /// ([`PONG_LEN`] bytes): it is not relayed.
    Pong,
    /// The held bytes end inside a frame header: the bytes from the admitted end on are its
    /// start.
    Partial,
    /// The frame starting at the admitted end would make its message larger than the limit.
    TooBig,
}

/// A direction's size gate.
#[derive(Debug)]
pub(super) struct Gate {
    /// The stream up to the end of what is admitted (written or not).
    walker: FrameTracker,
    /// Bytes at the front of what the direction holds that are admitted and not yet written.
    pub(super) admitted: usize,
    /// The largest message allowed, in payload bytes.
    max: u64,
    /// Payload of the data message in progress so far.
    message: u64,
    /// The start of a frame header cut by a read, kept back until the rest comes.
    pub(super) carry: Vec<u8>,
    /// A message went past the limit: nothing more is admitted.
    pub(super) too_big: bool,
    /// Bytes of a header admitted whole when it was peeked, that a short splice left for
    /// the next read: they pass without a second look.
    owed: usize,
    /// The payload of Switchback's ping still unanswered: the client's pong with it is
    /// taken out of the stream.
    pub(super) pong: Option<[u8; 8]>,
}

/// A client's pong to Switchback's ping: header (2), mask (4), the ping's 8 payload bytes.
pub(super) const PONG_LEN: usize = 14;

impl Gate {
    pub(super) fn new(max: u64) -> Self {
        Self {
            walker: FrameTracker::new(),
            admitted: 0,
            max,
            message: 0,
            carry: Vec::new(),
            too_big: false,
            owed: 0,
            pong: None,
        }
    }

    /// Walks `held` (whose first `admitted` bytes are admitted already) as far as it can.
    pub(super) fn admit(&mut self, held: &[u8]) -> Verdict {
        while !self.too_big && self.admitted < held.len() {
            let rest = &held[self.admitted..];
            if self.owed > 0 {
                let n = self.owed.min(rest.len());
                self.walker.feed(&rest[..n]);
                self.admitted += n;
                self.owed -= n;
                continue;
            }
            let left = self.walker.payload_left();
            if left > 0 {
                let n = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                self.walker.skip(n as u64);
                self.admitted += n;
                continue;
            }
            if let Some(ours) = self.pong
                && rest[0] == 0x8a
                && rest.get(1).is_none_or(|&b1| b1 == 0x88)
            {
                // Perhaps the client's pong to our ping: wait for all of it, then look.
                let Some(frame) = rest.get(..PONG_LEN) else {
                    return Verdict::Partial;
                };
                let mask = &frame[2..6];
                if frame[6..]
                    .iter()
                    .zip(mask.iter().cycle())
                    .map(|(b, m)| b ^ m)
                    .eq(ours)
                {
                    return Verdict::Pong;
                }
            }
            let Some((len, payload)) = header_len(rest) else {
                return Verdict::Partial;
            };
            if !self.header(rest[0], payload) {
                return Verdict::TooBig;
            }
            self.walker.feed(&rest[..len]);
            self.admitted += len;
        }
        if self.too_big {
            Verdict::TooBig
        } else {
            Verdict::Admitted
        }
    }

    /// Whether a frame header peeked before its frame is spliced (first byte, payload
    /// length) would be admitted; nothing is counted until it is spliced.
    pub(super) fn admits_peeked(&self, b0: u8, payload: u64) -> bool {
        self.message_after(b0, payload).is_some()
    }

    /// Bytes that went through the pipe unseen by [`Gate::admit`]: the first `fed` bytes of
    /// `header` (a whole header [`Gate::admits_peeked`] admitted, whose frame has `payload`
    /// bytes; or nothing), then `skipped` payload bytes. What a short splice left of the
    /// header comes next, through [`Gate::admit`], and passes.
    pub(super) fn spliced(&mut self, header: &[u8], payload: u64, fed: usize, skipped: u64) {
        if fed > 0 {
            self.header(header[0], payload);
        }
        self.walker.feed(&header[..fed]);
        self.owed = header.len() - fed;
        self.walker.skip(skipped);
    }

    /// A frame header: its first byte and its payload length. Data frames add up to their
    /// message's size; control frames (at most 125 bytes) don't count.
    fn header(&mut self, b0: u8, payload: u64) -> bool {
        match self.message_after(b0, payload) {
            Some(size) => {
                self.message = size;
                true
            }
            None => {
                self.too_big = true;
                false
            }
        }
    }

    /// The size of the message in progress once this frame is in (0 when it ends one, and
    /// unchanged by a control frame), or `None` when that is past the limit.
    fn message_after(&self, b0: u8, payload: u64) -> Option<u64> {
        let opcode = b0 & 0x0f;
        if opcode > 0x2 {
            return Some(self.message);
        }
        let size = if opcode == 0x0 { self.message } else { 0 }.saturating_add(payload);
        if size > self.max {
            return None;
        }
        Some(if b0 & 0x80 != 0 { 0 } else { size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut f = vec![opcode | if fin { 0x80 } else { 0 }];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[9, 9, 9, 9]);
        f.extend(std::iter::repeat_n(0x55, len));
        f
    }

    /// Walks `stream` in reads of `size` as the engine does; returns how many bytes were
    /// admitted before the walk said too big (or all of them).
    fn walk(max: u64, stream: &[u8], size: usize) -> (usize, bool) {
        let mut gate = Gate::new(max);
        let mut written = 0;
        for chunk in stream.chunks(size) {
            let mut held = std::mem::take(&mut gate.carry);
            held.extend_from_slice(chunk);
            gate.admitted = 0;
            match gate.admit(&held) {
                Verdict::Admitted => written += held.len(),
                Verdict::Partial => {
                    written += gate.admitted;
                    gate.carry = held[gate.admitted..].to_vec();
                }
                Verdict::TooBig => return (written + gate.admitted, true),
                Verdict::Pong => panic!("no pong is watched here"),
            }
        }
        (written, false)
    }

    #[test]
    fn the_clients_pong_to_our_ping_is_found_whole_in_any_split() {
        let ours = *b"sbk-ping";
        let mask = [1, 2, 3, 4];
        let pong = |payload: &[u8; 8]| {
            let mut f = vec![0x8a, 0x88];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let before = frame(0x1, true, 5);
        for split in 0..PONG_LEN {
            let mut gate = Gate::new(u64::MAX);
            gate.pong = Some(ours);
            let stream = [before.clone(), pong(&ours)].concat();
            let (first, rest) = stream.split_at(before.len() + split);
            // The pong's start waits for the rest of it...
            let verdict = gate.admit(first);
            assert_eq!(gate.admitted, before.len(), "split at {split}");
            let expected = if split == 0 {
                Verdict::Admitted
            } else {
                Verdict::Partial
            };
            assert_eq!(verdict, expected, "split at {split}");
            // ...and, whole, is recognised.
            gate.admitted = 0;
            let held = [&first[before.len()..], rest].concat();
            assert_eq!(gate.admit(&held), Verdict::Pong, "split at {split}");
        }
        // Another pong (the upstream's ping answered) passes.
        let mut gate = Gate::new(u64::MAX);
        gate.pong = Some(ours);
        let theirs = pong(b"upstream");
        assert_eq!(gate.admit(&theirs), Verdict::Admitted);
        assert_eq!(gate.admitted, theirs.len());
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_split() {
        let stream = [
            frame(0x1, true, 100),
            frame(0x2, false, 600),
            frame(0x9, true, 4), // a ping inside a fragmented message
            frame(0x0, true, 400),
            frame(0x2, true, 1000),
        ]
        .concat();
        for size in [1, 2, 3, 13, 14, 15, 64, 999, stream.len()] {
            assert_eq!(
                walk(1000, &stream, size),
                (stream.len(), false),
                "reads of {size}"
            );
        }
    }

    #[test]
    fn a_message_past_the_limit_stops_at_the_frame_that_makes_it_so() {
        let ok = frame(0x1, true, 10);
        // One frame too large.
        let stream = [ok.clone(), frame(0x2, true, 1001)].concat();
        for size in [1, 5, 64, stream.len()] {
            assert_eq!(walk(1000, &stream, size), (ok.len(), true), "reads of {size}");
        }
        // Three fragments whose sum is: the first two pass, the third is held back.
        let (a, b) = (frame(0x2, false, 400), frame(0x0, false, 400));
        let stream = [a.clone(), b.clone(), frame(0x0, true, 400)].concat();
        for size in [1, 7, 4096] {
            assert_eq!(
                walk(1000, &stream, size),
                (a.len() + b.len(), true),
                "reads of {size}"
            );
        }
        // Exactly the limit passes; zero allows empty messages only.
        assert_eq!(walk(1000, &frame(0x2, true, 1000), 3), (1000 + 2 + 2 + 4, false));
        assert_eq!(walk(0, &frame(0x1, true, 0), 1), (6, false));
        assert_eq!(walk(0, &frame(0x1, true, 1), 1), (0, true));
        // The largest length a header can say.
        let huge = [
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert_eq!(walk(1 << 40, &huge, 14), (0, true));
        assert_eq!(
            walk(u64::MAX, &huge, 14),
            (14, false),
            "no limit is too large for it"
        );
    }
}
