//! The renewal thread: decides which certificates are due, orders them, checks and installs
//! them, and tells its owner (the Apache glue) what was installed so that Apache restarts
//! gracefully once per round.
//!
//! It owns a single-threaded tokio runtime on one OS thread. The owner passes a new
//! [`Settings`] on every configuration pass ([`Renewer::reconfigure`]) and stops it when httpd
//! stops ([`Renewer::stop`]). A failure never escapes: it is logged with the certificate's
//! name and retried with capped exponential backoff; a panic in a round is caught the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::acme::{self, AcmeAccount, AcmeOptions};
use crate::certcheck;
use crate::config::{CertificateSpec, Settings};
use crate::dns::route53::{Route53Options, Route53Provider};
use crate::keys;
use crate::store::{CertificateMeta, Store};

/// Called after a round that installed at least one certificate, with their names.
pub type OnInstalled = Arc<dyn Fn(&[String]) + Send + Sync>;

/// First retry after a failure; doubles per consecutive failure, up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_CAP: Duration = Duration::from_secs(3600);

#[derive(Clone)]
enum Control {
    Run(Arc<Settings>),
    Stop,
}

/// Handle to the renewal thread.
pub struct Renewer {
    control: watch::Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Renewer {
    /// Starts the thread. The caller decides the thread's signal mask (it is inherited).
    pub fn spawn(settings: Settings, on_installed: OnInstalled) -> std::io::Result<Renewer> {
        let (control, rx) = watch::channel(Control::Run(Arc::new(settings)));
        let thread = std::thread::Builder::new()
            .name("acme_rs-renewal".into())
            .spawn(move || run_thread(rx, on_installed))?;
        Ok(Renewer { control, thread: Some(thread) })
    }

    /// A new configuration: taken at the end of the round in progress, or at once when idle.
    pub fn reconfigure(&self, settings: Settings) {
        self.control.send_replace(Control::Run(Arc::new(settings)));
    }

    /// Stops the thread and waits for it: work in progress is abandoned (an unfinished order is
    /// picked up again at the next start).
    pub fn stop(mut self) {
        self.control.send_replace(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_thread(rx: watch::Receiver<Control>, on_installed: OnInstalled) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!(target: "acme_rs", "cannot start the renewal thread's runtime: {e}; no certificate will be renewed");
            return;
        }
    };
    // Rounds run as tasks (a panic there is a JoinError); this catches the rest, e.g. in the
    // owner's callback, so that nothing unwinds out of the thread unnoticed.
    let supervised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(supervise(rx, on_installed))));
    if supervised.is_err() {
        log::error!(target: "acme_rs", "internal error (panic) in the renewal thread; certificates are not renewed until Apache restarts");
    }
    // Blocking tasks (key generation) get a moment to finish; the DSO is pinned, so a thread
    // that outlives this cannot run unmapped code.
    runtime.shutdown_timeout(Duration::from_secs(2));
}

async fn supervise(mut rx: watch::Receiver<Control>, on_installed: OnInstalled) {
    let mut state = RenewalState::default();
    loop {
        let settings = match &*rx.borrow_and_update() {
            Control::Run(settings) => settings.clone(),
            Control::Stop => return,
        };
        let round = {
            let settings = settings.clone();
            let mut round_state = std::mem::take(&mut state);
            tokio::spawn(async move {
                let outcome = run_round(&settings, &mut round_state).await;
                (outcome, round_state)
            })
        };
        let (outcome, next_state) = tokio::select! {
            joined = round => match joined {
                Ok(done) => done,
                Err(e) => {
                    // A panic inside the round: keep going with fresh state, retry soon.
                    log::error!(target: "acme_rs", "internal error in the renewal round: {e}; retrying in {}s", RETRY_BASE.as_secs());
                    (RoundOutcome { installed: vec![], next_wake: SystemTime::now() + RETRY_BASE }, RenewalState::default())
                }
            },
            _ = wait_for_stop(rx.clone()) => return,
        };
        state = next_state;
        if !outcome.installed.is_empty() {
            on_installed(&outcome.installed);
        }
        let sleep = outcome
            .next_wake
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(settings.check_interval);
        log::debug!(target: "acme_rs", "next certificate check in {}s", sleep.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

async fn wait_for_stop(mut rx: watch::Receiver<Control>) {
    loop {
        if matches!(*rx.borrow_and_update(), Control::Stop) {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What the thread remembers between rounds.
#[derive(Default)]
struct RenewalState {
    account: Option<(AcmeOptionsKey, Arc<AcmeAccount>)>,
    failures: HashMap<String, Failure>,
}

/// Identifies the account settings an [`AcmeAccount`] was made with.
type AcmeOptionsKey = (String, Option<String>);

struct Failure {
    count: u32,
    retry_at: SystemTime,
}

struct RoundOutcome {
    installed: Vec<String>,
    next_wake: SystemTime,
}

async fn run_round(settings: &Settings, state: &mut RenewalState) -> RoundOutcome {
    let now = SystemTime::now();
    let mut next_wake = now + settings.check_interval;
    let mut installed = Vec::new();
    let store = match Store::open(&settings.store) {
        Ok(store) => store,
        Err(e) => {
            log::error!(target: "acme_rs", "cannot open the store {}: {e}", settings.store.display());
            return RoundOutcome { installed, next_wake: now + RETRY_BASE };
        }
    };
    for cert in &settings.certificates {
        let due_at = match renewal_due_at(&store, cert) {
            Ok(t) => t,
            Err(reason) => {
                log::info!(target: "acme_rs", "[{}] {reason}: ordering a certificate", cert.name);
                now
            }
        };
        let retry_at = state.failures.get(&cert.name).map(|f| f.retry_at).unwrap_or(now);
        let start_at = due_at.max(retry_at);
        if start_at > now {
            next_wake = next_wake.min(start_at);
            continue;
        }
        match renew(settings, state, &store, cert).await {
            Ok(not_after) => {
                state.failures.remove(&cert.name);
                installed.push(cert.name.clone());
                let renew_at = cert.renew_before.renew_at(SystemTime::now(), not_after);
                next_wake = next_wake.min(renew_at);
            }
            Err(e) => {
                let failure = state.failures.entry(cert.name.clone()).or_insert(Failure { count: 0, retry_at: now });
                failure.count += 1;
                let delay = backoff(failure.count);
                failure.retry_at = SystemTime::now() + delay;
                next_wake = next_wake.min(failure.retry_at);
                log::error!(
                    target: "acme_rs",
                    "[{}] renewal failed (attempt {}): {e}; the certificate in use is kept; retrying in {}s",
                    cert.name,
                    failure.count,
                    delay.as_secs()
                );
            }
        }
    }
    RoundOutcome { installed, next_wake }
}

/// When the stored certificate for `cert` is due, or why it must be ordered now.
fn renewal_due_at(store: &Store, cert: &CertificateSpec) -> Result<SystemTime, String> {
    let stored = match store.load(&cert.file_stem()) {
        Ok(Some(stored)) => stored,
        Ok(None) => return Err("no certificate yet".into()),
        Err(e) => return Err(format!("the stored certificate is unusable ({e})")),
    };
    let info = &stored.meta;
    let mut have: Vec<String> = info.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    let mut want: Vec<String> = cert.domains.clone();
    have.sort();
    want.sort();
    if have != want {
        return Err(format!("the stored certificate covers {have:?}, the configuration asks for {want:?}"));
    }
    if info.key_type != cert.key_type {
        return Err(format!("the stored certificate's key is {}, the configuration asks for {}", info.key_type, cert.key_type));
    }
    Ok(cert.renew_before.renew_at(info.not_before, info.not_after))
}

/// Exponential backoff with ±20 % jitter, capped.
fn backoff(failures: u32) -> Duration {
    let base = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(RETRY_CAP);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let jitter = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

/// One certificate: order, check, install. Returns the new certificate's not_after.
async fn renew(
    settings: &Settings,
    state: &mut RenewalState,
    store: &Store,
    cert: &CertificateSpec,
) -> Result<SystemTime, String> {
    let account = account(settings, state, store).await?;
    let key_type = cert.key_type;
    // RSA key generation takes up to seconds: keep it off the runtime's thread.
    let key = tokio::task::spawn_blocking(move || keys::generate_key(key_type))
        .await
        .map_err(|e| format!("key generation did not finish: {e}"))?
        .map_err(|e| e.to_string())?;
    let csr = keys::csr_der(&key, &cert.domains).map_err(|e| e.to_string())?;
    let dns = Route53Provider::new(route53_options(settings)).await.map_err(|e| e.to_string())?;
    let name = cert.name.clone();
    let progress = move |stage: &str| log::info!(target: "acme_rs", "[{name}] {stage}");
    let issued = acme::order_certificate(
        &account,
        &cert.domains,
        &csr,
        &dns,
        &settings.dns_resolvers,
        settings.propagation_timeout,
        &progress,
    )
    .await
    .map_err(|e| e.to_string())?;
    let info = certcheck::check_certificate(&issued.chain_pem, &key, &cert.domains, SystemTime::now())
        .map_err(|e| format!("the CA's certificate failed the checks, not installed: {e}"))?;
    let meta = CertificateMeta::new(&info, issued.url.clone().unwrap_or_default());
    store.install(&cert.file_stem(), &issued.chain_pem, &key, &meta).map_err(|e| e.to_string())?;
    log::info!(
        target: "acme_rs",
        "[{}] installed a new certificate for {} (serial {}, valid until {})",
        cert.name,
        cert.domains.join(", "),
        info.serial,
        certcheck::rfc3339(info.not_after)
    );
    Ok(info.not_after)
}

async fn account(settings: &Settings, state: &mut RenewalState, store: &Store) -> Result<Arc<AcmeAccount>, String> {
    let key: AcmeOptionsKey = (settings.server.clone(), settings.eab.as_ref().map(|e| e.kid.clone()));
    if let Some((k, account)) = &state.account {
        if *k == key {
            return Ok(account.clone());
        }
    }
    let server_ca_pem = match &settings.server_ca {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| format!("cannot read ACMEServerCA {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let opts = AcmeOptions {
        directory_url: settings.server.clone(),
        server_ca_pem,
        contact_email: settings.email.clone(),
        eab: settings.eab.as_ref().map(|e| (e.kid.clone(), e.hmac.expose().to_vec())),
        accept_tos: settings.accept_tos,
    };
    let account_path = store.account_path(&settings.server).map_err(|e| e.to_string())?;
    let account = Arc::new(acme::account(&opts, &account_path).await.map_err(|e| e.to_string())?);
    state.account = Some((key, account.clone()));
    Ok(account)
}

fn route53_options(settings: &Settings) -> Route53Options {
    let r = &settings.route53;
    Route53Options {
        region: r.region.clone(),
        endpoint: r.endpoint.clone(),
        profile: r.profile.clone(),
        credentials_file: r.credentials_file.clone(),
        assume_role: r.assume_role.as_ref().map(|a| (a.arn.clone(), a.external_id.clone())),
        hosted_zones: r.hosted_zones.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(1);
        assert!(first >= RETRY_BASE.mul_f64(0.8) && first <= RETRY_BASE.mul_f64(1.2));
        let third = backoff(3);
        assert!(third >= (RETRY_BASE * 4).mul_f64(0.8) && third <= (RETRY_BASE * 4).mul_f64(1.2));
        assert!(backoff(40) <= RETRY_CAP.mul_f64(1.2));
    }
}
