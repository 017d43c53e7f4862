//! Edge protection through the real ingress: client IP allow-lists behind
//! trusted proxies, rate limits, JSON enforcement, header limits and read
//! timeouts against slow senders.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::TestApp;
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn allow_ips_with_trusted_proxy() {
    let extra = r#"
[sources.lan]
scheme = "token"
secrets = ["t"]
allow_ips = ["10.0.0.0/8", "192.0.2.7"]
"#;
    let app = TestApp::start_adjusted(crate::helpers::AMQP_URL, extra, |c| {
        c.ingress.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let auth = ("authorization", "Bearer t");
    let post = |xff: Option<&'static str>| {
        let mut headers = vec![auth];
        if let Some(xff) = xff {
            headers.push(("x-forwarded-for", xff));
        }
        let app = &app;
        async move { app.post("lan", &headers, "{}").await.status().as_u16() }
    };
    assert_eq!(post(Some("10.1.2.3")).await, 202, "allowed client behind the trusted proxy");
    assert_eq!(post(Some("192.0.2.7")).await, 202, "a single allowed address");
    assert_eq!(post(Some("198.51.100.1")).await, 403, "client not in allow_ips");
    assert_eq!(post(Some("10.1.2.3, 198.51.100.1")).await, 403, "a forged left-most entry does not count");
    assert_eq!(post(None).await, 403, "without the header the client is the proxy itself");
    let denied = app.post("lan", &[auth], "{}").await;
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_ingress_requests_total{source=\"lan\",outcome=\"ip_denied\"}"), "{metrics}");
    app.wait_letters(&Pile::Unrouted, 2, T).await;
}

#[tokio::test]
async fn allow_ips_ignore_forwarded_for_from_untrusted_peers() {
    let extra = "[sources.lan]\nscheme = \"token\"\nsecrets = [\"t\"]\nallow_ips = [\"10.0.0.0/8\"]\n";
    let app = TestApp::start(extra).await;
    let r = app.post("lan", &[("authorization", "Bearer t"), ("x-forwarded-for", "10.1.2.3")], "{}").await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let extra =
        "[sources.limited]\nscheme = \"token\"\nsecrets = [\"t\"]\nrate_limit = \"2/s\"\nrate_limit_burst = 4\n";
    let app = TestApp::start(extra).await;
    let started = Instant::now();
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..12 {
        let r = app.post("limited", &[("authorization", "Bearer t")], "{}").await;
        match r.status().as_u16() {
            202 => accepted += 1,
            429 => {
                limited += 1;
                let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=1).contains(&after), "Retry-After {after}");
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The burst of 4, plus what 2/s refills while the loop runs.
    let refill = (started.elapsed().as_secs_f64() * 2.0).floor() as i32;
    assert!(accepted >= 4 && accepted <= 4 + refill + 1, "accepted {accepted}, refill {refill}");
    assert_eq!(accepted + limited, 12);
    app.wait_letters(&Pile::Unrouted, accepted as usize, T).await;
    // After a pause, tokens are back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.post("limited", &[("authorization", "Bearer t")], "{}").await.status(), 202);
}

#[tokio::test]
async fn require_json_refuses_other_bodies_and_publishes_nothing() {
    let extra = "[sources.strict]\nscheme = \"token\"\nsecrets = [\"t\"]\nrequire_json = true\n";
    let app = TestApp::start(extra).await;
    let auth = [("authorization", "Bearer t")];
    for body in ["not json", "{\"open\": ", ""] {
        let r = app.post("strict", &auth, body).await;
        assert_eq!(r.status(), 400, "{body:?}");
        let problem: serde_json::Value = r.json().await.unwrap();
        assert_eq!(problem["type"], "urn:hookwire:problem:malformed-request");
    }
    assert_eq!(app.post("strict", &auth, "[1, 2]").await.status(), 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.letter_count(&Pile::Unrouted).await, 1);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let app = TestApp::start("[sources.open]\nscheme = \"none\"\n").await;
    let mut many = app.http.post(app.webhook_url("open")).body("{}");
    for i in 0..100 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let huge = app.http.post(app.webhook_url("open")).header("x-big", "a".repeat(40_000)).body("{}");
    assert_eq!(huge.send().await.unwrap().status(), 431);
    assert_eq!(app.post("open", &[], "{}").await.status(), 202);
}

async fn read_reply(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, stream.read_to_end(&mut buf)).await.expect("the server closed the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_senders_are_cut_off() {
    let app = TestApp::start_adjusted(crate::helpers::AMQP_URL, "[sources.open]\nscheme = \"none\"\n", |c| {
        c.ingress.read_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = app.app.as_ref().unwrap().ingress_addr.unwrap();

    // Headers that never finish (slow loris): the connection is closed.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"POST /webhooks/open HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let reply = read_reply(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply:?}");

    // A body that trickles: 408 once the read timeout passes.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"POST /webhooks/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":").await.unwrap();
    let reply = read_reply(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(reply.contains("application/problem+json"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.letter_count(&Pile::Unrouted).await, 0);
}
