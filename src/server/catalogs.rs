//! Region catalogs, loaded on first use and refreshed when a session meets
//! a relation OID the catalog has not seen (new table or view).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::catalog::{self, Catalog};
use crate::server::runtime::Runtime;

#[derive(Default)]
pub struct Catalogs {
    by_region: Mutex<HashMap<String, Arc<Catalog>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogLoadError {
    #[error("cannot connect to read the catalog: {0}")]
    Connect(String),
    #[error("{0}")]
    Query(#[from] catalog::CatalogError),
    #[error("unknown region {0}")]
    Region(String),
}

impl Catalogs {
    /// The region's catalog, loading it if this is the first use.
    pub async fn get(&self, rt: &Runtime, region: &str) -> Result<Arc<Catalog>, CatalogLoadError> {
        if let Some(c) = self.lock().get(region) {
            return Ok(c.clone());
        }
        self.refresh(rt, region).await
    }

    /// Read the region's catalog again.
    pub async fn refresh(
        &self,
        rt: &Runtime,
        region: &str,
    ) -> Result<Arc<Catalog>, CatalogLoadError> {
        let tables = &rt.config.tables;
        let cat = if tables.is_empty() {
            Catalog::default()
        } else {
            let target = rt
                .regions
                .get(region)
                .ok_or_else(|| CatalogLoadError::Region(region.to_owned()))?;
            let client = crate::pgmeta::connect(&target.dsn, rt.config.server.connect_timeout)
                .await
                .map_err(|e| CatalogLoadError::Connect(e.to_string()))?;
            catalog::load(&client, tables).await?
        };
        let cat = Arc::new(cat);
        self.lock().insert(region.to_owned(), cat.clone());
        Ok(cat)
    }

    /// Forget everything (the policy changed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Catalog>>> {
        self.by_region
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
