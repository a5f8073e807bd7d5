//! Route53 DNS provider: writes DNS-01 TXT values through the Route53 API (or a compatible one,
//! such as moto, through `endpoint`).
//!
//! Writes are read-modify-write of the whole TXT record set. To never drop another writer's
//! values, a change replaces the set with an exact `DELETE` of what was read plus a `CREATE` of
//! the merged set, in one atomic batch: when someone changed the set in between, Route53 rejects
//! the batch (InvalidChangeBatch) and we read again and retry.
//!
//! Throttling, PriorRequestNotComplete, 5xx and transport errors are retried by the SDK's
//! standard retry strategy (with exponential backoff and jitter).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_runtime::env_config::file::{EnvConfigFileKind as ProfileFileKind, EnvConfigFiles as ProfileFiles};
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_route53::config::SharedCredentialsProvider;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;

use super::{normalize_name, BoxFuture, DnsError, DnsProvider, TxtRecord};

/// TTL of record sets we create (an existing set keeps its TTL).
const DEFAULT_TTL: i64 = 60;
/// How often a read-modify-write is retried when another writer changed the set meanwhile.
const CONFLICT_RETRIES: u32 = 5;

/// How to reach Route53. Mirrors the `ACMERoute53*` directives.
#[derive(Clone, Debug, Default)]
pub struct Route53Options {
    /// AWS region (`us-east-1` for the global Route53 endpoint).
    pub region: String,
    /// Another Route53-compatible API endpoint (tests, emulators).
    pub endpoint: Option<String>,
    /// Shared-config profile name (default: the standard chain's choice).
    pub profile: Option<String>,
    /// Shared credentials file that replaces `~/.aws/credentials`.
    pub credentials_file: Option<PathBuf>,
    /// Role ARN to assume, with an optional external ID.
    pub assume_role: Option<(String, Option<String>)>,
    /// Pinned hosted zones: (domain, zone id). A pin covers the domain and its subdomains and
    /// wins over discovery (and may name a private zone).
    pub hosted_zones: Vec<(String, String)>,
    /// How long to wait for a change to become INSYNC (default 180 s when `None`).
    pub change_timeout: Option<Duration>,
}

/// A hosted zone as we use it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    /// Bare id (without `/hostedzone/`).
    id: String,
    /// Zone name, lowercase, no trailing dot.
    name: String,
}

/// Writes TXT records through Route53.
#[derive(Clone, Debug)]
pub struct Route53Provider {
    client: Client,
    pins: Vec<Zone>,
    change_timeout: Duration,
}

fn bare_zone_id(id: &str) -> String {
    id.trim().trim_start_matches("/hostedzone/").to_string()
}

/// `name` equals `suffix` or is a subdomain of it.
fn is_within(name: &str, suffix: &str) -> bool {
    name == suffix || (name.len() > suffix.len() && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

/// Describes an SDK error without secrets: service error code and message, or the transport
/// error chain.
fn sdk_cause<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => DisplayErrorContext(err).to_string(),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

fn is_conflict<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(err, SdkError::ServiceError(se) if se.err().code() == Some("InvalidChangeBatch"))
}

/// The quoted form Route53 stores: `"value"` (values with `"` or `\` escaped).
fn quote(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The text of a stored TXT value: its quoted strings concatenated.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    if !raw.starts_with('"') {
        return raw.to_string();
    }
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (in_str, c) {
            (false, '"') => in_str = true,
            (false, _) => {}
            (true, '"') => in_str = false,
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            (true, c) => out.push(c),
        }
    }
    out
}

impl Route53Provider {
    /// Builds the client: standard AWS credential chain (environment, profile, web identity,
    /// ECS, IMDS), narrowed by `profile` / `credentials_file`, then `assume_role` on top.
    pub async fn new(opts: Route53Options) -> Result<Self, DnsError> {
        let region = if opts.region.trim().is_empty() { "us-east-1".to_string() } else { opts.region.trim().to_string() };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(profile) = opts.profile.as_deref().filter(|p| !p.is_empty()) {
            loader = loader.profile_name(profile);
        }
        if let Some(file) = &opts.credentials_file {
            if !file.is_file() {
                return Err(DnsError::Setup(format!(
                    "the Route53 credentials file {} does not exist or is not a file",
                    file.display()
                )));
            }
            loader = loader.profile_files(
                ProfileFiles::builder()
                    .include_default_config_file(true)
                    .with_file(ProfileFileKind::Credentials, file)
                    .build(),
            );
        }
        let mut sdk = loader.load().await;
        if let Some((arn, external_id)) = &opts.assume_role {
            let mut b = AssumeRoleProvider::builder(arn.clone())
                .session_name("mod_acme_rs")
                .region(Region::new(region.clone()))
                .configure(&sdk);
            if let Some(x) = external_id.as_deref().filter(|x| !x.is_empty()) {
                b = b.external_id(x);
            }
            let provider = b.build().await;
            sdk = sdk.into_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build();
        }
        let mut conf = aws_sdk_route53::config::Builder::from(&sdk);
        if let Some(ep) = opts.endpoint.as_deref().filter(|e| !e.is_empty()) {
            conf = conf.endpoint_url(ep);
        }
        let client = Client::from_conf(conf.build());
        let mut pins: Vec<Zone> = opts
            .hosted_zones
            .iter()
            .map(|(d, id)| Zone { name: normalize_name(d), id: bare_zone_id(id) })
            .collect();
        // Longest pin first, so the first match is the most specific.
        pins.sort_by_key(|p| std::cmp::Reverse(p.name.len()));
        Ok(Route53Provider {
            client,
            pins,
            change_timeout: opts.change_timeout.unwrap_or(Duration::from_secs(180)),
        })
    }

    /// All public hosted zones of the account (ListHostedZonesByName, paginated).
    async fn list_public_zones(&self) -> Result<Vec<Zone>, DnsError> {
        let mut zones = Vec::new();
        let mut next: Option<(String, Option<String>)> = None;
        loop {
            let mut req = self.client.list_hosted_zones_by_name();
            if let Some((name, id)) = &next {
                req = req.dns_name(name).set_hosted_zone_id(id.clone());
            }
            let out = req.send().await.map_err(|e| DnsError::Provider {
                operation: "ListHostedZonesByName",
                target: "the account's hosted zones".into(),
                cause: sdk_cause(&e),
            })?;
            for z in out.hosted_zones() {
                let private = z.config().map(|c| c.private_zone()).unwrap_or(false);
                if !private {
                    zones.push(Zone { id: bare_zone_id(z.id()), name: normalize_name(z.name()) });
                }
            }
            match (out.is_truncated(), out.next_dns_name()) {
                (true, Some(n)) => next = Some((n.to_string(), out.next_hosted_zone_id().map(str::to_string))),
                _ => break,
            }
        }
        Ok(zones)
    }

    /// Groups records by the zone that holds them: a pin, else the longest public zone that is
    /// a suffix of the name.
    async fn zones_for<'r>(&self, records: &'r [TxtRecord]) -> Result<BTreeMap<(String, String), Vec<&'r TxtRecord>>, DnsError> {
        let mut listed: Option<Vec<Zone>> = None;
        let mut out: BTreeMap<(String, String), Vec<&TxtRecord>> = BTreeMap::new();
        for r in records {
            let name = normalize_name(&r.fqdn);
            let zone = if let Some(p) = self.pins.iter().find(|p| is_within(&name, &p.name)) {
                p.clone()
            } else {
                if listed.is_none() {
                    listed = Some(self.list_public_zones().await?);
                }
                let zones = listed.as_deref().unwrap_or_default();
                match zones.iter().filter(|z| is_within(&name, &z.name)).max_by_key(|z| z.name.len()) {
                    Some(z) => z.clone(),
                    None => {
                        let mut names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
                        names.sort();
                        names.dedup();
                        let available = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                        let shown = name.strip_prefix("_acme-challenge.").unwrap_or(&name).to_string();
                        return Err(DnsError::NoHostedZone { name: shown, available });
                    }
                }
            };
            out.entry((zone.id, zone.name)).or_default().push(r);
        }
        Ok(out)
    }

    /// The current TXT set at `name` (simple routing only), as Route53 returns it.
    async fn current_set(&self, zone: &Zone, name: &str) -> Result<Option<ResourceRecordSet>, DnsError> {
        let fq = format!("{name}.");
        let out = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(&zone.id)
            .start_record_name(&fq)
            .start_record_type(RrType::Txt)
            .max_items(1)
            .send()
            .await
            .map_err(|e| DnsError::Provider {
                operation: "ListResourceRecordSets",
                target: format!("{name} TXT in zone {} ({})", zone.name, zone.id),
                cause: sdk_cause(&e),
            })?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|s| normalize_name(&decode_octal(s.name())) == name && s.r#type() == &RrType::Txt && s.set_identifier().is_none())
            .cloned())
    }

    /// Applies `edit` (current raw values -> new raw values) to each named set of a zone in one
    /// batch, retrying on conflict; then waits for INSYNC.
    async fn modify_zone(
        &self,
        zone: &Zone,
        names: &BTreeMap<String, BTreeSet<String>>,
        add: bool,
    ) -> Result<(), DnsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut changes = Vec::new();
            for (name, ours) in names {
                let current = self.current_set(zone, name).await?;
                let old: Vec<String> = current
                    .as_ref()
                    .map(|s| s.resource_records().iter().map(|r| r.value().to_string()).collect())
                    .unwrap_or_default();
                let mut new: Vec<String> = Vec::new();
                if add {
                    new.extend(old.iter().cloned());
                    for v in ours {
                        if !old.iter().any(|o| unquote(o) == *v) {
                            new.push(quote(v));
                        }
                    }
                } else {
                    new.extend(old.iter().filter(|o| !ours.contains(&unquote(o))).cloned());
                }
                if new == old {
                    continue;
                }
                let ttl = current.as_ref().and_then(|s| s.ttl()).unwrap_or(DEFAULT_TTL);
                if let Some(cur) = current {
                    changes.push(change(ChangeAction::Delete, cur)?);
                }
                if !new.is_empty() {
                    changes.push(change(ChangeAction::Create, txt_set(name, ttl, &new)?)?);
                }
            }
            if changes.is_empty() {
                return Ok(());
            }
            let what = if add { "add" } else { "remove" };
            let batch = ChangeBatch::builder()
                .comment(format!("mod_acme_rs: {what} DNS-01 challenge values"))
                .set_changes(Some(changes))
                .build()
                .map_err(|e| DnsError::InvalidRecord { record: format!("zone {}", zone.name), cause: e.to_string() })?;
            let res = self.client.change_resource_record_sets().hosted_zone_id(&zone.id).change_batch(batch).send().await;
            match res {
                Ok(out) => {
                    let Some(info) = out.change_info() else { return Ok(()) };
                    if info.status() == &ChangeStatus::Insync {
                        return Ok(());
                    }
                    return self.wait_insync(zone, info.id()).await;
                }
                Err(e) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                    log::debug!("Route53 change batch for zone {} conflicted ({}); reading again", zone.name, sdk_cause(&e));
                    tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
                }
                Err(e) => {
                    let names: Vec<&str> = names.keys().map(String::as_str).collect();
                    return Err(DnsError::Provider {
                        operation: "ChangeResourceRecordSets",
                        target: format!("{} TXT in zone {} ({})", names.join(", "), zone.name, zone.id),
                        cause: sdk_cause(&e),
                    });
                }
            }
        }
    }

    async fn wait_insync(&self, zone: &Zone, change_id: &str) -> Result<(), DnsError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            tokio::time::sleep(delay).await;
            let out = self.client.get_change().id(change_id).send().await.map_err(|e| DnsError::Provider {
                operation: "GetChange",
                target: format!("change {change_id} in zone {}", zone.name),
                cause: sdk_cause(&e),
            })?;
            if out.change_info().map(|i| i.status() == &ChangeStatus::Insync).unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() >= self.change_timeout {
                return Err(DnsError::ChangeTimeout {
                    change_id: change_id.to_string(),
                    zone: zone.name.clone(),
                    waited_secs: start.elapsed().as_secs(),
                });
            }
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    async fn apply(&self, records: &[TxtRecord], add: bool) -> Result<(), DnsError> {
        for r in records {
            if r.value.is_empty() || r.value.len() > 255 || r.value.chars().any(|c| c.is_control()) {
                return Err(DnsError::InvalidRecord { record: r.to_string(), cause: "the value must be 1-255 printable characters".into() });
            }
        }
        for (zone, recs) in self.zones_for(records).await? {
            let zone = Zone { id: zone.0, name: zone.1 };
            let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for r in recs {
                names.entry(normalize_name(&r.fqdn)).or_default().insert(r.value.clone());
            }
            self.modify_zone(&zone, &names, add).await?;
        }
        Ok(())
    }
}

/// Route53 returns some characters as `\NNN` octal escapes (`*` as `\052`).
fn decode_octal(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn txt_set(name: &str, ttl: i64, values: &[String]) -> Result<ResourceRecordSet, DnsError> {
    let mut b = ResourceRecordSet::builder().name(format!("{name}.")).r#type(RrType::Txt).ttl(ttl);
    for v in values {
        b = b.resource_records(
            ResourceRecord::builder()
                .value(v)
                .build()
                .map_err(|e| DnsError::InvalidRecord { record: format!("{name} TXT {v}"), cause: e.to_string() })?,
        );
    }
    b.build().map_err(|e| DnsError::InvalidRecord { record: format!("{name} TXT"), cause: e.to_string() })
}

fn change(action: ChangeAction, set: ResourceRecordSet) -> Result<Change, DnsError> {
    let name = set.name().to_string();
    Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| DnsError::InvalidRecord { record: format!("{name} TXT"), cause: e.to_string() })
}

impl DnsProvider for Route53Provider {
    fn publish<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(self.apply(records, true))
    }

    fn remove<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(self.apply(records, false))
    }

    fn name(&self) -> &str {
        "route53"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("\"a\" \"bc\""), "abc");
        assert_eq!(unquote(&quote("x\"y\\z")), "x\"y\\z");
    }

    #[test]
    fn suffix_matching() {
        assert!(is_within("_acme-challenge.example.test", "example.test"));
        assert!(is_within("example.test", "example.test"));
        assert!(!is_within("badexample.test", "example.test"));
        assert!(!is_within("test", "example.test"));
    }

    #[test]
    fn octal_names() {
        assert_eq!(decode_octal("\\052.example.test."), "*.example.test.");
        assert_eq!(bare_zone_id("/hostedzone/Z123"), "Z123");
    }
}
