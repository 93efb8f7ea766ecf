//! Rolling deployments (in progress).
