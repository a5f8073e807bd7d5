//! Debian's Pebble ACME test CA, with a TLS certificate made at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;

use crate::process::{free_port, write_file, ChildGuard, TestDir};

/// How to run Pebble.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// Where Pebble resolves names (DNS-01 TXT lookups): `-dnsserver`.
    pub dns_server: SocketAddr,
    /// `externalAccountBindingRequired` (default true).
    pub eab_required: bool,
    /// `certificateValidityPeriod` in seconds (Pebble's default: 5 years).
    pub certificate_validity: Option<u64>,
    /// `PEBBLE_VA_NOSLEEP=1`: no random 0-15 s delay before each validation (default false).
    pub nosleep: bool,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            dns_server: SocketAddr::from(([127, 0, 0, 1], 53)),
            eab_required: true,
            certificate_validity: None,
            nosleep: false,
        }
    }
}

/// A running Pebble. `PEBBLE_WFE_NONCEREJECT` is left at Pebble's default (5 % of nonces are
/// rejected with badNonce), so clients have to cope.
pub struct Pebble {
    child: Option<ChildGuard>,
    opts: PebbleOptions,
    port: u16,
    mgmt_port: u16,
    config_path: PathBuf,
    ca_pem_path: PathBuf,
    ca_pem: String,
    eab_kid: String,
    eab_hmac: String,
    // Last, so that the child stops before its directory goes.
    dir: TestDir,
}

/// The EAB key id configured in Pebble.
pub const EAB_KID: &str = "kid-1";

/// Makes a CA and a leaf for `localhost` / `127.0.0.1` signed by it: (ca_pem, leaf_pem, key_pem).
pub fn make_tls_cert() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "acme_rs_stack Pebble TLS CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem()))
}

impl Pebble {
    /// Writes the TLS certificate and config, starts `pebble -config <json> -dnsserver <addr>`
    /// and waits until the directory answers over HTTPS.
    pub async fn start(opts: PebbleOptions) -> Result<Pebble> {
        let dir = TestDir::new("pebble")?;
        let (ca_pem, leaf_pem, key_pem) = make_tls_cert()?;
        let ca_pem_path = dir.join("tls-ca.pem");
        write_file(&ca_pem_path, &ca_pem)?;
        write_file(&dir.join("tls-cert.pem"), &leaf_pem)?;
        write_file(&dir.join("tls-key.pem"), &key_pem)?;
        let eab_hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::process::random_bytes::<32>());

        let mut pebble = Pebble {
            child: None,
            opts,
            port: 0,
            mgmt_port: 0,
            config_path: dir.join("pebble-config.json"),
            ca_pem_path,
            ca_pem,
            eab_kid: EAB_KID.to_string(),
            eab_hmac,
            dir,
        };
        // A port can be taken between free_port() and Pebble's bind: try a few times.
        let mut last_err = None;
        for _ in 0..3 {
            pebble.port = free_port();
            pebble.mgmt_port = free_port();
            pebble.write_config()?;
            match pebble.spawn_and_wait().await {
                Ok(()) => return Ok(pebble),
                Err(e) => {
                    pebble.stop();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap())
    }

    fn write_config(&self) -> Result<()> {
        let mut cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.mgmt_port),
            "certificate": self.dir.join("tls-cert.pem"),
            "privateKey": self.dir.join("tls-key.pem"),
            // Only used for http-01 / tls-alpn-01 validation, which these tests don't do.
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.opts.eab_required,
            "externalAccountMACKeys": { &self.eab_kid: &self.eab_hmac },
        });
        if let Some(v) = self.opts.certificate_validity {
            cfg["certificateValidityPeriod"] = v.into();
        }
        let text = serde_json::to_string_pretty(&serde_json::json!({ "pebble": cfg }))?;
        write_file(&self.config_path, text)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let mut cmd = Command::new("pebble");
        cmd.arg("-config").arg(&self.config_path).arg("-dnsserver").arg(self.opts.dns_server.to_string());
        if self.opts.nosleep {
            cmd.env("PEBBLE_VA_NOSLEEP", "1");
        } else {
            cmd.env_remove("PEBBLE_VA_NOSLEEP");
        }
        self.child = Some(ChildGuard::spawn("pebble", cmd, &self.dir.join("pebble.log"))?);
        let client = crate::http::client(Some(self.ca_pem.as_bytes()))?;
        let url = self.directory_url();
        let res = crate::wait_until("Pebble's directory", Duration::from_secs(30), || {
            let running = self.child.as_mut().unwrap().ensure_running();
            let req = client.get(&url).send();
            async move {
                running?;
                Ok(match req.await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                })
            }
        })
        .await;
        res.with_context(|| format!("starting Pebble; its log:\n{}", self.log()))
    }

    /// `https://127.0.0.1:<port>/dir`
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn management_port(&self) -> u16 {
        self.mgmt_port
    }

    /// The PEM CA that signed Pebble's TLS certificate: what `ACMEServerCA` should name.
    pub fn tls_ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    pub fn tls_ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `kid-1`
    pub fn eab_kid(&self) -> &str {
        &self.eab_kid
    }

    /// The EAB HMAC key, base64url without padding (as Pebble's config and ACME clients want it).
    pub fn eab_hmac(&self) -> &str {
        &self.eab_hmac
    }

    pub fn options(&self) -> &PebbleOptions {
        &self.opts
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Pebble's output so far (all runs, when restarted).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Pebble's current ACME root certificate (management API `/roots/0`), to verify issued
    /// certificates against. It changes when Pebble restarts.
    pub async fn issuer_roots_pem(&self) -> String {
        self.try_issuer_roots_pem().await.expect("fetching Pebble's /roots/0")
    }

    pub async fn try_issuer_roots_pem(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/roots/0", self.mgmt_port);
        let resp = crate::http::client(Some(self.ca_pem.as_bytes()))?.get(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Ok(resp.text().await?)
    }

    /// Intermediate certificate of the current chain (management API `/intermediates/0`).
    pub async fn issuer_intermediates_pem(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/intermediates/0", self.mgmt_port);
        let resp = crate::http::client(Some(self.ca_pem.as_bytes()))?.get(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Ok(resp.text().await?)
    }

    /// Stops Pebble (the CA becomes unreachable); `restart` brings it back on the same ports.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Stops Pebble if it runs and starts it again with the same config and ports. Pebble keeps
    /// nothing across runs: accounts, orders and its ACME CA keys are new afterwards.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait().await
    }

    /// The temporary directory holding config, certificates and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
