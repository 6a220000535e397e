//! File tools over the directories the tenant granted: `read_file`,
//! `list_dir` and `write_file` (destructive).
//!
//! The component sees only the host's preopened directories, under the guest
//! paths the tenant configured (for example `/data`). A path outside them,
//! through `..` or a symlink, fails inside WASI with a typed error; a write to
//! a directory granted read-only is refused the same way.

use loom_sdk::{ToolError, tool};
use serde::Serialize;
use std::io::Read;

/// Largest file `read_file` returns whole; longer files are cut at this size.
const MAX_READ_BYTES: u64 = 256 * 1024;
/// Most entries `list_dir` returns.
const MAX_ENTRIES: usize = 1000;

/// What `read_file` returns.
#[derive(Serialize)]
struct FileContent {
    path: String,
    content: String,
    bytes: u64,
    truncated: bool,
}

/// Read a UTF-8 text file.
#[tool(
    description = "Read a text file inside a granted directory and return its content",
    read_only,
    idempotent
)]
fn read_file(
    #[arg(description = "Absolute path of the file, inside a granted directory such as /data")]
    path: String,
) -> Result<FileContent, ToolError> {
    let file = std::fs::File::open(&path).map_err(|e| describe(&path, e))?;
    let bytes = file.metadata().map_err(|e| describe(&path, e))?.len();
    let mut buffer = Vec::new();
    file.take(MAX_READ_BYTES)
        .read_to_end(&mut buffer)
        .map_err(|e| describe(&path, e))?;
    let content = String::from_utf8(buffer)
        .map_err(|_| ToolError::failed(format!("{path} is not UTF-8 text")))?;
    Ok(FileContent {
        path,
        content,
        bytes,
        truncated: bytes > MAX_READ_BYTES,
    })
}

/// One entry of a directory listing.
#[derive(Serialize)]
struct Entry {
    name: String,
    kind: &'static str,
    bytes: u64,
}

/// List a directory.
#[tool(
    description = "List the entries of a directory inside a granted directory",
    read_only,
    idempotent
)]
fn list_dir(
    #[arg(description = "Absolute path of the directory, such as /data")] path: String,
) -> Result<Vec<Entry>, ToolError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|e| describe(&path, e))? {
        if entries.len() == MAX_ENTRIES {
            break;
        }
        let entry = entry.map_err(|e| describe(&path, e))?;
        let meta = entry.metadata().map_err(|e| describe(&path, e))?;
        let kind = if meta.is_dir() {
            "dir"
        } else if meta.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        entries.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind,
            bytes: meta.len(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// What `write_file` returns.
#[derive(Serialize)]
struct Written {
    path: String,
    bytes: usize,
}

/// Write a file, replacing it if it exists.
#[tool(
    description = "Write text to a file inside a directory granted read-write, replacing any previous content",
    destructive
)]
fn write_file(
    #[arg(description = "Absolute path of the file, inside a directory granted read-write")]
    path: String,
    #[arg(description = "The text to write")] content: String,
) -> Result<Written, ToolError> {
    std::fs::write(&path, content.as_bytes()).map_err(|e| describe(&path, e))?;
    Ok(Written {
        path,
        bytes: content.len(),
    })
}

/// Turn an I/O error into a tool error that names the path.
fn describe(path: &str, error: std::io::Error) -> ToolError {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            ToolError::denied(format!("{path}: not permitted ({error})"))
        }
        ErrorKind::NotFound => ToolError::failed(format!(
            "{path}: not found, or outside the directories granted to this tenant"
        )),
        _ => ToolError::failed(format!("{path}: {error}")),
    }
}

loom_sdk::export_tools!(read_file, list_dir, write_file);
