//! Retrieval: per-tenant document stores over real tantivy indexes, an
//! OpenAI-compatible embeddings endpoint on loopback, and the `retrieve`
//! tool through an agent run.

use loom_host::agent::{Agent, RunRequest};
use loom_host::model::Usage;
use loom_host::retrieval::{DocStore, DocumentKind, RetrievalSettings, SearchMode};
use loom_host::tenancy::ids::TenantId;
use loom_tests::{TestEnv, components, scope};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GUIDE: &str = "# Loom guide\nLoom runs agents for many tenants.\n\n\
## Installing\nRun the installer script, then add the wasm32-wasip2 target with rustup.\n\n\
## Budgets\nA budget caps tokens, cost and tool calls per user per day.\n";

const NOTES: &str = "The cafeteria serves lunch at noon.\n\nParking is behind building B.";

fn acme() -> TenantId {
    "acme".parse().unwrap()
}

fn store(env: &TestEnv, settings: RetrievalSettings) -> DocStore {
    DocStore::new(env.path().join("docs"), settings).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bm25_search_finds_the_right_section_and_tenants_stay_apart() {
    let env = TestEnv::new();
    let docs = store(&env, RetrievalSettings::default());
    let report = docs
        .ingest(&acme(), "guide.md", GUIDE, DocumentKind::Markdown)
        .await
        .unwrap();
    assert_eq!(report.chunks, 3);
    assert!(!report.embedded && !report.replaced);
    docs.ingest(&acme(), "notes.txt", NOTES, DocumentKind::Text)
        .await
        .unwrap();
    let hits = docs
        .search(
            &acme(),
            "how do I install the wasm target?",
            3,
            SearchMode::Bm25,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].document, "guide.md");
    assert_eq!(hits[0].heading, "Loom guide > Installing");
    assert!(hits[0].text.contains("rustup"));
    let hits = docs
        .search(&acme(), "when is lunch", 3, SearchMode::Bm25)
        .await
        .unwrap();
    assert_eq!(hits[0].document, "notes.txt");
    // A stray quote or colon is not a syntax error.
    docs.search(&acme(), "budget: \"tokens", 3, SearchMode::Bm25)
        .await
        .unwrap();

    // Another tenant sees none of it, even with a tenant id like `..`.
    for other in ["globex", ".."] {
        let hits = docs
            .search(
                &other.parse().unwrap(),
                "installer rustup lunch",
                5,
                SearchMode::Bm25,
            )
            .await
            .unwrap();
        assert!(hits.is_empty(), "{other}: {hits:?}");
    }

    // Ingesting again replaces; deleting removes.
    let again = docs
        .ingest(
            &acme(),
            "guide.md",
            "# Loom guide\nOnly one section now.",
            DocumentKind::Markdown,
        )
        .await
        .unwrap();
    assert!(again.replaced);
    assert_eq!(again.chunks, 1);
    let hits = docs
        .search(&acme(), "installer rustup", 5, SearchMode::Bm25)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.document != "guide.md"), "{hits:?}");
    let listed = docs.list(&acme()).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(docs.delete(&acme(), "guide.md").await.unwrap());
    assert!(!docs.delete(&acme(), "guide.md").await.unwrap());
    assert_eq!(docs.list(&acme()).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let env = TestEnv::new();
    let docs = store(
        &env,
        RetrievalSettings {
            max_document_bytes: 100,
            ..RetrievalSettings::default()
        },
    );
    let big = "word ".repeat(50);
    let error = docs
        .ingest(&acme(), "big.txt", &big, DocumentKind::Text)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("max_document_bytes"), "{error}");
    let error = docs
        .ingest(&acme(), "empty.txt", "  \n\n", DocumentKind::Text)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no text"), "{error}");
    let error = docs
        .search(&acme(), "   ", 5, SearchMode::Bm25)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("query"), "{error}");
    let error = docs
        .search(&acme(), "anything", 5, SearchMode::Vector)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("[retrieval.embeddings]"),
        "{error}"
    );
}

/// A bag-of-words embedding: each word adds to one of 64 dimensions.
fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; 64];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let word = word.to_lowercase();
        let slot = word
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        vector[(slot % 64) as usize] += 1.0;
    }
    vector
}

/// An OpenAI-compatible `/v1/embeddings` server on loopback; answers
/// `status` when it is not 200. Counts requests.
async fn embeddings_server(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    assert!(head.starts_with("post /v1/embeddings "), "{head}");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    let reply = if status == 200 {
                        let data: Vec<Value> = request["input"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .enumerate()
                            // Out of order on purpose: the client sorts by index.
                            .rev()
                            .map(|(i, text)| {
                                json!({"object": "embedding", "index": i, "embedding": embed(text.as_str().unwrap())})
                            })
                            .collect();
                        json!({"object": "list", "data": data, "model": request["model"]})
                            .to_string()
                    } else {
                        json!({"error": {"message": "the embedding model is overloaded"}})
                            .to_string()
                    };
                    let out = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if socket.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, count)
}

fn with_embeddings(base: &str) -> RetrievalSettings {
    let settings: RetrievalSettings = toml::from_str(&format!(
        "[embeddings]\nbase_url = \"{base}\"\nmodel = \"test-embed\"\n"
    ))
    .unwrap();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_and_hybrid_search_use_the_embeddings_endpoint() {
    let env = TestEnv::new();
    let (base, requests) = embeddings_server(200).await;
    let docs = store(&env, with_embeddings(&base));
    assert_eq!(docs.default_mode(), SearchMode::Hybrid);
    let report = docs
        .ingest(&acme(), "guide.md", GUIDE, DocumentKind::Markdown)
        .await
        .unwrap();
    assert!(report.embedded);
    docs.ingest(&acme(), "notes.txt", NOTES, DocumentKind::Text)
        .await
        .unwrap();
    let before = requests.load(Ordering::SeqCst);
    let hits = docs
        .search(&acme(), "cafeteria lunch noon", 2, SearchMode::Vector)
        .await
        .unwrap();
    assert_eq!(
        requests.load(Ordering::SeqCst),
        before + 1,
        "one query embedding"
    );
    assert_eq!(hits[0].document, "notes.txt");
    assert!(
        hits[0].score > 0.3 && hits[0].score <= 1.0001,
        "{}",
        hits[0].score
    );
    let hits = docs
        .search(&acme(), "budget tokens per user", 3, SearchMode::Hybrid)
        .await
        .unwrap();
    assert_eq!(hits[0].heading, "Loom guide > Budgets");
    // A fused score counts both rankings.
    assert!(hits[0].score > 1.0 / 62.0, "{}", hits[0].score);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_embeddings_endpoint_is_named_and_nothing_is_indexed() {
    let env = TestEnv::new();
    let (base, _) = embeddings_server(503).await;
    let docs = store(&env, with_embeddings(&base));
    let error = docs
        .ingest(&acme(), "guide.md", GUIDE, DocumentKind::Markdown)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("503") && text.contains("overloaded"),
        "{text}"
    );
    assert!(docs.list(&acme()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retrieve_tool_searches_the_runs_tenant_only() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(env.host("[tenants.acme]\n[tenants.globex]\n").await);
    host.docs()
        .ingest(&acme(), "guide.md", GUIDE, DocumentKind::Markdown)
        .await
        .unwrap();
    let agent = || {
        Agent::builder("Answer from the documents.")
            .host(host.clone())
            .model(Arc::new(loom_host::model::offline::ScriptedModel::new(
                vec![
                    crate::support::scripted_turn(
                        "",
                        &[(
                            "retrieve",
                            json!({"query": "install rustup target", "k": 2}),
                        )],
                        Usage::default(),
                    ),
                    crate::support::scripted_turn("{last_tool_result}", &[], Usage::default()),
                ],
            )))
            .retrieval(true)
            .build()
            .unwrap()
    };
    let result = agent()
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "How do I install?",
        ))
        .await
        .unwrap();
    let hits: Value = serde_json::from_str(&result.output).unwrap();
    assert_eq!(hits[0]["document"], "guide.md");
    assert!(hits[0]["text"].as_str().unwrap().contains("rustup"));
    let result = agent()
        .run(RunRequest::new(
            scope("globex", Some("alice")),
            "How do I install?",
        ))
        .await
        .unwrap();
    assert_eq!(result.output, "[]");
}
