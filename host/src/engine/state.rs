//! What a `Store` carries during one call: the WASI context built from the
//! plugin's effective grants, the memory budget, the CPU meter, the run
//! context, and bounded log capture.

use super::bindings::{context, types};
use super::egress::EgressHooks;
use super::harness::Harness;
use crate::tenancy::ids::Scope;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Store data of one call.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: EgressHooks,
    pub(crate) memory: MemoryBudget,
    pub(crate) cpu: CpuMeter,
    pub(crate) scope: Arc<Scope>,
    pub(crate) plugin: Arc<str>,
    pub(crate) logs: LogCapture,
    pub(crate) harness: Option<Arc<dyn Harness>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for HostState {}

impl context::Host for HostState {
    async fn current(&mut self) -> types::RunContext {
        let scope = &self.scope;
        types::RunContext {
            tenant: scope.tenant.to_string(),
            user_id: scope.user.name().map(str::to_owned),
            session_id: scope.session.as_ref().map(|s| s.to_string()),
            run_id: Some(scope.run.to_string()),
            metadata: scope.metadata.clone(),
        }
    }

    async fn log(&mut self, level: context::LogLevel, message: String) {
        let level = match level {
            context::LogLevel::Trace => LogLevel::Trace,
            context::LogLevel::Debug => LogLevel::Debug,
            context::LogLevel::Info => LogLevel::Info,
            context::LogLevel::Warn => LogLevel::Warn,
            context::LogLevel::Error => LogLevel::Error,
        };
        self.logs.push(&self.plugin, &self.scope, level, message);
    }
}

/// Severity of a captured log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Handled problems.
    Warn,
    /// Failures.
    Error,
    /// Text the guest wrote to stdout.
    Stdout,
    /// Text the guest wrote to stderr.
    Stderr,
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// Log lines of one call, capped in total bytes.
pub(crate) struct LogCapture {
    pub(crate) lines: Vec<LogLine>,
    used: usize,
    max: usize,
    pub(crate) truncated: bool,
}

impl LogCapture {
    pub(crate) fn new(max: usize) -> Self {
        LogCapture {
            lines: Vec::new(),
            used: 0,
            max,
            truncated: false,
        }
    }

    pub(crate) fn push(
        &mut self,
        plugin: &str,
        scope: &Scope,
        level: LogLevel,
        mut message: String,
    ) {
        if self.truncated {
            return;
        }
        let room = self.max.saturating_sub(self.used);
        if message.len() > room {
            let mut cut = room;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            self.truncated = true;
        }
        self.used += message.len();
        match level {
            LogLevel::Error => {
                tracing::error!(target: "loom::plugin", plugin, tenant = %scope.tenant, user = %scope.user, run = %scope.run, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "loom::plugin", plugin, tenant = %scope.tenant, user = %scope.user, run = %scope.run, "{message}")
            }
            LogLevel::Info | LogLevel::Stdout | LogLevel::Stderr => {
                tracing::info!(target: "loom::plugin", plugin, tenant = %scope.tenant, user = %scope.user, run = %scope.run, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "loom::plugin", plugin, tenant = %scope.tenant, user = %scope.user, run = %scope.run, "{message}")
            }
            LogLevel::Trace => {
                tracing::trace!(target: "loom::plugin", plugin, tenant = %scope.tenant, user = %scope.user, run = %scope.run, "{message}")
            }
        }
        if !message.is_empty() {
            self.lines.push(LogLine { level, message });
        }
        if self.truncated {
            tracing::warn!(target: "loom::plugin", plugin, tenant = %scope.tenant, "log volume cap of {} bytes reached; further lines of this call dropped", self.max);
        }
    }
}

/// One memory budget across every memory and table of an instance.
pub(crate) struct MemoryBudget {
    pub(crate) limit: usize,
    pub(crate) used: usize,
    /// The total an instance asked for when it hit the limit.
    pub(crate) exceeded: Option<usize>,
}

impl MemoryBudget {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            self.exceeded = Some(total);
            false
        } else {
            self.used = total;
            true
        }
    }
}

/// Bytes per table element, as the limiter counts them.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

impl wasmtime::ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// CPU time of one call, counted in epoch ticks spent executing guest code.
pub(crate) struct CpuMeter {
    pub(crate) ticks: u64,
    pub(crate) max_ticks: u64,
}

/// The error a call traps with when it spends its CPU budget.
#[derive(Debug)]
pub(crate) struct CpuLimitExceeded;

impl std::fmt::Display for CpuLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU time limit exceeded")
    }
}

impl std::error::Error for CpuLimitExceeded {}

/// An in-memory stdout/stderr that keeps at most `capacity` bytes and
/// silently drops the rest, so a chatty guest is cut rather than killed.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    inner: Arc<Mutex<(Vec<u8>, bool)>>,
    capacity: usize,
}

impl CappedPipe {
    pub(crate) fn new(capacity: usize) -> Self {
        CappedPipe {
            inner: Arc::new(Mutex::new((Vec::new(), false))),
            capacity,
        }
    }

    /// The captured text and whether anything was dropped.
    pub(crate) fn take(&self) -> (String, bool) {
        match self.inner.lock() {
            Ok(mut guard) => {
                let (bytes, truncated) = std::mem::take(&mut *guard);
                (String::from_utf8_lossy(&bytes).into_owned(), truncated)
            }
            Err(_) => (String::new(), false),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut guard) = self.inner.lock() {
            let room = self.capacity.saturating_sub(guard.0.len());
            let take = room.min(buf.len());
            guard.0.extend_from_slice(&buf[..take]);
            if take < buf.len() {
                guard.1 = true;
            }
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
