//! Governance: what a tenant's users may spend and do, and the record of
//! what they did.
//!
//! * [`budget`] — caps on tokens, cost, calls, runs, CPU and wall time per
//!   run, rolling day, calendar month and lifetime, at three levels (the
//!   tenant's total, each user, one user's override), counted in the store.
//! * [`ratelimit`] — token buckets for runs and model calls per minute.
//! * [`permissions`] — permission modes and allow/deny lists.
//! * [`approval`] — who answers when a call needs approval.
//! * [`audit`] — the HMAC-signed, hash-chained audit log.
//!
//! Policy components (the `policy` world) run in the engine; the agent's
//! import gate runs the whole chain for every tool call: deny lists, mode,
//! policies in order, approval. [`Governance`] holds the shared state the
//! host keeps for all of this.

pub mod approval;
pub mod audit;
pub mod budget;
pub mod permissions;
pub mod ratelimit;

use crate::config::Limits;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use approval::{Approver, WebhookApprover};
use audit::AuditLog;
use budget::{BudgetLedger, TenantBudgets};
use permissions::{EffectiveRules, PermissionRules};
use ratelimit::{RateLimiter, Rates};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One policy component a tenant runs on every tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRef {
    /// The plugin's name.
    pub plugin: String,
    /// Its configuration, JSON text; reaches it as the run context's
    /// `loom.policy_config` metadata.
    pub config: String,
    /// Its limits.
    pub limits: Limits,
}

/// The default limits of a policy component's call: a policy answers fast.
pub fn default_policy_limits(base: &Limits) -> Limits {
    Limits {
        cpu: Duration::from_millis(100),
        wall: Duration::from_millis(2000),
        memory_bytes: base.memory_bytes.min(32 << 20),
        ..*base
    }
}

/// One tenant's governance settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantGovernance {
    /// Budgets at every level.
    pub budgets: TenantBudgets,
    /// The tenant's permission rules.
    pub permissions: PermissionRules,
    /// Per-user permission rules, by user name.
    pub user_permissions: BTreeMap<String, PermissionRules>,
    /// Rate limits of the tenant as a whole.
    pub rates: Rates,
    /// Rate limits of each user.
    pub user_rates: Rates,
    /// Per-user rate-limit overrides, by user name.
    pub user_rate_overrides: BTreeMap<String, Rates>,
    /// Policy components, in the order they run.
    pub policies: Vec<PolicyRef>,
    /// Where approvals are posted, if anywhere.
    pub approval_url: Option<String>,
    /// How long an approver may take before the call is denied.
    pub approval_timeout: Duration,
    /// Whether forgetting a user also deletes their budget counters
    /// (`forget_budgets`; default false: a forget does not reset spend).
    pub forget_budgets: bool,
}

impl Default for TenantGovernance {
    fn default() -> Self {
        TenantGovernance {
            budgets: TenantBudgets::default(),
            permissions: PermissionRules::default(),
            user_permissions: BTreeMap::new(),
            rates: Rates::default(),
            user_rates: Rates::default(),
            user_rate_overrides: BTreeMap::new(),
            policies: Vec::new(),
            forget_budgets: false,
            approval_url: None,
            approval_timeout: Duration::from_secs(60),
        }
    }
}

impl TenantGovernance {
    /// The permission rules in force for `user`.
    pub fn rules_for(&self, user: &UserId) -> EffectiveRules {
        EffectiveRules::new(
            &self.permissions,
            user.name().and_then(|n| self.user_permissions.get(n)),
        )
    }

    /// The rate limits of `user` alone.
    pub fn rates_for(&self, user: &UserId) -> Rates {
        match user.name().and_then(|n| self.user_rate_overrides.get(n)) {
            Some(overrides) => self.user_rates.overridden_by(overrides),
            None => self.user_rates,
        }
    }
}

/// Why governance could not start.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// An approval webhook is misconfigured.
    #[error("tenants.{tenant}.approval_url: {message}")]
    Approval {
        /// The tenant.
        tenant: String,
        /// What is wrong.
        message: String,
    },
}

/// The host's shared governance state.
pub struct Governance {
    ledger: BudgetLedger,
    rates: Arc<RateLimiter>,
    audit: Option<Arc<AuditLog>>,
    webhooks: HashMap<TenantId, Arc<WebhookApprover>>,
}

impl Governance {
    /// Governance over `ledger`, auditing to `audit`, with a webhook
    /// approver for every tenant that configures one.
    ///
    /// # Errors
    ///
    /// [`GovernanceError`] when a webhook URL is invalid.
    pub fn new<'a>(
        ledger: BudgetLedger,
        audit: Option<Arc<AuditLog>>,
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a TenantGovernance)>,
    ) -> Result<Self, GovernanceError> {
        let mut webhooks = HashMap::new();
        for (id, tenant) in tenants {
            if let Some(url) = &tenant.approval_url {
                let approver =
                    WebhookApprover::new(url).map_err(|e| GovernanceError::Approval {
                        tenant: id.to_string(),
                        message: e.0,
                    })?;
                webhooks.insert(id.clone(), Arc::new(approver));
            }
        }
        Ok(Governance {
            ledger,
            rates: Arc::new(RateLimiter::default()),
            audit,
            webhooks,
        })
    }

    /// Governance for a changed configuration: the same budget counters,
    /// rate-limit buckets and audit log (its chain goes on unbroken), with
    /// `tenants`' webhooks.
    ///
    /// # Errors
    ///
    /// [`GovernanceError`] when a webhook URL is invalid.
    pub fn reconfigured<'a>(
        &self,
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a TenantGovernance)>,
    ) -> Result<Self, GovernanceError> {
        let mut next = Governance::new(self.ledger.clone(), self.audit.clone(), tenants)?;
        next.rates = self.rates.clone();
        Ok(next)
    }

    /// The budget ledger.
    pub fn ledger(&self) -> &BudgetLedger {
        &self.ledger
    }

    /// The rate limiter.
    pub fn rates(&self) -> &RateLimiter {
        &self.rates
    }

    /// The audit log, when one is configured.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// The tenant's webhook approver, when it configures one.
    pub fn webhook(&self, tenant: &TenantId) -> Option<Arc<dyn Approver>> {
        self.webhooks
            .get(tenant)
            .map(|w| w.clone() as Arc<dyn Approver>)
    }

    /// Append an audit entry for `scope` (a no-op without an audit log).
    pub fn record(
        &self,
        scope: &Scope,
        action: &'static str,
        actor: &str,
        data: serde_json::Value,
    ) {
        self.record_data(scope, action, actor, audit::Data::Value(&data));
    }

    /// [`Self::record`] with a borrowed payload ([`audit::Data::Members`]
    /// renders it without building a `serde_json::Value`).
    pub fn record_data(
        &self,
        scope: &Scope,
        action: &'static str,
        actor: &str,
        data: audit::Data<'_>,
    ) {
        if let Some(audit) = &self.audit {
            let run = scope.run.to_string();
            audit.record_fields(audit::RecordFields {
                tenant: scope.tenant.as_str(),
                user: scope.user.name(),
                run: Some(&run),
                action,
                actor,
                data,
            });
        }
    }

    /// Append an audit entry not tied to a run (plugin loads, forget).
    pub fn record_event(
        &self,
        tenant: &str,
        action: &'static str,
        actor: &str,
        data: serde_json::Value,
    ) {
        if let Some(audit) = &self.audit {
            audit.record_fields(audit::RecordFields {
                tenant,
                user: None,
                run: None,
                action,
                actor,
                data: audit::Data::Value(&data),
            });
        }
    }
}
