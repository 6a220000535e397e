//! End-to-end tests of the Loom host with real components built from source.
//! One binary, a module per topic; every hostile fixture has a test in
//! `hostile` (checked by `every_fixture_has_a_test`).

// Loom's allocator, so host memory a guest makes the host hold is counted
// (as in the `loom` binary).
#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

mod agent;
mod architectures;
mod capabilities;
mod composition;
mod context;
mod custom_architecture;
mod floods;
mod governance;
mod hostile;
mod hostile_arch;
mod journal;
mod memory;
mod memory_conformance;
mod plugins;
mod polyglot;
mod providers;
mod retrieval;
mod service;
mod support;
mod telemetry;
