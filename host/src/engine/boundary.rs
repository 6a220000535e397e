//! Checks on what crosses the sandbox boundary: JSON size and nesting, and
//! guest text made safe to print.
//!
//! Every JSON document a guest hands the host (tool output, tool arguments a
//! model produced for a guest, architecture output, event data) and every
//! one the host hands a guest passes [`check_json`]: at most a given number
//! of bytes and [`MAX_JSON_DEPTH`] levels of nesting, so neither side's
//! parser recurses without bound and nothing prints `null` for a document it
//! could not read. Guest text bound for a log or a terminal passes
//! [`escape_text`]: it is data, never control.

use std::fmt::Write as _;

/// Deepest nesting of arrays and objects accepted in a JSON document.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why a JSON document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JsonRefusal {
    /// Larger than allowed.
    #[error("it is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    #[error("it nests arrays and objects deeper than {max} levels")]
    TooDeep {
        /// The cap.
        max: usize,
    },
    /// Not JSON.
    #[error("it is not valid JSON: {reason}")]
    Invalid {
        /// The parser's complaint.
        reason: String,
    },
}

/// Check that `text` is one JSON document of at most `max_bytes` bytes
/// nesting at most [`MAX_JSON_DEPTH`] levels.
///
/// # Errors
///
/// [`JsonRefusal`] naming the first rule it breaks.
pub fn check_json(text: &str, max_bytes: usize) -> Result<(), JsonRefusal> {
    check_json_bounds(text, max_bytes)?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| JsonRefusal::Invalid {
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Check only the size and nesting of `text`, not that it is JSON: for
/// text a guest validates itself (tool arguments, which a model may leave
/// empty or get wrong; the tool reports that to the model).
///
/// # Errors
///
/// [`JsonRefusal::TooLarge`] or [`JsonRefusal::TooDeep`].
pub fn check_json_bounds(text: &str, max_bytes: usize) -> Result<(), JsonRefusal> {
    if text.len() > max_bytes {
        return Err(JsonRefusal::TooLarge {
            size: text.len(),
            max: max_bytes,
        });
    }
    if nesting_depth(text.as_bytes()) > MAX_JSON_DEPTH {
        return Err(JsonRefusal::TooDeep {
            max: MAX_JSON_DEPTH,
        });
    }
    Ok(())
}

/// The deepest nesting of `[` and `{` outside strings; a linear scan that
/// needs no recursion, so it is safe on any input.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether `c` must not reach a log or terminal as itself: C0 and C1
/// controls (newlines and escape sequences included), DEL, and the Unicode
/// bidirectional overrides that can make text display in another order.
fn is_dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every dangerous character escaped (`\n`, `\t`, `\u{1b}`, ...),
/// cut to about `max_bytes` bytes with a marker when longer.
pub fn escape_text(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes.saturating_add(16)));
    for (index, c) in text.char_indices() {
        if out.len() >= max_bytes {
            let _ = write!(out, "…[{} more bytes]", text.len() - index);
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_dangerous(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` for a terminal that shows multi-line prose (a model's answer):
/// newlines and tabs stay, every other dangerous character is escaped.
pub fn terminal_safe(text: &str) -> String {
    if !text
        .chars()
        .any(|c| is_dangerous(c) && c != '\n' && c != '\t')
    {
        return text.to_owned();
    }
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(|part| escape_text(part, usize::MAX))
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cut `text` to at most `max_bytes` bytes on a character boundary.
pub fn cut_to(text: &mut String, max_bytes: usize) -> Option<usize> {
    if text.len() <= max_bytes {
        return None;
    }
    let original = text.len();
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    Some(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            check_json(&deep, usize::MAX),
            Err(JsonRefusal::TooDeep {
                max: MAX_JSON_DEPTH
            })
        );
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(check_json(&ok, usize::MAX), Ok(()));
        // Brackets inside strings are text.
        let quoted = format!("\"{}\\\"{}\"", "[".repeat(500), "{".repeat(500));
        assert_eq!(check_json(&quoted, usize::MAX), Ok(()));
    }

    #[test]
    fn size_and_syntax_are_checked() {
        assert!(matches!(
            check_json("[1,2,3]", 3),
            Err(JsonRefusal::TooLarge { size: 7, max: 3 })
        ));
        assert!(matches!(
            check_json("{", 100),
            Err(JsonRefusal::Invalid { .. })
        ));
    }

    #[test]
    fn control_characters_are_escaped() {
        let forged = "ok\n2026-01-01T00:00:00Z  WARN loom: fake\x1b[2J\u{202E}";
        let safe = escape_text(forged, 1000);
        assert!(!safe.contains('\n') && !safe.contains('\x1b') && !safe.contains('\u{202E}'));
        assert!(
            safe.contains("\\n") && safe.contains("\\u{1b}[2J"),
            "{safe}"
        );
        assert_eq!(terminal_safe("a\n\tb\x1b[2J"), "a\n\tb\\u{1b}[2J");
        let long = escape_text(&"x".repeat(100), 10);
        assert!(long.starts_with("xxxxxxxxxx…[90 more bytes]"), "{long}");
    }
}
