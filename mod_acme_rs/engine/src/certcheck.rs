//! Checks on a certificate before it replaces the one in use, reading a certificate's facts for
//! status, and the self-signed fallback certificate used until a real one exists.
//!
//! PEM is split by `rustls-pki-types` ([`PemObject`]); X.509 is read by `x509-parser`, whose
//! `verify-aws` feature checks signatures with aws-lc-rs (the same library that makes our keys).

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::keys::{self, KeyError, KeyType, PrivateKey};

/// Why a certificate was refused (or could not be read). Messages are written for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The PEM data holds no `CERTIFICATE` block.
    #[error("no certificate in the PEM data")]
    NoCertificate,
    /// The PEM data could not be split into blocks.
    #[error("the certificate PEM data is malformed: {0}")]
    MalformedPem(String),
    /// A certificate could not be parsed as X.509.
    #[error("certificate {position} in the chain cannot be parsed: {reason}")]
    Malformed { position: usize, reason: String },
    /// The leaf's names are not exactly the names asked for.
    #[error("certificate covers [{}] but [{}] were asked for", .covered.join(", "), .asked.join(", "))]
    NamesMismatch {
        covered: Vec<String>,
        asked: Vec<String>,
    },
    /// The leaf's public key is not the private key's.
    #[error("certificate does not match its private key")]
    KeyMismatch,
    /// `now` is before notBefore.
    #[error("certificate is not valid until {}", rfc3339(*.not_before))]
    NotYetValid { not_before: SystemTime },
    /// `now` is after notAfter.
    #[error("certificate expired at {}", rfc3339(*.not_after))]
    Expired { not_after: SystemTime },
    /// Only the leaf was given: the chain cannot be checked.
    #[error("the certificate came without its issuer certificate")]
    NoIssuer,
    /// A certificate is not signed by the one after it.
    #[error("{}", not_signed_message(*.position))]
    NotSignedByIssuer { position: usize },
    /// A signature uses an algorithm that cannot be verified here.
    #[error(
        "certificate {position} in the chain uses a signature algorithm that cannot be verified"
    )]
    UnsupportedSignature { position: usize },
    /// The leaf's key is not one of the supported key types.
    #[error("the certificate's key is not supported: {0}")]
    UnsupportedKey(String),
    /// The private key could not be used.
    #[error("the private key cannot be used: {0}")]
    Key(String),
}

fn not_signed_message(position: usize) -> String {
    if position == 0 {
        "certificate is not signed by the issuer certificate that came with it".to_string()
    } else {
        format!(
            "intermediate certificate {position} is not signed by the certificate that follows it"
        )
    }
}

/// Formats a time as RFC 3339 in UTC (`2025-01-31T12:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The leaf's DNS subjectAltNames, in the certificate's order.
    pub domains: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial number, uppercase hex without colons (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// The issuer's distinguished name as text, e.g. `C=US, O=Let's Encrypt, CN=R11`.
    pub issuer: String,
    pub key_type: KeyType,
}

/// Splits PEM into DER certificates (other blocks, like keys, are skipped).
pub fn parse_pem_chain(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, CheckError> {
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            // The error's Display may quote input bytes; keep messages short and clean.
            CheckError::MalformedPem(
                match e {
                    rustls_pki_types::pem::Error::MissingSectionEnd { .. } => {
                        "a section has no END line"
                    }
                    rustls_pki_types::pem::Error::IllegalSectionStart { .. } => {
                        "a BEGIN line is malformed"
                    }
                    rustls_pki_types::pem::Error::Base64Decode(_) => "bad base64",
                    rustls_pki_types::pem::Error::SectionTooLarge => "a section is too large",
                    _ => "unreadable",
                }
                .to_string(),
            )
        })?;
    if certs.is_empty() {
        return Err(CheckError::NoCertificate);
    }
    Ok(certs)
}

fn parse_x509(position: usize, der: &[u8]) -> Result<X509Certificate<'_>, CheckError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CheckError::Malformed {
        position,
        reason: e.to_string(),
    })?;
    Ok(cert)
}

fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, CheckError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CheckError::Malformed {
            position: 0,
            reason: format!("bad subjectAltName: {e}"),
        })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn serial_hex(raw: &[u8]) -> String {
    // DER integers carry a leading 0x00 when the top bit is set; openssl does not print it.
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    };
    trimmed.iter().map(|b| format!("{b:02X}")).collect()
}

fn info_of(leaf: &X509Certificate<'_>) -> Result<CertificateInfo, CheckError> {
    let key_type = keys::key_type_of(leaf.public_key()).map_err(|e| match e {
        KeyError::Unsupported(what) => CheckError::UnsupportedKey(what),
        other => CheckError::UnsupportedKey(other.to_string()),
    })?;
    Ok(CertificateInfo {
        domains: dns_names(leaf)?,
        not_before: leaf.validity().not_before.to_datetime().into(),
        not_after: leaf.validity().not_after.to_datetime().into(),
        serial: serial_hex(leaf.raw_serial()),
        issuer: leaf.issuer().to_string(),
        key_type,
    })
}

/// Reads the leaf's facts without checking anything (for status pages).
pub fn read_certificate_info(chain_pem: &str) -> Result<CertificateInfo, CheckError> {
    let chain = parse_pem_chain(chain_pem)?;
    info_of(&parse_x509(0, &chain[0])?)
}

fn name_key(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a new certificate chain (leaf first, then intermediates) before it is installed:
/// the leaf names exactly `domains` (case-insensitively), its key is `key`, `now` is inside its
/// validity, and each certificate is signed by the next one in the chain.
pub fn check_certificate(
    chain_pem: &str,
    key: &PrivateKey,
    domains: &[String],
    now: SystemTime,
) -> Result<CertificateInfo, CheckError> {
    let chain = parse_pem_chain(chain_pem)?;
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_x509(i, der))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &certs[0];
    let info = info_of(leaf)?;

    // Names: exactly the set asked for.
    let covered: BTreeSet<String> = info.domains.iter().map(|d| name_key(d)).collect();
    let asked: BTreeSet<String> = domains.iter().map(|d| name_key(d)).collect();
    if covered != asked {
        return Err(CheckError::NamesMismatch {
            covered: info.domains.clone(),
            asked: domains.to_vec(),
        });
    }

    // Key match: same key type and the same public key bits.
    let raw = key
        .public_key_raw()
        .map_err(|e| CheckError::Key(e.to_string()))?;
    if info.key_type != key.key_type() || leaf.public_key().subject_public_key.data.as_ref() != raw
    {
        return Err(CheckError::KeyMismatch);
    }

    // Dates.
    if now < info.not_before {
        return Err(CheckError::NotYetValid {
            not_before: info.not_before,
        });
    }
    if now > info.not_after {
        return Err(CheckError::Expired {
            not_after: info.not_after,
        });
    }

    // Chain: each certificate is named and signed by the next.
    if certs.len() < 2 {
        return Err(CheckError::NoIssuer);
    }
    for (i, pair) in certs.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return Err(CheckError::NotSignedByIssuer { position: i });
        }
        match child.verify_signature(Some(parent.public_key())) {
            Ok(()) => {}
            Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                return Err(CheckError::UnsupportedSignature { position: i })
            }
            Err(_) => return Err(CheckError::NotSignedByIssuer { position: i }),
        }
    }
    Ok(info)
}

/// How long the self-signed fallback certificate is valid.
pub const FALLBACK_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A self-signed EC P-256 certificate for `domains` (CN "mod_acme_rs fallback for <first>",
/// valid from an hour ago for [`FALLBACK_VALIDITY`]), for mod_ssl until a real one exists.
/// Returns the certificate PEM and its key.
pub fn self_signed_fallback(domains: &[String]) -> Result<(String, PrivateKey), KeyError> {
    let key = keys::generate_key(KeyType::EcP256)?;
    let mut params = keys::params_for(domains)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("mod_acme_rs fallback for {}", domains[0]),
    );
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + FALLBACK_VALIDITY;
    let cert = params
        .self_signed(&key.key_pair()?)
        .map_err(|e| KeyError::Sign {
            what: "fallback certificate",
            reason: e.to_string(),
        })?;
    Ok((keys::pem_encode("CERTIFICATE", cert.der()), key))
}

/// Checks a certificate and key pair for use as the fallback: readable, matching, covering
/// `domains` and valid at `now` for at least `min_remaining` more. Self-signed, so no chain.
pub(crate) fn fallback_usable(
    cert_pem: &str,
    key: &PrivateKey,
    domains: &[String],
    now: SystemTime,
    min_remaining: Duration,
) -> bool {
    let Ok(chain) = parse_pem_chain(cert_pem) else {
        return false;
    };
    let Ok(leaf) = parse_x509(0, &chain[0]) else {
        return false;
    };
    let Ok(info) = info_of(&leaf) else {
        return false;
    };
    let covered: BTreeSet<String> = info.domains.iter().map(|d| name_key(d)).collect();
    let asked: BTreeSet<String> = domains.iter().map(|d| name_key(d)).collect();
    let Ok(raw) = key.public_key_raw() else {
        return false;
    };
    covered == asked
        && leaf.public_key().subject_public_key.data.as_ref() == raw
        && now >= info.not_before
        && now + min_remaining <= info.not_after
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] serial {} from {} valid {} to {}",
            self.domains.join(", "),
            self.serial,
            self.issuer,
            rfc3339(self.not_before),
            rfc3339(self.not_after)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::generate_key;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    pub(crate) fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A test CA: root -> intermediate; the intermediate signs leaves.
    pub(crate) struct TestCa {
        pub root_pem: String,
        inter_params: CertificateParams,
        inter_key: KeyPair,
        pub inter_pem: String,
    }

    impl TestCa {
        pub(crate) fn new(label: &str) -> TestCa {
            let root_key = KeyPair::generate().unwrap();
            let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            root_params.distinguished_name = rcgen::DistinguishedName::new();
            root_params
                .distinguished_name
                .push(DnType::CommonName, format!("{label} Root"));
            root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let root = root_params.self_signed(&root_key).unwrap();

            let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
            let mut inter_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            inter_params.distinguished_name = rcgen::DistinguishedName::new();
            inter_params
                .distinguished_name
                .push(DnType::CommonName, "Test Intermediate".to_string());
            inter_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            inter_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let inter = inter_params
                .signed_by(&inter_key, &Issuer::from_params(&root_params, &root_key))
                .unwrap();
            TestCa {
                root_pem: root.pem(),
                inter_params,
                inter_key,
                inter_pem: inter.pem(),
            }
        }

        /// A leaf for `key` and `domains`, valid from `nb` to `na` (offsets from now).
        pub(crate) fn leaf(
            &self,
            key: &PrivateKey,
            domains: &[String],
            nb: time::Duration,
            na: time::Duration,
        ) -> String {
            let mut params = crate::keys::params_for(domains).unwrap();
            let now = OffsetDateTime::now_utc();
            params.not_before = now + nb;
            params.not_after = now + na;
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x83, 0x01, 0xab]));
            let issuer = Issuer::from_params(&self.inter_params, &self.inter_key);
            let cert = params.signed_by(&key.key_pair().unwrap(), &issuer).unwrap();
            cert.pem()
        }

        /// Leaf + intermediate, valid from a day ago for 90 days.
        pub(crate) fn chain(&self, key: &PrivateKey, domains: &[String]) -> String {
            self.leaf(
                key,
                domains,
                time::Duration::days(-1),
                time::Duration::days(89),
            ) + &self.inter_pem
        }
    }

    #[test]
    fn accepts_a_good_chain_for_every_key_type() {
        let ca = TestCa::new("A");
        let domains = names(&["example.test", "*.example.test"]);
        for kt in KeyType::ALL {
            let key = generate_key(kt).unwrap();
            let chain = ca.chain(&key, &domains);
            let info = check_certificate(&chain, &key, &domains, SystemTime::now())
                .unwrap_or_else(|e| panic!("{kt}: {e}"));
            assert_eq!(info.domains, domains);
            assert_eq!(info.key_type, kt);
            assert_eq!(info.serial, "8301AB");
            assert_eq!(info.issuer, "CN=Test Intermediate");
            assert!(info.not_before < SystemTime::now() && SystemTime::now() < info.not_after);
            assert_eq!(read_certificate_info(&chain).unwrap(), info);
        }
    }

    #[test]
    fn names_compare_case_insensitively_and_in_any_order() {
        let ca = TestCa::new("A");
        let key = generate_key(KeyType::EcP256).unwrap();
        let chain = ca.chain(&key, &names(&["example.test", "www.example.test"]));
        check_certificate(
            &chain,
            &key,
            &names(&["WWW.Example.test", "example.test"]),
            SystemTime::now(),
        )
        .unwrap();
    }

    #[test]
    fn rejects_extra_and_missing_names() {
        let ca = TestCa::new("A");
        let key = generate_key(KeyType::EcP256).unwrap();
        let chain = ca.chain(&key, &names(&["a.test", "b.test"]));
        let err = check_certificate(
            &chain,
            &key,
            &names(&["a.test", "c.test"]),
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate covers [a.test, b.test] but [a.test, c.test] were asked for"
        );
        // extra name in the certificate
        let err =
            check_certificate(&chain, &key, &names(&["a.test"]), SystemTime::now()).unwrap_err();
        assert!(matches!(err, CheckError::NamesMismatch { .. }), "{err}");
        // missing name in the certificate
        let err = check_certificate(
            &chain,
            &key,
            &names(&["a.test", "b.test", "c.test"]),
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, CheckError::NamesMismatch { .. }), "{err}");
    }

    #[test]
    fn rejects_a_key_mismatch() {
        let ca = TestCa::new("A");
        let domains = names(&["a.test"]);
        let key = generate_key(KeyType::EcP256).unwrap();
        let chain = ca.chain(&key, &domains);
        for other in [KeyType::EcP256, KeyType::Rsa2048] {
            let other = generate_key(other).unwrap();
            let err = check_certificate(&chain, &other, &domains, SystemTime::now()).unwrap_err();
            assert_eq!(err, CheckError::KeyMismatch);
            assert_eq!(
                err.to_string(),
                "certificate does not match its private key"
            );
        }
    }

    #[test]
    fn rejects_expired_and_not_yet_valid() {
        let ca = TestCa::new("A");
        let domains = names(&["a.test"]);
        let key = generate_key(KeyType::EcP256).unwrap();
        let expired = ca.leaf(
            &key,
            &domains,
            time::Duration::days(-90),
            time::Duration::days(-1),
        ) + &ca.inter_pem;
        let err = check_certificate(&expired, &key, &domains, SystemTime::now()).unwrap_err();
        assert!(matches!(err, CheckError::Expired { .. }), "{err}");
        assert!(
            err.to_string().starts_with("certificate expired at 20"),
            "{err}"
        );

        let future = ca.leaf(
            &key,
            &domains,
            time::Duration::days(1),
            time::Duration::days(90),
        ) + &ca.inter_pem;
        let err = check_certificate(&future, &key, &domains, SystemTime::now()).unwrap_err();
        assert!(matches!(err, CheckError::NotYetValid { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("certificate is not valid until 20"),
            "{err}"
        );
        // ... but fine when checked at a time inside its window.
        let later = SystemTime::now() + Duration::from_secs(2 * 86400);
        check_certificate(&future, &key, &domains, later).unwrap();
    }

    #[test]
    fn rejects_a_wrong_issuer() {
        let a = TestCa::new("A");
        // B's intermediate has the same name as A's, so only the signature tells them apart.
        let b = TestCa::new("B");
        let domains = names(&["a.test"]);
        let key = generate_key(KeyType::EcP256).unwrap();
        let leaf = a.leaf(
            &key,
            &domains,
            time::Duration::days(-1),
            time::Duration::days(30),
        );
        let err = check_certificate(
            &(leaf.clone() + &b.inter_pem),
            &key,
            &domains,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate is not signed by the issuer certificate that came with it"
        );
        // Leaf followed by the root (skipping the intermediate): names differ.
        let err = check_certificate(
            &(leaf.clone() + &a.root_pem),
            &key,
            &domains,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(err, CheckError::NotSignedByIssuer { position: 0 });
        // Full chain with the right root is fine; with another root, the intermediate fails.
        let full = leaf.clone() + &a.inter_pem + &a.root_pem;
        check_certificate(&full, &key, &domains, SystemTime::now()).unwrap();
        let bad = leaf.clone() + &a.inter_pem + &b.root_pem;
        let err = check_certificate(&bad, &key, &domains, SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, CheckError::NotSignedByIssuer { position: 1 }),
            "{err}"
        );
        // Leaf alone.
        let err = check_certificate(&leaf, &key, &domains, SystemTime::now()).unwrap_err();
        assert_eq!(err, CheckError::NoIssuer);
    }

    #[test]
    fn no_certificate() {
        let key = generate_key(KeyType::EcP256).unwrap();
        for pem in ["", "hello", &key.to_pem()] {
            let err =
                check_certificate(pem, &key, &names(&["a.test"]), SystemTime::now()).unwrap_err();
            assert_eq!(err.to_string(), "no certificate in the PEM data");
            assert_eq!(
                read_certificate_info(pem).unwrap_err(),
                CheckError::NoCertificate
            );
        }
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(
            read_certificate_info(broken).unwrap_err(),
            CheckError::MalformedPem(_)
        ));
    }

    #[test]
    fn fallback_is_self_signed_and_short_lived() {
        let domains = names(&["example.test", "*.example.test"]);
        let (pem, key) = self_signed_fallback(&domains).unwrap();
        assert_eq!(key.key_type(), KeyType::EcP256);
        let info = read_certificate_info(&pem).unwrap();
        assert_eq!(info.domains, domains);
        let life = info.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(life <= FALLBACK_VALIDITY && life > FALLBACK_VALIDITY - Duration::from_secs(60));
        let der = parse_pem_chain(&pem).unwrap();
        let leaf = parse_x509(0, &der[0]).unwrap();
        assert_eq!(
            leaf.subject().to_string(),
            "CN=mod_acme_rs fallback for example.test"
        );
        leaf.verify_signature(None).unwrap();
        assert!(fallback_usable(
            &pem,
            &key,
            &domains,
            SystemTime::now(),
            Duration::from_secs(86400)
        ));
        let other = generate_key(KeyType::EcP256).unwrap();
        assert!(!fallback_usable(
            &pem,
            &other,
            &domains,
            SystemTime::now(),
            Duration::ZERO
        ));
        assert!(!fallback_usable(
            &pem,
            &key,
            &names(&["x.test"]),
            SystemTime::now(),
            Duration::ZERO
        ));
        assert!(!fallback_usable(
            &pem,
            &key,
            &domains,
            SystemTime::now() + FALLBACK_VALIDITY,
            Duration::ZERO
        ));
    }
}
