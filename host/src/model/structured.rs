//! Structured output through providers that only accept an object schema
//! (OpenAI `json_schema`, an Anthropic tool's `input_schema`): any other
//! schema travels wrapped as `{"value": <schema>}`, and the answer is
//! unwrapped again before the caller sees it.

use serde_json::{Value, json};

/// Whether `schema` describes a JSON object.
pub fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// `schema` itself when it describes an object, else the wrapping object.
pub fn object_schema(schema: &Value) -> Value {
    if is_object_schema(schema) {
        schema.clone()
    } else {
        json!({
            "type": "object",
            "properties": { "value": schema },
            "required": ["value"],
            "additionalProperties": false,
        })
    }
}

/// The answer to `schema` given the provider's `answer` to
/// [`object_schema`]: unwrapped when it was wrapped; unchanged when it was
/// not, or when it is not the expected wrapper (validation then reports it).
pub fn unwrap_answer(schema: &Value, answer: String) -> String {
    if is_object_schema(schema) {
        return answer;
    }
    serde_json::from_str::<Value>(&answer)
        .ok()
        .and_then(|v| v.get("value").cloned())
        .map(|v| v.to_string())
        .unwrap_or(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_object_schemas_round_trip_through_the_wrapper() {
        let list = json!({"type": "array", "items": {"type": "integer"}});
        let wrapped = object_schema(&list);
        assert_eq!(wrapped["properties"]["value"], list);
        assert_eq!(unwrap_answer(&list, r#"{"value":[1,2]}"#.into()), "[1,2]");
        let object = json!({"type": "object"});
        assert_eq!(object_schema(&object), object);
        assert_eq!(unwrap_answer(&object, r#"{"a":1}"#.into()), r#"{"a":1}"#);
    }
}
