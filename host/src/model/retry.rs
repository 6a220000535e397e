//! Retrying model calls: exponential backoff with jitter for transient
//! failures and rate limits, `Retry-After` honoured as a floor, and never a
//! retry once a streamed response has delivered its first chunk (the caller
//! has already shown it).

use super::{BoxFuture, ChunkSink, Model, ModelChunk, ModelError, ModelRequest, ModelResponse};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// When and how often a failed model call is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retries.
    pub max_attempts: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest computed wait.
    pub max_backoff: Duration,
    /// Growth of the wait per attempt.
    pub multiplier: f64,
    /// Random spread of each wait, as a fraction (0.2 = ±20 %).
    pub jitter: f64,
    /// A `Retry-After` longer than this is not waited for: the error is
    /// returned at once so the caller can decide.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, waits from 500 ms doubling up to 30 s, ±20 % jitter,
    /// `Retry-After` waited for up to 60 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn disabled() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before attempt `attempt + 1`, after `attempt` failures
    /// (1-based), given the error's requested delay; `None` when the policy
    /// says stop.
    pub fn delay(&self, attempt: u32, error: &ModelError) -> Option<Duration> {
        if attempt >= self.max_attempts || !error.is_retryable() {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let base = base.min(self.max_backoff.as_secs_f64());
        let spread = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + spread * (fastrand::f64() * 2.0 - 1.0);
        let computed = Duration::from_secs_f64((base * factor).max(0.0));
        match error {
            ModelError::RateLimited {
                retry_after: Some(floor),
                ..
            } => (*floor <= self.max_retry_after).then(|| computed.max(*floor)),
            _ => Some(computed),
        }
    }
}

/// A model whose failed calls are retried under a [`RetryPolicy`].
pub struct RetryingModel {
    inner: Arc<dyn Model>,
    policy: RetryPolicy,
}

impl RetryingModel {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Model>, policy: RetryPolicy) -> Self {
        RetryingModel { inner, policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl Model for RetryingModel {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn native_structured_output(&self) -> bool {
        self.inner.native_structured_output()
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let streamed = AtomicBool::new(false);
                let forward = |chunk: ModelChunk| {
                    streamed.store(true, Ordering::Relaxed);
                    if let Some(sink) = sink {
                        sink(chunk);
                    }
                };
                // Always listen, even when the caller does not: a retry after
                // the first chunk would bill and run the answer twice.
                let result = self
                    .inner
                    .complete(request, Some(&forward as ChunkSink<'_>))
                    .await;
                let error = match result {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                if streamed.load(Ordering::Relaxed) {
                    // Part of the answer has been shown; a retry would show
                    // it twice.
                    return Err(error);
                }
                let Some(wait) = self.policy.delay(attempt, &error) else {
                    return Err(error);
                };
                tracing::warn!(
                    model = self.inner.id(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    %error,
                    "model call failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> ModelError {
        ModelError::Transient {
            message: "x".into(),
        }
    }

    #[test]
    fn backoff_grows_caps_and_stops() {
        let policy = RetryPolicy {
            jitter: 0.0,
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.delay(1, &transient()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(policy.delay(2, &transient()), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(3, &transient()), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(4, &transient()), None);
        assert_eq!(RetryPolicy::disabled().delay(1, &transient()), None);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let wait = policy.delay(1, &transient()).unwrap();
            assert!(wait >= Duration::from_millis(400) && wait <= Duration::from_millis(600));
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_permanent_errors_stop() {
        let policy = RetryPolicy::default();
        let limited = |secs| ModelError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            message: "slow down".into(),
        };
        assert_eq!(policy.delay(1, &limited(5)), Some(Duration::from_secs(5)));
        assert_eq!(policy.delay(1, &limited(3600)), None);
        for error in [
            ModelError::Authentication {
                message: "k".into(),
            },
            ModelError::InvalidRequest {
                message: "b".into(),
            },
            ModelError::ContentFilter {
                message: "c".into(),
            },
        ] {
            assert_eq!(policy.delay(1, &error), None);
        }
    }
}
