//! `acme_rs_stack`: a real test stack on loopback for mod_acme_rs's integration tests.
//!
//! | part | type |
//! |---|---|
//! | ACME CA (Debian's `pebble`, EAB required by default) | [`Pebble`] |
//! | Route53 API (PyPI `moto[server]`) | [`Moto`], with [`Route53Admin`] to drive it |
//! | authoritative DNS for the zones moto holds (our own) | [`DnsServer`], [`dns::serve`] |
//! | Apache httpd (Debian's `apache2`) | [`Apache`] |
//! | all of the above but Apache, wired together | [`Stack`] |
//!
//! Every external process is held by a [`ChildGuard`]: it is stopped when dropped (also when a
//! test panics) and gets `PR_SET_PDEATHSIG(SIGKILL)`, so nothing outlives the test process.
//! Every part has its own temporary directory ([`TestDir`]) that is removed on drop, unless
//! `ACME_RS_KEEP_TMP=1` is set.

pub mod apache;
pub mod dns;
pub mod http;
pub mod moto;
pub mod pebble;
pub mod process;
pub mod stack;

pub use apache::{ssl_vhost, Apache, ApacheOptions};
pub use dns::{dns_query, DnsServer};
pub use http::{fetch_served_chain, http_get, https_get, HttpsResponse};
pub use moto::{Moto, Route53Admin};
pub use pebble::{Pebble, PebbleOptions};
pub use process::{free_port, ChildGuard, TestDir};
pub use stack::Stack;

/// Re-exported so that tests can build and read DNS messages without depending on it themselves.
pub use hickory_proto;

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` with `what`.
pub(crate) async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
