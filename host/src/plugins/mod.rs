//! Plugin directories: scanning, manifests, kind detection and hot reload.
//!
//! A plugin is a `.wasm` component file, optionally with a `<stem>.toml`
//! manifest beside it. Global plugin directories are visible to every
//! tenant; a tenant's own directories only to that tenant, and its plugins
//! shadow global tools of the same name for that tenant alone.
//!
//! The directories fall into groups: the global one and one per tenant. Each
//! group is scanned on its own, concurrently with the others, and publishes
//! as soon as it is loaded: a tenant whose plugin is slow to compile or to
//! describe itself delays nobody else. Calls for a tenant wait only for the
//! global group and that tenant's group to have loaded once
//! ([`PluginRegistry::ready`]).
//!
//! Each scan builds a new immutable [`Catalog`] and swaps it in. Unchanged
//! files (same size, mtime and manifest) are reused without recompiling. A
//! call holds an `Arc` to the plugin it started on, so calls in flight finish
//! on the old version while new calls see the new one. A file that fails to
//! load is reported with its reason and skipped; it never stops the host.

pub mod builtin;
pub mod manifest;

use crate::config::LoomConfig;
use crate::engine::cache::CacheOutcome;
use crate::engine::{
    ArchitectureComponent, ComponentShape, LoadError, MemoryComponent, PluginKind, PolicyComponent,
    SandboxEngine, ToolComponent, ToolSpec,
};
use crate::governance::Governance;
use crate::tenancy::grants::{EffectiveGrants, Requests, ResolvedGrants};
use crate::tenancy::ids::TenantId;
use manifest::{Manifest, ManifestError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a plugin file was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum PluginError {
    /// Its manifest is invalid.
    #[error(transparent)]
    Manifest(#[serde(serialize_with = "as_display")] ManifestError),
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The component was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// What a loaded plugin offers, by kind.
pub enum PluginPayload {
    /// A tool component, ready to call.
    Tool(ToolComponent),
    /// An architecture component, ready to run.
    Architecture(ArchitectureComponent),
    /// A memory component, ready to call.
    Memory(MemoryComponent),
    /// A policy component, ready to ask.
    Policy(PolicyComponent),
}

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Embedded in the host: every tenant sees it, any directory overrides it.
    Builtin,
    /// A global plugin directory: every tenant sees it.
    Global,
    /// A tenant's own directory: only that tenant sees it.
    Tenant(TenantId),
}

/// A plugin that loaded.
pub struct LoadedPlugin {
    /// Name (manifest `name`, else the file stem).
    pub name: Arc<str>,
    /// The component file.
    pub path: PathBuf,
    /// Kind from the exports.
    pub kind: PluginKind,
    /// Manifest version, if any.
    pub version: Option<String>,
    /// Manifest description, if any.
    pub description: Option<String>,
    /// Hex sha256 of the component.
    pub sha256: String,
    /// Its imports and exports.
    pub shape: ComponentShape,
    /// What its manifest requests (`None`: no manifest, so nothing).
    pub requests: Option<Requests>,
    /// Its tools that edit files (manifest `file_edit_tools`): the ones the
    /// `accept-edits` permission mode runs without asking.
    pub file_edit_tools: Vec<String>,
    /// Whether compilation came from the cache.
    pub cache: CacheOutcome,
    /// What it offers.
    pub payload: PluginPayload,
}

impl LoadedPlugin {
    /// The tool component, for tool plugins.
    pub fn tool(&self) -> Option<&ToolComponent> {
        match &self.payload {
            PluginPayload::Tool(tool) => Some(tool),
            _ => None,
        }
    }

    /// The architecture component, for architecture plugins.
    pub fn architecture(&self) -> Option<&ArchitectureComponent> {
        match &self.payload {
            PluginPayload::Architecture(arch) => Some(arch),
            _ => None,
        }
    }

    /// The policy component, for policy plugins.
    pub fn policy(&self) -> Option<&PolicyComponent> {
        match &self.payload {
            PluginPayload::Policy(policy) => Some(policy),
            _ => None,
        }
    }

    /// The memory component, for memory plugins.
    pub fn memory(&self) -> Option<&MemoryComponent> {
        match &self.payload {
            PluginPayload::Memory(memory) => Some(memory),
            _ => None,
        }
    }
}

/// One plugin file and what became of it.
#[derive(Clone)]
pub struct PluginEntry {
    /// Global or a tenant's.
    pub visibility: Visibility,
    /// The component file.
    pub path: PathBuf,
    /// The loaded plugin, or why it did not load.
    pub status: Result<Arc<LoadedPlugin>, PluginError>,
    fingerprint: Fingerprint,
}

impl PluginEntry {
    /// The plugin's name: the loaded name, else the file stem.
    pub fn name(&self) -> String {
        match &self.status {
            Ok(plugin) => plugin.name.to_string(),
            Err(_) => stem(&self.path),
        }
    }
}

/// A tool ready to call for one tenant: the plugin and what it may touch.
#[derive(Clone)]
pub struct ToolBinding {
    /// The plugin offering it.
    pub plugin: Arc<LoadedPlugin>,
    /// Its spec.
    pub spec: ToolSpec,
    /// Capabilities for this tenant: its grants intersected with the manifest.
    pub grants: Arc<EffectiveGrants>,
    /// Whether its plugin tags it as a file edit.
    pub file_edit: bool,
}

/// An immutable snapshot of every plugin directory.
#[derive(Default)]
pub struct Catalog {
    /// Every plugin file found, global first, then per tenant, by path.
    pub entries: Vec<PluginEntry>,
    /// Tools by tenant, then by tool name.
    tools: HashMap<TenantId, HashMap<String, ToolBinding>>,
    /// Architectures by tenant, then by name (from `describe`).
    architectures: HashMap<TenantId, HashMap<String, Arc<LoadedPlugin>>>,
    /// Policy components by tenant, then by plugin name.
    policies: HashMap<TenantId, HashMap<String, Arc<LoadedPlugin>>>,
    /// Memory components by tenant, then by plugin name.
    memories: HashMap<TenantId, HashMap<String, Arc<LoadedPlugin>>>,
}

impl Catalog {
    /// The tool `name` as tenant `tenant` sees it.
    pub fn tool(&self, tenant: &TenantId, name: &str) -> Option<&ToolBinding> {
        self.tools.get(tenant)?.get(name)
    }

    /// The capabilities plugin file `path` gets as tenant `tenant` sees it,
    /// or `None` if the tenant does not see a loaded plugin there.
    pub fn grants(&self, tenant: &TenantId, path: &Path) -> Option<Arc<EffectiveGrants>> {
        self.tools
            .get(tenant)?
            .values()
            .find(|binding| binding.plugin.path == path)
            .map(|binding| binding.grants.clone())
    }

    /// The architecture `name` as tenant `tenant` sees it.
    pub fn architecture(&self, tenant: &TenantId, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.architectures.get(tenant)?.get(name)
    }

    /// The policy plugin `name` as tenant `tenant` sees it.
    pub fn policy(&self, tenant: &TenantId, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.policies.get(tenant)?.get(name)
    }

    /// The memory plugin `name` as tenant `tenant` sees it (its own
    /// directory over the global ones over the built-in).
    pub fn memory(&self, tenant: &TenantId, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.memories.get(tenant)?.get(name)
    }

    /// Names of the architectures tenant `tenant` sees, sorted.
    pub fn architecture_names(&self, tenant: &TenantId) -> Vec<String> {
        let mut names: Vec<String> = self
            .architectures
            .get(tenant)
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Every tool tenant `tenant` sees, sorted by name.
    pub fn tools(&self, tenant: &TenantId) -> Vec<&ToolBinding> {
        let mut tools: Vec<&ToolBinding> = self
            .tools
            .get(tenant)
            .map(|t| t.values().collect())
            .unwrap_or_default();
        tools.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        tools
    }

    /// The entries visible to `tenant` (global and its own), or all when `None`.
    pub fn visible(&self, tenant: Option<&TenantId>) -> Vec<&PluginEntry> {
        self.entries
            .iter()
            .filter(|e| match (&e.visibility, tenant) {
                (_, None) | (Visibility::Builtin | Visibility::Global, Some(_)) => true,
                (Visibility::Tenant(owner), Some(t)) => owner == t,
            })
            .collect()
    }
}

/// What identifies an unchanged plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    manifest: Option<(u64, Option<SystemTime>)>,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let manifest = std::fs::metadata(path.with_extension("toml"))
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        manifest,
    })
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a scan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    /// Files loaded for the first time or reloaded after a change.
    pub loaded: Vec<PathBuf>,
    /// Files that disappeared.
    pub removed: Vec<PathBuf>,
    /// Files that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

impl ScanReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty() && self.removed.is_empty() && self.failed.is_empty()
    }
}

/// The plugin directories of a configuration, kept loaded.
pub struct PluginRegistry {
    engine: Arc<SandboxEngine>,
    config: Arc<LoomConfig>,
    catalog: RwLock<Arc<Catalog>>,
    /// The latest entries of each group.
    groups: Mutex<BTreeMap<Visibility, Vec<PluginEntry>>>,
    /// One scan at a time per group.
    group_locks: BTreeMap<Visibility, tokio::sync::Mutex<()>>,
    /// Groups that have loaded at least once.
    ready: tokio::sync::watch::Sender<BTreeSet<Visibility>>,
    /// Set once every group has loaded: the fast path of [`Self::ready`].
    all_ready: std::sync::atomic::AtomicBool,
    /// Missing directories already warned about.
    warned_missing: Mutex<HashSet<PathBuf>>,
    /// Where plugin loads are audited, if anywhere. Weak: a scan still
    /// running after the host is dropped must not keep its database open.
    governance: Option<std::sync::Weak<Governance>>,
}

impl PluginRegistry {
    /// A registry over `config`'s plugin directories; call [`Self::scan`] to load.
    pub fn new(engine: Arc<SandboxEngine>, config: Arc<LoomConfig>) -> Self {
        let group_locks = Self::group_names(&config)
            .into_iter()
            .map(|group| (group, tokio::sync::Mutex::new(())))
            .collect();
        PluginRegistry {
            engine,
            config,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            groups: Mutex::new(BTreeMap::new()),
            group_locks,
            ready: tokio::sync::watch::channel(BTreeSet::new()).0,
            all_ready: std::sync::atomic::AtomicBool::new(false),
            warned_missing: Mutex::new(HashSet::new()),
            governance: None,
        }
    }

    /// Record every plugin loaded, reloaded, rejected or removed in
    /// `governance`'s audit log.
    pub fn with_audit(mut self, governance: &Arc<Governance>) -> Self {
        self.governance = Some(Arc::downgrade(governance));
        self
    }

    fn audit(&self, group: &Visibility, action: &'static str, data: serde_json::Value) {
        if let Some(governance) = self.governance.as_ref().and_then(std::sync::Weak::upgrade) {
            let tenant = match group {
                Visibility::Tenant(tenant) => tenant.as_str(),
                Visibility::Builtin | Visibility::Global => "*",
            };
            governance.record_event(tenant, action, "system", data);
        }
    }

    fn group_names(config: &LoomConfig) -> Vec<Visibility> {
        config
            .builtin_plugins
            .then_some(Visibility::Builtin)
            .into_iter()
            .chain(std::iter::once(Visibility::Global))
            .chain(config.tenants.keys().cloned().map(Visibility::Tenant))
            .collect()
    }

    /// The current snapshot (groups still loading for the first time are
    /// missing from it; see [`Self::ready`]).
    pub fn catalog(&self) -> Arc<Catalog> {
        crate::sync::read(&self.catalog).clone()
    }

    /// Wait until the built-in and global groups and `tenant`'s group (every
    /// group when `None`) have loaded at least once.
    pub async fn ready(&self, tenant: Option<&TenantId>) {
        if self.all_ready.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut needed = BTreeSet::from([Visibility::Global]);
        if self.group_locks.contains_key(&Visibility::Builtin) {
            needed.insert(Visibility::Builtin);
        }
        match tenant {
            Some(tenant) => {
                if self
                    .group_locks
                    .contains_key(&Visibility::Tenant(tenant.clone()))
                {
                    needed.insert(Visibility::Tenant(tenant.clone()));
                }
            }
            None => needed.extend(self.group_locks.keys().cloned()),
        }
        let mut watch = self.ready.subscribe();
        // The sender lives as long as `self`, so this only ends when ready.
        let _ = watch.wait_for(|loaded| needed.is_subset(loaded)).await;
    }

    /// The directories of one group.
    fn dirs(&self, group: &Visibility) -> Vec<PathBuf> {
        match group {
            Visibility::Builtin => Vec::new(),
            Visibility::Global => self.config.plugin_dirs.clone(),
            Visibility::Tenant(tenant) => self
                .config
                .tenants
                .get(tenant)
                .map(|t| t.plugin_dirs.clone())
                .unwrap_or_default(),
        }
    }

    /// The `.wasm` files of one group's directories, sorted per directory.
    fn files(&self, group: &Visibility) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in self.dirs(group) {
            let read = match std::fs::read_dir(&dir) {
                Ok(read) => read,
                Err(error) => {
                    let first = crate::sync::lock(&self.warned_missing).insert(dir.clone());
                    if first {
                        tracing::warn!(dir = %dir.display(), %error, "plugin directory cannot be read; create it or fix plugin_dirs");
                    }
                    continue;
                }
            };
            crate::sync::lock(&self.warned_missing).remove(&dir);
            let mut found: Vec<PathBuf> = read
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        }
        files
    }

    /// Rescan every group concurrently: load new and changed files, drop
    /// removed ones; each group's result is published as soon as it is done.
    pub async fn scan(&self) -> ScanReport {
        let groups: Vec<Visibility> = self.group_locks.keys().cloned().collect();
        let reports =
            futures_util::future::join_all(groups.iter().map(|group| self.scan_group(group))).await;
        let mut report = ScanReport::default();
        for part in reports {
            report.loaded.extend(part.loaded);
            report.removed.extend(part.removed);
            report.failed.extend(part.failed);
        }
        report
    }

    /// Rescan one group and publish a new catalog.
    pub async fn scan_group(&self, group: &Visibility) -> ScanReport {
        let Some(lock) = self.group_locks.get(group) else {
            return ScanReport::default();
        };
        let _guard = lock.lock().await;
        let previous: Vec<PluginEntry> = crate::sync::lock(&self.groups)
            .get(group)
            .cloned()
            .unwrap_or_default();
        let mut report = ScanReport::default();
        let mut entries = Vec::new();
        if *group == Visibility::Builtin {
            if previous.is_empty() {
                entries = self.load_builtin().await;
            } else {
                entries = previous.clone();
            }
        }
        for path in self.files(group) {
            let Some(print) = fingerprint(&path) else {
                continue;
            };
            if let Some(old) = previous
                .iter()
                .find(|e| e.path == path && e.fingerprint == print)
            {
                entries.push(old.clone());
                continue;
            }
            let status = self.load_file(&path).await.map(Arc::new);
            let reloaded = previous.iter().any(|e| e.path == path);
            match &status {
                Ok(plugin) => {
                    tracing::info!(path = %path.display(), plugin = %plugin.name, kind = %plugin.kind, "plugin loaded");
                    self.audit(
                        group,
                        if reloaded { "plugin_reloaded" } else { "plugin_loaded" },
                        serde_json::json!({"path": path.display().to_string(), "plugin": &*plugin.name, "kind": plugin.kind, "sha256": plugin.sha256}),
                    );
                    report.loaded.push(path.clone());
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "plugin skipped");
                    self.audit(
                        group,
                        "plugin_rejected",
                        serde_json::json!({"path": path.display().to_string(), "reason": reason.to_string()}),
                    );
                    report.failed.push((path.clone(), reason.to_string()));
                }
            }
            entries.push(PluginEntry {
                visibility: group.clone(),
                path,
                status,
                fingerprint: print,
            });
        }
        for old in &previous {
            if !entries.iter().any(|e| e.path == old.path) {
                tracing::info!(path = %old.path.display(), "plugin removed");
                self.audit(
                    group,
                    "plugin_removed",
                    serde_json::json!({"path": old.path.display().to_string()}),
                );
                report.removed.push(old.path.clone());
            }
        }
        // Record, build and publish under one lock, so two groups finishing
        // together cannot publish out of order.
        let mut groups = crate::sync::lock(&self.groups);
        groups.insert(group.clone(), entries);
        let all: Vec<PluginEntry> = groups.values().flatten().cloned().collect();
        let catalog = Arc::new(build_catalog(all, &self.config));
        *crate::sync::write(&self.catalog) = catalog;
        drop(groups);
        self.ready.send_modify(|loaded| {
            loaded.insert(group.clone());
            if self.group_locks.keys().all(|g| loaded.contains(g)) {
                self.all_ready
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        });
        report
    }

    /// Load the embedded first-party components.
    async fn load_builtin(&self) -> Vec<PluginEntry> {
        let mut entries = Vec::new();
        for (name, bytes) in builtin::COMPONENTS {
            let path = builtin::path(name);
            let status = self
                .load_bytes(bytes.to_vec(), Arc::from(*name), &path, None)
                .await
                .map(Arc::new);
            if let Err(reason) = &status {
                tracing::warn!(plugin = name, %reason, "built-in plugin failed to load");
            }
            entries.push(PluginEntry {
                visibility: Visibility::Builtin,
                path,
                status,
                fingerprint: Fingerprint {
                    len: bytes.len() as u64,
                    modified: None,
                    manifest: None,
                },
            });
        }
        entries
    }

    /// Load one file with its manifest.
    async fn load_file(&self, path: &Path) -> Result<LoadedPlugin, PluginError> {
        let manifest_path = path.with_extension("toml");
        let manifest = if manifest_path.is_file() {
            Some(Manifest::load(&manifest_path).map_err(PluginError::Manifest)?)
        } else {
            None
        };
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let name: Arc<str> = manifest
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| stem(path))
            .into();
        self.load_bytes(bytes, name, path, manifest).await
    }

    /// Load a component from its bytes.
    async fn load_bytes(
        &self,
        bytes: Vec<u8>,
        name: Arc<str>,
        path: &Path,
        manifest: Option<Manifest>,
    ) -> Result<LoadedPlugin, PluginError> {
        let loaded = self.engine.load(bytes, &name, &self.config.limits).await?;
        let kind = SandboxEngine::classify(&loaded.shape)?;
        let (version, description, requests, file_edit_tools) = match manifest {
            Some(m) => (
                m.version,
                m.description,
                Some(m.capabilities),
                m.file_edit_tools,
            ),
            None => (None, None, None, Vec::new()),
        };
        let payload = match (
            loaded.tool,
            loaded.architecture,
            loaded.policy,
            loaded.memory,
        ) {
            (Some(tool), _, _, _) => PluginPayload::Tool(tool),
            (_, Some(arch), _, _) => PluginPayload::Architecture(arch),
            (_, _, Some(policy), _) => PluginPayload::Policy(policy),
            (_, _, _, Some(memory)) => PluginPayload::Memory(memory),
            (_, _, _, None) => {
                let other = kind;
                return Err(PluginError::Load(LoadError::NotAPlugin(format!(
                    "a {other} component that did not load"
                ))));
            }
        };
        Ok(LoadedPlugin {
            name,
            path: path.to_owned(),
            kind,
            version,
            description,
            sha256: loaded.sha256,
            shape: loaded.shape,
            requests,
            file_edit_tools,
            cache: loaded.cache,
            payload,
        })
    }
}

/// Index tools per tenant: global plugins first, then the tenant's own,
/// which replace global tools of the same name.
fn build_catalog(entries: Vec<PluginEntry>, config: &LoomConfig) -> Catalog {
    let mut tools = HashMap::new();
    let mut architectures = HashMap::new();
    let mut policies = HashMap::new();
    let mut memories = HashMap::new();
    for (tenant, tenant_config) in &config.tenants {
        let passes = [
            Visibility::Builtin,
            Visibility::Global,
            Visibility::Tenant(tenant.clone()),
        ];
        let mut archs: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for pass in passes.clone() {
            let mut seen_in_pass = HashSet::new();
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                if let Ok(plugin) = &entry.status
                    && let Some(arch) = plugin.architecture()
                {
                    if !seen_in_pass.insert(arch.info.name.clone()) {
                        tracing::warn!(
                            architecture = %arch.info.name, ignored = %entry.path.display(),
                            "two plugins in the same directories declare the same architecture; keeping the first"
                        );
                        continue;
                    }
                    archs.insert(arch.info.name.clone(), plugin.clone());
                }
            }
        }
        architectures.insert(tenant.clone(), archs);
        // Policies by plugin name, from the operator's layers only (a global
        // one overrides a built-in one): a tenant's own directory must not
        // replace the policy the operator configured over it.
        let mut tenant_policies: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for pass in [Visibility::Builtin, Visibility::Global] {
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                if let Ok(plugin) = &entry.status
                    && plugin.policy().is_some()
                {
                    tenant_policies.insert(plugin.name.to_string(), plugin.clone());
                }
            }
        }
        policies.insert(tenant.clone(), tenant_policies);
        // Memory components by plugin name; the tenant's own directory may
        // offer one (it holds only that tenant's own data).
        let mut tenant_memories: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for pass in passes.clone() {
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                if let Ok(plugin) = &entry.status
                    && plugin.memory().is_some()
                {
                    tenant_memories.insert(plugin.name.to_string(), plugin.clone());
                }
            }
        }
        memories.insert(tenant.clone(), tenant_memories);
        let mut index: HashMap<String, ToolBinding> = HashMap::new();
        // Keyed by the plugin's file: a tenant plugin named like a global
        // one must not inherit the global plugin's capabilities.
        let mut grants_cache: BTreeMap<PathBuf, Arc<EffectiveGrants>> = BTreeMap::new();
        for pass in passes {
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                let Ok(plugin) = &entry.status else { continue };
                let Some(tool) = plugin.tool() else { continue };
                let grants = grants_cache
                    .entry(plugin.path.clone())
                    .or_insert_with(|| {
                        Arc::new(if pass == Visibility::Builtin {
                            builtin::grants(&plugin.name, &tenant_config.grants)
                        } else {
                            effective(&tenant_config.grants, plugin.requests.as_ref())
                        })
                    })
                    .clone();
                for spec in &tool.tools {
                    if let Some(existing) = index.get(&spec.name)
                        && pass == Visibility::Global
                        && entries
                            .iter()
                            .any(|e| e.path == existing.plugin.path && e.visibility == pass)
                    {
                        tracing::warn!(
                            tool = %spec.name, kept = %existing.plugin.path.display(), ignored = %entry.path.display(),
                            "two global plugins offer the same tool; keeping the first"
                        );
                        continue;
                    }
                    index.insert(
                        spec.name.clone(),
                        ToolBinding {
                            plugin: plugin.clone(),
                            spec: spec.clone(),
                            grants: grants.clone(),
                            // A tag lifts an approval, so only the operator's
                            // layers may set it: a tenant's own plugin could
                            // tag anything.
                            file_edit: match pass {
                                Visibility::Builtin => {
                                    builtin::file_edit_tools(&plugin.name).contains(&spec.name)
                                }
                                Visibility::Global => plugin.file_edit_tools.contains(&spec.name),
                                Visibility::Tenant(_) => false,
                            },
                        },
                    );
                }
            }
        }
        tools.insert(tenant.clone(), index);
    }
    Catalog {
        entries,
        tools,
        architectures,
        policies,
        memories,
    }
}

fn effective(grants: &ResolvedGrants, requests: Option<&Requests>) -> EffectiveGrants {
    grants.intersect(requests)
}
