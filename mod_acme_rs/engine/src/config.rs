//! Configuration model (placeholder).
