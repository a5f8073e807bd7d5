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
//!
//! Things worth knowing about the parts:
//! - Pebble 2.4.0 keeps nothing across a restart: accounts, orders and its ACME CA keys (so
//!   [`Pebble::issuer_roots_pem`]) change. It rejects 5 % of nonces (`PEBBLE_WFE_NONCEREJECT` is
//!   left at its default). [`Stack::start`] sets `PEBBLE_VA_NOSLEEP=1`; use
//!   [`Stack::start_with`] for Pebble's random validation delays. Its config needs `httpPort` and
//!   `tlsPort` even for DNS-01 only: they get free ports that nothing listens on.
//! - moto accepts any credentials; zone ids come back as `/hostedzone/ID` (stripped here), names
//!   are absolute, TXT values quoted. `moto_server` on PATH is a pyenv shim: it takes about a
//!   second to answer.
//! - The DNS server reads the API on every query (two API calls): nothing is cached, so what was
//!   just written is what Pebble sees. SOA/NS at the apex are its own (`ns1.<zone>` = 127.0.0.1),
//!   not moto's AWS-looking ones.
//! - Apache runs as root with `User www-data`: its temporary ServerRoot is 0755. Its workers do not
//!   die with their parent, so it runs in a process group of its own that a watchdog kills if the
//!   test process dies ([`ChildGuard::spawn_group`]).
//! - Checked once by hand against certbot 5.8 (`--dns-route53` through moto, EAB): apex +
//!   wildcard issued in about 5 s.

pub mod apache;
pub mod dns;
pub mod http;
pub mod moto;
pub mod pebble;
pub mod process;
pub mod stack;

pub use apache::{module_path, ssl_vhost, Apache, ApacheOptions};
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
