//! Lexical ranking (BM25) and packing into a token budget: recall needs
//! no network and no model.

use std::collections::HashMap;

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalisation.
const B: f64 = 0.75;

/// Words too common to rank by.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "that", "the",
    "their", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

/// The lower-cased words of `text` (letters and digits), stop words and
/// one-letter words dropped; predicates' underscores split words.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

/// BM25 scores of `documents` for `query`, over the documents given (their
/// own collection statistics). Zero for a document sharing no word.
pub fn bm25(query: &str, documents: &[String]) -> Vec<f64> {
    let query: Vec<String> = {
        let mut q = tokens(query);
        q.sort();
        q.dedup();
        q
    };
    if query.is_empty() || documents.is_empty() {
        return vec![0.0; documents.len()];
    }
    let docs: Vec<Vec<String>> = documents.iter().map(|d| tokens(d)).collect();
    let n = docs.len() as f64;
    let average = (docs.iter().map(Vec::len).sum::<usize>() as f64 / n).max(1.0);
    let mut containing: HashMap<&str, usize> = HashMap::new();
    for doc in &docs {
        let mut seen: Vec<&str> = doc.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for term in seen {
            if query.iter().any(|q| q == term) {
                *containing.entry(term).or_default() += 1;
            }
        }
    }
    docs.iter()
        .map(|doc| {
            let length = doc.len() as f64;
            query
                .iter()
                .map(|term| {
                    let frequency = doc.iter().filter(|t| *t == term).count() as f64;
                    if frequency == 0.0 {
                        return 0.0;
                    }
                    let with = containing.get(term.as_str()).copied().unwrap_or(0) as f64;
                    let idf = ((n - with + 0.5) / (with + 0.5) + 1.0).ln();
                    idf * frequency * (K1 + 1.0)
                        / (frequency + K1 * (1.0 - B + B * length / average))
                })
                .sum()
        })
        .collect()
}

/// Tokens a text costs, estimated at four characters a token.
pub fn token_cost(text: &str) -> usize {
    text.chars().count().div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevant_documents_rank_first() {
        let docs = vec![
            "alice lives_in Paris".to_owned(),
            "the weather was nice".to_owned(),
            "alice prefers tea over coffee".to_owned(),
        ];
        let scores = bm25("Where does Alice live? Paris?", &docs);
        assert!(scores[0] > scores[2], "{scores:?}");
        assert!(scores[2] > 0.0);
        assert_eq!(scores[1], 0.0);
        assert_eq!(bm25("the of", &docs), vec![0.0; 3]);
    }

    #[test]
    fn tokens_split_predicates_and_drop_noise() {
        assert_eq!(
            tokens("Alice lives_in New-York!"),
            vec!["alice", "lives", "new", "york"]
        );
        assert_eq!(token_cost(""), 1);
        assert_eq!(token_cost("12345678"), 2);
    }
}
