//! What one call costs the host: CPU time and host memory, measured per poll
//! of the call's future and charged to the call that caused them.
//!
//! A sandboxed call is one future (instantiate, then call the export). Every
//! `poll` of it runs on one thread from start to end, so the time the poll
//! took and the thread's allocator counter
//! ([`crate::allocator::thread_net_bytes`]) read before and after it say what
//! the poll cost: guest code and any synchronous work host functions did for
//! it (random bytes, HTTP fields, JSON, table entries). Time the call spends
//! waiting between polls (I/O, a model's answer) costs nothing.
//!
//! The time of a poll is read from the monotonic clock, not the thread's CPU
//! clock: on virtual machines the CPU clock is a system call (about 0.8 µs
//! here, against 36 ns), which would double the cost of a small tool call. The
//! difference is time the OS took the thread away in the middle of a poll,
//! which a loaded host charges to the call that held the thread: the call
//! held a worker all the same.
//!
//! Calls nest: an architecture's poll can run a tool call inline. A
//! thread-local "charged by inner calls" counter lets the outer call subtract
//! what the inner call was already charged.
//!
//! The meter is shared by the [`Metered`] future wrapper, which checks the
//! budgets after each poll, and the store's epoch callback, which checks them
//! every tick while guest code runs.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

thread_local! {
    /// Nanoseconds charged on this thread by calls that completed a poll.
    static CHARGED_CPU: Cell<u64> = const { Cell::new(0) };
    /// Host bytes charged on this thread by calls that completed a poll.
    static CHARGED_BYTES: Cell<i64> = const { Cell::new(0) };
}

/// Monotonic nanoseconds since the first reading in this process.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Which budget a call broke outside guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// CPU time (guest code and the host work it caused).
    Cpu,
    /// Linear memory plus host memory held for the guest.
    Memory,
}

/// The costs of one call so far.
#[derive(Debug)]
pub struct CallMeter {
    cpu_limit_ns: u64,
    memory_limit: usize,
    /// Whether host allocations are counted (the process uses Loom's allocator).
    count_bytes: bool,
    cpu_ns: AtomicU64,
    host_bytes: AtomicI64,
    /// Linear memory and tables of the instance, kept by the store's limiter.
    guest_bytes: AtomicU64,
    /// Readings at the start of the poll under way (valid while `polling`).
    poll_cpu: AtomicU64,
    poll_charged_cpu: AtomicU64,
    poll_bytes: AtomicI64,
    poll_charged_bytes: AtomicI64,
    polling: AtomicBool,
}

impl CallMeter {
    /// A meter for a call with these budgets.
    pub fn new(cpu_limit: std::time::Duration, memory_limit: usize) -> Self {
        Self::with_host_memory(cpu_limit, memory_limit, true)
    }

    /// A meter that counts host memory only when `count_host_memory` (and
    /// the process uses Loom's allocator). An architecture's polls include
    /// the agent layer's own work (model calls, events handed to listeners
    /// on other threads), which its own caps bound; counting it would charge
    /// the guest for memory freed elsewhere.
    pub fn with_host_memory(
        cpu_limit: std::time::Duration,
        memory_limit: usize,
        count_host_memory: bool,
    ) -> Self {
        CallMeter {
            cpu_limit_ns: u64::try_from(cpu_limit.as_nanos()).unwrap_or(u64::MAX),
            memory_limit,
            count_bytes: count_host_memory && crate::allocator::is_active(),
            cpu_ns: AtomicU64::new(0),
            host_bytes: AtomicI64::new(0),
            guest_bytes: AtomicU64::new(0),
            poll_cpu: AtomicU64::new(0),
            poll_charged_cpu: AtomicU64::new(0),
            poll_bytes: AtomicI64::new(0),
            poll_charged_bytes: AtomicI64::new(0),
            polling: AtomicBool::new(false),
        }
    }

    fn begin_poll(&self) {
        self.poll_cpu.store(now_ns(), Ordering::Relaxed);
        self.poll_charged_cpu
            .store(CHARGED_CPU.with(Cell::get), Ordering::Relaxed);
        self.poll_bytes
            .store(crate::allocator::thread_net_bytes(), Ordering::Relaxed);
        self.poll_charged_bytes
            .store(CHARGED_BYTES.with(Cell::get), Ordering::Relaxed);
        self.polling.store(true, Ordering::Relaxed);
    }

    /// What the poll under way has cost this call so far: (CPU ns, bytes).
    /// Must be called on the polling thread.
    fn in_poll(&self) -> (u64, i64) {
        if !self.polling.load(Ordering::Relaxed) {
            return (0, 0);
        }
        let cpu = now_ns().saturating_sub(self.poll_cpu.load(Ordering::Relaxed));
        let inner_cpu = CHARGED_CPU
            .with(Cell::get)
            .saturating_sub(self.poll_charged_cpu.load(Ordering::Relaxed));
        let bytes = crate::allocator::thread_net_bytes()
            .wrapping_sub(self.poll_bytes.load(Ordering::Relaxed));
        let inner_bytes = CHARGED_BYTES
            .with(Cell::get)
            .wrapping_sub(self.poll_charged_bytes.load(Ordering::Relaxed));
        (
            cpu.saturating_sub(inner_cpu),
            bytes.wrapping_sub(inner_bytes),
        )
    }

    fn end_poll(&self) {
        let (cpu, bytes) = self.in_poll();
        self.polling.store(false, Ordering::Relaxed);
        self.cpu_ns.fetch_add(cpu, Ordering::Relaxed);
        if self.count_bytes {
            // Never below zero: memory freed in a poll that was allocated
            // elsewhere (a read buffer filled on the blocking pool) must not
            // become credit for later allocations.
            let total = self
                .host_bytes
                .load(Ordering::Relaxed)
                .saturating_add(bytes);
            self.host_bytes.store(total.max(0), Ordering::Relaxed);
        }
        // Everything this poll cost, inner calls included, is now charged:
        // an enclosing call must not count it again.
        let start_cpu = self.poll_charged_cpu.load(Ordering::Relaxed);
        let start_bytes = self.poll_charged_bytes.load(Ordering::Relaxed);
        let inner_cpu = CHARGED_CPU.with(Cell::get).saturating_sub(start_cpu);
        let inner_bytes = CHARGED_BYTES.with(Cell::get).wrapping_sub(start_bytes);
        CHARGED_CPU.with(|c| c.set(start_cpu + inner_cpu + cpu));
        CHARGED_BYTES.with(|c| c.set(start_bytes.wrapping_add(inner_bytes).wrapping_add(bytes)));
    }

    /// CPU time charged so far, including the poll under way.
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed) + self.in_poll().0
    }

    /// Host bytes held for the guest so far (never negative).
    pub fn host_bytes(&self) -> usize {
        if !self.count_bytes {
            return 0;
        }
        self.host_bytes_with(self.in_poll().1)
    }

    /// Host bytes with `in_poll` bytes of the poll under way added.
    fn host_bytes_with(&self, in_poll: i64) -> usize {
        if !self.count_bytes {
            return 0;
        }
        usize::try_from(self.host_bytes.load(Ordering::Relaxed) + in_poll).unwrap_or(0)
    }

    /// Record the instance's linear memory and tables (from the limiter).
    pub(crate) fn set_guest_bytes(&self, bytes: usize) {
        self.guest_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// Linear memory plus host memory, the total the memory budget covers.
    pub(crate) fn memory_bytes(&self) -> usize {
        (self.guest_bytes.load(Ordering::Relaxed) as usize).saturating_add(self.host_bytes())
    }

    /// The memory budget.
    pub(crate) fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// The first budget this call has broken, if any.
    pub fn overrun(&self) -> Option<Overrun> {
        // One reading of the poll under way serves both budgets.
        let (cpu, bytes) = self.in_poll();
        let memory = (self.guest_bytes.load(Ordering::Relaxed) as usize)
            .saturating_add(self.host_bytes_with(bytes));
        if self.cpu_ns.load(Ordering::Relaxed) + cpu > self.cpu_limit_ns {
            Some(Overrun::Cpu)
        } else if memory > self.memory_limit {
            Some(Overrun::Memory)
        } else {
            None
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's future, charged per poll and stopped at the first poll
    /// after which a budget is broken.
    pub struct Metered<'m, F> {
        #[pin]
        inner: F,
        meter: &'m CallMeter,
    }
}

impl<'m, F> Metered<'m, F> {
    /// Charge every poll of `inner` to `meter`.
    pub fn new(inner: F, meter: &'m CallMeter) -> Self {
        Metered { inner, meter }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = Result<F::Output, Overrun>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.meter.begin_poll();
        let polled = this.inner.poll(cx);
        this.meter.end_poll();
        match polled {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending => match this.meter.overrun() {
                Some(overrun) => Poll::Ready(Err(overrun)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn burn(ms: u64) {
        let start = now_ns();
        while now_ns() - start < ms * 1_000_000 {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_poll_is_charged_its_cpu_time() {
        let meter = CallMeter::new(Duration::from_secs(10), usize::MAX);
        meter.begin_poll();
        burn(20);
        meter.end_poll();
        let used = meter.cpu_ns();
        assert!(used >= 20_000_000, "{used}");
        assert!(used < 2_000_000_000, "{used}");
    }

    #[test]
    fn inner_calls_are_not_charged_twice() {
        let outer = CallMeter::new(Duration::from_secs(10), usize::MAX);
        let inner = CallMeter::new(Duration::from_secs(10), usize::MAX);
        outer.begin_poll();
        burn(10);
        inner.begin_poll();
        burn(30);
        inner.end_poll();
        outer.end_poll();
        let (o, i) = (outer.cpu_ns(), inner.cpu_ns());
        assert!(i >= 30_000_000, "inner {i}");
        assert!((10_000_000..30_000_000).contains(&o), "outer {o}");
    }

    #[test]
    fn waiting_between_polls_costs_nothing() {
        let meter = CallMeter::new(Duration::from_millis(5), usize::MAX);
        meter.begin_poll();
        meter.end_poll();
        std::thread::sleep(Duration::from_millis(30));
        meter.begin_poll();
        meter.end_poll();
        assert_eq!(meter.overrun(), None, "{}", meter.cpu_ns());
    }

    #[test]
    fn blocking_inside_a_poll_is_charged() {
        let meter = CallMeter::new(Duration::from_millis(5), usize::MAX);
        meter.begin_poll();
        std::thread::sleep(Duration::from_millis(30));
        meter.end_poll();
        assert_eq!(meter.overrun(), Some(Overrun::Cpu));
    }
}
