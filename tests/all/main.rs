//! End-to-end tests of the Loom host with real components built from source.
//! One binary, a module per topic; every hostile fixture has a test in
//! `hostile` (checked by `every_fixture_has_a_test`).

mod agent;
mod capabilities;
mod context;
mod hostile;
mod plugins;
mod providers;
mod support;
