//! ReAct: the model reasons, calls tools, sees their results, and repeats
//! until it answers without calling a tool or runs out of turns.
//!
//! * A new session is seeded with the instructions (system) and the prompt;
//!   a session with history gets the prompt appended, never a second seed.
//! * Every tool call of a turn goes to the host in one `call-tools`, which
//!   runs them in parallel and returns results in the model's call order.
//! * Denials and tool errors become tool messages the model reads
//!   (`DENIED: ...`, `ERROR: ...`); they never end the run.
//! * After `max-turns` model turns without a final answer the run ends
//!   interrupted with reason `max_turns`.

use loom_sdk::arch::{self, Architecture, ArchitectureInfo, Run, RunError, RunInput, RunOutput};

struct React;

impl Architecture for React {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "react".into(),
            description:
                "Reason and act: call tools (in parallel within a turn) until the model answers"
                    .into(),
            workers: Vec::new(),
            config_schema: r#"{"type":"object","properties":{}}"#.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let mut run = Run::seed_owned(input);
        match run.react(None).map_err(arch::harness_error)? {
            Some(answer) => Ok(run.finish(answer)),
            None => Ok(run.interrupted("max_turns")),
        }
    }
}

loom_sdk::export_architecture!(React);
