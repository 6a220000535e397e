//! Test support for Loom: paths of the guest components built from source by
//! `build.rs`, and [`TestEnv`], a throwaway Loom installation (config, plugin
//! directory, data) in a temporary directory.

use loom_host::tenancy::ids::{Scope, TenantId, UserId};
use loom_host::{Host, LoomConfig};
use std::path::{Path, PathBuf};

/// Paths of every guest component, built for `wasm32-wasip2` by `build.rs`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// The path of the JavaScript or Python example component `name`
/// (`js-tool`, `py-architecture`, ...), built by `cargo xtask
/// build-polyglot` (part of `cargo xtask test`) into `$LOOM_POLYGLOT_DIR`,
/// else `<target dir>/polyglot`.
///
/// # Panics
///
/// When it has not been built, naming the command that builds it: tests of
/// these components fail without them, they are never skipped.
pub fn polyglot_component(name: &str) -> String {
    let dir = std::env::var_os("LOOM_POLYGLOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // OUT_DIR is <target>/<profile>/build/loom-tests-<hash>/out.
            Path::new(env!("OUT_DIR"))
                .ancestors()
                .nth(4)
                .map(|target| target.join("polyglot"))
                .unwrap_or_default()
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: the JavaScript and Python example components are built by \
         `cargo xtask test` (or `cargo xtask build-polyglot`, which prints the directory \
         to give the tests as LOOM_POLYGLOT_DIR)",
        path.display()
    );
    path.display().to_string()
}

/// The Python interpreter of the venv that holds the official MCP and
/// OpenAI Python SDKs (pinned in `xtask/toolchains/clients/requirements.txt`),
/// installed by `cargo xtask test` (or `cargo xtask py-clients`) and given
/// as `$LOOM_PY_CLIENTS`, else `<target dir>/py-clients/bin/python`.
///
/// # Panics
///
/// When it is not installed, naming the command that installs it: tests
/// that drive Loom with these clients fail without them, they are never
/// skipped.
pub fn py_clients() -> PathBuf {
    let python = std::env::var_os("LOOM_PY_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // OUT_DIR is <target>/<profile>/build/loom-tests-<hash>/out.
            Path::new(env!("OUT_DIR"))
                .ancestors()
                .nth(4)
                .map(|target| target.join("py-clients/bin/python"))
                .unwrap_or_default()
        });
    assert!(
        python.is_file(),
        "{} is missing: the MCP and OpenAI Python SDKs the client tests use are installed by \
         `cargo xtask test` (or `cargo xtask py-clients`, which prints the interpreter to give \
         the tests as LOOM_PY_CLIENTS)",
        python.display()
    );
    python
}

/// A compile cache shared by tests, kept between runs under the target directory.
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/test-compile-cache"))
}

/// A temporary Loom installation.
pub struct TestEnv {
    /// The root; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// An empty installation with a `plugins/` directory.
    ///
    /// # Panics
    ///
    /// If the temporary directory cannot be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        TestEnv { dir }
    }

    /// The root path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The global plugin directory.
    pub fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }

    /// Create a directory under the root and return its path.
    ///
    /// # Panics
    ///
    /// If it cannot be created.
    pub fn mkdir(&self, relative: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// Copy `component` into `dir` as `<name>.wasm`, with `manifest` as
    /// `<name>.toml` when given. Returns the `.wasm` path.
    ///
    /// # Panics
    ///
    /// If the files cannot be written.
    pub fn install(
        &self,
        dir: &Path,
        component: &str,
        name: &str,
        manifest: Option<&str>,
    ) -> PathBuf {
        std::fs::create_dir_all(dir).expect("plugin dir");
        let target = dir.join(format!("{name}.wasm"));
        std::fs::copy(component, &target).expect("copy component");
        if let Some(manifest) = manifest {
            std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write manifest");
        }
        target
    }

    /// Install into the global plugin directory.
    pub fn add_plugin(&self, component: &str, name: &str, manifest: Option<&str>) -> PathBuf {
        self.install(&self.plugins(), component, name, manifest)
    }

    /// Write `loom.toml` with the global plugin directory, the shared compile
    /// cache, hot reload off, the built-in components off (each test installs
    /// what it uses), and `extra` appended; return it parsed.
    ///
    /// # Panics
    ///
    /// If the file cannot be written or does not parse.
    pub fn config(&self, extra: &str) -> LoomConfig {
        let text = format!(
            "data_dir = \"data\"\ncache_dir = {:?}\nplugin_dirs = [\"plugins\"]\nreload_interval_ms = 0\nbuiltin_plugins = false\n{extra}",
            shared_cache_dir().display().to_string()
        );
        let path = self.path().join("loom.toml");
        std::fs::write(&path, text).expect("write loom.toml");
        LoomConfig::load(&path).expect("valid loom.toml")
    }

    /// Start a host over [`Self::config`].
    ///
    /// # Panics
    ///
    /// If the host cannot start.
    pub async fn host(&self, extra: &str) -> Host {
        Host::start(self.config(extra)).await.expect("host starts")
    }
}

/// A scope for `tenant` and `user` (`None`: anonymous).
///
/// # Panics
///
/// If the ids are invalid.
pub fn scope(tenant: &str, user: Option<&str>) -> Scope {
    let user = match user {
        Some(name) => UserId::named(name).expect("user id"),
        None => UserId::Anonymous,
    };
    Scope::new(TenantId::new(tenant).expect("tenant id"), user)
}
