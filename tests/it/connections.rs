//! The connections a worker keeps to its destination: reused while they
//! last, replaced without a failed attempt when the destination closes one.
//! The destination here is a bare HTTP/1.1 server on loopback that counts
//! the connections it accepts and closes each after a set number of
//! requests or a set idle time, as real servers and load balancers do.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::mpsc,
};

use crate::helpers::TestApp;

const T: Duration = Duration::from_secs(20);

struct Server {
    port: u16,
    /// Connections accepted, and of those still open.
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// `(webhook-id, hookwire-attempt)` of each request, in arrival order.
    requests: mpsc::UnboundedReceiver<(String, String)>,
}

/// Answers `200` and closes a connection after `per_connection` requests,
/// or once it has been idle for `idle`.
async fn destination(per_connection: usize, idle: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, requests) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    let (counted, still_open) = (connections.clone(), open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let open = Open::new(still_open.clone());
            tokio::spawn(async move {
                let _open = open;
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                for served in 1..=per_connection {
                    let (mut length, mut id, mut attempt) = (0, String::new(), String::new());
                    let mut line = String::new();
                    // The request head, with the idle limit on its first line.
                    match tokio::time::timeout(idle, read.read_line(&mut line)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    loop {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let Some((name, value)) = line.trim_end().split_once(':') else { break };
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "hookwire-attempt" => attempt = value.trim().to_owned(),
                            "webhook-id" => id = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.unwrap();
                    let _ = tx.send((id, attempt));
                    let last = served == per_connection;
                    let close = if last { "connection: close\r\n" } else { "" };
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server { port, connections, open, requests }
}

/// Counts a connection as open until its task ends (the server closes it, or
/// it read the client's close).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn app_for(port: u16) -> TestApp {
    TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"http://127.0.0.1:{port}/hooks\"\nconcurrency = 1\n"
    ))
    .await
}

/// The attempt numbers of the next `count` requests, once each of `count`
/// distinct events arrived and nothing more did (no request went twice).
async fn attempts(server: &mut Server, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        seen.push(tokio::time::timeout(T, server.requests.recv()).await.expect("a delivery in time").unwrap());
    }
    let ids: std::collections::HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), count, "every request a different event: {seen:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.requests.try_recv().is_err(), "nothing was sent twice");
    seen.into_iter().map(|(_, attempt)| attempt).collect()
}

#[tokio::test]
async fn one_connection_carries_every_delivery_while_it_stays_open() {
    let mut server = destination(usize::MAX, Duration::from_secs(60)).await;
    let app = app_for(server.port).await;
    for i in 0..20 {
        assert_eq!(app.post_acme(&format!("msg_keep_{i}"), r#"{"type":"a.b"}"#).await.status(), 202);
    }
    assert_eq!(attempts(&mut server, 20).await, vec!["1"; 20]);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "reused, not reopened");
    // Once the traffic stops, hookwire closes its idle connection (after
    // 4 s unused) though the destination would keep it for a minute.
    crate::helpers::eventually(Duration::from_secs(10), "the idle connection closed by hookwire", || async {
        server.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn a_connection_the_destination_closes_is_replaced_without_a_failed_attempt() {
    // Closed by the server after every third request ("connection: close").
    let mut server = destination(3, Duration::from_secs(60)).await;
    let app = app_for(server.port).await;
    for i in 0..9 {
        assert_eq!(app.post_acme(&format!("msg_close_{i}"), r#"{"type":"a.b"}"#).await.status(), 202);
    }
    assert_eq!(attempts(&mut server, 9).await, vec!["1"; 9], "no delivery needed a retry");
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);

    // Closed by the server once idle for 100 ms, while hookwire holds it
    // idle: the next delivery finds it closed and opens another.
    let mut server = destination(usize::MAX, Duration::from_millis(100)).await;
    let app = app_for(server.port).await;
    for i in 0..3 {
        assert_eq!(app.post_acme(&format!("msg_idle_{i}"), r#"{"type":"a.b"}"#).await.status(), 202);
        assert_eq!(attempts(&mut server, 1).await, ["1"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_2xx_whose_body_never_ends_is_a_delivery_not_a_retry() {
    // Answers 200 with a body it announces and never sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = vec![0; 16 * 1024];
                let _ = stream.read(&mut head).await;
                let _ = tx.send(());
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let app = TestApp::start(&format!(
        "[subscriptions.trickle]\ntopics = [\"acme.#\"]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout = \"3s\"\nretry = [\"100ms\"]\n"
    ))
    .await;
    assert_eq!(app.post_acme("msg_trickle", r#"{"type":"a.b"}"#).await.status(), 202);
    tokio::time::timeout(T, requests.recv()).await.unwrap().unwrap();
    let queue = app.topology.subscription("trickle").unwrap().work.clone();
    app.wait_depth(&queue, 0, T).await;
    // Its own subscription name: the metrics registry is shared by every
    // test in this process, and other tests deliver to a `billing`.
    crate::helpers::eventually(T, "the delivery counted as delivered", || async {
        app.metrics().await.contains("hookwire_deliveries_total{subscription=\"trickle\",outcome=\"delivered\"} 1")
    })
    .await;
    // Past the timeout (3 s, generous: the suite shares 2 cores) and the
    // retry delay: no second request.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(requests.try_recv().is_err(), "not retried");
}
