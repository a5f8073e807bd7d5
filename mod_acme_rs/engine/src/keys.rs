//! Private keys and certificate signing requests.
//!
//! Everything cryptographic is done by `rcgen` (backed by aws-lc-rs); this module only chooses
//! parameters and wraps the results. A [`PrivateKey`] holds the PKCS#8 DER of the key and never
//! shows it in `Debug` output or in error messages.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, RsaKeySize,
    SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Errors from key generation, key parsing and CSR creation. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The crypto library could not generate a key.
    #[error("could not generate a {key_type} key: {reason}")]
    Generate { key_type: KeyType, reason: String },
    /// The PEM text holds no private key, or one that cannot be read.
    #[error("could not read the private key: {0}")]
    Parse(String),
    /// The key is of a kind this module does not use (for example Ed25519 or RSA 1024).
    #[error("unsupported private key: {0}")]
    Unsupported(String),
    /// A CSR was asked for without any name.
    #[error("a certificate request needs at least one domain name")]
    NoDomains,
    /// A name cannot be put into a certificate.
    #[error("{domain:?} cannot be used as a certificate name: {reason}")]
    BadDomain { domain: String, reason: String },
    /// Building or signing the CSR (or a certificate) failed.
    #[error("could not create the {what}: {reason}")]
    Sign { what: &'static str, reason: String },
}

/// The key types a certificate can have (the `ACMEKeyType` directive).
///
/// Spelled `rsa2048`, `rsa3072`, `rsa4096`, `ec256`, `ec384` by [`FromStr`] and [`fmt::Display`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    #[default]
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
    EcP384,
}

impl KeyType {
    /// Every key type, in the order they are documented.
    pub const ALL: [KeyType; 5] = [
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::EcP256,
        KeyType::EcP384,
    ];

    /// The directive spelling (`rsa2048`, ..., `ec384`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
            KeyType::EcP256 => "ec256",
            KeyType::EcP384 => "ec384",
        }
    }

    /// True for the RSA types.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of `KeyType::from_str`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type '{0}' (expected rsa2048, rsa3072, rsa4096, ec256 or ec384)")]
pub struct UnknownKeyType(pub String);

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|kt| kt.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKeyType(s.to_string()))
    }
}

impl serde::Serialize for KeyType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A private key: PKCS#8 DER plus its type. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pkcs8: Vec<u8>,
    key_type: KeyType,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .field("pkcs8", &"[redacted]")
            .finish()
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // Best effort: do not leave the key in freed memory.
        for b in self.pkcs8.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl PrivateKey {
    /// Wraps PKCS#8 DER after checking that it is a key of one of the supported types.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let kp = KeyPair::try_from(der).map_err(|e| KeyError::Parse(e.to_string()))?;
        let key_type = key_type_of_spki(&kp.subject_public_key_info())?;
        Ok(PrivateKey {
            pkcs8: der.to_vec(),
            key_type,
        })
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8). Other PEM blocks around it (certificates) are skipped.
    pub fn from_pem(pem: &str) -> Result<PrivateKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                KeyError::Parse("no private key in the PEM data".into())
            }
            // The error's Display may quote parts of the input; keep it out of messages.
            _ => KeyError::Parse("malformed PEM data".into()),
        })?;
        match der {
            PrivateKeyDer::Pkcs8(p) => PrivateKey::from_pkcs8_der(p.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(_) => Err(KeyError::Unsupported(
                "an \"RSA PRIVATE KEY\" (PKCS#1); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                    .into(),
            )),
            PrivateKeyDer::Sec1(_) => Err(KeyError::Unsupported(
                "an \"EC PRIVATE KEY\" (SEC1); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                    .into(),
            )),
            _ => Err(KeyError::Unsupported("an unknown key format".into())),
        }
    }

    /// The key as PEM `PRIVATE KEY` (PKCS#8).
    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER SubjectPublicKeyInfo of the key's public half.
    pub fn public_key_spki(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.key_pair()?.subject_public_key_info())
    }

    /// The raw public key as it appears in a certificate's SubjectPublicKeyInfo bit string
    /// (the RSAPublicKey DER for RSA, the uncompressed point for EC).
    pub fn public_key_raw(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.key_pair()?.public_key_raw().to_vec())
    }

    /// The key as an rcgen signing key.
    pub(crate) fn key_pair(&self) -> Result<KeyPair, KeyError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        KeyPair::from_pkcs8_der_and_sign_algo(&der, self.key_type.signature_algorithm())
            .map_err(|e| KeyError::Parse(e.to_string()))
    }
}

/// Determines the key type from a DER SubjectPublicKeyInfo.
pub(crate) fn key_type_of_spki(spki_der: &[u8]) -> Result<KeyType, KeyError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| KeyError::Parse("malformed public key".into()))?;
    key_type_of(&spki)
}

/// Determines the key type of a parsed SubjectPublicKeyInfo.
pub(crate) fn key_type_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, KeyError> {
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            bits => Err(KeyError::Unsupported(format!("an RSA key of {bits} bits"))),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(oid) if oid == x509_parser::oid_registry::OID_EC_P256 => Ok(KeyType::EcP256),
                Some(oid) if oid == x509_parser::oid_registry::OID_NIST_EC_P384 => {
                    Ok(KeyType::EcP384)
                }
                Some(oid) => Err(KeyError::Unsupported(format!("an EC key on curve {oid}"))),
                None => Err(KeyError::Unsupported(
                    "an EC key without a named curve".into(),
                )),
            }
        }
        Ok(_) => Err(KeyError::Unsupported(format!(
            "a key of algorithm {}",
            spki.algorithm.algorithm
        ))),
        Err(_) => Err(KeyError::Parse("malformed public key".into())),
    }
}

/// Generates a new private key of the given type.
pub fn generate_key(kt: KeyType) -> Result<PrivateKey, KeyError> {
    let gen_err = |e: rcgen::Error| KeyError::Generate {
        key_type: kt,
        reason: e.to_string(),
    };
    let kp = match kt {
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
        KeyType::EcP256 | KeyType::EcP384 => KeyPair::generate_for(kt.signature_algorithm()),
    }
    .map_err(gen_err)?;
    Ok(PrivateKey {
        pkcs8: kp.serialize_der(),
        key_type: kt,
    })
}

/// Certificate parameters naming `domains`: every name as a DNS SAN, CN = the first name
/// (left out when longer than the 64 characters X.520 allows, as CAs do).
pub(crate) fn params_for(domains: &[String]) -> Result<CertificateParams, KeyError> {
    let first = domains.first().ok_or(KeyError::NoDomains)?;
    for d in domains {
        if d.is_empty() || !d.is_ascii() || d.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(KeyError::BadDomain {
                domain: d.clone(),
                reason: "not an ASCII DNS name (use the punycode form for IDNs)".into(),
            });
        }
    }
    let mut params = CertificateParams::new(domains.to_vec()).map_err(|e| KeyError::BadDomain {
        domain: domains.join(", "),
        reason: e.to_string(),
    })?;
    let mut dn = DistinguishedName::new();
    if first.len() <= 64 {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    Ok(params)
}

/// A DER PKCS#10 certificate signing request for `domains`, signed by `key`.
///
/// Every domain (wildcards included) is a DNS subjectAltName; the subject CN is the first.
pub fn csr_der(key: &PrivateKey, domains: &[String]) -> Result<Vec<u8>, KeyError> {
    let params = params_for(domains)?;
    let kp = key.key_pair()?;
    let csr = params.serialize_request(&kp).map_err(|e| KeyError::Sign {
        what: "certificate request",
        reason: e.to_string(),
    })?;
    Ok(csr.der().to_vec())
}

/// PEM-encodes DER with the given label (64-character lines, `\n` endings).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::X509CertificationRequest;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_type_spellings_round_trip() {
        for kt in KeyType::ALL {
            assert_eq!(kt.to_string().parse::<KeyType>().unwrap(), kt);
        }
        assert_eq!("EC384".parse::<KeyType>().unwrap(), KeyType::EcP384);
        let err = "rsa1024".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("rsa1024"), "{err}");
        assert_eq!(KeyType::default(), KeyType::Rsa2048);
        assert_eq!(
            serde_json::to_string(&KeyType::EcP384).unwrap(),
            "\"ec384\""
        );
        let kt: KeyType = serde_json::from_str("\"rsa4096\"").unwrap();
        assert_eq!(kt, KeyType::Rsa4096);
        assert!(serde_json::from_str::<KeyType>("\"dsa\"").is_err());
    }

    fn check_key_type(kt: KeyType) {
        let key = generate_key(kt).unwrap();
        assert_eq!(key.key_type(), kt);

        // Debug never shows key material.
        let dbg = format!("{key:?}");
        assert!(
            dbg.contains("redacted") && !dbg.contains("pkcs8: ["),
            "{dbg}"
        );

        // PEM round trip.
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let back = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.key_type(), kt);

        // CSR with every name, the right key and CN = first.
        let domains = names(&["example.test", "*.example.test", "www.example.test"]);
        let der = csr_der(&key, &domains).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        let info = &csr.certification_request_info;
        let cn: Vec<_> = info
            .subject
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, vec!["example.test".to_string()]);
        let mut sans = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let GeneralName::DNSName(d) = n {
                        sans.push(d.to_string());
                    }
                }
            }
        }
        assert_eq!(sans, domains);
        assert_eq!(key_type_of(&info.subject_pki).unwrap(), kt);
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.public_key_raw().unwrap().as_slice()
        );
        // The CSR is signed by the key.
        csr.verify_signature().unwrap();
    }

    #[test]
    fn rsa2048() {
        check_key_type(KeyType::Rsa2048);
    }
    #[test]
    fn rsa3072() {
        check_key_type(KeyType::Rsa3072);
    }
    #[test]
    fn rsa4096() {
        check_key_type(KeyType::Rsa4096);
    }
    #[test]
    fn ec256() {
        check_key_type(KeyType::EcP256);
    }
    #[test]
    fn ec384() {
        check_key_type(KeyType::EcP384);
    }

    #[test]
    fn csr_needs_names() {
        let key = generate_key(KeyType::EcP256).unwrap();
        assert!(matches!(csr_der(&key, &[]), Err(KeyError::NoDomains)));
        let err = csr_der(&key, &names(&["bad name"])).unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");
    }

    #[test]
    fn long_first_name_has_no_cn() {
        let key = generate_key(KeyType::EcP256).unwrap();
        let long = format!("{}.example.test", "a".repeat(60));
        let der = csr_der(&key, &[long]).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(
            csr.certification_request_info
                .subject
                .iter_common_name()
                .count(),
            0
        );
    }

    #[test]
    fn from_pem_errors_are_clean() {
        let err = PrivateKey::from_pem("hello").unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = PrivateKey::from_pem(garbage).unwrap_err();
        assert!(!err.to_string().contains("AAAA"), "{err}");
    }

    #[test]
    fn pem_encoding_matches_rcgen() {
        let kp = KeyPair::generate().unwrap();
        assert_eq!(
            pem_encode("PRIVATE KEY", &kp.serialize_der()).replace('\r', ""),
            kp.serialize_pem().replace('\r', "")
        );
    }
}
