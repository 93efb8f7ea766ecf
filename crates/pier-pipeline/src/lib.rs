//! Pipelines: a change to a service's git repository is picked up (polling or a push webhook),
//! the image is built through the Docker engine, pushed to the pier registry and deployed;
//! every run's state and log live in the replicated store.

pub mod build;
pub mod definition;
pub mod git;
pub mod log_sink;
pub mod run_state;
pub mod webhook;
