//! Large buffers reused across a transfer: the blocks a push reads into and
//! the windows a pull decodes into.
//!
//! A buffer is lent out as [`Bytes`] and comes back to the pool when the
//! last slice of it is dropped, wherever in the pipeline that happens. Fresh
//! multi-megabyte allocations cost page faults and first-touch of memory
//! (0.3–1.5 GB/s on the VMs this runs on) — more than the work done on
//! them — and let the allocator's heap grow with every block in flight.
//!
//! The pool never holds more than a few free buffers: what is in flight is
//! bounded by the pipelines' queues, not here.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Free buffers a pool keeps. The pipelines hold under ten in flight.
const FREE_BUFFERS: usize = 8;

/// A set of reusable buffers; cheap to clone (clones share the buffers).
#[derive(Clone, Default)]
pub(crate) struct BlockPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BlockPool {
    /// A buffer with room for `capacity` bytes, reused if one is free. Its
    /// length and contents are what its last user left: a reader clears it,
    /// a decoder resizes it (zeroing only what it has never held).
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut buffer = reused.unwrap_or_default();
        buffer.reserve(capacity.saturating_sub(buffer.len()));
        buffer
    }

    /// `buffer` as shared bytes that return it to this pool when dropped.
    pub(crate) fn share(&self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buffer,
            pool: self.clone(),
        })
    }

    /// Free buffers held now (tests).
    #[cfg(test)]
    pub(crate) fn free_buffers(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A buffer on loan from a [`BlockPool`].
struct Lent {
    buffer: Vec<u8>,
    pool: BlockPool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < FREE_BUFFERS {
            free.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_its_last_slice_is_dropped() {
        let pool = BlockPool::default();
        let mut buffer = pool.take(1 << 20);
        buffer.extend_from_slice(b"some bytes");
        let address = buffer.as_ptr();
        let shared = pool.share(buffer);
        let slice = shared.slice(2..6);
        drop(shared);
        assert_eq!(pool.free_buffers(), 0, "returned while a slice was alive");
        assert_eq!(&slice[..], b"me b");
        drop(slice);
        assert_eq!(pool.free_buffers(), 1);
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), address, "the same memory is reused");
        assert!(again.capacity() >= 1 << 20);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_free_buffers() {
        let pool = BlockPool::default();
        let lent: Vec<Bytes> = (0..FREE_BUFFERS + 5)
            .map(|_| pool.share(pool.take(16)))
            .collect();
        drop(lent);
        assert_eq!(pool.free_buffers(), FREE_BUFFERS);
    }
}
