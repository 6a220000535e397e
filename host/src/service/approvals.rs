//! Approvals decided over the API: when a run's permission chain says
//! `ask`, the call waits here until a client of the same tenant allows,
//! denies or edits it (`POST /v1/approvals/{id}`), or until the tenant's
//! approval timeout denies it.

use crate::governance::approval::{ApprovalDecision, ApprovalError, ApprovalRequest, Approver};
use crate::model::BoxFuture;
use crate::tenancy::ids::TenantId;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Most calls one tenant may have waiting for a decision; past it, a new
/// `ask` is denied at once.
pub const MAX_PENDING_PER_TENANT: usize = 1024;

/// A call waiting for a decision, as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PendingView {
    /// The approval's id, for `POST /v1/approvals/{id}`.
    pub id: String,
    /// `approval`.
    pub object: &'static str,
    /// Asked at, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The call and why it needs a decision.
    #[serde(flatten)]
    pub request: ApprovalRequest,
}

struct Pending {
    view: PendingView,
    answer: oneshot::Sender<ApprovalDecision>,
}

/// Calls waiting for a decision, per tenant.
#[derive(Default)]
pub struct PendingApprovals {
    tenants: Mutex<HashMap<String, HashMap<String, Pending>>>,
}

/// Why a decision could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No call of the tenant waits under that id (never asked, already
    /// decided, or timed out).
    #[error(
        "no pending approval `{0}` for this tenant (it was decided already, timed out, or \
         never existed; GET /v1/approvals lists the pending ones)"
    )]
    NotFound(String),
}

impl PendingApprovals {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Pending>>> {
        crate::sync::lock(&self.tenants)
    }

    /// The tenant's pending calls, oldest first.
    pub fn list(&self, tenant: &TenantId) -> Vec<PendingView> {
        let mut views: Vec<PendingView> = self
            .lock()
            .get(tenant.as_str())
            .map(|pending| pending.values().map(|p| p.view.clone()).collect())
            .unwrap_or_default();
        views.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        views
    }

    /// Deliver `decision` to the tenant's pending call `id`.
    ///
    /// # Errors
    ///
    /// [`DecideError::NotFound`] when the tenant has no such pending call.
    pub fn decide(
        &self,
        tenant: &TenantId,
        id: &str,
        decision: ApprovalDecision,
    ) -> Result<PendingView, DecideError> {
        let pending = self
            .lock()
            .get_mut(tenant.as_str())
            .and_then(|pending| pending.remove(id))
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        // The run may have stopped waiting this instant; then the decision
        // has nobody to reach, which is the same as a timeout.
        let _ = pending.answer.send(decision);
        Ok(pending.view)
    }

    fn remove(&self, tenant: &str, id: &str) {
        let mut tenants = self.lock();
        if let Some(pending) = tenants.get_mut(tenant) {
            pending.remove(id);
            if pending.is_empty() {
                tenants.remove(tenant);
            }
        }
    }
}

/// The [`Approver`] of the service's runs: parks each `ask` in
/// [`PendingApprovals`] until a client decides it.
pub struct ApiApprover {
    pending: Arc<PendingApprovals>,
}

impl ApiApprover {
    /// An approver over `pending`.
    pub fn new(pending: Arc<PendingApprovals>) -> Arc<Self> {
        Arc::new(ApiApprover { pending })
    }
}

/// Removes a pending call when its waiter goes away (a decision, a
/// timeout, or a cancelled run).
struct Waiting<'a> {
    pending: &'a PendingApprovals,
    tenant: String,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.remove(&self.tenant, &self.id);
    }
}

impl Approver for ApiApprover {
    fn name(&self) -> &str {
        "api"
    }

    fn decide(
        &self,
        request: &ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalDecision, ApprovalError>> {
        let request = request.clone();
        Box::pin(async move {
            let id = format!("apr_{}", crate::tenancy::ids::RunId::generate());
            let (answer, decided) = oneshot::channel();
            let tenant = request.tenant.clone();
            {
                let mut tenants = self.pending.lock();
                let pending = tenants.entry(tenant.clone()).or_default();
                if pending.len() >= MAX_PENDING_PER_TENANT {
                    return Err(ApprovalError(format!(
                        "the tenant already has {MAX_PENDING_PER_TENANT} calls waiting for \
                         approval; decide those first"
                    )));
                }
                pending.insert(
                    id.clone(),
                    Pending {
                        view: PendingView {
                            id: id.clone(),
                            object: "approval",
                            created_ms: super::runs::now_ms(),
                            request,
                        },
                        answer,
                    },
                );
            }
            let _waiting = Waiting {
                pending: &self.pending,
                tenant,
                id,
            };
            decided.await.map_err(|_| {
                ApprovalError("the pending approval was dropped without a decision".into())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tenant: &str) -> ApprovalRequest {
        ApprovalRequest {
            tenant: tenant.into(),
            user: Some("alice".into()),
            run_id: "run_1".into(),
            tool: "write_file".into(),
            call_id: "call_1".into(),
            arguments: serde_json::json!({"path": "/out/x"}),
            destructive: true,
            reason: "destructive".into(),
        }
    }

    #[tokio::test]
    async fn a_waiting_call_is_decided_by_its_tenant_and_gone_when_its_waiter_goes() {
        let pending = Arc::new(PendingApprovals::default());
        let approver = ApiApprover::new(pending.clone());
        let acme = TenantId::new("acme").expect("id");
        let globex = TenantId::new("globex").expect("id");
        let waiter = {
            let approver = approver.clone();
            tokio::spawn(async move { approver.decide(&request("acme")).await })
        };
        let id = loop {
            if let Some(first) = pending.list(&acme).first() {
                break first.id.clone();
            }
            tokio::task::yield_now().await;
        };
        assert!(pending.list(&globex).is_empty());
        assert!(matches!(
            pending.decide(&globex, &id, ApprovalDecision::Allow),
            Err(DecideError::NotFound(_))
        ));
        pending
            .decide(&acme, &id, ApprovalDecision::Allow)
            .expect("acme decides");
        assert_eq!(
            waiter.await.expect("task").expect("decided"),
            ApprovalDecision::Allow
        );
        assert!(pending.list(&acme).is_empty());
        // A waiter that gives up (a timeout, a cancelled run) leaves nothing.
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            approver.decide(&request("acme")),
        )
        .await;
        assert!(gave_up.is_err());
        assert!(pending.list(&acme).is_empty());
    }
}
