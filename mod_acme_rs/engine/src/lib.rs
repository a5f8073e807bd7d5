//! The engine of mod_acme_rs: everything that is not Apache glue. Plain Rust, no FFI, so
//! `cargo test` exercises it without httpd.

pub mod config;
pub mod acme;
pub mod dns;
