//! The memory a tenant uses: the built-in memory, or the tenant's memory
//! component (`[tenants.T.memory] plugin`) for episodes, notes and facts.
//!
//! [`TenantMemory`] gives runs, extraction and the CLI one API over both.
//! Working blocks and sessions always stay in the host (they are part of
//! prompt assembly); so do forget guards, extraction slots and events. A
//! forget deletes the component's data too ([`crate::host::Host::forget_user`]).

use super::component::{ComponentItem, ComponentMemory};
use super::episodes::{Episode, EpisodeKind, NewEpisode};
use super::facts::{Fact, FactQuery, NewFact, Recorded};
use super::timestamp::Timestamp;
use super::{
    ForgetGuard, Memory, MemoryError, MemoryExport, MemorySummary, Recalled, cut, pack_context,
    rank_candidates,
};
use crate::model::Message;
use crate::tenancy::ids::{TenantId, UserId};

/// Marks the metadata of an episode stored in a memory component.
const EPISODE_MARK: &str = "loom_episode";

/// Most items a prompt's recall asks a component for.
const PROMPT_ITEMS: usize = 200;

/// The memory one tenant uses. Cloning shares it.
#[derive(Debug, Clone)]
pub struct TenantMemory {
    builtin: Memory,
    component: Option<ComponentMemory>,
}

impl TenantMemory {
    /// The built-in memory alone.
    pub fn builtin_only(builtin: Memory) -> Self {
        TenantMemory {
            builtin,
            component: None,
        }
    }

    /// `component` for episodes, notes and facts; `builtin` for the rest.
    pub fn with_component(builtin: Memory, component: ComponentMemory) -> Self {
        TenantMemory {
            builtin,
            component: Some(component),
        }
    }

    /// The built-in memory (blocks, guards, events).
    pub fn builtin(&self) -> &Memory {
        &self.builtin
    }

    /// The memory component, when the tenant has one.
    pub fn component(&self) -> Option<&ComponentMemory> {
        self.component.as_ref()
    }

    fn guard(&self, tenant: &TenantId, user: &UserId, generation: Option<u64>) -> ForgetGuard {
        match generation {
            Some(generation) => self.builtin.guard_at(tenant, user, generation),
            None => self.builtin.forget_guard(tenant, user),
        }
    }

    /// Store an episode or note; `None` when the user was forgotten since
    /// `guard` was taken.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn remember_guarded(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: EpisodeKind,
        episode: NewEpisode,
        guard: ForgetGuard,
    ) -> Result<Option<Episode>, MemoryError> {
        let Some(component) = &self.component else {
            return self
                .builtin
                .remember_guarded(tenant, user, kind, episode, guard)
                .await;
        };
        let limits = self.builtin.limits();
        let mut episode = Episode {
            id: String::new(),
            kind,
            session: episode.session,
            run: episode.run,
            at: Timestamp::now(),
            input: episode.input,
            output: episode.output,
            transcript: episode
                .transcript
                .map(|t| super::episodes::cap_transcript(t, limits.max_transcript_bytes)),
        };
        cut(&mut episode.input, limits.max_episode_text_bytes);
        cut(&mut episode.output, limits.max_episode_text_bytes);
        let metadata = serde_json::json!({
            EPISODE_MARK: true,
            "kind": episode.kind,
            "session": episode.session,
            "run": episode.run,
            "at": episode.at,
            "input": episode.input,
            "output": episode.output,
            "transcript": episode.transcript,
        });
        let text = episode.text();
        Ok(component
            .remember(tenant, user, text, &metadata, guard)
            .await?
            .map(|id| Episode { id, ..episode }))
    }

    /// [`Self::remember_guarded`] with a guard taken now.
    ///
    /// # Errors
    ///
    /// [`MemoryError`]; [`MemoryError::Invalid`] when the user was
    /// forgotten meanwhile.
    pub async fn remember(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: EpisodeKind,
        episode: NewEpisode,
    ) -> Result<Episode, MemoryError> {
        let guard = self.builtin.forget_guard(tenant, user);
        self.remember_guarded(tenant, user, kind, episode, guard)
            .await?
            .ok_or_else(|| MemoryError::Invalid("the user was forgotten meanwhile".into()))
    }

    /// The facts valid now and the episodes most relevant to `query`,
    /// best first, at most `limit`.
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
    ) -> Result<Vec<Recalled>, MemoryError> {
        let Some(component) = &self.component else {
            let (memory, tenant, user, query) = (
                self.builtin.clone(),
                tenant.clone(),
                user.clone(),
                query.to_owned(),
            );
            return blocking(move || memory.recall(&tenant, &user, &query, limit)).await;
        };
        let mut candidates = component.fact_candidates(tenant, user).await?;
        candidates.extend(
            component
                .recall(tenant, user, query, limit.max(1).saturating_mul(4))
                .await?
                .into_iter()
                .rev()
                .map(episode_candidate),
        );
        Ok(rank_candidates(query, candidates, limit, false))
    }

    /// The memory section of a prompt (see [`Memory::prompt_context`]).
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn prompt_context(
        &self,
        tenant: &TenantId,
        user: &UserId,
        prompt: &str,
        token_budget: usize,
        exclude_session: Option<&str>,
    ) -> Result<Option<String>, MemoryError> {
        let Some(component) = &self.component else {
            let (memory, tenant, user, prompt, session) = (
                self.builtin.clone(),
                tenant.clone(),
                user.clone(),
                prompt.to_owned(),
                exclude_session.map(str::to_owned),
            );
            return blocking(move || {
                memory.prompt_context(&tenant, &user, &prompt, token_budget, session.as_deref())
            })
            .await;
        };
        let blocks = {
            let (memory, tenant, user) = (self.builtin.clone(), tenant.clone(), user.clone());
            blocking(move || memory.blocks(&tenant, &user)).await?
        };
        let mut candidates = component.fact_candidates(tenant, user).await?;
        let mut items = component.recall(tenant, user, prompt, PROMPT_ITEMS).await?;
        if let Some(excluded) = exclude_session {
            items.retain(|item| session_of(&item.metadata).as_deref() != Some(excluded));
        }
        items.sort_by_key(|item| item.recorded_at);
        candidates.extend(items.into_iter().map(episode_candidate));
        Ok(pack_context(&blocks, prompt, candidates, token_budget))
    }

    /// Record `facts` in order; with `generation`, nothing (an empty list)
    /// when the user was forgotten since.
    ///
    /// # Errors
    ///
    /// [`MemoryError`]; nothing is written when one fact is invalid.
    pub async fn add_facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        facts: Vec<NewFact>,
        generation: Option<u64>,
    ) -> Result<Vec<Recorded>, MemoryError> {
        let Some(component) = &self.component else {
            return self
                .builtin
                .add_facts(tenant, user, facts, generation)
                .await;
        };
        let limits = self.builtin.limits();
        let facts = facts
            .into_iter()
            .map(|f| f.validated(limits))
            .collect::<Result<Vec<_>, _>>()?;
        let guard = self.guard(tenant, user, generation);
        component.add_facts(tenant, user, facts, guard).await
    }

    /// Record one fact (see [`Memory::add_fact`]).
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn add_fact(
        &self,
        tenant: &TenantId,
        user: &UserId,
        fact: NewFact,
    ) -> Result<Recorded, MemoryError> {
        self.add_facts(tenant, user, vec![fact], None)
            .await?
            .pop()
            .ok_or_else(|| MemoryError::Invalid("the user was forgotten meanwhile".into()))
    }

    /// Stop believing fact `id`; `None` when there is no such believed fact.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn retract_fact(
        &self,
        tenant: &TenantId,
        user: &UserId,
        id: &str,
    ) -> Result<Option<Fact>, MemoryError> {
        match &self.component {
            None => self.builtin.retract_fact(tenant, user, id).await,
            Some(component) => {
                let guard = self.builtin.forget_guard(tenant, user);
                component.retract(tenant, user, id, guard).await
            }
        }
    }

    /// The user's facts matching `query`, oldest recorded first.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: &FactQuery,
    ) -> Result<Vec<Fact>, MemoryError> {
        match &self.component {
            None => {
                let (memory, tenant, user, query) = (
                    self.builtin.clone(),
                    tenant.clone(),
                    user.clone(),
                    query.clone(),
                );
                blocking(move || memory.facts(&tenant, &user, &query)).await
            }
            Some(component) => component.facts(tenant, user, query, false).await,
        }
    }

    /// Everything held of the user, as one value (GDPR export).
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn export(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<MemoryExport, MemoryError> {
        let mut export = {
            let (memory, tenant, user) = (self.builtin.clone(), tenant.clone(), user.clone());
            blocking(move || memory.export(&tenant, &user)).await?
        };
        if let Some(component) = &self.component {
            export.episodes.extend(
                component
                    .items(tenant, user)
                    .await?
                    .into_iter()
                    .map(episode_of),
            );
            export.facts.extend(
                component
                    .facts(tenant, user, &FactQuery::default(), true)
                    .await?,
            );
        }
        Ok(export)
    }

    /// Counts and blocks of the user.
    ///
    /// # Errors
    ///
    /// [`MemoryError`].
    pub async fn summary(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<MemorySummary, MemoryError> {
        let mut summary = {
            let (memory, tenant, user) = (self.builtin.clone(), tenant.clone(), user.clone());
            blocking(move || memory.summary(&tenant, &user)).await?
        };
        if let Some(component) = &self.component {
            let items = component.items(tenant, user).await?;
            let versions = component
                .facts(tenant, user, &FactQuery::default(), true)
                .await?;
            summary.episodes += items.len();
            summary.last_seen = summary
                .last_seen
                .max(items.iter().map(|i| i.recorded_at).max());
            summary.facts_believed += versions.iter().filter(|f| f.expired_at.is_none()).count();
            summary.fact_versions += versions.len();
        }
        Ok(summary)
    }
}

/// Run blocking memory work (redb reads, ranking) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MemoryError> + Send + 'static,
) -> Result<T, MemoryError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        MemoryError::Store(crate::store::StoreError::Io(format!(
            "a memory task was lost: {e}"
        )))
    })?
}

fn episode_candidate(item: ComponentItem) -> Recalled {
    Recalled {
        kind: "episode",
        id: item.id,
        text: item.text,
        score: 0.0,
    }
}

/// The metadata the host writes with an episode it stores in a component.
/// Parsed typed (never into a `serde_json::Value`): the text comes from the
/// component.
#[derive(serde::Deserialize)]
struct EpisodeMeta {
    #[serde(default)]
    loom_episode: bool,
    #[serde(default)]
    kind: Option<EpisodeKind>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    at: Option<Timestamp>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    transcript: Option<Vec<Message>>,
}

/// Just the session of an item's metadata.
fn session_of(metadata: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct SessionOnly {
        #[serde(default)]
        session: Option<String>,
    }
    serde_json::from_str::<SessionOnly>(metadata)
        .ok()
        .and_then(|m| m.session)
}

/// An exported component item as an episode: one the host stored comes
/// back whole; any other item is a note holding its text.
fn episode_of(item: ComponentItem) -> Episode {
    match serde_json::from_str::<EpisodeMeta>(&item.metadata) {
        Ok(meta) if meta.loom_episode => Episode {
            id: item.id,
            kind: meta.kind.unwrap_or(EpisodeKind::Note),
            session: meta.session,
            run: meta.run,
            at: meta.at.unwrap_or(item.recorded_at),
            input: meta.input.unwrap_or_default(),
            output: meta.output.unwrap_or_default(),
            transcript: meta.transcript,
        },
        _ => Episode {
            id: item.id,
            kind: EpisodeKind::Note,
            session: None,
            run: None,
            at: item.recorded_at,
            input: item.text,
            output: String::new(),
            transcript: None,
        },
    }
}
