//! Typed identities: who a call runs for.
//!
//! Every stored key and every sandbox grant derives from these types, never
//! from bare strings, so a forgotten namespace is a compile error rather than
//! a leak. The anonymous user is a variant of [`UserId`], not a magic string.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct IdError {
    /// Which kind of id was being parsed (`tenant id`, `user id`, ...).
    pub kind: &'static str,
    /// The rejected text (cut to 80 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks the common id rules: 1 to 128 characters of `[A-Za-z0-9._:@-]`.
fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 128 {
        Some("must be at most 128 characters")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
    {
        Some("may contain only letters, digits and . _ - : @")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IdError {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id: 1 to 128 characters of
            /// `[A-Za-z0-9._:@-]`.
            ///
            /// # Errors
            ///
            /// [`IdError`] naming the rule that `value` breaks.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Looks an id up by its text in maps keyed by the id (its hash
        /// and equality are the text's).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

string_id!(
    /// A tenant: an organisation or workspace with its own grants, budgets and
    /// plugins.
    TenantId,
    "tenant id"
);
impl TenantId {
    /// `default`: the one tenant of a configuration that names none.
    pub fn default_tenant() -> Self {
        TenantId(String::from("default"))
    }
}

string_id!(
    /// A conversation; runs with the same session id and user continue it.
    SessionId,
    "session id"
);
string_id!(
    /// One agent run, or one direct tool call.
    RunId,
    "run id"
);

impl RunId {
    /// A fresh, unique run id (`run_` followed by time and randomness).
    pub fn generate() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!(
            "run_{nanos:x}{:04x}{n:x}",
            std::process::id() & 0xffff
        ))
    }
}

/// The end user a call serves within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum UserId {
    /// No signed-in user. Anonymous calls share one bucket per tenant, which
    /// no named user can reach.
    #[default]
    Anonymous,
    /// A named user.
    Named(NamedUser),
}

string_id!(
    /// The name of a signed-in user; see [`UserId::Named`].
    NamedUser,
    "user id"
);

impl UserId {
    /// A named user.
    ///
    /// # Errors
    ///
    /// [`IdError`] if `name` breaks the id rules.
    pub fn named(name: impl Into<String>) -> Result<Self, IdError> {
        Ok(UserId::Named(NamedUser::new(name)?))
    }

    /// The user's name, or `None` for the anonymous user.
    pub fn name(&self) -> Option<&str> {
        match self {
            UserId::Anonymous => None,
            UserId::Named(name) => Some(name.as_str()),
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserId::Anonymous => f.write_str("(anonymous)"),
            UserId::Named(name) => f.write_str(name.as_str()),
        }
    }
}

/// Where a call belongs: tenant, user, and optionally session and run.
/// Everything a component sees of its caller comes from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The tenant.
    pub tenant: TenantId,
    /// The end user.
    pub user: UserId,
    /// The conversation, when there is one.
    pub session: Option<SessionId>,
    /// The run.
    pub run: RunId,
    /// Caller-supplied metadata, visible to components.
    pub metadata: Vec<(String, String)>,
    /// For a tool call of an agent run: the key that stays the same every
    /// time this call (same run, same place in it) is executed, also when a
    /// resumed run executes again a call that was in flight at a crash. The
    /// tool reads it through `context.idempotency-key` (WIT 0.1.3) to
    /// deduplicate its side effects. `None` for every other call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Scope {
    /// A scope for one call by `user` of `tenant`, with a fresh run id.
    pub fn new(tenant: TenantId, user: UserId) -> Self {
        Self {
            tenant,
            user,
            session: None,
            run: RunId::generate(),
            metadata: Vec::new(),
            idempotency_key: None,
        }
    }

    /// The same scope in session `session`.
    pub fn with_session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// The same scope for a tool call whose idempotency key is `key`: the
    /// tool sees it through `context.idempotency-key`.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_text() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(
            TenantId::new("a/b")
                .unwrap_err()
                .to_string()
                .contains("tenant id")
        );
        assert!(UserId::named("x".repeat(129)).is_err());
    }

    #[test]
    fn anonymous_is_not_a_string() {
        assert_eq!(UserId::Anonymous.name(), None);
        assert_eq!(UserId::named("alice").unwrap().name(), Some("alice"));
        assert_ne!(RunId::generate(), RunId::generate());
    }

    #[test]
    fn only_a_tool_call_scope_given_one_carries_an_idempotency_key() {
        let scope = Scope::new(TenantId::default_tenant(), UserId::Anonymous);
        assert_eq!(scope.idempotency_key, None);
        // A scope serialized without the key (as before it existed) reads back.
        let json = serde_json::to_value(&scope).unwrap();
        assert!(json.get("idempotency_key").is_none(), "{json}");
        let back: Scope = serde_json::from_value(json).unwrap();
        assert_eq!(back, scope);
        let keyed = scope.with_idempotency_key("run-1:3:call_7");
        assert_eq!(keyed.idempotency_key.as_deref(), Some("run-1:3:call_7"));
        let back: Scope = serde_json::from_str(&serde_json::to_string(&keyed).unwrap()).unwrap();
        assert_eq!(back, keyed);
    }
}
