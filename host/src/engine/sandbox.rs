//! Building the sandbox of one call and running guest work under its limits.
//!
//! [`SandboxEngine::store`] turns a plugin's effective grants and the
//! tenant's limits into a fresh `Store`: preopened directories, environment,
//! network policy, capped stdio, a resource-table cap, and a [`CallMeter`]
//! shared by the memory limiter and the epoch callback.
//! [`under_limits`] runs the instantiate-and-call future with that meter and
//! the wall-clock limit, and [`conclude`] turns how it ended into a result
//! or the [`CallError`] that names the limit the guest broke.

use super::SandboxEngine;
use super::accounting::{CallMeter, Metered, Overrun};
use super::disk::DiskLedger;
use super::egress;
use super::error::CallError;
use super::guards::{FsGuard, ResourceLimitExceeded};
use super::harness::Harness;
use super::state::{CappedPipe, CpuLimitExceeded, HostState, LogCapture, MemoryBudget};
use crate::config::Limits;
use crate::tenancy::grants::EffectiveGrants;
use crate::tenancy::ids::Scope;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Largest total size of one HTTP fields resource (headers or trailers) a
/// guest may build in the host.
pub const MAX_HTTP_FIELDS_BYTES: usize = 64 << 10;

/// Everything one call needs besides the component.
pub struct CallRequest<'a> {
    /// Who the call runs for.
    pub scope: Arc<Scope>,
    /// The plugin's name, for messages and logs.
    pub plugin: Arc<str>,
    /// What the plugin may touch.
    pub grants: &'a EffectiveGrants,
    /// Limits of the call.
    pub limits: &'a Limits,
    /// The agent run the call serves, for architecture components.
    pub harness: Option<Arc<dyn Harness>>,
    /// The tenant's disk ledger, charged by writes to read-write grants.
    pub disk: Option<Arc<DiskLedger>>,
}

/// How the guest work of a call ended.
pub(crate) enum Ended<R> {
    /// The export returned.
    Returned(R),
    /// The guest trapped or a host function failed.
    Trapped(wasmtime::Error),
    /// A budget was broken between polls.
    Overran(Overrun),
    /// The wall-clock limit passed.
    TimedOut,
}

impl SandboxEngine {
    /// A fresh store for one call, with its WASI context built from the grants.
    pub(crate) fn store(&self, request: &CallRequest<'_>) -> Result<Store<HostState>, CallError> {
        let grants = request.grants;
        let limits = request.limits;
        let mut wasi = WasiCtxBuilder::new();
        for (host, guest, write) in &grants.files {
            let perms = if *write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(host, guest, perms)
                .map_err(|e| CallError::Sandbox {
                    plugin: request.plugin.to_string(),
                    reason: format!("granted directory {} cannot be opened: {e}", host.display()),
                })?;
        }
        if !grants.env.is_empty() {
            let env: Vec<(&str, &str)> = grants
                .env
                .iter()
                .map(|(name, value)| (name.as_str(), value.expose()))
                .collect();
            wasi.envs(&env);
        }
        let stdout = CappedPipe::new(limits.max_log_bytes);
        let stderr = CappedPipe::new(limits.max_log_bytes);
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        let denials = egress::DenialLog::default();
        if grants.sockets.is_empty() {
            wasi.allow_tcp(false).allow_udp(false);
        } else {
            wasi.allow_tcp(true)
                .allow_udp(false)
                .socket_addr_check(egress::socket_check(
                    grants.sockets.iter().copied().collect(),
                    denials.clone(),
                ));
        }
        wasi.allow_ip_name_lookup(false);
        if let Some(harness) = &request.harness {
            // An architecture reads time only through its run, so the run can
            // record what it saw; randomness likewise (see `guards`).
            wasi.wall_clock(super::harness::HarnessWallClock(harness.clone()))
                .monotonic_clock(super::harness::HarnessMonotonicClock(harness.clone()));
        }
        let mut table = wasmtime::component::ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        let meter = Arc::new(CallMeter::with_host_memory(
            limits.cpu,
            limits.memory_bytes,
            request.harness.is_none(),
        ));
        let writable = grants.files.iter().any(|(_, _, write)| *write);
        let state = HostState {
            wasi: wasi.build(),
            table,
            http,
            hooks: egress::EgressHooks {
                allowed: grants.http.iter().cloned().collect(),
                denials,
                connections: (!grants.http.is_empty())
                    .then(|| Arc::new(tokio::sync::Semaphore::new(limits.max_open_files))),
            },
            memory: MemoryBudget::new(meter.clone()),
            meter,
            fs: FsGuard::new(
                request.disk.clone().filter(|_| writable),
                limits.max_open_files,
            ),
            scope: request.scope.clone(),
            plugin: request.plugin.clone(),
            logs: LogCapture::new(limits.max_log_bytes),
            stdio: [stdout, stderr],
            harness: request.harness.clone(),
            kv: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        // What one lift (a host call's arguments, an export's results) may
        // copy out of the guest: at most its memory budget, not wasmtime's
        // default 128 MiB. A list of strings all pointing at one buffer is
        // charged per copy, so it cannot multiply the guest's memory.
        store.set_hostcall_fuel(limits.memory_bytes.clamp(1 << 20, 128 << 20));
        store.epoch_deadline_callback(|ctx| match ctx.data().meter.overrun() {
            Some(Overrun::Cpu) => Err(CpuLimitExceeded.into()),
            Some(Overrun::Memory) => Err(super::state::HostMemoryExceeded.into()),
            None => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }
}

/// Run `work` (instantiate, then call an export) charged to `meter`,
/// stopped when a budget breaks or `wall` passes.
pub(crate) async fn under_limits<R>(
    meter: &CallMeter,
    wall: Duration,
    work: impl Future<Output = wasmtime::Result<R>>,
) -> Ended<R> {
    match tokio::time::timeout(wall, Metered::new(work, meter)).await {
        Err(_elapsed) => Ended::TimedOut,
        Ok(Err(overrun)) => Ended::Overran(overrun),
        Ok(Ok(Err(error))) => Ended::Trapped(error),
        Ok(Ok(Ok(value))) => Ended::Returned(value),
    }
}

/// The result of a call, or the limit it broke, or its crash report.
pub(crate) fn conclude<R>(
    ended: Ended<R>,
    state: &HostState,
    limits: &Limits,
) -> Result<R, CallError> {
    let ended = match ended {
        Ended::Returned(value) => return Ok(value),
        other => other,
    };
    let plugin = state.plugin.to_string();
    let memory_limit = || CallError::MemoryLimit {
        plugin: plugin.clone(),
        limit: state.meter.memory_limit(),
        requested: state
            .memory
            .exceeded
            .unwrap_or_else(|| state.meter.memory_bytes()),
        host_bytes: state.meter.host_bytes(),
    };
    let cpu_limit = || CallError::CpuLimit {
        plugin: plugin.clone(),
        limit_ms: limits.cpu.as_millis() as u64,
    };
    let error = match ended {
        Ended::Returned(value) => return Ok(value),
        Ended::TimedOut => {
            return Err(CallError::Timeout {
                plugin: plugin.clone(),
                limit_ms: limits.wall.as_millis() as u64,
            });
        }
        Ended::Overran(Overrun::Cpu) => return Err(cpu_limit()),
        Ended::Overran(Overrun::Memory) => return Err(memory_limit()),
        Ended::Trapped(error) => error,
    };
    if error.downcast_ref::<CpuLimitExceeded>().is_some() {
        return Err(cpu_limit());
    }
    if error
        .downcast_ref::<super::state::HostMemoryExceeded>()
        .is_some()
        || state.memory.exceeded.is_some()
    {
        return Err(memory_limit());
    }
    if let Some(exceeded) = error.downcast_ref::<ResourceLimitExceeded>() {
        return Err(CallError::ResourceLimit {
            plugin,
            resource: exceeded.resource.to_owned(),
            limit: exceeded.limit,
        });
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        error.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return Err(CallError::ResourceLimit {
            plugin,
            resource: "live host resources (open files, streams, sockets, HTTP fields) \
                       at once; raise limits.max_resources if this is legitimate"
                .to_owned(),
            limit: limits.max_resources as u64,
        });
    }
    let reason = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "stack overflow (unbounded recursion?)".to_owned(),
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "it panicked or aborted (wasm `unreachable`)".to_owned()
        }
        Some(wasmtime::Trap::OutOfFuel) | Some(wasmtime::Trap::Interrupt) => {
            "it was interrupted".to_owned()
        }
        Some(wasmtime::Trap::MemoryOutOfBounds) => "out of bounds memory access (often the \
             guest's own stack in linear memory overflowing: unbounded recursion?)"
            .to_owned(),
        Some(trap) => format!("trap: {trap}"),
        None => format!("{error:#}"),
    };
    let (stderr, _) = state.stdio[1].peek();
    Err(CallError::Trap {
        plugin,
        reason: super::boundary::escape_text(&reason, 2000),
        stderr: super::boundary::escape_text(&stderr, 2000),
    })
}
