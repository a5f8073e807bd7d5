//! DNS names as ACME DNS-01 accepts them: validation, normalisation and wildcard coverage.

use std::net::IpAddr;

/// Why a string is not a name a certificate can be ordered for with DNS-01.
///
/// The Display text completes `'<name>' is not a valid DNS name: ...`.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("IP addresses can't be validated with DNS-01; use a DNS name")]
    IpAddress,
    #[error("it is {len} characters long (at most 253)")]
    TooLong { len: usize },
    #[error("it has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label '{label}' is {len} characters long (at most 63)")]
    LabelTooLong { label: String, len: usize },
    #[error("'{0}' is not allowed (letters, digits and '-' only)")]
    BadChar(char),
    #[error("'{0}' is not ASCII; write internationalised names in punycode (xn--...)")]
    NonAscii(char),
    #[error("label '{0}' starts or ends with '-'")]
    HyphenAtEdge(String),
    #[error("'*' alone is not a name; write a wildcard like *.example.com")]
    WildcardAlone,
    #[error("label '{0}' mixes '*' with other characters; a wildcard must be the whole label, like *.example.com")]
    PartialWildcard(String),
    #[error("only one wildcard label is allowed")]
    MultipleWildcards,
    #[error("'*' is only allowed as the leftmost label, like *.example.com")]
    WildcardNotLeftmost,
}

/// Validate a DNS name for a certificate and return it normalised: lowercase, without a single
/// trailing dot. `*.example.com` is accepted (a wildcard as the whole leftmost label).
pub fn validate_domain(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    // A fully qualified name may end in one dot; `example.com..` still fails on its empty label.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    // Before the character checks, so that an address gets the useful message, not "':' is not allowed".
    let unbracketed = name
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(name);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err(NameError::IpAddress);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong { len: name.len() });
    }
    let lower = name.to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        check_label(label, i, &labels)?;
    }
    Ok(lower)
}

fn check_label(label: &str, index: usize, labels: &[&str]) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label == "*" {
        return match index {
            0 if labels.len() == 1 => Err(NameError::WildcardAlone),
            0 => Ok(()),
            _ if labels[0] == "*" => Err(NameError::MultipleWildcards),
            _ => Err(NameError::WildcardNotLeftmost),
        };
    }
    if label.contains('*') {
        return Err(NameError::PartialWildcard(label.to_string()));
    }
    if label.len() > 63 {
        return Err(NameError::LabelTooLong {
            label: label.to_string(),
            len: label.len(),
        });
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(if c.is_ascii() {
            NameError::BadChar(c)
        } else {
            NameError::NonAscii(c)
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge(label.to_string()));
    }
    Ok(())
}

/// Normalise a host name as Apache reports it (ServerName, ServerAlias) for comparisons:
/// lowercase, without a trailing dot or a `:port`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    // Strip a port, but not from a bare IPv6 address.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Whether a certificate name (normalised, maybe a wildcard) covers a host name (normalised).
/// `*.example.com` covers `www.example.com` but neither `example.com` nor `a.b.example.com`
/// (RFC 6125 §6.4.3: the wildcard matches exactly one label).
pub fn covers(cert_name: &str, host: &str) -> bool {
    if cert_name == host {
        return true;
    }
    match (cert_name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((first, rest))) => rest == parent && !first.is_empty() && first != "*",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_normalised() {
        assert_eq!(validate_domain("Example.COM").unwrap(), "example.com");
        assert_eq!(validate_domain("example.com.").unwrap(), "example.com");
        assert_eq!(validate_domain("*.Example.com").unwrap(), "*.example.com");
        assert_eq!(
            validate_domain("xn--bcher-kva.de").unwrap(),
            "xn--bcher-kva.de"
        );
        assert_eq!(validate_domain("a-b.c0.example").unwrap(), "a-b.c0.example");
        assert_eq!(validate_domain("localhost").unwrap(), "localhost");
        let long_label = "a".repeat(63);
        assert!(validate_domain(&format!("{long_label}.com")).is_ok());
    }

    #[test]
    fn invalid_names_have_their_reason() {
        use NameError::*;
        let cases: &[(&str, NameError)] = &[
            ("", Empty),
            (".", EmptyLabel),
            ("a..b", EmptyLabel),
            (".example.com", EmptyLabel),
            ("example.com..", EmptyLabel),
            ("192.0.2.1", IpAddress),
            ("::1", IpAddress),
            ("[2001:db8::1]", IpAddress),
            ("exa_mple.com", BadChar('_')),
            ("bücher.de", NonAscii('ü')),
            ("-a.com", HyphenAtEdge("-a".into())),
            ("a-.com", HyphenAtEdge("a-".into())),
            ("*", WildcardAlone),
            ("a*.example.com", PartialWildcard("a*".into())),
            ("example.*.com", WildcardNotLeftmost),
            ("*.*.example.com", MultipleWildcards),
        ];
        for (name, want) in cases {
            assert_eq!(validate_domain(name).as_ref(), Err(want), "{name}");
        }
        assert!(matches!(
            validate_domain(&format!("{}.com", "a".repeat(64))),
            Err(LabelTooLong { len: 64, .. })
        ));
        let too_long = vec!["a".repeat(50); 5].join("."); // 254 characters
        assert_eq!(validate_domain(&too_long), Err(TooLong { len: 254 }));
    }

    #[test]
    fn wildcard_coverage() {
        assert!(covers("example.com", "example.com"));
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("www.example.com", "*.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("WWW.Example.com:443"), "www.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("::1"), "::1");
    }
}
