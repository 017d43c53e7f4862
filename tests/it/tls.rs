//! HTTPS destinations: rustls, with the system's roots plus a subscription's
//! `ca_file`. The destination here is a real TLS server on loopback whose
//! certificate is issued by a CA made for the test.

use std::{sync::Arc, time::Duration};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};
use tower::ServiceExt;

use crate::helpers::TestApp;
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

/// A CA, and a certificate for `localhost` issued by it.
fn certificates() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca_cert.pem(), leaf.der().clone(), key)
}

/// An HTTPS server on loopback that forwards each request body to `tx`.
async fn https_sink(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    tx: mpsc::UnboundedSender<(HeaderMap, Bytes)>,
) -> u16 {
    let config = ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new()
        .route(
            "/hooks",
            post(|State(tx): State<mpsc::UnboundedSender<(HeaderMap, Bytes)>>, headers: HeaderMap, body: Bytes| async move {
                let _ = tx.send((headers, body));
                "ok"
            }),
        )
        .with_state(tx);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // Clients that do not trust the CA abort the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request| router.clone().oneshot(request));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn https_destination_trusted_through_ca_file() {
    let (ca_pem, cert, key) = certificates();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = https_sink(cert, key, tx).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.secure]
topics = ["acme.#"]
url = "https://localhost:{port}/hooks"
ca_file = "{}"

[subscriptions.untrusting]
topics = ["acme.#"]
url = "https://localhost:{port}/hooks"
retry = []
"#,
        ca_file.display()
    ))
    .await;
    let body = r#"{"type":"invoice.paid","over":"tls"}"#;
    assert_eq!(app.post_acme("msg_tls", body).await.status(), 202);
    let (headers, received) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(received.as_ref(), body.as_bytes());
    assert_eq!(headers["webhook-id"], "msg_tls");

    // Without the CA the certificate is not trusted: a failed attempt, kept.
    let dead = Pile::Dead("untrusting".into());
    app.wait_letters(&dead, 1, T).await;
    let letters = app.letters(&dead).await;
    let error = &letters[0].1.history[0].error;
    assert!(error.starts_with("connection failed") && error.contains("certificate"), "{error}");
    assert!(rx.try_recv().is_err(), "the untrusting subscription delivered nothing");
}

#[test]
fn a_ca_file_without_certificates_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let text =
        format!("[subscriptions.s]\ntopics = [\"a.#\"]\nurl = \"https://x/\"\nca_file = \"{}\"\n", empty.display());
    let config = hookwire::config::Config::from_toml(&text, &|_| None).unwrap();
    let error = hookwire::delivery::http::Destination::new("s", &config.subscriptions["s"]).err().unwrap().to_string();
    assert!(error.starts_with("subscriptions.s.ca_file:") && error.contains("no PEM certificate"), "{error}");
}
