//! The stack comes up and its parts answer as the module's tests expect.

use acme_rs_stack::dns::txt_strings;
use acme_rs_stack::hickory_proto::op::ResponseCode;
use acme_rs_stack::hickory_proto::rr::{RData, RecordType};
use acme_rs_stack::{dns_query, http_get, Apache, ApacheOptions, Stack};

async fn check_stack(stack: &Stack, zone: &str) {
    // Pebble: directory over HTTPS, trusting the generated CA; EAB required.
    let client = reqwest_like_get(stack).await;
    assert!(client["newAccount"].as_str().unwrap().starts_with("https://127.0.0.1:"));
    assert!(client["newOrder"].as_str().is_some());
    assert_eq!(client["meta"]["externalAccountRequired"], serde_json::Value::Bool(true));
    let roots = stack.pebble.issuer_roots_pem().await;
    assert!(roots.contains("BEGIN CERTIFICATE"), "{roots}");

    // Route53 through moto, DNS through our server.
    let r53 = stack.route53();
    let zone_id = r53.create_zone(zone).await.unwrap();
    assert!(!zone_id.is_empty());
    let dns = stack.dns.addr();

    let soa = dns_query(dns, zone, RecordType::SOA, false).await.unwrap();
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.metadata.authoritative, "AA must be set");
    assert!(matches!(soa.answers[0].data, RData::SOA(_)), "{soa:?}");

    let ns = dns_query(dns, zone, RecordType::NS, true).await.unwrap();
    assert!(matches!(&ns.answers[0].data, RData::NS(n) if n.0.to_ascii() == format!("ns1.{zone}.")), "{ns:?}");

    let chal = format!("_acme-challenge.{zone}");
    let before = dns_query(dns, &chal, RecordType::TXT, false).await.unwrap();
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(before.authorities[0].data, RData::SOA(_)), "SOA in authority: {before:?}");

    r53.upsert_txt(&chal, &["token-one", "token-two"]).await.unwrap();
    let mut stored = r53.txt_values(&chal).await.unwrap();
    stored.sort();
    assert_eq!(stored, vec!["token-one", "token-two"]);
    for tcp in [false, true] {
        let resp = dns_query(dns, &chal, RecordType::TXT, tcp).await.unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.metadata.authoritative);
        let mut got = txt_strings(&resp);
        got.sort();
        assert_eq!(got, vec!["token-one", "token-two"], "tcp={tcp}");
    }

    // An existing name without the asked type: NOERROR, empty.
    let nodata = dns_query(dns, &chal, RecordType::MX, false).await.unwrap();
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());

    // A for any name in the zone.
    let a = dns_query(dns, &format!("www.{zone}"), RecordType::A, false).await.unwrap();
    assert!(matches!(&a.answers[0].data, RData::A(ip) if ip.0 == std::net::Ipv4Addr::LOCALHOST), "{a:?}");

    // Outside every zone: REFUSED.
    let out = dns_query(dns, "example.org", RecordType::TXT, false).await.unwrap();
    assert_eq!(out.metadata.response_code, ResponseCode::Refused);
    let out = dns_query(dns, "example.org", RecordType::SOA, true).await.unwrap();
    assert_eq!(out.metadata.response_code, ResponseCode::Refused);
}

/// GET Pebble's directory trusting its generated TLS CA.
async fn reqwest_like_get(stack: &Stack) -> serde_json::Value {
    let ca = std::fs::read(stack.pebble.tls_ca_pem_path()).unwrap();
    let body = acme_rs_stack::http::https_get_trusting(&stack.pebble.directory_url(), &ca).await.unwrap();
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stack_comes_up() {
    let stack = Stack::start().await.unwrap();
    check_stack(&stack, "example.test").await;
    let conf = stack.acme_conf();
    assert!(conf.contains(&format!("ACMEServer {}", stack.pebble.directory_url())));
    assert!(conf.contains("ACMEExternalAccountBinding kid-1 "));
    assert!(conf.contains(&format!("ACMEDNSResolver 127.0.0.1:{}", stack.dns.port())));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_stacks_in_parallel() {
    let (a, b) = tokio::join!(Stack::start(), Stack::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    let ports = |s: &Stack| vec![s.pebble.port(), s.pebble.management_port(), s.dns.port(), s.moto.port()];
    let (pa, pb) = (ports(&a), ports(&b));
    for p in &pa {
        assert!(!pb.contains(p), "port {p} shared: {pa:?} {pb:?}");
    }
    tokio::join!(check_stack(&a, "example.test"), check_stack(&b, "example.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_restarts_on_the_same_port() {
    let mut stack = Stack::start().await.unwrap();
    let url = stack.pebble.directory_url();
    stack.pebble.stop();
    let ca = std::fs::read(stack.pebble.tls_ca_pem_path()).unwrap();
    assert!(acme_rs_stack::http::https_get_trusting(&url, &ca).await.is_err());
    stack.pebble.restart().await.unwrap();
    assert_eq!(stack.pebble.directory_url(), url);
    assert!(acme_rs_stack::http::https_get_trusting(&url, &ca).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn apache_without_module_serves_and_stops() {
    let mut apache = Apache::start(ApacheOptions::default()).await.unwrap();
    let (status, body) = http_get(&format!("http://127.0.0.1:{}/", apache.http_port())).await;
    assert_eq!(status, 200, "{}", apache.error_log());
    assert!(body.contains("acme_rs_stack"), "{body}");
    let (status, body) = http_get(&format!("http://127.0.0.1:{}/server-status?auto", apache.http_port())).await;
    assert_eq!(status, 200);
    assert!(body.contains("ParentServerConfigGeneration"), "{body}");
    let generation = apache.generation().await.unwrap();
    apache.graceful().await.unwrap();
    assert!(apache.generation().await.unwrap() > generation);
    assert!(apache.stop(), "clean stop; error log:\n{}", apache.error_log());
}

#[test]
fn apache_check_config_reports_errors() {
    let ok = Apache::check_config(&ApacheOptions::default());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = Apache::check_config(&ApacheOptions { extra_conf: "NoSuchDirective on\n".into(), ..Default::default() });
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NoSuchDirective"));
}

#[tokio::test(flavor = "multi_thread")]
async fn testdns_binary_serves_moto_zones() {
    let moto = acme_rs_stack::Moto::start().await.unwrap();
    moto.admin().create_zone("bin.test").await.unwrap();
    let dir = acme_rs_stack::TestDir::new("testdns-bin").unwrap();
    let port = acme_rs_stack::free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_acme-rs-testdns"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--route53", &moto.endpoint()]);
    let mut child = acme_rs_stack::ChildGuard::spawn("acme-rs-testdns", cmd, &dir.join("dns.log")).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut last = None;
    for _ in 0..50 {
        child.ensure_running().unwrap();
        match dns_query(addr, "bin.test", RecordType::SOA, false).await {
            Ok(m) => {
                last = Some(m);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let soa = last.expect("the binary answers");
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.metadata.authoritative);
}

#[tokio::test(flavor = "multi_thread")]
async fn apache_serves_a_given_certificate_over_https() {
    let (ca, leaf, key) = acme_rs_stack::pebble::make_tls_cert().unwrap();
    let dir = acme_rs_stack::TestDir::new("certs").unwrap();
    std::fs::write(dir.join("cert.pem"), &leaf).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let body = format!(
        "SSLCertificateFile {}\nSSLCertificateKeyFile {}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let opts = ApacheOptions { extra_conf: acme_rs_stack::ssl_vhost("localhost", &["www.localhost"], &body), ..Default::default() };
    let apache = Apache::start(opts).await.unwrap();
    let resp = apache.https_get("localhost", "/").await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("acme_rs_stack"));
    assert_eq!(resp.chain_pem().trim(), leaf.trim());
    assert_ne!(ca, leaf);
    let chain = apache.served_chain("www.localhost").await.unwrap();
    assert_eq!(chain, resp.chain);
}
