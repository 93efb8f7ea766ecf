//! Test support shared by pier's integration tests. Every helper here fails
//! loudly: a test that needs Docker or a binary must not silently pass.

pub mod dev;
pub mod docker;
pub mod git;
pub mod images;
pub mod linearizable;
pub mod net;
pub mod netns;
pub mod netns_docker;
pub mod process;
pub mod python;
pub mod servers;
pub mod sim;
pub mod snapshot;
