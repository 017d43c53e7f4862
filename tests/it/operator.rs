//! The operator API's foundation: bearer tokens (disabled, never open,
//! without them) and the subscriptions overview read from the broker, plus
//! the `hookwire subscriptions` client.

use std::time::Duration;

use hookwire::config::{AccessToken, Secret};

use crate::helpers::{AMQP_URL, Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

async fn with_tokens(extra: &str, tokens: &[&str]) -> TestApp {
    let tokens: Vec<AccessToken> =
        tokens.iter().enumerate().map(|(i, t)| AccessToken::full(format!("tokens[{i}]"), Secret::new(*t))).collect();
    TestApp::start_adjusted(AMQP_URL, extra, |c| c.admin.tokens = tokens).await
}

#[tokio::test]
async fn api_requires_a_valid_token_and_health_stays_open() {
    let app = with_tokens("", &["op-token-1-aaaaaaaaaaaa", "op-token-2-bbbbbbbbbbbb"]).await;
    let url = app.admin_url("/api/v1/subscriptions");
    let missing = app.http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    for wrong in ["op-token-3-cccccccccccc", "op-token-1-aaaaaaaaaaaax", "", "op-token-1-aaaaaaaaaaa"] {
        let r = app.http.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(r.status(), 401, "{wrong:?}");
    }
    let basic = app.http.get(&url).basic_auth("op-token-1-aaaaaaaaaaaa", None::<&str>).send().await.unwrap();
    assert_eq!(basic.status(), 401);
    for token in ["op-token-1-aaaaaaaaaaaa", "op-token-2-bbbbbbbbbbbb"] {
        assert_eq!(app.http.get(&url).bearer_auth(token).send().await.unwrap().status(), 200);
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.http.get(app.admin_url(open)).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test]
async fn api_is_disabled_without_tokens() {
    let app = TestApp::start("").await;
    let r = app.http.get(app.admin_url("/api/v1/subscriptions")).bearer_auth("anything").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:hookwire:problem:api-disabled");
}

#[tokio::test]
async fn subscriptions_show_queue_depths_and_circuit_state() {
    let failing = Sink::start(Behavior::Status(500)).await;
    let fine = Sink::start(Behavior::Ok).await;
    let extra = format!(
        "[subscriptions.broken]\ntopics = [\"acme.invoice.*\"]\nurl = \"{}\"\nretry = []\n\
         [subscriptions.fine]\ntopics = [\"acme.#\"]\nurl = \"{}\"\ncircuit_breaker = {{ failures = 0 }}\n",
        failing.url("/"),
        fine.url("/")
    );
    let app = with_tokens(&extra, &["operator-token-0123456789"]).await;
    assert_eq!(app.post_acme("msg_op", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    let dead = Pile::Dead("broken".into());
    app.wait_letters(&dead, 1, T).await;
    fine.wait_for(1, T).await;

    let list: serde_json::Value = app
        .http
        .get(app.admin_url("/api/v1/subscriptions"))
        .bearer_auth("operator-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broken = list.as_array().unwrap().iter().find(|s| s["name"] == "broken").unwrap();
    assert_eq!(broken["topics"], serde_json::json!(["acme.invoice.*"]));
    assert_eq!(broken["destination_host"], "127.0.0.1");
    assert_eq!(broken["dead"]["messages"], 1);
    assert_eq!(broken["work"]["messages"], 0);
    assert_eq!(broken["work"]["consumers"], 1);
    assert_eq!(broken["circuit"], "closed");
    let fine_status = list.as_array().unwrap().iter().find(|s| s["name"] == "fine").unwrap();
    assert_eq!(fine_status["circuit"], serde_json::Value::Null, "breaker disabled");
    assert_eq!(fine_status["retry"].as_array().unwrap().len(), 5, "one entry per retry queue");

    // The CLI client, as an operator runs it.
    let admin = format!("http://{}", app.app.as_ref().unwrap().admin_addr);
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookwire"));
        command.args(args).env_remove("HOOKWIRE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("HOOKWIRE_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    };
    let table = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || run(&["subscriptions", "--admin-url", &admin], Some("operator-token-0123456789"))
    })
    .await
    .unwrap();
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("NAME"), "{text}");
    let row = text.lines().find(|l| l.starts_with("broken")).unwrap();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>()[..7], ["broken", "127.0.0.1", "closed", "0", "0", "1", "1"]);
    let denied =
        tokio::task::spawn_blocking(move || run(&["subscriptions", "--admin-url", &admin, "--json"], Some("nope")))
            .await
            .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
}

/// Issue 14: errors the framework produces (a body over the limit, a wrong
/// content type, a path that does not decode, a wrong method, an unknown
/// route) are problem+json like every other error, on both listeners.
#[tokio::test]
async fn framework_rejections_are_problem_json() {
    let app = TestApp::operator("").await;
    let sub = "/api/v1/subscriptions/orders/dead-letters/replay";
    let too_big = format!("{{\"all\":true,\"pad\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    let cases = [
        (
            "body over the limit",
            app.api(reqwest::Method::POST, sub).header("content-type", "application/json").body(too_big),
            413,
        ),
        (
            "form content type",
            app.api(reqwest::Method::POST, sub)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("all=true"),
            415,
        ),
        ("path that does not decode", app.api(reqwest::Method::GET, "/api/v1/subscriptions/%FF%FE/dead-letters"), 400),
        ("wrong method", app.api(reqwest::Method::PUT, "/api/v1/unrouted/replay"), 405),
        ("unknown route", app.api(reqwest::Method::GET, "/api/v1/nothing-here"), 404),
        ("unknown admin path", app.http.get(app.admin_url("/nothing-here")), 404),
        ("GET on the ingress", app.http.get(app.webhook_url("acme")), 405),
        ("unknown ingress path", app.http.post(app.webhook_url("acme").replace("/webhooks/acme", "/elsewhere")), 404),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{what}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status, "{what}: {problem}");
        assert!(problem["type"].as_str().unwrap().starts_with("urn:hookwire:problem:"), "{what}: {problem}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{what}: {problem}");
    }
}

/// Scoped tokens: `read` cannot act, a token limited to `billing-*` sees and
/// touches only those subscriptions and no route that belongs to none.
#[tokio::test]
async fn scoped_tokens_get_403_outside_their_scope_and_subscriptions() {
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!(
        "[admin.tokens.ops]\ntoken = \"ops-token-0123456789abcdef\"\nscopes = [\"read\", \"operate\", \"manage\"]\n\
         [admin.tokens.reader]\ntoken = \"reader-token-0123456789ab\"\nscopes = [\"read\"]\n\
         [admin.tokens.billing-team]\ntoken = \"billing-token-0123456789a\"\nscopes = [\"operate\"]\nsubscriptions = [\"billing-*\"]\n\
         [subscriptions.billing-eu]\ntopics = [\"acme.invoice.*\"]\nurl = \"{0}\"\n\
         [subscriptions.orders]\ntopics = [\"acme.order.*\"]\nurl = \"{0}\"\n",
        sink.url("/")
    );
    let app = TestApp::start(&extra).await;
    let call = |token: &'static str, method: reqwest::Method, path: &str| {
        app.http.request(method, app.admin_url(path)).bearer_auth(token).send()
    };
    let (ops, reader, billing) =
        ("ops-token-0123456789abcdef", "reader-token-0123456789ab", "billing-token-0123456789a");
    use reqwest::Method;
    let names = |value: serde_json::Value| -> Vec<String> {
        value.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
    };
    let all = call(reader, Method::GET, "/api/v1/subscriptions").await.unwrap();
    assert_eq!(all.status(), 200);
    assert_eq!(names(all.json().await.unwrap()), ["billing-eu", "orders"]);
    let own = call(billing, Method::GET, "/api/v1/subscriptions").await.unwrap();
    assert_eq!(names(own.json().await.unwrap()), ["billing-eu"], "a limited token sees only its subscriptions");

    for (token, method, path, status) in [
        (reader, Method::POST, "/api/v1/subscriptions/orders/pause", 403),
        (reader, Method::DELETE, "/api/v1/subscriptions/orders/dead-letters", 403),
        (reader, Method::GET, "/api/v1/subscriptions/orders/dead-letters", 200),
        (billing, Method::POST, "/api/v1/subscriptions/orders/pause", 403),
        (billing, Method::GET, "/api/v1/subscriptions/orders/dead-letters", 403),
        (billing, Method::GET, "/api/v1/unrouted", 403),
        (billing, Method::POST, "/api/v1/subscriptions/billing-eu/pause", 200),
        (billing, Method::POST, "/api/v1/subscriptions/billing-eu/resume", 200),
        (ops, Method::POST, "/api/v1/subscriptions/orders/pause", 200),
        (ops, Method::POST, "/api/v1/subscriptions/orders/resume", 200),
        (ops, Method::GET, "/api/v1/unrouted", 200),
    ] {
        let response = call(token, method.clone(), path).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        if status == 403 {
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let text = response.text().await.unwrap();
            assert!(!text.contains(token), "the token's value is never echoed: {text}");
        }
    }
}
