//! The node agent: registers its node, heartbeats, drives the Docker engine, runs health
//! checks next to the containers and reports what it observes.

pub mod docker;
