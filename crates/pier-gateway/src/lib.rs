//! Pier gateway (work in progress).
