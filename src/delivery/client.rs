//! The connections of one destination: HTTP/1.1 over TCP or TLS, kept open
//! and reused, at most one request on each at a time.
//!
//! Why not a general-purpose client: a webhook destination is one origin,
//! known when the subscription is made, and every request to it has the
//! same shape. A general client (it was reqwest on hyper-util's pool) does
//! per request what can be done once here: parse and clone the URL, look
//! up the pool by origin, merge default headers, box a timer and a future.
//! That was 12% of the worker's CPU per delivery at fan-out 10, with as
//! much again in its allocations (docs/BENCHMARKS.md, issue 12).
//!
//! Must not: know about events, signatures or retries (`http` does).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where the connections go: the URL's host and port, and how to reach it.
pub struct Origin {
    /// A name to resolve, or an address as written.
    pub host: Host,
    pub port: u16,
    /// `Some` for `https`: the name the certificate must carry.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

pub enum Host {
    Name(String),
    Address(std::net::IpAddr),
}

/// Open connections to one origin. Cheap to share (`Arc`).
pub struct Connections {
    origin: Origin,
    /// Idle connections, the most recently used last: taken from the end,
    /// so under light load a few stay warm and the rest age out.
    idle: Arc<Mutex<Vec<Idle>>>,
    /// Whether the task that closes expired idle connections runs (started
    /// with the first idle connection: `new` may run outside a runtime).
    reaping: AtomicBool,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Resolving, connecting or the TLS handshake failed.
    Connect(String),
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The request failed once on its way (the connection broke).
    Request(hyper::Error),
}

/// A response whose connection goes back to the idle ones once its body is
/// read to the end ([`Answer::finish`]); dropped before that, the
/// connection is closed (it may still carry the rest of the body).
pub struct Answer<'a> {
    pub response: Response<Incoming>,
    sender: Sender,
    connections: &'a Connections,
}

impl Answer<'_> {
    /// The body was read to its end: the connection can take another request.
    pub fn finish(self) {
        self.connections.put_back(self.sender);
    }
}

impl Connections {
    pub fn new(origin: Origin, max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Self { origin, idle: Arc::default(), reaping: AtomicBool::new(false), max_idle, idle_timeout, connect_timeout }
    }

    /// Sends `request` on an idle connection, or on a new one. A request an
    /// idle connection could not take (the server had closed it) goes on
    /// the next one: it was never written, so it is not sent twice.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<Answer<'_>, Failure> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                // Boxed: connecting (DNS, TCP, TLS, the handshake) is most of
                // this future's size, and every delivery's task would carry it.
                None => (Box::pin(self.connect()).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(Failure::Connect("the connection closed at once".to_owned()));
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(Answer { response, sender, connections: self }),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(Failure::Request(error.into_error())),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("never poisoned");
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn put_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        {
            let mut idle = self.idle.lock().expect("never poisoned");
            if idle.len() < self.max_idle {
                idle.push(Idle { sender, since: Instant::now() });
            }
        }
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.idle), self.idle_timeout));
        }
    }

    async fn connect(&self) -> Result<Sender, Failure> {
        let connecting = async {
            let stream = self.tcp().await?;
            // Requests are written whole; Nagle would only hold the last segment.
            let _ = stream.set_nodelay(true);
            match &self.origin.tls {
                None => handshake(stream).await,
                Some((tls, name)) => {
                    let stream = tls.connect(name.clone(), stream).await.map_err(|e| Failure::Connect(deepest(&e)))?;
                    handshake(stream).await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(Failure::ConnectTimeout),
        }
    }

    /// A TCP connection to the first of the host's addresses that accepts,
    /// each tried for its share of the connect timeout: one address that
    /// drops packets (a dead record, a broken IPv6 route) must not use it up.
    async fn tcp(&self) -> Result<TcpStream, Failure> {
        let port = self.origin.port;
        let addresses: Vec<SocketAddr> = match &self.origin.host {
            Host::Address(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| Failure::Connect(format!("dns error: {e}")))?
                .collect(),
        };
        let share = self.connect_timeout / u32::try_from(addresses.len().max(1)).unwrap_or(u32::MAX);
        let mut last = Failure::Connect("the name resolved to no address".to_owned());
        for address in addresses {
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    keep_alive(&stream);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Failure::Connect(e.to_string()),
                Err(_) => last = Failure::ConnectTimeout,
            }
        }
        Err(last)
    }
}

/// TCP keepalive probes, and on Linux a bound on unacknowledged data: a
/// kept connection whose peer vanished (a host gone, a NAT that forgot it)
/// is noticed before the next delivery waits out its timeout on it.
fn keep_alive(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(15))
        .with_retries(3);
    let _ = socket.set_tcp_keepalive(&probes);
    #[cfg(target_os = "linux")]
    let _ = socket.set_tcp_user_timeout(Some(Duration::from_secs(30)));
}

/// Closes idle connections past `timeout` (and forgets closed ones) until
/// their owner is gone, so a burst's connections do not stay open, holding
/// a socket and their buffers, once the traffic stops.
async fn reap(idle: Weak<Mutex<Vec<Idle>>>, timeout: Duration) {
    let mut tick = tokio::time::interval(timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        let mut idle = idle.lock().expect("never poisoned");
        idle.retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
    }
}

/// Bytes a connection reads at a time, and so the read buffer it keeps.
/// hyper's adaptive default starts at 8 KiB and grows; a destination's
/// answer is a status line and a few headers, and a subscription holds up to
/// `concurrency` connections (640 at fan-out 10 × 64, 5 MiB of buffers at
/// 8 KiB). A longer answer is read in more steps, and the buffer grows while
/// a head does not fit.
const READ_BUFFER: usize = 2048;

/// The HTTP/1.1 handshake on a fresh stream; the connection runs as its own
/// task until either side closes it.
async fn handshake<S>(stream: S) -> Result<Sender, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder.read_buf_exact_size(Some(READ_BUFFER));
    let (sender, connection) =
        builder.handshake(TokioIo::new(stream)).await.map_err(|e| Failure::Connect(deepest(&e)))?;
    tokio::spawn(async move {
        // Its errors reach the request that was on it, if any.
        let _ = connection.await;
    });
    Ok(sender)
}

/// A TLS client configuration that trusts the system's roots plus `extra`
/// (a subscription's `ca_file`), and speaks HTTP/1.1 only.
pub fn tls_config(extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())?
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())?
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The innermost cause's message (the outer ones only add "error trying to
/// connect" and the like).
pub fn deepest(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}
