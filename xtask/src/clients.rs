//! `cargo xtask py-clients`: a venv of the machine's `python3` holding
//! the official MCP and OpenAI Python SDKs, pinned in
//! `xtask/toolchains/clients/requirements.txt`, for tests that drive Loom
//! with clients the project did not write.
//!
//! It is installed once per hash of the pins and the interpreter's version
//! under the toolchain cache (see `polyglot.rs`), linked from
//! `<target dir>/py-clients`, and given to the tests as `LOOM_PY_CLIENTS`
//! (the venv's `bin/python`) by `cargo xtask test`.

use crate::polyglot::{ensure_python, hash, install_once, read, toolchains_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the tests look for the venv when `LOOM_PY_CLIENTS` is not set.
pub fn link(target_dir: &Path) -> PathBuf {
    target_dir.join("py-clients")
}

/// Install the venv (when not cached), link it from [`link`], and return
/// its Python interpreter.
pub fn install(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let python = ensure_python()?;
    let spec = root.join("xtask/toolchains/clients/requirements.txt");
    let requirements = read(&spec)?;
    let key = hash(&[&requirements, python.as_bytes()]);
    let dir = install_once(&toolchains_dir()?, "py-clients", &key, |scratch| {
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(scratch))?;
        crate::run(
            Command::new(scratch.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--only-binary=:all:",
                    "-r",
                ])
                .arg(&spec),
        )
    })?;
    let link = link(target_dir);
    std::fs::create_dir_all(target_dir).map_err(|e| format!("{}: {e}", target_dir.display()))?;
    if std::fs::read_link(&link).ok().as_deref() != Some(dir.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link)
            .map_err(|e| format!("{} -> {}: {e}", link.display(), dir.display()))?;
    }
    Ok(dir.join("bin/python"))
}
