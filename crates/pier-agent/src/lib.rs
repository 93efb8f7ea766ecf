//! The node agent (work in progress).
