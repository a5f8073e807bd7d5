//! The ACME flow (RFC 8555) with DNS-01: account load/creation (with EAB) and one order for a
//! set of names, through instant-acme.
//!
//! instant-acme retries only order polling and badNonce; this module adds an HTTP layer that
//! retries connection failures and 5xx answers and bounds every request in time, and maps CA
//! problems to errors that read well in Apache's error log.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::dns::{propagation, DnsError, DnsProvider, TxtRecord};

/// Per-request time limit for the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per HTTP request on connection errors and 5xx.
const HTTP_ATTEMPTS: u32 = 3;
/// Polling the order until ready / valid.
const POLL: RetryPolicy = RetryPolicy::new().initial_delay(Duration::from_millis(100)).backoff(1.5).timeout(Duration::from_secs(120));

/// What an account needs. Mirrors the `ACMEServer`, `ACMEServerCA`, `ACMEEmail`,
/// `ACMEExternalAccountBinding` and `ACMEAcceptTOS` directives.
#[derive(Clone, Default)]
pub struct AcmeOptions {
    /// The directory URL.
    pub directory_url: String,
    /// PEM bundle to trust for the CA's TLS (instead of the system roots).
    pub server_ca_pem: Option<String>,
    /// Account contact (without `mailto:`).
    pub contact_email: Option<String>,
    /// External Account Binding: key id and the decoded HMAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// Whether the CA's terms of service are accepted.
    pub accept_tos: bool,
}

impl std::fmt::Debug for AcmeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeOptions")
            .field("directory_url", &self.directory_url)
            .field("server_ca_pem", &self.server_ca_pem.as_ref().map(|_| "<pem>"))
            .field("contact_email", &self.contact_email)
            .field("eab", &self.eab.as_ref().map(|(kid, _)| (kid, "<hmac hidden>")))
            .field("accept_tos", &self.accept_tos)
            .finish()
    }
}

/// A usable ACME account.
#[derive(Clone)]
pub struct AcmeAccount {
    account: Account,
    directory_url: String,
}

impl AcmeAccount {
    /// The account URL.
    pub fn id(&self) -> &str {
        self.account.id()
    }

    /// The directory this account belongs to.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// Certificate profiles the CA offers (empty when it offers none).
    pub fn profiles(&self) -> Vec<String> {
        self.account.profiles().map(|p| p.name.to_string()).collect()
    }

    /// The underlying instant-acme account (for ARI and other calls not wrapped here).
    pub fn inner(&self) -> &Account {
        &self.account
    }
}

impl std::fmt::Debug for AcmeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeAccount").field("id", &self.id()).field("directory_url", &self.directory_url).finish()
    }
}

/// A certificate as the CA delivered it.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// Leaf first, then the intermediates, PEM.
    pub chain_pem: String,
    /// The certificate URL, when the CA gave one.
    pub url: Option<String>,
}

/// Optional order parameters.
#[derive(Clone, Debug, Default)]
pub struct OrderOptions {
    /// ACME profile (`ACMEProfile`); ignored with a warning when the CA offers no profiles.
    pub profile: Option<String>,
    /// ARI `replaces`: (authority key identifier, serial) of the certificate being renewed, raw
    /// DER contents; dropped when the CA has no renewalInfo.
    pub replaces: Option<(Vec<u8>, Vec<u8>)>,
}

/// Errors of the ACME layer. Messages are meant for Apache's error log and the status page:
/// they say what failed and, when the admin can fix it, what to change. Never contain secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// No account exists and ACMEAcceptTOS is off.
    #[error("the CA's terms of service are not accepted: set ACMEAcceptTOS on")]
    TosNotAccepted,
    /// The CA refused the EAB.
    #[error("the CA rejected the External Account Binding (check ACMEExternalAccountBinding's kid and HMAC): {detail}")]
    EabRejected {
        /// The CA's words.
        detail: String,
    },
    /// The CA wants an EAB and none is configured.
    #[error("the CA requires an External Account Binding: set ACMEExternalAccountBinding kid hmac ({detail})")]
    EabRequired {
        /// The CA's words.
        detail: String,
    },
    /// Account file unreadable / unwritable / corrupt.
    #[error("account file {path}: {cause}")]
    AccountFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// ACMEServerCA's bundle is unusable.
    #[error("ACMEServerCA: {0}")]
    ServerCa(String),
    /// The CA's rate limit.
    #[error("the CA's rate limit was hit while {stage}: {detail}")]
    RateLimited {
        /// What we were doing.
        stage: &'static str,
        /// The CA's words.
        detail: String,
    },
    /// Any other failure talking to the CA.
    #[error("ACME {stage} failed ({directory}): {cause}")]
    Ca {
        /// What we were doing.
        stage: &'static str,
        /// The directory URL.
        directory: String,
        /// The cause.
        cause: String,
    },
    /// An authorization failed validation.
    #[error("the CA could not validate {identifier} by DNS-01: {detail}")]
    ValidationFailed {
        /// The name.
        identifier: String,
        /// The CA's words.
        detail: String,
    },
    /// The CA offered no DNS-01 challenge for a name.
    #[error("the CA offers no dns-01 challenge for {0}")]
    NoDns01(String),
    /// The DNS side failed (publishing, propagation).
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// A bad request from our side (no names, ...).
    #[error("invalid certificate request: {0}")]
    Invalid(String),
}

impl AcmeError {
    /// Whether retrying later may help (false for configuration problems the admin must fix).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            AcmeError::TosNotAccepted
                | AcmeError::EabRejected { .. }
                | AcmeError::EabRequired { .. }
                | AcmeError::ServerCa(_)
                | AcmeError::Invalid(_)
        )
    }
}

fn problem_type(p: &Problem) -> &str {
    p.r#type.as_deref().unwrap_or("").trim_start_matches("urn:ietf:params:acme:error:")
}

fn problem_text(p: &Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        s.push_str(&format!(" ({t})"));
    }
    for sp in &p.subproblems {
        s.push_str(&format!("; {sp}"));
    }
    s
}

/// Maps an instant-acme error to ours.
fn ca_error(stage: &'static str, directory: &str, e: instant_acme::Error) -> AcmeError {
    if let instant_acme::Error::Api(p) = &e {
        if problem_type(p) == "rateLimited" {
            return AcmeError::RateLimited { stage, detail: problem_text(p) };
        }
        if problem_type(p) == "externalAccountRequired" {
            return AcmeError::EabRequired { detail: problem_text(p) };
        }
        return AcmeError::Ca { stage, directory: directory.to_string(), cause: problem_text(p) };
    }
    AcmeError::Ca { stage, directory: directory.to_string(), cause: error_chain(&e) }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// HTTP client: retries and timeouts around hyper.

type Inner = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

struct RetryingClient {
    inner: Inner,
}

impl RetryingClient {
    fn new(ca_pem: Option<&str>) -> Result<Self, AcmeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| AcmeError::ServerCa(format!("unreadable PEM: {e}")))?;
                    roots.add(cert).map_err(|e| AcmeError::ServerCa(format!("unusable certificate: {e}")))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(AcmeError::ServerCa("no certificate found in the PEM bundle".into()));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| AcmeError::ServerCa(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder
                .with_provider_and_platform_verifier(provider)
                .map_err(|e| AcmeError::ServerCa(format!("cannot load the system's trusted roots: {e}")))?,
        };
        // http (not only https) is allowed so that a test CA on plain HTTP works too.
        let connector = builder.https_or_http().enable_http1().enable_http2().build();
        Ok(RetryingClient { inner: HyperClient::builder(TokioExecutor::new()).build(connector) })
    }
}

fn retry_after(rsp: &http::Response<hyper::body::Incoming>) -> Option<Duration> {
    let v = rsp.headers().get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl HttpClient for RetryingClient {
    fn request(&self, req: Request<BodyWrapper<Bytes>>) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let idempotent = parts.method == http::Method::GET || parts.method == http::Method::HEAD;
            let uri = parts.uri.clone();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let b = if body.is_empty() { BodyWrapper::default() } else { BodyWrapper::from(body.to_vec()) };
                let req = Request::from_parts(parts.clone(), b);
                let last = attempt >= HTTP_ATTEMPTS;
                let backoff = Duration::from_millis(250 * (1 << (attempt - 1)));
                match tokio::time::timeout(REQUEST_TIMEOUT, inner.request(req)).await {
                    Err(_) => {
                        if last || !idempotent {
                            return Err(instant_acme::Error::Other(format!("no answer from {uri} within {}s", REQUEST_TIMEOUT.as_secs()).into()));
                        }
                    }
                    Ok(Err(e)) => {
                        if last || !(e.is_connect() || idempotent) {
                            let msg = format!("request to {uri} failed: {}", error_chain(&e));
                            return Err(instant_acme::Error::Other(msg.into()));
                        }
                        log::debug!("ACME request to {uri} failed ({e}); retrying");
                    }
                    Ok(Ok(rsp)) => {
                        let s = rsp.status();
                        let transient = matches!(s, StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT);
                        if !transient || last {
                            return Ok(BytesResponse::from(rsp));
                        }
                        log::debug!("ACME server answered {s} for {uri}; retrying");
                        if let Some(ra) = retry_after(&rsp) {
                            tokio::time::sleep(ra.min(Duration::from_secs(10))).await;
                            continue;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Account

/// Loads the account from `account_json` (if it exists) or creates one, then stores its
/// credentials there (mode 0600, written atomically).
pub async fn account(opts: &AcmeOptions, account_json: &Path) -> Result<AcmeAccount, AcmeError> {
    let dir = opts.directory_url.clone();
    let file_err = |cause: String| AcmeError::AccountFile { path: account_json.to_path_buf(), cause };

    let existing = match fs::read(account_json) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(file_err(format!("cannot read: {e}"))),
    };
    if let Some(bytes) = existing {
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| file_err(format!("not valid JSON: {e}")))?;
        if let Some(stored) = value.get("directory").and_then(|d| d.as_str()) {
            if stored != dir {
                return Err(file_err(format!(
                    "it holds an account of {stored}, not of {dir}; move it away to create a new account"
                )));
            }
        }
        let creds: AccountCredentials = serde_json::from_value(value).map_err(|e| file_err(format!("not an account: {e}")))?;
        let http = RetryingClient::new(opts.server_ca_pem.as_deref())?;
        let account = Account::builder_with_http(Box::new(http))
            .from_credentials(creds)
            .await
            .map_err(|e| ca_error("loading the directory", &dir, e))?;
        return Ok(AcmeAccount { account, directory_url: dir });
    }

    if !opts.accept_tos {
        return Err(AcmeError::TosNotAccepted);
    }
    let http = RetryingClient::new(opts.server_ca_pem.as_deref())?;
    let contact = opts.contact_email.as_ref().map(|e| format!("mailto:{}", e.trim_start_matches("mailto:")));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = opts.eab.as_ref().map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = Account::builder_with_http(Box::new(http))
        .create(&new, dir.clone(), eab.as_ref())
        .await
        .map_err(|e| match (&e, opts.eab.is_some()) {
            (instant_acme::Error::Api(p), true)
                if matches!(problem_type(p), "unauthorized" | "malformed" | "badSignatureAlgorithm" | "externalAccountRequired") =>
            {
                AcmeError::EabRejected { detail: problem_text(p) }
            }
            _ => ca_error("creating the account", &dir, e),
        })?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| file_err(format!("cannot serialize: {e}")))?;
    write_private(account_json, &json).map_err(|e| file_err(format!("cannot write: {e}")))?;
    log::info!("created ACME account {} at {dir}", account.id());
    Ok(AcmeAccount { account, directory_url: dir })
}

/// Writes `data` to `path` with mode 0600: temp file in the same directory, fsync, rename,
/// fsync the directory. Creates the parent directory (0700) when missing.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "account".into());
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

// ---------------------------------------------------------------------------------------------
// Orders

/// One order for all `domains`, validated by DNS-01; see [`order_certificate_with`].
pub async fn order_certificate(
    account: &AcmeAccount,
    domains: &[String],
    csr_der: &[u8],
    dns: &dyn DnsProvider,
    resolvers: &[SocketAddr],
    propagation_timeout: Duration,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<IssuedCertificate, AcmeError> {
    order_certificate_with(account, domains, csr_der, dns, resolvers, propagation_timeout, &OrderOptions::default(), progress).await
}

/// One order for all `domains`: creates the order, publishes every DNS-01 value in one
/// provider call, waits until `resolvers` (empty: the zone's authoritative servers) show them,
/// tells the CA, waits for the order, finalizes with `csr_der`, downloads the chain.
/// The published records are always removed afterwards, on success and failure alike.
#[allow(clippy::too_many_arguments)]
pub async fn order_certificate_with(
    account: &AcmeAccount,
    domains: &[String],
    csr_der: &[u8],
    dns: &dyn DnsProvider,
    resolvers: &[SocketAddr],
    propagation_timeout: Duration,
    options: &OrderOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<IssuedCertificate, AcmeError> {
    if domains.is_empty() {
        return Err(AcmeError::Invalid("no domain names".into()));
    }
    let start = Instant::now();
    let dir = account.directory_url.as_str();
    progress("creating order");
    let identifiers: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.trim().trim_end_matches('.').to_ascii_lowercase())).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(profile) = options.profile.as_deref() {
        if account.profiles().iter().any(|p| p == profile) {
            new_order = new_order.profile(profile);
        } else {
            log::warn!("the CA at {dir} does not offer the profile '{profile}'; ordering without a profile");
        }
    }
    let mut with_replaces = false;
    if let Some((aki, serial)) = &options.replaces {
        with_replaces = true;
        new_order = new_order.replaces(CertificateIdentifier::new(aki.as_slice().into(), serial.as_slice().into()).into_owned());
    }
    let mut order = match account.account.new_order(&new_order).await {
        Err(instant_acme::Error::Unsupported(_)) if with_replaces => {
            log::info!("the CA at {dir} has no renewal information (ARI); ordering without 'replaces'");
            let mut o = NewOrder::new(&identifiers);
            if let Some(p) = options.profile.as_deref().filter(|p| account.profiles().iter().any(|x| x == p)) {
                o = o.profile(p);
            }
            account.account.new_order(&o).await
        }
        r => r,
    }
    .map_err(|e| ca_error("creating the order", dir, e))?;

    // Collect the DNS-01 values of every pending authorization.
    let mut records: Vec<TxtRecord> = Vec::new();
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| ca_error("fetching the authorizations", dir, e))?;
            let ident = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                s => return Err(AcmeError::ValidationFailed { identifier: ident, detail: format!("the authorization is {s:?}") }),
            }
            let ch = a.challenge(ChallengeType::Dns01).ok_or_else(|| AcmeError::NoDns01(ident.clone()))?;
            let value = ch.key_authorization().dns_value();
            records.push(TxtRecord::new(TxtRecord::challenge_name(&ident), value));
        }
    }

    // Whether anything may have been written (and so must be removed).
    let mut written = false;
    let result = async {
        if !records.is_empty() {
            progress(&format!("publishing {} TXT record{}", records.len(), if records.len() == 1 { "" } else { "s" }));
            written = true;
            if let Err(e) = dns.publish(&records).await {
                // Nothing was written when no zone was found or a record was refused up front.
                if matches!(e, DnsError::NoHostedZone { .. } | DnsError::InvalidRecord { .. }) {
                    written = false;
                }
                return Err(e.into());
            }
            log::debug!("published {} TXT records after {:?}", records.len(), start.elapsed());

            progress("waiting for DNS propagation");
            wait_propagation(dns, &records, resolvers, propagation_timeout).await?;
            log::debug!("TXT records visible after {:?}", start.elapsed());

            progress("validating");
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(|e| ca_error("fetching the authorizations", dir, e))?;
                if a.status != AuthorizationStatus::Pending {
                    continue;
                }
                let ident = a.identifier().to_string();
                let mut ch = a.challenge(ChallengeType::Dns01).ok_or_else(|| AcmeError::NoDns01(ident.clone()))?;
                ch.set_ready().await.map_err(|e| match e {
                    instant_acme::Error::Api(p) => AcmeError::ValidationFailed { identifier: ident.clone(), detail: problem_text(&p) },
                    e => ca_error("answering the challenge", dir, e),
                })?;
            }
        }

        let status = match order.poll_ready(&POLL).await {
            Ok(s) => s,
            Err(instant_acme::Error::Api(p)) => return Err(validation_error(&mut order, dir, Some(p)).await),
            Err(e) => return Err(ca_error("waiting for validation", dir, e)),
        };
        if status != OrderStatus::Ready {
            return Err(validation_error(&mut order, dir, None).await);
        }
        log::debug!("order ready after {:?}", start.elapsed());

        progress("finalizing");
        order.finalize_csr(csr_der).await.map_err(|e| ca_error("finalizing the order", dir, e))?;
        progress("downloading certificate");
        let chain_pem = order.poll_certificate(&POLL).await.map_err(|e| ca_error("downloading the certificate", dir, e))?;
        let url = order.state().certificate.clone();
        Ok(IssuedCertificate { chain_pem, url })
    }
    .await;

    if written {
        if let Err(e) = dns.remove(&records).await {
            let names: BTreeSet<&str> = records.iter().map(|r| r.fqdn.as_str()).collect();
            log::warn!(
                "could not remove the DNS-01 TXT values at {} through {}: {e}",
                names.into_iter().collect::<Vec<_>>().join(", "),
                dns.name()
            );
        }
    }
    if result.is_ok() {
        log::info!("certificate for {} issued in {:?}", domains.join(", "), start.elapsed());
    }
    result
}

/// Waits for the records on `resolvers`, or on the provider's servers / discovered ones.
async fn wait_propagation(dns: &dyn DnsProvider, records: &[TxtRecord], resolvers: &[SocketAddr], timeout: Duration) -> Result<(), DnsError> {
    if !resolvers.is_empty() {
        return propagation::wait_for_txt(records, resolvers, timeout).await;
    }
    // Group by the servers the provider names (None: discover).
    let mut groups: Vec<(Option<Vec<SocketAddr>>, Vec<TxtRecord>)> = Vec::new();
    for r in records {
        let servers = dns.authoritative_servers(&r.fqdn).await?;
        match groups.iter_mut().find(|(s, _)| *s == servers) {
            Some((_, v)) => v.push(r.clone()),
            None => groups.push((servers, vec![r.clone()])),
        }
    }
    let deadline = Instant::now() + timeout;
    for (servers, recs) in groups {
        let left = deadline.saturating_duration_since(Instant::now());
        propagation::wait_for_txt(&recs, servers.as_deref().unwrap_or(&[]), left).await?;
    }
    Ok(())
}

/// Finds out which authorization failed and why.
async fn validation_error(order: &mut instant_acme::Order, dir: &str, order_problem: Option<Problem>) -> AcmeError {
    // Fresh authorization states: the cached ones predate validation.
    let fresh = order.refresh().await.is_ok();
    if fresh {
        let mut authzs = order.authorizations();
        while let Some(Ok(mut a)) = authzs.next().await {
            if a.refresh().await.is_err() {
                continue;
            }
            if a.status == AuthorizationStatus::Invalid {
                let ident = a.identifier().to_string();
                let detail = a
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref().map(problem_text))
                    .unwrap_or_else(|| "the authorization is invalid".into());
                return AcmeError::ValidationFailed { identifier: ident, detail };
            }
        }
    }
    match order_problem {
        Some(p) => AcmeError::Ca { stage: "validation", directory: dir.to_string(), cause: problem_text(&p) },
        None => AcmeError::Ca { stage: "validation", directory: dir.to_string(), cause: "the order became invalid".into() },
    }
}
