//! Write Loom plugins in Rust: tools, permission policies, memory and
//! architectures (agent loops).
//!
//! The bindings follow the WIT contract `loom:plugin@0.1.3`. Hosts that
//! speak 0.1.3 still load components built against `loom:plugin@0.1.0`,
//! `@0.1.1` and `@0.1.2`, so existing plugins keep working; rebuilding them
//! with this crate moves them to 0.1.3, the version that added
//! [`idempotency_key`].
//!
//! # Tools
//!
//! A Loom tool is a WebAssembly component that exports the
//! `loom:plugin/tool@0.1.3` interface. With this crate a tool is a plain Rust
//! function carrying the [`tool`] attribute; its arguments are deserialized
//! from the model's JSON and its JSON Schema is generated from the Rust types.
//! [`export_tools!`] turns one or more such functions into the component's
//! exports.
//!
//! A tool counts as destructive (it changes the world, so permission modes
//! may ask before it runs) unless it says otherwise with `read_only` (or
//! `destructive = false`).
//!
//! ```no_run
//! use loom_sdk::{tool, ToolError};
//!
//! /// Adds two numbers.
//! #[tool(description = "Add two numbers and return the sum", read_only, idempotent)]
//! fn add(a: f64, b: f64) -> Result<f64, ToolError> {
//!     Ok(a + b)
//! }
//!
//! /// Greets the user the run belongs to; the user comes from the run context,
//! /// never from the arguments.
//! #[tool(description = "Greet the current user", read_only)]
//! fn greet() -> String {
//!     let ctx = loom_sdk::context();
//!     format!("hello, {}", ctx.user_id.unwrap_or_else(|| "anonymous".into()))
//! }
//!
//! /// Appends a line to a file: it changes the world, so it keeps the
//! /// default and counts as destructive. Inside an agent run the line carries
//! /// the call's idempotency key, so a reader can tell a call that a resumed
//! /// run executed again from a new one.
//! #[tool(description = "Append a line to a file")]
//! fn append(path: String, line: String) -> Result<(), ToolError> {
//!     use std::io::Write;
//!     let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
//!     match loom_sdk::idempotency_key() {
//!         Some(key) => writeln!(file, "{key}\t{line}")?,
//!         None => writeln!(file, "{line}")?,
//!     }
//!     Ok(())
//! }
//!
//! loom_sdk::export_tools!(add, greet, append);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release` and drop the
//! `.wasm` file into a Loom plugin directory. Capabilities (files, env, HTTP)
//! are requested in an optional `<name>.toml` manifest beside the `.wasm` and
//! work only as far as the tenant granted them: a tool uses `std::fs`,
//! `std::env` and `wasi:http` as usual and gets a typed error where access is
//! denied.
//!
//! # Policies
//!
//! A policy component exports `loom:plugin/policy@0.1.3`: the host asks it
//! about every tool call before the call runs, and it answers
//! [`Decision::Allow`], [`Decision::Deny`] (the reason is shown to the model)
//! or [`Decision::Ask`] (the reason is shown to the tenant's approver). A
//! policy that traps, times out or answers badly counts as a denial.
//!
//! With this crate a policy is a plain function taking the call
//! ([`ToolCall`]: `id`, `name`, and `arguments` as JSON text, parsed with
//! [`ToolCall::arguments_json`] or [`ToolCall::parse_arguments`]) and the
//! called tool's [`ToolSpec`] (`name`, `destructive`, `idempotent`, ...). It
//! returns a [`Decision`], or a `Result<Decision, E>` whose error becomes a
//! denial (see [`IntoDecision`]). [`export_policy!`] exports it; a type
//! implementing [`Policy`] works too.
//!
//! Each policy's configuration reaches it as JSON text in the run context
//! metadata under [`POLICY_CONFIG_KEY`] (`loom.policy_config`);
//! [`policy_config`] reads and parses it into any `Deserialize` type, taking
//! a missing key as `{}`.
//!
//! ```no_run
//! use loom_sdk::{Decision, PolicyConfigError, ToolCall, ToolSpec};
//! use serde::Deserialize;
//!
//! /// The configuration, from `loom.policy_config`.
//! #[derive(Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config {
//!     /// Tools that may never run.
//!     forbidden: Vec<String>,
//!     /// Ask before destructive tools run.
//!     ask_destructive: bool,
//! }
//!
//! fn check(call: &ToolCall, spec: &ToolSpec) -> Result<Decision, PolicyConfigError> {
//!     // A configuration that does not parse denies the call (fail closed).
//!     let config: Config = loom_sdk::policy_config()?;
//!     if config.forbidden.contains(&call.name) {
//!         return Ok(Decision::deny(format!("`{}` is forbidden here", call.name)));
//!     }
//!     let arguments = call.arguments_json().unwrap_or_default();
//!     if arguments.get("force") == Some(&serde_json::Value::Bool(true)) {
//!         return Ok(Decision::ask("the model wants to force it"));
//!     }
//!     if spec.destructive && config.ask_destructive {
//!         return Ok(Decision::ask(format!("`{}` changes the world", spec.name)));
//!     }
//!     Ok(Decision::Allow)
//! }
//!
//! loom_sdk::export_policy!(check);
//! ```
//!
//! # Memory components
//!
//! A memory component exports `loom:plugin/memory@0.1.3` (items: remember,
//! recall, forget, export) and `loom:plugin/facts@0.1.3` (bi-temporal
//! facts), and keeps its data in the host's key-value store, which the host
//! scopes to the tenant, the user and the component ([`kv`]). Every call is
//! one storage transaction: it reads its own writes, and its writes are kept
//! only when it returns `Ok`.
//!
//! Implement [`memory::MemoryPlugin`] for a type and export it with
//! [`export_memory!`]:
//!
//! ```no_run
//! use loom_sdk::kv;
//! use loom_sdk::memory::{
//!     Fact, FactQuery, MemoryError, MemoryItem, MemoryPlugin, NewFact, Recorded, ScoredItem,
//! };
//!
//! /// Keeps items under `item/<number>`; records no facts.
//! struct Notes;
//!
//! fn items() -> Result<Vec<MemoryItem>, MemoryError> {
//!     kv::scan_all("item/")?
//!         .into_iter()
//!         .map(|(key, text)| {
//!             let text = String::from_utf8(text).map_err(|e| MemoryError::storage(e.to_string()))?;
//!             Ok(MemoryItem {
//!                 id: key,
//!                 text,
//!                 metadata: "{}".into(),
//!                 valid_from: 0,
//!                 valid_to: None,
//!                 recorded_at: 0,
//!             })
//!         })
//!         .collect()
//! }
//!
//! impl MemoryPlugin for Notes {
//!     fn remember(text: &str, _metadata: &str) -> Result<String, MemoryError> {
//!         let number: u64 = kv::get_json("next")?.unwrap_or(0);
//!         kv::set_json("next", &(number + 1))?;
//!         let key = format!("item/{number:016x}");
//!         kv::set(&key, text.as_bytes())?;
//!         Ok(key)
//!     }
//!     fn recall(query: &str, limit: u32) -> Result<Vec<ScoredItem>, MemoryError> {
//!         let query = query.to_lowercase();
//!         Ok(items()?
//!             .into_iter()
//!             .filter(|item| item.text.to_lowercase().contains(&query))
//!             .map(|item| ScoredItem { item, score: 1.0 })
//!             .take(limit as usize)
//!             .collect())
//!     }
//!     fn forget_current_user() -> Result<u64, MemoryError> {
//!         let all = kv::scan_all("")?;
//!         for (key, _) in &all {
//!             kv::delete(key)?;
//!         }
//!         Ok(all.iter().filter(|(key, _)| key.starts_with("item/")).count() as u64)
//!     }
//!     fn export() -> Result<Vec<MemoryItem>, MemoryError> {
//!         items()
//!     }
//!     fn add_facts(_facts: Vec<NewFact>, _now: i64) -> Result<Vec<Recorded>, MemoryError> {
//!         Err(MemoryError::invalid("this component records no facts"))
//!     }
//!     fn retract(_id: &str, _now: i64) -> Result<Option<Fact>, MemoryError> {
//!         Ok(None)
//!     }
//!     fn query(_query: &FactQuery) -> Result<Vec<Fact>, MemoryError> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! loom_sdk::export_memory!(Notes);
//! ```
//!
//! A [`kv::KvError`] or [`kv::KvJsonError`] converts into
//! [`memory::MemoryError::Storage`], so `?` works on store calls. The
//! first-party `loom-memory-kv` component is a complete example, with
//! lexical recall and bi-temporal facts.
//!
//! # Architectures
//!
//! An architecture component exports `loom:plugin/architecture@0.1.3`: one
//! strategy for running an agent loop (ReAct, self-refine, ...). It talks
//! to the model, the tools, sub-agents and memory only through the host's
//! `harness`, which budgets, checks and journals every call.
//!
//! Implement [`arch::Architecture`] for a type and export it with
//! [`export_architecture!`]. [`arch::Run`] keeps the conversation, the
//! messages the run adds to the session, the turn count, the usage and the
//! cost, so a loop stays short:
//!
//! ```no_run
//! use loom_sdk::arch::{self, Architecture, ArchitectureInfo, Run, RunError, RunInput, RunOutput};
//!
//! /// Calls tools until the model answers, then notes the answer.
//! struct Minimal;
//!
//! impl Architecture for Minimal {
//!     fn describe() -> ArchitectureInfo {
//!         ArchitectureInfo {
//!             name: "minimal".into(),
//!             description: "Call tools until the model answers".into(),
//!             workers: Vec::new(),
//!             config_schema: r#"{"type":"object","properties":{}}"#.into(),
//!         }
//!     }
//!
//!     fn run(input: RunInput) -> Result<RunOutput, RunError> {
//!         let mut run = Run::seed(&input);
//!         while !run.out_of_turns() {
//!             let completion = run.complete(None, true).map_err(arch::harness_error)?;
//!             let calls = completion.message.tool_calls;
//!             if calls.is_empty() {
//!                 arch::emit("answered", serde_json::json!({ "turns": run.turns() }));
//!                 return Ok(run.finish(completion.message.content));
//!             }
//!             run.call_tools(&calls);
//!         }
//!         Ok(run.interrupted("max_turns"))
//!     }
//! }
//!
//! loom_sdk::export_architecture!(Minimal);
//! ```
//!
//! [`arch::Run::react`] runs exactly that tool loop, and [`arch::config`]
//! parses the run's configuration object into a `Deserialize` type. The
//! first-party `loom-arch-react` and `loom-arch-self-refine` components are
//! complete examples.
//!
//! A component exports tools, a policy, memory or an architecture: one of
//! them.

#![warn(missing_docs)]

/// Generated bindings of the `loom:plugin@0.1.3` tool world.
///
/// Most authors never need these directly: [`tool`], [`export_tools!`],
/// [`context`], [`idempotency_key`] and [`log`] cover the common ground.
#[allow(missing_docs, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "tool-plugin",
        path: "../../wit/plugin@0.1.3",
        pub_export_macro: true,
        export_macro_name: "__export_tool_plugin",
        default_bindings_module: "::loom_sdk::bindings",
    });
}

/// Generated bindings of the `loom:plugin@0.1.3` policy world.
///
/// They share the types and the `context` import of [`bindings`], so a
/// [`ToolSpec`] or [`RunContext`] is the same type in tools and policies.
/// Most authors never need these directly: [`export_policy!`], [`Decision`]
/// and [`policy_config`] cover the common ground.
#[allow(missing_docs, reason = "generated code")]
pub mod policy_bindings {
    wit_bindgen::generate!({
        world: "policy-plugin",
        path: "../../wit/plugin@0.1.3",
        with: {
            "loom:plugin/types@0.1.3": crate::bindings::loom::plugin::types,
            "loom:plugin/context@0.1.3": crate::bindings::loom::plugin::context,
        },
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "__export_policy_plugin",
        default_bindings_module: "::loom_sdk::policy_bindings",
    });
}

/// Generated bindings of the `loom:plugin@0.1.3` memory world: the `kv`
/// import and the `memory` and `facts` exports.
///
/// They share the types and the `context` import of [`bindings`]. Most
/// authors never need these directly: [`kv`], [`memory`] and
/// [`export_memory!`] cover the common ground.
#[allow(missing_docs, reason = "generated code")]
pub mod memory_bindings {
    wit_bindgen::generate!({
        world: "memory-plugin",
        path: "../../wit/plugin@0.1.3",
        with: {
            "loom:plugin/types@0.1.3": crate::bindings::loom::plugin::types,
            "loom:plugin/context@0.1.3": crate::bindings::loom::plugin::context,
        },
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_memory_plugin",
        default_bindings_module: "::loom_sdk::memory_bindings",
    });
}

/// Generated bindings of the `loom:plugin@0.1.3` architecture world: the
/// `harness` import and the `architecture` export.
///
/// They share the types and the `context` import of [`bindings`], so a
/// [`Message`](arch::Message) or [`ToolSpec`] is the same type everywhere.
/// Most authors never need these directly: [`arch`] and
/// [`export_architecture!`] cover the common ground.
#[allow(missing_docs, reason = "generated code")]
pub mod arch_bindings {
    wit_bindgen::generate!({
        world: "architecture-plugin",
        path: "../../wit/plugin@0.1.3",
        with: {
            "loom:plugin/types@0.1.3": crate::bindings::loom::plugin::types,
            "loom:plugin/context@0.1.3": crate::bindings::loom::plugin::context,
        },
        pub_export_macro: true,
        export_macro_name: "__export_architecture_plugin",
        default_bindings_module: "::loom_sdk::arch_bindings",
    });
}

pub mod arch;
pub mod kv;
pub mod memory;
mod policy;
pub mod team;

pub use bindings::loom::plugin::context::LogLevel;
pub use bindings::loom::plugin::types::{RunContext, ToolCall, ToolError, ToolSpec};
pub use loom_sdk_macros::{export_tools, tool};
pub use policy::{
    IntoDecision, POLICY_CONFIG_KEY, Policy, PolicyConfigError, policy_config, policy_config_in,
};
pub use policy_bindings::exports::loom::plugin::policy::Decision;

/// The tenant, user, session and run the current call serves.
///
/// Always take the user from here, never from tool arguments: the host sets
/// these fields and a model cannot forge them.
pub fn context() -> RunContext {
    bindings::loom::plugin::context::current()
}

/// The idempotency key of the current tool call: during a tool call that is
/// part of an agent run, a key that is the same every time this same call
/// (same run, same place in the run) is executed, in particular when a run
/// resumed after a crash executes again a call that was in flight. A tool
/// with external side effects passes it on (as an `Idempotency-Key` header,
/// say) or records it, so the second execution has no further effect.
///
/// `None` outside a run's tool call (`loom tool call`, policies, memory,
/// architectures). Calls `context.idempotency-key`, added in
/// `loom:plugin@0.1.3`.
pub fn idempotency_key() -> Option<String> {
    bindings::loom::plugin::context::idempotency_key()
}

/// Write a line to the host's log, tagged with this component and the run
/// context. The host caps the log volume of each call.
pub fn log(level: LogLevel, message: &str) {
    bindings::loom::plugin::context::log(level, message);
}

impl ToolError {
    /// The tool ran and failed for the reason given.
    pub fn failed(reason: impl Into<String>) -> Self {
        ToolError::Failed(reason.into())
    }

    /// The arguments were wrong in the way described.
    pub fn invalid_arguments(reason: impl Into<String>) -> Self {
        ToolError::InvalidArguments(reason.into())
    }

    /// The tool was refused something it needed.
    pub fn denied(reason: impl Into<String>) -> Self {
        ToolError::Denied(reason.into())
    }
}

impl From<String> for ToolError {
    fn from(reason: String) -> Self {
        ToolError::Failed(reason)
    }
}

impl From<&str> for ToolError {
    fn from(reason: &str) -> Self {
        ToolError::Failed(reason.to_owned())
    }
}

impl From<std::io::Error> for ToolError {
    /// Maps permission errors to [`ToolError::Denied`], everything else to
    /// [`ToolError::Failed`].
    fn from(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::PermissionDenied => ToolError::Denied(error.to_string()),
            _ => ToolError::Failed(error.to_string()),
        }
    }
}

impl From<serde_json::Error> for ToolError {
    fn from(error: serde_json::Error) -> Self {
        ToolError::Failed(format!("JSON error: {error}"))
    }
}

/// A tool that [`export_tools!`] can export. Implemented by [`tool`]; write it
/// by hand only for tools whose schema is not derived from a function.
pub trait Tool {
    /// The tool's name, unique within the component.
    const NAME: &'static str;
    /// The tool's description for the model.
    fn spec() -> ToolSpec;
    /// Run the tool on JSON `arguments`, returning JSON output.
    fn invoke(arguments: &str) -> Result<String, ToolError>;
}

/// Support code for the macros; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde;
    pub use serde_json;

    use crate::{ToolError, ToolSpec};

    /// JSON Schema of `T` as text, for a tool's parameters.
    pub fn parameters_schema<T: schemars::JsonSchema>() -> String {
        let schema = schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::draft07())
            .into_root_schema_for::<T>();
        let mut value = schema.to_value();
        if let Some(object) = value.as_object_mut() {
            object.remove("$schema");
            object.remove("title");
        }
        value.to_string()
    }

    /// Parse `arguments` as the tool's argument struct. An empty string counts
    /// as `{}` so tools without parameters accept a bare call.
    pub fn parse_arguments<T: serde::de::DeserializeOwned>(
        tool: &str,
        arguments: &str,
    ) -> Result<T, ToolError> {
        let text = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        serde_json::from_str(text).map_err(|e| ToolError::InvalidArguments(format!("{tool}: {e}")))
    }

    /// Serialize a tool's output to JSON.
    pub fn output_json<T: serde::Serialize>(value: &T) -> Result<String, ToolError> {
        serde_json::to_string(value)
            .map_err(|e| ToolError::Failed(format!("output is not serializable: {e}")))
    }

    /// Build a spec; used by the `#[tool]` expansion.
    pub fn spec(
        name: &str,
        description: &str,
        parameters: String,
        destructive: bool,
        idempotent: bool,
    ) -> ToolSpec {
        ToolSpec {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
            destructive,
            idempotent,
        }
    }
}
