//! Topic patterns route to the right subscriptions; unmatched events are kept.

use std::time::Duration;

use crate::helpers::{Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn topics_fan_out_and_unmatched_events_go_to_unrouted() {
    let invoices = Sink::start(Behavior::Ok).await;
    let everything = Sink::start(Behavior::Ok).await;
    let created = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.invoices]
topics = ["acme.invoice.*"]
url = "{}"
[subscriptions.everything]
topics = ["acme.#"]
url = "{}"
[subscriptions.created]
topics = ["acme.customer.created", "*.invoice.voided"]
url = "{}"
"#,
        invoices.url("/"),
        everything.url("/"),
        created.url("/")
    ))
    .await;
    for (id, ty) in
        [("m1", "invoice.paid"), ("m2", "customer.created"), ("m3", "invoice.voided"), ("m4", "invoice.paid.late")]
    {
        let body = format!(r#"{{"type":"{ty}"}}"#);
        assert_eq!(app.post_acme(id, &body).await.status(), 202);
    }
    // A GitHub event no subscription asks for.
    let body = br#"{"zen":"hi"}"#;
    let mut headers: Vec<(String, String)> = app.sign("github", body, "");
    headers.push(("x-github-event".into(), "push".into()));
    headers.push(("x-github-delivery".into(), "gh-1".into()));
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(app.post("github", &refs, body.to_vec()).await.status(), 202);

    let ids = |sink: &Sink| {
        let mut ids: Vec<String> = sink.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
        ids.sort();
        ids
    };
    everything.wait_for(4, T).await;
    invoices.wait_for(2, T).await;
    created.wait_for(2, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&everything), ["m1", "m2", "m3", "m4"]);
    assert_eq!(ids(&invoices), ["m1", "m3"]);
    assert_eq!(ids(&created), ["m2", "m3"]);

    let unrouted = app.letters(&Pile::Unrouted).await;
    assert_eq!(unrouted.len(), 1);
    assert_eq!(unrouted[0].0.id, "gh-1");
    assert_eq!(unrouted[0].0.event_type, "push");
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_unrouted_total{source=\"github\"}"), "{metrics}");
}
