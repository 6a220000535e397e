//! The governor of one run: budgets, rate limits, the permission chain,
//! approvals and audit entries for everything the import gate lets through.
//!
//! The gate asks the governor before every model call, tool call and
//! delegation, and tells it what each cost afterwards. Budgets are reserved
//! before and settled after; a reached cap stops the run (the architecture
//! gets `budget-exceeded`, the result is interrupted with `budget:<key>`).
//! A tool call passes the chain: deny lists, mode, policy components in
//! order, approval. Sub-agents share their parent's spending, stop flag and
//! remembered approvals.

use super::AgentInner;
use super::events::RunEvent;
use crate::engine::PolicyAnswer;
use crate::engine::bindings::harness as wit;
use crate::engine::bindings::types as wt;
use crate::governance::approval::{self, ApprovalDecision, ApprovalRequest, Approver};
use crate::governance::audit::{Data, Field};
use crate::governance::budget::{Amounts, Exceeded, Metric, Reservation, RunBudget, Warning};
use crate::governance::permissions::{Decider, EffectiveRules, ToolTraits, Verdict};
use crate::governance::ratelimit::{RateKind, RateLimited, Rates};
use crate::governance::{Governance, PolicyRef, TenantGovernance};
use crate::host::Host;
use crate::model::Usage;
use crate::sync::lock;
use crate::tenancy::ids::Scope;
use serde_json::json;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tool call the chain let through, with its budget reservation.
pub(crate) struct Admitted {
    /// The call as it will run (the approver may have edited it).
    pub(crate) call: wt::ToolCall,
    reservation: Reservation,
    decided_by: Decider,
    destructive: bool,
    /// When the chain let it through (the start of its `loom.tool.duration`).
    admitted_at: std::time::Instant,
}

/// What a run and its sub-agents share.
#[derive(Default)]
pub(crate) struct TreeState {
    /// Why the tree was stopped, once it is.
    stopped: Mutex<Option<String>>,
    /// Approvals remembered for the rest of the run: (tool, who asked) →
    /// allowed; a denial is kept under (tool, "") and covers every asker.
    remembered: Mutex<HashMap<(String, String), bool>>,
}

/// Everything a run's governor needs that its sub-agents inherit.
#[derive(Clone)]
pub(crate) struct Inherited {
    pub(crate) budget: RunBudget,
    pub(crate) tree: Arc<TreeState>,
}

/// The governor of one run.
pub(crate) struct Governor {
    host: Arc<Host>,
    scope: Arc<Scope>,
    settings: Arc<TenantGovernance>,
    rules: EffectiveRules,
    user_rates: Rates,
    budget: RunBudget,
    tree: Arc<TreeState>,
    approver: Option<Arc<dyn Approver>>,
    events: Option<super::events::EventSink>,
    max_wait: Duration,
    model: String,
    prices: crate::model::pricing::PriceTable,
}

/// Output tokens reserved for a model call that names no cap of its own.
const DEFAULT_OUTPUT_RESERVE: u32 = 4096;

/// What the permission chain knows of a tool: its spec and whether it is
/// tagged as a file edit. Tools of components and the host's own tools
/// (memory blocks) are governed alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GovernedTool<'a> {
    /// The tool's spec.
    pub spec: &'a crate::engine::ToolSpec,
    /// Whether its plugin tags it as a file edit.
    pub file_edit: bool,
}

impl<'a> From<&'a crate::plugins::ToolBinding> for GovernedTool<'a> {
    fn from(binding: &'a crate::plugins::ToolBinding) -> Self {
        GovernedTool {
            spec: &binding.spec,
            file_edit: binding.file_edit,
        }
    }
}

/// A short digest of a tool's output for the audit log: the first 16
/// bytes of its SHA-256, in hex.
fn digest(text: &str) -> [u8; 32] {
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(&sha2::Sha256::digest(text.as_bytes())[..16], &mut hex);
    hex
}

impl Governor {
    /// The governor of `agent`'s run of `scope`; `inherited` for a sub-agent.
    pub(crate) fn new(
        agent: &AgentInner,
        scope: Arc<Scope>,
        settings: Arc<TenantGovernance>,
        events: Option<super::events::EventSink>,
        inherited: Option<Inherited>,
    ) -> Self {
        let host = agent.host.clone();
        let (budget, tree) = match inherited {
            Some(Inherited { budget, tree }) => (budget, tree),
            None => (
                RunBudget::new(scope.tenant.clone(), scope.user.clone(), &settings.budgets),
                Arc::new(TreeState::default()),
            ),
        };
        let approver = agent
            .approver
            .clone()
            .or_else(|| host.governance().webhook(&scope.tenant));
        Governor {
            rules: settings.rules_for(&scope.user),
            user_rates: settings.rates_for(&scope.user),
            host,
            scope,
            settings,
            budget,
            tree,
            approver,
            events,
            max_wait: agent.run_timeout,
            model: agent.model.id().to_owned(),
            prices: agent.prices.clone(),
        }
    }

    /// The governor of one tool call outside any run (the MCP server's):
    /// the tenant's rules, budgets and audit log as a run of `scope` would
    /// have them, with `approver` (else the tenant's webhook; else `ask`
    /// denies). The call is its own run for the per-run caps.
    pub(crate) fn standalone(
        host: Arc<Host>,
        scope: Arc<Scope>,
        settings: Arc<TenantGovernance>,
        approver: Option<Arc<dyn Approver>>,
    ) -> Self {
        let approver = approver.or_else(|| host.governance().webhook(&scope.tenant));
        Governor {
            rules: settings.rules_for(&scope.user),
            user_rates: settings.rates_for(&scope.user),
            budget: RunBudget::new(scope.tenant.clone(), scope.user.clone(), &settings.budgets),
            tree: Arc::new(TreeState::default()),
            host,
            scope,
            max_wait: settings.approval_timeout,
            settings,
            approver,
            events: None,
            model: String::new(),
            prices: crate::model::pricing::PriceTable::default(),
        }
    }

    /// What a sub-agent of this run inherits.
    pub(crate) fn inherit(&self) -> Inherited {
        Inherited {
            budget: self.budget.clone(),
            tree: self.tree.clone(),
        }
    }

    fn governance(&self) -> &Governance {
        self.host.governance()
    }

    fn send(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            events.send(event);
        }
    }

    fn audit(&self, action: &'static str, actor: &str, data: serde_json::Value) {
        self.governance().record(&self.scope, action, actor, data);
    }

    /// [`Self::audit`] from borrowed members, in key order (the entries
    /// every run writes take this way: no `serde_json::Value` is built).
    fn audit_members(
        &self,
        action: &'static str,
        actor: &str,
        members: &[(&'static str, Field<'_>)],
    ) {
        self.governance()
            .record_data(&self.scope, action, actor, Data::Members(members));
    }

    /// Whether audit entries are kept: the hot paths build none without.
    fn auditing(&self) -> bool {
        self.governance().audit().is_some()
    }

    /// Why the run was stopped, if it was.
    pub(crate) fn stopped(&self) -> Option<String> {
        lock(&self.tree.stopped).clone()
    }

    /// Stop the run tree for `reason`, once; `detail` goes to the event
    /// and the audit log.
    fn stop(&self, reason: String, detail: serde_json::Value) {
        let mut stopped = lock(&self.tree.stopped);
        if stopped.is_some() {
            return;
        }
        *stopped = Some(reason.clone());
        drop(stopped);
        let level = detail.get("level").and_then(|l| l.as_str()).unwrap_or("");
        crate::telemetry::metrics::budget_event(&self.scope, "exceeded", &reason, level);
        self.send(RunEvent::BudgetExceeded {
            reason: reason.clone(),
            detail: detail.to_string(),
        });
        self.audit(
            "budget_exceeded",
            "system",
            json!({"reason": reason, "detail": detail}),
        );
    }

    fn exceeded(&self, exceeded: &Exceeded) -> String {
        self.stop(
            exceeded.reason(),
            json!({
                "level": exceeded.level,
                "used": exceeded.used,
                "limit": exceeded.limit,
                "message": exceeded.to_string(),
            }),
        );
        exceeded.to_string()
    }

    fn rate_limited(&self, limited: &RateLimited) -> String {
        self.stop(
            format!("rate_limit:{}", limited.kind.key()),
            json!({
                "level": limited.level,
                "rate_per_minute": limited.rate,
                "retry_after_ms": limited.retry_after_ms,
            }),
        );
        limited.to_string()
    }

    fn warn(&self, warnings: Vec<Warning>) {
        for warning in warnings {
            let key = warning.cap.key();
            crate::telemetry::metrics::budget_event(
                &self.scope,
                "warning",
                &key,
                &warning.level.to_string(),
            );
            self.send(RunEvent::BudgetWarning {
                key: key.clone(),
                level: warning.level.to_string(),
                used: warning.used,
                limit: warning.limit,
            });
            self.audit(
                "budget_warning",
                "system",
                json!({"budget": key, "level": warning.level, "used": warning.used, "limit": warning.limit}),
            );
        }
    }

    /// Before a top-level run starts: its rate limit and `runs` budget.
    ///
    /// # Errors
    ///
    /// The rate limit that rejects (for an error) or the budget reason (for
    /// an interrupted run).
    pub(crate) async fn start_run(&self) -> Result<Option<String>, RateLimited> {
        self.host
            .governance()
            .rates()
            .acquire(
                &self.scope.tenant,
                &self.scope.user,
                RateKind::Runs,
                &self.settings.rates,
                &self.user_rates,
                self.max_wait,
            )
            .await?;
        match self
            .governance()
            .ledger()
            .reserve(&self.budget, Amounts::one(Metric::Runs))
        {
            Ok(reservation) => {
                let warnings = self
                    .governance()
                    .ledger()
                    .settle(reservation, Amounts::one(Metric::Runs));
                self.warn(warnings);
                Ok(None)
            }
            Err(exceeded) => {
                self.exceeded(&exceeded);
                Ok(self.stopped())
            }
        }
    }

    /// Before a model call: the rate limit, then the budget. The call's
    /// output-token cap is cut to what the token budgets leave.
    pub(crate) async fn before_model(
        &self,
        request: &mut wit::CompletionRequest,
    ) -> Result<Reservation, wit::HarnessError> {
        if let Some(reason) = self.stopped() {
            return Err(wit::HarnessError::BudgetExceeded(reason));
        }
        if let Err(limited) = self
            .governance()
            .rates()
            .acquire(
                &self.scope.tenant,
                &self.scope.user,
                RateKind::ModelCalls,
                &self.settings.rates,
                &self.user_rates,
                self.max_wait,
            )
            .await
        {
            return Err(wit::HarnessError::BudgetExceeded(
                self.rate_limited(&limited),
            ));
        }
        // Reserve an estimate so racing runs see it: four bytes a token in,
        // the call's own output cap (or a default) out, and their price.
        let bytes: usize = request
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.arguments.len())
                        .sum::<usize>()
            })
            .sum();
        let input = (bytes / 4) as u64;
        let output = request.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVE);
        let estimate = Usage {
            input_tokens: input,
            output_tokens: u64::from(output),
            ..Usage::default()
        };
        let cost = self
            .prices
            .price(&self.model)
            .map_or(0.0, |price| price.cost(&estimate));
        let mut want = Amounts::one(Metric::ModelCalls);
        want.set(Metric::InputTokens, input as f64)
            .set(Metric::OutputTokens, f64::from(output))
            .set(Metric::Tokens, input as f64 + f64::from(output))
            .set(Metric::CostUsd, cost);
        let reservation = self
            .governance()
            .ledger()
            .reserve(&self.budget, want)
            .map_err(|exceeded| wit::HarnessError::BudgetExceeded(self.exceeded(&exceeded)))?;
        // The model may produce only what the token caps have room for.
        let granted = reservation.amounts();
        let room = granted
            .get(Metric::OutputTokens)
            .min(granted.get(Metric::Tokens) - input as f64)
            .floor();
        if room < f64::from(output) {
            request.max_output_tokens = Some(room.max(1.0) as u32);
        }
        Ok(reservation)
    }

    /// A model call failed: it still counts as a model call.
    pub(crate) fn model_failed(&self, reservation: Reservation, error: &str) {
        let warnings = self
            .governance()
            .ledger()
            .settle(reservation, Amounts::one(Metric::ModelCalls));
        self.audit(
            "model_call",
            "model",
            json!({"model": self.model, "failed": error}),
        );
        self.warn(warnings);
    }

    /// After a model call: charge what it used.
    pub(crate) fn after_model(&self, reservation: Reservation, usage: &Usage, cost: f64) {
        let mut actual = Amounts::one(Metric::ModelCalls);
        actual
            .set(Metric::InputTokens, usage.input_tokens as f64)
            .set(Metric::OutputTokens, usage.output_tokens as f64)
            .set(Metric::CostUsd, cost);
        let warnings = self.governance().ledger().settle(reservation, actual);
        if self.auditing() {
            self.audit_members(
                "model_call",
                "model",
                &[
                    ("cached_tokens", Field::U64(usage.cached_tokens)),
                    ("cost_usd", Field::F64(cost)),
                    ("input_tokens", Field::U64(usage.input_tokens)),
                    ("model", Field::Str(&self.model)),
                    ("output_tokens", Field::U64(usage.output_tokens)),
                ],
            );
        }
        self.warn(warnings);
    }

    /// The ledger whose counters a journal entry of this run must not
    /// reach disk before: a crash then never leaves a recorded call
    /// unbilled, and a resume never bills it again. `None` when the run
    /// has no caps, or the store syncs on an interval (a crash may then
    /// lose that much spend, journaled or not).
    pub(crate) fn spend_barrier(&self) -> Option<crate::governance::budget::BudgetLedger> {
        (!self.budget.unlimited()
            && self.host.store().sync_mode() == crate::store::StoreSync::Always)
            .then(|| self.governance().ledger().clone())
    }

    /// Before a delegation: a stopped or exhausted run starts no sub-agent.
    pub(crate) fn before_delegate(&self) -> Result<(), wit::HarnessError> {
        if let Some(reason) = self.stopped() {
            return Err(wit::HarnessError::BudgetExceeded(reason));
        }
        self.governance()
            .ledger()
            .reserve(&self.budget, Amounts::default())
            .map(drop)
            .map_err(|exceeded| wit::HarnessError::BudgetExceeded(self.exceeded(&exceeded)))
    }

    /// The permission chain and the budget for one tool call: the call to
    /// run (its arguments perhaps edited by the approver) and its
    /// reservation, or why it is refused. Traced as a `permission` span
    /// recording the decision; a refusal marks the caller's span `denied`.
    pub(crate) async fn admit_tool(
        &self,
        call: wt::ToolCall,
        binding: GovernedTool<'_>,
    ) -> Result<Admitted, (wt::ToolCall, wt::ToolError)> {
        let span = crate::telemetry::spans::permission(&self.scope, &call.name, &call.id);
        let admitted = tracing::Instrument::instrument(self.decide_tool(call, binding), span).await;
        if admitted.is_err() {
            crate::telemetry::spans::record_error(&tracing::Span::current(), "denied");
        }
        admitted
    }

    /// [`Self::admit_tool`] without its span.
    async fn decide_tool(
        &self,
        mut call: wt::ToolCall,
        binding: GovernedTool<'_>,
    ) -> Result<Admitted, (wt::ToolCall, wt::ToolError)> {
        if let Some(reason) = self.stopped() {
            self.audit_denied(&call, binding, &Decider::Budget, &reason);
            return Err((call, wt::ToolError::Denied(reason)));
        }
        // A denial remembered for the rest of the run holds whatever the
        // chain would say now.
        if lock(&self.tree.remembered).get(&(call.name.clone(), String::new())) == Some(&false) {
            let reason = format!(
                "calls of `{}` were denied for the rest of this run",
                call.name
            );
            self.audit_denied(&call, binding, &Decider::Remembered, &reason);
            return Err((call, wt::ToolError::Denied(reason)));
        }
        let (verdict, decider) = self.permission(&call, binding).await;
        let outcome = match verdict {
            Verdict::Allow => Ok(decider),
            Verdict::Deny(reason) => Err((reason, decider)),
            Verdict::Ask(reason) => {
                let asked_by = decider.to_string();
                let original = call.arguments.clone();
                match self.approve(&mut call, binding, reason, asked_by).await {
                    // Edited arguments pass the deny lists and policies again.
                    Ok(by) if call.arguments != original => {
                        match self.permission(&call, binding).await {
                            (Verdict::Deny(reason), decider) => Err((
                                format!("the approver's edited arguments were refused: {reason}"),
                                decider,
                            )),
                            _ => Ok(by),
                        }
                    }
                    other => other,
                }
            }
        };
        let decided_by = match outcome {
            Ok(by) => by,
            Err((reason, by)) => {
                self.audit_denied(&call, binding, &by, &reason);
                self.send(RunEvent::Permission {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    decision: "deny".into(),
                    by: by.to_string(),
                    reason: reason.clone(),
                });
                return Err((call, wt::ToolError::Denied(reason)));
            }
        };
        match self
            .governance()
            .ledger()
            .reserve(&self.budget, Amounts::one(Metric::ToolCalls))
        {
            Ok(reservation) => {
                crate::telemetry::spans::record_decision(
                    &tracing::Span::current(),
                    "allow",
                    &decided_by.to_string(),
                );
                Ok(Admitted {
                    call,
                    reservation,
                    decided_by,
                    destructive: binding.spec.destructive,
                    admitted_at: std::time::Instant::now(),
                })
            }
            Err(exceeded) => {
                let message = self.exceeded(&exceeded);
                self.audit_denied(&call, binding, &Decider::Budget, &message);
                Err((call, wt::ToolError::Denied(message)))
            }
        }
    }

    /// One audit entry for a refused call: who refused it and why.
    fn audit_denied(
        &self,
        call: &wt::ToolCall,
        binding: GovernedTool<'_>,
        by: &Decider,
        reason: &str,
    ) {
        let by_name = by.to_string();
        crate::telemetry::spans::record_decision(&tracing::Span::current(), "deny", &by_name);
        crate::telemetry::metrics::denial(&self.scope, &call.name, &by_name);
        self.audit_tool_call(
            call,
            Some(binding.spec.destructive),
            false,
            &by.to_string(),
            Err(reason),
        );
    }

    /// The one audit entry of a tool call: what was called, whether it was
    /// allowed and by whom, and its result's digest or the error.
    fn audit_tool_call(
        &self,
        call: &wt::ToolCall,
        destructive: Option<bool>,
        allowed: bool,
        decided_by: &str,
        outcome: Result<&str, &str>,
    ) {
        if !self.auditing() {
            return;
        }
        let sha = outcome.ok().map(digest);
        // Hex digits are ASCII.
        let sha = sha.as_ref().and_then(|hex| std::str::from_utf8(hex).ok());
        self.audit_members(
            "tool_call",
            "model",
            &[
                ("arguments", Field::Str(&call.arguments)),
                ("call_id", Field::Str(&call.id)),
                ("decided_by", Field::Str(decided_by)),
                (
                    "decision",
                    Field::Str(if allowed { "allow" } else { "deny" }),
                ),
                (
                    "destructive",
                    destructive.map_or(Field::Absent, Field::Bool),
                ),
                ("error", outcome.err().map_or(Field::Absent, Field::Str)),
                ("ok", Field::Bool(outcome.is_ok())),
                (
                    "output_bytes",
                    outcome
                        .ok()
                        .map_or(Field::Absent, |o| Field::U64(o.len() as u64)),
                ),
                ("output_sha256", sha.map_or(Field::Absent, Field::Str)),
                ("tool", Field::Str(&call.name)),
            ],
        );
    }

    /// Deny lists and mode, then the policies in order. A policy may deny
    /// or ask; its `allow` never overrides an earlier `ask`.
    async fn permission(
        &self,
        call: &wt::ToolCall,
        binding: GovernedTool<'_>,
    ) -> (Verdict, Decider) {
        let (mut verdict, mut decider) = self.rules.decide(ToolTraits {
            name: &call.name,
            destructive: binding.spec.destructive,
            file_edit: binding.file_edit,
        });
        if matches!(verdict, Verdict::Deny(_)) || self.settings.policies.is_empty() {
            return (verdict, decider);
        }
        let spec = wt::ToolSpec {
            name: binding.spec.name.clone(),
            description: binding.spec.description.clone(),
            parameters: binding.spec.parameters.to_string(),
            destructive: binding.spec.destructive,
            idempotent: binding.spec.idempotent,
        };
        for policy in &self.settings.policies {
            match self.ask_policy(policy, call, &spec).await {
                PolicyAnswer::Allow => {}
                PolicyAnswer::Deny(reason) => {
                    return (
                        Verdict::Deny(format!(
                            "policy `{}` denied the call: {reason}",
                            policy.plugin
                        )),
                        Decider::Policy(policy.plugin.clone()),
                    );
                }
                PolicyAnswer::Ask(reason) => {
                    if !matches!(verdict, Verdict::Ask(_)) {
                        verdict =
                            Verdict::Ask(format!("policy `{}` asks: {reason}", policy.plugin));
                        decider = Decider::Policy(policy.plugin.clone());
                    }
                }
            }
        }
        (verdict, decider)
    }

    /// One policy's answer; a policy that fails denies.
    async fn ask_policy(
        &self,
        policy: &PolicyRef,
        call: &wt::ToolCall,
        spec: &wt::ToolSpec,
    ) -> PolicyAnswer {
        match self
            .host
            .check_policy(&self.scope, policy, call, spec)
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                PolicyAnswer::Deny(format!("the policy failed, so the call is denied: {error}"))
            }
        }
    }

    /// Resolve an `ask`: a remembered answer, else the approver.
    ///
    /// An `allow_always` answers later asks of the same tool from the same
    /// source (the mode, or one policy); a `deny_always` every later call of
    /// the tool.
    async fn approve(
        &self,
        call: &mut wt::ToolCall,
        binding: GovernedTool<'_>,
        reason: String,
        asked_by: String,
    ) -> Result<Decider, (String, Decider)> {
        if lock(&self.tree.remembered).get(&(call.name.clone(), asked_by.clone())) == Some(&true) {
            return Ok(Decider::Remembered);
        }
        self.send(RunEvent::Permission {
            call_id: call.id.clone(),
            name: call.name.clone(),
            decision: "ask".into(),
            by: "permission chain".into(),
            reason: reason.clone(),
        });
        let request = ApprovalRequest {
            tenant: self.scope.tenant.to_string(),
            user: self.scope.user.name().map(str::to_owned),
            run_id: self.scope.run.to_string(),
            tool: call.name.clone(),
            call_id: call.id.clone(),
            arguments: serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::Null),
            destructive: binding.spec.destructive,
            reason,
        };
        let (decision, approver) = approval::ask(
            self.approver.as_deref(),
            &request,
            self.settings.approval_timeout,
        )
        .await;
        let by = Decider::Approver(approver.clone());
        self.audit(
            "approval",
            &format!("approver:{approver}"),
            json!({"tool": call.name, "call_id": call.id, "decision": decision}),
        );
        match decision {
            ApprovalDecision::Allow => Ok(by),
            ApprovalDecision::AllowAlways => {
                lock(&self.tree.remembered).insert((call.name.clone(), asked_by), true);
                Ok(by)
            }
            ApprovalDecision::Deny { reason } => Err((
                reason
                    .unwrap_or_else(|| format!("the approver denied the call to `{}`", call.name)),
                by,
            )),
            ApprovalDecision::DenyAlways { reason } => {
                lock(&self.tree.remembered).insert((call.name.clone(), String::new()), false);
                Err((
                    reason.unwrap_or_else(|| {
                        format!("the approver denied the call to `{}`", call.name)
                    }),
                    by,
                ))
            }
            ApprovalDecision::Edit { arguments } => {
                if !arguments.is_object() {
                    return Err((
                        "the approver's edited arguments are not a JSON object, so the call is denied"
                            .into(),
                        by,
                    ));
                }
                call.arguments = arguments.to_string();
                Ok(by)
            }
        }
    }

    /// After a tool call: charge its CPU time, and record the call, the
    /// decision that let it run and a digest of its result in one entry.
    pub(crate) fn after_tool(
        &self,
        admitted: Admitted,
        outcome: &Result<&str, String>,
        cpu: Duration,
    ) -> wt::ToolCall {
        let Admitted {
            call,
            reservation,
            decided_by,
            destructive,
            admitted_at,
        } = admitted;
        crate::telemetry::metrics::tool_duration(
            &self.scope,
            &call.name,
            admitted_at.elapsed(),
            outcome.is_ok(),
        );
        if outcome.is_err() {
            crate::telemetry::spans::record_error(&tracing::Span::current(), "tool_failed");
        }
        let mut actual = Amounts::one(Metric::ToolCalls);
        actual.set(Metric::CpuMs, cpu.as_secs_f64() * 1000.0);
        let warnings = self.governance().ledger().settle(reservation, actual);
        if self.auditing() {
            self.audit_tool_call(
                &call,
                Some(destructive),
                true,
                &decided_by.to_string(),
                outcome.as_ref().map(|o| *o).map_err(String::as_str),
            );
        }
        self.warn(warnings);
        call
    }

    /// Record a call to a tool the run does not have.
    pub(crate) fn refused_tool(&self, call: &wt::ToolCall, reason: &str) {
        crate::telemetry::metrics::denial(&self.scope, &call.name, "catalog");
        self.audit_tool_call(call, None, false, "catalog", Err(reason));
    }

    /// Charge what the architecture itself used at the end of the run
    /// (CPU; wall time for a top-level run).
    pub(crate) fn finish(&self, cpu: Duration, wall: Option<Duration>) {
        let mut actual = Amounts::default();
        actual.set(Metric::CpuMs, cpu.as_secs_f64() * 1000.0);
        if let Some(wall) = wall {
            actual.set(Metric::WallMs, wall.as_secs_f64() * 1000.0);
        }
        let warnings = self.governance().ledger().charge(&self.budget, actual);
        self.warn(warnings);
    }

    /// Record the start of the run.
    pub(crate) fn audit_started(&self, prompt: &str, architecture: &str) {
        if !self.auditing() {
            return;
        }
        let mut shown = prompt.to_owned();
        crate::engine::boundary::cut_to(&mut shown, 500);
        self.audit_members(
            "run_started",
            "user",
            &[
                ("architecture", Field::Str(architecture)),
                ("model", Field::Str(&self.model)),
                ("parent", Field::Null),
                ("prompt", Field::Str(&shown)),
            ],
        );
    }

    /// Record a run that failed.
    pub(crate) fn audit_failed(&self, error: &str) {
        self.audit("run_failed", "system", json!({"error": error}));
    }

    /// Record a run refused before it started.
    pub(crate) fn audit_refused(&self, reason: &str) {
        self.audit("run_refused", "system", json!({"reason": reason}));
    }

    /// Record the end of the run.
    pub(crate) fn audit_completed(&self, result: &super::RunResult) {
        if !self.auditing() {
            return;
        }
        self.audit_members(
            "run_completed",
            "system",
            &[
                ("cost_usd", Field::F64(result.cost_usd)),
                ("input_tokens", Field::U64(result.usage.input_tokens)),
                ("interrupted", Field::Bool(result.interrupted)),
                ("output_tokens", Field::U64(result.usage.output_tokens)),
                (
                    "reason",
                    Field::OptStr(result.interruption_reason.as_deref()),
                ),
                ("turns", Field::U64(u64::from(result.turns))),
            ],
        );
    }
}
