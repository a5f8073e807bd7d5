/* The httpd and APR surface mod_acme_rs uses. bindgen reads this file; build.rs allowlists
 * only the names below, so the raw bindings stay small and reviewable. */
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <ap_mpm.h>
#include <ap_mmn.h>
#include <mod_status.h>
#include <apr_pools.h>
#include <apr_strings.h>
#include <apr_tables.h>
#include <apr_optional_hooks.h>
