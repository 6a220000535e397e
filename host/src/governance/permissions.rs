//! Permission modes and allow/deny lists: the first links of the chain that
//! decides whether a tool call runs.
//!
//! The chain is: deny lists, then the mode (with the allow lists), then the
//! tenant's policy components in order, then approval. This module is the
//! first two; `governance::gate` runs the rest.

use serde::{Deserialize, Serialize};

/// How destructive tool calls are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Destructive calls ask for approval.
    #[default]
    Default,
    /// Tools tagged as file edits run; other destructive calls ask.
    AcceptEdits,
    /// Destructive calls are denied: the agent may look, not touch.
    Plan,
    /// Everything runs (deny lists and policies still apply).
    Bypass,
}

impl Mode {
    /// The mode's name as written in `loom.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::AcceptEdits => "accept-edits",
            Mode::Plan => "plan",
            Mode::Bypass => "bypass",
        }
    }
}

/// A tool name pattern: an exact name, or a `*` wildcard (`files_*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolPattern(String);

impl ToolPattern {
    /// Parse a pattern.
    ///
    /// # Errors
    ///
    /// A message when the pattern is empty or has characters no tool name has.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty()
            || text.len() > 128
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '.'))
        {
            return Err(format!(
                "`{text}` is not a tool name pattern: use letters, digits, `_`, `-`, `.` and `*`"
            ));
        }
        Ok(ToolPattern(text.to_owned()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        wildcard(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*`-only glob match, linear-time (no backtracking blow-up).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Permissions as configured at one level (tenant or user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PermissionRules {
    /// The mode; `None` inherits (the tenant's, else `default`).
    pub mode: Option<Mode>,
    /// Tools that run without asking (destructive or not), except in `plan`
    /// mode, which never runs destructive calls.
    pub allow: Vec<ToolPattern>,
    /// Tools that never run.
    pub deny: Vec<ToolPattern>,
    /// Tools, beyond those their plugin tags, that count as file edits for
    /// `accept-edits`.
    pub file_edits: Vec<ToolPattern>,
}

/// Who made a permission decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Decider {
    /// A deny list.
    DenyList,
    /// An allow list.
    AllowList,
    /// The permission mode.
    Mode,
    /// A policy component.
    Policy(String),
    /// The approver.
    Approver(String),
    /// A decision remembered earlier in the run.
    Remembered,
    /// The budget (the call was refused before any check).
    Budget,
}

impl std::fmt::Display for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decider::DenyList => f.write_str("deny list"),
            Decider::AllowList => f.write_str("allow list"),
            Decider::Mode => f.write_str("permission mode"),
            Decider::Policy(name) => write!(f, "policy {name}"),
            Decider::Approver(name) => write!(f, "approver {name}"),
            Decider::Remembered => f.write_str("remembered approval"),
            Decider::Budget => f.write_str("budget"),
        }
    }
}

/// The verdict of one link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Do not run it; the reason is shown to the model.
    Deny(String),
    /// Ask the approver; the reason is shown to it.
    Ask(String),
}

/// What the mode and lists need to know of a tool.
#[derive(Debug, Clone, Copy)]
pub struct ToolTraits<'a> {
    /// Its name.
    pub name: &'a str,
    /// Whether it changes the world (a tool that does not say is).
    pub destructive: bool,
    /// Whether its plugin tags it as a file edit.
    pub file_edit: bool,
}

/// The tenant's rules with one user's on top.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectiveRules {
    /// The mode in force.
    pub mode: Mode,
    allow: Vec<ToolPattern>,
    deny: Vec<ToolPattern>,
    file_edits: Vec<ToolPattern>,
}

impl EffectiveRules {
    /// `tenant`'s rules with `user`'s: the user's mode wins; lists add up.
    pub fn new(tenant: &PermissionRules, user: Option<&PermissionRules>) -> Self {
        let mut rules = EffectiveRules {
            mode: user
                .and_then(|u| u.mode)
                .or(tenant.mode)
                .unwrap_or_default(),
            allow: tenant.allow.clone(),
            deny: tenant.deny.clone(),
            file_edits: tenant.file_edits.clone(),
        };
        if let Some(user) = user {
            rules.allow.extend(user.allow.iter().cloned());
            rules.deny.extend(user.deny.iter().cloned());
            rules.file_edits.extend(user.file_edits.iter().cloned());
        }
        rules
    }

    /// The deny lists, then the mode with the allow lists.
    pub fn decide(&self, tool: ToolTraits<'_>) -> (Verdict, Decider) {
        if let Some(pattern) = self.deny.iter().find(|p| p.matches(tool.name)) {
            return (
                Verdict::Deny(format!(
                    "tool `{}` is on the deny list (`{}`)",
                    tool.name, pattern.0
                )),
                Decider::DenyList,
            );
        }
        if !tool.destructive {
            return (Verdict::Allow, Decider::Mode);
        }
        if self.mode == Mode::Plan {
            return (
                Verdict::Deny(format!(
                    "tool `{}` changes the world and the permission mode is `plan`: \
                     destructive calls are not run",
                    tool.name
                )),
                Decider::Mode,
            );
        }
        if self.allow.iter().any(|p| p.matches(tool.name)) {
            return (Verdict::Allow, Decider::AllowList);
        }
        let file_edit = tool.file_edit || self.file_edits.iter().any(|p| p.matches(tool.name));
        match self.mode {
            Mode::Bypass => (Verdict::Allow, Decider::Mode),
            Mode::AcceptEdits if file_edit => (Verdict::Allow, Decider::Mode),
            Mode::AcceptEdits | Mode::Default => (
                Verdict::Ask(format!(
                    "tool `{}` changes the world; the permission mode `{}` asks before it runs",
                    tool.name,
                    self.mode.name()
                )),
                Decider::Mode,
            ),
            Mode::Plan => (Verdict::Deny(String::new()), Decider::Mode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(mode: Mode, allow: &[&str], deny: &[&str]) -> PermissionRules {
        PermissionRules {
            mode: Some(mode),
            allow: allow
                .iter()
                .map(|p| ToolPattern::parse(p).unwrap())
                .collect(),
            deny: deny
                .iter()
                .map(|p| ToolPattern::parse(p).unwrap())
                .collect(),
            file_edits: Vec::new(),
        }
    }

    fn tool(name: &str, destructive: bool, file_edit: bool) -> ToolTraits<'_> {
        ToolTraits {
            name,
            destructive,
            file_edit,
        }
    }

    #[test]
    fn wildcards_match_without_backtracking_blowup() {
        let p = ToolPattern::parse("files_*").unwrap();
        assert!(p.matches("files_write"));
        assert!(!p.matches("file_write"));
        assert!(ToolPattern::parse("*").unwrap().matches("anything"));
        assert!(ToolPattern::parse("a*b*c").unwrap().matches("aXXbYYc"));
        assert!(!ToolPattern::parse("a*b*c").unwrap().matches("aXXbYY"));
        let long = "a".repeat(10_000);
        assert!(!ToolPattern::parse("*a*a*a*a*b").unwrap().matches(&long));
        assert!(ToolPattern::parse("bad/name").is_err());
    }

    #[test]
    fn each_mode_treats_destructive_calls_as_documented() {
        let write = tool("write_file", true, true);
        let send = tool("send_mail", true, false);
        let read = tool("read_file", false, false);
        let decide = |mode, t| {
            EffectiveRules::new(&rules(mode, &[], &[]), None)
                .decide(t)
                .0
        };
        assert!(matches!(decide(Mode::Default, write), Verdict::Ask(_)));
        assert!(matches!(decide(Mode::Default, read), Verdict::Allow));
        assert!(matches!(decide(Mode::AcceptEdits, write), Verdict::Allow));
        assert!(matches!(decide(Mode::AcceptEdits, send), Verdict::Ask(_)));
        assert!(matches!(decide(Mode::Plan, write), Verdict::Deny(_)));
        assert!(matches!(decide(Mode::Plan, read), Verdict::Allow));
        assert!(matches!(decide(Mode::Bypass, send), Verdict::Allow));
    }

    #[test]
    fn deny_wins_over_allow_and_user_rules_add_to_the_tenant() {
        let tenant = rules(Mode::Default, &["send_*"], &["rm"]);
        let user = PermissionRules {
            mode: Some(Mode::Bypass),
            deny: vec![ToolPattern::parse("send_mail").unwrap()],
            ..PermissionRules::default()
        };
        let alice = EffectiveRules::new(&tenant, Some(&user));
        assert_eq!(alice.mode, Mode::Bypass);
        assert!(matches!(
            alice.decide(tool("send_mail", true, false)).0,
            Verdict::Deny(_)
        ));
        assert!(matches!(
            alice.decide(tool("rm", true, false)).0,
            Verdict::Deny(_)
        ));
        let bob = EffectiveRules::new(&tenant, None);
        assert_eq!(
            bob.decide(tool("send_sms", true, false)),
            (Verdict::Allow, Decider::AllowList)
        );
        // Plan mode never runs destructive calls, allow list or not.
        let plan = EffectiveRules::new(&rules(Mode::Plan, &["send_*"], &[]), None);
        assert!(matches!(
            plan.decide(tool("send_sms", true, false)).0,
            Verdict::Deny(_)
        ));
    }
}
