//! The small handle `/readyz` and `/healthz` read: whether the pipeline is loaded, is
//! draining, how many resource files or objects do not load now, and how long the
//! oldest reconcile in flight has run. The stages set it; nothing here decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    invalid_sources: AtomicUsize,
    /// Why the source cannot see its whole state now.
    unreadable: std::sync::Mutex<Option<String>>,
    loaded: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    longest_reconcile: std::sync::OnceLock<Box<dyn Fn() -> Duration + Send + Sync>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// How to ask whether desired state and the first full listing are loaded.
    pub fn watch_loaded(&self, loaded: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.0.loaded.set(Box::new(loaded));
    }

    /// How to ask how long the oldest reconcile in flight has run.
    pub fn watch_reconciles(&self, longest: impl Fn() -> Duration + Send + Sync + 'static) {
        let _ = self.0.longest_reconcile.set(Box::new(longest));
    }

    pub fn is_loaded(&self) -> bool {
        self.0.loaded.get().is_some_and(|f| f())
    }

    pub fn longest_reconcile(&self) -> Duration {
        self.0
            .longest_reconcile
            .get()
            .map(|f| f())
            .unwrap_or_default()
    }

    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    pub fn set_invalid_sources(&self, n: usize) {
        self.0.invalid_sources.store(n, Ordering::SeqCst);
    }

    /// Resource files (or objects) that do not load now, and the source itself when it
    /// cannot see its whole state.
    pub fn invalid_sources(&self) -> usize {
        self.0.invalid_sources.load(Ordering::SeqCst) + usize::from(self.unreadable().is_some())
    }

    pub fn set_unreadable(&self, why: Option<String>) {
        *self
            .0
            .unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Why the source cannot see its whole state now, if it cannot.
    pub fn unreadable(&self) -> Option<String> {
        self.0
            .unreadable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
