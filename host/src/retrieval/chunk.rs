//! Splitting documents into chunks for retrieval: markdown by its headings
//! (each chunk carries the heading path it sits under), then by paragraph,
//! packed up to a size with a little overlap; plain text by paragraph.

/// How a document is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// Markdown: headings start sections.
    Markdown,
    /// Plain text: paragraphs only.
    Text,
}

impl DocumentKind {
    /// Markdown for `.md`/`.markdown` files, else text.
    pub fn of_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("md") || ext.eq_ignore_ascii_case("markdown") => {
                DocumentKind::Markdown
            }
            _ => DocumentKind::Text,
        }
    }
}

/// One chunk: the headings above it and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The heading path (`Guide > Install`), empty outside any heading.
    pub heading: String,
    /// The text.
    pub text: String,
}

/// Split `text` into chunks of at most about `max_chars` characters, the
/// next starting with the last `overlap` characters of the previous one
/// when a section is cut.
pub fn chunk(text: &str, kind: DocumentKind, max_chars: usize, overlap: usize) -> Vec<Chunk> {
    let max_chars = max_chars.max(64);
    let overlap = overlap.min(max_chars / 2);
    let mut out = Vec::new();
    for (heading, body) in sections(text, kind) {
        let mut current = String::new();
        for paragraph in paragraphs(&body) {
            for piece in split_long(&paragraph, max_chars) {
                let separator = if current.is_empty() { 0 } else { 2 };
                if current.chars().count() + separator + piece.chars().count() > max_chars
                    && !current.is_empty()
                {
                    let tail = tail_chars(&current, overlap);
                    out.push(Chunk {
                        heading: heading.clone(),
                        text: std::mem::take(&mut current),
                    });
                    current = tail;
                }
                if !current.is_empty() {
                    current.push_str("\n\n");
                }
                current.push_str(&piece);
            }
        }
        if !current.trim().is_empty() {
            out.push(Chunk {
                heading: heading.clone(),
                text: current,
            });
        }
    }
    out
}

/// (heading path, body) of each section.
fn sections(text: &str, kind: DocumentKind) -> Vec<(String, String)> {
    if kind == DocumentKind::Text {
        return vec![(String::new(), text.to_owned())];
    }
    let mut out = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut body = String::new();
    let mut in_fence = false;
    let heading_text = |path: &[(usize, String)]| {
        path.iter()
            .map(|(_, h)| h.as_str())
            .collect::<Vec<_>>()
            .join(" > ")
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        let level = line.chars().take_while(|c| *c == '#').count();
        let is_heading = !in_fence && (1..=6).contains(&level) && line[level..].starts_with(' ');
        if is_heading {
            if !body.trim().is_empty() {
                out.push((heading_text(&path), std::mem::take(&mut body)));
            }
            body.clear();
            path.retain(|(l, _)| *l < level);
            path.push((level, line[level..].trim().to_owned()));
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    if !body.trim().is_empty() {
        out.push((heading_text(&path), body));
    }
    out
}

/// Paragraphs: runs of lines separated by blank lines, trimmed.
fn paragraphs(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A paragraph longer than `max` characters, cut at word boundaries.
fn split_long(paragraph: &str, max: usize) -> Vec<String> {
    if paragraph.chars().count() <= max {
        return vec![paragraph.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for word in paragraph.split_whitespace() {
        if current.chars().count() + 1 + word.chars().count() > max && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        // A single word longer than a chunk is cut.
        if word.chars().count() > max {
            let chars: Vec<char> = word.chars().collect();
            for piece in chars.chunks(max) {
                out.push(piece.iter().collect());
            }
            continue;
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last `n` characters of `text`, started at a word boundary.
fn tail_chars(text: &str, n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len().saturating_sub(n);
    let tail: String = chars[start..].iter().collect();
    match tail.find(char::is_whitespace) {
        Some(space) if start > 0 => tail[space..].trim_start().to_owned(),
        _ => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_chunks_carry_their_heading_path() {
        let doc = "# Guide\nIntro text.\n\n## Install\nRun the installer.\n\n```sh\n# not a heading\n```\n\n## Use\nCall it.\n";
        let chunks = chunk(doc, DocumentKind::Markdown, 500, 50);
        let headings: Vec<&str> = chunks.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(headings, ["Guide", "Guide > Install", "Guide > Use"]);
        assert!(chunks[1].text.contains("# not a heading"));
    }

    #[test]
    fn long_sections_are_packed_with_overlap() {
        let paragraph = "word ".repeat(60);
        let doc = format!("{paragraph}\n\n{paragraph}\n\n{paragraph}");
        let chunks = chunk(&doc, DocumentKind::Text, 400, 40);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        assert!(
            chunks
                .iter()
                .all(|c| c.text.chars().count() <= 400 + 40 + 2)
        );
        assert!(chunks[1].text.starts_with("word"));
        let giant = "x".repeat(1000);
        let cut = chunk(&giant, DocumentKind::Text, 100, 0);
        assert_eq!(cut.len(), 10);
    }

    #[test]
    fn kinds_come_from_extensions() {
        assert_eq!(
            DocumentKind::of_path("a/README.MD".as_ref()),
            DocumentKind::Markdown
        );
        assert_eq!(
            DocumentKind::of_path("notes.txt".as_ref()),
            DocumentKind::Text
        );
        assert!(chunk("  \n\n ", DocumentKind::Markdown, 100, 10).is_empty());
    }
}
