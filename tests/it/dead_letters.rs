//! Operators and dead letters: browse without disturbing, replay by id,
//! filter or all, purge selectively, with dry runs that count exactly.

use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Behavior, Sink, TestApp, dead_letter};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

fn subscription(sink: &Sink) -> String {
    format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = []\n", sink.url("/hooks"))
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|i| i["event_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn browsing_twice_returns_the_same_page_and_changes_nothing() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let dead = Pile::Dead("billing".into());
    let failed_at = SystemTime::now();
    let letters: Vec<_> =
        (0..150).map(|i| dead_letter(&format!("evt_{i:03}"), "invoice.paid", 503, 3, failed_at)).collect();
    app.seed_letters(&dead, letters).await;

    let path = "/api/v1/subscriptions/billing/dead-letters?limit=100";
    let first = app.api_get(path).await;
    let again = app.api_get(path).await;
    let expected: Vec<String> = (0..100).map(|i| format!("evt_{i:03}")).collect();
    assert_eq!(ids(&first), expected);
    assert_eq!(ids(&again), expected, "browsing twice gives the same page");
    assert!(first == again);
    assert_eq!(first["depth"], 150);
    assert_eq!(first["next_after"], "evt_099");
    let item = &first["items"][0];
    assert_eq!(item["source"], "acme");
    assert_eq!(item["type"], "invoice.paid");
    assert_eq!(item["attempts"], 3);
    assert_eq!(item["reason"], "retries_exhausted");
    assert_eq!(item["last_status"], 503);
    assert_eq!(item["last_error"], "HTTP 503");
    assert!(item["first_failure_at"].as_str().unwrap() < item["last_failure_at"].as_str().unwrap());
    assert_eq!(item["body_preview"], r#"{"type":"invoice.paid","id":"evt_000"}"#);
    assert_eq!(item["body_truncated"], false);

    let second = app.api_get("/api/v1/subscriptions/billing/dead-letters?limit=100&after=evt_099").await;
    assert_eq!(ids(&second), (100..150).map(|i| format!("evt_{i:03}")).collect::<Vec<_>>());
    assert_eq!(second["next_after"], serde_json::Value::Null);

    let one = app.api_get("/api/v1/subscriptions/billing/dead-letters/evt_120").await;
    assert_eq!(one["event_id"], "evt_120");
    assert_eq!(one["body"], r#"{"type":"invoice.paid","id":"evt_120"}"#);
    assert_eq!(one["headers"]["user-agent"], "acme/1");
    assert_eq!(one["history"].as_array().unwrap().len(), 3);
    let missing = app.api(Method::GET, "/api/v1/subscriptions/billing/dead-letters/evt_nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let gone_cursor = app.api(Method::GET, "/api/v1/subscriptions/billing/dead-letters?after=evt_nope").send().await;
    assert_eq!(gone_cursor.unwrap().status(), 404);

    // Nothing was lost, duplicated, reordered or delivered.
    assert_eq!(app.letter_count(&dead).await, 150);
    let order: Vec<String> = app.letters(&dead).await.into_iter().map(|(e, _)| e.id).collect();
    assert_eq!(order, (0..150).map(|i| format!("evt_{i:03}")).collect::<Vec<_>>());
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn failed_deliveries_replay_by_id_filter_and_all_once_the_destination_is_fixed() {
    let sink = Sink::start(Behavior::Status(500)).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let dead = Pile::Dead("billing".into());
    let events = [
        ("evt_a", "invoice.paid"),
        ("evt_b", "invoice.paid"),
        ("evt_c", "invoice.failed"),
        ("evt_d", "customer.created"),
        ("evt_e", "customer.deleted"),
    ];
    for (id, kind) in events {
        let body = format!(r#"{{"type":"{kind}"}}"#);
        assert_eq!(app.post_acme(id, &body).await.status(), 202);
    }
    app.wait_letters(&dead, 5, T).await;
    sink.wait_for(5, T).await;

    // The history says what happened.
    let page = app.api_get("/api/v1/subscriptions/billing/dead-letters").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    for item in page["items"].as_array().unwrap() {
        assert_eq!(item["attempts"], 1);
        assert_eq!(item["last_status"], 500);
        assert_eq!(item["reason"], "retries_exhausted");
    }

    sink.set(Behavior::Ok);
    let replay = "/api/v1/subscriptions/billing/dead-letters/replay";
    // Dry runs count and change nothing.
    let (status, dry) = app.api_send(Method::POST, replay, json!({"type": "invoice.*", "dry_run": true})).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64(), dry["dry_run"].as_bool()),
        (Some(3), Some(0), Some(true))
    );
    let (_, dry_all) = app.api_send(Method::POST, replay, json!({"all": true, "dry_run": true})).await;
    assert_eq!(dry_all["matched"], 5);
    assert_eq!(app.letter_count(&dead).await, 5);

    let (_, by_id) = app.api_send(Method::POST, replay, json!({"ids": ["evt_c"]})).await;
    assert_eq!((by_id["matched"].as_u64(), by_id["replayed"].as_u64()), (Some(1), Some(1)), "{by_id}");
    sink.wait_for(6, T).await;
    let (_, by_type) = app.api_send(Method::POST, replay, json!({"type": "invoice.*", "status": 500})).await;
    assert_eq!(by_type["replayed"], 2, "{by_type}");
    sink.wait_for(8, T).await;
    let (_, rest) = app.api_send(Method::POST, replay, json!({"all": true})).await;
    assert_eq!(rest["replayed"], 2, "{rest}");
    sink.wait_for(10, T).await;
    app.wait_letters(&dead, 0, T).await;

    // Each event failed once and was then delivered exactly once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered: Vec<_> = sink.received().into_iter().skip(5).map(|r| r.header("webhook-id").to_owned()).collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    assert_eq!(sorted, ["evt_a", "evt_b", "evt_c", "evt_d", "evt_e"]);
    assert_eq!(delivered[0], "evt_c", "the replay by id came first");
    // A replayed event starts with a fresh attempt count.
    assert!(sink.received().iter().skip(5).all(|r| r.header("hookwire-attempt") == "1"));
}

#[tokio::test]
async fn purge_removes_only_what_matches() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let dead = Pile::Dead("billing".into());
    let now = SystemTime::now();
    let hour_ago = now - Duration::from_secs(3600);
    let mut letters = Vec::new();
    for i in 0..10 {
        letters.push(dead_letter(&format!("old_{i}"), "invoice.paid", 410, 1, hour_ago));
        letters.push(dead_letter(&format!("new_{i}"), "invoice.paid", 500, 2, now));
    }
    app.seed_letters(&dead, letters).await;
    let purge = "/api/v1/subscriptions/billing/dead-letters";
    let cutoff = humantime::format_rfc3339(now - Duration::from_secs(60)).to_string();

    let (status, dry) = app.api_send(Method::DELETE, purge, json!({"failed_before": cutoff, "dry_run": true})).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!((dry["matched"].as_u64(), dry["purged"].as_u64()), (Some(10), Some(0)));
    assert_eq!(app.letter_count(&dead).await, 20);

    let (_, purged) = app.api_send(Method::DELETE, purge, json!({"status": 410})).await;
    assert_eq!((purged["matched"].as_u64(), purged["purged"].as_u64()), (Some(10), Some(10)), "{purged}");
    let left = app.api_get("/api/v1/subscriptions/billing/dead-letters?limit=100").await;
    assert_eq!(ids(&left), (0..10).map(|i| format!("new_{i}")).collect::<Vec<_>>(), "order kept");

    // Selectors are required, and bad ones are refused with a problem.
    for bad in
        [json!({}), json!({"all": true, "status": 500}), json!({"failed_after": "yesterday"}), json!({"colour": 1})]
    {
        let (status, problem) = app.api_send(Method::DELETE, purge, bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(problem["type"], "urn:hookwire:problem:invalid-request");
    }
    let (status, _) =
        app.api_send(Method::DELETE, "/api/v1/subscriptions/nope/dead-letters", json!({"all": true})).await;
    assert_eq!(status, 404);
    assert_eq!(app.letter_count(&dead).await, 10);
    assert!(sink.received().is_empty());
}

/// The replaying process is killed (SIGKILL) halfway: every dead letter is
/// still somewhere, in the dead-letter queue or back in the work queue. At
/// most the few whose move was confirmed but not yet acked are in both.
#[tokio::test]
async fn a_replay_killed_halfway_loses_nothing() {
    const N: usize = 5000;
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator(&subscription(&sink)).await;
    // Only the process under test touches the queues from here on.
    app.stop().await;
    let queues = app.topology.subscription("billing").unwrap().clone();
    let failed_at = SystemTime::now();
    app.seed_letters(
        &Pile::Dead("billing".into()),
        (0..N).map(|i| dead_letter(&format!("evt_{i:05}"), "invoice.paid", 503, 1, failed_at)),
    )
    .await;

    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut text =
        crate::helpers::config_text(&app.config.rabbitmq.namespace, crate::helpers::AMQP_URL, &subscription(&sink));
    text = text.replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{admin}\"\ntokens = [\"{}\"]", TestApp::TOKEN),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookwire.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["serve", "--role", "ingress", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = format!("http://{admin}/readyz");
    crate::helpers::eventually(T, "the child hookwire ready", || {
        let http = app.http.clone();
        let ready = ready.clone();
        async move { http.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    let mut response = app
        .http
        .post(format!("http://{admin}/api/v1/subscriptions/billing/dead-letters/replay"))
        .bearer_auth(TestApp::TOKEN)
        .header("accept", "application/x-ndjson")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Kill it as soon as it reports real progress.
    let mut seen = String::new();
    loop {
        let chunk = response.chunk().await.unwrap().expect("killed before the replay finished");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        let replayed = seen
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["progress"]["replayed"].as_u64())
            .max()
            .unwrap_or(0);
        if replayed > 0 {
            assert!(replayed < N as u64, "the replay finished before the kill; make N larger");
            break;
        }
    }
    child.kill().await.unwrap();

    // Nothing moves once the process is gone: what it did not settle is
    // still listed.
    let pile = Pile::Dead("billing".into());
    let deadline = std::time::Instant::now() + T;
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (app.letter_count(&pile).await, app.depth(&queues.work).await as usize);
        if now == last && now.0 + now.1 >= N {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "queues never settled: {now:?}");
        last = now;
    }
    let dead: Vec<String> = app.letters(&pile).await.into_iter().map(|(e, _)| e.id).collect();
    let work: Vec<String> = app.drain_queue(&queues.work).await.into_iter().map(|(e, _)| e.id).collect();
    assert!(!dead.is_empty() && !work.is_empty(), "interrupted mid-way: {} dead, {} work", dead.len(), work.len());
    let mut all: Vec<&String> = dead.iter().chain(&work).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), N, "every dead letter is still somewhere");
    let doubled = dead.len() + work.len() - N;
    eprintln!("killed mid-replay: {} still dead, {} moved, {doubled} in both", dead.len(), work.len());
    assert!(doubled <= 256, "{doubled} in both queues: more than the replay's in-flight window allows");
    // What stayed behind kept its order.
    let mut sorted = dead.clone();
    sorted.sort();
    assert_eq!(dead, sorted);
}

/// The operator CLI end to end: tables, the dry run, the purge guard.
#[tokio::test]
async fn the_cli_lists_replays_and_purges() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let dead = Pile::Dead("billing".into());
    let now = SystemTime::now();
    app.seed_letters(&dead, (0..3).map(|i| dead_letter(&format!("evt_{i}"), "invoice.paid", 503, 2, now))).await;
    let admin = format!("http://{}", app.app.as_ref().unwrap().admin_addr);
    let hookwire = |args: &'static [&'static str]| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
                .args(args)
                .args(["--admin-url", &admin])
                .env("HOOKWIRE_ADMIN_TOKEN", TestApp::TOKEN)
                .output()
                .unwrap();
            (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
        })
    };

    let (ok, table, _) = hookwire(&["dlq", "list", "billing"]).await.unwrap();
    assert!(ok);
    assert!(table.starts_with("EVENT_ID"), "{table}");
    let row = table.lines().find(|l| l.starts_with("evt_1")).unwrap();
    assert_eq!(
        row.split_whitespace().take(6).collect::<Vec<_>>(),
        ["evt_1", "acme", "invoice.paid", "2", "503", "retries_exhausted"]
    );
    assert!(table.contains("3 shown of 3"), "{table}");

    let (ok, shown, _) = hookwire(&["dlq", "show", "billing", "evt_2"]).await.unwrap();
    assert!(ok && shown.contains("HTTP 503") && shown.contains(r#""id":"evt_2""#), "{shown}");

    let (ok, dry, _) = hookwire(&["dlq", "replay", "billing", "--all", "--dry-run"]).await.unwrap();
    assert!(ok);
    assert_eq!(dry, "dry run: 3 matched and would be replayed (3 scanned)\n");

    let (ok, _, refused) = hookwire(&["dlq", "purge", "billing", "--id", "evt_0"]).await.unwrap();
    assert!(!ok && refused.contains("--yes"), "{refused}");
    let (ok, purged, _) = hookwire(&["dlq", "purge", "billing", "--id", "evt_0", "--yes"]).await.unwrap();
    assert!(ok);
    assert_eq!(purged, "1 purged of 1 matched (3 scanned)\n");

    let (ok, json, _) = hookwire(&["dlq", "replay", "billing", "--all", "--json"]).await.unwrap();
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["replayed"], 2);
    sink.wait_for(2, T).await;

    let (ok, paused, _) = hookwire(&["pause", "billing"]).await.unwrap();
    assert!(ok && paused == "billing: paused (events keep queueing)\n", "{paused}");
    let (_, list, _) = hookwire(&["subscriptions"]).await.unwrap();
    assert!(list.lines().nth(1).unwrap().split_whitespace().nth(7) == Some("yes"), "{list}");
    let (ok, resumed, _) = hookwire(&["resume", "billing"]).await.unwrap();
    assert!(ok && resumed == "billing: resumed\n");

    let (ok, _, error) = hookwire(&["dlq", "replay", "billing"]).await.unwrap();
    assert!(!ok && error.contains("say which messages"), "{error}");
}

/// Issue 11: dead letters live in a replicated stream, and what operators
/// settle is a marker in it. Browsing while new dead letters arrive keeps
/// every letter once and in arrival order; replays and purges hold across a
/// restart (the new process reads them back from the stream) and show in the
/// subscription's count.
#[tokio::test]
async fn settled_letters_stay_settled_and_browsing_keeps_arrival_order_while_letters_arrive() {
    let sink = Sink::start(Behavior::Ok).await;
    // Its own subscription name: the metrics registry is one per test
    // process, and other tests' `billing` set the same gauge.
    let config = subscription(&sink).replace("subscriptions.billing", "subscriptions.ledger");
    let mut app = TestApp::operator(&config).await;
    let dead = Pile::Dead("ledger".into());
    let failed_at = SystemTime::now();
    let letter = |i: usize| dead_letter(&format!("evt_{i:03}"), "invoice.paid", 503, 1, failed_at);
    app.seed_letters(&dead, (0..100).map(letter)).await;
    // Unrouted events share the stream; they are not ledger's.
    let unrouted = dead_letter("evt_nowhere", "none.x", 503, 0, failed_at);
    app.seed_letters(&Pile::Unrouted, [unrouted]).await;

    // A listing runs while fifty more arrive.
    let (page, ()) = tokio::join!(
        app.api_get("/api/v1/subscriptions/ledger/dead-letters?limit=1000"),
        app.seed_letters(&dead, (100..150).map(letter)),
    );
    let listed = ids(&page);
    let arrived: Vec<String> = (0..listed.len()).map(|i| format!("evt_{i:03}")).collect();
    assert!(listed.len() >= 100, "the listing saw {} letters", listed.len());
    assert_eq!(listed, arrived, "a prefix of the arrival order, each letter once");
    let all = app.api_get("/api/v1/subscriptions/ledger/dead-letters?limit=1000").await;
    assert_eq!(ids(&all), (0..150).map(|i| format!("evt_{i:03}")).collect::<Vec<_>>());

    let replay = "/api/v1/subscriptions/ledger/dead-letters/replay";
    let (status, report) = app.api_send(Method::POST, replay, json!({"ids": ["evt_010", "evt_120"]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!((report["replayed"].as_u64(), report["failed"].as_u64()), (Some(2), Some(0)), "{report}");
    sink.wait_for_ids(&["evt_010".to_owned(), "evt_120".to_owned()], T).await;
    let purge = "/api/v1/subscriptions/ledger/dead-letters";
    let (status, report) = app.api_send(Method::DELETE, purge, json!({"ids": ["evt_030"]})).await;
    assert_eq!((status, report["purged"].as_u64()), (200, Some(1)), "{report}");

    let expected: Vec<String> =
        (0..150).filter(|i| ![10, 30, 120].contains(i)).map(|i| format!("evt_{i:03}")).collect();
    let status = app.api_get("/api/v1/subscriptions/ledger").await;
    assert_eq!(status["status"]["dead"]["messages"], 147, "{status}");
    // A new process rebuilds the same piles from the stream.
    app.stop().await;
    app.restart().await;
    let after = app.api_get("/api/v1/subscriptions/ledger/dead-letters?limit=1000").await;
    assert_eq!(ids(&after), expected);
    assert_eq!(after["depth"], 147);
    let unrouted = app.api_get("/api/v1/unrouted").await;
    assert_eq!(ids(&unrouted), ["evt_nowhere"]);
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_dead_letters{subscription=\"ledger\"} 147"), "{metrics}");
    // (`hookwire_unrouted_held` has no label to tell this test's apart.)
    assert_eq!(app.letters(&dead).await.into_iter().map(|(e, _)| e.id).collect::<Vec<_>>(), expected);
    assert_eq!(sink.received().len(), 2, "nothing else was delivered");
}

/// A namespace made before dead letters moved to `ns.letters`: its work
/// queue still dead-letters into the classic `NAME.dead`, which holds
/// letters, and the classic `ns.unrouted` queue holds an unrouted event.
/// hookwire starts on it (the work queue is kept), moves both into the
/// stream, and unbinds and deletes the old unrouted queue.
#[tokio::test]
async fn letters_of_an_earlier_version_are_moved_into_the_stream() {
    use lapin::types::{AMQPValue, FieldTable};
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator(&subscription(&sink)).await;
    app.stop().await;
    let work = app.topology.subscription("billing").unwrap().work.clone();
    let (old_dead, old_unrouted) = (format!("{work}.dead"), app.topology.unrouted_exchange.clone());
    app.make_work_queue_of_an_earlier_version("billing").await;
    let conn = app.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let mut classic = FieldTable::default();
    classic.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    for queue in [&old_dead, &old_unrouted] {
        channel.queue_declare(queue.as_str().into(), durable, classic.clone()).await.unwrap();
    }
    channel
        .queue_bind(
            old_unrouted.as_str().into(),
            old_unrouted.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    let failed_at = SystemTime::now();
    app.seed(&old_dead, (0..2).map(|i| dead_letter(&format!("evt_old_{i}"), "invoice.paid", 503, 1, failed_at))).await;
    app.seed(&old_unrouted, [dead_letter("evt_old_nowhere", "none.x", 503, 0, failed_at)]).await;

    app.restart().await;
    crate::helpers::eventually(T, "the old letters moved", || {
        let app = &app;
        async move {
            let dead = app.api_get("/api/v1/subscriptions/billing/dead-letters").await;
            let unrouted = app.api_get("/api/v1/unrouted").await;
            ids(&dead) == ["evt_old_0", "evt_old_1"] && ids(&unrouted) == ["evt_old_nowhere"]
        }
    })
    .await;
    assert_eq!(app.depth(&old_dead).await, 0);
    assert!(!app.queue_exists(&old_unrouted).await, "the old unrouted queue is gone");
    // The kept work queue still delivers.
    assert_eq!(app.post_acme("evt_new", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    sink.wait_for(1, T).await;

    // Retiring the namespace removes the earlier version's queues too.
    app.stop().await;
    let conn = app.connect().await;
    app.topology.delete(&conn.create_channel().await.unwrap()).await.unwrap();
    let _ = conn.close(200, "".into()).await;
    assert!(!app.queue_exists(&old_dead).await, "the old dead-letter queue is deleted with the namespace");
    assert!(!app.queue_exists(&work).await);
}

/// What RabbitMQ dead-letters itself (a work queue's delivery limit, when a
/// worker keeps dying on a message) lands in the letters stream too, and is
/// listed under its subscription with the broker's reason: the stream keeps
/// `x-first-death-queue`, which names it.
#[tokio::test]
async fn the_brokers_own_dead_letters_are_listed_under_their_subscription() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let (status, _) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/pause", json!({})).await;
    assert_eq!(status, 200);
    let work = app.topology.subscription("billing").unwrap().work.clone();
    crate::helpers::eventually(T, "the worker gone from the work queue", || {
        let (app, work) = (&app, &work);
        async move { app.consumers(work).await == 0 }
    })
    .await;
    assert_eq!(app.post_acme("evt_poison", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    app.wait_depth(&work, 1, T).await;
    // A consumer that takes it and dies, past `rabbitmq.delivery_limit` (20).
    let conn = app.connect().await;
    let channel = conn.create_channel().await.unwrap();
    for _ in 0..=app.config.rabbitmq.delivery_limit {
        let Some(message) = channel.basic_get(work.as_str().into(), BasicGetOptions::default()).await.unwrap() else {
            break;
        };
        let requeue = BasicNackOptions { requeue: true, ..Default::default() };
        channel.basic_nack(message.delivery.delivery_tag, requeue).await.unwrap();
    }
    let _ = conn.close(200, "".into()).await;
    crate::helpers::eventually(T, "the poison event listed as billing's dead letter", || {
        let app = &app;
        async move { ids(&app.api_get("/api/v1/subscriptions/billing/dead-letters").await) == ["evt_poison"] }
    })
    .await;
    let page = app.api_get("/api/v1/subscriptions/billing/dead-letters").await;
    assert_eq!(page["items"][0]["reason"], "delivery_limit", "{page}");
    assert_eq!(app.depth(&work).await, 0);
    assert!(ids(&app.api_get("/api/v1/unrouted").await).is_empty());
}

/// Across an upgrade, messages written before bodies were framed (the
/// envelope in headers) still wait in work queues and the letters stream:
/// they are delivered, browsed and replayed as before, and a replayed copy
/// travels in today's format.
#[tokio::test]
async fn messages_written_before_framing_are_delivered_browsed_and_replayed() {
    use crate::helpers::unframed;
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription(&sink)).await;
    let dead = Pile::Dead("billing".into());
    let failed_at = SystemTime::now();

    let (queued, _) = dead_letter("evt_queued", "invoice.paid", 503, 0, failed_at);
    let work = app.topology.subscription("billing").unwrap().work.clone();
    app.publish_all(&work, [unframed(&queued, &Default::default())]).await;
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].body, queued.body);
    assert_eq!(got[0].header("webhook-id"), "evt_queued");
    assert_eq!(got[0].header("hookwire-source"), "acme");
    assert_eq!(got[0].header("hookwire-event-type"), "invoice.paid");
    assert_eq!(got[0].header("content-type"), "application/json");
    assert_eq!(got[0].header("hookwire-attempt"), "1");

    let (letter, state) = dead_letter("evt_old", "invoice.paid", 503, 2, failed_at);
    app.put_letters(&dead, [unframed(&letter, &state)]).await;
    app.wait_letters(&dead, 1, T).await;
    let one = app.api_get("/api/v1/subscriptions/billing/dead-letters/evt_old").await;
    assert_eq!((one["source"].as_str(), one["type"].as_str()), (Some("acme"), Some("invoice.paid")));
    assert_eq!((one["attempts"].as_u64(), one["reason"].as_str()), (Some(2), Some("retries_exhausted")));
    assert_eq!(one["body"].as_str().unwrap().as_bytes(), &letter.body[..]);
    assert_eq!(one["content_type"], "application/json");
    assert_eq!(one["headers"]["user-agent"], "acme/1");

    let replay = "/api/v1/subscriptions/billing/dead-letters/replay";
    let (status, report) = app.api_send(Method::POST, replay, json!({"ids": ["evt_old"]})).await;
    assert_eq!((status, report["replayed"].as_u64()), (200, Some(1)), "{report}");
    let got = sink.wait_for(2, T).await;
    assert_eq!(got[1].body, letter.body);
    assert_eq!(got[1].header("webhook-id"), "evt_old");
    assert_eq!(got[1].header("hookwire-event-type"), "invoice.paid");
    assert_eq!(got[1].header("hookwire-attempt"), "1");
    app.wait_letters(&dead, 0, T).await;

    // The other way round: an earlier worker, given today's format, kept
    // the message as it came and called it malformed. It replays.
    let (framed, _) = dead_letter("evt_new", "invoice.paid", 503, 0, failed_at);
    let (properties, body) = hookwire::broker::message::encode(&framed, &Default::default());
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("hookwire-dead-letter-reason".into(), lapin::types::AMQPValue::LongString("malformed".into()));
    app.put_letters(&dead, [(properties.with_headers(headers), body)]).await;
    app.wait_letters(&dead, 1, T).await;
    let (_, report) = app.api_send(Method::POST, replay, json!({"reason": "malformed"})).await;
    assert_eq!(report["replayed"], 1, "{report}");
    let got = sink.wait_for(3, T).await;
    assert_eq!((got[2].header("webhook-id"), &got[2].body), ("evt_new", &framed.body));
    app.wait_letters(&dead, 0, T).await;
}
