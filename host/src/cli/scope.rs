//! `--tenant`, `--user` and `--session`, shared by the subcommands that act
//! for someone.

use anyhow::{Context, bail};
use loom_host::LoomConfig;
use loom_host::tenancy::ids::{Scope, SessionId, TenantId, UserId};

/// Who a command acts for.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeArgs {
    /// The tenant; may be omitted when only one is configured (with no
    /// configuration, Loom's one tenant is `default`).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The user; anonymous when omitted.
    #[arg(long)]
    pub user: Option<String>,
    /// Continue (or start) this session.
    #[arg(long)]
    pub session: Option<String>,
}

impl ScopeArgs {
    /// The scope these arguments name, checked against `config`.
    pub fn scope(&self, config: &LoomConfig) -> anyhow::Result<Scope> {
        let tenant = match &self.tenant {
            Some(t) => TenantId::new(t.clone()).context("--tenant")?,
            None if config.tenants.len() == 1 => config
                .tenants
                .keys()
                .next()
                .cloned()
                .context("one tenant")?,
            None => {
                let known: Vec<&str> = config.tenants.keys().map(TenantId::as_str).collect();
                bail!(
                    "pass --tenant; configured tenants: {}",
                    if known.is_empty() {
                        "(none)".into()
                    } else {
                        known.join(", ")
                    }
                );
            }
        };
        config.tenant(&tenant)?;
        let user = match &self.user {
            Some(name) => UserId::named(name.clone()).context("--user")?,
            None => UserId::Anonymous,
        };
        let mut scope = Scope::new(tenant, user);
        if let Some(session) = &self.session {
            scope = scope.with_session(SessionId::new(session.clone()).context("--session")?);
        }
        Ok(scope)
    }
}
