//! [`Host`]: the facade that ties configuration, engine and plugins together.

use crate::config::{ConfigError, Limits, LoomConfig};
use crate::engine::PolicyAnswer;
use crate::engine::bindings::architecture_export;
use crate::engine::bindings::types as wit_types;
use crate::engine::{
    ArchitectureComponent, CallError, CallRequest, ComponentShape, DiskLedger, EngineError,
    Harness, LoadError, SandboxEngine, ToolOutput, ToolSpec,
};
use crate::governance::audit::AuditLog;
use crate::governance::budget::BudgetLedger;
use crate::governance::{Governance, GovernanceError, PolicyRef};
use crate::plugins::{Catalog, PluginRegistry, ScanReport, ToolBinding, Visibility};
use crate::store::{SessionStore, Store, StoreError};
use crate::tenancy::ids::{Scope, TenantId};
use std::collections::HashMap;
use std::sync::Arc;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log or an approval webhook could not be set up.
    #[error(transparent)]
    Governance(#[from] GovernanceError),
    /// Memory failed.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The document stores could not be set up.
    #[error(transparent)]
    Retrieval(#[from] crate::retrieval::RetrievalError),
    /// A changed setting takes effect only when Loom restarts.
    #[error(
        "{setting} changed: it takes effect only when loom restarts (the running host keeps \
         the old value; tenants, agents, models and plugins reload without a restart)"
    )]
    Restart {
        /// The setting.
        setting: String,
    },
}

/// A running Loom host: one engine, the plugin catalog, and (when
/// configured) a background task that reloads changed plugins.
pub struct Host {
    config: Arc<LoomConfig>,
    engine: Arc<SandboxEngine>,
    registry: Arc<PluginRegistry>,
    /// Each tenant's disk ledger over its read-write grants.
    disks: HashMap<TenantId, Arc<DiskLedger>>,
    store: Arc<Store>,
    sessions: Arc<SessionStore>,
    journal: crate::store::journal::Journal,
    memory: crate::memory::Memory,
    docs: crate::retrieval::DocStore,
    governance: Arc<Governance>,
    /// The tenants' MCP servers (connected on first use; their processes
    /// end with the host).
    mcp: crate::mcp::McpClients,
    reloader: Option<tokio::task::JoinHandle<()>>,
    initial_scan: tokio::task::JoinHandle<()>,
}

impl Host {
    /// Create the engine, load the global plugin directories, start loading
    /// each tenant's own directories in the background (a tenant's calls
    /// wait for its own directories only), and start hot reload if
    /// `reload_interval` is set. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`HostError`] if the engine or its compile cache cannot be created,
    /// the database (`<data_dir>/loom.redb`) or the audit log cannot be
    /// opened, or an approval webhook is misconfigured. Plugins that fail to
    /// load are reported in the catalog, not here.
    pub async fn start(config: LoomConfig) -> Result<Self, HostError> {
        let config = Arc::new(config);
        let store = Store::open_with_cache(
            &config.data_dir.join("loom.redb"),
            config.store_sync,
            config.store_cache_bytes,
        )?;
        let audit = config
            .audit
            .as_ref()
            .map(|settings| AuditLog::open(settings).map(Arc::new))
            .transpose()
            .map_err(GovernanceError::from)?;
        let governance = Arc::new(Governance::new(
            BudgetLedger::new(Some(store.clone())),
            audit,
            config.tenants.iter().map(|(id, t)| (id, &*t.governance)),
        )?);
        let engine = Arc::new(SandboxEngine::new(&config.engine, &config.cache_dir)?);
        let registry =
            Arc::new(PluginRegistry::new(engine.clone(), config.clone()).with_audit(&governance));
        registry.scan_group(&Visibility::Global).await;
        let initial_scan = tokio::spawn({
            let registry = registry.clone();
            async move {
                registry.scan().await;
            }
        });
        let reloader = config
            .reload_interval
            .map(|interval| spawn_reloader(&registry, interval));
        let disks = disk_ledgers(&config);
        let sessions = Arc::new(SessionStore::new(store.clone()));
        let docs = crate::retrieval::DocStore::new(
            config.data_dir.join("docs"),
            config.retrieval.clone(),
        )?;
        Ok(Host {
            mcp: crate::mcp::McpClients::new(&config),
            config,
            engine,
            registry,
            disks,
            memory: crate::memory::Memory::new(
                store.clone(),
                sessions.clone(),
                crate::memory::MemoryLimits::default(),
            ),
            sessions,
            journal: crate::store::journal::Journal::open(store.clone())?,
            docs,
            store,
            governance,
            reloader,
            initial_scan,
        })
    }

    /// A host for a changed configuration that shares this one's engine,
    /// database, journal, memory, documents, budget counters, rate-limit
    /// buckets and audit log: tenants, their grants, limits, keys and
    /// governance, agents, models and plugin directories take the new
    /// values. Runs started on this host keep it until they end; `loom
    /// serve` sends new requests to the returned one.
    ///
    /// # Errors
    ///
    /// [`HostError::Restart`] naming a setting that only a restart can
    /// change (data and cache directories, `[engine]`, `[store]`,
    /// `[audit]`, `[telemetry]`); [`HostError::Governance`] for a bad
    /// webhook URL.
    pub async fn reconfigure(&self, config: LoomConfig) -> Result<Host, HostError> {
        let old = &*self.config;
        let audit_same = match (&old.audit, &config.audit) {
            (None, None) => true,
            (Some(a), Some(b)) => a.path == b.path && a.fsync == b.fsync && a.redact == b.redact,
            _ => false,
        };
        let fixed = [
            ("data_dir", old.data_dir == config.data_dir),
            ("cache_dir", old.cache_dir == config.cache_dir),
            ("[engine]", old.engine == config.engine),
            (
                "[store]",
                old.store_sync == config.store_sync
                    && old.store_cache_bytes == config.store_cache_bytes,
            ),
            ("[audit]", audit_same),
            ("[telemetry]", old.telemetry == config.telemetry),
            (
                "builtin_plugins",
                old.builtin_plugins == config.builtin_plugins,
            ),
        ];
        if let Some((setting, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(HostError::Restart {
                setting: (*setting).to_owned(),
            });
        }
        let config = Arc::new(config);
        let governance = Arc::new(
            self.governance
                .reconfigured(config.tenants.iter().map(|(id, t)| (id, &*t.governance)))?,
        );
        let registry = Arc::new(
            PluginRegistry::new(self.engine.clone(), config.clone()).with_audit(&governance),
        );
        registry.scan_group(&Visibility::Global).await;
        let initial_scan = tokio::spawn({
            let registry = registry.clone();
            async move {
                registry.scan().await;
            }
        });
        let reloader = config
            .reload_interval
            .map(|interval| spawn_reloader(&registry, interval));
        Ok(Host {
            disks: disk_ledgers(&config),
            mcp: crate::mcp::McpClients::new(&config),
            config,
            engine: self.engine.clone(),
            registry,
            store: self.store.clone(),
            sessions: self.sessions.clone(),
            journal: self.journal.clone(),
            memory: self.memory.clone(),
            docs: self.docs.clone(),
            governance,
            reloader,
            initial_scan,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoomConfig {
        &self.config
    }

    /// The database under the data directory.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Sessions kept in the host's database.
    pub fn sessions(&self) -> Arc<SessionStore> {
        self.sessions.clone()
    }

    /// The run journal in the host's database: what a crash-resumable run
    /// recorded, and which runs a crash left unfinished.
    pub fn journal(&self) -> &crate::store::journal::Journal {
        &self.journal
    }

    /// The built-in memory (episodes, facts, working blocks), in the
    /// host's database; forgetting a user also deletes their sessions.
    pub fn memory(&self) -> crate::memory::Memory {
        self.memory.clone()
    }

    /// The tenants' document stores (retrieval).
    pub fn docs(&self) -> crate::retrieval::DocStore {
        self.docs.clone()
    }

    /// The memory `tenant` uses: its memory component when
    /// `[tenants.T.memory] plugin` names one (waiting for the tenant's
    /// plugin directories), else the built-in memory.
    ///
    /// # Errors
    ///
    /// [`HostError::Config`] for an unknown tenant; a memory error naming
    /// the plugin when it is not loaded or not a memory component.
    pub async fn memory_for(
        &self,
        tenant: &TenantId,
    ) -> Result<crate::memory::TenantMemory, HostError> {
        let settings = &self.config.tenant(tenant)?.memory;
        let Some(name) = &settings.plugin else {
            return Ok(crate::memory::TenantMemory::builtin_only(
                self.memory.clone(),
            ));
        };
        let catalog = self.catalog_for(tenant).await;
        let plugin = catalog.memory(tenant, name).cloned().ok_or_else(|| {
            crate::memory::MemoryError::Component {
                plugin: name.clone(),
                message: format!(
                    "tenant `{tenant}` names it in [tenants.{tenant}.memory] plugin, but no \
                     memory component of that name is loaded (see `loom plugins list`)"
                ),
            }
        })?;
        let component = crate::memory::ComponentMemory::new(
            self.engine.clone(),
            plugin,
            self.tenant_limits(tenant)?,
            settings.kv_quota_bytes(),
            self.memory.clone(),
        )?;
        Ok(crate::memory::TenantMemory::with_component(
            self.memory.clone(),
            component,
        ))
    }

    /// Delete everything held of `user` of `tenant`: episodes, facts,
    /// working blocks, sessions, memory components' data (the component
    /// is asked to forget, then the host deletes every key it held for the
    /// user) and — when the tenant's `forget_budgets` is on — budget
    /// counters; an audit entry `memory_forgotten` records it.
    ///
    /// # Errors
    ///
    /// [`HostError::Config`] for an unknown tenant; a memory error (then
    /// nothing of the built-in memory was deleted).
    pub async fn forget_user(
        &self,
        tenant: &TenantId,
        user: &crate::tenancy::ids::UserId,
        actor: &str,
    ) -> Result<crate::memory::ForgetReport, HostError> {
        let budgets = self.config.tenant(tenant)?.governance.forget_budgets;
        // The component forgets first (it may keep more than kv, in
        // principle); a failing or missing component does not stop the
        // host from deleting the user's keys below.
        let mut component_items = 0;
        match self.memory_for(tenant).await {
            Ok(memory) => {
                if let Some(component) = memory.component() {
                    match component.forget(tenant, user).await {
                        Ok(count) => component_items = count,
                        Err(error) => {
                            tracing::warn!(%error, tenant = %tenant, "the memory component failed to forget; deleting its data directly");
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, tenant = %tenant, "the memory component is unavailable; deleting its data directly");
            }
        }
        if budgets {
            self.governance.ledger().forget_user(tenant, user);
        }
        // Again right after the commit, on the writer thread: a charge that
        // raced the forget may have reloaded the old counters meanwhile.
        let governance = self.governance.clone();
        let (t, u) = (tenant.clone(), user.clone());
        let mut report = self
            .memory
            .forget_then(
                tenant,
                user,
                crate::memory::ForgetOptions { budgets },
                move || {
                    if budgets {
                        governance.ledger().forget_user(&t, &u);
                    }
                },
            )
            .await?;
        report.component_items = component_items;
        let scope = crate::tenancy::ids::Scope::new(tenant.clone(), user.clone());
        self.governance.record(
            &scope,
            "memory_forgotten",
            actor,
            serde_json::to_value(report).unwrap_or_default(),
        );
        Ok(report)
    }

    /// The tenants' MCP servers, whose tools join their tool sets.
    pub fn mcp_clients(&self) -> &crate::mcp::McpClients {
        &self.mcp
    }

    /// Budgets, rate limits, approvals and the audit log.
    pub fn governance(&self) -> &Arc<Governance> {
        &self.governance
    }

    /// Wait until budget counters and audit entries recorded so far are
    /// durable: call before a clean shutdown.
    ///
    /// # Errors
    ///
    /// The first write that failed.
    pub async fn flush(&self) -> Result<(), HostError> {
        self.governance.ledger().flush().await?;
        if let Some(audit) = self.governance.audit() {
            audit.flush().await.map_err(GovernanceError::from)?;
        }
        Ok(())
    }

    /// The plugin catalog once every directory has loaded at least once.
    pub async fn catalog(&self) -> Arc<Catalog> {
        self.registry.ready(None).await;
        self.registry.catalog()
    }

    /// The plugin catalog once the global directories and `tenant`'s own
    /// have loaded at least once: what that tenant's calls use. Another
    /// tenant's slow plugins never hold it up.
    pub async fn catalog_for(&self, tenant: &TenantId) -> Arc<Catalog> {
        self.registry.ready(Some(tenant)).await;
        self.registry.catalog()
    }

    /// Rescan plugin directories now.
    pub async fn rescan(&self) -> ScanReport {
        self.registry.scan().await
    }

    /// Call tool `tool` with JSON `arguments` for `scope`, in a fresh sandbox
    /// with the tenant's grants and limits (or, for a `<server>__<tool>` of
    /// one of the tenant's MCP servers, on that server). Not governed: see
    /// [`crate::agent::call_tool_governed`].
    ///
    /// # Errors
    ///
    /// [`CallError`]: unknown tenant or tool, the tool's own error, a broken
    /// limit, or a crash.
    pub async fn call_tool(
        &self,
        scope: Scope,
        tool: &str,
        arguments: &str,
    ) -> Result<ToolOutput, CallError> {
        let limits = self.call_limits(&scope)?;
        let catalog = self.catalog_for(&scope.tenant).await;
        let Some(binding) = catalog.tool(&scope.tenant, tool) else {
            drop(catalog);
            if let Some(remote) = self.mcp.tool(&scope.tenant, tool).await? {
                return remote.call(arguments).await;
            }
            let catalog = self.catalog_for(&scope.tenant).await;
            let available: Vec<String> = catalog
                .tools(&scope.tenant)
                .iter()
                .map(|b| b.spec.name.clone())
                .collect();
            return Err(CallError::UnknownTool {
                tool: tool.to_owned(),
                tenant: scope.tenant.to_string(),
                available: if available.is_empty() {
                    "(none)".into()
                } else {
                    available.join(", ")
                },
            });
        };
        let binding = binding.clone();
        drop(catalog);
        let mut cpu = std::time::Duration::ZERO;
        self.run_tool(scope, &binding, limits, arguments, &mut cpu)
            .await
    }

    /// The limits of a call for `scope`, or why its tenant is unknown.
    fn call_limits(&self, scope: &Scope) -> Result<&Limits, CallError> {
        self.config
            .tenant(&scope.tenant)
            .map(|tenant| &tenant.limits)
            .map_err(|e| CallError::UnknownTenant {
                tenant: scope.tenant.to_string(),
                reason: e.to_string(),
            })
    }

    /// Call the tool of `binding` (resolved earlier, for example when a run
    /// started) for `scope`: a reload since then does not change which
    /// component runs or what it may touch.
    ///
    /// # Errors
    ///
    /// [`CallError`]: unknown tenant, the tool's own error, a broken limit, or
    /// a crash.
    pub async fn call_bound_tool(
        &self,
        scope: Scope,
        binding: &ToolBinding,
        arguments: &str,
    ) -> Result<ToolOutput, CallError> {
        self.call_bound_tool_metered(scope, binding, arguments)
            .await
            .outcome
    }

    /// [`Self::call_bound_tool`], with the CPU time the call used whatever
    /// its outcome: what budgets charge.
    pub async fn call_bound_tool_metered(
        &self,
        scope: Scope,
        binding: &ToolBinding,
        arguments: &str,
    ) -> ToolRun {
        let mut cpu = std::time::Duration::ZERO;
        let outcome = match self.call_limits(&scope) {
            Ok(limits) => {
                self.run_tool(scope, binding, limits, arguments, &mut cpu)
                    .await
            }
            Err(error) => Err(error),
        };
        ToolRun { outcome, cpu }
    }

    /// Run the tool of `binding` for `scope` under `limits`.
    async fn run_tool(
        &self,
        scope: Scope,
        binding: &ToolBinding,
        limits: &Limits,
        arguments: &str,
        cpu: &mut std::time::Duration,
    ) -> Result<ToolOutput, CallError> {
        let Some(component) = binding.plugin.tool() else {
            return Err(CallError::UnknownTool {
                tool: binding.spec.name.clone(),
                tenant: scope.tenant.to_string(),
                available: String::new(),
            });
        };
        // Only calls that can write need the tenant's ledger.
        let disk = if binding.grants.files.iter().any(|(_, _, write)| *write) {
            self.disks.get(&scope.tenant).cloned()
        } else {
            None
        };
        let request = CallRequest {
            scope: Arc::new(scope),
            plugin: binding.plugin.name.clone(),
            grants: &binding.grants,
            limits,
            harness: None,
            disk,
        };
        // Boxed: the call's future is large, and callers hold many of them
        // (one per concurrent run); keeping it inline made every run's
        // future that much bigger.
        Box::pin(self.engine.call_tool_metered(
            component,
            &request,
            &binding.spec.name,
            arguments,
            cpu,
        ))
        .await
    }
}

/// How a tool call ended, and what CPU time it used.
#[derive(Debug)]
pub struct ToolRun {
    /// The tool's output, or why there is none.
    pub outcome: Result<ToolOutput, CallError>,
    /// CPU time it used, whatever the outcome.
    pub cpu: std::time::Duration,
}

/// How an architecture run ended, and what CPU time it used.
#[derive(Debug)]
pub struct ArchitectureRun {
    /// [`CallError`] when the architecture broke a limit or crashed; its
    /// own `run-error` is the inner `Err`.
    pub outcome:
        Result<Result<architecture_export::RunOutput, architecture_export::RunError>, CallError>,
    /// CPU time it used, whatever the outcome.
    pub cpu: std::time::Duration,
}

/// What [`Host::inspect`] found in a component file.
#[derive(Debug)]
pub struct Inspection {
    /// Its type, or why it does not compile.
    pub shape: Result<ComponentShape, LoadError>,
    /// Whether it loads (links, describes itself), with its tools if it is a
    /// tool component.
    pub loaded: Result<Option<Vec<ToolSpec>>, LoadError>,
    /// What an architecture component says about itself (the name agents
    /// choose it by, its roles and its configuration schema).
    pub architecture: Option<crate::engine::ArchitectureInfo>,
}

impl Host {
    /// Whether the engine allocates instances from its pool (else on demand).
    pub fn pooling(&self) -> bool {
        self.engine.pooling()
    }

    /// The limits of `tenant`'s calls.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] listing the configured tenants when `tenant` is unknown.
    pub fn tenant_limits(&self, tenant: &TenantId) -> Result<Limits, ConfigError> {
        self.config.tenant(tenant).map(|t| t.limits)
    }

    /// Compile and load `bytes` as Loom would, without adding it to any
    /// catalog: for `loom plugins inspect`.
    pub async fn inspect(&self, bytes: Vec<u8>, name: &str) -> Inspection {
        let shape = self.engine.compile(&bytes).map(|(_, shape, _, _)| shape);
        let mut architecture = None;
        let loaded = match &shape {
            Err(error) => Err(error.clone()),
            Ok(_) => self
                .engine
                .load(bytes, name, &self.config.limits)
                .await
                .map(|loaded| {
                    architecture = loaded.architecture.map(|a| a.info);
                    loaded.tool.map(|tool| tool.tools)
                }),
        };
        Inspection {
            shape,
            loaded,
            architecture,
        }
    }

    /// Run architecture `component` (plugin `plugin`) for `scope` in a fresh
    /// sandbox whose `harness` import is `harness`, under `limits`.
    pub async fn run_architecture(
        &self,
        component: &ArchitectureComponent,
        plugin: Arc<str>,
        scope: Arc<Scope>,
        limits: &Limits,
        harness: Arc<dyn Harness>,
        input: architecture_export::RunInput,
    ) -> ArchitectureRun {
        let grants = crate::tenancy::grants::EffectiveGrants::default();
        let request = CallRequest {
            scope,
            plugin,
            grants: &grants,
            limits,
            harness: Some(harness),
            disk: None,
        };
        let mut cpu = std::time::Duration::ZERO;
        let outcome = Box::pin(
            self.engine
                .run_architecture(component, &request, input, &mut cpu),
        )
        .await;
        ArchitectureRun { outcome, cpu }
    }
}

impl Host {
    /// Ask policy `policy` (as `scope`'s tenant sees it) about `call` to the
    /// tool `spec` describes. Its configuration reaches it as the run
    /// context's `loom.policy_config` metadata.
    ///
    /// # Errors
    ///
    /// A message when the policy does not exist for the tenant, is not a
    /// policy, or broke a limit or crashed: the caller denies the call.
    pub async fn check_policy(
        &self,
        scope: &Scope,
        policy: &PolicyRef,
        call: &wit_types::ToolCall,
        spec: &wit_types::ToolSpec,
    ) -> Result<PolicyAnswer, String> {
        let catalog = self.catalog_for(&scope.tenant).await;
        let Some(plugin) = catalog.policy(&scope.tenant, &policy.plugin).cloned() else {
            return Err(format!(
                "policy plugin `{}` is not available to tenant `{}`",
                policy.plugin, scope.tenant
            ));
        };
        drop(catalog);
        let Some(component) = plugin.policy() else {
            return Err(format!("plugin `{}` is not a policy", policy.plugin));
        };
        let mut scope = scope.clone();
        // The key belongs to the tool call, not to the policy asked about it.
        scope.idempotency_key = None;
        scope
            .metadata
            .retain(|(key, _)| key != "loom.policy_config");
        scope
            .metadata
            .push(("loom.policy_config".into(), policy.config.clone()));
        let grants = crate::tenancy::grants::EffectiveGrants::default();
        let request = CallRequest {
            scope: Arc::new(scope),
            plugin: plugin.name.clone(),
            grants: &grants,
            limits: &policy.limits,
            harness: None,
            disk: None,
        };
        Box::pin(self.engine.check_policy(component, &request, call, spec))
            .await
            .map_err(|e| e.to_string())
    }
}

/// Rescan `registry`'s plugin directories every `interval` while it lives.
fn spawn_reloader(
    registry: &Arc<PluginRegistry>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(registry);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(registry) = weak.upgrade() else {
                break;
            };
            registry.scan().await;
        }
    })
}

/// Each tenant's disk ledger over its read-write grants.
fn disk_ledgers(config: &LoomConfig) -> HashMap<TenantId, Arc<DiskLedger>> {
    config
        .tenants
        .iter()
        .map(|(id, tenant)| {
            let roots = tenant
                .grants
                .files
                .iter()
                .filter(|(_, _, write)| *write)
                .map(|(host, _, _)| host.clone())
                .collect();
            let ledger = DiskLedger::new(
                roots,
                tenant.limits.disk_bytes,
                tenant.limits.max_file_bytes,
            );
            (id.clone(), Arc::new(ledger))
        })
        .collect()
}

impl Drop for Host {
    fn drop(&mut self) {
        // Counters changed since the last write are written, and every
        // commit made durable, while the ledger is still alive.
        self.governance.ledger().persist_now();
        if let Err(error) = self.store.sync_blocking(std::time::Duration::from_secs(10)) {
            tracing::error!(%error, "the database could not be synced at shutdown");
        }
        if let Some(task) = self.reloader.take() {
            task.abort();
        }
        self.initial_scan.abort();
    }
}
