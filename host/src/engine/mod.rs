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
//! describes components, [`sandbox`] builds a call's store and runs guest
//! work under limits, [`call`] calls tools and architectures, [`imports`]
//! implements Loom's own imports, [`bindings`] holds the generated WIT
//! bindings and their conversions.

pub mod accounting;
pub mod bindings;
pub mod boundary;
pub mod cache;
pub mod call;
pub mod disk;
pub mod egress;
pub mod error;
pub mod guards;
pub mod harness;
pub mod imports;
pub mod load;
pub mod sandbox;
pub mod setup;
pub mod state;
pub mod types;

pub use disk::{DiskLedger, DiskRefusal};
pub use error::{CallError, EngineError, LoadError, ToolFailure};
pub use harness::Harness;
pub use load::{ArchitectureComponent, LoadedComponent, ToolComponent};
pub use sandbox::CallRequest;
pub use setup::SandboxEngine;
pub use state::{LogLevel, LogLine};
pub use types::{
    ArchitectureInfo, ComponentShape, MAX_COMPONENT_BYTES, PluginKind, ToolOutput, ToolSpec,
};
