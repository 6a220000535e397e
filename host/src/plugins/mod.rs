//! Plugin directories: scanning, manifests, kind detection and hot reload.
//!
//! A plugin is a `.wasm` component file, optionally with a `<stem>.toml`
//! manifest beside it. Global plugin directories are visible to every
//! tenant; a tenant's own directories only to that tenant, and its plugins
//! shadow global tools of the same name for that tenant alone.
//!
//! Each scan builds a new immutable [`Catalog`] and swaps it in. Unchanged
//! files (same size, mtime and manifest) are reused without recompiling. A
//! call holds an `Arc` to the plugin it started on, so calls in flight finish
//! on the old version while new calls see the new one. A file that fails to
//! load is reported with its reason and skipped; it never stops the host.

pub mod manifest;

use crate::config::LoomConfig;
use crate::engine::cache::CacheOutcome;
use crate::engine::{
    ArchitectureComponent, ComponentShape, LoadError, PluginKind, SandboxEngine, ToolComponent,
    ToolSpec,
};
use crate::tenancy::grants::{EffectiveGrants, Requests, ResolvedGrants};
use crate::tenancy::ids::TenantId;
use manifest::Manifest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
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
    /// Whether compilation came from the cache.
    pub cache: CacheOutcome,
    /// The callable tool component.
    pub tool: Option<ToolComponent>,
    /// The runnable architecture.
    pub architecture: Option<ArchitectureComponent>,
}

/// One plugin file and what became of it.
#[derive(Clone)]
pub struct PluginEntry {
    /// Global or a tenant's.
    pub visibility: Visibility,
    /// The component file.
    pub path: PathBuf,
    /// The loaded plugin, or why it did not load.
    pub status: Result<Arc<LoadedPlugin>, String>,
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
                (_, None) | (Visibility::Global, Some(_)) => true,
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
    scan_lock: tokio::sync::Mutex<()>,
}

impl PluginRegistry {
    /// A registry over `config`'s plugin directories; call [`Self::scan`] to load.
    pub fn new(engine: Arc<SandboxEngine>, config: Arc<LoomConfig>) -> Self {
        PluginRegistry {
            engine,
            config,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            scan_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The `.wasm` files of every configured directory, with their visibility.
    fn files(&self) -> Vec<(Visibility, PathBuf)> {
        let mut files = Vec::new();
        let mut push_dir = |visibility: Visibility, dir: &Path| {
            let Ok(read) = std::fs::read_dir(dir) else {
                return;
            };
            let mut found: Vec<PathBuf> = read
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
                .collect();
            found.sort();
            files.extend(found.into_iter().map(|p| (visibility.clone(), p)));
        };
        for dir in &self.config.plugin_dirs {
            push_dir(Visibility::Global, dir);
        }
        for (tenant, cfg) in &self.config.tenants {
            for dir in &cfg.plugin_dirs {
                push_dir(Visibility::Tenant(tenant.clone()), dir);
            }
        }
        files
    }

    /// Rescan every directory: load new and changed files, drop removed ones,
    /// and swap in a new catalog.
    pub async fn scan(&self) -> ScanReport {
        let _guard = self.scan_lock.lock().await;
        let previous = self.catalog();
        let mut report = ScanReport::default();
        let mut entries = Vec::new();
        for (visibility, path) in self.files() {
            let Some(print) = fingerprint(&path) else {
                continue;
            };
            if let Some(old) = previous
                .entries
                .iter()
                .find(|e| e.path == path && e.visibility == visibility && e.fingerprint == print)
            {
                entries.push(old.clone());
                continue;
            }
            let status = self.load_file(&path).await.map(Arc::new);
            match &status {
                Ok(plugin) => {
                    tracing::info!(path = %path.display(), plugin = %plugin.name, kind = %plugin.kind, "plugin loaded");
                    report.loaded.push(path.clone());
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "plugin skipped");
                    report.failed.push((path.clone(), reason.clone()));
                }
            }
            entries.push(PluginEntry {
                visibility,
                path,
                status,
                fingerprint: print,
            });
        }
        for old in &previous.entries {
            if !entries.iter().any(|e| e.path == old.path) {
                tracing::info!(path = %old.path.display(), "plugin removed");
                report.removed.push(old.path.clone());
            }
        }
        let catalog = Arc::new(build_catalog(entries, &self.config));
        match self.catalog.write() {
            Ok(mut guard) => *guard = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
        report
    }

    /// Load one file with its manifest.
    async fn load_file(&self, path: &Path) -> Result<LoadedPlugin, String> {
        let manifest_path = path.with_extension("toml");
        let manifest = if manifest_path.is_file() {
            Some(Manifest::load(&manifest_path).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let name: Arc<str> = manifest
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| stem(path))
            .into();
        let loaded = self
            .engine
            .load(bytes, &name, &self.config.limits)
            .await
            .map_err(|e: LoadError| e.to_string())?;
        let kind = SandboxEngine::classify(&loaded.shape).map_err(|e| e.to_string())?;
        let (version, description, requests) = match manifest {
            Some(m) => (m.version, m.description, Some(m.capabilities)),
            None => (None, None, None),
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
            cache: loaded.cache,
            tool: loaded.tool,
            architecture: loaded.architecture,
        })
    }
}

/// Index tools per tenant: global plugins first, then the tenant's own,
/// which replace global tools of the same name.
fn build_catalog(entries: Vec<PluginEntry>, config: &LoomConfig) -> Catalog {
    let mut tools = HashMap::new();
    let mut architectures = HashMap::new();
    for (tenant, tenant_config) in &config.tenants {
        let mut archs: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for pass in [Visibility::Global, Visibility::Tenant(tenant.clone())] {
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                if let Ok(plugin) = &entry.status
                    && let Some(arch) = &plugin.architecture
                {
                    archs.insert(arch.info.name.clone(), plugin.clone());
                }
            }
        }
        architectures.insert(tenant.clone(), archs);
        let mut index: HashMap<String, ToolBinding> = HashMap::new();
        let mut grants_cache: BTreeMap<String, Arc<EffectiveGrants>> = BTreeMap::new();
        for pass in [Visibility::Global, Visibility::Tenant(tenant.clone())] {
            for entry in entries.iter().filter(|e| e.visibility == pass) {
                let Ok(plugin) = &entry.status else { continue };
                let Some(tool) = &plugin.tool else { continue };
                let grants = grants_cache
                    .entry(plugin.name.to_string())
                    .or_insert_with(|| {
                        Arc::new(effective(&tenant_config.grants, plugin.requests.as_ref()))
                    })
                    .clone();
                for spec in &tool.tools {
                    if let Some(existing) = index.get(&spec.name)
                        && pass == Visibility::Global
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
    }
}

fn effective(grants: &ResolvedGrants, requests: Option<&Requests>) -> EffectiveGrants {
    grants.intersect(requests)
}
