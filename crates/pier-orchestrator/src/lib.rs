//! The orchestrator (work in progress).
