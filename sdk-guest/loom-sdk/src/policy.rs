//! Policy support: [`Decision`] helpers, the [`Policy`] trait behind
//! [`export_policy!`](crate::export_policy), and the policy's configuration.

use crate::{Decision, RunContext, ToolCall, ToolSpec};
use serde::de::DeserializeOwned;
use std::fmt;

/// The run context metadata key under which the host passes each policy its
/// configuration, as JSON text.
pub const POLICY_CONFIG_KEY: &str = "loom.policy_config";

impl Decision {
    /// Do not run the call; `reason` is shown to the model.
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision::Deny(reason.into())
    }

    /// Ask the tenant's approver; `reason` is shown to the approver.
    pub fn ask(reason: impl Into<String>) -> Self {
        Decision::Ask(reason.into())
    }

    /// True for [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The reason of a denial or a question; `None` for [`Decision::Allow`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Allow => None,
            Decision::Deny(reason) | Decision::Ask(reason) => Some(reason),
        }
    }
}

/// What a policy function may return: a [`Decision`], or a
/// `Result<Decision, E>` whose error denies the call with the error's text
/// (so a policy can use `?` and still fail closed).
pub trait IntoDecision {
    /// The decision this value stands for.
    fn into_decision(self) -> Decision;
}

impl IntoDecision for Decision {
    fn into_decision(self) -> Decision {
        self
    }
}

impl<E: fmt::Display> IntoDecision for Result<Decision, E> {
    fn into_decision(self) -> Decision {
        self.unwrap_or_else(|error| Decision::Deny(error.to_string()))
    }
}

/// A policy that [`export_policy!`](crate::export_policy) can export.
///
/// Every function `fn(&ToolCall, &ToolSpec) -> D` where `D: IntoDecision` is
/// a policy; implement the trait by hand for a type that carries state or
/// groups helper methods.
pub trait Policy {
    /// Judge `call` to the tool described by `spec` for the current run
    /// context ([`context`](crate::context)).
    fn check(&self, call: &ToolCall, spec: &ToolSpec) -> Decision;
}

impl<F, D> Policy for F
where
    F: Fn(&ToolCall, &ToolSpec) -> D,
    D: IntoDecision,
{
    fn check(&self, call: &ToolCall, spec: &ToolSpec) -> Decision {
        self(call, spec).into_decision()
    }
}

impl ToolCall {
    /// The arguments as a JSON value; empty text counts as `{}`.
    pub fn arguments_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.parse_arguments()
    }

    /// The arguments parsed as `T`; empty text counts as `{}`.
    pub fn parse_arguments<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(json_or_empty_object(&self.arguments))
    }
}

impl RunContext {
    /// The value of metadata `key`, when the run carries it exactly once.
    /// A key present more than once reads as absent; see
    /// [`policy_config_in`] for a reader that tells the two apart.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        let mut values = self.metadata.iter().filter(|(k, _)| k == key);
        match (values.next(), values.next()) {
            (Some((_, value)), None) => Some(value),
            _ => None,
        }
    }
}

/// Why a policy's configuration could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum PolicyConfigError {
    /// The configuration is not JSON of the expected shape.
    Invalid(serde_json::Error),
    /// The run context carries the configuration key more than once, so
    /// which one holds is unclear.
    Ambiguous,
}

impl fmt::Display for PolicyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyConfigError::Invalid(error) => {
                write!(
                    f,
                    "the policy config (`{POLICY_CONFIG_KEY}`) is invalid: {error}"
                )
            }
            PolicyConfigError::Ambiguous => write!(
                f,
                "the policy config (`{POLICY_CONFIG_KEY}`) is invalid: the run context carries it more than once"
            ),
        }
    }
}

impl std::error::Error for PolicyConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyConfigError::Invalid(error) => Some(error),
            PolicyConfigError::Ambiguous => None,
        }
    }
}

/// This policy's configuration, parsed from the JSON text the host put in
/// the run context under [`POLICY_CONFIG_KEY`]. A missing key (or empty
/// text) reads as `{}`, so a configuration type whose fields all have
/// defaults needs no configuration at all.
///
/// Call it from inside [`Policy::check`]: the configuration belongs to the
/// run context of the call being judged.
pub fn policy_config<T: DeserializeOwned>() -> Result<T, PolicyConfigError> {
    policy_config_in(&crate::context())
}

/// [`policy_config`] for a given run context (for tests, or when the policy
/// already holds the context).
pub fn policy_config_in<T: DeserializeOwned>(context: &RunContext) -> Result<T, PolicyConfigError> {
    let mut values = context
        .metadata
        .iter()
        .filter(|(key, _)| key == POLICY_CONFIG_KEY);
    let text = match (values.next(), values.next()) {
        (None, _) => "{}",
        (Some((_, value)), None) => json_or_empty_object(value),
        (Some(_), Some(_)) => return Err(PolicyConfigError::Ambiguous),
    };
    serde_json::from_str(text).map_err(PolicyConfigError::Invalid)
}

/// `text`, or `{}` when it is blank.
fn json_or_empty_object(text: &str) -> &str {
    if text.trim().is_empty() { "{}" } else { text }
}

/// Exports a policy as this component's `loom:plugin/policy@0.1.3`.
///
/// The argument is any expression whose value implements [`Policy`]: the
/// name of a function `fn(&ToolCall, &ToolSpec) -> D` with
/// `D: IntoDecision`, or a value of a type implementing [`Policy`] by hand.
/// Call it once per component, at the crate root.
///
/// ```no_run
/// use loom_sdk::{Decision, Policy, ToolCall, ToolSpec};
///
/// /// Asks before every destructive tool.
/// struct AskDestructive;
///
/// impl Policy for AskDestructive {
///     fn check(&self, _call: &ToolCall, spec: &ToolSpec) -> Decision {
///         if spec.destructive {
///             Decision::ask(format!("`{}` changes the world", spec.name))
///         } else {
///             Decision::Allow
///         }
///     }
/// }
///
/// loom_sdk::export_policy!(AskDestructive);
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:expr $(,)?) => {
        #[doc(hidden)]
        struct __LoomExportedPolicy;

        impl $crate::policy_bindings::exports::loom::plugin::policy::Guest for __LoomExportedPolicy {
            fn check(call: $crate::ToolCall, spec: $crate::ToolSpec) -> $crate::Decision {
                $crate::Policy::check(&$policy, &call, &spec)
            }
        }

        $crate::policy_bindings::__export_policy_plugin!(
            __LoomExportedPolicy with_types_in $crate::policy_bindings
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq, Default)]
    #[serde(default)]
    struct Config {
        limit: u32,
    }

    fn context(metadata: &[(&str, &str)]) -> RunContext {
        RunContext {
            tenant: "t".into(),
            user_id: None,
            session_id: None,
            run_id: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn missing_config_reads_as_empty_object() {
        let config: Config = policy_config_in(&context(&[("other", "x")])).unwrap();
        assert_eq!(config, Config::default());
        let value: serde_json::Value = policy_config_in(&context(&[])).unwrap();
        assert_eq!(value, serde_json::json!({}));
    }

    #[test]
    fn config_is_parsed_and_errors_say_why() {
        let config: Config =
            policy_config_in(&context(&[(POLICY_CONFIG_KEY, r#"{"limit": 3}"#)])).unwrap();
        assert_eq!(config.limit, 3);
        let error = policy_config_in::<Config>(&context(&[(POLICY_CONFIG_KEY, "{nope")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("policy config"), "{error}");
        assert!(error.contains("invalid"), "{error}");
        let twice = context(&[(POLICY_CONFIG_KEY, "{}"), (POLICY_CONFIG_KEY, "{}")]);
        assert!(matches!(
            policy_config_in::<Config>(&twice),
            Err(PolicyConfigError::Ambiguous)
        ));
        assert_eq!(twice.metadata_value(POLICY_CONFIG_KEY), None);
    }

    #[test]
    fn functions_are_policies_and_errors_deny() {
        fn strict(call: &ToolCall, _spec: &ToolSpec) -> Result<Decision, String> {
            let args = call.arguments_json().map_err(|e| e.to_string())?;
            if args.get("ok").is_some() {
                Ok(Decision::Allow)
            } else {
                Err("no `ok`".into())
            }
        }
        let spec = ToolSpec {
            name: "t".into(),
            description: String::new(),
            parameters: "{}".into(),
            destructive: true,
            idempotent: false,
        };
        let call = |arguments: &str| ToolCall {
            id: "1".into(),
            name: "t".into(),
            arguments: arguments.into(),
        };
        assert_eq!(strict.check(&call(r#"{"ok":1}"#), &spec), Decision::Allow);
        assert_eq!(strict.check(&call(""), &spec), Decision::deny("no `ok`"));
        assert_eq!(Decision::ask("why").reason(), Some("why"));
        assert!(!strict.check(&call("{"), &spec).is_allow());
    }
}
