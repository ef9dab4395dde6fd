//! Process-wide metrics registry (SPEC §9), rendered as Prometheus text on the
//! admin port.
//!
//! One `PrometheusRecorder` is installed globally, once. Nothing is spawned
//! here: the server calls [`upkeep`] every few seconds so histograms are
//! drained without a hidden background task.
//!
//! Hot paths (per message, per row) must use handles resolved once — see
//! [`SessionMetrics`] — because `counter!` with labels costs ~200 ns a call
//! against ~13 ns for a cached handle (FIELD-NOTES). Labels never carry a
//! tenant id or a key id: those are unbounded and would identify customers in
//! a scrape that is usually far less protected than the database.

use std::sync::OnceLock;

use metrics::{
    Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names, kept in one place so every subsystem increments the very
/// names that are described (and documented in docs/OBSERVABILITY.md).
pub mod names {
    pub const CONNECTIONS_CURRENT: &str = "byokpg_connections_current";
    pub const CONNECTIONS_TOTAL: &str = "byokpg_connections_total";
    pub const CONNECTIONS_REFUSED: &str = "byokpg_connections_refused_total";
    pub const STATEMENTS: &str = "byokpg_statements_total";
    pub const BYTES_RELAYED: &str = "byokpg_bytes_relayed_total";
    pub const BACKEND_CONNECTS: &str = "byokpg_backend_connects_total";
    pub const CANCEL_REQUESTS: &str = "byokpg_cancel_requests_total";
    pub const CONFIG_RELOADS: &str = "byokpg_config_reloads_total";
    pub const SESSION_PANICS: &str = "byokpg_session_panics_total";
    pub const ENCRYPT_OPS: &str = "byokpg_encrypt_ops_total";
    pub const DECRYPT_OPS: &str = "byokpg_decrypt_ops_total";
    pub const DEK_CACHE_HITS: &str = "byokpg_dek_cache_hits_total";
    pub const DEK_CACHE_MISSES: &str = "byokpg_dek_cache_misses_total";
    pub const DEK_CACHE_EVICTIONS: &str = "byokpg_dek_cache_evictions_total";
    pub const KMS_REQUESTS: &str = "byokpg_kms_requests_total";
    pub const KMS_REQUEST_DURATION: &str = "byokpg_kms_request_duration_seconds";
    pub const CHAIN_APPENDS: &str = "byokpg_chain_appends_total";
    pub const REFUSED_WRITES: &str = "byokpg_refused_writes_total";
}

/// Reasons accepted by [`connection_refused`]; a fixed set keeps the label
/// cardinality bounded.
pub const REFUSAL_REASONS: [&str; 7] = [
    "limit", "auth", "tenant", "tls", "protocol", "shutdown", "region",
];

/// Encryption modes used as the `mode` label of encrypt/decrypt counters.
pub const MODES: [&str; 2] = ["randomized", "deterministic"];

/// KMS latency buckets (seconds): local keys answer in well under 5 ms, cloud
/// KMS calls in tens of ms, and retries with backoff can reach seconds.
const KMS_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static SESSION: OnceLock<SessionMetrics> = OnceLock::new();

/// Install the global recorder (idempotent) and return its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Only an empty bucket list can fail and ours is a constant; fall
        // back to the plain builder (summaries) rather than panic.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::KMS_REQUEST_DURATION.to_owned()),
                &KMS_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Only possible if something else installed a recorder first;
            // /metrics would then stay empty, which must not go unnoticed.
            tracing::warn!("byokpg: metrics recorder not installed: {e}");
        }
        describe_all();
        register_fixed_series();
        handle
    })
}

/// Render every metric as Prometheus text exposition format.
pub fn render() -> String {
    install().render()
}

/// Periodic maintenance (drains histogram buffers); the server calls this
/// every few seconds.
pub fn upkeep() {
    install().run_upkeep();
}

/// Cached handles resolved once per process; hot path must never build
/// labels per message.
#[derive(Clone)]
pub struct SessionMetrics {
    pub bytes_client_to_server: Counter,
    pub bytes_server_to_client: Counter,
    pub stmt_passthrough: Counter,
    pub stmt_rewritten: Counter,
    pub stmt_refused: Counter,
}

impl SessionMetrics {
    /// The shared handles. Installs the recorder first: a handle resolved
    /// before installation would be a no-op forever.
    pub fn get() -> &'static SessionMetrics {
        SESSION.get_or_init(|| {
            install();
            SessionMetrics {
                bytes_client_to_server: counter!(names::BYTES_RELAYED, "direction" => "client_to_server"),
                bytes_server_to_client: counter!(names::BYTES_RELAYED, "direction" => "server_to_client"),
                stmt_passthrough: counter!(names::STATEMENTS, "kind" => "passthrough"),
                stmt_rewritten: counter!(names::STATEMENTS, "kind" => "rewritten"),
                stmt_refused: counter!(names::STATEMENTS, "kind" => "refused"),
            }
        })
    }
}

/// A client connection was accepted and its session started.
pub fn connection_opened() {
    install();
    gauge!(names::CONNECTIONS_CURRENT).increment(1.0);
    counter!(names::CONNECTIONS_TOTAL).increment(1);
}

/// A session ended (whatever the reason); pairs with [`connection_opened`].
pub fn connection_closed() {
    install();
    gauge!(names::CONNECTIONS_CURRENT).decrement(1.0);
}

/// A client connection was refused. `reason` is one of [`REFUSAL_REASONS`].
pub fn connection_refused(reason: &'static str) {
    debug_assert!(
        REFUSAL_REASONS.contains(&reason),
        "unknown refusal reason {reason}"
    );
    install();
    counter!(names::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// Outcome of opening a backend connection to a region database.
pub fn backend_connect(region: &str, ok: bool) {
    install();
    counter!(names::BACKEND_CONNECTS, "region" => region.to_owned(), "outcome" => outcome(ok))
        .increment(1);
}

/// A cancel request arrived; `forwarded` when it matched a live session and
/// was passed to its backend.
pub fn cancel_request(forwarded: bool) {
    install();
    let outcome = if forwarded { "forwarded" } else { "ignored" };
    counter!(names::CANCEL_REQUESTS, "outcome" => outcome).increment(1);
}

/// A configuration reload (SIGHUP or `POST /admin/reload`) was applied or refused.
pub fn config_reload(ok: bool) {
    install();
    counter!(names::CONFIG_RELOADS, "outcome" => outcome(ok)).increment(1);
}

/// A session task panicked (and only that session ended).
pub fn session_panic() {
    install();
    counter!(names::SESSION_PANICS).increment(1);
}

/// One KMS call finished. `outcome` is `success`, `denied` or `error`;
/// `seconds` covers the whole call including retries. Not a hot path (a
/// cache miss at most), so labels are built per call.
pub fn kms_request(provider: &'static str, op: &'static str, outcome: &'static str, seconds: f64) {
    install();
    counter!(names::KMS_REQUESTS, "provider" => provider, "op" => op, "outcome" => outcome)
        .increment(1);
    histogram!(names::KMS_REQUEST_DURATION, "provider" => provider, "op" => op).record(seconds);
}

/// A write refused by policy; `reason` is a short fixed word such as
/// `append_only`, `chain_column` or `tenant_column`.
pub fn refused_write(reason: &'static str) {
    install();
    counter!(names::REFUSED_WRITES, "reason" => reason).increment(1);
}

/// Cached handles for the per-value crypto path and the DEK cache.
#[derive(Clone)]
pub struct CryptoMetrics {
    pub encrypt_randomized: Counter,
    pub encrypt_deterministic: Counter,
    pub decrypt_randomized: Counter,
    pub decrypt_deterministic: Counter,
    pub dek_cache_hits: Counter,
    pub dek_cache_misses: Counter,
    pub dek_cache_evictions: Counter,
    pub chain_appends: Counter,
}

impl CryptoMetrics {
    /// The shared handles (resolved once, after [`install`]).
    pub fn get() -> &'static CryptoMetrics {
        static CRYPTO: OnceLock<CryptoMetrics> = OnceLock::new();
        CRYPTO.get_or_init(|| {
            install();
            CryptoMetrics {
                encrypt_randomized: counter!(names::ENCRYPT_OPS, "mode" => "randomized"),
                encrypt_deterministic: counter!(names::ENCRYPT_OPS, "mode" => "deterministic"),
                decrypt_randomized: counter!(names::DECRYPT_OPS, "mode" => "randomized"),
                decrypt_deterministic: counter!(names::DECRYPT_OPS, "mode" => "deterministic"),
                dek_cache_hits: counter!(names::DEK_CACHE_HITS),
                dek_cache_misses: counter!(names::DEK_CACHE_MISSES),
                dek_cache_evictions: counter!(names::DEK_CACHE_EVICTIONS),
                chain_appends: counter!(names::CHAIN_APPENDS),
            }
        })
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok { "success" } else { "failure" }
}

/// Help text for every metric, including those later subsystems increment, so
/// names and meanings are fixed in one place.
fn describe_all() {
    describe_gauge!(
        names::CONNECTIONS_CURRENT,
        "Client connections currently open."
    );
    describe_counter!(
        names::CONNECTIONS_TOTAL,
        "Client connections accepted since start."
    );
    describe_counter!(
        names::CONNECTIONS_REFUSED,
        "Client connections refused, by reason (limit, auth, tenant, tls, protocol, shutdown)."
    );
    describe_counter!(
        names::STATEMENTS,
        "Statements seen, by kind: passthrough (untouched), rewritten (encrypted/decrypted), refused."
    );
    describe_counter!(
        names::BYTES_RELAYED,
        Unit::Bytes,
        "Bytes relayed, by direction (client_to_server, server_to_client)."
    );
    describe_counter!(
        names::BACKEND_CONNECTS,
        "Backend connection attempts, by region and outcome (success, failure)."
    );
    describe_counter!(
        names::CANCEL_REQUESTS,
        "Cancel requests received, by outcome (forwarded, ignored)."
    );
    describe_counter!(
        names::CONFIG_RELOADS,
        "Configuration reloads, by outcome (success, failure)."
    );
    describe_counter!(
        names::SESSION_PANICS,
        "Sessions ended by an internal panic."
    );
    describe_crypto();
}

fn describe_crypto() {
    describe_counter!(
        names::ENCRYPT_OPS,
        "Values encrypted, by mode (randomized, deterministic)."
    );
    describe_counter!(
        names::DECRYPT_OPS,
        "Values decrypted, by mode (randomized, deterministic)."
    );
    describe_counter!(
        names::DEK_CACHE_HITS,
        "DEK cache lookups answered from memory."
    );
    describe_counter!(
        names::DEK_CACHE_MISSES,
        "DEK cache lookups that needed a KMS unwrap."
    );
    describe_counter!(
        names::DEK_CACHE_EVICTIONS,
        "Unwrapped DEKs dropped from memory (TTL, capacity or admin evict)."
    );
    describe_counter!(
        names::KMS_REQUESTS,
        "KMS calls, by provider, operation and outcome (success, denied, error)."
    );
    describe_histogram!(
        names::KMS_REQUEST_DURATION,
        Unit::Seconds,
        "KMS call latency including retries, by provider and operation."
    );
    describe_counter!(names::CHAIN_APPENDS, "Rows appended to audit hash chains.");
    describe_counter!(
        names::REFUSED_WRITES,
        "Writes refused by policy (append-only, chain columns, tenant column), by reason."
    );
}

/// Register the series whose label values are a closed set at zero, so
/// dashboards and `rate()` see them before the first event.
fn register_fixed_series() {
    gauge!(names::CONNECTIONS_CURRENT).increment(0.0);
    for name in [
        names::CONNECTIONS_TOTAL,
        names::SESSION_PANICS,
        names::DEK_CACHE_HITS,
        names::DEK_CACHE_MISSES,
        names::DEK_CACHE_EVICTIONS,
        names::CHAIN_APPENDS,
    ] {
        counter!(name).increment(0);
    }
    for reason in REFUSAL_REASONS {
        counter!(names::CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    for kind in ["passthrough", "rewritten", "refused"] {
        counter!(names::STATEMENTS, "kind" => kind).increment(0);
    }
    for direction in ["client_to_server", "server_to_client"] {
        counter!(names::BYTES_RELAYED, "direction" => direction).increment(0);
    }
    for mode in MODES {
        counter!(names::ENCRYPT_OPS, "mode" => mode).increment(0);
        counter!(names::DECRYPT_OPS, "mode" => mode).increment(0);
    }
    for o in ["forwarded", "ignored"] {
        counter!(names::CANCEL_REQUESTS, "outcome" => o).increment(0);
    }
    for ok in [true, false] {
        counter!(names::CONFIG_RELOADS, "outcome" => outcome(ok)).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first series line starting with `prefix`.
    fn sample(text: &str, prefix: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no series {prefix} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn described_names_render_after_install() {
        let text = render();
        for name in [
            names::CONNECTIONS_CURRENT,
            names::CONNECTIONS_TOTAL,
            names::CONNECTIONS_REFUSED,
            names::STATEMENTS,
            names::BYTES_RELAYED,
            names::ENCRYPT_OPS,
            names::DECRYPT_OPS,
            names::DEK_CACHE_HITS,
            names::DEK_CACHE_MISSES,
            names::DEK_CACHE_EVICTIONS,
            names::CHAIN_APPENDS,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} lacks help"
            );
        }
    }

    #[test]
    fn increments_show_up_with_labels() {
        install();
        // Tests share one global recorder: compare before/after, never absolutes.
        let key = r#"byokpg_statements_total{kind="rewritten"}"#;
        let before = sample(&render(), key);
        SessionMetrics::get().stmt_rewritten.increment(3);
        SessionMetrics::get().bytes_client_to_server.increment(10);
        connection_refused("tls");
        backend_connect("eu", false);
        cancel_request(true);
        config_reload(true);
        session_panic();
        kms_request("local", "unwrap", "success", 0.002);
        refused_write("append_only");
        CryptoMetrics::get().dek_cache_hits.increment(1);
        let text = render();
        assert!(sample(&text, key) >= before + 3.0);
        for series in [
            r#"byokpg_bytes_relayed_total{direction="client_to_server"}"#,
            r#"byokpg_connections_refused_total{reason="tls"}"#,
            r#"byokpg_backend_connects_total{region="eu",outcome="failure"}"#,
            r#"byokpg_cancel_requests_total{outcome="forwarded"}"#,
            r#"byokpg_config_reloads_total{outcome="success"}"#,
            "byokpg_session_panics_total",
            r#"byokpg_kms_requests_total{provider="local",op="unwrap",outcome="success"}"#,
            r#"byokpg_refused_writes_total{reason="append_only"}"#,
            "byokpg_dek_cache_hits_total",
        ] {
            assert!(sample(&text, series) >= 1.0, "{series}");
        }
        assert!(text.contains(r#"byokpg_kms_request_duration_seconds_bucket{provider="local",op="unwrap",le="0.005"}"#), "{text}");
    }

    #[test]
    fn connection_gauge_goes_up_and_down() {
        connection_opened();
        connection_opened();
        connection_closed();
        let text = render();
        assert!(sample(&text, "byokpg_connections_total") >= 2.0);
        assert!(text.contains("byokpg_connections_current"));
        upkeep();
    }
}
