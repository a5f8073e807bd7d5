//! Moto + DNS server + Pebble, wired together.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::process::{write_file, TestDir};
use crate::{DnsServer, Moto, Pebble, PebbleOptions, Route53Admin};

/// The fake AWS keys written to [`Stack::credentials_file`]; moto accepts any.
pub const FAKE_ACCESS_KEY_ID: &str = "AKIAACMERSTESTKEY000";
pub const FAKE_SECRET_ACCESS_KEY: &str = "acme-rs-test-secret-key-not-a-real-one-00";

/// A Route53 API (moto), the DNS server answering for its zones, and Pebble validating through
/// that DNS server. Dropped in reverse order of start.
pub struct Stack {
    // Field order is drop order: Pebble first, moto last.
    pub pebble: Pebble,
    pub dns: DnsServer,
    pub moto: Moto,
    credentials_file: PathBuf,
    dir: TestDir,
}

impl Stack {
    /// Starts with Pebble's defaults here: EAB required, `PEBBLE_VA_NOSLEEP=1` (fast tests).
    pub async fn start() -> Result<Stack> {
        Self::start_with(PebbleOptions { nosleep: true, ..PebbleOptions::default() }).await
    }

    /// Starts with these Pebble options (`dns_server` is replaced by this stack's DNS server).
    pub async fn start_with(pebble: PebbleOptions) -> Result<Stack> {
        let dir = TestDir::new("stack")?;
        let credentials_file = dir.join("aws-credentials");
        write_file(
            &credentials_file,
            format!(
                "[default]\naws_access_key_id = {FAKE_ACCESS_KEY_ID}\naws_secret_access_key = {FAKE_SECRET_ACCESS_KEY}\n"
            ),
        )?;
        let moto = Moto::start().await?;
        let dns = DnsServer::start(&moto.endpoint())?;
        let pebble = Pebble::start(PebbleOptions { dns_server: dns.addr(), ..pebble }).await?;
        Ok(Stack { pebble, dns, moto, credentials_file, dir })
    }

    /// A Route53 client for this stack's moto.
    pub fn route53(&self) -> Route53Admin {
        self.moto.admin()
    }

    /// An AWS shared-credentials file with fake keys (`[default]`).
    pub fn credentials_file(&self) -> &Path {
        &self.credentials_file
    }

    /// A temporary directory for the test's own files, removed with the stack.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Server-level ACME* directives pointing the module at this stack, one per line.
    pub fn acme_conf(&self) -> String {
        format!(
            "ACMEServer {dir}\n\
             ACMEServerCA {ca}\n\
             ACMEExternalAccountBinding {kid} {hmac}\n\
             ACMEAcceptTOS on\n\
             ACMERoute53Endpoint {r53}\n\
             ACMERoute53CredentialsFile {creds}\n\
             ACMEDNSResolver {dns}\n",
            dir = self.pebble.directory_url(),
            ca = self.pebble.tls_ca_pem_path().display(),
            kid = self.pebble.eab_kid(),
            hmac = self.pebble.eab_hmac(),
            r53 = self.moto.endpoint(),
            creds = self.credentials_file.display(),
            dns = self.dns.addr(),
        )
    }

    /// Pebble's and moto's logs, for a failing test's message.
    pub fn logs(&self) -> String {
        format!("--- pebble ---\n{}\n--- moto ---\n{}", self.pebble.log(), self.moto.log())
    }
}
