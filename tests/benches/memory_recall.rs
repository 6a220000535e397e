//! The memory recall bench: recall latency for one user among many, with a
//! million episodes and facts in the store, the store's size on disk, and
//! the latency of writing a fact.
//!
//! A fresh redb file in a temporary directory is filled with 10,000 users
//! spread over 10 tenants, 100 items each (1,000,000 items): 50 episodes
//! (a prompt and an answer of a few dozen words drawn, Zipf-like, from a
//! vocabulary of 4,000 generated words, so BM25 has something to rank) and
//! 50 facts (short subjects, predicates and objects from small vocabularies;
//! a later fact on the same subject and predicate closes the earlier one, so
//! closed versions exist). Each user is written as ten rounds of five
//! episodes and one `add_facts` of five facts, the way runs and their fact
//! extraction would write them; many users are loaded at once (256 writes in
//! flight by default) so the store's writer group-commits big batches. The
//! store fsyncs every 100 ms (`StoreSync::Interval(100)`), as a loaded
//! server would run it.
//!
//! Then, for random (tenant, user) picks, after a warm-up pass over other
//! users: `Memory::recall(…, query, 10)` and `Memory::prompt_context(…,
//! 800, None)` (what a run does before each prompt), with queries of a few
//! vocabulary words. Then sequential, awaited `add_fact` calls for random
//! users (one writer, nothing else queued; some close an existing fact),
//! back to back and spaced 5 ms apart (an idle writer), first with the
//! store committing at once and fsyncing every 100 ms, then with the same
//! file reopened with `StoreSync::Always` (every commit fsynced before the
//! writer hears back). Recall is measured once more right after the reopen,
//! with redb's cache empty (the OS page cache still holds the file).
//!
//! Everything generated is deterministic (an inline SplitMix64).
//!
//! Run: `cargo bench -p loom-tests --bench memory_recall -- [--users 10000]
//! [--queries 2000] [--writes 1000] [--in-flight 256]`

use loom_host::memory::{
    EpisodeKind, FactQuery, Memory, MemoryLimits, NewEpisode, NewFact, Timestamp,
};
use loom_host::store::{SessionStore, Store, StoreSync};
use loom_host::tenancy::ids::{TenantId, UserId};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

/// Tenants the users are spread over.
const TENANTS: usize = 10;
/// Rounds per user; each writes `EPISODES_PER_ROUND` episodes, then
/// `FACTS_PER_ROUND` facts in one `add_facts`.
const ROUNDS: usize = 10;
const EPISODES_PER_ROUND: usize = 5;
const FACTS_PER_ROUND: usize = 5;
/// Words in the generated vocabulary.
const VOCABULARY: usize = 4000;
/// Recalls (and prompt contexts) in the warm-up pass.
const WARM_UP: usize = 500;
/// The pause between spaced fact writes.
const SPACING: Duration = Duration::from_millis(5);
const DAY_MS: i64 = 24 * 3600 * 1000;

const SUBJECTS: &[&str] = &[
    "user",
    "user's partner",
    "user's manager",
    "their dog",
    "the team",
    "current project",
    "home office",
    "their car",
    "the company",
    "their sister",
    "the mobile app",
    "their laptop",
];

/// Any spelling: the memory canonicalises predicates.
const PREDICATES: &[&str] = &[
    "lives in",
    "works at",
    "prefers",
    "favorite color",
    "speaks",
    "uses",
    "timezone",
    "birthday",
    "drinks",
    "allergic to",
    "name is",
    "plays",
    "reads",
    "owns",
    "deadline",
    "reports to",
];

/// Words that BM25 drops, mixed into episode text for realistic lengths.
const FILLER: &[&str] = &[
    "the", "and", "to", "of", "a", "in", "is", "it", "for", "with", "my", "what", "can", "you",
];

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Generated words and how text is drawn from them.
struct Corpus {
    words: Vec<String>,
}

impl Corpus {
    fn new() -> Self {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
            "z", "ch", "sh", "th", "st", "tr", "br",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou"];
        let mut rng = Rng::new(0x5EED_C0DE);
        let mut seen = HashSet::new();
        let mut words = Vec::with_capacity(VOCABULARY);
        while words.len() < VOCABULARY {
            let syllables = 2 + rng.below(2);
            let word: String = (0..syllables)
                .map(|_| format!("{}{}", rng.pick(ONSETS), rng.pick(VOWELS)))
                .collect();
            // One ranking token each, never a stop word.
            if loom_host::memory::rank::tokens(&word) == [word.clone()] && seen.insert(word.clone())
            {
                words.push(word);
            }
        }
        Corpus { words }
    }

    /// A word, Zipf-like: a few are common, most are rare.
    fn word(&self, rng: &mut Rng) -> &str {
        let index = (self.words.len() as f64 * rng.unit().powi(3)) as usize;
        &self.words[index.min(self.words.len() - 1)]
    }

    /// `count` words, about a quarter of them filler.
    fn text(&self, rng: &mut Rng, count: usize) -> String {
        let mut out = String::with_capacity(count * 8);
        for i in 0..count {
            if i > 0 {
                out.push(' ');
            }
            if rng.below(4) == 0 {
                out.push_str(rng.pick(FILLER));
            } else {
                out.push_str(self.word(rng));
            }
        }
        out
    }

    /// A recall query: three to five vocabulary words.
    fn query(&self, rng: &mut Rng) -> String {
        let count = 3 + rng.below(3);
        (0..count)
            .map(|_| self.word(rng))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A fact: subjects weighted towards the user, so closes happen.
    fn fact(&self, rng: &mut Rng) -> NewFact {
        let subject = if rng.below(3) == 0 {
            "user"
        } else {
            rng.pick(SUBJECTS)
        };
        let words = 1 + rng.below(3);
        let object = (0..words)
            .map(|_| self.word(rng))
            .collect::<Vec<_>>()
            .join(" ");
        let mut fact = NewFact::new(subject, rng.pick(PREDICATES), object);
        fact.confidence = 0.6 + 0.4 * rng.unit() as f32;
        fact
    }
}

/// User `index` as (tenant, user): users are spread round-robin.
fn ids(index: usize) -> (TenantId, UserId) {
    (
        TenantId::new(format!("t{}", index % TENANTS)).expect("tenant id"),
        UserId::named(format!("user_{index}")).expect("user id"),
    )
}

/// What loading wrote.
#[derive(Default)]
struct Loaded {
    episodes: usize,
    facts_given: usize,
    facts_created: usize,
    facts_unchanged: usize,
    closed_versions: usize,
    write_ops: usize,
}

impl Loaded {
    fn add(&mut self, other: &Loaded) {
        self.episodes += other.episodes;
        self.facts_given += other.facts_given;
        self.facts_created += other.facts_created;
        self.facts_unchanged += other.facts_unchanged;
        self.closed_versions += other.closed_versions;
        self.write_ops += other.write_ops;
    }
}

/// Write user `index`'s episodes and facts.
async fn load_user(memory: &Memory, corpus: &Corpus, index: usize, epoch: i64) -> Loaded {
    let (tenant, user) = ids(index);
    let mut rng = Rng::new(0xA5A5_0000_0000 ^ index as u64);
    let mut loaded = Loaded::default();
    let mut fact_number = 0_i64;
    for round in 0..ROUNDS {
        let session = format!("s{round}");
        for e in 0..EPISODES_PER_ROUND {
            let input_words = 10 + rng.below(21);
            let output_words = 20 + rng.below(41);
            let episode = NewEpisode {
                session: Some(session.clone()),
                run: Some(format!("run_{index}_{round}_{e}")),
                input: corpus.text(&mut rng, input_words),
                output: corpus.text(&mut rng, output_words),
                transcript: None,
            };
            memory
                .remember(&tenant, &user, EpisodeKind::Run, episode)
                .await
                .expect("remember");
            loaded.episodes += 1;
            loaded.write_ops += 1;
        }
        // Facts become valid a day apart (plus up to an hour), in the
        // past, so a later fact on the same subject and predicate closes
        // the earlier one.
        let facts: Vec<NewFact> = (0..FACTS_PER_ROUND)
            .map(|_| {
                let mut fact = corpus.fact(&mut rng);
                let jitter = rng.below(3_600_000) as i64;
                fact.valid_from = Some(Timestamp::from_millis(
                    epoch + fact_number * DAY_MS + jitter,
                ));
                fact_number += 1;
                fact
            })
            .collect();
        loaded.facts_given += facts.len();
        let recorded = memory
            .add_facts(&tenant, &user, facts, None)
            .await
            .expect("add_facts");
        loaded.write_ops += 1;
        for r in recorded {
            if r.created {
                loaded.facts_created += 1;
            } else {
                loaded.facts_unchanged += 1;
            }
            loaded.closed_versions += r.closed.len();
        }
    }
    loaded
}

/// Latency percentiles of one measured series.
fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1].as_secs_f64() * 1e3
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1e3;
    println!(
        "{label}: n {n}, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
        at(0.50),
        at(0.90),
        at(0.99),
        samples[n - 1].as_secs_f64() * 1e3,
        mean,
    );
}

/// Recall and prompt-context latencies for `count` random users.
fn measure_reads(
    memory: &Memory,
    corpus: &Corpus,
    users: usize,
    count: usize,
    seed: u64,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let mut rng = Rng::new(seed);
    let mut recall = Vec::with_capacity(count);
    let mut context = Vec::with_capacity(count);
    let mut recalled = 0;
    for _ in 0..count {
        let (tenant, user) = ids(rng.below(users));
        let query = corpus.query(&mut rng);
        let started = Instant::now();
        let found = memory.recall(&tenant, &user, &query, 10).expect("recall");
        recall.push(started.elapsed());
        recalled += found.len();
        let words = 8 + rng.below(13);
        let prompt = corpus.text(&mut rng, words);
        let started = Instant::now();
        let text = memory
            .prompt_context(&tenant, &user, &prompt, 800, None)
            .expect("prompt_context");
        context.push(started.elapsed());
        assert!(text.is_some(), "every user has memory");
    }
    (recall, context, recalled)
}

/// `count` sequential, awaited `add_fact` calls for random users, `gap`
/// apart; the latencies and how many closed an open fact.
fn measure_writes(
    rt: &tokio::runtime::Runtime,
    memory: &Memory,
    corpus: &Corpus,
    users: usize,
    count: usize,
    gap: Option<Duration>,
    seed: u64,
) -> (Vec<Duration>, usize) {
    rt.block_on(async {
        let mut rng = Rng::new(seed);
        let mut latencies = Vec::with_capacity(count);
        let mut closing = 0;
        for _ in 0..count {
            if let Some(gap) = gap {
                tokio::time::sleep(gap).await;
            }
            let (tenant, user) = ids(rng.below(users));
            let fact = corpus.fact(&mut rng);
            let started = Instant::now();
            let recorded = memory
                .add_fact(&tenant, &user, fact)
                .await
                .expect("add_fact");
            latencies.push(started.elapsed());
            if !recorded.closed.is_empty() {
                closing += 1;
            }
        }
        (latencies, closing)
    })
}

fn open(path: &Path, sync: StoreSync) -> (Arc<Store>, Memory) {
    let store = Store::open_with(path, sync).expect("open the store");
    let sessions = SessionStore::new(store.clone());
    let memory = Memory::new(store.clone(), Arc::new(sessions), MemoryLimits::default());
    (store, memory)
}

fn file_size(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("the store file");
    (meta.len(), meta.blocks() * 512)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(file).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    })
}

fn peak_rss_mib() -> u64 {
    proc_field("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0_u64)
        / 1024
}

/// The value following `name` on the command line.
fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not `{v}`"))
        })
        .unwrap_or(default)
}

fn main() {
    loom_host::allocator::tune();
    let users = arg("--users", 10_000).max(1);
    let queries = arg("--queries", 2_000).max(1);
    let writes = arg("--writes", 1_000).max(1);
    let in_flight = arg("--in-flight", 256).max(1);
    let items_per_user = ROUNDS * (EPISODES_PER_ROUND + FACTS_PER_ROUND);

    let bench_started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cpus} CPUs ({}), memory {}",
        proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown model".into()),
        proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into()),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("loom.redb");
    println!(
        "memory recall: {users} users over {TENANTS} tenants x {items_per_user} items \
         ({} episodes + {} facts each) = {} items; vocabulary {VOCABULARY} words; \
         store {} (fsync every 100 ms); 2 worker threads, {in_flight} writes in flight",
        ROUNDS * EPISODES_PER_ROUND,
        ROUNDS * FACTS_PER_ROUND,
        users * items_per_user,
        path.display(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let corpus = Arc::new(Corpus::new());
    let (store, memory) = open(&path, StoreSync::Interval(100));

    // 1. Load.
    let epoch = Timestamp::now().millis() - 60 * DAY_MS;
    let started = Instant::now();
    let loaded = rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let step = (users / 5).max(1);
        let mut tasks = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let (memory, corpus, next, done) =
                (memory.clone(), corpus.clone(), next.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut loaded = Loaded::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= users {
                        return loaded;
                    }
                    loaded.add(&load_user(&memory, &corpus, index, epoch).await);
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if finished % step == 0 && finished < users {
                        println!(
                            "  loaded {finished}/{users} users in {:.1} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }));
        }
        let mut total = Loaded::default();
        for task in tasks {
            total.add(&task.await.expect("load task"));
        }
        store.sync().await.expect("sync");
        total
    });
    let load_time = started.elapsed();
    let items = loaded.episodes + loaded.facts_given;
    let fact_rows = loaded.facts_created + 2 * loaded.closed_versions;
    println!(
        "load: {items} items in {:.1} s = {:.0} items/s ({} write ops = {:.0} ops/s, each an \
         episode or one add_facts of {FACTS_PER_ROUND}); {} episodes, {} facts given: {} \
         recorded, {} already believed, {} closed an open fact; fact rows {} (new + closed \
         versions; each close also rewrites the old row as expired); peak RSS {} MiB",
        load_time.as_secs_f64(),
        items as f64 / load_time.as_secs_f64(),
        loaded.write_ops,
        loaded.write_ops as f64 / load_time.as_secs_f64(),
        loaded.episodes,
        loaded.facts_given,
        loaded.facts_created,
        loaded.facts_unchanged,
        loaded.closed_versions,
        fact_rows,
        peak_rss_mib(),
    );

    // 2. Size on disk.
    let (length, allocated) = file_size(&path);
    println!(
        "store size: {length} bytes = {:.1} MiB ({allocated} bytes = {:.1} MiB allocated on \
         disk); {:.0} bytes per item",
        mib(length),
        mib(allocated),
        length as f64 / items as f64,
    );

    // A sample user, to show what recall works with.
    let (tenant, user) = ids(users / 2);
    let believed = memory
        .facts(&tenant, &user, &FactQuery::default())
        .expect("facts");
    let now = memory
        .facts(
            &tenant,
            &user,
            &FactQuery {
                valid_at: Some(Timestamp::now()),
                ..FactQuery::default()
            },
        )
        .expect("facts");
    let query = corpus.query(&mut Rng::new(7));
    let top = memory.recall(&tenant, &user, &query, 3).expect("recall");
    println!(
        "sample {tenant}/{user}: {} episodes, {} believed fact versions ({} valid now, {} \
         closed windows); recall {query:?} -> {:?}",
        memory.episodes(&tenant, &user).expect("episodes").len(),
        believed.len(),
        now.len(),
        believed.iter().filter(|f| f.valid_until.is_some()).count(),
        top.iter()
            .map(|r| format!("{} {:.2}", r.kind, r.score))
            .collect::<Vec<_>>(),
    );

    // 3. Recall and prompt context.
    let _ = measure_reads(&memory, &corpus, users, WARM_UP, 0xC0FFEE);
    println!("warm-up: {WARM_UP} recalls and prompt contexts of other random users (not timed)");
    let (mut recall, mut context, recalled) =
        measure_reads(&memory, &corpus, users, queries, 0xBEEF);
    report(
        &format!(
            "recall(query of 3-5 words, limit 10) [{:.1} items returned on average]",
            recalled as f64 / queries as f64
        ),
        &mut recall,
    );
    report(
        "prompt_context(prompt of 8-20 words, 800 tokens)",
        &mut context,
    );

    // 4. Fact writes, fsync every 100 ms.
    let (mut back_to_back, closing_a) =
        measure_writes(&rt, &memory, &corpus, users, writes, None, 0xFAC7);
    report(
        &format!(
            "add_fact, interval fsync (visible at once, fsync every 100 ms), back to back \
             [{closing_a} closed a fact]"
        ),
        &mut back_to_back,
    );
    let (mut spaced, closing_b) =
        measure_writes(&rt, &memory, &corpus, users, writes, Some(SPACING), 0xFAC8);
    report(
        &format!(
            "add_fact, interval fsync, {} ms apart [{closing_b} closed a fact]",
            SPACING.as_millis()
        ),
        &mut spaced,
    );

    // Reopen the same file, every commit fsynced. The writer drops a
    // write's closure (which holds a `Memory`, so the store) just after
    // answering it: wait for it to finish with them, or the last handle
    // may be dropped on the writer thread, which then does not wait for
    // the file to close, and reopening finds it still locked.
    rt.block_on(store.sync()).expect("sync");
    drop(memory);
    let started = Instant::now();
    drop(store);
    let closed_in = started.elapsed();
    let started = Instant::now();
    let (store, memory) = open(&path, StoreSync::Always);
    println!(
        "reopen with fsync always: close {:.1} ms, open {:.1} ms",
        closed_in.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    let (mut recall, _, _) = measure_reads(&memory, &corpus, users, queries, 0xD00D);
    report(
        "recall right after reopen (redb cache empty, OS page cache warm, no warm-up)",
        &mut recall,
    );
    let (mut back_to_back, closing_c) =
        measure_writes(&rt, &memory, &corpus, users, writes, None, 0xFAC9);
    report(
        &format!(
            "add_fact, fsync always (each commit fsynced), back to back [{closing_c} closed a \
             fact]"
        ),
        &mut back_to_back,
    );
    let (mut spaced, closing_d) =
        measure_writes(&rt, &memory, &corpus, users, writes, Some(SPACING), 0xFACA);
    report(
        &format!(
            "add_fact, fsync always, {} ms apart [{closing_d} closed a fact]",
            SPACING.as_millis()
        ),
        &mut spaced,
    );
    rt.block_on(store.sync()).expect("sync");
    drop(memory);
    drop(store);
    let (length, _) = file_size(&path);
    println!(
        "store size at the end: {length} bytes = {:.1} MiB; peak RSS {} MiB; total {:.1} s",
        mib(length),
        peak_rss_mib(),
        bench_started.elapsed().as_secs_f64(),
    );
}
