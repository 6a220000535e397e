//! Creating the shared engine: wasmtime configuration, the instance pool,
//! the linker with every host import, and the epoch ticker.

use super::cache::CompileCache;
use super::error::EngineError;
use super::state::HostState;
use super::{bindings, guards};
use crate::config::{EngineConfig, PoolingMode};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};

/// The shared engine: compiles, caches and runs components for every tenant.
pub struct SandboxEngine {
    pub(super) engine: wasmtime::Engine,
    pub(super) linker: Linker<HostState>,
    cache: CompileCache,
    pooling: bool,
    _ticker: EpochTicker,
}

/// Increments the engine's epoch on a dedicated OS thread, so a busy guest
/// cannot starve it (a tokio task could be).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Start the ticker thread. Without it CPU limits would never fire, so
    /// failing to start it is an error, not a warning.
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loom-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| EngineError::Ticker(e.to_string()))?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .max_wasm_stack(512 << 10)
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

fn pooling_config(engine: &EngineConfig) -> wasmtime::PoolingAllocationConfig {
    let n = engine.max_instances;
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size((engine.max_memory_mib as usize) << 20)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_unused_warm_slots(n.min(100))
        // Reset small tables with memset rather than madvise: cheaper than a
        // syscall and the TLB shootdown it causes on every other core.
        .table_keep_resident(64 << 10)
        // Decommit freed memories in batches to amortise the madvise calls.
        .decommit_batch_size(16)
        // Reset only the pages an instance dirtied (PAGEMAP_SCAN, Linux
        // 6.7+; ignored elsewhere) and keep them resident and writable, so
        // the next instance in the slot takes no copy-on-write faults —
        // each of which costs a TLB shootdown on every other core.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident((engine.memory_keep_resident_kib as usize) << 10);
    pool
}

impl SandboxEngine {
    /// Create the engine, its epoch ticker and its compile cache in `cache_dir`.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when wasmtime rejects the configuration, pooling is
    /// required but unavailable, or the cache directory is unusable.
    pub fn new(config: &EngineConfig, cache_dir: &Path) -> Result<Self, EngineError> {
        let tick = Duration::from_millis(config.epoch_tick_ms);
        let (engine, pooling) = match config.pooling {
            PoolingMode::Off => (Self::on_demand()?, false),
            mode => {
                let mut wasm = base_config();
                wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                    pooling_config(config),
                ));
                match wasmtime::Engine::new(&wasm) {
                    Ok(engine) => (engine, true),
                    Err(error) if mode == PoolingMode::Auto => {
                        tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                        (Self::on_demand()?, false)
                    }
                    Err(error) => return Err(EngineError::PoolingUnavailable(error.to_string())),
                }
            }
        };
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        bindings::host_world::Host_::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| {
            state
        })
        .map_err(|e| EngineError::Link(e.to_string()))?;
        guards::add_to_linker(&mut linker).map_err(|e| EngineError::Link(format!("{e:#}")))?;
        let cache = CompileCache::open(cache_dir, &engine)?;
        let ticker = EpochTicker::start(engine.clone(), tick)?;
        Ok(SandboxEngine {
            engine,
            linker,
            cache,
            pooling,
            _ticker: ticker,
        })
    }

    fn on_demand() -> Result<wasmtime::Engine, EngineError> {
        wasmtime::Engine::new(&base_config()).map_err(|e| EngineError::Create(e.to_string()))
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The compile cache.
    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }
}
