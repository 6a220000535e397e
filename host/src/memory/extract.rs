//! Fact extraction: the prompt that asks a model for the stable facts of
//! an episode, and a parser that takes what the model returns — a JSON
//! array, fenced or not, with prose around it, cut off mid-way, or with
//! malformed items — and keeps every well-formed fact in it.

use super::episodes::Episode;
use super::facts::NewFact;
use super::timestamp::Timestamp;
use crate::model::{Message, ModelRequest};
use serde_json::Value;

/// Most facts taken from one episode.
pub const MAX_FACTS_PER_EPISODE: usize = 20;

/// Output tokens an extraction call may use.
pub const EXTRACTION_OUTPUT_TOKENS: u32 = 1_024;

/// The instructions of an extraction call.
pub const EXTRACTION_PROMPT: &str = "You extract durable facts about the user from one \
exchange between the user and an assistant. Return only stable claims worth remembering in \
later conversations (who the user is, where they live or work, what they prefer, decisions \
they made); skip greetings, questions, and anything true only for this moment. Answer with a \
JSON array and nothing else. Each item is an object with the keys \"subject\" (who or what the \
fact is about; use \"user\" for the user), \"predicate\" (a short relation in snake_case, such as \
name_is, lives_in, works_at, prefers), \"object\" (the value) and \"confidence\" (0 to 1). \
Answer [] when there is nothing worth keeping.";

/// The model request that extracts facts from `episode`.
pub fn extraction_request(episode: &Episode) -> ModelRequest {
    let mut input = episode.input.clone();
    let mut output = episode.output.clone();
    super::cut(&mut input, 16 * 1024);
    super::cut(&mut output, 16 * 1024);
    ModelRequest {
        messages: vec![
            Message::system(EXTRACTION_PROMPT),
            Message::user(format!(
                "Exchange (at {}):\n\nUSER: {input}\nASSISTANT: {output}\n",
                episode.at
            )),
        ],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_output_tokens: Some(EXTRACTION_OUTPUT_TOKENS),
        output_schema: None,
    }
}

/// Why a model's answer held no facts at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the extraction answer holds no JSON array of facts: {0}")]
pub struct ParseError(pub String);

/// The facts in a model's answer, at most `max`. Each fact is valid from
/// `valid_from` (the episode's time) unless it says otherwise, and cites
/// `source`. Malformed items are skipped; an answer cut off mid-array
/// keeps the items before the cut.
///
/// # Errors
///
/// [`ParseError`] when the answer holds no array (or `{"facts": [...]}`)
/// at all.
pub fn parse_facts(
    answer: &str,
    max: usize,
    valid_from: Timestamp,
    source: &str,
) -> Result<Vec<NewFact>, ParseError> {
    let body = unfence(answer);
    let items = items_of(body)?;
    Ok(items
        .iter()
        .filter_map(|item| fact_of(item, valid_from, source))
        .take(max)
        .collect())
}

/// The text inside the first ``` fence, or all of it.
fn unfence(text: &str) -> &str {
    let Some(start) = text.find("```") else {
        return text;
    };
    let after = &text[start + 3..];
    // Skip the fence's language tag (```json).
    let body = match after.find('\n') {
        Some(line_end) => &after[line_end + 1..],
        None => after,
    };
    match body.find("```") {
        Some(end) => &body[..end],
        None => body,
    }
}

/// The items of the first JSON array in `text` (or of `{"facts": [...]}`),
/// as far as they parse.
fn items_of(text: &str) -> Result<Vec<Value>, ParseError> {
    let Some(open) = text.find('[') else {
        // A single object is one fact.
        if let Some(brace) = text.find('{')
            && let Some(Ok(value)) = serde_json::Deserializer::from_str(&text[brace..])
                .into_iter::<Value>()
                .next()
        {
            if let Some(list) = value.get("facts").and_then(Value::as_array) {
                return Ok(list.clone());
            }
            return Ok(vec![value]);
        }
        let mut shown = text.trim().to_owned();
        super::cut(&mut shown, 120);
        return Err(ParseError(format!("`{shown}`")));
    };
    // Whole array first; then item by item up to the first that breaks.
    let rest = &text[open..];
    if let Some(Ok(Value::Array(items))) = serde_json::Deserializer::from_str(rest)
        .into_iter::<Value>()
        .next()
    {
        return Ok(items);
    }
    let mut items = Vec::new();
    let mut position = 1; // after `[`
    loop {
        let tail = rest[position..].trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if tail.is_empty() || tail.starts_with(']') {
            break;
        }
        let offset = rest.len() - tail.len();
        let mut stream = serde_json::Deserializer::from_str(tail).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                position = offset + stream.byte_offset();
                items.push(value);
            }
            // A broken or cut-off item ends the list.
            _ => break,
        }
    }
    Ok(items)
}

/// One fact from one item; `None` when the item is not a usable fact.
fn fact_of(item: &Value, valid_from: Timestamp, source: &str) -> Option<NewFact> {
    let text = |key: &str| {
        item.get(key)
            .and_then(|v| match v {
                Value::String(s) => Some(s.trim().to_owned()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
    };
    let confidence = item
        .get("confidence")
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite())
        .map_or(1.0, |c| c.clamp(0.0, 1.0) as f32);
    let from = item
        .get("valid_from")
        .and_then(Value::as_str)
        .and_then(|s| Timestamp::parse(s).ok())
        .unwrap_or(valid_from);
    Some(NewFact {
        subject: text("subject")?,
        predicate: text("predicate")?,
        object: text("object")?,
        confidence,
        sources: vec![source.to_owned()],
        valid_from: Some(from),
        valid_until: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(answer: &str) -> Result<Vec<(String, String, String)>, ParseError> {
        parse_facts(answer, 20, Timestamp::from_millis(0), "ep_1").map(|facts| {
            facts
                .into_iter()
                .map(|f| (f.subject, f.predicate, f.object))
                .collect()
        })
    }

    fn triple(s: &str, p: &str, o: &str) -> (String, String, String) {
        (s.into(), p.into(), o.into())
    }

    #[test]
    fn a_plain_array_parses() {
        assert_eq!(
            parse(
                r#"[{"subject":"user","predicate":"lives_in","object":"Paris","confidence":0.9}]"#
            ),
            Ok(vec![triple("user", "lives_in", "Paris")])
        );
        assert_eq!(parse("[]"), Ok(vec![]));
    }

    #[test]
    fn fences_and_prose_around_the_array_are_ignored() {
        let answer = "Sure! Here are the facts:\n```json\n[\n  {\"subject\": \"user\", \"predicate\": \"prefers\", \"object\": \"green tea\"}\n]\n```\nLet me know.";
        assert_eq!(
            parse(answer),
            Ok(vec![triple("user", "prefers", "green tea")])
        );
        let unclosed = "```\n[{\"subject\":\"user\",\"predicate\":\"name_is\",\"object\":\"Ada\"}]";
        assert_eq!(parse(unclosed), Ok(vec![triple("user", "name_is", "Ada")]));
    }

    #[test]
    fn a_cut_off_answer_keeps_the_complete_items() {
        let answer = r#"[{"subject":"user","predicate":"lives_in","object":"Oslo"}, {"subject":"user","predicate":"works_at","object":"Acme"}, {"subject":"user","predicate":"pref"#;
        assert_eq!(
            parse(answer),
            Ok(vec![
                triple("user", "lives_in", "Oslo"),
                triple("user", "works_at", "Acme")
            ])
        );
    }

    #[test]
    fn malformed_items_are_skipped_and_values_clamped() {
        let answer = r#"[{"subject":"user","predicate":"age","object":42,"confidence":7},
            {"subject":"","predicate":"x","object":"y"},
            "not an object",
            {"subject":"user","object":"no predicate"},
            {"subject":"user","predicate":"likes","object":"rain","valid_from":"2024-01-01"}]"#;
        let facts = parse_facts(answer, 20, Timestamp::from_millis(0), "ep_1").unwrap();
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].object, "42");
        assert_eq!(facts[0].confidence, 1.0);
        assert_eq!(facts[0].sources, vec!["ep_1".to_owned()]);
        assert_eq!(facts[1].valid_from, Timestamp::parse("2024-01-01").ok());
    }

    #[test]
    fn invalid_answers_are_errors_and_the_cap_holds() {
        assert!(parse("I could not find any facts.").is_err());
        assert_eq!(
            parse(r#"{"facts":[{"subject":"a","predicate":"b","object":"c"}]}"#),
            Ok(vec![triple("a", "b", "c")])
        );
        let many: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"subject":"s","predicate":"p{i}","object":"o"}}"#))
            .collect();
        let answer = format!("[{}]", many.join(","));
        assert_eq!(
            parse_facts(
                &answer,
                MAX_FACTS_PER_EPISODE,
                Timestamp::from_millis(0),
                "e"
            )
            .unwrap()
            .len(),
            MAX_FACTS_PER_EPISODE
        );
    }
}
