//! A real apache2 with the module: it starts, serves, survives 20 graceful restarts in a row
//! with the module still loaded, and stops cleanly.

use acme_rs_stack::{http_get, module_path, Apache, ApacheOptions};

const CONF: &str = "
# Terms not accepted: the module is fully configured but orders nothing.
ACMEAcceptTOS off
ACMEDomain example.test *.example.test
";

fn configured_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("[acme_rs:") && l.contains("certificate(s) configured")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_serves_survives_graceful_restarts_and_stops_cleanly() {
    let mut apache = Apache::start(ApacheOptions {
        module: Some(module_path()),
        extra_conf: CONF.into(),
    })
    .await
    .expect("apache2 with the module starts");
    let url = format!("http://127.0.0.1:{}/", apache.http_port());
    let parent = apache.parent_pid();

    let (status, _) = http_get(&url).await;
    assert_eq!(status, 200);
    let loaded_at_start = configured_lines(&apache.error_log());
    assert_eq!(loaded_at_start, 1, "{}", apache.error_log());

    for i in 1..=20 {
        apache.graceful().await.unwrap_or_else(|e| panic!("graceful restart {i}: {e}\n{}", apache.error_log()));
        let (status, _) = http_get(&url).await;
        assert_eq!(status, 200, "after graceful restart {i}");
        assert_eq!(apache.parent_pid(), parent, "the parent survived restart {i}");
    }
    let log = apache.error_log();
    // Each restart is a configuration pass that reloaded and re-ran the module.
    assert_eq!(configured_lines(&log), 21, "{log}");
    assert_eq!(log.matches("SIGUSR1 received").count(), 20, "{log}");

    let clean = apache.stop();
    assert!(clean, "apache2 did not exit cleanly:\n{}", apache.error_log());
    let log = apache.error_log();
    assert!(log.contains("caught SIGTERM, shutting down"), "{log}");
    for bad in ["panic", "Segmentation fault", "exit signal", "[acme_rs:crit]", "[acme_rs:emerg]"] {
        assert!(!log.contains(bad), "{bad:?} in the error log:\n{log}");
    }
}
