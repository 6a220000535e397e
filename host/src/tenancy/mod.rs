//! Tenants and identities: typed ids and scopes ([`ids`]) and the
//! capabilities tenants grant their plugins ([`grants`]), and the API keys
//! that select a tenant over the network ([`keys`]).

pub mod grants;
pub mod ids;
pub mod keys;
