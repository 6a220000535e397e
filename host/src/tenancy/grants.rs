//! Capabilities a tenant grants its plugins, and how a plugin's requests are
//! intersected with them.
//!
//! Everything is denied unless granted: no files, no environment, no network.
//! A plugin's sidecar manifest requests capabilities; what it gets is the
//! part of its request that the tenant's grant covers. A plugin without a
//! manifest requests, and so gets, nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Everything a tenant grants to its plugins (`[tenants.<id>.grants]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Host directories made visible inside the sandbox.
    #[serde(default)]
    pub files: Vec<FileGrant>,
    /// Environment variables by name. Nothing is inherited from the host.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Outgoing HTTP destinations (`host`, `host:port`, `*.domain:port`).
    #[serde(default)]
    pub http: Vec<HttpGrant>,
    /// TCP addresses (`ip:port`) the plugin may connect to with raw sockets.
    #[serde(default)]
    pub sockets: Vec<SocketAddr>,
}

/// One directory granted to the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// The directory on the host; relative paths are relative to `loom.toml`.
    pub host: PathBuf,
    /// Where the guest sees it, an absolute path such as `/data`.
    pub guest: String,
    /// Whether the guest may create, change and delete files. Default: false.
    #[serde(default)]
    pub write: bool,
}

/// The value of a granted environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// A literal value.
    Literal(String),
    /// The value of a host environment variable, read when the config loads.
    FromHost {
        /// Name of the host variable.
        from_host: String,
    },
}

/// One allowed HTTP destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HttpGrant {
    /// `host`, `host:port` or `*.domain:port`; without a port, 80 and 443.
    Simple(String),
    /// The same with options.
    Detailed {
        /// `host`, `host:port` or `*.domain:port`.
        host: String,
        /// Allow the destination even when its name resolves to a loopback,
        /// private, link-local or metadata address. Default: false. An IP
        /// literal in `host` counts as explicitly granted; a name (even
        /// `localhost`) does not.
        #[serde(default)]
        allow_private: bool,
    },
}

impl HttpGrant {
    /// The destination pattern.
    pub fn pattern(&self) -> &str {
        match self {
            HttpGrant::Simple(host) | HttpGrant::Detailed { host, .. } => host,
        }
    }

    /// Whether private addresses were explicitly allowed.
    pub fn allow_private(&self) -> bool {
        matches!(
            self,
            HttpGrant::Detailed {
                allow_private: true,
                ..
            }
        )
    }
}

/// A parsed HTTP destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host; for a wildcard, the suffix after `*.`.
    pub host: String,
    /// `*.` prefix: matches any subdomain of `host` (not `host` itself).
    pub wildcard: bool,
    /// The port, or `None` for 80 and 443.
    pub port: Option<u16>,
    /// Private addresses are allowed for this destination.
    pub allow_private: bool,
}

/// Why a grant or request could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid HTTP destination `{pattern}`: {reason} (write `host`, `host:port` or `*.domain:port`)"
)]
pub struct PatternError {
    /// The rejected text.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

impl HostPattern {
    /// Parse `host`, `host:port`, `*.domain:port`, `[v6]:port`.
    ///
    /// # Errors
    ///
    /// [`PatternError`] when the text is not one of those forms.
    pub fn parse(pattern: &str, allow_private: bool) -> Result<Self, PatternError> {
        let err = |reason: &str| PatternError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let text = pattern.trim().to_ascii_lowercase();
        if text.contains("://") || text.contains('/') {
            return Err(err("give a host, not a URL"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(|| err("unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| err("bad port"))?),
                None if after.is_empty() => None,
                None => return Err(err("junk after `]`")),
            };
            (v6.to_owned(), port)
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    Some(p.parse::<u16>().map_err(|_| err("bad port"))?),
                ),
                None => (text.clone(), None),
            }
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) => (suffix.to_owned(), true),
            None => (host, false),
        };
        if host.is_empty() || host.contains('*') {
            return Err(err("empty host or a `*` that is not a leading `*.`"));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
            allow_private,
        })
    }

    /// Whether a request to `host:port` matches this pattern.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host_ok = if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        };
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        };
        host_ok && port_ok
    }

    /// Whether this (granted) pattern covers everything `request` asks for.
    pub fn covers(&self, request: &HostPattern) -> bool {
        let ports_ok = match (self.port, request.port) {
            (None, None) => true,
            (None, Some(p)) => p == 80 || p == 443,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a == b,
        };
        let hosts_ok = match (self.wildcard, request.wildcard) {
            (false, false) => self.host == request.host,
            (false, true) => false,
            (true, _) => {
                request.host.ends_with(&self.host)
                    && (request.host.len() > self.host.len() + 1
                        && request.host.as_bytes()[request.host.len() - self.host.len() - 1]
                            == b'.'
                        || (request.wildcard && request.host == self.host))
            }
        };
        ports_ok && hosts_ok
    }

    /// Whether the pattern names an address explicitly (an IP literal),
    /// which grants that address even if it is private.
    pub fn is_explicit_address(&self) -> bool {
        !self.wildcard && self.host.parse::<IpAddr>().is_ok()
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let star = if self.wildcard { "*." } else { "" };
        match self.port {
            Some(port) => write!(f, "{star}{host}:{port}"),
            None => write!(f, "{star}{host}"),
        }
    }
}

/// What a plugin asks for in its manifest (`[capabilities]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// Guest paths it wants (`"/data"`), or `{ path, write }` tables.
    #[serde(default)]
    pub files: Vec<FileRequest>,
    /// Environment variable names.
    #[serde(default)]
    pub env: Vec<String>,
    /// HTTP destinations (`host:port` patterns).
    #[serde(default)]
    pub http: Vec<String>,
    /// TCP addresses for raw sockets.
    #[serde(default)]
    pub sockets: Vec<SocketAddr>,
}

/// A requested directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRequest {
    /// Read access to a guest path.
    Read(String),
    /// A guest path with the access wanted.
    Detailed {
        /// The guest path, such as `/data`.
        path: String,
        /// Whether write access is wanted.
        #[serde(default)]
        write: bool,
    },
}

impl FileRequest {
    /// The requested guest path.
    pub fn path(&self) -> &str {
        match self {
            FileRequest::Read(path) | FileRequest::Detailed { path, .. } => path,
        }
    }

    /// Whether write access was requested.
    pub fn write(&self) -> bool {
        matches!(self, FileRequest::Detailed { write: true, .. })
    }
}

/// Capabilities as resolved for one plugin of one tenant: what its sandbox
/// actually gets. Built once at load; each call's WASI context is made from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EffectiveGrants {
    /// Directories: host path, guest path, writable.
    pub files: Vec<(PathBuf, String, bool)>,
    /// Environment variables with their values.
    #[serde(skip)]
    pub env: Vec<(String, crate::secret::Secret)>,
    /// Names of the granted environment variables (values are not shown).
    pub env_names: Vec<String>,
    /// HTTP destinations.
    #[serde(serialize_with = "serialize_patterns")]
    pub http: Vec<HostPattern>,
    /// TCP addresses.
    pub sockets: Vec<SocketAddr>,
}

fn serialize_patterns<S: serde::Serializer>(
    patterns: &[HostPattern],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(patterns.iter().map(|p| p.to_string()))
}

/// A tenant grant after validation: paths resolved, env values read, patterns parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedGrants {
    /// Directories: host path (absolute), guest path, writable.
    pub files: Vec<(PathBuf, String, bool)>,
    /// Environment variables with their values.
    pub env: Vec<(String, crate::secret::Secret)>,
    /// HTTP destinations.
    pub http: Vec<HostPattern>,
    /// TCP addresses.
    pub sockets: Vec<SocketAddr>,
}

impl ResolvedGrants {
    /// The part of `requests` these grants cover. `None` (no manifest) gets nothing.
    pub fn intersect(&self, requests: Option<&Requests>) -> EffectiveGrants {
        let Some(requests) = requests else {
            return EffectiveGrants::default();
        };
        let files = self
            .files
            .iter()
            .filter_map(|(host, guest, write)| {
                let request = requests.files.iter().find(|r| r.path() == guest)?;
                Some((host.clone(), guest.clone(), *write && request.write()))
            })
            .collect();
        let env: Vec<(String, crate::secret::Secret)> = self
            .env
            .iter()
            .filter(|(name, _)| requests.env.iter().any(|r| r == name))
            .cloned()
            .collect();
        let http = requests
            .http
            .iter()
            .filter_map(|r| HostPattern::parse(r, false).ok())
            .filter_map(|request| {
                let grant = self.http.iter().find(|g| g.covers(&request))?;
                Some(HostPattern {
                    allow_private: grant.allow_private,
                    ..request
                })
            })
            .collect();
        let sockets = self
            .sockets
            .iter()
            .filter(|a| requests.sockets.contains(a))
            .copied()
            .collect();
        EffectiveGrants {
            files,
            env_names: env.iter().map(|(n, _)| n.clone()).collect(),
            env,
            http,
            sockets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_hosts_and_ports() {
        let p = HostPattern::parse("api.example.com:8443", false).unwrap();
        assert!(p.matches("API.example.com", 8443));
        assert!(!p.matches("api.example.com", 443));
        let any = HostPattern::parse("example.com", false).unwrap();
        assert!(any.matches("example.com", 443) && any.matches("example.com", 80));
        assert!(!any.matches("example.com", 8080));
        let w = HostPattern::parse("*.example.com:443", false).unwrap();
        assert!(w.matches("a.example.com", 443));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("badexample.com", 443));
        let v6 = HostPattern::parse("[::1]:80", false).unwrap();
        assert!(v6.matches("[::1]", 80) && v6.is_explicit_address());
        assert!(HostPattern::parse("http://x", false).is_err());
        assert!(HostPattern::parse("x:99999", false).is_err());
    }

    #[test]
    fn intersection_takes_only_what_both_sides_allow() {
        let grants = ResolvedGrants {
            files: vec![
                ("/h/a".into(), "/data".into(), true),
                ("/h/b".into(), "/other".into(), false),
            ],
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            http: vec![HostPattern::parse("*.example.com:443", false).unwrap()],
            sockets: vec!["127.0.0.1:9".parse().unwrap()],
        };
        assert_eq!(grants.intersect(None), EffectiveGrants::default());
        let requests = Requests {
            files: vec![
                FileRequest::Read("/data".into()),
                FileRequest::Detailed {
                    path: "/nope".into(),
                    write: true,
                },
            ],
            env: vec!["B".into(), "C".into()],
            http: vec!["api.example.com:443".into(), "evil.com:443".into()],
            sockets: vec![],
        };
        let eff = grants.intersect(Some(&requests));
        assert_eq!(eff.files, vec![("/h/a".into(), "/data".into(), false)]);
        assert_eq!(eff.env, vec![("B".into(), "2".into())]);
        assert_eq!(eff.http.len(), 1);
        assert_eq!(eff.http[0].to_string(), "api.example.com:443");
        assert!(eff.sockets.is_empty());
    }
}
