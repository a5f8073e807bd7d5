//! Configuration checking against a real apache2: a configuration using every directive passes
//! `apache2 -t` without any network traffic, and each bad case fails it with its own message
//! naming the directive and the problem.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use acme_rs_stack::{module_path, Apache, ApacheOptions};

fn check(extra_conf: &str) -> (bool, String) {
    let out = Apache::check_config(&ApacheOptions {
        module: Some(module_path()),
        extra_conf: extra_conf.to_string(),
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_directive_passes_configtest_without_network() {
    // Local sockets stand in for the CA, the Route53 API and the DNS resolver: if checking the
    // configuration touched the network, they would see it.
    let ca = TcpListener::bind("127.0.0.1:0").unwrap();
    let r53 = TcpListener::bind("127.0.0.1:0").unwrap();
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    ca.set_nonblocking(true).unwrap();
    r53.set_nonblocking(true).unwrap();
    dns.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let hmac_file = dir.path().join("eab.hmac");
    std::fs::write(&hmac_file, "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw\n").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n").unwrap();
    let creds = dir.path().join("aws-credentials");
    std::fs::write(&creds, "[default]\naws_access_key_id = AKIDTEST\naws_secret_access_key = secret\n").unwrap();

    let conf = format!(
        r#"
ACMEServer https://127.0.0.1:{ca}/dir
ACMEServerCA {ca_file}
ACMEEmail hostmaster@example.test
ACMEAcceptTOS on
ACMEExternalAccountBinding kid-1 file:{hmac}
ACMEKeyType ec256
ACMEStore acme-store
ACMERenewBefore 30d
ACMECheckInterval 6h
ACMEDNSProvider route53
ACMERoute53Region eu-west-1
ACMERoute53Endpoint http://127.0.0.1:{r53}
ACMERoute53Profile acme
ACMERoute53CredentialsFile {creds}
ACMERoute53AssumeRole arn:aws:iam::123456789012:role/acme external-id-1
ACMERoute53HostedZone example.test Z0123456789
ACMEDNSResolver {dns} 127.0.0.1
ACMEPropagationTimeout 90s
ACMEGracefulRestart off
ACMERenewHook /bin/true --flag
ACMEProfile tlsserver
ACMEARI off
ACMEStatus on
ACMEDomain static.example.test
<VirtualHost 127.0.0.1:*>
    ServerName example.test
    ACMEDomain example.test *.example.test
    ACMEKeyType rsa3072
    ACMERenewBefore 33%
    ACMEProfile shortlived
</VirtualHost>
"#,
        ca = ca.local_addr().unwrap().port(),
        ca_file = ca_file.display(),
        hmac = hmac_file.display(),
        r53 = r53.local_addr().unwrap().port(),
        creds = creds.display(),
        dns = dns.local_addr().unwrap(),
    );
    let (ok, out) = check(&conf);
    assert!(ok, "apache2 -t failed:\n{out}");
    assert!(out.contains("Syntax OK"), "{out}");

    assert!(ca.accept().is_err(), "configtest connected to the CA");
    assert!(r53.accept().is_err(), "configtest connected to the Route53 API");
    let mut buf = [0u8; 512];
    assert!(dns.recv_from(&mut buf).is_err(), "configtest sent a DNS query");
    // The HMAC must not appear in anything apache2 -t prints.
    assert!(!out.contains("c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw"));
}

/// (configuration, fragments that the error output must contain). Every case is wrong in
/// exactly one way.
const BAD_CASES: &[(&str, &[&str])] = &[
    ("ACMEDomain exa_mple.test", &["ACMEDomain", "exa_mple.test", "'_'"]),
    ("ACMEDomain a..example.test", &["ACMEDomain", "a..example.test", "empty label"]),
    (
        "ACMEDomain aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.test",
        &["ACMEDomain", "63"],
    ),
    ("ACMEDomain LONGNAME", &["ACMEDomain", "253"]),
    ("ACMEDomain www.*.example.test", &["ACMEDomain", "www.*.example.test", "*"]),
    ("ACMEDomain *", &["ACMEDomain", "*"]),
    ("ACMEDomain 192.0.2.1", &["ACMEDomain", "192.0.2.1", "IP address"]),
    ("ACMEDomain 2001:db8::1", &["ACMEDomain", "2001:db8::1", "IP address"]),
    ("ACMEDomain example.test\nACMEDomain www.example.test example.test", &["ACMEDomain", "example.test", "two ACMEDomain"]),
    ("ACMEDomain example.test example.test", &["ACMEDomain", "example.test"]),
    ("ACMEDomain", &["ACMEDomain"]),
    ("ACMEKeyType rsa1024", &["ACMEKeyType", "rsa1024"]),
    ("ACMERenewBefore 10x", &["ACMERenewBefore", "10x"]),
    ("ACMERenewBefore 150%", &["ACMERenewBefore", "150%"]),
    ("ACMECheckInterval 12", &["ACMECheckInterval", "12"]),
    ("ACMEPropagationTimeout soon", &["ACMEPropagationTimeout", "soon"]),
    ("ACMEServer http://acme.example.test/directory", &["ACMEServer", "https"]),
    ("ACMEServer letsencrypt-production", &["ACMEServer", "letsencrypt-production"]),
    ("ACMEExternalAccountBinding kid-1 not+base64/url", &["ACMEExternalAccountBinding", "base64url"]),
    ("ACMEExternalAccountBinding kid-1 file:/nonexistent/eab.hmac", &["ACMEExternalAccountBinding", "/nonexistent/eab.hmac"]),
    ("ACMEExternalAccountBinding kid-1", &["ACMEExternalAccountBinding"]),
    ("ACMEDNSResolver ns1.example.test", &["ACMEDNSResolver", "ns1.example.test"]),
    ("ACMEDNSResolver 127.0.0.1:99999", &["ACMEDNSResolver", "127.0.0.1:99999"]),
    ("ACMEAcceptTOS yes", &["ACMEAcceptTOS", "yes", "on", "off"]),
    ("ACMEGracefulRestart 1", &["ACMEGracefulRestart", "on", "off"]),
    ("ACMEARI maybe", &["ACMEARI", "on", "off"]),
    ("ACMEStatus enabled", &["ACMEStatus", "on", "off"]),
    ("ACMEDNSProvider cloudflare", &["ACMEDNSProvider", "cloudflare"]),
    ("<VirtualHost 127.0.0.1:*>\nACMEServer letsencrypt\n</VirtualHost>", &["ACMEServer", "VirtualHost"]),
    ("<VirtualHost 127.0.0.1:*>\nACMEStore /tmp/x\n</VirtualHost>", &["ACMEStore", "VirtualHost"]),
    ("<VirtualHost 127.0.0.1:*>\nACMEExternalAccountBinding kid-1 c2VjcmV0\n</VirtualHost>", &["ACMEExternalAccountBinding", "VirtualHost"]),
    ("<Directory />\nACMEDomain example.test\n</Directory>", &["ACMEDomain", "not allowed"]),
];

#[test]
fn each_bad_directive_fails_configtest_with_its_own_message() {
    let long_name = format!("{}.example.test", ["abcdefghij"; 25].join("."));
    assert!(long_name.len() > 253);
    let mut messages = Vec::new();
    for (conf, fragments) in BAD_CASES {
        let conf = conf.replace("LONGNAME", &long_name);
        let (ok, out) = check(&conf);
        assert!(!ok, "apache2 -t accepted a bad configuration:\n{conf}\n{out}");
        for fragment in *fragments {
            assert!(out.contains(fragment), "for\n{conf}\nexpected {fragment:?} in:\n{out}");
        }
        // The problem itself: the line(s) after Apache's "Syntax error on line N" header.
        let message: String = out
            .lines()
            .filter(|l| !l.starts_with("AH00526") && !l.contains("Configuration Failed") && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        messages.push((conf, message));
    }
    for (i, (conf_a, msg_a)) in messages.iter().enumerate() {
        for (conf_b, msg_b) in &messages[i + 1..] {
            assert_ne!(msg_a, msg_b, "two bad cases gave the same message:\n{conf_a}\n{conf_b}");
        }
    }
}
