//! Test stack (placeholder).
