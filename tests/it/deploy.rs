//! `deploy/`: the Grafana dashboard and the Prometheus alert rules ask only
//! for series a running hookwire exports. The names they use come from
//! `deploy/grafana/metrics.py` (it parses their PromQL); the series come from
//! a real process's `/metrics` after traffic that touches every stage
//! (delivered, dead-lettered, unrouted, a circuit opening, a replay). The
//! rest of `deploy/` (promtool rule tests, Kubernetes schemas, compose,
//! Dockerfile) is checked by `deploy/check-deploy.sh`, which
//! `deploy/test.sh` runs.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{AMQP_URL, Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

/// Series that appear only after an event this test cannot cause without
/// breaking something else, each checked where it can be caused.
const LAZY: &[(&str, &str)] = &[
    ("hookwire_event_log_dropped_total", "a record RabbitMQ refused (tests/it/broker_outage.rs causes drops)"),
    ("hookwire_config_reloads_total", "a SIGHUP to `hookwire serve` (tests/it/cli.rs reloads one)"),
    ("hookwire_broker_reconnects_total", "a lost broker connection (tests/it/broker_outage.rs loses one)"),
];

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_exported_metrics() {
    let fine = Sink::start(Behavior::Ok).await;
    let broken = Sink::start(Behavior::Status(500)).await;
    let extra = format!(
        "[subscriptions.fine]\ntopics = [\"acme.ok.*\"]\nurl = \"{}\"\n\
         [subscriptions.broken]\ntopics = [\"acme.bad.*\"]\nurl = \"{}\"\nretry = []\n\
         circuit_breaker = {{ failures = 1, cooldown = \"1m\" }}\n",
        fine.url("/"),
        broken.url("/")
    );
    // The operator API and the event log on, as the example config has them.
    let app = TestApp::start_adjusted(AMQP_URL, &extra, |c| {
        c.admin.tokens =
            vec![hookwire::config::AccessToken::full("operator", hookwire::config::Secret::new(TestApp::TOKEN))];
        c.event_log.enabled = true;
    })
    .await;
    assert_eq!(app.post_acme("evt-ok", r#"{"type":"ok.x"}"#).await.status(), 202);
    assert_eq!(app.post_acme("evt-bad", r#"{"type":"bad.x"}"#).await.status(), 202);
    assert_eq!(app.post_acme("evt-nowhere", r#"{"type":"none.x"}"#).await.status(), 202);
    fine.wait_for(1, Duration::from_secs(10)).await;
    let dead = Pile::Dead("broken".into());
    app.wait_letters(&dead, 1, Duration::from_secs(10)).await;
    let replay = app
        .api(Method::POST, "/api/v1/subscriptions/broken/dead-letters/replay")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let metrics = app.metrics().await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/metrics.py");
    let out = std::process::Command::new("python3").arg(script).output().expect("python3 runs metrics.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let used: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('\t').map(|(n, b)| (n.to_owned(), b.to_owned())))
        .collect();
    assert!(used.len() >= 15, "metrics.py found too few names: {used:?}");
    let exported = |name: &str| metrics.lines().any(|l| !l.starts_with('#') && l.starts_with(name));
    let missing: Vec<&str> = used
        .iter()
        .filter(|(name, base)| !exported(name) && !LAZY.iter().any(|(lazy, _)| lazy == base))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(missing.is_empty(), "the dashboard or the alerts use series hookwire does not export: {missing:?}");
    // Every lazy one is at least a metric hookwire declares.
    let source = include_str!("../../src/telemetry.rs");
    for (lazy, why) in LAZY {
        assert!(source.contains(&format!("\"{lazy}\"")), "{lazy} ({why}) is not a hookwire metric");
    }
}
