//! Waits until DNS servers answer with the TXT values we published, before the CA is asked to
//! validate. Speaks DNS itself (hickory-proto messages over UDP, TCP on truncation) so it sees
//! exactly what each server answers, with no cache in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{normalize_name, DnsError, TxtRecord};

/// Longest wait for one answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(1);

/// What one server showed for one name at the last look.
#[derive(Clone, Debug)]
enum Seen {
    Ok,
    Missing(Vec<String>),
    Failed(String),
}

/// Waits until every server shows every value of every record.
///
/// `resolvers` empty: the zone's authoritative servers are discovered (SOA upward from the name
/// through the system resolver, then NS of the apex, then the addresses of the NS hosts).
/// Polls every 250 ms to 1 s; on timeout the error names which server lacked which value.
pub async fn wait_for_txt(records: &[TxtRecord], resolvers: &[SocketAddr], timeout: Duration) -> Result<(), DnsError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in records {
        wanted.entry(normalize_name(&r.fqdn)).or_default().insert(r.value.clone());
    }
    if wanted.is_empty() {
        return Ok(());
    }

    // (server, name) pairs to check.
    let mut checks: Vec<(SocketAddr, String)> = Vec::new();
    if resolvers.is_empty() {
        let mut by_zone: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        for name in wanted.keys() {
            let (apex, servers) = discover(name, deadline).await?;
            let servers = by_zone.entry(apex).or_insert(servers).clone();
            for s in servers {
                checks.push((s, name.clone()));
            }
        }
    } else {
        for name in wanted.keys() {
            for s in resolvers {
                checks.push((*s, name.clone()));
            }
        }
    }

    let mut seen: BTreeMap<(SocketAddr, String), Seen> = BTreeMap::new();
    let mut delay = FIRST_POLL;
    loop {
        let pending: Vec<&(SocketAddr, String)> = checks
            .iter()
            .filter(|c| !matches!(seen.get(*c), Some(Seen::Ok)))
            .collect();
        if pending.is_empty() {
            log::debug!("TXT records visible on all {} server(s) after {:?}", checks.len(), start.elapsed());
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let qt = QUERY_TIMEOUT.min(remaining.max(Duration::from_millis(50)));
        let results = futures_util::future::join_all(pending.iter().map(|(server, name)| {
            let want = &wanted[name];
            async move {
                let res = match query(*server, name, RecordType::TXT, qt).await {
                    Ok(msg) => {
                        if msg.metadata.response_code != ResponseCode::NoError && msg.metadata.response_code != ResponseCode::NXDomain {
                            Seen::Failed(format!("answered {}", msg.metadata.response_code))
                        } else {
                            let have = txt_values(&msg);
                            let missing: Vec<String> = want.iter().filter(|v| !have.contains(*v)).cloned().collect();
                            if missing.is_empty() { Seen::Ok } else { Seen::Missing(missing) }
                        }
                    }
                    Err(e) => Seen::Failed(e),
                };
                ((*server, name.clone()), res)
            }
        }))
        .await;
        for (k, v) in results {
            seen.insert(k, v);
        }
        if checks.iter().all(|c| matches!(seen.get(c), Some(Seen::Ok))) {
            log::debug!("TXT records visible on all {} server(s) after {:?}", checks.len(), start.elapsed());
            return Ok(());
        }
        if Instant::now() + delay >= deadline {
            let mut parts = Vec::new();
            for c in &checks {
                match seen.get(c) {
                    Some(Seen::Ok) => {}
                    Some(Seen::Missing(vals)) => {
                        for v in vals {
                            parts.push(format!("{} lacks {} TXT \"{}\"", c.0, c.1, v));
                        }
                    }
                    Some(Seen::Failed(e)) => parts.push(format!("{} gave no answer for {} TXT ({e}); missing {}", c.0, c.1, quoted_list(&wanted[&c.1]))),
                    None => parts.push(format!("{} not asked for {} TXT", c.0, c.1)),
                }
            }
            return Err(DnsError::PropagationTimeout { waited_secs: start.elapsed().as_secs(), missing: parts.join("; ") });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_POLL);
    }
}

fn quoted_list(vals: &BTreeSet<String>) -> String {
    vals.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
}


/// The TXT values in a response's answer section (each value's strings concatenated).
fn txt_values(msg: &Message) -> BTreeSet<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<String>()),
            _ => None,
        })
        .collect()
}

/// One question to one server: UDP, then TCP when the answer is truncated.
pub(crate) async fn query(server: SocketAddr, name: &str, rtype: RecordType, timeout: Duration) -> Result<Message, String> {
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| format!("invalid name {name}: {e}"))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname, rtype));
    let id = msg.metadata.id;
    let bytes = msg.to_vec().map_err(|e| format!("cannot encode query: {e}"))?;
    let resp = match tokio::time::timeout(timeout, udp_exchange(server, &bytes, id)).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    if !resp.metadata.truncation {
        return Ok(resp);
    }
    match tokio::time::timeout(timeout, tcp_exchange(server, &bytes, id)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no TCP answer within {} ms", timeout.as_millis())),
    }
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let local: SocketAddr = if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(local).await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    sock.connect(server).await.map_err(|e| format!("cannot reach: {e}"))?;
    sock.send(bytes).await.map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| format!("no answer: {e}"))?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response => return Ok(m),
            _ => continue, // stray or malformed datagram: keep waiting
        }
    }
}

async fn tcp_exchange(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let mut s = TcpStream::connect(server).await.map_err(|e| format!("TCP connect failed: {e}"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.map_err(|e| format!("TCP send failed: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| format!("TCP read failed: {e}"))?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.map_err(|e| format!("TCP read failed: {e}"))?;
    let m = Message::from_vec(&buf).map_err(|e| format!("malformed TCP answer: {e}"))?;
    if m.metadata.id != id {
        return Err("TCP answer with a wrong id".into());
    }
    Ok(m)
}

/// The system's resolvers (from /etc/resolv.conf), port 53.
fn system_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver")).then(|| it.next()).flatten()
        })
        .filter_map(|a| a.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
    }
    out
}

/// Asks the system resolvers until one answers.
async fn ask_system(name: &str, rtype: RecordType, deadline: Instant) -> Result<Message, String> {
    let mut last = String::from("no resolver configured");
    for r in system_resolvers() {
        let t = QUERY_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        if t.is_zero() {
            break;
        }
        match query(r, name, rtype, t * 2).await {
            Ok(m) if m.metadata.response_code == ResponseCode::NoError || m.metadata.response_code == ResponseCode::NXDomain => return Ok(m),
            Ok(m) => last = format!("{r} answered {}", m.metadata.response_code),
            Err(e) => last = format!("{r}: {e}"),
        }
    }
    Err(last)
}

/// Finds the zone apex of `name` and the addresses of its authoritative servers.
async fn discover(name: &str, deadline: Instant) -> Result<(String, Vec<SocketAddr>), DnsError> {
    let err = |cause: String| DnsError::NoNameservers { name: name.to_string(), cause };
    // The apex: the first name, walking up, that has an SOA (the SOA in a negative answer's
    // authority section names it directly).
    let mut apex = None;
    let mut candidate = normalize_name(name);
    loop {
        let m = ask_system(&candidate, RecordType::SOA, deadline).await.map_err(|e| err(format!("SOA query for {candidate} failed: {e}")))?;
        let soa_owner = m
            .answers
            .iter()
            .chain(m.authorities.iter())
            .find(|r| r.record_type() == RecordType::SOA)
            .map(|r| normalize_name(&r.name.to_ascii()));
        if let Some(owner) = soa_owner {
            apex = Some(owner);
            break;
        }
        match candidate.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => candidate = parent.to_string(),
            _ => break,
        }
    }
    let apex = apex.ok_or_else(|| err("no SOA record found for it or any parent".into()))?;
    let m = ask_system(&apex, RecordType::NS, deadline).await.map_err(|e| err(format!("NS query for {apex} failed: {e}")))?;
    let ns_names: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(normalize_name(&ns.0.to_ascii())),
            _ => None,
        })
        .collect();
    if ns_names.is_empty() {
        return Err(err(format!("the zone {apex} has no NS records")));
    }
    let mut addrs = BTreeSet::new();
    let mut failures = Vec::new();
    for ns in &ns_names {
        match tokio::time::timeout(QUERY_TIMEOUT * 3, tokio::net::lookup_host((ns.as_str(), 53))).await {
            Ok(Ok(it)) => addrs.extend(it),
            Ok(Err(e)) => failures.push(format!("{ns}: {e}")),
            Err(_) => failures.push(format!("{ns}: address lookup timed out")),
        }
    }
    if addrs.is_empty() {
        return Err(err(format!("no address for the nameservers of {apex} ({})", failures.join("; "))));
    }
    log::debug!("authoritative servers for {apex}: {addrs:?}");
    Ok((apex, addrs.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeout_names_server_and_value() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let recs = [TxtRecord::new("_acme-challenge.example.test", "abc")];
        let start = Instant::now();
        let err = wait_for_txt(&recs, &[addr], Duration::from_millis(600)).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3));
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("\"abc\""), "{msg}");
        assert!(msg.contains("_acme-challenge.example.test"), "{msg}");
    }
}
