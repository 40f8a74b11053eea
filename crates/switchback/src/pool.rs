//! Relay buffers, lent while data is in flight and returned as soon as it is written.
//!
//! An idle tunnel holds no buffer at all; a busy one holds at most one per direction. Each
//! thread keeps a few spare buffers so a busy relay does not allocate per chunk.

use std::cell::RefCell;

/// Spare buffers kept per thread.
const SPARES: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `size` bytes: a spare one if this thread has it, else a new one.
pub(crate) fn take(size: usize) -> Box<[u8]> {
    SPARE
        .with(|s| {
            let mut spare = s.borrow_mut();
            let i = spare.iter().rposition(|b| b.len() == size)?;
            Some(spare.swap_remove(i))
        })
        .unwrap_or_else(|| vec![0; size].into_boxed_slice())
}

/// Returns a buffer for reuse (or frees it when this thread has enough spares).
pub(crate) fn give(buf: Box<[u8]>) {
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARES {
            spare.push(buf);
        }
    });
}
