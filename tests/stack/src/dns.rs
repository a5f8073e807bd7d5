//! The project's own authoritative DNS server for the zones a Route53 API holds.
//!
//! Every query reads the zone from the Route53 API (no cache), so a TXT record written through
//! the API is visible at once, exactly as Pebble and the module's propagation check will see it.
//!
//! Answers, for a name inside a hosted zone (the longest matching one), with AA set:
//! - SOA and NS at the apex are synthesized (`ns1.<zone>`, `hostmaster.<zone>`); Route53's own
//!   SOA/NS sets (pointing at AWS's name servers) are ignored;
//! - TXT, A, AAAA, CNAME and MX from the zone's record sets (TXT values unquoted), following a
//!   CNAME inside the zone; `*.` wildcard record sets match as in RFC 4592 (closest encloser);
//! - A for any name in the zone without an A or CNAME record set: 127.0.0.1;
//! - NOERROR with no answer (SOA in authority) for existing names lacking the type, NXDOMAIN
//!   (SOA in authority) for names without any record set;
//! - REFUSED for names outside all hosted zones, SERVFAIL when the API can't be read.
//!
//! Other record types (CAA, SRV, alias records, ...) are not served: NODATA.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::moto::{fqdn, parse_txt_value, RecordSet, Route53Admin};

/// TTL of synthesized records (SOA, NS, the default A) and the SOA's negative-caching TTL:
/// short, so that nobody caches a "not there yet" for long.
const SYNTH_TTL: u32 = 1;
/// The largest UDP answer we send to a client that sent EDNS (RFC 9715 recommends 1232).
const EDNS_PAYLOAD: u16 = 1232;

/// Serves DNS on `udp` and `tcp` (usually the same port) from the Route53 API at
/// `route53_endpoint`, until the future is dropped.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, route53_endpoint: &str) -> Result<()> {
    let admin = Arc::new(Route53Admin::new(route53_endpoint));
    let udp = Arc::new(udp);
    let tcp_task = {
        let admin = admin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else { continue };
                tokio::spawn(serve_tcp(stream, admin.clone()));
            }
        })
    };
    // Abort the TCP acceptor when this future is dropped or returns.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _tcp_guard = AbortOnDrop(tcp_task);

    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = match udp.recv_from(&mut buf).await {
            Ok(x) => x,
            // e.g. ICMP port unreachable from an earlier reply: keep serving.
            Err(_) => continue,
        };
        let packet = buf[..len].to_vec();
        let (udp, admin) = (udp.clone(), admin.clone());
        tokio::spawn(async move {
            if let Some(reply) = handle(&packet, &admin, true).await {
                let _ = udp.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(mut stream: TcpStream, admin: Arc<Route53Admin>) {
    loop {
        let mut len = [0u8; 2];
        // Idle connections are closed after a while; a client may send several queries.
        match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Some(reply) = handle(&packet, &admin, false).await else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Decodes a query and encodes the answer; `None` for packets not worth answering.
async fn handle(packet: &[u8], admin: &Route53Admin, udp: bool) -> Option<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) if packet.len() >= 2 => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
        }
        Err(_) => return None,
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let resp = answer(&req, admin).await;
    let bytes = resp.to_vec().ok()?;
    let limit = match &req.edns {
        Some(e) => e.max_payload().clamp(512, EDNS_PAYLOAD) as usize,
        None => 512,
    };
    if udp && bytes.len() > limit {
        // Sets TC: the client retries over TCP.
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// Builds the response to one query.
pub async fn answer(req: &Message, admin: &Route53Admin) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.edns = Some(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp;
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    match lookup(q, admin).await {
        Ok(Lookup::Refused) => resp.metadata.response_code = ResponseCode::Refused,
        Ok(Lookup::Found { code, answers, authority, additional }) => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = code;
            resp.answers = answers;
            resp.authorities = authority;
            resp.additionals = additional;
        }
        Err(_) => resp.metadata.response_code = ResponseCode::ServFail,
    }
    resp
}

enum Lookup {
    Refused,
    Found { code: ResponseCode, answers: Vec<Record>, authority: Vec<Record>, additional: Vec<Record> },
}

/// One hosted zone's data, as the DNS sees it.
struct Zone {
    /// Absolute, lowercase, e.g. `example.test.`.
    name: String,
    sets: Vec<RecordSet>,
}

impl Zone {
    fn contains(&self, name: &str) -> bool {
        name == self.name || name.ends_with(&format!(".{}", self.name))
    }

    fn ns_name(&self) -> String {
        format!("ns1.{}", self.name)
    }

    /// Record sets served from the API: Route53's own apex SOA/NS are replaced by ours.
    fn served_sets(&self) -> impl Iterator<Item = &RecordSet> {
        self.sets.iter().filter(|s| !(s.rtype == "SOA" || (s.rtype == "NS" && s.name == self.name)))
    }

    /// Whether `name` owns anything or is an empty non-terminal above something that does.
    fn name_exists(&self, name: &str) -> bool {
        name == self.name
            || name == self.ns_name()
            || self.served_sets().any(|s| s.name == name || s.name.ends_with(&format!(".{name}")))
    }

    /// The owner name whose record sets answer for `name`: itself if it exists, otherwise the
    /// wildcard `*.<closest encloser>` if there is one (RFC 4592).
    fn source_name(&self, name: &str) -> Option<String> {
        if self.name_exists(name) {
            return Some(name.to_string());
        }
        let mut ancestor = name;
        while let Some((_, parent)) = ancestor.split_once('.') {
            if parent.is_empty() || !self.contains(parent) {
                break;
            }
            if self.name_exists(parent) {
                let wildcard = format!("*.{parent}");
                return self.served_sets().any(|s| s.name == wildcard).then_some(wildcard);
            }
            ancestor = parent;
        }
        None
    }

    fn soa(&self) -> Result<Record> {
        let origin = Name::from_ascii(&self.name)?;
        let soa = SOA::new(
            Name::from_ascii(self.ns_name())?,
            Name::from_ascii(format!("hostmaster.{}", self.name))?,
            1,
            3600,
            600,
            86400,
            SYNTH_TTL,
        );
        Ok(Record::from_rdata(origin, SYNTH_TTL, RData::SOA(soa)))
    }
}

/// RData for one value of a Route53 record set, for the types we serve.
fn rdata(rtype: &str, value: &str) -> Option<RData> {
    Some(match rtype {
        "A" => RData::A(A(value.trim().parse().ok()?)),
        "AAAA" => RData::AAAA(AAAA(value.trim().parse().ok()?)),
        "TXT" => RData::TXT(TXT::new(parse_txt_value(value))),
        "CNAME" => RData::CNAME(CNAME(Name::from_ascii(fqdn(value.trim())).ok()?)),
        "MX" => {
            let (pref, host) = value.trim().split_once(char::is_whitespace)?;
            RData::MX(MX::new(pref.parse().ok()?, Name::from_ascii(fqdn(host.trim())).ok()?))
        }
        _ => return None,
    })
}

/// The records of type `t` among `sets`, owned by `owner`.
fn records(sets: &[&RecordSet], t: &str, owner: &Name) -> Vec<Record> {
    sets.iter()
        .filter(|s| s.rtype == t)
        .flat_map(|s| {
            let ttl = s.ttl.unwrap_or(60).clamp(0, i64::from(u32::MAX)) as u32;
            s.values.iter().filter_map(move |v| rdata(t, v).map(|d| Record::from_rdata(owner.clone(), ttl, d)))
        })
        .collect()
}

fn lower_fqdn(name: &Name) -> String {
    fqdn(&name.to_ascii())
}

async fn lookup(q: &Query, admin: &Route53Admin) -> Result<Lookup> {
    let qname = lower_fqdn(q.name());
    let Some(hz) = admin
        .zones()
        .await?
        .into_iter()
        .filter(|z| qname == z.name || qname.ends_with(&format!(".{}", z.name)))
        .max_by_key(|z| z.name.len())
    else {
        return Ok(Lookup::Refused);
    };
    let zone = Zone { sets: admin.list_records(&hz.id).await?, name: hz.name };
    let qtype = q.query_type();

    let mut answers = Vec::new();
    let mut additional = Vec::new();
    // The owner name as it appears in the answer: the query's own spelling first, then each
    // CNAME target in turn.
    let mut owner = q.name().clone();
    let mut exists = false;
    for _hop in 0..8 {
        let name = lower_fqdn(&owner);
        if !zone.contains(&name) {
            break; // CNAME out of the zone: the client follows it elsewhere.
        }
        let source = zone.source_name(&name);
        exists |= source.is_some();
        let sets: Vec<&RecordSet> = match &source {
            Some(src) => zone.served_sets().filter(|s| &s.name == src).collect(),
            None => Vec::new(),
        };

        // Synthesized apex records.
        if name == zone.name && matches!(qtype, RecordType::SOA | RecordType::NS) {
            if qtype == RecordType::SOA {
                let mut soa = zone.soa()?;
                soa.name = owner.clone();
                answers.push(soa);
            } else {
                let ns = Name::from_ascii(zone.ns_name())?;
                answers.push(Record::from_rdata(owner.clone(), SYNTH_TTL, RData::NS(NS(ns.clone()))));
                additional.push(Record::from_rdata(ns, SYNTH_TTL, RData::A(A(Ipv4Addr::LOCALHOST))));
            }
            break;
        }

        let cnames = records(&sets, "CNAME", &owner);
        if qtype != RecordType::CNAME && !cnames.is_empty() {
            let target = match &cnames[0].data {
                RData::CNAME(c) => c.0.clone(),
                _ => unreachable!(),
            };
            answers.extend(cnames.into_iter().take(1));
            owner = target;
            continue;
        }
        let type_name = qtype.to_string();
        let mut found = records(&sets, &type_name, &owner);
        if found.is_empty() && qtype == RecordType::A {
            // Every name in a zone points at this machine unless the zone says otherwise.
            found.push(Record::from_rdata(owner.clone(), SYNTH_TTL, RData::A(A(Ipv4Addr::LOCALHOST))));
            exists = true;
        }
        answers.extend(found);
        break;
    }

    let code = if answers.is_empty() && !exists { ResponseCode::NXDomain } else { ResponseCode::NoError };
    // Negative answers (and only those) carry the SOA, for negative caching (RFC 2308).
    let authority = if answers.is_empty() { vec![zone.soa()?] } else { Vec::new() };
    Ok(Lookup::Found { code, answers, authority, additional })
}

/// The DNS server running on its own thread and tokio runtime, on 127.0.0.1:<free port> for
/// UDP and TCP; stopped and joined on drop.
pub struct DnsServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Starts serving the zones of the Route53 API at `route53_endpoint`.
    pub fn start(route53_endpoint: &str) -> Result<DnsServer> {
        // Bind with std first (retrying if a port was taken in between), so that errors come
        // back here and the server answers as soon as this returns.
        let (udp, tcp) = bind_pair()?;
        let addr = udp.local_addr()?;
        let endpoint = route53_endpoint.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("acme-rs-testdns-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("DNS server runtime");
                rt.block_on(async move {
                    let udp = UdpSocket::from_std(udp).expect("UDP socket");
                    let tcp = TcpListener::from_std(tcp).expect("TCP listener");
                    tokio::select! {
                        r = serve(udp, tcp, &endpoint) => {
                            if let Err(e) = r { eprintln!("acme-rs test DNS server: {e:#}"); }
                        }
                        _ = rx => {}
                    }
                });
                // Don't wait for in-flight queries (e.g. stuck on a dead API).
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(DnsServer { addr, shutdown: Some(tx), thread: Some(thread) })
    }

    /// `127.0.0.1:<port>`, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free loopback port, non-blocking for tokio.
pub fn bind_pair() -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..10 {
        let port = crate::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match (std::net::UdpSocket::bind(addr), std::net::TcpListener::bind(addr)) {
            (Ok(u), Ok(t)) => {
                u.set_nonblocking(true)?;
                t.set_nonblocking(true)?;
                return Ok((u, t));
            }
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    Err(anyhow!("binding a DNS port: {:?}", last))
}

/// Sends one query for `name`/`rtype` to `server` over UDP (or TCP when `tcp`) and returns the
/// decoded response. Times out after 5 s.
pub async fn dns_query(server: SocketAddr, name: &str, rtype: RecordType, tcp: bool) -> Result<Message> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = false;
    msg.add_query(Query::query(Name::from_ascii(fqdn(name))?, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    msg.set_edns(edns);
    let id = msg.metadata.id;
    let bytes = msg.to_vec()?;
    let exchange = async {
        if tcp {
            let mut s = TcpStream::connect(server).await?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut resp).await?;
            anyhow::Ok(resp)
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").await?;
            s.connect(server).await?;
            s.send(&bytes).await?;
            let mut buf = vec![0u8; 65535];
            let n = s.recv(&mut buf).await?;
            buf.truncate(n);
            anyhow::Ok(buf)
        }
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("DNS query {name} {rtype} to {server} timed out"))??;
    let resp = Message::from_vec(&raw)?;
    if resp.metadata.id != id {
        bail!("DNS response id mismatch");
    }
    Ok(resp)
}

/// The TXT strings in a response's answer section (each record's strings concatenated).
pub fn txt_strings(resp: &Message) -> Vec<String> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>()),
            _ => None,
        })
        .collect()
}
