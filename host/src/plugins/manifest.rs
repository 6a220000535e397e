//! The optional sidecar manifest `<name>.toml` beside a component: name,
//! version, description and requested capabilities.
//!
//! ```toml
//! name = "files"
//! version = "0.1.0"
//! description = "Read and write files in granted directories"
//!
//! [capabilities]
//! files = ["/data"]                       # or { path = "/data", write = true }
//! env = ["GREETING"]
//! http = ["api.example.com:443"]
//! sockets = ["127.0.0.1:9000"]
//! ```
//!
//! A top-level `file_edit_tools = ["write_note"]` (before `[capabilities]`)
//! tags tools that edit files: the `accept-edits` permission mode runs them
//! without asking.
//!
//! What a plugin gets is the part of these requests its tenant granted; a
//! plugin without a manifest gets no capabilities at all.

use crate::tenancy::grants::{HostPattern, Requests};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A parsed sidecar manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name; defaults to the file stem.
    pub name: Option<String>,
    /// Plugin version (free text, semver recommended).
    pub version: Option<String>,
    /// What the plugin does.
    pub description: Option<String>,
    /// Requested capabilities.
    #[serde(default)]
    pub capabilities: Requests,
    /// Its tools that edit files: the `accept-edits` permission mode runs
    /// them without asking.
    #[serde(default)]
    pub file_edit_tools: Vec<String>,
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest {path}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Manifest {
    /// Read and validate a manifest file.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some(name) = &manifest.name
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(err(format!(
                "name `{name}` must be 1-64 characters of [a-zA-Z0-9_.-]"
            )));
        }
        for request in &manifest.capabilities.http {
            HostPattern::parse(request, false)
                .map_err(|e| err(format!("capabilities.http: {e}")))?;
        }
        for file in &manifest.capabilities.files {
            if !file.path().starts_with('/') {
                return Err(err(format!(
                    "capabilities.files: `{}` must be an absolute guest path such as `/data`",
                    file.path()
                )));
            }
        }
        Ok(manifest)
    }
}
