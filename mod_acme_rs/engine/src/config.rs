//! The configuration model: parsing and validating every directive, merging a virtual host over
//! the main server, and resolving the final settings and set of certificates.
//!
//! Plain Rust with no FFI and no network access: the Apache glue calls [`HostConfig::apply`] from
//! its directive handlers, [`HostConfig::merge`] from its merge callback and [`resolve`] in
//! post_config. Every error's Display starts with the directive name, because Apache prints it
//! as is when it refuses to start.

mod duration;
mod names;
#[cfg(test)]
mod tests;

pub use duration::{format_duration, parse_duration, DurationError};
pub use names::{covers, normalize_host, validate_domain, NameError};

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;

// ---------------------------------------------------------------------------------------------
// Directive table
// ---------------------------------------------------------------------------------------------

/// Where a directive appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Server,
    VirtualHost,
}

/// Which scopes a directive allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    ServerOnly,
    ServerAndVirtualHost,
}

/// One directive as registered with Apache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectiveSpec {
    pub name: &'static str,
    pub allowed: Allowed,
    pub min_args: usize,
    /// `None`: any number of arguments from `min_args` on.
    pub max_args: Option<usize>,
    /// Usage and meaning, shown by Apache for a bad directive.
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    allowed: Allowed,
    min_args: usize,
    max_args: Option<usize>,
    help: &'static str,
) -> DirectiveSpec {
    DirectiveSpec {
        name,
        allowed,
        min_args,
        max_args,
        help,
    }
}

use Allowed::{ServerAndVirtualHost as ANY, ServerOnly as SERVER};

/// Every directive, in the contract's order. The glue registers exactly these with Apache.
#[rustfmt::skip]
pub const DIRECTIVES: &[DirectiveSpec] = &[
    spec("ACMEDomain", ANY, 1, None, "ACMEDomain name [name ...]: one certificate covering these names; the first names the certificate"),
    spec("ACMEServer", SERVER, 1, Some(1), "ACMEServer url|letsencrypt|letsencrypt-staging: ACME directory URL"),
    spec("ACMEServerCA", SERVER, 1, Some(1), "ACMEServerCA file: PEM bundle to trust for the ACME server's TLS"),
    spec("ACMEEmail", SERVER, 1, Some(1), "ACMEEmail address: account contact"),
    spec("ACMEAcceptTOS", SERVER, 1, Some(1), "ACMEAcceptTOS on|off: accept the CA's terms of service"),
    spec("ACMEExternalAccountBinding", SERVER, 2, Some(2), "ACMEExternalAccountBinding kid hmac|file:/path: external account binding (HMAC in base64url)"),
    spec("ACMEKeyType", ANY, 1, Some(1), "ACMEKeyType rsa2048|rsa3072|rsa4096|ec256|ec384: certificate key type"),
    spec("ACMEStore", SERVER, 1, Some(1), "ACMEStore dir: where accounts, keys, certificates and state live"),
    spec("ACMERenewBefore", ANY, 1, Some(1), "ACMERenewBefore duration|percent: renew when less than this much lifetime remains (like 30d or 33%)"),
    spec("ACMECheckInterval", SERVER, 1, Some(1), "ACMECheckInterval duration: how often certificates are checked (like 12h)"),
    spec("ACMEDNSProvider", SERVER, 1, Some(1), "ACMEDNSProvider route53: how TXT records are written"),
    spec("ACMERoute53Region", SERVER, 1, Some(1), "ACMERoute53Region region: AWS region for Route53 (like us-east-1)"),
    spec("ACMERoute53Endpoint", SERVER, 1, Some(1), "ACMERoute53Endpoint url: another Route53-compatible API"),
    spec("ACMERoute53Profile", SERVER, 1, Some(1), "ACMERoute53Profile name: AWS shared-config profile"),
    spec("ACMERoute53CredentialsFile", SERVER, 1, Some(1), "ACMERoute53CredentialsFile path: AWS shared credentials file"),
    spec("ACMERoute53AssumeRole", SERVER, 1, Some(2), "ACMERoute53AssumeRole arn [external-id]: role to assume for Route53 calls"),
    spec("ACMERoute53HostedZone", SERVER, 2, Some(2), "ACMERoute53HostedZone domain zone-id: pin the hosted zone for a domain and its subdomains"),
    spec("ACMEDNSResolver", SERVER, 1, None, "ACMEDNSResolver ip[:port] ...: servers that must show the TXT values before validation"),
    spec("ACMEPropagationTimeout", SERVER, 1, Some(1), "ACMEPropagationTimeout duration: how long to wait for the TXT values (like 120s)"),
    spec("ACMEGracefulRestart", SERVER, 1, Some(1), "ACMEGracefulRestart on|off: restart Apache gracefully after a new certificate is installed"),
    spec("ACMERenewHook", SERVER, 1, None, "ACMERenewHook command [args ...]: run after each installed certificate (no shell)"),
    spec("ACMEProfile", ANY, 1, Some(1), "ACMEProfile name: ACME certificate profile, when the CA offers profiles"),
    spec("ACMEARI", SERVER, 1, Some(1), "ACMEARI on|off: use ACME Renewal Information when the CA offers it"),
    spec("ACMEStatus", SERVER, 1, Some(1), "ACMEStatus on|off: the section on mod_status's server-status page"),
];

/// Look a directive up by name, case-insensitively as Apache does.
pub fn find_directive(name: &str) -> Option<&'static DirectiveSpec> {
    DIRECTIVES
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A configuration error. Display always starts with the directive name.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: unknown directive")]
    UnknownDirective(String),
    #[error("{directive}: not allowed inside <VirtualHost>; put it at server level")]
    NotInVirtualHost { directive: &'static str },
    #[error("{directive}: {} (usage: {usage})", arg_count_problem(*.min, *.max, *.got))]
    ArgCount {
        directive: &'static str,
        min: usize,
        max: Option<usize>,
        got: usize,
        usage: &'static str,
    },
    #[error("{directive}: '{name}' is not a valid DNS name: {source}")]
    BadName {
        directive: &'static str,
        name: String,
        source: NameError,
    },
    #[error("ACMEDomain: '{name}' appears in two ACMEDomain lines (certificates '{first}' and '{second}')")]
    DuplicateName {
        name: String,
        first: String,
        second: String,
    },
    /// Any other bad value; `problem` says what is wrong (and never holds a secret).
    #[error("{directive}: {problem}")]
    Invalid {
        directive: &'static str,
        problem: String,
    },
}

impl ConfigError {
    /// The directive the error is about.
    pub fn directive(&self) -> &str {
        match self {
            ConfigError::UnknownDirective(d) => d,
            ConfigError::NotInVirtualHost { directive }
            | ConfigError::ArgCount { directive, .. }
            | ConfigError::BadName { directive, .. }
            | ConfigError::Invalid { directive, .. } => directive,
            ConfigError::DuplicateName { .. } => "ACMEDomain",
        }
    }
}

fn arg_count_problem(min: usize, max: Option<usize>, got: usize) -> String {
    let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
    let given = match got {
        0 => "none given".to_string(),
        n => format!("{n} given"),
    };
    match max {
        Some(max) if max == min => format!("takes exactly {min} {}, {given}", plural(min)),
        Some(max) => format!("takes {min} to {max} arguments, {given}"),
        None => format!("takes at least {min} {}, {given}", plural(min)),
    }
}

fn invalid(directive: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        directive,
        problem: problem.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// Certificate key type, spelled as in `ACMEKeyType`: the one the keys module generates.
pub use crate::keys::{KeyType, UnknownKeyType};

/// When to renew: a fixed time before expiry, or a share of the lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewBefore {
    /// Renew when less than this much time remains.
    Duration(Duration),
    /// Renew when less than this percentage (1..=99) of the lifetime remains.
    Percent(u8),
}

impl Default for RenewBefore {
    fn default() -> Self {
        RenewBefore::Percent(33)
    }
}

impl RenewBefore {
    /// The moment a certificate valid from `not_before` to `not_after` is due for renewal.
    ///
    /// A fixed duration at least as long as the whole lifetime would make every fresh
    /// certificate due at once (a renewal loop with short-lived certificates), so then the
    /// default share (a third of the lifetime) applies instead.
    pub fn renew_at(&self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let Ok(lifetime) = not_after.duration_since(not_before) else {
            return not_before;
        };
        let before_expiry = match *self {
            RenewBefore::Duration(d) if d < lifetime => d,
            RenewBefore::Duration(_) => lifetime / 3,
            RenewBefore::Percent(p) => lifetime.mul_f64(f64::from(p.min(100)) / 100.0),
        };
        not_after - before_expiry
    }
}

impl fmt::Display for RenewBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewBefore::Duration(d) => f.write_str(&format_duration(*d)),
            RenewBefore::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A secret (the EAB HMAC key). Debug and Display print `<redacted>`; only [`Secret::expose`]
/// gives the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    /// The secret bytes (for the EAB JWS only).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: don't leave the key in freed memory.
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

/// External account binding: the CA's key identifier and the decoded HMAC key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAccountBinding {
    pub kid: String,
    pub hmac: Secret,
}

/// How TXT records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsProvider {
    #[default]
    Route53,
}

/// `ACMERoute53AssumeRole arn [external-id]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRole {
    pub arn: String,
    pub external_id: Option<String>,
}

/// One `ACMEDomain` line: validated, lowercase names, the first naming the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSet {
    pub names: Vec<String>,
}

impl DomainSet {
    /// The certificate's name: the first name on the line.
    pub fn name(&self) -> &str {
        &self.names[0]
    }
}

// ---------------------------------------------------------------------------------------------
// Per-host configuration
// ---------------------------------------------------------------------------------------------

/// The settings written in one server_rec (the main server or one `<VirtualHost>`), before
/// defaults. `None` / empty means "not written here".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostConfig {
    /// One entry per `ACMEDomain` line, in order.
    pub domains: Vec<DomainSet>,
    /// The directory URL, aliases already expanded.
    pub server: Option<String>,
    pub server_ca: Option<PathBuf>,
    pub email: Option<String>,
    pub accept_tos: Option<bool>,
    pub eab: Option<ExternalAccountBinding>,
    pub key_type: Option<KeyType>,
    pub store: Option<PathBuf>,
    pub renew_before: Option<RenewBefore>,
    pub check_interval: Option<Duration>,
    pub dns_provider: Option<DnsProvider>,
    pub route53_region: Option<String>,
    pub route53_endpoint: Option<String>,
    pub route53_profile: Option<String>,
    pub route53_credentials_file: Option<PathBuf>,
    pub route53_assume_role: Option<AssumeRole>,
    /// `(domain, zone id)` pairs, accumulated over `ACMERoute53HostedZone` lines.
    pub route53_hosted_zones: Vec<(String, String)>,
    /// Accumulated over `ACMEDNSResolver` lines, without duplicates.
    pub dns_resolvers: Vec<SocketAddr>,
    pub propagation_timeout: Option<Duration>,
    pub graceful_restart: Option<bool>,
    /// Command and arguments.
    pub renew_hook: Option<Vec<String>>,
    pub profile: Option<String>,
    pub ari: Option<bool>,
    pub status: Option<bool>,
}

impl HostConfig {
    /// Apply one directive occurrence. `args` are the already-split arguments (Apache's
    /// TAKE_ARGV). `server_root` resolves relative paths. Unknown directive names are an error
    /// too. A single-valued directive written twice: the last one wins.
    pub fn apply(
        &mut self,
        directive: &str,
        args: &[&str],
        scope: Scope,
        server_root: &Path,
    ) -> Result<(), ConfigError> {
        let spec = find_directive(directive)
            .ok_or_else(|| ConfigError::UnknownDirective(directive.to_string()))?;
        let d = spec.name;
        if scope == Scope::VirtualHost && spec.allowed == Allowed::ServerOnly {
            return Err(ConfigError::NotInVirtualHost { directive: d });
        }
        if args.len() < spec.min_args || spec.max_args.is_some_and(|max| args.len() > max) {
            return Err(ConfigError::ArgCount {
                directive: d,
                min: spec.min_args,
                max: spec.max_args,
                got: args.len(),
                usage: spec
                    .help
                    .split_once(": ")
                    .map_or(spec.help, |(usage, _)| usage),
            });
        }
        let one = args[0];
        match d {
            "ACMEDomain" => self.domains.push(parse_domain_set(args)?),
            "ACMEServer" => self.server = Some(parse_server(one)?),
            "ACMEServerCA" => self.server_ca = Some(check_ca_file(d, one, server_root)?),
            "ACMEEmail" => self.email = Some(parse_email(one)?),
            "ACMEAcceptTOS" => self.accept_tos = Some(parse_on_off(d, one)?),
            "ACMEExternalAccountBinding" => {
                self.eab = Some(parse_eab(args[0], args[1], server_root)?)
            }
            "ACMEKeyType" => {
                self.key_type = Some(
                    one.parse()
                        .map_err(|e: UnknownKeyType| invalid(d, e.to_string()))?,
                )
            }
            "ACMEStore" => self.store = Some(resolve_path(d, one, server_root)?),
            "ACMERenewBefore" => self.renew_before = Some(parse_renew_before(one)?),
            "ACMECheckInterval" => self.check_interval = Some(parse_duration_arg(d, one)?),
            "ACMEDNSProvider" => self.dns_provider = Some(parse_dns_provider(one)?),
            "ACMERoute53Region" => self.route53_region = Some(parse_region(one)?),
            "ACMERoute53Endpoint" => self.route53_endpoint = Some(parse_endpoint(one)?),
            "ACMERoute53Profile" => {
                self.route53_profile = Some(non_empty(d, one, "the profile name is empty")?)
            }
            "ACMERoute53CredentialsFile" => {
                self.route53_credentials_file = Some(resolve_path(d, one, server_root)?)
            }
            "ACMERoute53AssumeRole" => {
                self.route53_assume_role = Some(parse_assume_role(one, args.get(1).copied())?)
            }
            "ACMERoute53HostedZone" => {
                let (domain, zone) = parse_hosted_zone(args[0], args[1])?;
                if self
                    .route53_hosted_zones
                    .iter()
                    .any(|(dom, _)| *dom == domain)
                {
                    return Err(invalid(
                        d,
                        format!("the hosted zone for '{domain}' is pinned twice"),
                    ));
                }
                self.route53_hosted_zones.push((domain, zone));
            }
            "ACMEDNSResolver" => {
                for arg in args {
                    let addr = parse_resolver(arg)?;
                    if !self.dns_resolvers.contains(&addr) {
                        self.dns_resolvers.push(addr);
                    }
                }
            }
            "ACMEPropagationTimeout" => {
                self.propagation_timeout = Some(parse_duration_arg(d, one)?)
            }
            "ACMEGracefulRestart" => self.graceful_restart = Some(parse_on_off(d, one)?),
            "ACMERenewHook" => self.renew_hook = Some(parse_renew_hook(args, server_root)?),
            "ACMEProfile" => {
                self.profile = Some(non_empty(d, one, "the ACME profile name is empty")?)
            }
            "ACMEARI" => self.ari = Some(parse_on_off(d, one)?),
            "ACMEStatus" => self.status = Some(parse_on_off(d, one)?),
            // Only reachable if DIRECTIVES and this match disagree; an error beats a panic in httpd.
            _ => return Err(ConfigError::UnknownDirective(directive.to_string())),
        }
        Ok(())
    }

    /// A virtual host's effective config: its own settings win, unset ones come from `base`
    /// (the main server). ACMEDomain lines are NOT inherited (the vhost keeps only its own).
    pub fn merge(base: &HostConfig, vhost: &HostConfig) -> HostConfig {
        fn pick<T: Clone>(own: &Option<T>, base: &Option<T>) -> Option<T> {
            own.as_ref().or(base.as_ref()).cloned()
        }
        fn pick_vec<T: Clone>(own: &[T], base: &[T]) -> Vec<T> {
            if own.is_empty() { base } else { own }.to_vec()
        }
        HostConfig {
            domains: vhost.domains.clone(),
            server: pick(&vhost.server, &base.server),
            server_ca: pick(&vhost.server_ca, &base.server_ca),
            email: pick(&vhost.email, &base.email),
            accept_tos: pick(&vhost.accept_tos, &base.accept_tos),
            eab: pick(&vhost.eab, &base.eab),
            key_type: pick(&vhost.key_type, &base.key_type),
            store: pick(&vhost.store, &base.store),
            renew_before: pick(&vhost.renew_before, &base.renew_before),
            check_interval: pick(&vhost.check_interval, &base.check_interval),
            dns_provider: pick(&vhost.dns_provider, &base.dns_provider),
            route53_region: pick(&vhost.route53_region, &base.route53_region),
            route53_endpoint: pick(&vhost.route53_endpoint, &base.route53_endpoint),
            route53_profile: pick(&vhost.route53_profile, &base.route53_profile),
            route53_credentials_file: pick(
                &vhost.route53_credentials_file,
                &base.route53_credentials_file,
            ),
            route53_assume_role: pick(&vhost.route53_assume_role, &base.route53_assume_role),
            route53_hosted_zones: pick_vec(&vhost.route53_hosted_zones, &base.route53_hosted_zones),
            dns_resolvers: pick_vec(&vhost.dns_resolvers, &base.dns_resolvers),
            propagation_timeout: pick(&vhost.propagation_timeout, &base.propagation_timeout),
            graceful_restart: pick(&vhost.graceful_restart, &base.graceful_restart),
            renew_hook: pick(&vhost.renew_hook, &base.renew_hook),
            profile: pick(&vhost.profile, &base.profile),
            ari: pick(&vhost.ari, &base.ari),
            status: pick(&vhost.status, &base.status),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Argument parsers (one per directive kind)
// ---------------------------------------------------------------------------------------------

/// Directory URL of Let's Encrypt's production CA (`ACMEServer letsencrypt`).
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Directory URL of Let's Encrypt's staging CA (`ACMEServer letsencrypt-staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

fn parse_domain_set(args: &[&str]) -> Result<DomainSet, ConfigError> {
    let mut names: Vec<String> = Vec::with_capacity(args.len());
    for arg in args {
        let name = validate_domain(arg).map_err(|source| ConfigError::BadName {
            directive: "ACMEDomain",
            name: arg.escape_debug().to_string(),
            source,
        })?;
        if names.contains(&name) {
            return Err(invalid(
                "ACMEDomain",
                format!("'{name}' is listed twice on the same line"),
            ));
        }
        names.push(name);
    }
    Ok(DomainSet { names })
}

fn parse_server(v: &str) -> Result<String, ConfigError> {
    const D: &str = "ACMEServer";
    if v.eq_ignore_ascii_case("letsencrypt") {
        return Ok(LETSENCRYPT.to_string());
    }
    if v.eq_ignore_ascii_case("letsencrypt-staging") {
        return Ok(LETSENCRYPT_STAGING.to_string());
    }
    let url = url::Url::parse(v).map_err(|e| {
        invalid(D, format!("'{v}' is neither an https URL nor a known alias (letsencrypt, letsencrypt-staging): {e}"))
    })?;
    match url.scheme() {
        "https" => {}
        "http" => {
            return Err(invalid(
                D,
                format!("'{v}' uses http; the ACME directory URL must be https"),
            ))
        }
        other => {
            return Err(invalid(
                D,
                format!("'{v}' has scheme '{other}'; the ACME directory URL must be https"),
            ))
        }
    }
    if url.host_str().map_or(true, str::is_empty) {
        return Err(invalid(D, format!("'{v}' has no host")));
    }
    Ok(v.to_string())
}

fn parse_endpoint(v: &str) -> Result<String, ConfigError> {
    const D: &str = "ACMERoute53Endpoint";
    let url = url::Url::parse(v).map_err(|e| invalid(D, format!("'{v}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            D,
            format!(
                "'{v}' has scheme '{}'; use an http or https URL",
                url.scheme()
            ),
        ));
    }
    if url.host_str().map_or(true, str::is_empty) {
        return Err(invalid(D, format!("'{v}' has no host")));
    }
    Ok(v.to_string())
}

/// Resolve a path argument against ServerRoot.
fn resolve_path(d: &'static str, v: &str, server_root: &Path) -> Result<PathBuf, ConfigError> {
    if v.is_empty() {
        return Err(invalid(d, "the path is empty"));
    }
    Ok(server_root.join(v)) // join keeps an absolute `v` as is
}

/// ACMEServerCA must be a readable PEM file now, so that `apache2 -t` reports a typo.
fn check_ca_file(d: &'static str, v: &str, server_root: &Path) -> Result<PathBuf, ConfigError> {
    let path = resolve_path(d, v, server_root)?;
    let shown = path.display();
    if path.is_dir() {
        return Err(invalid(
            d,
            format!("'{shown}' is a directory, not a PEM file"),
        ));
    }
    let pem = std::fs::read(&path).map_err(|e| invalid(d, format!("can't read '{shown}': {e}")))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(invalid(
            d,
            format!("'{shown}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(path)
}

fn parse_email(v: &str) -> Result<String, ConfigError> {
    const D: &str = "ACMEEmail";
    let addr = match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &v[7..],
        _ => v,
    };
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            D,
            format!(
                "'{}' contains a space or control character",
                v.escape_debug()
            ),
        ));
    }
    match addr.split('@').collect::<Vec<_>>().as_slice() {
        [_] => Err(invalid(
            D,
            format!("'{v}' is not an email address (no '@')"),
        )),
        ["", _] => Err(invalid(D, format!("'{v}' has nothing before the '@'"))),
        [_, ""] => Err(invalid(D, format!("'{v}' has nothing after the '@'"))),
        [_, domain] => match validate_domain(domain) {
            Ok(_) => Ok(addr.to_string()),
            Err(e) => Err(invalid(
                D,
                format!("'{v}': the part after '@' is not a valid domain: {e}"),
            )),
        },
        _ => Err(invalid(D, format!("'{v}' has more than one '@'"))),
    }
}

fn parse_on_off(d: &'static str, v: &str) -> Result<bool, ConfigError> {
    if v.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(invalid(d, format!("expected on or off, got '{v}'")))
    }
}

fn parse_duration_arg(d: &'static str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).map_err(|e| invalid(d, format!("'{v}' is not a valid duration: {e}")))
}

fn parse_renew_before(v: &str) -> Result<RenewBefore, ConfigError> {
    const D: &str = "ACMERenewBefore";
    let Some(number) = v.strip_suffix('%') else {
        return parse_duration(v).map(RenewBefore::Duration).map_err(|e| {
            invalid(
                D,
                format!("'{v}' is neither a duration nor a percentage: {e} (like 30d or 33%)"),
            )
        });
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            D,
            format!("'{v}' is not a percentage: '{number}' is not a whole number (like 33%)"),
        ));
    }
    match number.parse::<u32>() {
        Ok(0) => Err(invalid(
            D,
            format!("'{v}': 0% would never renew; use 1% to 99%"),
        )),
        Ok(p @ 1..=99) => Ok(RenewBefore::Percent(p as u8)),
        _ => Err(invalid(
            D,
            format!("'{v}': 100% or more would renew all the time; use 1% to 99%"),
        )),
    }
}

fn parse_dns_provider(v: &str) -> Result<DnsProvider, ConfigError> {
    if v.eq_ignore_ascii_case("route53") {
        Ok(DnsProvider::Route53)
    } else {
        Err(invalid(
            "ACMEDNSProvider",
            format!("unknown DNS provider '{v}' (only route53 is supported)"),
        ))
    }
}

fn parse_region(v: &str) -> Result<String, ConfigError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(v.to_string())
    } else {
        Err(invalid(
            "ACMERoute53Region",
            format!("'{v}' is not an AWS region name (like us-east-1)"),
        ))
    }
}

fn non_empty(d: &'static str, v: &str, problem: &str) -> Result<String, ConfigError> {
    if v.is_empty() {
        Err(invalid(d, problem))
    } else {
        Ok(v.to_string())
    }
}

fn parse_assume_role(arn: &str, external_id: Option<&str>) -> Result<AssumeRole, ConfigError> {
    const D: &str = "ACMERoute53AssumeRole";
    if !arn.starts_with("arn:") {
        return Err(invalid(
            D,
            format!("'{arn}' is not a role ARN (like arn:aws:iam::123456789012:role/acme)"),
        ));
    }
    if external_id == Some("") {
        return Err(invalid(D, "the external ID is empty"));
    }
    Ok(AssumeRole {
        arn: arn.to_string(),
        external_id: external_id.map(str::to_string),
    })
}

fn parse_hosted_zone(domain: &str, zone: &str) -> Result<(String, String), ConfigError> {
    const D: &str = "ACMERoute53HostedZone";
    let name = validate_domain(domain).map_err(|source| ConfigError::BadName {
        directive: D,
        name: domain.escape_debug().to_string(),
        source,
    })?;
    if let Some(parent) = name.strip_prefix("*.") {
        return Err(invalid(
            D,
            format!("'{name}' is a wildcard; pin the zone for '{parent}' instead"),
        ));
    }
    // The API returns ids as `/hostedzone/Z...`; people paste either form.
    let id = zone.strip_prefix("/hostedzone/").unwrap_or(zone);
    if id.is_empty() {
        return Err(invalid(D, "the hosted zone ID is empty"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            D,
            format!("'{zone}' is not a hosted zone ID (like Z0123456789ABCDEFGHIJ)"),
        ));
    }
    Ok((name, id.to_string()))
}

fn parse_resolver(v: &str) -> Result<SocketAddr, ConfigError> {
    const D: &str = "ACMEDNSResolver";
    // `192.0.2.53`, `2001:db8::53` or `[2001:db8::53]`: the DNS port.
    let unbracketed = v
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(v);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    if let Ok(addr) = v.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(D, format!("'{v}': port 0 is not usable")));
        }
        return Ok(addr);
    }
    // Say what is wrong: the address part or the port.
    if let Some((host, port)) = v.rsplit_once(':') {
        let host_ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        if host_ip.is_ok() {
            return Err(invalid(
                D,
                format!("'{v}': port '{port}' is not a number from 1 to 65535"),
            ));
        }
    }
    Err(invalid(D, format!("'{v}' is not an IP address (write ip, ip:port or [ipv6]:port; host names are not resolved)")))
}

fn parse_renew_hook(args: &[&str], server_root: &Path) -> Result<Vec<String>, ConfigError> {
    const D: &str = "ACMERenewHook";
    let command = args[0];
    if command.is_empty() {
        return Err(invalid(D, "the command is empty"));
    }
    // A bare name is looked up in PATH when run; a relative path is relative to ServerRoot.
    let command = if command.contains('/') {
        server_root.join(command).to_string_lossy().into_owned()
    } else {
        command.to_string()
    };
    Ok(std::iter::once(command)
        .chain(args[1..].iter().map(|a| a.to_string()))
        .collect())
}

/// `ACMEExternalAccountBinding kid hmac|file:path`. No message ever shows the HMAC.
fn parse_eab(
    kid: &str,
    hmac: &str,
    server_root: &Path,
) -> Result<ExternalAccountBinding, ConfigError> {
    const D: &str = "ACMEExternalAccountBinding";
    if kid.is_empty() {
        return Err(invalid(D, "the key identifier (kid) is empty"));
    }
    let key = match hmac.strip_prefix("file:") {
        Some("") => return Err(invalid(D, "'file:' needs a path")),
        Some(file) => {
            let path = server_root.join(file);
            let shown = path.display();
            let content = std::fs::read_to_string(&path)
                .map_err(|e| invalid(D, format!("can't read the HMAC file '{shown}': {e}")))?;
            let content = content.trim();
            if content.is_empty() {
                return Err(invalid(D, format!("the HMAC file '{shown}' is empty")));
            }
            decode_base64url(content).map_err(|why| {
                invalid(D, format!("the HMAC in '{shown}' is not base64url: {why}"))
            })?
        }
        None if hmac.is_empty() => return Err(invalid(D, "the HMAC is empty")),
        None => decode_base64url(hmac)
            .map_err(|why| invalid(D, format!("the HMAC is not base64url: {why}")))?,
    };
    Ok(ExternalAccountBinding {
        kid: kid.to_string(),
        hmac: Secret::new(key),
    })
}

/// Decode base64url (RFC 4648 §5), padding optional. The error says why without quoting the input.
fn decode_base64url(s: &str) -> Result<Vec<u8>, &'static str> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    if s.contains(['+', '/']) {
        return Err(
            "it contains '+' or '/' from standard base64; base64url uses '-' and '_' instead",
        );
    }
    let key = ENGINE.decode(s).map_err(|_| {
        "only A-Z, a-z, 0-9, '-' and '_' are allowed, with optional '=' padding at the end"
    })?;
    if key.is_empty() {
        return Err("it decodes to an empty key");
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

/// One virtual host as Apache sees it, for resolution.
///
/// The glue passes every `<VirtualHost>` (SSL or not: `ssl` is only a hint). If the main server
/// itself serves TLS, it may be passed too with `config: HostConfig::merge(&main,
/// &HostConfig::default())`, whose `domains` are empty, so its lines are not counted twice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VirtualHostInfo {
    pub server_name: Option<String>,
    pub aliases: Vec<String>,
    /// `SSLEngine on`, as far as the glue can tell: a hint, used only for warnings.
    pub ssl: bool,
    /// The merged config ([`HostConfig::merge`]).
    pub config: HostConfig,
}

/// Route53 settings, defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route53Settings {
    /// Default `us-east-1`.
    pub region: String,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub assume_role: Option<AssumeRole>,
    /// `(domain, zone id)`: the zone for that domain and its subdomains.
    pub hosted_zones: Vec<(String, String)>,
}

/// One certificate to obtain and keep renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The first domain.
    pub name: String,
    pub domains: Vec<String>,
    pub key_type: KeyType,
    pub renew_before: RenewBefore,
    pub profile: Option<String>,
    /// ServerNames (normalised) of the virtual hosts it serves.
    pub hosts: Vec<String>,
}

impl Settings {
    /// The certificate serving a virtual host, by its ServerName (as Apache reports it).
    pub fn certificate_for_host(&self, server_name: &str) -> Option<&CertificateSpec> {
        let host = normalize_host(server_name);
        self.certificates.iter().find(|c| c.hosts.contains(&host))
    }
}

impl CertificateSpec {
    /// The store's file name stem: the name with a leading `*` written as `_` (lego's layout).
    pub fn file_stem(&self) -> String {
        match self.name.strip_prefix('*') {
            Some(rest) => format!("_{rest}"),
            None => self.name.clone(),
        }
    }
}

/// The resolved, defaulted settings for the whole server: what the renewal engine runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// ACME directory URL, aliases expanded. Default: Let's Encrypt.
    pub server: String,
    pub server_ca: Option<PathBuf>,
    pub email: Option<String>,
    pub accept_tos: bool,
    pub eab: Option<ExternalAccountBinding>,
    /// The main server's key type (certificates carry their own).
    pub key_type: KeyType,
    /// Default `<ServerRoot>/acme_rs`.
    pub store: PathBuf,
    pub check_interval: Duration,
    pub dns_provider: DnsProvider,
    pub route53: Route53Settings,
    pub dns_resolvers: Vec<SocketAddr>,
    pub propagation_timeout: Duration,
    pub graceful_restart: bool,
    pub renew_hook: Option<Vec<String>>,
    pub ari: bool,
    pub status: bool,
    /// Main-server ACMEDomain lines first, then each virtual host's, in order.
    pub certificates: Vec<CertificateSpec>,
    /// Things that are legal but probably not what the admin meant: the glue logs them.
    pub warnings: Vec<String>,
}

/// Default `ACMECheckInterval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Default `ACMEPropagationTimeout`.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `ACMERoute53Region`.
pub const DEFAULT_ROUTE53_REGION: &str = "us-east-1";

/// Cross-host validation and defaults. Server-wide settings come from `main`; certificates from
/// `main`'s ACMEDomain lines (served to every virtual host whose ServerName/ServerAlias they
/// cover and which has no ACMEDomain of its own) and from each virtual host's own lines (served
/// to that host). A name in two ACMEDomain lines anywhere is an error.
pub fn resolve(
    main: &HostConfig,
    vhosts: &[VirtualHostInfo],
    server_root: &Path,
) -> Result<Settings, ConfigError> {
    let mut warnings = Vec::new();
    let mut certificates = Vec::new();
    // name -> certificate that claimed it
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut add = |set: &DomainSet, cfg: &HostConfig, certificates: &mut Vec<CertificateSpec>| {
        for name in &set.names {
            if let Some(first) = claimed.get(name) {
                return Err(ConfigError::DuplicateName {
                    name: name.clone(),
                    first: first.clone(),
                    second: set.name().to_string(),
                });
            }
            claimed.insert(name.clone(), set.name().to_string());
        }
        certificates.push(CertificateSpec {
            name: set.name().to_string(),
            domains: set.names.clone(),
            key_type: cfg.key_type.or(main.key_type).unwrap_or_default(),
            renew_before: cfg.renew_before.or(main.renew_before).unwrap_or_default(),
            profile: cfg.profile.clone().or_else(|| main.profile.clone()),
            hosts: Vec::new(),
        });
        Ok(())
    };

    for set in &main.domains {
        add(set, main, &mut certificates)?;
    }
    let server_level = certificates.len();
    for vhost in vhosts {
        let host = vhost.server_name.as_deref().map(normalize_host);
        for set in &vhost.config.domains {
            add(set, &vhost.config, &mut certificates)?;
            let cert = certificates.last_mut().expect("just pushed");
            let shown = host.as_deref().unwrap_or("(no ServerName)");
            if let Some(host) = &host {
                if !cert.domains.iter().any(|d| covers(d, host)) {
                    warnings.push(format!("ACMEDomain: certificate '{}' in <VirtualHost> '{host}' does not cover its ServerName", cert.name));
                }
                if !cert.hosts.contains(host) {
                    cert.hosts.push(host.clone());
                }
            }
            if !vhost.ssl {
                warnings.push(format!("ACMEDomain: <VirtualHost> '{shown}' has an ACMEDomain but no SSLEngine on, as far as the module can tell; the certificate is obtained but may not be served there"));
            }
        }
    }

    // Hosts without an ACMEDomain of their own take the server-level certificate that covers
    // the most of their names (ties: the one covering the ServerName, then the first). A
    // ServerName already served by a virtual host's own certificate (say, the port-80 twin of
    // an SSL host) is left alone, so that each ServerName maps to one certificate.
    let own: Vec<String> = certificates[server_level..]
        .iter()
        .flat_map(|c| c.hosts.iter().cloned())
        .collect();
    for vhost in vhosts.iter().filter(|v| v.config.domains.is_empty()) {
        let Some(host) = vhost.server_name.as_deref().map(normalize_host) else {
            continue;
        };
        if own.contains(&host) {
            continue;
        }
        let host_names: Vec<String> = std::iter::once(host.clone())
            .chain(vhost.aliases.iter().map(|a| normalize_host(a)))
            .collect();
        let score = |c: &CertificateSpec| {
            let covered = |h: &String| c.domains.iter().any(|d| covers(d, h));
            (
                host_names.iter().filter(|h| covered(h)).count(),
                covered(&host),
            )
        };
        let best = certificates[..server_level]
            .iter()
            .enumerate()
            .map(|(i, c)| (score(c), std::cmp::Reverse(i)))
            .filter(|((count, _), _)| *count > 0)
            .max();
        if let Some((_, std::cmp::Reverse(i))) = best {
            if !certificates[i].hosts.contains(&host) {
                certificates[i].hosts.push(host);
            }
        }
    }
    for cert in &certificates[..server_level] {
        if cert.hosts.is_empty() {
            warnings.push(format!("ACMEDomain: certificate '{}' covers no virtual host's ServerName or ServerAlias; it is obtained but not served", cert.name));
        }
    }
    if !certificates.is_empty() && main.accept_tos != Some(true) {
        warnings.push("ACMEAcceptTOS: off; no certificate is ordered until the CA's terms are accepted with ACMEAcceptTOS on".to_string());
    }

    Ok(Settings {
        server: main
            .server
            .clone()
            .unwrap_or_else(|| LETSENCRYPT.to_string()),
        server_ca: main.server_ca.clone(),
        email: main.email.clone(),
        accept_tos: main.accept_tos.unwrap_or(false),
        eab: main.eab.clone(),
        key_type: main.key_type.unwrap_or_default(),
        store: main
            .store
            .clone()
            .unwrap_or_else(|| server_root.join("acme_rs")),
        check_interval: main.check_interval.unwrap_or(DEFAULT_CHECK_INTERVAL),
        dns_provider: main.dns_provider.unwrap_or_default(),
        route53: Route53Settings {
            region: main
                .route53_region
                .clone()
                .unwrap_or_else(|| DEFAULT_ROUTE53_REGION.to_string()),
            endpoint: main.route53_endpoint.clone(),
            profile: main.route53_profile.clone(),
            credentials_file: main.route53_credentials_file.clone(),
            assume_role: main.route53_assume_role.clone(),
            hosted_zones: main.route53_hosted_zones.clone(),
        },
        dns_resolvers: main.dns_resolvers.clone(),
        propagation_timeout: main
            .propagation_timeout
            .unwrap_or(DEFAULT_PROPAGATION_TIMEOUT),
        graceful_restart: main.graceful_restart.unwrap_or(true),
        renew_hook: main.renew_hook.clone(),
        ari: main.ari.unwrap_or(true),
        status: main.status.unwrap_or(true),
        certificates,
        warnings,
    })
}
