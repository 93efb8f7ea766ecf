//! pier-core
