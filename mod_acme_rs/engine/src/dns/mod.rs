//! DNS-01 plumbing: the TXT records a challenge needs, the provider trait that writes them
//! (Route53 for now) and the propagation check that waits until the authoritative servers
//! answer with them.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

pub mod propagation;
pub mod route53;

/// A boxed, `Send` future: what [`DnsProvider`]'s methods return, so that the trait stays
/// object safe (`Arc<dyn DnsProvider>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One value of one TXT record set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxtRecord {
    /// Fully qualified name, lowercase, no trailing dot: `_acme-challenge.example.test`.
    pub fqdn: String,
    /// The TXT value, unquoted (for DNS-01: the base64url SHA-256 of the key authorization).
    pub value: String,
}

impl TxtRecord {
    /// Builds a record, normalizing `fqdn` (lowercase, no trailing dot).
    pub fn new(fqdn: impl AsRef<str>, value: impl Into<String>) -> Self {
        TxtRecord { fqdn: normalize_name(fqdn.as_ref()), value: value.into() }
    }

    /// The DNS-01 record name for an identifier: `_acme-challenge.<name without "*.">`.
    pub fn challenge_name(domain: &str) -> String {
        let d = normalize_name(domain);
        let d = d.strip_prefix("*.").unwrap_or(&d);
        format!("_acme-challenge.{d}")
    }
}

impl fmt::Display for TxtRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} TXT \"{}\"", self.fqdn, self.value)
    }
}

/// Lowercase, without a trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Writes and removes DNS-01 TXT records.
pub trait DnsProvider: Send + Sync {
    /// Adds these values to the TXT record sets (merged with values already there; never drops
    /// another writer's values). Returns when the provider reports the change applied
    /// (Route53: GetChange says INSYNC).
    fn publish<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>>;

    /// Removes exactly these values; deletes a record set only when nothing else remains in it.
    fn remove<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>>;

    /// Authoritative nameserver addresses for the zone that holds `fqdn` (the default servers
    /// for the propagation check), or `None` to let [`propagation`] discover them through NS
    /// queries.
    fn authoritative_servers<'a>(
        &'a self,
        _fqdn: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<SocketAddr>>, DnsError>> {
        Box::pin(async { Ok(None) })
    }

    /// A short name for logs and status ("route53").
    fn name(&self) -> &str;
}

/// Errors of the DNS layer. Messages name the record or zone and the cause, and never contain
/// credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// No hosted zone is a suffix of the name.
    #[error("no Route53 hosted zone covers '{name}' (zones in this account: {available})")]
    NoHostedZone {
        /// The record name.
        name: String,
        /// The public zones seen, comma separated, or "none".
        available: String,
    },
    /// The provider's API failed.
    #[error("Route53 {operation} failed for {target}: {cause}")]
    Provider {
        /// The API call ("ChangeResourceRecordSets", ...).
        operation: &'static str,
        /// The zone or record concerned.
        target: String,
        /// The cause, as the SDK describes it (error code and message).
        cause: String,
    },
    /// The provider accepted the change but did not report it applied in time.
    #[error("Route53 change {change_id} for zone {zone} was not INSYNC after {waited_secs}s")]
    ChangeTimeout {
        /// The change ID.
        change_id: String,
        /// The zone.
        zone: String,
        /// How long we waited.
        waited_secs: u64,
    },
    /// The provider could not be set up (credentials, region, role).
    #[error("DNS provider setup failed: {0}")]
    Setup(String),
    /// The propagation check ran out of time.
    #[error("TXT records not visible on all nameservers after {waited_secs}s: {missing}")]
    PropagationTimeout {
        /// How long we waited.
        waited_secs: u64,
        /// Which server lacked which value (or failed how), "; " separated.
        missing: String,
    },
    /// The nameservers for a name could not be found.
    #[error("could not find the authoritative nameservers for '{name}': {cause}")]
    NoNameservers {
        /// The record name.
        name: String,
        /// Why.
        cause: String,
    },
    /// An invalid record name or value.
    #[error("invalid TXT record {record}: {cause}")]
    InvalidRecord {
        /// The record.
        record: String,
        /// Why.
        cause: String,
    },
}
