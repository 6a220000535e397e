//! Canonical predicates and match keys.
//!
//! A predicate is stored in one canonical spelling, so `Name_Is`,
//! `name-is`, `nameIs` and `name is` are one predicate (`name_is`):
//! camel-case boundaries, spaces, hyphens and dots become one underscore,
//! everything is lower-cased, and underscores at either end are dropped.

/// The canonical spelling of `predicate`; empty when it has no letters or
/// digits.
pub fn canonical_predicate(predicate: &str) -> String {
    let mut out = String::with_capacity(predicate.len() + 4);
    let mut previous: Option<char> = None;
    let mut pending_separator = false;
    for c in predicate.trim().chars() {
        if c.is_alphanumeric() {
            let boundary = c.is_uppercase()
                && previous.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit());
            if (pending_separator || boundary) && !out.is_empty() {
                out.push('_');
            }
            pending_separator = false;
            out.extend(c.to_lowercase());
            previous = Some(c);
        } else {
            // `_`, `-`, `.`, whitespace and any other punctuation separate.
            pending_separator = true;
            previous = None;
        }
    }
    out
}

/// The key two subjects or objects are compared by: case-folded, inner
/// whitespace collapsed, ends trimmed ("New  York" and "new york" match).
pub fn match_key(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_predicate_are_one() {
        for spelling in [
            "Name_Is",
            "name-is",
            "nameIs",
            "name is",
            "NAME_IS",
            " name__is ",
            "name.is",
        ] {
            assert_eq!(canonical_predicate(spelling), "name_is", "{spelling}");
        }
        assert_eq!(canonical_predicate("livesIn"), "lives_in");
        assert_eq!(canonical_predicate("worksAt2024"), "works_at2024");
        assert_eq!(canonical_predicate("born_in_1990s"), "born_in_1990s");
        assert_eq!(canonical_predicate("-_ -"), "");
    }

    #[test]
    fn match_keys_ignore_case_and_spacing() {
        assert_eq!(match_key("  New   York "), "new york");
        assert_eq!(match_key("PARIS"), match_key("paris"));
    }
}
