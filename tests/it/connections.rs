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
    connections: Arc<AtomicUsize>,
    /// `hookwire-attempt` of each request, in arrival order.
    attempts: mpsc::UnboundedReceiver<String>,
}

/// Answers `200` and closes a connection after `per_connection` requests,
/// or once it has been idle for `idle`.
async fn destination(per_connection: usize, idle: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, attempts) = mpsc::unbounded_channel();
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                for served in 1..=per_connection {
                    let (mut length, mut attempt) = (0, String::new());
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
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.unwrap();
                    let _ = tx.send(attempt);
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
    Server { port, connections, attempts }
}

async fn app_for(port: u16) -> TestApp {
    TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"http://127.0.0.1:{port}/hooks\"\nconcurrency = 1\n"
    ))
    .await
}

async fn attempts(server: &mut Server, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        seen.push(tokio::time::timeout(T, server.attempts.recv()).await.expect("a delivery in time").unwrap());
    }
    seen
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
