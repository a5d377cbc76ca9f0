//! Running a router over plain HTTP or TLS (certificate reloaded when its
//! files change), with the limits that keep one client from holding the
//! server: connection limits (total and per source, idle connections
//! closed to make room: see [`slots`](super::slots)), a TLS handshake and
//! header-read timeout, a request timeout (body reads included) and an
//! idle timeout.

use std::future::{Future, Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::TokioTimer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use super::slots::{InFlight, Refused, Requests, Slot, Slots};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate {cert} / key {key}: {reason}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What one client may hold (flags `--max-connections`,
/// `--max-connections-per-source`, `--header-read-timeout`,
/// `--request-timeout`, `--idle-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener. At the limit, the connection idle
    /// longest (no request in flight) is closed to make room for a new
    /// one; only when all have a request in flight is the new one closed
    /// as soon as accepted.
    pub max_connections: usize,
    /// Open connections per listener from one source address (IPv6: /64),
    /// with the same rule among that source's connections.
    pub max_connections_per_source: usize,
    /// Time to finish the TLS handshake, and to send a request's headers:
    /// the first request's from the accept (plain) or the end of the
    /// handshake (TLS), whatever the protocol; HTTP/1's next ones from when
    /// the server waits for them, so it is also how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time from the headers to the end of the response (reading the body
    /// included); then 408.
    pub request_timeout: Duration,
    /// A connection to which the server has written nothing for this long
    /// (and that sent no new request in that time) is closed: silent
    /// connections, idle HTTP/2 connections, clients that do not read.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_source: 256,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Connection metrics of one listener (see `Metrics::connection_metrics`);
/// the default is detached from any registry.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Source addresses (IPv6: /64s) with connections open now.
    pub sources: Gauge,
    /// Connections closed at accept because `max_connections` were open,
    /// each with a request in flight.
    pub refused: Counter,
    /// Connections closed at accept because `max_connections_per_source`
    /// were open from their source, each with a request in flight.
    pub refused_per_source: Counter,
    /// Idle connections closed to make room for a new one.
    pub evicted: Counter,
    /// Connections closed by the idle timeout.
    pub idle_closed: Counter,
    /// Connections closed for sending no request headers within the
    /// header-read timeout of their accept or TLS handshake.
    pub header_timeouts: Counter,
    /// Requests answered 408 by the request timeout.
    pub request_timeouts: Counter,
}

/// A certificate and key loaded once and reloaded when their files change
/// (the operator renews them); clones share the same reloading config.
#[derive(Clone)]
pub struct Tls {
    config: RustlsConfig,
}

impl Tls {
    /// Loads the pair and starts watching the files (every 10 s).
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Tls, ServeError> {
        let config = RustlsConfig::from_config(Arc::new(load_tls(&cert, &key)?));
        let reload = config.clone();
        tokio::spawn(async move {
            let mut seen = (modified(&cert), modified(&key));
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let now = (modified(&cert), modified(&key));
                if now == seen {
                    continue;
                }
                match load_tls(&cert, &key) {
                    Ok(fresh) => {
                        reload.reload_from_config(Arc::new(fresh));
                        tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
                        seen = now;
                    }
                    Err(error) => tracing::warn!(%error, "keeping the previous TLS certificate"),
                }
            }
        });
        Ok(Tls { config })
    }

    /// A fixed configuration (tests).
    pub fn from_config(config: rustls::ServerConfig) -> Tls {
        Tls {
            config: RustlsConfig::from_config(Arc::new(config)),
        }
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `router` on `addr` over plain HTTP with the default limits.
pub async fn serve_plain(addr: SocketAddr, router: Router) -> Result<(), ServeError> {
    serve_listener(bind(addr).await?, router).await
}

/// Serves `router` over plain HTTP with the default limits and detached
/// metrics.
pub async fn serve_listener(listener: TcpListener, router: Router) -> Result<(), ServeError> {
    serve(
        listener,
        router,
        None,
        Limits::default(),
        ConnectionMetrics::default(),
    )
    .await
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until the
/// process ends.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Tls>,
    limits: Limits,
    metrics: ConnectionMetrics,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let timeouts = metrics.request_timeouts.clone();
    let router = router
        // Covers the handler and so the body read of its extractors: a body
        // sent slowly gets 408 and the connection is closed.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(tower::util::MapResponseLayer::new(
            move |response: Response| {
                if response.status() == StatusCode::REQUEST_TIMEOUT {
                    timeouts.inc();
                }
                response
            },
        ));
    let make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let admit = Admit {
        slots: Slots::new(
            limits.max_connections,
            limits.max_connections_per_source,
            metrics.sources.clone(),
        ),
        idle_timeout: limits.idle_timeout,
        header_read_timeout: limits.header_read_timeout,
        metrics,
    };
    let server = axum_server::Server::<SocketAddr>::from_listener(listener);
    let result = match tls {
        Some(tls) => {
            tracing::info!(%addr, "listening (https)");
            let acceptor = AfterHandshake(
                RustlsAcceptor::new(tls.config)
                    .handshake_timeout(limits.header_read_timeout)
                    .acceptor(admit),
            );
            let mut server = server.acceptor(acceptor);
            configure(server.http_builder(), &limits);
            server.serve(make_service).await
        }
        None => {
            tracing::info!(%addr, "listening (http)");
            let mut server = server.acceptor(admit);
            configure(server.http_builder(), &limits);
            server.serve(make_service).await
        }
    };
    result.map_err(|source| ServeError::Serve { addr, source })
}

fn configure(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // No HTTP/2 keep-alive pings: a ping is a write and would keep an idle
    // connection open; the idle timer closes dead peers too.
    builder.http2().timer(TokioTimer::new());
}

/// Admits a connection when it gets a slot (closing an idle connection to
/// make room if need be, else closing the new one at once), disables Nagle
/// (small JSON answers go out without waiting for an ACK), wraps it in the
/// idle timer and its service in the request tracking.
#[derive(Clone)]
struct Admit {
    slots: Arc<Slots>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    metrics: ConnectionMetrics,
}

impl<S> Accept<TcpStream, S> for Admit {
    type Stream = Guarded;
    type Service = Tracked<S>;
    type Future = Ready<io::Result<(Guarded, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        // Dropping the stream closes it.
        let source = match stream.peer_addr() {
            Ok(addr) => addr.ip(),
            Err(error) => return ready(Err(error)),
        };
        let admitted = match self.slots.admit(source) {
            Ok(admitted) => admitted,
            Err(Refused::Total) => {
                self.metrics.refused.inc();
                return ready(Err(io::Error::other("connection limit reached")));
            }
            Err(Refused::PerSource) => {
                self.metrics.refused_per_source.inc();
                return ready(Err(io::Error::other(
                    "connection limit of the source reached",
                )));
            }
        };
        if let Some(evicted) = admitted.evicted {
            self.metrics.evicted.inc();
            Slots::evict(&evicted);
        }
        let _ = stream.set_nodelay(true);
        self.metrics.open.inc();
        let requests = admitted.slot.requests();
        let now = Instant::now();
        ready(Ok((
            Guarded {
                inner: stream,
                idle_timeout: self.idle_timeout,
                header_read_timeout: self.header_read_timeout,
                first_request_by: now + self.header_read_timeout,
                active: now,
                read_since_write: false,
                idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
                timed_out: false,
                metrics: self.metrics.clone(),
                slot: admitted.slot,
            },
            Tracked {
                inner: service,
                requests,
            },
        )))
    }
}

/// Restarts a TLS connection's header-read deadline when the handshake is
/// done: the handshake had its own timeout, and hyper's own header-read
/// timer starts only once HTTP/1 is detected, so without this a connection
/// that completes the handshake and sends nothing would be held until the
/// idle timeout.
#[derive(Clone)]
struct AfterHandshake<A>(A);

impl<A, S> Accept<TcpStream, S> for AfterHandshake<A>
where
    A: Accept<TcpStream, S, Stream = tokio_rustls::server::TlsStream<Guarded>>,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let handshake = self.0.accept(stream, service);
        Box::pin(async move {
            let (mut stream, service) = handshake.await?;
            stream.get_mut().0.restart_header_deadline();
            Ok((stream, service))
        })
    }
}

/// A connection's service: marks each request in flight from its headers
/// to the end of its response body, so the connection is not closed to
/// make room meanwhile.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    requests: Requests,
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let in_flight = self.requests.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(TrackedBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is dropped
/// (after its last frame).
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An admitted connection: holds its slot until dropped, and fails its
/// reads and writes once it has been idle for `idle_timeout`, sent no
/// request headers within `header_read_timeout` of its start, or was
/// evicted to make room. Idle means: the server wrote nothing and no new
/// request started; bytes trickling in for a request already started do
/// not count, so a slow sender cannot keep a connection open with one byte
/// a minute.
struct Guarded {
    inner: TcpStream,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    /// Until the first request's headers: the accept (or the end of the
    /// TLS handshake) plus `header_read_timeout`.
    first_request_by: Instant,
    /// The last write, or the first read after it.
    active: Instant,
    read_since_write: bool,
    idle: Pin<Box<Sleep>>,
    timed_out: bool,
    metrics: ConnectionMetrics,
    slot: Slot,
}

impl Guarded {
    /// Bookkeeping after a write of either kind: bytes written make the
    /// connection active; a write that cannot proceed counts as idle (a
    /// peer that does not read is idle too).
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.read_since_write = false;
                    self.active = Instant::now();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    /// The error of a connection closed by the server: timed out, or
    /// evicted to make room.
    fn closed(&self) -> Option<io::Error> {
        if self.timed_out {
            Some(idle_error())
        } else if self.slot.conn().is_evicted() {
            Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed to make room for another",
            ))
        } else {
            None
        }
    }

    /// The TLS handshake is done: the first request's headers are due
    /// within `header_read_timeout` from now.
    fn restart_header_deadline(&mut self) {
        self.first_request_by = Instant::now() + self.header_read_timeout;
    }

    /// The first request's headers are due by then (none once they came).
    fn header_deadline(&self) -> Option<Instant> {
        (!self.slot.conn().has_requested()).then_some(self.first_request_by)
    }

    /// Ready with an error once the connection is idle, late with its
    /// first request or evicted; otherwise arms the timer for the nearest
    /// deadline (and registers the task to wake on eviction).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.slot.conn().register(cx.waker());
        loop {
            if let Some(error) = self.closed() {
                return Poll::Ready(error);
            }
            let idle_deadline = self.active + self.idle_timeout;
            let header_deadline = self.header_deadline();
            let deadline = header_deadline.map_or(idle_deadline, |h| h.min(idle_deadline));
            if self.idle.deadline() != deadline {
                self.idle.as_mut().reset(deadline);
            }
            ready!(self.idle.as_mut().poll(cx));
            // The deadlines may have moved while the timer ran.
            let now = Instant::now();
            if self.header_deadline().is_some_and(|h| h <= now) {
                self.timed_out = true;
                self.metrics.header_timeouts.inc();
            } else if self.active + self.idle_timeout <= now {
                self.timed_out = true;
                self.metrics.idle_closed.inc();
            }
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.closed() {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !this.read_since_write {
                    this.read_since_write = true;
                    this.active = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.closed() {
            return Poll::Ready(Err(error));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.closed() {
            return Poll::Ready(Err(error));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error = |reason: String| ServeError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(e.to_string()))?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| tls_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
