//! Agents: an architecture component running a loop over a model and the
//! tenant's tools, for one user at a time.
//!
//! ```no_run
//! # async fn demo(host: std::sync::Arc<loom_host::Host>) -> Result<(), Box<dyn std::error::Error>> {
//! use loom_host::agent::{Agent, RunRequest};
//! use loom_host::model::offline::EchoModel;
//! use loom_host::tenancy::ids::{Scope, TenantId, UserId};
//!
//! let agent = Agent::builder("You are helpful.")
//!     .host(host)
//!     .model(std::sync::Arc::new(EchoModel))
//!     .architecture("react")
//!     .build()?;
//! let scope = Scope::new(TenantId::new("acme")?, UserId::named("alice")?);
//! let result = agent.run(RunRequest::new(scope, "hello")).await?;
//! println!("{} ({} turns, ${:.4})", result.output, result.turns, result.cost_usd);
//! # Ok(()) }
//! ```
//!
//! The architecture runs in its own sandbox and reaches the world only
//! through the `harness` import, whose every call passes one import gate
//! (`gate.rs`: the caps of [`GateLimits`]) before the run does the work:
//! model calls (usage and cost charged), tool calls (only the tools bound
//! when the run started, all calls of a turn in parallel, results in call
//! order, denials and errors as results), delegation, and progress events.
//! Its clocks and randomness come through the gate too.

mod block_tools;
pub mod configured;
mod direct;
mod events;
mod extraction;
mod gate;
mod governor;
mod journal;
mod retrieve_tool;
mod run;
mod workers;

pub use direct::{GovernedCallError, MAX_ARGUMENT_BYTES, call_tool_governed};
pub use events::RunEvent;
pub use gate::{GateLimits, OutputRefusal};
pub use journal::{JournalError, JournalSettings};
pub use run::RunStream;

use crate::engine::CallError;
use crate::governance::approval::Approver;
use crate::host::Host;
use crate::model::pricing::PriceTable;
use crate::model::{Message, Model, ModelError, Usage};
use crate::store::{SessionStore, StoreError};
use crate::tenancy::ids::{RunId, Scope, SessionId};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why an agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No model was given.
    #[error(
        "an agent needs a model: call .model(..) with one, for example \
         `loom_host::model::spec::from_spec(\"openai:gpt-4.1-mini\", ..)`, \
         \"anthropic:claude-sonnet-4-5\", \"compat:<name>\", \"echo\" or \"scripted:path/to/script.json\""
    )]
    MissingModel,
    /// No host was given.
    #[error("an agent needs a host: call .host(Arc<Host>) with a started loom_host::Host")]
    MissingHost,
    /// A setting is out of range.
    #[error("invalid agent setting `{key}`: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The answer did not match the output schema after every retry.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("the answer does not match the output schema after {attempts} attempts: {errors}")]
pub struct OutputValidationError {
    /// The last answer, as the model wrote it.
    pub raw: String,
    /// What is wrong with it.
    pub errors: String,
    /// How many answers were tried.
    pub attempts: u32,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The tenant or the architecture does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The architecture component broke a limit or crashed.
    #[error(transparent)]
    Sandbox(#[from] CallError),
    /// The architecture gave up; the text says why.
    #[error("the architecture failed: {0}")]
    Architecture(String),
    /// The model failed in a way the architecture did not recover from.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Structured output never validated.
    #[error(transparent)]
    OutputValidation(#[from] OutputValidationError),
    /// Session storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output schema itself is invalid.
    #[error("invalid output schema: {0}")]
    InvalidSchema(String),
    /// A rate limit rejected the run; retry after the time it names.
    #[error(transparent)]
    RateLimited(#[from] crate::governance::ratelimit::RateLimited),
    /// The run journal failed, or a resumed run could not be resumed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// One request to run the agent.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Who the run is for; `scope.session` continues a conversation.
    pub scope: Scope,
    /// The user's prompt.
    pub prompt: String,
    /// JSON Schema the answer must match.
    pub output_schema: Option<serde_json::Value>,
    /// Architecture to use instead of the agent's.
    pub architecture: Option<String>,
    /// What the caller keeps with a journaled run, to rebuild its agent
    /// when it resumes the run (the CLI keeps the agent's name and model).
    pub origin: serde_json::Value,
}

impl RunRequest {
    /// A request for `prompt` in `scope`.
    pub fn new(scope: Scope, prompt: impl Into<String>) -> Self {
        RunRequest {
            scope,
            prompt: prompt.into(),
            output_schema: None,
            architecture: None,
            origin: serde_json::Value::Null,
        }
    }

    /// Require the answer to match `schema` (JSON Schema).
    pub fn output_schema(mut self, schema: serde_json::Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Require the answer to deserialize as `T`; the schema is generated from `T`.
    pub fn output_type<T: schemars::JsonSchema>(self) -> Self {
        let schema = schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::draft07())
            .into_root_schema_for::<T>()
            .to_value();
        self.output_schema(schema)
    }

    /// Run with architecture `name` instead of the agent's default.
    pub fn architecture(mut self, name: impl Into<String>) -> Self {
        self.architecture = Some(name.into());
        self
    }

    /// Keep `origin` with the run's journal record
    /// ([`crate::store::journal::JournalRun::origin`]).
    pub fn origin(mut self, origin: serde_json::Value) -> Self {
        self.origin = origin;
        self
    }
}

/// Which interrupted run to resume: the newest unfinished run of the
/// user (in the session, when one is named), or the one named.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    /// The tenant.
    pub tenant: crate::tenancy::ids::TenantId,
    /// The user.
    pub user: crate::tenancy::ids::UserId,
    /// The session, if the run had one.
    pub session: Option<SessionId>,
    /// The run; the newest matching one when none.
    pub run: Option<RunId>,
}

impl ResumeRequest {
    /// The newest interrupted run of `user` of `tenant`.
    pub fn new(tenant: crate::tenancy::ids::TenantId, user: crate::tenancy::ids::UserId) -> Self {
        ResumeRequest {
            tenant,
            user,
            session: None,
            run: None,
        }
    }

    /// Only a run in `session`.
    pub fn session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// Exactly run `run`.
    pub fn run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }

    /// The journal record of the run to resume.
    ///
    /// # Errors
    ///
    /// [`JournalError::NotFound`] naming what was looked for, or the
    /// store's error.
    pub fn find(
        &self,
        journal: &crate::store::journal::Journal,
    ) -> Result<crate::store::journal::JournalRun, JournalError> {
        let user = self.user.name();
        let session = self.session.as_ref().map(|s| s.to_string());
        let wanted = self.run.as_ref().map(|r| r.to_string());
        journal
            .interrupted()?
            .into_iter()
            .find(|run| {
                run.tenant == self.tenant.as_str()
                    && run.user.as_deref() == user
                    && (session.is_none() || run.session == session)
                    && wanted.as_ref().is_none_or(|w| &run.run == w)
            })
            .ok_or_else(|| {
                JournalError::NotFound(format!(
                    "no interrupted run{} of user {} of tenant {}{}: `loom runs list --interrupted` \
                     lists the runs a crash left unfinished",
                    wanted.map(|r| format!(" {r}")).unwrap_or_default(),
                    user.unwrap_or("(anonymous)"),
                    self.tenant,
                    session
                        .map(|s| format!(" in session {s}"))
                        .unwrap_or_default(),
                ))
            })
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// The final answer.
    pub output: String,
    /// The answer parsed as JSON when an output schema was given (validated).
    pub parsed: Option<serde_json::Value>,
    /// Model turns used (every model call, structured-output retries included).
    pub turns: u32,
    /// Tokens used, sub-agents included.
    pub usage: Usage,
    /// Cost in US dollars, sub-agents included.
    pub cost_usd: f64,
    /// This run's id.
    pub run_id: RunId,
    /// The session, when the run belongs to one.
    pub session_id: Option<SessionId>,
    /// Whether the run stopped before a final answer.
    pub interrupted: bool,
    /// Why it stopped early (`max_turns`, ...).
    pub interruption_reason: Option<String>,
    /// When the run started.
    pub started_at: SystemTime,
    /// When it finished.
    pub finished_at: SystemTime,
}

impl RunResult {
    /// The parsed answer as `T`: the value structured-output validation
    /// accepted (a fenced answer included) when there was a schema, else the
    /// output read as JSON.
    ///
    /// # Errors
    ///
    /// The deserialization error when the answer does not fit `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.parsed {
            Some(value) => T::deserialize(value),
            None => serde_json::from_str(&self.output),
        }
    }
}

/// Everything an agent is, shared by its runs.
pub(crate) struct AgentInner {
    pub(crate) host: Arc<Host>,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) instructions: String,
    pub(crate) tools: Option<Vec<String>>,
    pub(crate) architecture: String,
    pub(crate) max_turns: u32,
    pub(crate) output_retries: u32,
    pub(crate) run_timeout: Duration,
    pub(crate) prices: PriceTable,
    pub(crate) sessions: Option<Arc<SessionStore>>,
    pub(crate) approver: Option<Arc<dyn Approver>>,
    pub(crate) memory: Option<(crate::memory::Memory, MemoryOptions)>,
    pub(crate) extraction_model: Option<Arc<dyn Model>>,
    pub(crate) retrieval: bool,
    /// The architecture's configuration, a JSON object.
    pub(crate) architecture_config: serde_json::Value,
    /// Models by role (`critic`, `planner`, …); other roles use `model`.
    pub(crate) role_models: std::collections::BTreeMap<String, Arc<dyn Model>>,
    /// Named agents that form the architecture's team (see
    /// [`AgentBuilder::workers`]).
    pub(crate) workers: Vec<String>,
    /// Where top-level runs are journaled, if they are.
    pub(crate) journal: Option<JournalSettings>,
    /// The agent's name (`gen_ai.agent.name` in telemetry), if it has one.
    pub(crate) name: Option<String>,
}

impl AgentInner {
    /// The model that serves completions asked for in `role`.
    pub(crate) fn model_for(&self, role: Option<&str>) -> &Arc<dyn Model> {
        role.and_then(|r| self.role_models.get(r))
            .unwrap_or(&self.model)
    }
}

/// How an agent uses memory (see [`AgentBuilder::memory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Tokens (estimated at four characters each) of facts and episodes
    /// recalled into the prompt; working blocks always go in. 0 recalls
    /// nothing.
    pub recall_tokens: usize,
    /// Store an episode per completed run.
    pub episodes: bool,
    /// Keep each run's tool calls and results on its episode (capped).
    pub transcripts: bool,
    /// After each completed run, extract facts from its episode with one
    /// model call in the background (the agent's model, or the one given
    /// to [`AgentBuilder::extraction_model`]), charged to the user's
    /// budgets. Off by default: it costs a model call per run.
    pub extract: bool,
    /// Offer the run the host's working-block tools (`memory_blocks`,
    /// `memory_block_set`, `memory_block_append`), governed like any tool.
    pub block_tools: bool,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            recall_tokens: 800,
            episodes: true,
            transcripts: false,
            extract: false,
            block_tools: false,
        }
    }
}

/// A configured agent; cheap to clone and share between tasks and users.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<AgentInner>,
}

/// Builds an [`Agent`]; see [`Agent::builder`].
pub struct AgentBuilder {
    instructions: String,
    host: Option<Arc<Host>>,
    model: Option<Arc<dyn Model>>,
    tools: Option<Vec<String>>,
    architecture: String,
    max_turns: u32,
    output_retries: u32,
    run_timeout: Duration,
    prices: PriceTable,
    sessions: Option<Arc<SessionStore>>,
    approver: Option<Arc<dyn Approver>>,
    memory: Option<(crate::memory::Memory, MemoryOptions)>,
    extraction_model: Option<Arc<dyn Model>>,
    retrieval: bool,
    architecture_config: serde_json::Value,
    role_models: std::collections::BTreeMap<String, Arc<dyn Model>>,
    workers: Vec<String>,
    journal: Option<JournalSettings>,
    name: Option<String>,
}

impl Agent {
    /// Start building an agent with `instructions` (its system prompt).
    pub fn builder(instructions: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            instructions: instructions.into(),
            host: None,
            model: None,
            tools: None,
            architecture: "react".into(),
            max_turns: 10,
            output_retries: 2,
            run_timeout: Duration::from_secs(300),
            prices: PriceTable::default(),
            sessions: None,
            approver: None,
            memory: None,
            extraction_model: None,
            retrieval: false,
            architecture_config: serde_json::Value::Object(Default::default()),
            role_models: std::collections::BTreeMap::new(),
            workers: Vec::new(),
            journal: None,
            name: None,
        }
    }

    /// Run to completion.
    ///
    /// # Errors
    ///
    /// [`AgentError`]: unknown tenant or architecture, a sandbox fault, or
    /// structured output that never validated.
    pub async fn run(&self, request: RunRequest) -> Result<RunResult, AgentError> {
        run::execute(self.inner.clone(), request, None, run::Lineage::root()).await
    }

    /// Run and stream events as they happen. Dropping the stream cancels the
    /// run, in-flight tool calls included.
    pub fn stream(&self, request: RunRequest) -> RunStream {
        run::RunStream::start(self.inner.clone(), request)
    }

    /// Resume a run a crash (or a cancellation) left unfinished: the
    /// architecture is instantiated again and replays what the run's
    /// journal recorded (no model call billed twice, no finished tool call
    /// run twice), then the run goes on live to its end. The agent must
    /// journal (`AgentBuilder::journal`) into the journal the run was
    /// recorded in, and run the same architecture component.
    ///
    /// # Errors
    ///
    /// [`AgentError::Journal`] when no such run is unfinished, the
    /// component changed ([`JournalError::ComponentChanged`]) or the run
    /// diverges from its journal ([`JournalError::Diverged`]); otherwise
    /// what [`Self::run`] returns.
    pub async fn resume(&self, request: ResumeRequest) -> Result<RunResult, AgentError> {
        let (run, lineage) = run::prepare_resume(&self.inner, &request).await?;
        run::execute(self.inner.clone(), run, None, lineage).await
    }

    /// [`Self::resume`] as a stream of events; the first after `Started`
    /// is `Resumed`.
    pub fn resume_stream(&self, request: ResumeRequest) -> RunStream {
        run::RunStream::resume(self.inner.clone(), request)
    }
}

impl AgentBuilder {
    /// The host whose plugins, grants and limits the agent uses (required).
    pub fn host(mut self, host: Arc<Host>) -> Self {
        self.host = Some(host);
        self
    }

    /// The model (required).
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// The tools the agent may use, by name; default: every tool of the tenant.
    pub fn tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tools: I) -> Self {
        self.tools = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// The architecture's configuration: a JSON object, checked against the
    /// schema the architecture declares when a run starts (default `{}`).
    pub fn architecture_config(mut self, config: serde_json::Value) -> Self {
        self.architecture_config = config;
        self
    }

    /// Serve completions the architecture asks for in `role` (`critic`,
    /// `planner`, `worker`, …) with `model`; other roles use the agent's
    /// model. Spend is charged the same way whatever the model.
    pub fn role_model(mut self, role: impl Into<String>, model: Arc<dyn Model>) -> Self {
        self.role_models.insert(role.into(), model);
        self
    }

    /// Name the agent: its runs' telemetry carries the name as
    /// `gen_ai.agent.name` (default: the architecture's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Journal every run, so a run a crash cuts short can be resumed with
    /// [`Agent::resume`] (`settings.journal` is usually the host's,
    /// [`Host::journal`]).
    pub fn journal(mut self, settings: JournalSettings) -> Self {
        self.journal = Some(settings);
        self
    }

    /// Named agents of `[agents]` that form the architecture's team: each
    /// becomes a member `{"description", "agent": NAME}` of the
    /// configuration property the architecture's schema marks
    /// `"x-loom-members": true` (the supervisor's `workers`, the router's
    /// `routes`, the swarm's `agents`, the blackboard's `experts`). A run
    /// fails with a clear error when the architecture marks none, or when
    /// the configuration already fills that property.
    pub fn workers(mut self, names: Vec<String>) -> Self {
        self.workers = names;
        self
    }

    /// The architecture, by the name its component declares (default `react`).
    pub fn architecture(mut self, name: impl Into<String>) -> Self {
        self.architecture = name.into();
        self
    }

    /// Cap on model turns per run (default 10).
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = turns;
        self
    }

    /// How many times an answer that fails the output schema is retried with
    /// feedback (default 2).
    pub fn output_retries(mut self, retries: u32) -> Self {
        self.output_retries = retries;
        self
    }

    /// Wall-clock limit of a whole run (default 300 s).
    pub fn run_timeout(mut self, timeout: Duration) -> Self {
        self.run_timeout = timeout;
        self
    }

    /// Prices for cost accounting (default: the built-in table).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Give the agent memory: each run's prompt gets the user's working
    /// blocks and the facts and episodes relevant to it, each completed run
    /// is stored as an episode, and the harness's `recall` and `remember`
    /// work (on the run's user only).
    pub fn memory(mut self, memory: crate::memory::Memory, options: MemoryOptions) -> Self {
        self.memory = Some((memory, options));
        self
    }

    /// Offer the host's `retrieve` tool: search the tenant's documents
    /// (`loom docs ingest`), read-only and governed like any tool.
    pub fn retrieval(mut self, on: bool) -> Self {
        self.retrieval = on;
        self
    }

    /// The model that extracts facts after runs (default: the agent's).
    pub fn extraction_model(mut self, model: Arc<dyn Model>) -> Self {
        self.extraction_model = Some(model);
        self
    }

    /// Where sessions are kept; without it, session ids are ignored.
    pub fn sessions(mut self, sessions: Arc<SessionStore>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Who answers tool calls the permission chain says to ask about
    /// (default: the tenant's `approval_url` webhook, else nobody, which
    /// denies them).
    pub fn approver(mut self, approver: Arc<dyn Approver>) -> Self {
        self.approver = Some(approver);
        self
    }

    /// Build the agent.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the model or host is missing or a setting is invalid.
    pub fn build(self) -> Result<Agent, ConfigError> {
        let model = self.model.ok_or(ConfigError::MissingModel)?;
        let host = self.host.ok_or(ConfigError::MissingHost)?;
        if self.max_turns == 0 {
            return Err(ConfigError::Invalid {
                key: "max_turns",
                message: "must be at least 1".into(),
            });
        }
        if !self.architecture_config.is_object() {
            return Err(ConfigError::Invalid {
                key: "architecture_config",
                message: "must be a JSON object (a table in loom.toml)".into(),
            });
        }
        Ok(Agent {
            inner: Arc::new(AgentInner {
                host,
                model,
                instructions: self.instructions,
                tools: self.tools,
                architecture: self.architecture,
                max_turns: self.max_turns,
                output_retries: self.output_retries,
                run_timeout: self.run_timeout,
                prices: self.prices,
                sessions: self.sessions,
                approver: self.approver,
                memory: self.memory,
                extraction_model: self.extraction_model,
                retrieval: self.retrieval,
                architecture_config: self.architecture_config,
                role_models: self.role_models,
                workers: self.workers,
                journal: self.journal,
                name: self.name,
            }),
        })
    }
}

/// Messages of a session as the model layer sees them.
pub type History = Vec<Message>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_the_value_validation_accepted() {
        let result = RunResult {
            output: "```json\n{\"answer\": 42}\n```".into(),
            parsed: Some(serde_json::json!({"answer": 42})),
            turns: 1,
            usage: Usage::default(),
            cost_usd: 0.0,
            run_id: RunId::generate(),
            session_id: None,
            interrupted: false,
            interruption_reason: None,
            started_at: SystemTime::now(),
            finished_at: SystemTime::now(),
        };
        #[derive(serde::Deserialize)]
        struct Answer {
            answer: u32,
        }
        assert_eq!(result.parse::<Answer>().unwrap().answer, 42);
    }
}
