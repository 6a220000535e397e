//! `loom serve`: Loom as a multi-tenant HTTP service.
//!
//! * [`auth`] — bearer API keys select the tenant; failures are limited
//!   per client address and audited.
//! * [`runs`] — the runs the service drives, their event logs and results.
//! * [`approvals`] — `ask` decisions parked until a client decides them.
//! * [`metrics`] — per-tenant Prometheus counters.
//! * [`error`] — the one JSON error shape.
//! * `api` — the `/v1` handlers; `openai` — `/v1/chat/completions`;
//!   `sse` — Server-Sent Event streams of a run's log; [`openapi`] — the
//!   OpenAPI document, generated from the routes and types; [`server`] — the listener, limits, graceful shutdown
//!   and configuration reload.
//!
//! Every handler gets the caller's tenant from the authentication layer
//! and looks everything up under it: no path, id or field of a request can
//! name another tenant's data.

mod api;
pub mod approvals;
pub mod auth;
pub mod error;
pub mod metrics;
mod openai;
pub mod openapi;
pub mod runs;
pub mod server;
mod sse;

use crate::agent::Agent;
use crate::agent::configured::{self, AgentChoice, ConfiguredAgentError};
use crate::config::ServerSettings;
use crate::tenancy::ids::TenantId;
use crate::{Host, LoomConfig};
use approvals::{ApiApprover, PendingApprovals};
use auth::{FailureLimiter, KeyTable};
use metrics::Metrics;
use runs::RunRegistry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// One configuration's host, keys and agents. A reload makes a new
/// generation; requests in flight keep the one they started with.
pub struct Generation {
    /// The host.
    pub host: Arc<Host>,
    keys: KeyTable,
    /// Agents built so far, by `[agents.NAME]` (`None`: `[agent]`).
    agents: Mutex<HashMap<Option<String>, Agent>>,
    number: u64,
}

impl Generation {
    fn new(host: Arc<Host>, number: u64, extra_keys: &[(String, TenantId)]) -> Self {
        let mut keys = KeyTable::from_config(host.config());
        for (key, tenant) in extra_keys {
            keys.add(crate::tenancy::keys::ApiKeyHash::of(key), tenant.clone());
        }
        Generation {
            host,
            keys,
            agents: Mutex::new(HashMap::new()),
            number,
        }
    }

    /// Which generation this is: 0 at start, one more per reload.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The agent `[agents.NAME]` (or `[agent]` for `None`), built once per
    /// generation, answering `ask` through `approver`.
    fn agent(
        &self,
        name: Option<&str>,
        approver: &Arc<ApiApprover>,
    ) -> Result<Agent, ConfiguredAgentError> {
        let key = name.map(str::to_owned);
        let mut agents = crate::sync::lock(&self.agents);
        if let Some(agent) = agents.get(&key) {
            return Ok(agent.clone());
        }
        let agent = configured::build(
            &self.host,
            &AgentChoice::named(key.clone()),
            Some(approver.clone()),
        )?;
        agents.insert(key, agent.clone());
        Ok(agent)
    }
}

/// The service's shared state.
pub struct Service {
    generation: RwLock<Arc<Generation>>,
    next_generation: AtomicU64,
    /// The file the configuration was read from, for reloads.
    config_path: Option<PathBuf>,
    /// Keys that exist only for this process (no keys configured and a
    /// loopback address): they survive reloads.
    ephemeral_keys: Vec<(String, TenantId)>,
    settings: ServerSettings,
    runs: Arc<RunRegistry>,
    approvals: Arc<PendingApprovals>,
    approver: Arc<ApiApprover>,
    metrics: Metrics,
    failures: FailureLimiter,
    run_slots: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    streams: Mutex<HashMap<TenantId, Arc<AtomicUsize>>>,
    shutdown: CancellationToken,
}

impl Service {
    /// A service over `host`, whose configuration was read from
    /// `config_path` (reloaded from there), answering with `settings`.
    /// `ephemeral_keys` are extra keys, each of one tenant, that only this
    /// process knows.
    pub fn new(
        host: Arc<Host>,
        config_path: Option<PathBuf>,
        settings: ServerSettings,
        ephemeral_keys: Vec<(String, TenantId)>,
    ) -> Arc<Self> {
        let approvals = Arc::new(PendingApprovals::default());
        Arc::new(Service {
            generation: RwLock::new(Arc::new(Generation::new(host, 0, &ephemeral_keys))),
            next_generation: AtomicU64::new(1),
            config_path,
            ephemeral_keys,
            runs: Arc::new(RunRegistry::new(
                settings.finished_runs_kept,
                settings.run_events_kib.saturating_mul(1024),
                settings.finished_runs_mib.saturating_mul(1 << 20),
            )),
            approver: ApiApprover::new(approvals.clone()),
            approvals,
            metrics: Metrics::default(),
            failures: FailureLimiter::new(settings.auth_failures_per_minute),
            run_slots: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            settings,
            shutdown: CancellationToken::new(),
        })
    }

    /// The current generation.
    pub fn generation(&self) -> Arc<Generation> {
        crate::sync::read(&self.generation).clone()
    }

    /// The current host.
    pub fn host(&self) -> Arc<Host> {
        self.generation().host.clone()
    }

    /// The runs the service drives.
    pub fn runs(&self) -> &Arc<RunRegistry> {
        &self.runs
    }

    /// The listener's settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// Cancelled when the service begins shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Read the configuration file again and, if it is valid and changes
    /// nothing that needs a restart, serve new requests with it. Runs in
    /// flight finish on the host they started on.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong; the running configuration stays.
    pub async fn reload(&self) -> Result<u64, String> {
        let Some(path) = &self.config_path else {
            return Err(
                "loom serve started without a configuration file: nothing to reload".into(),
            );
        };
        let config = LoomConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if config.server != self.settings {
            return Err(format!(
                "{}: [server] changed, and its settings (listen, limits, timeouts, operator_keys, \
                 mcp_agents) take effect only when loom serve restarts; restart it, or put \
                 [server] back to reload the rest",
                path.display()
            ));
        }
        let current = self.generation();
        let host = current
            .host
            .reconfigure(config)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let number = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(Generation::new(
            Arc::new(host),
            number,
            &self.ephemeral_keys,
        ));
        *crate::sync::write(&self.generation) = next;
        tracing::info!(generation = number, "configuration reloaded");
        Ok(number)
    }

    /// A run slot of `tenant`, if it has one free.
    pub(crate) fn run_slot(&self, tenant: &TenantId) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = crate::sync::lock(&self.run_slots)
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.settings.max_concurrent_runs_per_tenant))
            })
            .clone();
        semaphore.try_acquire_owned().ok()
    }

    /// A stream slot of `tenant`, released when the guard drops.
    fn stream_slot(&self, tenant: &TenantId) -> Option<StreamSlot> {
        let count = crate::sync::lock(&self.streams)
            .entry(tenant.clone())
            .or_default()
            .clone();
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(count);
        (before < self.settings.max_streams_per_tenant).then_some(slot)
    }
}

/// One open stream of a tenant; dropping it frees the slot.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The caller of a request, as the authentication layer found it.
#[derive(Clone)]
pub struct Caller {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The generation the request runs on.
    pub generation: Arc<Generation>,
}

impl Caller {
    /// The host of the caller's generation.
    pub fn host(&self) -> &Arc<Host> {
        &self.generation.host
    }
}
