//! Loading a component: compile it (or take it from the cache) off the async
//! workers, classify it by its exports, pre-link it, and ask it to describe
//! itself (`list` for tools, `describe` for architectures) under the loader's
//! limits.

use super::SandboxEngine;
use super::bindings::{
    architecture_export, facts_export, memory_export, names, policy_export, tool_export,
};
use super::boundary::check_json;
use super::cache::{self, CacheOutcome};
use super::contract;
use super::error::LoadError;
use super::sandbox::{CallRequest, conclude, under_limits};
use super::state::HostState;
use super::types::{ArchitectureInfo, ComponentShape, MAX_COMPONENT_BYTES, PluginKind, ToolSpec};
use crate::config::Limits;
use crate::tenancy::grants::EffectiveGrants;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

/// Most time a component's `list` or `describe` may take while loading.
pub const LOADER_WALL: Duration = Duration::from_secs(2);

/// Most tools one component may list.
pub const MAX_TOOLS_PER_COMPONENT: usize = 256;

/// Largest JSON schema (tool parameters, architecture config) accepted.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// Longest description (of a tool or an architecture) accepted.
pub const MAX_DESCRIPTION_BYTES: usize = 8 << 10;

/// A compiled, pre-linked tool component with its tool list.
pub struct ToolComponent {
    pub(super) pre: InstancePre<HostState>,
    pub(super) indices: tool_export::GuestIndices,
    /// The tools it offers.
    pub tools: Vec<ToolSpec>,
}

/// A compiled, pre-linked architecture component.
pub struct ArchitectureComponent {
    pub(super) pre: InstancePre<HostState>,
    pub(super) indices: architecture_export::GuestIndices,
    /// What it says about itself.
    pub info: ArchitectureInfo,
    /// Its configuration schema, compiled once at load: every run with a
    /// configuration is checked against it.
    pub config_validator: std::sync::Arc<jsonschema::Validator>,
}

/// A compiled, pre-linked policy component.
pub struct PolicyComponent {
    pub(super) pre: InstancePre<HostState>,
    pub(super) indices: policy_export::GuestIndices,
}

/// A compiled, pre-linked memory component (`memory` and `facts`).
pub struct MemoryComponent {
    pub(super) pre: InstancePre<HostState>,
    pub(super) memory: memory_export::GuestIndices,
    pub(super) facts: facts_export::GuestIndices,
}

/// A compiled component, ready to call.
pub struct LoadedComponent {
    /// Hex sha256 of the component's bytes.
    pub sha256: String,
    /// Its type.
    pub shape: ComponentShape,
    /// Whether compilation was served from the cache.
    pub cache: CacheOutcome,
    /// The callable tool component, for tool plugins.
    pub tool: Option<ToolComponent>,
    /// The runnable architecture, for architecture plugins.
    pub architecture: Option<ArchitectureComponent>,
    /// The callable policy, for policy plugins.
    pub policy: Option<PolicyComponent>,
    /// The callable memory, for memory plugins.
    pub memory: Option<MemoryComponent>,
}

/// Check `bytes`, then compile them (or take them from `cache`): the
/// component, its sha256 and where it came from. Blocking.
fn compile_cached(
    engine: &wasmtime::Engine,
    cache: &cache::CompileCache,
    bytes: &[u8],
) -> Result<(Component, String, CacheOutcome), LoadError> {
    SandboxEngine::precheck(bytes)?;
    let sha256 = cache::sha256_hex(bytes);
    let (component, outcome) = cache
        .load_or_compile(engine, bytes, &sha256)
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    Ok((component, sha256, outcome))
}

/// A link error of a component built against a `loom:plugin` newer than
/// the host's: most likely it uses what the host does not have yet, so the
/// error says so and how to fix it.
fn explain_newer_link_error(error: LoadError, shape: &ComponentShape) -> LoadError {
    let LoadError::Link(reason) = error else {
        return error;
    };
    let newer = shape.versions.iter().find(|v| {
        matches!(
            contract::support(v),
            contract::Support::NewerThanHost { .. }
        )
    });
    match newer {
        Some(version) => LoadError::Link(format!(
            "{reason}; the component was built against {}@{version}, {}",
            contract::PACKAGE,
            contract::explain(version)
        )),
        None => LoadError::Link(reason),
    }
}

impl SandboxEngine {
    /// Check the file's header and size before handing it to the compiler.
    fn precheck(bytes: &[u8]) -> Result<(), LoadError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(LoadError::TooLarge(bytes.len()));
        }
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::CoreModule);
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(LoadError::NotWasm);
        }
        Ok(())
    }

    /// Compile (or fetch from cache) a component and describe its type.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the bytes are not a valid component.
    pub fn compile(
        &self,
        bytes: &[u8],
    ) -> Result<(Component, ComponentShape, String, CacheOutcome), LoadError> {
        let (component, sha256, outcome) = compile_cached(&self.engine, self.cache(), bytes)?;
        let shape = self.shape(&component);
        Ok((component, shape, sha256, outcome))
    }

    /// [`Self::compile`] on a blocking thread, so compiling a large component
    /// never holds an async worker that other tenants' calls need.
    async fn compile_off_workers(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(Component, ComponentShape, String, CacheOutcome), LoadError> {
        let engine = self.engine.clone();
        let cache = self.cache().clone();
        let (component, sha256, outcome) =
            tokio::task::spawn_blocking(move || compile_cached(&engine, &cache, &bytes))
                .await
                .map_err(|e| LoadError::Invalid(format!("the compiler thread failed: {e}")))??;
        let shape = self.shape(&component);
        Ok((component, shape, sha256, outcome))
    }

    /// Describe a compiled component's imports and exports.
    pub fn shape(&self, component: &Component) -> ComponentShape {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let found = exports.iter().find_map(|name| {
            let (interface, version) = names::split(name)?;
            let kind = match interface {
                names::TOOL => PluginKind::Tool,
                names::ARCHITECTURE => PluginKind::Architecture,
                names::MEMORY => PluginKind::Memory,
                names::POLICY => PluginKind::Policy,
                _ => return None,
            };
            contract::support(version)
                .loadable()
                .then_some((kind, version))
        });
        let kind = found.map(|(kind, _)| kind);
        // The world as the component was built: `…@0.1.0` for a component
        // of the first version, served through the current definitions.
        let world = found.map(|(kind, version)| format!("loom:plugin/{kind}-plugin@{version}"));
        let versions =
            contract::versions_in(exports.iter().chain(imports.iter()).map(String::as_str));
        ComponentShape {
            kind,
            world,
            versions,
            exports,
            imports,
        }
    }

    /// Classify a shape: its kind, or why it is not a usable plugin.
    pub fn classify(shape: &ComponentShape) -> Result<PluginKind, LoadError> {
        if let Some(kind) = shape.kind {
            return Ok(kind);
        }
        if let Some(other) = shape
            .exports
            .iter()
            .find(|name| contract::split(name).is_some())
        {
            return Err(LoadError::UnsupportedVersion(other.clone()));
        }
        Err(LoadError::NotAPlugin(if shape.exports.is_empty() {
            "none".into()
        } else {
            shape.exports.join(", ")
        }))
    }

    /// Load a component: compile, classify, link, and for tools ask for their list.
    ///
    /// # Errors
    ///
    /// [`LoadError`] saying why the file cannot be served.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        name: &str,
        limits: &Limits,
    ) -> Result<LoadedComponent, LoadError> {
        let (component, shape, sha256, cache) = self.compile_off_workers(bytes).await?;
        let kind = Self::classify(&shape)?;
        let (mut tool, mut architecture, mut policy, mut memory) = (None, None, None, None);
        let prepared = async {
            match kind {
                PluginKind::Tool => tool = Some(self.prepare_tool(&component, name, limits).await?),
                PluginKind::Architecture => {
                    architecture = Some(self.prepare_architecture(&component, name, limits).await?);
                }
                PluginKind::Policy => policy = Some(self.prepare_policy(&component)?),
                PluginKind::Memory => memory = Some(self.prepare_memory(&component)?),
            }
            Ok::<(), LoadError>(())
        };
        prepared
            .await
            .map_err(|error| explain_newer_link_error(error, &shape))?;
        Ok(LoadedComponent {
            sha256,
            shape,
            cache,
            tool,
            architecture,
            policy,
            memory,
        })
    }

    /// Pre-link a memory component: it must export `memory` and `facts`.
    fn prepare_memory(&self, component: &Component) -> Result<MemoryComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let memory = memory_export::GuestIndices::new(&pre)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let facts = facts_export::GuestIndices::new(&pre).map_err(|e| {
            LoadError::Link(format!(
                "a memory component must also export `loom:plugin/facts` (added in \
                 loom:plugin@0.1.1; build against wit/plugin@0.1.3 or with loom-sdk's \
                 `export_memory!`): {e:#}"
            ))
        })?;
        Ok(MemoryComponent { pre, memory, facts })
    }

    /// Pre-link a policy component; it has nothing to describe.
    fn prepare_policy(&self, component: &Component) -> Result<PolicyComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let indices = policy_export::GuestIndices::new(&pre)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok(PolicyComponent { pre, indices })
    }

    /// Pre-link `component`, failing with the import the host lacks.
    fn pre_link(&self, component: &Component) -> Result<InstancePre<HostState>, LoadError> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))
    }

    /// A sandbox for calls made while loading (`list`, `describe`): no
    /// grants, the configured limits with the wall clock capped at
    /// [`LOADER_WALL`]. Returns the store and the limits it runs under.
    fn loader_store(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<(Store<HostState>, Limits), LoadError> {
        let limits = Limits {
            wall: limits.wall.min(LOADER_WALL),
            ..*limits
        };
        let scope = Arc::new(Scope::new(
            TenantId::new("loom-loader").map_err(|e| LoadError::BadTools(e.to_string()))?,
            UserId::Anonymous,
        ));
        let grants = EffectiveGrants::default();
        let request = CallRequest {
            scope,
            plugin: Arc::from(name),
            grants: &grants,
            limits: &limits,
            harness: None,
            disk: None,
        };
        let store = self
            .store(&request)
            .map_err(|e| LoadError::BadTools(e.to_string()))?;
        Ok((store, limits))
    }

    async fn prepare_architecture(
        &self,
        component: &Component,
        name: &str,
        limits: &Limits,
    ) -> Result<ArchitectureComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let indices = architecture_export::GuestIndices::new(&pre)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let (mut store, limits) = self.loader_store(name, limits)?;
        let meter = store.data().meter.clone();
        let ended = under_limits(&meter, limits.wall, async {
            let instance = pre.instantiate_async(&mut store).await?;
            let guest = indices.load(&mut store, &instance)?;
            guest.call_describe(&mut store).await
        })
        .await;
        let info = conclude(ended, store.data(), &limits)
            .map_err(|e| LoadError::BadTools(format!("`describe` failed: {e}")))?;
        check_json(&info.config_schema, MAX_SCHEMA_BYTES).map_err(|refusal| {
            LoadError::BadTools(format!("architecture config schema refused: {refusal}"))
        })?;
        if info.description.len() > MAX_DESCRIPTION_BYTES || info.workers.len() > 64 {
            return Err(LoadError::BadTools(format!(
                "architecture description must be at most {MAX_DESCRIPTION_BYTES} bytes and it may declare at most 64 workers"
            )));
        }
        let config_schema = serde_json::from_str(&info.config_schema).map_err(|e| {
            LoadError::BadTools(format!("architecture config schema is not JSON: {e}"))
        })?;
        let config_validator = jsonschema::validator_for(&config_schema).map_err(|e| {
            LoadError::BadTools(format!(
                "architecture config schema is not a valid JSON Schema: {e}"
            ))
        })?;
        if info.name.is_empty() || info.name.len() > 64 {
            return Err(LoadError::BadTools(format!(
                "architecture name `{}` must be 1-64 characters",
                super::boundary::escape_text(&info.name, 80)
            )));
        }
        Ok(ArchitectureComponent {
            pre,
            indices,
            info: ArchitectureInfo {
                name: info.name,
                description: info.description,
                workers: info
                    .workers
                    .into_iter()
                    .map(|w| (w.name, w.description))
                    .collect(),
                config_schema,
            },
            config_validator: std::sync::Arc::new(config_validator),
        })
    }

    async fn prepare_tool(
        &self,
        component: &Component,
        name: &str,
        limits: &Limits,
    ) -> Result<ToolComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let indices =
            tool_export::GuestIndices::new(&pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let (mut store, limits) = self.loader_store(name, limits)?;
        let meter = store.data().meter.clone();
        let ended = under_limits(&meter, limits.wall, async {
            let instance = pre.instantiate_async(&mut store).await?;
            let guest = indices.load(&mut store, &instance)?;
            guest.call_list(&mut store).await
        })
        .await;
        let listed = conclude(ended, store.data(), &limits)
            .map_err(|e| LoadError::BadTools(format!("`list` failed: {e}")))?;
        if listed.len() > MAX_TOOLS_PER_COMPONENT {
            return Err(LoadError::BadTools(format!(
                "it lists {} tools; a component may offer at most {MAX_TOOLS_PER_COMPONENT}",
                listed.len()
            )));
        }
        let mut tools = Vec::with_capacity(listed.len());
        for spec in listed {
            if spec.name.is_empty()
                || spec.name.len() > 64
                || !spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(LoadError::BadTools(format!(
                    "tool name `{}` must be 1-64 characters of [a-zA-Z0-9_-]",
                    spec.name.chars().take(80).collect::<String>()
                )));
            }
            if tools.iter().any(|t: &ToolSpec| t.name == spec.name) {
                return Err(LoadError::BadTools(format!(
                    "tool `{}` is listed twice",
                    spec.name
                )));
            }
            if spec.description.len() > MAX_DESCRIPTION_BYTES {
                return Err(LoadError::BadTools(format!(
                    "tool `{}` has a description over {MAX_DESCRIPTION_BYTES} bytes",
                    spec.name
                )));
            }
            check_json(&spec.parameters, MAX_SCHEMA_BYTES).map_err(|refusal| {
                LoadError::BadTools(format!(
                    "tool `{}` has a parameter schema that was refused: {refusal}",
                    spec.name
                ))
            })?;
            let parameters: serde_json::Value =
                serde_json::from_str(&spec.parameters).map_err(|e| {
                    LoadError::BadTools(format!(
                        "tool `{}` has a parameter schema that is not JSON: {e}",
                        spec.name
                    ))
                })?;
            if !parameters.is_object() {
                return Err(LoadError::BadTools(format!(
                    "tool `{}` has a parameter schema that is not a JSON object",
                    spec.name
                )));
            }
            tools.push(ToolSpec {
                name: spec.name,
                description: spec.description,
                parameters,
                destructive: spec.destructive,
                idempotent: spec.idempotent,
            });
        }
        Ok(ToolComponent {
            pre,
            indices,
            tools,
        })
    }
}
