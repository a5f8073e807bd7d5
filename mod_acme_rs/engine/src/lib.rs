//! The engine of mod_acme_rs: everything that is not Apache glue. Plain Rust, no FFI, so
//! `cargo test` exercises it without httpd.

pub mod acme;
pub mod certcheck;
pub mod config;
pub mod dns;
pub mod keys;
pub mod renewal;
pub mod store;
