//! `deny-args`: a policy that denies tool calls whose arguments name a
//! denied path or host.
//!
//! Configuration (the `loom.policy_config` JSON; every field optional):
//!
//! ```json
//! {
//!   "paths": ["/etc/**", "**/.ssh/**", "/data/secret*"],
//!   "hosts": ["evil.example", "*.internal"],
//!   "tools": ["read_file", "http_get"]
//! }
//! ```
//!
//! * Every string in the arguments (object keys included, at any depth) is
//!   checked, and a denial names it by its JSON path (`path`,
//!   `files[2].name`).
//! * **Hosts.** A URL (`scheme://...`) or a scheme-relative `//host/...` has
//!   its host checked; so has a string that is just `host`, `host:port` or
//!   `user@host`. Userinfo, port, brackets and a trailing dot are ignored,
//!   `%XX` is decoded, case does not matter. Where URL parsers disagree
//!   (`\`, `?@`, `#@` tricks) every reading is checked. `evil.example`
//!   matches that host only; `*.internal` matches every subdomain of
//!   `internal` (not `internal` itself); `*` matches every host of a URL
//!   (bare words are not taken for hosts by `*`).
//! * **Paths.** Any other one-line string is taken for a path, normalised
//!   lexically (`//` collapsed, `.` and `..` resolved without touching a file
//!   system, so `/data/../etc/passwd` is `/etc/passwd`) and matched against
//!   the globs (`*` and `?` stay within a component, `**` spans any number,
//!   `[...]` and `{a,b}` work). A path is denied when it, or any directory
//!   above it, matches; `dir/**` also denies `dir` itself. The path of a
//!   `file://` URL is checked the same way.
//! * `tools` limits the policy to the tools listed; absent, it judges every
//!   call. An empty configuration denies nothing.
//!
//! A configuration that does not parse, or a pattern that does not compile,
//! denies every call with a reason saying what is wrong (fail closed). So do
//! arguments that are not JSON.

mod rules;

use loom_sdk::{Decision, ToolCall, ToolSpec};
use rules::{Config, Rules};

/// Judge one call.
fn check(call: &ToolCall, _spec: &ToolSpec) -> Decision {
    let config: Config = match loom_sdk::policy_config() {
        Ok(config) => config,
        Err(error) => return Decision::deny(error.to_string()),
    };
    let rules = match Rules::new(config) {
        Ok(rules) => rules,
        Err(error) => {
            return Decision::deny(format!(
                "the policy config (`{}`) is invalid: {error}",
                loom_sdk::POLICY_CONFIG_KEY
            ));
        }
    };
    if !rules.applies_to(&call.name) {
        return Decision::Allow;
    }
    match rules.check_text(&call.arguments) {
        Some(reason) => Decision::Deny(reason),
        None => Decision::Allow,
    }
}

loom_sdk::export_policy!(check);
