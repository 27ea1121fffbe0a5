//! The upload byte budget: how many bytes of request messages the whole
//! server holds at once, from the moment a message's length prefix arrives
//! until the message is stored or its call ends.
//!
//! Why: a client chooses how much it sends and how slowly. Without a bound,
//! every slow or stalled upload pins a partly received message (up to
//! `max_message_bytes`) and the messages queued behind its verification and
//! commit — sixteen stalled uploads once pinned 1 GB. With the budget, a
//! message's bytes are read only once its whole length is reserved; when the
//! budget is spent the server stops reading request bodies, HTTP/2 flow
//! control stops the senders, and reading resumes as stored messages give
//! their bytes back. Waiting for the budget is back-pressure, not an error.
//!
//! A message reserves its whole length at once, never a part: calls that
//! each held half a message while waiting for the other half would wait for
//! each other forever. A message longer than the whole budget reserves all
//! of it (and so waits until it is alone).
//!
//! This module only counts: the request body (`request_limits.rs`) decides
//! when to reserve, the upload service when a message is stored.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A reservation under way: resolves once the bytes are the caller's.
pub(crate) type Reservation =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The server-wide budget; cheap to clone (all clones share it).
#[derive(Clone, Debug)]
pub(crate) struct UploadBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

impl UploadBudget {
    /// A budget of `total_bytes` (at least 1, at most 4 GiB - 1).
    pub(crate) fn new(total_bytes: usize) -> Self {
        let total = total_bytes
            .clamp(1, Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize) as u32;
        UploadBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Reserves the bytes of one message of `len` bytes (all of the budget
    /// if it is larger). Waits, first come first served, while the budget
    /// is spent.
    pub(crate) fn reserve(&self, len: usize) -> Reservation {
        let n = len.min(self.total as usize) as u32;
        Box::pin(self.bytes.clone().acquire_many_owned(n))
    }
}

/// The budget one call holds, message by message; shared by the call's
/// request body (which reserves) and its service (which releases).
#[derive(Debug, Default)]
pub(crate) struct CallBytes {
    /// Message index in the call (0, 1, …, in arrival order) → its bytes.
    held: Mutex<HashMap<u64, OwnedSemaphorePermit>>,
}

impl CallBytes {
    pub(crate) fn hold(&self, message: u64, bytes: OwnedSemaphorePermit) {
        self.lock().insert(message, bytes);
    }

    /// Gives back the bytes of message `message` (0 for the call's first):
    /// called once the message is stored, or refused, so a long upload
    /// holds only the messages it has not finished with.
    pub(crate) fn release(&self, message: u64) {
        self.lock().remove(&message);
    }

    /// Gives back everything the call holds: it has ended.
    pub(crate) fn release_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OwnedSemaphorePermit>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_waits_until_released_bytes_make_room_for_all_of_it() {
        let budget = UploadBudget::new(100);
        let call = CallBytes::default();
        call.hold(0, budget.reserve(60).await.unwrap());
        let mut second = budget.reserve(60);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "40 bytes left cannot hold a 60-byte message"
        );
        call.release(0);
        call.hold(1, second.await.unwrap());
        call.release_all();
        assert_eq!(budget.bytes.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_takes_all_of_it() {
        let budget = UploadBudget::new(100);
        let all = budget.reserve(1 << 20).await.unwrap();
        assert_eq!(all.num_permits(), 100);
    }
}
