//! Rate limits: token buckets per tenant and per user for runs and model
//! calls, refilled continuously.
//!
//! A bucket holds at most its per-minute rate (the burst) and refills at
//! rate/60 tokens per second. When a bucket is empty, the configured
//! [`OnLimit`] either waits for the next token or rejects with the time
//! until one is due.

use crate::tenancy::ids::{NamedUser, TenantId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKind {
    /// Agent runs started.
    Runs,
    /// Model calls.
    ModelCalls,
}

impl RateKind {
    /// Its slot in an owner's [`Kinds`].
    fn index(self) -> usize {
        match self {
            RateKind::Runs => 0,
            RateKind::ModelCalls => 1,
        }
    }

    /// The configuration key: `runs_per_minute`, `model_calls_per_minute`.
    pub fn key(self) -> &'static str {
        match self {
            RateKind::Runs => "runs_per_minute",
            RateKind::ModelCalls => "model_calls_per_minute",
        }
    }
}

/// What happens when a bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Wait until a token is due (bounded by the run's time limit).
    #[default]
    Wait,
    /// Fail at once with the time until a token is due.
    Reject,
}

/// Rates of one level, per minute; `None` for unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Runs started per minute.
    pub runs_per_minute: Option<f64>,
    /// Model calls per minute.
    pub model_calls_per_minute: Option<f64>,
    /// Waiting or rejecting; `None` inherits (default `wait`).
    pub on_limit: Option<OnLimit>,
}

impl Rates {
    fn rate(&self, kind: RateKind) -> Option<f64> {
        match kind {
            RateKind::Runs => self.runs_per_minute,
            RateKind::ModelCalls => self.model_calls_per_minute,
        }
    }

    /// Check the values.
    ///
    /// # Errors
    ///
    /// A message naming the key when a rate is not positive and finite.
    pub fn validate(&self) -> Result<(), String> {
        for kind in [RateKind::Runs, RateKind::ModelCalls] {
            if let Some(rate) = self.rate(kind)
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(format!("`{}` must be a number above 0", kind.key()));
            }
        }
        Ok(())
    }

    /// These rates with `overrides` replacing the keys it sets.
    pub fn overridden_by(&self, overrides: &Rates) -> Rates {
        Rates {
            runs_per_minute: overrides.runs_per_minute.or(self.runs_per_minute),
            model_calls_per_minute: overrides
                .model_calls_per_minute
                .or(self.model_calls_per_minute),
            on_limit: overrides.on_limit.or(self.on_limit),
        }
    }
}

/// A bucket was empty and the limit rejects.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error(
    "rate limit {key} of the {level} reached ({rate}/min); retry after {retry_after_ms} ms",
    key = kind.key()
)]
pub struct RateLimited {
    /// What was limited.
    pub kind: RateKind,
    /// `tenant` or `user`.
    pub level: &'static str,
    /// The configured rate.
    pub rate: f64,
    /// When a token is due.
    pub retry_after_ms: u64,
}

impl RateLimited {
    /// How long until a token is due.
    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(self.retry_after_ms)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Most owners (tenants and users) whose buckets are kept; past it, idle
/// buckets (full by then) are dropped.
const MAX_BUCKETS: usize = 200_000;

/// How long a bucket goes untouched before it counts as idle: long enough
/// to refill completely at any rate.
const IDLE: Duration = Duration::from_secs(120);

/// One owner's buckets, one per [`RateKind`] ([`RateKind::index`]).
type Kinds = [Option<Bucket>; 2];

/// The buckets' maps hash with foldhash, keyed per process: every run and
/// every model call looks its tenant and user up, and a random key still
/// keeps callers from choosing colliding ids.
type FastState = foldhash::fast::RandomState;

/// A tenant's buckets and its users'.
#[derive(Default)]
struct TenantBuckets {
    own: Kinds,
    /// The tenant's anonymous calls, which share one bucket per kind.
    anonymous: Kinds,
    users: HashMap<NamedUser, Kinds, FastState>,
}

/// Every owner's buckets, looked up by borrowed ids (nothing is allocated
/// but an owner's first entry).
#[derive(Default)]
struct Buckets {
    tenants: HashMap<TenantId, TenantBuckets, FastState>,
    /// Tenants and users held.
    owners: usize,
}

impl Buckets {
    /// Drop the buckets idle at `now`, and the owners left with none.
    fn prune(&mut self, now: Instant) {
        let keep = |kinds: &mut Kinds| {
            for slot in kinds.iter_mut() {
                if slot.is_some_and(|b| now.duration_since(b.updated) >= IDLE) {
                    *slot = None;
                }
            }
            kinds.iter().any(Option::is_some)
        };
        let mut owners = 0;
        self.tenants.retain(|_, tenant| {
            tenant.users.retain(|_, kinds| keep(kinds));
            let own = keep(&mut tenant.own) | keep(&mut tenant.anonymous);
            let kept = own || !tenant.users.is_empty();
            if kept {
                owners += 1 + tenant.users.len();
            }
            kept
        });
        self.owners = owners;
    }
}

/// `key`'s entry in `map`, made (counted in `owners`) when missing.
fn entry<'m, K, V>(
    map: &'m mut HashMap<K, V, FastState>,
    key: &K,
    owners: &mut usize,
) -> Option<&'m mut V>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq + Clone,
    V: Default,
{
    if !map.contains_key(key.borrow()) {
        map.insert(key.clone(), V::default());
        *owners += 1;
    }
    map.get_mut(key.borrow())
}

/// Every tenant's and user's buckets.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// Take one `kind` token from the tenant's bucket and the user's, under
    /// `tenant_rates` and `user_rates`.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when a bucket is empty and its `on_limit` is
    /// `reject`, or waiting would outlast `max_wait`.
    pub async fn acquire(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: RateKind,
        tenant_rates: &Rates,
        user_rates: &Rates,
        max_wait: Duration,
    ) -> Result<(), RateLimited> {
        let on_limit = user_rates
            .on_limit
            .or(tenant_rates.on_limit)
            .unwrap_or_default();
        let tenant_rate = tenant_rates.rate(kind);
        let user_rate = user_rates.rate(kind);
        if tenant_rate.is_none() && user_rate.is_none() {
            return Ok(());
        }
        let deadline = Instant::now().checked_add(max_wait);
        loop {
            match self.try_take(tenant, user, kind, tenant_rate, user_rate) {
                Ok(()) => return Ok(()),
                Err(limited) => {
                    let wake = Instant::now().checked_add(limited.retry_after());
                    let too_late = match (wake, deadline) {
                        (Some(wake), Some(deadline)) => wake > deadline,
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                    if on_limit == OnLimit::Reject || too_late {
                        return Err(limited);
                    }
                    tokio::time::sleep(limited.retry_after()).await;
                }
            }
        }
    }

    /// Take a token from both buckets, or from neither.
    fn try_take(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: RateKind,
        tenant_rate: Option<f64>,
        user_rate: Option<f64>,
    ) -> Result<(), RateLimited> {
        let now = Instant::now();
        let mut guard = crate::sync::lock(&self.buckets);
        let buckets = &mut *guard;
        if buckets.owners > MAX_BUCKETS {
            buckets.prune(now);
        }
        let index = kind.index();
        let Some(owner) = entry(&mut buckets.tenants, tenant, &mut buckets.owners) else {
            return Ok(());
        };
        let user_kinds = match (user_rate, user) {
            (None, _) => None,
            (Some(_), UserId::Anonymous) => Some(&mut owner.anonymous),
            (Some(_), UserId::Named(name)) => entry(&mut owner.users, name, &mut buckets.owners),
        };
        let mut levels = [
            tenant_rate.map(|rate| (&mut owner.own[index], rate, "tenant")),
            user_rate
                .zip(user_kinds)
                .map(|(rate, kinds)| (&mut kinds[index], rate, "user")),
        ];
        // Refill, then check both before taking from either.
        for (slot, rate, level) in levels.iter_mut().flatten() {
            let rate = *rate;
            let bucket = slot.get_or_insert(Bucket {
                tokens: rate,
                updated: now,
            });
            let per_second = rate / 60.0;
            let elapsed = now.duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * per_second).min(rate.max(1.0));
            bucket.updated = now;
            if bucket.tokens < 1.0 {
                let wait = (1.0 - bucket.tokens) / per_second;
                return Err(RateLimited {
                    kind,
                    level,
                    rate,
                    retry_after_ms: (wait * 1000.0).ceil() as u64,
                });
            }
        }
        for (slot, _, _) in levels.iter_mut().flatten() {
            if let Some(bucket) = slot {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buckets_and_owners_left_without_any_are_pruned() {
        let now = Instant::now();
        let Some(old) = now.checked_sub(IDLE + Duration::from_secs(1)) else {
            return; // a clock too young to hold an idle bucket
        };
        let mut buckets = Buckets::default();
        let bucket = |updated| {
            Some(Bucket {
                tokens: 1.0,
                updated,
            })
        };
        let acme = TenantId::new("acme").unwrap();
        let idle = TenantId::new("idle").unwrap();
        let mut owners = 0;
        let tenant = entry(&mut buckets.tenants, &acme, &mut owners).unwrap();
        tenant.own[0] = bucket(old);
        for (name, updated) in [("fresh", now), ("stale", old)] {
            let user = NamedUser::new(name).unwrap();
            entry(&mut tenant.users, &user, &mut owners).unwrap()[1] = bucket(updated);
        }
        entry(&mut buckets.tenants, &idle, &mut owners)
            .unwrap()
            .anonymous[0] = bucket(old);
        buckets.owners = owners;
        assert_eq!(buckets.owners, 4);
        buckets.prune(now);
        // acme stays for its fresh user; its own idle bucket and the stale
        // user go, and the idle tenant goes entirely.
        assert_eq!(buckets.owners, 2);
        let acme = &buckets.tenants["acme"];
        assert!(acme.own[0].is_none());
        assert!(acme.users.contains_key("fresh") && !acme.users.contains_key("stale"));
        assert!(!buckets.tenants.contains_key("idle"));
    }

    #[tokio::test]
    async fn a_user_bucket_rejects_with_retry_after_and_spares_other_users() {
        let limiter = RateLimiter::default();
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let bob = UserId::named("bob").unwrap();
        let user_rates = Rates {
            runs_per_minute: Some(2.0),
            on_limit: Some(OnLimit::Reject),
            ..Rates::default()
        };
        let none = Rates::default();
        let take = |user| {
            limiter.acquire(
                &tenant,
                user,
                RateKind::Runs,
                &none,
                &user_rates,
                Duration::ZERO,
            )
        };
        take(&alice).await.unwrap();
        take(&alice).await.unwrap();
        let limited = take(&alice).await.unwrap_err();
        assert_eq!(limited.level, "user");
        assert!(limited.retry_after_ms > 0 && limited.retry_after_ms <= 30_000);
        take(&bob).await.unwrap();
    }

    #[tokio::test]
    async fn waiting_takes_the_next_token() {
        let limiter = RateLimiter::default();
        let tenant = TenantId::new("acme").unwrap();
        let rates = Rates {
            model_calls_per_minute: Some(600.0), // one per 100 ms
            ..Rates::default()
        };
        let user = UserId::Anonymous;
        for _ in 0..600 {
            limiter
                .try_take(&tenant, &user, RateKind::ModelCalls, Some(600.0), None)
                .unwrap();
        }
        let started = Instant::now();
        limiter
            .acquire(
                &tenant,
                &user,
                RateKind::ModelCalls,
                &rates,
                &Rates::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
