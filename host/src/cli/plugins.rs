//! `loom plugins list` and `loom plugins inspect`.

use anyhow::Context;
use loom_host::engine::cache::sha256_hex;
use loom_host::engine::contract::{self, VersionReport};
use loom_host::plugins::manifest::Manifest;
use loom_host::plugins::{Catalog, PluginEntry, Visibility};
use loom_host::tenancy::ids::TenantId;
use loom_host::{Host, LoomConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;

/// `loom plugins list`.
pub async fn list(
    config: LoomConfig,
    tenant: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let tenant = match tenant {
        Some(t) => {
            let id = TenantId::new(t).context("--tenant")?;
            config.tenant(&id)?;
            Some(id)
        }
        None => None,
    };
    let plugin_dirs = config.plugin_dirs.clone();
    let host = Host::start(config).await?;
    let catalog = host.catalog().await;
    let entries = catalog.visible(tenant.as_ref());
    let rows: Vec<Value> = entries
        .iter()
        .map(|entry| describe(entry, tenant.as_ref().map(|t| (t, &*catalog))))
        .collect();
    let any_failed = entries.iter().any(|e| e.status.is_err());
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        println!(
            "no plugins found in {}",
            if dirs.is_empty() {
                "(no plugin_dirs configured)".into()
            } else {
                dirs.join(", ")
            }
        );
    } else {
        print_table(&rows, tenant.is_some());
    }
    Ok(if any_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(entry: &PluginEntry, tenant: Option<(&TenantId, &Catalog)>) -> Value {
    let scope = match &entry.visibility {
        Visibility::Builtin => "built-in".to_owned(),
        Visibility::Global => "global".to_owned(),
        Visibility::Tenant(t) => format!("tenant:{t}"),
    };
    let plugin = match &entry.status {
        Err(error) => {
            return json!({
                "name": entry.name(),
                "path": entry.path,
                "scope": scope,
                "error": error.to_string(),
            });
        }
        Ok(plugin) => plugin,
    };
    let tools: Vec<Value> = plugin
        .tool()
        .map(|t| {
            t.tools
                .iter()
                .map(|s| json!({"name": s.name, "description": s.description, "destructive": s.destructive, "idempotent": s.idempotent, "parameters": s.parameters}))
                .collect()
        })
        .unwrap_or_default();
    let granted = tenant.and_then(|(tenant, catalog)| {
        let grants = catalog.grants(tenant, &plugin.path)?;
        Some(serde_json::to_value(&*grants).unwrap_or(Value::Null))
    });
    json!({
        "name": &*plugin.name,
        "path": plugin.path,
        "scope": scope,
        "kind": plugin.kind,
        "version": plugin.version,
        "contract": contract_reports(&plugin.shape.versions),
        "description": plugin.description,
        "sha256": plugin.sha256,
        "tools": tools,
        "requested": plugin.requests,
        "granted": granted,
        "manifest": plugin.requests.is_some(),
    })
}

/// Each `loom:plugin` version a component uses, with this host's verdict.
fn contract_reports(versions: &[String]) -> Vec<VersionReport> {
    versions.iter().map(|v| VersionReport::new(v)).collect()
}

/// `loom:plugin@0.1.2 (supported)`, comma-separated; `(none)` for none.
fn summarize_contract(value: &Value) -> String {
    let parts: Vec<String> = value
        .as_array()
        .map(|reports| {
            reports
                .iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r["package"].as_str().unwrap_or("?"),
                        r["status"].as_str().unwrap_or("?").replace('_', " ")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(", ")
    }
}

fn summarize_requests(value: &Value) -> String {
    let Some(obj) = value.as_object() else {
        return "none (no manifest)".into();
    };
    let mut parts = Vec::new();
    for key in ["files", "env", "http", "sockets"] {
        if let Some(items) = obj.get(key).and_then(Value::as_array)
            && !items.is_empty()
        {
            let shown: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Array(tuple) if tuple.len() == 3 => format!(
                        "{}{}",
                        tuple[1].as_str().unwrap_or("?"),
                        if tuple[2].as_bool() == Some(true) {
                            " (rw)"
                        } else {
                            " (ro)"
                        }
                    ),
                    Value::Object(o) => format!(
                        "{}{}",
                        o.get("path").and_then(Value::as_str).unwrap_or("?"),
                        if o.get("write").and_then(Value::as_bool) == Some(true) {
                            " (rw)"
                        } else {
                            ""
                        }
                    ),
                    other => other.to_string(),
                })
                .collect();
            parts.push(format!("{key}: {}", shown.join(" ")));
        }
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn print_table(rows: &[Value], with_grants: bool) {
    for row in rows {
        let name = row["name"].as_str().unwrap_or("?");
        let scope = row["scope"].as_str().unwrap_or("?");
        if let Some(error) = row.get("error").and_then(Value::as_str) {
            println!("{name} [{scope}] FAILED TO LOAD");
            println!("    path:      {}", row["path"].as_str().unwrap_or("?"));
            println!("    error:     {error}");
            continue;
        }
        let kind = row["kind"].as_str().unwrap_or("?");
        let version = row["version"].as_str().unwrap_or("-");
        println!("{name} {version} ({kind}) [{scope}]");
        if let Some(description) = row["description"].as_str() {
            println!("    {description}");
        }
        let tools: Vec<String> = row["tools"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|s| {
                        let name = s["name"].as_str().unwrap_or("?");
                        if s["destructive"].as_bool() == Some(true) {
                            format!("{name} (destructive)")
                        } else {
                            name.to_owned()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("    contract:  {}", summarize_contract(&row["contract"]));
        if row["kind"] == "tool" {
            println!("    tools:     {}", tools.join(", "));
        }
        println!("    requested: {}", summarize_requests(&row["requested"]));
        if with_grants {
            // Only tools get capabilities: the other kinds reach the world
            // through the host (the harness, the key-value store).
            let granted = if row["kind"] == "tool" {
                summarize_requests(&row["granted"])
            } else {
                "none (only tools are granted capabilities)".to_owned()
            };
            println!("    granted:   {granted}");
        }
    }
}

/// `loom plugins inspect`.
pub async fn inspect(config: LoomConfig, file: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let host = Host::start(config).await?;
    let manifest_path = file.with_extension("toml");
    let manifest = if manifest_path.is_file() {
        Some(Manifest::load(&manifest_path))
    } else {
        None
    };
    let mut rejection: Option<String> = None;
    if let Some(Err(error)) = &manifest {
        rejection = Some(error.to_string());
    }
    let mut report = json!({
        "file": file,
        "bytes": bytes.len(),
        "sha256": sha256_hex(&bytes),
        "manifest": manifest.as_ref().and_then(|m| m.as_ref().ok()),
        "host_contract": format!("{}@{}", contract::PACKAGE, contract::HOST_VERSION),
        "contract": [],
        "supported": false,
    });
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let inspection = host.inspect(bytes, &name).await;
    match inspection.shape {
        Err(error) => rejection = rejection.or(Some(error.to_string())),
        Ok(shape) => {
            report["world"] = json!(shape.world);
            let reports = contract_reports(&shape.versions);
            // Supported: every version it uses is a release this host serves
            // (a newer 0.1.x may still load, but is not promised to).
            report["supported"] = json!(
                !reports.is_empty()
                    && reports
                        .iter()
                        .all(|r| matches!(r.support, contract::Support::Supported { .. }))
            );
            report["contract"] = serde_json::to_value(&reports)?;
            report["kind"] = json!(shape.kind);
            report["exports"] = json!(shape.exports);
            report["imports"] = json!(shape.imports);
            match inspection.loaded {
                Ok(Some(tools)) => report["tools"] = serde_json::to_value(&tools)?,
                Ok(None) => {}
                Err(error) => rejection = rejection.or(Some(error.to_string())),
            }
            if let Some(info) = &inspection.architecture {
                report["architecture"] = serde_json::to_value(info)?;
            }
        }
    }
    let requested = manifest
        .as_ref()
        .and_then(|m| m.as_ref().ok())
        .map(|m| serde_json::to_value(&m.capabilities))
        .transpose()?;
    report["requested"] = json!(requested);
    report["accepted"] = json!(rejection.is_none());
    report["rejection"] = json!(rejection);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "file:      {} ({} bytes, sha256 {})",
            file.display(),
            report["bytes"],
            report["sha256"].as_str().unwrap_or("?")
        );
        println!(
            "world:     {}",
            report["world"].as_str().unwrap_or("(none)")
        );
        let reports = report["contract"].as_array().cloned().unwrap_or_default();
        if reports.is_empty() {
            println!(
                "contract:  (no loom:plugin interface; this host implements {})",
                report["host_contract"].as_str().unwrap_or("?")
            );
        }
        for r in &reports {
            println!(
                "contract:  {} — {}",
                r["package"].as_str().unwrap_or("?"),
                r["detail"].as_str().unwrap_or("?")
            );
        }
        for (label, key) in [("exports:", "exports"), ("imports:", "imports")] {
            let items: Vec<&str> = report[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "{label:<10} {}",
                if items.is_empty() {
                    "(none)".into()
                } else {
                    items.join("\n           ")
                }
            );
        }
        if let Some(tools) = report["tools"].as_array() {
            for tool in tools {
                println!(
                    "tool:      {}{} — {}",
                    tool["name"].as_str().unwrap_or("?"),
                    if tool["destructive"].as_bool() == Some(true) {
                        " (destructive)"
                    } else {
                        ""
                    },
                    tool["description"].as_str().unwrap_or("")
                );
            }
        }
        if let Some(info) = report["architecture"].as_object() {
            println!(
                "architecture: {} — {}",
                info["name"].as_str().unwrap_or("?"),
                info["description"].as_str().unwrap_or("")
            );
            if let Some(roles) = info["workers"].as_array() {
                for role in roles {
                    println!(
                        "  role:    {} — {}",
                        role[0].as_str().unwrap_or("?"),
                        role[1].as_str().unwrap_or("")
                    );
                }
            }
            println!("  config:  {}", info["config_schema"]);
        }
        println!("requested: {}", summarize_requests(&report["requested"]));
        match &rejection {
            None => println!("verdict:   accepted"),
            Some(reason) => println!("verdict:   REJECTED: {reason}"),
        }
    }
    Ok(if rejection.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
