//! `acme-rs-testdns --listen 127.0.0.1:PORT --route53 http://127.0.0.1:PORT`
//!
//! Serves, over UDP and TCP, authoritative DNS for the hosted zones of a Route53-compatible API
//! (moto in the tests and the demo). See `acme_rs_stack::dns` for what it answers.

use std::net::SocketAddr;

fn usage() -> ! {
    eprintln!("usage: acme-rs-testdns --listen 127.0.0.1:PORT --route53 http://127.0.0.1:PORT");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut route53: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(args.next().unwrap_or_else(|| usage()).parse()?),
            "--route53" => route53 = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let (Some(listen), Some(route53)) = (listen, route53) else { usage() };
    let udp = tokio::net::UdpSocket::bind(listen).await?;
    let tcp = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("acme-rs-testdns: serving {listen} (UDP+TCP) from Route53 API {route53}");
    acme_rs_stack::dns::serve(udp, tcp, &route53).await
}
