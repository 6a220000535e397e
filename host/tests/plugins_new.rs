//! `loom plugins new`: a generated project builds for wasm32-wasip2 outside
//! this repository, and the component loads and runs in the real `loom`.
//!
//! The Rust projects are built with cargo `--offline` (their crates come
//! from the local registry cache) into the target directory the test
//! fixtures were built in, so their dependencies are already compiled.

use loom_tests::components;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run `loom` in `dir` with no `--config`: it reads the project's own
/// `./loom.toml`, as an author would.
fn loom(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .current_dir(dir)
        .env_remove("LOOM_CONFIG")
        .env_remove("RUST_LOG")
        .env("LOOM_DATA_DIR", dir.join(".loom-data"))
        .output()
        .expect("run loom")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where wasm32-wasip2 guests of this workspace were built (by
/// `tests/build.rs`): `<dir>/wasm32-wasip2/release/<crate>.wasm`.
fn warm_target_dir() -> PathBuf {
    Path::new(components::TOOL_RUN_CONTEXT)
        .ancestors()
        .nth(3)
        .expect("the fixtures' target directory")
        .to_owned()
}

/// `loom plugins new --lang rust` into a fresh directory; the project dir.
fn scaffold(root: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = root.join(name);
    let out = loom(
        root,
        &[
            "plugins",
            "new",
            "--lang",
            "rust",
            "--kind",
            kind,
            name,
            "--dir",
            dir.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("cargo build --release --target wasm32-wasip2"),
        "{stdout}"
    );
    dir
}

/// Build the project as its README says, and put the component and its
/// manifest into its `plugins/`, as the README says.
fn build_and_install(dir: &Path, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--offline",
        ])
        .env("CARGO_TARGET_DIR", warm_target_dir())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "the generated project does not build:\n{}",
        text(&out.stderr)
    );
    let built = warm_target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let installed = plugins.join(format!("{name}.wasm"));
    std::fs::copy(&built, &installed).unwrap();
    std::fs::copy(
        dir.join(format!("{name}.toml")),
        plugins.join(format!("{name}.toml")),
    )
    .unwrap();
    installed
}

#[test]
fn a_new_rust_tool_builds_out_of_tree_loads_and_runs() {
    let root = tempfile::tempdir().unwrap();
    let dir = scaffold(root.path(), "greeter-tool", "tool");
    // Everything it needs came with it: the SDK and the WIT it binds.
    assert!(dir.join("vendor/loom-sdk/src/lib.rs").is_file());
    assert!(dir.join("wit/plugin@0.1.3/worlds.wit").is_file());
    let wasm = build_and_install(&dir, "greeter-tool");

    let out = loom(
        &dir,
        &["plugins", "inspect", wasm.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["accepted"], true);
    assert_eq!(report["world"], "loom:plugin/tool-plugin@0.1.3");
    assert_eq!(report["contract"][0]["status"], "supported");
    assert_eq!(report["tools"][0]["name"], "greeter_tool");
    assert_eq!(report["tools"][0]["destructive"], false);
    assert_eq!(report["manifest"]["name"], "greeter-tool");

    let out = loom(
        &dir,
        &[
            "tool",
            "call",
            "--user",
            "ada",
            "greeter_tool",
            r#"{"name":"Ada"}"#,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let call: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(call["output"]["message"], "hello, Ada", "{call}");
    assert_eq!(call["output"]["tenant"], "default");
    assert_eq!(call["output"]["user"], "ada");

    // Its own error reaches the caller as a typed failure, exit 1.
    let out = loom(&dir, &["tool", "call", "greeter_tool", r#"{"name":" "}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid arguments: `name` must not be empty"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_new_rust_architecture_builds_out_of_tree_and_runs_offline() {
    let root = tempfile::tempdir().unwrap();
    let dir = scaffold(root.path(), "my-loop", "architecture");
    let wasm = build_and_install(&dir, "my-loop");

    let out = loom(
        &dir,
        &["plugins", "inspect", wasm.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world"], "loom:plugin/architecture-plugin@0.1.3");
    assert_eq!(report["architecture"]["name"], "my-loop");

    let out = loom(
        &dir,
        &["run", "--arch", "my-loop", "--model", "echo", "hello"],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Echo: hello"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn new_refuses_bad_names_existing_projects_and_missing_templates() {
    let root = tempfile::tempdir().unwrap();
    let out = loom(
        root.path(),
        &["plugins", "new", "--lang", "rust", "Bad Name"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a-z, 0-9"),
        "{}",
        text(&out.stderr)
    );

    let busy = root.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = loom(
        root.path(),
        &[
            "plugins",
            "new",
            "--lang",
            "rust",
            "busy",
            "--dir",
            busy.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.txt")).unwrap(),
        "mine"
    );

    let out = loom(root.path(), &["plugins", "new", "--lang", "cobol", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_names_every_language_and_kind() {
    let out = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["plugins", "new", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for word in ["rust", "js", "python", "tool", "architecture", "--dir"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

/// The componentizers `cargo xtask build-polyglot` installs (under
/// `$LOOM_TOOLCHAINS_DIR`, else `$XDG_CACHE_HOME/loom-toolchains`, else
/// `~/.cache/loom-toolchains`): the newest `<prefix>-*` directory holding
/// `program`. A missing toolchain fails the test, naming the command that
/// installs it.
fn toolchain(prefix: &str, program: &str) -> PathBuf {
    let cache = std::env::var_os("LOOM_TOOLCHAINS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|p| p.join("loom-toolchains"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/loom-toolchains"))
        })
        .expect("HOME is set");
    let newest = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
        })
        .map(|e| e.path())
        .filter(|dir| dir.join(program).is_file())
        .max_by_key(|dir| std::fs::metadata(dir).and_then(|m| m.modified()).ok());
    newest.unwrap_or_else(|| {
        panic!(
            "no {prefix} toolchain with {program} in {}: run `cargo xtask build-polyglot` \
             (or `cargo xtask test`) once to install it",
            cache.display()
        )
    })
}

/// `loom plugins new --lang <lang> --kind <kind> <name>` in `root`.
fn scaffold_lang(root: &Path, lang: &str, kind: &str, name: &str) -> PathBuf {
    let dir = root.join(name);
    let out = loom(
        root,
        &["plugins", "new", "--lang", lang, "--kind", kind, name],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("wit/plugin@0.1.3/worlds.wit").is_file());
    dir
}

fn run_ok(command: &mut Command) {
    let out = command.output().expect("run the componentizer");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Inspect `plugins/<name>.wasm` of `dir`: accepted, built against 0.1.3.
fn assert_inspected(dir: &Path, name: &str, world: &str) -> serde_json::Value {
    let wasm = format!("plugins/{name}.wasm");
    std::fs::copy(
        dir.join(format!("{name}.toml")),
        dir.join(format!("plugins/{name}.toml")),
    )
    .unwrap();
    let out = loom(dir, &["plugins", "inspect", &wasm, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["world"], format!("loom:plugin/{world}@0.1.3"));
    assert_eq!(report["supported"], true);
    report
}

/// The tool answers the caller's greeting with the host's context.
fn assert_greets(dir: &Path, tool: &str) {
    let out = loom(
        dir,
        &[
            "tool",
            "call",
            "--user",
            "ada",
            tool,
            r#"{"name":"Ada"}"#,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let call: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(call["output"]["message"], "hello, Ada", "{call}");
    assert_eq!(call["output"]["tenant"], "default");
    assert_eq!(call["output"]["user"], "ada");
    let out = loom(dir, &["tool", "call", tool, r#"{"name":""}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid arguments: `name` must not be empty"),
        "{}",
        text(&out.stderr)
    );
}

/// The loop answers an offline run.
fn assert_runs(dir: &Path, name: &str) {
    let out = loom(dir, &["run", "--arch", name, "--model", "echo", "hello"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Echo: hello"),
        "{}",
        text(&out.stdout)
    );
}

/// `npm run build` of a generated JavaScript project, with the cached
/// componentize-js as its node_modules (what `npm install` would fetch).
fn build_js(dir: &Path) {
    let toolchain = toolchain("js", "node_modules/.bin/componentize-js");
    std::os::unix::fs::symlink(toolchain.join("node_modules"), dir.join("node_modules")).unwrap();
    run_ok(Command::new("npm").args(["run", "build"]).current_dir(dir));
}

/// The README's componentize-py command of a generated Python project, with
/// the cached componentize-py venv as its `.venv` (run through the venv's
/// python: the venv was installed elsewhere and moved, so its scripts'
/// `#!` lines point at the old place).
fn build_py(dir: &Path, name: &str, world: &str) {
    let toolchain = toolchain("python", "bin/python");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    run_ok(
        Command::new(toolchain.join("bin/python"))
            .args([
                "-c",
                "import sys; from componentize_py import script; \
                 sys.argv[0] = 'componentize-py'; sys.exit(script())",
                "-d",
                "wit/plugin@0.1.3",
                "-w",
                world,
                "componentize",
                "app",
                "-o",
            ])
            .arg(format!("plugins/{name}.wasm"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir),
    );
}

#[test]
fn new_javascript_projects_build_with_componentize_js_load_and_run() {
    let root = tempfile::tempdir().unwrap();
    let tool = scaffold_lang(root.path(), "js", "tool", "js-greeter");
    build_js(&tool);
    let report = assert_inspected(&tool, "js-greeter", "tool-plugin");
    assert_eq!(report["tools"][0]["name"], "js_greeter");
    assert_greets(&tool, "js_greeter");

    let arch = scaffold_lang(root.path(), "js", "architecture", "js-loop");
    build_js(&arch);
    let report = assert_inspected(&arch, "js-loop", "architecture-plugin");
    assert_eq!(report["architecture"]["name"], "js-loop");
    assert_runs(&arch, "js-loop");
}

#[test]
fn new_python_projects_build_with_componentize_py_load_and_run() {
    let root = tempfile::tempdir().unwrap();
    let tool = scaffold_lang(root.path(), "python", "tool", "py-greeter");
    build_py(&tool, "py-greeter", "tool-plugin");
    let report = assert_inspected(&tool, "py-greeter", "tool-plugin");
    assert_eq!(report["tools"][0]["name"], "py_greeter");
    assert_greets(&tool, "py_greeter");

    let arch = scaffold_lang(root.path(), "python", "architecture", "py-loop");
    build_py(&arch, "py-loop", "architecture-plugin");
    let report = assert_inspected(&arch, "py-loop", "architecture-plugin");
    assert_eq!(report["architecture"]["name"], "py-loop");
    assert_runs(&arch, "py-loop");
}
