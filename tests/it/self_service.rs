//! Subscriptions made, changed and deleted through the operator API, live
//! in every process (issue 9): three processes (all, ingress, worker) on one
//! namespace.

use std::time::{Duration, Instant};

use hookwire::app::{self, App, Role};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Behavior, OwnNode, Proxy, Sink, TestApp, eventually};

const T: Duration = Duration::from_secs(20);

/// Posts a signed `acme` event to another process's ingress.
async fn post_to(app: &TestApp, ingress: &App, id: &str, kind: &str) -> StatusCode {
    let body = format!(r#"{{"type":"{kind}"}}"#);
    let url = format!("http://{}/webhooks/acme", ingress.ingress_addr.unwrap());
    let mut request = app.http.post(url).header("content-type", "application/json").body(body.clone());
    for (name, value) in app.sign("acme", body.as_bytes(), id) {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status()
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    if_match: Option<u64>,
    body: Option<Value>,
) -> (u16, Value, Option<u64>) {
    let mut request = app.api(method, path);
    if let Some(version) = if_match {
        request = request.header("if-match", format!("\"{version}\""));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag =
        response.headers().get("etag").and_then(|v| v.to_str().ok()).and_then(|v| v.trim_matches('"').parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, etag)
}

fn converged(app: &App, name: &str, version: u64) -> bool {
    app.desired.borrow().subscriptions.get(name).is_some_and(|w| w.version == version)
}

#[tokio::test]
async fn a_subscription_made_by_api_routes_in_every_process_at_once() {
    let sink = Sink::start(Behavior::Ok).await;
    let other_sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator("").await;
    let ingress = app::start(app.config.clone(), Role::Ingress).await.unwrap();
    let worker = app::start(app.config.clone(), Role::Worker).await.unwrap();
    for process in [&ingress, &worker] {
        eventually(T, "the other processes are ready", || {
            let ready = process.ready().is_ok();
            async move { ready }
        })
        .await;
    }

    let definition = json!({
        "name": "billing",
        "topics": ["acme.invoice.*"],
        "url": sink.url("/hooks"),
        "retry": ["1s"],
        "owner": "billing-team",
        "description": "invoices to the ledger",
    });
    let (status, created, etag) =
        send(&app, Method::POST, "/api/v1/subscriptions", None, Some(definition.clone())).await;
    assert_eq!(status, 201, "{created}");
    let created_at = Instant::now();
    let version = created["version"].as_u64().unwrap();
    assert_eq!(etag, Some(version));
    assert_eq!(created["managed_by"], "api");
    assert_eq!(created["definition"]["owner"], "billing-team");
    // Right after the 201, through another process's ingress: delivered.
    assert_eq!(post_to(&app, &ingress, "evt_first", "invoice.paid").await, 202);
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("webhook-id"), "evt_first");
    eventually(Duration::from_secs(2), "every process applies the create within 2 s", || {
        let done = converged(&ingress, "billing", version) && converged(&worker, "billing", version);
        async move { done }
    })
    .await;
    let convergence = created_at.elapsed();
    assert!(convergence <= Duration::from_secs(2), "{convergence:?}");

    // Reading it back.
    let (status, shown, etag) = send(&app, Method::GET, "/api/v1/subscriptions/billing", None, None).await;
    assert_eq!((status, etag), (200, Some(version)), "{shown}");
    assert_eq!(shown["status"]["work"]["name"], format!("{}.sub.billing", app.config.rabbitmq.namespace));
    let (_, listed, _) = send(&app, Method::GET, "/api/v1/subscriptions", None, None).await;
    assert!(listed.as_array().unwrap().iter().any(|s| s["name"] == "billing" && s["managed_by"] == "api"));

    // Changes need If-Match; a stale one is refused; two racing writers on
    // one version: exactly one wins.
    let mut changed = definition.clone();
    changed["url"] = json!(other_sink.url("/hooks"));
    let path = "/api/v1/subscriptions/billing";
    assert_eq!(send(&app, Method::PUT, path, None, Some(changed.clone())).await.0, 428);
    assert_eq!(send(&app, Method::PUT, path, Some(version + 1000), Some(changed.clone())).await.0, 412);
    let (a, b) = tokio::join!(
        send(&app, Method::PUT, path, Some(version), Some(changed.clone())),
        send(&app, Method::PATCH, path, Some(version), Some(json!({"description": "racing"}))),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{a:?} {b:?}");
    let (_, now, current) = send(&app, Method::GET, path, None, None).await;
    let current = current.unwrap();
    // A merge patch moves the destination; the next event goes there.
    let patch = json!({"url": other_sink.url("/hooks"), "description": null});
    let (status, patched, _) = send(&app, Method::PATCH, path, Some(current), Some(patch)).await;
    assert_eq!(status, 200, "{patched} (was {now})");
    assert!(patched["definition"].get("description").is_none(), "null removes a member: {patched}");
    assert_eq!(post_to(&app, &ingress, "evt_moved", "invoice.paid").await, 202);
    let moved = other_sink.wait_for(1, T).await;
    assert_eq!(moved.last().unwrap().header("webhook-id"), "evt_moved");

    // A delete is refused while events are queued, and says how many.
    let version = patched["version"].as_u64().unwrap();
    other_sink.set(Behavior::Status(503));
    assert_eq!(post_to(&app, &ingress, "evt_stuck", "invoice.paid").await, 202);
    let dead_or_retry = format!("{}.sub.billing.retry.1s", app.config.rabbitmq.namespace);
    app.wait_depth(&dead_or_retry, 1, T).await;
    let (status, refused, _) = send(&app, Method::DELETE, path, None, None).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("1 event"), "{refused}");
    let (status, _, _) = send(&app, Method::DELETE, &format!("{path}?discard=true"), Some(version), None).await;
    assert_eq!(status, 204);
    assert_eq!(send(&app, Method::GET, path, None, None).await.0, 404);
    eventually(Duration::from_secs(2), "every process applies the delete", || {
        let gone = [&ingress, &worker].iter().all(|p| !p.desired.borrow().subscriptions.contains_key("billing"));
        async move { gone }
    })
    .await;

    ingress.shutdown().await;
    worker.shutdown().await;
}

#[tokio::test]
async fn bad_definitions_file_names_and_scopes_are_refused() {
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!(
        "[subscriptions.orders]\ntopics = [\"acme.order.*\"]\nurl = \"{}\"\n\
         [admin.tokens.ops]\ntoken = \"{}\"\nscopes = [\"read\", \"operate\", \"manage\"]\n\
         [admin.tokens.reader]\ntoken = \"reader-token-0123456789ab\"\nscopes = [\"read\"]\n\
         [admin.tokens.billing-team]\ntoken = \"billing-token-0123456789a\"\nscopes = [\"manage\"]\nsubscriptions = [\"billing-*\"]\n",
        sink.url("/"),
        TestApp::TOKEN
    );
    let app = TestApp::start(&extra).await;
    let create = |token: &'static str, body: Value| {
        app.http.post(app.admin_url("/api/v1/subscriptions")).bearer_auth(token).json(&body).send()
    };
    let good = |name: &str| json!({"name": name, "topics": ["acme.#"], "url": sink.url("/")});

    // Every problem at once, each with its field; a jq error with its position.
    let bad = json!({"name": "billing-eu", "topics": ["acme..x"], "url": "ftp://x", "transform": "{a: .b"});
    let response = create(TestApp::TOKEN, bad).await.unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["topics[0]", "url", "transform"], "{problem}");
    assert!(problem["errors"][2]["message"].as_str().unwrap().contains("line 1, column"), "{problem}");
    let bad_json = app
        .http
        .post(app.admin_url("/api/v1/subscriptions"))
        .bearer_auth(TestApp::TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);

    // The file's subscriptions are read-only here.
    assert_eq!(create(TestApp::TOKEN, good("orders")).await.unwrap().status(), 409);
    let put = app.api(Method::PUT, "/api/v1/subscriptions/orders").header("if-match", "\"0\"").json(&good("orders"));
    let response = put.send().await.unwrap();
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("config file"), "{problem}");
    let (status, shown) = (app.api_get("/api/v1/subscriptions/orders").await, ());
    assert_eq!(status["managed_by"], "file", "{shown:?}");

    // Scopes: read cannot create; billing-* cannot create orders-x.
    assert_eq!(create("reader-token-0123456789ab", good("billing-x")).await.unwrap().status(), 403);
    assert_eq!(create("billing-token-0123456789a", good("orders-x")).await.unwrap().status(), 403);
    assert_eq!(create("billing-token-0123456789a", good("billing-eu")).await.unwrap().status(), 201);
    assert_eq!(create("billing-token-0123456789a", good("billing-eu")).await.unwrap().status(), 409, "exists");
    // Nothing refused left a trace.
    let names: Vec<String> = app.catalog().state().entries().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names, ["billing-eu"]);
}

/// A topic change while events are queued: the queued ones are all
/// delivered once, events accepted after the answer follow the new topics,
/// and API-made subscriptions come back after every process restarts.
#[tokio::test]
async fn topic_changes_keep_queued_events_and_subscriptions_survive_restarts() {
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator("").await;
    let body = json!({"name": "moving", "topics": ["acme.a.*"], "url": sink.url("/hooks")});
    let (status, created, _) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    // Hold deliveries so events are queued when the topics change.
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions/moving/pause", None, None).await.0, 200);
    for i in 0..20 {
        assert_eq!(app.post_acme(&format!("queued-{i}"), r#"{"type":"a.x"}"#).await.status(), 202);
    }
    let work = format!("{}.sub.moving", app.config.rabbitmq.namespace);
    app.wait_depth(&work, 20, T).await;
    let version = created["version"].as_u64().unwrap();
    let patch = json!({"topics": ["acme.b.*"]});
    let (status, patched, _) =
        send(&app, Method::PATCH, "/api/v1/subscriptions/moving", Some(version), Some(patch)).await;
    assert_eq!(status, 200, "{patched}");
    for i in 0..5 {
        assert_eq!(app.post_acme(&format!("old-topic-{i}"), r#"{"type":"a.x"}"#).await.status(), 202);
        assert_eq!(app.post_acme(&format!("new-topic-{i}"), r#"{"type":"b.x"}"#).await.status(), 202);
    }
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions/moving/resume", None, None).await.0, 200);
    sink.wait_for(25, T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = sink.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
    ids.sort();
    let mut expected: Vec<String> =
        (0..20).map(|i| format!("queued-{i}")).chain((0..5).map(|i| format!("new-topic-{i}"))).collect();
    expected.sort();
    assert_eq!(ids, expected, "every queued event once, then only the new topic");

    // Restart: the subscription is read back from the catalog and delivers.
    app.stop().await;
    app.restart().await;
    let (status, shown, _) = send(&app, Method::GET, "/api/v1/subscriptions/moving", None, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["definition"]["topics"], json!(["acme.b.*"]));
    assert_eq!(app.post_acme("after-restart", r#"{"type":"b.y"}"#).await.status(), 202);
    let got = sink.wait_for(26, T).await;
    assert_eq!(got.last().unwrap().header("webhook-id"), "after-restart");
}

/// A process cut off from the broker while a subscription is made catches
/// up before it reports ready again, and API-made subscriptions, with their
/// queued events and pause flag, survive a restart of RabbitMQ and of every
/// hookwire process. On a node of the test's own: the shared broker cannot
/// be restarted under the other tests.
#[tokio::test]
async fn a_cut_off_process_catches_up_and_subscriptions_survive_a_broker_restart() {
    let node = OwnNode::start("hookwire-restart-test", 5682);
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator_on(&node.url(), "").await;
    let proxy = Proxy::start("127.0.0.1:5682").await;
    let mut config = app.config.clone();
    config.rabbitmq.url = vec![hookwire::config::Secret::new(proxy.url())];
    let worker = app::start(config, Role::Worker).await.unwrap();
    eventually(T, "the worker is ready", || {
        let ready = worker.ready().is_ok();
        async move { ready }
    })
    .await;

    proxy.down();
    eventually(T, "the worker notices it is cut off", || {
        let ready = worker.ready().is_ok();
        async move { !ready }
    })
    .await;
    let body = json!({"name": "durable", "topics": ["acme.d.*"], "url": sink.url("/hooks")});
    let (status, created, _) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let version = created["version"].as_u64().unwrap();
    assert!(!converged(&worker, "durable", version), "cut off, it cannot know yet");
    proxy.up();
    // The first moment it is ready again, it already runs the change.
    let deadline = Instant::now() + T;
    while worker.ready().is_err() {
        assert!(Instant::now() < deadline, "the worker reconnects: {:?}", worker.ready());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(converged(&worker, "durable", version), "ready means caught up");

    // Events queued while paused, then everything restarts. The pause
    // answer comes when the flag is stored; each process then stops its
    // consumer.
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions/durable/pause", None, None).await.0, 200);
    let work = format!("{}.sub.durable", app.config.rabbitmq.namespace);
    eventually(T, "every process stops consuming", || {
        let consumers = app.consumers(&work);
        async move { consumers.await == 0 }
    })
    .await;
    let mut accepted: Vec<String> = (0..5).map(|i| format!("queued-{i}")).collect();
    for id in &accepted {
        assert_eq!(app.post_acme(id, r#"{"type":"d.x"}"#).await.status(), 202);
    }
    app.wait_depth(&work, 5, T).await;
    worker.shutdown().await;
    app.stop().await;
    node.restart();
    app.restart().await;

    let (status, shown, _) = send(&app, Method::GET, "/api/v1/subscriptions/durable", None, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (shown["version"].as_u64(), shown["status"]["paused"].as_bool()),
        (Some(version), Some(true)),
        "{shown}"
    );
    assert!(sink.received().is_empty(), "still paused after the restart");
    assert_eq!(app.post_acme("after-restart", r#"{"type":"d.y"}"#).await.status(), 202);
    accepted.push("after-restart".to_owned());
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions/durable/resume", None, None).await.0, 200);
    sink.wait_for_ids(&accepted, T).await;
}

/// A retry schedule change: an event already waiting in a retry queue the
/// new schedule drops still comes back and is delivered; the old queue
/// counts as the subscription's (a delete answers 409 while it holds the
/// event) and is deleted once empty, and a delete copes with it being gone.
#[tokio::test]
async fn a_changed_retry_schedule_keeps_waiting_events_and_sweeps_the_old_queue() {
    let sink = Sink::start(Behavior::Status(503)).await;
    let app = TestApp::operator("").await;
    let body = json!({"name": "sched", "topics": ["acme.r.*"], "url": sink.url("/"), "retry": ["3s"]});
    let (status, created, _) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(app.post_acme("waiting", r#"{"type":"r.x"}"#).await.status(), 202);
    let old = format!("{}.sub.sched.retry.3s", app.config.rabbitmq.namespace);
    app.wait_depth(&old, 1, T).await;

    let version = created["version"].as_u64();
    let patch = json!({"retry": ["1s"]});
    let (status, patched, _) = send(&app, Method::PATCH, "/api/v1/subscriptions/sched", version, Some(patch)).await;
    assert_eq!(status, 200, "{patched}");
    let (status, refused, _) = send(&app, Method::DELETE, "/api/v1/subscriptions/sched", None, None).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["messages"][&old], 1, "the retired queue's event counts: {refused}");
    sink.set(Behavior::Ok);
    let attempts = sink.wait_for(2, T).await;
    assert_eq!(attempts[1].header("webhook-id"), "waiting", "back from the retired queue, delivered");

    // The reconciler sweeps after a grace of minutes; the sweep itself, at once.
    let mut topology = (*app.app.as_ref().unwrap().broker.topology()).clone();
    let retired: Vec<String> = topology.subscription("sched").unwrap().retired.iter().map(|r| r.name.clone()).collect();
    assert_eq!(retired, std::slice::from_ref(&old));
    let conn = app.connect().await;
    let swept = topology.sweep_retired(&conn, Duration::ZERO, Duration::from_secs(5)).await;
    assert!(swept && !app.queue_exists(&old).await, "an empty retired queue goes");
    assert!(topology.subscription("sched").unwrap().retired.is_empty());
    // The app's own view still lists it: a delete copes with it being gone.
    let (status, deleted, _) = send(&app, Method::DELETE, "/api/v1/subscriptions/sched", None, None).await;
    assert_eq!(status, 204, "{deleted}");
}

/// A deleted subscription's gauges do not stay up: an open circuit of a
/// subscription that is gone would keep an alert firing forever.
#[tokio::test]
async fn a_deleted_subscription_leaves_no_open_circuit_behind() {
    let sink = Sink::start(Behavior::Status(503)).await;
    let app = TestApp::operator("").await;
    let body = json!({
        "name": "breaks-then-goes", "topics": ["acme.o.*"], "url": sink.url("/"), "retry": ["30s"],
        "circuit_breaker": {"failures": 1, "cooldown": "1m"},
    });
    let (status, created, _) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(app.post_acme("opens-it", r#"{"type":"o.x"}"#).await.status(), 202);
    let series = "hookwire_circuit_open{subscription=\"breaks-then-goes\"}";
    eventually(T, "the circuit opens", || {
        let metrics = app.metrics();
        async move { metrics.await.contains(&format!("{series} 1")) }
    })
    .await;
    let path = "/api/v1/subscriptions/breaks-then-goes?discard=true";
    assert_eq!(send(&app, Method::DELETE, path, None, None).await.0, 204);
    let metrics = app.metrics().await;
    assert!(metrics.contains(&format!("{series} 0")), "{metrics}");
}

/// Reloading the file (as on SIGHUP): subscriptions added and removed live,
/// a name the API already uses refused, the running configuration kept.
#[tokio::test]
async fn a_reloaded_file_adds_and_removes_subscriptions_and_refuses_api_names() {
    let (kept, added) = (Sink::start(Behavior::Ok).await, Sink::start(Behavior::Ok).await);
    let sub = |name: &str, topic: &str, sink: &Sink| {
        format!("[subscriptions.{name}]\ntopics = [\"{topic}\"]\nurl = \"{}\"\n", sink.url("/"))
    };
    let app = TestApp::operator(&sub("kept", "acme.k.*", &kept)).await;
    let body = json!({"name": "api-one", "topics": ["acme.z.*"], "url": added.url("/")});
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await.0, 201);
    let running = app.app.as_ref().unwrap();

    let mut next = app.config.clone();
    let extra = hookwire::config::Config::from_toml(
        &crate::helpers::config_text("unused", crate::helpers::AMQP_URL, &sub("added", "acme.a.*", &added)),
        &|_| None,
    )
    .unwrap();
    next.subscriptions.extend(extra.subscriptions);
    running.reload(next.clone()).unwrap();
    eventually(T, "the added subscription runs", || {
        let has = running.desired.borrow().subscriptions.contains_key("added");
        async move { has }
    })
    .await;
    app.remember_live_topology(); // its queues outlive its removal below
    assert_eq!(app.post_acme("to-added", r#"{"type":"a.x"}"#).await.status(), 202);
    assert_eq!(app.post_acme("to-kept", r#"{"type":"k.x"}"#).await.status(), 202);
    assert_eq!(added.wait_for(1, T).await[0].header("webhook-id"), "to-added");
    assert_eq!(kept.wait_for(1, T).await[0].header("webhook-id"), "to-kept");

    // The API owns "api-one": a file that also defines it is refused whole.
    let mut clash = next.clone();
    let api_one = hookwire::config::Config::from_toml(
        &crate::helpers::config_text("unused", crate::helpers::AMQP_URL, &sub("api-one", "acme.q.*", &kept)),
        &|_| None,
    )
    .unwrap();
    clash.subscriptions.extend(api_one.subscriptions);
    clash.subscriptions.remove("kept");
    let refused = running.reload(clash).unwrap_err().to_string();
    assert!(refused.contains("api-one"), "{refused}");
    assert!(running.desired.borrow().subscriptions.contains_key("kept"), "nothing changed");
    assert!(app.metrics().await.contains("hookwire_config_reloads_total{outcome=\"refused\"}"));

    // Removing "added" from the file: its worker stops and routing ends.
    next.subscriptions.remove("added");
    running.reload(next).unwrap();
    eventually(T, "the removed subscription stops", || {
        let gone = !running.desired.borrow().subscriptions.contains_key("added");
        async move { gone }
    })
    .await;
    assert_eq!(app.post_acme("after-removal", r#"{"type":"a.x"}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(added.received().len(), 1, "no delivery to a removed subscription");

    // Tokens apply at once: a leaked one is revoked by a reload.
    let mut rotated = app.config.clone();
    let fresh = hookwire::config::Secret::new("rotated-operator-token-0123456789");
    rotated.admin.tokens = vec![hookwire::config::AccessToken::full("operator", fresh.clone())];
    let restart_needed = running.reload(rotated).unwrap();
    assert!(restart_needed.is_empty(), "tokens need no restart: {restart_needed:?}");
    let list = app.admin_url("/api/v1/subscriptions");
    assert_eq!(app.http.get(&list).bearer_auth(TestApp::TOKEN).send().await.unwrap().status(), 401);
    assert_eq!(app.http.get(&list).bearer_auth(fresh.expose()).send().await.unwrap().status(), 200);
}

/// `DELETE ?drain=true`: routing stops at once, what is queued is still
/// delivered, then the queues go. Dead letters block a drain.
#[tokio::test]
async fn a_drain_delete_delivers_what_is_queued_then_removes_the_queues() {
    let sink = Sink::start(Behavior::Status(503)).await;
    let app = TestApp::operator("").await;
    let body = json!({"name": "leaving", "topics": ["acme.l.*"], "url": sink.url("/"), "retry": ["1s", "1s", "1s", "1s", "1s"]});
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await.0, 201);
    app.remember_live_topology();
    for i in 0..5 {
        assert_eq!(app.post_acme(&format!("queued-{i}"), r#"{"type":"l.x"}"#).await.status(), 202);
    }
    sink.wait_for(5, T).await; // each failed once and waits in a retry queue
    let path = "/api/v1/subscriptions/leaving";
    assert_eq!(send(&app, Method::DELETE, &format!("{path}?drain=true&discard=true"), None, None).await.0, 400);
    let (status, accepted, _) = send(&app, Method::DELETE, &format!("{path}?drain=true"), None, None).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["draining"], true);
    let (_, shown, _) = send(&app, Method::GET, path, None, None).await;
    assert_eq!(shown["draining"], true, "{shown}");
    // Not routed any more.
    assert_eq!(app.post_acme("too-late", r#"{"type":"l.x"}"#).await.status(), 202);
    let failed_before = sink.received().len();
    sink.set(Behavior::Ok);
    let work = format!("{}.sub.leaving", app.config.rabbitmq.namespace);
    eventually(T, "drained, deleted, queues removed", || {
        let app = &app;
        let work = work.clone();
        async move { !app.queue_exists(&work).await }
    })
    .await;
    let mut delivered: Vec<String> =
        sink.received()[failed_before..].iter().map(|r| r.header("webhook-id").to_owned()).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered, (0..5).map(|i| format!("queued-{i}")).collect::<Vec<_>>());
    assert_eq!(send(&app, Method::GET, path, None, None).await.0, 404);
}

/// Secrets given through the API are stored sealed under
/// `admin.secret_key`, used for deliveries, and never returned.
#[tokio::test]
async fn secrets_given_through_the_api_are_sealed_used_and_never_returned() {
    const SIGNING: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const API_KEY: &str = "api-key-value-0123456789";
    let sink = Sink::start(Behavior::Ok).await;
    let token = hookwire::config::AccessToken::full("ops", hookwire::config::Secret::new(TestApp::TOKEN));
    let app = TestApp::start_adjusted(crate::helpers::AMQP_URL, "", |c| {
        c.admin.tokens = vec![token];
        c.admin.secret_key = Some(hookwire::config::Secret::new("5e".repeat(32)));
    })
    .await;
    let body = json!({
        "name": "signed", "topics": ["acme.s.*"], "url": sink.url("/"),
        "signing_secret": SIGNING, "headers": {"x-api-key": API_KEY},
    });
    let (status, created, version) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let (_, shown, _) = send(&app, Method::GET, "/api/v1/subscriptions/signed", None, None).await;
    let (_, listed, _) = send(&app, Method::GET, "/api/v1/subscriptions", None, None).await;
    let patch = json!({"description": "patched without resending the secrets"});
    let (status, patched, _) = send(&app, Method::PATCH, "/api/v1/subscriptions/signed", version, Some(patch)).await;
    assert_eq!(status, 200, "{patched}");
    let stored = app.catalog().state().get("signed").unwrap().definition.to_string();
    for (what, text) in [
        ("201", created.to_string()),
        ("GET", shown.to_string()),
        ("list", listed.to_string()),
        ("PATCH", patched.to_string()),
        ("catalog", stored),
    ] {
        for secret in [SIGNING, &SIGNING[6..], API_KEY] {
            assert!(!text.contains(secret), "a secret in the {what}: {text}");
        }
    }
    assert_eq!(shown["definition"]["signing_secret"], json!(["whsec_…b7oD"]), "masked: {shown}");
    // The sealed secrets are opened for deliveries, after the patch too.
    assert_eq!(app.post_acme("evt_signed", r#"{"type":"s.x"}"#).await.status(), 202);
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("x-api-key"), API_KEY);
    assert!(got[0].header("webhook-signature").starts_with("v1,"));

    // Without a key, secrets are refused with a clear error.
    let keyless = TestApp::operator("").await;
    let body = json!({"name": "signed", "topics": ["acme.s.*"], "url": sink.url("/"), "signing_secret": SIGNING});
    let (status, refused, _) = send(&keyless, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("admin.secret_key"), "{refused}");
    assert!(!refused.to_string().contains(&SIGNING[6..]));
}

/// Every change leaves an audit record, readable from any process, naming
/// the token (never its value).
#[tokio::test]
async fn every_change_leaves_an_audit_record_readable_from_any_process() {
    use hookwire::config::{AccessToken, Scope, Secret};
    let sink = Sink::start(Behavior::Ok).await;
    const READER: &str = "reader-token-0123456789ab";
    let app = TestApp::start_adjusted(crate::helpers::AMQP_URL, "", |c| {
        c.admin.tokens = vec![
            AccessToken::full("ops-team", Secret::new(TestApp::TOKEN)),
            AccessToken {
                name: "reader".into(),
                token: Secret::new(READER),
                scopes: vec![Scope::Read],
                subscriptions: None,
            },
        ];
    })
    .await;
    let other = app::start(app.config.clone(), Role::Ingress).await.unwrap();
    let body = json!({"name": "audited", "topics": ["acme.au.*"], "url": sink.url("/")});
    let (_, created, version) = send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await;
    assert_eq!(created["version"].as_u64(), version);
    let path = "/api/v1/subscriptions/audited";
    let patch = json!({"url": sink.url("/moved")});
    assert_eq!(send(&app, Method::PATCH, path, version, Some(patch)).await.0, 200);
    assert_eq!(send(&app, Method::POST, &format!("{path}/pause"), None, None).await.0, 200);
    assert_eq!(send(&app, Method::POST, &format!("{path}/resume"), None, None).await.0, 200);
    let purge = json!({"all": true});
    assert_eq!(send(&app, Method::DELETE, &format!("{path}/dead-letters"), None, Some(purge)).await.0, 200);
    let denied = app.http.delete(app.admin_url(path)).bearer_auth(READER).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(send(&app, Method::DELETE, path, None, None).await.0, 204);

    let url = format!("http://{}/api/v1/audit?target=audited", other.admin_addr);
    let expected = ["create", "update", "pause", "resume", "purge_dead_letters", "denied", "delete"];
    let deadline = Instant::now() + T;
    let records = loop {
        let answer: Value = app.http.get(&url).bearer_auth(TestApp::TOKEN).send().await.unwrap().json().await.unwrap();
        if answer["records"].as_array().is_some_and(|r| r.len() >= expected.len()) {
            break answer;
        }
        assert!(Instant::now() < deadline, "the other process did not read every record: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let list = records["records"].as_array().unwrap();
    let mut actions: Vec<&str> = list.iter().map(|r| r["action"].as_str().unwrap()).collect();
    actions.reverse(); // newest first in the answer
    assert_eq!(actions, expected, "{records}");
    let by: Vec<&str> = list.iter().map(|r| r["by"].as_str().unwrap()).collect();
    assert!(by.iter().all(|b| *b == "ops-team" || *b == "reader"), "{by:?}");
    let update = list.iter().find(|r| r["action"] == "update").unwrap();
    assert!(update["detail"]["changed"]["url"]["to"].as_str().unwrap().ends_with("/moved"), "{update}");
    let text = records.to_string();
    assert!(!text.contains(TestApp::TOKEN) && !text.contains(READER), "token values never appear: {text}");
    // The reader may read the log too.
    let read = app.http.get(&url).bearer_auth(READER).send().await.unwrap();
    assert_eq!(read.status(), 200);
    other.shutdown().await;
}

/// Rotating a signing secret: the new one is returned once; during the
/// overlap deliveries carry both signatures, after it only the new one.
#[tokio::test]
async fn a_rotated_signing_secret_overlaps_then_replaces_the_old_one() {
    use hookwire::{config::Secret, ingress::schemes::StandardWebhooks, ingress::verify::Scheme};
    const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let sink = Sink::start(Behavior::Ok).await;
    let token = hookwire::config::AccessToken::full("ops", Secret::new(TestApp::TOKEN));
    let app = TestApp::start_adjusted(crate::helpers::AMQP_URL, "", |c| {
        c.admin.tokens = vec![token];
        c.admin.secret_key = Some(Secret::new("7a".repeat(32)));
    })
    .await;
    let body = json!({"name": "rotating", "topics": ["acme.r.*"], "url": sink.url("/"), "signing_secret": OLD});
    assert_eq!(send(&app, Method::POST, "/api/v1/subscriptions", None, Some(body)).await.0, 201);
    let path = "/api/v1/subscriptions/rotating/signing-secret/rotate";
    let (status, rotated, _) = send(&app, Method::POST, path, None, Some(json!({"overlap": "3s"}))).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["signing_secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != OLD);
    let (_, shown, _) = send(&app, Method::GET, "/api/v1/subscriptions/rotating", None, None).await;
    assert!(!shown.to_string().contains(&new[6..]), "returned once, never again: {shown}");

    // What each secret's signature of a delivery would be.
    let expected = |secret: &str, received: &crate::helpers::Received| {
        let scheme = StandardWebhooks::new(&[Secret::new(secret)], None).unwrap();
        let at: u64 = received.header("webhook-timestamp").parse().unwrap();
        let time = std::time::UNIX_EPOCH + Duration::from_secs(at);
        let headers = scheme.sign(&received.body, time, received.header("webhook-id")).unwrap();
        headers.into_iter().find(|(name, _)| name == "webhook-signature").unwrap().1
    };
    assert_eq!(app.post_acme("during", r#"{"type":"r.x"}"#).await.status(), 202);
    let got = sink.wait_for(1, T).await;
    let signatures: Vec<&str> = got[0].header("webhook-signature").split(' ').collect();
    assert_eq!(
        signatures,
        [expected(&new, &got[0]).as_str(), expected(OLD, &got[0]).as_str()],
        "both sign during the overlap"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(app.post_acme("after", r#"{"type":"r.x"}"#).await.status(), 202);
    let got = sink.wait_for(2, T).await;
    assert_eq!(got[1].header("webhook-signature"), expected(&new, &got[1]), "only the new one after it");
}
