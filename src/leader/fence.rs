//! The write fence: whether this process may write, to LXD and to resource statuses.
//!
//! With the file source it is always open. Under leader election it opens when the lease
//! is won and closes, for good, the moment leadership is in doubt (a renew that fails, a
//! lease seen held by another). Closing is one atomic store that every writer checks
//! right before it sends, so a replica that lost the lease stops writing at once, even in
//! the middle of a reconcile, rather than when its workers next look.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug)]
pub struct WriteFence(Arc<AtomicBool>);

impl WriteFence {
    /// A fence that lets writes through (the file source).
    pub fn open() -> WriteFence {
        WriteFence(Arc::new(AtomicBool::new(true)))
    }

    /// A fence that holds writes back until `lift` (a replica before it leads).
    pub fn closed() -> WriteFence {
        WriteFence(Arc::new(AtomicBool::new(false)))
    }

    pub fn lift(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for WriteFence {
    fn default() -> Self {
        WriteFence::open()
    }
}
