//! The ACME flow and the DNS-01 pieces against the real local stack: Pebble (EAB required),
//! moto's Route53 API and the project's authoritative DNS server answering from it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use acme_rs_engine::acme::{account, order_certificate, AcmeError, AcmeOptions};
use acme_rs_engine::dns::propagation::wait_for_txt;
use acme_rs_engine::dns::route53::{Route53Options, Route53Provider};
use acme_rs_engine::dns::{DnsError, DnsProvider, TxtRecord};
use acme_rs_stack::{Moto, Route53Admin, Stack};

const CHALLENGE: &str = "_acme-challenge.example.test";

fn b64url_decode(s: &str) -> Vec<u8> {
    // Small decoder, so that the test does not need a base64 crate.
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => panic!("bad base64 {s}"),
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

async fn provider(endpoint: String, credentials: &std::path::Path, pins: Vec<(String, String)>) -> Route53Provider {
    Route53Provider::new(Route53Options {
        region: "us-east-1".into(),
        endpoint: Some(endpoint),
        credentials_file: Some(credentials.to_path_buf()),
        hosted_zones: pins,
        ..Default::default()
    })
    .await
    .expect("Route53 provider")
}

fn acme_options(stack: &Stack) -> AcmeOptions {
    AcmeOptions {
        directory_url: stack.pebble.directory_url(),
        server_ca_pem: Some(stack.pebble.tls_ca_pem().to_string()),
        contact_email: Some("admin@example.test".into()),
        eab: Some((stack.pebble.eab_kid().to_string(), b64url_decode(stack.pebble.eab_hmac()))),
        accept_tos: true,
    }
}

fn csr_for(domains: &[String]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(domains.to_vec()).unwrap();
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// A credentials file with fake keys for a bare moto (the stack has its own).
fn fake_credentials(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("aws-credentials");
    std::fs::write(&p, "[default]\naws_access_key_id = AKIAFAKE\naws_secret_access_key = fake-secret\n").unwrap();
    p
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn issues_apex_and_wildcard_and_cleans_up() {
    let stack = Stack::start().await.expect("stack");
    let r53: Route53Admin = stack.route53();
    r53.create_zone("example.test").await.unwrap();
    // Someone else's value in the same record set: must survive.
    r53.upsert_txt(CHALLENGE, &["foreign-value"]).await.unwrap();

    let dns = provider(stack.moto.endpoint(), stack.credentials_file(), vec![]).await;
    let opts = acme_options(&stack);
    let account_json = stack.dir().join("accounts/account.json");
    let acct = account(&opts, &account_json).await.expect("account");
    let mode = std::fs::metadata(&account_json).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "account file mode");
    // A second call loads the stored account instead of creating one.
    let again = account(&opts, &account_json).await.expect("account reload");
    assert_eq!(again.id(), acct.id());

    let domains = vec!["example.test".to_string(), "*.example.test".to_string()];
    let csr = csr_for(&domains);
    let stages = Mutex::new(Vec::<String>::new());
    let resolvers: [SocketAddr; 1] = [stack.dns.addr()];
    let start = Instant::now();
    let issued = order_certificate(&acct, &domains, &csr, &dns, &resolvers, Duration::from_secs(20), &|s| {
        stages.lock().unwrap().push(s.to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("order failed: {e}\n{}", stack.logs()));
    let took = start.elapsed();
    eprintln!("order for {domains:?} took {took:?}");
    assert!(took < Duration::from_secs(10), "order took {took:?}");

    let stages = stages.into_inner().unwrap();
    assert_eq!(
        stages,
        ["creating order", "publishing 2 TXT records", "waiting for DNS propagation", "validating", "finalizing", "downloading certificate"]
    );
    assert!(issued.url.as_deref().unwrap_or("").starts_with("https://"), "{:?}", issued.url);

    // The chain parses; the leaf covers both names.
    let pems: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(issued.chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    assert!(pems.len() >= 2, "leaf + intermediate expected, got {}", pems.len());
    let leaf = pems[0].parse_x509().unwrap();
    let san = leaf.subject_alternative_name().unwrap().expect("SAN");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(sorted(names), sorted(domains.clone()));

    // Our values are gone, the foreign one stays.
    assert_eq!(r53.txt_values(CHALLENGE).await.unwrap(), vec!["foreign-value".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_eab_hmac_is_reported_clearly() {
    let stack = Stack::start().await.expect("stack");
    let mut opts = acme_options(&stack);
    opts.eab = Some((stack.pebble.eab_kid().to_string(), b"definitely-not-the-key".to_vec()));
    let path = stack.dir().join("bad-eab.json");
    let err = account(&opts, &path).await.unwrap_err();
    assert!(matches!(err, AcmeError::EabRejected { .. }), "{err:?}");
    assert!(
        err.to_string().contains("the CA rejected the External Account Binding (check ACMEExternalAccountBinding's kid and HMAC)"),
        "{err}"
    );
    assert!(!path.exists(), "no account file on failure");

    // And without any EAB: the CA's requirement is named.
    opts.eab = None;
    let err = account(&opts, &path).await.unwrap_err();
    assert!(matches!(err, AcmeError::EabRequired { .. }), "{err:?}");
    assert!(err.to_string().contains("ACMEExternalAccountBinding"), "{err}");
}

#[tokio::test]
async fn terms_not_accepted_refuses_without_network() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: any network use would give another error.
    let opts = AcmeOptions { directory_url: "https://127.0.0.1:1/dir".into(), accept_tos: false, ..Default::default() };
    let err = account(&opts, &dir.path().join("a.json")).await.unwrap_err();
    assert!(matches!(err, AcmeError::TosNotAccepted), "{err:?}");
    assert_eq!(err.to_string(), "the CA's terms of service are not accepted: set ACMEAcceptTOS on");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread")]
async fn name_without_hosted_zone_is_reported_clearly() {
    let moto = Moto::start().await.expect("moto");
    moto.admin().create_zone("example.test").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dns = provider(moto.endpoint(), &fake_credentials(&tmp), vec![]).await;
    let err = dns.publish(&[TxtRecord::new("_acme-challenge.foo.invalid", "v")]).await.unwrap_err();
    assert!(matches!(err, DnsError::NoHostedZone { .. }), "{err:?}");
    assert_eq!(err.to_string(), "no Route53 hosted zone covers 'foo.invalid' (zones in this account: example.test)");
    // A suffix that is not at a label boundary does not count.
    let err = dns.publish(&[TxtRecord::new("_acme-challenge.badexample.test", "v")]).await.unwrap_err();
    assert!(matches!(err, DnsError::NoHostedZone { .. }), "{err:?}");
}

#[tokio::test]
async fn propagation_timeout_names_server_and_value() {
    // A socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let start = Instant::now();
    let err = wait_for_txt(&[TxtRecord::new(CHALLENGE, "expected-value")], &[addr], Duration::from_millis(700)).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(matches!(err, DnsError::PropagationTimeout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()) && msg.contains("\"expected-value\"") && msg.contains(CHALLENGE), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn route53_publish_and_remove_merge_and_keep_foreign_values() {
    let stack = Stack::start().await.expect("stack");
    let r53 = stack.route53();
    let zone_id = r53.create_zone("example.test").await.unwrap();
    r53.upsert_txt(CHALLENGE, &["foreign"]).await.unwrap();
    let dns = provider(stack.moto.endpoint(), stack.credentials_file(), vec![]).await;

    // Apex and wildcard: one name, two values, one call.
    let ours = [TxtRecord::new(CHALLENGE, "value-a"), TxtRecord::new(CHALLENGE, "value-b")];
    dns.publish(&ours).await.unwrap();
    assert_eq!(sorted(r53.txt_values(CHALLENGE).await.unwrap()), ["foreign", "value-a", "value-b"]);
    // Publishing again is a no-op, not a duplicate.
    dns.publish(&ours[..1]).await.unwrap();
    assert_eq!(r53.txt_values(CHALLENGE).await.unwrap().len(), 3);
    // The DNS server (what Pebble sees) shows them.
    wait_for_txt(&ours, &[stack.dns.addr()], Duration::from_secs(5)).await.unwrap();

    dns.remove(&ours[..1]).await.unwrap();
    assert_eq!(sorted(r53.txt_values(CHALLENGE).await.unwrap()), ["foreign", "value-b"]);
    dns.remove(&ours).await.unwrap();
    assert_eq!(r53.txt_values(CHALLENGE).await.unwrap(), ["foreign"]);

    // A set holding only our values is deleted on removal.
    let sub = "_acme-challenge.www.example.test";
    let pinned = provider(stack.moto.endpoint(), stack.credentials_file(), vec![("example.test".into(), format!("/hostedzone/{zone_id}"))]).await;
    pinned.publish(&[TxtRecord::new(sub, "only-ours")]).await.unwrap();
    assert_eq!(r53.txt_values(sub).await.unwrap(), ["only-ours"]);
    pinned.remove(&[TxtRecord::new(sub, "only-ours")]).await.unwrap();
    assert!(r53.txt_values(sub).await.unwrap().is_empty());
    // Removing what is not there is fine.
    pinned.remove(&[TxtRecord::new(sub, "only-ours")]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_order_still_removes_its_records() {
    let stack = Stack::start().await.expect("stack");
    let r53 = stack.route53();
    r53.create_zone("example.test").await.unwrap();
    r53.upsert_txt(CHALLENGE, &["foreign-value"]).await.unwrap();
    let dns = provider(stack.moto.endpoint(), stack.credentials_file(), vec![]).await;
    let acct = account(&acme_options(&stack), &stack.dir().join("account.json")).await.expect("account");

    // The propagation check asks a server that never answers: the order fails there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let domains = vec!["example.test".to_string(), "*.example.test".to_string()];
    let err = order_certificate(&acct, &domains, &csr_for(&domains), &dns, &[silent.local_addr().unwrap()], Duration::from_millis(600), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::Dns(DnsError::PropagationTimeout { .. })), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(r53.txt_values(CHALLENGE).await.unwrap(), vec!["foreign-value".to_string()]);

    // A name outside every hosted zone: a clear error, nothing written.
    let domains = vec!["foo.invalid".to_string()];
    let err = order_certificate(&acct, &domains, &csr_for(&domains), &dns, &[stack.dns.addr()], Duration::from_secs(5), &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no Route53 hosted zone covers 'foo.invalid'"), "{err}");
}
