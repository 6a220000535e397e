//! `GET /metrics`: per-tenant counters in the Prometheus text format
//! (runs, tokens, cost, tool calls, denials, budget events), fed by the
//! events of the runs the service drives.

use crate::agent::RunEvent;
use crate::tenancy::ids::TenantId;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// One tenant's counters.
#[derive(Default)]
pub struct TenantMetrics {
    runs_started: AtomicU64,
    runs_completed: AtomicU64,
    runs_interrupted: AtomicU64,
    runs_failed: AtomicU64,
    runs_cancelled: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    /// Cost in nano-USD, so it adds up exactly.
    cost_nano_usd: AtomicU64,
    tool_calls: AtomicU64,
    denials: AtomicU64,
    budget_warnings: AtomicU64,
    budget_exceeded: AtomicU64,
    chat_completions: AtomicU64,
}

impl TenantMetrics {
    /// Count a run started.
    pub fn run_started(&self) {
        self.runs_started.fetch_add(1, Relaxed);
    }

    /// Count a run cancelled.
    pub fn run_cancelled(&self) {
        self.runs_cancelled.fetch_add(1, Relaxed);
    }

    /// Count a `/v1/chat/completions` request.
    pub fn chat_completion(&self) {
        self.chat_completions.fetch_add(1, Relaxed);
    }

    /// Count a tool call made outside a run (`POST /v1/tools/{name}/call`),
    /// and its denial.
    pub fn tool_called(&self, denied: bool) {
        self.tool_calls.fetch_add(1, Relaxed);
        if denied {
            self.denials.fetch_add(1, Relaxed);
        }
    }

    /// Count what `event` says happened.
    pub fn observe(&self, event: &RunEvent) {
        match event {
            RunEvent::ToolCall { .. } => {
                self.tool_calls.fetch_add(1, Relaxed);
            }
            RunEvent::Permission { decision, .. } if decision == "deny" => {
                self.denials.fetch_add(1, Relaxed);
            }
            RunEvent::BudgetWarning { .. } => {
                self.budget_warnings.fetch_add(1, Relaxed);
            }
            RunEvent::BudgetExceeded { .. } => {
                self.budget_exceeded.fetch_add(1, Relaxed);
            }
            RunEvent::Completed { result } => {
                if result.interrupted {
                    self.runs_interrupted.fetch_add(1, Relaxed);
                } else {
                    self.runs_completed.fetch_add(1, Relaxed);
                }
                self.input_tokens
                    .fetch_add(result.usage.input_tokens, Relaxed);
                self.output_tokens
                    .fetch_add(result.usage.output_tokens, Relaxed);
                let nano = (result.cost_usd.max(0.0) * 1e9).round() as u64;
                self.cost_nano_usd.fetch_add(nano, Relaxed);
            }
            RunEvent::Error { .. } => {
                self.runs_failed.fetch_add(1, Relaxed);
            }
            // A sub-agent's tool calls and denials count for the tenant;
            // its completion is part of its parent's usage.
            RunEvent::SubAgent { event, .. }
                if !matches!(**event, RunEvent::Completed { .. } | RunEvent::Error { .. }) =>
            {
                self.observe(event);
            }
            _ => {}
        }
    }
}

/// Every tenant's counters.
#[derive(Default)]
pub struct Metrics {
    tenants: RwLock<BTreeMap<TenantId, Arc<TenantMetrics>>>,
    auth_failures: AtomicU64,
}

impl Metrics {
    /// The counters of `tenant`.
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantMetrics> {
        if let Some(found) = crate::sync::read(&self.tenants).get(tenant) {
            return found.clone();
        }
        crate::sync::write(&self.tenants)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    /// Count a failed authentication.
    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Relaxed);
    }

    /// The Prometheus text of `only` (a tenant's own view), or of every
    /// tenant (the operator's), with `in_flight` runs per tenant.
    pub fn render(&self, only: Option<&TenantId>, in_flight: &BTreeMap<TenantId, u64>) -> String {
        let tenants = crate::sync::read(&self.tenants);
        let shown: Vec<(&TenantId, &Arc<TenantMetrics>)> = tenants
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
            .collect();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let per = |f: &dyn Fn(&TenantMetrics) -> u64| -> Vec<(String, String)> {
            shown
                .iter()
                .map(|(id, m)| {
                    (
                        format!("tenant=\"{}\"", label(id.as_str())),
                        f(m).to_string(),
                    )
                })
                .collect()
        };
        let mut finished = Vec::new();
        for (id, m) in &shown {
            for (status, counter) in [
                ("completed", &m.runs_completed),
                ("interrupted", &m.runs_interrupted),
                ("failed", &m.runs_failed),
                ("cancelled", &m.runs_cancelled),
            ] {
                finished.push((
                    format!("tenant=\"{}\",status=\"{status}\"", label(id.as_str())),
                    counter.load(Relaxed).to_string(),
                ));
            }
        }
        let mut tokens = Vec::new();
        for (id, m) in &shown {
            for (kind, counter) in [("input", &m.input_tokens), ("output", &m.output_tokens)] {
                tokens.push((
                    format!("tenant=\"{}\",kind=\"{kind}\"", label(id.as_str())),
                    counter.load(Relaxed).to_string(),
                ));
            }
        }
        let mut budget = Vec::new();
        for (id, m) in &shown {
            for (kind, counter) in [
                ("warning", &m.budget_warnings),
                ("exceeded", &m.budget_exceeded),
            ] {
                budget.push((
                    format!("tenant=\"{}\",kind=\"{kind}\"", label(id.as_str())),
                    counter.load(Relaxed).to_string(),
                ));
            }
        }
        let flying: Vec<(String, String)> = shown
            .iter()
            .map(|(id, _)| {
                (
                    format!("tenant=\"{}\"", label(id.as_str())),
                    in_flight.get(*id).copied().unwrap_or(0).to_string(),
                )
            })
            .collect();
        family(
            "loom_runs_started_total",
            "counter",
            "Runs started.",
            per(&|m| m.runs_started.load(Relaxed)),
        );
        family(
            "loom_runs_finished_total",
            "counter",
            "Runs finished, by how they ended.",
            finished,
        );
        family("loom_runs_in_flight", "gauge", "Runs in flight.", flying);
        family("loom_tokens_total", "counter", "Model tokens used.", tokens);
        let cost: Vec<(String, String)> = shown
            .iter()
            .map(|(id, m)| {
                (
                    format!("tenant=\"{}\"", label(id.as_str())),
                    format!("{:.9}", m.cost_nano_usd.load(Relaxed) as f64 / 1e9),
                )
            })
            .collect();
        family("loom_cost_usd_total", "counter", "Model cost in USD.", cost);
        family(
            "loom_tool_calls_total",
            "counter",
            "Tool calls made by runs and over the API (/v1/tools/{name}/call).",
            per(&|m| m.tool_calls.load(Relaxed)),
        );
        family(
            "loom_denials_total",
            "counter",
            "Tool calls denied by the permission chain.",
            per(&|m| m.denials.load(Relaxed)),
        );
        family(
            "loom_budget_events_total",
            "counter",
            "Budget warnings and budgets exceeded.",
            budget,
        );
        family(
            "loom_chat_completions_total",
            "counter",
            "Requests to /v1/chat/completions.",
            per(&|m| m.chat_completions.load(Relaxed)),
        );
        if only.is_none() {
            let _ = writeln!(
                out,
                "# HELP loom_auth_failures_total Failed authentications.\n# TYPE \
                 loom_auth_failures_total counter\nloom_auth_failures_total {}",
                self.auth_failures.load(Relaxed)
            );
        }
        out
    }
}

/// A label value escaped for the text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
