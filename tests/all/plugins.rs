//! Plugin directories: kinds, manifests, per-tenant visibility, hot reload,
//! and the compile cache.

use crate::support::{TWO_TENANTS, install_good_tools};
use loom_host::engine::cache::CacheOutcome;
use loom_host::engine::{CallError, ComponentShape, LoadError, PluginKind, SandboxEngine};
use loom_host::tenancy::ids::TenantId;
use loom_host::{Host, LoomConfig};
use loom_tests::{TestEnv, components, scope};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_with_kind_tools_and_grants() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("name = \"file-tools\"\nversion = \"1.2.3\"\n[capabilities]\nfiles = [\"/data\"]\nenv = [\"X\"]\n"),
    );
    env.mkdir("data");
    let host = env
        .host(&format!("{TWO_TENANTS}[tenants.acme.grants]\nfiles = [{{ host = \"data\", guest = \"/data\", write = true }}]\n"))
        .await;
    let catalog = host.catalog().await;
    let files = catalog
        .entries
        .iter()
        .find(|e| e.name() == "file-tools")
        .expect("named by manifest");
    let plugin = files.status.as_ref().expect("loaded");
    assert_eq!(plugin.kind, PluginKind::Tool);
    assert_eq!(plugin.version.as_deref(), Some("1.2.3"));
    let tools: Vec<&str> = plugin
        .tool()
        .unwrap()
        .tools
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tools, ["read_file", "list_dir", "write_file"]);
    let write = plugin
        .tool()
        .unwrap()
        .tools
        .iter()
        .find(|t| t.name == "write_file")
        .unwrap();
    assert!(write.destructive);
    assert_eq!(
        write.parameters["required"],
        serde_json::json!(["path", "content"])
    );
    let acme = TenantId::new("acme").unwrap();
    let binding = catalog.tool(&acme, "read_file").unwrap();
    assert_eq!(binding.grants.files.len(), 1);
    assert!(
        !binding.grants.files[0].2,
        "manifest asked read-only, so read-only"
    );
    assert!(binding.grants.env.is_empty(), "X requested but not granted");
    let globex = TenantId::new("globex").unwrap();
    assert!(
        catalog
            .tool(&globex, "read_file")
            .unwrap()
            .grants
            .files
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_directories_are_private_and_shadow_global_tools() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let own = env.path().join("tenants/acme");
    env.install(&own, components::TOOL_FILES, "acme-files", None);
    // acme's own plugin named "calculate"? Use run-context under acme's dir to shadow.
    env.install(&own, components::FIXTURE_PANIC, "acme-panic", None);
    let host = env
        .host("[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.globex]\n")
        .await;
    let catalog = host.catalog().await;
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    assert!(catalog.tool(&acme, "read_file").is_some());
    assert!(
        catalog.tool(&globex, "read_file").is_none(),
        "acme's plugin is invisible to globex"
    );
    assert!(
        catalog
            .visible(Some(&globex))
            .iter()
            .all(|e| e.name() != "acme-files")
    );
    assert!(
        catalog
            .visible(Some(&acme))
            .iter()
            .any(|e| e.name() == "acme-files")
    );
    let err = host
        .call_tool(scope("globex", None), "explode", "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownTool { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_adds_replaces_and_removes_plugins() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let host = env.host(TWO_TENANTS).await;
    let acme = || scope("acme", None);
    assert!(host.call_tool(acme(), "explode", "{}").await.is_err());

    // Add.
    env.add_plugin(components::FIXTURE_PANIC, "swap", None);
    let report = host.rescan().await;
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    let err = host.call_tool(acme(), "explode", "{}").await.unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "now served: {err:?}");

    // Replace the same file with another component.
    std::thread::sleep(Duration::from_millis(20));
    env.add_plugin(components::FIXTURE_ENV_READER, "swap", None);
    let report = host.rescan().await;
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert!(matches!(
        host.call_tool(acme(), "explode", "{}").await,
        Err(CallError::UnknownTool { .. })
    ));
    host.call_tool(acme(), "read_env", r#"{"name":"X"}"#)
        .await
        .expect("new version served");

    // Unchanged files are not reloaded.
    assert!(host.rescan().await.is_empty());

    // Remove.
    std::fs::remove_file(env.plugins().join("swap.wasm")).unwrap();
    let report = host.rescan().await;
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(matches!(
        host.call_tool(acme(), "read_env", r#"{"name":"X"}"#).await,
        Err(CallError::UnknownTool { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_finishes_on_the_old_version() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_SPIN, "spin", None);
    let host = std::sync::Arc::new(
        env.host(&format!(
            "{TWO_TENANTS}[tenants.acme.limits]\ncpu_ms = 400\n"
        ))
        .await,
    );
    let running = {
        let host = host.clone();
        tokio::spawn(async move { host.call_tool(scope("acme", None), "spin", "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_file(env.plugins().join("spin.wasm")).unwrap();
    assert_eq!(host.rescan().await.removed.len(), 1);
    assert!(matches!(
        host.call_tool(scope("acme", None), "spin", "{}").await,
        Err(CallError::UnknownTool { .. })
    ));
    let finished = running.await.unwrap();
    assert!(
        matches!(finished, Err(CallError::CpuLimit { .. })),
        "the old instance ran to its own end: {finished:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_picks_up_a_new_file_without_restart() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.config(TWO_TENANTS);
    let text = std::fs::read_to_string(env.path().join("loom.toml"))
        .unwrap()
        .replace("reload_interval_ms = 0", "reload_interval_ms = 50");
    std::fs::write(env.path().join("loom.toml"), text).unwrap();
    let host = Host::start(LoomConfig::load(&env.path().join("loom.toml")).unwrap())
        .await
        .unwrap();
    env.add_plugin(components::FIXTURE_PANIC, "late", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match host.call_tool(scope("acme", None), "explode", "{}").await {
            Err(CallError::Trap { .. }) => break,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never reloaded: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_skips_the_plugin_with_its_reason() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("[capabilities]\nfiles = [\"relative\"]\nbogus = 1\n"),
    );
    let host = env.host(TWO_TENANTS).await;
    let catalog = host.catalog().await;
    let entry = catalog
        .entries
        .iter()
        .find(|e| e.name() == "files")
        .unwrap();
    let error = entry.status.as_ref().err().expect("rejected").to_string();
    assert!(
        error.contains("files.toml") && error.contains("bogus"),
        "{error}"
    );
    super::support::assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_on_disk() {
    let env = TestEnv::new();
    let cache = env.mkdir("private-cache");
    let engine = SandboxEngine::new(&Default::default(), &cache).unwrap();
    let bytes = std::fs::read(components::TOOL_CALCULATOR).unwrap();
    let (_, _, sha, outcome) = engine.compile(&bytes).unwrap();
    assert_eq!(outcome, CacheOutcome::Compiled);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].file_name().to_string_lossy().starts_with(&sha));
    drop(engine);
    let engine = SandboxEngine::new(&Default::default(), &cache).unwrap();
    let (_, _, _, outcome) = engine.compile(&bytes).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    // A corrupt entry is replaced, not trusted.
    std::fs::write(entries[0].path(), b"garbage").unwrap();
    let (_, _, _, outcome) = engine.compile(&bytes).unwrap();
    assert_eq!(outcome, CacheOutcome::Compiled);
}

#[test]
fn insecure_cache_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let cache = env.mkdir("shared-cache");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o733)).unwrap();
    let err = SandboxEngine::new(&Default::default(), &cache)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn exports_of_another_loom_version_are_named() {
    let shape = ComponentShape {
        kind: None,
        world: None,
        versions: vec!["0.2.0".into()],
        exports: vec!["loom:plugin/tool@0.2.0".into()],
        imports: vec![],
    };
    let err = SandboxEngine::classify(&shape).unwrap_err();
    assert!(matches!(err, LoadError::UnsupportedVersion(_)));
    assert!(err.to_string().contains("loom:plugin@0.1.x"), "{err}");
    assert!(err.to_string().contains("upgrade Loom"), "{err}");
    let shape = ComponentShape {
        exports: vec!["wasi:cli/run@0.2.0".into()],
        ..shape
    };
    assert!(matches!(
        SandboxEngine::classify(&shape),
        Err(LoadError::NotAPlugin(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_detected_and_unsupported_versions_refused() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_FUTURE_VERSION, "future", None);
    env.add_plugin(components::FIXTURE_ARCHITECTURE_STUB, "stub-arch", None);
    let host = env.host(TWO_TENANTS).await;
    let catalog = host.catalog().await;
    let find = |name: &str| catalog.entries.iter().find(|e| e.name() == name).unwrap();
    let future = find("future")
        .status
        .as_ref()
        .err()
        .expect("refused")
        .to_string();
    assert!(
        future.contains("loom:plugin/tool@0.2.0") && future.contains("0.1.x"),
        "{future}"
    );
    assert!(
        future.contains("newer than this host") && future.contains("wit/plugin@0.1.3"),
        "{future}"
    );
    let arch = find("stub-arch").status.as_ref().expect("loaded");
    assert_eq!(arch.kind, PluginKind::Architecture);
    assert!(arch.tool().is_none());
    assert!(
        arch.shape
            .imports
            .iter()
            .all(|i| !i.starts_with("wasi:http"))
    );
    assert_eq!(
        find("calculator").status.as_ref().unwrap().kind,
        PluginKind::Tool
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_plugin_named_like_a_global_one_gets_only_its_own_grants() {
    let env = TestEnv::new();
    install_good_tools(&env);
    // The global `files` plugin asks for /data; a tenant plugin that calls
    // itself `files` too asks for nothing.
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("name = \"files\"\n[capabilities]\nfiles = [{ path = \"/data\" }]\n"),
    );
    env.install(
        &env.path().join("tenants/acme"),
        components::FIXTURE_ESCAPE,
        "impostor",
        Some("name = \"files\"\n"),
    );
    let data = env.mkdir("data/acme");
    std::fs::write(data.join("a.txt"), "acme data").unwrap();
    let host = env
        .host(
            "[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.acme.grants]\n\
             files = [{ host = \"data/acme\", guest = \"/data\" }]\n[tenants.globex]\n",
        )
        .await;
    // The global plugin reads the grant...
    let out = host
        .call_tool(
            scope("acme", None),
            "read_file",
            r#"{"path":"/data/a.txt"}"#,
        )
        .await
        .unwrap();
    assert!(out.output.contains("acme data"));
    // ...the same-named tenant plugin does not inherit it.
    let probe = host
        .call_tool(scope("acme", None), "probe", r#"{"paths":["/data/a.txt"]}"#)
        .await
        .unwrap();
    assert!(!probe.output.contains("acme data"), "{}", probe.output);
    let catalog = host.catalog().await;
    let acme = TenantId::new("acme").unwrap();
    let impostor = catalog.tool(&acme, "probe").unwrap();
    assert!(impostor.grants.files.is_empty(), "{:?}", impostor.grants);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_slow_plugin_never_delays_another_tenant() {
    let env = TestEnv::new();
    install_good_tools(&env);
    // acme's own plugin never finishes describing itself.
    env.install(
        &env.path().join("tenants/acme"),
        components::FIXTURE_SLOW_LIST,
        "slow-list",
        None,
    );
    let started = std::time::Instant::now();
    let host = env
        .host("[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.globex]\n")
        .await;
    let out = host
        .call_tool(
            scope("globex", None),
            "calculate",
            r#"{"expression":"1+1"}"#,
        )
        .await
        .unwrap();
    assert_eq!(out.output, "2.0");
    let globex_served = started.elapsed();
    // acme's calls wait for acme's directory, which fails with a reason.
    let err = host
        .call_tool(scope("acme", None), "never", "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownTool { .. }), "{err:?}");
    let acme_served = started.elapsed();
    assert!(
        globex_served < acme_served,
        "globex ({globex_served:?}) was not held up by acme's loader ({acme_served:?})"
    );
    let catalog = host.catalog().await;
    let entry = catalog
        .entries
        .iter()
        .find(|e| e.name() == "slow-list")
        .unwrap();
    let reason = entry.status.as_ref().err().unwrap().to_string();
    assert!(reason.contains("`list` failed"), "{reason}");
}

/// The fixture built against each release of the contract: (version,
/// constant, plugin name). A release added to the host's table without a
/// fixture here fails [`compat_every_supported_version_loads_runs_and_reports_itself`].
const RELEASE_FIXTURES: &[(&str, &str, &str)] = &[
    ("0.1.0", components::FIXTURE_LEGACY_TOOL, "legacy-tool"),
    ("0.1.0", components::FIXTURE_ARCHITECTURE_STUB, "stub-0-1-0"),
    ("0.1.1", components::FIXTURE_HOSTILE_ARCH, "arch-0-1-1"),
    ("0.1.2", components::FIXTURE_TOOL_0_1_2, "tool-0-1-2"),
    ("0.1.3", components::TOOL_RUN_CONTEXT, "run-context"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_every_supported_version_loads_runs_and_reports_itself() {
    use loom_host::agent::{Agent, RunRequest};
    use loom_host::engine::contract::{self, Adapter, Support};
    use loom_host::model::offline::EchoModel;
    use std::sync::Arc;

    // Every release in the host's table has a fixture, and only those.
    for release in contract::RELEASES {
        assert!(
            RELEASE_FIXTURES
                .iter()
                .any(|(v, _, _)| *v == release.version),
            "release {} has no fixture component in RELEASE_FIXTURES",
            release.version
        );
    }
    let env = TestEnv::new();
    for (_, component, name) in RELEASE_FIXTURES {
        env.add_plugin(component, name, None);
    }
    env.add_plugin(components::FIXTURE_FUTURE_VERSION, "future", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    let host = Arc::new(env.host("").await);
    let catalog = host.catalog().await;
    let entry = |name: &str| {
        catalog
            .entries
            .iter()
            .find(|e| e.name() == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    // Each loads and reports the version it was built against, supported.
    for (version, _, name) in RELEASE_FIXTURES {
        let plugin = entry(name)
            .status
            .as_ref()
            .unwrap_or_else(|e| panic!("{name} ({version}) refused: {e}"));
        assert_eq!(plugin.shape.versions, vec![version.to_string()], "{name}");
        assert!(
            plugin
                .shape
                .world
                .as_deref()
                .is_some_and(|w| w.ends_with(&format!("@{version}"))),
            "{name}: {:?}",
            plugin.shape.world
        );
        let expected = if *version == contract::HOST_VERSION {
            Adapter::Native
        } else {
            Adapter::Semver
        };
        assert_eq!(
            contract::support(version),
            Support::Supported { adapter: expected }
        );
    }
    // The future one is refused, saying which host version and what to do.
    let refused = entry("future")
        .status
        .as_ref()
        .err()
        .expect("0.2.0 refused")
        .to_string();
    assert!(
        refused.contains("loom:plugin/tool@0.2.0")
            && refused.contains("newer than this host")
            && refused.contains("0.1.0 to 0.1.3")
            && refused.contains("upgrade Loom"),
        "{refused}"
    );

    // And each works: tools of 0.1.0, 0.1.2 and 0.1.3 are called...
    for (tool, arguments) in [
        ("legacy_echo", r#"{"x":1}"#),
        ("echo_0_1_2", r#"{"y":2}"#),
        ("run_context", "{}"),
    ] {
        let output = host
            .call_tool(scope("default", Some("ann")), tool, arguments)
            .await
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        let value: serde_json::Value = serde_json::from_str(&output.output).unwrap();
        assert_eq!(value["tenant"], "default", "{tool}: {value}");
    }
    // ...and architectures of 0.1.0 and 0.1.1 run, the 0.1.1 one calling a
    // 0.1.3 tool (calculate 1+1) through the harness.
    let agent = Agent::builder("compat")
        .host(host.clone())
        .model(Arc::new(EchoModel))
        .architecture("stub")
        .tools(["calculate"])
        .build()
        .unwrap();
    let stub = agent
        .run(
            RunRequest::new(scope("default", Some("ann")), "hello from 0.1.0").architecture("stub"),
        )
        .await
        .expect("0.1.0 architecture runs");
    assert_eq!(stub.output, "hello from 0.1.0");
    let arch = agent
        .run(
            RunRequest::new(scope("default", Some("ann")), "ungranted calculate")
                .architecture("hostile"),
        )
        .await
        .expect("0.1.1 architecture runs");
    assert_eq!(arch.output, r#"Ok("2.0")"#);
}
