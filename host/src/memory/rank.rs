//! Lexical ranking (BM25) and packing into a token budget: recall needs
//! no network and no model.

/// Distinct query terms ranked by (a longer query is cut).
pub const MAX_QUERY_TERMS: usize = 64;

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalisation.
const B: f64 = 0.75;

/// Words too common to rank by, sorted (binary search).
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "that", "the",
    "their", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// The words of `text`: runs of letters and digits.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The lower-cased words of `text` (letters and digits), stop words and
/// one-letter words dropped; predicates' underscores split words.
pub fn tokens(text: &str) -> Vec<String> {
    words(text)
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
        .filter(|w| !is_stop_word(w))
        .collect()
}

/// Whether document word `word` is query term `term` (lower-case).
fn same_word(word: &str, term: &str) -> bool {
    if word.is_ascii() {
        word.eq_ignore_ascii_case(term)
    } else {
        word.to_lowercase() == term
    }
}

/// BM25 scores of `documents` for `query`, over the documents given (their
/// own collection statistics). Zero for a document sharing no word.
///
/// Each document is read once, with no allocation for ASCII text: only
/// the query's terms are counted, and a document's length is its number of
/// words.
pub fn bm25<'d>(query: &str, documents: impl IntoIterator<Item = &'d str>) -> Vec<f64> {
    let mut terms = tokens(query);
    terms.sort();
    terms.dedup();
    // A long query costs each document a pass per term: rank by its first
    // terms only.
    terms.truncate(MAX_QUERY_TERMS);
    // Per document: its length and how often each term occurs in it.
    let counted: Vec<(usize, Vec<u32>)> = documents
        .into_iter()
        .map(|document| {
            let mut frequencies = vec![0u32; terms.len()];
            let mut length = 0usize;
            for word in words(document) {
                length += 1;
                if terms.is_empty() {
                    continue;
                }
                if let Some(i) = terms.iter().position(|term| same_word(word, term)) {
                    frequencies[i] += 1;
                }
            }
            (length, frequencies)
        })
        .collect();
    if terms.is_empty() || counted.is_empty() {
        return vec![0.0; counted.len()];
    }
    let n = counted.len() as f64;
    let average = (counted.iter().map(|(l, _)| *l).sum::<usize>() as f64 / n).max(1.0);
    let containing: Vec<f64> = (0..terms.len())
        .map(|i| counted.iter().filter(|(_, f)| f[i] > 0).count() as f64)
        .collect();
    counted
        .iter()
        .map(|(length, frequencies)| {
            frequencies
                .iter()
                .zip(&containing)
                .filter(|(frequency, _)| **frequency > 0)
                .map(|(frequency, with)| {
                    let frequency = f64::from(*frequency);
                    let idf = ((n - with + 0.5) / (with + 0.5) + 1.0).ln();
                    idf * frequency * (K1 + 1.0)
                        / (frequency + K1 * (1.0 - B + B * *length as f64 / average))
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
        let docs = [
            "alice lives_in Paris".to_owned(),
            "the weather was nice".to_owned(),
            "alice prefers tea over coffee".to_owned(),
        ];
        let scores = bm25(
            "Where does Alice live? Paris?",
            docs.iter().map(String::as_str),
        );
        assert!(scores[0] > scores[2], "{scores:?}");
        assert!(scores[2] > 0.0);
        assert_eq!(scores[1], 0.0);
        assert_eq!(
            bm25("the of", docs.iter().map(String::as_str)),
            vec![0.0; 3]
        );
        // Case and accents: ASCII compares without allocating, the rest
        // lower-cased.
        let scores = bm25("zürich", ["ZÜRICH office", "zurich", "Zürich"]);
        assert!(
            scores[0] > 0.0 && scores[2] > 0.0 && scores[1] == 0.0,
            "{scores:?}"
        );
        let mut sorted = STOP_WORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STOP_WORDS, "STOP_WORDS must stay sorted");
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
