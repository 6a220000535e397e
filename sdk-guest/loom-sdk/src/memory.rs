//! Memory components: the [`MemoryPlugin`] trait behind
//! [`export_memory!`](crate::export_memory), and the types of the
//! `loom:plugin/memory@0.1.3` and `loom:plugin/facts@0.1.3` interfaces.
//!
//! A memory component stores what agents remember about users: items
//! (notes, episodes) through `memory`, and bi-temporal facts through
//! `facts`. It keeps them in the host's scoped key-value store
//! ([`kv`](crate::kv)); every function acts on the user of the current run
//! context only, and each call is one storage transaction.

use crate::kv::{KvError, KvJsonError};

pub use crate::memory_bindings::exports::loom::plugin::facts::{
    Expiry, Fact, FactQuery, NewFact, Recorded, Supersession,
};
pub use crate::memory_bindings::exports::loom::plugin::memory::{
    MemoryError, MemoryItem, ScoredItem,
};

/// A memory component: what [`export_memory!`](crate::export_memory)
/// exports as `loom:plugin/memory@0.1.3` and `loom:plugin/facts@0.1.3`.
///
/// Every function acts on the user of the current run context
/// ([`context`](crate::context)) and runs as one storage transaction:
/// returning an error stores nothing of what the call wrote.
pub trait MemoryPlugin {
    /// Remember `text` with `metadata` (a JSON object, as text) for the
    /// current user; returns the new item's id.
    fn remember(text: &str, metadata: &str) -> Result<String, MemoryError>;

    /// Items relevant to `query`, best first, at most `limit`, each scored
    /// from 0 to 1.
    fn recall(query: &str, limit: u32) -> Result<Vec<ScoredItem>, MemoryError>;

    /// Erase everything held about the current user (GDPR erasure);
    /// returns how many items (and fact versions) were removed.
    fn forget_current_user() -> Result<u64, MemoryError>;

    /// Every item held about the current user (GDPR export).
    fn export() -> Result<Vec<MemoryItem>, MemoryError>;

    /// Record `facts` in order at knowledge time `now` (unix milliseconds),
    /// closing the believed facts they supersede. Either every fact is
    /// recorded or none is (return an error and nothing is stored).
    fn add_facts(facts: Vec<NewFact>, now: i64) -> Result<Vec<Recorded>, MemoryError>;

    /// Stop believing fact `id` at `now`; the expired version, or `None`
    /// when the user has no such believed fact.
    fn retract(id: &str, now: i64) -> Result<Option<Fact>, MemoryError>;

    /// The user's fact versions matching `query`, oldest recorded first.
    fn query(query: &FactQuery) -> Result<Vec<Fact>, MemoryError>;
}

impl MemoryError {
    /// Bad input, for the reason given.
    pub fn invalid(reason: impl Into<String>) -> Self {
        MemoryError::Invalid(reason.into())
    }

    /// The storage failed, for the reason given.
    pub fn storage(reason: impl Into<String>) -> Self {
        MemoryError::Storage(reason.into())
    }
}

impl From<KvError> for MemoryError {
    /// Every storage failure is [`MemoryError::Storage`].
    fn from(error: KvError) -> Self {
        MemoryError::Storage(crate::kv::error_text(&error))
    }
}

impl From<KvJsonError> for MemoryError {
    /// Every failure to read or write a stored value is
    /// [`MemoryError::Storage`].
    fn from(error: KvJsonError) -> Self {
        match error {
            KvJsonError::Kv(error) => error.into(),
            KvJsonError::Json(error) => {
                MemoryError::Storage(format!("a stored value is not valid JSON: {error}"))
            }
        }
    }
}

/// Exports a type implementing [`MemoryPlugin`] as this component's
/// `loom:plugin/memory@0.1.3` and `loom:plugin/facts@0.1.3`.
///
/// The argument is the type (usually a unit struct); the macro implements
/// the generated export traits for it and exports the component's
/// functions. Call it once per component, at the crate root.
///
/// ```no_run
/// use loom_sdk::memory::{
///     Fact, FactQuery, MemoryError, MemoryItem, MemoryPlugin, NewFact, Recorded, ScoredItem,
/// };
///
/// /// Remembers nothing.
/// struct Amnesia;
///
/// impl MemoryPlugin for Amnesia {
///     fn remember(_text: &str, _metadata: &str) -> Result<String, MemoryError> {
///         Err(MemoryError::invalid("this component remembers nothing"))
///     }
///     fn recall(_query: &str, _limit: u32) -> Result<Vec<ScoredItem>, MemoryError> {
///         Ok(Vec::new())
///     }
///     fn forget_current_user() -> Result<u64, MemoryError> {
///         Ok(0)
///     }
///     fn export() -> Result<Vec<MemoryItem>, MemoryError> {
///         Ok(Vec::new())
///     }
///     fn add_facts(_facts: Vec<NewFact>, _now: i64) -> Result<Vec<Recorded>, MemoryError> {
///         Err(MemoryError::invalid("this component records no facts"))
///     }
///     fn retract(_id: &str, _now: i64) -> Result<Option<Fact>, MemoryError> {
///         Ok(None)
///     }
///     fn query(_query: &FactQuery) -> Result<Vec<Fact>, MemoryError> {
///         Ok(Vec::new())
///     }
/// }
///
/// loom_sdk::export_memory!(Amnesia);
/// ```
#[macro_export]
macro_rules! export_memory {
    ($memory:ty $(,)?) => {
        impl $crate::memory_bindings::exports::loom::plugin::memory::Guest for $memory {
            fn remember(
                text: ::std::string::String,
                metadata: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::memory::MemoryError> {
                <$memory as $crate::memory::MemoryPlugin>::remember(&text, &metadata)
            }

            fn recall(
                query: ::std::string::String,
                limit: u32,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::memory::ScoredItem>,
                $crate::memory::MemoryError,
            > {
                <$memory as $crate::memory::MemoryPlugin>::recall(&query, limit)
            }

            fn forget_current_user() -> ::std::result::Result<u64, $crate::memory::MemoryError> {
                <$memory as $crate::memory::MemoryPlugin>::forget_current_user()
            }

            fn export() -> ::std::result::Result<
                ::std::vec::Vec<$crate::memory::MemoryItem>,
                $crate::memory::MemoryError,
            > {
                <$memory as $crate::memory::MemoryPlugin>::export()
            }
        }

        impl $crate::memory_bindings::exports::loom::plugin::facts::Guest for $memory {
            fn add_facts(
                facts: ::std::vec::Vec<$crate::memory::NewFact>,
                now: i64,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::memory::Recorded>,
                $crate::memory::MemoryError,
            > {
                <$memory as $crate::memory::MemoryPlugin>::add_facts(facts, now)
            }

            fn retract(
                id: ::std::string::String,
                now: i64,
            ) -> ::std::result::Result<
                ::std::option::Option<$crate::memory::Fact>,
                $crate::memory::MemoryError,
            > {
                <$memory as $crate::memory::MemoryPlugin>::retract(&id, now)
            }

            fn query(
                query: $crate::memory::FactQuery,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::memory::Fact>,
                $crate::memory::MemoryError,
            > {
                <$memory as $crate::memory::MemoryPlugin>::query(&query)
            }
        }

        #[doc(hidden)]
        type __LoomExportedMemory = $memory;

        $crate::memory_bindings::__export_memory_plugin!(
            __LoomExportedMemory with_types_in $crate::memory_bindings
        );
    };
}
