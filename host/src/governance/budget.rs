//! Budgets: caps on what a tenant, each of its users, and each run may
//! spend, kept in the store so a restart resets nothing.
//!
//! A cap is a metric over a window, written `<metric>_per_<window>` (or
//! `<metric>_lifetime`) in `loom.toml`: `tokens_per_day`,
//! `cost_usd_per_month`, `tool_calls_per_run`, `runs_lifetime`, ... There are
//! three levels: `[tenants.T.budgets]` caps the sum of all the tenant's users,
//! `[tenants.T.user_budgets]` caps each user, and
//! `[tenants.T.users.U.budgets]` overrides single keys for one user.
//!
//! Spending goes through [`BudgetLedger`] in two steps: [`BudgetLedger::reserve`]
//! before the work (it fails when a cap is reached, counting what concurrent
//! runs have reserved but not yet settled, so racing runs cannot overspend),
//! then [`BudgetLedger::settle`] with what the work really cost. The ledger
//! keeps the counters in memory, the one place the reservation check reads,
//! and writes changed counters through the store's group-committing writer.

use crate::store::{Store, StoreError, io};
use crate::tenancy::ids::{TenantId, UserId};
use redb::{ReadableDatabase, TableDefinition};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// (tenant, subject, window code, bucket) → the metrics' amounts, 9 × f64 LE.
/// Subject: `*` for the tenant's total, `u:<name>` for a user, `a` for the
/// anonymous user. Window codes: `h` (hour bucket of the rolling day), `m`
/// (calendar month, `yyyymm`), `l` (lifetime, bucket 0).
pub(crate) const USAGE: TableDefinition<(&str, &str, &str, u64), &[u8]> =
    TableDefinition::new("budget_usage");

/// The subject part of a budget row's key for `user` (`u:<name>`, or `a`
/// for the anonymous user); the tenant's total is `*`.
pub(crate) fn user_row_key(user: &UserId) -> String {
    subject_key(Some(user))
}

fn subject_key(user: Option<&UserId>) -> String {
    match user {
        None => "*".into(),
        Some(UserId::Anonymous) => "a".into(),
        Some(UserId::Named(name)) => format!("u:{}", name.as_str()),
    }
}

/// Delete every budget row of (tenant, user) in `txn`; returns how many.
pub(crate) fn delete_user_rows(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &UserId,
) -> Result<u64, StoreError> {
    let key = user_row_key(user);
    let mut table = txn.open_table(USAGE).map_err(io)?;
    let mut removed = 0u64;
    // Row kinds are `h`, `m` and `l`: all sort below `~`.
    table
        .retain_in(
            (tenant, key.as_str(), "", 0)..(tenant, key.as_str(), "~", 0),
            |_, _| {
                removed += 1;
                false
            },
        )
        .map_err(io)?;
    Ok(removed)
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Tokens sent to models.
    InputTokens,
    /// Tokens models produced.
    OutputTokens,
    /// Input and output tokens together.
    Tokens,
    /// Model cost in US dollars.
    CostUsd,
    /// Model calls.
    ModelCalls,
    /// Tool calls.
    ToolCalls,
    /// Agent runs (top-level; sub-agents are part of their parent's run).
    Runs,
    /// CPU time of components (tools and architectures), in milliseconds.
    CpuMs,
    /// Wall time of runs, in milliseconds.
    WallMs,
}

impl Metric {
    /// Every metric, in storage order.
    pub const ALL: [Metric; 9] = [
        Metric::InputTokens,
        Metric::OutputTokens,
        Metric::Tokens,
        Metric::CostUsd,
        Metric::ModelCalls,
        Metric::ToolCalls,
        Metric::Runs,
        Metric::CpuMs,
        Metric::WallMs,
    ];

    /// The name used in configuration keys.
    pub fn name(self) -> &'static str {
        match self {
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::Tokens => "tokens",
            Metric::CostUsd => "cost_usd",
            Metric::ModelCalls => "model_calls",
            Metric::ToolCalls => "tool_calls",
            Metric::Runs => "runs",
            Metric::CpuMs => "cpu_ms",
            Metric::WallMs => "wall_ms",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether it counts events (model calls, tool calls, runs) rather than
    /// a quantity (tokens, cost, CPU, wall time).
    fn is_count(self) -> bool {
        matches!(self, Metric::ModelCalls | Metric::ToolCalls | Metric::Runs)
    }
}

/// Over what span a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// One run (with its sub-agents).
    Run,
    /// The last 24 hours, rolling by the hour.
    Day,
    /// The calendar month (UTC).
    Month,
    /// Forever.
    Lifetime,
}

impl Window {
    /// The key suffix: `_per_run`, `_per_day`, `_per_month`, `_lifetime`.
    pub fn suffix(self) -> &'static str {
        match self {
            Window::Run => "_per_run",
            Window::Day => "_per_day",
            Window::Month => "_per_month",
            Window::Lifetime => "_lifetime",
        }
    }
}

/// Amounts of every metric.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amounts(pub [f64; 9]);

impl Amounts {
    /// The amount of `metric`.
    pub fn get(&self, metric: Metric) -> f64 {
        self.0[metric.index()]
    }

    /// Set `metric` to `value`.
    pub fn set(&mut self, metric: Metric, value: f64) -> &mut Self {
        self.0[metric.index()] = value;
        self
    }

    /// One unit of `metric`, nothing else.
    pub fn one(metric: Metric) -> Self {
        let mut amounts = Amounts::default();
        amounts.set(metric, 1.0);
        amounts
    }

    fn add(&mut self, other: &Amounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn sub(&mut self, other: &Amounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = (*a - b).max(0.0);
        }
    }

    fn to_bytes(self) -> [u8; 72] {
        let mut bytes = [0u8; 72];
        for (chunk, value) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != 72 {
            return Err(StoreError::Corrupt(format!(
                "a budget counter is {} bytes, expected 72",
                bytes.len()
            )));
        }
        let mut amounts = Amounts::default();
        for (value, chunk) in amounts.0.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(chunk);
            *value = f64::from_le_bytes(raw);
        }
        Ok(amounts)
    }
}

/// One cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cap {
    /// What it counts.
    pub metric: Metric,
    /// Over what span.
    pub window: Window,
    /// The most allowed.
    pub limit: f64,
}

impl Cap {
    /// Its configuration key, such as `tokens_per_day`: also the `budget:`
    /// reason of a run it stops.
    pub fn key(&self) -> String {
        format!("{}{}", self.metric.name(), self.window.suffix())
    }
}

/// The caps of one level (a tenant's total, each user, one user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetCaps {
    /// The caps, at most one per (metric, window).
    pub caps: Vec<Cap>,
    /// Fraction of a cap at which a `budget_warning` is emitted; `None`
    /// inherits (default 0.8).
    pub warn_fraction: Option<f64>,
}

/// Why a budget table was rejected; the text names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CapError(pub String);

impl BudgetCaps {
    /// Parse a budget table such as `{ tokens_per_day = 200000 }`.
    ///
    /// # Errors
    ///
    /// [`CapError`] naming the bad key and listing the valid forms.
    pub fn parse(table: &BTreeMap<String, toml::Value>) -> Result<Self, CapError> {
        let mut caps = BudgetCaps::default();
        for (key, value) in table {
            let number = match value {
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Float(f) => *f,
                _ => return Err(CapError(format!("`{key}` must be a number"))),
            };
            if !number.is_finite() || number < 0.0 {
                return Err(CapError(format!(
                    "`{key}` must be a finite number of at least 0"
                )));
            }
            if key == "warn_fraction" {
                if !(number > 0.0 && number <= 1.0) {
                    return Err(CapError(
                        "`warn_fraction` must be greater than 0 and at most 1".into(),
                    ));
                }
                caps.warn_fraction = Some(number);
                continue;
            }
            let cap = parse_key(key).ok_or_else(|| {
                CapError(format!(
                    "unknown budget `{key}`: write <metric>_per_run, <metric>_per_day, \
                     <metric>_per_month or <metric>_lifetime, with <metric> one of {} \
                     (runs_per_run is not a budget); or warn_fraction",
                    Metric::ALL.map(Metric::name).join(", ")
                ))
            })?;
            caps.caps.push(Cap {
                limit: number,
                ..cap
            });
        }
        Ok(caps)
    }

    /// These caps with `overrides` replacing the caps of the same key.
    pub fn overridden_by(&self, overrides: &BudgetCaps) -> BudgetCaps {
        let mut caps: Vec<Cap> = self
            .caps
            .iter()
            .filter(|c| {
                !overrides
                    .caps
                    .iter()
                    .any(|o| o.metric == c.metric && o.window == c.window)
            })
            .copied()
            .collect();
        caps.extend(overrides.caps.iter().copied());
        BudgetCaps {
            caps,
            warn_fraction: overrides.warn_fraction.or(self.warn_fraction),
        }
    }

    /// Whether there is no cap.
    pub fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }
}

fn parse_key(key: &str) -> Option<Cap> {
    for window in [Window::Run, Window::Day, Window::Month, Window::Lifetime] {
        if let Some(name) = key.strip_suffix(window.suffix())
            && let Some(metric) = Metric::ALL.into_iter().find(|m| m.name() == name)
        {
            if metric == Metric::Runs && window == Window::Run {
                return None;
            }
            return Some(Cap {
                metric,
                window,
                limit: 0.0,
            });
        }
    }
    None
}

/// A tenant's budgets, all three levels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantBudgets {
    /// Caps on the sum of all the tenant's users.
    pub tenant: BudgetCaps,
    /// Caps on each user.
    pub each_user: BudgetCaps,
    /// Per-user overrides of `each_user`, by user name.
    pub users: BTreeMap<String, BudgetCaps>,
}

impl TenantBudgets {
    /// The caps that apply to `user` alone.
    pub fn for_user(&self, user: &UserId) -> BudgetCaps {
        match user.name().and_then(|name| self.users.get(name)) {
            Some(overrides) => self.each_user.overridden_by(overrides),
            None => self.each_user.clone(),
        }
    }
}

/// Which level a cap belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The tenant's total.
    Tenant,
    /// The run's user.
    User,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Tenant => "tenant",
            Level::User => "user",
        })
    }
}

/// A cap that stopped a reservation.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error(
    "budget:{key}: the {level} has used {used} of {limit} {metric} ({window})",
    key = cap.key(), metric = cap.metric.name(), window = window_text(cap.window)
)]
pub struct Exceeded {
    /// The cap.
    pub cap: Cap,
    /// Whose cap it is.
    pub level: Level,
    /// What was used (and reserved by runs in flight) when it stopped.
    pub used: f64,
    /// The cap's limit.
    pub limit: f64,
}

impl Exceeded {
    /// The run's interruption reason: `budget:<key>`.
    pub fn reason(&self) -> String {
        format!("budget:{}", self.cap.key())
    }
}

fn window_text(window: Window) -> &'static str {
    match window {
        Window::Run => "in this run",
        Window::Day => "in the last 24 hours",
        Window::Month => "this calendar month",
        Window::Lifetime => "in total",
    }
}

/// A cap that crossed its warning fraction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    /// The cap.
    pub cap: Cap,
    /// Whose cap it is.
    pub level: Level,
    /// What is used now.
    pub used: f64,
    /// The cap's limit.
    pub limit: f64,
}

/// Use against one cap, for `loom budget show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapUse {
    /// The cap's key.
    pub key: String,
    /// Whose cap.
    pub level: Level,
    /// Used in the window now.
    pub used: f64,
    /// The limit.
    pub limit: f64,
}

/// A subject's counters: hour buckets of the rolling day, the month, the
/// lifetime, and what runs in flight have reserved.
#[derive(Debug, Clone)]
struct Counters {
    /// Indexed by hour % 24: (hour index, amounts).
    hours: [(u64, Amounts); 24],
    month: (u64, Amounts),
    lifetime: Amounts,
    reserved: Amounts,
    /// When last used, in Unix seconds (for idle eviction).
    touched: u64,
}

impl Counters {
    fn empty() -> Self {
        Counters {
            hours: [(0, Amounts::default()); 24],
            month: (0, Amounts::default()),
            lifetime: Amounts::default(),
            reserved: Amounts::default(),
            touched: 0,
        }
    }

    fn used(&self, window: Window, metric: Metric, now: Clock) -> f64 {
        match window {
            Window::Run => 0.0,
            Window::Day => self
                .hours
                .iter()
                .filter(|(hour, _)| *hour + 24 > now.hour && *hour <= now.hour)
                .map(|(_, a)| a.get(metric))
                .sum(),
            Window::Month => {
                if self.month.0 == now.month {
                    self.month.1.get(metric)
                } else {
                    0.0
                }
            }
            Window::Lifetime => self.lifetime.get(metric),
        }
    }

    fn charge(&mut self, amounts: &Amounts, now: Clock) {
        let slot = &mut self.hours[(now.hour % 24) as usize];
        if slot.0 != now.hour {
            *slot = (now.hour, Amounts::default());
        }
        slot.1.add(amounts);
        if self.month.0 != now.month {
            self.month = (now.month, Amounts::default());
        }
        self.month.1.add(amounts);
        self.lifetime.add(amounts);
    }
}

/// The second, hour and month "now" falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Clock {
    secs: u64,
    hour: u64,
    /// `year * 100 + month`.
    month: u64,
}

impl Clock {
    fn at(time: SystemTime, months: &MonthCache) -> Self {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let hour = secs / 3600;
        Clock {
            secs,
            hour,
            month: months.month_of(hour, secs),
        }
    }
}

/// The calendar month of the last hour asked about, so most operations
/// skip the calendar arithmetic: `hour << 32 | month`, 0 when empty.
#[derive(Debug, Default)]
struct MonthCache(AtomicU64);

impl MonthCache {
    fn month_of(&self, hour: u64, secs: u64) -> u64 {
        let cached = self.0.load(Ordering::Relaxed);
        if cached != 0 && cached >> 32 == hour {
            return cached & u64::from(u32::MAX);
        }
        let month = time::OffsetDateTime::from_unix_timestamp(secs as i64)
            .map(|t| t.year() as u64 * 100 + u64::from(u8::from(t.month())))
            .unwrap_or(0);
        if hour <= u64::from(u32::MAX) && month <= u64::from(u32::MAX) {
            self.0.store(hour << 32 | month, Ordering::Relaxed);
        }
        month
    }
}

/// Whose counters: a tenant's total or one user's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Subject {
    tenant: TenantId,
    /// `None` for the tenant's total.
    user: Option<UserId>,
}

impl Subject {
    fn key(&self) -> String {
        subject_key(self.user.as_ref())
    }
}

/// Spending of one run and its sub-agents, for the per-run caps and the
/// once-per-run warnings.
#[derive(Debug)]
pub struct RunSpend {
    inner: Mutex<RunSpendInner>,
}

impl Default for RunSpend {
    fn default() -> Self {
        RunSpend {
            inner: Mutex::new(RunSpendInner {
                used: Amounts::default(),
                reserved: Amounts::default(),
                warned: HashSet::new(),
                started: Instant::now(),
            }),
        }
    }
}

#[derive(Debug)]
struct RunSpendInner {
    used: Amounts,
    reserved: Amounts,
    warned: HashSet<(Level, Metric, Window)>,
    /// When the run tree started: its wall time so far.
    started: Instant,
}

impl RunSpend {
    /// What the run has spent so far.
    pub fn used(&self) -> Amounts {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, RunSpendInner> {
        crate::sync::lock(&self.inner)
    }
}

/// What one run is governed by: the caps of its tenant and user, and its
/// own spending (shared with its sub-agents).
#[derive(Debug, Clone)]
pub struct RunBudget {
    /// Whose counters the run charges: the tenant's total, then the user's.
    /// Built once per run so the hot paths clone no ids.
    subjects: Arc<[Subject; 2]>,
    tenant_caps: Arc<BudgetCaps>,
    user_caps: Arc<BudgetCaps>,
    warn_fraction: f64,
    spend: Arc<RunSpend>,
}

impl RunBudget {
    /// The budget of a new top-level run of `user` under `budgets`.
    pub fn new(tenant: TenantId, user: UserId, budgets: &TenantBudgets) -> Self {
        let user_caps = budgets.for_user(&user);
        let warn_fraction = user_caps
            .warn_fraction
            .or(budgets.tenant.warn_fraction)
            .unwrap_or(0.8);
        RunBudget {
            subjects: Arc::new([
                Subject {
                    tenant: tenant.clone(),
                    user: None,
                },
                Subject {
                    tenant,
                    user: Some(user),
                },
            ]),
            tenant_caps: Arc::new(budgets.tenant.clone()),
            user_caps: Arc::new(user_caps),
            warn_fraction,
            spend: Arc::new(RunSpend::default()),
        }
    }

    /// The run's spending so far, sub-agents included.
    pub fn spend(&self) -> &Arc<RunSpend> {
        &self.spend
    }

    /// Whether no cap applies: the ledger then neither checks nor counts the
    /// run (a cap added later starts from what runs spend after it).
    pub fn unlimited(&self) -> bool {
        self.tenant_caps.is_empty() && self.user_caps.is_empty()
    }

    fn subjects(&self) -> [(&Subject, Level, &BudgetCaps); 2] {
        [
            (&self.subjects[0], Level::Tenant, &self.tenant_caps),
            (&self.subjects[1], Level::User, &self.user_caps),
        ]
    }
}

/// Spending reserved before a piece of work; give it back to
/// [`BudgetLedger::settle`] (or drop it to release the reservation).
#[must_use = "settle the reservation with what the work cost"]
pub struct Reservation {
    /// `None` for a run no cap applies to: nothing to count.
    ledger: Option<Arc<LedgerInner>>,
    budget: RunBudget,
    amounts: Amounts,
    settled: bool,
}

impl Reservation {
    /// What was reserved: the request, with quantities cut to the room the
    /// caps leave.
    pub fn amounts(&self) -> Amounts {
        self.amounts
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("amounts", &self.amounts)
            .field("settled", &self.settled)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled
            && let Some(ledger) = &self.ledger
        {
            ledger.release(&self.budget, &self.amounts);
        }
    }
}

/// The budget counters of every tenant and user (a clone is a handle to
/// the same counters).
#[derive(Clone)]
pub struct BudgetLedger {
    inner: Arc<LedgerInner>,
}

struct LedgerInner {
    store: Option<Arc<Store>>,
    state: Mutex<LedgerState>,
    /// A persist job is scheduled or queued and has not taken its
    /// snapshot yet.
    persist_queued: AtomicBool,
    /// Test hook: a fixed "now".
    fixed_now: Option<SystemTime>,
    months: MonthCache,
}

/// The ledger's maps hash with foldhash, keyed per process: every
/// operation looks its subjects up several times, and SipHash was a
/// visible share of it. A random key still keeps callers from choosing
/// colliding tenant and user ids.
type FastState = foldhash::fast::RandomState;

#[derive(Default)]
struct LedgerState {
    counters: HashMap<Subject, Counters, FastState>,
    dirty: HashSet<Subject, FastState>,
}

/// Counters idle this long, with nothing reserved or unsaved, may be
/// dropped from memory (they are reloaded from the store when needed).
const IDLE_EVICTION: Duration = Duration::from_secs(600);

/// Writes the dirty counters when dropped: after the persist delay, or
/// when the task holding it is cancelled (a runtime shutting down), so the
/// `persist_queued` flag can never stay set with nothing queued.
struct PersistGuard(std::sync::Weak<LedgerInner>);

impl Drop for PersistGuard {
    fn drop(&mut self) {
        if let Some(ledger) = self.0.upgrade() {
            ledger.write_dirty();
        }
    }
}

/// How long changed counters may wait before they are written.
const PERSIST_DELAY: Duration = Duration::from_secs(1);

/// Subjects kept in memory before idle ones are dropped.
const MAX_SUBJECTS: usize = 100_000;

impl BudgetLedger {
    /// A ledger persisted in `store` (`None`: memory only, for tests).
    pub fn new(store: Option<Arc<Store>>) -> Self {
        BudgetLedger {
            inner: Arc::new(LedgerInner {
                store,
                state: Mutex::new(LedgerState::default()),
                persist_queued: AtomicBool::new(false),
                fixed_now: None,
                months: MonthCache::default(),
            }),
        }
    }

    /// Reserve `want` for `budget`'s run.
    ///
    /// # Errors
    ///
    /// [`Exceeded`] naming the first cap (run, then user, then tenant) that
    /// is reached: what is used and reserved is at or over its limit.
    ///
    /// A quantity (tokens, cost, CPU, wall time) is granted only as far as
    /// every cap has room: the reservation's [`Reservation::amounts`] may
    /// be less than `want`.
    pub fn reserve(&self, budget: &RunBudget, want: Amounts) -> Result<Reservation, Exceeded> {
        // No cap, nothing to check or keep: the fast path of most tenants.
        if budget.unlimited() {
            return Ok(Reservation {
                ledger: None,
                budget: budget.clone(),
                amounts: want,
                settled: false,
            });
        }
        let granted = self.inner.reserve(budget, want)?;
        Ok(Reservation {
            ledger: Some(self.inner.clone()),
            budget: budget.clone(),
            amounts: granted,
            settled: false,
        })
    }

    /// Turn `reservation` into a charge of `actual`; returns the caps that
    /// crossed their warning fraction for the first time in this run.
    pub fn settle(&self, mut reservation: Reservation, actual: Amounts) -> Vec<Warning> {
        reservation.settled = true;
        if reservation.ledger.is_none() {
            return Vec::new();
        }
        self.inner
            .settle(&reservation.budget, &reservation.amounts, &actual)
    }

    /// Charge `actual` without a reservation (work that already happened,
    /// such as a run's wall time).
    pub fn charge(&self, budget: &RunBudget, actual: Amounts) -> Vec<Warning> {
        if budget.unlimited() {
            return Vec::new();
        }
        self.inner.settle(budget, &Amounts::default(), &actual)
    }

    /// Use against every cap of `budgets` for `user` (or only the tenant's
    /// total when `user` is `None`).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when stored counters cannot be read.
    pub fn usage(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        budgets: &TenantBudgets,
    ) -> Result<Vec<CapUse>, StoreError> {
        let now = self.inner.clock();
        let mut state = self.inner.lock();
        let mut report = Vec::new();
        let mut levels = vec![(
            Subject {
                tenant: tenant.clone(),
                user: None,
            },
            Level::Tenant,
            budgets.tenant.clone(),
        )];
        if let Some(user) = user {
            levels.push((
                Subject {
                    tenant: tenant.clone(),
                    user: Some(user.clone()),
                },
                Level::User,
                budgets.for_user(user),
            ));
        }
        for (subject, level, caps) in levels {
            let counters = self.inner.counters(&mut state, &subject, now)?;
            for cap in &caps.caps {
                if cap.window == Window::Run {
                    continue;
                }
                report.push(CapUse {
                    key: cap.key(),
                    level: level.clone(),
                    used: counters.used(cap.window, cap.metric, now),
                    limit: cap.limit,
                });
            }
        }
        Ok(report)
    }

    /// Drop the in-memory counters of (tenant, user), saved or not: call it
    /// before deleting the user's rows, so no pending write brings them
    /// back. A run of the user that is still going charges fresh counters.
    pub fn forget_user(&self, tenant: &TenantId, user: &UserId) {
        let subject = Subject {
            tenant: tenant.clone(),
            user: Some(user.clone()),
        };
        let mut state = self.inner.lock();
        state.counters.remove(&subject);
        state.dirty.remove(&subject);
    }

    /// Queue a write of every changed counter now, without waiting; the
    /// caller keeps the ledger alive until the store has written it (a host
    /// being dropped waits with [`Store::sync_blocking`]).
    pub fn persist_now(&self) {
        self.inner.write_dirty();
    }

    /// Write every changed counter now; resolves once durable.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        self.inner.write_dirty();
        store.sync().await
    }
}

impl LedgerInner {
    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        crate::sync::lock(&self.state)
    }

    fn clock(&self) -> Clock {
        Clock::at(self.fixed_now.unwrap_or_else(SystemTime::now), &self.months)
    }

    /// The counters of `subject`, loaded from the store on first use.
    fn counters<'s>(
        &self,
        state: &'s mut LedgerState,
        subject: &Subject,
        now: Clock,
    ) -> Result<&'s mut Counters, StoreError> {
        if !state.counters.contains_key(subject) {
            self.admit(state, subject, now)?;
        }
        let counters = state
            .counters
            .get_mut(subject)
            .ok_or_else(|| StoreError::Io("budget counters vanished".into()))?;
        counters.touched = now.secs;
        Ok(counters)
    }

    /// Load `subject`'s counters into `state`, first evicting idle ones
    /// when the cache is full.
    ///
    /// Out of line and cold on purpose: the read transaction and the
    /// counters built on the stack take about 10 KiB of frame, and
    /// [`Self::counters`] runs on a sandbox's fiber stack at every model
    /// and tool call. Inlined, every call probed those pages (cold, since
    /// the pool hands out the least recently used stack), which cost more
    /// than the rest of the budget check.
    #[cold]
    #[inline(never)]
    fn admit(
        &self,
        state: &mut LedgerState,
        subject: &Subject,
        now: Clock,
    ) -> Result<(), StoreError> {
        let loaded = self.load(subject, now)?;
        if state.counters.len() >= MAX_SUBJECTS {
            evict_idle(state, now);
        }
        state.counters.insert(subject.clone(), loaded);
        Ok(())
    }

    fn load(&self, subject: &Subject, now: Clock) -> Result<Counters, StoreError> {
        let mut counters = Counters::empty();
        let Some(store) = &self.store else {
            return Ok(counters);
        };
        let txn = store.db().begin_read().map_err(io)?;
        let Some(table) = crate::store::read_table(&txn, USAGE)? else {
            return Ok(counters);
        };
        let tenant = subject.tenant.as_str();
        let key = subject.key();
        let first_hour = now.hour.saturating_sub(23);
        for entry in table
            .range((tenant, key.as_str(), "h", first_hour)..=(tenant, key.as_str(), "h", now.hour))
            .map_err(io)?
        {
            let (k, v) = entry.map_err(io)?;
            let hour = k.value().3;
            counters.hours[(hour % 24) as usize] = (hour, Amounts::from_bytes(v.value())?);
        }
        if let Some(v) = table
            .get((tenant, key.as_str(), "m", now.month))
            .map_err(io)?
        {
            counters.month = (now.month, Amounts::from_bytes(v.value())?);
        }
        if let Some(v) = table.get((tenant, key.as_str(), "l", 0)).map_err(io)? {
            counters.lifetime = Amounts::from_bytes(v.value())?;
        }
        Ok(counters)
    }

    fn reserve(&self, budget: &RunBudget, want: Amounts) -> Result<Amounts, Exceeded> {
        let now = self.clock();
        let mut granted = want;
        let mut state = self.lock();
        // Per-run caps first: they are the run's own.
        {
            let spend = budget.spend.lock();
            for (level, caps) in [
                (Level::User, &*budget.user_caps),
                (Level::Tenant, &*budget.tenant_caps),
            ] {
                for cap in caps.caps.iter().filter(|c| c.window == Window::Run) {
                    let used = if cap.metric == Metric::WallMs {
                        spend.started.elapsed().as_secs_f64() * 1000.0
                    } else {
                        spend.used.get(cap.metric) + spend.reserved.get(cap.metric)
                    };
                    check_cap(cap, &level, used, &want, &mut granted)?;
                }
            }
        }
        let mut subjects = budget.subjects();
        // The user's caps before the tenant's: the narrower reason first.
        subjects.reverse();
        for (subject, level, caps) in &subjects {
            if caps.is_empty() {
                continue;
            }
            let counters = match self.counters(&mut state, subject, now) {
                Ok(counters) => counters,
                Err(error) => {
                    // Fail closed: spending cannot be checked.
                    tracing::error!(%error, "budget counters cannot be read; refusing to spend");
                    let cap = caps.caps[0];
                    return Err(Exceeded {
                        cap,
                        level: level.clone(),
                        used: f64::NAN,
                        limit: cap.limit,
                    });
                }
            };
            for cap in caps.caps.iter().filter(|c| c.window != Window::Run) {
                let used =
                    counters.used(cap.window, cap.metric, now) + counters.reserved.get(cap.metric);
                check_cap(cap, level, used, &want, &mut granted)?;
            }
        }
        for (subject, _, _) in &subjects {
            if let Ok(counters) = self.counters(&mut state, subject, now) {
                counters.reserved.add(&granted);
            }
        }
        budget.spend.lock().reserved.add(&granted);
        Ok(granted)
    }

    fn release(&self, budget: &RunBudget, amounts: &Amounts) {
        let now = self.clock();
        let mut state = self.lock();
        for (subject, _, _) in budget.subjects() {
            if let Ok(counters) = self.counters(&mut state, subject, now) {
                counters.reserved.sub(amounts);
            }
        }
        budget.spend.lock().reserved.sub(amounts);
    }

    fn settle(
        self: &Arc<Self>,
        budget: &RunBudget,
        reserved: &Amounts,
        actual: &Amounts,
    ) -> Vec<Warning> {
        let now = self.clock();
        let mut actual = *actual;
        // Tokens are the sum of input and output unless given.
        if actual.get(Metric::Tokens) == 0.0 {
            let total = actual.get(Metric::InputTokens) + actual.get(Metric::OutputTokens);
            actual.set(Metric::Tokens, total);
        }
        let mut warnings = Vec::new();
        // Lock order, everywhere: the ledger, then the run's spending.
        let mut state = self.lock();
        let mut spend = budget.spend.lock();
        spend.reserved.sub(reserved);
        spend.used.add(&actual);
        for (level, caps) in [
            (Level::User, &*budget.user_caps),
            (Level::Tenant, &*budget.tenant_caps),
        ] {
            for cap in caps.caps.iter().filter(|c| c.window == Window::Run) {
                let used = spend.used.get(cap.metric);
                warn_if_crossed(
                    &mut spend.warned,
                    &mut warnings,
                    *cap,
                    level.clone(),
                    used,
                    budget.warn_fraction,
                );
            }
        }
        for (subject, level, caps) in budget.subjects() {
            let counters = match self.counters(&mut state, subject, now) {
                Ok(counters) => counters,
                Err(error) => {
                    tracing::error!(%error, "budget counters cannot be read; this charge is lost");
                    continue;
                }
            };
            counters.reserved.sub(reserved);
            counters.charge(&actual, now);
            for cap in caps.caps.iter().filter(|c| c.window != Window::Run) {
                let used = counters.used(cap.window, cap.metric, now);
                warn_if_crossed(
                    &mut spend.warned,
                    &mut warnings,
                    *cap,
                    level.clone(),
                    used,
                    budget.warn_fraction,
                );
            }
            if !state.dirty.contains(subject) {
                state.dirty.insert(subject.clone());
            }
        }
        drop(spend);
        drop(state);
        self.queue_persist();
        warnings
    }

    /// Queue one job that writes every dirty counter, unless one is queued
    /// and has not taken its snapshot yet (it will include these changes).
    fn queue_persist(self: &Arc<Self>) {
        if self.store.is_none() || self.persist_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // Changes are written at most every PERSIST_DELAY: under load,
        // thousands of charges become one row write per subject.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let guard = PersistGuard(Arc::downgrade(self));
                runtime.spawn(async move {
                    tokio::time::sleep(PERSIST_DELAY).await;
                    drop(guard);
                });
            }
            Err(_) => self.write_dirty(),
        }
    }

    /// Queue a job that writes every dirty counter.
    fn write_dirty(self: &Arc<Self>) {
        let Some(store) = &self.store else {
            return;
        };
        let ledger = Arc::downgrade(self);
        let on_failure = Arc::downgrade(self);
        // Taken once, on the writer thread, so a retried job writes the
        // same rows; kept to mark them dirty again if the write fails.
        let snapshot: Arc<Mutex<Option<Rows>>> = Arc::new(Mutex::new(None));
        let taken_rows = snapshot.clone();
        // Nobody waits for it (the counters are read from memory); a flush
        // syncs the store after it.
        store.write_later(
            Box::new(move |txn| {
                let mut taken = crate::sync::lock(&snapshot);
                if taken.is_none() {
                    *taken = Some(ledger.upgrade().map(|l| l.take_dirty()).unwrap_or_default());
                }
                write_rows(txn, taken.as_deref().unwrap_or_default())
            }),
            Box::new(move |result| {
                if let Err(error) = result {
                    tracing::error!(%error, "budget counters could not be saved; they will be written with the next change");
                    let rows = crate::sync::lock(&taken_rows).take();
                    if let Some(ledger) = on_failure.upgrade() {
                        match rows {
                            Some(rows) => {
                                let mut state = ledger.lock();
                                state.dirty.extend(rows.into_iter().map(|(subject, _)| subject));
                            }
                            // The job never ran: nothing was taken, so
                            // only the flag needs clearing.
                            None => ledger.persist_queued.store(false, Ordering::Release),
                        }
                    }
                }
            }),
        );
    }

    /// The dirty counters, marked clean; a later change queues a new job.
    fn take_dirty(&self) -> Vec<(Subject, Counters)> {
        let mut state = self.lock();
        self.persist_queued.store(false, Ordering::Release);
        let dirty: Vec<Subject> = state.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|subject| {
                let counters = state.counters.get(&subject)?.clone();
                Some((subject, counters))
            })
            .collect()
    }
}

/// Counters to write, by subject.
type Rows = Vec<(Subject, Counters)>;

/// Write `rows` (each subject's current hour, month and lifetime) and drop
/// hour buckets that left the rolling day.
fn write_rows(
    txn: &redb::WriteTransaction,
    rows: &[(Subject, Counters)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(USAGE).map_err(io)?;
    for (subject, counters) in rows {
        let tenant = subject.tenant.as_str();
        let key = subject.key();
        let newest = counters.hours.iter().map(|(h, _)| *h).max().unwrap_or(0);
        for (hour, amounts) in &counters.hours {
            if *hour + 24 > newest && *amounts != Amounts::default() {
                table
                    .insert(
                        (tenant, key.as_str(), "h", *hour),
                        amounts.to_bytes().as_slice(),
                    )
                    .map_err(io)?;
            }
        }
        if newest >= 24 {
            table
                .retain_in(
                    (tenant, key.as_str(), "h", 0)..(tenant, key.as_str(), "h", newest - 23),
                    |_, _| false,
                )
                .map_err(io)?;
        }
        if counters.month.0 != 0 {
            table
                .insert(
                    (tenant, key.as_str(), "m", counters.month.0),
                    counters.month.1.to_bytes().as_slice(),
                )
                .map_err(io)?;
        }
        table
            .insert(
                (tenant, key.as_str(), "l", 0),
                counters.lifetime.to_bytes().as_slice(),
            )
            .map_err(io)?;
    }
    Ok(())
}

/// Drop counters idle for [`IDLE_EVICTION`] with nothing reserved or unsaved.
fn evict_idle(state: &mut LedgerState, now: Clock) {
    let LedgerState { counters, dirty } = state;
    counters.retain(|subject, c| {
        dirty.contains(subject)
            || c.reserved != Amounts::default()
            || now.secs.saturating_sub(c.touched) < IDLE_EVICTION.as_secs()
    });
}

/// Whether `cap`, with `used` (spent and reserved) so far, refuses `want`.
/// A count (model calls, tool calls, runs) refuses only more of itself past
/// its limit: the tenth of ten tool calls runs, the eleventh does not, and
/// the model may still answer. A quantity (tokens, cost, CPU, wall time)
/// refuses everything once reached: the run cannot go on without spending
/// more of it.
fn blocks(cap: &Cap, used: f64, want: &Amounts) -> bool {
    if cap.metric.is_count() {
        let more = want.get(cap.metric);
        more > 0.0 && used + more > cap.limit
    } else {
        used >= cap.limit
    }
}

/// Check `want` against `cap` of `level` with `used` (spent and reserved)
/// so far, cutting `granted` to the room it leaves.
fn check_cap(
    cap: &Cap,
    level: &Level,
    used: f64,
    want: &Amounts,
    granted: &mut Amounts,
) -> Result<(), Exceeded> {
    grant_within(cap, used, granted);
    if blocks(cap, used, want) {
        return Err(Exceeded {
            cap: *cap,
            level: level.clone(),
            used,
            limit: cap.limit,
        });
    }
    Ok(())
}

/// Cut a quantity in `granted` to the room `cap` leaves after `used`.
fn grant_within(cap: &Cap, used: f64, granted: &mut Amounts) {
    if !cap.metric.is_count() {
        let room = (cap.limit - used).max(0.0);
        if granted.get(cap.metric) > room {
            granted.set(cap.metric, room);
        }
    }
}

fn warn_if_crossed(
    warned: &mut HashSet<(Level, Metric, Window)>,
    warnings: &mut Vec<Warning>,
    cap: Cap,
    level: Level,
    used: f64,
    fraction: f64,
) {
    if cap.limit > 0.0
        && used >= cap.limit * fraction
        && warned.insert((level.clone(), cap.metric, cap.window))
    {
        warnings.push(Warning {
            cap,
            level,
            used,
            limit: cap.limit,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(text: &str) -> BudgetCaps {
        BudgetCaps::parse(&toml::from_str(text).unwrap()).unwrap()
    }

    fn budgets(tenant: &str, each_user: &str) -> TenantBudgets {
        TenantBudgets {
            tenant: caps(tenant),
            each_user: caps(each_user),
            users: BTreeMap::new(),
        }
    }

    fn run(budgets: &TenantBudgets, user: &str) -> RunBudget {
        RunBudget::new(
            TenantId::new("acme").unwrap(),
            UserId::named(user).unwrap(),
            budgets,
        )
    }

    #[test]
    fn keys_parse_and_bad_keys_are_named() {
        let parsed = caps(
            "tokens_per_day = 10\ncost_usd_per_month = 2.5\nruns_lifetime = 3\ntool_calls_per_run = 4\nwarn_fraction = 0.5",
        );
        assert_eq!(parsed.caps.len(), 4);
        assert_eq!(parsed.warn_fraction, Some(0.5));
        for bad in [
            "runs_per_run = 1",
            "tokens_per_week = 1",
            "tokens_per_day = -1",
            "tokens_per_day = 'x'",
        ] {
            let err = BudgetCaps::parse(&toml::from_str(bad).unwrap()).unwrap_err();
            assert!(err.0.contains('`'), "{bad}: {err}");
        }
    }

    #[test]
    fn reservations_count_against_the_cap_until_released_or_settled() {
        let ledger = BudgetLedger::new(None);
        let b = budgets("", "tool_calls_per_day = 2");
        let alice = run(&b, "alice");
        let one = Amounts::one(Metric::ToolCalls);
        let first = ledger.reserve(&alice, one).unwrap();
        let second = ledger.reserve(&run(&b, "alice"), one).unwrap();
        let refused = ledger.reserve(&run(&b, "alice"), one).unwrap_err();
        assert_eq!(refused.reason(), "budget:tool_calls_per_day");
        assert_eq!(refused.level, Level::User);
        drop(second);
        let third = ledger.reserve(&alice, one).unwrap();
        ledger.settle(first, one);
        ledger.settle(third, one);
        assert!(ledger.reserve(&alice, one).is_err());
        // Another user is not affected.
        assert!(ledger.reserve(&run(&b, "bob"), one).is_ok());
    }

    #[test]
    fn the_tenant_total_caps_the_sum_of_users_and_per_run_caps_the_run() {
        let ledger = BudgetLedger::new(None);
        let b = budgets("tokens_per_month = 100", "tool_calls_per_run = 1");
        let mut spend = Amounts::default();
        spend.set(Metric::InputTokens, 60.0);
        let r = ledger.reserve(&run(&b, "a"), Amounts::default()).unwrap();
        ledger.settle(r, spend);
        let r = ledger.reserve(&run(&b, "b"), Amounts::default()).unwrap();
        ledger.settle(r, spend);
        let err = ledger
            .reserve(&run(&b, "c"), Amounts::default())
            .expect_err("the tenant's 100 tokens are spent");
        assert_eq!(
            (err.level, err.cap.key()),
            (Level::Tenant, "tokens_per_month".into())
        );
        let ledger = BudgetLedger::new(None);
        let one_run = run(&b, "a");
        let r = ledger
            .reserve(&one_run, Amounts::one(Metric::ToolCalls))
            .unwrap();
        ledger.settle(r, Amounts::one(Metric::ToolCalls));
        assert_eq!(
            ledger
                .reserve(&one_run, Amounts::one(Metric::ToolCalls))
                .err()
                .map(|e| e.reason()),
            Some("budget:tool_calls_per_run".into())
        );
        assert!(
            ledger
                .reserve(&run(&b, "a"), Amounts::one(Metric::ToolCalls))
                .is_ok()
        );
    }

    #[test]
    fn warnings_fire_once_per_run_at_the_fraction() {
        let ledger = BudgetLedger::new(None);
        let b = budgets("", "model_calls_per_day = 10\nwarn_fraction = 0.5");
        let r = run(&b, "a");
        let mut warned = 0;
        for _ in 0..8 {
            let reservation = ledger
                .reserve(&r, Amounts::one(Metric::ModelCalls))
                .unwrap();
            warned += ledger
                .settle(reservation, Amounts::one(Metric::ModelCalls))
                .len();
        }
        assert_eq!(warned, 1);
    }

    #[test]
    fn the_rolling_day_forgets_hours_older_than_a_day() {
        let mut counters = Counters::empty();
        let now = Clock {
            secs: 1000 * 3600,
            hour: 1000,
            month: 202611,
        };
        counters.charge(&Amounts::one(Metric::Runs), Clock { hour: 975, ..now });
        counters.charge(&Amounts::one(Metric::Runs), Clock { hour: 990, ..now });
        counters.charge(&Amounts::one(Metric::Runs), now);
        assert_eq!(counters.used(Window::Day, Metric::Runs, now), 2.0);
        assert_eq!(counters.used(Window::Lifetime, Metric::Runs, now), 3.0);
        let next_month = Clock {
            secs: 1001 * 3600,
            hour: 1001,
            month: 202612,
        };
        assert_eq!(counters.used(Window::Month, Metric::Runs, next_month), 0.0);
    }

    #[test]
    fn the_cached_month_turns_with_the_hour() {
        let months = MonthCache::default();
        // 2026-11-30T23:30:00Z, then half an hour later in December.
        let november = UNIX_EPOCH + Duration::from_secs(1_796_081_400);
        let december = november + Duration::from_secs(1800);
        assert_eq!(Clock::at(november, &months).month, 202611);
        assert_eq!(Clock::at(november, &months).month, 202611);
        assert_eq!(Clock::at(december, &months).month, 202612);
        // Asking about an earlier hour again is not answered from the cache.
        assert_eq!(Clock::at(november, &months).month, 202611);
    }

    #[tokio::test]
    async fn counters_survive_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.redb");
        let b = budgets(
            "runs_lifetime = 5",
            "runs_per_day = 5\ncost_usd_per_month = 1",
        );
        {
            let ledger = BudgetLedger::new(Some(Store::open(&path).unwrap()));
            for _ in 0..3 {
                let r = ledger
                    .reserve(&run(&b, "a"), Amounts::one(Metric::Runs))
                    .unwrap();
                ledger.settle(r, Amounts::one(Metric::Runs));
            }
            ledger.flush().await.unwrap();
        }
        let ledger = BudgetLedger::new(Some(Store::open(&path).unwrap()));
        let usage = ledger
            .usage(
                &TenantId::new("acme").unwrap(),
                Some(&UserId::named("a").unwrap()),
                &b,
            )
            .unwrap();
        let used: Vec<(String, f64)> = usage.iter().map(|u| (u.key.clone(), u.used)).collect();
        assert!(used.contains(&("runs_lifetime".into(), 3.0)), "{used:?}");
        assert!(used.contains(&("runs_per_day".into(), 3.0)), "{used:?}");
    }
}
