//! The first certificate end to end, against real apache2, Pebble (EAB required, default nonce
//! rejection), moto's Route53 API and the project's DNS server: Apache obtains a wildcard
//! certificate through Route53 and serves it by itself.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use acme_rs_stack::{module_path, ssl_vhost, Apache, ApacheOptions, PebbleOptions, Stack};
use common::{leaf, verify_chain, wait_for_log, wait_for_real_certificate};

const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

async fn start_apache(conf: String) -> Apache {
    Apache::start(ApacheOptions::with_module(module_path(), conf)).await.expect("apache2 starts")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn from_an_empty_store_the_fallback_then_the_wildcard_certificate_is_served() {
    let stack = Stack::start().await.unwrap();
    let conf = stack.acme_conf()
        + &ssl_vhost("example.test", &["www.example.test"], "ACMEDomain example.test *.example.test");
    // No hosted zone yet: nothing can be issued, so the fallback phase is observable.
    let mut apache = start_apache(conf).await;
    let parent = apache.parent_pid();

    let first = apache.https_get("example.test", "/").await.expect("HTTPS answers with the fallback");
    assert_eq!(first.status, 503, "the fallback answers 503");
    assert!(leaf(&first.chain).is_fallback);
    wait_for_log(&apache, "no Route53 hosted zone covers", ISSUE_TIMEOUT).await;

    // The zone appears: the next retry issues the certificate, with nobody running apachectl.
    stack.route53().create_zone("example.test").await.unwrap();
    let chain = wait_for_real_certificate(&apache, "example.test", ISSUE_TIMEOUT).await;
    let served = leaf(&chain);
    assert_eq!(served.names, vec!["*.example.test".to_string(), "example.test".to_string()]);
    assert_eq!(served.key_type, "rsa2048");
    verify_chain(&chain, &stack.pebble.issuer_roots_pem().await);
    assert_eq!(apache.parent_pid(), parent, "Apache restarted gracefully, not from scratch");
    assert!(apache.error_log().contains("restarting Apache gracefully"));

    let page = apache.https_get("www.example.test", "/").await.unwrap();
    assert_eq!(page.status, 200, "a name under the wildcard is served");
    assert_eq!(leaf(&page.chain).serial, served.serial);

    // The store holds lego's layout with the right modes.
    let store = apache.server_root().join("acme_rs");
    let certs = store.join("certificates");
    for file in ["example.test.crt", "example.test.key", "example.test.issuer.crt", "example.test.json"] {
        assert!(certs.join(file).is_file(), "{file} missing");
    }
    assert_eq!(mode(&certs.join("example.test.key")), 0o600);
    assert_eq!(mode(&store), 0o700);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(certs.join("example.test.json")).unwrap()).unwrap();
    assert_eq!(meta["domains"], serde_json::json!(["example.test", "*.example.test"]));
    let crt = std::fs::read_to_string(certs.join("example.test.crt")).unwrap();
    assert!(crt.matches("BEGIN CERTIFICATE").count() >= 2, "leaf + intermediates");

    // No TXT record of ours is left in the zone.
    assert!(stack.route53().txt_values("_acme-challenge.example.test").await.unwrap().is_empty());

    // After a restart the stored certificate is served at once and nothing new is ordered.
    let orders_before = apache.error_log().matches("creating order").count();
    assert!(apache.stop(), "clean stop");
    apache.start_again().await.unwrap();
    let again = apache.https_get("example.test", "/").await.unwrap();
    assert_eq!(again.status, 200, "served at once after a restart");
    assert_eq!(leaf(&again.chain).serial, served.serial);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(apache.error_log().matches("creating order").count(), orders_before, "nothing new was ordered");

    // A hand-written SSLCertificateFile pointing at the store's files works as well.
    let manual = format!(
        "<VirtualHost 127.0.0.1:${{HTTPS_PORT}}>\n    ServerName manual.example.test\n    SSLEngine on\n    \
         SSLCertificateFile {dir}/example.test.crt\n    SSLCertificateKeyFile {dir}/example.test.key\n</VirtualHost>\n",
        dir = certs.display()
    );
    let conf = std::fs::read_to_string(apache.conf_path()).unwrap();
    std::fs::write(apache.conf_path(), conf + &manual).unwrap();
    apache.graceful().await.unwrap();
    let by_hand = apache.https_get("manual.example.test", "/").await.unwrap();
    assert_eq!((by_hand.status, leaf(&by_hand.chain).serial), (200, served.serial.clone()));

    // A name without a hosted zone: the renewal fails, Apache keeps running, the certificate in
    // use is never overwritten.
    apache
        .edit_conf("ACMEDomain example.test *.example.test", "ACMEDomain example.test *.example.test www.nozone.invalid")
        .unwrap();
    let generation = apache.generation().await.unwrap();
    apache.graceful().await.unwrap();
    assert!(apache.generation().await.unwrap() > generation);
    wait_for_log(&apache, "no Route53 hosted zone covers 'www.nozone.invalid'", ISSUE_TIMEOUT).await;
    assert_eq!(std::fs::read_to_string(certs.join("example.test.crt")).unwrap(), crt, "the certificate in use is untouched");
    let still = apache.https_get("example.test", "/").await.unwrap();
    assert_eq!((still.status, leaf(&still.chain).serial), (200, served.serial));
    assert!(apache.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_type_gives_a_certificate_of_that_type() {
    let stack = Stack::start().await.unwrap();
    stack.route53().create_zone("keys.test").await.unwrap();
    let types = ["rsa2048", "rsa3072", "rsa4096", "ec256", "ec384"];
    let mut conf = stack.acme_conf();
    for kt in types {
        conf += &ssl_vhost(&format!("{kt}.keys.test"), &[], &format!("ACMEDomain {kt}.keys.test\nACMEKeyType {kt}"));
    }
    let apache = start_apache(conf).await;
    let roots = stack.pebble.issuer_roots_pem().await;
    for kt in types {
        let chain = wait_for_real_certificate(&apache, &format!("{kt}.keys.test"), ISSUE_TIMEOUT).await;
        let served = leaf(&chain);
        assert_eq!(served.key_type, kt, "{served:?}");
        assert_eq!(served.names, vec![format!("{kt}.keys.test")]);
        verify_chain(&chain, &roots);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_ca_unreachable_at_start_the_certificate_arrives_when_it_is_back() {
    let mut stack = Stack::start().await.unwrap();
    stack.route53().create_zone("down.test").await.unwrap();
    stack.pebble.stop();
    let conf = stack.acme_conf() + &ssl_vhost("down.test", &[], "ACMEDomain down.test");
    let apache = start_apache(conf).await;
    assert_eq!(apache.https_get("down.test", "/").await.unwrap().status, 503);
    let log = wait_for_log(&apache, "renewal failed (attempt 1)", ISSUE_TIMEOUT).await;
    assert!(log.contains("retrying in"), "{log}");

    stack.pebble.restart().await.unwrap();
    let chain = wait_for_real_certificate(&apache, "down.test", ISSUE_TIMEOUT).await;
    verify_chain(&chain, &stack.pebble.issuer_roots_pem().await);
    assert_eq!(apache.https_get("down.test", "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_validation_leaves_no_txt_record() {
    let mut stack = Stack::start().await.unwrap();
    stack.route53().create_zone("fail.test").await.unwrap();
    // A Pebble that asks a DNS server where nothing answers: every validation fails, while our
    // own propagation check (against the real DNS server) succeeds.
    let dead_dns = format!("127.0.0.1:{}", acme_rs_stack::free_port()).parse().unwrap();
    stack.pebble = acme_rs_stack::Pebble::start(PebbleOptions { dns_server: dead_dns, nosleep: true, ..PebbleOptions::default() })
        .await
        .unwrap();
    let conf = stack.acme_conf() + &ssl_vhost("fail.test", &[], "ACMEDomain fail.test *.fail.test");
    let apache = start_apache(conf).await;
    wait_for_log(&apache, "renewal failed (attempt 1)", ISSUE_TIMEOUT).await;
    assert!(stack.route53().txt_values("_acme-challenge.fail.test").await.unwrap().is_empty());
    assert_eq!(apache.https_get("fail.test", "/").await.unwrap().status, 503, "still the fallback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_eab_hmac_or_terms_not_accepted_are_logged_and_apache_keeps_running() {
    let stack = Stack::start().await.unwrap();
    stack.route53().create_zone("eab.test").await.unwrap();
    let wrong_hmac = "d3JvbmctaG1hYy1rZXktZm9yLXRoZS10ZXN0LTAwMDAw";
    let conf = stack.acme_conf().replace(stack.pebble.eab_hmac(), wrong_hmac)
        + &ssl_vhost("eab.test", &[], "ACMEDomain eab.test");
    let mut apache = start_apache(conf).await;
    let log = wait_for_log(&apache, "External Account Binding", ISSUE_TIMEOUT).await;
    assert!(log.contains("[eab.test]"), "the line names the certificate:\n{log}");
    assert!(!log.contains(wrong_hmac) && !log.contains(stack.pebble.eab_hmac()), "the HMAC is never logged");
    assert_eq!(apache.https_get("eab.test", "/").await.unwrap().status, 503);
    assert!(apache.is_running());

    apache.edit_conf("ACMEAcceptTOS on", "ACMEAcceptTOS off").unwrap();
    apache.graceful().await.unwrap();
    wait_for_log(&apache, "ACMEAcceptTOS", ISSUE_TIMEOUT).await;
    assert!(apache.is_running());
    assert!(!apache.server_root().join("acme_rs/certificates/eab.test.crt").exists());
}
