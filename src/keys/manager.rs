//! [`KeyManager`]: a tenant name in, its data key out.
//!
//! Ties together the tenant config, the KMS of each `[kms.*]`, the key
//! table of each region and the DEK cache. The hot path — a tenant whose
//! key is cached — is two cache reads and no I/O.
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use quick_cache::sync::Cache;

use super::KeyError;
use super::cache::{DEFAULT_CAPACITY, DekCache};
use super::flight::{Flight, Flights};
use super::log::{self, KmsLogEntry};
use super::store::{RegionStore, StoredKey};
use crate::config::Config;
use crate::crypto::Dek;
use crate::kms::{Kms, KmsError, KmsOp};

/// A tenant's key settings, from `[tenants.NAME]`.
#[derive(Debug, Clone, PartialEq)]
struct TenantKeys {
    region: String,
    kms: String,
    key_ref: String,
    ttl: Duration,
    signing_key: Option<String>,
    /// `unwrap_log_sample`: share of successful unwraps written to the KMS log.
    log_sample: f64,
}

/// Everything the config decides; swapped whole on reload.
#[derive(Debug)]
struct Registry {
    tenants: BTreeMap<String, TenantKeys>,
    kms: BTreeMap<String, Result<Arc<Kms>, KmsError>>,
    stores: BTreeMap<String, Arc<RegionStore>>,
}

impl Registry {
    fn build(
        cfg: &Config,
        kms: BTreeMap<String, Result<Arc<Kms>, KmsError>>,
        old: Option<&Registry>,
    ) -> Self {
        let tenants = cfg
            .tenants
            .iter()
            .map(|(name, t)| {
                let keys = TenantKeys {
                    region: t.region.clone(),
                    kms: t.kms.clone(),
                    key_ref: t.key.clone(),
                    ttl: t.dek_cache_ttl,
                    signing_key: t.signing_key.clone(),
                    log_sample: t.unwrap_log_sample,
                };
                (name.clone(), keys)
            })
            .collect();
        let stores = cfg
            .regions
            .iter()
            .map(|(name, r)| {
                // Keep an unchanged region's connection across reloads.
                let reused = old
                    .and_then(|o| o.stores.get(name))
                    .filter(|s| s.dsn() == &r.dsn)
                    .cloned();
                let store = reused.unwrap_or_else(|| {
                    Arc::new(RegionStore::new(
                        name.clone(),
                        r.dsn.clone(),
                        cfg.server.connect_timeout,
                    ))
                });
                (name.clone(), store)
            })
            .collect();
        Self {
            tenants,
            kms,
            stores,
        }
    }

    fn tenant(&self, tenant: &str) -> Result<&TenantKeys, KeyError> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| KeyError::UnknownTenant {
                tenant: tenant.to_owned(),
            })
    }

    fn kms(&self, name: &str, tenant: &str) -> Result<Arc<Kms>, KeyError> {
        match self.kms.get(name) {
            Some(Ok(k)) => Ok(Arc::clone(k)),
            Some(Err(e)) => Err(KeyError::kms(tenant, e.clone())),
            None => Err(KeyError::kms(
                tenant,
                KmsError::Config(format!("kms `{name}` is not configured")),
            )),
        }
    }

    fn store(&self, region: &str, tenant: &str) -> Result<Arc<RegionStore>, KeyError> {
        self.stores
            .get(region)
            .cloned()
            .ok_or_else(|| KeyError::Store {
                tenant: tenant.to_owned(),
                region: region.to_owned(),
                message: "the region is not configured".to_owned(),
            })
    }
}

/// How often the active version of a tenant is read again from its key
/// table, so that every byokpg instance writes under a new version within
/// seconds of `keys rotate`. A re-check is one indexed query on the region
/// database and no KMS call unless the version changed.
pub const ACTIVE_RECHECK: Duration = Duration::from_secs(3);

/// A tenant's DEK versions as writes and lookups use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVersions {
    /// New writes use it.
    pub active: u32,
    /// Every version lookups must match (active and previous), newest
    /// first; always contains `active`.
    pub live: Arc<[u32]>,
    /// When they were read from the key table.
    pub checked_at: Instant,
}

impl LiveVersions {
    /// Still fresh enough to write under `active`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.checked_at) < ACTIVE_RECHECK
    }
}

/// The active version of a tenant, cached as long as its DEK and re-read
/// every [`ACTIVE_RECHECK`].
#[derive(Debug, Clone)]
struct ActiveVersion {
    versions: LiveVersions,
    expires_at: Instant,
}

type ActiveResult = Result<(LiveVersions, Arc<Dek>), KeyError>;

/// Hands out tenants' DEKs, creating a tenant's first DEK on first use.
pub struct KeyManager {
    registry: ArcSwap<Registry>,
    cache: DekCache,
    active: Cache<String, ActiveVersion>,
    active_flights: Flights<String, ActiveResult>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("tenants", &self.registry.load().tenants.len())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Builds every `[kms.NAME]`. A KMS that cannot be built does not stop
/// byokpg: its tenants get the error (58000) when they need their key.
async fn build_kms(cfg: &Config) -> BTreeMap<String, Result<Arc<Kms>, KmsError>> {
    let mut out = BTreeMap::new();
    for (name, k) in &cfg.kms {
        let built = Kms::from_config(name, k).await.map(Arc::new);
        if let Err(e) = &built {
            tracing::warn!(target: "byokpg::keys", kms = %name, error = %e, "byokpg: KMS not usable; its tenants' keys will be unavailable");
        }
        out.insert(name.clone(), built);
    }
    out
}

impl KeyManager {
    /// From a validated config, with the default cache capacity. Connects
    /// to nothing yet.
    pub async fn new(cfg: &Config) -> Self {
        Self::from_parts(cfg, build_kms(cfg).await, DEFAULT_CAPACITY)
    }

    /// With KMS instances built by the caller (tests, custom providers).
    pub fn from_parts(
        cfg: &Config,
        kms: BTreeMap<String, Result<Arc<Kms>, KmsError>>,
        cache_capacity: usize,
    ) -> Self {
        Self {
            registry: ArcSwap::from_pointee(Registry::build(cfg, kms, None)),
            cache: DekCache::new(cache_capacity),
            active: Cache::new(cache_capacity),
            active_flights: Flights::default(),
        }
    }

    /// Applies a reloaded config. Cached DEKs stay, except those of tenants
    /// that were removed or now point at another region, KMS or key.
    pub async fn reload(&self, cfg: &Config) {
        let kms = build_kms(cfg).await;
        let old = self.registry.load_full();
        let new = Registry::build(cfg, kms, Some(&old));
        let changed: Vec<String> = old
            .tenants
            .iter()
            .filter(|(name, t)| {
                new.tenants.get(*name).is_none_or(|n| {
                    (&n.region, &n.kms, &n.key_ref) != (&t.region, &t.kms, &t.key_ref)
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.registry.store(Arc::new(new));
        for tenant in changed {
            self.evict_tenant(&tenant);
        }
    }

    /// The tenant's active DEK and its version, for new writes. Creates the
    /// tenant's first DEK (through its KMS's generate-data-key) when it has
    /// none; of several byokpg instances doing that at once, one row wins
    /// and every instance uses it.
    pub async fn active_dek(&self, tenant: &str) -> Result<(u32, Arc<Dek>), KeyError> {
        self.active(tenant).await.map(|(v, dek)| (v.active, dek))
    }

    /// The tenant's live versions and its active DEK. The versions are at
    /// most [`ACTIVE_RECHECK`] old (or the tenant's TTL, when shorter).
    pub async fn active(&self, tenant: &str) -> ActiveResult {
        let reg = self.registry.load_full();
        let t = reg.tenant(tenant)?;
        if let Some(v) = self.live_versions(tenant) {
            let dek = self.dek_in(&reg, tenant, t, v.active, None).await?;
            return Ok((v, dek));
        }
        let key = tenant.to_owned();
        self.active_flights
            .run(&key, |flight| self.resolve_active(&reg, tenant, t, flight))
            .await
    }

    /// The tenant's live versions if known and fresh; no I/O.
    pub fn live_versions(&self, tenant: &str) -> Option<LiveVersions> {
        let now = Instant::now();
        self.active
            .get(tenant)
            .filter(|a| a.expires_at > now && a.versions.fresh(now))
            .map(|a| a.versions)
    }

    /// DEK `version` of the tenant (to decrypt a value that names it).
    pub async fn dek(&self, tenant: &str, version: u32) -> Result<Arc<Dek>, KeyError> {
        let reg = self.registry.load_full();
        let t = reg.tenant(tenant)?;
        self.dek_in(&reg, tenant, t, version, None).await
    }

    /// Drops the tenant's cached DEKs and active version at once (admin
    /// evict, revocation). An unwrap already in flight still answers its
    /// waiting statements but is not cached. Returns the DEKs dropped.
    pub fn evict_tenant(&self, tenant: &str) -> usize {
        self.active_flights.evict(
            |k| k == tenant,
            || {
                self.active.remove(tenant);
                self.cache.evict_tenant(tenant)
            },
        )
    }

    /// Drops expired DEKs (read or not). Returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.active.retain(|_, a| a.expires_at > now);
        self.cache.sweep()
    }

    /// Runs [`KeyManager::sweep`] every `every` until the manager is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let n = me.sweep();
                if n > 0 {
                    tracing::debug!(target: "byokpg::keys", dropped = n, "expired data keys dropped");
                }
            }
        })
    }

    /// The DEK cache (for `keys status` and metrics).
    pub fn cache(&self) -> &DekCache {
        &self.cache
    }

    /// The tenant's region, KMS name, KEK reference and TTL as configured.
    pub fn tenant_config(&self, tenant: &str) -> Result<(String, String, String), KeyError> {
        let reg = self.registry.load();
        let t = reg.tenant(tenant)?;
        Ok((t.region.clone(), t.kms.clone(), t.key_ref.clone()))
    }

    /// Writes one KMS operation made for `tenant` to its KMS log and waits
    /// for the insert (CLI commands: rotation, rewrap).
    pub async fn log_kms_now<T>(
        &self,
        tenant: &str,
        kms: &Kms,
        op: KmsOp,
        key_ref: &str,
        result: &Result<T, KmsError>,
    ) {
        let entry = KmsLogEntry::of(tenant, kms.name(), op, key_ref, result);
        if let Ok(store) = self.store(tenant)
            && let Err(e) = store.append_kms_log(&entry).await
        {
            tracing::warn!(target: "byokpg::keys", tenant, error = %e, "KMS log entry not written");
        }
    }

    /// The tenant's KMS and KEK reference (`keys verify`, rotation).
    pub fn tenant_kms(&self, tenant: &str) -> Result<(Arc<Kms>, String), KeyError> {
        let reg = self.registry.load();
        let t = reg.tenant(tenant)?;
        Ok((reg.kms(&t.kms, tenant)?, t.key_ref.clone()))
    }

    /// The tenant's KMS and `signing_key`, when it has one (attestations).
    pub fn signing_key(&self, tenant: &str) -> Result<Option<(Arc<Kms>, String)>, KeyError> {
        let reg = self.registry.load();
        let t = reg.tenant(tenant)?;
        match &t.signing_key {
            None => Ok(None),
            Some(k) => Ok(Some((reg.kms(&t.kms, tenant)?, k.clone()))),
        }
    }

    /// The key table of the tenant's region.
    pub fn store(&self, tenant: &str) -> Result<Arc<RegionStore>, KeyError> {
        let reg = self.registry.load();
        let t = reg.tenant(tenant)?;
        reg.store(&t.region, tenant)
    }

    /// The `[kms.NAME]` instance, or why it could not be built.
    pub fn kms(&self, name: &str) -> Option<Result<Arc<Kms>, KmsError>> {
        self.registry.load().kms.get(name).cloned()
    }

    async fn resolve_active(
        &self,
        reg: &Registry,
        tenant: &str,
        t: &TenantKeys,
        flight: Arc<Flight<ActiveResult>>,
    ) -> ActiveResult {
        let store = reg.store(&t.region, tenant)?;
        let checked_at = Instant::now();
        let mut rows = store
            .live_keys(tenant)
            .await
            .map_err(|e| e.for_tenant(tenant))?;
        let live: Arc<[u32]> = rows.iter().map(|r| r.version).collect();
        let active = rows
            .iter()
            .position(|r| r.status == super::KeyStatus::Active)
            .map(|i| rows.swap_remove(i));
        let (version, dek) = if let Some(row) = active {
            let version = row.version;
            (
                version,
                self.dek_in(reg, tenant, t, version, Some(row)).await?,
            )
        } else {
            self.create_first(reg, tenant, t, &store, &flight).await?
        };
        let mut ordered: Vec<u32> = live.iter().copied().filter(|v| *v != version).collect();
        ordered.insert(0, version);
        let versions = LiveVersions {
            active: version,
            live: ordered.into(),
            checked_at,
        };
        if !t.ttl.is_zero() {
            let entry = ActiveVersion {
                versions: versions.clone(),
                expires_at: checked_at + t.ttl,
            };
            self.active_flights.commit(&flight, || {
                self.active.insert(tenant.to_owned(), entry);
            });
        }
        Ok((versions, dek))
    }

    async fn create_first(
        &self,
        reg: &Registry,
        tenant: &str,
        t: &TenantKeys,
        store: &RegionStore,
        flight: &Flight<ActiveResult>,
    ) -> Result<(u32, Arc<Dek>), KeyError> {
        let kms = reg.kms(&t.kms, tenant)?;
        let fresh = kms.generate_data_key(&t.key_ref).await;
        log_kms(reg, tenant, t, &kms, KmsOp::Generate, &t.key_ref, &fresh);
        let fresh = fresh.map_err(|e| KeyError::kms(tenant, e))?;
        let (row, created) = store
            .insert_first_key(tenant, kms.name(), &t.key_ref, &fresh.wrapped)
            .await
            .map_err(|e| e.for_tenant(tenant))?;
        if !created {
            // Another connection or byokpg instance stored its DEK first:
            // ours is dropped (and wiped) unused, theirs is unwrapped.
            drop(fresh);
            let version = row.version;
            let dek = self.dek_in(reg, tenant, t, version, Some(row)).await?;
            return Ok((version, dek));
        }
        tracing::info!(target: "byokpg::keys", tenant, version = row.version, kms = kms.name(), "created the first data key of the tenant");
        let dek = Arc::new(fresh.plaintext);
        self.active_flights.commit(flight, || {
            self.cache
                .insert(tenant, row.version, Arc::clone(&dek), t.ttl);
        });
        Ok((row.version, dek))
    }

    /// DEK `version` through the cache; on a miss, the row (`known`, or read
    /// now) is unwrapped by the KMS that wrapped it — which, after a
    /// rotation to another KEK, need not be the tenant's current one.
    async fn dek_in(
        &self,
        reg: &Registry,
        tenant: &str,
        t: &TenantKeys,
        version: u32,
        known: Option<StoredKey>,
    ) -> Result<Arc<Dek>, KeyError> {
        self.cache
            .get_or_load(tenant, version, t.ttl, || async move {
                let row = match known {
                    Some(row) => row,
                    None => reg
                        .store(&t.region, tenant)?
                        .key(tenant, version)
                        .await
                        .map_err(|e| e.for_tenant(tenant))?
                        .ok_or_else(|| KeyError::UnknownVersion {
                            tenant: tenant.to_owned(),
                            version,
                        })?,
                };
                let kms = reg.kms(&row.kms, tenant)?;
                let dek = kms.unwrap(&row.key_ref, &row.wrapped).await;
                log_kms(reg, tenant, t, &kms, KmsOp::Unwrap, &row.key_ref, &dek);
                dek.map_err(|e| KeyError::kms(tenant, e))
            })
            .await
    }
}

/// Writes one KMS operation to the tenant's KMS log, in the background.
fn log_kms<T>(
    reg: &Registry,
    tenant: &str,
    t: &TenantKeys,
    kms: &Kms,
    op: KmsOp,
    key_ref: &str,
    result: &Result<T, KmsError>,
) {
    let entry = KmsLogEntry::of(tenant, kms.name(), op, key_ref, result);
    if !entry.wanted(t.log_sample) {
        return;
    }
    if let Ok(store) = reg.store(&t.region, tenant) {
        log::spawn_append(store, entry);
    }
}
