//! The body a [`MessageFilterLayer`](super::MessageFilterLayer) puts on each direction of a
//! tunnel: it reads RFC 6455 frames, reassembles messages, asks the filter, and writes the
//! verdict as whole frames. The two directions share one [`Shared`]: the filter, and the
//! close frames one direction asks the other to send (a message's sender is written to by
//! the other direction's body).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tower::Service;

use super::filter::{Direction, Judged, Judging, Message, MessageKind, Verdict, judge};
use crate::body::{Body, BoxError};
use crate::websocket::GOING_AWAY;

/// Close codes this body sends.
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const POLICY_VIOLATION: u16 = 1008;
const MESSAGE_TOO_BIG: u16 = 1009;
const INTERNAL_ERROR: u16 = 1011;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A reassembled message's first bytes are reserved at most this much at once: a frame that
/// declares a large payload and sends it slowly gets memory as its bytes arrive.
const RESERVE: u64 = 64 * 1024;
/// Payloads at least this large go on after a header of their own, not copied behind it.
const COPY_BELOW: usize = 4 * 1024;

/// What both directions of one tunnel share.
pub(crate) struct Shared<F> {
    filter: Mutex<F>,
    max_message_size: u64,
    /// Set when `orders` holds a close frame for that direction (indexed by [`slot`]).
    ordered: [AtomicBool; 2],
    orders: Mutex<Orders>,
    /// A close frame has gone that way, or is queued to (a peer's relayed or one of ours):
    /// RFC 6455 allows one each way, so no second one follows.
    closed: [AtomicBool; 2],
}

#[derive(Default)]
struct Orders {
    close: [Option<Bytes>; 2],
    wakers: [Option<Waker>; 2],
}

fn slot(dir: Direction) -> usize {
    match dir {
        Direction::ToUpstream => 0,
        Direction::ToClient => 1,
    }
}

impl<F> Shared<F> {
    pub(crate) fn new(filter: F, max_message_size: u64) -> Self {
        Self {
            filter: Mutex::new(filter),
            max_message_size,
            ordered: [AtomicBool::new(false), AtomicBool::new(false)],
            orders: Mutex::new(Orders::default()),
            closed: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// Marks that a close frame goes `dir`; `true` if one had gone (or been queued) already.
    fn mark_closed(&self, dir: Direction) -> bool {
        self.closed[slot(dir)].swap(true, Ordering::AcqRel)
    }

    fn orders(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the body writing `dir` to send `frame` next, and wakes it.
    fn order(&self, dir: Direction, frame: Bytes) {
        let waker = {
            let mut orders = self.orders();
            orders.close[slot(dir)].get_or_insert(frame);
            // Set under the lock: a body that parks after this sees it.
            self.ordered[slot(dir)].store(true, Ordering::Release);
            orders.wakers[slot(dir)].take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The close frame the other direction asked `dir` to send, if any.
    fn take_order(&self, dir: Direction) -> Option<Bytes> {
        if !self.ordered[slot(dir)].load(Ordering::Acquire) {
            return None;
        }
        self.orders().close[slot(dir)].take()
    }

    /// Remembers who to wake when an order for `dir` comes.
    fn park(&self, dir: Direction, cx: &Context<'_>) {
        let mut orders = self.orders();
        let w = &mut orders.wakers[slot(dir)];
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
}

/// Why a direction stops: the close code its sender gets (the other side gets `1001`).
struct Fail {
    code: u16,
    reason: String,
}

impl Fail {
    fn new(code: u16, reason: &str) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
        }
    }
}

/// One direction of a filtered WebSocket tunnel.
pub(crate) struct FilteredBody<F> {
    inner: Body,
    dir: Direction,
    shared: Arc<Shared<F>>,
    /// Bytes read and not yet parsed.
    input: Bytes,
    head: Head,
    frame: Option<FrameState>,
    /// The data message being reassembled.
    message: Option<Assembly>,
    /// A control frame being collected, raw, to pass on whole.
    control: Option<BytesMut>,
    judgment: Option<Judgment>,
    /// Whole frames ready to send.
    out: VecDeque<Bytes>,
    /// A close frame of ours has been queued: relay nothing more, read until the end.
    closing: bool,
}

/// A frame header arriving (2 to 14 bytes).
#[derive(Default)]
struct Head {
    bytes: [u8; 14],
    have: usize,
}

impl Head {
    /// How long the header is, as far as its bytes so far say.
    fn len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.bytes[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.bytes[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }
}

/// The frame whose payload is arriving.
struct FrameState {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    left: u64,
    /// Payload bytes seen so far (for the mask's phase).
    seen: u64,
}

/// A data message being reassembled, unmasked.
struct Assembly {
    kind: MessageKind,
    buf: BytesMut,
    /// For text: how much of `buf` is known to be UTF-8.
    valid: usize,
}

enum Judgment {
    /// The filter was not ready for it yet.
    Waiting(Message),
    Running {
        fut: Judging,
        kind: MessageKind,
        payload: Bytes,
    },
}

impl<F> FilteredBody<F>
where
    F: Service<Message, Response = Verdict> + Send + 'static,
    F::Error: Into<BoxError>,
    F::Future: Send + 'static,
{
    pub(crate) fn new(inner: Body, dir: Direction, shared: Arc<Shared<F>>) -> Self {
        Self {
            inner,
            dir,
            shared,
            input: Bytes::new(),
            head: Head::default(),
            frame: None,
            message: None,
            control: None,
            judgment: None,
            out: VecDeque::new(),
            closing: false,
        }
    }

    /// Stops this direction: its sender gets `fail`'s close frame (sent by the other
    /// direction's body), its receiver `1001`.
    fn fail(&mut self, fail: Fail) {
        if self.closing {
            return;
        }
        if fail.code != GOING_AWAY {
            tracing::debug!(code = fail.code, reason = %fail.reason, direction = ?self.dir, "closing a filtered WebSocket");
        }
        let back = self.dir.reverse();
        if !self.shared.mark_closed(back) {
            self.shared
                .order(back, close_frame(back, fail.code, &fail.reason));
        }
        // When this way has its close frame already, it just stops relaying.
        let already = self.shared.mark_closed(self.dir);
        self.close_with((!already).then(|| close_frame(self.dir, GOING_AWAY, "")));
    }

    /// Queues `frame` (a close frame), if any, after what is queued, and stops relaying.
    fn close_with(&mut self, frame: Option<Bytes>) {
        self.out.extend(frame);
        self.closing = true;
        self.judgment = None;
        self.message = None;
        self.control = None;
    }

    /// Parses what has been read, until it is used up or a message awaits its verdict.
    fn parse(&mut self) -> Result<(), Fail> {
        while !self.input.is_empty() && self.judgment.is_none() {
            let Some(frame) = &mut self.frame else {
                let want = self.head.len() - self.head.have;
                let n = want.min(self.input.len());
                let taken = self.input.split_to(n);
                self.head.bytes[self.head.have..self.head.have + n].copy_from_slice(&taken);
                self.head.have += n;
                if self.head.have == self.head.len() {
                    self.start_frame()?;
                }
                continue;
            };
            let n = usize::try_from(frame.left)
                .unwrap_or(usize::MAX)
                .min(self.input.len());
            let chunk = self.input.split_to(n);
            if let Some(control) = &mut self.control {
                control.extend_from_slice(&chunk);
            } else if let Some(msg) = &mut self.message {
                let start = msg.buf.len();
                msg.buf.extend_from_slice(&chunk);
                if let Some(mask) = frame.mask {
                    xor_mask(&mut msg.buf[start..], mask, frame.seen);
                }
                if msg.kind == MessageKind::Text && !utf8_so_far(&msg.buf, &mut msg.valid) {
                    return Err(Fail::new(INVALID_PAYLOAD, "text that is not UTF-8"));
                }
            }
            frame.seen += n as u64;
            frame.left -= n as u64;
            if frame.left == 0 {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// The header is complete: checks it and starts the frame.
    fn start_frame(&mut self) -> Result<(), Fail> {
        let head = std::mem::take(&mut self.head);
        let b = &head.bytes[..head.have];
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, rest) = match b[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), &b[4..]),
            127 => {
                let mut n = [0; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), &b[10..])
            }
            n => (u64::from(n), &b[2..]),
        };
        let mask = masked.then(|| [rest[0], rest[1], rest[2], rest[3]]);
        if b[0] & 0x70 != 0 {
            return Err(Fail::new(PROTOCOL_ERROR, "reserved bits set with no extension"));
        }
        if masked != (self.dir == Direction::ToUpstream) {
            return Err(Fail::new(
                PROTOCOL_ERROR,
                if masked {
                    "a masked frame from the server"
                } else {
                    "an unmasked frame from the client"
                },
            ));
        }
        if len >> 63 != 0 {
            return Err(Fail::new(PROTOCOL_ERROR, "a payload length with its top bit set"));
        }
        match opcode {
            CLOSE | PING | PONG => {
                if !fin || len > 125 {
                    return Err(Fail::new(
                        PROTOCOL_ERROR,
                        "a fragmented or oversized control frame",
                    ));
                }
                let mut raw = BytesMut::with_capacity(head.have + len as usize);
                raw.extend_from_slice(b);
                self.control = Some(raw);
            }
            TEXT | BINARY | CONTINUATION => {
                let so_far = match (&self.message, opcode) {
                    (None, CONTINUATION) => {
                        return Err(Fail::new(PROTOCOL_ERROR, "a continuation frame with no message"));
                    }
                    (Some(_), TEXT | BINARY) => {
                        return Err(Fail::new(PROTOCOL_ERROR, "a new message inside a fragmented one"));
                    }
                    (Some(m), _) => m.buf.len() as u64,
                    (None, _) => 0,
                };
                if so_far.saturating_add(len) > self.shared.max_message_size {
                    return Err(Fail::new(MESSAGE_TOO_BIG, "message too big"));
                }
                let msg = self.message.get_or_insert_with(|| Assembly {
                    kind: if opcode == TEXT {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    },
                    buf: BytesMut::new(),
                    valid: 0,
                });
                msg.buf.reserve(len.min(RESERVE) as usize);
            }
            _ => return Err(Fail::new(PROTOCOL_ERROR, "a reserved opcode")),
        }
        self.frame = Some(FrameState {
            fin,
            opcode,
            mask,
            left: len,
            seen: 0,
        });
        if len == 0 {
            self.end_frame()?;
        }
        Ok(())
    }

    /// The frame's payload is complete.
    fn end_frame(&mut self) -> Result<(), Fail> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        if let Some(control) = self.control.take() {
            // A peer's close goes on unless one of ours went that way first.
            if frame.opcode != CLOSE || !self.shared.mark_closed(self.dir) {
                self.out.push_back(control.freeze());
            }
            return Ok(());
        }
        if !frame.fin || !matches!(frame.opcode, TEXT | BINARY | CONTINUATION) {
            return Ok(());
        }
        let Some(msg) = self.message.take() else {
            return Ok(());
        };
        if msg.kind == MessageKind::Text && msg.valid != msg.buf.len() {
            return Err(Fail::new(INVALID_PAYLOAD, "text that ends inside a character"));
        }
        let msg = Message::checked(self.dir, msg.kind, msg.buf.freeze());
        self.judgment = Some(Judgment::Waiting(msg));
        Ok(())
    }

    /// Drives the filter on the message awaiting its verdict; `Ready` once there is none.
    fn poll_judgment(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Fail>> {
        loop {
            match self.judgment.take() {
                None => return Poll::Ready(Ok(())),
                Some(Judgment::Waiting(msg)) => {
                    let mut filter = self.shared.filter.lock().unwrap_or_else(PoisonError::into_inner);
                    match filter.poll_ready(cx).map_err(Into::into) {
                        Poll::Pending => {
                            drop(filter);
                            self.judgment = Some(Judgment::Waiting(msg));
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(filter_error(&e))),
                        Poll::Ready(Ok(())) => {
                            let (kind, payload) = (msg.kind(), msg.payload().clone());
                            let fut = judge(&mut *filter, msg);
                            self.judgment = Some(Judgment::Running { fut, kind, payload });
                        }
                    }
                }
                Some(Judgment::Running {
                    mut fut,
                    kind,
                    payload,
                }) => {
                    let judged: Judged = match fut.as_mut().poll(cx) {
                        Poll::Pending => {
                            self.judgment = Some(Judgment::Running { fut, kind, payload });
                            return Poll::Pending;
                        }
                        Poll::Ready(j) => j,
                    };
                    return Poll::Ready(match judged {
                        Ok(Verdict::Pass) => {
                            self.emit(kind, payload);
                            Ok(())
                        }
                        Ok(Verdict::Replace(m)) => {
                            let kind = m.kind();
                            self.emit(kind, m.into_payload());
                            Ok(())
                        }
                        Ok(Verdict::Drop) => Ok(()),
                        Ok(Verdict::Close { code, reason }) => Err(Fail { code, reason }),
                        Err(e) => Err(filter_error(&e)),
                    });
                }
            }
        }
    }

    /// Queues a message as one frame.
    fn emit(&mut self, kind: MessageKind, payload: Bytes) {
        let opcode = match kind {
            MessageKind::Text => TEXT,
            MessageKind::Binary => BINARY,
        };
        if payload.len() < COPY_BELOW {
            self.out.push_back(data_frame(self.dir, opcode, &payload));
            return;
        }
        // Large payloads go on after a header of their own, masked in place when nobody
        // else holds them (the filter let go of the message), else copied once.
        let mask = (self.dir == Direction::ToUpstream).then(rand::random::<[u8; 4]>);
        let payload = match mask {
            None => payload,
            Some(mask) => {
                let mut own = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                xor_mask(&mut own, mask, 0);
                own.freeze()
            }
        };
        let mut head = BytesMut::with_capacity(14);
        put_head(&mut head, opcode, payload.len(), mask);
        self.out.push_back(head.freeze());
        self.out.push_back(payload);
    }
}

fn filter_error(e: &BoxError) -> Fail {
    tracing::warn!(error = %e, "a WebSocket message filter failed");
    Fail::new(INTERNAL_ERROR, "")
}

impl<F> http_body::Body for FilteredBody<F>
where
    F: Service<Message, Response = Verdict> + Send + 'static,
    F::Error: Into<BoxError>,
    F::Future: Send + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.closing {
                // Read to the end, relaying nothing: the peer's closing bytes are not cut
                // off with a reset.
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Some(order) = this.shared.take_order(this.dir) {
                this.close_with(Some(order));
                continue;
            }
            match this.poll_judgment(cx) {
                Poll::Ready(Ok(())) if !this.out.is_empty() => continue,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(fail)) => {
                    this.fail(fail);
                    continue;
                }
                Poll::Pending => {
                    this.shared.park(this.dir, cx);
                    // An order may have come between the check above and parking.
                    if this.shared.ordered[slot(this.dir)].load(Ordering::Acquire) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
            if !this.input.is_empty() {
                if let Err(fail) = this.parse() {
                    this.fail(fail);
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.input = data;
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                // The sender went away; a message it had not finished is not delivered.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    this.shared.park(this.dir, cx);
                    if this.shared.ordered[slot(this.dir)].load(Ordering::Acquire) {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Whether `buf` is UTF-8 so far (it may end inside a character), checking from `*valid` on
/// and moving it to where the checked part ends.
fn utf8_so_far(buf: &[u8], valid: &mut usize) -> bool {
    match std::str::from_utf8(&buf[*valid..]) {
        Ok(_) => {
            *valid = buf.len();
            true
        }
        Err(e) => {
            *valid += e.valid_up_to();
            e.error_len().is_none()
        }
    }
}

/// XORs `buf` with `mask`, `phase` bytes into the mask's cycle; eight bytes at a time.
pub(crate) fn xor_mask(buf: &mut [u8], mask: [u8; 4], phase: u64) {
    let r = (phase % 4) as usize;
    let m = [mask[r], mask[(r + 1) % 4], mask[(r + 2) % 4], mask[(r + 3) % 4]];
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Writes a frame header: FIN set, `opcode`, `len`, and `mask` if given.
fn put_head(buf: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    buf.put_u8(0x80 | opcode);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => buf.put_u8(bit | len as u8),
        126..=0xFFFF => {
            buf.put_u8(bit | 126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(bit | 127);
            buf.put_u64(len as u64);
        }
    }
    if let Some(mask) = mask {
        buf.put_slice(&mask);
    }
}

/// A whole frame going `dir` (masked with a fresh key towards the upstream).
fn data_frame(dir: Direction, opcode: u8, payload: &[u8]) -> Bytes {
    let mask = (dir == Direction::ToUpstream).then(rand::random::<[u8; 4]>);
    let mut buf = BytesMut::with_capacity(14 + payload.len());
    put_head(&mut buf, opcode, payload.len(), mask);
    let start = buf.len();
    buf.put_slice(payload);
    if let Some(mask) = mask {
        xor_mask(&mut buf[start..], mask, 0);
    }
    buf.freeze()
}

/// A close frame going `dir` with `code` (made sendable) and `reason` (cut to fit).
fn close_frame(dir: Direction, code: u16, reason: &str) -> Bytes {
    let code = if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        code
    } else {
        POLICY_VIOLATION
    };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    data_frame(dir, CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_applied_at_any_phase_and_length() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            for phase in 0..8u64 {
                let plain: Vec<u8> = (0..len as u8).collect();
                let mut fast = plain.clone();
                xor_mask(&mut fast, mask, phase);
                let slow: Vec<u8> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + phase as usize) % 4])
                    .collect();
                assert_eq!(fast, slow, "len {len} phase {phase}");
            }
        }
    }

    #[test]
    fn utf8_is_checked_across_chunks() {
        let text = "é€😀".as_bytes();
        // Every split point: valid so far, whatever is cut.
        for cut in 0..=text.len() {
            let mut valid = 0;
            assert!(utf8_so_far(&text[..cut], &mut valid));
            assert!(utf8_so_far(text, &mut valid));
            assert_eq!(valid, text.len());
        }
        let mut valid = 0;
        assert!(
            !utf8_so_far(b"ok\xC0\xAF", &mut valid),
            "an overlong form is refused at once"
        );
        let mut valid = 0;
        assert!(
            utf8_so_far(b"ok\xF0\x9F", &mut valid) && valid == 2,
            "an unfinished character waits"
        );
    }

    #[test]
    fn close_frames_carry_a_sendable_code_and_a_reason_that_fits() {
        let f = close_frame(Direction::ToClient, 4001, "bad token");
        assert_eq!(&f[..], b"\x88\x0b\x0f\xa1bad token");
        let f = close_frame(Direction::ToClient, 1005, "");
        assert_eq!(&f[..], b"\x88\x02\x03\xf0", "1005 may not be sent: 1008 instead");
        let long = "é".repeat(100);
        let f = close_frame(Direction::ToClient, 1000, &long);
        assert_eq!(
            f[1] as usize,
            2 + 122,
            "cut at a character boundary under 123 bytes"
        );
        let f = close_frame(Direction::ToUpstream, 1001, "");
        assert_eq!(f[1], 0x82, "masked towards the upstream");
        let mut payload = [f[6], f[7]];
        xor_mask(&mut payload, [f[2], f[3], f[4], f[5]], 0);
        assert_eq!(u16::from_be_bytes(payload), 1001);
    }
}
