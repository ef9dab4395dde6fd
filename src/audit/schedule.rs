//! `[audit] attest_every`: a running proxy attests every chain head of every
//! tenant with a `signing_key`, on that period. Uses the config `serve`
//! started with (a reload does not change the period); several instances
//! each attest, which only adds attestations.

use std::time::Duration;

use crate::config::Config;

/// Starts the schedule when `[audit] attest_every` is set and some table is
/// hash-chained; the task ends with the runtime.
pub fn spawn_scheduled_attest(config: &Config) {
    let Some(every) = config.audit.attest_every.filter(|d| !d.is_zero()) else {
        return;
    };
    if !config.tables.iter().any(|t| t.hash_chain) {
        return;
    }
    let config = config.clone();
    tokio::spawn(async move { attest_loop(&config, every).await });
}

async fn attest_loop(config: &Config, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (tenant, t) in &config.tenants {
            if t.signing_key.is_none() {
                continue;
            }
            match super::attest(config, tenant, None).await {
                Ok(lines) => {
                    for line in lines {
                        tracing::info!(target: "byokpg::audit", tenant = %tenant, "{line}");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "byokpg::audit", tenant = %tenant, error = %e, "scheduled attestation failed");
                }
            }
        }
    }
}
