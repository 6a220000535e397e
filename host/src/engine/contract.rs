//! The versions of the WIT contract `loom:plugin` this host serves: one
//! table ([`RELEASES`]), read by loading (kind detection), by `loom plugins
//! inspect` and `loom plugins list`, and by the errors that refuse a
//! component of another version.
//!
//! Every released version is kept frozen in `wit/plugin@X.Y.Z/`. The host's
//! bindings come from [`HOST_VERSION`]; how an older release reaches them is
//! its [`Adapter`]. So far every release of the 0.1 line only added to the
//! one before (an interface, a function, a world export), so wasmtime links
//! an import or export named `loom:plugin/…@0.1.0` to the host's
//! `…@0.1.3` definition by semver (the 0.1 track), checking the types
//! structurally: no conversion code is needed, and none is written. A
//! release that changes a type would get [`Adapter::Converted`]: its own
//! `bindgen!` from its frozen directory and conversions to the latest types,
//! as Zed's extension host does per version.
//!
//! The policy (what may change in a patch, how long a line is served) is
//! written down in `docs/plugins.md`.

use serde::Serialize;

/// The `loom:plugin` version this host implements: its bindings are
/// generated from `wit/plugin@0.1.3`.
pub const HOST_VERSION: &str = "0.1.3";

/// The WIT package every Loom interface belongs to.
pub const PACKAGE: &str = "loom:plugin";

/// How components built against a supported release reach the host's
/// implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// The host's own bindings are generated from this version.
    Native,
    /// Linked to the host's definitions by wasmtime's semver lookup: the
    /// release lacks only what later releases added, so its imports and
    /// exports have the same types (checked structurally at link time).
    Semver,
    /// A per-version module converts between this release's types and the
    /// latest ones. No release needs one yet.
    Converted,
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Adapter::Native => "native",
            Adapter::Semver => "linked by semver",
            Adapter::Converted => "converted",
        })
    }
}

/// One released version of `loom:plugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Release {
    /// Its version, such as `0.1.2`.
    pub version: &'static str,
    /// What it added over the release before it.
    pub added: &'static str,
    /// How this host serves components built against it.
    pub adapter: Adapter,
    /// What of it this host does not serve, if anything.
    pub caveat: Option<&'static str>,
}

/// Every release this host serves, oldest first; the last one is
/// [`HOST_VERSION`]. Add a release here when `wit/plugin@X.Y.Z/` is frozen
/// beside a new one; drop a line's releases only as `docs/plugins.md` says.
pub const RELEASES: &[Release] = &[
    Release {
        version: "0.1.0",
        added: "the first release: types, context, tool, harness, architecture, kv, \
                memory and policy; the tool, architecture, memory and policy worlds",
        adapter: Adapter::Semver,
        caveat: Some(
            "a memory component must also export `facts` (added in 0.1.1), so a 0.1.0 \
             memory component is refused; tools, architectures and policies load",
        ),
    },
    Release {
        version: "0.1.1",
        added: "the `facts` interface, which memory components export",
        adapter: Adapter::Semver,
        caveat: None,
    },
    Release {
        version: "0.1.2",
        added: "the harness's `delegate-all`",
        adapter: Adapter::Semver,
        caveat: None,
    },
    Release {
        version: "0.1.3",
        added: "the context's `idempotency-key`",
        adapter: Adapter::Native,
        caveat: None,
    },
];

/// The oldest release this host serves.
pub fn oldest() -> &'static str {
    RELEASES.first().map_or(HOST_VERSION, |r| r.version)
}

/// The release `version` (exactly `X.Y.Z`), if this host serves it.
pub fn release(version: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.version == version)
}

/// Whether this host serves a component built against a version, and if
/// not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Support {
    /// A release this host serves.
    Supported {
        /// How.
        adapter: Adapter,
    },
    /// Newer than [`HOST_VERSION`]. On the host's own semver track
    /// (`0.1.4` for a 0.1.3 host) wasmtime still links it, and it loads
    /// when it uses nothing added after the host's version; on a later
    /// track (`0.2.0`) it is refused.
    NewerThanHost {
        /// Whether it is on the host's semver track, so loading is tried.
        same_track: bool,
    },
    /// Older than every release this host serves.
    OlderUnsupported,
    /// Not a release: a pre-release (`0.1.4-rc.1`, which links to nothing
    /// else), a 0.0.x, a version between releases, or not a version.
    NotARelease,
}

impl Support {
    /// Whether a component of this version is loaded (or at least tried).
    pub fn loadable(&self) -> bool {
        matches!(
            self,
            Support::Supported { .. } | Support::NewerThanHost { same_track: true }
        )
    }
}

/// A version as `major.minor.patch`, with whether it has a pre-release tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Parsed {
    major: u64,
    minor: u64,
    patch: u64,
    pre: bool,
}

fn parse(version: &str) -> Option<Parsed> {
    // Build metadata (`+abc`) does not change what a version links to.
    let version = version.split_once('+').map_or(version, |(v, _)| v);
    let (core, pre) = match version.split_once('-') {
        Some((core, tag)) if !tag.is_empty() => (core, true),
        Some(_) => return None,
        None => (version, false),
    };
    let mut parts = core.split('.');
    let mut number = || -> Option<u64> {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (major, minor, patch) = (number()?, number()?, number()?);
    parts.next().is_none().then_some(Parsed {
        major,
        minor,
        patch,
        pre,
    })
}

/// The semver track wasmtime links on: the major version, or for 0.x the
/// minor version (0.1.0 and 0.1.3 link; 0.1 and 0.2 do not).
fn track(v: Parsed) -> (u64, u64) {
    if v.major == 0 {
        (0, v.minor)
    } else {
        (v.major, u64::MAX)
    }
}

/// Whether this host serves components built against `loom:plugin@version`.
pub fn support(version: &str) -> Support {
    let (Some(v), Some(host), Some(oldest)) =
        (parse(version), parse(HOST_VERSION), parse(oldest()))
    else {
        return Support::NotARelease;
    };
    if v.pre || (v.major == 0 && v.minor == 0) {
        // wasmtime links neither a pre-release nor a 0.0.x to another version.
        return Support::NotARelease;
    }
    if let Some(release) = release(&format!("{}.{}.{}", v.major, v.minor, v.patch)) {
        return Support::Supported {
            adapter: release.adapter,
        };
    }
    if v > host {
        Support::NewerThanHost {
            same_track: track(v) == track(host),
        }
    } else if v < oldest {
        Support::OlderUnsupported
    } else {
        Support::NotARelease
    }
}

/// `0.1` for a 0.1.x host.
fn track_label() -> String {
    match parse(HOST_VERSION) {
        Some(v) if v.major == 0 => format!("0.{}", v.minor),
        Some(v) => v.major.to_string(),
        None => HOST_VERSION.to_owned(),
    }
}

/// One sentence on `version`'s support and, when it is not plainly
/// supported, what the author or operator can do about it.
pub fn explain(version: &str) -> String {
    let rebuild = format!(
        "rebuild it against wit/plugin@{HOST_VERSION} (loom-sdk for {PACKAGE}@{HOST_VERSION})"
    );
    let served = format!("{PACKAGE} {} to {HOST_VERSION}", oldest());
    match support(version) {
        Support::Supported {
            adapter: Adapter::Native,
        } => format!("supported: this host implements {PACKAGE}@{version}"),
        Support::Supported { adapter } => {
            let caveat = parse(version)
                .and_then(|v| release(&format!("{}.{}.{}", v.major, v.minor, v.patch)))
                .and_then(|r| r.caveat)
                .map(|c| format!("; but {c}"))
                .unwrap_or_default();
            format!(
                "supported ({adapter} to the host's {PACKAGE}@{HOST_VERSION}; later releases \
                 only added to it){caveat}"
            )
        }
        Support::NewerThanHost { same_track: true } => format!(
            "newer than this host, which implements {PACKAGE}@{HOST_VERSION}: it loads only if \
             it uses nothing added after {HOST_VERSION}; upgrade Loom to a release that \
             implements {PACKAGE}@{version}, or {rebuild}"
        ),
        Support::NewerThanHost { same_track: false } => format!(
            "newer than this host, which serves {served} ({PACKAGE}@{}.x): upgrade Loom to a \
             release that serves {PACKAGE}@{version}, or {rebuild}",
            track_label()
        ),
        Support::OlderUnsupported => {
            format!("older than every version this host serves ({served}): {rebuild}")
        }
        Support::NotARelease => format!(
            "not a released {PACKAGE} version `{version}` (this host serves {served}): {rebuild}"
        ),
    }
}

/// For a name `loom:plugin/<interface>@<version>`: the interface and the
/// version.
pub fn split(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(PACKAGE)?
        .strip_prefix('/')?
        .split_once('@')
}

/// The distinct `loom:plugin` versions among `names` (a component's imports
/// and exports), in the order first seen.
pub fn versions_in<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for name in names {
        if let Some((_, version)) = split(name)
            && !found.iter().any(|v| v == version)
        {
            found.push(version.to_owned());
        }
    }
    found
}

/// One `loom:plugin` version a component uses, with this host's verdict:
/// an entry of `contract` in `loom plugins inspect --json` and `list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionReport {
    /// The package and version, such as `loom:plugin@0.1.2`.
    pub package: String,
    /// The version alone.
    pub version: String,
    /// Whether this host serves it (`status`, with `adapter` or
    /// `same_track`).
    #[serde(flatten)]
    pub support: Support,
    /// [`explain`]'s sentence.
    pub detail: String,
}

impl VersionReport {
    /// The report on `version`.
    pub fn new(version: &str) -> Self {
        VersionReport {
            package: format!("{PACKAGE}@{version}"),
            version: version.to_owned(),
            support: support(version),
            detail: explain(version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_ends_at_the_host_version_and_only_it_is_native() {
        assert_eq!(RELEASES.last().map(|r| r.version), Some(HOST_VERSION));
        for pair in RELEASES.windows(2) {
            assert!(parse(pair[0].version) < parse(pair[1].version), "{pair:?}");
        }
        for release in RELEASES {
            let native = release.version == HOST_VERSION;
            assert_eq!(release.adapter == Adapter::Native, native, "{release:?}");
        }
    }

    #[test]
    fn the_host_bindings_come_from_the_host_version() {
        let bindings = include_str!("bindings.rs");
        let path = format!("path: \"../wit/plugin@{HOST_VERSION}\"");
        assert!(
            bindings.contains(&path),
            "bindings.rs is not generated from {path}"
        );
    }

    #[test]
    fn every_release_is_supported_and_frozen_in_wit() {
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for release in RELEASES {
            assert!(support(release.version).loadable());
            let dir = wit.join(format!("plugin@{}", release.version));
            assert!(
                dir.join("worlds.wit").is_file(),
                "{} missing",
                dir.display()
            );
            if release.version != HOST_VERSION {
                assert!(
                    dir.join("README.md").is_file(),
                    "{} has no README saying it is frozen",
                    dir.display()
                );
            }
        }
    }

    #[test]
    fn versions_outside_the_table_are_classified() {
        assert_eq!(
            support("0.1.4"),
            Support::NewerThanHost { same_track: true }
        );
        assert!(support("0.1.4").loadable());
        assert_eq!(
            support("0.2.0"),
            Support::NewerThanHost { same_track: false }
        );
        assert_eq!(
            support("1.0.0"),
            Support::NewerThanHost { same_track: false }
        );
        assert!(!support("0.2.0").loadable());
        assert_eq!(support("0.0.9"), Support::NotARelease);
        assert_eq!(support("0.1.4-rc.1"), Support::NotARelease);
        assert_eq!(support("0.1.3-rc.1"), Support::NotARelease);
        assert_eq!(support("0.1"), Support::NotARelease);
        assert_eq!(support("0.1.x"), Support::NotARelease);
        assert_eq!(support("0.1.3.1"), Support::NotARelease);
        assert_eq!(support("0.1.-3"), Support::NotARelease);
        assert_eq!(support(""), Support::NotARelease);
        assert_eq!(
            support("0.1.3+build"),
            Support::Supported {
                adapter: Adapter::Native
            }
        );
    }

    #[test]
    fn explanations_name_the_host_version_and_the_fix() {
        let newer = explain("0.2.0");
        assert!(
            newer.contains("0.1.0 to 0.1.3") && newer.contains("upgrade Loom"),
            "{newer}"
        );
        assert!(
            newer.contains("rebuild it against wit/plugin@0.1.3"),
            "{newer}"
        );
        let patch = explain("0.1.9");
        assert!(patch.contains("uses nothing added after 0.1.3"), "{patch}");
        assert!(explain("0.1.0").contains("memory component"));
        assert!(explain("0.1.2").starts_with("supported (linked by semver"));
        assert_eq!(
            explain("0.1.3"),
            "supported: this host implements loom:plugin@0.1.3"
        );
        assert!(explain("0.1.4-rc.1").contains("not a released"));
    }

    #[test]
    fn versions_are_collected_once_from_loom_names_only() {
        let names = [
            "wasi:cli/environment@0.2.6",
            "loom:plugin/context@0.1.2",
            "loom:plugin/tool@0.1.2",
            "loom:plugin/harness@0.1.3",
            "loom:pluginx/tool@9.9.9",
        ];
        assert_eq!(versions_in(names), vec!["0.1.2", "0.1.3"]);
        assert_eq!(split("loom:plugin/tool@0.2.0"), Some(("tool", "0.2.0")));
        assert_eq!(split("loom:plugin/tool"), None);
    }
}
