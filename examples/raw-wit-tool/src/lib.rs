//! A Loom tool written against the WIT contract with `wit-bindgen` alone:
//! no `loom-sdk`. It offers two tools:
//!
//! * `raw_run_context` returns who the call serves (tenant, user, session,
//!   run, metadata, idempotency key), as the host told it;
//! * `raw_add` adds two numbers, to show argument parsing and errors.
//!
//! Every comment marked **SDK:** names what `loom-sdk` would have done for
//! the author. With the SDK the whole file is about fifteen lines:
//!
//! ```ignore
//! #[loom_sdk::tool(description = "Add two numbers", read_only, idempotent)]
//! fn raw_add(a: f64, b: f64) -> f64 { a + b }
//! loom_sdk::export_tools!(raw_add);
//! ```

// The bindings: Rust types for every WIT type (`RunContext`, `ToolSpec`,
// `ToolError`, ...), functions for the imports (`context::current`, ...)
// and a `Guest` trait per exported interface, plus the `export!` macro that
// emits the component's exports. The world decides what the component
// imports and exports: `tool-plugin` imports `context` and exports `tool`.
//
// SDK: `loom_sdk::bindings` is this same macro call; the SDK re-exports the
// types an author needs and hides the rest.
wit_bindgen::generate!({
    world: "tool-plugin",
    path: "../../wit/plugin@0.1.3",
});

use exports::loom::plugin::tool::Guest;
use loom::plugin::context::{self, LogLevel};
use loom::plugin::types::{ToolError, ToolSpec};
use serde_json::{Map, Value, json};

/// The component: a unit type implementing the exported interface.
struct RawTool;

impl Guest for RawTool {
    /// Called once when the host loads the component; the answer must not
    /// depend on the caller (it is cached and shown to every tenant).
    ///
    /// SDK: `#[tool]` writes this list from the functions it marks: the
    /// name from the function, the description from the attribute or the
    /// doc comment, the parameter schema from the argument types (schemars),
    /// and `destructive` defaulting to true unless `read_only` is given.
    fn list() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "raw_run_context".into(),
                description: "Return the tenant, user, session and run this call serves \
                              (Rust, wit-bindgen only)"
                    .into(),
                parameters: r#"{"type":"object","properties":{},"additionalProperties":false}"#
                    .into(),
                destructive: false,
                idempotent: true,
            },
            ToolSpec {
                name: "raw_add".into(),
                description: "Add two numbers".into(),
                // Written by hand: keep it in step with `add` below.
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "a": { "type": "number" },
                        "b": { "type": "number" },
                    },
                    "required": ["a", "b"],
                    "additionalProperties": false,
                })
                .to_string(),
                destructive: false,
                idempotent: true,
            },
        ]
    }

    /// Every call of every tool of the component arrives here, by name,
    /// with the arguments as JSON text.
    ///
    /// SDK: `export_tools!` generates this dispatch, answers
    /// `unknown-tool` for other names, parses the arguments into the
    /// function's parameters (an empty string counts as `{}`), maps a parse
    /// failure to `invalid-arguments` naming the tool, and serialises the
    /// return value (any `Serialize`) to JSON.
    fn invoke(name: String, arguments: String) -> Result<String, ToolError> {
        let arguments = parse_object(&name, &arguments)?;
        let output = match name.as_str() {
            "raw_run_context" => run_context(),
            "raw_add" => add(&arguments)?,
            _ => return Err(ToolError::UnknownTool(name)),
        };
        Ok(output.to_string())
    }
}

/// The arguments as a JSON object; an empty string counts as `{}`.
///
/// SDK: `loom_sdk::__private::parse_arguments`, into a typed struct.
fn parse_object(tool: &str, arguments: &str) -> Result<Map<String, Value>, ToolError> {
    if arguments.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ToolError::InvalidArguments(format!(
            "{tool}: arguments must be a JSON object"
        ))),
        Err(error) => Err(ToolError::InvalidArguments(format!("{tool}: {error}"))),
    }
}

/// `raw_run_context`: the context the host gave this call. The user always
/// comes from here, never from the arguments: the host sets it and a model
/// cannot forge it.
///
/// SDK: `loom_sdk::context()` and `loom_sdk::idempotency_key()` are these
/// import calls; `loom_sdk::log` is `context::log`.
fn run_context() -> Value {
    let ctx = context::current();
    context::log(LogLevel::Info, "raw_run_context called");
    let metadata: Map<String, Value> = ctx
        .metadata
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    json!({
        "language": "rust-wit-bindgen",
        "tenant": ctx.tenant,
        "user_id": ctx.user_id,
        "session_id": ctx.session_id,
        "run_id": ctx.run_id,
        "metadata": metadata,
        "idempotency_key": context::idempotency_key(),
    })
}

/// `raw_add`: `a + b`.
///
/// SDK: with `fn raw_add(a: f64, b: f64) -> f64` the two lookups, the
/// type checks and their error messages come from serde.
fn add(arguments: &Map<String, Value>) -> Result<Value, ToolError> {
    let number = |key: &str| {
        arguments.get(key).and_then(Value::as_f64).ok_or_else(|| {
            ToolError::InvalidArguments(format!("raw_add: `{key}` must be a number"))
        })
    };
    Ok(json!(number("a")? + number("b")?))
}

// Emits the component's exports (`loom:plugin/tool@0.1.3`) for `RawTool`.
//
// SDK: `loom_sdk::export_tools!(…)` calls this for you.
export!(RawTool);
