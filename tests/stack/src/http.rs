//! Small HTTP(S) clients for tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The crypto provider used everywhere in this crate. Explicit, because the dependency graph
/// enables more than one of rustls's providers and the process-wide default would be ambiguous.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A reqwest client that trusts only the given PEM CA bundle (or nothing but plain HTTP when
/// `None`), and never uses a proxy from the environment.
pub(crate) fn client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).context("parsing CA PEM")?;
        b = b.tls_certs_only(certs);
    }
    Ok(b.build()?)
}

/// Plain HTTP GET; returns the status code and the body as text.
///
/// Panics on a connection error: meant for test assertions. Use [`try_http_get`] to poll.
pub async fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
}

/// Plain HTTP GET; returns the status code and the body as text.
pub async fn try_http_get(url: &str) -> Result<(u16, String)> {
    let resp = client(None)?.get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// What [`https_get`] saw.
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    pub status: u16,
    pub body: String,
    /// The certificate chain the server presented, leaf first, DER.
    pub chain: Vec<Vec<u8>>,
}

impl HttpsResponse {
    /// The presented chain as PEM (leaf first).
    pub fn chain_pem(&self) -> String {
        chain_to_pem(&self.chain)
    }
}

/// Encodes DER certificates as a PEM bundle.
pub fn chain_to_pem(chain: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Connects to 127.0.0.1:`port` over TLS with SNI `sni` and returns the chain the server
/// presents (leaf first, DER). The chain is *not* verified: tests check it themselves
/// (e.g. against [`crate::Pebble::issuer_roots_pem`]).
pub async fn fetch_served_chain(port: u16, sni: &str) -> Result<Vec<Vec<u8>>> {
    let (chain, _) = tls_connect(port, sni).await?;
    Ok(chain)
}

/// `GET path` over HTTPS to 127.0.0.1:`port` with SNI and Host `sni`, over HTTP/1.0 (so the body
/// is never chunked). The server's certificate is recorded, not verified.
pub async fn https_get(port: u16, sni: &str, path: &str) -> Result<HttpsResponse> {
    let (chain, mut tls) = tls_connect(port, sni).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // Servers may close without close_notify; keep whatever arrived.
    if let Err(e) = tls.read_to_end(&mut raw).await {
        if raw.is_empty() {
            return Err(e.into());
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status line in {head:?}"))?;
    Ok(HttpsResponse { status, body: body.to_string(), chain })
}

async fn tls_connect(
    port: u16,
    sni: &str,
) -> Result<(Vec<Vec<u8>>, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    let verifier = Arc::new(RecordingVerifier { provider: provider(), chain: Mutex::default() });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let name = ServerName::try_from(sni.to_string()).context("SNI name")?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .with_context(|| format!("TLS handshake with 127.0.0.1:{port} (SNI {sni})"))?;
    let chain = verifier.chain.lock().unwrap().clone();
    Ok((chain, tls))
}

/// Accepts any server certificate and remembers the chain; handshake signatures are still
/// checked, so the server really holds the key.
#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        *self.chain.lock().unwrap() = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// GET over HTTPS trusting only the PEM CA bundle `ca_pem`; the body if the status is 2xx.
pub async fn https_get_trusting(url: &str, ca_pem: &[u8]) -> Result<String> {
    let resp = client(Some(ca_pem))?.get(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    Ok(resp.text().await?)
}
