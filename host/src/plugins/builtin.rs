//! The first-party components embedded in the host (built from this
//! workspace's `plugins/` by `build.rs`): the architectures (`react`,
//! `self-refine`, `plan-and-execute`, `rewoo`, `tree-of-thoughts`,
//! `debate`, `reflexion`, `actor-critic`, `router`, `supervisor`, `swarm`,
//! `blackboard`), the
//! `calculator`, `files`, `http-fetch` and `run-context` tools, the
//! `deny-args` policy and the `kv-memory` memory component. They are the
//! lowest layer of every tenant's catalog; a plugin directory overrides one
//! by offering a tool or architecture of the same name. Set
//! `builtin_plugins = false` in `loom.toml` to leave them out.

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The path an embedded component is listed under.
pub fn path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("(built in)/{name}.wasm"))
}

/// The tools of embedded component `name` that edit files.
pub fn file_edit_tools(name: &str) -> Vec<String> {
    match name {
        "files" => vec!["write_file".into()],
        _ => Vec::new(),
    }
}

/// What embedded component `name` may touch for a tenant granting `grants`:
/// `files` gets the tenant's directories, `http-fetch` its HTTP
/// destinations, the others nothing. No environment, no raw sockets.
pub fn grants(
    name: &str,
    grants: &crate::tenancy::grants::ResolvedGrants,
) -> crate::tenancy::grants::EffectiveGrants {
    let mut effective = crate::tenancy::grants::EffectiveGrants::default();
    match name {
        "files" => effective.files = grants.files.clone(),
        "http-fetch" => effective.http = grants.http.clone(),
        _ => {}
    }
    effective
}
