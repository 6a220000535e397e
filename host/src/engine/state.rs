//! What a `Store` carries during one call: the WASI context built from the
//! plugin's effective grants, the memory budget, the call's meter, the run
//! context, and bounded, escaped log capture.

use super::accounting::CallMeter;
use super::egress::EgressHooks;
use super::guards::FsGuard;
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
    pub(crate) meter: Arc<CallMeter>,
    pub(crate) fs: FsGuard,
    pub(crate) scope: Arc<Scope>,
    pub(crate) plugin: Arc<str>,
    pub(crate) logs: LogCapture,
    /// The guest's stdout and stderr.
    pub(crate) stdio: [CappedPipe; 2],
    pub(crate) harness: Option<Arc<dyn Harness>>,
    /// The call's key-value transaction, for memory components.
    pub(crate) kv: Option<crate::store::kv::KvTransaction>,
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

    pub(crate) fn push(&mut self, plugin: &str, scope: &Scope, level: LogLevel, message: String) {
        if self.truncated {
            return;
        }
        // Guest text is data: newlines and control sequences are escaped so
        // it can neither forge a host log line nor drive the terminal.
        let mut message = super::boundary::escape_text(&message, usize::MAX);
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

/// One memory budget across every memory and table of an instance and the
/// host memory held for it (from the call's meter).
pub(crate) struct MemoryBudget {
    meter: Arc<CallMeter>,
    used: usize,
    /// The total an instance asked for when it hit the limit.
    pub(crate) exceeded: Option<usize>,
}

impl MemoryBudget {
    pub(crate) fn new(meter: Arc<CallMeter>) -> Self {
        MemoryBudget {
            meter,
            used: 0,
            exceeded: None,
        }
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let linear = self.used - current.min(self.used) + desired;
        let total = linear.saturating_add(self.meter.host_bytes());
        if total > self.meter.memory_limit() {
            self.exceeded = Some(total);
            false
        } else {
            self.used = linear;
            self.meter.set_guest_bytes(linear);
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

/// The error a call traps with when it spends its CPU budget.
#[derive(Debug)]
pub(crate) struct CpuLimitExceeded;

impl std::fmt::Display for CpuLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU time limit exceeded")
    }
}

impl std::error::Error for CpuLimitExceeded {}

/// The error a call traps with when linear memory plus the host memory held
/// for it pass its memory budget.
#[derive(Debug)]
pub(crate) struct HostMemoryExceeded;

impl std::fmt::Display for HostMemoryExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit exceeded (guest and host memory together)")
    }
}

impl std::error::Error for HostMemoryExceeded {}

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

    /// The captured text so far and whether anything was dropped, leaving it
    /// in place.
    pub(crate) fn peek(&self) -> (String, bool) {
        let guard = crate::sync::lock(&self.inner);
        (String::from_utf8_lossy(&guard.0).into_owned(), guard.1)
    }

    /// The captured text and whether anything was dropped.
    pub(crate) fn take(&self) -> (String, bool) {
        let (bytes, truncated) = std::mem::take(&mut *crate::sync::lock(&self.inner));
        (String::from_utf8_lossy(&bytes).into_owned(), truncated)
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
        let mut guard = crate::sync::lock(&self.inner);
        let room = self.capacity.saturating_sub(guard.0.len());
        let take = room.min(buf.len());
        guard.0.extend_from_slice(&buf[..take]);
        if take < buf.len() {
            guard.1 = true;
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
