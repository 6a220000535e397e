//! Who is calling: a bearer API key selects the tenant (or, for operator
//! keys, the operator). Keys are configured as SHA-256 hashes; a presented
//! key is hashed once and compared with every configured hash in constant
//! time. Failed attempts are counted per client address: past the limit
//! the address is answered 429 without any key being checked. Every
//! failure that is counted is audited.

use crate::LoomConfig;
use crate::tenancy::ids::TenantId;
use crate::tenancy::keys::ApiKeyHash;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant's application.
    Tenant(TenantId),
    /// The operator (`[server] operator_keys`): metrics of every tenant.
    Operator,
}

/// Every configured key hash and whose it is.
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: Vec<(ApiKeyHash, Principal)>,
}

impl KeyTable {
    /// The keys of `config`: each tenant's `api_keys` and the operator's.
    pub fn from_config(config: &LoomConfig) -> Self {
        let mut keys = Vec::new();
        for (tenant, settings) in &config.tenants {
            for hash in &settings.api_keys {
                keys.push((hash.clone(), Principal::Tenant(tenant.clone())));
            }
        }
        for hash in &config.server.operator_keys {
            keys.push((hash.clone(), Principal::Operator));
        }
        KeyTable { keys }
    }

    /// Add a key of `tenant` (one that is not in the configuration).
    pub fn add(&mut self, hash: ApiKeyHash, tenant: TenantId) {
        self.keys.push((hash, Principal::Tenant(tenant)));
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whose `key` is. Every configured hash is compared, each in constant
    /// time, whatever matches first.
    pub fn principal(&self, key: &str) -> Option<Principal> {
        let presented = ApiKeyHash::of(key);
        let mut found = None;
        for (hash, principal) in &self.keys {
            if hash.matches(&presented) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Most client addresses tracked at once; past it, the oldest windows
/// are forgotten (a flood of addresses cannot grow the table without end).
const MAX_TRACKED: usize = 65_536;

/// Failed authentications per client address, in one-minute windows.
pub struct FailureLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// A limiter allowing `per_minute` failures per address.
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` is over its limit now (then its requests are
    /// refused before any key is checked).
    pub fn blocked(&self, client: IpAddr) -> bool {
        let windows = crate::sync::lock(&self.windows);
        windows.get(&client).is_some_and(|(start, count)| {
            start.elapsed() < Duration::from_secs(60) && *count >= self.per_minute
        })
    }

    /// Count a failure of `client`; whether it is still within the limit
    /// (the failures past it are not audited one by one).
    pub fn fail(&self, client: IpAddr) -> bool {
        let mut windows = crate::sync::lock(&self.windows);
        let now = Instant::now();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&client) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
            if windows.len() >= MAX_TRACKED {
                // Still full of live windows: forget an arbitrary one.
                if let Some(victim) = windows.keys().next().copied() {
                    windows.remove(&victim);
                }
            }
        }
        let window = windows.entry(client).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(60) {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_nothing_else_is() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_client_past_its_failures_is_blocked_and_others_are_not() {
        let limiter = FailureLimiter::new(3);
        let bad: IpAddr = "10.0.0.1".parse().expect("ip");
        let good: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(limiter.fail(bad));
        assert!(limiter.fail(bad));
        assert!(!limiter.blocked(bad));
        assert!(limiter.fail(bad));
        assert!(limiter.blocked(bad));
        assert!(!limiter.fail(bad));
        assert!(!limiter.blocked(good));
    }

    #[test]
    fn a_key_selects_its_own_tenant_only() {
        let (a_key, a_hash) = crate::tenancy::keys::new_key().expect("key");
        let (b_key, b_hash) = crate::tenancy::keys::new_key().expect("key");
        let text = format!(
            "[tenants.a]\napi_keys = [\"{a_hash}\"]\n[tenants.b]\napi_keys = [\"{b_hash}\"]\n"
        );
        let config = LoomConfig::parse(&text, std::path::Path::new(".")).expect("config");
        let table = KeyTable::from_config(&config);
        let tenant = |name: &str| Principal::Tenant(TenantId::new(name).expect("id"));
        assert_eq!(table.principal(&a_key), Some(tenant("a")));
        assert_eq!(table.principal(&b_key), Some(tenant("b")));
        assert_eq!(table.principal("loom_sk_nope"), None);
        assert_eq!(table.principal(""), None);
    }
}
