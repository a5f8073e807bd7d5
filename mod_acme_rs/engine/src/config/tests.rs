use super::*;
use std::collections::HashSet;

const ROOT: &str = "/etc/apache2";

/// A fresh scratch directory for files the directives read.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("acme_rs_config_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
/// base64url of the bytes 0xfb 0xff 0xbf ...: uses both '-' and '_'.
const HMAC: &str = "-_-_c2VjcmV0LWhtYWMta2V5";

fn apply(cfg: &mut HostConfig, directive: &str, args: &[&str]) -> Result<(), ConfigError> {
    cfg.apply(directive, args, Scope::Server, Path::new(ROOT))
}

fn host(lines: &[(&str, &[&str])]) -> HostConfig {
    let mut cfg = HostConfig::default();
    for (d, args) in lines {
        apply(&mut cfg, d, args).unwrap_or_else(|e| panic!("{d} {args:?}: {e}"));
    }
    cfg
}

#[test]
fn every_bad_case_has_its_own_message() {
    let dir = scratch("bad");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let empty_hmac = dir.join("empty.hmac");
    std::fs::write(&empty_hmac, " \n").unwrap();
    let bad_hmac = dir.join("bad.hmac");
    std::fs::write(&bad_hmac, "s3cr3t+s3cr3t/\n").unwrap();
    let (not_pem, empty_hmac, bad_hmac, dir_s) = (
        not_pem.to_str().unwrap().to_string(),
        format!("file:{}", empty_hmac.display()),
        format!("file:{}", bad_hmac.display()),
        dir.to_str().unwrap().to_string(),
    );
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = vec!["a".repeat(50); 5].join(".");

    // (directive, args, scope, distinctive fragment of the message)
    use Scope::{Server as S, VirtualHost as V};
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<&str>, Scope, &str)> = vec![
        ("ACMEFoo", vec!["x"], S, "unknown directive"),
        ("ACMEDomain", vec![], S, "takes at least 1 argument, none given"),
        ("ACMEDomain", vec![""], S, "the name is empty"),
        ("ACMEDomain", vec!["a..b"], S, "empty label"),
        ("ACMEDomain", vec!["exa_mple.com"], S, "'_' is not allowed (letters, digits and '-' only)"),
        ("ACMEDomain", vec!["bücher.de"], S, "punycode"),
        ("ACMEDomain", vec![&long_label], S, "(at most 63)"),
        ("ACMEDomain", vec![&long_name], S, "(at most 253)"),
        ("ACMEDomain", vec!["-a.example.com"], S, "starts or ends with '-'"),
        ("ACMEDomain", vec!["a*.example.com"], S, "mixes '*'"),
        ("ACMEDomain", vec!["example.*.com"], S, "only allowed as the leftmost label"),
        ("ACMEDomain", vec!["*"], S, "'*' alone"),
        ("ACMEDomain", vec!["*.*.example.com"], S, "only one wildcard"),
        ("ACMEDomain", vec!["192.0.2.1"], S, "IP addresses can't be validated with DNS-01"),
        ("ACMEDomain", vec!["2001:db8::1"], V, "IP addresses can't be validated with DNS-01"),
        ("ACMEDomain", vec!["example.com", "EXAMPLE.com."], S, "listed twice on the same line"),
        ("ACMEServer", vec!["http://ca.example/dir"], S, "must be https"),
        ("ACMEServer", vec!["ftp://ca.example/dir"], S, "scheme 'ftp'"),
        ("ACMEServer", vec!["letsencrypt-prod"], S, "neither an https URL nor a known alias"),
        ("ACMEServer", vec!["letsencrypt"], V, "not allowed inside <VirtualHost>; put it at server level"),
        ("ACMEServer", vec!["a", "b"], S, "takes exactly 1 argument, 2 given"),
        ("ACMEServerCA", vec!["/nonexistent/ca.pem"], S, "can't read '/nonexistent/ca.pem'"),
        ("ACMEServerCA", vec![&dir_s], S, "is a directory"),
        ("ACMEServerCA", vec![&not_pem], S, "holds no PEM certificate"),
        ("ACMEEmail", vec!["admin"], S, "no '@'"),
        ("ACMEEmail", vec!["@example.com"], S, "nothing before the '@'"),
        ("ACMEEmail", vec!["mailto:admin@"], S, "nothing after the '@'"),
        ("ACMEEmail", vec!["a@b@example.com"], S, "more than one '@'"),
        ("ACMEEmail", vec!["ad min@example.com"], S, "space"),
        ("ACMEEmail", vec!["admin@exa_mple.com"], S, "the part after '@' is not a valid domain"),
        ("ACMEAcceptTOS", vec!["yes"], S, "expected on or off, got 'yes'"),
        ("ACMEExternalAccountBinding", vec!["kid"], S, "takes exactly 2 arguments, 1 given"),
        ("ACMEExternalAccountBinding", vec!["", HMAC], S, "kid) is empty"),
        ("ACMEExternalAccountBinding", vec!["kid", ""], S, "the HMAC is empty"),
        ("ACMEExternalAccountBinding", vec!["kid", "abc+def/"], S, "'+' or '/' from standard base64"),
        ("ACMEExternalAccountBinding", vec!["kid", "abc$def"], S, "only A-Z, a-z, 0-9"),
        ("ACMEExternalAccountBinding", vec!["kid", "file:"], S, "'file:' needs a path"),
        ("ACMEExternalAccountBinding", vec!["kid", "file:/nonexistent/hmac"], S, "can't read the HMAC file '/nonexistent/hmac'"),
        ("ACMEExternalAccountBinding", vec!["kid", &empty_hmac], S, "empty.hmac' is empty"),
        ("ACMEExternalAccountBinding", vec!["kid", &bad_hmac], S, "bad.hmac' is not base64url"),
        ("ACMEKeyType", vec!["rsa1024"], V, "unknown key type 'rsa1024' (expected rsa2048, rsa3072, rsa4096, ec256 or ec384)"),
        ("ACMEKeyType", vec![], S, "takes exactly 1 argument, none given"),
        ("ACMEStore", vec![""], S, "the path is empty"),
        ("ACMERenewBefore", vec!["10"], S, "no unit"),
        ("ACMERenewBefore", vec!["10x"], S, "unknown unit 'x'"),
        ("ACMERenewBefore", vec!["-5d"], S, "must be positive"),
        ("ACMERenewBefore", vec!["0d"], S, "greater than zero"),
        ("ACMERenewBefore", vec!["d"], S, "no number"),
        ("ACMERenewBefore", vec!["1.5d"], S, "whole number (like 36h"),
        ("ACMERenewBefore", vec!["1d12h"], S, "exactly one unit"),
        ("ACMERenewBefore", vec!["0%"], S, "0% would never renew"),
        ("ACMERenewBefore", vec!["100%"], S, "would renew all the time"),
        ("ACMERenewBefore", vec!["150%"], S, "would renew all the time"),
        ("ACMERenewBefore", vec!["abc%"], S, "'abc' is not a whole number"),
        ("ACMERenewBefore", vec!["%"], S, "'' is not a whole number"),
        ("ACMECheckInterval", vec!["10"], S, "is not a valid duration: it has no unit"),
        ("ACMECheckInterval", vec!["abc"], S, "does not start with a number"),
        ("ACMECheckInterval", vec!["12h"], V, "not allowed inside <VirtualHost>"),
        ("ACMEDNSProvider", vec!["cloudflare"], S, "only route53 is supported"),
        ("ACMERoute53Region", vec!["US East"], S, "not an AWS region name"),
        ("ACMERoute53Endpoint", vec!["ftp://localhost:5000"], S, "use an http or https URL"),
        ("ACMERoute53Endpoint", vec!["localhost"], S, "is not a URL"),
        ("ACMERoute53Profile", vec![""], S, "the profile name is empty"),
        ("ACMERoute53CredentialsFile", vec![""], S, "the path is empty"),
        ("ACMERoute53AssumeRole", vec!["role/acme"], S, "not a role ARN"),
        ("ACMERoute53AssumeRole", vec!["arn:aws:iam::1:role/a", ""], S, "external ID is empty"),
        ("ACMERoute53AssumeRole", vec!["a", "b", "c"], S, "takes 1 to 2 arguments, 3 given"),
        ("ACMERoute53HostedZone", vec!["example.com"], S, "takes exactly 2 arguments, 1 given"),
        ("ACMERoute53HostedZone", vec!["exa_mple.com", "Z1"], S, "is not a valid DNS name"),
        ("ACMERoute53HostedZone", vec!["*.example.com", "Z1"], S, "pin the zone for 'example.com' instead"),
        ("ACMERoute53HostedZone", vec!["example.com", "/hostedzone/"], S, "hosted zone ID is empty"),
        ("ACMERoute53HostedZone", vec!["example.com", "Z1-!"], S, "not a hosted zone ID"),
        ("ACMEDNSResolver", vec!["ns1.example.com"], S, "not an IP address"),
        ("ACMEDNSResolver", vec!["192.0.2.53:70000"], S, "port '70000' is not a number from 1 to 65535"),
        ("ACMEDNSResolver", vec!["[2001:db8::53]:x"], S, "port 'x'"),
        ("ACMEDNSResolver", vec!["192.0.2.53:0"], S, "port 0 is not usable"),
        ("ACMEDNSResolver", vec![], S, "takes at least 1 argument"),
        ("ACMEPropagationTimeout", vec!["0s"], S, "greater than zero"),
        ("ACMEGracefulRestart", vec!["true"], S, "expected on or off, got 'true'"),
        ("ACMERenewHook", vec![], S, "takes at least 1 argument, none given"),
        ("ACMERenewHook", vec!["", "x"], S, "the command is empty"),
        ("ACMEProfile", vec![""], V, "the ACME profile name is empty"),
        ("ACMEARI", vec!["1"], S, "expected on or off, got '1'"),
        ("ACMEStatus", vec!["enabled"], S, "expected on or off, got 'enabled'"),
    ];

    let mut seen = HashSet::new();
    for (directive, args, scope, fragment) in &cases {
        let mut cfg = HostConfig::default();
        let err = cfg
            .apply(directive, args, *scope, Path::new(ROOT))
            .expect_err(&format!("{directive} {args:?} should fail"));
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{directive}: ")), "{msg}");
        assert_eq!(err.directive(), *directive);
        assert!(
            msg.contains(fragment),
            "{directive} {args:?}: {msg:?} lacks {fragment:?}"
        );
        assert!(!msg.contains("s3cr3t"), "the HMAC leaked: {msg}");
        assert!(seen.insert(msg.clone()), "message not distinct: {msg}");
        assert_eq!(
            cfg,
            HostConfig::default(),
            "a failed directive changed the config"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn brief_examples_verbatim() {
    let mut cfg = HostConfig::default();
    let e = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        e(apply(&mut cfg, "ACMEDomain", &["exa_mple.com"])),
        "ACMEDomain: 'exa_mple.com' is not a valid DNS name: '_' is not allowed (letters, digits and '-' only)"
    );
    assert_eq!(
        e(apply(&mut cfg, "ACMEKeyType", &["rsa1024"])),
        "ACMEKeyType: unknown key type 'rsa1024' (expected rsa2048, rsa3072, rsa4096, ec256 or ec384)"
    );
    assert_eq!(
        e(cfg.apply(
            "ACMEServer",
            &["letsencrypt"],
            Scope::VirtualHost,
            Path::new(ROOT)
        )),
        "ACMEServer: not allowed inside <VirtualHost>; put it at server level"
    );
    assert_eq!(
        e(apply(&mut cfg, "ACMEEmail", &[])),
        "ACMEEmail: takes exactly 1 argument, none given (usage: ACMEEmail address)"
    );
}

#[test]
fn server_only_directives_are_refused_in_virtual_hosts() {
    for spec in DIRECTIVES {
        let mut cfg = HostConfig::default();
        let args = vec!["x"; spec.min_args.max(1)];
        let r = cfg.apply(spec.name, &args, Scope::VirtualHost, Path::new(ROOT));
        match spec.allowed {
            Allowed::ServerOnly => assert!(
                matches!(r, Err(ConfigError::NotInVirtualHost { directive }) if directive == spec.name),
                "{}",
                spec.name
            ),
            Allowed::ServerAndVirtualHost => {
                assert!(
                    !matches!(r, Err(ConfigError::NotInVirtualHost { .. })),
                    "{}",
                    spec.name
                )
            }
        }
    }
}

#[test]
fn directive_table_matches_the_contract() {
    let names: Vec<&str> = DIRECTIVES.iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        [
            "ACMEDomain",
            "ACMEServer",
            "ACMEServerCA",
            "ACMEEmail",
            "ACMEAcceptTOS",
            "ACMEExternalAccountBinding",
            "ACMEKeyType",
            "ACMEStore",
            "ACMERenewBefore",
            "ACMECheckInterval",
            "ACMEDNSProvider",
            "ACMERoute53Region",
            "ACMERoute53Endpoint",
            "ACMERoute53Profile",
            "ACMERoute53CredentialsFile",
            "ACMERoute53AssumeRole",
            "ACMERoute53HostedZone",
            "ACMEDNSResolver",
            "ACMEPropagationTimeout",
            "ACMEGracefulRestart",
            "ACMERenewHook",
            "ACMEProfile",
            "ACMEARI",
            "ACMEStatus",
        ]
    );
    let vhost_ok: Vec<&str> = DIRECTIVES
        .iter()
        .filter(|d| d.allowed == Allowed::ServerAndVirtualHost)
        .map(|d| d.name)
        .collect();
    assert_eq!(
        vhost_ok,
        [
            "ACMEDomain",
            "ACMEKeyType",
            "ACMERenewBefore",
            "ACMEProfile"
        ]
    );
    for d in DIRECTIVES {
        assert!(d.help.starts_with(&format!("{} ", d.name)), "{}", d.help);
        assert!(d.max_args.map_or(true, |max| max >= d.min_args));
    }
    assert_eq!(find_directive("acmedomain").unwrap().name, "ACMEDomain");
}

#[test]
fn every_directive_applies() {
    let dir = scratch("good");
    std::fs::write(dir.join("ca.pem"), PEM).unwrap();
    std::fs::write(dir.join("eab.hmac"), format!("  {HMAC}\n")).unwrap();
    let root = dir.as_path();
    #[rustfmt::skip]
    let lines: &[(&str, &[&str])] = &[
        ("ACMEDomain", &["Example.com", "*.example.com"]),
        ("ACMEDomain", &["other.example."]),
        ("ACMEServer", &["https://localhost:14000/dir"]),
        ("ACMEServerCA", &["ca.pem"]),
        ("ACMEEmail", &["mailto:admin@example.com"]),
        ("ACMEAcceptTOS", &["On"]),
        ("ACMEExternalAccountBinding", &["kid-1", "file:eab.hmac"]),
        ("ACMEKeyType", &["ec384"]),
        ("ACMEStore", &["state/acme"]),
        ("ACMERenewBefore", &["30d"]),
        ("ACMECheckInterval", &["6h"]),
        ("ACMEDNSProvider", &["Route53"]),
        ("ACMERoute53Region", &["eu-west-1"]),
        ("ACMERoute53Endpoint", &["http://127.0.0.1:5000"]),
        ("ACMERoute53Profile", &["acme"]),
        ("ACMERoute53CredentialsFile", &["/root/.aws/credentials"]),
        ("ACMERoute53AssumeRole", &["arn:aws:iam::123456789012:role/acme", "ext-1"]),
        ("ACMERoute53HostedZone", &["example.com", "/hostedzone/Z0123ABC"]),
        ("ACMERoute53HostedZone", &["example.org", "Z0456DEF"]),
        ("ACMEDNSResolver", &["192.0.2.53", "192.0.2.54:5353"]),
        ("ACMEDNSResolver", &["2001:db8::53", "[2001:db8::54]:5353", "192.0.2.53", "[2001:db8::53]"]),
        ("ACMEPropagationTimeout", &["90s"]),
        ("ACMEGracefulRestart", &["off"]),
        ("ACMERenewHook", &["bin/reload", "--all"]),
        ("ACMEProfile", &["shortlived"]),
        ("ACMEARI", &["OFF"]),
        ("ACMEStatus", &["off"]),
    ];
    // Every directive of the table is exercised here.
    let used: HashSet<&str> = lines.iter().map(|(d, _)| *d).collect();
    assert_eq!(used.len(), DIRECTIVES.len());

    let mut cfg = HostConfig::default();
    for (d, args) in lines {
        cfg.apply(d, args, Scope::Server, root)
            .unwrap_or_else(|e| panic!("{d} {args:?}: {e}"));
    }
    let expected = HostConfig {
        domains: vec![
            DomainSet {
                names: vec!["example.com".into(), "*.example.com".into()],
            },
            DomainSet {
                names: vec!["other.example".into()],
            },
        ],
        server: Some("https://localhost:14000/dir".into()),
        server_ca: Some(dir.join("ca.pem")),
        email: Some("admin@example.com".into()),
        accept_tos: Some(true),
        eab: Some(ExternalAccountBinding {
            kid: "kid-1".into(),
            hmac: Secret::new(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(HMAC)
                    .unwrap(),
            ),
        }),
        key_type: Some(KeyType::EcP384),
        store: Some(dir.join("state/acme")),
        renew_before: Some(RenewBefore::Duration(Duration::from_secs(30 * 86400))),
        check_interval: Some(Duration::from_secs(6 * 3600)),
        dns_provider: Some(DnsProvider::Route53),
        route53_region: Some("eu-west-1".into()),
        route53_endpoint: Some("http://127.0.0.1:5000".into()),
        route53_profile: Some("acme".into()),
        route53_credentials_file: Some("/root/.aws/credentials".into()),
        route53_assume_role: Some(AssumeRole {
            arn: "arn:aws:iam::123456789012:role/acme".into(),
            external_id: Some("ext-1".into()),
        }),
        route53_hosted_zones: vec![
            ("example.com".into(), "Z0123ABC".into()),
            ("example.org".into(), "Z0456DEF".into()),
        ],
        dns_resolvers: [
            "192.0.2.53:53",
            "192.0.2.54:5353",
            "[2001:db8::53]:53",
            "[2001:db8::54]:5353",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect(),
        propagation_timeout: Some(Duration::from_secs(90)),
        graceful_restart: Some(false),
        renew_hook: Some(vec![
            dir.join("bin/reload").to_str().unwrap().into(),
            "--all".into(),
        ]),
        profile: Some("shortlived".into()),
        ari: Some(false),
        status: Some(false),
    };
    assert_eq!(cfg, expected);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn small_value_rules() {
    let cfg = host(&[
        ("ACMEServer", &["LetsEncrypt-Staging"]),
        ("ACMEKeyType", &["RSA4096"]),
        ("ACMEKeyType", &["rsa3072"]), // last one wins
        ("ACMERenewBefore", &["33%"]),
        ("ACMERenewHook", &["systemctl", "reload", "apache2"]),
        ("ACMEExternalAccountBinding", &["kid", "c2VjcmV0cw=="]), // padding is fine
    ]);
    assert_eq!(cfg.server.as_deref(), Some(LETSENCRYPT_STAGING));
    assert_eq!(cfg.key_type, Some(KeyType::Rsa3072));
    assert_eq!(cfg.renew_before, Some(RenewBefore::Percent(33)));
    // A bare command is left for PATH lookup.
    assert_eq!(cfg.renew_hook.unwrap()[0], "systemctl");
    assert_eq!(cfg.eab.unwrap().hmac.expose(), b"secrets");
    for k in KeyType::ALL {
        assert_eq!(k.to_string().parse::<KeyType>(), Ok(k));
    }
    let mut cfg = HostConfig::default();
    apply(&mut cfg, "ACMERoute53HostedZone", &["example.com", "Z1"]).unwrap();
    let err = apply(&mut cfg, "ACMERoute53HostedZone", &["Example.com", "Z2"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ACMERoute53HostedZone: the hosted zone for 'example.com' is pinned twice"
    );
}

#[test]
fn secrets_are_redacted() {
    let cfg = host(&[
        ("ACMEDomain", &["example.com"]),
        ("ACMEExternalAccountBinding", &["kid-1", HMAC]),
    ]);
    let settings = resolve(&cfg, &[], Path::new(ROOT)).unwrap();
    let eab = settings.eab.as_ref().unwrap();
    assert_eq!(
        eab.hmac.expose(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(HMAC)
            .unwrap()
    );
    assert_eq!(format!("{}", eab.hmac), "<redacted>");
    for dump in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{cfg:?}"),
    ] {
        assert!(dump.contains("<redacted>"));
        assert!(!dump.contains(HMAC) && !dump.contains("c2VjcmV0"), "{dump}");
        // Nor the decoded bytes, as Debug would print a Vec<u8>.
        assert!(
            !dump.contains(&format!("{:?}", eab.hmac.expose())),
            "{dump}"
        );
    }
}

#[test]
fn merge_prefers_the_vhost_and_keeps_only_its_domains() {
    let base = host(&[
        ("ACMEDomain", &["example.com"]),
        ("ACMEKeyType", &["ec256"]),
        ("ACMERenewBefore", &["20d"]),
        ("ACMEEmail", &["admin@example.com"]),
        ("ACMEDNSResolver", &["192.0.2.53"]),
    ]);
    let mut vhost = HostConfig::default();
    for (d, args) in [
        ("ACMEDomain", ["www.example.org"]),
        ("ACMEKeyType", ["rsa4096"]),
    ] {
        vhost
            .apply(d, &args, Scope::VirtualHost, Path::new(ROOT))
            .unwrap();
    }
    let merged = HostConfig::merge(&base, &vhost);
    assert_eq!(merged.domains, vhost.domains);
    assert_eq!(merged.key_type, Some(KeyType::Rsa4096));
    assert_eq!(merged.renew_before, base.renew_before);
    assert_eq!(merged.email, base.email);
    assert_eq!(merged.dns_resolvers, base.dns_resolvers);

    // A vhost with nothing of its own gets everything but the domains.
    let merged = HostConfig::merge(&base, &HostConfig::default());
    assert_eq!(
        merged,
        HostConfig {
            domains: vec![],
            ..base.clone()
        }
    );
    // Merging over an empty base changes nothing.
    assert_eq!(HostConfig::merge(&HostConfig::default(), &vhost), vhost);
}

fn vhost(
    name: &str,
    aliases: &[&str],
    ssl: bool,
    base: &HostConfig,
    own: &[(&str, &[&str])],
) -> VirtualHostInfo {
    let mut cfg = HostConfig::default();
    for (d, args) in own {
        cfg.apply(d, args, Scope::VirtualHost, Path::new(ROOT))
            .unwrap();
    }
    VirtualHostInfo {
        server_name: Some(name.to_string()),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ssl,
        config: HostConfig::merge(base, &cfg),
    }
}

#[test]
fn resolve_applies_defaults() {
    let s = resolve(&HostConfig::default(), &[], Path::new(ROOT)).unwrap();
    assert_eq!(
        s,
        Settings {
            server: LETSENCRYPT.into(),
            server_ca: None,
            email: None,
            accept_tos: false,
            eab: None,
            key_type: KeyType::Rsa2048,
            store: PathBuf::from("/etc/apache2/acme_rs"),
            check_interval: Duration::from_secs(12 * 3600),
            dns_provider: DnsProvider::Route53,
            route53: Route53Settings {
                region: "us-east-1".into(),
                endpoint: None,
                profile: None,
                credentials_file: None,
                assume_role: None,
                hosted_zones: vec![],
            },
            dns_resolvers: vec![],
            propagation_timeout: Duration::from_secs(120),
            graceful_restart: true,
            renew_hook: None,
            ari: true,
            status: true,
            certificates: vec![],
            warnings: vec![],
        }
    );
    let s = resolve(
        &host(&[("ACMEServer", &["letsencrypt"])]),
        &[],
        Path::new(ROOT),
    )
    .unwrap();
    assert_eq!(s.server, "https://acme-v02.api.letsencrypt.org/directory");
}

#[test]
fn resolve_builds_certificates_and_assigns_hosts() {
    let main = host(&[
        ("ACMEDomain", &["example.com", "*.example.com"]),
        ("ACMEDomain", &["example.net"]),
        ("ACMEAcceptTOS", &["on"]),
        ("ACMEKeyType", &["ec256"]),
        ("ACMEProfile", &["classic"]),
    ]);
    let vhosts = [
        vhost("Example.com:443", &["www.example.com"], true, &main, &[]),
        vhost("shop.example.com", &[], true, &main, &[]),
        vhost(
            "example.org",
            &["www.example.org"],
            true,
            &main,
            &[
                ("ACMEDomain", &["example.org", "www.example.org"]),
                ("ACMERenewBefore", &["10d"]),
            ],
        ),
        vhost("a.b.example.com", &[], true, &main, &[]), // not covered: one label only
        vhost("example.com", &[], false, &main, &[]),    // the port-80 twin: same name, once
    ];
    let s = resolve(&main, &vhosts, Path::new(ROOT)).unwrap();
    assert_eq!(s.key_type, KeyType::EcP256);
    let certs = &s.certificates;
    assert_eq!(certs.len(), 3);
    assert_eq!(
        certs[0],
        CertificateSpec {
            name: "example.com".into(),
            domains: vec!["example.com".into(), "*.example.com".into()],
            key_type: KeyType::EcP256,
            renew_before: RenewBefore::Percent(33),
            profile: Some("classic".into()),
            hosts: vec!["example.com".into(), "shop.example.com".into()],
        }
    );
    assert_eq!(certs[1].name, "example.net");
    assert!(certs[1].hosts.is_empty());
    assert_eq!(
        certs[2],
        CertificateSpec {
            name: "example.org".into(),
            domains: vec!["example.org".into(), "www.example.org".into()],
            key_type: KeyType::EcP256, // inherited from the main server
            renew_before: RenewBefore::Duration(Duration::from_secs(10 * 86400)),
            profile: Some("classic".into()),
            hosts: vec!["example.org".into()],
        }
    );
    assert_eq!(
        s.certificate_for_host("SHOP.example.com").unwrap().name,
        "example.com"
    );
    assert_eq!(
        s.certificate_for_host("example.org:443").unwrap().name,
        "example.org"
    );
    assert!(s.certificate_for_host("a.b.example.com").is_none());
    // example.net serves nobody: worth a warning, not an error.
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("'example.net' covers no virtual host"));
}

#[test]
fn resolve_picks_the_best_server_level_certificate() {
    let main = host(&[
        ("ACMEDomain", &["*.example.com"]),
        ("ACMEDomain", &["www.example.com", "example.com"]),
        ("ACMEAcceptTOS", &["on"]),
    ]);
    let vhosts = [vhost("www.example.com", &["example.com"], true, &main, &[])];
    let s = resolve(&main, &vhosts, Path::new(ROOT)).unwrap();
    assert!(s.certificates[0].hosts.is_empty());
    assert_eq!(s.certificates[1].hosts, ["www.example.com"]);
}

#[test]
fn resolve_rejects_a_name_in_two_lines() {
    let main = host(&[("ACMEDomain", &["example.com", "www.example.com"])]);
    // Two lines on the same host.
    let same = host(&[
        ("ACMEDomain", &["example.com", "www.example.com"]),
        ("ACMEDomain", &["www.example.com"]),
    ]);
    let err = resolve(&same, &[], Path::new(ROOT)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ACMEDomain: 'www.example.com' appears in two ACMEDomain lines (certificates 'example.com' and 'www.example.com')"
    );
    // The main server and a virtual host.
    let vhosts = [vhost(
        "www.example.com",
        &[],
        true,
        &main,
        &[("ACMEDomain", &["WWW.example.com"])],
    )];
    let err = resolve(&main, &vhosts, Path::new(ROOT)).unwrap_err();
    assert!(
        matches!(&err, ConfigError::DuplicateName { name, .. } if name == "www.example.com"),
        "{err}"
    );
    // Two virtual hosts.
    let empty = HostConfig::default();
    let vhosts = [
        vhost(
            "a.example.org",
            &[],
            true,
            &empty,
            &[("ACMEDomain", &["a.example.org", "*.example.org"])],
        ),
        vhost(
            "b.example.org",
            &[],
            true,
            &empty,
            &[("ACMEDomain", &["b.example.org", "*.example.org"])],
        ),
    ];
    let err = resolve(&empty, &vhosts, Path::new(ROOT)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ACMEDomain: '*.example.org' appears in two ACMEDomain lines (certificates 'a.example.org' and 'b.example.org')"
    );
    // A wildcard and a name it covers are different names: fine.
    let ok = host(&[
        ("ACMEDomain", &["*.example.com"]),
        ("ACMEDomain", &["www.example.com"]),
    ]);
    assert!(resolve(&ok, &[], Path::new(ROOT)).is_ok());
}

#[test]
fn resolve_warns_about_likely_mistakes() {
    let main = HostConfig::default();
    let vhosts = [vhost(
        "www.example.com",
        &[],
        false,
        &main,
        &[("ACMEDomain", &["example.org"])],
    )];
    let s = resolve(&main, &vhosts, Path::new(ROOT)).unwrap();
    let w = s.warnings.join("\n");
    assert!(w.contains("does not cover its ServerName"), "{w}");
    assert!(w.contains("no SSLEngine on"), "{w}");
    assert!(w.contains("ACMEAcceptTOS: off"), "{w}");
}

#[test]
fn file_stem_writes_the_wildcard_as_underscore() {
    let cfg = host(&[
        ("ACMEDomain", &["*.example.com", "example.com"]),
        ("ACMEDomain", &["example.org"]),
    ]);
    let s = resolve(&cfg, &[], Path::new(ROOT)).unwrap();
    assert_eq!(s.certificates[0].name, "*.example.com");
    assert_eq!(s.certificates[0].file_stem(), "_.example.com");
    assert_eq!(s.certificates[1].file_stem(), "example.org");
}

#[test]
fn renew_at() {
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let day = Duration::from_secs(86400);
    let na = nb + 90 * day;
    assert_eq!(
        RenewBefore::Duration(30 * day).renew_at(nb, na),
        nb + 60 * day
    );
    assert_eq!(
        RenewBefore::Percent(33).renew_at(nb, na),
        na - (90 * day).mul_f64(0.33)
    );
    assert_eq!(RenewBefore::Percent(50).renew_at(nb, na), nb + 45 * day);
    // A window longer than a 6-day certificate falls back to a third instead of looping.
    let short = nb + 6 * day;
    assert_eq!(
        RenewBefore::Duration(30 * day).renew_at(nb, short),
        nb + 4 * day
    );
    // Nonsense dates: due now.
    assert_eq!(RenewBefore::default().renew_at(na, nb), na);
    assert_eq!(RenewBefore::Percent(33).to_string(), "33%");
    assert_eq!(RenewBefore::Duration(30 * day).to_string(), "30d");
}

/// Whatever the arguments, apply returns (no panic: a panic in a directive handler would abort
/// httpd), and a failure leaves the config as it was.
#[test]
fn odd_arguments_never_panic() {
    let odd = [
        "",
        " ",
        "%",
        "-",
        ":",
        "::",
        "[",
        "]",
        "[]:",
        "[::1",
        "file:",
        "file:/",
        "mailto:",
        "@",
        "é",
        "ü%",
        "1é",
        "*",
        "*.",
        ".",
        "..",
        "0",
        "99999999999999999999999s",
        "https://",
        "http://[::1]:99999",
        "arn:",
        "/hostedzone/",
        "\0",
        "\u{0}",
        "a\u{7f}b",
    ];
    let root = Path::new(ROOT);
    for spec in DIRECTIVES {
        let max = spec.max_args.unwrap_or(3);
        for count in spec.min_args..=max {
            for a in odd {
                for scope in [Scope::Server, Scope::VirtualHost] {
                    let args = vec![a; count];
                    let mut cfg = HostConfig::default();
                    if let Err(e) = cfg.apply(spec.name, &args, scope, root) {
                        assert!(e.to_string().starts_with(spec.name), "{e}");
                        assert_eq!(cfg, HostConfig::default());
                    }
                }
            }
        }
    }
}

#[test]
fn a_vhost_certificate_keeps_its_server_name() {
    // The port-80 twin of an SSL host with its own ACMEDomain does not pull the ServerName
    // into a server-level certificate too.
    let main = host(&[
        ("ACMEDomain", &["*.example.com"]),
        ("ACMEAcceptTOS", &["on"]),
    ]);
    let vhosts = [
        vhost("www.example.com", &[], false, &main, &[]),
        vhost(
            "www.example.com",
            &[],
            true,
            &main,
            &[("ACMEDomain", &["www.example.com"])],
        ),
        vhost("api.example.com", &[], true, &main, &[]),
    ];
    let s = resolve(&main, &vhosts, Path::new(ROOT)).unwrap();
    assert_eq!(s.certificates[0].hosts, ["api.example.com"]);
    assert_eq!(s.certificates[1].hosts, ["www.example.com"]);
    assert_eq!(
        s.certificate_for_host("www.example.com").unwrap().name,
        "www.example.com"
    );
}
