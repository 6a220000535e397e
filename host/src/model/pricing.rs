//! Prices per model, and the cost of a call. Overridable in `loom.toml`
//! under `[pricing."<model string>"]`.

use super::Usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million input tokens not served from cache.
    pub input: f64,
    /// Per million cached input tokens (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Per million input tokens written to the prompt cache (default:
    /// `input`; Anthropic charges 1.25 × input).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Per million output tokens.
    pub output: f64,
}

impl Price {
    /// The cost of `usage` at this price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let fresh = usage.input_tokens - cached - written;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// Built-in list prices (USD per million tokens), by provider model name.
const BUILT_IN: &[(&str, f64, f64, f64)] = &[
    // name, input, cached input, output
    ("gpt-4.1", 2.00, 0.50, 8.00),
    ("gpt-4.1-mini", 0.40, 0.10, 1.60),
    ("gpt-4.1-nano", 0.10, 0.025, 0.40),
    ("gpt-4o", 2.50, 1.25, 10.00),
    ("gpt-4o-mini", 0.15, 0.075, 0.60),
    ("o4-mini", 1.10, 0.275, 4.40),
    ("claude-sonnet-4-5", 3.00, 0.30, 15.00),
    ("claude-opus-4-1", 15.00, 1.50, 75.00),
    ("claude-haiku-4-5", 1.00, 0.10, 5.00),
    ("claude-3-5-haiku-latest", 0.80, 0.08, 4.00),
];

/// Prices by model string, built-ins plus overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    overrides: BTreeMap<String, Price>,
}

impl PriceTable {
    /// A table with `overrides` (keyed by model string, such as
    /// `openai:gpt-4.1-mini`, or by bare model name) over the built-ins.
    pub fn new(overrides: BTreeMap<String, Price>) -> Self {
        PriceTable { overrides }
    }

    /// The price of `model` (a model string such as `anthropic:claude-sonnet-4-5`),
    /// or `None` when unknown. Offline models cost nothing.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.overrides.get(model) {
            return Some(*price);
        }
        if model == "echo" || model.starts_with("scripted") {
            return Some(Price {
                input: 0.0,
                cached_input: None,
                cache_write: None,
                output: 0.0,
            });
        }
        let bare = model.split_once(':').map(|(_, name)| name).unwrap_or(model);
        if let Some(price) = self.overrides.get(bare) {
            return Some(*price);
        }
        BUILT_IN
            .iter()
            .find(|(name, ..)| *name == bare)
            .map(|&(name, input, cached, output)| Price {
                input,
                cached_input: Some(cached),
                // Anthropic bills 5-minute cache writes at 1.25 × input;
                // OpenAI caches without a write charge.
                cache_write: name.starts_with("claude").then_some(input * 1.25),
                output,
            })
    }

    /// The cost of `usage` on `model`; 0 (with a warning, once per call) when
    /// the price is unknown, so budgets in dollars cannot be enforced for it.
    pub fn cost(&self, model: &str, usage: &Usage) -> f64 {
        match self.price(model) {
            Some(price) => price.cost(usage),
            None => {
                tracing::warn!(
                    model,
                    "no price known for this model; its cost counts as 0 — add [pricing.\"{model}\"] to loom.toml"
                );
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let table = PriceTable::default();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cached_tokens: 500_000,
            cache_write_tokens: 0,
        };
        let cost = table.cost("openai:gpt-4.1-mini", &usage);
        assert!(
            (cost - (0.5 * 0.40 + 0.5 * 0.10 + 1.60)).abs() < 1e-9,
            "{cost}"
        );
        assert_eq!(table.cost("scripted:x.json", &usage), 0.0);
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "compat:local".into(),
            Price {
                input: 1.0,
                cached_input: None,
                cache_write: None,
                output: 2.0,
            },
        );
        let table = PriceTable::new(overrides);
        assert!((table.cost("compat:local", &usage) - 3.0).abs() < 1e-9);
        assert!(table.price("openai:unknown-model").is_none());
    }

    #[test]
    fn anthropic_cache_writes_cost_more_than_input() {
        let table = PriceTable::default();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cached_tokens: 200_000,
            cache_write_tokens: 300_000,
        };
        let cost = table.cost("anthropic:claude-sonnet-4-5", &usage);
        let expected = 0.5 * 3.00 + 0.2 * 0.30 + 0.3 * 3.75;
        assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
    }
}
