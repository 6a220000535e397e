//! API keys: a tenant's keys are configured as SHA-256 hashes
//! (`api_keys = ["sha256:<64 lowercase hex digits>"]`), so `loom.toml`
//! never holds a usable key. A presented key is hashed and compared with
//! every configured hash in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every key `loom keys new` makes; it lets secret scanners
/// and people recognize a Loom key.
pub const KEY_PREFIX: &str = "loom_sk_";

/// The SHA-256 of an API key, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyHash([u8; 32]);

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not a secret, but it need not fill logs either.
        write!(f, "ApiKeyHash(sha256:{}…)", &hex::encode(self.0)[..8])
    }
}

impl std::fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// Why a configured key hash is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a key hash: write \"sha256:\" and the 64 lowercase hex digits of the key's \
     SHA-256, as `loom keys new --tenant <tenant>` prints it (never the key itself)"
)]
pub struct KeyHashError(pub String);

impl std::str::FromStr for ApiKeyHash {
    type Err = KeyHashError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shown = || {
            // Someone may have pasted the key itself: show only its start.
            let mut shown: String = text.chars().take(12).collect();
            if text.chars().count() > 12 {
                shown.push('…');
            }
            KeyHashError(shown)
        };
        let digits = text.strip_prefix("sha256:").ok_or_else(shown)?;
        if digits.len() != 64
            || !digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(shown());
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(digits, &mut hash).map_err(|_| shown())?;
        Ok(ApiKeyHash(hash))
    }
}

impl<'de> serde::Deserialize<'de> for ApiKeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ApiKeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        ApiKeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether this is the hash of the key whose hash is `presented`, in
    /// time independent of where the two differ.
    pub fn matches(&self, presented: &ApiKeyHash) -> bool {
        self.0.ct_eq(&presented.0).into()
    }
}

/// A new random API key (32 bytes from the operating system's generator,
/// hex-encoded after [`KEY_PREFIX`]) and its hash.
///
/// # Errors
///
/// When the operating system's random generator fails.
pub fn new_key() -> Result<(String, ApiKeyHash), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let hash = ApiKeyHash::of(&key);
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_matches_its_printed_hash_and_no_other() {
        let (key, hash) = new_key().expect("random");
        assert!(key.starts_with(KEY_PREFIX));
        let parsed: ApiKeyHash = hash.to_string().parse().expect("hash parses");
        assert!(parsed.matches(&ApiKeyHash::of(&key)));
        assert!(!parsed.matches(&ApiKeyHash::of(&format!("{key}x"))));
        let (other, _) = new_key().expect("random");
        assert_ne!(key, other);
    }

    #[test]
    fn a_pasted_key_or_bad_hash_is_refused_without_echoing_it() {
        let error = "loom_sk_0123456789abcdef0123456789abcdef"
            .parse::<ApiKeyHash>()
            .expect_err("a key is not a hash");
        assert!(error.to_string().contains("`loom_sk_0123…`"), "{error}");
        assert!(!error.to_string().contains("abcdef0123"));
        for bad in [
            "sha256:",
            "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789",
            "sha256:0123",
            "md5:0123456789abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<ApiKeyHash>().is_err(), "{bad}");
        }
    }
}
