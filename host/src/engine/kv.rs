//! The host side of `loom:plugin/kv`: a memory component's reads and writes
//! go to the call's [`KvTransaction`], scoped by the host to (tenant, user,
//! component). Any other component gets a typed refusal.
//!
//! [`KvTransaction`]: crate::store::kv::KvTransaction

use super::bindings::kv::{self as wit, KvError};
use super::state::HostState;
use crate::store::kv::KvError as StoreKvError;

const NOT_MEMORY: &str = "the key-value store is only available to memory components";

fn to_wit(error: StoreKvError) -> KvError {
    match error {
        StoreKvError::TooLarge(m) => KvError::TooLarge(m),
        StoreKvError::QuotaExceeded(m) => KvError::QuotaExceeded(m),
        StoreKvError::Io(m) => KvError::Io(m),
    }
}

impl wit::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        match &self.kv {
            Some(txn) => txn.get(&key).map_err(to_wit),
            None => Err(KvError::Io(NOT_MEMORY.into())),
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), KvError> {
        match &mut self.kv {
            Some(txn) => txn.set(&key, value).map_err(to_wit),
            None => Err(KvError::Io(NOT_MEMORY.into())),
        }
    }

    async fn delete(&mut self, key: String) -> Result<(), KvError> {
        match &mut self.kv {
            Some(txn) => txn.delete(&key).map_err(to_wit),
            None => Err(KvError::Io(NOT_MEMORY.into())),
        }
    }

    async fn scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        match &self.kv {
            Some(txn) => txn
                .scan(&prefix, start_after.as_deref(), limit)
                .map_err(to_wit),
            None => Err(KvError::Io(NOT_MEMORY.into())),
        }
    }
}
