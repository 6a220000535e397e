//! A tenant's memory component: episodes, notes and facts kept by a
//! WebAssembly component (world `memory-plugin`) in the host's scoped
//! key-value store, instead of the built-in tables.
//!
//! Every call runs in a fresh sandbox with no grants, under the tenant's
//! limits, on behalf of one (tenant, user): the component's `kv` reaches
//! that user's keys only, and its writes are committed when the call
//! answers `ok` — unless the user was forgotten since the operation began.
//! Calls for one user are serialised (a component's read-modify-write of
//! its keys is then safe). What the component hands back is checked and cut
//! to the built-in memory's limits before the host uses it.

use super::facts::{Expiry, Fact, FactQuery, NewFact, Recorded};
use super::timestamp::Timestamp;
use super::{ForgetGuard, Memory, MemoryError, Recalled, cut};
use crate::config::Limits;
use crate::engine::bindings::{facts_export as wit_facts, memory_export as wit_memory};
use crate::engine::{MemoryCall, MemoryReply, SandboxEngine};
use crate::plugins::LoadedPlugin;
use crate::store::kv::{KvScope, KvTransaction};
use crate::store::sessions::user_key;
use crate::tenancy::grants::EffectiveGrants;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use std::sync::Arc;

/// Longest id a component may hand back.
const MAX_ID_BYTES: usize = 128;

/// Most items a recall takes from a component.
const MAX_RECALLED: u32 = 1_000;

/// Largest metadata of one item the host accepts (a kv value's cap).
const MAX_METADATA_BYTES: usize = crate::store::kv::MAX_VALUE_BYTES;

/// One tenant's memory component, ready to call.
#[derive(Clone)]
pub struct ComponentMemory {
    engine: Arc<SandboxEngine>,
    plugin: Arc<LoadedPlugin>,
    limits: Limits,
    quota: u64,
    builtin: Memory,
}

impl std::fmt::Debug for ComponentMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentMemory")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

/// An item a component recalled or exported.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentItem {
    /// Its id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its metadata: JSON text, checked for size and nesting (parse it
    /// into a typed value, never a `serde_json::Value`, so a hostile
    /// component cannot make a small text a large tree).
    pub metadata: String,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// Relevance (recall only).
    pub score: f32,
}

impl ComponentMemory {
    /// Memory component `plugin` (which must be a memory plugin), called
    /// under `limits`, storing at most `quota` bytes for the tenant;
    /// `builtin` supplies forget guards and limits.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Component`] when `plugin` is not a memory component.
    pub fn new(
        engine: Arc<SandboxEngine>,
        plugin: Arc<LoadedPlugin>,
        limits: Limits,
        quota: u64,
        builtin: Memory,
    ) -> Result<Self, MemoryError> {
        if plugin.memory().is_none() {
            return Err(MemoryError::Component {
                plugin: plugin.name.to_string(),
                message: format!("it is a {} plugin, not a memory component", plugin.kind),
            });
        }
        Ok(ComponentMemory {
            engine,
            plugin,
            limits,
            quota,
            builtin,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    fn failure(&self, message: impl Into<String>) -> MemoryError {
        MemoryError::Component {
            plugin: self.plugin.name.to_string(),
            message: message.into(),
        }
    }

    /// Call the component for (tenant, user): `make` builds the call from
    /// the knowledge time, read once the user's turn has come; `check`
    /// turns the reply into what the caller gets. The call's writes are
    /// committed only when the component answered `ok`, `check` accepted
    /// the reply, and the user was not forgotten since `guard` was taken
    /// (else `Ok(None)`).
    async fn call<R>(
        &self,
        tenant: &TenantId,
        user: &UserId,
        make: impl FnOnce(Timestamp) -> MemoryCall,
        check: impl FnOnce(MemoryReply) -> Result<R, MemoryError>,
        guard: ForgetGuard,
    ) -> Result<Option<R>, MemoryError> {
        let Some(component) = self.plugin.memory() else {
            return Err(self.failure("not a memory component"));
        };
        let (t, u) = (tenant.as_str(), user_key(user));
        // One call per user at a time, waiting no longer than a call may
        // run: a component that always times out delays its own users only.
        let turn = self.builtin.component_lock(t, u);
        let _turn = tokio::time::timeout(self.limits.wall, turn.lock())
            .await
            .map_err(|_| {
                self.failure(format!(
                    "another call for this user did not finish within {} ms",
                    self.limits.wall.as_millis()
                ))
            })?;
        if !guard.holds() {
            return Ok(None);
        }
        let kv = KvTransaction::new(
            self.builtin.store().clone(),
            KvScope {
                tenant: t.to_owned(),
                user: u.to_owned(),
                component: self.plugin.name.to_string(),
            },
            self.quota,
        );
        let grants = EffectiveGrants::default();
        let request = crate::engine::CallRequest {
            scope: Arc::new(Scope::new(tenant.clone(), user.clone())),
            plugin: self.plugin.name.clone(),
            grants: &grants,
            limits: &self.limits,
            harness: None,
            disk: None,
        };
        let call = make(Timestamp::now());
        let (outcome, commit) = self.engine.call_memory(component, &request, kv, call).await;
        let reply = match outcome {
            Err(error) => return Err(self.failure(error.to_string())),
            Ok(Err(wit_memory::MemoryError::Invalid(message))) => {
                return Err(MemoryError::Invalid(bounded(message)));
            }
            Ok(Err(wit_memory::MemoryError::Storage(message))) => {
                return Err(self.failure(format!("storage: {}", bounded(message))));
            }
            Ok(Ok(reply)) => reply,
        };
        let value = check(reply)?;
        if let Some(txn) = commit {
            let stored = txn
                .commit(move || guard.holds())
                .await
                .map_err(|e| self.failure(e.to_string()))?;
            if !stored {
                return Ok(None);
            }
        }
        Ok(Some(value))
    }

    fn unexpected(&self) -> MemoryError {
        self.failure("the component answered a different call")
    }

    /// [`Self::call`] for a call that writes nothing the caller relies on:
    /// `None` (the user was forgotten meanwhile) is an error.
    async fn read<R>(
        &self,
        tenant: &TenantId,
        user: &UserId,
        make: impl FnOnce(Timestamp) -> MemoryCall,
        check: impl FnOnce(MemoryReply) -> Result<R, MemoryError>,
    ) -> Result<R, MemoryError> {
        let guard = self.builtin.forget_guard(tenant, user);
        self.call(tenant, user, make, check, guard)
            .await?
            .ok_or_else(|| MemoryError::Invalid("the user was forgotten meanwhile".into()))
    }

    /// Store `text` with `metadata` (a JSON object); its id, or `None` when
    /// the user was forgotten meanwhile.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn remember(
        &self,
        tenant: &TenantId,
        user: &UserId,
        text: String,
        metadata: &serde_json::Value,
        guard: ForgetGuard,
    ) -> Result<Option<String>, MemoryError> {
        let metadata = metadata.to_string();
        self.call(
            tenant,
            user,
            |_| MemoryCall::Remember { text, metadata },
            |reply| match reply {
                MemoryReply::Remembered(id) => self.id(id),
                _ => Err(self.unexpected()),
            },
            guard,
        )
        .await
    }

    /// Items relevant to `query`, best first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn recall(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: &str,
        limit: usize,
    ) -> Result<Vec<ComponentItem>, MemoryError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).min(MAX_RECALLED);
        let query = query.to_owned();
        self.read(
            tenant,
            user,
            |_| MemoryCall::Recall { query, limit },
            |reply| match reply {
                MemoryReply::Recalled(items) => items
                    .into_iter()
                    .take(limit as usize)
                    .map(|scored| {
                        let mut item = self.item(scored.item)?;
                        item.score = if scored.score.is_finite() {
                            scored.score.clamp(0.0, 1.0)
                        } else {
                            0.0
                        };
                        Ok(item)
                    })
                    .collect(),
                _ => Err(self.unexpected()),
            },
        )
        .await
    }

    /// Every item, oldest first.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn items(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ComponentItem>, MemoryError> {
        self.read(
            tenant,
            user,
            |_| MemoryCall::Export,
            |reply| match reply {
                MemoryReply::Exported(items) => {
                    items.into_iter().map(|item| self.item(item)).collect()
                }
                _ => Err(self.unexpected()),
            },
        )
        .await
    }

    /// Ask the component to erase the user; its count of removed items.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn forget(&self, tenant: &TenantId, user: &UserId) -> Result<u64, MemoryError> {
        self.read(
            tenant,
            user,
            |_| MemoryCall::Forget,
            |reply| match reply {
                MemoryReply::Forgot(count) => Ok(count),
                _ => Err(self.unexpected()),
            },
        )
        .await
    }

    /// Record `facts` (already validated and canonical) in order; nothing
    /// (an empty list) when the user was forgotten since `guard`.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn add_facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        facts: Vec<NewFact>,
        guard: ForgetGuard,
    ) -> Result<Vec<Recorded>, MemoryError> {
        let count = facts.len();
        let make = move |now: Timestamp| MemoryCall::AddFacts {
            facts: facts
                .into_iter()
                .map(|f| wit_facts::NewFact {
                    subject: f.subject,
                    predicate: f.predicate,
                    object: f.object,
                    confidence: f.confidence,
                    sources: f.sources,
                    valid_from: f.valid_from.unwrap_or(now).millis(),
                    valid_until: f.valid_until.map(Timestamp::millis),
                })
                .collect(),
            now: now.millis(),
        };
        let check = |reply| match reply {
            MemoryReply::Added(recorded) => {
                if recorded.len() != count {
                    return Err(self.failure(format!(
                        "it recorded {} results for {count} facts",
                        recorded.len()
                    )));
                }
                recorded
                    .into_iter()
                    .map(|r| {
                        Ok(Recorded {
                            fact: self.fact(r.fact)?,
                            created: r.created,
                            closed: r
                                .closed
                                .into_iter()
                                .map(|f| self.fact(f))
                                .collect::<Result<_, _>>()?,
                        })
                    })
                    .collect()
            }
            _ => Err(self.unexpected()),
        };
        Ok(self
            .call(tenant, user, make, check, guard)
            .await?
            .unwrap_or_default())
    }

    /// Stop believing fact `id`.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn retract(
        &self,
        tenant: &TenantId,
        user: &UserId,
        id: &str,
        guard: ForgetGuard,
    ) -> Result<Option<Fact>, MemoryError> {
        let id = id.to_owned();
        Ok(self
            .call(
                tenant,
                user,
                |now| MemoryCall::Retract {
                    id,
                    now: now.millis(),
                },
                |reply| match reply {
                    MemoryReply::Retracted(fact) => fact.map(|f| self.fact(*f)).transpose(),
                    _ => Err(self.unexpected()),
                },
                guard,
            )
            .await?
            .flatten())
    }

    /// The user's fact versions matching `query` (every version with
    /// `include_expired`), oldest recorded first.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: &FactQuery,
        include_expired: bool,
    ) -> Result<Vec<Fact>, MemoryError> {
        let call = MemoryCall::Query(wit_facts::FactQuery {
            valid_at: query.valid_at.map(Timestamp::millis),
            known_at: query.known_at.map(Timestamp::millis),
            subject: query.subject.clone(),
            predicate: query
                .predicate
                .as_deref()
                .map(super::predicate::canonical_predicate),
            include_expired,
        });
        let facts = self
            .read(
                tenant,
                user,
                |_| call,
                |reply| match reply {
                    MemoryReply::Facts(facts) => facts
                        .into_iter()
                        .map(|f| self.fact(f))
                        .collect::<Result<Vec<_>, _>>(),
                    _ => Err(self.unexpected()),
                },
            )
            .await?;
        // The component's filter is trusted for nothing: the host applies
        // the query again.
        Ok(facts
            .into_iter()
            .filter(|f| include_expired || query.matches(f))
            .collect())
    }

    /// The facts believed and valid now, as recall candidates.
    pub(crate) async fn fact_candidates(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let now = Timestamp::now();
        let query = FactQuery {
            valid_at: Some(now),
            ..FactQuery::default()
        };
        let window = self.builtin.limits().recall_fact_window;
        let facts = self.facts(tenant, user, &query, false).await?;
        let skip = facts.len().saturating_sub(window);
        Ok(facts
            .into_iter()
            .skip(skip)
            .map(|fact| Recalled {
                kind: "fact",
                text: fact.text(),
                id: fact.id,
                score: 0.0,
            })
            .collect())
    }

    fn id(&self, id: String) -> Result<String, MemoryError> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(self.failure(format!(
                "it returned an id of {} bytes; ids must be 1 to {MAX_ID_BYTES} bytes",
                id.len()
            )));
        }
        Ok(super::super::engine::boundary::escape_text(
            &id,
            MAX_ID_BYTES * 4,
        ))
    }

    fn item(&self, item: wit_memory::MemoryItem) -> Result<ComponentItem, MemoryError> {
        let limits = self.builtin.limits();
        let mut text = item.text;
        cut(&mut text, limits.max_episode_text_bytes * 2);
        crate::engine::boundary::check_json_bounds(&item.metadata, MAX_METADATA_BYTES).map_err(
            |refusal| self.failure(format!("an item's metadata was refused: {refusal}")),
        )?;
        Ok(ComponentItem {
            id: self.id(item.id)?,
            text,
            metadata: item.metadata,
            recorded_at: Timestamp::from_millis(i64::try_from(item.recorded_at).unwrap_or(0)),
            score: 0.0,
        })
    }

    fn fact(&self, fact: wit_facts::Fact) -> Result<Fact, MemoryError> {
        let max = self.builtin.limits().max_fact_field_bytes;
        let field = |mut value: String, name: &str| -> Result<String, MemoryError> {
            if value.len() > max {
                return Err(self.failure(format!(
                    "a fact's {name} is {} bytes, over the {max}-byte limit",
                    value.len()
                )));
            }
            cut(&mut value, max);
            Ok(value)
        };
        let mut sources = fact.sources;
        sources.truncate(self.builtin.limits().max_fact_sources);
        for source in &mut sources {
            cut(source, 256);
        }
        Ok(Fact {
            id: self.id(fact.id)?,
            subject: field(fact.subject, "subject")?,
            predicate: field(fact.predicate, "predicate")?,
            object: field(fact.object, "object")?,
            confidence: if fact.confidence.is_finite() {
                fact.confidence.clamp(0.0, 1.0)
            } else {
                1.0
            },
            sources,
            valid_from: Timestamp::from_millis(fact.valid_from),
            valid_until: fact.valid_until.map(Timestamp::from_millis),
            recorded_at: Timestamp::from_millis(fact.recorded_at),
            expired_at: fact.expired_at.map(Timestamp::from_millis),
            expired_by: match fact.expired_by {
                None => None,
                Some(wit_facts::Expiry::Retracted) => Some(Expiry::Retracted),
                Some(wit_facts::Expiry::Superseded(s)) => Some(Expiry::Superseded {
                    by: self.id(s.by)?,
                    closed: s.closed.map(|c| self.id(c)).transpose()?,
                }),
            },
            replaces: fact.replaces.map(|r| self.id(r)).transpose()?,
        })
    }
}

/// A component's message, cut and escaped.
fn bounded(message: String) -> String {
    crate::engine::boundary::escape_text(&message, 2048)
}
