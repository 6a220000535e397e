//! `cargo xtask build-polyglot`: builds the JavaScript and Python example
//! components (`examples/js-*`, `examples/py-*`) with their language's
//! componentizer, installing that toolchain first.
//!
//! * JavaScript: componentize-js from npm, pinned with a lock file in
//!   `xtask/toolchains/js/`, installed by `npm ci` with the machine's Node.js
//!   (20 or later).
//! * Python: componentize-py from PyPI, pinned in
//!   `xtask/toolchains/python/requirements.txt`, installed by pip into a venv
//!   of the machine's `python3`.
//!
//! Toolchains live under `$LOOM_TOOLCHAINS_DIR`, else
//! `$XDG_CACHE_HOME/loom-toolchains`, else `~/.cache/loom-toolchains`, one
//! directory per hash of what pins them (and the interpreter's version), so
//! they survive fresh clones and a change of pin installs beside the old
//! one. Each is installed in a scratch directory and renamed into place
//! when complete, so an interrupted install is never taken for a finished
//! one.
//!
//! Components go to `<target dir>/polyglot/<example>.wasm`, each with a
//! `.inputs` file holding the hash of everything it was built from (its
//! sources, the WIT contract, the toolchain's pins and versions); a
//! component whose hash is unchanged is not built again. The tests find the
//! directory through `LOOM_POLYGLOT_DIR`, which `cargo xtask test` sets.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned componentize-js, as the examples' `package.json` must name it.
const COMPONENTIZE_JS: &str = "\"@bytecodealliance/componentize-js\": \"0.23.0\"";
/// The pinned componentize-py, as the examples' `requirements.txt` must name it.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The WIT package every example is built against.
const WIT: &str = "wit/plugin@0.1.3";

/// A language's componentizer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lang {
    JavaScript,
    Python,
}

/// One example component.
struct Example {
    /// Directory under `examples/`, also the output's stem.
    dir: &'static str,
    lang: Lang,
    /// The WIT world it implements.
    world: &'static str,
    /// The source file (JavaScript) or module (Python).
    entry: &'static str,
}

/// Every polyglot example.
const EXAMPLES: &[Example] = &[
    Example {
        dir: "js-tool",
        lang: Lang::JavaScript,
        world: "tool-plugin",
        entry: "tool.js",
    },
    Example {
        dir: "js-architecture",
        lang: Lang::JavaScript,
        world: "architecture-plugin",
        entry: "architecture.js",
    },
    Example {
        dir: "py-tool",
        lang: Lang::Python,
        world: "tool-plugin",
        entry: "app",
    },
    Example {
        dir: "py-architecture",
        lang: Lang::Python,
        world: "architecture-plugin",
        entry: "app",
    },
];

/// Where the built components go: `<target dir>/polyglot`.
pub fn output_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("polyglot")
}

/// Install the toolchains (when not cached) and build every example whose
/// inputs changed into [`output_dir`]. Returns that directory.
pub fn build(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let out = output_dir(target_dir);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cache = toolchains_dir()?;
    let mut js: Option<Toolchain> = None;
    let mut py: Option<Toolchain> = None;
    for example in EXAMPLES {
        let toolchain = match example.lang {
            Lang::JavaScript => {
                if js.is_none() {
                    js = Some(js_toolchain(root, &cache)?);
                }
                js.as_ref()
            }
            Lang::Python => {
                if py.is_none() {
                    py = Some(py_toolchain(root, &cache)?);
                }
                py.as_ref()
            }
        }
        .ok_or("toolchain missing")?;
        build_example(root, example, toolchain, &out)?;
    }
    Ok(out)
}

/// An installed toolchain: its directory and the hash of what it is.
struct Toolchain {
    dir: PathBuf,
    key: String,
}

/// The toolchain cache directory.
pub(crate) fn toolchains_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LOOM_TOOLCHAINS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither LOOM_TOOLCHAINS_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("loom-toolchains"))
}

/// The first line a command prints (its version), or why it cannot run.
fn version_of(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if !output.status.success() {
        return Err(format!("`{program} {}` failed", args.join(" ")));
    }
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Make sure `programs` run, installing the Debian `packages` with apt-get
/// when they do not and this is root on a machine with apt-get (a fresh
/// CI machine); otherwise say what to install.
fn ensure_programs(programs: &[(&str, &[&str])], packages: &[&str]) -> Result<(), String> {
    let missing = || {
        programs
            .iter()
            .any(|(program, args)| version_of(program, args).is_err())
    };
    if !missing() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let names: Vec<&str> = programs.iter().map(|(p, _)| *p).collect();
    if root && version_of("apt-get", &["--version"]).is_ok() {
        eprintln!(
            "xtask: {} not found; installing Debian's {}",
            names.join(", "),
            packages.join(" ")
        );
        crate::run(Command::new("apt-get").arg("update"))?;
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if !missing() {
            return Ok(());
        }
    }
    Err(format!(
        "the polyglot examples need {} (install {}, e.g. `apt-get install {}`)",
        names.join(", "),
        packages.join(" "),
        packages.join(" ")
    ))
}

/// Hex SHA-256 of `parts`, each length-prefixed.
pub(crate) fn hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Install a toolchain into `<cache>/<name>-<key>` with `install` (given
/// a scratch directory) unless it is there; the directory appears only
/// when the install finished.
pub(crate) fn install_once(
    cache: &Path,
    name: &str,
    key: &str,
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let dir = cache.join(format!("{name}-{}", &key[..16]));
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let scratch = cache.join(format!(".{name}-{}-{}", &key[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let started = std::time::Instant::now();
    if let Err(error) = install(&scratch) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(error);
    }
    match std::fs::rename(&scratch, &dir) {
        Ok(()) => {}
        // Another run finished the same install first: use that one.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        Err(e) => return Err(format!("{} -> {}: {e}", scratch.display(), dir.display())),
    }
    eprintln!(
        "xtask: installed the {name} toolchain in {} ({:.1} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// componentize-js, installed by `npm ci` from `xtask/toolchains/js`.
fn js_toolchain(root: &Path, cache: &Path) -> Result<Toolchain, String> {
    ensure_programs(
        &[("node", &["--version"]), ("npm", &["--version"])],
        &["nodejs", "npm"],
    )?;
    let node = version_of("node", &["--version"])?;
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!(
            "componentize-js needs Node.js 20 or later; `node --version` says {node}"
        ));
    }
    let spec = root.join("xtask/toolchains/js");
    let package = read(&spec.join("package.json"))?;
    let lock = read(&spec.join("package-lock.json"))?;
    let key = hash(&[&package, &lock, node.as_bytes()]);
    let dir = install_once(cache, "js", &key, |scratch| {
        for file in ["package.json", "package-lock.json"] {
            crate::copy(&spec.join(file), &scratch.join(file))?;
        }
        crate::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(scratch),
        )
    })?;
    Ok(Toolchain { dir, key })
}

/// Make sure `python3` can make venvs; its version and machine, which
/// key every venv made with it.
pub(crate) fn ensure_python() -> Result<String, String> {
    ensure_programs(
        &[("python3", &["-c", "import venv, ensurepip"])],
        &["python3", "python3-venv"],
    )?;
    version_of(
        "python3",
        &[
            "-c",
            "import sys, platform; print(sys.version, platform.machine())",
        ],
    )
}

/// componentize-py, installed by pip into a venv from `xtask/toolchains/python`.
fn py_toolchain(root: &Path, cache: &Path) -> Result<Toolchain, String> {
    let python = ensure_python()?;
    let requirements = read(&root.join("xtask/toolchains/python/requirements.txt"))?;
    let key = hash(&[&requirements, python.as_bytes()]);
    let spec = root.join("xtask/toolchains/python/requirements.txt");
    let dir = install_once(cache, "python", &key, |scratch| {
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
    Ok(Toolchain { dir, key })
}

/// The files of an example that go into its build: everything in its
/// directory but what builds and installs leave there.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", current.display()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if matches!(
                name.as_str(),
                "node_modules" | "__pycache__" | ".venv" | "package-lock.json"
            ) || name.ends_with(".wasm")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Build one example into `out` unless its inputs are unchanged.
fn build_example(
    root: &Path,
    example: &Example,
    toolchain: &Toolchain,
    out: &Path,
) -> Result<(), String> {
    let dir = root.join("examples").join(example.dir);
    check_pin(&dir, example.lang)?;
    let wit = root.join(WIT);
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for file in source_files(&dir)?.into_iter().chain(source_files(&wit)?) {
        let name = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        inputs.push((name, read(&file)?));
    }
    let mut parts: Vec<&[u8]> = vec![
        toolchain.key.as_bytes(),
        example.world.as_bytes(),
        example.entry.as_bytes(),
    ];
    for (name, bytes) in &inputs {
        parts.push(name.as_bytes());
        parts.push(bytes);
    }
    let key = hash(&parts);
    let wasm = out.join(format!("{}.wasm", example.dir));
    let stamp = out.join(format!("{}.inputs", example.dir));
    if wasm.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        eprintln!("xtask: {} is up to date", wasm.display());
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp);
    let partial = out.join(format!(".{}.wasm.partial", example.dir));
    let started = std::time::Instant::now();
    let mut command = match example.lang {
        Lang::JavaScript => {
            let mut command = Command::new("node");
            command
                .arg(
                    toolchain
                        .dir
                        .join("node_modules/@bytecodealliance/componentize-js/src/cli.js"),
                )
                .arg(example.entry)
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", example.world, "--out"])
                .arg(&partial);
            command
        }
        Lang::Python => {
            let mut command = Command::new(toolchain.dir.join("bin/python"));
            command
                .args([
                    "-c",
                    "import sys; from componentize_py import script; \
                     sys.argv[0] = 'componentize-py'; sys.exit(script())",
                    "--wit-path",
                ])
                .arg(&wit)
                .args([
                    "--world",
                    example.world,
                    "componentize",
                    example.entry,
                    "-o",
                ])
                .arg(&partial)
                // Leave no __pycache__ in the example.
                .env("PYTHONDONTWRITEBYTECODE", "1");
            command
        }
    };
    command.current_dir(&dir);
    crate::run(&mut command)?;
    std::fs::rename(&partial, &wasm)
        .map_err(|e| format!("{} -> {}: {e}", partial.display(), wasm.display()))?;
    std::fs::write(&stamp, &key).map_err(|e| format!("{}: {e}", stamp.display()))?;
    eprintln!(
        "xtask: built {} ({:.1} s)",
        wasm.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The example's own pin (for authors who build it by hand) must be the
/// toolchain's, so the two cannot drift apart.
fn check_pin(dir: &Path, lang: Lang) -> Result<(), String> {
    let (file, pin) = match lang {
        Lang::JavaScript => ("package.json", COMPONENTIZE_JS),
        Lang::Python => ("requirements.txt", COMPONENTIZE_PY),
    };
    let path = dir.join(file);
    let text = String::from_utf8_lossy(&read(&path)?).into_owned();
    if text.contains(pin) {
        Ok(())
    } else {
        Err(format!(
            "{} must pin {pin}, as xtask/toolchains does",
            path.display()
        ))
    }
}
