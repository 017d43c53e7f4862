//! The event log (issue 10): every event's story from `GET
//! /api/v1/events/{id}`, against the real RabbitMQ and a SQLite file of the
//! test's own.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{AMQP_URL, Behavior, Sink, TestApp};

/// Where a test keeps its log. Every scenario runs on both
/// ([`both!`]): the embedded default and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// PostgreSQL for the tests: `HOOKWIRE_TEST_POSTGRES`, or the local server.
pub fn postgres_url() -> String {
    std::env::var("HOOKWIRE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One scenario as two tests, `NAME::sqlite` and `NAME::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    };
}

/// The `[event_log]` section for `backend`, the SQLite file in `dir`.
fn section(backend: Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("[event_log]\nenabled = true\npath = {:?}\n", dir.path().join("events.db")),
        Backend::Postgres => {
            format!("[event_log]\nenabled = true\nbackend = \"postgres\"\nurl = \"{}\"\n", postgres_url())
        }
    }
}

/// A running hookwire with the event log on; drops its PostgreSQL table
/// (if any) when done, as the namespace guard does its queues.
pub struct Logged {
    pub app: TestApp,
    pub backend: Backend,
}

impl std::ops::Deref for Logged {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl std::ops::DerefMut for Logged {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let table = hookwire::config::EventLogConfig::table(&self.app.config.rabbitmq.namespace);
        // Drop runs inside the test's runtime: a thread of its own can block.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let Ok((client, connection)) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS {table} CASCADE")).await;
            });
        })
        .join();
    }
}

/// A token with the `read` scope only.
const READER_TOKEN: &str = "reader-token-0123456789";
/// A token with `read` and `operate`, limited to subscription `other`.
const TEAM_TOKEN: &str = "team-other-token-0123456789";

/// Starts with the operator API and the event log on, on `backend` (the
/// SQLite file in `dir`).
async fn with_event_log(backend: Backend, dir: &tempfile::TempDir, extra: &str) -> Logged {
    let path = dir.path().join("events.db");
    let app = TestApp::start_adjusted(AMQP_URL, extra, |c| {
        use hookwire::config::{AccessToken, Scope, Secret};
        c.admin.tokens = vec![
            AccessToken::full("operator", Secret::new(TestApp::TOKEN)),
            AccessToken {
                name: "reader".into(),
                token: Secret::new(READER_TOKEN),
                scopes: vec![Scope::Read],
                subscriptions: None,
            },
            AccessToken {
                name: "team-other".into(),
                token: Secret::new(TEAM_TOKEN),
                scopes: vec![Scope::Read, Scope::Operate],
                subscriptions: Some(vec!["other".into()]),
            },
        ];
        c.event_log.enabled = true;
        c.event_log.path = path;
        if backend == Backend::Postgres {
            c.event_log.backend = hookwire::config::EventLogBackend::Postgres;
            c.event_log.url = Some(hookwire::config::Secret::new(postgres_url()));
        }
    })
    .await;
    Logged { app, backend }
}

/// Waits until the timeline of `id` satisfies `done`, and returns it.
async fn timeline(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let response = app.api(Method::GET, &format!("/api/v1/events/{id}")).send().await.unwrap();
        if response.status() == 200 {
            last = response.json().await.unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the timeline of {id} never got there; last: {last}");
}

both!(an_events_story_holds_every_attempt_filter_unrouted_and_dead_letter);
async fn an_events_story_holds_every_attempt_filter_unrouted_and_dead_letter(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Sink::start(Behavior::FailTimes(2, 503)).await;
    let broken = Sink::start(Behavior::Status(500)).await;
    let app = with_event_log(
        backend,
        &dir,
        &format!(
            "[subscriptions.flaky]\ntopics = [\"acme.f.*\"]\nurl = \"{}\"\nretry = [\"1s\", \"1s\"]\n\
             [subscriptions.picky]\ntopics = [\"acme.f.*\"]\nurl = \"{}\"\nfilter = '.body.keep == true'\n\
             [subscriptions.broken]\ntopics = [\"acme.b.*\"]\nurl = \"{}\"\nretry = []\n",
            flaky.url("/"),
            flaky.url("/picky"),
            broken.url("/")
        ),
    )
    .await;

    // Fails twice, then succeeds: three attempts, delivered; filtered for `picky`.
    assert_eq!(app.post_acme("evt-flaky", r#"{"type":"f.x","keep":false}"#).await.status(), 202);
    let story = timeline(&app, "evt-flaky", |t| t["subscriptions"]["flaky"]["outcome"] == "delivered").await;
    let attempts = story["subscriptions"]["flaky"]["attempts"].as_array().unwrap();
    let statuses: Vec<Value> = attempts.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(503), json!(503), json!(200)], "{story}");
    assert_eq!(attempts.iter().map(|a| a["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let history: Vec<&str> = story["subscriptions"]["flaky"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["retrying", "retrying", "delivered"]);
    assert_eq!(story["received"]["source"], "acme");
    assert_eq!(story["received"]["type"], "f.x");
    assert_eq!(story["received"]["routed"], json!(["flaky", "picky"]));
    let picky = timeline(&app, "evt-flaky", |t| t["subscriptions"]["picky"]["outcome"] == "filtered").await;
    assert!(picky["subscriptions"]["picky"]["attempts"].as_array().unwrap().is_empty());

    // The subscription's attempts: newest first, by status, a page at a time.
    let attempts = |query: &str| {
        let request = app.api(Method::GET, &format!("/api/v1/subscriptions/flaky/attempts{query}"));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let all = attempts("").await;
    let statuses: Vec<Value> = all["attempts"].as_array().unwrap().iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(200), json!(503), json!(503)], "{all}");
    assert_eq!(attempts("?status=503").await["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(attempts("?status=succeeded").await["attempts"][0]["event"], "evt-flaky");
    assert!(
        attempts("?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z").await["attempts"].as_array().unwrap().is_empty()
    );
    let first = attempts("?limit=2").await;
    let cursor = first["next_after"].as_str().unwrap().to_owned();
    let rest = attempts(&format!("?limit=2&after={cursor}")).await;
    assert_eq!(rest["attempts"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["attempts"][0]["attempt"], 1);
    assert!(rest["next_after"].is_null());
    let bad = app.api(Method::GET, "/api/v1/subscriptions/flaky/attempts?status=sometimes").send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // The CLI tells the same story.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["events", "show", "evt-flaky"])
        .env("HOOKWIRE_ADMIN_URL", app.admin_url("").trim_end_matches('/'))
        .env("HOOKWIRE_ADMIN_TOKEN", TestApp::TOKEN)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("from acme (f.x") && text.contains("routed to flaky, picky"), "{text}");
    assert!(text.lines().any(|l| l.contains("flaky") && l.contains("delivered") && l.contains("200")), "{text}");
    assert!(text.lines().any(|l| l.contains("picky") && l.contains("filtered")), "{text}");

    // Unrouted.
    assert_eq!(app.post_acme("evt-nowhere", r#"{"type":"z.x"}"#).await.status(), 202);
    let nowhere = timeline(&app, "evt-nowhere", |t| !t["received"].is_null()).await;
    assert_eq!(nowhere["received"]["unrouted"], true, "{nowhere}");
    assert_eq!(nowhere["subscriptions"], json!({}));

    // Dead-lettered, then replayed and delivered: both in the story.
    assert_eq!(app.post_acme("evt-dead", r#"{"type":"b.x"}"#).await.status(), 202);
    let dead = timeline(&app, "evt-dead", |t| t["subscriptions"]["broken"]["outcome"] == "dead_lettered").await;
    assert_eq!(dead["subscriptions"]["broken"]["attempts"][0]["status"], 500);
    broken.set(Behavior::Ok);
    let replay = app
        .api(Method::POST, "/api/v1/subscriptions/broken/dead-letters/replay")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200, "{}", replay.text().await.unwrap());
    let replayed = timeline(&app, "evt-dead", |t| t["subscriptions"]["broken"]["outcome"] == "delivered").await;
    let history: Vec<&str> = replayed["subscriptions"]["broken"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["dead_lettered", "replayed", "delivered"]);

    // Search: newest first, by source and type pattern, by a subscription's
    // outcome, a page at a time.
    let search = |query: &str| {
        let request = app.api(Method::GET, &format!("/api/v1/events{query}"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, newest) = search("").await;
    assert_eq!(ids(&newest), ["evt-dead", "evt-nowhere", "evt-flaky"], "{newest}");
    assert_eq!(ids(&search("?source=acme&type=f.*").await.1), ["evt-flaky"]);
    assert_eq!(ids(&search("?subscription=broken&outcome=dead_lettered").await.1), ["evt-dead"]);
    assert_eq!(ids(&search("?subscription=flaky&outcome=retrying").await.1), ["evt-flaky"]);
    assert!(ids(&search("?subscription=picky&outcome=delivered").await.1).is_empty());
    let (_, first) = search("?limit=1").await;
    let (_, second) = search(&format!("?limit=1&after={}", first["next_after"].as_str().unwrap())).await;
    assert_eq!(ids(&second), ["evt-nowhere"]);
    assert_eq!(search("?outcome=delivered").await.0, 400);

    // The CLI lists the same.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["events", "list", "--subscription", "broken", "--outcome", "dead_lettered"])
        .env("HOOKWIRE_ADMIN_URL", app.admin_url("").trim_end_matches('/'))
        .env("HOOKWIRE_ADMIN_TOKEN", TestApp::TOKEN)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("evt-dead") && !text.contains("evt-flaky"), "{text}");

    // An id nobody sent.
    let missing = app.api(Method::GET, "/api/v1/events/never-sent").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // (Not `hookwire_event_log_dropped_total`: the metrics are the test
    // binary's, and the broker outage tests drop records by design.)
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_event_log_written_total"), "{metrics}");
}

/// `hookwire serve --role ROLE` as a child process on `app`'s namespace and
/// event log store (the same SQLite file, or PostgreSQL), with
/// `subscription`; its ingress listens on `ingress_port` when given. Killed
/// when dropped.
fn second_process(
    app: &TestApp,
    backend: Backend,
    dir: &tempfile::TempDir,
    subscription: &str,
    role: &str,
    ingress_port: Option<u16>,
) -> tokio::process::Child {
    let mut text = crate::helpers::config_text(
        &app.config.rabbitmq.namespace,
        AMQP_URL,
        &format!("{subscription}\n{}", section(backend, dir)),
    );
    if let Some(port) = ingress_port {
        // The first listener in the text is the ingress's.
        text = text.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
    }
    let config = dir.path().join(format!("{role}.toml"));
    std::fs::write(&config, text).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["serve", "--role", role, "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

both!(a_worker_killed_mid_load_leaves_every_story_complete);
/// A worker process killed (SIGKILL) mid-load leaves no hole: every
/// accepted event's story ends `delivered`, with the attempt that delivered
/// it, whichever process made it. (An attempt in flight at the kill may be
/// missing: its delivery was never acked, so it is made again, and that
/// one is recorded.)
async fn a_worker_killed_mid_load_leaves_every_story_complete(backend: Backend) {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behavior::Delay(Duration::from_millis(30))).await;
    let subscription = format!("[subscriptions.steady]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/"));
    let app = with_event_log(backend, &dir, &subscription).await;

    // A second process, workers only: it takes its share of the deliveries
    // and commits its own records.
    let mut child = second_process(&app, backend, &dir, &subscription, "worker", None);
    let work = app.topology.subscription("steady").unwrap().work.clone();
    crate::helpers::eventually(Duration::from_secs(15), "both processes consuming", || {
        let app = &app;
        let work = work.clone();
        async move { app.consumers(&work).await == 2 }
    })
    .await;

    let mut ids = Vec::new();
    for i in 0..N {
        let id = format!("evt-k{i:04}");
        assert_eq!(app.post_acme(&id, r#"{"type":"k.x"}"#).await.status(), 202);
        ids.push(id);
        if i == N / 2 {
            child.kill().await.unwrap();
        }
    }
    sink.wait_for_ids(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        let story = timeline(&app, id, |t| t["subscriptions"]["steady"]["outcome"] == "delivered").await;
        assert_eq!(story["received"]["routed"], json!(["steady"]), "{story}");
        let attempts = story["subscriptions"]["steady"]["attempts"].as_array().unwrap();
        assert!(attempts.iter().any(|a| a["status"] == 200), "{story}");
    }
}

both!(an_ingress_killed_right_after_its_202s_has_recorded_them);
/// An ingress process killed (SIGKILL) while it answers `202`s has
/// committed the `received` record of every event it answered: the record
/// is committed before the answer. Requests go 16 at a time, so the kill
/// lands among answers just given.
async fn an_ingress_killed_right_after_its_202s_has_recorded_them(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behavior::Ok).await;
    let subscription = format!("[subscriptions.steady]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/"));
    let app = with_event_log(backend, &dir, &subscription).await;

    // A second process, ingress only.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = second_process(&app, backend, &dir, &subscription, "ingress", Some(port));
    let url = format!("http://127.0.0.1:{port}/webhooks/acme");
    let post = |id: String| {
        let body = r#"{"type":"i.x"}"#;
        let mut request = app.http.post(&url).header("content-type", "application/json").body(body);
        for (name, value) in app.sign("acme", body.as_bytes(), &id) {
            request = request.header(name, value);
        }
        async move { (id, request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)) }
    };
    crate::helpers::eventually(Duration::from_secs(15), "the second ingress answering", || {
        let post = post("evt-i-probe".to_owned());
        async move { post.await.1 == 202 }
    })
    .await;

    // 16 requests in flight at a time; the kill comes right after the
    // 200th answer, with the others still in flight.
    let mut accepted = vec!["evt-i-probe".to_owned()];
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    let mut killed = false;
    use futures_util::StreamExt;
    while !killed || !pending.is_empty() {
        while !killed && pending.len() < 16 {
            pending.push(post(format!("evt-i{next:04}")));
            next += 1;
        }
        let Some((id, status)) = pending.next().await else { break };
        if status == 202 {
            accepted.push(id);
        }
        if !killed && accepted.len() > 200 {
            child.start_kill().unwrap();
            killed = true;
        }
    }
    child.wait().await.unwrap();
    assert!(accepted.len() > 200, "{}", accepted.len());

    // Every answered event's story starts with its `received` record.
    for id in &accepted {
        let story = timeline(&app, id, |t| !t["received"].is_null()).await;
        assert_eq!(story["received"]["routed"], json!(["steady"]), "{story}");
    }
    sink.wait_for_ids(&accepted, Duration::from_secs(30)).await;
}

both!(retention_drops_days_past_max_age);
/// `max_age` drops whole days: an event recorded ten days ago is gone after
/// a restart (retention runs at start, then every 10 minutes); one from
/// today is still there.
async fn retention_drops_days_past_max_age(backend: Backend) {
    use hookwire::eventlog::{Record, What, now_ms};
    let dir = tempfile::tempdir().unwrap();
    let mut app = with_event_log(backend, &dir, "").await;
    app.stop().await;
    let received = |event: &str, at_ms: u64| Record {
        event: event.to_owned(),
        at_ms,
        event_at_ms: None,
        what: What::Received {
            source: "acme".into(),
            event_type: "old.x".into(),
            bytes: 2,
            process: "test".into(),
            routed: vec![],
        },
    };
    let store = hookwire::eventlog::store::open(&app.config.event_log, &app.config.rabbitmq.namespace).await.unwrap();
    let day = 86_400_000;
    store
        .write(vec![received("evt-ancient", now_ms() - 10 * day), received("evt-recent", now_ms() - 1000)].into())
        .await
        .unwrap();
    assert_eq!(store.timeline("evt-ancient".into()).await.unwrap().len(), 1);
    drop(store);

    app.restart().await;
    crate::helpers::eventually(Duration::from_secs(10), "the ancient day dropped", || {
        let request = app.api(Method::GET, "/api/v1/events/evt-ancient");
        async move { request.send().await.unwrap().status() == 404 }
    })
    .await;
    let recent = timeline(&app, "evt-recent", |t| !t["received"].is_null()).await;
    assert_eq!(recent["received"]["type"], "old.x");
}

both!(resend_sends_an_event_again_with_its_id_and_stories_show_replays_and_purges);
/// `resend` delivers a delivered event again, with the same id, and its
/// story shows it; a purged dead letter's story says `purged`. Scopes and
/// subscription limits hold on the event routes.
async fn resend_sends_an_event_again_with_its_id_and_stories_show_replays_and_purges(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behavior::Ok).await;
    let broken = Sink::start(Behavior::Status(500)).await;
    let app = with_event_log(
        backend,
        &dir,
        &format!(
            "[subscriptions.again]\ntopics = [\"acme.r.*\"]\nurl = \"{}\"\n\
             [subscriptions.other]\ntopics = [\"acme.o.*\"]\nurl = \"{}\"\nretry = []\n",
            sink.url("/again"),
            broken.url("/other")
        ),
    )
    .await;
    let resend = |id: &str, subscription: &str, token: &str| {
        app.http
            .post(app.admin_url(&format!("/api/v1/events/{id}/resend")))
            .bearer_auth(token)
            .json(&json!({ "subscription": subscription }))
            .send()
    };

    assert_eq!(app.post_acme("evt-again", r#"{"type":"r.x"}"#).await.status(), 202);
    timeline(&app, "evt-again", |t| t["subscriptions"]["again"]["outcome"] == "delivered").await;
    let answer = resend("evt-again", "again", TestApp::TOKEN).await.unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| r.header("webhook-id") == "evt-again"), "same id both times");
    let story = timeline(&app, "evt-again", |t| {
        t["subscriptions"]["again"]["attempts"].as_array().unwrap().len() == 2
            && t["subscriptions"]["again"]["outcome"] == "delivered"
    })
    .await;
    let history: Vec<(&str, &str)> = story["subscriptions"]["again"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["outcome"].as_str().unwrap(), h["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(history, [("delivered", ""), ("replayed", "resend"), ("delivered", "")], "{story}");

    // The CLI does the same.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["events", "resend", "evt-again", "--subscription", "again"])
        .env("HOOKWIRE_ADMIN_URL", app.admin_url("").trim_end_matches('/'))
        .env("HOOKWIRE_ADMIN_TOKEN", TestApp::TOKEN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sink.wait_for(3, Duration::from_secs(10)).await;

    // What a resend refuses, changing nothing.
    let problem = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["type"].as_str().unwrap_or("").rsplit(':').next().unwrap_or("").to_owned())
    };
    assert_eq!(
        problem(resend("never-sent", "again", TestApp::TOKEN).await.unwrap()).await,
        (404, "event-not-found".into())
    );
    assert_eq!(problem(resend("evt-again", "nope", TestApp::TOKEN).await.unwrap()).await.0, 404);
    assert_eq!(
        problem(resend("evt-again", "other", TestApp::TOKEN).await.unwrap()).await,
        (409, "not-subscribed".into())
    );
    assert_eq!(resend("evt-again", "again", READER_TOKEN).await.unwrap().status(), 403, "resend needs operate");
    assert_eq!(resend("evt-again", "again", TEAM_TOKEN).await.unwrap().status(), 403, "not its subscription");
    assert_eq!(sink.received().len(), 3);

    // A limited token sees its own subscriptions' part of a story only.
    assert_eq!(app.post_acme("evt-purged", r#"{"type":"o.x"}"#).await.status(), 202);
    timeline(&app, "evt-purged", |t| t["subscriptions"]["other"]["outcome"] == "dead_lettered").await;
    let seen: Value = app
        .http
        .get(app.admin_url("/api/v1/events/evt-again"))
        .bearer_auth(TEAM_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["subscriptions"], json!({}), "team-other sees nothing of `again`: {seen}");
    let reader = app.http.get(app.admin_url("/api/v1/events/evt-purged")).bearer_auth(TEAM_TOKEN).send().await.unwrap();
    assert_eq!(reader.status(), 200);

    // Purged from the dead-letter queue: the story says so.
    let purge = app
        .api(Method::DELETE, "/api/v1/subscriptions/other/dead-letters")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200, "{}", purge.text().await.unwrap());
    let purged = timeline(&app, "evt-purged", |t| t["subscriptions"]["other"]["outcome"] == "purged").await;
    assert_eq!(purged["subscriptions"]["other"]["history"][1]["reason"], "operator", "{purged}");
}
