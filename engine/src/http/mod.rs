//! The admin HTTP listener (`--http ADDR:PORT`, off by default; `--http https://ADDR:PORT`
//! for TLS): `/healthz`, `/readyz`, `/metrics` and the admin API under `/api/v1/`.
//!
//! It runs on a thread of its own with a current-thread tokio runtime and hyper 1.x (HTTP/1.1;
//! no hand-written HTTP parsing), outside the shards: it reaches them only through the control
//! plane (`io::control`), so a slow HTTP client never holds a shard. Bounded: at most
//! [`CONNECTIONS_MAX`] connections at once (the next waits to be accepted), request bodies of
//! at most [`BODY_BYTES_MAX`], headers read within [`HEADER_READ_TIMEOUT`], a connection kept
//! at most [`CONNECTION_LIFETIME_MAX`], and shard replies awaited at most
//! [`REPLY_TIMEOUT`]. A TLS handshake must end within [`HEADER_READ_TIMEOUT`] too; it runs in
//! the connection's task, so a stalled one holds a connection slot, never the listener.
//!
//! Authentication: with `--http-token-file`, every path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN`. Without it, only loopback clients are served (others get
//! 403), and the broker says so at start-up. The token and the certificate are read again
//! on every reload (`files.rs`).

mod api;
mod api_bridges;
mod api_clients;
mod api_cluster;
mod api_topics;
mod clock;
mod files;
pub mod metrics;
pub mod publish_body;
pub use files::{read_token, HttpFiles};
mod respond;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Semaphore};

use crate::io::control::{Control, ControlMsg, ControlReply};
use crate::reload::Reloader;
use respond::{error, text, Reply};

/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 32;
/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept (keep-alive included).
pub const CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// Longest a request waits for the shards' replies.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What every request handler can reach. Lives on the HTTP thread (and the `Arc` in main).
#[derive(Debug)]
pub struct HttpState {
    pub(crate) control: Control,
    pub(crate) reloader: Arc<Reloader>,
    /// The token and the TLS configuration (reloadable).
    files: Arc<HttpFiles>,
    started_at: Instant,
    /// False once shutdown began: `/readyz` says 503.
    serving: AtomicBool,
    /// The running bridges (`/api/v1/bridges`).
    pub(crate) bridges: crate::bridge::BridgeAdmin,
    /// The cluster runtime's view (`GET /api/v1/cluster`); `None` without a cluster.
    pub(crate) cluster: Option<crate::cluster::runtime::ClusterView>,
}

/// The running HTTP listener. Dropping it (or [`HttpServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<HttpState>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread (open connections are dropped).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.state.serving.store(false, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `addr` and starts serving on a new thread: HTTPS when `tls` names a certificate
/// and key, else plain HTTP. Registers its files with `reloader`, which reads them again on
/// every reload.
pub fn start(
    addr: SocketAddr,
    token_file: Option<&std::path::Path>,
    tls: Option<&crate::config::HttpTlsFiles>,
    control: Control,
    reloader: Arc<Reloader>,
    bridges: crate::bridge::BridgeAdmin,
    cluster: Option<crate::cluster::runtime::ClusterView>,
) -> Result<HttpServer, String> {
    let files = Arc::new(HttpFiles::load(token_file, tls)?);
    if token_file.is_none() {
        tracing::warn!(
            "no --http-token-file: the HTTP listener serves loopback clients only on {addr} \
             (others get 403)"
        );
    }
    let listener = StdTcpListener::bind(addr).map_err(|e| format!("--http {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("--http {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("--http {addr}: {e}"))?;
    reloader.attach_http(files.clone());
    let state = Arc::new(HttpState {
        control,
        reloader,
        files,
        started_at: Instant::now(),
        serving: AtomicBool::new(true),
        bridges,
        cluster,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("http: cannot start its runtime: {e}"))?;
    let thread_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("shardmq-http".into())
        .spawn(move || runtime.block_on(serve(listener, thread_state, stop_rx)))
        .map_err(|e| format!("http: cannot start its thread: {e}"))?;
    Ok(HttpServer { addr: local, state, stop: Some(stop_tx), thread: Some(thread) })
}

async fn serve(listener: StdTcpListener, state: Arc<HttpState>, mut stop: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("http: {e}"),
    };
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = permits.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: wait a little rather than spin.
                    tracing::warn!("http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        // The configuration in use when the connection arrived (a reload changes the next).
        let tls = state.files.tls();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME_MAX, async move {
                match tls {
                    None => serve_connection(stream, state, peer).await,
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => serve_connection(tls, state, peer).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "http: TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                        }
                    }
                }
            })
            .await;
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 requests on one connection (plain or TLS) until it ends.
async fn serve_connection<S>(io: S, state: Arc<HttpState>, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    let _ = conn.await;
}

/// Without a token, any web page open in a browser on this host can reach a loopback
/// listener. Refused here: a `Host` that is a name other than `localhost` (DNS rebinding), an
/// `Origin` other than this listener, and a POST whose body is not declared JSON (a
/// cross-site form or `text/plain` fetch needs no CORS preflight; `application/json` does).
fn same_host_only(req: &Request<Incoming>) -> Result<(), Reply> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(hyper::header::HOST).unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if !(name.is_empty() || name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()) {
        return Err(error(StatusCode::FORBIDDEN, None, "Host must be localhost or an address"));
    }
    if let Some(origin) = header(hyper::header::ORIGIN) {
        let ok = [format!("http://{host}"), format!("https://{host}")].iter().any(|o| o == origin);
        if !ok {
            return Err(error(StatusCode::FORBIDDEN, None, "cross-origin requests are refused"));
        }
    }
    if req.method() == Method::POST
        && !header(hyper::header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "POST needs Content-Type: application/json",
        ));
    }
    Ok(())
}

/// Whether `req` may be served to `peer`: `Err` is the refusal.
fn authorize(state: &HttpState, peer: SocketAddr, req: &Request<Incoming>) -> Result<(), Reply> {
    let Some(token) = state.files.token() else {
        if peer.ip().is_loopback() {
            return same_host_only(req);
        }
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            "only loopback clients are served without --http-token-file",
        ));
    };
    // The console page itself holds no data (it asks for the token for its API calls), and
    // a browser cannot send a bearer token when it navigates to it.
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/" | "/console") {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    let ok = presented.is_some_and(|p| {
        use subtle::ConstantTimeEq;
        p.len() == token.len() && bool::from(p.ct_eq(&token))
    });
    if ok {
        Ok(())
    } else {
        let mut r = error(StatusCode::UNAUTHORIZED, None, "missing or wrong bearer token");
        r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        Err(r)
    }
}

async fn handle(state: &HttpState, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    if let Err(refusal) = authorize(state, peer, &req) {
        return refusal;
    }
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(state).await,
        (&Method::GET, "/metrics") => metrics(state, &req).await,
        (&Method::GET, "/" | "/console") => respond::console(),
        (_, p) if p.starts_with("/api/v1/") => api::route(state, req).await,
        (_, "/healthz" | "/readyz" | "/metrics") => {
            error(StatusCode::METHOD_NOT_ALLOWED, None, "only GET is allowed here")
        }
        _ => error(StatusCode::NOT_FOUND, None, &format!("no such path: {path}")),
    }
}

/// Ready: the broker started (recovery done, listeners open), is not shutting down, and every
/// shard answers.
async fn readyz(state: &HttpState) -> Reply {
    if !state.serving.load(Ordering::Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let answers = tokio::time::timeout(REPLY_TIMEOUT, state.control.ask_all(|_| ControlMsg::Ping));
    match answers.await {
        Ok(r) if r.iter().all(|r| r.is_ok()) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "a shard does not answer\n"),
    }
}

/// Every shard's counters, in shard order (the shards that answered in time).
pub(crate) async fn gather_stats(state: &HttpState) -> (Vec<crate::io::control::ShardStats>, u64) {
    let pending = state.control.send_all(|_| ControlMsg::Stats);
    let mut stats = Vec::with_capacity(pending.len());
    let mut unanswered = 0;
    for p in pending {
        let reply = match p {
            Ok(rx) => tokio::time::timeout(REPLY_TIMEOUT, rx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        match reply {
            Some(ControlReply::Stats(s)) => stats.push(*s),
            _ => unanswered += 1,
        }
    }
    (stats, unanswered)
}

async fn metrics(state: &HttpState, req: &Request<Incoming>) -> Reply {
    let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::from_accept(accept);
    let (stats, unanswered) = gather_stats(state).await;
    let process = metrics::ProcessInfo {
        uptime_secs: state.started_at.elapsed().as_secs(),
        reloads: state.reloader.generation(),
        shards_unanswered: unanswered,
        listener_urls: state.reloader.config().listen.iter().map(|l| l.url()).collect(),
        cluster_dropped: state.cluster.as_ref().map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            let k = c.counters();
            let queue_full = k.messages_dropped_queue_full.load(Relaxed);
            metrics::ClusterDropped {
                link_down: k.messages_dropped.load(Relaxed).saturating_sub(queue_full),
                queue_full,
            }
        }),
    };
    let body = metrics::render(&stats, &process, format);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, format.content_type().parse().expect("valid"));
    r
}
