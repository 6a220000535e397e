//! Retrieval (RAG), apart from memory: a document store per tenant.
//!
//! Text and markdown are split into chunks ([`chunk`]) and indexed with
//! tantivy (BM25) under `<data_dir>/docs/t_<hex of the tenant id>/`. With
//! `[retrieval.embeddings]` configured, each chunk also gets a vector from an
//! OpenAI-compatible endpoint ([`embed`]), and search can rank by cosine
//! similarity or fuse both rankings (reciprocal rank fusion). A tenant's
//! index is its own directory: no query reads another tenant's.

pub mod chunk;
pub mod embed;

pub use chunk::{Chunk, DocumentKind};
pub use embed::{Embedder, EmbeddingSettings};

use crate::tenancy::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};
use tantivy::{DocAddress, Index, IndexReader, TantivyDocument, Term};

/// Why a retrieval operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RetrievalError {
    /// The request is malformed.
    #[error("invalid retrieval request: {0}")]
    Invalid(String),
    /// A size limit or the tenant's quota would be passed.
    #[error("retrieval limit: {0}")]
    Limit(String),
    /// The configuration is wrong.
    #[error("retrieval configuration: {0}")]
    Config(String),
    /// The embedding endpoint failed.
    #[error("embeddings failed: {0}")]
    Embeddings(String),
    /// The index failed.
    #[error("the document index failed: {0}")]
    Index(String),
}

fn index_error(error: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Index(error.to_string())
}

/// `[retrieval]` in `loom.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalSettings {
    /// Bytes of one ingested document.
    pub max_document_bytes: usize,
    /// Bytes of a tenant's index on disk.
    pub max_index_bytes: u64,
    /// Characters of one chunk.
    pub chunk_chars: usize,
    /// Characters a cut section's next chunk repeats.
    pub chunk_overlap: usize,
    /// Where embeddings come from; without it, search is BM25 only.
    pub embeddings: Option<EmbeddingSettings>,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        RetrievalSettings {
            max_document_bytes: 10 << 20,
            max_index_bytes: 1 << 30,
            chunk_chars: 1_200,
            chunk_overlap: 150,
            embeddings: None,
        }
    }
}

/// How search ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// BM25 over the chunks' text and headings.
    Bm25,
    /// Cosine similarity of embeddings.
    Vector,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl std::str::FromStr for SearchMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "bm25" => Ok(SearchMode::Bm25),
            "vector" => Ok(SearchMode::Vector),
            "hybrid" => Ok(SearchMode::Hybrid),
            other => Err(format!("`{other}`: use bm25, vector or hybrid")),
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The document's name.
    pub document: String,
    /// The chunk's position in it, from 0.
    pub chunk: u64,
    /// The heading path above the chunk.
    pub heading: String,
    /// The chunk's text.
    pub text: String,
    /// The ranking score (BM25, cosine, or fused; higher is better).
    pub score: f32,
}

/// What an ingest stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// The document's name.
    pub document: String,
    /// Chunks indexed.
    pub chunks: usize,
    /// Whether they were embedded.
    pub embedded: bool,
    /// Whether an earlier version was replaced.
    pub replaced: bool,
}

/// One stored document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentInfo {
    /// Its name.
    pub document: String,
    /// Its chunks.
    pub chunks: usize,
}

/// Most chunks of one document.
const MAX_CHUNKS: usize = 20_000;
/// Most results of one search.
pub const MAX_RESULTS: usize = 50;
/// Bytes of a query.
const MAX_QUERY_BYTES: usize = 4_096;
/// Reciprocal rank fusion's constant.
const RRF_K: f32 = 60.0;
/// Memory of the index writer while ingesting.
const WRITER_BYTES: usize = 32 << 20;

#[derive(Clone, Copy)]
struct Fields {
    document: Field,
    chunk: Field,
    heading: Field,
    text: Field,
    embedding: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        document: builder.add_text_field("document", STRING | STORED),
        chunk: builder.add_u64_field("chunk", STORED),
        heading: builder.add_text_field("heading", TEXT | STORED),
        text: builder.add_text_field("text", TEXT | STORED),
        embedding: builder.add_bytes_field("embedding", STORED),
    };
    (builder.build(), fields)
}

/// One tenant's index.
struct TenantIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// One ingest or delete at a time.
    writing: tokio::sync::Mutex<()>,
}

/// The document stores of every tenant. Cloning shares it.
#[derive(Clone)]
pub struct DocStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    settings: RetrievalSettings,
    embedder: Option<Embedder>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantIndex>>>,
}

impl std::fmt::Debug for DocStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl DocStore {
    /// Document stores under `root` (one directory per tenant).
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Config`] when the embeddings settings are wrong.
    pub fn new(root: PathBuf, settings: RetrievalSettings) -> Result<Self, RetrievalError> {
        let embedder = settings
            .embeddings
            .as_ref()
            .map(Embedder::new)
            .transpose()?;
        Ok(DocStore {
            inner: Arc::new(Inner {
                root,
                settings,
                embedder,
                tenants: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether embeddings are configured (vector and hybrid search).
    pub fn has_embeddings(&self) -> bool {
        self.inner.embedder.is_some()
    }

    /// The search mode used when none is asked for: hybrid with
    /// embeddings, else BM25.
    pub fn default_mode(&self) -> SearchMode {
        if self.has_embeddings() {
            SearchMode::Hybrid
        } else {
            SearchMode::Bm25
        }
    }

    /// The tenant's index, opened or created on first use.
    fn tenant(&self, tenant: &TenantId) -> Result<Arc<TenantIndex>, RetrievalError> {
        let mut tenants = crate::sync::lock(&self.inner.tenants);
        if let Some(index) = tenants.get(tenant) {
            return Ok(index.clone());
        }
        // Hex: ids such as `..` name no other directory, and `Acme` and
        // `acme` stay apart on case-insensitive file systems.
        let dir = self
            .inner
            .root
            .join(format!("t_{}", hex::encode(tenant.as_str())));
        std::fs::create_dir_all(&dir)
            .map_err(|e| RetrievalError::Index(format!("cannot create {}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(&dir).map_err(index_error)?;
        let index = Index::open_or_create(directory, schema).map_err(|e| {
            RetrievalError::Index(format!(
                "cannot open the index in {}: {e} (delete the directory to start over)",
                dir.display()
            ))
        })?;
        let reader = index.reader().map_err(index_error)?;
        let opened = Arc::new(TenantIndex {
            dir,
            index,
            reader,
            fields,
            writing: tokio::sync::Mutex::new(()),
        });
        tenants.insert(tenant.clone(), opened.clone());
        Ok(opened)
    }

    /// Index `text` as document `name` of `tenant`, replacing any earlier
    /// version of it.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Invalid`] for an empty name or text,
    /// [`RetrievalError::Limit`] for an oversized document or a full
    /// index, [`RetrievalError::Embeddings`], [`RetrievalError::Index`].
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        name: &str,
        text: &str,
        kind: DocumentKind,
    ) -> Result<IngestReport, RetrievalError> {
        let settings = &self.inner.settings;
        let name = name.trim();
        if name.is_empty() || name.len() > 512 {
            return Err(RetrievalError::Invalid(
                "a document needs a name of 1 to 512 bytes".into(),
            ));
        }
        if text.len() > settings.max_document_bytes {
            return Err(RetrievalError::Limit(format!(
                "`{name}` is {} bytes, over the {}-byte limit ([retrieval] max_document_bytes)",
                text.len(),
                settings.max_document_bytes
            )));
        }
        let chunks = chunk::chunk(text, kind, settings.chunk_chars, settings.chunk_overlap);
        if chunks.is_empty() {
            return Err(RetrievalError::Invalid(format!("`{name}` has no text")));
        }
        if chunks.len() > MAX_CHUNKS {
            return Err(RetrievalError::Limit(format!(
                "`{name}` makes {} chunks, over {MAX_CHUNKS}; split it",
                chunks.len()
            )));
        }
        let tenant_index = self.tenant(tenant)?;
        let _writing = tenant_index.writing.lock().await;
        let used = dir_size(&tenant_index.dir);
        if used >= settings.max_index_bytes {
            return Err(RetrievalError::Limit(format!(
                "tenant {tenant}'s document index holds {used} bytes, its limit ([retrieval] max_index_bytes); delete documents first"
            )));
        }
        let embeddings = match &self.inner.embedder {
            Some(embedder) => {
                let texts: Vec<String> = chunks
                    .iter()
                    .map(|c| format!("{}\n{}", c.heading, c.text))
                    .collect();
                Some(embedder.embed(&texts).await?)
            }
            None => None,
        };
        let embedded = embeddings.is_some();
        let name_owned = name.to_owned();
        let index = tenant_index.clone();
        let replaced = tokio::task::spawn_blocking(move || {
            write_document(&index, &name_owned, &chunks, embeddings.as_deref())
        })
        .await
        .map_err(index_error)??;
        Ok(IngestReport {
            document: name.to_owned(),
            chunks: chunk_count(&tenant_index, name)?,
            embedded,
            replaced,
        })
    }

    /// Delete document `name` of `tenant`; whether it existed.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Index`].
    pub async fn delete(&self, tenant: &TenantId, name: &str) -> Result<bool, RetrievalError> {
        let tenant_index = self.tenant(tenant)?;
        let _writing = tenant_index.writing.lock().await;
        let existed = chunk_count(&tenant_index, name)? > 0;
        let index = tenant_index.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut writer: tantivy::IndexWriter<TantivyDocument> = index
                .index
                .writer_with_num_threads(1, WRITER_BYTES)
                .map_err(writer_error)?;
            writer.delete_term(Term::from_field_text(index.fields.document, &name));
            writer.commit().map_err(index_error)?;
            index.reader.reload().map_err(index_error)
        })
        .await
        .map_err(index_error)??;
        Ok(existed)
    }

    /// The tenant's documents and their chunk counts, by name.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Index`].
    pub fn list(&self, tenant: &TenantId) -> Result<Vec<DocumentInfo>, RetrievalError> {
        let index = self.tenant(tenant)?;
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for_each_chunk(&index, |doc| {
            if let Some(name) = doc
                .get_first(index.fields.document)
                .and_then(|v| v.as_str())
            {
                *counts.entry(name.to_owned()).or_default() += 1;
            }
        })?;
        Ok(counts
            .into_iter()
            .map(|(document, chunks)| DocumentInfo { document, chunks })
            .collect())
    }

    /// The `k` chunks of `tenant`'s documents that best match `query`.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Invalid`] for an empty or oversized query, or a
    /// vector search without embeddings configured;
    /// [`RetrievalError::Embeddings`]; [`RetrievalError::Index`].
    pub async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Hit>, RetrievalError> {
        let query = query.trim();
        if query.is_empty() || query.len() > MAX_QUERY_BYTES {
            return Err(RetrievalError::Invalid(format!(
                "the query must be 1 to {MAX_QUERY_BYTES} bytes"
            )));
        }
        let k = k.clamp(1, MAX_RESULTS);
        let index = self.tenant(tenant)?;
        let vector = match mode {
            SearchMode::Bm25 => None,
            SearchMode::Vector | SearchMode::Hybrid => {
                let Some(embedder) = &self.inner.embedder else {
                    return Err(RetrievalError::Invalid(
                        "vector and hybrid search need [retrieval.embeddings] in loom.toml".into(),
                    ));
                };
                embedder.embed(&[query.to_owned()]).await?.pop()
            }
        };
        let query = query.to_owned();
        tokio::task::spawn_blocking(move || {
            let pool = MAX_RESULTS.max(k);
            match mode {
                SearchMode::Bm25 => Ok(truncate(bm25(&index, &query, k)?, k)),
                SearchMode::Vector => Ok(by_vector(&index, vector.as_deref().unwrap_or(&[]), k)?),
                SearchMode::Hybrid => {
                    let lexical = bm25(&index, &query, pool)?;
                    let semantic = by_vector(&index, vector.as_deref().unwrap_or(&[]), pool)?;
                    Ok(fuse(lexical, semantic, k))
                }
            }
        })
        .await
        .map_err(index_error)?
    }
}

fn writer_error(error: tantivy::TantivyError) -> RetrievalError {
    match error {
        tantivy::TantivyError::LockFailure(..) => RetrievalError::Index(
            "another process is writing this tenant's document index; try again when it is done"
                .into(),
        ),
        other => index_error(other),
    }
}

/// Replace document `name` with `chunks`; whether it existed.
fn write_document(
    index: &TenantIndex,
    name: &str,
    chunks: &[Chunk],
    embeddings: Option<&[Vec<f32>]>,
) -> Result<bool, RetrievalError> {
    let replaced = chunk_count(index, name)? > 0;
    let mut writer: tantivy::IndexWriter<TantivyDocument> = index
        .index
        .writer_with_num_threads(1, WRITER_BYTES)
        .map_err(writer_error)?;
    let f = index.fields;
    writer.delete_term(Term::from_field_text(f.document, name));
    for (position, chunk) in chunks.iter().enumerate() {
        let mut doc = TantivyDocument::default();
        doc.add_text(f.document, name);
        doc.add_u64(f.chunk, position as u64);
        doc.add_text(f.heading, &chunk.heading);
        doc.add_text(f.text, &chunk.text);
        if let Some(vector) = embeddings.and_then(|e| e.get(position)) {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            doc.add_bytes(f.embedding, &bytes);
        }
        writer.add_document(doc).map_err(index_error)?;
    }
    writer.commit().map_err(index_error)?;
    index.reader.reload().map_err(index_error)?;
    Ok(replaced)
}

/// Chunks of document `name`.
fn chunk_count(index: &TenantIndex, name: &str) -> Result<usize, RetrievalError> {
    let searcher = index.reader.searcher();
    let query = tantivy::query::TermQuery::new(
        Term::from_field_text(index.fields.document, name),
        tantivy::schema::IndexRecordOption::Basic,
    );
    searcher
        .search(&query, &tantivy::collector::Count)
        .map_err(index_error)
}

/// Call `each` with every live chunk.
fn for_each_chunk(
    index: &TenantIndex,
    mut each: impl FnMut(&TantivyDocument),
) -> Result<(), RetrievalError> {
    let searcher = index.reader.searcher();
    for (segment, reader) in searcher.segment_readers().iter().enumerate() {
        for doc in reader.doc_ids_alive() {
            let stored: TantivyDocument = searcher
                .doc(DocAddress::new(segment as u32, doc))
                .map_err(index_error)?;
            each(&stored);
        }
    }
    Ok(())
}

fn hit(index: &TenantIndex, doc: &TantivyDocument, score: f32) -> Hit {
    let f = index.fields;
    let text = |field| {
        doc.get_first(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Hit {
        document: text(f.document),
        chunk: doc.get_first(f.chunk).and_then(|v| v.as_u64()).unwrap_or(0),
        heading: text(f.heading),
        text: text(f.text),
        score,
    }
}

fn bm25(index: &TenantIndex, query: &str, k: usize) -> Result<Vec<Hit>, RetrievalError> {
    let searcher = index.reader.searcher();
    let parser =
        QueryParser::for_index(&index.index, vec![index.fields.text, index.fields.heading]);
    // Lenient: a stray quote or colon in a question is not a syntax error.
    let (parsed, _) = parser.parse_query_lenient(query);
    let top = searcher
        .search(&parsed, &TopDocs::with_limit(k))
        .map_err(index_error)?;
    top.into_iter()
        .map(|(score, address)| {
            let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            Ok(hit(index, &doc, score))
        })
        .collect()
}

fn by_vector(index: &TenantIndex, query: &[f32], k: usize) -> Result<Vec<Hit>, RetrievalError> {
    let mut scored: Vec<Hit> = Vec::new();
    for_each_chunk(index, |doc| {
        let Some(bytes) = doc
            .get_first(index.fields.embedding)
            .and_then(|v| v.as_bytes())
        else {
            return;
        };
        let vector: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let score = embed::cosine(query, &vector);
        if score > 0.0 {
            scored.push(hit(index, doc, score));
        }
    })?;
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(truncate(scored, k))
}

fn truncate(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    hits.truncate(k);
    hits
}

/// Reciprocal rank fusion of two rankings.
fn fuse(lexical: Vec<Hit>, semantic: Vec<Hit>, k: usize) -> Vec<Hit> {
    let mut fused: Vec<(f32, Hit)> = Vec::new();
    for ranking in [lexical, semantic] {
        for (rank, hit) in ranking.into_iter().enumerate() {
            let score = 1.0 / (RRF_K + rank as f32 + 1.0);
            match fused
                .iter_mut()
                .find(|(_, h)| h.document == hit.document && h.chunk == hit.chunk)
            {
                Some((total, _)) => *total += score,
                None => fused.push((score, hit)),
            }
        }
    }
    fused.sort_by(|a, b| b.0.total_cmp(&a.0));
    fused
        .into_iter()
        .take(k)
        .map(|(score, mut hit)| {
            hit.score = score;
            hit
        })
        .collect()
}
