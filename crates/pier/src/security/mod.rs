//! Security of a pier server process: its TLS material and join service (`server`, `join`,
//! `files`), the auth layer every API request passes (`authz`, `routes`), the audit log
//! (`audit`), the ACL and token endpoints (`api`), CA rotation (`rotation`), and the registry's
//! token auth (`registry_auth`).

pub mod api;
pub mod audit;
pub mod authz;
pub mod files;
pub mod join;
pub mod node;
pub mod registry_auth;
pub mod rotation;
pub mod routes;
pub mod server;
