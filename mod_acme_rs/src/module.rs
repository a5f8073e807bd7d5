//! What the module does at each directive and hook, in safe Rust: it translates between the
//! safe Apache layer and the engine, and holds no logic of its own that the engine could own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use acme_rs_engine::config::{self, HostConfig, Scope, Settings, VirtualHostInfo};
use acme_rs_engine::renewal::Renewer;
use acme_rs_engine::store::Store;

use crate::apache::{self, CertFiles, Directive, Level, MainState, Pool, Server};

/// The settings resolved by the last configuration pass's check_config.
static RESOLVED: Mutex<Option<Settings>> = Mutex::new(None);

/// The renewal thread: started in the first real configuration pass, kept across graceful
/// restarts (the DSO is pinned) and given each new configuration, stopped when httpd stops.
static RENEWER: Mutex<Option<Renewer>> = Mutex::new(None);

/// ACMEGracefulRestart of the current configuration, read by the renewal thread.
static GRACEFUL_RESTART: AtomicBool = AtomicBool::new(true);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn set_directive(directive: &Directive, config: &mut HostConfig, args: &[String]) -> Result<(), String> {
    let scope = match directive.server() {
        Some(s) if s.is_virtual() => Scope::VirtualHost,
        _ => Scope::Server,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    config
        .apply(&directive.name(), &args, scope, &apache::server_root())
        .map_err(|e| e.to_string())
}

pub fn pre_config() {
    *lock(&RESOLVED) = None;
}

/// Cross-host validation; runs for `apache2 -t` too, so every mistake is caught there.
pub fn check_config(main: Server) -> Result<(), String> {
    let main_config = main.host_config().cloned().unwrap_or_default();
    let vhosts: Vec<VirtualHostInfo> = main
        .with_following()
        .filter(|s| s.is_virtual())
        .map(|s| VirtualHostInfo {
            server_name: s.server_name(),
            aliases: s.aliases(),
            // mod_ssl keeps SSLEngine private; the engine uses this only for a hint, so assume on.
            ssl: true,
            config: s.host_config().cloned().unwrap_or_default(),
        })
        .collect();
    let settings = config::resolve(&main_config, &vhosts, &apache::server_root()).map_err(|e| e.to_string())?;
    *lock(&RESOLVED) = Some(settings);
    Ok(())
}

pub fn post_config(main: Server, pconf: Pool) {
    if apache::main_state() == MainState::PreflightConfig {
        return;
    }
    let Some(settings) = lock(&RESOLVED).clone() else { return };
    apache::set_log_server(main, pconf);
    install_logger();
    GRACEFUL_RESTART.store(settings.graceful_restart, Ordering::Relaxed);
    let names: Vec<&str> = settings.certificates.iter().map(|c| c.name.as_str()).collect();
    apache::log(
        Some(&main),
        Level::Info,
        &format!("mod_acme_rs: {} certificate(s) configured: {}", names.len(), names.join(", ")),
    );

    for warning in &settings.warnings {
        apache::log(Some(&main), Level::Warn, warning);
    }

    let mut renewer = lock(&RENEWER);
    match renewer.as_ref() {
        Some(running) => running.reconfigure(settings),
        None => match apache::with_signals_blocked(|| Renewer::spawn(settings, Arc::new(on_installed))) {
            Ok(started) => *renewer = Some(started),
            Err(e) => apache::log(Some(&main), Level::Error, &format!("cannot start the renewal thread: {e}")),
        },
    }
    drop(renewer);

    // On stop (not on restart) stop the thread before httpd unloads the module and exits.
    let parent = std::process::id();
    pconf.on_cleanup(move || {
        if std::process::id() == parent && apache::main_state() == MainState::Exiting {
            if let Some(renewer) = lock(&RENEWER).take() {
                renewer.stop();
            }
        }
    });
}

/// Called on the renewal thread after certificates were installed: one graceful restart for
/// all of them, so that Apache serves them.
fn on_installed(names: &[String]) {
    let names = names.join(", ");
    if !GRACEFUL_RESTART.load(Ordering::Relaxed) {
        apache::log_from_thread(
            Level::Notice,
            &format!("[{names}] new certificate installed; ACMEGracefulRestart is off, so it is served after the next restart"),
        );
    } else if !apache::graceful_restart_possible() {
        apache::log_from_thread(
            Level::Warn,
            &format!("[{names}] new certificate installed, but httpd is not in a state to restart gracefully (single-process mode or stopping); it is served after the next restart"),
        );
    } else {
        apache::log_from_thread(Level::Notice, &format!("[{names}] new certificate installed: restarting Apache gracefully"));
        if let Err(e) = apache::signal_graceful_restart() {
            apache::log_from_thread(Level::Error, &format!("[{names}] could not signal a graceful restart: {e}"));
        }
    }
}

/// The certificate the module provides for `server`, if any (the engine decided which host
/// gets which certificate when it resolved the configuration).
fn certificate_for(server: Server) -> Option<(Settings, config::CertificateSpec)> {
    let settings = lock(&RESOLVED).clone()?;
    let cert = settings.certificate_for_host(&server.server_name()?)?.clone();
    Some((settings, cert))
}

/// mod_ssl asks for a host's certificate files: the store's, once they exist. A host with its
/// own SSLCertificateFile is left alone.
pub fn add_cert_files(server: Server, files: &mut CertFiles) -> bool {
    if !files.is_empty() {
        return false;
    }
    let Some((settings, cert)) = certificate_for(server) else { return false };
    let store = match Store::open(&settings.store) {
        Ok(store) => store,
        Err(e) => {
            apache::log(Some(&server), Level::Error, &format!("[{}] cannot open the store: {e}", cert.name));
            return false;
        }
    };
    let paths = store.cert_paths(&cert.file_stem());
    if paths.crt.is_file() && paths.key.is_file() {
        files.push(&paths.crt, &paths.key);
        return true;
    }
    false
}

/// Until the first certificate exists, a self-signed one keeps Apache starting; mod_ssl then
/// answers 503 for the host.
pub fn add_fallback_cert_files(server: Server, files: &mut CertFiles) -> bool {
    let Some((settings, cert)) = certificate_for(server) else { return false };
    let fallback = Store::open(&settings.store).and_then(|store| store.ensure_fallback(&cert.file_stem(), &cert.domains));
    match fallback {
        Ok(paths) => {
            files.push(&paths.crt, &paths.key);
            apache::log(
                Some(&server),
                Level::Info,
                &format!("[{}] no certificate yet: serving a temporary self-signed one (503) until it arrives", cert.name),
            );
            true
        }
        Err(e) => {
            apache::log(Some(&server), Level::Error, &format!("[{}] cannot make a fallback certificate: {e}", cert.name));
            false
        }
    }
}

/// Routes the engine's `log` records to Apache's error log.
struct ApacheLogger;

impl log::Log for ApacheLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("acme_rs") && apache::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            apache::log_from_thread_at(
                level(record.level()),
                &record.args().to_string(),
                record.file().unwrap_or("acme_rs_engine"),
                record.line().unwrap_or(0),
            );
        }
    }

    fn flush(&self) {}
}

fn level(l: log::Level) -> Level {
    match l {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug | log::Level::Trace => Level::Debug,
    }
}

fn install_logger() {
    static LOGGER: ApacheLogger = ApacheLogger;
    // Fails harmlessly when already installed (the DSO is pinned: once per process).
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
