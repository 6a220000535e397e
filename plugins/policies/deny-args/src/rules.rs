//! The matching logic of `deny-args`, free of any host interface so it runs
//! (and is tested) on any target.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;

/// Most characters of an argument value quoted in a reason.
const MAX_QUOTED_CHARS: usize = 200;

/// Longest string that is still taken for a path (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// The policy's configuration, from `loom.policy_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Glob patterns of denied paths, such as `/etc/**` or `**/.ssh/**`.
    pub paths: Vec<String>,
    /// Denied hosts: `evil.example` (that host only), `*.internal` (every
    /// subdomain of `internal`) or `*` (every host).
    pub hosts: Vec<String>,
    /// The tools the policy judges; absent for every tool.
    pub tools: Option<Vec<String>>,
}

/// A compiled configuration.
#[derive(Debug)]
pub struct Rules {
    /// Every path glob, each pattern of `Config::paths` giving one or two.
    path_set: GlobSet,
    /// For each glob of `path_set`, the pattern it came from.
    path_origin: Vec<String>,
    /// The host patterns, in configuration order.
    hosts: Vec<HostPattern>,
    /// The tools judged; `None` for every tool.
    tools: Option<Vec<String>>,
}

/// One entry of `hosts`.
#[derive(Debug)]
struct HostPattern {
    /// As configured, for reasons.
    text: String,
    /// What it matches.
    kind: HostKind,
}

/// What a host pattern matches.
#[derive(Debug)]
enum HostKind {
    /// Every host.
    Any,
    /// Exactly this host (lowercase, no trailing dot).
    Exact(String),
    /// Every host ending in this suffix, which starts with a dot.
    Subdomains(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let mut host = text.trim().to_ascii_lowercase();
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            host = inner.to_owned();
        } else if host.contains(':') {
            return Err(format!(
                "host pattern `{}` is not a host name (no scheme, port or path)",
                quote(text)
            ));
        }
        while host.ends_with('.') && host != "*." {
            host.pop();
        }
        let bad = |c: char| c.is_whitespace() || c.is_control() || "/@?#\\".contains(c);
        if host.is_empty() || host.contains(bad) {
            return Err(format!(
                "host pattern `{}` is not a host name (no scheme, port or path)",
                quote(text)
            ));
        }
        let kind = if host == "*" {
            HostKind::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!(
                    "host pattern `{}`: a wildcard is allowed only as a leading `*.`",
                    quote(text)
                ));
            }
            HostKind::Subdomains(format!(".{suffix}"))
        } else if host.contains('*') {
            return Err(format!(
                "host pattern `{}`: a wildcard is allowed only as a leading `*.`",
                quote(text)
            ));
        } else {
            HostKind::Exact(host)
        };
        Ok(HostPattern {
            text: text.to_owned(),
            kind,
        })
    }

    /// Whether `host` (normalised by `normalise_host`) matches; `*` matches
    /// only hosts read from a URL, not bare words.
    fn matches(&self, host: &str, from_url: bool) -> bool {
        match &self.kind {
            HostKind::Any => from_url,
            HostKind::Exact(exact) => host == exact,
            HostKind::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl Rules {
    /// Compile `config`; the error says which pattern is wrong and why.
    pub fn new(config: Config) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        let mut path_origin = Vec::new();
        for pattern in &config.paths {
            if pattern.trim().is_empty() {
                return Err("a path pattern is empty".into());
            }
            let normalised = normalise_path(pattern);
            let mut globs = vec![normalised.clone()];
            // `dir/**` denies the directory itself too (listing it, removing it).
            if let Some(dir) = normalised.strip_suffix("/**") {
                globs.push(if dir.is_empty() {
                    "/".into()
                } else {
                    dir.to_owned()
                });
            }
            for glob in globs {
                let compiled = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("path pattern `{}`: {e}", quote(pattern)))?;
                builder.add(compiled);
                path_origin.push(pattern.clone());
            }
        }
        let path_set = builder.build().map_err(|e| format!("path patterns: {e}"))?;
        let hosts = config
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<_, _>>()?;
        Ok(Rules {
            path_set,
            path_origin,
            hosts,
            tools: config.tools,
        })
    }

    /// Whether the policy judges calls to `tool`.
    pub fn applies_to(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|tools| tools.iter().any(|t| t == tool))
    }

    /// Why `arguments` (the call's JSON text) are denied, or `None` when no
    /// string in them matches. Text that is not JSON is denied: it cannot be
    /// checked.
    pub fn check_text(&self, arguments: &str) -> Option<String> {
        let text = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        match serde_json::from_str::<Value>(text) {
            Ok(value) => self.check(&value),
            Err(e) => Some(format!(
                "the arguments are not valid JSON ({e}), so they cannot be checked"
            )),
        }
    }

    /// Why `arguments` are denied, or `None` when no string in them (keys
    /// included) matches a denied path or host.
    pub fn check(&self, arguments: &Value) -> Option<String> {
        let mut path = String::new();
        self.walk(arguments, &mut path)
    }

    /// Depth-first, in document order; `path` is the JSON path of `value`.
    fn walk(&self, value: &Value, path: &mut String) -> Option<String> {
        match value {
            Value::String(text) => self.check_string(&subject(path), text),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{index}]");
                    let found = self.walk(item, path);
                    path.truncate(len);
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if let Some(reason) = self.check_string(&key_subject(path), key) {
                        return Some(reason);
                    }
                    let len = path.len();
                    push_key(path, key);
                    let found = self.walk(item, path);
                    path.truncate(len);
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => None,
        }
    }

    /// Why the string `text`, which is `subject`, is denied, if it is.
    fn check_string(&self, subject: &str, text: &str) -> Option<String> {
        let shown = || format!("{subject} = `{}`", quote(text));
        if !self.hosts.is_empty() {
            for (host, from_url) in hosts_in(text) {
                if let Some(pattern) = self.hosts.iter().find(|p| p.matches(&host, from_url)) {
                    return Some(format!(
                        "{} names host `{}`, which matches denied host pattern `{}`",
                        shown(),
                        quote(&host),
                        quote(&pattern.text)
                    ));
                }
            }
        }
        if self.path_origin.is_empty() {
            return None;
        }
        if let Some(file_path) = file_url_path(text) {
            let normalised = normalise_path(&file_path);
            if let Some((matched, pattern)) = self.match_path(&normalised) {
                return Some(format!(
                    "{} names path `{}`{}, which matches denied path pattern `{}`",
                    shown(),
                    quote(&normalised),
                    inside(&normalised, &matched),
                    quote(pattern)
                ));
            }
        } else if looks_like_path(text) {
            let normalised = normalise_path(text);
            if let Some((matched, pattern)) = self.match_path(&normalised) {
                let mut reason = shown();
                if normalised != text {
                    let _ = write!(reason, " (normalised: `{}`)", quote(&normalised));
                }
                if matched == normalised {
                    let _ = write!(reason, " matches denied path pattern `{}`", quote(pattern));
                } else {
                    let _ = write!(
                        reason,
                        " is inside `{}`, which matches denied path pattern `{}`",
                        quote(&matched),
                        quote(pattern)
                    );
                }
                return Some(reason);
            }
        }
        None
    }

    /// The first of `path` and its ancestors (nearest first) that a path
    /// glob matches, with the pattern (the first configured) it matches.
    fn match_path(&self, path: &str) -> Option<(String, &str)> {
        let mut candidate = path;
        loop {
            if let Some(&index) = self.path_set.matches(candidate).iter().min() {
                return Some((candidate.to_owned(), &self.path_origin[index]));
            }
            candidate = parent(candidate)?;
        }
    }
}

/// `, inside `ancestor`` when the match was on an ancestor of `path`.
fn inside(path: &str, matched: &str) -> String {
    if path == matched {
        String::new()
    } else {
        format!(" (inside `{}`)", quote(matched))
    }
}

/// The parent of a normalised path: `/a/b` → `/a` → `/` → none; `a/b` → `a`
/// → none.
fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) => None,
        Some(index) => Some(&path[..index]),
        None => None,
    }
}

/// How reasons name the value at JSON path `path`: ``argument `files[2].name` ``,
/// or `the arguments` at the root.
fn subject(path: &str) -> String {
    if path.is_empty() {
        "the arguments".into()
    } else {
        format!("argument `{}`", quote(path))
    }
}

/// How reasons name a key of the object at JSON path `path`.
fn key_subject(path: &str) -> String {
    if path.is_empty() {
        "argument name".into()
    } else {
        format!("a key of argument `{}`", quote(path))
    }
}

/// Append `.key` (or `["key"]` for a key that is not a plain name).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::Value::String(key.to_owned()).to_string());
        path.push(']');
    }
}

/// `text` made safe to quote between backticks: control and bidirectional
/// characters escaped, backticks escaped, cut to about 200 characters.
pub fn quote(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else if c == '`' {
            out.push_str("\\`");
        } else {
            out.push(c);
        }
    }
    out
}

/// Lexical normalisation, without touching any file system: `//` collapsed,
/// `.` dropped, `..` removes the component before it (and stays at `/` in
/// an absolute path), no trailing slash. A relative path keeps its leading
/// `..`s; an empty result is `.`.
pub fn normalise_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// Whether `text` is taken for a path: one line, no control characters, not
/// longer than `PATH_MAX`, not a URL. A bare name is a relative path.
fn looks_like_path(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_PATH_BYTES
        && !text.chars().any(char::is_control)
        && url_parts(text).is_none()
}

/// `scheme` and what follows `scheme://` when `text` is a URL.
fn url_parts(text: &str) -> Option<(String, &str)> {
    let text = text.trim();
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// The file path a `file://` URL names (percent-decoded), if `text` is one.
fn file_url_path(text: &str) -> Option<String> {
    let (scheme, rest) = url_parts(text)?;
    if scheme != "file" {
        return None;
    }
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    // `file:///p` or `file://host/p`: the path starts at the first slash.
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    Some(percent_decode(path))
}

/// The hosts `text` names, normalised: a URL's host (read the ways different
/// parsers read it, so none of them reaches a denied host unseen), the host
/// of a scheme-relative `//host/...`, or `text` itself when it is a bare
/// `host`, `host:port` or `user@host`. Each host comes with whether it was
/// read from a URL.
fn hosts_in(text: &str) -> Vec<(String, bool)> {
    let trimmed = text.trim();
    let rest = if let Some((_, rest)) = url_parts(trimmed) {
        Some(rest)
    } else {
        trimmed.strip_prefix("//")
    };
    let mut authorities = Vec::new();
    match rest {
        Some(rest) => {
            // RFC 3986; WHATWG (a backslash ends it too); a naive reader
            // that only stops at `/`.
            for stops in [&['/', '?', '#'][..], &['/', '\\', '?', '#'][..], &['/'][..]] {
                let end = rest.find(stops).unwrap_or(rest.len());
                authorities.push(&rest[..end]);
            }
        }
        None => {
            let bare = !trimmed.is_empty()
                && trimmed.len() <= 300
                && trimmed
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-%:@[]".contains(c));
            if bare {
                authorities.push(trimmed);
            }
        }
    }
    let mut hosts: Vec<(String, bool)> = Vec::new();
    for authority in authorities {
        let host = normalise_host(authority);
        if !host.is_empty() && !hosts.iter().any(|(h, _)| *h == host) {
            hosts.push((host, rest.is_some()));
        }
    }
    hosts
}

/// The host of an authority: no userinfo, no port, no brackets,
/// percent-decoded, lowercase, no trailing dot.
fn normalise_host(authority: &str) -> String {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(inner) = host_port.strip_prefix('[') {
        inner.split(']').next().unwrap_or(inner)
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    };
    let mut host = percent_decode(host).trim().to_lowercase();
    while host.ends_with('.') {
        host.pop();
    }
    host
}

/// Decode `%XX` escapes; malformed ones stay as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(config: Value) -> Rules {
        Rules::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    fn example() -> Rules {
        rules(json!({
            "paths": ["/etc/**", "**/.ssh/**", "/data/secret*"],
            "hosts": ["evil.example", "*.internal"],
        }))
    }

    #[test]
    fn normalisation_is_lexical() {
        assert_eq!(normalise_path("/data/../etc/passwd"), "/etc/passwd");
        assert_eq!(normalise_path("//etc///passwd/"), "/etc/passwd");
        assert_eq!(normalise_path("/./etc/./passwd"), "/etc/passwd");
        assert_eq!(normalise_path("/../../etc"), "/etc");
        assert_eq!(normalise_path("a/b/../../.."), "..");
        assert_eq!(normalise_path("../x/./y"), "../x/y");
        assert_eq!(normalise_path("a/.."), ".");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("~/.ssh/id_rsa"), "~/.ssh/id_rsa");
    }

    #[test]
    fn paths_match_after_normalisation() {
        let rules = example();
        let deny = |path: &str| rules.check(&json!({ "path": path }));
        assert_eq!(
            deny("/etc/passwd").unwrap(),
            "argument `path` = `/etc/passwd` matches denied path pattern `/etc/**`"
        );
        let reason = deny("/data/../etc/passwd").unwrap();
        assert!(reason.contains("(normalised: `/etc/passwd`)"), "{reason}");
        assert!(reason.contains("`/etc/**`"), "{reason}");
        assert!(deny("//etc//shadow").is_some());
        assert!(deny("/etc").is_some(), "dir/** covers the directory itself");
        assert!(deny("/etc/").is_some());
        assert!(deny("/home/me/.ssh/id_rsa").is_some());
        assert!(deny("/home/me/.ssh").is_some());
        assert!(deny(".ssh/config").is_some());
        assert!(deny("~/.ssh/config").is_some());
        assert!(deny("/data/secret").is_some());
        assert!(deny("/data/secrets.txt").is_some());
        assert!(deny("/data/./x/../secret-plans").is_some());
        assert_eq!(deny("/data/public/report.txt"), None);
        assert_eq!(deny("/etcetera/x"), None);
        assert_eq!(deny("/data/x/secret"), None, "`*` does not cross `/`");
        assert_eq!(deny("etc/passwd"), None, "relative, not under /etc");
        assert_eq!(deny("/home/me/ssh/key"), None);
    }

    #[test]
    fn a_path_inside_a_denied_one_is_denied() {
        let rules = example();
        let reason = rules
            .check(&json!({"path": "/data/secrets/key.pem"}))
            .unwrap();
        assert!(
            reason.contains(
                "is inside `/data/secrets`, which matches denied path pattern `/data/secret*`"
            ),
            "{reason}"
        );
    }

    #[test]
    fn every_string_is_walked_with_its_json_path() {
        let rules = example();
        let reason = rules
            .check(&json!({
                "mode": "copy",
                "count": 3,
                "files": [{"name": "/ok"}, {"name": "/fine"}, {"name": "/etc/hosts"}],
            }))
            .unwrap();
        assert!(
            reason.starts_with("argument `files[2].name` = `/etc/hosts`"),
            "{reason}"
        );
        let reason = rules
            .check(&json!({"odd key": {"a.b": ["x", "/etc/x"]}}))
            .unwrap();
        assert!(
            reason.starts_with(r#"argument `["odd key"]["a.b"][1]`"#),
            "{reason}"
        );
        let reason = rules
            .check(&json!({"files": {"/etc/passwd": "x"}}))
            .unwrap();
        assert!(
            reason.starts_with("a key of argument `files` = `/etc/passwd`"),
            "{reason}"
        );
        let reason = rules.check(&json!({"/etc/passwd": 1})).unwrap();
        assert!(
            reason.starts_with("argument name = `/etc/passwd`"),
            "{reason}"
        );
        let reason = rules.check(&json!("/etc/passwd")).unwrap();
        assert!(
            reason.starts_with("the arguments = `/etc/passwd`"),
            "{reason}"
        );
        assert!(
            rules
                .check(&json!({"content": "line one\n/etc/passwd"}))
                .is_none()
        );
    }

    #[test]
    fn url_hosts_match_exactly_or_as_subdomains() {
        let rules = example();
        let deny = |url: &str| rules.check(&json!({ "url": url }));
        assert_eq!(
            deny("https://evil.example/x").unwrap(),
            "argument `url` = `https://evil.example/x` names host `evil.example`, which matches denied host pattern `evil.example`"
        );
        assert!(deny("HTTPS://EVIL.Example:8443/").is_some());
        assert!(deny("http://user:pw@evil.example/").is_some());
        assert!(deny("http://evil.example.").is_some());
        assert!(deny("http://ev%69l.example/").is_some());
        assert!(deny("http://db.internal/").is_some());
        assert!(deny("http://a.b.INTERNAL:80/x?y").is_some());
        assert!(deny("ftp://evil.example").is_some());
        assert!(deny("//evil.example/path").is_some());
        assert_eq!(
            deny("http://internal/"),
            None,
            "`*.internal` is subdomains only"
        );
        assert_eq!(deny("http://notevil.example/"), None);
        assert_eq!(deny("http://evil.example.com/"), None);
        assert_eq!(deny("https://good.example/?next=evil.example"), None);
        assert_eq!(deny("http://evil.example@good.example/"), None);
    }

    #[test]
    fn parser_confusion_does_not_hide_a_host() {
        let rules = example();
        let deny = |url: &str| rules.check(&json!({ "url": url }));
        // WHATWG reads host `evil.example`; RFC 3986 reads `good.example`.
        assert!(deny(r"http://evil.example\@good.example/").is_some());
        // RFC 3986 reads `good.example`; a reader stopping at `/` reads `evil.example`.
        assert!(deny("http://good.example?@evil.example/").is_some());
        assert!(deny("http://good.example#@evil.example/").is_some());
        assert!(deny("http://[::1]:80/").is_none());
    }

    #[test]
    fn bare_hosts_count_too() {
        let rules = example();
        assert!(rules.check(&json!({"host": "evil.example"})).is_some());
        assert!(
            rules
                .check(&json!({"authority": "api.internal:443"}))
                .is_some()
        );
        assert!(
            rules
                .check(&json!({"to": "someone@evil.example"}))
                .is_some()
        );
        assert!(
            rules
                .check(&json!({"text": "do not go to evil.example"}))
                .is_none()
        );
    }

    #[test]
    fn file_urls_name_paths() {
        let rules = example();
        let reason = rules
            .check(&json!({"url": "file:///data/../etc/passwd"}))
            .unwrap();
        assert!(reason.contains("names path `/etc/passwd`"), "{reason}");
        assert!(
            rules
                .check(&json!({"url": "file://localhost/%65tc/passwd"}))
                .is_some()
        );
        assert!(rules.check(&json!({"url": "file:///tmp/x"})).is_none());
    }

    #[test]
    fn tools_limit_what_is_judged() {
        let all = example();
        assert!(all.applies_to("anything"));
        let some = rules(json!({"paths": ["/etc/**"], "tools": ["read_file", "write_file"]}));
        assert!(some.applies_to("read_file"));
        assert!(!some.applies_to("http_get"));
        let none = rules(json!({"tools": []}));
        assert!(!none.applies_to("read_file"));
    }

    #[test]
    fn bad_config_is_refused_with_the_reason() {
        let bad = |config: Value| {
            let config: Config = serde_json::from_value(config).unwrap();
            Rules::new(config).unwrap_err()
        };
        assert!(bad(json!({"paths": ["/etc/[a"]})).contains("/etc/[a"));
        assert!(bad(json!({"paths": [""]})).contains("empty"));
        assert!(bad(json!({"hosts": ["https://evil.example"]})).contains("not a host name"));
        assert!(bad(json!({"hosts": ["evil.example:443"]})).contains("not a host name"));
        assert!(bad(json!({"hosts": ["ev*l.example"]})).contains("wildcard"));
        assert!(bad(json!({"hosts": ["*."]})).contains("wildcard"));
        assert!(bad(json!({"hosts": [""]})).contains("not a host name"));
        assert!(serde_json::from_value::<Config>(json!({"path": ["/etc/**"]})).is_err());
        assert!(serde_json::from_value::<Config>(json!({"paths": "/etc/**"})).is_err());
    }

    #[test]
    fn empty_config_denies_nothing_and_star_denies_every_host() {
        let empty = rules(json!({}));
        assert!(
            empty
                .check(&json!({"path": "/etc/passwd", "url": "http://evil.example"}))
                .is_none()
        );
        let star = rules(json!({"hosts": ["*"]}));
        assert!(
            star.check(&json!({"url": "https://anything.example/"}))
                .is_some()
        );
        assert!(star.check(&json!({"path": "/etc/passwd"})).is_none());
        assert!(
            star.check(&json!({"host": "example.com"})).is_none(),
            "bare words are not URLs"
        );
    }

    #[test]
    fn arguments_that_are_not_json_are_denied() {
        let rules = example();
        assert!(
            rules
                .check_text("{not json")
                .unwrap()
                .contains("not valid JSON")
        );
        assert!(rules.check_text("").is_none());
        assert!(rules.check_text(r#"{"path":"/etc/passwd"}"#).is_some());
    }

    #[test]
    fn quoted_values_are_escaped_and_cut() {
        assert_eq!(quote("a`b\nc\u{202e}"), "a\\`b\\nc\\u{202e}");
        let long = format!("/etc/{}", "x".repeat(1000));
        let reason = example().check(&json!({ "path": long })).unwrap();
        assert!(reason.len() < 400, "{}", reason.len());
        assert!(reason.contains('…'));
    }
}
