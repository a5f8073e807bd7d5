//! moto's Route53 API (`moto_server`) and an admin client for it.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::process::{free_port, ChildGuard, TestDir};

/// A running `moto_server` on 127.0.0.1.
pub struct Moto {
    port: u16,
    child: ChildGuard,
    // Dropped after `child`, so the log is still there while the process stops.
    dir: TestDir,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it answers HTTP.
    pub async fn start() -> Result<Moto> {
        let dir = TestDir::new("moto")?;
        let mut last_err = None;
        // A port can be taken between free_port() and the bind: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let mut child = ChildGuard::spawn("moto_server", cmd, &dir.join("moto.log"))?;
            let url = format!("http://127.0.0.1:{port}/moto-api/");
            let res = crate::wait_until("moto_server", Duration::from_secs(60), || {
                let ok = child.ensure_running();
                let url = url.clone();
                async move {
                    ok?;
                    Ok(crate::http::try_http_get(&url).await.ok().map(|_| ()))
                }
            })
            .await;
            match res {
                Ok(()) => return Ok(Moto { port, child, dir }),
                Err(e) => last_err = Some(e.context(format!("moto_server log:\n{}", child.log()))),
            }
        }
        Err(last_err.unwrap())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the Route53 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto_server's output so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// A Route53 client for this server.
    pub fn admin(&self) -> Route53Admin {
        Route53Admin::new(&self.endpoint())
    }

    /// The temporary directory holding the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A Route53 client (aws-sdk-route53) pointed at a Route53-compatible endpoint with fake static
/// credentials, for tests to create zones and look at records.
#[derive(Clone, Debug)]
pub struct Route53Admin {
    client: aws_sdk_route53::Client,
}

/// Route53 names are absolute; accept both `a.b` and `a.b.`.
pub(crate) fn fqdn(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

/// Route53 writes some characters in names as `\NNN` octal escapes (`*` as `\052`).
pub(crate) fn unescape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u8::from_str_radix(&name[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out.to_ascii_lowercase()
}

/// The strings of a Route53 TXT value: `"abc"` → `["abc"]`, `"a" "b"` → `["a", "b"]`;
/// `\"`, `\\` and `\NNN` (decimal) escapes are decoded; an unquoted value is taken as one string.
pub fn parse_txt_value(value: &str) -> Vec<String> {
    let v = value.trim();
    if !v.starts_with('"') {
        return vec![v.to_string()];
    }
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1; // whitespace between strings
            continue;
        }
        i += 1;
        let mut s: Vec<u8> = Vec::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                if i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
                    s.push(v[i + 1..i + 4].parse::<u16>().unwrap_or(63) as u8);
                    i += 4;
                } else {
                    s.push(b[i + 1]);
                    i += 2;
                }
            } else {
                s.push(b[i]);
                i += 1;
            }
        }
        i += 1; // closing quote
        out.push(String::from_utf8_lossy(&s).into_owned());
    }
    out
}

/// One record set as listed by Route53 (names lowercased, unescaped, absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub name: String,
    pub rtype: String,
    pub ttl: Option<i64>,
    /// Values as Route53 holds them (TXT values still quoted).
    pub values: Vec<String>,
    /// For alias record sets: the alias target's DNS name.
    pub alias_target: Option<String>,
}

/// A hosted zone (`id` without the `/hostedzone/` prefix, `name` absolute and lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedZone {
    pub id: String,
    pub name: String,
}

impl Route53Admin {
    pub fn new(endpoint: &str) -> Route53Admin {
        let config = aws_sdk_route53::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "acme_rs_stack"))
            .build();
        Route53Admin { client: aws_sdk_route53::Client::from_conf(config) }
    }

    /// The SDK client, for anything not wrapped here.
    pub fn client(&self) -> &aws_sdk_route53::Client {
        &self.client
    }

    /// Creates a hosted zone and returns its id (without `/hostedzone/`).
    pub async fn create_zone(&self, name: &str) -> Result<String> {
        let reference = format!("acme-rs-{}-{}", std::process::id(), crate::process::free_port());
        let out = self
            .client
            .create_hosted_zone()
            .name(fqdn(name))
            .caller_reference(reference)
            .send()
            .await
            .with_context(|| format!("CreateHostedZone {name}"))?;
        let zone = out.hosted_zone().ok_or_else(|| anyhow!("CreateHostedZone: no zone"))?;
        Ok(strip_zone_prefix(zone.id()))
    }

    /// All hosted zones.
    pub async fn zones(&self) -> Result<Vec<HostedZone>> {
        let mut zones = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_hosted_zones()
                .set_marker(marker.clone())
                .send()
                .await
                .context("ListHostedZones")?;
            zones.extend(out.hosted_zones().iter().map(|z| HostedZone {
                id: strip_zone_prefix(z.id()),
                name: fqdn(&unescape_name(z.name())),
            }));
            match (out.is_truncated(), out.next_marker()) {
                (true, Some(m)) => marker = Some(m.to_string()),
                _ => return Ok(zones),
            }
        }
    }

    /// Every record set of a zone.
    pub async fn list_records(&self, zone_id: &str) -> Result<Vec<RecordSet>> {
        let mut sets = Vec::new();
        let mut start: Option<(String, RrType)> = None;
        loop {
            let mut req = self.client.list_resource_record_sets().hosted_zone_id(zone_id);
            if let Some((name, t)) = start.take() {
                req = req.start_record_name(name).start_record_type(t);
            }
            let out = req.send().await.with_context(|| format!("ListResourceRecordSets {zone_id}"))?;
            sets.extend(out.resource_record_sets().iter().map(|s| RecordSet {
                name: fqdn(&unescape_name(s.name())),
                rtype: s.r#type().as_str().to_string(),
                ttl: s.ttl(),
                values: s.resource_records().iter().map(|r| r.value().to_string()).collect(),
                alias_target: s.alias_target().map(|a| fqdn(a.dns_name())),
            }));
            match (out.is_truncated(), out.next_record_name(), out.next_record_type()) {
                (true, Some(n), Some(t)) => start = Some((n.to_string(), t.clone())),
                _ => return Ok(sets),
            }
        }
    }

    /// The zone whose name is the longest suffix of `fqdn`.
    pub async fn zone_for(&self, name: &str) -> Result<Option<HostedZone>> {
        let name = fqdn(name);
        Ok(self
            .zones()
            .await?
            .into_iter()
            .filter(|z| name == z.name || name.ends_with(&format!(".{}", z.name)))
            .max_by_key(|z| z.name.len()))
    }

    /// The TXT strings at `fqdn` (quotes stripped; a value of several strings is concatenated),
    /// empty when there is no such record set.
    pub async fn txt_values(&self, name: &str) -> Result<Vec<String>> {
        let name = fqdn(name);
        let zone = self.zone_for(&name).await?.ok_or_else(|| anyhow!("no hosted zone holds {name}"))?;
        Ok(self
            .list_records(&zone.id)
            .await?
            .into_iter()
            .filter(|s| s.name == name && s.rtype == "TXT")
            .flat_map(|s| s.values)
            .map(|v| parse_txt_value(&v).concat())
            .collect())
    }

    /// Replaces the TXT record set at `fqdn` with `values` (unquoted; quoting is done here),
    /// TTL 60.
    pub async fn upsert_txt(&self, name: &str, values: &[&str]) -> Result<()> {
        let name = fqdn(name);
        let zone = self.zone_for(&name).await?.ok_or_else(|| anyhow!("no hosted zone holds {name}"))?;
        let mut set = ResourceRecordSet::builder().name(&name).r#type(RrType::Txt).ttl(60);
        for v in values {
            let quoted = format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
            set = set.resource_records(ResourceRecord::builder().value(quoted).build()?);
        }
        self.change(&zone.id, ChangeAction::Upsert, set.build()?).await
    }

    /// Upserts an A record set.
    pub async fn upsert_a(&self, name: &str, ips: &[std::net::Ipv4Addr]) -> Result<()> {
        let name = fqdn(name);
        let zone = self.zone_for(&name).await?.ok_or_else(|| anyhow!("no hosted zone holds {name}"))?;
        let mut set = ResourceRecordSet::builder().name(&name).r#type(RrType::A).ttl(60);
        for ip in ips {
            set = set.resource_records(ResourceRecord::builder().value(ip.to_string()).build()?);
        }
        self.change(&zone.id, ChangeAction::Upsert, set.build()?).await
    }

    /// Upserts a CNAME record set.
    pub async fn upsert_cname(&self, name: &str, target: &str) -> Result<()> {
        let name = fqdn(name);
        let zone = self.zone_for(&name).await?.ok_or_else(|| anyhow!("no hosted zone holds {name}"))?;
        let set = ResourceRecordSet::builder()
            .name(&name)
            .r#type(RrType::Cname)
            .ttl(60)
            .resource_records(ResourceRecord::builder().value(fqdn(target)).build()?)
            .build()?;
        self.change(&zone.id, ChangeAction::Upsert, set).await
    }

    /// Deletes the TXT record set at `fqdn` if there is one.
    pub async fn delete_txt(&self, name: &str) -> Result<()> {
        let name = fqdn(name);
        let zone = self.zone_for(&name).await?.ok_or_else(|| anyhow!("no hosted zone holds {name}"))?;
        let Some(existing) = self
            .list_records(&zone.id)
            .await?
            .into_iter()
            .find(|s| s.name == name && s.rtype == "TXT")
        else {
            return Ok(());
        };
        let mut set = ResourceRecordSet::builder()
            .name(&name)
            .r#type(RrType::Txt)
            .ttl(existing.ttl.unwrap_or(60));
        for v in existing.values {
            set = set.resource_records(ResourceRecord::builder().value(v).build()?);
        }
        self.change(&zone.id, ChangeAction::Delete, set.build()?).await
    }

    async fn change(&self, zone_id: &str, action: ChangeAction, set: ResourceRecordSet) -> Result<()> {
        let batch = ChangeBatch::builder()
            .changes(Change::builder().action(action).resource_record_set(set).build()?)
            .build()?;
        self.client
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch)
            .send()
            .await
            .with_context(|| format!("ChangeResourceRecordSets {zone_id}"))?;
        Ok(())
    }
}

fn strip_zone_prefix(id: &str) -> String {
    id.trim_start_matches("/hostedzone/").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_values_are_unquoted() {
        assert_eq!(parse_txt_value("\"abc\""), vec!["abc"]);
        assert_eq!(parse_txt_value("\"a b\" \"c\""), vec!["a b", "c"]);
        assert_eq!(parse_txt_value(r#""q\"x\\y""#), vec!["q\"x\\y"]);
        assert_eq!(parse_txt_value(r#""\065""#), vec!["A"]);
        assert_eq!(parse_txt_value("plain"), vec!["plain"]);
    }

    #[test]
    fn names_are_unescaped() {
        assert_eq!(unescape_name("\\052.Example.test."), "*.example.test.");
        assert_eq!(fqdn("a.b"), "a.b.");
    }
}
