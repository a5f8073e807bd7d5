//! The thin safe layer over httpd's C API.
//!
//! This is the only place that dereferences raw pointers from httpd. It holds the `extern "C"`
//! entry points that httpd calls (each wrapped in [`guard`] so that no panic crosses into C),
//! turns their arguments into the safe types below, and calls the module code in
//! [`crate::module`], which never sees a raw pointer.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use acme_rs_engine::config::{DirectiveSpec, HostConfig};

use crate::ffi;

/// httpd's hook results.
pub const OK: c_int = 0;
pub const DECLINED: c_int = -1;
const HTTP_INTERNAL_SERVER_ERROR: c_int = 500;

/// Runs `f`, catching any panic so that it never unwinds into httpd (which would abort the
/// parent). A caught panic is logged and `fallback` returned.
pub fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log(None, Level::Crit, &format!("internal error (panic) in {what}: {msg}"));
            fallback
        }
    }
}

/// Error log levels (APLOG_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Emerg,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Level {
    fn aplog(self) -> c_int {
        (match self {
            Level::Emerg => ffi::APLOG_EMERG,
            Level::Crit => ffi::APLOG_CRIT,
            Level::Error => ffi::APLOG_ERR,
            Level::Warn => ffi::APLOG_WARNING,
            Level::Notice => ffi::APLOG_NOTICE,
            Level::Info => ffi::APLOG_INFO,
            Level::Debug => ffi::APLOG_DEBUG,
        }) as c_int
    }
}

fn module_index() -> c_int {
    // SAFETY: httpd writes module_index only while loading the module, on the main thread.
    unsafe { (*ptr::addr_of!(crate::acme_rs_module)).module_index }
}

fn to_cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// The main server of the current configuration generation, for log lines written by the
/// renewal thread. Set in post_config, cleared by a pconf cleanup before httpd frees it; the
/// lock makes the clearing wait for a log call in progress.
static LOG_SERVER: std::sync::RwLock<Option<ServerPtr>> = std::sync::RwLock::new(None);

#[derive(Clone, Copy)]
struct ServerPtr(*const ffi::server_rec);
// SAFETY: only dereferenced by ap_log_error_ while LOG_SERVER's lock guarantees it is live.
unsafe impl Send for ServerPtr {}
unsafe impl Sync for ServerPtr {}

/// This module's effective log level on the main server (`LogLevel acme_rs:...`), for
/// filtering lines from other threads cheaply.
static LOG_LEVEL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(ffi::APLOG_WARNING as i32);

/// Makes `main` the server that lines from other threads are logged against, until `pconf`
/// is cleared (restart or stop).
pub fn set_log_server(main: Server, pconf: Pool) {
    let level = main.raw.log.module_levels;
    // SAFETY: module_levels, when set, has an entry per module index.
    let module_level = unsafe {
        (!level.is_null() && module_index() >= 0)
            .then(|| *level.add(module_index() as usize) as c_int)
            .filter(|l| *l >= 0)
    };
    LOG_LEVEL.store(module_level.unwrap_or(main.raw.log.level), std::sync::atomic::Ordering::Relaxed);
    *LOG_SERVER.write().unwrap_or_else(|e| e.into_inner()) = Some(ServerPtr(main.raw));
    pconf.on_cleanup(|| *LOG_SERVER.write().unwrap_or_else(|e| e.into_inner()) = None);
}

/// Whether a line at `level` from another thread would be logged.
pub fn log_enabled(level: Level) -> bool {
    level.aplog() <= LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Logs from any thread against the current main server (see [`set_log_server`]).
#[track_caller]
pub fn log_from_thread(level: Level, msg: &str) {
    let caller = std::panic::Location::caller();
    log_from_thread_at(level, msg, caller.file(), caller.line());
}

/// [`log_from_thread`] with the source location given (for records from the engine).
pub fn log_from_thread_at(level: Level, msg: &str, file: &str, line: u32) {
    let server = LOG_SERVER.read().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the read lock keeps the pconf cleanup from clearing (and httpd from freeing) the
    // server_rec during the call. Between generations (None): httpd's stderr log, which
    // outlives restarts.
    let server = server.and_then(|ServerPtr(raw)| unsafe { Server::from_raw(raw) });
    log_raw(server.as_ref(), level.aplog(), msg, file, line);
}

/// Logs `msg` to the error log of `server` (or the main log), honouring `LogLevel acme_rs:...`.
#[track_caller]
pub fn log(server: Option<&Server>, level: Level, msg: &str) {
    log_flags(server, level.aplog(), msg);
}

/// Logs at startup, before the error log is open: the line reaches the terminal of
/// `apache2 -t` / `apachectl configtest` as well as the log.
#[track_caller]
pub fn log_startup(level: Level, msg: &str) {
    log_flags(None, level.aplog() | ffi::APLOG_STARTUP as c_int, msg);
}

#[track_caller]
fn log_flags(server: Option<&Server>, level: c_int, msg: &str) {
    let caller = std::panic::Location::caller();
    log_raw(server, level, msg, caller.file(), caller.line());
}

fn log_raw(server: Option<&Server>, level: c_int, msg: &str, file: &str, line: u32) {
    let file = to_cstring(file);
    let msg = to_cstring(msg);
    let s = server.map_or(ptr::null(), |s| s.raw as *const ffi::server_rec);
    // SAFETY: all pointers are valid for the call; the format is a constant "%s".
    unsafe {
        ffi::ap_log_error_(
            file.as_ptr(),
            line as c_int,
            module_index(),
            level,
            0,
            s,
            c"%s".as_ptr(),
            msg.as_ptr(),
        );
    }
}

unsafe fn cstr_opt(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

unsafe fn string_array(arr: *const ffi::apr_array_header_t) -> Vec<String> {
    if arr.is_null() {
        return Vec::new();
    }
    let arr = &*arr;
    let elts = arr.elts as *const *const c_char;
    (0..arr.nelts as usize).filter_map(|i| cstr_opt(*elts.add(i))).collect()
}

/// httpd's ServerRoot, against which relative paths resolve.
pub fn server_root() -> std::path::PathBuf {
    // SAFETY: ap_server_root is set while reading the configuration, before any directive runs.
    unsafe { cstr_opt(ffi::ap_server_root) }
        .unwrap_or_else(|| "/".into())
        .into()
}

/// Where httpd is in its life cycle (`ap_state_query(AP_SQ_MAIN_STATE)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MainState {
    /// The preflight configuration pass at start-up: start nothing here.
    PreflightConfig,
    /// A real configuration pass (start or restart).
    Config,
    Running,
    /// The configuration is being destroyed for a restart.
    DestroyConfig,
    /// httpd is stopping.
    Exiting,
    Other,
}

pub fn main_state() -> MainState {
    // SAFETY: a plain query.
    let state = unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) } as u32;
    match state {
        ffi::AP_SQ_MS_CREATE_PRE_CONFIG => MainState::PreflightConfig,
        ffi::AP_SQ_MS_CREATE_CONFIG => MainState::Config,
        ffi::AP_SQ_MS_RUN_MPM => MainState::Running,
        ffi::AP_SQ_MS_DESTROY_CONFIG => MainState::DestroyConfig,
        ffi::AP_SQ_MS_EXITING => MainState::Exiting,
        _ => MainState::Other,
    }
}

/// Runs `f` with every signal blocked in the calling thread. Threads created inside inherit
/// that mask, so signals keep going to httpd's main thread (whose handlers are installed
/// without SA_RESTART) and our syscalls never see EINTR.
pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved below.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, ptr::null_mut()) };
        }
    }
    // SAFETY: plain libc signal-mask calls on zero-initialised sets.
    let _restore = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        Restore(old)
    };
    f()
}

/// Whether httpd may be asked to restart gracefully now: the MPM is running (not starting,
/// not stopping) and httpd is not in single-process debug mode (`-X`), where SIGUSR1 is not
/// caught and would kill it.
pub fn graceful_restart_possible() -> bool {
    let mut state: c_int = 0;
    // SAFETY: plain queries; the MPM state is a word the parent's main thread updates.
    unsafe {
        ffi::ap_mpm_query(ffi::AP_MPMQ_MPM_STATE as c_int, &mut state) == 0
            && state == ffi::AP_MPMQ_RUNNING as c_int
            && ffi::ap_exists_config_define(c"ONE_PROCESS".as_ptr()) == 0
    }
}

/// Asks httpd for a graceful restart (AP_SIG_GRACEFUL to our own process). kill, not raise:
/// raise would target the calling thread, which blocks all signals.
pub fn signal_graceful_restart() -> std::io::Result<()> {
    // SAFETY: sending a signal to our own pid.
    if unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A pool httpd handed us; lives as long as httpd says.
#[derive(Clone, Copy)]
pub struct Pool {
    raw: *mut ffi::apr_pool_t,
}

type Cleanup = Box<dyn FnOnce() + Send>;

unsafe extern "C" fn run_cleanup(data: *mut c_void) -> ffi::apr_status_t {
    guard("pool cleanup", 0, || {
        // SAFETY: `data` came from Box::into_raw in Pool::on_cleanup and runs once.
        let f = unsafe { Box::from_raw(data as *mut Cleanup) };
        f();
        0
    })
}

impl Pool {
    /// Runs `f` when the pool is cleared or destroyed (last registered, first run).
    pub fn on_cleanup(self, f: impl FnOnce() + Send + 'static) {
        let data = Box::into_raw(Box::new(Box::new(f) as Cleanup)) as *mut c_void;
        // SAFETY: the pool is live; the cleanup owns `data`.
        unsafe {
            ffi::apr_pool_cleanup_register(self.raw, data, Some(run_cleanup), Some(ffi::apr_pool_cleanup_null))
        };
    }
}

/// The certificate and key file lists mod_ssl passes to its `ssl_add_*cert_files` hooks.
pub struct CertFiles {
    pool: *mut ffi::apr_pool_t,
    certs: *mut ffi::apr_array_header_t,
    keys: *mut ffi::apr_array_header_t,
}

impl CertFiles {
    pub fn is_empty(&self) -> bool {
        // SAFETY: mod_ssl passes live arrays.
        unsafe { self.certs.as_ref().is_none_or(|a| a.nelts == 0) }
    }

    pub fn push(&mut self, cert: &std::path::Path, key: &std::path::Path) {
        fn push_path(pool: *mut ffi::apr_pool_t, arr: *mut ffi::apr_array_header_t, path: &std::path::Path) {
            let c = to_cstring(&path.to_string_lossy());
            // SAFETY: the array holds `const char *` elements allocated in `pool`.
            unsafe {
                let slot = ffi::apr_array_push(arr) as *mut *const c_char;
                *slot = ffi::apr_pstrdup(pool, c.as_ptr());
            }
        }
        push_path(self.pool, self.certs, cert);
        push_path(self.pool, self.keys, key);
    }
}

/// A virtual host (or the main server) as httpd configured it.
#[derive(Clone, Copy)]
pub struct Server<'a> {
    raw: &'a ffi::server_rec,
}

impl<'a> Server<'a> {
    /// # Safety
    /// `raw` must point to a live server_rec for 'a.
    unsafe fn from_raw(raw: *const ffi::server_rec) -> Option<Server<'a>> {
        raw.as_ref().map(|raw| Server { raw })
    }

    pub fn is_virtual(&self) -> bool {
        self.raw.is_virtual != 0
    }

    pub fn server_name(&self) -> Option<String> {
        // SAFETY: httpd keeps these strings for the life of the server_rec.
        unsafe { cstr_opt(self.raw.server_hostname) }
    }

    /// ServerAlias names, exact and wildcard.
    pub fn aliases(&self) -> Vec<String> {
        // SAFETY: arrays of `char *` owned by the server_rec.
        unsafe {
            let mut names = string_array(self.raw.names);
            names.extend(string_array(self.raw.wild_names));
            names
        }
    }

    /// This module's configuration of the host.
    pub fn host_config(&self) -> Option<&'a HostConfig> {
        // SAFETY: our slot holds a HostConfig made by create_server_config/merge_server_config,
        // owned by a pool that outlives the server_rec's use.
        unsafe {
            (ffi::ap_get_module_config(self.raw.module_config, ptr::addr_of!(crate::acme_rs_module))
                as *const HostConfig)
                .as_ref()
        }
    }

    /// This host followed by every host after it in httpd's list (from the main server: all).
    pub fn with_following(self) -> impl Iterator<Item = Server<'a>> {
        std::iter::successors(Some(self), |s| unsafe { Server::from_raw(s.raw.next) })
    }
}

/// A directive being processed.
pub struct Directive<'a> {
    raw: &'a ffi::cmd_parms,
}

impl<'a> Directive<'a> {
    pub fn name(&self) -> String {
        // SAFETY: cmd points into our command table.
        unsafe { self.raw.cmd.as_ref().and_then(|c| cstr_opt(c.name)) }.unwrap_or_default()
    }

    pub fn server(&self) -> Option<Server<'a>> {
        // SAFETY: httpd sets cmd->server to the host being configured.
        unsafe { Server::from_raw(self.raw.server) }
    }

    /// The configuration of the host this directive is in, to change.
    fn host_config_mut(&self) -> Option<&'a mut HostConfig> {
        // SAFETY: see Server::host_config; directives are processed on one thread, one at a time.
        unsafe {
            let s = self.raw.server.as_ref()?;
            (ffi::ap_get_module_config(s.module_config, ptr::addr_of!(crate::acme_rs_module))
                as *mut HostConfig)
                .as_mut()
        }
    }
}

/// Builds httpd's command table from the engine's directive list. Called once per process
/// (the DSO is pinned), before httpd reads the table.
pub fn command_table(specs: &[DirectiveSpec]) -> *const ffi::command_rec {
    let mut table: Vec<ffi::command_rec> = specs
        .iter()
        .map(|spec| ffi::command_rec {
            name: to_cstring(spec.name).into_raw(),
            func: ffi::cmd_func { take_argv: Some(callbacks::set_directive) },
            cmd_data: ptr::null_mut(),
            req_override: ffi::RSRC_CONF as c_int,
            args_how: ffi::cmd_how_TAKE_ARGV,
            errmsg: to_cstring(spec.help).into_raw(),
        })
        .collect();
    table.push(ffi::command_rec::default());
    Box::leak(table.into_boxed_slice()).as_ptr()
}

/// The `extern "C"` functions httpd calls. Each catches panics and translates.
pub mod callbacks {
    use super::*;
    use crate::module;

    unsafe extern "C" fn drop_host_config(data: *mut c_void) -> ffi::apr_status_t {
        guard("pool cleanup", 0, || {
            // SAFETY: `data` came from Box::into_raw in new_host_config, registered once.
            drop(unsafe { Box::from_raw(data as *mut HostConfig) });
            0
        })
    }

    /// Puts `config` into `pool`'s care: it is dropped when the pool is cleared.
    unsafe fn new_host_config(pool: *mut ffi::apr_pool_t, config: HostConfig) -> *mut c_void {
        let raw = Box::into_raw(Box::new(config)) as *mut c_void;
        ffi::apr_pool_cleanup_register(
            pool,
            raw,
            Some(drop_host_config),
            Some(ffi::apr_pool_cleanup_null),
        );
        raw
    }

    pub unsafe extern "C" fn create_server_config(
        pool: *mut ffi::apr_pool_t,
        _s: *mut ffi::server_rec,
    ) -> *mut c_void {
        guard("create_server_config", ptr::null_mut(), || unsafe {
            new_host_config(pool, HostConfig::default())
        })
    }

    pub unsafe extern "C" fn merge_server_config(
        pool: *mut ffi::apr_pool_t,
        base: *mut c_void,
        add: *mut c_void,
    ) -> *mut c_void {
        guard("merge_server_config", add, || unsafe {
            match ((base as *const HostConfig).as_ref(), (add as *const HostConfig).as_ref()) {
                (Some(base), Some(add)) => new_host_config(pool, HostConfig::merge(base, add)),
                _ => add,
            }
        })
    }

    pub unsafe extern "C" fn set_directive(
        parms: *mut ffi::cmd_parms,
        _mconfig: *mut c_void,
        argc: c_int,
        argv: *const *mut c_char,
    ) -> *const c_char {
        let fallback = c"mod_acme_rs: internal error while reading this directive".as_ptr();
        guard("directive handler", fallback, || unsafe {
            let Some(parms_ref) = parms.as_ref() else { return fallback };
            let directive = Directive { raw: parms_ref };
            let args: Vec<String> = (0..argc.max(0) as usize)
                .filter_map(|i| cstr_opt(*argv.add(i)))
                .collect();
            let Some(config) = directive.host_config_mut() else { return fallback };
            match module::set_directive(&directive, config, &args) {
                Ok(()) => ptr::null(),
                // httpd prints this with the file and line of the directive.
                Err(msg) => ffi::apr_pstrdup(parms_ref.pool, to_cstring(&msg).as_ptr()),
            }
        })
    }

    pub unsafe extern "C" fn register_hooks(_pool: *mut ffi::apr_pool_t) {
        guard("register_hooks", (), || unsafe {
            let middle = ffi::APR_HOOK_MIDDLE as c_int;
            ffi::ap_hook_pre_config(Some(pre_config), ptr::null(), ptr::null(), middle);
            ffi::ap_hook_check_config(Some(check_config), ptr::null(), ptr::null(), middle);
            ffi::ap_hook_post_config(Some(post_config), ptr::null(), ptr::null(), middle);
            // Only the core flavour of mod_ssl's hooks (http_ssl.h): mod_ssl runs both.
            ffi::ap_hook_ssl_add_cert_files(Some(ssl_add_cert_files), ptr::null(), ptr::null(), middle);
            ffi::ap_hook_ssl_add_fallback_cert_files(
                Some(ssl_add_fallback_cert_files),
                ptr::null(),
                ptr::null(),
                middle,
            );
        })
    }

    unsafe extern "C" fn pre_config(
        _pconf: *mut ffi::apr_pool_t,
        _plog: *mut ffi::apr_pool_t,
        _ptemp: *mut ffi::apr_pool_t,
    ) -> c_int {
        guard("pre_config", OK, || {
            module::pre_config();
            OK
        })
    }

    unsafe extern "C" fn check_config(
        _pconf: *mut ffi::apr_pool_t,
        _plog: *mut ffi::apr_pool_t,
        _ptemp: *mut ffi::apr_pool_t,
        s: *mut ffi::server_rec,
    ) -> c_int {
        guard("check_config", HTTP_INTERNAL_SERVER_ERROR, || unsafe {
            let Some(main) = Server::from_raw(s) else { return OK };
            match module::check_config(main) {
                Ok(()) => OK,
                Err(msg) => {
                    log_startup(Level::Emerg, &msg);
                    HTTP_INTERNAL_SERVER_ERROR
                }
            }
        })
    }

    unsafe extern "C" fn post_config(
        pconf: *mut ffi::apr_pool_t,
        _plog: *mut ffi::apr_pool_t,
        _ptemp: *mut ffi::apr_pool_t,
        s: *mut ffi::server_rec,
    ) -> c_int {
        guard("post_config", OK, || unsafe {
            if let Some(main) = Server::from_raw(s) {
                module::post_config(main, Pool { raw: pconf });
            }
            OK
        })
    }

    unsafe extern "C" fn ssl_add_cert_files(
        s: *mut ffi::server_rec,
        p: *mut ffi::apr_pool_t,
        certs: *mut ffi::apr_array_header_t,
        keys: *mut ffi::apr_array_header_t,
    ) -> c_int {
        guard("ssl_add_cert_files", DECLINED, || unsafe {
            let Some(server) = Server::from_raw(s) else { return DECLINED };
            let mut files = CertFiles { pool: p, certs, keys };
            if module::add_cert_files(server, &mut files) { OK } else { DECLINED }
        })
    }

    unsafe extern "C" fn ssl_add_fallback_cert_files(
        s: *mut ffi::server_rec,
        p: *mut ffi::apr_pool_t,
        certs: *mut ffi::apr_array_header_t,
        keys: *mut ffi::apr_array_header_t,
    ) -> c_int {
        guard("ssl_add_fallback_cert_files", DECLINED, || unsafe {
            let Some(server) = Server::from_raw(s) else { return DECLINED };
            let mut files = CertFiles { pool: p, certs, keys };
            if module::add_fallback_cert_files(server, &mut files) { OK } else { DECLINED }
        })
    }
}
