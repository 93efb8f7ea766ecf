//! pier-api
