//! Text handling: the match key subjects and objects are compared by,
//! tokenising, lexical (BM25) scoring, and a stable hash for index keys.

/// Distinct query terms ranked by (a longer query is cut).
const MAX_QUERY_TERMS: usize = 64;

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalisation.
const B: f64 = 0.75;

/// Words too common to rank by, sorted (binary search); the host's
/// built-in memory ignores the same ones.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "that", "the",
    "their", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

/// The key two subjects or objects are compared by: case-folded, inner
/// whitespace collapsed, ends trimmed ("New  York" and "new york" match).
/// The same as the host's built-in memory.
pub(crate) fn match_key(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The words of `text`: runs of letters and digits.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The distinct terms of `query` that ranking uses: lower-cased words of
/// letters and digits, stop words and one-letter words dropped, sorted, at
/// most [`MAX_QUERY_TERMS`]. Empty when the query has nothing to rank by.
pub(crate) fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = words(query)
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
        .filter(|w| STOP_WORDS.binary_search(&w.as_str()).is_err())
        .collect();
    terms.sort();
    terms.dedup();
    terms.truncate(MAX_QUERY_TERMS);
    terms
}

/// Whether document word `word` is query term `term` (lower-case).
fn same_word(word: &str, term: &str) -> bool {
    if word.is_ascii() {
        word.eq_ignore_ascii_case(term)
    } else {
        word.to_lowercase() == term
    }
}

/// Relevance of each of `documents` to `terms` (from [`query_terms`]): BM25
/// over the documents given, divided by the best score, so the best
/// document scores 1 and every score lies in 0..=1. A document sharing no
/// term scores 0; so does every document when `terms` is empty.
pub(crate) fn relevance<'d>(
    terms: &[String],
    documents: impl IntoIterator<Item = &'d str>,
) -> Vec<f32> {
    // Per document: its length in words and how often each term occurs.
    let counted: Vec<(usize, Vec<u32>)> = documents
        .into_iter()
        .map(|document| {
            let mut frequencies = vec![0u32; terms.len()];
            let mut length = 0usize;
            for word in words(document) {
                length += 1;
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
    let scores: Vec<f64> = counted
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
        .collect();
    let best = scores.iter().copied().fold(0.0_f64, f64::max);
    if best <= 0.0 || !best.is_finite() {
        return vec![0.0; scores.len()];
    }
    scores
        .into_iter()
        .map(|score| ((score / best) as f32).clamp(0.0, 1.0))
        .collect()
}

/// A stable 64-bit hash (FNV-1a) of `text`: the same in every build, so
/// keys derived from it stay valid.
pub(crate) fn hash64(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_keys_ignore_case_and_spacing() {
        assert_eq!(match_key("  New   York "), "new york");
        assert_eq!(match_key("PARIS"), match_key("paris"));
        assert_eq!(match_key("ZÜRICH"), "zürich");
    }

    #[test]
    fn query_terms_drop_noise() {
        assert_eq!(
            query_terms("Where does Alice live? In New-York, alice!"),
            vec!["alice", "live", "new", "york"]
        );
        assert!(query_terms("  the of a ").is_empty());
        let mut sorted = STOP_WORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STOP_WORDS, "STOP_WORDS must stay sorted");
    }

    #[test]
    fn relevance_is_normalised() {
        let terms = query_terms("Alice Paris");
        let scores = relevance(
            &terms,
            [
                "alice lives in Paris",
                "the weather was nice",
                "alice prefers tea",
            ],
        );
        assert_eq!(scores[0], 1.0);
        assert_eq!(scores[1], 0.0);
        assert!(scores[2] > 0.0 && scores[2] < 1.0, "{scores:?}");
        assert_eq!(relevance(&[], ["x"]), vec![0.0]);
        assert!(relevance(&terms, []).is_empty());
        let accents = relevance(&query_terms("zürich"), ["ZÜRICH office", "zurich"]);
        assert_eq!(accents, vec![1.0, 0.0]);
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(hash64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
