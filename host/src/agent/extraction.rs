//! Background fact extraction after a run: one model call (the agent's
//! model unless another is set) turns the run's episode into facts.
//!
//! It runs after the run has returned, at most
//! [`crate::memory::EXTRACTION_CONCURRENCY`] at once host-wide, and never
//! fails the run. Its tokens and cost are charged to the user's budgets
//! (a user over a cap gets no extraction). A forget cancels it, and a
//! result that arrives after a forget is dropped. Every outcome is a
//! [`crate::memory::MemoryEvent`], a tracing event, and (when stored) an
//! audit entry `memory_extracted`.

use super::AgentInner;
use crate::governance::budget::{Amounts, Metric, RunBudget};
use crate::memory::extract::{self, EXTRACTION_OUTPUT_TOKENS, MAX_FACTS_PER_EPISODE};
use crate::memory::{Episode, MemoryEvent, MemoryEventKind, TenantMemory};
use crate::model::Usage;
use crate::tenancy::ids::Scope;
use std::sync::Arc;
use std::time::Duration;

/// Longest an extraction call may take.
const EXTRACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Start extracting facts from `episode` of the run in `scope`.
/// `generation` is the user's forget generation when the run started: a
/// forget since then drops the facts.
pub(crate) fn start(
    agent: &Arc<AgentInner>,
    tenant_memory: &TenantMemory,
    scope: &Scope,
    episode: Episode,
    generation: u64,
) {
    let memory = tenant_memory.builtin();
    let event = |kind| MemoryEvent {
        tenant: scope.tenant.as_str().to_owned(),
        user: scope.user.name().map(str::to_owned),
        run: Some(scope.run.to_string()),
        kind,
    };
    let settings = match agent.host.config().tenant(&scope.tenant) {
        Ok(tenant) => tenant.governance.clone(),
        Err(error) => {
            memory.emit(event(MemoryEventKind::ExtractionFailed {
                error: error.to_string(),
            }));
            return;
        }
    };
    let job = {
        let agent = agent.clone();
        let memory = memory.clone();
        let tenant_memory = tenant_memory.clone();
        let scope = scope.clone();
        async move {
            let emit = |kind| {
                memory.emit(MemoryEvent {
                    tenant: scope.tenant.as_str().to_owned(),
                    user: scope.user.name().map(str::to_owned),
                    run: Some(scope.run.to_string()),
                    kind,
                })
            };
            let Ok(_slot) = memory.extraction_slots().acquire_owned().await else {
                return;
            };
            let model = agent
                .extraction_model
                .clone()
                .unwrap_or_else(|| agent.model.clone());
            let request = extract::extraction_request(&episode);
            // Reserve an estimate, as a run's model call does.
            let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
            let input = (bytes / 4) as u64;
            let estimate = Usage {
                input_tokens: input,
                output_tokens: u64::from(EXTRACTION_OUTPUT_TOKENS),
                ..Usage::default()
            };
            let mut want = Amounts::one(Metric::ModelCalls);
            want.set(Metric::InputTokens, input as f64)
                .set(Metric::OutputTokens, f64::from(EXTRACTION_OUTPUT_TOKENS))
                .set(
                    Metric::Tokens,
                    input as f64 + f64::from(EXTRACTION_OUTPUT_TOKENS),
                )
                .set(Metric::CostUsd, agent.prices.cost(model.id(), &estimate));
            let ledger = agent.host.governance().ledger();
            let budget =
                RunBudget::new(scope.tenant.clone(), scope.user.clone(), &settings.budgets);
            let reservation = match ledger.reserve(&budget, want) {
                Ok(reservation) => reservation,
                Err(exceeded) => {
                    emit(MemoryEventKind::ExtractionSkipped {
                        reason: exceeded.reason(),
                    });
                    return;
                }
            };
            let answer =
                tokio::time::timeout(EXTRACTION_TIMEOUT, model.complete(&request, None)).await;
            let response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    let _ = ledger.settle(reservation, Amounts::one(Metric::ModelCalls));
                    emit(MemoryEventKind::ExtractionFailed {
                        error: error.to_string(),
                    });
                    return;
                }
                Err(_) => {
                    let _ = ledger.settle(reservation, Amounts::one(Metric::ModelCalls));
                    emit(MemoryEventKind::ExtractionFailed {
                        error: format!("the extraction call took over {EXTRACTION_TIMEOUT:?}"),
                    });
                    return;
                }
            };
            let usage = response.usage;
            let cost = agent.prices.cost(model.id(), &usage);
            let mut actual = Amounts::one(Metric::ModelCalls);
            actual
                .set(Metric::InputTokens, usage.input_tokens as f64)
                .set(Metric::OutputTokens, usage.output_tokens as f64)
                .set(Metric::CostUsd, cost);
            let _ = ledger.settle(reservation, actual);
            let facts = match extract::parse_facts(
                &response.message.content,
                MAX_FACTS_PER_EPISODE,
                episode.at,
                &episode.id,
            ) {
                Ok(facts) => facts,
                Err(error) => {
                    emit(MemoryEventKind::ExtractionFailed {
                        error: error.to_string(),
                    });
                    return;
                }
            };
            // Facts the model got wrong (an oversized value, say) are
            // dropped one by one rather than failing the rest.
            let limits = memory.limits().clone();
            let facts: Vec<_> = facts
                .into_iter()
                .filter(|f| f.clone().validated(&limits).is_ok())
                .collect();
            match tenant_memory
                .add_facts(&scope.tenant, &scope.user, facts, Some(generation))
                .await
            {
                Ok(recorded)
                    if recorded.is_empty()
                        && generation != memory.forget_generation(&scope.tenant, &scope.user) =>
                {
                    emit(MemoryEventKind::ExtractionSkipped {
                        reason: "forgotten".into(),
                    });
                }
                Ok(recorded) => {
                    let stored = recorded.iter().filter(|r| r.created).count();
                    let closed = recorded.iter().map(|r| r.closed.len()).sum();
                    agent.host.governance().record(
                        &scope,
                        "memory_extracted",
                        "extraction",
                        serde_json::json!({
                            "model": model.id(),
                            "episode": episode.id,
                            "facts": stored,
                            "closed": closed,
                            "input_tokens": usage.input_tokens,
                            "output_tokens": usage.output_tokens,
                            "cost_usd": cost,
                        }),
                    );
                    emit(MemoryEventKind::Extracted {
                        facts: stored,
                        closed,
                        input_tokens: usage.input_tokens,
                        output_tokens: usage.output_tokens,
                        cost_usd: cost,
                    });
                }
                Err(error) => emit(MemoryEventKind::ExtractionFailed {
                    error: error.to_string(),
                }),
            }
        }
    };
    if !memory.spawn_extraction(&scope.tenant, &scope.user, job) {
        memory.emit(event(MemoryEventKind::ExtractionSkipped {
            reason: "queue full".into(),
        }));
    }
}
