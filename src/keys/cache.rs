//! The unwrapped-DEK cache (SPEC §5): bounded, per-tenant TTL, single
//! flight, zeroized on eviction.
//!
//! quick_cache has no TTL, so each entry carries its `expires_at`: a get
//! past it removes the entry and counts a miss, and [`DekCache::sweep`]
//! drops expired entries nobody reads (a revoked tenant's keys must leave
//! memory even if no statement asks for them again). The bytes live in one
//! [`Dek`] behind an `Arc`; `Dek` wipes itself on drop, so the key leaves
//! memory when the entry is evicted and the last statement using it ends.
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, UnitWeighter};

use super::KeyError;
use super::flight::{Flight, Flights};
use crate::crypto::Dek;
use crate::metrics::CryptoMetrics;

/// Default bound on cached DEKs (one per tenant and live version).
pub const DEFAULT_CAPACITY: usize = 10_000;

type Key = (String, u32);
type Loaded = Result<Arc<Dek>, KeyError>;

/// One cached DEK and when it stops being served.
#[derive(Debug)]
pub struct CachedDek {
    pub dek: Arc<Dek>,
    pub expires_at: Instant,
}

/// Borrowed form of the `(tenant, version)` key, so a hit allocates nothing.
/// Hashes exactly like `(String, u32)`: `str` and `String` hash alike.
struct KeyRef<'a>(&'a str, u32);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Counts capacity evictions (the only ones quick_cache reports) and lets
/// the evicted values drop outside the shard lock.
#[derive(Debug, Clone, Default)]
struct CountEvictions;

impl Lifecycle<Key, Arc<CachedDek>> for CountEvictions {
    type RequestState = Vec<(Key, Arc<CachedDek>)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: Key, val: Arc<CachedDek>) {
        CryptoMetrics::get().dek_cache_evictions.increment(1);
        state.push((key, val));
    }
}

/// Cache of unwrapped DEKs by (tenant, DEK version).
pub struct DekCache {
    entries: Cache<Key, Arc<CachedDek>, UnitWeighter, DefaultHashBuilder, CountEvictions>,
    flights: Flights<Key, Loaded>,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.entries.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for DekCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl DekCache {
    /// A cache holding at most about `capacity` DEKs.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            flights: Flights::default(),
        }
    }

    /// The DEK if cached and fresh. Counts no hit or miss (see
    /// [`DekCache::get_or_load`]).
    pub fn get(&self, tenant: &str, version: u32) -> Option<Arc<Dek>> {
        self.get_at(tenant, version, Instant::now())
    }

    pub(crate) fn get_at(&self, tenant: &str, version: u32, now: Instant) -> Option<Arc<Dek>> {
        let key = KeyRef(tenant, version);
        let entry = self.entries.get(&key)?;
        if entry.expires_at > now {
            return Some(Arc::clone(&entry.dek));
        }
        // Remove only this expired entry, not a fresh one a concurrent load
        // may have put there since the get.
        if self
            .entries
            .remove_if(&key, |e| Arc::ptr_eq(e, &entry))
            .is_some()
        {
            CryptoMetrics::get().dek_cache_evictions.increment(1);
        }
        None
    }

    /// The DEK for (tenant, version): from the cache, or from `load` (a KMS
    /// unwrap) — exactly one `load` runs however many callers miss at once,
    /// and they all get its result, error included. A successful result is
    /// cached for `ttl` (`0s` = not cached). Counts a hit or a miss.
    pub async fn get_or_load<F, Fut>(
        &self,
        tenant: &str,
        version: u32,
        ttl: Duration,
        load: F,
    ) -> Result<Arc<Dek>, KeyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Dek, KeyError>>,
    {
        let metrics = CryptoMetrics::get();
        if let Some(dek) = self.get(tenant, version) {
            metrics.dek_cache_hits.increment(1);
            return Ok(dek);
        }
        metrics.dek_cache_misses.increment(1);
        let key = (tenant.to_owned(), version);
        self.flights
            .run(&key, |flight| self.load_once(&key, ttl, flight, load))
            .await
    }

    async fn load_once<F, Fut>(
        &self,
        key: &Key,
        ttl: Duration,
        flight: Arc<Flight<Loaded>>,
        load: F,
    ) -> Loaded
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Dek, KeyError>>,
    {
        // A flight that finished between our miss and our joining this new
        // one may have filled the cache already.
        if let Some(dek) = self.get(&key.0, key.1) {
            return Ok(dek);
        }
        let dek = Arc::new(load().await?);
        if !ttl.is_zero() {
            let entry = Arc::new(CachedDek {
                dek: Arc::clone(&dek),
                expires_at: Instant::now() + ttl,
            });
            self.flights.commit(&flight, || {
                self.entries.insert(key.clone(), entry);
            });
        }
        Ok(dek)
    }

    /// Caches `dek` directly (a DEK this process just generated); `0s` TTL
    /// caches nothing. Unlike [`DekCache::get_or_load`] this does not guard
    /// against a concurrent [`DekCache::evict_tenant`]: the caller must (the
    /// key manager does it under its own single-flight lock).
    pub fn insert(&self, tenant: &str, version: u32, dek: Arc<Dek>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let entry = Arc::new(CachedDek {
            dek,
            expires_at: Instant::now() + ttl,
        });
        self.entries.insert((tenant.to_owned(), version), entry);
    }

    /// Drops every cached DEK of `tenant` at once (admin evict), and makes
    /// sure an unwrap already in progress for it is not cached afterwards.
    /// Returns how many entries were dropped.
    pub fn evict_tenant(&self, tenant: &str) -> usize {
        let removed = self.flights.evict(
            |k| k.0 == tenant,
            || self.remove_where(|k, _| k.0 == tenant),
        );
        CryptoMetrics::get()
            .dek_cache_evictions
            .increment(removed as u64);
        removed
    }

    /// Drops expired entries, read or not. Returns how many.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    pub(crate) fn sweep_at(&self, now: Instant) -> usize {
        let removed = self.remove_where(|_, e| e.expires_at <= now);
        CryptoMetrics::get()
            .dek_cache_evictions
            .increment(removed as u64);
        removed
    }

    /// Drops everything (e.g. on shutdown). Returns how many.
    pub fn clear(&self) -> usize {
        let removed = self
            .flights
            .evict(|_| true, || self.remove_where(|_, _| true));
        CryptoMetrics::get()
            .dek_cache_evictions
            .increment(removed as u64);
        removed
    }

    fn remove_where(&self, doomed: impl Fn(&Key, &CachedDek) -> bool) -> usize {
        let removed = AtomicUsize::new(0);
        self.entries.retain(|k, e| {
            let drop_it = doomed(k, e);
            if drop_it {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            !drop_it
        });
        removed.into_inner()
    }

    /// Whether a fresh DEK for (tenant, version) is cached (for `keys status`).
    pub fn contains(&self, tenant: &str, version: u32) -> bool {
        self.entries
            .peek(&KeyRef(tenant, version))
            .is_some_and(|e| e.expires_at > Instant::now())
    }

    /// Cached entries, fresh or not yet swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Callers waiting on one load (tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self, tenant: &str, version: u32) -> usize {
        self.flights.joined(&(tenant.to_owned(), version))
    }

    /// Inserts with a chosen expiry (tests of TTL without sleeping).
    #[cfg(test)]
    pub(crate) fn insert_expiring(&self, tenant: &str, version: u32, dek: Dek, at: Instant) {
        self.entries.insert(
            (tenant.to_owned(), version),
            Arc::new(CachedDek {
                dek: Arc::new(dek),
                expires_at: at,
            }),
        );
    }
}
