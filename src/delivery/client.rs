//! The connections of one destination: HTTP/1.1 over TCP or TLS, kept open
//! and reused, at most one request on each at a time, written and read by
//! the delivery's own task.
//!
//! Why not a general-purpose client: a webhook destination is one origin,
//! known when the subscription is made, and every request to it has the
//! same shape. reqwest (on hyper-util's pool) did per request what can be
//! done once here: parse and clone the URL, look up the pool by origin,
//! merge default headers, box a timer and a future; that was 12% of the
//! worker's CPU per delivery at fan-out 10. hyper's connection API, which
//! replaced it, still runs each connection as a task of its own, fed by a
//! channel: every delivery woke that task to write, and was woken by it
//! with the answer, and each connection held the channel's blocks and an
//! 8 KiB write buffer, idle or not (23 MiB of the 43 MiB heap at fan-out 10
//! × 64). Here the delivery's task writes the request and reads the answer
//! itself; a connection at rest is its socket and a small read buffer
//! (docs/BENCHMARKS.md, issue 12, session 13).
//!
//! What is read: RFC 9112's message framing for answers (`Content-Length`,
//! `chunked`, until close; none for `1xx`, `204` and `304`), interim `1xx`
//! answers skipped, `Connection: close` and HTTP/1.0 honoured. What is not
//! needed by a webhook sender is not here: no `Expect: 100-continue`, no
//! pipelining, no upgrades, no HTTP/2.
//!
//! Must not: know about events, signatures or retries (`http` does).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

/// Bytes read from a connection at a time, and the read buffer it keeps. An
/// answer's head is a status line and a few headers; a longer one is read
/// in more steps (the buffer grows while a head does not fit).
const READ_BUFFER: usize = 2048;
/// An answer's head (status line and headers) may not be longer.
const MAX_HEAD: usize = 64 * 1024;
/// Headers an answer's head may have.
const MAX_HEADERS: usize = 96;
/// How long an answer that came before the request was written whole may
/// take to be read, once the write failed: it is already here, or it is not.
const EARLY_ANSWER: Duration = Duration::from_millis(100);

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

/// One request, written as it will go on the wire: the request line and
/// headers (ending in the blank line), then the body.
pub struct Request {
    pub head: Vec<u8>,
    pub body: Bytes,
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
    connection: Connection,
    since: Instant,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Resolving, connecting or the TLS handshake failed.
    Connect(String),
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The request failed on its way or its answer could not be read.
    Request(String),
}

/// An answer's head. Its connection goes back to the idle ones once the
/// body is read to its end ([`Answer::read_body`], [`Answer::finish`]);
/// dropped before that, the connection is closed.
pub struct Answer<'a> {
    pub status: u16,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    body: Framing,
    /// The connection may take another request once the body is read.
    keep_alive: bool,
    connection: Connection,
    connections: &'a Connections,
}

/// How an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (`1xx`, `204`, `304`), or one read to its end.
    Done,
    /// This many bytes are left.
    Length(u64),
    /// Chunks; `Chunked(n)`: `n` bytes of the current chunk are left (then
    /// its CRLF), or at 0 the next chunk's size line.
    Chunked(ChunkState),
    /// Everything until the server closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Next: a chunk's size line.
    Size,
    /// This many bytes of chunk data, then its CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

impl Answer<'_> {
    /// Reads the body to its end, keeping its first `keep` bytes in
    /// `kept`; gives up past `max` bytes. `true` if the body ended.
    pub async fn read_body(&mut self, kept: &mut Vec<u8>, keep: usize, max: usize) -> bool {
        let mut read = 0;
        loop {
            match self.connection.body_step(&mut self.body, kept, keep, &mut read) {
                _ if read > max => return false,
                Step::Ended => return true,
                Step::Malformed => return false,
                Step::More => {}
            }
            match self.connection.fill().await {
                Ok(0) if self.body == Framing::UntilClose => {
                    self.body = Framing::Done;
                    self.keep_alive = false;
                    return true;
                }
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// The body was read to its end: the connection can take another
    /// request, unless the server said it will close it or sent more than
    /// the answer held.
    pub fn finish(self) {
        if self.keep_alive && self.body == Framing::Done && self.connection.buffer.is_empty() {
            let mut connection = self.connection;
            // A long head grew the buffer; an idle connection keeps the usual size.
            connection.buffer.shrink_to(READ_BUFFER);
            self.connections.put_back(connection);
        }
    }
}

/// What one pass over the buffered bytes of a body found.
enum Step {
    Ended,
    /// Needs more bytes from the connection.
    More,
    Malformed,
}

impl Connections {
    pub fn new(origin: Origin, max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Self { origin, idle: Arc::default(), reaping: AtomicBool::new(false), max_idle, idle_timeout, connect_timeout }
    }

    /// Sends `request` on an idle connection, or on a new one, and reads
    /// the answer's head. A request an idle connection could not take (its
    /// write failed: the server had closed or reset it) goes on the next
    /// one: it never reached the server whole, so it is not sent twice.
    pub async fn send(&self, request: &Request) -> Result<Answer<'_>, Failure> {
        loop {
            let (mut connection, reused) = match self.take_idle() {
                Some(connection) => (connection, true),
                // Boxed: connecting (DNS, TCP, TLS) is most of this future's
                // size, and every delivery's task would carry it.
                None => (Box::pin(self.connect()).await?, false),
            };
            let head = match connection.write(request).await {
                Ok(()) => connection.read_head().await.map_err(Failure::Request)?,
                Err(_) if reused => continue,
                // A destination may answer before it has read the whole
                // request (a `413`, a `401`) and close: that answer, if it
                // came, is the attempt's outcome rather than the broken pipe.
                Err(error) => match tokio::time::timeout(EARLY_ANSWER, connection.read_head()).await {
                    Ok(Ok(head)) => Head { keep_alive: false, ..head },
                    _ => return Err(Failure::Request(error.to_string())),
                },
            };
            return Ok(Answer {
                status: head.status,
                retry_after: head.retry_after,
                body: head.body,
                keep_alive: head.keep_alive,
                connection,
                connections: self,
            });
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("never poisoned");
        while let Some(Idle { mut connection, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && !connection.closed() {
                return Some(connection);
            }
        }
        None
    }

    fn put_back(&self, connection: Connection) {
        {
            let mut idle = self.idle.lock().expect("never poisoned");
            if idle.len() < self.max_idle {
                idle.push(Idle { connection, since: Instant::now() });
            }
        }
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.idle), self.idle_timeout, self.max_idle));
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let connecting = async {
            let stream = self.tcp().await?;
            // Requests are written whole; Nagle would only hold the last segment.
            let _ = stream.set_nodelay(true);
            let stream = match &self.origin.tls {
                None => Stream::Plain(stream),
                Some((tls, name)) => Stream::Tls(Box::new(
                    tls.connect(name.clone(), stream).await.map_err(|e| Failure::Connect(deepest(&e)))?,
                )),
            };
            Ok(Connection { stream, buffer: Vec::with_capacity(READ_BUFFER) })
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

/// Closes idle connections past `timeout`, and those the destination
/// closed, until their owner is gone, so a burst's connections do not stay
/// open, holding a socket each, once the traffic stops.
async fn reap(idle: Weak<Mutex<Vec<Idle>>>, timeout: Duration, max_idle: usize) {
    let mut tick = tokio::time::interval(timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        // Checked outside the lock (a TLS connection may have records to
        // read), so deliveries taking and putting back connections do not
        // wait for up to `concurrency` sockets to be polled.
        let mut kept = std::mem::take(&mut *idle.lock().expect("never poisoned"));
        kept.retain_mut(|i| i.since.elapsed() < timeout && !i.connection.closed());
        let mut idle = idle.lock().expect("never poisoned");
        // Those put back meanwhile are the most recently used: after these.
        // Deliveries that found none idle meanwhile opened new ones, so the
        // oldest beyond the bound are closed.
        let newer = std::mem::replace(&mut *idle, kept);
        idle.extend(newer);
        let over = idle.len().saturating_sub(max_idle);
        idle.drain(..over);
    }
}

/// A socket, plain or TLS.
enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's state is a few KiB, and most destinations in a
    /// worker's hot loop are plain or TLS, not both.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection and the bytes read from it but not yet used.
struct Connection {
    stream: Stream,
    buffer: Vec<u8>,
}

/// What an answer's head says.
#[derive(Debug)]
struct Head {
    status: u16,
    retry_after: Option<String>,
    body: Framing,
    keep_alive: bool,
}

impl Connection {
    async fn write(&mut self, request: &Request) -> io::Result<()> {
        // One `writev` for head and body on a plain socket.
        let mut bytes = Buf::chain(&request.head[..], &request.body[..]);
        self.stream.write_all_buf(&mut bytes).await?;
        self.stream.flush().await
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buffer.capacity() - self.buffer.len() < READ_BUFFER / 4 {
            self.buffer.reserve(READ_BUFFER);
        }
        self.stream.read_buf(&mut self.buffer).await
    }

    /// Whether an idle connection is unusable: the server closed or reset
    /// it, or sent bytes nobody asked for (a `408`, say). Polled once
    /// without waiting: a socket with nothing to read costs no system call
    /// (the runtime knows it has not become readable).
    fn closed(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        match &mut self.stream {
            Stream::Plain(stream) => {
                !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(stream) => {
                // Unconstrained: a task that used up its cooperative budget
                // would get `Pending` from any socket, closed or not.
                let mut read = ReadBuf::new(&mut byte);
                let mut poll = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
                    Pin::new(stream.as_mut()).poll_read(cx, &mut read)
                })));
                let mut cx = Context::from_waker(Waker::noop());
                !matches!(poll.as_mut().poll(&mut cx), Poll::Pending)
            }
        }
    }

    /// Reads an answer's head, skipping interim (`1xx`) answers.
    async fn read_head(&mut self) -> Result<Head, String> {
        loop {
            if !self.buffer.is_empty() {
                match parse_head(&self.buffer)? {
                    Parsed::Interim(length) => {
                        self.buffer.drain(..length);
                        continue;
                    }
                    Parsed::Head(head, length) => {
                        self.buffer.drain(..length);
                        return Ok(head);
                    }
                    Parsed::Partial if self.buffer.len() >= MAX_HEAD => {
                        return Err(format!("the answer's head is over {} KiB", MAX_HEAD / 1024));
                    }
                    Parsed::Partial => {}
                }
            }
            match self.fill().await {
                Ok(0) if self.buffer.is_empty() => return Err("connection closed before an answer".to_owned()),
                Ok(0) => return Err("connection closed within the answer's head".to_owned()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    /// Consumes what the buffer holds of a body framed by `body`, keeping
    /// the first `keep` bytes of its content in `kept` and counting every
    /// byte consumed in `read`.
    fn body_step(&mut self, body: &mut Framing, kept: &mut Vec<u8>, keep: usize, read: &mut usize) -> Step {
        let mut at = 0;
        let mut take = |data: &[u8]| {
            let room = keep.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..room.min(data.len())]);
        };
        let step = loop {
            let rest = &self.buffer[at..];
            match body {
                Framing::Done => break Step::Ended,
                Framing::UntilClose => {
                    take(rest);
                    at += rest.len();
                    break Step::More;
                }
                Framing::Length(left) => {
                    let n = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    take(&rest[..n]);
                    at += n;
                    *left -= n as u64;
                    if *left == 0 {
                        *body = Framing::Done;
                    } else {
                        break Step::More;
                    }
                }
                // A size line starts with a hex digit (httparse reads an empty
                // one as 0, the last chunk) and ends at its first LF, which
                // must follow a CR (httparse lets a bare LF end an extension).
                Framing::Chunked(ChunkState::Size) if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    break Step::Malformed;
                }
                Framing::Chunked(ChunkState::Size)
                    if rest.iter().position(|&b| b == b'\n').is_some_and(|lf| lf == 0 || rest[lf - 1] != b'\r') =>
                {
                    break Step::Malformed;
                }
                Framing::Chunked(ChunkState::Size) => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((length, 0))) => {
                        at += length;
                        *body = Framing::Chunked(ChunkState::Trailers);
                    }
                    Ok(httparse::Status::Complete((length, size))) => {
                        at += length;
                        *body = Framing::Chunked(ChunkState::Data(size));
                    }
                    Ok(httparse::Status::Partial) if rest.len() < MAX_HEAD => break Step::More,
                    Ok(httparse::Status::Partial) | Err(_) => break Step::Malformed,
                },
                Framing::Chunked(ChunkState::Data(left)) => {
                    let n = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    take(&rest[..n]);
                    at += n;
                    *left -= n as u64;
                    if *left == 0 {
                        *body = Framing::Chunked(ChunkState::DataEnd);
                    } else {
                        break Step::More;
                    }
                }
                Framing::Chunked(ChunkState::DataEnd) => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        *body = Framing::Chunked(ChunkState::Size);
                    }
                    [] | [b'\r'] => break Step::More,
                    _ => break Step::Malformed,
                },
                Framing::Chunked(ChunkState::Trailers) => match rest.windows(2).position(|w| w == b"\r\n") {
                    // The empty line ends the trailers, and the body.
                    Some(0) => {
                        at += 2;
                        *body = Framing::Done;
                    }
                    // A trailer field: not used.
                    Some(line) => at += line + 2,
                    None if rest.len() < MAX_HEAD => break Step::More,
                    None => break Step::Malformed,
                },
            }
        };
        // Every byte counts against the limit, chunk sizes, extensions and
        // trailers too: a body of tiny chunks with long extensions is no
        // cheaper to read than its bytes.
        *read += at;
        self.buffer.drain(..at);
        step
    }
}

enum Parsed {
    /// A `1xx` answer other than `101` this long: another answer follows.
    Interim(usize),
    Head(Head, usize),
    Partial,
}

fn parse_head(bytes: &[u8]) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(error) => return Err(format!("not an HTTP/1.1 answer: {error}")),
    };
    let status = response.code.expect("a complete head has a status");
    if (100..200).contains(&status) && status != 101 {
        return Ok(Parsed::Interim(length));
    }
    let http_1_0 = response.version == Some(0);
    let (mut close, mut keep_alive_asked) = (false, false);
    let (mut chunked, mut encoded, mut content_length, mut retry_after) = (false, false, None, None);
    for header in response.headers.iter() {
        let value = || std::str::from_utf8(header.value).map(str::trim).unwrap_or_default();
        if header.name.eq_ignore_ascii_case("connection") {
            // `close` anywhere wins over `keep-alive` anywhere.
            for token in value().split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_asked |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the body ends.
            encoded = true;
            chunked = value().rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            // A list of equal values is one value (RFC 9110, 8.6); anything else is an error.
            for part in value().split(',').map(str::trim) {
                let n: u64 = part
                    .parse()
                    .ok()
                    .filter(|_| part.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| "the answer's Content-Length is not a number".to_owned())?;
                if content_length.is_some_and(|m| m != n) {
                    return Err("the answer has conflicting Content-Length values".to_owned());
                }
                content_length = Some(n);
            }
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value().to_owned());
        }
    }
    let body = if status == 101 || status == 204 || status == 304 {
        Framing::Done
    } else if encoded && chunked {
        Framing::Chunked(ChunkState::Size)
    } else if encoded {
        Framing::UntilClose
    } else if let Some(n) = content_length {
        if n == 0 { Framing::Done } else { Framing::Length(n) }
    } else {
        Framing::UntilClose
    };
    // Nothing to reuse after a body that ends with the connection or a
    // protocol switch; nor after framing RFC 9112 (6.1, 6.3) calls faulty:
    // a transfer coding in HTTP/1.0, or one beside a `Content-Length`.
    let faulty = encoded && (http_1_0 || content_length.is_some());
    let keep_alive =
        !close && (!http_1_0 || keep_alive_asked) && !faulty && body != Framing::UntilClose && status != 101;
    Ok(Parsed::Head(Head { status, retry_after, body, keep_alive }, length))
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

#[cfg(test)]
mod tests {
    //! The answers real servers send, byte for byte, from a socket on
    //! loopback: framing, interim answers, reuse and its refusal.

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A server that reads each request's head and body, then writes the
    /// next of `answers` (raw bytes) on the same connection; it counts the
    /// connections it accepts.
    async fn server(answers: Vec<&'static [u8]>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let answers = Arc::new(Mutex::new(answers.into_iter()));
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        // A request: the head, then `content-length` bytes.
                        let (head_end, length) = loop {
                            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                                break (end + 4, length);
                            }
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        while buffer.len() < head_end + length {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.drain(..head_end + length);
                        let Some(answer) = answers.lock().unwrap().next() else { return };
                        if answer.is_empty() {
                            return; // close without an answer
                        }
                        // Byte by byte for the first few: a head split anywhere still parses.
                        for byte in &answer[..answer.len().min(40)] {
                            if socket.write_all(std::slice::from_ref(byte)).await.is_err() {
                                return;
                            }
                        }
                        if socket.write_all(&answer[answer.len().min(40)..]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn connections(port: u16) -> Connections {
        let origin = Origin { host: Host::Address([127, 0, 0, 1].into()), port, tls: None };
        Connections::new(origin, 4, Duration::from_secs(4), Duration::from_secs(1))
    }

    fn request() -> Request {
        let head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n".to_vec();
        Request { head, body: Bytes::from_static(b"hello") }
    }

    /// Sends one request and reads its answer; the status, what the body
    /// held (first 256 bytes) and whether it ended.
    async fn exchange(connections: &Connections) -> Result<(u16, Option<String>, String, bool), Failure> {
        let mut answer = connections.send(&request()).await?;
        let mut kept = Vec::new();
        let ended = answer.read_body(&mut kept, 256, 64 * 1024).await;
        let (status, retry_after) = (answer.status, answer.retry_after.clone());
        if ended {
            answer.finish();
        }
        Ok((status, retry_after, String::from_utf8(kept).unwrap(), ended))
    }

    #[tokio::test]
    async fn content_length_and_chunked_bodies_are_read_to_their_end_on_one_connection() {
        let (port, accepted) = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nbusy\r\n7\r\n, later\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let connections = connections(port);
        assert_eq!(exchange(&connections).await.unwrap(), (200, None, "ok".into(), true));
        assert_eq!(exchange(&connections).await.unwrap(), (503, Some("7".into()), "busy, later".into(), true));
        assert_eq!(exchange(&connections).await.unwrap(), (204, None, String::new(), true));
        assert_eq!(exchange(&connections).await.unwrap(), (201, None, String::new(), true));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "every answer ended cleanly, so one connection took them all");
    }

    #[tokio::test]
    async fn a_connection_the_answer_closes_is_not_reused() {
        let (port, accepted) = server(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let connections = connections(port);
        assert_eq!(exchange(&connections).await.unwrap().0, 200);
        assert_eq!(exchange(&connections).await.unwrap().0, 200);
        // No length: the body is what comes until the server closes. This
        // server closes only when the client does, so the body never ends.
        let mut answer = connections.send(&request()).await.unwrap();
        let mut kept = Vec::new();
        let read = tokio::time::timeout(Duration::from_millis(200), answer.read_body(&mut kept, 256, 1024)).await;
        assert!(read.is_err(), "a close-delimited body ends only with the connection");
        assert_eq!(kept, b"until the end");
        drop(answer);
        // More bytes than the answer said: not a connection to trust again.
        assert_eq!(exchange(&connections).await.unwrap(), (200, None, "ok".into(), true));
        assert_eq!(exchange(&connections).await.unwrap().0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_close_after_the_request_is_written_is_a_failed_attempt_not_a_resend() {
        // The server reads the second request and closes without an answer:
        // it may have acted on it, so the request is not sent again here
        // (the worker schedules a retry, with the same event id).
        let (port, accepted) = server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""]).await;
        let connections = connections(port);
        let mut answer = connections.send(&request()).await.unwrap();
        assert!(answer.read_body(&mut Vec::new(), 0, 0).await);
        answer.finish();
        assert_eq!(connections.idle.lock().unwrap().len(), 1);
        let failed = exchange(&connections).await.expect_err("closed without an answer");
        assert!(matches!(&failed, Failure::Request(e) if e.contains("closed before an answer")), "{failed:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_its_server_is_seen_as_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await.unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            // Then closes it, as a server's keep-alive timeout does.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let connections = connections(port);
        let mut answer = connections.send(&request()).await.unwrap();
        assert!(answer.read_body(&mut Vec::new(), 0, 0).await);
        answer.finish();
        let mut idle = connections.idle.lock().unwrap().pop().unwrap().connection;
        assert!(!idle.closed(), "open while the server keeps it");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(idle.closed(), "the server's close is seen without a request");
    }

    #[test]
    fn heads_that_do_not_frame_a_body_are_refused() {
        for (head, error) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..], "conflicting Content-Length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", "not a number"),
            (b"SMTP ready\r\n\r\n", "not an HTTP/1.1 answer"),
        ] {
            let Err(got) = parse_head(head) else { panic!("{:?} parsed", String::from_utf8_lossy(head)) };
            assert!(got.contains(error), "{got}");
        }
        // Equal values in a list are one value; Transfer-Encoding wins over a length.
        let Ok(Parsed::Head(head, _)) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n") else {
            panic!()
        };
        assert_eq!(head.body, Framing::Length(3));
        let Ok(Parsed::Head(head, _)) =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(head.body, Framing::Chunked(ChunkState::Size));
        let Ok(Parsed::Head(head, _)) = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n") else {
            panic!()
        };
        assert_eq!((head.body, head.keep_alive), (Framing::UntilClose, false));
        let Ok(Parsed::Head(head, _)) =
            parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        else {
            panic!()
        };
        assert!(head.keep_alive, "HTTP/1.0 keeps a connection it says it keeps");
    }

    #[tokio::test]
    async fn chunked_bodies_with_a_broken_size_line_are_not_read_to_an_end() {
        for broken in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n",
        ] {
            let (port, _) = server(vec![broken]).await;
            let connections = connections(port);
            let mut answer = connections.send(&request()).await.unwrap();
            assert!(!answer.read_body(&mut Vec::new(), 256, 1024).await, "{:?}", String::from_utf8_lossy(broken));
        }
        // Chunk extensions count against the limit like the data does.
        let (port, _) = server(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx\r\n0\r\n\r\n",
        ])
        .await;
        let connections = connections(port);
        let mut answer = connections.send(&request()).await.unwrap();
        assert!(!answer.read_body(&mut Vec::new(), 256, 32).await);
    }

    #[test]
    fn a_close_is_not_undone_and_faulty_framing_is_not_kept() {
        let keep_alive = |head: &[u8]| match parse_head(head) {
            Ok(Parsed::Head(head, _)) => head.keep_alive,
            _ => panic!("{:?} did not parse", String::from_utf8_lossy(head)),
        };
        assert!(!keep_alive(b"HTTP/1.1 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep_alive(
            b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep_alive(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(keep_alive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_request_was_read_whole_is_the_outcome() {
        // The destination reads the head only, refuses the body and closes,
        // as a server with a body limit does.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await.unwrap();
            socket.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let connections = connections(port);
        let head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 33554432\r\n\r\n".to_vec();
        let request = Request { head, body: Bytes::from(vec![b'x'; 32 << 20]) };
        let answer = connections.send(&request).await.unwrap();
        assert_eq!(answer.status, 413);
        assert!(!answer.keep_alive);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_read_and_its_connection_not_kept() {
        let (port, accepted) = server(vec![
            b"HTTP/1.1 500 Oops\r\nContent-Length: 20\r\n\r\n01234567890123456789",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let connections = connections(port);
        let mut answer = connections.send(&request()).await.unwrap();
        let mut kept = Vec::new();
        assert!(!answer.read_body(&mut kept, 4, 10).await, "20 bytes is over a limit of 10");
        assert_eq!(kept, b"0123");
        drop(answer);
        assert_eq!(exchange(&connections).await.unwrap().0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
