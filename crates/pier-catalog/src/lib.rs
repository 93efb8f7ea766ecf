//! pier-catalog: service discovery over `pier-store` — a catalog of nodes, service instances
//! and health checks, a Consul-compatible HTTP API with blocking queries, health checks that
//! run next to the workload, a leader-side node failure detector, and Consul-style DNS.
//!
//! # Wiring (what a server or agent binary calls)
//!
//! ```text
//! let catalog = Catalog::new(store.clone(), CatalogConfig::default());
//! let agent = Agent::start(catalog.clone(), AgentConfig::new(node_name, advertise_ip));
//! let monitor = NodeMonitor::start(catalog.clone());            // servers only
//! let app = my_router.merge(pier_catalog::http::router(catalog.clone(), agent.clone()));
//! tokio::spawn(serve_dns(catalog.clone(), "0.0.0.0:8600".parse()?, DnsConfig::default(), shutdown));
//! ```
//!
//! An agent on a machine without a store (a remote `pier agent`) talks HTTP instead: it
//! registers its node and instances with `PUT /api/v1/catalog/nodes/:node[/services]`, heartbeats with
//! `PUT /api/v1/catalog/nodes/:node/heartbeat`, evaluates its checks with [`checks::probes::probe`] and
//! reports transitions with `PUT /api/v1/catalog/nodes/:node/checks/:id` (see [`http`]).
//!
//! # Design
//!
//! - **Layout** ([`records`]): nodes, instances and checks are JSON records in store tables,
//!   keyed so that everything about service `web` lies under the prefix `web/`. A blocking
//!   `health/service/web` watches exactly that prefix in two tables plus the keys of the nodes
//!   it runs on, so a change to another service wakes none of its watchers.
//! - **Blocking queries** ([`blocking`]): per-result indexes from the store
//!   (`StateView::index_of`), subscription before the read, Consul's rules for `index`,
//!   `wait`, jitter and index resets.
//! - **Health** is the worst status of an instance's checks and its node's checks. Checks run
//!   in the agent of the node ([`checks::CheckRunner`]) and are written only on transitions.
//!   Node liveness is the leader's job ([`monitor::NodeMonitor`]): heartbeats are kept in the
//!   leader's memory and a silent node's `serfHealth` check goes critical after
//!   `node_dead_after_ms` (`--node-down-after`; 2 s in `CatalogConfig::default`). The same
//!   table is the orchestrator's failure detector: one verdict for both.
//! - **Types**: [`model`] holds the catalog's own types (not serialisable), [`records`] the
//!   stored JSON, [`wire`] Consul's JSON.
//!
//! # Not implemented
//! ACLs (tokens are accepted and ignored), sessions and locks (`acquire`/`release` answer 400),
//! multiple datacenters (`dc` is ignored), prepared queries, Connect, `filter` expressions,
//! gRPC/Docker/H2PING/UDP/alias checks (400), HTTPS health checks (the workspace's reqwest has no
//! TLS; they are refused at registration).

pub mod agent;
pub mod blocking;
pub mod catalog;
pub mod checks;
pub mod dns;
pub mod duration;
pub mod error;
pub mod http;
pub mod model;
pub mod monitor;
pub mod names;
pub mod records;
pub mod routes;
pub mod wire;

pub use agent::{Agent, AgentConfig};
pub use blocking::QueryOptions;
pub use catalog::{Catalog, CatalogConfig, ServiceFilter};
pub use checks::{CheckAllow, CheckRunner, CheckRunnerConfig, Cidr};
pub use dns::{serve_dns, DnsConfig, DnsServer};
pub use error::CatalogError;
pub use http::router;
pub use model::{
    Check, CheckDefinition, CheckKind, CheckRegistration, CheckStatus, Instance, InstanceHealth,
    InstanceRegistration, KvEntry, Node, NodeRegistration, Versioned, Weights,
};
pub use monitor::NodeMonitor;
