//! pier-registry
