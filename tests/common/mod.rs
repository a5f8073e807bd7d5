//! Helpers shared by the integration tests: reading served certificates.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use acme_rs_stack::Apache;
use x509_parser::prelude::*;

/// What a test needs to know about a served leaf certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    pub names: Vec<String>,
    pub serial: String,
    pub issuer: String,
    /// "rsa2048", "ec256", ... as in ACMEKeyType.
    pub key_type: String,
    pub is_fallback: bool,
}

pub fn leaf(chain: &[Vec<u8>]) -> Leaf {
    let (_, cert) = X509Certificate::from_der(&chain[0]).expect("served leaf parses");
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let spki = cert.public_key();
    let key_type = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("rsa{}", rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve.map(|o| o.to_id_string()).as_deref() {
                Some("1.2.840.10045.3.1.7") => "ec256".into(),
                Some("1.3.132.0.34") => "ec384".into(),
                other => format!("ec?{other:?}"),
            }
        }
        _ => "unknown".into(),
    };
    let issuer = cert.issuer().to_string();
    Leaf {
        names,
        serial: cert.raw_serial_as_string(),
        is_fallback: issuer.contains("mod_acme_rs fallback") || cert.subject().to_string().contains("mod_acme_rs fallback"),
        issuer,
        key_type,
    }
}

/// Verifies that each certificate of `chain` is signed by the next and the last by one of
/// `roots_pem` (Pebble's ACME roots).
pub fn verify_chain(chain: &[Vec<u8>], roots_pem: &str) {
    let roots: Vec<Vec<u8>> = ::pem::parse_many(roots_pem).expect("roots PEM").into_iter().map(|p| p.into_contents()).collect();
    let parsed: Vec<X509Certificate> = chain.iter().map(|d| X509Certificate::from_der(d).unwrap().1).collect();
    for pair in parsed.windows(2) {
        pair[0].verify_signature(Some(pair[1].public_key())).expect("each certificate is signed by the next");
    }
    let last = parsed.last().unwrap();
    let signed_by_root = roots.iter().any(|r| {
        let (_, root) = X509Certificate::from_der(r).unwrap();
        last.verify_signature(Some(root.public_key())).is_ok()
    });
    assert!(signed_by_root, "the chain does not lead to Pebble's root");
}

/// Waits until the https port serves a certificate that is not the fallback for `sni`.
pub async fn wait_for_real_certificate(apache: &Apache, sni: &str, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(chain) = apache.served_chain(sni).await {
            if !chain.is_empty() && !leaf(&chain).is_fallback {
                return chain;
            }
        }
        assert!(Instant::now() < deadline, "no real certificate for {sni} after {timeout:?}\n{}", apache.error_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the error log contains `needle`.
pub async fn wait_for_log(apache: &Apache, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = apache.error_log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{needle:?} not logged after {timeout:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
