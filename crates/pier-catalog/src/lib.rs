//! pier-catalog (work in progress)
