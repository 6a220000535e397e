//! The sandbox: one wasmtime engine shared by all tenants, the compile cache,
//! and calls into components under limits.
//!
//! * Components are compiled once (or loaded from the [`cache`]) off the
//!   async workers and pre-linked into an `InstancePre` at load time. Every
//!   component gets the same imports (WASI, `wasi:http`, `loom:plugin`), so
//!   one `InstancePre` per component serves every tenant: what differs per
//!   tenant — preopens, environment, network grants, limits, its disk
//!   ledger — lives in the call's `Store`.
//! * Every call gets a fresh `Store` (no state survives between calls) and a
//!   meter ([`accounting`]) that charges it the CPU time and host memory its
//!   polls cost — guest code and the host work it asked for alike — against
//!   its CPU and memory budgets; an epoch callback enforces them while guest
//!   code runs, a wall-clock timeout bounds the whole call.
//! * Host functions that could be abused for disk, descriptors or host CPU
//!   are wrapped ([`guards`]); what crosses the boundary is checked
//!   ([`boundary`]).
//! * The pooling allocator is used when the address space allows it, else
//!   instances are allocated on demand.
//!
//! Modules by job: [`setup`] creates the engine, [`load`] compiles and
//! describes components, [`contract`] says which `loom:plugin` versions
//! are served and how, [`sandbox`] builds a call's store and runs guest
//! work under limits, [`call`] calls tools and architectures, [`imports`]
//! implements Loom's own imports, [`bindings`] holds the generated WIT
//! bindings and their conversions.

pub mod accounting;
pub mod bindings;
pub mod boundary;
pub mod cache;
mod call;
pub mod contract;
pub mod disk;
pub mod egress;
mod error;
pub(crate) mod guards;
mod harness;
mod imports;
mod kv;
mod load;
pub mod notes;
mod sandbox;
mod setup;
mod state;
mod types;

pub use call::{
    MAX_POLICY_REASON_BYTES, MAX_TOOL_ERROR_BYTES, MemoryCall, MemoryReply, PolicyAnswer,
};
pub use disk::{DiskLedger, DiskRefusal};
pub use error::{CallError, EngineError, LoadError, ToolFailure};
pub use guards::MAX_RANDOM_BYTES;
pub use harness::{Harness, HarnessStop};
pub use load::{
    ArchitectureComponent, LOADER_WALL, LoadedComponent, MAX_DESCRIPTION_BYTES, MAX_SCHEMA_BYTES,
    MAX_TOOLS_PER_COMPONENT, MemoryComponent, PolicyComponent, ToolComponent,
};
pub use sandbox::{CallRequest, MAX_HTTP_FIELDS_BYTES};
pub use setup::SandboxEngine;
pub use state::{LogLevel, LogLine};
pub use types::{
    ArchitectureInfo, ComponentShape, MAX_COMPONENT_BYTES, PluginKind, ToolOutput, ToolSpec,
};
