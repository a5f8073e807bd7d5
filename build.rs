//! Generates the raw httpd/APR bindings from ffi/wrapper.h with bindgen.
//!
//! Everything is allowlisted by name so the binding layer stays small. Header locations come from
//! `apxs` when it is installed (Debian's apache2-dev), with Debian's paths as the fallback.

use std::path::PathBuf;
use std::process::Command;

fn apxs_query(var: &str) -> Option<String> {
    let out = Command::new("apxs").args(["-q", var]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=ffi/wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");

    let httpd_include = apxs_query("INCLUDEDIR").unwrap_or_else(|| "/usr/include/apache2".into());
    let apr_include = apxs_query("APR_INCLUDEDIR").unwrap_or_else(|| "/usr/include/apr-1.0".into());

    let bindings = bindgen::Builder::default()
        .header("ffi/wrapper.h")
        .clang_args([
            format!("-I{httpd_include}"),
            format!("-I{apr_include}"),
            "-DLINUX".into(),
            "-D_REENTRANT".into(),
            "-D_GNU_SOURCE".into(),
        ])
        // Types.
        .allowlist_type("module")
        .allowlist_type("command_rec")
        .allowlist_type("cmd_parms")
        .allowlist_type("server_rec")
        .allowlist_type("request_rec")
        .allowlist_type("process_rec")
        .allowlist_type("apr_pool_t")
        .allowlist_type("apr_array_header_t")
        .allowlist_type("apr_status_t")
        // httpd functions and data.
        .allowlist_function("ap_log_error_")
        .allowlist_function("ap_hook_(pre_config|check_config|post_config|handler|monitor)")
        .allowlist_function("ap_hook_ssl_add_(fallback_)?cert_files")
        .allowlist_function("ap_get_module_config")
        .allowlist_function("ap_state_query")
        .allowlist_function("ap_mpm_query")
        .allowlist_function("ap_exists_config_define")
        .allowlist_function("ap_server_root_relative")
        .allowlist_function("ap_rputs")
        .allowlist_function("ap_rwrite")
        .allowlist_function("ap_set_content_type")
        .allowlist_var("ap_server_root")
        .allowlist_var("ap_server_conf")
        // APR functions.
        .allowlist_function("apr_pstrdup")
        .allowlist_function("apr_pool_cleanup_register")
        .allowlist_function("apr_pool_cleanup_null")
        .allowlist_function("apr_array_push")
        .allowlist_function("apr_pool_cleanup_kill")
        .allowlist_function("apr_optional_hook_add")
        // Constants (macros with integer values).
        .allowlist_var("MODULE_MAGIC_(NUMBER_MAJOR|NUMBER_MINOR|COOKIE)")
        .allowlist_var("APLOG_[A-Z]+")
        .allowlist_var("APR_HOOK_(REALLY_FIRST|FIRST|MIDDLE|LAST|REALLY_LAST)")
        .allowlist_var("AP_SQ_[A-Z_]+")
        .allowlist_var("AP_MPMQ_[A-Z_]+")
        .allowlist_var("RSRC_CONF")
        .allowlist_var("OK|DECLINED|DONE")
        .allowlist_var("HTTP_(OK|INTERNAL_SERVER_ERROR|NOT_FOUND)")
        .allowlist_var("AP_STATUS_[A-Z_]+")
        .allowlist_var("M_GET")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on ffi/wrapper.h (is apache2-dev and libclang-dev installed?)");

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("bindings.rs");
    bindings.write_to_file(out).expect("writing bindings.rs");

    // Pin the DSO: httpd dlcloses and re-dlopens modules on every configuration pass. Keeping
    // the mapping means statics and the renewal thread's code survive restarts, so a running
    // thread can never execute unmapped code.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
