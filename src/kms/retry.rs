//! Timeouts, retries and metrics around every KMS call.
//!
//! One deadline covers the whole call, retries included: `timeout` in the
//! config is what a waiting statement can lose to the KMS, so a KMS on a
//! closed port answers `58030` within it rather than after
//! `max_retries × timeout`.
use std::future::Future;
use std::time::{Duration, Instant};

use super::KmsError;
use crate::config::KmsConfig;

/// The KMS operations, as they appear in metrics and in the KMS log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KmsOp {
    Generate,
    Wrap,
    Unwrap,
    Rewrap,
    Describe,
    Sign,
    Verify,
}

impl KmsOp {
    /// The `op` label / KMS-log `operation` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KmsOp::Generate => "generate",
            KmsOp::Wrap => "wrap",
            KmsOp::Unwrap => "unwrap",
            KmsOp::Rewrap => "rewrap",
            KmsOp::Describe => "describe",
            KmsOp::Sign => "sign",
            KmsOp::Verify => "verify",
        }
    }
}

/// How long a KMS call may take and how throttling / transient failures are
/// retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deadline for the whole call, retries included. Zero = no deadline.
    pub timeout: Duration,
    /// Retries after the first attempt, only on `Throttled` / `Unavailable`.
    pub max_retries: u32,
    /// Backoff before retry `n` (0-based) is `base_delay × 2ⁿ`, capped at
    /// `max_delay`, of which a random half is kept ("equal jitter").
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Default backoff start; cloud KMS throttling clears within ~100 ms.
    pub const BASE_DELAY: Duration = Duration::from_millis(50);
    /// Backoff ceiling.
    pub const MAX_DELAY: Duration = Duration::from_secs(2);

    /// `timeout` and `max_retries` of a `[kms.NAME]` section.
    pub fn from_config(cfg: &KmsConfig) -> Self {
        Self {
            timeout: cfg.timeout,
            max_retries: cfg.max_retries,
            base_delay: Self::BASE_DELAY,
            max_delay: Self::MAX_DELAY,
        }
    }

    /// The pause before retry `attempt` (0-based), `jitter` in [0, 1].
    /// Equal jitter: half the exponential step is kept so retries still
    /// back off; the other half is random so many proxies throttled at the
    /// same moment do not come back in lockstep.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        let step = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_retries: 3,
            base_delay: Self::BASE_DELAY,
            max_delay: Self::MAX_DELAY,
        }
    }
}

/// A uniform number in [0, 1) from the OS RNG (no `rand` crate needed).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    crate::protocol::scram::fill_random(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Runs `attempt` until it succeeds, fails for good, runs out of retries or
/// the deadline passes, then records the call in
/// `byokpg_kms_requests_total` / `byokpg_kms_request_duration_seconds`.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    provider: &'static str,
    op: KmsOp,
    mut attempt: F,
) -> Result<T, KmsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KmsError>>,
{
    let start = Instant::now();
    let deadline = (!policy.timeout.is_zero()).then(|| start + policy.timeout);
    let mut retries = 0;
    let result = loop {
        let outcome = match deadline {
            None => attempt().await,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, attempt())
                    .await
                    .unwrap_or_else(|_| Err(timed_out(policy.timeout)))
            }
        };
        match outcome {
            Err(e) if e.is_transient() && retries < policy.max_retries => {
                let pause = policy.backoff(retries, jitter());
                if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                    break Err(e);
                }
                tracing::debug!(
                    target: "byokpg::kms",
                    provider, op = op.as_str(), retry = retries + 1, error = %e,
                    "KMS call failed, retrying after {pause:?}"
                );
                tokio::time::sleep(pause).await;
                retries += 1;
            }
            other => break other,
        }
    };
    let label = match &result {
        Ok(_) => "success",
        Err(e) => e.outcome(),
    };
    crate::metrics::kms_request(provider, op.as_str(), label, start.elapsed().as_secs_f64());
    result
}

fn timed_out(timeout: Duration) -> KmsError {
    KmsError::Unavailable(format!(
        "no answer within {}",
        humantime::format_duration(timeout)
    ))
}
