//! Tenants and identities: typed ids and scopes ([`ids`]) and the
//! capabilities tenants grant their plugins ([`grants`]).

pub mod grants;
pub mod ids;
