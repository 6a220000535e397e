//! Approvals: who answers when the permission chain says `ask`.
//!
//! An [`Approver`] gets the call and the reason and answers allow, deny,
//! allow with edited arguments, or allow/deny for the rest of the run. Loom
//! ships two: [`FnApprover`] wraps a Rust callback, [`WebhookApprover`] posts
//! the request to an HTTP endpoint (`approval_url`); `loom run` adds a
//! terminal prompt. No approver, a failing one and one that does not answer
//! in time all deny.

use crate::model::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What the approver is asked.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ApprovalRequest {
    /// The tenant.
    pub tenant: String,
    /// The user; `None` for the anonymous user.
    pub user: Option<String>,
    /// The run.
    pub run_id: String,
    /// The tool.
    pub tool: String,
    /// The model's id for the call.
    pub call_id: String,
    /// The arguments, as the model wrote them.
    pub arguments: serde_json::Value,
    /// Whether the tool says it changes the world.
    pub destructive: bool,
    /// Why approval is needed (from the mode or a policy).
    pub reason: String,
}

/// The approver's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ApprovalDecision {
    /// Run the call.
    Allow,
    /// Do not run it.
    Deny {
        /// Shown to the model.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Run it with these arguments instead (a JSON object).
    Edit {
        /// The arguments to use.
        arguments: serde_json::Value,
    },
    /// Run it, and every later call of this tool for this user in the run.
    AllowAlways,
    /// Deny it, and every later call of this tool for this user in the run.
    DenyAlways {
        /// Shown to the model.
        #[serde(default)]
        reason: Option<String>,
    },
}

/// Why an approver gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ApprovalError(pub String);

/// Decides `ask` calls.
pub trait Approver: Send + Sync {
    /// A short name for the audit log (`webhook`, `terminal`, `callback`).
    fn name(&self) -> &str;

    /// Decide `request`.
    fn decide(
        &self,
        request: &ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalDecision, ApprovalError>>;
}

/// An approver made of an async Rust callback.
pub struct FnApprover<F> {
    callback: F,
}

impl<F, Fut> FnApprover<F>
where
    F: Fn(ApprovalRequest) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<ApprovalDecision, ApprovalError>> + Send + 'static,
{
    /// Wrap `callback`.
    pub fn new(callback: F) -> Arc<Self> {
        Arc::new(FnApprover { callback })
    }
}

impl<F, Fut> Approver for FnApprover<F>
where
    F: Fn(ApprovalRequest) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<ApprovalDecision, ApprovalError>> + Send + 'static,
{
    fn name(&self) -> &str {
        "callback"
    }

    fn decide(
        &self,
        request: &ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalDecision, ApprovalError>> {
        Box::pin((self.callback)(request.clone()))
    }
}

/// Largest webhook answer read.
const MAX_WEBHOOK_ANSWER: usize = 1 << 20;

/// Posts each request as JSON to a URL and reads an [`ApprovalDecision`]
/// back: `{"decision": "allow"}`, `{"decision": "deny", "reason": ".."}`,
/// `{"decision": "edit", "arguments": {..}}`, `{"decision": "allow_always"}`,
/// `{"decision": "deny_always"}`. Any other status or body denies.
pub struct WebhookApprover {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl WebhookApprover {
    /// An approver posting to `url`.
    ///
    /// # Errors
    ///
    /// [`ApprovalError`] when the URL is not http(s) or the client cannot be built.
    pub fn new(url: &str) -> Result<Self, ApprovalError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| ApprovalError(format!("approval_url `{url}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ApprovalError(format!(
                "approval_url `{url}` must be http:// or https://"
            )));
        }
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::client_config_h2())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApprovalError(format!("cannot build the webhook client: {e}")))?;
        Ok(WebhookApprover { url, client })
    }
}

impl Approver for WebhookApprover {
    fn name(&self) -> &str {
        "webhook"
    }

    fn decide(
        &self,
        request: &ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalDecision, ApprovalError>> {
        let body = serde_json::to_vec(request);
        Box::pin(async move {
            let body = body.map_err(|e| ApprovalError(e.to_string()))?;
            let response = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| ApprovalError(format!("the approval webhook failed: {e}")))?;
            let status = response.status();
            if !status.is_success() {
                return Err(ApprovalError(format!(
                    "the approval webhook answered HTTP {status}"
                )));
            }
            let mut bytes = Vec::new();
            let mut response = response;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| ApprovalError(format!("the approval webhook failed: {e}")))?
            {
                if bytes.len() + chunk.len() > MAX_WEBHOOK_ANSWER {
                    return Err(ApprovalError(format!(
                        "the approval webhook's answer is over {MAX_WEBHOOK_ANSWER} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                ApprovalError(format!(
                    "the approval webhook's answer is not a decision ({e}); expected \
                     {{\"decision\": \"allow\" | \"deny\" | \"edit\" | \"allow_always\" | \"deny_always\"}}"
                ))
            })
        })
    }
}

/// Ask `approver` with a deadline: an error or no answer in `timeout` is a
/// denial whose reason says why.
pub async fn ask(
    approver: Option<&dyn Approver>,
    request: &ApprovalRequest,
    timeout: Duration,
) -> (ApprovalDecision, String) {
    let Some(approver) = approver else {
        return (
            ApprovalDecision::Deny {
                reason: Some(format!(
                    "{}; no approver is configured (set approval_url for the tenant, \
                     or give the agent an approver)",
                    request.reason
                )),
            },
            "none".into(),
        );
    };
    let name = approver.name().to_owned();
    match tokio::time::timeout(timeout, approver.decide(request)).await {
        Ok(Ok(decision)) => (decision, name),
        Ok(Err(error)) => (
            ApprovalDecision::Deny {
                reason: Some(format!(
                    "the approver failed, so the call is denied: {error}"
                )),
            },
            name,
        ),
        Err(_) => (
            ApprovalDecision::Deny {
                reason: Some(format!(
                    "the approver did not answer within {} ms, so the call is denied",
                    timeout.as_millis()
                )),
            },
            name,
        ),
    }
}
