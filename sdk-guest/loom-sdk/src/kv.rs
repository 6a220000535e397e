//! The host's key-value store, for memory components.
//!
//! The host prefixes every key with the caller's scope (tenant, user,
//! component), so a component can never address another user's data,
//! whatever key it builds. Each call into the component is one transaction:
//! reads see the call's own writes, and the writes are stored together when
//! the call returns `Ok` (nothing is stored when it returns an error, traps
//! or runs out of time). Keys are at most [`MAX_KEY_BYTES`] bytes, values at
//! most [`MAX_VALUE_BYTES`].
//!
//! These functions work only in a component built for the `memory-plugin`
//! world (one that calls [`export_memory!`](crate::export_memory)).
//!
//! ```no_run
//! use loom_sdk::kv;
//!
//! # fn demo() -> Result<(), kv::KvJsonError> {
//! kv::set("greeting", b"hello")?;
//! assert_eq!(kv::get("greeting")?, Some(b"hello".to_vec()));
//! kv::set_json("counter", &41_u64)?;
//! let next = kv::get_json::<u64>("counter")?.unwrap_or(0) + 1;
//! for (key, value) in kv::scan_all("note/")? {
//!     println!("{key}: {} bytes", value.len());
//! }
//! # let _ = next;
//! # Ok(())
//! # }
//! ```

use crate::memory_bindings::loom::plugin::kv as imports;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

pub use imports::KvError;

/// The longest key the host accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// The largest value the host accepts, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The most entries the host returns from one [`scan`], whatever limit is
/// asked for.
pub const MAX_SCAN_LIMIT: u32 = 1000;

/// Entries [`scan_all`] asks the host for at a time.
pub const SCAN_PAGE: u32 = 500;

/// The value stored under `key`, or `None` when there is none.
///
/// # Errors
///
/// [`KvError`] when the key is too long or the store fails.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    imports::get(key)
}

/// Store `value` under `key`, replacing any previous value.
///
/// # Errors
///
/// [`KvError::TooLarge`] when the key or value exceeds the host's limits,
/// [`KvError::QuotaExceeded`] when the tenant's quota is spent,
/// [`KvError::Io`] when the store fails.
pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
    imports::set(key, value)
}

/// Delete the value under `key`; deleting a missing key is not an error.
///
/// # Errors
///
/// [`KvError`] when the key is too long or the store fails.
pub fn delete(key: &str) -> Result<(), KvError> {
    imports::delete(key)
}

/// Up to `limit` entries whose keys start with `prefix`, in ascending key
/// order, after `start_after` when given (pass the last key of the previous
/// page to read the next one). The host returns at most
/// [`MAX_SCAN_LIMIT`] entries per call, and may return fewer than asked for
/// while more follow (it also caps a page's bytes): the range is done only
/// when a page comes back empty, as [`scan_all`] does.
///
/// # Errors
///
/// [`KvError`] when the store fails.
pub fn scan(
    prefix: &str,
    start_after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Vec<u8>)>, KvError> {
    imports::scan(prefix, start_after, limit)
}

/// Every entry whose key starts with `prefix`, in ascending key order, read
/// [`SCAN_PAGE`] entries at a time. Everything is held in memory: for large
/// sets, page with [`scan`] instead.
///
/// # Errors
///
/// [`KvError`] when the store fails.
pub fn scan_all(prefix: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let start_after = out.last().map(|(key, _)| key.as_str());
        let page = scan(prefix, start_after, SCAN_PAGE)?;
        // Stop on an empty page, or on one that does not move past the last
        // key (a host that ignored `start-after` would loop forever).
        let advances = match (start_after, page.first()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(last), Some((first, _))) => first.as_str() > last,
        };
        if !advances {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Why a JSON value could not be read from or written to the store.
#[derive(Debug)]
#[non_exhaustive]
pub enum KvJsonError {
    /// The store failed.
    Kv(KvError),
    /// The value is not JSON of the expected shape, or could not be
    /// serialized.
    Json(serde_json::Error),
}

impl fmt::Display for KvJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvJsonError::Kv(error) => f.write_str(&error_text(error)),
            KvJsonError::Json(error) => write!(f, "JSON error: {error}"),
        }
    }
}

impl std::error::Error for KvJsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KvJsonError::Kv(error) => Some(error),
            KvJsonError::Json(error) => Some(error),
        }
    }
}

impl From<KvError> for KvJsonError {
    fn from(error: KvError) -> Self {
        KvJsonError::Kv(error)
    }
}

impl From<serde_json::Error> for KvJsonError {
    fn from(error: serde_json::Error) -> Self {
        KvJsonError::Json(error)
    }
}

/// The text of a storage failure, naming its kind (the generated
/// `Display` of [`KvError`] is its `Debug` form).
pub(crate) fn error_text(error: &KvError) -> String {
    match error {
        KvError::TooLarge(reason) => format!("too large: {reason}"),
        KvError::QuotaExceeded(reason) => format!("quota exceeded: {reason}"),
        KvError::Io(reason) => format!("i/o error: {reason}"),
    }
}

/// The JSON value stored under `key`, parsed as `T`; `None` when there is
/// none.
///
/// # Errors
///
/// [`KvJsonError::Kv`] when the store fails, [`KvJsonError::Json`] when
/// the value is not JSON of type `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvJsonError> {
    match get(key)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Store `value` as JSON under `key`, replacing any previous value.
///
/// # Errors
///
/// [`KvJsonError::Json`] when `value` cannot be serialized,
/// [`KvJsonError::Kv`] as for [`set`].
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), KvJsonError> {
    set(key, &serde_json::to_vec(value)?)?;
    Ok(())
}
