//! `acme-rs-demo [--module PATH] [--bench RUNS] [--exit]`
//!
//! `make demo`: starts a local ACME CA (Pebble, EAB required), a local Route53 API (moto) with
//! the zone `example.test`, the project's authoritative DNS server for it, and a real Apache
//! with mod_acme_rs on 127.0.0.1, which obtains one certificate for `example.test` +
//! `*.example.test` by DNS-01 and serves it over HTTPS. Then it prints how to look, and keeps
//! everything running until Ctrl-C (or exits at once with `--exit`).
//!
//! `--bench RUNS`: the benchmark of the README: time from starting apache2 to the new
//! certificate being served, RUNS times on a fresh stack each, with the median.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use acme_rs_stack::{module_path, ssl_vhost, Apache, ApacheOptions, Stack};
use anyhow::{bail, Context, Result};

const ZONE: &str = "example.test";

struct Args {
    module: PathBuf,
    bench: Option<usize>,
    exit: bool,
}

fn parse_args() -> Result<Args> {
    let mut module = None;
    let mut bench = None;
    let mut exit = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--module" => module = Some(PathBuf::from(args.next().context("--module PATH")?)),
            "--bench" => bench = Some(args.next().context("--bench RUNS")?.parse()?),
            "--exit" => exit = true,
            _ => bail!("usage: acme-rs-demo [--module PATH] [--bench RUNS] [--exit]"),
        }
    }
    Ok(Args { module: module.unwrap_or_else(module_path), bench, exit })
}

/// Starts the stack and an Apache whose one SSL host is covered by `ACMEDomain example.test
/// *.example.test`; returns when the issued certificate is served, with the time that took
/// from starting apache2.
async fn run_once(module: &PathBuf) -> Result<(Stack, Apache, Duration)> {
    let stack = Stack::start().await?;
    stack.route53().create_zone(ZONE).await?;
    let conf = stack.acme_conf() + &ssl_vhost(ZONE, &["www.example.test"], "ACMEDomain example.test *.example.test");
    let started = Instant::now();
    let apache = Apache::start(ApacheOptions::with_module(module, conf)).await?;
    loop {
        if let Ok(resp) = apache.https_get(ZONE, "/").await {
            if resp.status == 200 {
                return Ok((stack, apache, started.elapsed()));
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("no certificate served after 120 s\n{}\n{}", apache.error_log(), stack.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(runs) = args.bench {
        let mut times = Vec::new();
        for run in 1..=runs {
            let (_stack, _apache, took) = run_once(&args.module).await?;
            println!("run {run}: certificate served {:.3} s after apache2 started", took.as_secs_f64());
            times.push(took);
        }
        times.sort();
        println!("median of {runs}: {:.3} s", times[times.len() / 2].as_secs_f64());
        return Ok(());
    }

    println!("Starting Pebble (EAB required), moto's Route53 API, the DNS server and Apache...");
    let (stack, apache, took) = run_once(&args.module).await?;
    let roots = stack.dir().join("pebble-roots.pem");
    std::fs::write(&roots, stack.pebble.issuer_roots_pem().await)?;
    let port = apache.https_port();
    let store = apache.server_root().join("acme_rs/certificates");
    println!(
        r#"
mod_acme_rs obtained a certificate for example.test + *.example.test by DNS-01 through Route53
and Apache serves it: {secs:.2} s after apache2 started, with nobody running apachectl.

Look:
  curl --cacert {roots} --resolve example.test:{port}:127.0.0.1 https://example.test:{port}/
  curl --cacert {roots} --resolve www.example.test:{port}:127.0.0.1 https://www.example.test:{port}/
  openssl s_client -connect 127.0.0.1:{port} -servername example.test </dev/null | openssl x509 -noout -subject -issuer -ext subjectAltName -dates
  curl http://127.0.0.1:{http}/server-status
  ls -l {store}
  less {log}

Configuration: {conf}
"#,
        secs = took.as_secs_f64(),
        roots = roots.display(),
        http = apache.http_port(),
        store = store.display(),
        log = apache.server_root().join("logs/error.log").display(),
        conf = apache.conf_path().display(),
    );
    if args.exit {
        return Ok(());
    }
    println!("Everything keeps running until Ctrl-C.");
    tokio::signal::ctrl_c().await?;
    println!("Stopping.");
    drop(apache);
    drop(stack);
    Ok(())
}
