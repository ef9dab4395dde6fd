//! Single flight: concurrent callers asking for the same key share one
//! computation and all get its result — success *or failure*.
//!
//! Sharing failures matters here: with quick_cache's own placeholder, a
//! failed loader hands the guard to the next waiter, so N connections of a
//! revoked tenant (or of a KMS that times out) would make N KMS calls one
//! after another, the last one waiting N × timeout. With a shared
//! `OnceCell` they all get the one answer at once.
//!
//! Cancellation-safe: if the caller running the computation is dropped (its
//! client went away), `OnceCell` lets one of the waiters run its own.
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OnceCell;

/// One computation in progress (or just finished).
#[derive(Debug)]
pub struct Flight<V> {
    cell: OnceCell<V>,
    /// Set by [`Flights::evict`]: the result may still be handed to the
    /// callers already waiting, but must not be cached.
    evicted: AtomicBool,
    /// Callers that joined (for tests and diagnostics).
    joined: AtomicUsize,
}

/// The flights in progress, by key.
#[derive(Debug)]
pub struct Flights<K, V> {
    map: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<Flight<V>>>> {
        // A panic while holding this lock leaves the map consistent (every
        // operation is a single insert/remove), so poisoning is ignored.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the flight for `key` (starting one if none is in progress),
    /// runs `compute` if nobody else is, and returns the shared result.
    /// `compute` receives the flight so it can [`Flights::commit`] its
    /// result into a cache.
    pub async fn run<F, Fut>(&self, key: &K, compute: F) -> V
    where
        F: FnOnce(Arc<Flight<V>>) -> Fut,
        Fut: Future<Output = V>,
    {
        let flight = {
            let mut map = self.lock();
            let f = map.entry(key.clone()).or_insert_with(|| {
                Arc::new(Flight {
                    cell: OnceCell::new(),
                    evicted: AtomicBool::new(false),
                    joined: AtomicUsize::new(0),
                })
            });
            f.joined.fetch_add(1, Ordering::Relaxed);
            Arc::clone(f)
        };
        let value = flight
            .cell
            .get_or_init(|| compute(Arc::clone(&flight)))
            .await
            .clone();
        // Finished: the next caller starts afresh (after an error, or once a
        // cached value expired). Only our own flight is removed — a newer
        // one may already have replaced it.
        let mut map = self.lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            map.remove(key);
        }
        value
    }

    /// Runs `store` unless `flight` was evicted, atomically with respect to
    /// [`Flights::evict`]: a value computed before an eviction is never
    /// cached after it.
    pub fn commit(&self, flight: &Flight<V>, store: impl FnOnce()) -> bool {
        let _map = self.lock();
        if flight.evicted.load(Ordering::Acquire) {
            return false;
        }
        store();
        true
    }

    /// Marks and forgets every flight whose key matches, then runs `purge`
    /// (which drops the matching cached values) under the same lock.
    pub fn evict<R>(&self, matches: impl Fn(&K) -> bool, purge: impl FnOnce() -> R) -> R {
        let mut map = self.lock();
        map.retain(|k, f| {
            if matches(k) {
                f.evicted.store(true, Ordering::Release);
                false
            } else {
                true
            }
        });
        purge()
    }

    /// Callers currently joined to the flight for `key` (0 when none).
    #[cfg(test)]
    pub fn joined(&self, key: &K) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |f| f.joined.load(Ordering::Relaxed))
    }
}
