//! What the module does at each directive and hook, in safe Rust: it translates between the
//! safe Apache layer and the engine, and holds no logic of its own that the engine could own.

use std::sync::Mutex;

use acme_rs_engine::config::{self, HostConfig, Scope, Settings, VirtualHostInfo};

use crate::apache::{self, Directive, Level, MainState, Server};

/// The settings resolved by the last configuration pass's check_config, for post_config.
static RESOLVED: Mutex<Option<Settings>> = Mutex::new(None);

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
    *RESOLVED.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            ssl: false,
            config: s.host_config().cloned().unwrap_or_default(),
        })
        .collect();
    let settings = config::resolve(&main_config, &vhosts, &apache::server_root()).map_err(|e| e.to_string())?;
    *RESOLVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
    Ok(())
}

pub fn post_config(main: Server) {
    if apache::main_state() == MainState::PreflightConfig {
        return;
    }
    let resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(settings) = resolved.as_ref() {
        let names: Vec<&str> = settings.certificates.iter().map(|c| c.name.as_str()).collect();
        apache::log(
            Some(&main),
            Level::Info,
            &format!("mod_acme_rs: {} certificate(s) configured: {}", names.len(), names.join(", ")),
        );
    }
}
