//! The limits of `http::serve` on a loopback socket: slow headers, slow
//! bodies, silent, idle and pipelining clients, and the connection limits
//! (total and per source, idle connections making room), over plain HTTP
//! and TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sigil_issuer::http::serve::{self, ConnectionMetrics, Limits, Tls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

const LIMITS: Limits = Limits {
    max_connections: 3,
    max_connections_per_source: 3,
    header_read_timeout: Duration::from_secs(1),
    request_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(3),
};

struct Server {
    addr: SocketAddr,
    metrics: ConnectionMetrics,
    /// POST /b requests whose headers the router got.
    posts: Arc<AtomicUsize>,
    /// Set for TLS: the client side.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Server {
    async fn start(tls: bool) -> Server {
        Server::start_with(tls, LIMITS).await
    }

    async fn start_with(tls: bool, limits: Limits) -> Server {
        let posts = Arc::new(AtomicUsize::new(0));
        let counted = posts.clone();
        let router = Router::new()
            .route("/a", get(|| async { "a" }))
            .route(
                "/form",
                post(|request: axum::extract::Request| async move {
                    match sigil_issuer::http::form::read_form_request(request).await {
                        Ok(_) => "f".into_response(),
                        Err(error) => error.into_response(),
                    }
                }),
            )
            .route(
                "/b",
                post(|body: String| async move { body }).layer(tower::util::MapRequestLayer::new(
                    move |request: axum::extract::Request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        request
                    },
                )),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ConnectionMetrics::default();
        let (server_tls, client_tls) = if tls {
            let (server, client) = tls_pair();
            (Some(server), Some(client))
        } else {
            (None, None)
        };
        tokio::spawn(serve::serve(
            listener,
            router,
            server_tls,
            limits,
            metrics.clone(),
        ));
        Server {
            addr,
            metrics,
            posts,
            tls: client_tls,
        }
    }

    /// Waits until the router got the headers of `count` POST /b requests.
    async fn wait_posts(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.posts.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "the requests never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `count` connections are open.
    async fn wait_open(&self, count: i64) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.metrics.open.get() != count {
            assert!(
                Instant::now() < deadline,
                "{} connections open, not {count}",
                self.metrics.open.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A TCP connection, with the TLS handshake done when the server is TLS.
    async fn connect(&self) -> Box<dyn Stream> {
        self.connect_from(IpAddr::from([127, 0, 0, 1])).await
    }

    /// A TCP connection from `source` (a loopback address), without TLS.
    async fn tcp_from(&self, source: IpAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    /// [`Server::connect`] from `source` (a loopback address).
    async fn connect_from(&self, source: IpAddr) -> Box<dyn Stream> {
        let tcp = self.tcp_from(source).await;
        match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, tcp).await.unwrap())
            }
        }
    }
}

fn tls_pair() -> (Tls, tokio_rustls::TlsConnector) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = key.cert.der().clone();
    let private_key =
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private_key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        Tls::from_config(server),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

/// Reads until the peer closes or `within` passes; returns what was read
/// and whether the peer closed (EOF or a reset).
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&text).into_owned(), true),
            Ok(Ok(n)) => text.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until `count` complete responses (`HTTP/1.1 ` lines) arrived.
async fn read_responses(
    stream: &mut (impl AsyncRead + Unpin),
    count: usize,
    within: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let seen = String::from_utf8_lossy(&text);
        // Every answer here is short and ends with its one-letter body.
        if seen.matches("HTTP/1.1 ").count() >= count && !seen.ends_with("\r\n") {
            return seen.into_owned();
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&chunk[..n]),
            other => panic!(
                "wanted {count} responses, got {:?} then {other:?}",
                String::from_utf8_lossy(&text)
            ),
        }
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n";

async fn slow_headers_are_cut(tls: bool) {
    let server = Server::start(tls).await;
    let mut stream = server.connect().await;
    let started = Instant::now();
    let request = b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            closed = true;
            break;
        }
        let (_, eof) = read_until_closed(&mut stream, Duration::from_millis(200)).await;
        if eof {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "headers sent a byte per 200 ms were never cut");
    assert!(
        elapsed < LIMITS.header_read_timeout + Duration::from_millis(1500),
        "closed only after {elapsed:?}"
    );
}

#[tokio::test]
async fn slow_headers_are_cut_plain() {
    slow_headers_are_cut(false).await;
}

#[tokio::test]
async fn slow_headers_are_cut_tls() {
    slow_headers_are_cut(true).await;
}

async fn slow_body_gets_408(tls: bool) {
    let server = Server::start(tls).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    for _ in 0..100 {
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        let (text, eof) = read_until_closed(&mut stream, Duration::from_millis(200)).await;
        answer.push_str(&text);
        if eof {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body sent a byte per 200 ms got {answer:?} after {elapsed:?}"
    );
    assert!(elapsed < LIMITS.request_timeout + Duration::from_millis(1500));
    assert_eq!(server.metrics.request_timeouts.get(), 1);
}

#[tokio::test]
async fn slow_body_gets_408_plain() {
    slow_body_gets_408(false).await;
}

#[tokio::test]
async fn slow_body_gets_408_tls() {
    slow_body_gets_408(true).await;
}

/// A connection that sends nothing at all: closed after the header-read
/// timeout (plain) or the handshake timeout (TLS), the same time.
async fn silent_connection_is_closed(tls: bool) -> Duration {
    let server = Server::start(tls).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, LIMITS.idle_timeout * 2).await;
    assert!(closed, "a silent connection is still open");
    started.elapsed()
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_header_read_timeout() {
    let elapsed = silent_connection_is_closed(false).await;
    assert!(
        elapsed >= LIMITS.header_read_timeout - Duration::from_millis(100)
            && elapsed < LIMITS.header_read_timeout + Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
}

#[tokio::test]
async fn silent_tls_connection_is_closed_after_the_handshake_timeout() {
    let elapsed = silent_connection_is_closed(true).await;
    assert!(
        elapsed < LIMITS.header_read_timeout + Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
}

/// A TLS connection that completes the handshake and then sends nothing:
/// closed after the header-read timeout from the end of the handshake (not
/// the idle timeout), and counted.
#[tokio::test]
async fn silent_tls_connection_after_the_handshake_is_closed_after_the_header_read_timeout() {
    let server = Server::start(true).await;
    let mut stream = server.connect().await;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, LIMITS.idle_timeout * 2).await;
    assert!(closed, "a silent TLS connection is still open");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= LIMITS.header_read_timeout - Duration::from_millis(100)
            && elapsed < LIMITS.header_read_timeout + Duration::from_millis(500),
        "closed after {elapsed:?}"
    );
    assert_eq!(server.metrics.header_timeouts.get(), 1);
    assert_eq!(server.metrics.idle_closed.get(), 0);
}

/// An HTTP/2 connection (prior knowledge) that sends its preface and
/// settings but no request: closed after the header-read timeout.
#[tokio::test]
async fn http2_connection_without_a_request_is_closed_after_the_header_read_timeout() {
    let server = Server::start(false).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let (_sender, connection) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(LIMITS.idle_timeout * 2, connection).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection without requests is still open"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < LIMITS.header_read_timeout + Duration::from_millis(500),
        "closed after {elapsed:?}"
    );
    assert_eq!(server.metrics.header_timeouts.get(), 1);
}

async fn idle_keep_alive_is_closed(tls: bool) {
    let server = Server::start(tls).await;
    let mut stream = server.connect().await;
    stream.write_all(GET).await.unwrap();
    read_responses(&mut stream, 1, Duration::from_secs(2)).await;
    // Still usable right after.
    stream.write_all(GET).await.unwrap();
    read_responses(&mut stream, 1, Duration::from_secs(2)).await;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, LIMITS.idle_timeout * 2).await;
    assert!(closed, "an idle keep-alive connection is still open");
    // HTTP/1.1 waits for the next request's headers for header_read_timeout.
    assert!(
        started.elapsed() < LIMITS.header_read_timeout + Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_is_closed_plain() {
    idle_keep_alive_is_closed(false).await;
}

#[tokio::test]
async fn idle_keep_alive_is_closed_tls() {
    idle_keep_alive_is_closed(true).await;
}

/// An HTTP/2 connection (prior knowledge) that sent its preface and
/// settings and then nothing: closed after the idle timeout.
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let server = Server::start(false).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let connection = tokio::spawn(connection);
    let request = axum::http::Request::get(format!("http://{}/a", server.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let ended = tokio::time::timeout(LIMITS.idle_timeout * 2, connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is still open");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= LIMITS.idle_timeout - Duration::from_millis(100)
            && elapsed < LIMITS.idle_timeout + Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
    assert_eq!(server.metrics.idle_closed.get(), 1);
}

/// Limits under which a request can stay in flight (its body unfinished)
/// for a while.
const BUSY_LIMITS: Limits = Limits {
    request_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(20),
    ..LIMITS
};

/// A request whose body is never finished (2 of 5 bytes; `cde` ends it).
const UNFINISHED_POST: &[u8] =
    b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nab";

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn connection_limit(tls: bool) {
    let server = Server::start_with(tls, BUSY_LIMITS).await;
    let mut held = Vec::new();
    for _ in 0..LIMITS.max_connections {
        let mut stream = server.connect().await;
        stream.write_all(GET).await.unwrap();
        read_responses(&mut stream, 1, Duration::from_secs(2)).await;
        stream.write_all(UNFINISHED_POST).await.unwrap();
        stream.flush().await.unwrap();
        held.push(stream);
    }
    server.wait_posts(LIMITS.max_connections).await;
    assert_eq!(server.metrics.open.get(), LIMITS.max_connections as i64);

    // One more (from another source, so that the total is what binds)
    // while every connection has a request in flight: closed at once,
    // before any TLS handshake.
    let mut extra = server.tcp_from(loopback(2)).await;
    let _ = extra.write_all(b"\x16\x03\x01").await;
    let (_, closed) = read_until_closed(&mut extra, Duration::from_millis(500)).await;
    assert!(closed, "a connection over the limit was kept");
    assert_eq!(server.metrics.refused.get(), 1);
    assert_eq!(server.metrics.evicted.get(), 0);

    // The admitted connections still work.
    held[0].write_all(b"cde").await.unwrap();
    assert!(
        read_responses(&mut held[0], 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Now held[0] is idle: a new connection takes its slot.
    let mut fresh = server.connect_from(loopback(2)).await;
    fresh.write_all(GET).await.unwrap();
    assert!(
        read_responses(&mut fresh, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(server.metrics.evicted.get(), 1);
    assert_eq!(server.metrics.refused.get(), 1);
    let (_, closed) = read_until_closed(&mut held[0], Duration::from_secs(1)).await;
    assert!(closed, "the idle connection was not closed for the new one");

    // A freed slot takes a new connection, closing none.
    drop(held.pop());
    server.wait_open(LIMITS.max_connections as i64 - 1).await;
    let mut another = server.connect().await;
    another.write_all(GET).await.unwrap();
    assert!(
        read_responses(&mut another, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(server.metrics.evicted.get(), 1);
    // The request still in flight was never touched.
    held[1].write_all(b"cde").await.unwrap();
    assert!(
        read_responses(&mut held[1], 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn connection_limit_plain() {
    connection_limit(false).await;
}

#[tokio::test]
async fn connection_limit_tls() {
    connection_limit(true).await;
}

async fn pipelined_requests_are_all_answered(tls: bool) {
    let server = Server::start(tls).await;
    let mut stream = server.connect().await;
    let mut requests = GET.to_vec();
    requests
        .extend_from_slice(b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nb");
    requests.extend_from_slice(GET);
    stream.write_all(&requests).await.unwrap();
    stream.flush().await.unwrap();
    let answers = read_responses(&mut stream, 3, Duration::from_secs(2)).await;
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
    let bodies: Vec<&str> = answers
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| answer.rsplit("\r\n").next().unwrap())
        .collect();
    assert_eq!(bodies, ["a", "b", "a"]);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_plain() {
    pipelined_requests_are_all_answered(false).await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_tls() {
    pipelined_requests_are_all_answered(true).await;
}

/// The limit's worth of connections from another source that hold their
/// slots without a request in flight: silent (TLS: mid-handshake), idle
/// keep-alive, slowloris headers. Each newcomer is answered, and the
/// connection idle longest makes room.
async fn idle_connections_make_room(tls: bool) {
    let server = Server::start(tls).await;
    let flood = loopback(2);
    let mut silent = server.tcp_from(flood).await;
    let mut keep_alive = server.connect_from(flood).await;
    keep_alive.write_all(GET).await.unwrap();
    read_responses(&mut keep_alive, 1, Duration::from_secs(2)).await;
    let mut slowloris = server.connect_from(flood).await;
    slowloris
        .write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    server.wait_open(LIMITS.max_connections as i64).await;

    let mut newcomers = Vec::new();
    for round in 0..4 {
        let mut stream = server.connect().await;
        stream.write_all(GET).await.unwrap();
        let answer = read_responses(&mut stream, 1, Duration::from_secs(2)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        assert_eq!(server.metrics.evicted.get(), round + 1);
        newcomers.push(stream);
    }
    assert_eq!(server.metrics.refused.get(), 0);
    // Closed longest idle first: the flood's three, then the first newcomer.
    let within = Duration::from_millis(300);
    assert!(
        read_until_closed(&mut silent, within).await.1,
        "silent kept"
    );
    assert!(
        read_until_closed(&mut keep_alive, within).await.1,
        "keep-alive kept"
    );
    assert!(
        read_until_closed(&mut slowloris, within).await.1,
        "slowloris kept"
    );
    assert!(read_until_closed(&mut newcomers[0], within).await.1);
    for newcomer in &mut newcomers[1..] {
        newcomer.write_all(GET).await.unwrap();
        assert!(
            read_responses(newcomer, 1, Duration::from_secs(2))
                .await
                .starts_with("HTTP/1.1 200")
        );
    }
}

#[tokio::test]
async fn idle_connections_make_room_plain() {
    idle_connections_make_room(false).await;
}

#[tokio::test]
async fn idle_connections_make_room_tls() {
    idle_connections_make_room(true).await;
}

/// A source at --max-connections-per-source: its own idle connection makes
/// room for its next one; with all its connections busy, its next one is
/// refused; other sources are served all along.
async fn connections_per_source(tls: bool) {
    let server = Server::start_with(
        tls,
        Limits {
            max_connections: 10,
            max_connections_per_source: 2,
            ..BUSY_LIMITS
        },
    )
    .await;
    let source = loopback(2);
    let mut first = server.connect_from(source).await;
    let mut second = server.connect_from(source).await;
    let mut third = server.connect_from(source).await;
    third.write_all(GET).await.unwrap();
    assert!(
        read_responses(&mut third, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(server.metrics.evicted.get(), 1);
    let (_, closed) = read_until_closed(&mut first, Duration::from_millis(300)).await;
    assert!(closed, "the source's idle connection was kept");

    for stream in [&mut second, &mut third] {
        stream.write_all(UNFINISHED_POST).await.unwrap();
        stream.flush().await.unwrap();
    }
    server.wait_posts(2).await;
    let mut extra = server.tcp_from(source).await;
    let (_, closed) = read_until_closed(&mut extra, Duration::from_millis(500)).await;
    assert!(closed, "a connection over the source's limit was kept");
    assert_eq!(server.metrics.refused_per_source.get(), 1);

    let mut other = server.connect_from(loopback(3)).await;
    other.write_all(GET).await.unwrap();
    assert!(
        read_responses(&mut other, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(server.metrics.refused.get(), 0);
    assert_eq!(server.metrics.sources.get(), 2);
    // The busy connections were not touched.
    second.write_all(b"cde").await.unwrap();
    assert!(
        read_responses(&mut second, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn connections_per_source_plain() {
    connections_per_source(false).await;
}

#[tokio::test]
async fn connections_per_source_tls() {
    connections_per_source(true).await;
}

/// A declared Content-Length over the form limit is answered 413 at once,
/// without waiting for the body (or the request timeout).
async fn declared_oversized_body_gets_413_at_once(tls: bool) {
    let server = Server::start_with(tls, BUSY_LIMITS).await;
    let mut stream = server.connect().await;
    let started = Instant::now();
    stream
        .write_all(
            b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10737418240\r\n\r\ngrant_type=",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered after {:?}",
        started.elapsed()
    );
    // Within the limit, the form is read.
    let mut stream = server.connect().await;
    stream
        .write_all(b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1\r\n\r\na")
        .await
        .unwrap();
    assert!(
        read_responses(&mut stream, 1, Duration::from_secs(2))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn declared_oversized_body_gets_413_at_once_plain() {
    declared_oversized_body_gets_413_at_once(false).await;
}

#[tokio::test]
async fn declared_oversized_body_gets_413_at_once_tls() {
    declared_oversized_body_gets_413_at_once(true).await;
}
