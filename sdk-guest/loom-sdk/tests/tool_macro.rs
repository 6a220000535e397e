//! The `#[tool]` attribute's destructiveness: a tool that does not say
//! counts as destructive.

#![allow(missing_docs, reason = "test tools")]

use loom_sdk::{Tool, tool};

#[tool(description = "Says nothing about itself")]
fn unmarked() {}

#[tool(description = "Only reads", read_only)]
fn reader() {}

#[tool(
    description = "Only reads, said the long way",
    destructive = false,
    idempotent
)]
fn reader_long() {}

#[tool(description = "Not read-only after all", read_only = false)]
fn not_reader() {}

#[tool(description = "Says it is destructive", destructive)]
fn writer() {}

#[tool(
    description = "Says it is destructive, the long way",
    destructive = true
)]
fn writer_long() {}

#[test]
fn a_tool_that_does_not_say_is_destructive() {
    assert!(<__loom_tool_unmarked as Tool>::spec().destructive);
    assert!(!<__loom_tool_unmarked as Tool>::spec().idempotent);
}

#[test]
fn read_only_and_destructive_false_mean_the_same() {
    assert!(!<__loom_tool_reader as Tool>::spec().destructive);
    assert!(!<__loom_tool_reader_long as Tool>::spec().destructive);
    assert!(<__loom_tool_reader_long as Tool>::spec().idempotent);
}

#[test]
fn explicit_destructive_stays_destructive() {
    assert!(<__loom_tool_writer as Tool>::spec().destructive);
    assert!(<__loom_tool_writer_long as Tool>::spec().destructive);
    assert!(<__loom_tool_not_reader as Tool>::spec().destructive);
}
